#!/usr/bin/env bats
# The annotated policy module under kwctl, the way Kubewarden's policy-server runs it: every request
# fixture of policies/fixtures with policies/settings.json. The policy never denies, so every answer
# is allowed; it carries a patch exactly for the fixtures tests/fixtures.rs expects to be mutated,
# and warnings (no patch) for the ones it expects to be warned about. The expectations are read from
# that file's `expectation` table, so there is one list of them.
#
# Run with `just policy::e2e`. Skipped without kwctl, or without the module (`just policy::build`;
# its path from $LUMIGO_POLICY_WASM, else `just path`).

ALLOWED='"allowed"[[:space:]]*:[[:space:]]*true'
PATCH='"patch"[[:space:]]*:[[:space:]]*"'
LUMIGO_WARNING='"warnings"[[:space:]]*:[[:space:]]*\[[[:space:]]*"lumigo: '
WARNINGS='"warnings"[[:space:]]*:'

setup() {
    command -v kwctl >/dev/null || skip "kwctl is not installed"
    module=${LUMIGO_POLICY_WASM:-}
    if [[ -z $module ]] && command -v just >/dev/null; then
        module=$(just --justfile "$BATS_TEST_DIRNAME/justfile" path)
    fi
    [[ -n $module && -f $module ]] || skip "no policy module at '${module}': run just policy::build"
    policies="$BATS_TEST_DIRNAME/../policies"
}

# `<expectation>: <fixture> ...` lines (mutated, untouched, warned) from tests/fixtures.rs.
expectations() {
    awk '
        /fn expectation/ { on = 1; next }
        !on { next }
        /other =>/ { exit }
        {
            line = $0
            while (match(line, /"[a-z0-9-]+"/)) {
                names = names " " substr(line, RSTART + 1, RLENGTH - 2)
                line = substr(line, RSTART + RLENGTH)
            }
            if (match($0, /Expect::[A-Za-z]+/)) {
                print tolower(substr($0, RSTART + 8, RLENGTH - 8)) ":" names
                names = ""
            }
        }
    ' "$BATS_TEST_DIRNAME/tests/fixtures.rs"
}

# The fixtures expected to be `$1`.
expected() {
    expectations | sed -n "s/^$1: //p"
}

# kwctl's AdmissionResponse for fixture `$1` on stdout; its log goes to a file, shown on failure.
review() {
    kwctl run --settings-path "$policies/settings.json" \
        --request-path "$policies/fixtures/$1.json" "$module" 2>"$BATS_TEST_TMPDIR/$1.log"
}

# Runs fixture `$1` and checks the answer against expectation `$2`.
check() {
    local fixture=$1 expect=$2
    run review "$fixture"
    if ((status != 0)); then
        echo "$fixture: kwctl exited with $status: $output"
        cat "$BATS_TEST_TMPDIR/$fixture.log"
        return 1
    fi
    [[ $output =~ $ALLOWED ]] || { echo "$fixture: not allowed: $output"; return 1; }
    case $expect in
        mutated)
            [[ $output =~ $PATCH ]] || { echo "$fixture: no patch: $output"; return 1; }
            ;;
        untouched)
            [[ ! $output =~ $PATCH ]] || { echo "$fixture: patched: $output"; return 1; }
            [[ ! $output =~ $WARNINGS ]] || { echo "$fixture: warned: $output"; return 1; }
            ;;
        warned)
            [[ ! $output =~ $PATCH ]] || { echo "$fixture: patched: $output"; return 1; }
            [[ $output =~ $LUMIGO_WARNING ]] || { echo "$fixture: no lumigo warning: $output"; return 1; }
            ;;
    esac
}

@test "every fixture has an expectation in tests/fixtures.rs" {
    local listed fixture
    listed=" $(expected mutated) $(expected untouched) $(expected warned) "
    [[ $(expected mutated) && $(expected untouched) && $(expected warned) ]] ||
        { echo "cannot read the expectation table of tests/fixtures.rs"; return 1; }
    for fixture in "$policies"/fixtures/*.json; do
        fixture=$(basename "$fixture" .json)
        [[ $listed == *" $fixture "* ]] || { echo "$fixture: no expectation"; return 1; }
    done
}

@test "fixtures to be mutated are allowed with a patch" {
    local fixture
    for fixture in $(expected mutated); do
        check "$fixture" mutated
    done
}

@test "fixtures to be left alone are allowed without a patch or a warning" {
    local fixture
    for fixture in $(expected untouched); do
        check "$fixture" untouched
    done
}

@test "fixtures the policy cannot handle are allowed unchanged with a warning" {
    local fixture
    for fixture in $(expected warned); do
        check "$fixture" warned
    done
}
