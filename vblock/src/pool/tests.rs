//! Pool operations on the simulated disk, checked against expected contents.

use std::sync::Arc;

use super::*;
use crate::dev::SimDisk;
use crate::meta::MetaError;

const C: u32 = 4096;
const MIB: u64 = 1 << 20;

fn small_pool(len: u64, journal: u64) -> (Arc<SimDisk>, Pool<Arc<SimDisk>>) {
    let disk = Arc::new(SimDisk::new(len));
    let opts = PoolOptions {
        cluster_size: C,
        journal_len: Some(journal),
        uuid: Some([7; 16]),
    };
    let pool = Pool::create(disk.clone(), &opts).expect("create");
    (disk, pool)
}

fn checked<D: BlockDev>(p: &Pool<D>) {
    if let Err(v) = p.metadata().check() {
        panic!("check: {v:#?}");
    }
}

fn read(p: &Pool<Arc<SimDisk>>, id: u32, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0xAA; len];
    p.read(id, off, &mut b).expect("read");
    b
}

fn fill(tag: u8, len: usize) -> Vec<u8> {
    vec![tag; len]
}

#[test]
fn create_reopen_and_volume_ops() {
    let (disk, mut p) = small_pool(16 * MIB, 256 * 1024);
    let a = p.create_volume("a", 8 * MIB, 512).unwrap();
    assert_eq!(read(&p, a, 0, 8192), vec![0; 8192]);
    p.write(a, 512, &fill(1, 1024)).unwrap();
    p.write(a, 3 * C as u64 - 512, &fill(2, 1024)).unwrap(); // spans two clusters
    p.flush().unwrap();
    assert!(matches!(
        p.create_volume("a", MIB, 512),
        Err(PoolError::Refused(MetaError::DuplicateName(_)))
    ));
    // Over-commit is allowed and reported.
    p.create_volume("big", 1 << 40, 4096).unwrap();
    assert!(p.space().provisioned > p.space().capacity);
    p.rename("big", "huge").unwrap();
    p.delete_volume("huge").unwrap();
    assert!(matches!(
        p.delete_volume("huge"),
        Err(PoolError::NoSuchVolume(_))
    ));
    checked(&p);
    drop(p);

    let p = Pool::open(disk.clone()).unwrap();
    checked(&p);
    assert_eq!(p.volumes().len(), 1);
    let a = p.id("a").unwrap();
    let b = read(&p, a, 0, 4 * C as usize);
    assert_eq!(&b[..512], &[0; 512][..]);
    assert_eq!(&b[512..1536], &fill(1, 1024)[..]);
    assert_eq!(
        &b[3 * C as usize - 512..3 * C as usize + 512],
        &fill(2, 1024)[..]
    );
    assert_eq!(p.volume("a").unwrap().allocated, 3 * u64::from(C));
}

#[test]
fn request_validation() {
    let (_d, mut p) = small_pool(8 * MIB, 128 * 1024);
    let a = p.create_volume("a", MIB, 512).unwrap();
    assert!(matches!(
        p.write(a, 1, &[0; 512]),
        Err(PoolError::Unaligned { .. })
    ));
    assert!(matches!(
        p.write(a, 0, &[0; 100]),
        Err(PoolError::Unaligned { .. })
    ));
    assert!(matches!(
        p.write(a, MIB, &[0; 512]),
        Err(PoolError::OutOfRange { .. })
    ));
    assert!(matches!(
        p.discard(a, u64::MAX - 511, 512),
        Err(PoolError::OutOfRange { .. })
    ));
    let mut b = [0u8; 512];
    assert!(matches!(
        p.read(99, 0, &mut b),
        Err(PoolError::NoSuchVolume(_))
    ));
    let s = p.snapshot("a", "s").unwrap();
    assert!(matches!(
        p.write(s, 0, &[0; 512]),
        Err(PoolError::ReadOnly(_))
    ));
    assert!(matches!(p.discard(s, 0, 512), Err(PoolError::ReadOnly(_))));
    assert!(matches!(
        p.resize("s", 2 * MIB, false),
        Err(PoolError::ReadOnly(_))
    ));
    assert!(matches!(
        p.resize("a", MIB / 2, false),
        Err(PoolError::ShrinkNeedsForce { .. })
    ));
    checked(&p);
}

#[test]
fn snapshot_of_clone_of_snapshot_keeps_every_generation() {
    let (disk, mut p) = small_pool(16 * MIB, 256 * 1024);
    let v = p.create_volume("v", 64 * u64::from(C), 512).unwrap();
    for i in 0..8u64 {
        p.write(v, i * u64::from(C), &fill(1, C as usize)).unwrap();
    }
    let s1 = p.snapshot("v", "s1").unwrap();
    p.write(v, 0, &fill(2, 512)).unwrap(); // CoW of cluster 0
    let c1 = p.clone_volume("s1", "c1").unwrap();
    p.write(c1, u64::from(C), &fill(3, 512)).unwrap();
    let s2 = p.snapshot("c1", "s2").unwrap();
    let c2 = p.clone_volume("s2", "c2").unwrap();
    p.write(c2, 2 * u64::from(C), &fill(4, 512)).unwrap();
    p.write(c1, 2 * u64::from(C), &fill(5, 512)).unwrap();
    p.flush().unwrap();
    let expect = |p: &Pool<Arc<SimDisk>>, id, vals: [u8; 3]| {
        for (i, val) in vals.iter().enumerate() {
            let b = read(p, id, i as u64 * u64::from(C), 512);
            assert_eq!(b, fill(*val, 512), "volume {id} cluster {i}");
        }
    };
    expect(&p, v, [2, 1, 1]);
    expect(&p, s1, [1, 1, 1]);
    expect(&p, c1, [1, 3, 5]);
    expect(&p, s2, [1, 3, 1]);
    expect(&p, c2, [1, 3, 4]);
    // Unwritten clusters share; first write to a shared cluster copies once.
    let before = p.stats().copies_on_write;
    p.write(c2, 3 * u64::from(C), &fill(6, 512)).unwrap();
    p.write(c2, 3 * u64::from(C) + 512, &fill(6, 512)).unwrap();
    assert_eq!(p.stats().copies_on_write, before + 1);
    // Deleting a snapshot with clones copies nothing and keeps the clones.
    let allocs = p.stats().allocations;
    p.delete_volume("s1").unwrap();
    p.delete_volume("s2").unwrap();
    assert_eq!(p.stats().allocations, allocs);
    expect(&p, c1, [1, 3, 5]);
    checked(&p);
    drop(p);
    let p = Pool::open(disk).unwrap();
    checked(&p);
    expect(&p, p.id("c2").unwrap(), [1, 3, 4]);
    expect(&p, p.id("v").unwrap(), [2, 1, 1]);
}

#[test]
fn discard_returns_space_and_reads_zeros() {
    let (_d, mut p) = small_pool(8 * MIB, 128 * 1024);
    let a = p.create_volume("a", 32 * u64::from(C), 512).unwrap();
    p.write(a, 0, &fill(9, 8 * C as usize)).unwrap();
    p.flush().unwrap();
    let used = p.space().used_clusters;
    // Whole clusters 1..=6 released, the partial edges zeroed.
    p.discard(a, 512 + u64::from(C) - 512, 6 * u64::from(C))
        .unwrap();
    p.flush().unwrap();
    assert_eq!(p.space().used_clusters, used - 6);
    let b = read(&p, a, 0, 8 * C as usize);
    assert!(b[..C as usize].iter().all(|&x| x == 9));
    assert!(b[C as usize..7 * C as usize].iter().all(|&x| x == 0));
    assert!(b[7 * C as usize..].iter().all(|&x| x == 9));
    p.write_zeroes(a, 7 * u64::from(C) + 512, 512).unwrap();
    let b = read(&p, a, 7 * u64::from(C), C as usize);
    assert!(b[..512].iter().all(|&x| x == 9));
    assert!(b[512..1024].iter().all(|&x| x == 0));
    checked(&p);
}

#[test]
fn shrink_then_grow_reads_zeros() {
    let (_d, mut p) = small_pool(8 * MIB, 128 * 1024);
    let a = p.create_volume("a", 4 * u64::from(C), 512).unwrap();
    p.write(a, 0, &fill(7, 4 * C as usize)).unwrap();
    let s = p.snapshot("a", "s").unwrap();
    p.resize("a", u64::from(C) + 1024, true).unwrap();
    p.resize("a", 4 * u64::from(C), false).unwrap();
    let b = read(&p, a, 0, 4 * C as usize);
    assert!(b[..C as usize + 1024].iter().all(|&x| x == 7));
    assert!(b[C as usize + 1024..].iter().all(|&x| x == 0));
    assert!(read(&p, s, 0, 4 * C as usize).iter().all(|&x| x == 7));
    checked(&p);
}

#[test]
fn out_of_space_fails_only_that_request_and_recovers_after_delete() {
    let (disk, mut p) = small_pool(2 * MIB, 64 * 1024);
    let a = p.create_volume("a", 4 * MIB, 512).unwrap();
    let b = p.create_volume("b", 4 * MIB, 512).unwrap();
    let mut written = 0u64;
    let err = loop {
        match p.write(a, written, &fill(1, C as usize)) {
            Ok(()) => written += u64::from(C),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, PoolError::OutOfSpace { .. }), "{err}");
    assert!(err.to_string().contains("out of space"));
    assert!(written > 0);
    // Other volumes are refused too, but everything written stays readable
    // and the pool is consistent; overwrites in place still work.
    assert!(matches!(
        p.write(b, 0, &[2; 512]),
        Err(PoolError::OutOfSpace { .. })
    ));
    p.write(a, 0, &fill(3, 512)).unwrap();
    p.flush().unwrap();
    checked(&p);
    let got = read(&p, a, 0, written as usize);
    assert!(got[..512].iter().all(|&x| x == 3));
    assert!(got[512..].iter().all(|&x| x == 1));
    // A snapshot needs metadata room the full pool does not have.
    assert!(matches!(
        p.snapshot("a", "s"),
        Err(PoolError::OutOfSpace { .. })
    ));
    // Deleting a volume frees space: writes continue.
    p.delete_volume("a").unwrap();
    p.write(b, 0, &fill(4, 64 * C as usize)).unwrap();
    p.flush().unwrap();
    checked(&p);
    drop(p);
    let p = Pool::open(disk).unwrap();
    checked(&p);
    assert!(read(&p, b, 0, 64 * C as usize).iter().all(|&x| x == 4));
}

#[test]
fn small_journal_wraps_through_checkpoints() {
    // 16 journal blocks: the ring fills and checkpoints many times.
    let (disk, mut p) = small_pool(8 * MIB, 64 * 1024);
    let a = p.create_volume("a", 4 * MIB, 512).unwrap();
    for round in 0..60u64 {
        for i in 0..200u64 {
            let vc = (i * 7 + round) % 1024;
            p.write(a, vc * u64::from(C), &fill(round as u8, 512))
                .unwrap();
        }
        p.discard(a, (round % 8) * 64 * u64::from(C), 64 * u64::from(C))
            .unwrap();
        p.flush().unwrap();
    }
    assert!(p.stats().checkpoints > 3, "{:?}", p.stats());
    checked(&p);
    let image: Vec<u8> = read(&p, a, 0, 4 * MIB as usize);
    drop(p);
    let p = Pool::open(disk).unwrap();
    checked(&p);
    assert_eq!(read(&p, a, 0, 4 * MIB as usize), image);
}

/// `stage` is what a write-back export does before it completes allocating
/// writes: they survive the death of the daemon (everything written reaches
/// the host kernel), while a power loss keeps only what was flushed.
#[test]
fn staged_writes_survive_process_death_and_a_power_loss_keeps_the_flushed() {
    let (disk, mut p) = small_pool(16 * MIB, 256 * 1024);
    let a = p.create_volume("a", 8 * MIB, 512).unwrap();
    let c = u64::from(C);
    p.write(a, 0, &fill(1, C as usize)).unwrap();
    p.flush().unwrap();
    p.write(a, c, &fill(2, C as usize)).unwrap(); // allocates a cluster
    let before = p.stats();
    p.stage().unwrap();
    assert_eq!(p.stats().stages, before.stages + 1);
    assert_eq!(p.stats().commits, before.commits, "stage is not a commit");
    p.stage().unwrap();
    assert_eq!(
        p.stats().stages,
        before.stages + 1,
        "nothing pending: no-op"
    );

    let process_death = Arc::new(SimDisk::from_image(disk.snapshot_current()).unwrap());
    let q = Pool::open(process_death).expect("open after the process died");
    checked(&q);
    assert_eq!(read(&q, a, 0, C as usize), fill(1, C as usize));
    assert_eq!(read(&q, a, c, C as usize), fill(2, C as usize), "staged");

    let power_loss = rebooted(disk.snapshot_durable());
    let q = Pool::open(power_loss).expect("open after a power loss");
    checked(&q);
    assert_eq!(read(&q, a, 0, C as usize), fill(1, C as usize), "flushed");
    assert_eq!(
        read(&q, a, c, C as usize),
        vec![0; C as usize],
        "not flushed"
    );

    // A flush after a stage makes the staged records durable too.
    p.flush().unwrap();
    let power_loss = rebooted(disk.snapshot_durable());
    let q = Pool::open(power_loss).expect("open after a power loss");
    checked(&q);
    assert_eq!(read(&q, a, c, C as usize), fill(2, C as usize));
}

/// A disk holding `image` on the host's next boot (after a power loss).
fn rebooted(image: Vec<u8>) -> Arc<SimDisk> {
    let next = u128::from_le_bytes(SimDisk::FIRST_BOOT) + 1;
    Arc::new(
        SimDisk::from_image(image)
            .unwrap()
            .with_boot_id(next.to_le_bytes()),
    )
}

/// A staged `Map` (journal written, data not flushed) is replayed on the
/// same boot and dropped after a reboot, unless a flush came after it. The
/// cluster it maps held another volume's data, so the power loss that kept
/// the journal block but not the new data would show that data to "a" if
/// the record were replayed.
#[test]
fn staged_records_replay_on_the_same_boot_only_unless_a_flush_covers_them() {
    let (disk, mut p) = small_pool(16 * MIB, 256 * 1024);
    let a = p.create_volume("a", 8 * MIB, 512).unwrap();
    let b = p.create_volume("b", 8 * MIB, 512).unwrap();
    let cs = C as usize;
    p.write(b, 0, &fill(7, cs)).unwrap();
    p.flush().unwrap();
    let freed = p.metadata().lookup(b, 0).unwrap().unwrap().pcluster;
    p.discard(b, 0, u64::from(C)).unwrap();
    p.flush().unwrap(); // "b"'s cluster is free again, its 7s still on disk
    p.write(a, 0, &fill(1, cs)).unwrap();
    let mapped = p.metadata().lookup(a, 0).unwrap().unwrap().pcluster;
    assert_eq!(mapped, freed, "the test needs the freed cluster reused");
    p.stage().unwrap();

    // A power loss that kept the staged journal block, not the data.
    let layout = *p.layout();
    let journal = layout.journal_off as usize..(layout.journal_off + layout.journal_len) as usize;
    let mut torn = disk.snapshot_durable();
    torn[journal.clone()].copy_from_slice(&disk.snapshot_current()[journal.clone()]);
    assert_eq!(
        &torn[layout.cluster_offset(u64::from(mapped)).unwrap() as usize..][..cs],
        fill(7, cs)
    );
    let (q, loaded) = Pool::open_read_only(rebooted(torn.clone())).unwrap();
    assert_eq!(loaded.dropped_records, 1, "the staged Map");
    checked(&q);
    assert_eq!(read(&q, a, 0, cs), vec![0; cs], "never b's old data");
    let q = Pool::open(rebooted(torn)).unwrap();
    checked(&q);
    assert_eq!(read(&q, a, 0, cs), vec![0; cs]);

    // The process died on the same boot: the host has data and journal.
    let same_boot = Arc::new(SimDisk::from_image(disk.snapshot_current()).unwrap());
    let (q, loaded) = Pool::open_read_only(same_boot.clone()).unwrap();
    assert_eq!(loaded.dropped_records, 0);
    assert_eq!(read(&q, a, 0, cs), fill(1, cs), "staged, same boot");
    let q = Pool::open(same_boot).unwrap();
    checked(&q);
    assert_eq!(read(&q, a, 0, cs), fill(1, cs));

    // A flush with nothing new pending still covers the staged record.
    assert!(!p.has_pending_records());
    p.flush().unwrap();
    let (q, loaded) = Pool::open_read_only(rebooted(disk.snapshot_durable())).unwrap();
    assert_eq!(loaded.dropped_records, 0);
    assert_eq!(read(&q, a, 0, cs), fill(1, cs), "flushed");
}

/// A pool whose superblock says format version 1 (no boot id; that writer
/// flushed the data before every journal block) has its journal replayed
/// whole on any boot, and is written as the current version from then on.
#[test]
fn a_version_1_pool_replays_its_whole_journal_and_is_upgraded() {
    use crate::format::superblock::FORMAT_VERSION;
    let (disk, mut p) = small_pool(16 * MIB, 256 * 1024);
    let a = p.create_volume("a", 8 * MIB, 512).unwrap();
    p.write(a, 0, &fill(3, C as usize)).unwrap();
    p.stage().unwrap(); // a Map no DataDurable follows
    let sb = *p.superblock();
    drop(p);
    let mut image = disk.snapshot_current();
    let mut v1 = sb;
    v1.version = 1;
    v1.boot_id = [0; 16];
    image[sb.slot() as usize..][..crate::format::BLOCK_SIZE].copy_from_slice(&v1.encode());
    let (_, loaded) = Pool::open_read_only(rebooted(image.clone())).unwrap();
    assert_eq!((loaded.sb.version, loaded.dropped_records), (1, 0));
    let disk = rebooted(image);
    let q = Pool::open(disk.clone()).expect("a version 1 pool opens");
    assert_eq!(q.superblock().version, FORMAT_VERSION);
    assert_eq!(q.superblock().boot_id, disk.boot_id());
    assert_eq!(read(&q, a, 0, C as usize), fill(3, C as usize));
}

/// After an injected device failure: the pool refuses every change, and
/// the disk, reopened as it is or as a power loss would leave it, passes
/// check and still holds everything acknowledged before (volume "a":
/// cluster 0 = 1s, made durable by a successful flush).
fn failed_then_recovered(disk: &Arc<SimDisk>, mut p: Pool<Arc<SimDisk>>, a: u32) {
    assert!(matches!(
        p.write(a, 2 * u64::from(C), &fill(9, 512)),
        Err(PoolError::Failed)
    ));
    assert!(matches!(
        p.create_volume("b", MIB, 512),
        Err(PoolError::Failed)
    ));
    assert!(matches!(p.flush(), Err(PoolError::Failed)));
    assert!(matches!(p.checkpoint(), Err(PoolError::Failed)));
    assert!(
        p.flush()
            .unwrap_err()
            .to_string()
            .contains("reopen the pool"),
        "the error says what to do"
    );
    drop(p);
    disk.clear_faults();
    let after_power_loss = (0..8).map(|seed| Arc::new(disk.crash(seed)));
    for d in std::iter::once(disk.clone()).chain(after_power_loss) {
        let p = Pool::open(d).expect("reopens");
        checked(&p);
        assert_eq!(p.volumes().len(), 1);
        assert_eq!(read(&p, a, 0, C as usize), fill(1, C as usize));
    }
}

/// A pool with volume "a" whose cluster 0 holds 1s, flushed (acknowledged),
/// and cluster 1 written with 2s but not flushed.
fn acknowledged_pool() -> (Arc<SimDisk>, Pool<Arc<SimDisk>>, u32) {
    let (disk, mut p) = small_pool(4 * MIB, 64 * 1024);
    let a = p.create_volume("a", MIB, 512).unwrap();
    p.write(a, 0, &fill(1, C as usize)).unwrap();
    p.flush().unwrap();
    p.write(a, u64::from(C), &fill(2, C as usize)).unwrap();
    (disk, p, a)
}

/// Injects a fault into the pool of [`acknowledged_pool`], runs `op`,
/// which must fail with an I/O error whose `what` starts with `what`, then
/// [`failed_then_recovered`].
fn fault_stops_the_pool(
    inject: impl FnOnce(&SimDisk, &Layout),
    op: fn(&mut Pool<Arc<SimDisk>>) -> Result<(), PoolError>,
    what: &str,
) {
    let (disk, mut p, a) = acknowledged_pool();
    inject(&disk, p.layout());
    let e = op(&mut p).unwrap_err();
    assert!(
        matches!(&e, PoolError::Io { what: w, .. } if w.starts_with(what)),
        "{e}"
    );
    failed_then_recovered(&disk, p, a);
}

#[test]
fn a_failed_flush_fails_the_flush_and_stops_changes_until_reopen() {
    fault_stops_the_pool(
        |d, _| d.fail_flushes(true),
        Pool::flush,
        "flushing data before a commit",
    );
}

#[test]
fn a_failed_journal_write_fails_the_commit_and_stops_changes_until_reopen() {
    fault_stops_the_pool(
        |d, l| d.fail_writes(l.journal_off..l.journal_off + l.journal_len),
        Pool::flush,
        "writing journal block",
    );
}

#[test]
fn a_failed_superblock_write_fails_the_checkpoint_and_stops_changes_until_reopen() {
    fault_stops_the_pool(
        |d, _| d.fail_writes(0..8192),
        Pool::checkpoint,
        "writing the superblock",
    );
}

#[test]
fn a_device_dying_inside_a_checkpoint_stops_changes_until_reopen() {
    // The first checkpoint cluster is written, then the device dies.
    fault_stops_the_pool(
        |d, _| d.fail_after_writes(1),
        Pool::checkpoint,
        "flushing the checkpoint",
    );
}

/// The gauges (maintained per record) equal what a walk of the maps finds.
fn gauges_match<D: BlockDev>(p: &Pool<D>, step: &str) {
    assert_eq!(p.gauges().space(), p.space(), "{step}: space");
    assert_eq!(p.gauges().volumes(), p.volumes(), "{step}: volumes");
}

#[test]
fn gauges_follow_writes_snapshots_clones_discards_and_deletes() {
    let (_disk, mut p) = small_pool(16 * MIB, 256 * 1024);
    let c = u64::from(C);
    gauges_match(&p, "empty");
    let a = p.create_volume("a", MIB, 512).unwrap();
    p.write(a, 0, &fill(1, 8 * C as usize)).unwrap();
    gauges_match(&p, "first writes");
    p.snapshot("a", "s1").unwrap();
    gauges_match(&p, "snapshot");
    // Copy-on-write of two clusters: a owns them again, s1 its old ones.
    p.write(a, c, &fill(2, 2 * C as usize)).unwrap();
    gauges_match(&p, "copy-on-write");
    let b = p.clone_volume("s1", "b").unwrap();
    gauges_match(&p, "clone");
    p.write(b, 5 * c + 512, &fill(3, 512)).unwrap();
    p.discard(a, 0, 2 * c).unwrap();
    gauges_match(&p, "discard");
    p.flush().unwrap();
    gauges_match(&p, "flush");
    // Deleting the snapshot leaves clusters shared by a and b only...
    p.delete_volume("s1").unwrap();
    gauges_match(&p, "delete s1");
    // ...and deleting b makes a's remaining shared ones exclusive.
    p.delete_volume("b").unwrap();
    gauges_match(&p, "delete b");
    assert_eq!(
        p.gauges().volumes()[0].exclusive,
        p.gauges().volumes()[0].allocated,
        "a alone"
    );
    p.resize("a", 4 * c, true).unwrap();
    gauges_match(&p, "shrink");
    p.discard(a, 2 * c, c).unwrap();
    assert_eq!(
        p.gauges().space().releasing_clusters,
        1,
        "released by the discard"
    );
    p.flush().unwrap();
    assert_eq!(
        p.gauges().space().releasing_clusters,
        0,
        "free at the commit"
    );
    gauges_match(&p, "commit");
}

#[test]
fn commit_flushed_flushes_data_again_only_for_maps_queued_since_the_mark() {
    let (disk, mut p) = small_pool(16 * MIB, 256 * 1024);
    let a = p.create_volume("a", MIB, 512).unwrap();
    p.write(a, 0, &fill(1, C as usize)).unwrap();
    p.flush().unwrap();
    // The caller flushed after reading the mark and nothing was mapped or
    // recorded since: nothing to commit, no flush at all.
    p.write(a, 0, &fill(2, 512)).unwrap(); // in place: no record
    let mark = p.data_mark();
    disk.flush().unwrap(); // the engine's fsync
    let before = disk.stats().flushes;
    p.discard(a, 4 * u64::from(C), u64::from(C)).unwrap(); // nothing mapped there
    p.commit_flushed(mark).unwrap();
    assert_eq!(
        disk.stats().flushes - before,
        0,
        "nothing to commit, no flush"
    );
    // A Map queued after the mark: its data may not be covered by the
    // caller's flush, so the data is flushed before the journal.
    let mark = p.data_mark();
    disk.flush().unwrap();
    p.write(a, 2 * u64::from(C), &fill(3, C as usize)).unwrap();
    let before = disk.stats().flushes;
    p.commit_flushed(mark).unwrap();
    assert_eq!(disk.stats().flushes - before, 2, "data, then journal");
    // Every dropped unflushed write still leaves the mapped data in place.
    let crashed = Arc::new(disk.crash(1));
    let p2 = Pool::open(crashed).unwrap();
    assert_eq!(
        read(&p2, a, 2 * u64::from(C), C as usize),
        fill(3, C as usize)
    );
    // With no Map since the mark, only the journal is flushed.
    p.write(a, 3 * u64::from(C), &fill(4, C as usize)).unwrap();
    let mark = p.data_mark();
    disk.flush().unwrap();
    let before = disk.stats().flushes;
    p.commit_flushed(mark).unwrap();
    assert_eq!(disk.stats().flushes - before, 1, "journal only");
}

/// Revert: the volume reads as the snapshot did, shares its clusters (a
/// write after it copies), frees the clusters only its old content used, and
/// the result survives a reopen. Refusals change nothing.
#[test]
fn revert_takes_the_snapshots_map_and_frees_the_old_exclusive_clusters() {
    let (disk, mut p) = small_pool(16 * MIB, 256 * 1024);
    let cs = u64::from(C);
    let v = p.create_volume("v", 16 * cs, 512).unwrap();
    for i in 0..4u64 {
        p.write(v, i * cs, &fill(1, C as usize)).unwrap();
    }
    p.snapshot("v", "s").unwrap();
    // After the snapshot: two clusters copied on write, two new ones.
    for i in 2..6u64 {
        p.write(v, i * cs, &fill(2, C as usize)).unwrap();
    }
    p.flush().unwrap();
    let used = p.space().used_clusters;
    assert_eq!(p.volume("v").unwrap().exclusive, 4 * cs);
    // Growing after the snapshot: the revert keeps the larger size.
    p.resize("v", 32 * cs, false).unwrap();

    p.revert("v", "s").unwrap();
    checked(&p);
    let want: Vec<u8> = [fill(1, 4 * C as usize), vec![0; 28 * C as usize]].concat();
    assert_eq!(read(&p, v, 0, 32 * C as usize), want);
    let info = p.volume("v").unwrap();
    assert_eq!(
        (info.size, info.allocated, info.exclusive),
        (32 * cs, 4 * cs, 0)
    );
    // The four clusters only the old content used are free: the revert
    // committed before it returned.
    let space = p.space();
    assert_eq!(
        (space.used_clusters, space.releasing_clusters),
        (used - 4, 0)
    );
    // The gauges the metrics read follow the same counts.
    let g = p
        .gauges()
        .volumes()
        .into_iter()
        .find(|g| g.id == v)
        .unwrap();
    assert_eq!((g.allocated, g.exclusive), (4 * cs, 0));
    // A write after the revert copies: the snapshot still reads its data.
    p.write(v, 0, &fill(3, 512)).unwrap();
    let s = p.id("s").unwrap();
    assert_eq!(read(&p, s, 0, C as usize), fill(1, C as usize));
    p.flush().unwrap();

    // Refusals: not a snapshot, a snapshot as the target, unknown names.
    p.create_volume("w", 16 * cs, 4096).unwrap();
    p.snapshot("w", "ws").unwrap();
    assert!(matches!(
        p.revert("v", "w"),
        Err(PoolError::Refused(MetaError::NotASnapshot(_)))
    ));
    assert!(matches!(
        p.revert("s", "s"),
        Err(PoolError::Refused(MetaError::ReadOnly(_)))
    ));
    assert!(matches!(
        p.revert("v", "ws"),
        Err(PoolError::Refused(MetaError::BlockSizeDiffers { .. }))
    ));
    assert!(matches!(
        p.revert("v", "nope"),
        Err(PoolError::NoSuchVolume(_))
    ));
    assert!(matches!(
        p.revert("nope", "s"),
        Err(PoolError::NoSuchVolume(_))
    ));
    let mut expect = fill(3, 512);
    expect.extend(fill(1, C as usize - 512));
    assert_eq!(read(&p, v, 0, C as usize), expect);
    drop(p);

    let p = Pool::open(disk).unwrap();
    checked(&p);
    let v = p.id("v").unwrap();
    assert_eq!(read(&p, v, 0, C as usize), expect);
    assert_eq!(read(&p, v, cs, 3 * C as usize), fill(1, 3 * C as usize));
    assert_eq!(p.volume("v").unwrap().size, 32 * cs);
}
