#!/usr/bin/env bash
# Builds sprig's Debian package (README: Debian packages): the gateway and the example plugins in release,
# the package's /etc/sprig/gateway.toml derived from config/gateway.toml, then `cargo deb`. Prints the
# .deb's path last.
#
#   gateway/debian/build-deb.sh [--target TRIPLE] [--no-build] [other `cargo deb` options]
#
# --target: cross-build (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf); the build command is
# $SPRIG_BUILD, default `cargo build` (for instance SPRIG_BUILD="cargo zigbuild" or "cross build").
# --no-build: package what target/ already holds.
# --profile dev: package the debug build (what `cargo test` already built; cargo-deb warns that it is
# meant for releases): CI's package test uses it to check the packaging without a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The crates whose files the package holds (gateway/Cargo.toml, [package.metadata.deb] assets). The
# misbehave plugin is for tests only and stays out.
packages=(-p sprig-gateway -p sprig-plugin-rollback -p sprig-plugin-reset)

target=() build=1 deb_args=() profile=(--release)
while [ $# -gt 0 ]; do
    case $1 in
        --target) target=(--target "$2"); deb_args+=("$1" "$2"); shift 2 ;;
        --target=*) target=("$1"); deb_args+=("$1"); shift ;;
        --no-build) build=0; shift ;;
        --profile) profile=(--profile "$2"); deb_args+=("$1" "$2"); shift 2 ;;
        *) deb_args+=("$1"); shift ;;
    esac
done

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: cargo-deb is missing: cargo install cargo-deb --locked" >&2
    exit 1
fi

if [ "$build" = 1 ]; then
    # One build for all of them: cargo-deb alone would build the whole workspace to get the plugins, which
    # belong to other packages than sprig-gateway.
    read -ra build_command <<< "${SPRIG_BUILD:-cargo build}"
    "${build_command[@]}" "${profile[@]}" --locked "${target[@]}" "${packages[@]}"
fi

# /etc/sprig/gateway.toml: config/gateway.toml (the documented defaults, the one source of truth) with the
# data in /var/lib/sprig and the plugin example pointing at the packaged plugins. Generated, not kept in
# git (gateway/debian/.gitignore); each edit is checked, so a reworded config/gateway.toml fails here
# rather than shipping an unedited copy.
source=config/gateway.toml
conffile=gateway/debian/gateway.toml
edit() { # edit WHAT FROM TO: replaces the line FROM by TO (lines separated by \n), which must be there
    local what=$1 from=$2 to=$3 text
    text=$(cat "$conffile.new")
    if [[ "$text" != *"$from"* ]]; then
        echo "build-deb: $source no longer has $what as this script expects:" >&2
        printf '  %s\n' "$from" >&2
        echo "update gateway/debian/build-deb.sh" >&2
        exit 1
    fi
    printf '%s\n' "${text/"$from"/"$to"}" > "$conffile.new"
}
cp "$source" "$conffile.new"
edit "its opening comment" \
    "# sprig's configuration. This file is also sprig's built-in defaults: \`sprig run\` with no \`--config\`
# behaves exactly as if it were given this file. Unknown keys are an error." \
    "# sprig's configuration, as the Debian package installs it: sprig's built-in defaults (config/gateway.toml
# in the source) with the data in /var/lib/sprig. Unknown keys are an error. Edit it here: upgrades keep
# your version (dpkg asks if the package brings a new one); \`systemctl restart sprig\` applies a change."
edit "data_dir" 'data_dir = "./sprig-data"' 'data_dir = "/var/lib/sprig"'
edit "the example plugin path" \
    '# plugin = "plugins/libsprig_plugin_rollback.so" # relative to this file'"'"'s directory' \
    '# plugin = "/usr/lib/sprig/plugins/libsprig_plugin_rollback.so" # a plugin the package installs'
mv "$conffile.new" "$conffile"

cargo deb -p sprig-gateway --no-build "${deb_args[@]}"
