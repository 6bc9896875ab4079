# Every build, test and demo recipe of the project. `just --list` shows them.
# Cargo artifacts and Go-built binaries live outside the repo so warm runs are fast.

set shell := ["bash", "-euo", "pipefail", "-c"]

export CARGO_TARGET_DIR := env("CARGO_TARGET_DIR", env("HOME") + "/.cache/lumigo-operator/target")
export LUMIGO_CACHE := env("LUMIGO_CACHE", env("HOME") + "/.cache/lumigo-operator")

mod policy "policy-wasm/justfile"
mod injector "injector/justfile"
mod e2e "e2e/justfile"
mod chart "charts/justfile"
mod operator "operator/justfile"

# Run every test of the project: the lint gates first, then each part's tests.
test: lint deny setup policy::test injector::test e2e::test operator::test

# rustfmt and clippy (warnings denied) over both workspaces, no line past rustfmt's max_width, and
# every package covered by a test recipe (scripts/lint.sh).
lint:
    scripts/lint.sh

# cargo deny (deny.toml) over both workspaces: licenses, sources and bans always; advisories when the
# RustSec database can be fetched or a copy is in $LUMIGO_ADVISORY_DBS, else a notice says they were not.
deny:
    scripts/deny.sh

# Install the toolchain parts the tests need (idempotent).
setup:
    scripts/setup.sh

# Show the operator at work on a local cluster with a real node: trace a shop of Node.js, Python and
# Java services, then remove it all again. Installs what it needs first, as `just test` does.
demo: setup
    demo/run.sh
