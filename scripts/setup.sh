#!/usr/bin/env bash
# Installs what the build and the tests need; every step checks first, so reruns are cheap.
set -euo pipefail

want_targets=(wasm32-wasip1)
installed_targets=$(rustup target list --installed)
for target in "${want_targets[@]}"; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done

want_debs=(binaryen curl)
missing=()
for pkg in "${want_debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
