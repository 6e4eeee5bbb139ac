#!/usr/bin/env bash
# The Raspberry Pi packages, cross-built and run under QEMU's user-mode emulation (README: Debian
# packages). Builds the package for TRIPLE with gateway/debian/cross-deb.sh (Debian's cross compilers;
# one release build, 8 to 14 minutes on 2 cores), checks its architecture, dependencies and ELF files,
# then runs the packaged binary with qemu-aarch64 or qemu-arm on the board's C library from the cross
# toolchain: --version, `sprig plugin check` on the packaged plugins, `sprig run` on a config of its own
# (a temporary data dir, free ports) until it is ready, /healthz, the MQTT port, create-job and list-jobs
# with the CLI, SIGTERM (exit status 0), and a second start that still has the job. Prints one line per
# check and, last, `cross: N passed, M failed`; exits 1 if any check failed.
#
#   tests/package/cross.sh aarch64-unknown-linux-gnu|armv7-unknown-linux-gnueabihf [--no-build]
#
# --no-build: package what target/TRIPLE/release already holds (build-deb.sh --no-build).
# It installs nothing on this machine but build tools: run as root, it installs the cross toolchain
# (cross-deb.sh), qemu-user and file with apt-get when they are missing. Not run by `.ci/run` (CI's time is
# limited); a person runs it after changing the build or the packaging. Emulation is no Raspberry Pi:
# it runs the code for the board's instruction set on this machine's kernel (its page size, its
# syscalls), and says nothing of systemd on the board. Environment: SPRIG_CROSS_TIMEOUT_S (120), how long
# sprig may take to become ready and to stop under emulation.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

if [ $# -lt 1 ]; then
    echo "usage: $0 aarch64-unknown-linux-gnu|armv7-unknown-linux-gnueabihf [--no-build]" >&2
    exit 2
fi
triple=$1
shift
case $triple in
    aarch64-unknown-linux-gnu) prefix=aarch64-linux-gnu arch=arm64 qemu=qemu-aarch64 elf="ELF 64-bit LSB .*ARM aarch64" ;;
    armv7-unknown-linux-gnueabihf) prefix=arm-linux-gnueabihf arch=armhf qemu=qemu-arm elf="ELF 32-bit LSB .*ARM, EABI5" ;;
    *)
        echo "cross: unsupported target $triple" >&2
        exit 2
        ;;
esac
build_args=()
[ "${1:-}" = --no-build ] && build_args=(--no-build)
timeout_s=${SPRIG_CROSS_TIMEOUT_S:-120}

suite=cross
# shellcheck source=tests/package/checks.sh
source tests/package/checks.sh # (from the repository's root, where the script runs)

# The emulator and `file`, from Debian's packages qemu-user and file.
missing=()
command -v "$qemu" >/dev/null 2>&1 || missing+=(qemu-user)
command -v file >/dev/null 2>&1 || missing+=(file)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "cross: installing ${missing[*]}" >&2
        apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
fi
require "$qemu, file and curl are installed (apt-get install qemu-user file curl)" \
    command -v "$qemu" file curl >/dev/null

# The build's progress goes to stderr; its last line on stdout is the package's path.
SECONDS=0
deb=$(bash gateway/debian/cross-deb.sh "$triple" "${build_args[@]}" | tail -1)
build_status=$?
if [ "$build_status" != 0 ] || [ ! -f "$deb" ]; then
    fail "cross-build the package" "exit $build_status"
    finish
fi
ok "cross-build the package in ${SECONDS} s ($deb)"

check "the package is for $arch" is "$(dpkg-deb -f "$deb" Architecture)" "$arch"
depends=$(dpkg-deb -f "$deb" Depends)
check "it depends on the board's libc6 ($depends)" matches "$depends" "^libc6(:$arch)? \(>= 2\.[0-9]+\),"
check "it depends on systemd-sysusers (the postinst's user)" matches "$depends" 'systemd-sysusers'

root=$(mktemp -d "${TMPDIR:-/tmp}/sprig-cross.XXXXXX")
sprig_pid=
cleanup() {
    if [ -n "$sprig_pid" ] && kill -0 "$sprig_pid" 2>/dev/null; then
        kill -KILL "$sprig_pid" 2>/dev/null
        wait "$sprig_pid" 2>/dev/null
    fi
    rm -rf "$root"
}
trap cleanup EXIT
require "dpkg-deb -x" quietly dpkg-deb -x "$deb" "$root/pkg"
sprig=$root/pkg/usr/bin/sprig
plugins=("$root"/pkg/usr/lib/sprig/plugins/libsprig_plugin_{rollback,reset}.so)
for path in "$sprig" "${plugins[@]}"; do
    check "${path#"$root/pkg"} is $arch code (file: $elf)" matches "$(file -b "$path")" "$elf"
done

# The board's dynamic loader and C library: the cross toolchain's (libc6-ARCH-cross).
emulate() { "$qemu" -L "/usr/$prefix" "$@"; }
version=$(dpkg-deb -f "$deb" Version)
check "$qemu: sprig --version" is "$(emulate "$sprig" --version 2>&1)" "sprig ${version%-*}"
for plugin in "${plugins[@]}"; do
    check "$qemu: sprig plugin check ${plugin##*/}" quietly emulate "$sprig" plugin check "$plugin"
done

# A config of its own: the packaged one with a temporary data dir and free ports on the loopback.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}
mqtt=$(free_port) api=$(free_port) metrics=$(free_port)
config=$root/gateway.toml
sed -e "s|^data_dir = .*|data_dir = \"$root/data\"|" \
    -e "s|^listen = \[\"127\.0\.0\.1:1883\"\]|listen = [\"127.0.0.1:$mqtt\"]|" \
    -e "s|^listen = \[\"127\.0\.0\.1:8080\"\]|listen = [\"127.0.0.1:$api\"]|" \
    -e "s|^listen = \[\"127\.0\.0\.1:9464\"\]|listen = [\"127.0.0.1:$metrics\"]|" \
    "$root/pkg/etc/sprig/gateway.toml" >"$config"
check "the test config has its own data dir and ports" is "$(grep -c -x -e "data_dir = \"$root/data\"" \
    -e "listen = \[\"127.0.0.1:\($mqtt\|$api\|$metrics\)\"\]" "$config")" 4
export SPRIG_CONFIG=$config
runs=0

# start NAME: sprig run under emulation (qemu itself in the background, so that SIGTERM reaches it) until
# its log ($log, one per run) says ready.
start() {
    runs=$((runs + 1))
    log=$root/sprig-$runs.log
    "$qemu" -L "/usr/$prefix" "$sprig" run </dev/null >"$log" 2>&1 &
    sprig_pid=$!
    local deadline=$((SECONDS + timeout_s))
    until grep -q ' ready' "$log" || ! kill -0 "$sprig_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; do
        sleep 0.2
    done
    if grep -q ' ready' "$log" && kill -0 "$sprig_pid" 2>/dev/null; then
        ok "$1"
    else
        fail "$1" "not ready after $timeout_s s"
        sed 's/^/    /' "$log"
        finish
    fi
}
# stop NAME: SIGTERM, then its exit status is 0 before the deadline.
stop() {
    kill -TERM "$sprig_pid"
    local deadline=$((SECONDS + timeout_s))
    while kill -0 "$sprig_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$sprig_pid" 2>/dev/null; then
        fail "$1" "still running after $timeout_s s"
        finish
    fi
    wait "$sprig_pid"
    check "$1" is "$?" 0
    sprig_pid=
}
cli() { timeout "$timeout_s" "$qemu" -L "/usr/$prefix" "$sprig" "$@" 2>&1; }

start "$qemu: sprig run becomes ready"
check "GET /healthz answers ok" is "$(curl -fsS --max-time 10 "http://127.0.0.1:$metrics/healthz" 2>&1)" ok
check "the MQTT listener takes connections" bash -c "exec 3<>/dev/tcp/127.0.0.1/$mqtt"
check "$qemu: sprig create-job" matches "$(cli create-job --job-id cross-check --targets pi-1 \
    --document '{"operation":"check"}')" '"jobId": "cross-check"'
check "$qemu: sprig list-jobs lists it" matches "$(cli list-jobs)" '"jobId": "cross-check"'
stop "SIGTERM: sprig exits with status 0"
check "its log says the store was flushed" grep -q 'store flushed' "$log"

start "$qemu: sprig run starts again on the same data"
check "$qemu: sprig describe-job finds the job it stored" \
    matches "$(cli describe-job --job-id cross-check)" '"jobId": "cross-check"'
stop "SIGTERM again: exit status 0"

finish
