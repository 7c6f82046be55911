//! Fuzzing of the metadata reader: corrupted pool images must give a clear
//! error or a pool that passes `check`, never a panic and never a silent
//! repair.
//!
//! Mutations target every structure the reader parses: both superblock
//! copies, the journal blocks in use, the checkpoint chain, and random
//! places; some are re-checksummed after the change so the decoders' field
//! rules and the metadata's consistency rules are exercised, not just the
//! crc32c checks. Deterministic seeds.

use std::sync::Arc;

use vblock::dev::SimDisk;
use vblock::dev::SplitMix64 as Rng;
use vblock::format::{JournalBlock, Record};
use vblock::pool::{Pool, PoolOptions};

/// Where the structures of the base image are.
struct Map {
    journal_blocks: Vec<usize>,
    checkpoint: Vec<usize>,
    cluster_size: usize,
}

/// A new 2 MiB pool (4 KiB clusters, 16 journal blocks) on a SimDisk.
fn new_pool(uuid: u8) -> (Arc<SimDisk>, Pool<Arc<SimDisk>>) {
    let disk = Arc::new(SimDisk::new(2 << 20));
    let opts = PoolOptions {
        cluster_size: 4096,
        journal_len: Some(64 * 1024),
        uuid: Some([uuid; 16]),
    };
    let p = Pool::create(disk.clone(), &opts).unwrap();
    (disk, p)
}

/// A pool with volumes, a snapshot, a clone, a checkpoint and records in
/// the journal after it.
fn base_image() -> (Vec<u8>, Map) {
    let (disk, mut p) = new_pool(3);
    let a = p.create_volume("alpha", 256 * 1024, 512).unwrap();
    for i in 0..20u64 {
        p.write(a, i * 8192, &[i as u8 + 1; 4096]).unwrap();
    }
    p.snapshot("alpha", "alpha-snap").unwrap();
    p.checkpoint().unwrap();
    let c = p.clone_volume("alpha-snap", "beta").unwrap();
    p.write(c, 4096, &[0xEE; 8192]).unwrap();
    p.discard(a, 0, 16384).unwrap();
    p.rename("beta", "gamma").unwrap();
    p.resize("gamma", 512 * 1024, false).unwrap();
    p.flush().unwrap();
    let sb = *p.superblock();
    let layout = *p.layout();
    let head = sb.journal_head;
    let blocks = layout.journal_blocks();
    let journal_blocks = (0..4)
        .map(|i| (layout.journal_off + ((head + i) % blocks) * 4096) as usize)
        .collect();
    let (_, loaded) = Pool::open_read_only(disk.clone()).unwrap();
    assert!(
        loaded.replayed_records > 0,
        "the base image needs journal records"
    );
    let checkpoint = loaded
        .checkpoint
        .iter()
        .map(|&c| layout.cluster_offset(u64::from(c)).unwrap() as usize)
        .collect();
    (
        disk.snapshot_durable(),
        Map {
            journal_blocks,
            checkpoint,
            cluster_size: layout.cluster_size as usize,
        },
    )
}

fn fix_crc(img: &mut [u8], start: usize, len: usize, crc_at: usize) {
    img[start + crc_at..start + crc_at + 4].fill(0);
    let crc = crc32c::crc32c(&img[start..start + len]);
    img[start + crc_at..start + crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

fn fix_journal_crc(img: &mut [u8], start: usize) {
    let crc = crc32c::crc32c(&img[start..start + 4092]);
    img[start + 4092..start + 4096].copy_from_slice(&crc.to_le_bytes());
}

fn fix_link_crc(img: &mut [u8], start: usize, cluster_size: usize) {
    let used = u32::from_le_bytes(img[start + 20..start + 24].try_into().unwrap()) as usize;
    let used = used.min(cluster_size - 32);
    let mut h = img[start..start + 32].to_vec();
    h[28..32].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h), &img[start + 32..start + 32 + used]);
    img[start + 28..start + 32].copy_from_slice(&crc.to_le_bytes());
}

/// Changes 1..=4 bytes (or a little-endian integer field) in `[start, start + len)`.
fn scribble(img: &mut [u8], rng: &mut Rng, start: usize, len: usize) {
    for _ in 0..1 + rng.below(4) {
        let at = start + rng.below(len as u64) as usize;
        match rng.below(4) {
            0 => img[at] ^= 1 << rng.below(8),
            1 => img[at] = rng.next_u64() as u8,
            2 => {
                // A plausible-looking integer: small, huge or off by one.
                let end = (at + 8).min(start + len);
                let v: u64 = match rng.below(3) {
                    0 => rng.below(64),
                    1 => u64::MAX - rng.below(4),
                    _ => rng.next_u64(),
                };
                img[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            _ => img[at] = img[at].wrapping_add(1),
        }
    }
}

fn mutate(base: &[u8], map: &Map, rng: &mut Rng) -> Vec<u8> {
    let mut img = base.to_vec();
    match rng.below(9) {
        0 | 1 => {
            // A superblock copy, re-checksummed half of the time.
            let start = if rng.below(2) == 0 { 0 } else { 4096 };
            scribble(&mut img, rng, start, 96);
            if rng.below(2) == 0 {
                fix_crc(&mut img, start, 4096, 92);
            }
        }
        2 | 3 => {
            let start = map.journal_blocks[rng.below(map.journal_blocks.len() as u64) as usize];
            scribble(&mut img, rng, start, 4096);
            if rng.below(4) != 0 {
                fix_journal_crc(&mut img, start);
            }
        }
        4 | 5 => {
            let start = map.checkpoint[rng.below(map.checkpoint.len() as u64) as usize];
            let len = if rng.below(2) == 0 { 32 } else { 512 };
            scribble(&mut img, rng, start, len);
            if rng.below(4) != 0 {
                fix_link_crc(&mut img, start, map.cluster_size);
            }
        }
        6 => {
            // Truncated (to whole sectors, as a device would be).
            let len = (rng.below(img.len() as u64) as usize) & !511;
            img.truncate(len);
        }
        7 => {
            // A wiped or garbage sector anywhere in the metadata area.
            let at = (rng.below(256 * 1024) as usize) & !511;
            let fill = if rng.below(2) == 0 {
                0
            } else {
                rng.next_u64() as u8
            };
            img[at..at + 512].fill(fill);
        }
        _ => {
            let len = img.len();
            scribble(&mut img, rng, 0, len);
        }
    }
    img
}

fn exercise(img: Vec<u8>) -> &'static str {
    let disk = Arc::new(SimDisk::from_image(img).expect("whole sectors"));
    let Ok((pool, _)) = Pool::open_read_only(disk.clone()) else {
        return "refused";
    };
    if let Err(v) = pool.metadata().check() {
        // A reader that accepts an image must hand over consistent metadata.
        panic!("opened but inconsistent: {v:?}");
    }
    for v in pool.volumes() {
        let mut buf = vec![0u8; v.size.min(1 << 20) as usize];
        let _ = pool.read(v.id, 0, &mut buf);
    }
    drop(pool);
    match Pool::open(disk.clone()) {
        Ok(p) => {
            assert!(p.metadata().check().is_ok());
            "opened"
        }
        Err(_) => "opened read-only only (device too small for a checkpoint, ...)",
    }
}

#[test]
fn corrupted_images_never_panic() {
    let (base, map) = base_image();
    assert_eq!(exercise(base.clone()), "opened");
    let mut refused = 0;
    let mut opened = 0;
    let iterations = 3000;
    for seed in 0..iterations {
        let mut rng = Rng::new(seed);
        let img = mutate(&base, &map, &mut rng);
        match exercise(img) {
            "refused" => refused += 1,
            _ => opened += 1,
        }
    }
    eprintln!("{iterations} corrupted images: {refused} refused with an error, {opened} opened and consistent");
    assert!(
        refused > iterations / 4,
        "mutations must mostly hit checked structures"
    );
}

#[test]
fn errors_name_the_structure() {
    let (base, map) = base_image();
    let open = |img: Vec<u8>| {
        let disk = Arc::new(SimDisk::from_image(img).unwrap());
        match Pool::open_read_only(disk) {
            Ok(_) => String::from("opened"),
            Err(e) => e.to_string(),
        }
    };
    let mut wiped = base.clone();
    wiped[..8192].fill(0);
    assert!(open(wiped).contains("bad magic"), "wiped superblocks");
    let mut future = base.clone();
    for start in [0, 4096] {
        future[start + 8..start + 12].copy_from_slice(&99u32.to_le_bytes());
        fix_crc(&mut future, start, 4096, 92);
    }
    assert!(open(future).contains("version 99"));
    let mut torn_ckpt = base.clone();
    torn_ckpt[map.checkpoint[0] + 40] ^= 0xff;
    let e = open(torn_ckpt);
    assert!(e.contains("checkpoint") && e.contains("checksum"), "{e}");
    // A crc-valid journal block whose record names a volume that does not
    // exist: refused as corruption, not skipped.
    let mut bad_rec = base.clone();
    let j = map.journal_blocks[0];
    let seq = u64::from_le_bytes(bad_rec[j + 4..j + 12].try_into().unwrap());
    let block = JournalBlock {
        seq,
        records: vec![Record::Unmap {
            volume: 9999,
            vcluster: 0,
        }],
    };
    bad_rec[j..j + 4096].copy_from_slice(&block.encode().unwrap());
    let e = open(bad_rec);
    assert!(e.contains("journal record") && e.contains("9999"), "{e}");
    let short = base[..8192 + 4096].to_vec();
    assert!(open(short).contains("superblock"));
}

/// Opens `img` read-only: the error's text, or "opened".
fn open_text(img: Vec<u8>) -> String {
    let disk = Arc::new(SimDisk::from_image(img).unwrap());
    match Pool::open_read_only(disk) {
        Ok(_) => String::from("opened"),
        Err(e) => e.to_string(),
    }
}

/// A device that makes up a pool whose checkpoint chain runs through
/// `links` clusters (1, 2, ... links) and back to cluster 1. Every link is
/// valid on its own (magic, crc, index, seq); nothing is stored, so the
/// chain can be far longer than memory would allow.
struct LoopingChain {
    sb: [u8; 4096],
    links: u64,
    data_off: u64,
    seq: u64,
    len: u64,
}

impl LoopingChain {
    fn new(links: u64) -> LoopingChain {
        let cs = 4096u64;
        let journal = 64 * 1024;
        let data_off = 64 * 1024 + journal;
        let len = data_off + (links + 1) * cs;
        let layout = vblock::format::Layout::new(len, cs as u32, journal).unwrap();
        let mut sb = vblock::format::Superblock::new(&layout, [5; 16]);
        sb.generation = 2;
        sb.checkpoint = 1;
        sb.ckpt_seq = 1000;
        LoopingChain {
            sb: sb.encode(),
            links,
            data_off: layout.data_off,
            seq: sb.ckpt_seq,
            len,
        }
    }

    fn block(&self, offset: u64, out: &mut [u8]) {
        out.fill(0);
        if offset == 0 {
            out.copy_from_slice(&self.sb);
        } else if offset >= self.data_off && (offset - self.data_off).is_multiple_of(4096) {
            let c = (offset - self.data_off) / 4096;
            if (1..=self.links).contains(&c) {
                let next = if c == self.links { 1 } else { c + 1 };
                let header = vblock::format::checkpoint::LinkHeader {
                    index: (c - 1) as u32,
                    seq: self.seq,
                    next: next as u32,
                    used: 0,
                };
                vblock::format::checkpoint::encode_link(out, header, &[]);
            }
        }
    }
}

impl vblock::dev::BlockDev for LoopingChain {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        for (i, chunk) in buf.chunks_mut(4096).enumerate() {
            self.block(offset + i as u64 * 4096, chunk);
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("a made-up device takes no writes"))
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A loop through 2^20 distinct clusters (a 4 GiB pool) is found after one
/// pass over the chain. The bound is generous; finding the loop by
/// comparing each link with every earlier one takes hours here.
#[test]
fn a_checkpoint_chain_looping_through_a_million_clusters_is_refused_in_bounded_time() {
    let dev = LoopingChain::new(1 << 20);
    let started = std::time::Instant::now();
    let e = Pool::open_read_only(dev)
        .err()
        .expect("a looping chain is refused");
    assert_eq!(
        e.to_string(),
        "corrupt checkpoint link 1048576 (cluster 1): the chain loops"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}

/// Payload claims beyond what the file holds are refused, naming the field.
#[test]
fn oversized_checkpoint_payload_claims_are_refused() {
    let (base, map) = base_image();
    let at = map.checkpoint[0];
    // A link claiming more payload bytes than its cluster holds.
    let mut img = base.clone();
    img[at + 20..at + 24].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = open_text(img);
    assert!(
        e.contains("checkpoint link 0") && e.contains("checkpoint.used"),
        "{e}"
    );
    // A volume claiming 2^32 - 1 runs (64 GiB of payload).
    let mut img = base.clone();
    let runs = at + 32 + 4 + 20;
    img[runs..runs + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_link_crc(&mut img, at, map.cluster_size);
    let e = open_text(img);
    assert!(
        e.contains("checkpoint") && e.contains("payload ends inside an entry"),
        "{e}"
    );
}

/// Writes `record` (encoded with a valid id, then given `id` at byte
/// `id_at` of its payload) as the next journal block replay would read;
/// returns the image.
fn with_journal_record(base: &[u8], record: Record, id_at: usize, id: u32) -> Vec<u8> {
    let disk = Arc::new(SimDisk::from_image(base.to_vec()).unwrap());
    let (_, l) = Pool::open_read_only(disk).unwrap();
    let index = (l.sb.journal_head + l.replayed_blocks) % l.layout.journal_blocks();
    let at = l.layout.journal_block_offset(index).unwrap() as usize;
    let block = JournalBlock {
        seq: l.next_seq,
        records: vec![record],
    };
    let mut img = base.to_vec();
    img[at..at + 4096].copy_from_slice(&block.encode().unwrap());
    // Block header 14 bytes, record header 4, then the payload.
    let id_at = at + 18 + id_at;
    img[id_at..id_at + 4].copy_from_slice(&id.to_le_bytes());
    fix_journal_crc(&mut img, at);
    img
}

/// Volume id u32::MAX leaves no next id: refused in a journal record and in
/// a checkpoint, with the field named. The highest valid id opens, and
/// creating one more volume is refused cleanly.
#[test]
fn volume_id_u32_max_is_refused_and_the_highest_id_leaves_the_pool_usable() {
    let (base, map) = base_image();
    let create = |id| Record::CreateVolume {
        id,
        name: "crafted".into(),
        size: 1 << 20,
        block_size: 512,
    };
    let too_high = "id: volume id 4294967295 is above the highest, 4294967294";
    let e = open_text(with_journal_record(&base, create(1), 0, u32::MAX));
    assert!(e.contains("journal block") && e.contains(too_high), "{e}");
    // A snapshot record: the source, then the new id.
    let snap = Record::Snapshot {
        source: 1,
        id: 1,
        name: "crafted".into(),
    };
    let e = open_text(with_journal_record(&base, snap, 4, u32::MAX));
    assert!(e.contains("journal block") && e.contains(too_high), "{e}");
    // In the checkpoint: the first volume's id.
    let mut img = base.clone();
    let at = map.checkpoint[0];
    img[at + 36..at + 40].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_link_crc(&mut img, at, map.cluster_size);
    let e = open_text(img);
    assert!(e.contains("checkpoint.id"), "{e}");
    // The highest valid id: opens; the next volume is refused, nothing breaks.
    let max = vblock::format::journal::MAX_VOLUME_ID;
    let img = with_journal_record(&base, create(1), 0, max);
    let disk = Arc::new(SimDisk::from_image(img).unwrap());
    let mut pool = Pool::open(disk.clone()).expect("the highest id opens");
    assert_eq!(pool.id("crafted").unwrap(), max);
    let e = pool.create_volume("one-more", 1 << 20, 512).unwrap_err();
    assert!(e.to_string().contains("volume id 4294967295"), "{e}");
    let e = pool.snapshot("crafted", "snap").unwrap_err();
    assert!(e.to_string().contains("volume id 4294967295"), "{e}");
    pool.write(max, 0, &[7; 4096]).unwrap();
    pool.flush().unwrap();
    drop(pool);
    let pool = Pool::open(disk).unwrap();
    assert!(pool.metadata().check().is_ok());
    let mut b = [0u8; 4096];
    pool.read(max, 0, &mut b).unwrap();
    assert_eq!(b, [7; 4096]);
}

/// A pool whose current superblock is copy A (generation 4) and copy B an
/// older one (generation 3, an earlier checkpoint); block 0 of volume "a"
/// reads 2s and block 1 reads 3s (journaled after the last checkpoint).
fn two_generations() -> Vec<u8> {
    let (disk, mut p) = new_pool(4);
    let a = p.create_volume("a", 64 * 1024, 512).unwrap();
    p.write(a, 0, &[1; 4096]).unwrap();
    p.checkpoint().unwrap();
    p.write(a, 0, &[2; 4096]).unwrap();
    p.checkpoint().unwrap();
    p.write(a, 4096, &[3; 4096]).unwrap();
    p.flush().unwrap();
    assert_eq!(p.superblock().generation, 4, "copy A is the current one");
    disk.snapshot_durable()
}

/// The generation of the superblock copy at `start`, re-checksummed.
fn set_generation(img: &mut [u8], start: usize, generation: u64) {
    img[start + 60..start + 68].copy_from_slice(&generation.to_le_bytes());
    fix_crc(img, start, 4096, 92);
}

fn reads_latest<D: vblock::dev::BlockDev>(pool: &Pool<D>) {
    assert!(pool.metadata().check().is_ok());
    let mut b = vec![0u8; 8192];
    pool.read(pool.id("a").unwrap(), 0, &mut b).unwrap();
    assert!(b[..4096] == [2; 4096] && b[4096..] == [3; 4096]);
}

/// A stale copy claiming generation u64::MAX loses to the current one
/// (its generation is above the highest allowed), and the pool goes on
/// alternating copies from the right generation.
#[test]
fn a_stale_superblock_with_generation_u64_max_is_not_picked() {
    let mut img = two_generations();
    set_generation(&mut img, 4096, u64::MAX);
    let disk = Arc::new(SimDisk::from_image(img).unwrap());
    let (pool, l) = Pool::open_read_only(disk.clone()).unwrap();
    assert_eq!(l.sb.generation, 4);
    let other = l.other_superblock.expect("copy B reported").to_string();
    assert!(
        other.contains("generation") && other.contains("above the highest"),
        "{other}"
    );
    reads_latest(&pool);
    drop(pool);
    let pool = Pool::open(disk.clone()).unwrap();
    assert_eq!(pool.superblock().generation, 5);
    drop(pool);
    let pool = Pool::open(disk).unwrap();
    assert_eq!(pool.superblock().generation, 6);
    reads_latest(&pool);
}

/// A current superblock at the highest generation: readable, but opening
/// for writing is refused before anything is written (the next generation
/// would not be valid), never wrapped.
#[test]
fn the_highest_generation_is_refused_for_writing_without_a_write() {
    let mut img = two_generations();
    let a: Vec<u8> = img[..4096].to_vec();
    img[4096..8192].copy_from_slice(&a);
    let max = vblock::format::superblock::MAX_GENERATION;
    set_generation(&mut img, 4096, max);
    let disk = Arc::new(SimDisk::from_image(img.clone()).unwrap());
    let (pool, l) = Pool::open_read_only(disk.clone()).unwrap();
    assert_eq!(l.sb.generation, max);
    reads_latest(&pool);
    drop(pool);
    let e = Pool::open(disk.clone()).err().expect("no generation left");
    assert_eq!(
        e.to_string(),
        format!("corrupt superblock: generation {max} cannot be incremented: no superblock can be written")
    );
    assert!(disk.snapshot_current() == img, "nothing was written");
}
