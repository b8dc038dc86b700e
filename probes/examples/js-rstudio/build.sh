#!/usr/bin/env bash
# Builds the RStudio probe component from src/rstudio.js with componentize-js from npm.
# Usage: ./build.sh [OUT_DIR]   (default: ./out; the component is OUT_DIR/rstudio.wasm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root="${WORKSPACE_CULLER_ROOT:-$(cd "$here/../../.." && pwd)}"
wit="${WIT_DIR:-$root/wit}"
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
cd "$here"
# Install the pinned toolchain (package-lock.json) once, and again when it changes.
if ! cmp -s package-lock.json node_modules/.installed-package-lock.json; then
  npm ci --no-audit --no-fund --loglevel=error >&2
  cp package-lock.json node_modules/.installed-package-lock.json
fi
node build.mjs "$wit" "$out/rstudio.wasm" >/dev/null
echo "$out/rstudio.wasm"
