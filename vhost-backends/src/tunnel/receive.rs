//! The receiving side of a tunnel port, as a datapath thread polls it: a
//! `recvmmsg` per socket per poll, each message split into its datagrams
//! (`UDP_GRO`), each datagram decapsulated in place, runs of segments of one
//! TCP flow coalesced into GSO super-frames (`coalesce.rs`), and the frames
//! forwarded in batches.

use super::coalesce::{coalesce, Coalescer, Decapped};
use super::decap::decapsulate;
use super::mmsg::{gro_datagrams, RecvBatch, SLOT_BYTES};
use super::Tunnel;
use crate::datapath::{PollQueue, Polled};
use crate::forward::{forward, ForwardScratch, FrameSource, Ingress, PortTable, BATCH};
use arrayvec::ArrayVec;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use vm_memory::VolatileSlice;
use vmm_sys_util::timerfd::TimerFd;
use vswitch::vxlan::TunnelDrop;
use vswitch::{PortId, Switch};

/// The receiving side of a tunnel port: its sockets, and a timer that ages
/// the remote FDB while nothing arrives.
pub(super) struct TunnelQueue {
    pub tunnel: Arc<Tunnel>,
    pub id: PortId,
    pub switch: Arc<Switch>,
    pub table: Arc<PortTable>,
    /// The sockets' and the timer's descriptors, open while `receiver` holds them.
    pub fds: Vec<RawFd>,
    /// `None` once the port is stopped (sockets closed).
    pub receiver: Mutex<Option<Receiver>>,
}

pub(super) struct Receiver {
    pub sockets: Vec<UdpSocket>,
    pub timer: TimerFd,
    pub batch: RecvBatch,
    /// The decapsulated frames of one read: byte ranges of `batch`'s slots
    /// and what decapsulation established for each.
    pub frames: Vec<Decapped>,
    /// Those frames coalesced: what is forwarded.
    pub coalescer: Coalescer,
    pub scratch: ForwardScratch,
    pub last_age: u32,
    /// `recvmmsg` calls that returned messages (a test's measure of batching).
    pub reads: u64,
}

impl Receiver {
    pub fn new(sockets: Vec<UdpSocket>, timer: TimerFd, now: u32) -> Receiver {
        Receiver {
            sockets,
            timer,
            batch: RecvBatch::new(),
            frames: Vec::with_capacity(BATCH),
            coalescer: Coalescer::default(),
            scratch: ForwardScratch::default(),
            last_age: now,
            reads: 0,
        }
    }
}

impl PollQueue for TunnelQueue {
    /// Ages the remote FDB once a second; reads one batch of messages per
    /// socket, checks, learns and forwards every datagram in them.
    fn poll(&self) -> Polled {
        let mut guard = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = guard.as_mut() else {
            return Polled::Gone;
        };
        // Read whenever we are here: an expiration left unread would keep the
        // queue readable. Non-blocking: nothing to read is no error.
        let _ = r.timer.wait();
        let now = self.switch.now();
        if now != r.last_age {
            self.tunnel.remote_fdb.age(now);
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
            let Ok(messages) = r.batch.read(socket.as_raw_fd()) else {
                continue;
            };
            r.reads += 1;
            taken += self.decapsulate_all(&mut r.batch, messages, &mut r.frames);
            let merged = coalesce(r.batch.slots_mut(), &r.frames, &mut r.coalescer);
            if merged > 0 {
                self.tunnel.counters.add_coalesced(merged);
            }
            forward_all(&ingress, &mut r.batch, &r.coalescer, &mut r.scratch);
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

impl TunnelQueue {
    /// Splits each of the `messages` just read into its datagrams and
    /// decapsulates each; `frames` gets the good ones. A malformed datagram
    /// is dropped and counted, the others of its message kept. Returns the
    /// datagrams seen.
    fn decapsulate_all(
        &self,
        batch: &mut RecvBatch,
        messages: usize,
        frames: &mut Vec<Decapped>,
    ) -> usize {
        let t = &self.tunnel;
        frames.clear();
        let mut seen = 0;
        for i in 0..messages {
            let msg = batch.received(i);
            let base = i * SLOT_BYTES;
            let slot = &mut batch.slots_mut()[base..base + SLOT_BYTES];
            for d in gro_datagrams(msg.len, msg.segment) {
                seen += 1;
                let Some(from) = msg.from else {
                    t.counters.add_drop(TunnelDrop::UnknownVtep);
                    continue;
                };
                // Cut at the buffer's end, the last datagram is incomplete.
                if msg.truncated && d.end == msg.len {
                    t.counters.add_drop(TunnelDrop::BadHeader);
                    continue;
                }
                let at = base + d.start;
                if let Some(mut f) = decapsulate(t, &mut slot[d], from, self.id, &self.switch) {
                    f.range = at + f.range.start..at + f.range.end;
                    frames.push(f);
                }
            }
        }
        seen
    }
}

/// Slices one [`forward`] call may take: the pieces of up to [`BATCH`]
/// frames, most of them a single piece each (a super-frame has up to
/// `MAX_SEGMENTS`). Kept on the stack.
const CHUNK_PIECES: usize = 4 * BATCH;
const _: () = assert!(crate::forward::MAX_SEGMENTS <= CHUNK_PIECES);

/// Forwards `c.out` (frames made of ranges of `batch`'s slots) in batches of
/// at most [`BATCH`] frames and [`CHUNK_PIECES`] pieces.
fn forward_all(
    ingress: &Ingress,
    batch: &mut RecvBatch,
    c: &Coalescer,
    scratch: &mut ForwardScratch,
) {
    let all = VolatileSlice::from(batch.slots_mut());
    let mut rest = &c.out[..];
    while !rest.is_empty() {
        let mut n = 0;
        let mut pieces = 0;
        // A frame has at most MAX_SEGMENTS <= CHUNK_PIECES pieces: n >= 1.
        while n < rest.len() && n < BATCH && pieces + rest[n].pieces.len() <= CHUNK_PIECES {
            pieces += rest[n].pieces.len();
            n += 1;
        }
        let chunk = &rest[..n];
        let slices: ArrayVec<VolatileSlice, CHUNK_PIECES> = chunk
            .iter()
            .flat_map(|f| &c.pieces[f.pieces.clone()])
            .map(|r| all.subslice(r.start, r.len()))
            .collect::<Result<_, _>>()
            .expect("frames lie within the slots");
        let mut at = 0;
        let sources: ArrayVec<FrameSource, BATCH> = chunk
            .iter()
            .map(|f| {
                let parts = &slices[at..at + f.pieces.len()];
                at += f.pieces.len();
                FrameSource::with_offload(parts, f.offload)
            })
            .collect();
        forward(ingress, &sources, &[], scratch);
        rest = &rest[n..];
    }
}
