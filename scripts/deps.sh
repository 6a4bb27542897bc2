#!/usr/bin/env bash
# Install the Debian packages Wrenn needs to build, test and run. Idempotent; run as root.
# Everything comes from Debian's apt (and npm for the SDK end-to-end tests): no other downloads.
set -euo pipefail

pkgs=(
  # build
  gcc make meson ninja-build pkg-config clang clang-format libclang-rt-14-dev
  # libraries (see docs/dependencies.md)
  libmicrohttpd-dev libjansson-dev libsodium-dev zlib1g-dev libcurl4-openssl-dev
  libsqlite3-dev libpq-dev libnl-3-dev libnl-route-3-dev libseccomp-dev libfuse3-dev
  # host agent runtime and guest image building
  qemu-system-x86 qemu-utils busybox-static debootstrap nftables e2fsprogs cpio iproute2 lz4
  # tests
  libcmocka-dev postgresql curl procps
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The SDK end-to-end tests need Node.js >= 20.18 (the e2b package's engines field). Debian's own
# nodejs is older; use the machine's if it is new enough, else install Debian's and let the e2e
# runner say why it cannot run.
if ! command -v node >/dev/null 2>&1; then
  apt-get install -y -qq nodejs npm >/dev/null
fi
