//! The benches' QD-N random I/O driver ([`crate::blkio::run_io`]) on a queue
//! of the in-process frontend's [`GuestBlk`]: for measurements a libblkio
//! client cannot make, such as with a dirty log handed over.

use std::io;

use super::virtio_blk::{GuestBlk, Req, SECTOR, WAIT};
use crate::blkio::driver::{IoKind, IoQueue};

/// Queue `q` of a [`GuestBlk`] as an [`IoQueue`]: write data is copied from
/// this adapter's buffer into the request's slot of guest memory at submit
/// (a guest's page cache to its virtio-blk request).
pub struct GuestBlkQueue<'a> {
    blk: &'a mut GuestBlk,
    q: usize,
    buf: Vec<u8>,
    /// The job's slot of each chain head in flight.
    slot_of: Vec<Option<usize>>,
    in_flight: usize,
}

impl<'a> GuestBlkQueue<'a> {
    /// `buffer_len`: the job's queue depth times its block size.
    pub fn new(blk: &'a mut GuestBlk, q: usize, buffer_len: usize) -> Self {
        let heads = usize::from(blk.queue_size());
        GuestBlkQueue {
            blk,
            q,
            buf: vec![0; buffer_len],
            slot_of: vec![None; heads],
            in_flight: 0,
        }
    }
}

impl IoQueue for GuestBlkQueue<'_> {
    type Error = io::Error;

    fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Panics if the queue has no room: the job's depth is the caller's to fit.
    fn submit(&mut self, kind: IoKind, offset: u64, slot: usize, len: usize) {
        let sector = offset / SECTOR;
        let req = match kind {
            IoKind::Read => Req::Read { sector, len },
            IoKind::Write => Req::Write {
                sector,
                data: &self.buf[slot * len..(slot + 1) * len],
            },
        };
        let head = self
            .blk
            .submit(self.q, &req)
            .unwrap_or_else(|e| panic!("queue {}: {e}: lower the queue depth", self.q));
        self.slot_of[usize::from(head)] = Some(slot);
        self.in_flight += 1;
    }

    fn wait(&mut self, slots: &mut Vec<usize>) -> io::Result<()> {
        if !self.blk.wait_any(self.q, WAIT) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("queue {}: nothing completed within {WAIT:?}", self.q),
            ));
        }
        for (head, _len) in self.blk.take_used(self.q) {
            let slot = usize::try_from(head)
                .ok()
                .and_then(|h| self.slot_of.get_mut(h))
                .and_then(Option::take)
                .unwrap_or_else(|| {
                    panic!("device bug: used id {head} is not a request of the job")
                });
            let (status, _) = self.blk.request_layout(self.q, head as u16);
            let status = self.blk.read_byte(status);
            if status != super::virtio_blk::S_OK {
                return Err(io::Error::other(format!(
                    "queue {}: request at head {head} failed with status {status}",
                    self.q
                )));
            }
            self.in_flight -= 1;
            slots.push(slot);
        }
        Ok(())
    }
}
