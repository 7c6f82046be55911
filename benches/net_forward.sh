#!/usr/bin/env bash
# Forwarding-rate benchmark of vswitchd against DPDK's own vhost PMD, measured in the
# same run with the same third-party peer (not a test; prints a table).
#
# Peer: one dpdk-testpmd with two net_virtio_user ports (02:00:00:00:00:01 and :02),
#   --forward-mode=io --tx-first --eth-peer=0,<mac of port 1> --eth-peer=1,<mac of port 0>
# attached to two access-VLAN ports of the switch under test: the first bursts loop
# through the switch forever, and the sum of the peer's per-port Rx-pps is the switch's
# forwarding rate (average of the steady-state 1 s samples).
# Switches: vswitchd (release build), and as reference a second testpmd with
#   --vdev net_vhost0,iface=SOCK0 --vdev net_vhost1,iface=SOCK1 --forward-mode=io.
#
# Only 2 CPUs: the peer forwards on CPU 1 (lcore 1, main lcore 0); the reference switch
# forwards on CPU 0 (lcore 0, main lcore 1). vswitchd's threads are not pinned by
# vswitchd itself; the script runs it unpinned and under `taskset -c 0` and `-c 1`.
#
# Queue pairs: after the table above, MQ_ROUNDS interleaved rounds of the same loop with
#   one queue pair per port, then two (fabric.toml `queues = 1|2`, datapath_threads = 2 for both,
#   the peer's ports queues=N,cq=1 with --rxq=N --txq=N), vswitchd unpinned, 64 B frames
#   (MQ_SIZE): Mpps port to port as median and range of the rounds.
#
# Usage: benches/net_forward.sh            (env: DURATION=seconds per point, default 10;
#                                           SIZES="64 1518"; PINS="none 0 1"; VSWITCHD=path;
#                                           MQ_ROUNDS=3 (0: skip), MQ_SIZE=64)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
SIZES=${SIZES:-"64 1518"}
PINS=${PINS:-"none 0 1"}
MQ_ROUNDS=${MQ_ROUNDS:-3}
MQ_SIZE=${MQ_SIZE:-64}
WARMUP=3 # samples dropped at the start of each run
MAC0=02:00:00:00:00:01
MAC1=02:00:00:00:00:02

command -v dpdk-testpmd >/dev/null || {
    echo "dpdk-testpmd not found: run scripts/install-test-deps.sh as root" >&2
    exit 1
}
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

# peer NAME SOCK0 SOCK1 LEN [QUEUES]: runs the virtio_user peer for DURATION+WARMUP
# seconds and sets MPPS to the average summed Rx-pps of its two ports (steady-state
# samples); the per-sample sums go to $WORK/NAME.samples. QUEUES (default 1) queue pairs
# per port; above 1 with virtio_user's control queue (cq=1) and --rxq/--txq.
peer() {
    local name=$1 s0=$2 s1=$3 len=$4 queues=${5:-1} mq="" mqargs=()
    if ((queues > 1)); then
        mq=",cq=1"
        mqargs=(--rxq="$queues" --txq="$queues" --txonly-multi-flow)
    fi
    local args=(-l 0,1 --no-huge -m 1024 --no-pci --file-prefix="vswb-$name-$$"
        --vdev="net_virtio_user0,path=$s0,queues=$queues$mq,mac=$MAC0"
        --vdev="net_virtio_user1,path=$s1,queues=$queues$mq,mac=$MAC1"
        -- --forward-mode=io --tx-first --eth-peer=0,$MAC1 --eth-peer=1,$MAC0
        --txpkts="$len" --stats-period 1 --total-num-mbufs=8192 "${mqargs[@]}")
    record "dpdk-testpmd ${args[*]}"
    stdbuf -oL -eL dpdk-testpmd "${args[@]}" </dev/null >"$WORK/$name.log" 2>&1 &
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
}

# vswitchd_run LEN PIN [QUEUES [NAME [THREADS]]]: sets MPPS. QUEUES queue pairs per port
# on THREADS datapath threads (default 1 and 1).
vswitchd_run() {
    local len=$1 pin=$2 queues=${3:-1} name=${4:-vs-$1-$2} threads=${5:-1}
    local dir="$WORK/$name"
    mkdir -p "$dir"
    cat >"$dir/fabric.toml" <<EOF
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
EOF
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
        echo "# vswitchd len=$len pin=$pin queues=$queues: ${MPPS} Mpps;${health} samples (pps): $(tr '\n' ' ' <"$WORK/$name.samples")"
        grep -E '^(counters|fdb)' "$dir/out" | tail -3 | sed 's/^/#   /'
    } >>"$WORK/notes"
}

# reference_run LEN: sets MPPS
reference_run() {
    local len=$1 dir="$WORK/ref-$1"
    mkdir -p "$dir"
    local args=(-l 0,1 --main-lcore 1 --no-huge -m 1024 --no-pci --file-prefix="vswb-ref$len-$$"
        --vdev="net_vhost0,iface=$dir/s0,queues=1" --vdev="net_vhost1,iface=$dir/s1,queues=1"
        -- --forward-mode=io --stats-period 1 --total-num-mbufs=8192)
    record "dpdk-testpmd ${args[*]}"
    stdbuf -oL -eL dpdk-testpmd "${args[@]}" </dev/null >"$dir/log" 2>&1 &
    local sw=$!
    PIDS+=("$sw")
    wait_for_sockets "$dir/s0" "$dir/s1"
    peer "ref-$len" "$dir/s0" "$dir/s1" "$len"
    stop "$sw"
    echo "# net_vhost len=$len: ${MPPS} Mpps; samples (pps): $(tr '\n' ' ' <"$WORK/ref-$len.samples")" >>"$WORK/notes"
}

: >"$WORK/notes"
: >"$WORK/commands"
declare -A VS REF
for len in $SIZES; do
    for pin in $PINS; do
        log "vswitchd, ${len} B frames, vswitchd pinned to: $pin ..."
        vswitchd_run "$len" "$pin"
        VS[$len,$pin]=$MPPS
    done
    log "net_vhost reference, ${len} B frames ..."
    reference_run "$len"
    REF[$len]=$MPPS
done

echo
echo "Forwarding rate through the switch (testpmd virtio_user peer, io loop, sum of Rx-pps of"
echo "both ports, average of ${DURATION}-ish steady 1 s samples; peer forwards on CPU 1)"
echo
printf '%-8s %-14s %14s %14s %8s\n' "frame" "vswitchd pin" "vswitchd Mpps" "net_vhost Mpps" "ratio"
for len in $SIZES; do
    for pin in $PINS; do
        label=$pin
        [ "$pin" = none ] && label="unpinned"
        [ "$pin" != none ] && label="taskset -c $pin"
        ratio=$(awk -v a="${VS[$len,$pin]}" -v b="${REF[$len]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }')
        printf '%-8s %-14s %14s %14s %8s\n' "${len}B" "$label" "${VS[$len,$pin]}" "${REF[$len]}" "$ratio"
    done
done
if ((MQ_ROUNDS > 0)); then
    declare -A MQ
    for round in $(seq "$MQ_ROUNDS"); do
        for q in 1 2; do
            log "vswitchd, ${MQ_SIZE} B frames, $q queue pair(s), round $round ..."
            vswitchd_run "$MQ_SIZE" none "$q" "mq-$q-$round" 2
            MQ[$q]+="$MPPS "
        done
    done
    echo
    echo "Queue pairs: ${MQ_SIZE} B frames, vswitchd unpinned, datapath_threads = 2 either way,"
    echo "$MQ_ROUNDS interleaved rounds of ${DURATION} s; Mpps port to port"
    echo
    printf '%-12s %10s %22s  %s\n' "queue pairs" "median" "range" "rounds"
    for q in 1 2; do
        # shellcheck disable=SC2086
        printf '%-12s %10s %22s  %s\n' "$q" \
            "$(printf '%s\n' ${MQ[$q]} | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')" \
            "$(printf '%s\n' ${MQ[$q]} | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo " - " hi }')" \
            "${MQ[$q]}"
    done
fi
echo
echo "Details:"
cat "$WORK/notes"
echo
echo "Commands used:"
awk '!seen[$0]++' "$WORK/commands"
