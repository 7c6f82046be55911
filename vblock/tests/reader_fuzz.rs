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

/// A pool with volumes, a snapshot, a clone, a checkpoint and records in
/// the journal after it.
fn base_image() -> (Vec<u8>, Map) {
    let disk = Arc::new(SimDisk::new(2 << 20));
    let opts = PoolOptions {
        cluster_size: 4096,
        journal_len: Some(64 * 1024),
        uuid: Some([3; 16]),
    };
    let mut p = Pool::create(disk.clone(), &opts).unwrap();
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
