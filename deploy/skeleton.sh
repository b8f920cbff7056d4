#!/bin/sh
# Writes the dependency skeleton of the workspace into DEST: every Cargo.toml, Cargo.lock,
# every build.rs and proto/, with each crate's target roots (src/lib.rs, src/main.rs,
# src/bin/*.rs and any `path = "....rs"` a manifest names) replaced by stubs. Building it
# compiles every third-party dependency and nothing of ours, so deploy/Dockerfile caches
# that layer until a manifest, the lock file, a build script or a .proto changes.
# Usage: deploy/skeleton.sh DEST   (run from the repository root)
set -eu
dest=${1:?usage: deploy/skeleton.sh DEST}
mkdir -p "$dest"

files() { find . \( -name target -o -name .git -o -name .venv -o -path ./fuzz \) -prune -o -type f "$@" -print; }

files \( -name Cargo.toml -o -name Cargo.lock -o -name build.rs -o -name 'rust-toolchain*' \) \
  | xargs cp --parents -t "$dest"
[ ! -d proto ] || cp -R proto "$dest/"

{
  files \( -path '*/src/lib.rs' -o -path '*/src/main.rs' -o -path '*/src/bin/*.rs' \)
  files -name Cargo.toml | while read -r manifest; do
    dir=$(dirname "$manifest")
    sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest" \
      | while read -r root; do echo "$dir/$root"; done
  done
} | sort -u | while read -r root; do
  case "$root" in */build.rs) continue ;; esac
  mkdir -p "$dest/$(dirname "$root")"
  case "$root" in
    */src/lib.rs) : > "$dest/$root" ;;
    *) echo 'fn main() {}' > "$dest/$root" ;;
  esac
done
