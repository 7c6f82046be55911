#!/usr/bin/env bash
# Live migration downtime and total time of a QEMU TCG guest with a NIC and a disk on
# vswitchd, as QEMU reports them (QMP query-migrate `downtime` and `total-time`).
#
#   benches/migrate.sh        (env: ROUNDS=3 migrations per configuration, alternating
#                              direction; MEMS="256 1024" guest MiB; LOADS="idle fio";
#                              MAX_BW=MiB/s, QMP max-bandwidth of the source, default
#                              QEMU's own (128 MiB/s); VSWITCHD=path, default
#                              target/release/vswitchd)
#
# One vswitchd (release build) with two vhost-user ports, `a` and `b`, on one switch,
# and a pool whose volume is exported on its socket and its migration socket. The
# guest (the test image of scripts/build-guest-image.sh, memfd shared memory, 1 vCPU)
# boots on port a and the main export socket; each round starts a destination QEMU
# with `-incoming unix:...` on the other port and the export socket the source does not
# hold, runs QMP `migrate`, waits for the destination to run and quits the source. Both
# QEMUs run on this machine, the migration stream over a Unix socket: the figures are
# QEMU's and the backends' (dirty logging, the disk's handover), not a network's.
#   idle: role=serve (httpd, nothing else running; the disk attached and untouched)
#   fio:  role=mig-guest: fio write+verify passes over 16 MiB of the disk (qd 4) the
#         whole time, beside 16 random 4 KiB reads in flight (the image's reader), so
#         the guest dirties memory and the disk's requests cross the switchover
# Prints, per configuration, the median and range over the rounds of the downtime and
# the total time (ms), and of the RAM QEMU sent (MiB).
set -euo pipefail
ROUNDS=${ROUNDS:-3}
MEMS=${MEMS:-256 1024}
LOADS=${LOADS:-idle fio}
cd "$(dirname "$0")/.."
VSWITCHD=${VSWITCHD:-target/release/vswitchd}
[ -x "$VSWITCHD" ] || cargo build --release --bin vswitchd >/dev/null
QEMU=${FABRIC_QEMU:-qemu-system-x86_64}
IMAGE=${FABRIC_GUEST_IMAGE:-target/guest-image}
command -v "$QEMU" >/dev/null || { echo "$QEMU not found: run scripts/install-qemu.sh" >&2; exit 1; }
[ -s "$IMAGE/initramfs.img" ] || scripts/build-guest-image.sh "$IMAGE" >/dev/null
# On disk: the pool is opened O_DIRECT, which tmpfs refuses.
WORK=$(mktemp -d /var/tmp/migrate-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# QMP: one command per call (`qmp SOCKET COMMAND [JSON-ARGS]`), prints the return value
# as JSON; `qmp SOCKET migrate-wait URI` migrates and prints query-migrate at completion.
cat >"$WORK/qmp.py" <<'PY'
import json, socket, sys, time
sock, cmd = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
for _ in range(400):
    try:
        s.connect(sock)
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit(f"cannot connect to {sock}")
f = s.makefile("rw")
json.loads(f.readline())
def run(c, args=None):
    m = {"execute": c}
    if args:
        m["arguments"] = args
    f.write(json.dumps(m) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" in r:
            continue
        if "error" in r:
            sys.exit(f"{c}: {r['error']['desc']}")
        return r["return"]
run("qmp_capabilities")
if cmd == "migrate-wait":
    run("migrate", {"uri": sys.argv[3]})
    while True:
        r = run("query-migrate")
        if r["status"] == "completed":
            print(json.dumps(r))
            break
        if r["status"] in ("failed", "cancelled"):
            sys.exit(f"migration {r['status']}: {r}")
        time.sleep(0.05)
elif cmd == "wait-running":
    for _ in range(600):
        if run("query-status")["status"] == "running":
            break
        time.sleep(0.05)
    else:
        sys.exit("destination not running after 30 s")
else:
    print(json.dumps(run(cmd, json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)))
PY
qmp() { python3 "$WORK/qmp.py" "$@"; }

mkdir -p "$WORK/d"
cat >"$WORK/d/fabric.toml" <<'EOF'
[daemon]
run_dir = "run"
[[switch]]
name = "br0"
[[switch.port]]
name = "a"
type = "vhost-user"
vlan = { mode = "access", tag = 10 }
[[switch.port]]
name = "b"
type = "vhost-user"
vlan = { mode = "access", tag = 10 }
[[pool]]
name = "p0"
path = "pool.img"
size = "256M"
[[pool.volume]]
name = "disk"
size = "64M"
export = { socket = "run/disk.sock", migration_socket = "run/disk-mig.sock" }
EOF
"$VSWITCHD" --config "$WORK/d/fabric.toml" >"$WORK/d/log" 2>&1 &
pids+=($!)
RUN=$WORK/d/run
for _ in $(seq 200); do [ -S "$RUN/disk-mig.sock" ] && break; sleep 0.05; done
[ -S "$RUN/disk-mig.sock" ] || { echo "vswitchd did not start:" >&2; cat "$WORK/d/log" >&2; exit 1; }

# qemu NAME MEM PORT DISK-SOCKET PARAMS [INCOMING-SOCKET]: starts QEMU in the background;
# sets $qpid.
qemu() {
    local name=$1 mem=$2 port=$3 disk=$4 params=$5 incoming=${6:-}
    local extra=()
    [ -n "$incoming" ] && extra=(-incoming "unix:$incoming")
    "$QEMU" -accel tcg -nodefaults -no-user-config -smp 1 -m "$mem" \
        -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem \
        -chardev "socket,id=c0,path=$RUN/$port.sock" -netdev vhost-user,id=n0,chardev=c0 \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:00:13:01 \
        -chardev "socket,id=c1,path=$disk" -device vhost-user-blk-pci,chardev=c1,num-queues=1 \
        -chardev "socket,id=cmd,path=$WORK/$name.cmd,server=on,wait=off" \
        -device isa-serial,chardev=cmd,index=1 \
        -qmp "unix:$WORK/$name.qmp,server=on,wait=off" \
        -display none -monitor none -serial "file:$WORK/$name.serial" -no-reboot \
        -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initramfs.img" \
        -append "console=ttyS0 quiet panic=-1 ipv6.disable=1 fabric.ip=10.13.0.1/24 $params" \
        "${extra[@]}" >"$WORK/$name.log" 2>&1 &
    qpid=$!
    pids+=("$qpid")
}

stat_ms() { python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r['downtime'], r['total-time'], r['ram']['transferred'] >> 20)" "$1"; }
median() { python3 -c "import statistics,sys; print('%g' % statistics.median(map(float, sys.argv[1:])))" $1; }
spread() { python3 -c "import sys; v=sorted(map(float, sys.argv[1:])); print('%g-%g' % (v[0], v[-1]))" $1; }

declare -A down total sent
n=0
for mem in $MEMS; do
    for load in $LOADS; do
        case $load in
        idle) params="fabric.role=serve"; ready="FABRIC-RESULT serve ready" ;;
        fio) params="fabric.role=mig-guest fabric.peer=10.13.0.2 fabric.wait=0 fabric.size=16M fabric.qd=4 fabric.verify=pattern"
             ready="FABRIC-RESULT mig ready" ;;
        *) echo "unknown load $load (idle|fio)" >&2; exit 1 ;;
        esac
        n=$((n + 1)); name=q$n
        qemu "$name" "$mem" a "$RUN/disk.sock" "$params"
        src=$name; src_pid=$qpid
        for _ in $(seq 1200); do grep -q "$ready" "$WORK/$src.serial" 2>/dev/null && break; kill -0 "$src_pid" 2>/dev/null || break; sleep 0.1; done
        grep -q "$ready" "$WORK/$src.serial" || { echo "$mem MiB $load: guest not ready" >&2; tail "$WORK/$src.serial" "$WORK/$src.log" >&2; exit 1; }
        for r in $(seq "$ROUNDS"); do
            n=$((n + 1)); name=q$n
            if [ $((r % 2)) = 1 ]; then port=b; disk=$RUN/disk-mig.sock; else port=a; disk=$RUN/disk.sock; fi
            qemu "$name" "$mem" "$port" "$disk" "$params" "$WORK/$name.migrate"
            dst=$name; dst_pid=$qpid
            for _ in $(seq 200); do [ -S "$WORK/$dst.migrate" ] && break; sleep 0.05; done
            if [ -n "${MAX_BW:-}" ]; then
                qmp "$WORK/$src.qmp" migrate-set-parameters "{\"max-bandwidth\": $((MAX_BW << 20))}" >/dev/null
            fi
            out=$(qmp "$WORK/$src.qmp" migrate-wait "unix:$WORK/$dst.migrate")
            qmp "$WORK/$dst.qmp" wait-running
            qmp "$WORK/$src.qmp" quit >/dev/null || true
            wait "$src_pid" 2>/dev/null || true
            read -r d t s <<<"$(stat_ms "$out")"
            down[$mem,$load]+=" $d"; total[$mem,$load]+=" $t"; sent[$mem,$load]+=" $s"
            echo "$mem MiB $load round $r: downtime $d ms, total $t ms, $s MiB sent" >&2
            src=$dst; src_pid=$dst_pid
        done
        if [ "$load" = fio ]; then
            grep -q "blk write FAIL" "$WORK"/q*.serial && { echo "an fio pass failed" >&2; exit 1; }
        fi
        qmp "$WORK/$src.qmp" quit >/dev/null || true
        wait "$src_pid" 2>/dev/null || true
    done
done

echo "## Live migration, QEMU TCG guest with NIC + disk on vswitchd, median (range) of $ROUNDS migrations, max-bandwidth ${MAX_BW:-QEMU default} MiB/s"
echo "| guest | load | downtime ms | total ms | RAM sent MiB |"
echo "|---|---|---|---|---|"
for mem in $MEMS; do
    for load in $LOADS; do
        k=$mem,$load
        echo "| $mem MiB | $load | $(median "${down[$k]}") ($(spread "${down[$k]}")) | $(median "${total[$k]}") ($(spread "${total[$k]}")) | $(median "${sent[$k]}") ($(spread "${sent[$k]}")) |"
    done
done
