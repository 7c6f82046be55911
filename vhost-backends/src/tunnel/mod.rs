//! VXLAN tunnel ports (RFC 7348): a switch port that carries the VLANs mapped
//! to VNIs across an IPv4 underlay, so one L2 segment spans hosts.
//!
//! The port is a trunk of the mapped VLANs. Frames the switch sends to it
//! arrive tagged; [`TunnelSink`] strips the tag, maps the VLAN to its VNI,
//! and sends the frame to the VTEP that the remote FDB knows for the
//! destination MAC, or to every remote VTEP of the VNI (head-end
//! replication) for broadcast, multicast and unknown unicast. Packets are
//! sent through a non-blocking raw IPv4 socket so the UDP source port can
//! follow a hash of the inner flow (ECMP-friendly, RFC 7348 §5), the copies
//! of a delivered batch in one `sendmmsg` (`send.rs`, `mmsg.rs`); a copy the
//! socket cannot take at once is dropped and counted, never waited for (the
//! sender is a datapath thread). They are received on a UDP socket bound to
//! the local address and port, never the wildcard, and on one socket bound
//! to each multicast group's address, many datagrams per `recvmmsg`, with
//! `UDP_GRO` so one message may carry several (`receive.rs`).
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

mod coalesce;
mod decap;
mod mmsg;
mod receive;
mod send;
#[cfg(test)]
mod tests;

use crate::datapath::{Datapath, DatapathPort};
use crate::forward::PortTable;
use receive::{Receiver, TunnelQueue};
use send::{SendScratch, TunnelSink};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::timerfd::TimerFd;
use vswitch::vxlan::{RemoteFdb, TunnelCounters, Vni, VniMap, VtepSet};
use vswitch::{MacAddr, PortId, Switch};

/// Ethernet header without and with an 802.1Q tag.
const ETH_HLEN: usize = 14;
const TAG_LEN: usize = 4;
const TPID_8021Q: u16 = 0x8100;
/// Largest frame the switch hands the tunnel: a GSO frame's most payload
/// behind its longest head (tags included).
const MAX_FRAME: usize = fabric_offload::meta::MAX_GSO_PAYLOAD + fabric_offload::MAX_HEAD_LEN;
/// Receive buffer of each tunnel socket, see `bind_udp`.
const RECV_BUFFER: usize = 8 << 20;
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
    /// Seconds a station seen on a local port cannot move to the tunnel
    /// (unless that port's guest is stopped, `vswitch::Fdb::set_peer_stopped`).
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
    scratch: Mutex<SendScratch>,
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
    set_option(fd, libc::IPPROTO_IP, name, value, what)
}

/// setsockopt(2) at `level`; a refusal is the port's error, named by `what`.
fn set_option<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `value` is a live T of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
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

/// A non-blocking UDP socket bound to `ip:port`, with `UDP_GRO` on: the
/// kernel may hand over consecutive datagrams of one flow as one read
/// (udp(7)), which the receiver splits again. Its receive buffer is
/// [`RECV_BUFFER`]: the kernel's vxlan device decapsulates in softirq, we
/// read from a thread that also forwards, and every datagram that finds the
/// default buffer (208 KiB, about 140 full-size packets) full is lost to the
/// inner TCP flow (measured: a fifth of the packets of an iperf3 run).
fn bind_udp(ip: Ipv4Addr, port: u16) -> io::Result<UdpSocket> {
    let udp = UdpSocket::bind(SocketAddrV4::new(ip, port))
        .map_err(|e| io::Error::new(e.kind(), format!("VXLAN socket {ip}:{port}: {e}")))?;
    udp.set_nonblocking(true)?;
    let on: libc::c_int = 1;
    set_option(&udp, libc::SOL_UDP, libc::UDP_GRO, &on, "UDP_GRO")?;
    // SO_RCVBUFFORCE passes net.core.rmem_max with CAP_NET_ADMIN; without
    // it SO_RCVBUF gives what the sysctl allows.
    let size = RECV_BUFFER as libc::c_int;
    set_option(
        &udp,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &size,
        "SO_RCVBUFFORCE",
    )
    .or_else(|_| set_option(&udp, libc::SOL_SOCKET, libc::SO_RCVBUF, &size, "SO_RCVBUF"))?;
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
    let (queue, sink) = open(config, id, switch.clone(), table.clone())?;
    let tunnel = queue.tunnel.clone();
    let port = DatapathPort::start(datapath, vec![queue], sink, table, switch, id)?;
    Ok(TunnelHandle { tunnel, port })
}

/// Opens the tunnel's sockets and builds its two sides: the queue a
/// datapath thread polls and the sink the switch delivers to.
fn open(
    config: TunnelConfig,
    id: PortId,
    switch: Arc<Switch>,
    table: Arc<PortTable>,
) -> io::Result<(Arc<TunnelQueue>, Box<TunnelSink>)> {
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
        scratch: Mutex::new(SendScratch::new(config.underlay_mtu)),
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
        table,
        fds,
        receiver: Mutex::new(Some(Receiver::new(sockets, timer, switch.now()))),
    });
    let sink = Box::new(TunnelSink {
        tunnel,
        now: switch,
    });
    Ok((queue, sink))
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

impl TunnelHandle {
    /// Stops receiving, withdraws the sink, takes the link down.
    pub fn stop(self) {
        self.port.stop();
    }
}
