#!/usr/bin/env bash
# Forwarding-rate benchmark of vswitchd against two reference switches, DPDK's own vhost
# PMD (net_vhost io forward) and Open vSwitch with DPDK (NORMAL learning switch), measured
# in the same run with the same third-party peer (not a test; prints a table).
#
# Peer: one dpdk-testpmd with two net_virtio_user ports (02:00:00:00:00:01 and :02),
#   --forward-mode=io --tx-first --eth-peer=0,<mac of port 1> --eth-peer=1,<mac of port 0>
# attached to two ports of the switch under test: the first bursts loop through the
# switch forever, and the sum of the peer's per-port Rx-pps is the switch's forwarding
# rate (average of the steady-state 1 s samples). The peer's ports take in_order=0 by
# default (IN_ORDER=1 to offer it): net_vhost and OVS accept VIRTIO_F_IN_ORDER and
# vswitchd does not offer it, so only with it off do all three negotiate the same
# features. The peer logs what it negotiated (pmd.net.virtio.init at debug level); the
# details section lists each switch's set.
# Switches under test, each on CPU 0 alone:
#   vswitchd (release build): `taskset -c 0`, datapath_threads = 1, two access-VLAN-10
#     vhost-user ports, mtu 9000;
#   net_vhost: a second testpmd, --vdev net_vhost0,iface=SOCK0 --vdev net_vhost1,iface=SOCK1
#     --forward-mode=io, both its lcores on CPU 0 (--lcores=0@0,1@0; lcore 1 forwards);
#   OVS-DPDK: Open vSwitch 3.1's ovs-vswitchd-dpdk (scripts/install-bench-deps.sh), a
#     private instance (own ovsdb-server, fresh directory, `unshare -m` with a tmpfs /run)
#     under `taskset -c 0`, userspace datapath (bridge datapath_type=netdev, default flow
#     NORMAL), one PMD (pmd-cpu-mask=0x1, dpdk-lcore-mask=0x1), two dpdkvhostuser ports
#     (OVS is the server) with tag=10 and mtu_request=9000; a throw-away 2 s peer loop
#     before measuring, as OVS enables a new vhost port only after a few seconds.
# The peer forwards on CPU 1 (--lcores=0@1,1@1; lcore 1 forwards).
#
# Rounds: ROUNDS interleaved rounds; each round runs vswitchd, net_vhost and OVS-DPDK once
# per frame size, in that order. The table prints per switch and size the median and the
# range of the rounds, and the ratios of the medians.
#
# Queue pairs: after that, MQ_ROUNDS interleaved rounds of the same loop with one queue
#   pair per port, then two (fabric.toml `queues = 1|2`, datapath_threads = 2 for both,
#   the peer's ports queues=N,cq=1 with --rxq=N --txq=N), vswitchd NOT pinned (its two
#   datapath threads and the peer share the 2 CPUs as the scheduler decides), 64 B frames
#   (MQ_SIZE): Mpps port to port as median and range of the rounds.
#
# Usage: benches/net_forward.sh            (env: ROUNDS=3, DURATION=seconds per point (10),
#                                           SIZES="64 1518", IN_ORDER=0, VSWITCHD=path,
#                                           MQ_ROUNDS=3 (0: skip), MQ_SIZE=64, KEEP=1 keeps logs)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
SIZES=${SIZES:-"64 1518"}
IN_ORDER=${IN_ORDER:-0}
MQ_ROUNDS=${MQ_ROUNDS:-3}
MQ_SIZE=${MQ_SIZE:-64}
WARMUP=3 # samples dropped at the start of each run
MAC0=02:00:00:00:00:01
MAC1=02:00:00:00:00:02
OVS_VSWITCHD=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
OVS_SCHEMA=/usr/share/openvswitch/vswitch.ovsschema

missing=""
command -v dpdk-testpmd >/dev/null || missing+=" dpdk-testpmd"
[ -x "$OVS_VSWITCHD" ] || missing+=" $OVS_VSWITCHD"
for tool in ovsdb-server ovsdb-tool ovs-vsctl; do
    command -v "$tool" >/dev/null || missing+=" $tool"
done
[ -r "$OVS_SCHEMA" ] || missing+=" $OVS_SCHEMA"
if [ -n "$missing" ]; then
    echo "missing:$missing; run scripts/install-bench-deps.sh as root" >&2
    exit 1
fi
if [ -z "${VSWITCHD:-}" ]; then
    cargo build --release --bins -q
    VSWITCHD=$PWD/target/release/vswitchd
fi

WORK=$(mktemp -d /tmp/vswbench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf /var/run/dpdk/vswb-*-$$
    if [ -n "${KEEP:-}" ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }
record() { printf '  %s\n' "$*" >>"$WORK/commands"; }

wait_for_sockets() {
    local deadline=$((SECONDS + 20))
    for s in "$@"; do
        until [ -S "$s" ]; do
            if ((SECONDS > deadline)); then
                log "socket $s did not appear"
                return 1
            fi
            sleep 0.1
        done
    done
}

# stop PID: SIGINT, then wait up to 10 s, then SIGKILL.
stop() {
    local pid=$1 i
    kill -INT "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# The virtio-net feature bits the peer may negotiate, by bit number.
declare -A FEATURE_NAME=(
    [0]=CSUM [1]=GUEST_CSUM [2]=CTRL_GUEST_OFFLOADS [3]=MTU [5]=MAC [7]=GUEST_TSO4
    [8]=GUEST_TSO6 [9]=GUEST_ECN [10]=GUEST_UFO [11]=HOST_TSO4 [12]=HOST_TSO6 [13]=HOST_ECN
    [14]=HOST_UFO [15]=MRG_RXBUF [16]=STATUS [17]=CTRL_VQ [18]=CTRL_RX [19]=CTRL_VLAN
    [21]=GUEST_ANNOUNCE [22]=MQ [23]=CTRL_MAC_ADDR [24]=NOTIFY_ON_EMPTY [27]=ANY_LAYOUT
    [28]=INDIRECT_DESC [29]=EVENT_IDX [30]=PROTOCOL_FEATURES [32]=VERSION_1
    [33]=ACCESS_PLATFORM [34]=RING_PACKED [35]=IN_ORDER [36]=ORDER_PLATFORM
)

# feature_names HEX: the names of the bits set in HEX.
feature_names() {
    local v=$((16#$1)) bit names=()
    for bit in $(seq 0 63); do
        if (((v >> bit) & 1)); then names+=("${FEATURE_NAME[$bit]:-bit$bit}"); fi
    done
    echo "${names[*]}"
}

# peer_args NAME SOCK0 SOCK1 LEN QUEUES: sets ARGS to the peer testpmd's command line.
# QUEUES above 1 adds virtio_user's control queue (cq=1) and --rxq/--txq.
peer_args() {
    local name=$1 s0=$2 s1=$3 len=$4 queues=$5 port=",queues=$5,in_order=$IN_ORDER" mqargs=()
    if ((queues > 1)); then
        port+=",cq=1"
        mqargs=(--rxq="$queues" --txq="$queues" --txonly-multi-flow)
    fi
    ARGS=(--lcores=0@1,1@1 --no-huge -m 1024 --no-pci --file-prefix="vswb-$name-$$"
        --log-level='pmd.net.virtio.init:debug'
        --vdev="net_virtio_user0,path=$s0$port,mac=$MAC0"
        --vdev="net_virtio_user1,path=$s1$port,mac=$MAC1"
        -- --forward-mode=io --tx-first --eth-peer=0,$MAC1 --eth-peer=1,$MAC0
        --txpkts="$len" --stats-period 1 --total-num-mbufs=8192 "${mqargs[@]}")
}

# peer NAME SOCK0 SOCK1 LEN [QUEUES]: runs the virtio_user peer for DURATION+WARMUP
# seconds and sets MPPS to the average summed Rx-pps of its two ports (steady-state
# samples; the per-sample sums go to $WORK/NAME.samples), FEATURES to the feature sets
# it negotiated and OFFERED to those the switch offered (as virtio_user sees them, after
# masking what it does not support itself; hex, one per distinct set).
peer() {
    local name=$1 ARGS
    peer_args "$1" "$2" "$3" "$4" "${5:-1}"
    record "dpdk-testpmd ${ARGS[*]}"
    stdbuf -oL -eL dpdk-testpmd "${ARGS[@]}" </dev/null >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    # Wait for WARMUP + DURATION + 1 one-second statistics screens (or give up after 3x).
    local want=$((WARMUP + DURATION + 1)) deadline=$((SECONDS + 3 * (WARMUP + DURATION) + 20))
    while (($(grep -ac 'Port statistics' "$WORK/$name.log" || true) < want)); do
        if ((SECONDS > deadline)) || ! kill -0 "$pid" 2>/dev/null; then
            log "peer $name: fewer than $want statistics screens; see its log"
            tail -20 "$WORK/$name.log" >&2
            break
        fi
        sleep 0.2
    done
    stop "$pid"
    # One "Port statistics" screen per second, with an Rx-pps line per port.
    tr -d '\033' <"$WORK/$name.log" | awk -v warm="$WARMUP" '
        /Port statistics/ { if (n == 2) { s++; if (s > warm) print sum }; n = 0; sum = 0 }
        /Rx-pps:/ { sum += $2; n++ }
    ' >"$WORK/$name.samples"
    MPPS=$(awk '{ t += $1; c++ } END { if (c) printf "%.3f\n", t / c / 1e6; else print "nan" }' \
        "$WORK/$name.samples")
    FEATURES=$(logged_features 'features after negotiate' "$WORK/$name.log")
    OFFERED=$(logged_features 'host_features before negotiate' "$WORK/$name.log")
}

# logged_features TEXT LOG: the distinct hex values of the peer's "TEXT = HEX" lines.
logged_features() {
    local v
    v=$(sed -n "s/.*$1 = \([0-9a-fA-F]*\).*/\1/p" "$2" | sort -u | tr '\n' ' ')
    echo "${v:-not-logged}"
}

# throwaway_loop NAME SOCK0 SOCK1: the peer's loop for 2 s, not measured.
throwaway_loop() {
    local ARGS
    peer_args "$1-throwaway" "$2" "$3" 64 1
    dpdk-testpmd "${ARGS[@]}" </dev/null >"$WORK/$1-throwaway.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    sleep 2
    stop "$pid"
}

# vswitchd_run LEN NAME [QUEUES [THREADS [PIN]]]: sets MPPS and FEATURES. QUEUES queue
# pairs per port on THREADS datapath threads (default 1 and 1), under `taskset -c PIN`
# (default 0; "none": not pinned).
vswitchd_run() {
    local len=$1 name=$2 queues=${3:-1} threads=${4:-1} pin=${5:-0}
    local dir="$WORK/$name"
    mkdir -p "$dir"
    cat >"$dir/fabric.toml" <<TOML
[daemon]
run_dir = "."
datapath_threads = $threads
[[switch]]
name = "br0"
[[switch.port]]
name = "p0"
type = "vhost-user"
socket = "p0.sock"
vlan = { mode = "access", tag = 10 }
mtu = 9000
queues = $queues
[[switch.port]]
name = "p1"
type = "vhost-user"
socket = "p1.sock"
vlan = { mode = "access", tag = 10 }
mtu = 9000
queues = $queues
TOML
    local pre=()
    [ "$pin" != none ] && pre=(taskset -c "$pin")
    record "${pre[*]} $VSWITCHD --config $dir/fabric.toml   # fabric.toml: two access-10 ports, mtu 9000, queues = $queues, datapath_threads = $threads"
    RUST_LOG=warn "${pre[@]}" "$VSWITCHD" --config "$dir/fabric.toml" >"$dir/out" 2>"$dir/err" &
    local vs=$!
    PIDS+=("$vs")
    wait_for_sockets "$dir/p0.sock" "$dir/p1.sock"
    peer "$name" "$dir/p0.sock" "$dir/p1.sock" "$len" "$queues"
    # The peer is gone: vswitchd should be idle now, and exit promptly on SIGTERM.
    sleep 1
    local t0 t1 i health=""
    t0=$(awk '{ print $14 + $15 }' "/proc/$vs/stat")
    sleep 1
    t1=$(awk '{ print $14 + $15 }' "/proc/$vs/stat")
    (((t1 - t0) * 100 / $(getconf CLK_TCK) > 20)) &&
        health+=" BUSY after its peer left ($(((t1 - t0) * 100 / $(getconf CLK_TCK)))% CPU);"
    kill -TERM "$vs"
    for i in $(seq 100); do
        kill -0 "$vs" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$vs" 2>/dev/null; then
        health+=" HUNG: did not exit 10 s after SIGTERM (killed);"
        kill -9 "$vs"
    fi
    wait "$vs" 2>/dev/null || true
    {
        echo "# $name (vswitchd, len=$len, pin=$pin, queues=$queues): ${MPPS} Mpps;${health} samples (pps): $(tr '\n' ' ' <"$WORK/$name.samples")"
        grep -E '^(counters|fdb)' "$dir/out" | tail -3 | sed 's/^/#   /'
    } >>"$WORK/notes"
}

# net_vhost_run LEN NAME: sets MPPS and FEATURES.
net_vhost_run() {
    local len=$1 name=$2 dir="$WORK/$2"
    mkdir -p "$dir"
    local args=(--lcores=0@0,1@0 --no-huge -m 1024 --no-pci --file-prefix="vswb-$name-switch-$$"
        --vdev="net_vhost0,iface=$dir/s0,queues=1" --vdev="net_vhost1,iface=$dir/s1,queues=1"
        -- --forward-mode=io --stats-period 1 --total-num-mbufs=8192)
    record "dpdk-testpmd ${args[*]}"
    stdbuf -oL -eL dpdk-testpmd "${args[@]}" </dev/null >"$dir/log" 2>&1 &
    local sw=$!
    PIDS+=("$sw")
    wait_for_sockets "$dir/s0" "$dir/s1"
    peer "$name" "$dir/s0" "$dir/s1" "$len"
    stop "$sw"
    echo "# $name (net_vhost, len=$len): ${MPPS} Mpps; samples (pps): $(tr '\n' ' ' <"$WORK/$name.samples")" >>"$WORK/notes"
}

# ovs_run LEN NAME: sets MPPS and FEATURES. A fresh private Open vSwitch per run.
ovs_run() {
    local len=$1 name=$2 dir="$WORK/$2"
    mkdir -p "$dir"
    local db="unix:$dir/db.sock"
    export OVS_RUNDIR=$dir OVS_DBDIR=$dir OVS_LOGDIR=$dir OVS_SYSCONFDIR=$dir
    ovsdb-tool create "$dir/conf.db" "$OVS_SCHEMA"
    taskset -c 0 ovsdb-server "$dir/conf.db" --remote="punix:$dir/db.sock" --no-chdir \
        --pidfile="$dir/ovsdb-server.pid" --log-file="$dir/ovsdb-server.log" \
        --unixctl="$dir/ovsdb-server.ctl" </dev/null >/dev/null 2>&1 &
    local dbpid=$!
    PIDS+=("$dbpid")
    wait_for_sockets "$dir/db.sock"
    local vsctl=(ovs-vsctl --db="$db" --no-wait)
    "${vsctl[@]}" init
    "${vsctl[@]}" set Open_vSwitch . other_config:dpdk-init=true \
        other_config:dpdk-lcore-mask=0x1 other_config:pmd-cpu-mask=0x1 \
        other_config:dpdk-extra="--no-huge -m 3072 --legacy-mem --no-pci --file-prefix=ovs"
    "${vsctl[@]}" --may-exist add-br br0 -- set bridge br0 datapath_type=netdev
    for p in p0 p1; do
        "${vsctl[@]}" --may-exist add-port br0 $p tag=10 -- \
            set Interface $p type=dpdkvhostuser mtu_request=9000
    done
    record "ovs-vsctl set Open_vSwitch . other_config:dpdk-init=true other_config:dpdk-lcore-mask=0x1 other_config:pmd-cpu-mask=0x1 other_config:dpdk-extra=\"--no-huge -m 3072 --legacy-mem --no-pci --file-prefix=ovs\"; add-br br0 -- set bridge br0 datapath_type=netdev; add-port br0 p0|p1 tag=10 -- set Interface p0|p1 type=dpdkvhostuser mtu_request=9000"
    record "taskset -c 0 unshare -m sh -c 'mount -t tmpfs tmpfs /run && exec $OVS_VSWITCHD $db --pidfile --log-file'   # fresh OVS_RUNDIR, own ovsdb-server (taskset -c 0)"
    taskset -c 0 unshare -m sh -c 'mount -t tmpfs tmpfs /run && exec "$@"' ovs \
        "$OVS_VSWITCHD" "$db" --no-chdir --pidfile="$dir/ovs-vswitchd.pid" \
        --log-file="$dir/ovs-vswitchd.log" --unixctl="$dir/ovs-vswitchd.ctl" \
        </dev/null >"$dir/ovs-vswitchd.out" 2>&1 &
    local ovspid=$!
    PIDS+=("$ovspid")
    if ! wait_for_sockets "$dir/p0" "$dir/p1"; then
        tail -20 "$dir/ovs-vswitchd.log" >&2
        exit 1
    fi
    throwaway_loop "$name" "$dir/p0" "$dir/p1"
    peer "$name" "$dir/p0" "$dir/p1" "$len"
    stop "$ovspid"
    stop "$dbpid"
    echo "# $name (OVS-DPDK, len=$len): ${MPPS} Mpps; samples (pps): $(tr '\n' ' ' <"$WORK/$name.samples")" >>"$WORK/notes"
    unset OVS_RUNDIR OVS_DBDIR OVS_LOGDIR OVS_SYSCONFDIR
}

# median and range of whitespace-separated numbers
median() {
    printf '%s\n' $1 | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
range() {
    printf '%s\n' $1 | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'
}
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'
}

: >"$WORK/notes"
: >"$WORK/commands"
TARGETS=(vswitchd net_vhost ovs)
declare -A RUN=([vswitchd]=vswitchd_run [net_vhost]=net_vhost_run [ovs]=ovs_run)
declare -A LABEL=([vswitchd]=vswitchd [net_vhost]=net_vhost [ovs]=OVS-DPDK)
declare -A RATES FEAT OFFER
for round in $(seq "$ROUNDS"); do
    for len in $SIZES; do
        for t in "${TARGETS[@]}"; do
            log "round $round, ${len} B frames, ${LABEL[$t]} ..."
            "${RUN[$t]}" "$len" "$t-$len-r$round"
            RATES[$t,$len]+="$MPPS "
            for f in $FEATURES; do
                [[ " ${FEAT[$t]:-} " == *" $f "* ]] || FEAT[$t]+="$f "
            done
            for f in $OFFERED; do
                [[ " ${OFFER[$t]:-} " == *" $f "* ]] || OFFER[$t]+="$f "
            done
        done
    done
done

echo
echo "Forwarding rate through the switch, Mpps (testpmd virtio_user peer with in_order=$IN_ORDER,"
echo "io loop, sum of Rx-pps of both ports, average of the ${DURATION} steady 1 s samples of a run;"
echo "peer forwards on CPU 1, the switch under test runs on CPU 0); median and range of"
echo "$ROUNDS interleaved rounds"
echo
printf '%-7s %-22s %-22s %-22s %9s %9s\n' "frame" "vswitchd" "net_vhost" "OVS-DPDK" "vs/vhost" "vs/OVS"
for len in $SIZES; do
    cells=() med=()
    for t in "${TARGETS[@]}"; do
        m=$(median "${RATES[$t,$len]}")
        med+=("$m")
        cells+=("$m ($(range "${RATES[$t,$len]}"))")
    done
    printf '%-7s %-22s %-22s %-22s %9s %9s\n' "${len}B" "${cells[@]}" \
        "$(ratio "${med[0]}" "${med[1]}")" "$(ratio "${med[0]}" "${med[2]}")"
done
if ((MQ_ROUNDS > 0)); then
    declare -A MQ
    for round in $(seq "$MQ_ROUNDS"); do
        for q in 1 2; do
            log "vswitchd, ${MQ_SIZE} B frames, $q queue pair(s), round $round ..."
            vswitchd_run "$MQ_SIZE" "mq-$q-r$round" "$q" 2 none
            MQ[$q]+="$MPPS "
        done
    done
    echo
    echo "Queue pairs: ${MQ_SIZE} B frames, vswitchd NOT pinned, datapath_threads = 2 either way,"
    echo "$MQ_ROUNDS interleaved rounds of ${DURATION} s; Mpps port to port"
    echo
    printf '%-12s %10s %22s  %s\n' "queue pairs" "median" "range" "rounds"
    for q in 1 2; do
        printf '%-12s %10s %22s  %s\n' "$q" "$(median "${MQ[$q]}")" "$(range "${MQ[$q]}")" "${MQ[$q]}"
    done
fi
echo
echo "Virtio features, as the peer (virtio_user) logs them: \"negotiated\" is what it acked"
echo "(sent to the switch without MAC and STATUS, which virtio_user handles itself),"
echo "\"offered\" what the switch offered as far as virtio_user supports it:"
print_features() {
    local f names
    for f in $2; do
        names=""
        [[ $f =~ ^[0-9a-fA-F]+$ ]] && names=$(feature_names "$f")
        printf '  %-10s %-10s %-10s %s\n' "$1" "$3" "$f" "$names"
    done
}
for t in "${TARGETS[@]}"; do
    print_features "${LABEL[$t]}" "${FEAT[$t]}" negotiated
    print_features "${LABEL[$t]}" "${OFFER[$t]}" offered
done
echo
echo "Details:"
cat "$WORK/notes"
echo
echo "Commands used:"
awk '!seen[$0]++' "$WORK/commands"
