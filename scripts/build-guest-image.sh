#!/bin/sh
# build-guest-image.sh OUTDIR
#
# Builds a tiny test guest for QEMU (TCG) from Debian packages, in seconds:
#   OUTDIR/vmlinuz         kernel of the versioned linux-image-*-cloud-amd64 package
#   OUTDIR/initramfs.img   busybox-static + the virtio-net modules + /init below
#   OUTDIR/manifest        what went in; OUTDIR/stamp: sha256 of this script (cache key)
# Re-running with an unchanged script is a no-op. Needs: apt-get (package lists present),
# dpkg-deb, cpio, gzip, sha256sum (scripts/install-qemu.sh installs them). No root needed
# except that apt-get download as root warns about its sandbox user (handled below).
#
# The guest's /init takes its parameters from the kernel command line:
#   fabric.ip=10.0.0.1/24   address for eth0 (required)
#   fabric.role=ping|serve  ping: ping fabric.peer; serve: answer pings, serve HTTP on
#                           :8080 (/blob, 1 MiB) for fabric.time seconds (default: forever)
#   fabric.peer=10.0.0.2    ping/wget target
#   fabric.count=5          measured pings, after a warm-up of up to fabric.wait seconds
#   fabric.wait=60          (default) single pings until the first reply arrives (ARP warm-up)
#   fabric.wget=1           (ping role) also fetch http://PEER:8080/blob and check its md5
#   fabric.hold=N|forever   stay up (answering pings) N seconds after the test (default 0)
# Results on the console, one line each:
#   FABRIC-RESULT ping ok 5/5 peer=10.0.0.2       (ok: all replied; partial; fail: none)
#   FABRIC-RESULT wget ok 1048576 md5=...         (or: wget fail ...)
#   FABRIC-RESULT serve ready                     (serve role is up)
#   FABRIC-INFO ...                               progress and diagnostics
#   FABRIC-ERROR ...                              the guest could not run the test
# then the guest powers off (run QEMU with -no-reboot so it exits).
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
SELF=$(readlink -f "$0")
KEY=$(sha256sum "$SELF" | cut -d' ' -f1)

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
export PATH=/bin:/sbin
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
info "kernel $(uname -r) role=${P_role:-?} ip=${P_ip:-?} peer=${P_peer:-}"

for m in $(cat /modules/order); do
    insmod /modules/$m.ko || die "insmod $m failed"
done
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
dev=$(basename "$(readlink /sys/class/net/eth0/device)")
info "eth0 up mac=$(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu) features=$(cat /sys/bus/virtio/devices/$dev/features 2>/dev/null)"

netstat_line() { info "eth0 $(awk '/eth0:/ { sub(/.*eth0:/, ""); print "rx_bytes=" $1 " rx_packets=" $2 " rx_dropped=" $4 " tx_bytes=" $9 " tx_packets=" $10 " tx_dropped=" $12 }' /proc/net/dev)"; }

case ${P_role:-} in
ping)
    [ -n "${P_peer:-}" ] || die "fabric.peer missing"
    count=${P_count:-5}
    wait=${P_wait:-60}
    start=$(date +%s)
    reach=no
    while :; do
        if ping -c 1 -W 1 "$P_peer" >/dev/null 2>&1; then reach=yes; break; fi
        [ $(($(date +%s) - start)) -ge "$wait" ] && break
    done
    info "warm-up: peer reachable=$reach after $(($(date +%s) - start))s"
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
*)
    die "unknown fabric.role=${P_role:-}"
    ;;
esac
finish
INIT
chmod +x "$ROOT/init"

(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -9n) >"$WORK/initramfs.img"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
BBVER=$(dpkg-deb -f "$WORK"/busybox-static_*.deb Version)
KPVER=$(dpkg-deb -f "$WORK"/linux-image-*.deb Version)

mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initramfs.img" "$OUT/initramfs.img"
{
    echo "$KPKG $KPVER, busybox-static $BBVER"
    echo "modules: $MODS"
    echo "script sha256: $KEY"
} >"$OUT/manifest"
echo "$KEY" >"$OUT/stamp"
echo "build-guest-image: built $OUT ($(head -n1 "$OUT/manifest"); initramfs $(du -k "$OUT/initramfs.img" | cut -f1) KiB)"
