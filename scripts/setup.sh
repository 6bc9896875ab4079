#!/usr/bin/env bash
# Installs what the build and the tests need; every step checks first, so reruns are cheap.
set -euo pipefail

# The operator image's static binary is built for musl (e2e/image-inputs.sh).
want_targets=(wasm32-wasip1 "$(uname -m)-unknown-linux-musl")
installed_targets=$(rustup target list --installed)
for target in "${want_targets[@]}"; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done

# The e2e node (e2e/src/node.rs): runc, the CNI plugins, iptables and conntrack for kube-proxy,
# busybox-static for the autotrace image's copy step, musl-tools for the static operator, gcc for
# the pause program, Python 3.11 for the shop's Python image.
want_debs=(binaryen curl runc containernetworking-plugins iptables conntrack busybox-static musl-tools gcc
  util-linux procps iproute2 python3.11 python3-pip)
missing=()
for pkg in "${want_debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
