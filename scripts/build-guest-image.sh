#!/bin/sh
# build-guest-image.sh OUTDIR
#
# Builds a tiny test guest for QEMU (TCG) from Debian packages, in seconds:
#   OUTDIR/vmlinuz         kernel of the versioned linux-image-*-cloud-amd64 package
#   OUTDIR/initramfs.img   busybox-static + the virtio-net/-blk modules + the host's fio
#                          (with its ldd closure and the loader) + /init below
#   OUTDIR/manifest        what went in; OUTDIR/stamp: cache key (sha256 of this script and
#                          of the host's fio and its libraries)
# Re-running with an unchanged script and fio is a no-op. Needs: apt-get (package lists
# present), dpkg-deb, cpio, gzip, sha256sum, ldd and fio on the host (scripts/install-qemu.sh
# installs them). No root needed except that apt-get download as root warns about its
# sandbox user (handled below).
#
# The guest's /init takes its parameters from the kernel command line. Network mode (the
# default, needs a virtio-net NIC):
#   fabric.ip=10.0.0.1/24   address for eth0 (required)
#   fabric.role=ping|serve  ping: ping fabric.peer; serve: answer pings, serve HTTP on
#                           :8080 (/blob, 1 MiB) for fabric.time seconds (default: forever)
#   fabric.peer=10.0.0.2    ping/wget target
#   fabric.count=5          measured pings, after a warm-up of up to fabric.wait seconds
#   fabric.wait=60          (default) single pings until the first reply arrives (ARP warm-up)
#   fabric.wget=1           (ping role) also fetch http://PEER:8080/blob and check its md5
#   fabric.hold=N|forever   stay up (answering pings) N seconds after the test (default 0)
#   fabric.role=iperf-serve iperf3 server (until fabric.time seconds, default forever)
#   fabric.role=iperf       after the ping warm-up, iperf3 to fabric.peer for fabric.time
#                           seconds (default 5) with fabric.streams streams (default 1),
#                           once sending and once receiving (-R)
# Results on the console, one line each:
#   FABRIC-RESULT ping ok 5/5 peer=10.0.0.2       (ok: all replied; partial; fail: none)
#   FABRIC-RESULT wget ok 1048576 md5=...         (or: wget fail ...)
#   FABRIC-RESULT serve ready                     (serve role is up)
#   FABRIC-RESULT offloads tx-checksumming=on ... combined=N   (iperf roles: ethtool -k
#                           and -l of eth0 as the guest's driver set them)
#   FABRIC-RESULT iperf send|recv ok mbits=N streams=N retrans=N   (or: fail rc=N)
#   FABRIC-RESULT mig ready role=guest|peer ip=... (migration roles are up)
#   FABRIC-RESULT blk write PASS|FAIL ... seed=N   (mig-guest) each fio pass, as in block mode
#   FABRIC-RESULT fio passes=N failed=M           (mig-guest, after `stop`)
#   FABRIC-RESULT stream recv N PASS|FAIL bytes=B copies=K md5=... want=...
#                           (mig-guest) stream N: PASS if B = K MiB and the md5 is that of
#                           K copies of /www/blob
#   FABRIC-RESULT stream send N copies=K rc=RC    (mig-peer, at `stream-stop`) rc: nc's
#   FABRIC-RESULT pings from=S to=E received=R lost=L longest=G gaps=A-B,... interval_ms=I
#                           (mig-peer) sequence numbers S..E (E: the highest answered);
#                           lost ones, the longest run of them, every run
#   FABRIC-INFO ...                               progress and diagnostics
#   FABRIC-ERROR ...                              the guest could not run the test
#
#   fabric.role=mig-guest   the guest a live-migration test moves (NIC and disk): after a
#                           gratuitous ARP and a ping warm-up to fabric.peer, answers pings, checks every TCP
#                           stream it receives on port 5001 and runs fio write passes
#                           (verify after writing; pass N with seed N) over the disk region
#                           (fabric.size etc. as in block mode) until the command `stop`,
#                           beside a reader keeping 16 random 4 KiB reads of [32, 40) MiB
#                           (random data) in flight (the disk must have 40 MiB)
#   fabric.role=mig-peer    its peer: pings fabric.peer every fabric.interval_ms (default
#                           100) from boot on; commands: `stream` (send copies of /www/blob
#                           to fabric.peer:5001, one every fabric.pace seconds (default
#                           0.2) at most, until `stream-stop`), `pings` (report the pings
#                           since the last report), `stop`
#   Commands are lines on the second serial port (ttyS1: QEMU `-device isa-serial,index=1`),
#   each acknowledged as `FABRIC-INFO cmd WORD`.
# Block mode (selected by fabric.blk; needs a virtio-blk disk, no NIC) runs fio on the disk:
#   fabric.blk=STEP[,STEP...]  steps, in order:
#       write    fio randwrite over the region with --verify=crc32c (or fabric.verify)
#                --do_verify=1: every block is written, then read back and checked
#       verify   fio --verify_only replay of the same job: no writes; every block of the
#                region must be one a `write` with the same bs left there (crc32c: fio's
#                header magic, length, the block's own offset and checksum; pattern: also
#                the seed)
#       read     fio randread over the region, nothing checked (also fine on read-only disks)
#       ro       expects a read-only disk: /sys/block/DEV/ro = 1, rewriting the region's
#                first 4 KiB with its own content (O_DIRECT) is refused, and it reads back
#                unchanged
#       grow     first step only: prints `FABRIC-INFO blk grow waiting size=BYTES`, then
#                waits (at most fabric.grow_wait seconds, default 300) until the disk's
#                size (/sys/block/DEV/size) changes without a reboot; the region is then
#                checked against the new size, so the steps after it may run past the
#                old end. FABRIC-RESULT blk grow PASS|FAIL from=BYTES to=BYTES secs=S
#   fabric.dev=vda          disk (default vda)
#   fabric.offset=0         region start, bytes (K/M/G suffixes; 4 KiB aligned)
#   fabric.size=64M         region length (K/M/G suffixes); split evenly between jobs
#   fabric.bs=4k            fio block size
#   fabric.qd=8             fio iodepth (libaio, O_DIRECT)
#   fabric.jobs=1           fio jobs (threads), each on its own slice of the region; with
#                           -smp N they run on N vCPUs and so on N virtqueues
#   fabric.seed=1           fio randseed (offsets and data)
#   fabric.verify=crc32c    or `pattern`: fio verify=pattern with pattern <seed as 4 bytes>
#                           + block offset, which also tells one seed's data from another's
#                           (crc32c blocks are self-checking; fio 3.33 does not compare their
#                           seed in a write-only job, so a stale block from an earlier run
#                           of the same geometry passes)
#   fabric.hold=N           as above
#   fabric.ip=, fabric.peer= with a virtio-net NIC as well: eth0 comes up first and the
#                           guest pings the peer every 0.5 s in the background for as long
#                           as the steps run
# Results:
#   FABRIC-INFO blk vda size=... ro=0|1 queues=N ...   the disk as the guest sees it
#   FABRIC-INFO fio[STEP] ...                          fio's summary (percentiles left out)
#   FABRIC-RESULT blk STEP PASS|FAIL key=value...      one per step: rc (fio's exit code), err
#                           (fio's error number, 84 = EILSEQ: a block failed verification),
#                           read and write (bytes as fio counts them: `verify` counts the
#                           writes it replays without issuing them), secs; ro step: ro (the
#                           disk's flag), write (refused|accepted), data (unchanged|changed)
#                           PASS: fio exited 0 with err 0 and read the whole region (write:
#                           and wrote it); ro: ro=1, write refused, data unchanged
#   FABRIC-RESULT blk ping sent=N received=M tail=K/8  (with fabric.peer) the background
#                           pings; tail: replies to the last 8 sent, so ping works at the end
#   FABRIC-RESULT blk done PASS|FAIL steps=... failed=... vq_irqs=N,N...
#                           last line before poweroff; vq_irqs: completion interrupts of
#                           each request virtqueue (non-zero: that queue carried requests)
# then the guest powers off (run QEMU with -no-reboot so it exits).
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
SELF=$(readlink -f "$0")

# fio, iperf3 and ethtool go into the guest as the host's dynamic binaries plus their
# ldd closure (fio for block mode, iperf3 and ethtool for the iperf roles).
if ! command -v ldd >/dev/null 2>&1; then
    echo "build-guest-image: ldd must be installed on the host" >&2
    exit 1
fi
BINS=""
for tool in fio iperf3 ethtool; do
    b=$(command -v "$tool" 2>/dev/null || true)
    if [ -z "$b" ]; then
        echo "build-guest-image: $tool must be installed on the host: the guest image" \
            "carries the host's $tool; run scripts/install-qemu.sh as root" >&2
        exit 1
    fi
    b=$(readlink -f "$b")
    if ldd "$b" | grep -q 'not found'; then
        echo "build-guest-image: $b has unresolved libraries:" >&2
        ldd "$b" | grep 'not found' >&2
        exit 1
    fi
    BINS="$BINS $b"
done
FIO=$(readlink -f "$(command -v fio)")
# Absolute paths the loader will look for (as ldd names them), loaders included.
# shellcheck disable=SC2086
LIBS=$(for b in $BINS; do ldd "$b"; done |
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
KEY=$({
    sha256sum "$SELF" | cut -d' ' -f1
    # shellcheck disable=SC2086
    sha256sum $BINS $(for l in $LIBS; do readlink -f "$l"; done) | cut -d' ' -f1
} | sha256sum | cut -d' ' -f1)

if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$KEY" ] &&
    [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.img" ]; then
    echo "build-guest-image: $OUT is up to date ($(head -n1 "$OUT/manifest" 2>/dev/null))"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb cpio gzip sha256sum md5sum; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build-guest-image: $tool missing; run scripts/install-qemu.sh as root" >&2
        exit 1
    }
done

mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The versioned kernel package behind the linux-image-cloud-amd64 metapackage.
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$KPKG" ]; then
    echo "build-guest-image: cannot resolve linux-image-cloud-amd64 (run apt-get update?)" >&2
    exit 1
fi
KVER=${KPKG#linux-image-}

APT_OPTS=""
[ "$(id -u)" = 0 ] && APT_OPTS="-o APT::Sandbox::User=root"
(cd "$WORK" && apt-get $APT_OPTS -q download "$KPKG" busybox-static >/dev/null)
dpkg-deb -x "$WORK"/linux-image-*.deb "$WORK/kernel"
dpkg-deb -x "$WORK"/busybox-static_*.deb "$WORK/busybox"

ROOT=$WORK/root
mkdir -p "$ROOT/bin" "$ROOT/sbin" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/tmp" \
    "$ROOT/modules" "$ROOT/www" "$ROOT/etc"
cp "$WORK/busybox/bin/busybox" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"

# Each binary in /usr/bin, each library at the path ldd printed (RUNPATHs such as
# libceph's keep working), the loader at the binaries' PT_INTERP path.
mkdir -p "$ROOT/usr/bin"
for b in $BINS; do
    cp "$b" "$ROOT/usr/bin/$(basename "$b")"
done
for l in $LIBS; do
    mkdir -p "$ROOT$(dirname "$l")"
    cp -L "$l" "$ROOT$l"
done
FIOVER=$("$FIO" --version)

# virtio drivers are modules in the cloud kernel; this order satisfies their dependencies.
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover virtio_net"
MDIR=$WORK/kernel/lib/modules/$KVER
for m in $MODS; do
    f=$(find "$MDIR" -name "$m.ko*" | head -n1)
    if [ -z "$f" ]; then
        echo "build-guest-image: module $m not found in $KPKG" >&2
        exit 1
    fi
    case $f in
    *.ko) cp "$f" "$ROOT/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$ROOT/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$ROOT/modules/$m.ko" ;;
    *) echo "build-guest-image: unknown module format $f" >&2; exit 1 ;;
    esac
done
echo "$MODS" >"$ROOT/modules/order"

# 1 MiB of random data for the HTTP transfer check; every guest knows its md5.
head -c 1048576 /dev/urandom >"$ROOT/www/blob"
md5sum "$ROOT/www/blob" | cut -d' ' -f1 >"$ROOT/etc/blob.md5"

cat >"$ROOT/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

info() { echo "FABRIC-INFO $*"; }
finish() {
    case ${P_hold:-0} in
    forever) info "holding until killed"; while :; do sleep 3600; done ;;
    0) ;;
    *) info "holding ${P_hold}s"; sleep "$P_hold" ;;
    esac
    info "poweroff"
    sync
    poweroff -f
}
die() { echo "FABRIC-ERROR $*"; finish; }

for w in $(cat /proc/cmdline); do
    case $w in
    fabric.*=*) k=${w%%=*}; k=${k#fabric.}; eval "P_$k=\${w#*=}" ;;
    esac
done
if [ -n "${P_blk:-}" ]; then
    info "kernel $(uname -r) blk=$P_blk cpus=$(nproc)"
else
    info "kernel $(uname -r) role=${P_role:-?} ip=${P_ip:-?} peer=${P_peer:-}"
fi

for m in $(cat /modules/order); do
    insmod /modules/$m.ko || die "insmod $m failed"
done

# eth0 with fabric.ip, up and with carrier.
net_up() {
    n=0
    while [ ! -e /sys/class/net/eth0 ]; do
        n=$((n + 1)); [ $n -gt 100 ] && die "no eth0 after 10s"
        sleep 0.1
    done
    [ -n "${P_ip:-}" ] || die "fabric.ip missing"
    ip link set lo up
    ip addr add "$P_ip" dev eth0 || die "bad fabric.ip $P_ip"
    ip link set eth0 up
    n=0
    while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ]; do
        n=$((n + 1)); [ $n -gt 100 ] && die "eth0 has no carrier after 10s"
        sleep 0.1
    done
    netdev=$(basename "$(readlink /sys/class/net/eth0/device)")
    info "eth0 up mac=$(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu) features=$(cat /sys/bus/virtio/devices/$netdev/features 2>/dev/null)"
}

# ---- block mode: fio on a virtio-blk disk ----------------------------------------------
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# to_bytes VAR 64M: VAR=67108864 (K/M/G suffixes, either case); dies on anything else.
to_bytes() {
    v=$2; m=1
    case $v in
    *[kK]) v=${v%?}; m=1024 ;;
    *[mM]) v=${v%?}; m=1048576 ;;
    *[gG]) v=${v%?}; m=1073741824 ;;
    esac
    case $v in ''|*[!0-9]*) die "bad size $2 (want digits with an optional K/M/G)" ;; esac
    eval "$1=\$((v * m))"
}
num() { case $2 in ''|*[!0-9]*) die "fabric.$1=$2 is not a number" ;; esac; }

# One fio step (write|verify|read) over the region; sets st=PASS|FAIL.
blk_fio() {
    step=$1
    set -- --name=fabric --filename="/dev/$dev" --direct=1 --ioengine=libaio \
        --iodepth="$qd" --bs="$bs" --offset="$off" --size="$slice" --randseed="$seed" \
        --thread --group_reporting --output-format=normal,terse --terse-version=3
    [ "$jobs" -gt 1 ] && set -- "$@" --numjobs="$jobs" --offset_increment="$slice"
    case $vmode in
    crc32c) set -- "$@" --verify=crc32c ;;
    pattern) set -- "$@" --verify=pattern --verify_pattern="0x$(printf %08x "$seed")%o" ;;
    esac
    case $step in
    write) set -- "$@" --rw=randwrite --do_verify=1 ;;
    verify) set -- "$@" --rw=randwrite --verify_only=1 ;;
    read) set -- "$@" --rw=randread --verify=0 ;;
    esac
    set -- "$@" --verify_fatal=1 --verify_dump=0 --verify_state_save=0
    info "fio[$step] fio $*"
    t0=$(now)
    fio "$@" >/tmp/fio.$step 2>&1
    rc=$?
    secs=$(since "$t0")
    grep -v -e '^ *|' -e 'percentiles' -e '^3;fio' /tmp/fio.$step | sed "s/^/FABRIC-INFO fio[$step] /"
    terse=$(grep '^3;fio' /tmp/fio.$step | tail -n1)
    err=$(echo "$terse" | cut -d';' -f5)
    rb=$(($(echo "$terse" | cut -d';' -f6 | grep -x '[0-9][0-9]*' || echo 0) * 1024))
    wb=$(($(echo "$terse" | cut -d';' -f47 | grep -x '[0-9][0-9]*' || echo 0) * 1024))
    st=FAIL
    if [ "$rc" = 0 ] && [ "$err" = 0 ] && [ "$rb" = "$size" ]; then
        case $step in
        write) [ "$wb" = "$size" ] && st=PASS ;;
        *) st=PASS ;;
        esac
    fi
    echo "FABRIC-RESULT blk $step $st dev=$dev offset=$off size=$size bs=$bs qd=$qd jobs=$jobs seed=$seed verify=$vmode rc=$rc err=${err:-none} read=$rb write=$wb secs=$secs"
}

# Waits for the disk to change size (an online resize); sets st and dsize.
blk_grow() {
    s0=$(cat "/sys/block/$dev/size")
    gw=${P_grow_wait:-300}; num grow_wait "$gw"
    info "blk grow waiting size=$((s0 * 512))"
    t0=$(now)
    n=0
    while [ "$(cat "/sys/block/$dev/size")" = "$s0" ] && [ $n -lt $((gw * 10)) ]; do
        n=$((n + 1))
        sleep 0.1
    done
    s1=$(cat "/sys/block/$dev/size")
    st=FAIL
    [ "$s1" != "$s0" ] && st=PASS
    dsize=$((s1 * 512))
    echo "FABRIC-RESULT blk grow $st dev=$dev from=$((s0 * 512)) to=$dsize secs=$(since "$t0")"
}

# Expects a read-only disk: rewrites the region's first 4 KiB with its own content.
blk_ro() {
    rof=$(cat "/sys/block/$dev/ro")
    b=$((off / 4096))
    st=FAIL
    if ! dd if="/dev/$dev" of=/tmp/before bs=4096 count=1 skip=$b iflag=direct 2>/tmp/dd.err; then
        info "ro: read failed: $(cat /tmp/dd.err)"
        echo "FABRIC-RESULT blk ro FAIL dev=$dev ro=$rof write=untried data=unreadable"
        return
    fi
    if dd if=/tmp/before of="/dev/$dev" bs=4096 count=1 seek=$b oflag=direct conv=notrunc \
        2>/tmp/dd.err; then
        w=accepted
    else
        w=refused
    fi
    info "ro: write attempt $w: $(head -n1 /tmp/dd.err)"
    dd if="/dev/$dev" of=/tmp/after bs=4096 count=1 skip=$b iflag=direct 2>/dev/null
    if cmp -s /tmp/before /tmp/after; then data=unchanged; else data=changed; fi
    [ "$rof" = 1 ] && [ "$w" = refused ] && [ "$data" = unchanged ] && st=PASS
    echo "FABRIC-RESULT blk ro $st dev=$dev ro=$rof write=$w data=$data"
}

# The disk and the fio job from fabric.dev, .offset, .size, .bs, .qd, .jobs, .seed and
# .verify; waits for the disk and prints it (FABRIC-INFO blk ...).
blk_setup() {
    dev=${P_dev:-vda}
    to_bytes off "${P_offset:-0}"
    to_bytes size "${P_size:-64M}"
    bs=${P_bs:-4k}
    to_bytes bsb "$bs"
    qd=${P_qd:-8}; num qd "$qd"
    jobs=${P_jobs:-1}; num jobs "$jobs"
    seed=${P_seed:-1}; num seed "$seed"
    vmode=${P_verify:-crc32c}
    case $vmode in crc32c|pattern) ;; *) die "fabric.verify=$vmode: want crc32c or pattern" ;; esac
    [ "$jobs" -ge 1 ] && [ "$size" -gt 0 ] || die "fabric.size and fabric.jobs must be positive"
    slice=$((size / jobs))
    [ $((slice * jobs)) = "$size" ] && [ $((slice % bsb)) = 0 ] && [ $((off % 4096)) = 0 ] ||
        die "fabric.size=$size must split into $jobs slices of whole $bs blocks, offset 4 KiB aligned"
    n=0
    while [ ! -b "/dev/$dev" ] || [ ! -e "/sys/block/$dev" ]; do
        n=$((n + 1)); [ $n -gt 100 ] && die "no /dev/$dev after 10s"
        sleep 0.1
    done
    q=/sys/block/$dev/queue
    dsize=$(($(cat "/sys/block/$dev/size") * 512))
    info "blk $dev size=$dsize ro=$(cat "/sys/block/$dev/ro") queues=$(ls "/sys/block/$dev/mq" | wc -l)" \
        "lbs=$(cat $q/logical_block_size) pbs=$(cat $q/physical_block_size)" \
        "max_kb=$(cat $q/max_hw_sectors_kb) segs=$(cat $q/max_segments)" \
        "cache=$(tr ' ' _ <$q/write_cache) discard_max=$(cat $q/discard_max_bytes)" \
        "wzeroes_max=$(cat $q/write_zeroes_max_bytes) features=$(cat "/sys/block/$dev/device/features" 2>/dev/null)"
    if [ "${P_blk%%,*}" = grow ]; then
        blk_grow
        if [ "$st" != PASS ]; then
            echo "FABRIC-RESULT blk done FAIL steps=$P_blk failed=grow vq_irqs=none"
            finish
        fi
    fi
    [ $((off + size)) -le "$dsize" ] || die "region $off+$size is beyond $dev ($dsize bytes)"
}

blk_main() {
    steps=$(echo "$P_blk" | tr ',' ' ')
    for s in $steps; do
        case $s in write|verify|read|ro) ;; grow) ;; *) die "unknown fabric.blk step $s" ;; esac
    done
    case ",$P_blk," in *,grow,*) [ "${P_blk%%,*}" = grow ] || die "grow must be the first step" ;; esac
    blk_setup
    pinger=""
    if [ -n "${P_peer:-}" ]; then
        net_up
        ping -i 0.5 "$P_peer" >/tmp/bgping 2>&1 &
        pinger=$!
    fi
    failed=""
    for s in $steps; do
        case $s in
        grow) continue ;; # done above
        ro) blk_ro ;;
        *) blk_fio "$s" ;;
        esac
        [ "$st" = PASS ] || failed="$failed,$s"
    done
    if [ -n "$pinger" ]; then
        sleep 4 # 8 more pings: the tail shows whether ping works now
        kill -INT "$pinger"; wait "$pinger"
        sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /tmp/bgping)
        sent=${sent:-0}
        received=$(grep -c 'bytes from' /tmp/bgping)
        # Replies to the last 8 sent (sequence numbers start at 0).
        tail=$(grep 'bytes from' /tmp/bgping | grep -o 'seq=[0-9]*' | cut -d= -f2 |
            awk -v s="$sent" '$1 >= s - 8' | sort -u | wc -l)
        echo "FABRIC-RESULT blk ping sent=$sent received=$received tail=$tail/8"
    fi
    # Completion interrupts per request virtqueue (MSI-X vectors virtioN-req.Q, summed over
    # CPUs): every virtqueue that carried requests has a non-zero count.
    vdev=$(basename "$(readlink "/sys/block/$dev/device")")
    irqs=$(awk -v n="$(nproc)" -v name="$vdev-req." 'index($NF, name) == 1 {
        s = 0; for (i = 2; i <= n + 1; i++) s += $i; printf "%s%d", sep, s; sep = "," }' /proc/interrupts)
    if [ -z "$failed" ]; then all=PASS; else all=FAIL; fi
    echo "FABRIC-RESULT blk done $all steps=$P_blk failed=${failed#,} vq_irqs=${irqs:-none}"
}

if [ -n "${P_blk:-}" ]; then
    blk_main
    finish
fi

# ---- network mode ----------------------------------------------------------------------
net_up

netstat_line() { info "eth0 $(awk '/eth0:/ { sub(/.*eth0:/, ""); print "rx_bytes=" $1 " rx_packets=" $2 " rx_dropped=" $4 " tx_bytes=" $9 " tx_packets=" $10 " tx_dropped=" $12 }' /proc/net/dev)"; }

# Single pings until the peer answers (ARP warm-up), for at most fabric.wait seconds.
reach_peer() {
    [ -n "${P_peer:-}" ] || die "fabric.peer missing"
    wait=${P_wait:-60}
    start=$(date +%s)
    reach=no
    while :; do
        if ping -c 1 -W 1 "$P_peer" >/dev/null 2>&1; then reach=yes; break; fi
        [ $(($(date +%s) - start)) -ge "$wait" ] && break
    done
    info "warm-up: peer reachable=$reach after $(($(date +%s) - start))s"
}

# The offloads and channels eth0's driver negotiated, as one result line.
offloads_line() {
    k=$(ethtool -k eth0 2>&1 | awk -F': ' '/^(rx-checksumming|tx-checksumming|scatter-gather|tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload|tx-udp-segmentation|rx-gro-hw):/ { split($2, v, " "); printf "%s=%s ", $1, v[1] }')
    c=$(ethtool -l eth0 2>/dev/null | awk '/^Current hardware settings/ { cur = 1 } cur && /^Combined:/ { print $2; exit }')
    echo "FABRIC-RESULT offloads ${k}combined=${c:-?}"
}

# iperf3 to the peer in one direction: send, or recv (-R).
iperf_run() {
    dir=$1
    flag=""
    [ "$dir" = recv ] && flag=-R
    out=$(iperf3 -c "$P_peer" -t "${P_time:-5}" -P "${P_streams:-1}" $flag -f m 2>&1)
    rc=$?
    echo "$out" | grep -E 'sender|receiver|error' | sed "s/^/FABRIC-INFO iperf[$dir]: /"
    # The receiver's total: the SUM line with several streams, the only line with one.
    mbits=$(echo "$out" | awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") m = $(i - 1) } END { print m }')
    retrans=$(echo "$out" | awk '/sender/ { r = $(NF - 1) } END { print r }')
    if [ "$rc" = 0 ] && [ -n "$mbits" ]; then
        echo "FABRIC-RESULT iperf $dir ok mbits=$mbits streams=${P_streams:-1} retrans=${retrans:-?}"
    else
        echo "FABRIC-RESULT iperf $dir fail rc=$rc"
    fi
}

# ---- migration roles: the guest that moves (mig-guest) and its peer (mig-peer) ---------
# The host paces them across live migrations with commands: lines on the second serial
# port (ttyS1), each acknowledged as `FABRIC-INFO cmd WORD`. The port is opened (fd 3)
# before the role says it is ready and stays open: the UART drops what arrives while
# nobody has it open.
cmd_open() {
    [ -c /dev/ttyS1 ] || die "no /dev/ttyS1 (second serial port) for commands"
    exec 3</dev/ttyS1
    stty -echo <&3 2>/dev/null
}

# Runs HANDLER WORD for each command until `stop`.
cmd_loop() {
    while read -r word rest <&3; do
        [ -n "$word" ] || continue
        info "cmd $word"
        [ "$word" = stop ] && break
        "$1" "$word" || info "cmd $word unknown"
    done
}

# One TCP connection on port 5001 (run by `nc -ll -e` with the socket as stdin): whole
# copies of /www/blob, counted and checked by md5 against as many copies.
write_stream_check() {
    cat >/tmp/stream-check <<'CHECK'
#!/bin/sh
n=$(($(cat /tmp/streams 2>/dev/null || echo 0) + 1))
echo "$n" >/tmp/streams
echo "FABRIC-INFO stream recv $n connected" >/dev/console
rm -f /tmp/sc.fifo
mkfifo /tmp/sc.fifo
wc -c </tmp/sc.fifo >/tmp/sc.bytes &
got=$(tee /tmp/sc.fifo | md5sum | cut -d' ' -f1)
wait
bytes=$(tr -d ' ' </tmp/sc.bytes)
copies=$((bytes / 1048576))
want=$(i=0; while [ $i -lt $copies ]; do cat /www/blob; i=$((i + 1)); done | md5sum | cut -d' ' -f1)
st=FAIL
[ $((copies * 1048576)) = "$bytes" ] && [ "$got" = "$want" ] && st=PASS
echo "FABRIC-RESULT stream recv $n $st bytes=$bytes copies=$copies md5=$got want=$want" >/dev/console
CHECK
    chmod +x /tmp/stream-check
}

# fio write passes (verify after writing) over the region until /tmp/fio.stop; pass N
# uses seed N, so with fabric.verify=pattern a block left by an older pass fails.
fio_loop() {
    pass=0
    failed=0
    while [ ! -e /tmp/fio.stop ]; do
        pass=$((pass + 1))
        seed=$pass
        info "fio pass $pass start"
        blk_fio write
        [ "$st" = PASS ] || failed=$((failed + 1))
    done
    echo "FABRIC-RESULT fio passes=$pass failed=$failed"
}

# Keeps disk reads in flight whatever fio_loop is doing: random 4 KiB reads, 16 deep,
# of [32 MiB, 40 MiB), filled with random data first (every block distinct), so the
# device keeps writing fresh bytes into the guest's buffers. A live migration stops
# the VM with such reads in flight; the device completes them after the vCPUs stopped,
# and only its dirty log tells QEMU that those pages changed.
reader_start() {
    [ "$(cat "/sys/block/$dev/size")" -ge $((40 * 2048)) ] || die "reader: $dev is smaller than 40 MiB"
    dd if=/dev/urandom of="/dev/$dev" bs=1M seek=32 count=8 conv=fsync 2>/dev/null ||
        die "reader: cannot fill its region"
    fio --name=reader --filename="/dev/$dev" --direct=1 --ioengine=libaio --iodepth=16 \
        --bs=4k --offset=32M --size=8M --rw=randread --time_based --runtime=86400 \
        --thread >/tmp/reader.out 2>&1 &
    reader_pid=$!
}

# mig-guest: disk and NIC; answers pings, checks each stream on port 5001 and runs
# fio_loop (and the reader) until `stop`.
mig_guest() {
    blk_setup
    reader_start
    # A gratuitous ARP: every switch of the segment learns where it is before it moves.
    # (busybox arping exits 1 when nothing answers, as nothing does to -U)
    arping -U -c 1 -I eth0 "${P_ip%/*}" >/dev/null 2>&1
    reach_peer
    write_stream_check
    nc -ll -p 5001 -e /tmp/stream-check </dev/null >/dev/null 2>&1 &
    fio_loop &
    fio_pid=$!
    cmd_open
    echo "FABRIC-RESULT mig ready role=guest ip=$P_ip"
    cmd_loop true
    touch /tmp/fio.stop
    wait "$fio_pid"
    kill "$reader_pid" 2>/dev/null
    wait "$reader_pid" 2>/dev/null
}

# Replies from the pinger since the last report: the range of sequence numbers up to the
# highest answered, how many of them were lost, the longest run of lost ones and every run.
ping_report() {
    line=$(awk -v from="${ping_from:-0}" '
        BEGIN { max = from - 1 }
        match($0, /seq=[0-9]+/) {
            s = substr($0, RSTART + 4, RLENGTH - 4) + 0
            if (s >= from) { got[s] = 1; if (s > max) max = s }
        }
        END {
            n = 0; lost = 0; longest = 0; run = 0; gaps = ""
            for (i = from; i <= max + 1; i++) {
                if (i <= max && !(i in got)) { lost++; run++; continue }
                if (i <= max) n++
                if (run > 0) {
                    gaps = gaps sep (i - run) "-" (i - 1); sep = ","
                    if (run > longest) longest = run
                    run = 0
                }
            }
            printf "from=%d to=%d received=%d lost=%d longest=%d gaps=%s", from, max, n, lost, longest, (gaps == "" ? "none" : gaps)
        }' /tmp/ping)
    echo "FABRIC-RESULT pings $line interval_ms=$ping_ms"
    ping_from=$(($(echo "$line" | sed -n 's/.* to=\([-0-9]*\) .*/\1/p') + 1))
}

stream_start() {
    rm -f /tmp/stream.stop /tmp/stream.sent /tmp/stream.rc
    streams=$((${streams:-0} + 1))
    (
        n=0
        while [ ! -e /tmp/stream.stop ]; do
            cat /www/blob || break
            n=$((n + 1))
            echo "$n" >/tmp/stream.sent
            sleep "${P_pace:-0.2}"
        done | nc "$P_peer" 5001 >/dev/null
        echo "$?" >/tmp/stream.rc
    ) &
    sender=$!
    info "stream send $streams started"
}

stream_stop() {
    touch /tmp/stream.stop
    wait "$sender"
    echo "FABRIC-RESULT stream send $streams copies=$(cat /tmp/stream.sent 2>/dev/null || echo 0) rc=$(cat /tmp/stream.rc)"
}

peer_cmd() {
    case $1 in
    stream) stream_start ;;
    stream-stop) stream_stop ;;
    pings) ping_report ;;
    *) return 1 ;;
    esac
}

# mig-peer: pings fabric.peer every fabric.interval_ms (default 100) and, on command,
# streams copies of /www/blob to its port 5001 (one every fabric.pace seconds at most).
mig_peer() {
    reach_peer
    ping_ms=${P_interval_ms:-100}
    num interval_ms "$ping_ms"
    ping -i "$(awk -v m="$ping_ms" 'BEGIN { printf "%.3f", m / 1000 }')" "$P_peer" >/tmp/ping 2>&1 &
    pinger=$!
    cmd_open
    echo "FABRIC-RESULT mig ready role=peer ip=$P_ip"
    cmd_loop peer_cmd
    kill -INT "$pinger"
    wait "$pinger"
    ping_report
}

case ${P_role:-} in
iperf-serve)
    iperf3 -s -D >/dev/null 2>&1 || die "iperf3 -s failed"
    offloads_line
    echo "FABRIC-RESULT serve ready ip=$P_ip"
    if [ -n "${P_time:-}" ]; then sleep "$P_time"; else P_hold=forever; fi
    netstat_line
    ;;
iperf)
    reach_peer
    offloads_line
    iperf_run send
    iperf_run recv
    netstat_line
    ;;
ping)
    reach_peer
    count=${P_count:-5}
    out=$(ping -c "$count" -W 2 "$P_peer" 2>&1)
    echo "$out" | sed 's/^/FABRIC-INFO ping: /'
    stats=$(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/\1 \2/p')
    tx=${stats% *}; rx=${stats#* }
    [ -n "$tx" ] || { tx=$count; rx=0; }
    if [ "$rx" -eq "$tx" ] && [ "$tx" -gt 0 ]; then st=ok; elif [ "$rx" -gt 0 ]; then st=partial; else st=fail; fi
    echo "FABRIC-RESULT ping $st $rx/$tx peer=$P_peer"
    if [ "${P_wget:-0}" = 1 ]; then
        want=$(cat /etc/blob.md5)
        t0=$(date +%s)
        # (busybox 1.35 static wget segfaults on -T; bound it with timeout instead)
        got=$(timeout 60 wget -q -O - "http://$P_peer:8080/blob" 2>/dev/null | md5sum | cut -d' ' -f1)
        t1=$(date +%s)
        if [ "$got" = "$want" ]; then
            echo "FABRIC-RESULT wget ok 1048576 md5=$got secs=$((t1 - t0))"
        else
            echo "FABRIC-RESULT wget fail md5=$got want=$want secs=$((t1 - t0))"
        fi
    fi
    netstat_line
    ;;
serve)
    httpd -p 8080 -h /www || die "httpd failed"
    echo "FABRIC-RESULT serve ready ip=$P_ip"
    if [ -n "${P_time:-}" ]; then sleep "$P_time"; else P_hold=forever; fi
    netstat_line
    ;;
mig-guest)
    mig_guest
    ;;
mig-peer)
    mig_peer
    ;;
*)
    die "unknown fabric.role=${P_role:-}"
    ;;
esac
finish
INIT
chmod +x "$ROOT/init"

(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6n) >"$WORK/initramfs.img"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
BBVER=$(dpkg-deb -f "$WORK"/busybox-static_*.deb Version)
KPVER=$(dpkg-deb -f "$WORK"/linux-image-*.deb Version)

mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initramfs.img" "$OUT/initramfs.img"
{
    echo "$KPKG $KPVER, busybox-static $BBVER, $FIOVER, $(iperf3 --version | head -n1 | cut -d' ' -f1-2)"
    echo "modules: $MODS"
    echo "binaries:$BINS + $(echo "$LIBS" | wc -l) libraries"
    echo "cache key (script + host binaries' closure): $KEY"
} >"$OUT/manifest"
echo "$KEY" >"$OUT/stamp"
echo "build-guest-image: built $OUT ($(head -n1 "$OUT/manifest"); initramfs $(du -k "$OUT/initramfs.img" | cut -f1) KiB)"
