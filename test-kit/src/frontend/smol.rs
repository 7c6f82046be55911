//! Tiny guests: smoltcp on top of a [`GuestNic`], for ARP, ping and TCP through a switch.
//!
//! ```ignore
//! let mut a = Endpoint::new(GuestNic::connect(&sock_a, NicOptions::default())?, mac(1), [10, 0, 0, 1]);
//! let mut b = Endpoint::new(GuestNic::connect(&sock_b, NicOptions::default())?, mac(2), [10, 0, 0, 2]);
//! let rtt = ping(&mut a, &mut b, Duration::from_secs(5))?;
//! tcp_transfer(&mut a, &mut b, 1 << 20, 42, Duration::from_secs(30))?;
//! ```

use std::io;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address,
};

use super::virtio_net::{wait_any, GuestNic};

/// Ethernet MTU as smoltcp counts it: 1500 bytes of IP plus the 14-byte header.
pub const SMOL_MTU: usize = 1514;

fn smol_now() -> SmolInstant {
    SmolInstant::now()
}

fn timed_out(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, msg)
}

/// A `GuestNic` as a smoltcp Ethernet device.
pub struct SmolNic {
    pub nic: GuestNic,
    tx_dropped: u64,
}

impl SmolNic {
    pub fn new(nic: GuestNic) -> Self {
        SmolNic { nic, tx_dropped: 0 }
    }

    /// Frames smoltcp handed us that did not fit in the TX ring.
    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped
    }
}

pub struct SmolRx(Vec<u8>);

impl RxToken for SmolRx {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

pub struct SmolTx<'a> {
    nic: &'a mut GuestNic,
    dropped: &'a mut u64,
}

impl TxToken for SmolTx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        if !self.nic.send(&frame) {
            *self.dropped += 1;
        }
        r
    }
}

impl Device for SmolNic {
    type RxToken<'a> = SmolRx;
    type TxToken<'a> = SmolTx<'a>;

    fn receive(&mut self, _now: SmolInstant) -> Option<(SmolRx, SmolTx<'_>)> {
        let frame = self.nic.try_recv()?;
        let tx = SmolTx {
            nic: &mut self.nic,
            dropped: &mut self.tx_dropped,
        };
        Some((SmolRx(frame), tx))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<SmolTx<'_>> {
        // A frame takes at most two descriptors; say "busy" rather than drop.
        if self.nic.tx_free_descriptors() < 2 {
            return None;
        }
        Some(SmolTx {
            nic: &mut self.nic,
            dropped: &mut self.tx_dropped,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = SMOL_MTU;
        caps
    }
}

/// A smoltcp interface with one IPv4 address on a `GuestNic`.
pub struct Endpoint {
    pub dev: SmolNic,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub mac: [u8; 6],
    pub ip: Ipv4Address,
}

impl Endpoint {
    /// An interface with address `ip`/24 and hardware address `mac`.
    pub fn new(nic: GuestNic, mac: [u8; 6], ip: [u8; 4]) -> Endpoint {
        let mut dev = SmolNic::new(nic);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        // Distinct per endpoint, fixed per run: TCP initial sequence numbers, ports.
        config.random_seed =
            u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 1]);
        let mut iface = Interface::new(config, &mut dev, smol_now());
        let ip = Ipv4Address::new(ip[0], ip[1], ip[2], ip[3]);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(ip), 24))
                .expect("a fresh interface has room for one address");
        });
        Endpoint {
            dev,
            iface,
            sockets: SocketSet::new(vec![]),
            mac,
            ip,
        }
    }

    /// Runs the stack once (receive, process, transmit). True if socket state changed.
    pub fn poll(&mut self) -> bool {
        let r = self
            .iface
            .poll(smol_now(), &mut self.dev, &mut self.sockets);
        r == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// The underlying NIC.
    pub fn nic(&mut self) -> &mut GuestNic {
        &mut self.dev.nic
    }
}

/// Runs both endpoints until `step` returns `Some`, or fails after `timeout` with
/// `what` in the error. Sleeps on the NICs' RX notifications between rounds.
pub fn drive<T>(
    a: &mut Endpoint,
    b: &mut Endpoint,
    timeout: Duration,
    what: &str,
    mut step: impl FnMut(&mut Endpoint, &mut Endpoint) -> Option<T>,
) -> io::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        a.poll();
        b.poll();
        if let Some(t) = step(a, b) {
            return Ok(t);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(format!("{what}: no result after {timeout:?}")));
        }
        // Sleep until a timer of either stack is due (at most 5 ms: the step closure may
        // have its own clock) or a frame arrives.
        let snow = smol_now();
        let mut delay = Duration::from_millis(5).min(deadline - now);
        for ep in [&mut *a, &mut *b] {
            if let Some(d) = ep.iface.poll_delay(snow, &ep.sockets) {
                delay = delay.min(Duration::from_micros(d.total_micros()));
            }
        }
        if !delay.is_zero() {
            wait_any(&mut [&mut a.dev.nic, &mut b.dev.nic], delay);
        }
    }
}

fn icmp_socket(ident: u16) -> io::Result<icmp::Socket<'static>> {
    let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
    let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
    let mut socket = icmp::Socket::new(rx, tx);
    socket
        .bind(icmp::Endpoint::Ident(ident))
        .map_err(|e| io::Error::other(format!("icmp bind: {e:?}")))?;
    Ok(socket)
}

/// Pings `b` from `a` (ARP first, as needed); returns the round-trip time of the first
/// echo reply. Re-sends every 200 ms until `timeout`.
///
/// smoltcp only answers echo requests by itself with its `auto-icmp-echo-reply` feature,
/// which the workspace does not enable; `b` answers through an ICMP socket bound to the
/// same ident instead (same frames on the wire).
pub fn ping(a: &mut Endpoint, b: &mut Endpoint, timeout: Duration) -> io::Result<Duration> {
    const IDENT: u16 = 0x4242;
    let pinger = a.sockets.add(icmp_socket(IDENT)?);
    let responder = b.sockets.add(icmp_socket(IDENT)?);
    let target = IpAddress::Ipv4(b.ip);
    let caps = a.dev.capabilities();
    let payload = *b"fabric harness ping payload.....";
    let mut seq: u16 = 0;
    let mut first_sent: Option<Instant> = None;
    let mut last_sent: Option<Instant> = None;

    let result = drive(a, b, timeout, "ping", |a, b| {
        // b: answer echo requests.
        let r = b.sockets.get_mut::<icmp::Socket>(responder);
        let mut replies = Vec::new();
        while let Ok((data, from)) = r.recv() {
            let Ok(packet) = Icmpv4Packet::new_checked(data) else {
                continue;
            };
            if let Ok(Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }) = Icmpv4Repr::parse(&packet, &caps.checksum)
            {
                replies.push((from, ident, seq_no, data.to_vec()));
            }
        }
        for (to, ident, seq_no, data) in replies {
            let repr = Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data: &data,
            };
            if let Ok(buf) = r.send(repr.buffer_len(), to) {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps.checksum);
            }
        }

        // a: look for the reply, (re)send the request when due.
        let s = a.sockets.get_mut::<icmp::Socket>(pinger);
        while let Ok((data, from)) = s.recv() {
            let Ok(packet) = Icmpv4Packet::new_checked(data) else {
                continue;
            };
            if let Ok(Icmpv4Repr::EchoReply { ident, data, .. }) =
                Icmpv4Repr::parse(&packet, &caps.checksum)
            {
                if ident == IDENT && from == target && data == payload {
                    return first_sent.map(|t| t.elapsed());
                }
            }
        }
        let due = match last_sent {
            None => true,
            Some(t) => t.elapsed() >= Duration::from_millis(200),
        };
        if due && s.can_send() {
            let repr = Icmpv4Repr::EchoRequest {
                ident: IDENT,
                seq_no: seq,
                data: &payload,
            };
            if let Ok(buf) = s.send(repr.buffer_len(), target) {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps.checksum);
                seq = seq.wrapping_add(1);
                let now = Instant::now();
                first_sent.get_or_insert(now);
                last_sent = Some(now);
            }
        }
        None
    });
    a.sockets.remove(pinger);
    b.sockets.remove(responder);
    result
}

/// Byte `i` of the deterministic test stream for `seed` (splitmix64 of the 8-byte word).
pub fn stream_byte(seed: u64, i: u64) -> u8 {
    let mut z = seed
        .wrapping_add(i / 8)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(0x6a09_e667_f3bc_c908);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> ((i % 8) * 8)) as u8
}

/// Sends `bytes` bytes of the seeded pseudo-random stream from `a` to `b` over TCP
/// (b listens on port 5001) and checks every byte on `b`. Returns the transfer time.
pub fn tcp_transfer(
    a: &mut Endpoint,
    b: &mut Endpoint,
    bytes: usize,
    seed: u64,
    timeout: Duration,
) -> io::Result<Duration> {
    const PORT: u16 = 5001;
    let bytes = bytes as u64;
    let new_socket = || {
        let rx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
        let tx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
        let mut s = tcp::Socket::new(rx, tx);
        // No delayed ACKs: the two stacks take turns in one thread, fast feedback helps.
        s.set_ack_delay(None);
        s
    };
    let mut server = new_socket();
    server
        .listen(PORT)
        .map_err(|e| io::Error::other(format!("tcp listen: {e:?}")))?;
    let server = b.sockets.add(server);
    let mut client = new_socket();
    client
        .connect(a.iface.context(), (IpAddress::Ipv4(b.ip), PORT), 49152)
        .map_err(|e| io::Error::other(format!("tcp connect: {e:?}")))?;
    let client = a.sockets.add(client);

    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut received: u64 = 0;
    let result = drive(a, b, timeout, "tcp transfer", |a, b| {
        let c = a.sockets.get_mut::<tcp::Socket>(client);
        if c.may_send() && sent < bytes {
            let n = c
                .send(|buf| {
                    let n = buf.len().min((bytes - sent) as usize);
                    for (k, byte) in buf[..n].iter_mut().enumerate() {
                        *byte = stream_byte(seed, sent + k as u64);
                    }
                    (n, n)
                })
                .unwrap_or(0);
            sent += n as u64;
        }
        let s = b.sockets.get_mut::<tcp::Socket>(server);
        while s.can_recv() {
            let checked = s.recv(|buf| {
                let bad = buf
                    .iter()
                    .enumerate()
                    .find(|&(k, &byte)| byte != stream_byte(seed, received + k as u64))
                    .map(|(k, &byte)| (received + k as u64, byte));
                (buf.len(), (buf.len(), bad))
            });
            match checked {
                Ok((_, Some((at, got)))) => {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "tcp transfer: byte {at} is {got:#04x}, expected {:#04x}",
                            stream_byte(seed, at)
                        ),
                    )))
                }
                Ok((n, None)) => received += n as u64,
                Err(e) => return Some(Err(io::Error::other(format!("tcp recv: {e:?}")))),
            }
        }
        (received >= bytes).then(|| Ok(start.elapsed()))
    })
    .and_then(|r| r)
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{e} (sent {sent} of {bytes} bytes, verified {received})"),
        )
    });
    a.sockets.get_mut::<tcp::Socket>(client).abort();
    b.sockets.get_mut::<tcp::Socket>(server).abort();
    // Let the RSTs go out so a following transfer starts clean.
    a.poll();
    b.poll();
    a.sockets.remove(client);
    b.sockets.remove(server);
    result
}
