#!/usr/bin/env bash
# Cross-builds sprig's Debian package for a Raspberry Pi on a Debian (or Ubuntu) x86-64 machine with
# Debian's cross compilers (README: Debian packages), then prints the .deb's path last.
#
#   gateway/debian/cross-deb.sh TRIPLE [build-deb.sh options]
#
# TRIPLE: aarch64-unknown-linux-gnu (Raspberry Pi OS 64-bit, package arm64) or
# armv7-unknown-linux-gnueabihf (32-bit, armhf). Installs what is missing: the Rust target (rustup) and,
# as root with apt-get, gcc-PREFIX (the C cross compiler, which jemalloc's C build needs and which links
# the binary; it brings binutils-PREFIX, whose strip `cargo deb` finds by itself) and libc6-dev-ARCH-cross
# (the board's C library; dpkg-shlibdeps reads its shlibs for the package's libc6 dependency). Then sets
# cargo's linker and the cc crate's compiler for TRIPLE, jemalloc's page size (JEMALLOC_SYS_WITH_LG_PAGE,
# default 16: 64 KiB, which suits the 4 KiB, 16 KiB (Raspberry Pi 5) and 64 KiB page kernels; set it to
# override) and runs build-deb.sh --target TRIPLE with the remaining options.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ $# -lt 1 ]; then
    echo "usage: $0 aarch64-unknown-linux-gnu|armv7-unknown-linux-gnueabihf [build-deb.sh options]" >&2
    exit 2
fi
triple=$1
shift
case $triple in
    aarch64-unknown-linux-gnu) prefix=aarch64-linux-gnu arch=arm64 ;;
    armv7-unknown-linux-gnueabihf) prefix=arm-linux-gnueabihf arch=armhf ;;
    *)
        echo "cross-deb: unsupported target $triple (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2
        exit 2
        ;;
esac

apt_packages=()
command -v "$prefix-gcc" >/dev/null 2>&1 || apt_packages+=("gcc-$prefix")
[ -e "/usr/$prefix/include/stdio.h" ] || apt_packages+=("libc6-dev-$arch-cross")
if [ "${#apt_packages[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "cross-deb: installing ${apt_packages[*]}" >&2
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${apt_packages[@]}" >&2
    else
        echo "cross-deb: missing ${apt_packages[*]}: sudo apt-get install ${apt_packages[*]}" >&2
        exit 1
    fi
fi

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$triple"; then
    rustup target add "$triple" >&2
fi

# Cargo's and the cc crate's variables name the target in upper case with underscores, and in lower case.
triple_upper=$(tr 'a-z-' 'A-Z_' <<< "$triple")
triple_lower=${triple//-/_}
export "CARGO_TARGET_${triple_upper}_LINKER=$prefix-gcc"
export "CC_${triple_lower}=$prefix-gcc"
export JEMALLOC_SYS_WITH_LG_PAGE=${JEMALLOC_SYS_WITH_LG_PAGE:-16}

exec gateway/debian/build-deb.sh --target "$triple" "$@"
