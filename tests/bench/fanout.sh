#!/usr/bin/env bash
# Fan-out benchmark, sprig vs mosquitto (tests/benches/fanout.rs): installs Debian's mosquitto if it is
# missing, raises the open-files limit (10,000 devices are 10,000 sockets on each side), builds sprig's
# release binary and runs the benchmark. Environment: SPRIG_FANOUT_SIZES (1000,10000), SPRIG_FANOUT_RUNS (5),
# SPRIG_FANOUT_CYCLES (10), SPRIG_FANOUT_ROUNDS (1), SPRIG_FANOUT_RUN_TIMEOUT_S (60), SPRIG_FANOUT_DEADLINE_S (1800).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "fanout.sh: mosquitto is not installed; run as root or: sudo apt-get install -y mosquitto" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto
fi
export PATH="$PATH:/usr/sbin"

# Sockets for 10,000 devices plus some; the benchmark and the brokers it starts inherit this limit.
want=$((${SPRIG_FANOUT_MAX_N:-10000} * 2 + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
    ulimit -Hn "$want" 2>/dev/null || want=$hard
fi
ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "fanout.sh: ulimit -n = $(ulimit -n), $(mosquitto -h 2>/dev/null | head -1)" >&2

cargo build --release -p sprig-gateway --bin sprig
exec cargo bench -p sprig-tests --bench fanout
