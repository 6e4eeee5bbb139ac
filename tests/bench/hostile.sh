#!/usr/bin/env bash
# Hostile-client benchmark, sprig vs mosquitto (tests/benches/hostile.rs): installs Debian's mosquitto (with
# mosquitto_passwd, for the login-flood run) if it is missing, raises the open-files limit, builds sprig's
# release binary and runs the benchmark. Environment: SPRIG_HOSTILE_ATTACKS
# (filters,slow,flood,violations,createjob), SPRIG_HOSTILE_FILTERS (100000), SPRIG_HOSTILE_SESSIONS (1000),
# SPRIG_HOSTILE_SLOW_READERS (4), SPRIG_HOSTILE_SLOW_MIB (16), SPRIG_HOSTILE_WRITE_STALL_MS (10000),
# SPRIG_HOSTILE_FLOOD (600), SPRIG_HOSTILE_VIOLATIONS (3000), SPRIG_HOSTILE_TARGETS (50000),
# SPRIG_HOSTILE_WINDOW_S (20), SPRIG_HOSTILE_SETTLE_S (10), SPRIG_HOSTILE_BASELINE_S (10),
# SPRIG_HOSTILE_DEADLINE_S (1200), SPRIG_HOSTILE_LOGS (a directory for the brokers' logs).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "hostile.sh: mosquitto is not installed; run as root or: sudo apt-get install -y mosquitto" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto
fi
export PATH="$PATH:/usr/sbin"

# The login flood's sockets plus some; the benchmark and the brokers it starts inherit this limit.
want=$((${SPRIG_HOSTILE_FLOOD:-600} + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
    ulimit -Hn "$want" 2>/dev/null || want=$hard
fi
ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "hostile.sh: ulimit -n = $(ulimit -n), $(mosquitto -h 2>/dev/null | head -1)" >&2

cargo build --release -p sprig-gateway --bin sprig
exec cargo bench -p sprig-tests --bench hostile
