//! [`SimDisk`]: an in-memory disk with a volatile write cache and fault
//! injection, for deterministic crash tests.

use std::io;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use super::{check_request, BlockDev, SECTOR};

/// An in-memory block device that models a disk with a volatile write cache.
///
/// It keeps two images: the *durable* one (what survives power loss) and the
/// *current* one (what reads return: durable plus every completed write), and
/// the list of *pending* writes (completed but not yet flushed), in completion
/// order. [`flush`](BlockDev::flush) makes the current image durable and empties
/// the list.
///
/// [`crash`](SimDisk::crash) forks a new disk as it would come back after a
/// power failure at that instant; see there for the rules. The original disk is
/// *not* changed by a crash and keeps working, so one workload can be crashed
/// at many points, with many seeds, without being replayed.
///
/// Faults: [`fail_reads`](SimDisk::fail_reads) / [`fail_writes`](SimDisk::fail_writes)
/// make I/O touching a byte range fail with EIO, [`fail_flushes`](SimDisk::fail_flushes)
/// makes flushes fail, and [`fail_after_writes`](SimDisk::fail_after_writes)
/// makes the whole device die (every later request EIO). A request that fails
/// changes nothing. Injected failures are bare `EIO` (`raw_os_error() ==
/// Some(EIO)`), as the kernel returns them; argument errors (misaligned, past
/// the end) are checked first and are never counted as device errors.
///
/// Boots: the disk models the host it hangs on ([`BlockDev::boot_id`]). A
/// new disk, and one made [`from_image`](SimDisk::from_image) (a process
/// restarted on the same host), have [`SimDisk::FIRST_BOOT`]; a crash is a
/// power loss, so the disk it returns comes back on the next boot.
///
/// Not `Clone`: share it with `Arc<SimDisk>` (which is a [`BlockDev`] too).
#[derive(Debug)]
pub struct SimDisk {
    state: Mutex<State>,
    boot: [u8; 16],
}

/// Counters of a [`SimDisk`]: successful requests and their bytes, plus failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests that failed with EIO (injected faults or a dead device).
    pub errors: u64,
    /// Writes completed since the last successful flush.
    pub pending_writes: u64,
}

#[derive(Debug)]
struct State {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<PendingWrite>,
    failing_reads: Vec<Range<u64>>,
    failing_writes: Vec<Range<u64>>,
    failing_flushes: bool,
    /// Writes left before the device dies; `None`: no such fault armed.
    writes_until_death: Option<u64>,
    dead: bool,
    /// Writes left before a crash image is captured, and its seed.
    capture: Option<(u64, u64)>,
    captured: Option<Vec<u8>>,
    stats: SimStats,
}

#[derive(Debug)]
struct PendingWrite {
    offset: u64,
    data: Vec<u8>,
    /// Its place among all writes (see [`SimDisk::write_mark`]).
    seq: u64,
}

/// What a crash does to one pending write (before sector-level tearing).
enum Fate {
    Dropped,
    Kept,
    /// Each sector independently kept or dropped.
    Torn,
}

impl SimDisk {
    /// A zeroed disk of `len` bytes, rounded down to a multiple of [`SECTOR`].
    pub fn new(len: u64) -> SimDisk {
        let len = len - len % SECTOR;
        Self::from_durable(vec![0; len as usize], Self::FIRST_BOOT)
    }

    /// The boot id of a new disk.
    pub const FIRST_BOOT: [u8; 16] = [0xb0; 16];

    /// This disk on the host's boot `boot` instead (a test that builds a
    /// power loss by hand reboots with it).
    pub fn with_boot_id(self, boot: [u8; 16]) -> SimDisk {
        SimDisk { boot, ..self }
    }

    /// The boot after this disk's: what a crash comes back on.
    fn next_boot(&self) -> [u8; 16] {
        u128::from_le_bytes(self.boot).wrapping_add(1).to_le_bytes()
    }

    /// A disk whose durable contents are `image` (e.g. a corrupted pool image
    /// for a reader fuzz test). Its length must be a multiple of [`SECTOR`].
    pub fn from_image(image: Vec<u8>) -> io::Result<SimDisk> {
        if !(image.len() as u64).is_multiple_of(SECTOR) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "disk image of {} bytes is not a multiple of {SECTOR}",
                    image.len()
                ),
            ));
        }
        Ok(Self::from_durable(image, Self::FIRST_BOOT))
    }

    fn from_durable(durable: Vec<u8>, boot: [u8; 16]) -> SimDisk {
        SimDisk {
            boot,
            state: Mutex::new(State {
                current: durable.clone(),
                durable,
                pending: Vec::new(),
                failing_reads: Vec::new(),
                failing_writes: Vec::new(),
                failing_flushes: false,
                writes_until_death: None,
                dead: false,
                capture: None,
                captured: None,
                stats: SimStats::default(),
            }),
        }
    }

    /// A poisoned lock only means another test thread panicked; the state
    /// itself is always consistent between statements that change it.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The disk as it comes back after a power failure now.
    ///
    /// The new disk's contents are the durable image plus, for each pending
    /// write in completion order, a deterministic (from `seed`) choice:
    ///
    /// - **dropped**: none of its sectors reached the media;
    /// - **kept**: all of them did;
    /// - **torn**: each 512-byte sector independently did or did not. A sector
    ///   is atomic, so a torn write is a subset of its sectors, never a partial
    ///   sector.
    ///
    /// Choices are independent across writes, which models reordering: a
    /// later write may survive while an earlier one is lost. Where several
    /// surviving writes cover a sector, the later one wins (a cache holds only
    /// the newest copy of a sector, but an older copy may have reached the
    /// media before it). So each sector ends up holding either its durable
    /// content or the content of one of the pending writes to it, nothing else.
    ///
    /// The new disk has no pending writes, no faults, zeroed counters and
    /// the next boot id (a power loss is a reboot). This
    /// disk is unchanged (even if dead) and keeps working. Same seed and same
    /// history give the same image.
    pub fn crash(&self, seed: u64) -> SimDisk {
        self.crash_with_unfinished(seed, &[])
    }

    /// [`crash`](Self::crash) while the writes `unfinished` (offset, data)
    /// were still in flight: issued, not completed. Each is one more pending
    /// write, after those that completed, under the same rules (dropped,
    /// kept or torn): an asynchronous device's crash (`SimRing::crash`).
    /// Writes the device would refuse (misaligned, past the end) are left
    /// out: they could not have reached the media.
    pub fn crash_with_unfinished(&self, seed: u64, unfinished: &[(u64, Vec<u8>)]) -> SimDisk {
        let len = self.len();
        let valid: Vec<(u64, Vec<u8>)> = unfinished
            .iter()
            .filter(|(offset, data)| check_request(len, *offset, data.len(), "write").is_ok())
            .cloned()
            .collect();
        Self::from_durable(self.state().crash_image(seed, &valid), self.next_boot())
    }

    /// Arms a crash point *inside* whatever the caller does next: right
    /// after the `n`-th write from now completes (`n >= 1`), the image a
    /// [`crash`](Self::crash) with `seed` would give at that instant is kept,
    /// and the disk goes on working. [`take_capture`](Self::take_capture)
    /// returns it as a new disk. Re-arming replaces an armed capture.
    pub fn capture_after_writes(&self, n: u64, seed: u64) {
        let mut st = self.state();
        st.capture = Some((n.max(1), seed));
        st.captured = None;
    }

    /// The disk captured by [`capture_after_writes`](Self::capture_after_writes),
    /// if its write happened; disarms it either way.
    pub fn take_capture(&self) -> Option<SimDisk> {
        let mut st = self.state();
        st.capture = None;
        let boot = self.next_boot();
        st.captured
            .take()
            .map(|image| Self::from_durable(image, boot))
    }
}

impl State {
    fn crash_image(&self, seed: u64, unfinished: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let st = self;
        let mut image = st.durable.clone();
        let mut rng = SplitMix64::new(seed);
        let pending = st.pending.iter().map(|w| (w.offset, &w.data));
        for (offset, data) in pending.chain(unfinished.iter().map(|(o, d)| (*o, d))) {
            let fate = match rng.below(3) {
                0 => Fate::Dropped,
                1 => Fate::Kept,
                _ => Fate::Torn,
            };
            for (i, sector) in data.chunks(SECTOR as usize).enumerate() {
                let keep = match fate {
                    Fate::Dropped => false,
                    Fate::Kept => true,
                    Fate::Torn => rng.below(2) == 1,
                };
                if keep {
                    let at = (offset + i as u64 * SECTOR) as usize;
                    image[at..at + sector.len()].copy_from_slice(sector);
                }
            }
        }
        image
    }
}

impl SimDisk {
    /// A copy of the durable image: what every crash keeps at least.
    pub fn snapshot_durable(&self) -> Vec<u8> {
        self.state().durable.clone()
    }

    /// A copy of the current image: what reads return now.
    pub fn snapshot_current(&self) -> Vec<u8> {
        self.state().current.clone()
    }

    /// Reads touching any byte of `range` fail with EIO (until cleared).
    pub fn fail_reads(&self, range: Range<u64>) {
        self.state().failing_reads.push(range);
    }

    /// Writes touching any byte of `range` fail with EIO and change nothing.
    pub fn fail_writes(&self, range: Range<u64>) {
        self.state().failing_writes.push(range);
    }

    /// While `on`, every flush fails with EIO and pending writes stay pending
    /// (the fsync-error case: the caller cannot know what is durable).
    pub fn fail_flushes(&self, on: bool) {
        self.state().failing_flushes = on;
    }

    /// The device dies once `n` more writes have completed: from then on every
    /// read, write and flush fails with EIO. `n == 0` kills it now. Pending
    /// writes stay pending, so [`crash`](Self::crash) still sees them.
    pub fn fail_after_writes(&self, n: u64) {
        let mut st = self.state();
        if n == 0 {
            st.dead = true;
        } else {
            st.writes_until_death = Some(n);
        }
    }

    /// Whether the device has died (see [`fail_after_writes`](Self::fail_after_writes)).
    pub fn is_dead(&self) -> bool {
        self.state().dead
    }

    /// Removes every injected fault and brings a dead device back (as after a
    /// reset; pending writes are kept).
    pub fn clear_faults(&self) {
        let mut st = self.state();
        st.failing_reads.clear();
        st.failing_writes.clear();
        st.failing_flushes = false;
        st.writes_until_death = None;
        st.dead = false;
    }

    /// Request counters so far.
    pub fn stats(&self) -> SimStats {
        let st = self.state();
        SimStats {
            pending_writes: st.pending.len() as u64,
            ..st.stats
        }
    }
}

impl State {
    /// Counts the failure and returns a bare EIO, exactly what the kernel
    /// would give, so code that checks `raw_os_error()` behaves the same on
    /// both devices.
    fn eio(&mut self) -> io::Error {
        self.stats.errors += 1;
        io::Error::from_raw_os_error(libc::EIO)
    }
}

fn touches(ranges: &[Range<u64>], offset: u64, end: u64) -> bool {
    offset < end && ranges.iter().any(|r| r.start < end && offset < r.end)
}

impl BlockDev for SimDisk {
    fn len(&self) -> u64 {
        self.state().current.len() as u64
    }

    fn boot_id(&self) -> [u8; 16] {
        self.boot
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut st = self.state();
        let end = check_request(st.current.len() as u64, offset, buf.len(), "read")?;
        if st.dead {
            return Err(st.eio());
        }
        if touches(&st.failing_reads, offset, end) {
            return Err(st.eio());
        }
        buf.copy_from_slice(&st.current[offset as usize..end as usize]);
        st.stats.reads += 1;
        st.stats.bytes_read += buf.len() as u64;
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state();
        let end = check_request(st.current.len() as u64, offset, buf.len(), "write")?;
        if st.dead {
            return Err(st.eio());
        }
        if touches(&st.failing_writes, offset, end) {
            return Err(st.eio());
        }
        st.current[offset as usize..end as usize].copy_from_slice(buf);
        if !buf.is_empty() {
            let seq = st.stats.writes;
            st.pending.push(PendingWrite {
                offset,
                data: buf.to_vec(),
                seq,
            });
        }
        st.stats.writes += 1;
        st.stats.bytes_written += buf.len() as u64;
        if let Some(left) = st.writes_until_death {
            let left = left - 1;
            st.writes_until_death = (left > 0).then_some(left);
            st.dead = left == 0;
        }
        if let Some((left, seed)) = st.capture {
            if left <= 1 {
                st.capture = None;
                st.captured = Some(st.crash_image(seed, &[]));
            } else {
                st.capture = Some((left - 1, seed));
            }
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flush_before(u64::MAX)
    }
}

impl SimDisk {
    /// Where the writes stand: the number of writes completed so far. A
    /// later [`flush_before`](Self::flush_before) with it covers exactly them.
    pub fn write_mark(&self) -> u64 {
        self.state().stats.writes
    }

    /// A flush that covers only the writes completed before `mark` (from
    /// [`write_mark`](Self::write_mark)); later ones stay pending. An
    /// asynchronous fsync: the writes that complete while it runs may or
    /// may not be covered, and this models "not".
    pub fn flush_before(&self, mark: u64) -> io::Result<()> {
        let mut st = self.state();
        if st.dead || st.failing_flushes {
            return Err(st.eio());
        }
        // Apply pending writes rather than copying `current`: cost follows
        // what was written, not the disk size. Pending writes are in
        // completion order, so those before `mark` come first.
        let State {
            durable, pending, ..
        } = &mut *st;
        let n = pending.iter().take_while(|w| w.seq < mark).count();
        for w in pending.drain(..n) {
            let at = w.offset as usize;
            durable[at..at + w.data.len()].copy_from_slice(&w.data);
        }
        st.stats.flushes += 1;
        Ok(())
    }
}

/// SplitMix64: tiny, fast, good enough for deterministic fault choices and
/// seeded test workloads (crash tests, fuzzers, benches use it too), and no
/// dependency whose output could change under us between versions.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    const S: usize = SECTOR as usize;

    fn read(dev: &dyn BlockDev, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        dev.read_at(&mut buf, offset).unwrap();
        buf
    }

    fn image(dev: &SimDisk) -> Vec<u8> {
        read(dev, 0, dev.len() as usize)
    }

    fn is_eio(r: io::Result<()>) -> bool {
        matches!(r, Err(e) if e.raw_os_error() == Some(libc::EIO))
    }

    /// A write of `sectors` sectors whose every sector is recognisable:
    /// filled with `tag` and the sector index.
    fn tagged(tag: u8, sectors: usize) -> Vec<u8> {
        let mut v = vec![tag; sectors * S];
        for i in 0..sectors {
            v[i * S] = i as u8;
        }
        v
    }

    #[test]
    fn reads_see_the_cache_and_flush_makes_it_durable() {
        let d = SimDisk::new(8 * SECTOR);
        d.write_at(&[7; 1024], 512).unwrap();
        assert_eq!(read(&d, 512, 1024), vec![7; 1024]);
        assert_eq!(read(&d, 0, 512), vec![0; 512]);
        assert!(d.snapshot_durable().iter().all(|&b| b == 0));
        assert_eq!(d.stats().pending_writes, 1);
        d.flush().unwrap();
        assert_eq!(d.snapshot_durable(), d.snapshot_current());
        assert_eq!(d.stats().pending_writes, 0);
        let s = d.stats();
        assert_eq!((s.reads, s.writes, s.flushes), (2, 1, 1));
        assert_eq!((s.bytes_read, s.bytes_written, s.errors), (1536, 1024, 0));
    }

    #[test]
    fn capture_is_the_crash_at_that_write_and_the_disk_goes_on() {
        let d = SimDisk::new(8192);
        d.write_at(&[1; 512], 0).unwrap();
        d.flush().unwrap();
        d.capture_after_writes(2, 5);
        d.write_at(&[2; 512], 512).unwrap();
        d.write_at(&[3; 512], 1024).unwrap();
        d.write_at(&[4; 512], 1536).unwrap();
        let cap = d.take_capture().expect("captured at the second write");
        let mut b = [0u8; 2048];
        cap.read_at(&mut b, 0).unwrap();
        assert_eq!(b[..512], [1; 512]);
        assert_eq!(b[1536..], [0; 512], "a write after the capture point");
        // Same as a crash at that instant with the same seed.
        let twin = SimDisk::new(8192);
        twin.write_at(&[1; 512], 0).unwrap();
        twin.flush().unwrap();
        twin.write_at(&[2; 512], 512).unwrap();
        twin.write_at(&[3; 512], 1024).unwrap();
        assert_eq!(cap.snapshot_durable(), twin.crash(5).snapshot_durable());
        assert!(d.take_capture().is_none());
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b[1536..], [4; 512]);
    }

    #[test]
    fn flush_before_a_mark_leaves_later_writes_pending() {
        let d = SimDisk::new(8 * SECTOR);
        d.write_at(&[1; 512], 0).unwrap();
        let mark = d.write_mark();
        d.write_at(&[2; 512], 512).unwrap();
        d.flush_before(mark).unwrap();
        assert_eq!(d.stats().pending_writes, 1);
        assert_eq!(
            d.snapshot_durable()[..1024],
            [[1u8; 512], [0; 512]].concat()
        );
        d.flush_before(d.write_mark()).unwrap();
        assert_eq!(d.snapshot_durable(), d.snapshot_current());
    }

    #[test]
    fn crash_after_flush_keeps_everything() {
        let d = SimDisk::new(16 * SECTOR);
        d.write_at(&tagged(1, 4), 0).unwrap();
        d.write_at(&tagged(2, 8), 4 * SECTOR).unwrap();
        d.flush().unwrap();
        for seed in 0..100 {
            assert_eq!(image(&d.crash(seed)), d.snapshot_current());
        }
    }

    #[test]
    fn crash_yields_only_allowed_sector_contents() {
        let sectors = 16;
        let d = SimDisk::new(sectors as u64 * SECTOR);
        d.write_at(&tagged(0x10, sectors), 0).unwrap();
        d.flush().unwrap();
        // Overlapping pending writes, each sector of each write distinct.
        let writes: [(u64, usize, u8); 4] =
            [(0, 8, 0x21), (4, 8, 0x22), (6, 2, 0x23), (12, 4, 0x24)];
        for &(at, n, tag) in &writes {
            d.write_at(&tagged(tag, n), at * SECTOR).unwrap();
        }
        let durable = d.snapshot_durable();
        // For each sector, the versions a crash may leave there.
        let allowed: Vec<HashSet<Vec<u8>>> = (0..sectors)
            .map(|s| {
                let mut set = HashSet::from([durable[s * S..(s + 1) * S].to_vec()]);
                for &(at, n, tag) in &writes {
                    let at = at as usize;
                    if (at..at + n).contains(&s) {
                        set.insert(tagged(tag, n)[(s - at) * S..(s - at + 1) * S].to_vec());
                    }
                }
                set
            })
            .collect();
        let mut seen: Vec<HashSet<Vec<u8>>> = vec![HashSet::new(); sectors];
        let (mut reordered, mut torn) = (false, false);
        for seed in 0..2000 {
            let img = image(&d.crash(seed));
            for s in 0..sectors {
                let got = img[s * S..(s + 1) * S].to_vec();
                assert!(
                    allowed[s].contains(&got),
                    "seed {seed}: sector {s} holds data no write put there"
                );
                seen[s].insert(got);
            }
            // Write 4 (sectors 12..16) survived, write 1's exclusive sectors (0..4) lost.
            if img[12 * S + 1] == 0x24 && img[1] == 0x10 && img[S + 1] == 0x10 {
                reordered = true;
            }
            // Write 4 partly there.
            let w4: Vec<bool> = (12..16).map(|s| img[s * S + 1] == 0x24).collect();
            if w4.contains(&true) && w4.contains(&false) {
                torn = true;
            }
        }
        // Every allowed version of every sector shows up under some seed.
        assert_eq!(seen, allowed);
        assert!(reordered && torn);
        // The original disk is untouched by all those crashes.
        assert_eq!(d.stats().pending_writes, 4);
        assert_eq!(d.snapshot_durable(), durable);
    }

    #[test]
    fn crash_is_deterministic_per_seed_and_varies_across_seeds() {
        let d = SimDisk::new(64 * SECTOR);
        for i in 0..16u8 {
            d.write_at(&tagged(i + 1, 4), (i as u64 * 4) * SECTOR)
                .unwrap();
        }
        let mut distinct = HashSet::new();
        for seed in 0..50 {
            let a = image(&d.crash(seed));
            assert_eq!(a, image(&d.crash(seed)), "seed {seed}");
            distinct.insert(a);
        }
        assert!(
            distinct.len() >= 45,
            "only {} distinct images",
            distinct.len()
        );
    }

    #[test]
    fn crashed_disk_is_a_fresh_independent_device() {
        let d = SimDisk::new(8 * SECTOR);
        d.write_at(&[1; 512], 0).unwrap();
        d.fail_reads(0..4096);
        let c = d.crash(3);
        assert_eq!(c.stats(), SimStats::default());
        c.write_at(&[9; 512], 512).unwrap();
        c.flush().unwrap();
        assert_eq!(read(&c, 512, 512), vec![9; 512]);
        assert!(
            is_eio(d.read_at(&mut [0; 512], 512)),
            "faults stay on the original"
        );
        d.clear_faults();
        assert_eq!(read(&d, 512, 512), vec![0; 512]);
    }

    #[test]
    fn injected_read_and_write_faults() {
        let d = SimDisk::new(16 * SECTOR);
        d.fail_reads(1000..1001);
        assert!(is_eio(d.read_at(&mut [0; 512], 512)));
        assert!(is_eio(d.read_at(&mut [0; 4096], 0)));
        d.read_at(&mut [0; 512], 0).unwrap();
        d.read_at(&mut [0; 512], 1024).unwrap();
        d.read_at(&mut [], 512).unwrap();

        d.fail_writes(2048..2560);
        assert!(is_eio(d.write_at(&[5; 1024], 1536)));
        assert_eq!(
            d.snapshot_current(),
            vec![0; 16 * S],
            "a failed write changes nothing"
        );
        d.write_at(&[5; 512], 1536).unwrap();

        d.fail_flushes(true);
        assert!(is_eio(d.flush()));
        assert_eq!(
            d.stats().pending_writes,
            1,
            "a failed flush leaves writes pending"
        );
        d.fail_flushes(false);
        d.flush().unwrap();
        assert_eq!(d.stats().errors, 4);
    }

    #[test]
    fn device_dies_after_n_writes() {
        let d = SimDisk::new(16 * SECTOR);
        d.fail_after_writes(2);
        d.write_at(&[1; 512], 0).unwrap();
        assert!(!d.is_dead());
        d.read_at(&mut [0; 512], 0).unwrap();
        d.write_at(&[2; 512], 512).unwrap();
        assert!(d.is_dead());
        assert!(is_eio(d.write_at(&[3; 512], 1024)));
        assert!(is_eio(d.read_at(&mut [0; 512], 0)));
        assert!(is_eio(d.flush()));
        // The two completed writes are still pending: a crash may keep them.
        let kept = (0..100).any(|seed| image(&d.crash(seed))[512] == 2);
        assert!(kept);
        d.clear_faults();
        d.flush().unwrap();
        assert_eq!(
            read(&d, 0, 1024)[..],
            [vec![1; 512], vec![2; 512]].concat()[..]
        );
        d.fail_after_writes(0);
        assert!(d.is_dead());
    }

    #[test]
    fn bad_requests_fail_cleanly() {
        let d = SimDisk::new(8 * SECTOR + 100);
        assert_eq!(d.len(), 8 * SECTOR, "length rounds down to a sector");
        let kind = |r: io::Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(d.read_at(&mut [0; 512], 1)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(kind(d.write_at(&[0; 511], 0)), io::ErrorKind::InvalidInput);
        assert_eq!(
            kind(d.read_at(&mut [0; 1024], 7 * SECTOR)),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            kind(d.write_at(&[0; 512], u64::MAX - 511)),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(d.stats().errors, 0, "argument errors are not device errors");
        assert!(SimDisk::from_image(vec![0; 100]).is_err());
        let d = SimDisk::from_image(vec![3; 1024]).unwrap();
        assert_eq!(d.snapshot_durable(), vec![3; 1024]);
        assert_eq!(SimDisk::new(0).len(), 0);
    }

    #[test]
    fn shared_through_arc_as_a_trait_object() {
        let d = Arc::new(SimDisk::new(8 * SECTOR));
        let dev: Arc<dyn BlockDev> = d.clone();
        dev.write_at(&[4; 512], 0).unwrap();
        dev.flush().unwrap();
        assert_eq!(image(&d.crash(1))[..512], [4; 512]);
    }

    /// Random workloads, each crashed at several points: every sector written
    /// before the last completed flush (and not rewritten since) survives every
    /// crash, and no sector ever holds data nobody wrote there.
    #[test]
    fn property_flushed_writes_survive_every_crash() {
        const SECTORS: usize = 32;
        for seed in 0..1000u64 {
            let mut rng = SplitMix64::new(seed);
            let d = SimDisk::new((SECTORS * S) as u64);
            // The image as of the last completed flush, and per sector the
            // versions written since.
            let mut flushed = vec![0u8; SECTORS * S];
            let mut since: Vec<Vec<Vec<u8>>> = vec![Vec::new(); SECTORS];
            let ops = 1 + rng.below(40);
            for op in 0..ops {
                if rng.below(5) == 0 {
                    d.flush().unwrap();
                    flushed = d.snapshot_current();
                    since.iter_mut().for_each(Vec::clear);
                } else {
                    let at = rng.below(SECTORS as u64) as usize;
                    let n = 1 + rng.below((SECTORS - at).min(8) as u64) as usize;
                    let data: Vec<u8> = (0..n * S).map(|_| rng.next_u64() as u8).collect();
                    d.write_at(&data, (at * S) as u64).unwrap();
                    for i in 0..n {
                        since[at + i].push(data[i * S..(i + 1) * S].to_vec());
                    }
                }
                if rng.below(4) == 0 || op + 1 == ops {
                    let crash_seed = rng.next_u64();
                    let img = image(&d.crash(crash_seed));
                    for s in 0..SECTORS {
                        let got = &img[s * S..(s + 1) * S];
                        let old = &flushed[s * S..(s + 1) * S];
                        assert!(
                            got == old || since[s].iter().any(|v| v == got),
                            "workload {seed}, op {op}, crash seed {crash_seed}: sector {s} lost flushed data or holds garbage"
                        );
                    }
                }
            }
        }
    }
}
