#!/usr/bin/env bash
# cargo-deny at the version pinned here, built once into $LUMIGO_CACHE; prints the binary's path.
set -euo pipefail
exec "$(dirname "$0")/../cargo-tool.sh" cargo-deny 0.20.2 cargo-deny
