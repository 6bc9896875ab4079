#!/usr/bin/env bash
# Builds the HTTP load generator oha, at the version pinned here, from crates.io into
# $LUMIGO_CACHE/oha-bin/<version>/bin/oha and prints that path. `cargo install --locked` uses
# the crate's own lock file; the directory is renamed into place only after the build succeeded,
# so a warm run returns at once.
set -euo pipefail

version=1.15.0
cache="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
out="$cache/oha-bin/$version"

if [[ -x "$out/bin/oha" ]]; then
    echo "$out/bin/oha"
    exit 0
fi

mkdir -p "$cache/oha-bin"
tmp="$(mktemp -d "$cache/oha-bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "building oha $version (a cold build takes a few minutes)" >&2
# Its own target directory: the workspace's CARGO_TARGET_DIR must not collect a tool's build.
CARGO_TARGET_DIR="$tmp/target" cargo install --quiet --locked oha --version "$version" --root "$tmp" >&2
rm -rf "$tmp/target"
mv "$tmp" "$out"
trap - EXIT
echo "built in $((SECONDS - start)) s" >&2
echo "$out/bin/oha"
