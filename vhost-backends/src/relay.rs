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
//! Only control messages cross the relay; the datapath (shared memory, kick and
//! call eventfds) never does.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
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
const SET_VRING_ENABLE: u32 = 18;
/// Header flags: protocol version 1, no reply wanted.
const FLAGS_VERSION_1: u32 = 0x1;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

struct Message {
    header: [u8; HEADER_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes(self.header[0..4].try_into().expect("4 bytes"))
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

/// Frontend -> backend, with the compatibility rule from the module docs.
fn forward_requests(frontend: &UnixStream, backend: &UnixStream) -> io::Result<()> {
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
            _ => {}
        }
        write_message(backend, &msg)?;
    }
    Ok(())
}

/// Backend -> frontend: replies, unchanged.
fn forward_replies(backend: &UnixStream, frontend: &UnixStream) -> io::Result<()> {
    while let Some(msg) = read_message(backend)? {
        write_message(frontend, &msg)?;
    }
    Ok(())
}

/// Relays between `frontend` and `backend` on two threads until either side
/// closes; then both are shut down so the other thread and the handler end too.
pub fn spawn(frontend: UnixStream, backend: UnixStream) -> io::Result<[JoinHandle<()>; 2]> {
    let (f2, b2) = (frontend.try_clone()?, backend.try_clone()?);
    let close_both = |a: &UnixStream, b: &UnixStream| {
        let _ = a.shutdown(std::net::Shutdown::Both);
        let _ = b.shutdown(std::net::Shutdown::Both);
    };
    let requests = std::thread::Builder::new()
        .name("vu-relay-req".into())
        .spawn(move || {
            if let Err(e) = forward_requests(&frontend, &backend) {
                log::debug!("vhost-user relay: frontend side ended: {e}");
            }
            close_both(&frontend, &backend);
        })?;
    let replies = std::thread::Builder::new()
        .name("vu-relay-rep".into())
        .spawn(move || {
            if let Err(e) = forward_replies(&b2, &f2) {
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
        let threads = spawn(relay_front, relay_back).unwrap();
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
        let threads = spawn(relay_front, relay_back).unwrap();
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
