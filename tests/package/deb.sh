#!/usr/bin/env bash
# The Debian package, installed and used as an admin would (README: Debian packages). Builds the amd64
# package with gateway/debian/build-deb.sh (one release build of the gateway and the example plugins),
# installs it with `dpkg -i`, checks the files and what the maintainer scripts did, runs the unit's
# ExecStart line as the unit's User until sprig is ready, stops it with SIGTERM, then checks that
# `dpkg -r` keeps the config and the data and `dpkg -P` removes them. Prints one line per check and, last,
# `package: N passed, M failed`; exits 1 if any check failed.
#
# It installs and purges the package `sprig` on this machine, as root: run it on a CI or development
# machine, never on a gateway in service. A package left installed by an earlier run is purged first;
# cargo-deb is installed (the pinned version) if missing. Environment: SPRIG_PACKAGE_TIMEOUT_S (60), how
# long sprig may take to become ready and to stop; SPRIG_PACKAGE_PROFILE (release), the cargo profile
# packaged (`.ci/run` packages `dev`, which its `cargo test` has built, to spare CI a release build).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

cargo_deb_version=3.8.0
package=sprig
unit=/usr/lib/systemd/system/sprig.service
timeout_s=${SPRIG_PACKAGE_TIMEOUT_S:-60}
target=${CARGO_TARGET_DIR:-target}
log=$target/package-test/sprig.log

suite=package
# shellcheck source=tests/package/checks.sh
source tests/package/checks.sh # (from the repository's root, where the script runs)
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" = installed ]; }
known_to_dpkg() { dpkg-query -W "$package" >/dev/null 2>&1; }
# owner_mode PATH: `user:group mode` of PATH.
owner_mode() { stat -c '%U:%G %a' "$1" 2>/dev/null; }
not() { ! "$@"; }
# The value of KEY= in the installed unit (the last one, as systemd takes it).
unit_value() { sed -n "s/^$1=//p" "$unit" | tail -1; }

sprig_pid=
cleanup() {
    if [ -n "$sprig_pid" ] && kill -0 "$sprig_pid" 2>/dev/null; then
        kill -KILL "$sprig_pid" 2>/dev/null
    fi
    if known_to_dpkg; then dpkg -P "$package" >/dev/null 2>&1; fi
}
trap cleanup EXIT

require "run as root (dpkg installs the package)" [ "$(id -u)" = 0 ]
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    echo "package: installing cargo-deb $cargo_deb_version" >&2
    cargo install cargo-deb --locked --version "$cargo_deb_version" >&2
fi
require "cargo-deb $cargo_deb_version" [ "$(cargo deb --version 2>/dev/null)" = "cargo-deb $cargo_deb_version" ]

# A run interrupted before its purge left the package behind.
if known_to_dpkg; then
    echo "package: purging the $package package an earlier run left" >&2
    dpkg -P "$package" >&2
fi

# The build's progress goes to stderr; its last line on stdout is the package's path.
deb=$(bash gateway/debian/build-deb.sh --profile "${SPRIG_PACKAGE_PROFILE:-release}" | tail -1)
build_status=$?
if [ "$build_status" != 0 ] || [ ! -f "$deb" ]; then
    fail "build the package" "exit $build_status"
    finish
fi
ok "build the package ($deb)"

arch=$(dpkg --print-architecture)
check "the package is for this machine ($arch)" is "$(dpkg-deb -f "$deb" Architecture)" "$arch"
check "it depends on systemd-sysusers (the postinst's user)" \
    grep -q 'systemd-sysusers' <<<"$(dpkg-deb -f "$deb" Depends)"

require "dpkg -i" quietly dpkg -i "$deb"
require "dpkg says it is installed" installed

# What goes where.
files=$(dpkg -L "$package")
for path in /usr/bin/sprig /usr/lib/sprig/plugins/libsprig_plugin_rollback.so \
    /usr/lib/sprig/plugins/libsprig_plugin_reset.so "$unit" /usr/lib/sysusers.d/sprig.conf \
    /etc/sprig/gateway.toml /usr/share/doc/sprig/README.md; do
    check "dpkg -L lists $path" grep -qx "$path" <<<"$files"
done
check "the test plugin misbehave is not packaged" not grep -q misbehave <<<"$files"
check "/etc/sprig/gateway.toml is a conffile" \
    grep -q '^ /etc/sprig/gateway.toml [0-9a-f]\{32\}$' <<<"$(dpkg-query -W -f='${Conffiles}\n' "$package")"
check "the conffile keeps its data in /var/lib/sprig" grep -qx 'data_dir = "/var/lib/sprig"' /etc/sprig/gateway.toml
check "sprig --version" quietly /usr/bin/sprig --version
for plugin in rollback reset; do
    check "the packaged $plugin plugin loads (sprig plugin check)" \
        quietly /usr/bin/sprig plugin check "/usr/lib/sprig/plugins/libsprig_plugin_$plugin.so"
done
check "systemd-analyze verify $unit" quietly systemd-analyze verify "$unit"

# What the maintainer scripts did.
read -r user_uid user_gid user_home user_shell < <(getent passwd sprig | awk -F: '{ print $3, $4, $6, $7 }')
check "the sprig user exists" [ -n "${user_uid:-}" ]
check "it is a system user (uid ${user_uid:-none})" [ "${user_uid:-0}" -gt 0 -a "${user_uid:-0}" -lt 1000 ]
check "its group is sprig" is "$(getent group "${user_gid:-x}" | cut -d: -f1)" sprig
check "its home is /var/lib/sprig" is "${user_home:-}" /var/lib/sprig
check "it has no login shell" is "${user_shell:-}" /usr/sbin/nologin
check "/var/lib/sprig is sprig's, 0750" is "$(owner_mode /var/lib/sprig)" "sprig:sprig 750"
check "the config is readable by root and sprig only (root:sprig 0640)" \
    is "$(owner_mode /etc/sprig/gateway.toml)" "root:sprig 640"
wants=/etc/systemd/system/multi-user.target.wants/sprig.service
check "the unit is enabled ($wants)" [ -L "$wants" ]
check "the enable link points at the packaged unit" is "$(readlink -f "$wants")" "$(readlink -f "$unit")"

# The service as systemd would start it: ExecStart as User/Group in WorkingDirectory, with systemd's
# small environment. No systemd runs here, so sd-notify has no socket and stays quiet.
exec_start=$(unit_value ExecStart)
user=$(unit_value User) group=$(unit_value Group) workdir=$(unit_value WorkingDirectory)
check "the unit runs /usr/bin/sprig on /etc/sprig/gateway.toml" \
    is "$exec_start" "/usr/bin/sprig run --config /etc/sprig/gateway.toml"
check "the unit runs as sprig:sprig in /var/lib/sprig" is "$user:$group $workdir" "sprig:sprig /var/lib/sprig"
# Plain words only (an absolute path first; no quotes, escapes, specifiers or variables), so the shell
# splits them as systemd does.
plain_words() {
    case $1 in
        /*[\"\'\\%\$]*) return 1 ;;
        /*) return 0 ;;
        *) return 1 ;;
    esac
}
require "ExecStart is plain words" plain_words "$exec_start"
read -ra argv <<<"$exec_start"
# Emptied here, not by the background job's redirection, which may come after the first look at it.
mkdir -p "$(dirname "$log")"
: >"$log"
# --pdeathsig: a test killed midway (a CI timeout) takes its sprig with it.
(cd "$workdir" && exec setpriv --reuid="$user" --regid="$group" --init-groups --pdeathsig KILL -- \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${argv[@]}") >"$log" 2>&1 &
sprig_pid=$!

# Ready: its own log says so (a taken port would have ended it instead), polled until the deadline.
deadline=$((SECONDS + timeout_s))
until grep -q ' ready' "$log" || ! kill -0 "$sprig_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; do
    sleep 0.1
done
if ! grep -q ' ready' "$log" || ! kill -0 "$sprig_pid" 2>/dev/null; then
    cat "$log"
    if kill -0 "$sprig_pid" 2>/dev/null; then
        why="not ready after $timeout_s s: $(ps -o stat=,wchan=,etime= -p "$sprig_pid")"
    else
        wait "$sprig_pid"
        why="exited with status $? (its log is above)"
    fi
    fail "sprig started from the unit's ExecStart becomes ready" "$why"
    finish
fi
ok "sprig started from the unit's ExecStart becomes ready"
check "it runs as sprig" is "$(ps -o user= -p "$sprig_pid" | tr -d ' ')" sprig
check "GET /healthz on the packaged [metrics] listener answers ok" \
    is "$(curl -fsS --max-time 10 http://127.0.0.1:9464/healthz 2>&1)" ok
check "devices' MQTT listener 127.0.0.1:1883 takes connections" bash -c 'exec 3<>/dev/tcp/127.0.0.1/1883'
check "its local operator credential is sprig's, 0600" \
    is "$(owner_mode /var/lib/sprig/local-operator.json)" "sprig:sprig 600"
check "its jobs store is sprig's" is "$(stat -c %U /var/lib/sprig/store 2>/dev/null)" sprig
# The admin's CLI beside the service: root reads the local operator's credential through the config.
check "sprig list-jobs --config /etc/sprig/gateway.toml (as root)" \
    grep -q '"jobs"' <<<"$(timeout "$timeout_s" /usr/bin/sprig list-jobs --config /etc/sprig/gateway.toml 2>&1)"

kill -TERM "$sprig_pid"
deadline=$((SECONDS + timeout_s))
while kill -0 "$sprig_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
if kill -0 "$sprig_pid" 2>/dev/null; then
    kill -KILL "$sprig_pid"
    fail "SIGTERM stops sprig" "still running after $timeout_s s: killed"
else
    wait "$sprig_pid"
    check "SIGTERM stops sprig with status 0" is "$?" 0
fi
sprig_pid=
# Logs go to stderr (the journal under systemd), nowhere else.
check "sprig logged to stderr" grep -q ' ready' "$log"
check "sprig wrote no log file in /var/lib/sprig" \
    is "$(find /var/lib/sprig -iname '*log*' ! -path '*/store/*' | head -3)" ""

# Installed over itself (an upgrade to the same version): the scripts find the user and the data there.
operator_before=$(sha256sum /var/lib/sprig/local-operator.json)
check "dpkg -i over the installed package" quietly dpkg -i "$deb"
check "it keeps the config's mode" is "$(owner_mode /etc/sprig/gateway.toml)" "root:sprig 640"
check "it keeps the local operator credential" is "$(sha256sum /var/lib/sprig/local-operator.json)" "$operator_before"

# Remove keeps the config and the data; purge deletes them (the user stays: gateway/debian/postrm).
check "dpkg -r" quietly dpkg -r "$package"
check "after remove, the binary is gone" [ ! -e /usr/bin/sprig ]
check "after remove, the conffile stays" [ -f /etc/sprig/gateway.toml ]
check "after remove, the data stays" [ -f /var/lib/sprig/local-operator.json ]
check "after remove, the unit is masked" is "$(readlink /etc/systemd/system/sprig.service)" /dev/null
check "after remove, dpkg keeps the package's config files" \
    is "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" config-files
check "dpkg -P" quietly dpkg -P "$package"
check "after purge, dpkg knows no $package" not known_to_dpkg
check "after purge, /etc/sprig/gateway.toml is gone" [ ! -e /etc/sprig/gateway.toml ]
check "after purge, /var/lib/sprig is gone" [ ! -e /var/lib/sprig ]
check "after purge, the unit is neither enabled nor masked" [ ! -L "$wants" -a ! -L /etc/systemd/system/sprig.service ]
check "after purge, the sprig user stays" quietly getent passwd sprig

finish
