#!/usr/bin/env bash
# Builds the node's container runtime (containerd, containerd-shim-runc-v2, ctr from e2e/containerd/go.mod),
# its DNS (coredns from e2e/coredns/go.mod) and its pod sandbox program (node/pause.c) into
# $LUMIGO_CACHE/node-bin/<containerd>-<coredns>-<pause.c hash>/, and prints that directory. The rest of
# the node (kubelet, kube-proxy, kube-scheduler) comes from build-binaries.sh with the control plane; runc, the CNI plugins and iptables are Debian packages
# (scripts/setup.sh). Like build-binaries.sh: a directory that exists is complete, a warm run returns at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"

version_of() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$2"; }
containerd_version="$(version_of github.com/containerd/containerd/v2 "$here/containerd/go.mod")"
coredns_version="$(version_of github.com/coredns/coredns "$here/coredns/go.mod")"
pause_hash="$(sha256sum "$here/node/pause.c" | cut -c1-12)"
out="$cache/node-bin/containerd-$containerd_version-coredns-$coredns_version-pause-$pause_hash"

if [[ -x "$out/coredns" ]]; then
    echo "$out"
    exit 0
fi

command -v go >/dev/null || { echo "build-node-binaries.sh: Go is required (see scripts/setup.sh)" >&2; exit 1; }
command -v gcc >/dev/null || { echo "build-node-binaries.sh: gcc is required (Debian package gcc)" >&2; exit 1; }

mkdir -p "$cache/node-bin"
tmp="$(mktemp -d "$cache/node-bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
echo "building containerd $containerd_version and CoreDNS $coredns_version (a cold build takes several minutes)" >&2
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
cd "$here/containerd"
# The storage drivers that need cgo or kernel features this node does not use are left out.
go build -trimpath -tags no_btrfs,no_devmapper,no_zfs \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version" -o "$tmp/" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr
cd "$here/coredns"
go build -trimpath -ldflags '-s -w' -o "$tmp/coredns" github.com/coredns/coredns
gcc -static -Os -s -o "$tmp/pause" "$here/node/pause.c"
mv "$tmp" "$out"
trap - EXIT
echo "built in $((SECONDS - start)) s" >&2
echo "$out"
