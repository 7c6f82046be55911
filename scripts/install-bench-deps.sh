#!/usr/bin/env bash
# Installs the reference switches of the forwarding bench (benches/net_forward.sh) on a
# Debian 12 machine (run as root): DPDK's dpdk-testpmd with the virtio-user and vhost PMDs
# (the peer and the net_vhost reference) and Open vSwitch 3.1 built with DPDK (the
# OVS-DPDK reference, /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk).
# The bench runs its own private OVS instance; the packages' system service is not needed,
# so it is not started here, and one the package started is stopped again.
# Idempotent: when everything is present it returns at once without touching apt.
set -euo pipefail

PACKAGES=(
    dpdk-dev
    librte-net-vhost23
    librte-net-virtio23
    librte-mempool-ring23
    openvswitch-switch-dpdk
)
OVS_DPDK=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ] && command -v dpdk-testpmd >/dev/null && [ -x "$OVS_DPDK" ]; then
    echo "install-bench-deps: all present (${PACKAGES[*]})"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-bench-deps: missing ${missing[*]:-dpdk-testpmd or $OVS_DPDK}; run this script as root" >&2
    exit 1
fi

echo "install-bench-deps: installing ${missing[*]:-${PACKAGES[*]}}"
export DEBIAN_FRONTEND=noninteractive
# Keep the package scripts from starting the system Open vSwitch (a PMD spinning a core
# would spoil every measurement): a policy-rc.d that denies starts, only while installing
# and only if the machine has none of its own.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
trap '[ -n "$own_policy" ] && rm -f "$policy"' EXIT
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

command -v dpdk-testpmd >/dev/null || {
    echo "install-bench-deps: dpdk-testpmd still not in PATH after installing dpdk-dev" >&2
    exit 1
}
[ -x "$OVS_DPDK" ] || {
    echo "install-bench-deps: $OVS_DPDK missing after installing openvswitch-switch-dpdk" >&2
    exit 1
}
echo "install-bench-deps: done"
