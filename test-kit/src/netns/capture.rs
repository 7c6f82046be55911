//! Raw frames from an interface of a namespace, without tcpdump: an AF_PACKET socket
//! opened inside the namespace (through [`super::in_netns`]) and bound to the
//! interface; and parsers from Ethernet down to VXLAN for what it catches.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{in_netns, Netns};

/// Whether `fd` became readable within `timeout` (poll(2), restarted on EINTR).
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
            continue;
        }
        return rc > 0;
    }
}

/// A captured frame, from the Ethernet header on.
#[derive(Clone, Debug)]
pub struct Frame {
    pub data: Vec<u8>,
    /// Sent by the interface (PACKET_OUTGOING), not received.
    pub outgoing: bool,
    /// The frame was longer than the capture buffer and cut to `data.len()`.
    pub truncated: bool,
}

/// Largest frame kept whole (veth hands GSO super-frames of up to 64 KiB).
const SNAPLEN: usize = 65_536 + 128;
/// Socket receive buffer: room for what a test sends before it reads.
const RCVBUF: libc::c_int = 8 << 20;

/// An AF_PACKET socket on one interface of a namespace; frames queue from `open` on,
/// in both directions.
pub struct Capture {
    fd: OwnedFd,
    netns: String,
    ifname: String,
}

fn last_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl Capture {
    /// Starts capturing on `ifname` of `ns`. Panics when the interface does not exist.
    pub fn open(ns: &Netns, ifname: &str) -> Capture {
        let c_if = CString::new(ifname).unwrap();
        let fd = in_netns(ns, || -> Result<OwnedFd, String> {
            // SAFETY: a NUL-terminated name; if_nametoindex resolves it in this
            // thread's namespace.
            let index = unsafe { libc::if_nametoindex(c_if.as_ptr()) };
            if index == 0 {
                return Err(last_err(&format!("no interface {ifname:?}")));
            }
            // Protocol 0: nothing is queued until bind names ETH_P_ALL and the interface.
            // SAFETY: plain socket(2).
            let raw =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if raw < 0 {
                return Err(last_err("socket(AF_PACKET)"));
            }
            // SAFETY: a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: setsockopt with an int option value. Best effort: FORCE as root.
            unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &RCVBUF as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            // SAFETY: an all-zero sockaddr_ll is valid; the fields set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = index as i32;
            // SAFETY: bind(2) with a properly sized sockaddr_ll.
            let rc = unsafe {
                libc::bind(
                    raw,
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(last_err("bind(AF_PACKET)"));
            }
            Ok(fd)
        })
        .unwrap_or_else(|e| panic!("capture on {ifname} in {}: {e}", ns.name()));
        Capture {
            fd,
            netns: ns.name().to_string(),
            ifname: ifname.to_string(),
        }
    }

    /// The next frame, waiting up to `timeout`.
    pub fn next_frame(&self, timeout: Duration) -> Option<Frame> {
        wait_readable(self.fd.as_raw_fd(), timeout).then(|| self.recv())
    }

    fn recv(&self) -> Frame {
        let mut buf = vec![0u8; SNAPLEN];
        // SAFETY: an all-zero sockaddr_ll is valid for recvfrom to fill.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: recvfrom(2) into buffers of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
                &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                &mut len,
            )
        };
        assert!(
            n >= 0,
            "{}",
            last_err(&format!("recvfrom on {} in {}", self.ifname, self.netns))
        );
        let n = n as usize;
        let truncated = n > buf.len();
        buf.truncate(n.min(SNAPLEN));
        Frame {
            data: buf,
            outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
            truncated,
        }
    }

    /// Frames matching `filter` (both directions), until `count` of them or
    /// `timeout`; others are dropped.
    pub fn collect_frames(
        &self,
        filter: impl Fn(&Frame) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Some(f) if filter(&f) => out.push(f),
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    /// [`Capture::collect_frames`] on the bytes alone.
    pub fn collect(
        &self,
        filter: impl Fn(&[u8]) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Vec<Vec<u8>> {
        self.collect_frames(|f| filter(&f.data), count, timeout)
            .into_iter()
            .map(|f| f.data)
            .collect()
    }

    /// Drops every frame queued so far.
    pub fn drain(&self) {
        while self.next_frame(Duration::ZERO).is_some() {}
    }
}

/// Up to `count` frames matching `filter` seen on `ifname` of `ns` within `timeout`,
/// counted from this call: for traffic something else sends meanwhile. To catch
/// traffic the test itself sends next, open a [`Capture`] first.
pub fn capture(
    ns: &Netns,
    ifname: &str,
    filter: impl Fn(&[u8]) -> bool,
    count: usize,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    Capture::open(ns, ifname).collect(filter, count, timeout)
}

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IANA's VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// The I flag of a VXLAN header: the VNI is valid (RFC 7348).
pub const VXLAN_FLAG_I: u8 = 0x08;

/// The EtherType after any 802.1Q/802.1ad tags, and what follows it.
pub fn ethertype(frame: &[u8]) -> Option<(u16, &[u8])> {
    let mut off = 12;
    loop {
        let t = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
        if t == ETHERTYPE_VLAN || t == ETHERTYPE_QINQ {
            off += 4;
            continue;
        }
        return Some((t, frame.get(off + 2..)?));
    }
}

/// An IPv4 or IPv6 packet (IPv6 without extension headers), its payload cut to the
/// length the header gives.
#[derive(Clone, Copy, Debug)]
pub struct IpPacket<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Protocol / next header.
    pub proto: u8,
    pub ttl: u8,
    /// IPv4: not the first fragment (offset non-zero); its payload is no L4 header.
    pub later_fragment: bool,
    pub payload: &'a [u8],
}

/// The IP packet in an Ethernet frame.
pub fn ip(frame: &[u8]) -> Option<IpPacket<'_>> {
    let (t, p) = ethertype(frame)?;
    match t {
        ETHERTYPE_IPV4 => {
            if p.len() < 20 || p[0] >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if ihl < 20 || total < ihl || total > p.len() {
                return None;
            }
            let frag_off = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            Some(IpPacket {
                src: IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
                dst: IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
                proto: p[9],
                ttl: p[8],
                later_fragment: frag_off != 0,
                payload: &p[ihl..total],
            })
        }
        ETHERTYPE_IPV6 => {
            if p.len() < 40 || p[0] >> 4 != 6 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            Some(IpPacket {
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                proto: p[6],
                ttl: p[7],
                later_fragment: false,
                payload: p.get(40..40 + len)?,
            })
        }
        _ => None,
    }
}

/// A UDP datagram in an Ethernet frame.
#[derive(Clone, Copy, Debug)]
pub struct UdpDatagram<'a> {
    pub ip: IpPacket<'a>,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

pub fn udp(frame: &[u8]) -> Option<UdpDatagram<'_>> {
    let ip = ip(frame)?;
    if ip.proto != IPPROTO_UDP || ip.later_fragment || ip.payload.len() < 8 {
        return None;
    }
    let u = ip.payload;
    let len = usize::from(u16::from_be_bytes([u[4], u[5]]));
    Some(UdpDatagram {
        ip,
        src_port: u16::from_be_bytes([u[0], u[1]]),
        dst_port: u16::from_be_bytes([u[2], u[3]]),
        payload: u.get(8..len.max(8))?,
    })
}

impl UdpDatagram<'_> {
    /// The UDP checksum verifies (or is 0, "none", over IPv4). Frames a veth passes
    /// with offloads on carry partial checksums: see [`super::Netns::offloads_off`].
    pub fn checksum_ok(&self) -> bool {
        let seg = self.ip.payload;
        let mut sum: u32 = 0;
        match (self.ip.src, self.ip.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                if seg[6..8] == [0, 0] {
                    return true;
                }
                sum += ones_sum(&s.octets()) + ones_sum(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                sum += ones_sum(&s.octets()) + ones_sum(&d.octets());
            }
            _ => return false,
        }
        sum += u32::from(IPPROTO_UDP) + seg.len() as u32;
        sum += ones_sum(seg);
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }
}

/// Sum of big-endian 16-bit words (an odd last byte padded with zero), unfolded.
fn ones_sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

/// A VXLAN packet: a UDP datagram to the VXLAN port and its 8-byte header.
#[derive(Clone, Copy, Debug)]
pub struct VxlanPacket<'a> {
    pub outer: UdpDatagram<'a>,
    /// The header as sent: flags, 3 reserved, VNI (3), 1 reserved.
    pub header: [u8; 8],
    pub flags: u8,
    pub vni: u32,
    /// The encapsulated Ethernet frame.
    pub inner: &'a [u8],
}

impl VxlanPacket<'_> {
    /// The header is RFC 7348's: only the I flag, reserved bytes zero.
    pub fn header_valid(&self) -> bool {
        let h = &self.header;
        h[0] == VXLAN_FLAG_I && h[1..4] == [0, 0, 0] && h[7] == 0
    }
}

/// The VXLAN packet in `frame` if it is UDP to `port`; the header is decoded, not
/// checked ([`VxlanPacket::header_valid`]).
pub fn vxlan(frame: &[u8], port: u16) -> Option<VxlanPacket<'_>> {
    let outer = udp(frame)?;
    if outer.dst_port != port || outer.payload.len() < 8 {
        return None;
    }
    let header: [u8; 8] = outer.payload[..8].try_into().ok()?;
    Some(VxlanPacket {
        outer,
        header,
        flags: header[0],
        vni: u32::from_be_bytes([0, header[4], header[5], header[6]]),
        inner: &outer.payload[8..],
    })
}

/// An ICMP (v4 or v6) echo request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpEcho {
    pub reply: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u16,
    pub seq: u16,
}

pub fn icmp_echo(frame: &[u8]) -> Option<IcmpEcho> {
    let ip = ip(frame)?;
    let m = ip.payload;
    if ip.later_fragment || m.len() < 8 {
        return None;
    }
    let reply = match (ip.proto, m[0]) {
        (IPPROTO_ICMP, 8) | (IPPROTO_ICMPV6, 128) => false,
        (IPPROTO_ICMP, 0) | (IPPROTO_ICMPV6, 129) => true,
        _ => return None,
    };
    Some(IcmpEcho {
        reply,
        src: ip.src,
        dst: ip.dst,
        id: u16::from_be_bytes([m[4], m[5]]),
        seq: u16::from_be_bytes([m[6], m[7]]),
    })
}
