# The check helpers of the package tests (deb.sh, cross.sh), sourced by them after they set `suite` (the
# prefix of every line they print). Each check prints `SUITE: NAME ... ok` or `... FAILED`; `finish` prints
# the failed ones and `SUITE: N passed, M failed` last, and exits 1 if any failed.
# shellcheck shell=bash
# shellcheck disable=SC2154 # suite: set by the script that sources this file

passed=0
failed=()
ok() { passed=$((passed + 1)); echo "$suite: $1 ... ok"; }
fail() { failed+=("$1"); echo "$suite: $1 ... FAILED${2:+ ($2)}"; }
# check NAME COMMAND...: the check passes when the command does.
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}
finish() {
    for name in "${failed[@]}"; do echo "$suite: failed: $name"; done
    echo "$suite: $passed passed, ${#failed[@]} failed"
    [ "${#failed[@]}" = 0 ]
    exit
}
# A check that the rest depends on: on failure, the result so far.
require() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else fail "$name"; finish; fi
}
# quietly COMMAND...: runs it without input, showing its output only if it fails.
quietly() {
    local out status
    out=$("$@" </dev/null 2>&1)
    status=$?
    [ "$status" = 0 ] || printf '%s\n    (exit %s)\n' "$out" "$status"
    return "$status"
}
is() { [ "$1" = "$2" ] || { echo "    expected '$2', found '$1'"; false; }; }
matches() { grep -Eq "$2" <<<"$1" || { echo "    expected /$2/, found '$1'"; false; }; }
