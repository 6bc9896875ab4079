#!/usr/bin/env bash
# The first step of `just test`, so that a formatting slip or a lint fails in minutes rather than
# after the cluster suites: rustfmt and clippy (every target, warnings denied) over both
# workspaces, and a check that every crate of the main workspace is one that `just test` runs.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export LUMIGO_CACHE="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LUMIGO_CACHE/target}"

installed_components=$(rustup component list --installed)
for component in rustfmt clippy; do
  grep -q "^$component" <<<"$installed_components" || rustup component add "$component"
done

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
# The injector's own workspace and target directory (injector/justfile).
(cd injector && cargo fmt --check &&
  CARGO_TARGET_DIR="$LUMIGO_CACHE/injector-target" cargo clippy --all-targets --locked --quiet -- -D warnings)

# rustfmt wraps code at its max_width (rustfmt.toml: 100; the injector's: 120) but leaves what it
# cannot parse, such as macro bodies and long literals; they are wrapped by hand.
# The files in git and the new ones not ignored, as they are on disk (a deleted one is not read).
sources() {
  git ls-files --cached --others --exclude-standard -- "$@" | while read -r file; do
    if [[ -f $file ]]; then echo "$file"; fi
  done
}
too_long=$(sources '*.rs' ':!injector/*' | xargs -r awk 'length > 100 {print FILENAME ":" FNR}'
  sources 'injector/*.rs' | xargs -r awk 'length > 120 {print FILENAME ":" FNR}')
if [[ -n "$too_long" ]]; then
  echo "lint: lines wider than rustfmt's max_width:" >&2
  echo "$too_long" >&2
  exit 1
fi

# Each recipe of `just test` tests whole packages (`cargo test -p NAME`), so cargo finds every test
# file by itself; what it cannot find is a package no recipe names.
members=$(cargo metadata --no-deps --format-version 1 --locked |
  python3 -c 'import json, sys; print("\n".join(p["name"] for p in json.load(sys.stdin)["packages"]))')
untested=()
for member in $members; do
  grep -hE '^\s+.*cargo test .*-p '"$member"'( |$)' justfile ./*/justfile >/dev/null || untested+=("$member")
done
if ((${#untested[@]})); then
  echo "lint: no \`cargo test\` recipe runs the package(s) ${untested[*]}: add them to one that \`just test\` runs" >&2
  exit 1
fi
echo "lint: formatting and clippy clean; every package is tested"
