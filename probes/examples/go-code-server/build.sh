#!/usr/bin/env bash
# Builds the code-server probe component from this folder's Go source:
#   wit-bindgen's Go generator -> standard Go (GOOS=wasip1, //go:wasmexport)
#   -> wasm-tools component embed + new with the WASI preview-1 reactor adapter.
# Usage: ./build.sh [OUT_DIR]   (default: ./out; the component is OUT_DIR/code-server.wasm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root="${WORKSPACE_CULLER_ROOT:-$(cd "$here/../../.." && pwd)}"
wit="${WIT_DIR:-$root/wit}"
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
# wasm-tools, wit-bindgen, the adapter and Go support module, from crates.io.
eval "$("$root/scripts/ensure-probe-tools")"

gen="$out/gen"
rm -rf "$gen" && mkdir -p "$gen" && cd "$gen"
"$WIT_BINDGEN" go --world activity-probe "$wit" >/dev/null 2>&1
cp -r "$here/src/." .
# The generated code imports go.bytecodealliance.org/pkg; it ships in the
# wit-bindgen-go crate (its go.mod asks for a newer Go than it needs).
cp -r "$GO_WIT_PKG" go-pkg && chmod -R u+w go-pkg
sed -i 's/^go .*/go 1.25/' go-pkg/go.mod
go mod edit -replace go.bytecodealliance.org/pkg=./go-pkg
GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1

# A reactor (c-shared) core module; the runtime links runtime.sbrk for cabi_realloc.
GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath \
  -ldflags='-checklinkname=0 -s -w' -o "$out/core.wasm" .
"$WASM_TOOLS" component embed --world activity-probe "$wit" "$out/core.wasm" -o "$out/core-wit.wasm"
"$WASM_TOOLS" component new "$out/core-wit.wasm" --adapt "wasi_snapshot_preview1=$WASI_ADAPTER" \
  -o "$out/code-server.wasm"
"$WASM_TOOLS" validate "$out/code-server.wasm"
echo "$out/code-server.wasm"
