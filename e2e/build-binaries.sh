#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kubectl and the node components (kube-scheduler,
# kubelet, kube-proxy) from the versions pinned in e2e/k8s/go.mod into
# $LUMIGO_CACHE/k8s-bin/<k8s-version>-<etcd-version>-node/, and prints that directory.
# A directory that exists is complete (it is renamed into place only after every build succeeded),
# so a warm run returns at once. The Go build and module caches stay at their default locations.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"

# Must agree with the version lookup in e2e/src/binaries.rs, which reads the same go.mod.
version_of() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$here/k8s/go.mod"; }
k8s_version="$(version_of k8s.io/kubernetes)"
etcd_version="$(version_of go.etcd.io/etcd/server/v3)"
# The "-node" suffix: a cache directory from before the node components were added lacks them.
out="$cache/k8s-bin/$k8s_version-$etcd_version-node"

if [[ -x "$out/kubectl" ]]; then
    echo "$out"
    exit 0
fi

command -v go >/dev/null || { echo "build-binaries.sh: Go is required (see scripts/setup.sh)" >&2; exit 1; }

mkdir -p "$cache/k8s-bin"
tmp="$(mktemp -d "$cache/k8s-bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
echo "building Kubernetes $k8s_version and etcd $etcd_version (a cold build takes several minutes)" >&2
cd "$here/k8s"
# Static, stripped, path-independent binaries: no C toolchain needed and the cache key is the version.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
go build -trimpath -ldflags '-s -w' -o "$tmp/etcd" go.etcd.io/etcd/server/v3
# Without the version stamps upstream's release scripts add, /version and `kubectl version` would
# say v0.0.0-master.
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    stamp+=" -X $pkg.gitTreeState=clean"
done
go build -trimpath -ldflags "-s -w$stamp" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl
mv "$tmp" "$out"
trap - EXIT
echo "built in $((SECONDS - start)) s" >&2
echo "$out"
