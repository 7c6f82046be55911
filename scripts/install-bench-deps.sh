#!/usr/bin/env bash
# Installs the reference switches of the forwarding bench (benches/net_forward.sh) on a
# Debian 12 machine (run as root): what the tests need (scripts/install-test-deps.sh:
# dpdk-testpmd with the virtio-user and vhost PMDs, the peer and the net_vhost reference)
# and Open vSwitch 3.1 built with DPDK (the OVS-DPDK reference,
# /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk).
# The bench runs its own private OVS instance; the package's system service is not
# started here. Idempotent: when everything is present it returns without touching apt.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

OVS_DPDK=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
if [ -x "$OVS_DPDK" ]; then
    echo "install-bench-deps: $OVS_DPDK present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-bench-deps: $OVS_DPDK missing; run this script as root" >&2
    exit 1
fi

echo "install-bench-deps: installing openvswitch-switch-dpdk"
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
apt-get install -y -q --no-install-recommends openvswitch-switch-dpdk

[ -x "$OVS_DPDK" ] || {
    echo "install-bench-deps: $OVS_DPDK missing after installing openvswitch-switch-dpdk" >&2
    exit 1
}
echo "install-bench-deps: done"
