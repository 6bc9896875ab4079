#!/usr/bin/env bash
# Builds what the images of the e2e node are assembled from (e2e/src/images.rs) and prints the
# `export` lines that hand them to the tests and the demo:
#   LUMIGO_POLICY_WASM      the annotated policy module (just policy::build)
#   LUMIGO_OPERATOR_BINARY  the static (musl) operator, as images/operator.Dockerfile builds it
#   LUMIGO_PAYLOAD_DIR      /opt/lumigo for this machine's architecture (injector/scripts/payload.sh)
#   LUMIGO_COLLECTOR        the telemetry proxy's collector (tools/otelcol/build.sh)
#   LUMIGO_COLLECTOR_TAG    its version, the chart's telemetryProxy.image.tag
# Every step is cached (cargo, the payload's downloads, the collector by version), so a warm run
# takes seconds. Progress goes to stderr.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LUMIGO_CACHE="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LUMIGO_CACHE/target}"
just=(just --justfile "$repo/justfile")

echo "image inputs: the policy module" >&2
"${just[@]}" policy::build >&2
policy="$("${just[@]}" policy::path)"

arch="$(uname -m)"
target="$arch-unknown-linux-musl"
echo "image inputs: the static operator binary ($target)" >&2
# ring's C code is compiled for musl by musl-gcc, as in images/operator.Dockerfile.
export "CC_${target//-/_}=musl-gcc"
(cd "$repo" && cargo build --locked --quiet --profile image --target "$target" -p lumigo-operator --bin lumigo-operator)
operator="$CARGO_TARGET_DIR/$target/image/lumigo-operator"
if readelf -l "$operator" | grep -q INTERP; then
    echo "image-inputs.sh: $operator is not static" >&2
    exit 1
fi

echo "image inputs: the /opt/lumigo payload" >&2
payload="$LUMIGO_CACHE/e2e-payload/opt/lumigo"
"${just[@]}" injector::payload "$payload" >&2

echo "image inputs: the collector" >&2
collector="$("$repo/tools/otelcol/build.sh")"
# tools/otelcol/build.sh has checked that the chart pins the version it builds; the binary says which.
collector_tag="$("$collector" --version | awk '{ print $NF }')"

printf 'export LUMIGO_POLICY_WASM=%q\n' "$policy"
printf 'export LUMIGO_OPERATOR_BINARY=%q\n' "$operator"
printf 'export LUMIGO_PAYLOAD_DIR=%q\n' "$payload"
printf 'export LUMIGO_COLLECTOR=%q\n' "$collector"
printf 'export LUMIGO_COLLECTOR_TAG=%q\n' "$collector_tag"
