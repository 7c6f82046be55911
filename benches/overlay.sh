#!/usr/bin/env bash
# TCP throughput (iperf3) through vswitchd's TAP ports and VXLAN overlay,
# against the kernel doing the same job, in one run (root; network namespaces).
#
#   benches/overlay.sh            (env: SECS=10 per measurement, VSWITCHD=path,
#                                  STREAMS="1 4": iperf3 -P per measurement,
#                                  ROUNDS=3: rounds, interleaved)
#
# 1. Two namespaces joined by two TAP ports of one vswitchd (VLAN 10), against
#    the same two namespaces joined by veth pairs in a Linux bridge; and the
#    same with the TAP devices multi-queue (`multi_queue = true`, one queue
#    per datapath thread) in a second vswitchd.
# 2. Two hosts (namespaces) over a veth underlay, guests on TAP ports, the
#    VXLAN overlay of two vswitchd, against two kernel vxlan devices each in a
#    bridge with a veth to its guest. Guest MTU 1450 in both (underlay 1500),
#    the kernel side's offloads at their defaults.
# All topologies are set up first; each round then measures every path and
# stream count in turn, so ours and the kernel's alternate under the same
# conditions. Prints the median Gbit/s with its range over the rounds, and
# the ratio of the medians vswitchd / kernel, for each stream count.
set -euo pipefail
SECS=${SECS:-10}
STREAMS=${STREAMS:-1 4}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."
VSWITCHD=${VSWITCHD:-target/release/vswitchd}
[ -x "$VSWITCHD" ] || cargo build --release --bin vswitchd >/dev/null
command -v iperf3 >/dev/null || { echo "iperf3 is required (scripts/install-test-deps.sh installs it)" >&2; exit 1; }
P=ob$$
WORK=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for n in $(ip netns list | awk '{print $1}' | grep "^$P" || true); do
        for q in $(ip netns pids "$n"); do kill -9 "$q" 2>/dev/null || true; done
        ip netns del "$n"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

ns() { ip netns add "$P$1"; ip -n "$P$1" link set lo up; }
gbps() { # server-ns client-ns server-ip streams
    ip netns exec "$P$1" iperf3 -s -1 -D -B "$3" >/dev/null
    sleep 0.3
    ip netns exec "$P$2" iperf3 -c "$3" -P "$4" -t "$SECS" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
wait_dev() { for _ in $(seq 100); do ip -n "$P$1" link show "$2" >/dev/null 2>&1 && return; sleep 0.05; done; echo "no $2" >&2; exit 1; }
start() { # ns dir config-text
    mkdir -p "$2"; printf '%s' "$3" > "$2/fabric.toml"
    ip netns exec "$P$1" "$VSWITCHD" --config "$2/fabric.toml" > "$2/log" 2>&1 &
    pids+=($!)
}
tap() { # name device mtu [extra line]
    printf '[[switch.port]]\nname = "%s"\ntype = "tap"\ndevice = "%s"\nvlan = { mode = "access", tag = 10 }\nmtu = %s\n%s\n' "$1" "$2" "$3" "${4:-}"
}
hdr='[daemon]
run_dir = "run"
[[switch]]
name = "br0"
'

# ---- 1. one host: TAP ports vs Linux bridge ----
ns h; ns a; ns b
start h "$WORK/h" "$hdr$(tap a ${P}ta 1500)
$(tap b ${P}tb 1500)
"
for x in a b; do
    wait_dev h ${P}t$x; ip -n ${P}h link set ${P}t$x netns $P$x
done
ip -n ${P}a addr add 10.90.0.1/24 dev ${P}ta; ip -n ${P}a link set ${P}ta up
ip -n ${P}b addr add 10.90.0.2/24 dev ${P}tb; ip -n ${P}b link set ${P}tb up
ns m; ns ma; ns mb
start m "$WORK/m" "$hdr$(tap a ${P}ma 1500 'multi_queue = true')
$(tap b ${P}mb 1500 'multi_queue = true')
"
for x in a b; do
    wait_dev m ${P}m$x; ip -n ${P}m link set ${P}m$x netns ${P}m$x
done
ip -n ${P}ma addr add 10.94.0.1/24 dev ${P}ma; ip -n ${P}ma link set ${P}ma up
ip -n ${P}mb addr add 10.94.0.2/24 dev ${P}mb; ip -n ${P}mb link set ${P}mb up
ns k; ns c; ns d
ip -n ${P}k link add kbr type bridge; ip -n ${P}k link set kbr up
for x in c d; do
    ip link add ${P}p$x netns ${P}k type veth peer name ${P}q$x netns $P$x
    ip -n ${P}k link set ${P}p$x master kbr up
done
ip -n ${P}c addr add 10.91.0.1/24 dev ${P}qc; ip -n ${P}c link set ${P}qc up
ip -n ${P}d addr add 10.91.0.2/24 dev ${P}qd; ip -n ${P}d link set ${P}qd up

# ---- 2. two hosts: VXLAN overlay vs kernel vxlan ----
underlay() { # host-a host-b
    ip link add ${P}$1v netns $P$1 type veth peer name ${P}$2v netns $P$2
    ip -n $P$1 addr add 192.168.231.1/24 dev ${P}$1v; ip -n $P$1 link set ${P}$1v up
    ip -n $P$2 addr add 192.168.231.2/24 dev ${P}$2v; ip -n $P$2 link set ${P}$2v up
}
ns u1; ns u2; ns g1; ns g2; underlay u1 u2
for i in 1 2; do
    j=$((3 - i))
    start u$i "$WORK/u$i" "$hdr$(tap t ${P}g$i 1450)
[[switch.port]]
name = \"vx\"
type = \"vxlan\"
local = \"192.168.231.$i\"
vni = [ { vlan = 10, vni = 5010, remotes = [\"192.168.231.$j\"] } ]
"
    wait_dev u$i ${P}g$i; ip -n ${P}u$i link set ${P}g$i netns ${P}g$i
    ip -n ${P}g$i addr add 10.92.0.$i/24 dev ${P}g$i; ip -n ${P}g$i link set ${P}g$i mtu 1450 up
done
ns k1; ns k2; ns h1; ns h2; underlay k1 k2
for i in 1 2; do
    j=$((3 - i)); n=${P}k$i
    ip -n $n link add vx type vxlan id 5010 local 192.168.231.$i remote 192.168.231.$j dstport 4789 dev ${P}k${i}v
    ip -n $n link add kbr type bridge; ip -n $n link set vx master kbr; ip -n $n link set vx up; ip -n $n link set kbr up
    ip link add ${P}e$i netns $n type veth peer name ${P}f$i netns ${P}h$i
    ip -n $n link set ${P}e$i master kbr up
    ip -n ${P}h$i addr add 10.93.0.$i/24 dev ${P}f$i; ip -n ${P}h$i link set ${P}f$i mtu 1450 up
done
# ---- measure: every path in turn, ROUNDS times ----
declare -A got
for r in $(seq "$ROUNDS"); do
    for n in $STREAMS; do
        got[tap,$n]+=" $(gbps b a 10.90.0.2 "$n")"
        got[mq,$n]+=" $(gbps mb ma 10.94.0.2 "$n")"
        got[kbr,$n]+=" $(gbps d c 10.91.0.2 "$n")"
        got[vx,$n]+=" $(gbps g2 g1 10.92.0.2 "$n")"
        got[kvx,$n]+=" $(gbps h2 h1 10.93.0.2 "$n")"
    done
    echo "round $r done" >&2
done

median() { python3 -c "import statistics,sys; print('%.2f' % statistics.median(map(float, sys.argv[1:])))" $1; }
spread() { python3 -c "import sys; v=sorted(map(float, sys.argv[1:])); print('%.2f-%.2f' % (v[0], v[-1]))" $1; }
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
row() { # label ours-key kernel-key streams
    local o k
    o=$(median "${got[$2,$4]}"); k=$(median "${got[$3,$4]}")
    echo "| $1 | $4 | $o ($(spread "${got[$2,$4]}")) | $k ($(spread "${got[$3,$4]}")) | $(ratio "$o" "$k") |"
}
echo "## TCP throughput, iperf3 ${SECS} s, median (range) of $ROUNDS interleaved rounds (Gbit/s)"
echo "| path | streams | vswitchd | kernel | ratio |"
echo "|---|---|---|---|---|"
for n in $STREAMS; do row "two namespaces, one host (TAP ports vs Linux bridge + veth)" tap kbr "$n"; done
for n in $STREAMS; do row "the same, TAP ports multi_queue = true" mq kbr "$n"; done
for n in $STREAMS; do row "two hosts over VXLAN (vswitchd overlay vs kernel vxlan + bridge)" vx kvx "$n"; done
