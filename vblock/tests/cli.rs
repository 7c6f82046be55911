//! The `vblock` binary end to end: pools and volumes through the command
//! line, and `check` on good pools and on damaged ones (every damage must be
//! reported with a non-zero exit status, never a panic).
//!
//! Pool files live in `$VBLOCK_TEST_DIR` or /var/tmp: the pool opens its
//! device O_DIRECT, which tmpfs (often /tmp) refuses.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use vblock::dev::FileDev;
use vblock::format::{pick, JournalBlock, Record, Superblock, BLOCK_SIZE};
use vblock::pool::Pool;

/// A scratch directory on a filesystem that supports O_DIRECT, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::var_os("VBLOCK_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = base.join(format!(
            "vblock-cli-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("UTF-8 path").to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary; whatever the outcome, it must not have panicked.
fn vblock(args: &[&str]) -> Outcome {
    let o = Command::new(env!("CARGO_BIN_EXE_vblock"))
        .args(args)
        .output()
        .expect("run vblock");
    let r = Outcome {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        !r.stderr.contains("panicked") && r.code.is_some() && r.code != Some(101),
        "vblock {args:?} panicked or was killed ({:?}):\n{}",
        r.code,
        r.stderr
    );
    r
}

/// Runs the binary and expects success; returns its output.
fn ok(args: &[&str]) -> String {
    let r = vblock(args);
    assert_eq!(
        r.code,
        Some(0),
        "vblock {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// Runs the binary and expects exit status `code` with a `vblock: ` message.
fn fails(code: i32, args: &[&str]) -> Outcome {
    let r = vblock(args);
    assert_eq!(
        r.code,
        Some(code),
        "vblock {args:?}: expected exit status {code}\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.starts_with("vblock: "), "stderr: {}", r.stderr);
    r
}

/// The line of a `volume list` table whose first column is `name`.
fn row<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    list.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

fn read_at(path: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    File::open(path)
        .expect("open")
        .read_exact_at(&mut buf, offset)
        .expect("read");
    buf
}

fn write_at(path: &str, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(bytes, offset).expect("write");
    f.sync_all().expect("sync");
}

/// The superblock copy the pool uses.
fn superblock(path: &str) -> Superblock {
    let b = read_at(path, 0, 2 * BLOCK_SIZE);
    pick(
        Superblock::decode(&b[..BLOCK_SIZE]),
        Superblock::decode(&b[BLOCK_SIZE..]),
    )
    .expect("a valid superblock")
}

/// Byte offset of the journal block replay starts at.
fn head_block(path: &str) -> u64 {
    let sb = superblock(path);
    sb.journal_off + sb.journal_head * BLOCK_SIZE as u64
}

/// A block image with its crc32c (last 4 bytes, over the rest) made valid.
fn fix_journal_crc(block: &mut [u8]) {
    let crc = crc32c::crc32c(&block[..BLOCK_SIZE - 4]);
    block[BLOCK_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// A superblock copy with its crc32c (offset 92, computed with the field
/// zeroed) made valid.
fn fix_superblock_crc(block: &mut [u8]) {
    block[92..96].fill(0);
    let crc = crc32c::crc32c(&block[..BLOCK_SIZE]);
    block[92..96].copy_from_slice(&crc.to_le_bytes());
}

/// A checkpoint link with its crc32c (offset 28, over the header with the
/// field zeroed and the `used` payload bytes) made valid.
fn fix_checkpoint_crc(cluster: &mut [u8]) {
    let used = u32::from_le_bytes(cluster[20..24].try_into().unwrap()) as usize;
    let end = (32 + used).min(cluster.len());
    cluster[28..32].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&cluster[..32]), &cluster[32..end]);
    cluster[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// A pool of 32 MiB with a 1 MiB journal and one 8 MiB volume "a", created
/// last: the journal block at the head holds its `CreateVolume` record and
/// the `DataDurable` its commit ends with.
fn pool_with_volume(dir: &Scratch) -> String {
    let p = dir.path("pool");
    ok(&["pool", "create", &p, "--size", "32M", "--journal", "1M"]);
    ok(&["volume", "create", &p, "a", "--size", "8M"]);
    let block = read_at(&p, head_block(&p), BLOCK_SIZE);
    let decoded = JournalBlock::decode(&block).expect("the head block holds records");
    assert!(matches!(
        decoded.records.as_slice(),
        [Record::CreateVolume { name, .. }, Record::DataDurable] if name == "a"
    ));
    p
}

/// Damaged pools are refused by every command that loads them, and the
/// refusal names `expect`; the file is left as it was.
fn refused_everywhere(p: &str, expect: &str) {
    let before = std::fs::read(p).expect("read the pool");
    for args in [
        &["check", p][..],
        &["dump", p],
        &["pool", "info", p],
        &["volume", "list", p],
        &["volume", "create", p, "new", "--size", "1M"],
    ] {
        let r = fails(1, args);
        assert!(
            r.stderr.to_lowercase().contains(&expect.to_lowercase()),
            "vblock {args:?}: expected {expect:?} in: {}",
            r.stderr
        );
    }
    assert!(
        std::fs::read(p).expect("read the pool") == before,
        "the pool changed"
    );
}

#[test]
fn usage_and_command_line_errors() {
    let out = ok(&[]);
    assert!(out.contains("usage:") && out.contains("vblock check <pool>"));
    assert!(ok(&["--help"]).contains("usage:"));
    assert!(ok(&["volume", "create", "--help"]).contains("usage:"));
    let r = fails(2, &["frobnicate"]);
    assert!(r.stderr.contains("unknown command") && r.stderr.contains("--help"));
    fails(2, &["pool", "create", "/nonexistent/p", "--size", "12X"]);
    fails(2, &["pool", "create", "/nonexistent/p", "--size"]);
    fails(2, &["pool", "create", "/nonexistent/p"]);
    fails(2, &["volume", "list"]);
    fails(2, &["volume", "list", "a", "b"]);
    fails(
        2,
        &["volume", "create", "p", "a", "--size", "1M", "--bogus"],
    );
    fails(
        2,
        &[
            "volume",
            "create",
            "p",
            "a",
            "--size",
            "1M",
            "--block-size",
            "1024",
        ],
    );
    fails(2, &["snapshot", "p", "a"]);
    let r = fails(1, &["check", "/nonexistent/pool"]);
    assert!(r.stderr.contains("/nonexistent/pool"), "{}", r.stderr);
}

#[test]
fn create_pool_and_info() {
    let dir = Scratch::new();
    let p = dir.path("pool");
    let out = ok(&[
        "pool",
        "create",
        &p,
        "--size",
        "32M",
        "--cluster-size",
        "64K",
        "--journal",
        "1M",
    ]);
    assert!(out.contains("created pool"), "{out}");
    let info = ok(&["pool", "info", &p]);
    for want in [
        "uuid:",
        "format version:  3",
        "cluster size:    65536 (64 KiB)",
        "journal:         1048576 bytes (1 MiB, 256 blocks)",
        "capacity:",
        "used:",
        "  metadata:      1 cluster",
        "free:",
        "releasing:       0 clusters",
        "provisioned:     0 bytes (0 B), over-commit 0.00x",
        "volumes:         0",
    ] {
        assert!(info.contains(want), "missing {want:?} in:\n{info}");
    }

    // An existing pool is not overwritten without --force.
    let r = fails(1, &["pool", "create", &p, "--size", "32M"]);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    ok(&["volume", "create", &p, "a", "--size", "1M"]);
    ok(&["pool", "create", &p, "--size", "16M", "--force"]);
    assert!(ok(&["pool", "info", &p]).contains("volumes:         0"));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 16 << 20);

    // Impossible geometry: refused before a file is left behind.
    let q = dir.path("small");
    fails(1, &["pool", "create", &q, "--size", "64K"]);
    fails(
        1,
        &[
            "pool",
            "create",
            &q,
            "--size",
            "1M",
            "--cluster-size",
            "3000",
        ],
    );
    fails(1, &["pool", "create", &q, "--size", "1000"]);
    assert!(!std::path::Path::new(&q).exists());
}

#[test]
fn volume_lifecycle() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    ok(&[
        "volume",
        "create",
        &p,
        "big",
        "--size",
        "1T",
        "--block-size",
        "4096",
    ]);
    let list = ok(&["volume", "list", &p]);
    let header = list.lines().next().unwrap();
    for col in [
        "NAME",
        "KIND",
        "SIZE",
        "ALLOCATED",
        "EXCLUSIVE",
        "BLOCK",
        "RO",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let a = row(&list, "a").expect("a listed");
    assert!(a.contains("volume") && a.contains("8 MiB") && a.contains("512") && a.ends_with("no"));
    let big = row(&list, "big").expect("big listed");
    assert!(big.contains("1 TiB") && big.contains("4096"), "{big}");
    assert!(ok(&["pool", "info", &p]).contains("volumes:         2"));

    ok(&["volume", "resize", &p, "a", "--size", "16M"]);
    assert!(row(&ok(&["volume", "list", &p]), "a")
        .unwrap()
        .contains("16 MiB"));
    let r = fails(1, &["volume", "resize", &p, "a", "--size", "4M"]);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert!(row(&ok(&["volume", "list", &p]), "a")
        .unwrap()
        .contains("16 MiB"));
    ok(&["volume", "resize", &p, "a", "--size", "4M", "--force"]);
    assert!(row(&ok(&["volume", "list", &p]), "a")
        .unwrap()
        .contains("4 MiB"));
    fails(1, &["volume", "resize", &p, "a", "--size", "1000"]);

    ok(&["volume", "rename", &p, "a", "a2"]);
    let list = ok(&["volume", "list", &p]);
    assert!(
        row(&list, "a").is_none() && row(&list, "a2").is_some(),
        "{list}"
    );
    let r = fails(1, &["volume", "rename", &p, "a2", "big"]);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    fails(1, &["volume", "create", &p, "a2", "--size", "1M"]);

    ok(&["volume", "delete", &p, "big"]);
    assert!(row(&ok(&["volume", "list", &p]), "big").is_none());
    let r = fails(1, &["volume", "delete", &p, "big"]);
    assert!(r.stderr.contains("no volume named \"big\""), "{}", r.stderr);
    // A name that looks like an option, after --.
    ok(&["volume", "create", &p, "--size", "1M", "--", "-odd"]);
    assert!(row(&ok(&["volume", "list", &p]), "-odd").is_some());
    assert!(ok(&["check", &p]).contains("ok: no problems found"));
}

/// `--block-size` reads the size grammar of every other size (and of
/// `fabricctl volume create --block-size`), so `4KiB` is 4096 as `4K` is.
#[test]
fn block_size_takes_the_size_grammar() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    for (name, given, want) in [
        ("k", "4K", "4096"),
        ("kib", "4KiB", "4096"),
        ("b", "512B", "512"),
    ] {
        ok(&[
            "volume",
            "create",
            &p,
            name,
            "--size",
            "1M",
            "--block-size",
            given,
        ]);
        let list = ok(&["volume", "list", &p]);
        let words: Vec<&str> = row(&list, name)
            .expect("listed")
            .split_whitespace()
            .collect();
        // ... BLOCK RO: the block size is the next-to-last column.
        assert_eq!(words[words.len() - 2], want, "{given}: {list}");
    }
    let r = fails(
        2,
        &[
            "volume",
            "create",
            &p,
            "x",
            "--size",
            "1M",
            "--block-size",
            "4KB",
        ],
    );
    assert!(
        r.stderr
            .starts_with("vblock: --block-size \"4KB\": not a size"),
        "{}",
        r.stderr
    );
}

#[test]
fn snapshots_and_clones_are_listed_with_their_kind() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    ok(&["snapshot", &p, "a", "snap"]);
    ok(&["clone", &p, "snap", "copy"]);
    let list = ok(&["volume", "list", &p]);
    let snap = row(&list, "snap").expect("snapshot listed");
    assert!(snap.contains("snapshot") && snap.ends_with("yes"), "{snap}");
    let copy = row(&list, "copy").expect("clone listed");
    assert!(copy.contains("clone") && copy.ends_with("no"), "{copy}");
    fails(1, &["volume", "resize", &p, "snap", "--size", "16M"]);
    fails(1, &["snapshot", &p, "missing", "s2"]);
    fails(1, &["clone", &p, "a", "copy"]);
    assert!(ok(&["check", &p]).contains("ok: no problems found"));
}

#[test]
fn check_reports_what_it_found() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    let out = ok(&["check", &p]);
    for want in [
        "superblock: copy",
        "checkpoint: 1 cluster",
        "journal: replayed 1 block (2 records)",
        "journal end: block",
        "metadata: 1 volume, 0 mapped clusters",
        "ok: no problems found",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn dump_prints_volumes_and_runs() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    // Data goes through the library: the CLI has no data path.
    {
        let mut pool = Pool::open(FileDev::open(&p).unwrap()).unwrap();
        let a = pool.id("a").unwrap();
        let c = pool.metadata().cluster_size() as usize;
        pool.write(a, 0, &vec![0xab; 3 * c]).unwrap();
        pool.write(a, 10 * c as u64, &vec![0xcd; c]).unwrap();
        pool.flush().unwrap();
    }
    ok(&["snapshot", &p, "a", "s"]);
    let out = ok(&["dump", &p]);
    for want in [
        "superblock copy",
        "journal_head",
        "checkpoint: 1 cluster",
        "volumes: 2",
        "volume 1 \"a\": volume, 8388608 bytes",
        "volume 2 \"s\": snapshot",
        "space:",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let runs: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(" -> "))
        .collect();
    // Both volumes: clusters 0..3 in one run, 10 alone.
    assert_eq!(runs.len(), 4, "{out}");
    assert_eq!(runs[0], runs[2]);
    assert_eq!(runs[1], runs[3]);
    assert!(runs[0].starts_with("0..3 -> "), "{out}");
    assert!(runs[1].starts_with("10 -> "), "{out}");
    let list = ok(&["volume", "list", &p]);
    let allocated = format!("{} KiB", 4 * vblock::pool::DEFAULT_CLUSTER_SIZE / 1024);
    assert!(row(&list, "a").unwrap().contains(&allocated), "{list}");
    assert!(ok(&["check", &p]).contains("ok: no problems found"));
}

#[test]
fn torn_journal_tail_is_a_clean_end() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    // A flipped byte without a matching crc: the last commit was torn, so
    // the volume it created is gone, and the pool is consistent.
    let off = head_block(&p);
    let mut block = read_at(&p, off, BLOCK_SIZE);
    block[20] ^= 0x40;
    write_at(&p, off, &block);
    let out = ok(&["check", &p]);
    assert!(
        out.contains("bad checksum") && out.contains("torn"),
        "{out}"
    );
    assert!(out.contains("metadata: 0 volumes"), "{out}");
    assert!(row(&ok(&["volume", "list", &p]), "a").is_none());
}

#[test]
fn malformed_journal_record_is_refused() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    // Record type 99 in a block whose crc is valid: corruption, not a torn write.
    let off = head_block(&p);
    let mut block = read_at(&p, off, BLOCK_SIZE);
    block[14..16].copy_from_slice(&99u16.to_le_bytes());
    fix_journal_crc(&mut block);
    write_at(&p, off, &block);
    refused_everywhere(&p, "journal block");
}

#[test]
fn inconsistent_journal_record_is_refused() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    // Well-formed, valid crc, but it deletes a volume that does not exist.
    let off = head_block(&p);
    let old = JournalBlock::decode(&read_at(&p, off, BLOCK_SIZE)).unwrap();
    let bad = JournalBlock {
        seq: old.seq,
        records: vec![Record::DeleteVolume { id: 999 }],
    };
    write_at(&p, off, &bad.encode().unwrap());
    refused_everywhere(&p, "no volume with id 999");
    let r = fails(1, &["check", &p]);
    assert!(r.stderr.contains("corrupt journal record"), "{}", r.stderr);
}

#[test]
fn map_onto_the_checkpoint_is_refused() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    // A journal record mapping a volume onto the checkpoint's own cluster:
    // every reference count still adds up, but the cluster is used twice.
    let sb = superblock(&p);
    let off = head_block(&p);
    let mut old = JournalBlock::decode(&read_at(&p, off, BLOCK_SIZE)).unwrap();
    let Record::CreateVolume { id, .. } = old.records[0] else {
        panic!("expected CreateVolume")
    };
    old.records.push(Record::Map {
        volume: id,
        vcluster: 0,
        pcluster: sb.checkpoint as u32,
    });
    write_at(&p, off, &old.encode().unwrap());
    // Replay refuses it: a Map may only take a free cluster.
    let r = fails(1, &["check", &p]);
    let want = format!("cluster {} belongs to the checkpoint", sb.checkpoint);
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    refused_everywhere(&p, &want);
}

#[test]
fn truncated_pool_is_refused() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    refused_everywhere(&p, "superblock");
    let r = fails(1, &["check", &p]);
    assert!(r.stderr.contains("beyond the device"), "{}", r.stderr);

    for len in [0, 100, 4000] {
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len).unwrap();
        drop(f);
        let r = fails(1, &["check", &p]);
        assert!(
            r.stderr.contains("superblock: truncated"),
            "{len}: {}",
            r.stderr
        );
    }
}

#[test]
fn zeroed_superblocks_are_refused() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    write_at(&p, 0, &[0; 2 * BLOCK_SIZE]);
    refused_everywhere(&p, "superblock: bad magic");
}

#[test]
fn future_version_is_refused() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    // Version 99 in copy A with a valid crc: a newer writer, refused even
    // though copy B is still a valid version-1 superblock.
    let mut a = read_at(&p, 0, BLOCK_SIZE);
    a[8..12].copy_from_slice(&99u32.to_le_bytes());
    fix_superblock_crc(&mut a);
    write_at(&p, 0, &a);
    refused_everywhere(&p, "version 99 is newer");
}

#[test]
fn losing_superblock_copy_is_a_note() {
    let dir = Scratch::new();
    let p = pool_with_volume(&dir);
    let sb = superblock(&p);
    let other = if sb.slot() == 0 { BLOCK_SIZE as u64 } else { 0 };
    let mut block = read_at(&p, other, BLOCK_SIZE);
    block[100] ^= 1;
    write_at(&p, other, &block);
    let out = ok(&["check", &p]);
    assert!(
        out.contains("note: superblock copy") && out.contains("bad checksum"),
        "{out}"
    );
}

/// xorshift64*: deterministic bytes for garbage and fuzzing.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

#[test]
fn garbage_files_are_refused() {
    let dir = Scratch::new();
    let p = dir.path("garbage");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (len, magic) in [
        (4096, false),
        (1 << 20, false),
        (1 << 20, true),
        (8192, true),
    ] {
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes);
        if magic {
            bytes[..8].copy_from_slice(b"VBLKPOOL");
            bytes[4096..4104].copy_from_slice(b"VBLKPOOL");
        }
        std::fs::write(&p, &bytes).unwrap();
        let want = if magic { "bad checksum" } else { "bad magic" };
        refused_everywhere(&p, want);
    }
    // Garbage in the data area where the checkpoint lives.
    let q = pool_with_volume(&dir);
    let sb = superblock(&q);
    let data_off = (sb.journal_off + sb.journal_len).next_multiple_of(u64::from(sb.cluster_size));
    let mut junk = vec![0u8; 4 << 20];
    rng.fill(&mut junk);
    write_at(&q, data_off, &junk);
    refused_everywhere(&q, "checkpoint");
}

#[test]
fn fuzzed_metadata_never_panics() {
    let dir = Scratch::new();
    let p = dir.path("small");
    ok(&[
        "pool",
        "create",
        &p,
        "--size",
        "2M",
        "--cluster-size",
        "4K",
        "--journal",
        "64K",
    ]);
    ok(&["volume", "create", &p, "a", "--size", "1M"]);
    {
        let mut pool = Pool::open(FileDev::open(&p).unwrap()).unwrap();
        let a = pool.id("a").unwrap();
        pool.write(a, 0, &[1; 8192]).unwrap();
        pool.write(a, 40960, &[2; 4096]).unwrap();
        pool.flush().unwrap();
    }
    ok(&["snapshot", &p, "a", "s"]);
    ok(&["volume", "create", &p, "b", "--size", "64K"]);
    let sb = superblock(&p);
    let cs = sb.cluster_size as usize;
    let data_off = (sb.journal_off + sb.journal_len).next_multiple_of(cs as u64) as usize;
    let ckpt = data_off + sb.checkpoint as usize * cs;
    let head = (sb.journal_off + sb.journal_head * BLOCK_SIZE as u64) as usize;
    let good = std::fs::read(&p).unwrap();
    // Where to flip bits: a structure, the bytes of it worth flipping (the
    // rest is padding), and how to make the damage crc-valid so that the
    // decoders behind the crc run too.
    struct Region {
        start: usize,
        len: usize,
        span: usize,
        fix: fn(&mut [u8]),
    }
    let regions = [
        Region {
            start: 0,
            len: BLOCK_SIZE,
            span: 96,
            fix: fix_superblock_crc,
        },
        Region {
            start: BLOCK_SIZE,
            len: BLOCK_SIZE,
            span: 96,
            fix: fix_superblock_crc,
        },
        Region {
            start: head,
            len: BLOCK_SIZE,
            span: 200,
            fix: fix_journal_crc,
        },
        Region {
            start: ckpt,
            len: cs,
            span: 200,
            fix: fix_checkpoint_crc,
        },
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut outcomes = [0usize; 2];
    for _ in 0..100 {
        let mut img = good.clone();
        let r = &regions[rng.below(regions.len() as u64) as usize];
        for _ in 0..1 + rng.below(4) {
            let at = r.start + rng.below(r.span as u64) as usize;
            img[at] ^= 1 << rng.below(8);
        }
        if rng.below(4) != 0 {
            (r.fix)(&mut img[r.start..r.start + r.len]);
        }
        std::fs::write(&p, &img).unwrap();
        let check = vblock(&["check", &p]);
        assert!(matches!(check.code, Some(0 | 1)), "{}", check.stderr);
        outcomes[check.code.unwrap_or(1) as usize] += 1;
        // dump fails exactly when loading fails; check also on violations.
        let dump = vblock(&["dump", &p]);
        assert!(matches!(dump.code, Some(0 | 1)), "{}", dump.stderr);
        if check.code == Some(0) {
            assert_eq!(dump.code, Some(0), "{}", dump.stderr);
        }
    }
    // Both kinds of outcome happen (flips in the losing superblock copy or
    // in a never-read field are harmless).
    assert!(outcomes[1] > 0, "{outcomes:?}");
}

/// The `vblock` command lines of the root README's code blocks, as words
/// (shell comments dropped). A line is one when its first word is `vblock`,
/// or when it is `cargo run ... -- ARGS` for this package's `vblock` binary
/// (the prefix must name them, so a renamed package or binary fails too).
fn readme_commands(readme: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut in_code = false;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let words: Vec<&str> = line
            .split_whitespace()
            .take_while(|w| !w.starts_with('#'))
            .collect();
        let args = match words.as_slice() {
            ["vblock", args @ ..] => args,
            ["cargo", "run", rest @ ..] if rest.contains(&"--bin") => {
                let (opts, args) = rest
                    .iter()
                    .position(|w| *w == "--")
                    .map(|i| (&rest[..i], &rest[i + 1..]))
                    .unwrap_or_else(|| panic!("README: no `--` in {line:?}"));
                let after = |flag: &str| {
                    opts.iter()
                        .position(|w| *w == flag)
                        .and_then(|i| opts.get(i + 1))
                        .copied()
                };
                if after("--bin") != Some("vblock") {
                    continue;
                }
                assert_eq!(
                    after("-p"),
                    Some(env!("CARGO_PKG_NAME")),
                    "README: {line:?}"
                );
                args
            }
            _ => continue,
        };
        commands.push(args.iter().map(|w| (*w).to_owned()).collect());
    }
    commands
}

/// Every `vblock` command the README shows works exactly as written, in the
/// order shown, on a fresh pool (the README's pool path replaced by a
/// scratch file; the 20G pool is a sparse file).
#[test]
fn readme_commands_work_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read the root README.md");
    let commands = readme_commands(&readme);
    // The pool the README creates first; every later mention of its path
    // means the same pool.
    let readme_pool = commands
        .first()
        .and_then(|c| match c.as_slice() {
            [pool, create, path, ..] if pool == "pool" && create == "create" => Some(path.clone()),
            _ => None,
        })
        .expect("the README's first vblock command creates a pool");
    let dir = Scratch::new();
    let pool = dir.path("pool");
    // The raw image files the README names are in the scratch directory.
    let (image, backup) = (dir.path("image.raw"), dir.path("backup.raw"));
    let mut data = vec![0u8; 1 << 20];
    data[..4096].fill(5);
    std::fs::write(&image, &data).unwrap();
    let mut shown = Vec::new();
    for command in &commands {
        let args: Vec<&str> = command
            .iter()
            .map(|a| match a.as_str() {
                a if a == readme_pool => pool.as_str(),
                "image.raw" => image.as_str(),
                "backup.raw" => backup.as_str(),
                a => a,
            })
            .collect();
        ok(&args);
        let words = if matches!(args[0], "pool" | "volume") {
            2
        } else {
            1
        };
        shown.push(args[..words].join(" "));
    }
    // The extraction found what the README shows, each once: a broken
    // extractor must not pass by running nothing.
    assert_eq!(
        shown,
        [
            "pool create",
            "volume create",
            "snapshot",
            "clone",
            "volume list",
            "pool info",
            "check",
            "dump",
            "volume import",
            "volume export"
        ]
    );
    assert_eq!(std::fs::metadata(&backup).unwrap().len(), 10 << 30);
}

/// Bytes of volume `name` mapped to clusters, from the pool itself.
fn allocated(p: &str, name: &str) -> u64 {
    let dev = FileDev::open_read_only(p).expect("open the pool");
    let (pool, _) = Pool::open_read_only(dev).expect("load the pool");
    let v = pool.volume(name).expect("the volume");
    v.allocated
}

#[test]
fn import_skips_zero_clusters_and_export_gives_the_bytes_back() {
    let dir = Scratch::new();
    let p = dir.path("pool");
    ok(&[
        "pool",
        "create",
        &p,
        "--size",
        "32M",
        "--cluster-size",
        "64K",
    ]);
    // 3 MiB + 1000 bytes: data in clusters 0 and 20, a zero cluster between,
    // and a short tail (the volume is rounded up to 512 bytes).
    let mut image = vec![0u8; 3 * 1024 * 1024 + 1000];
    image[..100].fill(7);
    image[20 * 65536 + 512..20 * 65536 + 1024].fill(9);
    let tail = image.len() - 10;
    image[tail..].fill(3);
    let raw = dir.path("in.raw");
    std::fs::write(&raw, &image).unwrap();
    let out = ok(&["volume", "import", &p, "disk", &raw]);
    assert!(out.contains("3 clusters written"), "{out}");
    assert_eq!(allocated(&p, "disk"), 3 * 65536);

    let back = dir.path("out.raw");
    ok(&["volume", "export", &p, "disk", &back]);
    let exported = std::fs::read(&back).unwrap();
    assert_eq!(exported.len(), image.len().div_ceil(512) * 512);
    assert!(
        exported[..image.len()] == image[..],
        "exported bytes differ"
    );
    assert!(exported[image.len()..].iter().all(|b| *b == 0));
    fails(1, &["volume", "export", &p, "disk", &back]); // exists: --force
    ok(&["volume", "export", &p, "disk", &back, "--force"]);

    // Into an existing volume: a zero cluster over data unmaps it; a file
    // larger than the volume is refused.
    let zeros = dir.path("zeros.raw");
    std::fs::write(&zeros, vec![0u8; 65536]).unwrap();
    ok(&["volume", "import", &p, "disk", &zeros]);
    assert_eq!(allocated(&p, "disk"), 2 * 65536);
    ok(&["volume", "create", &p, "small", "--size", "1M"]);
    fails(1, &["volume", "import", &p, "small", &raw]);
    fails(1, &["volume", "import", &p, "x", &dir.path("missing.raw")]);
    assert!(ok(&["check", &p]).contains("ok: no problems found"));
}
