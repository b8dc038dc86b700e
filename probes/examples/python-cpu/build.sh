#!/usr/bin/env bash
# Builds the cpu-time probe component from app/app.py with componentize-py from PyPI.
# Usage: ./build.sh [OUT_DIR]   (default: ./out; the component is OUT_DIR/cpu-time.wasm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root="${WORKSPACE_CULLER_ROOT:-$(cd "$here/../../.." && pwd)}"
wit="${WIT_DIR:-$root/wit}"
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
cd "$here"
# The pinned toolchain in a virtualenv of its own, installed once and again
# when requirements.txt changes; safe when several builds start at once.
. "$root/scripts/lib/install-once.sh"
make_venv() { # into (the virtualenv's final place: its scripts name it)
  python3 -m venv "$1"
  "$1/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt >&2
}
install_once --in-place "$here/.venv" "$(sha256sum requirements.txt | cut -c1-64)" make_venv
# Only app/ is bundled (not the virtualenv's packages).
cd app
env -u VIRTUAL_ENV ../.venv/bin/componentize-py -d "$wit" -w activity-probe componentize app -p . \
  -o "$out/cpu-time.wasm" >/dev/null
echo "$out/cpu-time.wasm"
