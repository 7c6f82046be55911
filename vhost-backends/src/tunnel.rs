//! VXLAN tunnel ports (RFC 7348): a switch port that carries the VLANs mapped
//! to VNIs across an IPv4 underlay, so one L2 segment spans hosts.
//!
//! The port is a trunk of the mapped VLANs. Frames the switch sends to it
//! arrive tagged; [`TunnelSink`] strips the tag, maps the VLAN to its VNI,
//! and sends the frame to the VTEP that the remote FDB knows for the
//! destination MAC, or to every remote VTEP of the VNI (head-end
//! replication) for broadcast, multicast and unknown unicast. Packets are
//! sent through a non-blocking raw IPv4 socket so the UDP source port can
//! follow a hash of the inner flow (ECMP-friendly, RFC 7348 §5); a copy the
//! socket cannot take at once is dropped and counted, never waited for (the
//! sender is a datapath thread). They are received on a UDP socket bound to
//! the local address and port, never the wildcard, and on one socket bound
//! to each multicast group's address.
//!
//! Received packets are checked in this order, each failure dropped and
//! counted: VXLAN header (I flag, inner frame), VNI mapped to a VLAN, sender
//! a configured VTEP of that VNI (or, for a VNI with a group, a sender in the
//! `senders` subnets; or any unicast sender when learning VTEPs is allowed),
//! inner source not a station seen on a local port within the move hold (a
//! spoofed copy of a local guest's MAC cannot pull its traffic into the
//! tunnel; counted as a refused move too). The inner source MAC is then
//! learned as (VNI, MAC) -> VTEP (a MAC seen from another VTEP is a move;
//! each VTEP learns at most its MAC limit), the VLAN tag is inserted, and the
//! frame is forwarded like any received frame, which also teaches the
//! switch's FDB that the MAC is behind this port (a guest that migrated to
//! this host is found at its first frame; one that left it, once the hold
//! time has passed since its last frame here).

use crate::datapath::{Datapath, DatapathPort, PollQueue, Polled};
use crate::forward::{
    forward, Delivery, DeliveryReport, FrameSink, FrameSource, Ingress, PortTable, BATCH,
};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::VolatileSlice;
use vmm_sys_util::timerfd::TimerFd;
use vswitch::vxlan::{
    fits_underlay, flow_src_port, Ipv4Encap, RemoteFdb, SrcPortRange, TunnelCounters, TunnelDrop,
    Vni, VniMap, VtepSet, VxlanPacket, OVERHEAD,
};
use vswitch::{DropReason, MacAddr, PortId, Switch, VlanId};

/// Ethernet header without and with an 802.1Q tag.
const ETH_HLEN: usize = 14;
const TAG_LEN: usize = 4;
const TPID_8021Q: u16 = 0x8100;
/// Largest UDP datagram read.
const MAX_DATAGRAM: usize = 65_535;
/// How often the remote FDB is aged (its clock counts seconds).
const AGE_EVERY: Duration = Duration::from_secs(1);

/// How a tunnel is set up.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    pub local: Ipv4Addr,
    pub udp_port: u16,
    pub underlay_mtu: u16,
    pub learn_vteps: bool,
    pub vnis: VniMap,
    /// Flood lists, groups and the sender filter (with the `senders` subnets).
    pub vteps: VtepSet,
    /// Remote FDB capacity, per-VTEP MAC limit and aging.
    pub capacity: u32,
    pub vtep_mac_limit: u32,
    pub aging_secs: u32,
    /// Seconds a station seen on a local port cannot move to the tunnel.
    pub local_hold_secs: u32,
    /// Remote MACs configured statically: (VNI, MAC, VTEP).
    pub statics: Vec<(Vni, MacAddr, Ipv4Addr)>,
}

/// What the tunnel shares between its sink and its receiving queue.
pub struct Tunnel {
    pub config: TunnelConfig,
    pub remote_fdb: RemoteFdb,
    pub counters: TunnelCounters,
    /// Raw IPv4 socket (IP_HDRINCL) for sending.
    raw: OwnedFd,
    scratch: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl Tunnel {
    /// Sends one copy of `inner` to `to`; never blocks.
    fn send(
        &self,
        inner: &[u8],
        vni: Vni,
        to: Ipv4Addr,
        packet: &mut Vec<u8>,
    ) -> Result<(), TunnelDrop> {
        let src_port = flow_src_port(inner, SrcPortRange::DEFAULT);
        let mut encap = Ipv4Encap::new(
            vni,
            MacAddr([0; 6]),
            MacAddr([0; 6]),
            self.config.local,
            to,
            src_port,
        );
        encap.dst_port = self.config.udp_port;
        if encap.encapsulate_vec(inner, packet).is_err() {
            return Err(TunnelDrop::TooBig);
        }
        // The kernel routes the IP packet; the outer Ethernet header is its job.
        let ip = &packet[ETH_HLEN..];
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(to).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sending our own buffer to a valid sockaddr_in.
        let n = unsafe {
            libc::sendto(
                self.raw.as_raw_fd(),
                ip.as_ptr().cast(),
                ip.len(),
                libc::MSG_DONTWAIT,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        send_result(n, ip.len())
    }
}

/// What a `sendto` return value means for one copy: a full socket buffer
/// (the kernel's queue or the qdisc behind it) is `TxBusy`, anything else
/// that did not send the whole packet `TxError`.
fn send_result(n: isize, len: usize) -> Result<(), TunnelDrop> {
    if n == len as isize {
        return Ok(());
    }
    if n >= 0 {
        return Err(TunnelDrop::TxError);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN | libc::ENOBUFS) => Err(TunnelDrop::TxBusy),
        _ => Err(TunnelDrop::TxError),
    }
}

/// The receive side of the tunnel port: frames the switch sends across.
pub struct TunnelSink {
    tunnel: Arc<Tunnel>,
    now: Arc<Switch>,
}

impl FrameSink for TunnelSink {
    fn deliver(&self, batch: &[Delivery], frames: &[FrameSource], report: &mut dyn DeliveryReport) {
        let t = &self.tunnel;
        let mut guard = t.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (frame, packet) = &mut *guard;
        let now = self.now.now();
        for d in batch {
            // The egress frame: rewritten head, then the rest of the sender's frame.
            frame.clear();
            frame.extend_from_slice(d.egress.head());
            let head = frame.len();
            frame.resize(
                head + frames[d.frame].len().saturating_sub(d.egress.skip()),
                0,
            );
            let mut at = head;
            frames[d.frame].for_each_slice(d.egress.skip(), |s| {
                let n = s.len().min(frame.len() - at);
                let _ = s.subslice(0, n).map(|s| s.copy_to(&mut frame[at..at + n]));
                at += n;
                true
            });
            let result = self.send_frame(frame, packet, now);
            if let Err(drop) = &result {
                t.counters.add_drop(*drop);
            }
            report.outcome(
                d,
                result.map_err(|drop| match drop {
                    TunnelDrop::TooBig => DropReason::MtuExceeded,
                    _ => DropReason::VlanNotAllowed,
                }),
            );
        }
    }
}

impl TunnelSink {
    /// Strips the tag, picks the VTEP(s), sends.
    fn send_frame(
        &self,
        frame: &mut Vec<u8>,
        packet: &mut Vec<u8>,
        now: u32,
    ) -> Result<(), TunnelDrop> {
        let t = &self.tunnel;
        // The port is a trunk without a native VLAN: every frame is tagged.
        if frame.len() < ETH_HLEN + TAG_LEN
            || u16::from_be_bytes([frame[12], frame[13]]) != TPID_8021Q
        {
            return Err(TunnelDrop::InnerTagged);
        }
        let vid = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
        let vlan = VlanId::new(vid).map_err(|_| TunnelDrop::UnknownVni)?;
        let vni = t.config.vnis.vni(vlan).ok_or(TunnelDrop::UnknownVni)?;
        frame.drain(12..16);
        if !fits_underlay(frame.len(), t.config.underlay_mtu) {
            return Err(TunnelDrop::TooBig);
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        let unicast = dst[0] & 1 == 0;
        let known = if unicast {
            t.remote_fdb.lookup(vni, MacAddr(dst), now)
        } else {
            None
        };
        // Each copy is counted: sent, or dropped under its reason.
        let mut copy = |vtep| match t.send(frame, vni, vtep, packet) {
            Ok(()) => t.counters.add_tx(1, frame.len() as u64),
            Err(drop) => t.counters.add_drop(drop),
        };
        match known {
            Some(vtep) => copy(vtep),
            None => t.config.vteps.flood_targets(vni).for_each(copy),
        }
        Ok(())
    }
}

/// A running tunnel port; [`TunnelHandle::stop`] ends it.
pub struct TunnelHandle {
    pub tunnel: Arc<Tunnel>,
    port: DatapathPort,
}

fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); IPPROTO_RAW implies IP_HDRINCL. Non-blocking:
    // the datapath thread that sends must never wait for buffer space.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("raw socket for VXLAN (needs CAP_NET_RAW): {e}"),
        ));
    }
    // SAFETY: fd was just returned by socket(2) and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt(2) at the IPPROTO_IP level; a refusal is the port's error,
/// named by `what`.
fn set_ip_option<T>(fd: &impl AsRawFd, name: libc::c_int, value: &T, what: &str) -> io::Result<()> {
    // SAFETY: `value` is a live T of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("VXLAN socket {what}: {e}"),
        ));
    }
    Ok(())
}

/// A non-blocking UDP socket bound to `ip:port`.
fn bind_udp(ip: Ipv4Addr, port: u16) -> io::Result<UdpSocket> {
    let udp = UdpSocket::bind(SocketAddrV4::new(ip, port))
        .map_err(|e| io::Error::new(e.kind(), format!("VXLAN socket {ip}:{port}: {e}")))?;
    udp.set_nonblocking(true)?;
    Ok(udp)
}

/// The receive sockets: `local:port` for unicast, and per multicast group
/// `group:port` joined on the interface of `local`. Binding the group's
/// address (never 0.0.0.0) keeps packets to other local addresses out.
fn receive_sockets(config: &TunnelConfig) -> io::Result<Vec<UdpSocket>> {
    let mut groups: Vec<Ipv4Addr> = config
        .vteps
        .vnis()
        .into_iter()
        .filter_map(|v| config.vteps.group(v))
        .collect();
    groups.sort();
    groups.dedup();
    let mut sockets = vec![bind_udp(config.local, config.udp_port)?];
    for g in groups {
        let udp = bind_udp(g, config.udp_port)?;
        udp.join_multicast_v4(&g, &config.local)
            .map_err(|e| io::Error::new(e.kind(), format!("joining {g}: {e}")))?;
        // Only the group bound here, not every group some socket joined.
        set_ip_option(
            &udp,
            libc::IP_MULTICAST_ALL,
            &0 as &libc::c_int,
            "IP_MULTICAST_ALL",
        )?;
        sockets.push(udp);
    }
    Ok(sockets)
}

/// Serves switch port `id` as a VXLAN tunnel; a thread of `datapath`
/// receives.
pub fn spawn(
    config: TunnelConfig,
    id: PortId,
    switch: Arc<Switch>,
    table: Arc<PortTable>,
    datapath: Arc<Datapath>,
) -> io::Result<TunnelHandle> {
    let sockets = receive_sockets(&config)?;
    let remote_fdb = RemoteFdb::new(config.capacity, config.vtep_mac_limit, config.aging_secs);
    for (vni, mac, vtep) in &config.statics {
        remote_fdb.add_static(*vni, *mac, *vtep).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("static {mac} -> {vtep}: {e:?}"),
            )
        })?;
    }
    let raw = raw_socket()?;
    if sockets.len() > 1 {
        // Multicast leaves through the interface of `local`, and not back to us.
        let ifaddr = libc::in_addr {
            s_addr: u32::from(config.local).to_be(),
        };
        set_ip_option(&raw, libc::IP_MULTICAST_IF, &ifaddr, "IP_MULTICAST_IF")?;
        let no_loop: libc::c_int = 0;
        set_ip_option(&raw, libc::IP_MULTICAST_LOOP, &no_loop, "IP_MULTICAST_LOOP")?;
    }
    let tunnel = Arc::new(Tunnel {
        remote_fdb,
        counters: TunnelCounters::default(),
        raw,
        scratch: Mutex::new((
            Vec::with_capacity(MAX_DATAGRAM),
            Vec::with_capacity(MAX_DATAGRAM + OVERHEAD),
        )),
        config,
    });
    switch
        .fdb()
        .set_move_hold(id, tunnel.config.local_hold_secs);
    let timer = aging_timer()?;
    let mut fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    fds.push(timer.as_raw_fd());
    let queue = Arc::new(TunnelQueue {
        tunnel: tunnel.clone(),
        id,
        switch: switch.clone(),
        table: table.clone(),
        fds,
        receiver: Mutex::new(Some(Receiver {
            sockets,
            timer,
            buf: vec![0u8; MAX_DATAGRAM],
            frame: vec![0u8; MAX_DATAGRAM + TAG_LEN],
            deliveries: Vec::new(),
            last_age: switch.now(),
        })),
    });
    let sink = Box::new(TunnelSink {
        tunnel: tunnel.clone(),
        now: switch.clone(),
    });
    let port = DatapathPort::start(datapath, vec![queue], sink, table, switch, id)?;
    Ok(TunnelHandle { tunnel, port })
}

/// A non-blocking timer that expires every [`AGE_EVERY`]: it wakes the
/// datapath to age the remote FDB of a tunnel that receives nothing.
fn aging_timer() -> io::Result<TimerFd> {
    let mut timer = TimerFd::new()?;
    timer.reset(AGE_EVERY, Some(AGE_EVERY))?;
    let fd = timer.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let r = unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

/// The receiving side of a tunnel port, as a datapath thread polls it: its
/// sockets, and a timer that ages the remote FDB while nothing arrives.
struct TunnelQueue {
    tunnel: Arc<Tunnel>,
    id: PortId,
    switch: Arc<Switch>,
    table: Arc<PortTable>,
    /// The sockets' and the timer's descriptors, open while `receiver` holds them.
    fds: Vec<RawFd>,
    /// `None` once the port is stopped (sockets closed).
    receiver: Mutex<Option<Receiver>>,
}

struct Receiver {
    sockets: Vec<UdpSocket>,
    timer: TimerFd,
    buf: Vec<u8>,
    frame: Vec<u8>,
    deliveries: Vec<Delivery>,
    last_age: u32,
}

impl PollQueue for TunnelQueue {
    /// Ages the remote FDB once a second; receives, checks, learns and
    /// forwards up to a batch of datagrams.
    fn poll(&self) -> Polled {
        let mut guard = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = guard.as_mut() else {
            return Polled::Gone;
        };
        let t = &self.tunnel;
        // Read whenever we are here: an expiration left unread would keep the
        // queue readable. Non-blocking: nothing to read is no error.
        let _ = r.timer.wait();
        let now = self.switch.now();
        if now != r.last_age {
            t.remote_fdb.age(now);
            r.last_age = now;
        }
        let ingress = Ingress {
            id: self.id,
            switch: &self.switch,
            table: &self.table,
            queue: 0,
        };
        let mut taken = 0;
        for socket in &r.sockets {
            // WouldBlock (or any error) ends this socket's turn.
            while taken < BATCH {
                let Ok((n, from)) = socket.recv_from(&mut r.buf) else {
                    break;
                };
                taken += 1;
                let std::net::SocketAddr::V4(from) = from else {
                    continue;
                };
                let datagram = &r.buf[..n];
                let Some(len) =
                    decapsulate(t, datagram, *from.ip(), self.id, &self.switch, &mut r.frame)
                else {
                    continue;
                };
                let seg = [VolatileSlice::from(&mut r.frame[..len])];
                let frames = [FrameSource::new(&seg, 0)];
                forward(&ingress, &frames, 0, &mut r.deliveries);
            }
        }
        Polled::Frames(taken)
    }

    fn fds(&self) -> Vec<RawFd> {
        self.fds.clone()
    }

    fn close(&self) {
        // Under the lock: a batch in flight ends first.
        drop(
            self.receiver
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }
}

/// Checks one received packet from `vtep` and writes its tagged inner frame
/// to `frame`; returns the frame's length, or counts the drop.
fn decapsulate(
    t: &Tunnel,
    datagram: &[u8],
    vtep: Ipv4Addr,
    id: PortId,
    switch: &Switch,
    frame: &mut [u8],
) -> Option<usize> {
    let now = switch.now();
    let drop = |reason| {
        t.counters.add_drop(reason);
        None
    };
    let packet = match VxlanPacket::parse(datagram) {
        Ok(p) => p,
        Err(e) => return drop(TunnelDrop::from(e)),
    };
    let vni = packet.vni();
    let Some(vlan) = t.config.vnis.vlan(vni) else {
        return drop(TunnelDrop::UnknownVni);
    };
    // Our own packets (multicast loopback) never count as a remote.
    if vtep == t.config.local || !t.config.vteps.accepts_on(vni, vtep) {
        return drop(TunnelDrop::UnknownVtep);
    }
    let inner = packet.inner();
    let mut src = [0u8; 6];
    src.copy_from_slice(&inner[6..12]);
    // A station active on a local port is not taken over from the underlay.
    if switch.fdb().refuse_held_move(vlan, MacAddr(src), id, now) {
        return drop(TunnelDrop::HeldStation);
    }
    t.remote_fdb.learn(vni, MacAddr(src), vtep, now);
    t.counters.add_rx(1, inner.len() as u64);
    // Insert the VLAN tag: the port is a trunk of the mapped VLANs.
    let len = inner.len() + TAG_LEN;
    frame[..12].copy_from_slice(&inner[..12]);
    frame[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
    frame[14..16].copy_from_slice(&vlan.get().to_be_bytes());
    frame[16..len].copy_from_slice(&inner[12..]);
    Some(len)
}

impl TunnelHandle {
    /// Stops receiving, withdraws the sink, takes the link down.
    pub fn stop(self) {
        self.port.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use vswitch::VlanMode;

    /// Only a guard against hanging: aging is due within 2 s.
    const HANG: Duration = Duration::from_secs(10);

    /// A tunnel has no thread of its own: a datapath thread receives, and
    /// its timer ages the remote FDB of a tunnel that receives nothing more.
    #[test]
    fn an_idle_tunnel_is_aged_by_its_timer_on_the_datapath() {
        let switch = Arc::new(Switch::new("br0", 100, 100, 300));
        let table = Arc::new(PortTable::default());
        let datapath = Arc::new(Datapath::new(1).unwrap());
        // What the switch makes of the frame is not this test's business.
        let id = switch
            .add_port(
                "vx",
                VlanMode::Access(vswitch::VlanId::new(10).unwrap()),
                1500,
            )
            .unwrap();
        // A free port of the loopback address: the kernel picks it.
        let port = {
            let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            probe.local_addr().unwrap().port()
        };
        let vni = Vni::new(5000).unwrap();
        let mut vnis = VniMap::new();
        vnis.insert(vswitch::VlanId::new(10).unwrap(), vni).unwrap();
        let config = TunnelConfig {
            local: Ipv4Addr::LOCALHOST,
            udp_port: port,
            underlay_mtu: 1500,
            learn_vteps: true,
            vnis,
            vteps: VtepSet::new(true),
            capacity: 100,
            vtep_mac_limit: 100,
            aging_secs: 1,
            local_hold_secs: 0,
            statics: Vec::new(),
        };
        let handle = spawn(config, id, switch.clone(), table, datapath.clone()).unwrap();
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .collect();
        assert!(
            !names.iter().any(|n| n.trim_end() == "vxlan"),
            "a thread per tunnel: {names:?}"
        );

        // One packet from another loopback address (not our own), VNI 5000,
        // an inner broadcast from 02:00:00:00:00:09.
        let mut packet = vec![0x08, 0, 0, 0, 0, 0x13, 0x88, 0];
        packet.extend_from_slice(&[0xff; 6]);
        packet.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]);
        packet.resize(8 + 60, 0xab);
        let sender = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
        sender
            .send_to(&packet, (Ipv4Addr::LOCALHOST, port))
            .unwrap();
        let t = handle.tunnel.clone();
        let until = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = Instant::now() + HANG;
            while !cond() {
                assert!(Instant::now() < deadline, "never happened: {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        until("the packet is received", &|| {
            t.counters.snapshot().rx_packets == 1
        });
        assert_eq!(t.remote_fdb.stats().learned, 1);
        // Nothing more arrives: only the timer can wake the thread to age.
        until("the entry ages out", &|| t.remote_fdb.stats().entries == 0);
        assert_eq!(t.remote_fdb.stats().aged, 1);
        handle.stop();
        datapath.shutdown();
        // Stopped, the tunnel's sockets are closed: the address is free.
        UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("the tunnel's socket is closed");
    }

    #[test]
    fn a_refused_socket_option_is_an_error_naming_it() {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        // No interface has this address: the kernel refuses it.
        let nowhere = libc::in_addr {
            s_addr: u32::from(Ipv4Addr::new(192, 0, 2, 254)).to_be(),
        };
        let e =
            set_ip_option(&udp, libc::IP_MULTICAST_IF, &nowhere, "IP_MULTICAST_IF").unwrap_err();
        assert!(
            e.to_string().starts_with("VXLAN socket IP_MULTICAST_IF: "),
            "{e}"
        );
        let lo = libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        };
        set_ip_option(&udp, libc::IP_MULTICAST_IF, &lo, "IP_MULTICAST_IF").unwrap();
    }
}
