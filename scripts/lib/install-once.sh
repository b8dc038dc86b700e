# Sourced by every install step (scripts/ensure-*, the examples' build.sh):
# makes a folder once, even when several callers start at the same time.
#
#   install_once DEST STAMP BUILD [ARGS...]
#
# DEST is the folder to make; STAMP names what it must hold (a version, a
# hash of pinned files): DEST counts as made when DEST/.stamp holds STAMP.
# Otherwise BUILD ARGS... TMP runs under an exclusive lock (DEST.lock) and
# fills TMP, a private folder beside DEST, which is then renamed into place
# in one step. A second caller waits for the lock, checks again and uses
# what the first one made; a build that fails or is killed leaves only its
# private folder behind, which the next build removes.
#
#   install_once --in-place DEST STAMP BUILD [ARGS...]
#
# For what cannot be moved once made (a Python virtualenv writes its own path
# into its scripts): BUILD fills DEST itself, under the same lock, and the
# stamp, written last by a rename, marks it complete.

# A build that fails must fail its caller, also when the caller reads the
# result through a command substitution (`dir=$(…)`), where bash would
# otherwise switch errexit off.
shopt -s inherit_errexit

install_once() {
  local in_place=
  if [ "$1" = --in-place ]; then in_place=1; shift; fi
  local dest=$1 stamp=$2
  shift 2
  if [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$stamp" ]; then return 0; fi
  mkdir -p "$(dirname "$dest")"
  (
    exec 8>"$dest.lock"
    flock 8
    if [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$stamp" ]; then exit 0; fi
    rm -rf "$dest".tmp.*
    if [ -n "$in_place" ]; then
      rm -rf "$dest"
      mkdir -p "$dest"
      "$@" "$dest"
      printf '%s\n' "$stamp" >"$dest/.stamp.new" && mv -f "$dest/.stamp.new" "$dest/.stamp"
    else
      local tmp
      tmp=$(mktemp -d "$dest.tmp.XXXXXX")
      "$@" "$tmp"
      printf '%s\n' "$stamp" >"$tmp/.stamp"
      rm -rf "$dest"
      mv -T "$tmp" "$dest"
    fi
  )
}

# The npm toolchain pinned by DIR/package-lock.json, in DIR/node_modules:
# installed once, and again when the lock file changes.
install_node_modules() { # DIR
  install_once "$1/node_modules" "$(sha256sum "$1/package-lock.json" | cut -c1-64)" _npm_ci "$1"
}
_npm_ci() { # DIR into
  local work
  work=$(mktemp -d)
  cp "$1/package.json" "$1/package-lock.json" "$work/"
  (cd "$work" && npm ci --no-audit --no-fund --loglevel=error >&2) || { rm -rf "$work"; return 1; }
  rmdir "$2"
  mv "$work/node_modules" "$2"
  rm -rf "$work"
}

# The folder expensive artifacts are kept in: $WORKSPACE_CULLER_INSTALL_DIR, or
# .cache at the top of the repository ($1).
install_cache_dir() {
  echo "${WORKSPACE_CULLER_INSTALL_DIR:-$1/.cache}"
}
