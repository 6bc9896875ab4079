#!/usr/bin/env bash
# Builds the OpenTelemetry Collector described by tools/otelcol/builder-config.yaml (the components
# the chart's telemetry proxy configures) with the Collector Builder of the same release, into
# $LUMIGO_CACHE/otelcol-bin/<version>-<manifest hash>/otelcol, and prints that path. The version must
# be the one the chart pins (telemetryProxy.image.tag in charts/lumigo-operator/values.yaml). The
# directory is renamed into place only after the build succeeded, so a warm run (the binary exists)
# returns at once; any edit of the manifest changes the hash, and so builds anew.
# The Go build and module caches stay at their default locations.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
manifest="$here/builder-config.yaml"
values="$here/../../charts/lumigo-operator/values.yaml"
die() { echo "tools/otelcol/build.sh: $*" >&2; exit 1; }

# dist.<key> of the manifest.
dist_field() {
    awk -v k="$1:" '/^[^[:space:]#]/ { d = ($1 == "dist:"); next }
        d && $1 == k { v = $2; gsub(/["\047]/, "", v); print v; exit }' "$manifest"
}
version="$(dist_field version)"
name="$(dist_field name)"
[[ -n "$version" && -n "$name" ]] || die "no dist.version or dist.name in $manifest"
# telemetryProxy.image.tag of the chart's values.
tag="$(awk '/^[^[:space:]#]/ { tp = ($1 == "telemetryProxy:"); img = 0; next }
    tp && /^  [^[:space:]#]/ { img = ($1 == "image:"); next }
    tp && img && $1 == "tag:" { v = $2; gsub(/["\047]/, "", v); print v; exit }' "$values")"
[[ -n "$tag" ]] || die "no telemetryProxy.image.tag in $values"
[[ "$version" == "$tag" ]] ||
    die "builder-config.yaml builds $version but the chart pins telemetryProxy.image.tag \"$tag\": make them agree"
# Every 0.x component must be of that release (the 1.x confmap providers go with it, see the manifest).
stray="$(awk -v want="v$version" '$1 == "-" && $2 == "gomod:" && $4 ~ /^v0\./ && $4 != want { print "  " $3 " " $4 }' "$manifest")"
[[ -z "$stray" ]] || die "components not at v$version in builder-config.yaml:
$stray"

hash="$(sha256sum "$manifest" | cut -c1-12)"
out="$cache/otelcol-bin/$version-$hash"

if [[ -x "$out/otelcol" ]]; then
    echo "$out/otelcol"
    exit 0
fi

command -v go >/dev/null || die "Go is required (see scripts/setup.sh)"

mkdir -p "$cache/otelcol-bin"
tmp="$(mktemp -d "$cache/otelcol-bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
echo "building the OpenTelemetry Collector $version (a cold build takes 10 minutes or more)" >&2
# Static binaries (the builder sets CGO_ENABLED=0 itself unless the manifest asks for cgo, and always
# builds with -trimpath). GOTOOLCHAIN=local: should the generated go.mod need a newer Go than the
# one installed, fail and say so rather than download another toolchain.
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local
# The builder of the same release: it also picks the go.opentelemetry.io/collector/otelcol version.
GOBIN="$tmp/bin" go install "go.opentelemetry.io/collector/cmd/builder@v$version"
cd "$tmp"
# Strict versioning: fail if dependency resolution moved any component off its manifest version.
"$tmp/bin/builder" --config="$manifest" --skip-strict-versioning=false --ldflags='-s -w' >&2
# Keep the generated sources (main.go, components.go, the resolved go.mod and go.sum) beside it.
mv "src/$name" otelcol
rm -rf bin
mv "$tmp" "$out"
trap - EXIT
echo "built in $((SECONDS - start)) s" >&2
echo "$out/otelcol"
