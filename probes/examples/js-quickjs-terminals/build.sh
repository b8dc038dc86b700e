#!/usr/bin/env bash
# Builds the terminals probe component from src/terminals.js with componentize-qjs
# (QuickJS) from npm: a ~1 MB component, for probes that use exec and log only.
# Usage: ./build.sh [OUT_DIR]   (default: ./out; the component is OUT_DIR/terminals.wasm)
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
# componentize-qjs 0.4 cannot build a world that imports wasi:http, so it
# builds against the contract without that import: a probe may import less
# than the world offers.
no_http=$(mktemp -d)
trap 'rm -rf "$no_http"' EXIT
cp -r "$wit/." "$no_http"
sed -i 's|^\( *\)import wasi:http/outgoing-handler@|\1// import wasi:http/outgoing-handler@|' "$no_http/probe.wit"
grep -q '// import wasi:http/outgoing-handler@' "$no_http/probe.wit"
# --sync: the host does not enable component-model async, QuickJS's default runtime.
npx --no-install componentize-qjs --wit "$no_http" --world activity-probe --js src/terminals.js \
  --sync --opt-size -o "$out/terminals.wasm" >&2
echo "$out/terminals.wasm"
