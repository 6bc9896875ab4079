#!/usr/bin/env bash
# cargo deny over both workspaces (this one and injector/'s), with deny.toml:
# licenses, sources and bans always, each failing the run on a violation; advisories when the
# RustSec database can be fetched, or a copy of it is in $CARGO_HOME/advisory-dbs (deny.toml's
# db-path, laid out as `cargo deny fetch db` does). Without either, a notice says
# the advisories were not checked and why: a machine that reaches crates.io but not the
# database's git host must still be able to check the rest.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LUMIGO_CACHE="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
deny_bin="$("$repo/tools/cargo-deny/build.sh")"
cd "$repo"

workspaces=("Cargo.toml" "injector/Cargo.toml")
deny() {
    local rc=0
    "$deny_bin" deny --locked --config "$repo/deny.toml" "$@" || rc=$?
    # cargo-deny ends its summary line without a newline.
    echo >&2
    return "$rc"
}

failed=()
for manifest in "${workspaces[@]}"; do
    echo "deny: licenses, sources, bans of $manifest" >&2
    unmet=()
    # The injector's workspace has no dependency, so none of the allowed licences is met there.
    if [[ $manifest == injector/* ]]; then
        unmet=(-A license-not-encountered -A license-exception-not-encountered)
    fi
    deny --manifest-path "$manifest" check "${unmet[@]}" licenses sources bans ||
        failed+=("licenses/sources/bans of $manifest")
done

fetch_log="$(mktemp)"
trap 'rm -f "$fetch_log"' EXIT
fetch_error() { grep -m1 -i 'fatal' "$fetch_log" || grep -m1 -i 'error' "$fetch_log" || tail -1 "$fetch_log"; }
have_db() { compgen -G "$dbs/advisory-db-*/crates" >/dev/null; }
if timeout 180 "$deny_bin" deny --config "$repo/deny.toml" fetch db >"$fetch_log" 2>&1; then
    db_state="fetched now"
elif have_db; then
    db=$(compgen -G "$dbs/advisory-db-*" | head -1)
    db_state="NOT refreshed (the fetch failed: $(fetch_error)); using the copy in $db of $(git -C "$db" log -1 --format=%cs 2>/dev/null || echo 'unknown date')"
else
    db_state=
fi

if [[ -n $db_state ]]; then
    echo "deny: advisories, RustSec database $db_state" >&2
    for manifest in "${workspaces[@]}"; do
        deny --offline --manifest-path "$manifest" check advisories ||
            failed+=("advisories of $manifest")
    done
else
    reason=$(fetch_error)
    cat >&2 <<NOTICE
deny: NOTICE: advisories were NOT checked. The RustSec advisory database could not be fetched
deny:   ($reason)
deny:   and no copy is in $dbs. Where the database's host is reachable this step
deny:   fetches it; elsewhere, put a clone of it at the path above (advisory-db-<hash>/, as
deny:   'cargo deny fetch db' names it).
NOTICE
fi

if ((${#failed[@]})); then
    printf 'deny: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
if [[ -n $db_state ]]; then
    echo "deny: ok (licenses, sources, bans, advisories)" >&2
else
    echo "deny: ok (licenses, sources, bans; advisories NOT checked, see the notice above)" >&2
fi
