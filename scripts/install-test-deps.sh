#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (run as root):
# DPDK's dpdk-testpmd with the virtio-user and vhost PMDs, iproute2, ping and
# ethtool (namespace tests of TAP ports and the VXLAN overlay), fio and iperf3
# (benches), systemd's systemd-analyze (the unit file's test), and libvirt
# (tests/operator/libvirt.rs: Debian 12's libvirtd, the QEMU driver, virsh, and the
# libvirt-qemu user that libvirt-daemon-system creates; QEMU itself comes from
# scripts/install-qemu.sh, and with it qemu-utils' qemu-img and qemu-io, which the NBD
# tests drive), libnbd-bin's nbdinfo (tests/blk/nbd.rs: `nbdinfo --map` of an exported
# snapshot). Debian 12 has no modular virtqemud: the test runs libvirtd.
# Idempotent: when everything is present it returns at once without touching apt.
set -euo pipefail

PACKAGES=(
    dpdk-dev
    librte-net-vhost23
    librte-net-virtio23
    librte-mempool-ring23
    iproute2
    iputils-ping
    ethtool
    iperf3
    fio
    systemd
    libvirt-daemon-system
    libvirt-daemon-driver-qemu
    libvirt-clients
    libnbd-bin
)

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ] && command -v dpdk-testpmd >/dev/null; then
    echo "install-test-deps: all present (${PACKAGES[*]})"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${missing[*]:-dpdk-testpmd}; run this script as root" >&2
    exit 1
fi

echo "install-test-deps: installing ${missing[*]:-${PACKAGES[*]}}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

command -v dpdk-testpmd >/dev/null || {
    echo "install-test-deps: dpdk-testpmd still not in PATH after installing dpdk-dev" >&2
    exit 1
}
echo "install-test-deps: done"
