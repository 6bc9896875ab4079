#!/usr/bin/env bash
# Builds and pushes the release images with docker buildx (linux/amd64 + linux/arm64), recording
# each one's digest, and the annotated policy module as an OCI artifact. Not runnable on the
# development machine (no Docker engine); CI runs it on release.
#   usage: images/build.sh operator|autotrace|policy|all [REGISTRY]   (REGISTRY default ghcr.io/lumigo-rs)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
what=${1:?usage: images/build.sh operator|autotrace|policy|all [REGISTRY]}
registry=${2:-ghcr.io/lumigo-rs}
version="$(awk -F'"' '/^version = / { print $2; exit }' "$repo/Cargo.toml")"
chart_version="$(awk '/^appVersion:/ { gsub(/"/, "", $2); print $2 }' "$repo/charts/lumigo-operator/Chart.yaml")"
[[ "$version" == "$chart_version" ]] || { echo "Cargo.toml $version != Chart.yaml appVersion $chart_version" >&2; exit 1; }
platforms=linux/amd64,linux/arm64

# Each pushed image's digest (of its multi-platform index: what a pod reference pins) is printed
# and recorded in $out/<name>.digest, e.g. for the chart's `injector.image.digest`.
# Under target/, which neither git nor the build contexts take in.
out=${IMAGES_OUT:-$repo/target/images}
image() { # image NAME DOCKERFILE
    local metadata="$out/$1.metadata.json" digest
    mkdir -p "$out"
    docker buildx build --file "$repo/images/$2" --platform "$platforms" \
        --tag "$registry/$1:$version" --provenance=true --sbom=true --push \
        --metadata-file "$metadata" "$repo"
    digest=$(sed -n 's/.*"containerimage\.digest": *"\([^"]*\)".*/\1/p' "$metadata")
    [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "no image digest in $metadata" >&2; exit 1; }
    echo "$digest" >"$out/$1.digest"
    echo "pushed $registry/$1:$version@$digest (recorded in $out/$1.digest)"
}

policy() {
    # The annotated module (io.kubewarden.metadata custom section) built by `just policy::build`.
    local module
    module="$(cd "$repo" && just policy::build >/dev/null && just policy::path)"
    local ref="$registry/policies/lumigo-autotrace:v$version"
    if command -v kwctl >/dev/null; then
        kwctl push "$module" "$ref"
    else
        # The same artifact kwctl pushes: a Wasm module layer with Kubewarden's media types.
        oras push "$ref" \
            --artifact-type application/vnd.wasm.config.v1+json \
            --config /dev/null:application/vnd.wasm.config.v1+json \
            "$module:application/vnd.wasm.content.layer.v1+wasm"
    fi
    echo "pushed $ref (artifacthub-pkg.yml containersImages must name it)"
}

case "$what" in
    operator) image lumigo-operator operator.Dockerfile ;;
    autotrace) image autotrace autotrace.Dockerfile ;;
    policy) policy ;;
    all) image lumigo-operator operator.Dockerfile; image autotrace autotrace.Dockerfile; policy ;;
    *) echo "unknown: $what" >&2; exit 2 ;;
esac
