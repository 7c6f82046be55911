//! A vhost-user message relay between a frontend (QEMU, DPDK) and the `vhost`
//! crate's request handler, so we can accept the message orders real frontends
//! send.
//!
//! Why: QEMU (7.2 and later) enables the first RX/TX ring with
//! VHOST_USER_SET_VRING_ENABLE right after SET_PROTOCOL_FEATURES, *before*
//! VHOST_USER_SET_FEATURES, because for QEMU "protocol features negotiated"
//! means the backend offered VHOST_USER_F_PROTOCOL_FEATURES. The `vhost` crate
//! (0.18) requires the bit to be *acked* through SET_FEATURES first and drops
//! the connection otherwise, so no QEMU guest could attach. The relay passes
//! every message through unchanged, except that before such an early
//! SET_VRING_ENABLE it inserts a SET_FEATURES carrying only that bit (no reply
//! requested). The frontend's own SET_FEATURES later replaces it.
//!
//! The relay also answers, through the device's [`RelayHooks`], the messages
//! `vhost-user-backend` 0.24 refuses or cannot reach the device with:
//! GET_INFLIGHT_FD and SET_INFLIGHT_FD (a block device needs them to survive
//! its own restart, [`crate::blk::inflight`]), SET_LOG_BASE (the dirty log of
//! a live migration: the crate's own log support marks pages only through
//! `vm-memory` accessors our datapath does not use), SEND_RARP (a migrated
//! guest's announcement, unknown to the crate) and SET_BACKEND_REQ_FD (the
//! backend's own request channel, for CONFIG_CHANGE_MSG, which the crate's
//! `Backend` cannot send).
//!
//! Only control messages cross the relay; the datapath (shared memory, kick and
//! call eventfds) never does.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// `VhostUserMsgHeader`: request (u32), flags (u32), payload size (u32), all LE.
const HEADER_LEN: usize = 12;
/// Largest payload we relay. The biggest real messages (memory tables, config
/// space) are a few hundred bytes.
const MAX_PAYLOAD: usize = 64 * 1024;
/// The vhost-user protocol attaches at most 32 fds to a message.
const MAX_FDS: usize = 32;

const SET_FEATURES: u32 = 2;
const SET_LOG_BASE: u32 = 6;
const SET_VRING_ENABLE: u32 = 18;
const SEND_RARP: u32 = 19;
const SET_BACKEND_REQ_FD: u32 = 21;
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
/// Header flags: protocol version 1, no reply wanted.
const FLAGS_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VhostUserInflight`: mmap_size u64, mmap_offset u64, num_queues u16,
/// queue_size u16, padded to 24 bytes.
const INFLIGHT_LEN: usize = 24;

/// What the frontend asked or sent (`VhostUserInflight`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InflightGeometry {
    pub mmap_size: u64,
    pub mmap_offset: u64,
    pub num_queues: u16,
    pub queue_size: u16,
}

/// `VhostUserLog`: the dirty log's mmap_size u64 and mmap_offset u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogGeometry {
    pub mmap_size: u64,
    pub mmap_offset: u64,
}

/// `VhostUserLog` is 16 bytes.
const LOG_LEN: usize = 16;

/// The device side of the messages the relay answers itself (see the module
/// docs). A device implements what it offers; the defaults refuse, which ends
/// the session for messages whose sender waits for an answer it cannot do
/// without (the same as the `vhost` crate does with a message it rejects).
pub trait RelayHooks: Send + Sync {
    /// Whether GET/SET_INFLIGHT_FD are answered here (the device offers
    /// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD); otherwise they pass to the
    /// handler, which refuses them.
    fn tracks_inflight(&self) -> bool {
        false
    }

    /// GET_INFLIGHT_FD: a new, zeroed region for the geometry asked.
    fn get_inflight_fd(
        &self,
        _asked: &InflightGeometry,
    ) -> io::Result<(OwnedFd, InflightGeometry)> {
        Err(unsupported("GET_INFLIGHT_FD"))
    }

    /// SET_INFLIGHT_FD: the region to track in from now on.
    fn set_inflight_fd(&self, _region: &InflightGeometry, _fd: OwnedFd) -> io::Result<()> {
        Err(unsupported("SET_INFLIGHT_FD"))
    }

    /// SET_LOG_BASE (VHOST_USER_PROTOCOL_F_LOG_SHMFD): the dirty log to mark
    /// from now on, replacing any earlier one.
    fn set_log_base(&self, _log: &LogGeometry, _fd: OwnedFd) -> io::Result<()> {
        Err(unsupported("SET_LOG_BASE"))
    }

    /// SEND_RARP (VHOST_USER_PROTOCOL_F_RARP): announce `mac` from this port.
    fn send_rarp(&self, _mac: [u8; 6]) -> io::Result<()> {
        Err(unsupported("SEND_RARP"))
    }

    /// SET_BACKEND_REQ_FD (VHOST_USER_PROTOCOL_F_BACKEND_REQ): the channel on
    /// which the backend sends its own requests to the frontend.
    fn set_backend_req_channel(&self, _channel: UnixStream) -> io::Result<()> {
        Err(unsupported("SET_BACKEND_REQ_FD"))
    }
}

/// A device that answers nothing itself.
pub struct NoHooks;

impl RelayHooks for NoHooks {}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("{what} not offered"))
}

fn decode_inflight(payload: &[u8]) -> io::Result<InflightGeometry> {
    if payload.len() < 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("inflight message of {} bytes", payload.len()),
        ));
    }
    let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
    let u16_at = |i: usize| u16::from_le_bytes(payload[i..i + 2].try_into().expect("2 bytes"));
    Ok(InflightGeometry {
        mmap_size: u64_at(0),
        mmap_offset: u64_at(8),
        num_queues: u16_at(16),
        queue_size: u16_at(18),
    })
}

fn encode_inflight(g: &InflightGeometry) -> [u8; INFLIGHT_LEN] {
    let mut b = [0u8; INFLIGHT_LEN];
    b[0..8].copy_from_slice(&g.mmap_size.to_le_bytes());
    b[8..16].copy_from_slice(&g.mmap_offset.to_le_bytes());
    b[16..18].copy_from_slice(&g.num_queues.to_le_bytes());
    b[18..20].copy_from_slice(&g.queue_size.to_le_bytes());
    b
}

struct Message {
    header: [u8; HEADER_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes(self.header[0..4].try_into().expect("4 bytes"))
    }

    fn flags(&self) -> u32 {
        u32::from_le_bytes(self.header[4..8].try_into().expect("4 bytes"))
    }

    /// The reply to `self` carrying `payload` (and `fds`).
    fn reply(&self, payload: &[u8], fds: Vec<OwnedFd>) -> Message {
        let mut m = Message::new(self.request(), payload);
        m.header[4..8].copy_from_slice(&(FLAGS_VERSION_1 | FLAG_REPLY).to_le_bytes());
        m.fds = fds;
        m
    }

    fn new(request: u32, payload: &[u8]) -> Message {
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&request.to_le_bytes());
        header[4..8].copy_from_slice(&FLAGS_VERSION_1.to_le_bytes());
        header[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        Message {
            header,
            payload: payload.to_vec(),
            fds: Vec::new(),
        }
    }
}

/// Reads one message; `None` at a clean end of stream.
fn read_message(mut sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_LEN];
    let mut raw_fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: HEADER_LEN,
    }];
    // SAFETY: the iovec points at `header`, which we own and may overwrite.
    let (n, n_fds) =
        unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) }.map_err(io::Error::from)?;
    // SAFETY: recvmsg just gave us these descriptors; nothing else owns them.
    let fds: Vec<OwnedFd> = raw_fds[..n_fds]
        .iter()
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    sock.read_exact(&mut header[n..])?;
    let size = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} bytes"),
        ));
    }
    let mut payload = vec![0u8; size];
    sock.read_exact(&mut payload)?;
    Ok(Some(Message {
        header,
        payload,
        fds,
    }))
}

fn write_message(mut sock: &UnixStream, msg: &Message) -> io::Result<()> {
    let fds: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let bytes = [&msg.header[..], &msg.payload[..]].concat();
    let sent = sock
        .send_with_fds(&[&bytes[..]], &fds)
        .map_err(io::Error::from)?;
    // The fds went with the first byte; any remainder is plain data.
    sock.write_all(&bytes[sent..])
}

/// Sends `request` with `payload`, no fds, no reply asked: a backend's own
/// request on the channel SET_BACKEND_REQ_FD gave it (same framing).
pub(crate) fn send_request(sock: &UnixStream, request: u32, payload: &[u8]) -> io::Result<()> {
    write_message(sock, &Message::new(request, payload))
}

/// The frontend socket, written by both relay threads (replies from the
/// handler, and the relay's own answers) one whole message at a time.
type FrontendWriter = Arc<Mutex<UnixStream>>;

fn reply_to_frontend(frontend: &FrontendWriter, msg: &Message) -> io::Result<()> {
    let sock = frontend.lock().unwrap_or_else(|e| e.into_inner());
    write_message(&sock, msg)
}

/// Answers an inflight message; an error ends the session (the frontend
/// cannot go on without the answer it asked for).
fn answer_inflight(
    mut msg: Message,
    handler: &dyn RelayHooks,
    frontend: &FrontendWriter,
) -> io::Result<()> {
    let geometry = decode_inflight(&msg.payload)?;
    if msg.request() == GET_INFLIGHT_FD {
        let (fd, region) = handler.get_inflight_fd(&geometry)?;
        return reply_to_frontend(frontend, &msg.reply(&encode_inflight(&region), vec![fd]));
    }
    let fd = single_fd(&mut msg, "SET_INFLIGHT_FD")?;
    let result = handler.set_inflight_fd(&geometry, fd);
    ack(&msg, "SET_INFLIGHT_FD", result, frontend)
}

/// Logs a refused request and, if the frontend asked (REPLY_ACK), answers
/// with its status: 0 for success.
fn ack(
    msg: &Message,
    what: &str,
    result: io::Result<()>,
    frontend: &FrontendWriter,
) -> io::Result<()> {
    if let Err(e) = &result {
        log::warn!("vhost-user relay: {what} refused: {e}");
    }
    if msg.flags() & FLAG_NEED_REPLY != 0 {
        let status = u64::from(result.is_err());
        reply_to_frontend(frontend, &msg.reply(&status.to_le_bytes(), Vec::new()))?;
    }
    Ok(())
}

/// The single fd a message must carry.
fn single_fd(msg: &mut Message, what: &str) -> io::Result<OwnedFd> {
    let mut fds = std::mem::take(&mut msg.fds).into_iter();
    match (fds.next(), fds.next()) {
        (Some(fd), None) => Ok(fd),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} without exactly one fd"),
        )),
    }
}

/// SET_LOG_BASE: QEMU waits for a reply echoing the message (whatever
/// REPLY_ACK says), so a log the device cannot take ends the session: the
/// frontend must not migrate on a log nobody marks.
fn answer_log_base(
    mut msg: Message,
    hooks: &dyn RelayHooks,
    frontend: &FrontendWriter,
) -> io::Result<()> {
    if msg.payload.len() < LOG_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SET_LOG_BASE of {} bytes", msg.payload.len()),
        ));
    }
    let u64_at = |i: usize| u64::from_le_bytes(msg.payload[i..i + 8].try_into().expect("8 bytes"));
    let log = LogGeometry {
        mmap_size: u64_at(0),
        mmap_offset: u64_at(8),
    };
    let fd = single_fd(&mut msg, "SET_LOG_BASE")?;
    hooks.set_log_base(&log, fd)?;
    let payload = msg.payload[..LOG_LEN].to_vec();
    reply_to_frontend(frontend, &msg.reply(&payload, Vec::new()))
}

/// SEND_RARP: the payload's first six bytes are the guest's MAC.
fn answer_rarp(msg: Message, hooks: &dyn RelayHooks, frontend: &FrontendWriter) -> io::Result<()> {
    let result = match msg.payload.get(..6) {
        Some(mac) => hooks.send_rarp(mac.try_into().expect("6 bytes")),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SEND_RARP without a MAC",
        )),
    };
    ack(&msg, "SEND_RARP", result, frontend)
}

fn answer_backend_req_fd(
    mut msg: Message,
    hooks: &dyn RelayHooks,
    frontend: &FrontendWriter,
) -> io::Result<()> {
    let result = single_fd(&mut msg, "SET_BACKEND_REQ_FD")
        .and_then(|fd| hooks.set_backend_req_channel(UnixStream::from(fd)));
    ack(&msg, "SET_BACKEND_REQ_FD", result, frontend)
}

/// Frontend -> backend, with the compatibility rule from the module docs;
/// the messages of [`RelayHooks`] are answered here.
fn forward_requests(
    frontend: &UnixStream,
    backend: &UnixStream,
    hooks: &dyn RelayHooks,
    replies: &FrontendWriter,
) -> io::Result<()> {
    let mut features_acked = false;
    while let Some(msg) = read_message(frontend)? {
        match msg.request() {
            SET_FEATURES => features_acked = true,
            SET_VRING_ENABLE if !features_acked => {
                write_message(
                    backend,
                    &Message::new(SET_FEATURES, &VHOST_USER_F_PROTOCOL_FEATURES.to_le_bytes()),
                )?;
                features_acked = true;
            }
            GET_INFLIGHT_FD | SET_INFLIGHT_FD if hooks.tracks_inflight() => {
                answer_inflight(msg, hooks, replies)?;
                continue;
            }
            SET_LOG_BASE => {
                answer_log_base(msg, hooks, replies)?;
                continue;
            }
            SEND_RARP => {
                answer_rarp(msg, hooks, replies)?;
                continue;
            }
            SET_BACKEND_REQ_FD => {
                answer_backend_req_fd(msg, hooks, replies)?;
                continue;
            }
            _ => {}
        }
        write_message(backend, &msg)?;
    }
    Ok(())
}

/// Backend -> frontend: replies, unchanged.
fn forward_replies(backend: &UnixStream, frontend: &FrontendWriter) -> io::Result<()> {
    while let Some(msg) = read_message(backend)? {
        reply_to_frontend(frontend, &msg)?;
    }
    Ok(())
}

/// Relays between `frontend` and `backend` on two threads until either side
/// closes; then both are shut down so the other thread and the handler end too.
/// The messages of [`RelayHooks`] are answered through `hooks`.
pub fn spawn(
    frontend: UnixStream,
    backend: UnixStream,
    hooks: Arc<dyn RelayHooks>,
) -> io::Result<[JoinHandle<()>; 2]> {
    let (f2, b2) = (frontend.try_clone()?, backend.try_clone()?);
    let writer: FrontendWriter = Arc::new(Mutex::new(frontend.try_clone()?));
    let writer2 = writer.clone();
    let close_both = |a: &UnixStream, b: &UnixStream| {
        let _ = a.shutdown(std::net::Shutdown::Both);
        let _ = b.shutdown(std::net::Shutdown::Both);
    };
    let requests = std::thread::Builder::new()
        .name("vu-relay-req".into())
        .spawn(move || {
            if let Err(e) = forward_requests(&frontend, &backend, &*hooks, &writer) {
                log::debug!("vhost-user relay: frontend side ended: {e}");
            }
            close_both(&frontend, &backend);
        })?;
    let replies = std::thread::Builder::new()
        .name("vu-relay-rep".into())
        .spawn(move || {
            if let Err(e) = forward_replies(&b2, &writer2) {
                log::debug!("vhost-user relay: backend side ended: {e}");
            }
            close_both(&f2, &b2);
        })?;
    Ok([requests, replies])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn raw(request: u32, payload: &[u8]) -> Vec<u8> {
        let m = Message::new(request, payload);
        [&m.header[..], &m.payload[..]].concat()
    }

    fn read_all_messages(sock: &UnixStream) -> Vec<(u32, Vec<u8>, usize)> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = read_message(sock) {
            out.push((m.request(), m.payload.clone(), m.fds.len()));
        }
        out
    }

    #[test]
    fn early_vring_enable_gets_protocol_features_acked_first() {
        let (mut qemu, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, handler) = UnixStream::pair().unwrap();
        let threads = spawn(relay_front, relay_back, Arc::new(NoHooks)).unwrap();
        let enable = [0u8; 8];
        qemu.write_all(&raw(15, &[])).unwrap(); // GET_PROTOCOL_FEATURES
                                                // An fd travels with SET_VRING_CALL (13), as QEMU sends it.
        let (ev, _keep) = UnixStream::pair().unwrap();
        let call = raw(13, &0u64.to_le_bytes());
        qemu.send_with_fds(&[&call[..]], &[ev.as_raw_fd()]).unwrap();
        qemu.write_all(&raw(SET_VRING_ENABLE, &enable)).unwrap();
        qemu.write_all(&raw(SET_FEATURES, &(1u64 << 32 | 1 << 30).to_le_bytes()))
            .unwrap();
        qemu.write_all(&raw(SET_VRING_ENABLE, &enable)).unwrap();
        qemu.shutdown(std::net::Shutdown::Write).unwrap();
        let got = read_all_messages(&handler);
        let requests: Vec<u32> = got.iter().map(|m| m.0).collect();
        assert_eq!(
            requests,
            vec![
                15,
                13,
                SET_FEATURES,
                SET_VRING_ENABLE,
                SET_FEATURES,
                SET_VRING_ENABLE
            ]
        );
        assert_eq!(got[1].2, 1, "the fd is relayed with its message");
        assert_eq!(got[2].1, (1u64 << 30).to_le_bytes().to_vec());
        drop(handler);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn replies_pass_unchanged_and_oversized_messages_end_the_session() {
        let (qemu, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, mut handler) = UnixStream::pair().unwrap();
        let threads = spawn(relay_front, relay_back, Arc::new(NoHooks)).unwrap();
        handler.write_all(&raw(1, &7u64.to_le_bytes())).unwrap();
        let m = read_message(&qemu).unwrap().unwrap();
        assert_eq!((m.request(), m.payload), (1, 7u64.to_le_bytes().to_vec()));
        let mut huge = raw(5, &[]);
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        (&qemu).write_all(&huge).unwrap();
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            read_message(&handler).unwrap().is_none(),
            "handler side closed"
        );
    }
}
