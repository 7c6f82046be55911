//! What every device driver of the harness does the same way as a vhost-user frontend
//! (the VMM side): connect to the socket, negotiate virtio and protocol features, hand
//! over guest memory and set up each virtqueue; plus the raw descriptors hostile-input
//! tests post and the eventfd helpers the drivers sleep on.
//!
//! Device-specific drivers ([`super::virtio_net::GuestNic`], [`super::virtio_blk::GuestBlk`])
//! build on these and own their rings.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vmm_sys_util::eventfd::EventFd;

use super::guest_memory::GuestRam;
use super::split_ring::{Desc, SplitRing};

/// VIRTIO_F_VERSION_1 as a feature mask.
pub const F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// A raw descriptor for malformed-input tests (`GuestNic::send_raw_chain`,
/// `GuestBlk::post_raw`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest physical address; may point anywhere, including outside guest memory.
    pub addr: u64,
    pub len: u32,
    /// Any combination of VIRTQ_DESC_F_{NEXT, WRITE, INDIRECT}.
    pub flags: u16,
    /// Index into the slice of the chain being posted (`next = 0` loops back to the
    /// first descriptor). Values `>= descs.len()` are written as-is, as absolute table
    /// indices, e.g. `0xffff` for out-of-range.
    pub next: u16,
}

/// A linear chain of `(addr, len, flags)`: NEXT on every descriptor but the last,
/// each to the following one.
pub fn linear_chain(parts: &[(u64, u32, u16)]) -> Vec<RawDesc> {
    parts
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| RawDesc {
            addr,
            len,
            flags: flags
                | if i + 1 < parts.len() {
                    super::split_ring::VIRTQ_DESC_F_NEXT
                } else {
                    0
                },
            next: (i + 1) as u16,
        })
        .collect()
}

/// An indirect table's bytes (`next` as given: indexes into the table itself).
pub fn indirect_table(descs: &[RawDesc]) -> Vec<u8> {
    descs
        .iter()
        .flat_map(|d| {
            Desc {
                addr: d.addr,
                len: d.len,
                flags: d.flags,
                next: d.next,
            }
            .to_bytes()
        })
        .collect()
}

/// Writes the chain `descs` into the descriptor table slots `slots` (one per
/// descriptor, same order), translating each relative `next` into its slot.
pub fn write_raw_chain(ring: &SplitRing, ram: &GuestRam, descs: &[RawDesc], slots: &[u16]) {
    assert_eq!(descs.len(), slots.len(), "one slot per descriptor");
    for (raw, &slot) in descs.iter().zip(slots) {
        let next = slots
            .get(usize::from(raw.next))
            .copied()
            .unwrap_or(raw.next);
        let d = Desc {
            addr: raw.addr,
            len: raw.len,
            flags: raw.flags,
            next,
        };
        ring.write_desc(ram, slot, d);
    }
}

/// A vhost crate error as an `io::Error` naming the request.
pub fn vu<T>(what: &str, r: vhost::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::other(format!("vhost-user {what}: {e}")))
}

/// Connects to a unix socket, retrying while it does not exist yet or refuses.
pub fn connect_with_retry(socket: &Path, patience: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + patience;
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("connecting to {}: {e}", socket.display()),
                ))
            }
        }
    }
}

/// Connects (retrying for up to 5 s while the daemon may still be binding) and wraps
/// the stream in a `Frontend` that may address `max_queues` queues. A backend that
/// never answers a request makes it fail after 10 s instead of hanging the test.
pub fn connect_frontend(socket: &Path, max_queues: u64) -> io::Result<Frontend> {
    let stream = connect_with_retry(socket, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(Frontend::from_stream(stream, max_queues))
}

/// Waits until one of `fds` is readable or `timeout` passes; true if one is readable.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> bool {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Round up so a sub-millisecond timeout still sleeps instead of spinning.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    // EINTR (n < 0) counts as a wake-up: callers re-check the rings anyway.
    n != 0
}

/// Empties a non-blocking eventfd (EAGAIN when already empty is fine).
pub fn drain(fd: &EventFd) {
    let _ = fd.read();
}

/// What [`negotiate`] agreed on.
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    /// The virtio feature bits acked with SET_FEATURES (includes PROTOCOL_FEATURES
    /// when the backend offered it).
    pub features: u64,
    /// The features the backend offered (GET_FEATURES).
    pub offered: u64,
    /// The protocol features acked (empty without PROTOCOL_FEATURES).
    pub protocol: VhostUserProtocolFeatures,
}

/// SET_OWNER, then the feature handshake the way QEMU does it: ack `offered & wanted`
/// (VIRTIO_F_VERSION_1 is required), protocol features `offered & wanted_protocol` if
/// the backend speaks them, then SET_FEATURES. With REPLY_ACK acked, every following
/// request waits for the backend's ack: errors surface at the request that caused them,
/// and rings are set up before they are used.
pub fn negotiate(
    frontend: &mut Frontend,
    wanted: u64,
    wanted_protocol: VhostUserProtocolFeatures,
) -> io::Result<Negotiated> {
    negotiate_with(frontend, wanted, wanted_protocol, |_, _| Ok(()))
}

/// [`negotiate`], calling `before_features` after the protocol features and before
/// SET_FEATURES: where QEMU reads a device's config space when it creates the device
/// (long before the guest driver negotiates).
pub fn negotiate_with(
    frontend: &mut Frontend,
    wanted: u64,
    wanted_protocol: VhostUserProtocolFeatures,
    before_features: impl FnOnce(&mut Frontend, VhostUserProtocolFeatures) -> io::Result<()>,
) -> io::Result<Negotiated> {
    vu("SET_OWNER", frontend.set_owner())?;
    let offered = vu("GET_FEATURES", frontend.get_features())?;
    if offered & F_VERSION_1 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("backend does not offer VIRTIO_F_VERSION_1 (features {offered:#x})"),
        ));
    }
    let mut acked = offered & (wanted | F_VERSION_1);
    let mut protocol = VhostUserProtocolFeatures::empty();
    if offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        acked |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let offered_proto = vu("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
        protocol = offered_proto & wanted_protocol;
        vu(
            "SET_PROTOCOL_FEATURES",
            frontend.set_protocol_features(protocol),
        )?;
    }
    before_features(frontend, protocol)?;
    vu("SET_FEATURES", frontend.set_features(acked))?;
    if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    Ok(Negotiated {
        features: acked,
        offered,
        protocol,
    })
}

/// SET_MEM_TABLE with all of `ram`.
pub fn set_mem_table(frontend: &mut Frontend, ram: &GuestRam) -> io::Result<()> {
    vu(
        "SET_MEM_TABLE",
        frontend.set_mem_table(&ram.vhost_regions()?),
    )?;
    Ok(())
}

/// Sets up queue `q` on `ring`: SET_VRING_NUM, _ADDR, _BASE (`base`), _CALL, _KICK.
/// Does not enable it: see [`enable_queue`].
pub fn setup_queue(
    frontend: &mut Frontend,
    q: usize,
    ring: &SplitRing,
    ram: &GuestRam,
    base: u16,
    kick: &EventFd,
    call: &EventFd,
) -> io::Result<()> {
    vu("SET_VRING_NUM", frontend.set_vring_num(q, ring.size()))?;
    vu(
        "SET_VRING_ADDR",
        frontend.set_vring_addr(q, &ring.config(ram)?),
    )?;
    vu("SET_VRING_BASE", frontend.set_vring_base(q, base))?;
    vu("SET_VRING_CALL", frontend.set_vring_call(q, call))?;
    vu("SET_VRING_KICK", frontend.set_vring_kick(q, kick))?;
    Ok(())
}

/// With VHOST_USER_F_PROTOCOL_FEATURES acked (in `features`) rings start disabled and
/// must be enabled; without it they start on SET_VRING_KICK (vhost-user spec, "Ring
/// states") and this does nothing.
pub fn enable_queue(frontend: &mut Frontend, q: usize, features: u64) -> io::Result<()> {
    if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        vu("SET_VRING_ENABLE", frontend.set_vring_enable(q, true))?;
    }
    Ok(())
}
