//! vswitchd's vhost-user-blk exports driven by a real client (libblkio,
//! validated against qemu-storage-daemon in `blk_client_selftest.rs`):
//! data written reads back, flush, discard and write-zeroes read zeros and
//! return space, out-of-range and read-only errors, several queues at once,
//! a client leaving mid-I/O and the next one finding its data, and a full
//! pool failing only the writes that need space.

use test_kit::blkio as blk_support;

use blk_support::daemon_host::{pool_toml, DaemonHost};
use blk_support::*;

const MIB: u64 = 1 << 20;

/// A daemon serving the volumes of one pool, everything in a fresh directory
/// under `$VBLOCK_TEST_DIR` or /var/tmp (the pool is opened O_DIRECT).
struct BlkFabric(DaemonHost);

impl BlkFabric {
    /// `volumes`: the `[[pool.volume]]` tables (TOML text).
    fn start(pool_extra: &str, volumes: &str) -> BlkFabric {
        Self::start_sized("64M", pool_extra, volumes)
    }

    fn start_sized(pool_size: &str, pool_extra: &str, volumes: &str) -> BlkFabric {
        let toml = pool_toml(pool_size, pool_extra, volumes);
        BlkFabric(DaemonHost::start("blkx", &toml))
    }

    /// Stops the daemon and starts it again on a new volume list (same pool).
    fn restart(mut self, volumes: &str) -> BlkFabric {
        self.0.restart(Some(&pool_toml("64M", "", volumes)));
        self
    }

    fn connect(&self, volume: &str, queues: usize) -> BlkClient {
        BlkClient::connect(&self.socket(volume), queues)
            .unwrap_or_else(|e| panic!("client connects to {volume}: {e}"))
    }

    fn allocated(&self, volume: &str) -> u64 {
        let pool = self.daemon().pool("p0").unwrap();
        let p = pool.lock().unwrap();
        p.volume(volume).unwrap().allocated
    }
}

/// The host's daemon, sockets, counters and pool check.
impl std::ops::Deref for BlkFabric {
    type Target = DaemonHost;
    fn deref(&self) -> &DaemonHost {
        &self.0
    }
}

#[test]
fn write_read_flush_and_the_device_as_seen() {
    let f = BlkFabric::start(
        "",
        "[[pool.volume]]\nname = \"d\"\nsize = \"32M\"\nexport = { queues = 1 }\n",
    );
    let mut c = f.connect("d", 1);
    assert_eq!(c.capacity(), 32 * MIB);
    assert!(!c.read_only());
    let q = c.queue(0);
    // Unwritten reads as zeros.
    assert!(q.read_vec(0, 8192).unwrap().iter().all(|&b| b == 0));
    for (i, off) in [0u64, 4096, 100 * 4096, 32 * MIB - 65536]
        .iter()
        .enumerate()
    {
        q.write_pattern(i as u64 + 1, *off, 65536).unwrap();
    }
    q.flush().unwrap();
    for (i, off) in [0u64, 4096, 100 * 4096, 32 * MIB - 65536]
        .iter()
        .enumerate()
    {
        if i == 0 {
            continue; // overwritten by the second pattern from 4096 on
        }
        q.verify_pattern(i as u64 + 1, *off, 65536).unwrap();
    }
    // Thin: only what was written is allocated.
    let alloc = f.allocated("d");
    assert!(alloc > 0 && alloc <= 8 * MIB, "allocated {alloc}");
}

#[test]
fn discard_and_write_zeroes_read_zeros_and_return_space() {
    let f = BlkFabric::start(
        "",
        "[[pool.volume]]\nname = \"d\"\nsize = \"32M\"\nexport = {}\n",
    );
    let mut c = f.connect("d", 1);
    let q = c.queue(0);
    q.write_pattern(7, 0, 4 * MIB as usize).unwrap();
    q.flush().unwrap();
    let before = f.allocated("d");
    assert_eq!(before, 4 * MIB);
    // Whole clusters released, partial ones zeroed.
    q.discard(0, 2 * MIB).unwrap();
    q.write_zeroes(2 * MIB + 512, MIB, true).unwrap();
    q.flush().unwrap();
    assert!(q
        .read_vec(0, 2 * MIB as usize)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    let mid = q.read_vec(2 * MIB, MIB as usize + 1024).unwrap();
    assert_eq!(mid[..512], pattern::pattern(7, 2 * MIB, 512)[..]);
    assert!(mid[512..512 + MIB as usize].iter().all(|&b| b == 0));
    q.verify_pattern(7, 3 * MIB + 512, MIB as usize - 512)
        .unwrap();
    let after = f.allocated("d");
    assert!(
        after <= before - 2 * MIB - MIB + 32 * 1024,
        "{before} -> {after}"
    );
    let space = f.daemon().pool("p0").unwrap().lock().unwrap().space();
    assert_eq!(
        space.releasing_clusters, 0,
        "released clusters are free after the flush"
    );
}

#[test]
fn out_of_range_and_read_only_are_refused() {
    let f = BlkFabric::start(
        "",
        "[[pool.volume]]\nname = \"d\"\nsize = \"16M\"\nexport = {}\n\
         [[pool.volume]]\nname = \"s\"\nsnapshot_of = \"d\"\nexport = {}\n\
         [[pool.volume]]\nname = \"ro\"\nsize = \"1M\"\nexport = { read_only = true }\n",
    );
    let mut c = f.connect("d", 1);
    let q = c.queue(0);
    let e = q.read_vec(16 * MIB, 4096).unwrap_err();
    assert!(e.is_ioerr(), "{e}");
    let e = q.write(16 * MIB - 512, &[1u8; 1024]).unwrap_err();
    assert!(e.is_ioerr(), "{e}");
    // Still serving after the errors.
    q.write_pattern(1, 0, 4096).unwrap();
    q.verify_pattern(1, 0, 4096).unwrap();
    for vol in ["s", "ro"] {
        let mut c = f.connect(vol, 1);
        assert!(c.read_only(), "{vol} is exported read-only");
        let q = c.queue(0);
        let e = q.write(0, &[1u8; 512]).unwrap_err();
        assert!(e.is_read_only() || e.is_ioerr(), "{vol}: {e}");
        assert!(q.read_vec(0, 512).unwrap().iter().all(|&b| b == 0));
    }
}

#[test]
fn several_queues_at_once() {
    let f = BlkFabric::start(
        "",
        "[[pool.volume]]\nname = \"d\"\nsize = \"32M\"\nexport = { queues = 4 }\n",
    );
    let mut c = f.connect("d", 4);
    assert_eq!(c.num_queues(), 4);
    // write_pattern splits 1 MiB into requests of the device's largest chunk.
    let chunk = c.queue(0).max_chunk() as u64;
    let per_mib = MIB.div_ceil(chunk);
    // Each queue writes and verifies its own 8 MiB region, in parallel.
    std::thread::scope(|s| {
        for (i, q) in c.queues_mut().iter_mut().enumerate() {
            s.spawn(move || {
                let base = i as u64 * 8 * MIB;
                for round in 0..8u64 {
                    let off = base + round * MIB;
                    q.write_pattern(100 + i as u64, off, MIB as usize).unwrap();
                }
                q.flush().unwrap();
                for round in 0..8u64 {
                    q.verify_pattern(100 + i as u64, base + round * MIB, MIB as usize)
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(
        f.counter("d", "writes"),
        32 * per_mib,
        "{}",
        f.counter_line("d")
    );
}

#[test]
fn a_client_leaving_mid_io_and_the_next_one() {
    const WRITES: u64 = 32;
    // Old content: seed 4 over the whole range, flushed; new: seed 7.
    const OLD: u64 = 4;
    const NEW: u64 = 7;
    let f = BlkFabric::start(
        "",
        "[[pool.volume]]\nname = \"d\"\nsize = \"32M\"\nexport = { queues = 2 }\n",
    );
    let region = 8 * MIB;
    let len;
    {
        let mut c = f.connect("d", 2);
        let q = c.queue(0);
        q.write_pattern(5, 0, 2 * MIB as usize).unwrap();
        let q = c.queue(1);
        len = (q.buffer_len() / WRITES as usize)
            .min(q.max_chunk())
            .min(64 * 1024)
            / 512
            * 512;
        q.write_pattern(OLD, region, WRITES as usize * len).unwrap();
        q.flush().unwrap();
        let writes_before = f.counter("d", "writes");
        // 32 writes in flight, each from its own part of the buffer.
        for i in 0..WRITES as usize {
            let offset = region + (i * len) as u64;
            let part = &mut q.buffer_mut()[i * len..(i + 1) * len];
            blk_support::fill_pattern(NEW, offset, part);
            q.submit(
                blk_support::client::Req::Write {
                    offset,
                    buf_off: i * len,
                    len,
                    fua: false,
                },
                i,
            );
        }
        // Send them (a wait for none), see the device take every one, then go
        // away without waiting for a completion.
        let mut none = Vec::new();
        q.wait(0, &mut none).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while f.counter("d", "writes") < writes_before + WRITES {
            assert!(
                std::time::Instant::now() < deadline,
                "the device did not take the 32 writes: {}",
                f.counter_line("d")
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(f.counter("d", "writes"), writes_before + WRITES);
    }
    // The next client connects, finds the flushed data, and works.
    let mut c = f.connect("d", 2);
    let q = c.queue(0);
    q.verify_pattern(5, 0, 2 * MIB as usize).unwrap();
    // Each sector of the abandoned writes holds the old data or the new, nothing else.
    let total = WRITES as usize * len;
    let back = q.read_vec(region, total).unwrap();
    let kinds = blk_support::pattern::classify_sectors(&[OLD, NEW], region, &back);
    let odd: Vec<usize> = kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| !matches!(k, blk_support::pattern::SectorIs::Seed(_)))
        .map(|(i, _)| i)
        .collect();
    assert!(odd.is_empty(), "sectors neither old nor new: {odd:?}");
    q.write_pattern(6, 16 * MIB, MIB as usize).unwrap();
    q.verify_pattern(6, 16 * MIB, MIB as usize).unwrap();
    f.check_pool();
}

#[test]
fn a_full_pool_fails_only_the_writes_that_need_space() {
    // 16 MiB of volume on a pool with room for less.
    let f = BlkFabric::start_sized(
        "8M",
        "overcommit = true",
        "[[pool.volume]]\nname = \"d\"\nsize = \"16M\"\nexport = {}\n",
    );
    let mut c = f.connect("d", 1);
    let q = c.queue(0);
    // One request per write: the one that finds the pool full is the only failure.
    let chunk = q.max_chunk() as u64;
    let mut written = 0;
    let err = loop {
        match q.write_pattern(9, written, chunk as usize) {
            Ok(()) => written += chunk,
            Err(e) => break e,
        }
        assert!(written < 16 * MIB, "the pool never filled");
    };
    assert!(err.is_ioerr(), "{err}");
    assert!(written >= 4 * MIB, "only {written} bytes fit");
    // What was written reads back; overwrites in place still work.
    q.verify_pattern(9, 0, written as usize).unwrap();
    q.write_pattern(10, 0, chunk as usize).unwrap();
    q.flush().unwrap();
    q.verify_pattern(10, 0, chunk as usize).unwrap();
    assert_eq!(f.counter("d", "out_of_space"), 1, "{}", f.counter_line("d"));
    // Freeing space lets writes continue.
    q.discard(0, 2 * MIB).unwrap();
    q.flush().unwrap();
    q.write_pattern(11, written, chunk as usize).unwrap();
    q.verify_pattern(11, written, chunk as usize).unwrap();
}

#[test]
fn restart_keeps_data_and_a_snapshot_shows_it_as_of_then() {
    let base = "[[pool.volume]]\nname = \"d\"\nsize = \"16M\"\nexport = {}\n";
    let f = BlkFabric::start("", base);
    let dir = f.dir().to_path_buf();
    {
        let mut c = f.connect("d", 1);
        c.queue(0).write_pattern(21, 0, 4 * MIB as usize).unwrap();
        c.queue(0).flush().unwrap();
    }
    let f = f.restart(&format!(
        "{base}[[pool.volume]]\nname = \"snap\"\nsnapshot_of = \"d\"\nexport = {{}}\n"
    ));
    assert_eq!(f.dir(), dir);
    let mut c = f.connect("d", 1);
    c.queue(0).verify_pattern(21, 0, 4 * MIB as usize).unwrap();
    c.queue(0).write_pattern(22, 0, 2 * MIB as usize).unwrap();
    c.queue(0).flush().unwrap();
    let mut s = f.connect("snap", 1);
    assert!(s.read_only());
    s.queue(0).verify_pattern(21, 0, 4 * MIB as usize).unwrap();
}

#[test]
fn a_backing_device_error_fails_that_request_only() {
    let f = BlkFabric::start(
        "",
        "[[pool.volume]]\nname = \"d\"\nsize = \"16M\"\nexport = {}\n",
    );
    let mut c = f.connect("d", 1);
    let q = c.queue(0);
    q.write_pattern(31, 0, 2 * MIB as usize).unwrap();
    q.flush().unwrap();
    // Make the device range of the volume's first cluster fail, as a bad
    // sector would.
    let pool = f.daemon().pool("p0").unwrap().clone();
    let (faults, range) = {
        let p = pool.lock().unwrap();
        let id = p.id("d").unwrap();
        let pc = p.metadata().lookup(id, 0).unwrap().unwrap().pcluster;
        let off = p.cluster_offset(pc);
        (p.io_faults().clone(), off..off + 4096)
    };
    faults.fail(range);
    let e = q.read_vec(0, 4096).unwrap_err();
    assert!(e.is_ioerr(), "{e}");
    // The rest of the disk, and the daemon, carry on.
    q.verify_pattern(31, MIB, MIB as usize).unwrap();
    assert_eq!(f.counter("d", "io_errors"), 1, "{}", f.counter_line("d"));
    faults.clear();
    q.verify_pattern(31, 0, 4096).unwrap();
}
