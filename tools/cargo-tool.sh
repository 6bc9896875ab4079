#!/usr/bin/env bash
# Usage: tools/cargo-tool.sh CRATE VERSION BINARY
# Builds BINARY of CRATE at VERSION from crates.io into $LUMIGO_CACHE/CRATE-bin/VERSION/bin/BINARY
# and prints that path. `cargo install --locked` uses the crate's own lock file; the directory is
# renamed into place only after the build succeeded, so an interrupted build is never mistaken for
# a finished one and a warm run returns at once.
set -euo pipefail

crate=$1 version=$2 binary=$3
cache="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
out="$cache/$crate-bin/$version"

if [[ -x "$out/bin/$binary" ]]; then
    echo "$out/bin/$binary"
    exit 0
fi

mkdir -p "$cache/$crate-bin"
tmp="$(mktemp -d "$cache/$crate-bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "building $crate $version (a cold build takes several minutes)" >&2
# Its own target directory: the workspace's CARGO_TARGET_DIR must not collect a tool's build.
CARGO_TARGET_DIR="$tmp/target" cargo install --quiet --locked "$crate" --version "$version" --root "$tmp" >&2
rm -rf "$tmp/target"
mv "$tmp" "$out"
trap - EXIT
echo "built in $((SECONDS - start)) s" >&2
echo "$out/bin/$binary"
