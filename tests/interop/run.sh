#!/usr/bin/env bash
# Interoperability tests: real third-party MQTT clients (AWS IoT Device SDK v2 for Python, Eclipse Paho)
# against the real `sprig` binary. Creates (once) a virtualenv in target/interop-venv with the pinned
# versions of tests/interop/requirements.txt, builds target/debug/sprig, runs every tests/interop/test_*.py,
# prints one line per test and, last, `interop: N passed, M failed`; exits 1 if any test failed.
#
# Environment: PYTHON (python3), SPRIG_BIN (a sprig binary to use instead of building one),
# SPRIG_INTEROP_TEST_TIMEOUT_S (600, per test script), and the SPRIG_INTEROP_* settings of
# tests/interop/flow.py (runs, step timeout, run deadline, verbose).
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${CARGO_TARGET_DIR:-target}
venv=$target/interop-venv
logs=$target/interop-logs
requirements=tests/interop/requirements.txt
python=${PYTHON:-python3}

# The virtualenv: made once, reinstalled when requirements.txt changes (its hash is kept in the venv).
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ] \
    || ! "$venv/bin/python" -c 'import awsiot, awscrt, paho.mqtt, boto3' 2>/dev/null; then
    echo "interop: installing $(grep -v '^#' "$requirements" | xargs) into $venv" >&2
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        echo "interop: '$python -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
    echo "$want" > "$venv/.requirements.sha256"
fi

if [ -z "${SPRIG_BIN:-}" ]; then
    cargo build --quiet -p sprig-gateway --bin sprig
    export SPRIG_BIN=$target/debug/sprig
fi
[ -x "$SPRIG_BIN" ] || { echo "interop: no sprig binary at $SPRIG_BIN" >&2; exit 1; }
SPRIG_BIN=$(realpath "$SPRIG_BIN")

# No __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
rm -rf "$logs"  # this run's logs only
mkdir -p "$logs"
passed=0
failed=()
for test in tests/interop/test_*.py; do
    name=$(basename "$test" .py)
    log=$logs/$name.log
    start=$(date +%s%N)
    status=0
    # -u: unbuffered, so a test killed by the timeout still leaves its output in the log.
    timeout --kill-after=10 "${SPRIG_INTEROP_TEST_TIMEOUT_S:-600}" \
        "$venv/bin/python" -u "$test" </dev/null >"$log" 2>&1 || status=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    took="$((ms / 1000)).$((ms % 1000 / 100)) s"
    summary=$(sed -n "s/^  $name: \([0-9]*\/[0-9]* runs passed.*\)/\1/p" "$log" | tail -1)
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then
        summary="killed after ${SPRIG_INTEROP_TEST_TIMEOUT_S:-600} s"
    fi
    if [ "$status" = 0 ]; then
        passed=$((passed + 1))
        echo "interop: $name ... ok ($summary; $took)"
    else
        failed+=("$name")
        echo "interop: $name ... FAILED (${summary:-no summary}; exit $status; $took)"
    fi
done

for name in "${failed[@]}"; do
    echo
    echo "---- $name ($logs/$name.log) ----"
    cat "$logs/$name.log"
done
echo "interop: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" = 0 ]
