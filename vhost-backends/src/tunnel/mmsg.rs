//! Socket batching for the tunnel: many datagrams per system call, both ways.
//!
//! [`RecvBatch`] reads up to [`RECV_SLOTS`] messages with one `recvmmsg(2)`
//! from a UDP socket with `UDP_GRO` enabled: the kernel may hand over several
//! datagrams of one flow coalesced into one message, their size in a `UDP_GRO`
//! control message (`udp_cmsg_recv` in the kernel: all of that size except the
//! last, which may be shorter). [`SendBatch`] collects encapsulated packets
//! and sends them with one `sendmmsg(2)` on the raw socket. The buffers are
//! allocated once, when the tunnel starts.

use std::io;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::fd::RawFd;
use vswitch::vxlan::TunnelDrop;

/// Messages per `recvmmsg`.
pub(super) const RECV_SLOTS: usize = 64;
/// Bytes per received message: a whole UDP payload, which is also the most a
/// `UDP_GRO` read coalesces (the kernel keeps the merged packet within 64 KiB).
/// Only the bytes the kernel writes are ever touched, so the 4 MiB of
/// [`RECV_SLOTS`] slots cost memory only as far as traffic fills them.
pub(super) const SLOT_BYTES: usize = 65_536;
/// Packets per `sendmmsg`.
pub(super) const SEND_SLOTS: usize = 64;
/// Room for one `cmsghdr` carrying an `int` (CMSG_SPACE(4) is 24 on 64-bit),
/// with spare for any other control message the kernel may add.
const CONTROL_LEN: usize = 64;

/// One message read by [`RecvBatch::read`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Received {
    /// The sender; `None` if the kernel gave no IPv4 address.
    pub from: Option<Ipv4Addr>,
    /// Bytes of the message in its slot.
    pub len: usize,
    /// The `UDP_GRO` segment size: the message is datagrams of this size back
    /// to back, the last one possibly shorter. 0 when it is one datagram.
    pub segment: usize,
    /// `MSG_TRUNC`: the message was cut at the end of its slot, so its last
    /// datagram is incomplete.
    pub truncated: bool,
}

/// The datagrams of one received message of `len` bytes with `UDP_GRO`
/// segment size `segment` (0: not coalesced): consecutive ranges of `segment`
/// bytes, the last one the remainder. An empty message is one (empty, so
/// malformed) datagram.
pub(super) fn gro_datagrams(len: usize, segment: usize) -> impl Iterator<Item = Range<usize>> {
    let step = if segment == 0 { usize::MAX } else { segment };
    (0..len.max(1))
        .step_by(step)
        .map(move |start| start..start.saturating_add(step).min(len))
}

/// Control-message space, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

/// Receive buffers for `recvmmsg`, one slot per message.
pub(super) struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_in>,
    controls: Vec<Control>,
    got: Vec<Received>,
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
        let addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        RecvBatch {
            bufs: vec![0u8; RECV_SLOTS * SLOT_BYTES],
            addrs: vec![addr; RECV_SLOTS],
            controls: vec![Control([0; CONTROL_LEN]); RECV_SLOTS],
            got: Vec::with_capacity(RECV_SLOTS),
        }
    }

    /// Reads up to [`RECV_SLOTS`] messages from `fd` without blocking; returns
    /// how many ([`RecvBatch::received`]). Nothing to read is `WouldBlock`.
    pub fn read(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: zeroed iovec/mmsghdr are valid (null pointers, zero lengths);
        // each is pointed at this batch's own buffers below.
        let mut iovs: [libc::iovec; RECV_SLOTS] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; RECV_SLOTS] = unsafe { std::mem::zeroed() };
        let bufs = self.bufs.as_mut_ptr();
        for i in 0..RECV_SLOTS {
            iovs[i] = libc::iovec {
                // SAFETY: slot i lies within `bufs` (RECV_SLOTS * SLOT_BYTES).
                iov_base: unsafe { bufs.add(i * SLOT_BYTES) }.cast(),
                iov_len: SLOT_BYTES,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].0.as_mut_ptr().cast();
            h.msg_controllen = CONTROL_LEN;
        }
        // SAFETY: every pointer in `hdrs` points into buffers owned by `self`
        // or into `iovs`, all live across the call and of the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                RECV_SLOTS as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.got.clear();
        for (i, h) in hdrs.iter().enumerate().take(n as usize) {
            let addr = &self.addrs[i];
            let from = (h.msg_hdr.msg_namelen as usize >= std::mem::size_of::<libc::sockaddr_in>()
                && addr.sin_family == libc::AF_INET as libc::sa_family_t)
                .then(|| Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)));
            self.got.push(Received {
                from,
                len: (h.msg_len as usize).min(SLOT_BYTES),
                segment: gro_segment(&h.msg_hdr),
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(self.got.len())
    }

    /// What message `i` of the last read is.
    pub fn received(&self, i: usize) -> Received {
        self.got[i]
    }

    /// All slots, message `i` at `i * SLOT_BYTES`.
    pub fn slots_mut(&mut self) -> &mut [u8] {
        &mut self.bufs
    }
}

/// The `UDP_GRO` segment size in the control messages of `h`, 0 if none.
fn gro_segment(h: &libc::msghdr) -> usize {
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // within `msg_controllen`; each header is checked before its data is read.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP
                && (*c).cmsg_type == libc::UDP_GRO
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize
            {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(size).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

/// Encapsulated packets waiting for one `sendmmsg`: slot `i` holds an
/// Ethernet + IPv4 packet of `lens[i]` bytes for `to[i]`; the raw socket is
/// given the IPv4 part.
pub(super) struct SendBatch {
    bufs: Vec<u8>,
    slot: usize,
    lens: Vec<usize>,
    to: Vec<Ipv4Addr>,
    /// Inner frame bytes per packet, for the tunnel's TX counters.
    inner: Vec<usize>,
    /// `sendmmsg` calls made (a test's measure of batching).
    pub calls: u64,
}

impl SendBatch {
    /// Slots of `slot` bytes each.
    pub fn new(slot: usize) -> SendBatch {
        SendBatch {
            bufs: vec![0u8; SEND_SLOTS * slot],
            slot,
            lens: Vec::with_capacity(SEND_SLOTS),
            to: Vec::with_capacity(SEND_SLOTS),
            inner: Vec::with_capacity(SEND_SLOTS),
            calls: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.lens.len() == SEND_SLOTS
    }

    /// The next free slot, to be filled and then [`SendBatch::push`]ed.
    pub fn next_slot(&mut self) -> &mut [u8] {
        let at = self.lens.len() * self.slot;
        &mut self.bufs[at..at + self.slot]
    }

    /// Takes the packet written to the next slot: `len` bytes (Ethernet
    /// header included) to `to`, carrying `inner` bytes of inner frame.
    pub fn push(&mut self, len: usize, to: Ipv4Addr, inner: usize) {
        debug_assert!(!self.is_full() && len <= self.slot);
        self.lens.push(len);
        self.to.push(to);
        self.inner.push(inner);
    }

    /// Sends every queued packet from byte `skip` of its slot (past the
    /// Ethernet header: the kernel routes the IP packet) with as few
    /// `sendmmsg` calls as the socket allows, never blocking; `outcome` gets
    /// each packet's inner length and result in order. A full socket buffer
    /// drops the packet it stopped at and all after it as `TxBusy` (the
    /// datapath thread never waits); another error drops that packet as
    /// `TxError` and the rest are tried.
    pub fn flush(
        &mut self,
        fd: RawFd,
        skip: usize,
        mut outcome: impl FnMut(usize, Result<(), TunnelDrop>),
    ) {
        let count = self.lens.len();
        if count == 0 {
            return;
        }
        // SAFETY: all zeroes is a valid sockaddr_in, iovec and mmsghdr.
        let mut addrs: [libc::sockaddr_in; SEND_SLOTS] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; SEND_SLOTS] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; SEND_SLOTS] = unsafe { std::mem::zeroed() };
        let bufs = self.bufs.as_mut_ptr();
        for i in 0..count {
            addrs[i].sin_family = libc::AF_INET as libc::sa_family_t;
            addrs[i].sin_addr.s_addr = u32::from(self.to[i]).to_be();
            iovs[i] = libc::iovec {
                // SAFETY: slot i lies within `bufs`; `skip` <= `lens[i]`.
                iov_base: unsafe { bufs.add(i * self.slot + skip) }.cast(),
                iov_len: self.lens[i].saturating_sub(skip),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        let mut at = 0;
        while at < count {
            self.calls += 1;
            // SAFETY: hdrs[at..count] point at live buffers of the lengths given.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[at..].as_mut_ptr(),
                    (count - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                for i in at..at + n as usize {
                    outcome(self.inner[i], sent_whole(hdrs[i].msg_len, iovs[i].iov_len));
                }
                at += n as usize;
                continue;
            }
            // Nothing sent: the error belongs to packet `at`.
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS) => {
                    for i in at..count {
                        outcome(self.inner[i], Err(TunnelDrop::TxBusy));
                    }
                    break;
                }
                _ => {
                    outcome(self.inner[at], Err(TunnelDrop::TxError));
                    at += 1;
                }
            }
        }
        self.lens.clear();
        self.to.clear();
        self.inner.clear();
    }
}

/// A raw IPv4 socket takes a packet whole or not at all; anything short is
/// an error of that packet.
fn sent_whole(sent: libc::c_uint, len: usize) -> Result<(), TunnelDrop> {
    match sent as usize == len {
        true => Ok(()),
        false => Err(TunnelDrop::TxError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(len: usize, segment: usize) -> Vec<Range<usize>> {
        gro_datagrams(len, segment).collect()
    }

    #[test]
    fn a_coalesced_read_splits_at_the_segment_size_the_last_one_shorter() {
        assert_eq!(ranges(300, 100), vec![0..100, 100..200, 200..300]);
        assert_eq!(ranges(250, 100), vec![0..100, 100..200, 200..250]);
        assert_eq!(ranges(100, 100), vec![0..100]);
        assert_eq!(ranges(60, 100), vec![0..60]);
        // Not coalesced: the whole message is one datagram, even an empty one.
        assert_eq!(ranges(1464, 0), vec![0..1464]);
        assert_eq!(ranges(0, 0), vec![0..0]);
    }
}
