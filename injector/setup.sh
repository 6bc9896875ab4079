#!/usr/bin/env bash
# Installs what the injector's build and test matrix need. Every step checks first, so a warm
# rerun costs a few dpkg/rustup queries and never touches the network.
set -euo pipefail

# The object is libc-independent, so the gnu targets serve glibc and musl hosts alike.
want_targets=(aarch64-unknown-linux-gnu)
installed_targets=$(rustup target list --installed)
for target in "${want_targets[@]}"; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done

# musl:arm64 is a foreign-architecture package: the arm64 architecture must be known to dpkg
# before apt can even see it.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  need_update=1
fi

want_debs=(gcc binutils musl musl-tools musl-dev qemu-user gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu
  libc6-dev-arm64-cross musl:arm64 musl-dev:arm64 curl)
# The end-to-end tests use whatever node and python3 the machine has; Debian's only if none.
command -v python3 >/dev/null || want_debs+=(python3 python3-pip)
{ command -v node && command -v npm; } >/dev/null || want_debs+=(nodejs npm)
missing=()
for pkg in "${want_debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})) || [[ -n ${need_update:-} ]]; then
  apt-get update -qq
  if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
fi
