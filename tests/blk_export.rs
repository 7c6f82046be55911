//! vswitchd's vhost-user-blk exports driven by a real client (libblkio,
//! validated against qemu-storage-daemon in `blk_client_selftest.rs`):
//! data written reads back, flush, discard and write-zeroes read zeros and
//! return space, out-of-range and read-only errors, several queues at once,
//! a client leaving mid-I/O and the next one finding its data, and a full
//! pool failing only the writes that need space.

mod blk_support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use blk_support::*;
use fabric::Daemon;

const MIB: u64 = 1 << 20;

/// A daemon serving the volumes of one pool, everything in a fresh directory
/// under `$VBLOCK_TEST_DIR` or /var/tmp (the pool is opened O_DIRECT).
struct BlkFabric {
    daemon: Option<Daemon>,
    dir: PathBuf,
}

impl BlkFabric {
    /// `volumes`: the `[[pool.volume]]` tables (TOML text).
    fn start(pool_extra: &str, volumes: &str) -> BlkFabric {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("VBLOCK_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = base.join(format!(
            "blkx-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = format!(
            "[daemon]\nrun_dir = \"run\"\n[[pool]]\nname = \"p0\"\npath = \"pool.img\"\nsize = \"64M\"\n{pool_extra}\n{volumes}\n"
        );
        let path = dir.join("fabric.toml");
        std::fs::write(&path, toml).unwrap();
        let config = fabric_config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let daemon = Daemon::start(&config).unwrap_or_else(|e| panic!("daemon: {e}"));
        BlkFabric {
            daemon: Some(daemon),
            dir,
        }
    }

    fn socket(&self, volume: &str) -> PathBuf {
        self.dir.join("run").join(format!("{volume}.sock"))
    }

    fn connect(&self, volume: &str, queues: usize) -> BlkClient {
        BlkClient::connect(&self.socket(volume), queues)
            .unwrap_or_else(|e| panic!("client connects to {volume}: {e}"))
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    fn allocated(&self, volume: &str) -> u64 {
        let pool = self.daemon().pool("p0").unwrap();
        let p = pool.lock().unwrap();
        p.volume(volume).unwrap().allocated
    }
}

impl Drop for BlkFabric {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
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
