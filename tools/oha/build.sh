#!/usr/bin/env bash
# The HTTP load generator oha at the version pinned here, built once into $LUMIGO_CACHE; prints
# the binary's path.
set -euo pipefail
exec "$(dirname "$0")/../cargo-tool.sh" oha 1.15.0 oha
