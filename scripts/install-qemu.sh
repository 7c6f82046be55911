#!/bin/sh
# Install what the real-guest tests need (run as root; idempotent, fast when present):
#   - qemu-system-x86 and qemu-utils (qemu-storage-daemon, the reference vhost-user-blk
#     backend of tests/blk/qemu_blk.rs) from bookworm-backports, in one transaction so their
#     versions match (backports' qemu-utils 10.0 conflicts with bookworm's qemu-system 7.2);
#   - the tools scripts/build-guest-image.sh uses: cpio, gzip, and fio, iperf3 and ethtool
#     (the guest image carries the host's binaries and their libraries); the guest's busybox
#     and kernel are downloaded as .debs, not taken from the host.
#
# The backports source uses the same mirror URI as the `debian` entry of
# /etc/apt/sources.list.d/debian.sources; it is written to a temporary sources list that
# is passed to apt only for this run, so the system's apt configuration is left unchanged.
set -eu

SOURCES=/etc/apt/sources.list.d/debian.sources
# Packages from bookworm whose command has the same name.
NEED_TOOLS="cpio gzip fio iperf3 ethtool"
QEMU_PKGS="qemu-system-x86 qemu-utils"

pkg_version() {
    dpkg-query -W -f='${db:Status-Status} ${Version}' "$1" 2>/dev/null |
        awk '$1 == "installed" { print $2 }'
}

have_all() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    qemu-system-x86_64 --version >/dev/null 2>&1 || return 1
    command -v qemu-storage-daemon >/dev/null 2>&1 || return 1
    qemu-storage-daemon --version >/dev/null 2>&1 || return 1
    # qemu-storage-daemon and qemu-system-x86_64 from the same QEMU build.
    v=$(pkg_version qemu-system-x86)
    [ -n "$v" ] && [ "$v" = "$(pkg_version qemu-utils)" ] || return 1
    for t in $NEED_TOOLS; do command -v "$t" >/dev/null 2>&1 || return 1; done
    command -v dpkg-deb >/dev/null 2>&1 || return 1
    return 0
}

if have_all; then
    echo "install-qemu: already installed: $(qemu-system-x86_64 --version | head -n1)," \
        "qemu-storage-daemon $(pkg_version qemu-utils)"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "install-qemu: must run as root" >&2
    exit 1
fi

# URI of the stanza whose Suites include plain "bookworm" (the `debian` entry, not
# -security). deb822: stanzas separated by blank lines.
uri=$(awk '
    BEGIN { RS=""; FS="\n" }
    {
        u=""; main=0
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, a, /[ \t]+/); u=a[1] }
            if ($i ~ /^Suites:/) { n=split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == "bookworm") main=1 }
        }
        if (main && u != "") { print u; exit }
    }' "$SOURCES")
if [ -z "$uri" ]; then
    echo "install-qemu: no bookworm URI found in $SOURCES" >&2
    exit 1
fi
keyring=$(awk '/^Signed-By:/ { print $2; exit }' "$SOURCES")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
list="$tmp/backports.list"
{
    if [ -n "$keyring" ]; then
        echo "deb [signed-by=$keyring] $uri bookworm main"
        echo "deb [signed-by=$keyring] $uri bookworm-backports main"
    else
        echo "deb $uri bookworm main"
        echo "deb $uri bookworm-backports main"
    fi
} >"$list"
echo "install-qemu: using $uri (bookworm + bookworm-backports) via temporary list $list"

APT="apt-get -o Dir::Etc::sourcelist=$list -o Dir::Etc::sourceparts=-"
export DEBIAN_FRONTEND=noninteractive
$APT update -q
# shellcheck disable=SC2086
$APT install -y -q --no-install-recommends -t bookworm-backports $QEMU_PKGS
# shellcheck disable=SC2086
$APT install -y -q --no-install-recommends $NEED_TOOLS

# The temporary list is gone after this script; refresh apt's package lists from the
# system's own sources so later apt-get runs do not see stale backports indexes.
apt-get update -q >/dev/null 2>&1 || true

qemu-system-x86_64 --version | head -n1
qemu-storage-daemon --version | head -n1
if [ "$(pkg_version qemu-system-x86)" != "$(pkg_version qemu-utils)" ]; then
    echo "install-qemu: qemu-system-x86 $(pkg_version qemu-system-x86) and qemu-utils" \
        "$(pkg_version qemu-utils) differ" >&2
    exit 1
fi
echo "install-qemu: done"
