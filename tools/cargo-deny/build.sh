#!/usr/bin/env bash
# Builds cargo-deny, at the version pinned here, from crates.io into
# $LUMIGO_CACHE/cargo-deny-bin/<version>/bin/cargo-deny and prints that path. `cargo install
# --locked` uses the crate's own lock file; the directory is renamed into place only after the
# build succeeded, so an interrupted build is never mistaken for a finished one and a warm run
# returns at once.
set -euo pipefail

version=0.20.2
cache="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
out="$cache/cargo-deny-bin/$version"

if [[ -x "$out/bin/cargo-deny" ]]; then
    echo "$out/bin/cargo-deny"
    exit 0
fi

mkdir -p "$cache/cargo-deny-bin"
tmp="$(mktemp -d "$cache/cargo-deny-bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "building cargo-deny $version (a cold build takes several minutes)" >&2
# Its own target directory: the workspace's CARGO_TARGET_DIR must not collect a tool's build.
CARGO_TARGET_DIR="$tmp/target" cargo install --quiet --locked cargo-deny --version "$version" --root "$tmp" >&2
rm -rf "$tmp/target"
mv "$tmp" "$out"
trap - EXIT
echo "built in $((SECONDS - start)) s" >&2
echo "$out/bin/cargo-deny"
