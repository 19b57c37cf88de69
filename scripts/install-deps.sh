#!/bin/bash
# Installs every Debian 12 package vmfs needs to build, test and run its
# demo.  Run as root; safe to run again (it installs only what is missing,
# and returns at once when nothing is).
set -euo pipefail

PACKAGES=(
    # build
    build-essential autoconf automake libtool pkg-config
    libfuse3-dev zlib1g-dev libzstd-dev libdeflate-dev libnbd-dev libguestfs-dev check
    # run, test, demo
    fuse3 qemu-utils fdisk jq e2fsprogs python3 shellcheck nbdkit libnbd-bin libvhdi-utils libvmdk-utils
    # guest file systems through libguestfs: its appliance needs a kernel;
    # the appliance is built from the host's packages, so the file system
    # tools the guest tests use inside it must be installed here
    linux-image-amd64 supermin libguestfs-tools
    libguestfs-xfs xfsprogs btrfs-progs dosfstools ntfs-3g libnbd-bin attr
)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (sudo $0)" >&2
    exit 1
fi

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps.sh: all ${#PACKAGES[@]} packages are installed"
    exit 0
fi

echo "install-deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
