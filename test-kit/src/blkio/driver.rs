//! QD-N random I/O on one queue, for benches: keeps `qd` requests in
//! flight, each with its own slot of the queue's buffer; every wait blocks
//! until at least one completes, then the freed slots are refilled. Any
//! [`IoQueue`]: a libblkio [`BlkQueue`] (every wait sends the requests
//! queued since the last one, one kick per batch, and blocks on the queue's
//! completion eventfd), or the in-process frontend's `GuestBlk`
//! (`crate::frontend::blk_io`).

use std::ops::Range;
use std::time::{Duration, Instant};

use super::client::{BlkError, BlkQueue, Done, Req};
use super::pattern::{fill_pattern, mix64};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
}

/// Which blocks of the region the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offsets {
    /// Uniformly random blocks (repeats allowed), until the duration ends.
    Uniform,
    /// Every block of the region exactly once, in random order (first
    /// writes), until all are done or the duration ends.
    EachBlockOnce,
    /// Blocks in order from the region's start (fills), until all are done
    /// or the duration ends.
    Sequential,
    /// The first block of every `chunk`-byte piece of the region (a pool
    /// cluster, say), each piece once, in random order, until all are done or
    /// the duration ends: one write per cluster after a snapshot measures
    /// copy-on-write. `chunk` is a multiple of the block size.
    OncePerChunk { chunk: u64 },
}

#[derive(Debug, Clone)]
pub struct IoJob {
    pub kind: IoKind,
    pub block_size: usize,
    pub qd: usize,
    pub duration: Duration,
    /// Device byte range; its start and length are multiples of `block_size`.
    pub region: Range<u64>,
    pub offsets: Offsets,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct IoStats {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// `EachBlockOnce`/`Sequential` ran out of blocks before the duration.
    pub exhausted: bool,
}

impl IoStats {
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / (1 << 20) as f64
    }
}

/// A queue [`run_io`] keeps requests in flight on: slot `i` of a job is the
/// buffer range `[i * block_size, (i + 1) * block_size)`.
pub trait IoQueue {
    type Error;
    /// The request buffer (what the slots are ranges of).
    fn buffer_mut(&mut self) -> &mut [u8];
    /// Requests submitted and not yet returned by [`IoQueue::wait`].
    fn in_flight(&self) -> usize;
    /// Queues `len` bytes of `kind` at device `offset` on slot `slot`'s
    /// buffer range.
    fn submit(&mut self, kind: IoKind, offset: u64, slot: usize, len: usize);
    /// Waits until at least one request completed; appends the slots of the
    /// completed ones to `slots`. A failed request is an error.
    fn wait(&mut self, slots: &mut Vec<usize>) -> Result<(), Self::Error>;
}

impl IoQueue for BlkQueue {
    type Error = BlkError;

    fn buffer_mut(&mut self) -> &mut [u8] {
        BlkQueue::buffer_mut(self)
    }

    fn in_flight(&self) -> usize {
        BlkQueue::in_flight(self)
    }

    fn submit(&mut self, kind: IoKind, offset: u64, slot: usize, len: usize) {
        let buf_off = slot * len;
        let req = match kind {
            IoKind::Read => Req::Read {
                offset,
                buf_off,
                len,
            },
            IoKind::Write => Req::Write {
                offset,
                buf_off,
                len,
                fua: false,
            },
        };
        BlkQueue::submit(self, req, slot);
    }

    fn wait(&mut self, slots: &mut Vec<usize>) -> Result<(), BlkError> {
        let mut out: Vec<Done> = Vec::new();
        BlkQueue::wait(self, 1, &mut out)?;
        for d in out {
            d.result?;
            slots.push(d.tag);
        }
        Ok(())
    }
}

/// Runs `job` on `queue`; the first failed request stops it with its error.
pub fn run_io<Q: IoQueue>(queue: &mut Q, job: &IoJob) -> Result<IoStats, Q::Error> {
    let bs = job.block_size;
    assert!(
        bs > 0 && bs.is_multiple_of(512),
        "block size must be a multiple of 512"
    );
    assert!(job.qd > 0);
    let buffer_len = queue.buffer_mut().len();
    assert!(
        job.qd * bs <= buffer_len,
        "qd {} x {} B does not fit the queue buffer ({buffer_len} B): raise ConnectOptions::buf_bytes",
        job.qd,
        bs,
    );
    // Requests go to the start of a unit: a block, or a chunk of blocks.
    let unit = match job.offsets {
        Offsets::OncePerChunk { chunk } => chunk,
        _ => bs as u64,
    };
    assert!(
        unit.is_multiple_of(bs as u64),
        "chunk must be a multiple of the block size"
    );
    let blocks = (job.region.end - job.region.start) / unit;
    assert!(
        job.region.start.is_multiple_of(bs as u64) && blocks > 0,
        "region must be block-aligned and hold at least one block"
    );
    assert_eq!(queue.in_flight(), 0, "queue busy");
    if job.kind == IoKind::Write {
        // Every slot holds distinct data; written as is for the whole run.
        let seed = job.seed;
        fill_pattern(seed, 0, &mut queue.buffer_mut()[..job.qd * bs]);
    }
    let mut perm = Permutation::new(blocks, job.seed);
    let mut rng = job.seed ^ 0x5DEE_CE66;
    let mut next_seq = 0u64;
    let mut next_block = |rng: &mut u64| -> Option<u64> {
        match job.offsets {
            Offsets::Uniform => {
                *rng = mix64(*rng);
                Some(*rng % blocks)
            }
            Offsets::EachBlockOnce | Offsets::OncePerChunk { .. } => perm.next(),
            Offsets::Sequential => {
                let b = next_seq;
                next_seq += 1;
                (b < blocks).then_some(b)
            }
        }
    };
    let mut free: Vec<usize> = (0..job.qd).rev().collect();
    let mut out: Vec<usize> = Vec::with_capacity(job.qd);
    let mut ops = 0u64;
    let mut exhausted = false;
    let started = Instant::now();
    let deadline = started + job.duration;
    loop {
        // The clock is read once per batch, not per request.
        let open = !exhausted && Instant::now() < deadline;
        while let Some(slot) = open.then(|| free.pop()).flatten() {
            let Some(block) = next_block(&mut rng) else {
                exhausted = true;
                free.push(slot);
                break;
            };
            let offset = job.region.start + block * unit;
            queue.submit(job.kind, offset, slot, bs);
        }
        if queue.in_flight() == 0 {
            break;
        }
        out.clear();
        queue.wait(&mut out)?;
        ops += out.len() as u64;
        free.append(&mut out);
    }
    let elapsed = started.elapsed();
    Ok(IoStats {
        ops,
        bytes: ops * bs as u64,
        elapsed,
        exhausted,
    })
}

/// Uniformly random `block_size` I/O at queue depth `qd` over `region` for
/// `duration`; returns IOPS.
pub fn run_random(
    queue: &mut BlkQueue,
    kind: IoKind,
    block_size: usize,
    qd: usize,
    duration: Duration,
    region: Range<u64>,
) -> Result<f64, BlkError> {
    let job = IoJob {
        kind,
        block_size,
        qd,
        duration,
        region,
        offsets: Offsets::Uniform,
        seed: 0x0B1C_2D3E,
    };
    Ok(run_io(queue, &job)?.iops())
}

/// A random permutation of `0..n` without materialising it: a Feistel
/// network on the next power of four, cycle-walking past `n`.
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
    i: u64,
    domain: u64,
}

impl Permutation {
    pub fn new(n: u64, seed: u64) -> Self {
        let bits = 64 - n.max(2).saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut k = seed;
        let keys = [0; 4].map(|_| {
            k = mix64(k);
            k
        });
        Permutation {
            n,
            half_bits,
            keys,
            i: 0,
            domain: 1u64 << (2 * half_bits),
        }
    }

    fn permute(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in self.keys {
            let f = mix64(r ^ k) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }
}

impl Iterator for Permutation {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        while self.i < self.domain {
            let x = self.permute(self.i);
            self.i += 1;
            if x < self.n {
                return Some(x);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completes every request at its next wait and records its offset.
    struct Recorder {
        buf: Vec<u8>,
        pending: Vec<usize>,
        offsets: Vec<u64>,
    }

    impl IoQueue for Recorder {
        type Error = ();

        fn buffer_mut(&mut self) -> &mut [u8] {
            &mut self.buf
        }

        fn in_flight(&self) -> usize {
            self.pending.len()
        }

        fn submit(&mut self, _kind: IoKind, offset: u64, slot: usize, _len: usize) {
            self.offsets.push(offset);
            self.pending.push(slot);
        }

        fn wait(&mut self, slots: &mut Vec<usize>) -> Result<(), ()> {
            slots.append(&mut self.pending);
            Ok(())
        }
    }

    #[test]
    fn once_per_chunk_writes_the_first_block_of_every_chunk_exactly_once() {
        let mut q = Recorder {
            buf: vec![0; 4 * 4096],
            pending: Vec::new(),
            offsets: Vec::new(),
        };
        let start = 8192;
        let job = IoJob {
            kind: IoKind::Write,
            block_size: 4096,
            qd: 4,
            duration: Duration::from_secs(3600),
            region: start..start + 37 * 16384,
            offsets: Offsets::OncePerChunk { chunk: 16384 },
            seed: 7,
        };
        let stats = run_io(&mut q, &job).unwrap();
        assert!(stats.exhausted);
        assert_eq!(stats.ops, 37);
        let issued = q.offsets.clone();
        let mut sorted = q.offsets;
        sorted.sort_unstable();
        let every_chunk: Vec<u64> = (0..37).map(|i| start + i * 16384).collect();
        assert_eq!(sorted, every_chunk);
        assert_ne!(issued, every_chunk, "random order, not sequential");
    }
}
