#!/usr/bin/env bash
# Builds the helm command of the release pinned in tools/helm/go.mod into
# $LUMIGO_CACHE/helm-bin/<version>/helm and prints that path. The directory is renamed into place
# only after the build succeeded, so a warm run (the binary exists) returns at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
version="$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v/ { print $2; exit }' "$here/go.mod")"
[[ -n "$version" ]] || { echo "tools/helm/build.sh: no helm.sh/helm/v3 version in go.mod" >&2; exit 1; }
out="$cache/helm-bin/$version"

if [[ -x "$out/helm" ]]; then
    echo "$out/helm"
    exit 0
fi

command -v go >/dev/null || { echo "tools/helm/build.sh: Go is required (see scripts/setup.sh)" >&2; exit 1; }

mkdir -p "$cache/helm-bin"
tmp="$(mktemp -d "$cache/helm-bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
echo "building helm $version (a cold build takes a few minutes)" >&2
cd "$here"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
# The stamps upstream's Makefile adds: helm's own version, and the Kubernetes version `helm template`
# and `helm lint` assume (from client-go's; without it they assume 1.20 and reject kubeVersion).
client_go="$(awk '$1 == "k8s.io/client-go" && $2 ~ /^v/ { print $2; exit }' go.mod)"
k8s_minor="$(cut -d. -f2 <<<"$client_go")"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
go build -trimpath -ldflags "$ldflags" \
    -o "$tmp/helm" helm.sh/helm/v3/cmd/helm
mv "$tmp" "$out"
trap - EXIT
echo "built in $((SECONDS - start)) s" >&2
echo "$out/helm"
