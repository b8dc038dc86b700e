#!/usr/bin/env bash
# Builds the RStudio probe component from src/rstudio.js with componentize-js from npm.
# Usage: ./build.sh [OUT_DIR]   (default: ./out; the component is OUT_DIR/rstudio.wasm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root="${WORKSPACE_CULLER_ROOT:-$(cd "$here/../../.." && pwd)}"
wit="${WIT_DIR:-$root/wit}"
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
cd "$here"
# The pinned toolchain (package-lock.json) in node_modules, installed once and
# again when the lock file changes; safe when several builds start at once.
. "$root/scripts/lib/install-once.sh"
install_node_modules "$here"
node build.mjs "$wit" "$out/rstudio.wasm" >/dev/null
echo "$out/rstudio.wasm"
