//! The superblock (FORMAT.md "Superblock") and the device layout
//! (FORMAT.md "Layout").
//!
//! Byte layout of one 4 KiB copy (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"VBLKPOOL"` |
//! | 8 | 4 | version |
//! | 12 | 4 | flags |
//! | 16 | 16 | uuid |
//! | 32 | 4 | cluster_size |
//! | 36 | 8 | clusters |
//! | 44 | 8 | journal_off |
//! | 52 | 8 | journal_len |
//! | 60 | 8 | generation |
//! | 68 | 8 | checkpoint |
//! | 76 | 8 | ckpt_seq |
//! | 84 | 8 | journal_head |
//! | 92 | 4 | crc32c over the 4096 bytes with this field zeroed |
//! | 96 | 16 | boot_id (version 2; zero in version 1) |
//! | 112 | 3984 | reserved, zero |

use super::{le_u32, le_u64, FormatError, BLOCK_SIZE};

/// `magic` of a superblock (FORMAT.md: `"VBLKPOOL"`).
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"VBLKPOOL";
/// The format version this code writes and the highest it reads. Version 2
/// added `boot_id` and the `DataDurable` journal record; a version 1 pool
/// opens and is written as version 2 from its first checkpoint on. Version 3
/// added the `Revert` journal record (an older reader refuses the pool rather
/// than stop its replay at a record it does not know); older pools open and
/// are written as version 3 the same way.
pub const FORMAT_VERSION: u32 = 3;
/// Byte offset of superblock copy A (even generations).
pub const SLOT_A: u64 = 0;
/// Byte offset of superblock copy B (odd generations).
pub const SLOT_B: u64 = 4096;
/// Byte offset of the journal (FORMAT.md "Layout": 64 KiB).
pub const JOURNAL_OFFSET: u64 = 64 * 1024;
/// Smallest cluster size (FORMAT.md: 4 KiB).
pub const MIN_CLUSTER_SIZE: u32 = 4096;
/// Largest cluster size (FORMAT.md: 2 MiB).
pub const MAX_CLUSTER_SIZE: u32 = 2 * 1024 * 1024;
/// Highest generation a superblock may carry. Far beyond any real count of
/// superblock writes; the headroom keeps `generation + 1` from wrapping to
/// a value [`pick`] would rank below the stale copy.
pub const MAX_GENERATION: u64 = (1 << 63) - 1;
/// Most clusters a pool may have: journal `Map` records address a pool
/// cluster with a `u32` (FORMAT.md "Journal").
pub const MAX_CLUSTERS: u64 = 1 << 32;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_FLAGS: usize = 12;
const OFF_UUID: usize = 16;
const OFF_CLUSTER_SIZE: usize = 32;
const OFF_CLUSTERS: usize = 36;
const OFF_JOURNAL_OFF: usize = 44;
const OFF_JOURNAL_LEN: usize = 52;
const OFF_GENERATION: usize = 60;
const OFF_CHECKPOINT: usize = 68;
const OFF_CKPT_SEQ: usize = 76;
const OFF_JOURNAL_HEAD: usize = 84;
const OFF_CRC: usize = 92;
const OFF_BOOT_ID: usize = 96;
const OFF_RESERVED: usize = 112;

/// One superblock copy, exactly the fields of FORMAT.md "Superblock".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Format version ([`FORMAT_VERSION`]); a higher one is refused.
    pub version: u32,
    /// Feature flags; version 1 defines none, so it must be 0.
    pub flags: u32,
    /// Pool identity.
    pub uuid: [u8; 16],
    /// Cluster size in bytes: a power of two in 4 KiB..=2 MiB.
    pub cluster_size: u32,
    /// Number of data clusters (1..=[`MAX_CLUSTERS`]).
    pub clusters: u64,
    /// Byte offset of the journal ring.
    pub journal_off: u64,
    /// Byte length of the journal ring (a non-zero multiple of 4 KiB).
    pub journal_len: u64,
    /// Incremented by every superblock write; even -> copy A, odd -> copy B.
    pub generation: u64,
    /// First cluster of the current checkpoint (0: none).
    pub checkpoint: u64,
    /// Journal sequence number the checkpoint covers up to.
    pub ckpt_seq: u64,
    /// Journal block index (within the ring) where replay starts.
    pub journal_head: u64,
    /// Boot of the host that wrote this superblock, and so every journal
    /// block after `journal_head` (each session starts with a checkpoint):
    /// Linux's `/proc/sys/kernel/random/boot_id`. Zero in version 1.
    pub boot_id: [u8; 16],
}

/// Byte offset of the copy that a superblock of `generation` is written to
/// (FORMAT.md: even -> copy A at 0, odd -> copy B at 4 KiB).
pub fn slot_for(generation: u64) -> u64 {
    if generation.is_multiple_of(2) {
        SLOT_A
    } else {
        SLOT_B
    }
}

/// Where everything lives on a device (FORMAT.md "Layout").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// Byte offset of the journal.
    pub journal_off: u64,
    /// Byte length of the journal.
    pub journal_len: u64,
    /// Byte offset of cluster 0: the journal's end rounded up to the cluster size.
    pub data_off: u64,
    /// Number of clusters.
    pub clusters: u64,
}

impl Layout {
    /// Layout of a new pool on a device of `device_len` bytes: journal at
    /// 64 KiB, clusters from the journal's end rounded up to `cluster_size`,
    /// as many whole clusters as fit (at most [`MAX_CLUSTERS`]).
    pub fn new(
        device_len: u64,
        cluster_size: u32,
        journal_len: u64,
    ) -> Result<Layout, FormatError> {
        check_cluster_size(cluster_size)?;
        check_journal(JOURNAL_OFFSET, journal_len)?;
        let data_off = data_offset(JOURNAL_OFFSET, journal_len, cluster_size)?;
        let clusters = device_len.saturating_sub(data_off) / u64::from(cluster_size);
        if clusters == 0 {
            return Err(FormatError::invalid(
                "device_len",
                format!(
                    "device of {device_len} bytes has no room for a cluster after the journal (clusters start at {data_off})"
                ),
            ));
        }
        if clusters > MAX_CLUSTERS {
            return Err(FormatError::invalid(
                "clusters",
                format!("{clusters} clusters exceed the maximum {MAX_CLUSTERS}; choose a larger cluster size"),
            ));
        }
        Ok(Layout {
            cluster_size,
            journal_off: JOURNAL_OFFSET,
            journal_len,
            data_off,
            clusters,
        })
    }

    /// Byte offset of cluster `index`, `None` if there is no such cluster.
    pub fn cluster_offset(&self, index: u64) -> Option<u64> {
        if index >= self.clusters {
            return None;
        }
        index
            .checked_mul(u64::from(self.cluster_size))?
            .checked_add(self.data_off)
    }

    /// Number of 4 KiB blocks in the journal ring.
    pub fn journal_blocks(&self) -> u64 {
        self.journal_len / BLOCK_SIZE as u64
    }

    /// Byte offset of journal block `index` in the ring, `None` past its end.
    pub fn journal_block_offset(&self, index: u64) -> Option<u64> {
        if index >= self.journal_blocks() {
            return None;
        }
        Some(self.journal_off + index * BLOCK_SIZE as u64)
    }

    /// One past the last byte the pool uses.
    pub fn end(&self) -> u64 {
        // Cannot overflow: checked by `Layout::new` and `geometry`.
        self.data_off + self.clusters * u64::from(self.cluster_size)
    }
}

/// FORMAT.md "Layout": `C` is a power of two from 4 KiB to 2 MiB.
fn check_cluster_size(cluster_size: u32) -> Result<(), FormatError> {
    if !cluster_size.is_power_of_two()
        || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cluster_size)
    {
        return Err(FormatError::invalid(
            "cluster_size",
            format!(
                "{cluster_size} is not a power of two in {MIN_CLUSTER_SIZE}..={MAX_CLUSTER_SIZE}"
            ),
        ));
    }
    Ok(())
}

/// FORMAT.md "Layout": the journal is a ring of 4 KiB blocks after the two
/// superblock copies.
fn check_journal(journal_off: u64, journal_len: u64) -> Result<(), FormatError> {
    if journal_off < SLOT_B + BLOCK_SIZE as u64 || !journal_off.is_multiple_of(BLOCK_SIZE as u64) {
        return Err(FormatError::invalid(
            "journal_off",
            format!("{journal_off} overlaps the superblocks or is not 4 KiB aligned"),
        ));
    }
    if journal_len == 0 || !journal_len.is_multiple_of(BLOCK_SIZE as u64) {
        return Err(FormatError::invalid(
            "journal_len",
            format!("{journal_len} is not a non-zero multiple of 4096"),
        ));
    }
    Ok(())
}

/// FORMAT.md "Layout": clusters start at the journal's end rounded up to `C`.
fn data_offset(journal_off: u64, journal_len: u64, cluster_size: u32) -> Result<u64, FormatError> {
    let c = u64::from(cluster_size);
    journal_off
        .checked_add(journal_len)
        .and_then(|end| end.checked_next_multiple_of(c))
        .ok_or_else(|| FormatError::invalid("journal_len", "journal ends beyond 2^64 bytes"))
}

impl Superblock {
    /// Generation-0 superblock of a new pool with `layout`.
    pub fn new(layout: &Layout, uuid: [u8; 16]) -> Superblock {
        Superblock {
            version: FORMAT_VERSION,
            flags: 0,
            uuid,
            cluster_size: layout.cluster_size,
            clusters: layout.clusters,
            journal_off: layout.journal_off,
            journal_len: layout.journal_len,
            generation: 0,
            checkpoint: 0,
            ckpt_seq: 0,
            journal_head: 0,
            boot_id: [0; 16],
        }
    }

    /// Byte offset of the copy this superblock is written to ([`slot_for`]).
    pub fn slot(&self) -> u64 {
        slot_for(self.generation)
    }

    /// The 4 KiB image of this copy, crc32c included (FORMAT.md: over the
    /// block with the crc field zeroed; reserved bytes are zero).
    pub fn encode(&self) -> [u8; BLOCK_SIZE] {
        let mut b = [0u8; BLOCK_SIZE];
        b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&SUPERBLOCK_MAGIC);
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&self.version.to_le_bytes());
        b[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.uuid);
        b[OFF_BOOT_ID..OFF_BOOT_ID + 16].copy_from_slice(&self.boot_id);
        b[OFF_CLUSTER_SIZE..OFF_CLUSTER_SIZE + 4].copy_from_slice(&self.cluster_size.to_le_bytes());
        let u64s = [
            (OFF_CLUSTERS, self.clusters),
            (OFF_JOURNAL_OFF, self.journal_off),
            (OFF_JOURNAL_LEN, self.journal_len),
            (OFF_GENERATION, self.generation),
            (OFF_CHECKPOINT, self.checkpoint),
            (OFF_CKPT_SEQ, self.ckpt_seq),
            (OFF_JOURNAL_HEAD, self.journal_head),
        ];
        for (off, v) in u64s {
            b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = checksum(&b);
        b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates one copy. Checks, in order:
    /// 1. at least 4096 bytes ([`FormatError::Truncated`]; only the first 4096 are read);
    /// 2. magic `"VBLKPOOL"` ([`FormatError::BadMagic`]);
    /// 3. crc32c over the block with the crc field zeroed ([`FormatError::BadChecksum`]);
    /// 4. version: not newer than [`FORMAT_VERSION`] ([`FormatError::FutureVersion`]), not 0;
    /// 5. every field against FORMAT.md ([`Superblock::validate`]) and zero reserved bytes.
    ///
    /// The checksum is verified before the version (FORMAT.md: magic, version
    /// and crc32c keep their offsets in every version), so a corrupted version
    /// field reads as a bad checksum, and `FutureVersion` means a newer writer
    /// really wrote this copy.
    pub fn decode(bytes: &[u8]) -> Result<Superblock, FormatError> {
        let b = bytes
            .get(..BLOCK_SIZE)
            .ok_or(FormatError::Truncated { len: bytes.len() })?;
        let trunc = || FormatError::Truncated { len: bytes.len() };
        if b.get(OFF_MAGIC..OFF_MAGIC + 8) != Some(&SUPERBLOCK_MAGIC[..]) {
            return Err(FormatError::BadMagic);
        }
        let stored = le_u32(b, OFF_CRC).ok_or_else(trunc)?;
        let computed = checksum(b);
        if stored != computed {
            return Err(FormatError::BadChecksum { stored, computed });
        }
        let u64_at = |off| le_u64(b, off).ok_or_else(trunc);
        let u32_at = |off| le_u32(b, off).ok_or_else(trunc);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(b.get(OFF_UUID..OFF_UUID + 16).ok_or_else(trunc)?);
        let mut boot_id = [0u8; 16];
        boot_id.copy_from_slice(b.get(OFF_BOOT_ID..OFF_BOOT_ID + 16).ok_or_else(trunc)?);
        let sb = Superblock {
            version: u32_at(OFF_VERSION)?,
            flags: u32_at(OFF_FLAGS)?,
            uuid,
            cluster_size: u32_at(OFF_CLUSTER_SIZE)?,
            clusters: u64_at(OFF_CLUSTERS)?,
            journal_off: u64_at(OFF_JOURNAL_OFF)?,
            journal_len: u64_at(OFF_JOURNAL_LEN)?,
            generation: u64_at(OFF_GENERATION)?,
            checkpoint: u64_at(OFF_CHECKPOINT)?,
            ckpt_seq: u64_at(OFF_CKPT_SEQ)?,
            journal_head: u64_at(OFF_JOURNAL_HEAD)?,
            boot_id,
        };
        sb.validate()?;
        // Version 1 reserved everything from byte 96 on.
        let reserved = if sb.version == 1 {
            OFF_BOOT_ID
        } else {
            OFF_RESERVED
        };
        if b.get(reserved..).is_some_and(|r| r.iter().any(|&x| x != 0)) {
            return Err(FormatError::invalid(
                "reserved",
                format!("bytes {reserved}..4096 must be zero"),
            ));
        }
        Ok(sb)
    }

    /// Checks every field against FORMAT.md, without the device size (see
    /// [`Superblock::check_device`]):
    /// - version: 1..=[`FORMAT_VERSION`] ("a pool with a higher version is refused");
    /// - flags: 0 (version 1 defines no flag; an unknown flag is refused, not ignored);
    /// - cluster_size: a power of two in 4 KiB..=2 MiB ("Layout");
    /// - clusters: 1..=2^32 (a `Map` record addresses a cluster with a `u32`);
    /// - journal_off: 4 KiB aligned, after both superblock copies (>= 8 KiB);
    /// - journal_len: a non-zero multiple of 4 KiB (a ring of 4 KiB blocks);
    /// - the cluster area (journal end rounded up to `C`, plus `clusters * C`) ends below 2^64;
    /// - checkpoint: 0 (none) or a cluster index below `clusters`;
    /// - journal_head: a block index inside the journal ring;
    /// - generation: at most [`MAX_GENERATION`].
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.version > FORMAT_VERSION {
            return Err(FormatError::FutureVersion {
                found: self.version,
                supported: FORMAT_VERSION,
            });
        }
        if self.version == 0 {
            return Err(FormatError::invalid("version", "0 is not a format version"));
        }
        if self.flags != 0 {
            return Err(FormatError::invalid(
                "flags",
                format!("unknown flags {:#x}", self.flags),
            ));
        }
        if self.generation > MAX_GENERATION {
            return Err(FormatError::invalid(
                "generation",
                format!("{} is above the highest, {MAX_GENERATION}", self.generation),
            ));
        }
        self.layout()?;
        if self.checkpoint >= self.clusters {
            return Err(FormatError::invalid(
                "checkpoint",
                format!(
                    "cluster {} is beyond the {} clusters",
                    self.checkpoint, self.clusters
                ),
            ));
        }
        if self.journal_head >= self.journal_len / BLOCK_SIZE as u64 {
            return Err(FormatError::invalid(
                "journal_head",
                format!(
                    "block {} is beyond the journal's {} blocks",
                    self.journal_head,
                    self.journal_len / BLOCK_SIZE as u64
                ),
            ));
        }
        Ok(())
    }

    /// The layout these fields describe (cluster size, journal and cluster
    /// area checks of [`Superblock::validate`]).
    pub fn layout(&self) -> Result<Layout, FormatError> {
        check_cluster_size(self.cluster_size)?;
        check_journal(self.journal_off, self.journal_len)?;
        if self.clusters == 0 {
            return Err(FormatError::invalid("clusters", "zero clusters"));
        }
        if self.clusters > MAX_CLUSTERS {
            return Err(FormatError::invalid(
                "clusters",
                format!("{} exceeds the maximum {MAX_CLUSTERS}", self.clusters),
            ));
        }
        let data_off = data_offset(self.journal_off, self.journal_len, self.cluster_size)?;
        self.clusters
            .checked_mul(u64::from(self.cluster_size))
            .and_then(|len| len.checked_add(data_off))
            .ok_or_else(|| {
                FormatError::invalid("clusters", "cluster area ends beyond 2^64 bytes")
            })?;
        Ok(Layout {
            cluster_size: self.cluster_size,
            journal_off: self.journal_off,
            journal_len: self.journal_len,
            data_off,
            clusters: self.clusters,
        })
    }

    /// The layout, checked to fit in a device of `device_len` bytes (FORMAT.md
    /// "Layout": journal and clusters inside the device).
    pub fn check_device(&self, device_len: u64) -> Result<Layout, FormatError> {
        let layout = self.layout()?;
        if layout.end() > device_len {
            return Err(FormatError::invalid(
                "clusters",
                format!(
                    "pool ends at byte {} beyond the device's {device_len} bytes",
                    layout.end()
                ),
            ));
        }
        Ok(layout)
    }
}

/// crc32c of a superblock image with the crc field taken as zero.
fn checksum(b: &[u8]) -> u32 {
    let head = b.get(..OFF_CRC).unwrap_or_default();
    let tail = b.get(OFF_CRC + 4..).unwrap_or_default();
    let crc = crc32c::crc32c(head);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, tail)
}

/// How specific an error is, to choose which one [`pick`] reports.
fn rank(e: &FormatError) -> u8 {
    match e {
        FormatError::Truncated { .. } => 0,
        FormatError::BadMagic => 1,
        FormatError::BadChecksum { .. } => 2,
        FormatError::Invalid { .. } => 3,
        FormatError::FutureVersion { .. } => 4,
    }
}

/// Chooses between the decoded copies `a` (read at offset 0) and `b` (read at
/// 4 KiB), FORMAT.md "Superblock": the valid one with the higher generation.
///
/// - A copy whose generation has the wrong parity for its slot (odd in A,
///   even in B) is invalid: it cannot have been written there.
/// - If either copy is a valid block of a *newer* format version, the pool is
///   refused with [`FormatError::FutureVersion`], even if the other copy is
///   valid: the newer writer may have changed what the older copy means.
/// - Both valid: the higher generation (never equal, the parities differ).
/// - One valid: that one (a torn write of the other never loses it).
/// - Both invalid: the more specific of the two errors, in the order
///   `Invalid` > `BadChecksum` > `BadMagic` > `Truncated` (so a wiped copy
///   does not hide a corrupt one); on a tie, copy A's.
pub fn pick(
    a: Result<Superblock, FormatError>,
    b: Result<Superblock, FormatError>,
) -> Result<Superblock, FormatError> {
    for r in [&a, &b] {
        if let Err(e @ FormatError::FutureVersion { .. }) = r {
            return Err(e.clone());
        }
    }
    let parity = |r: Result<Superblock, FormatError>, slot: u64| {
        r.and_then(|sb| {
            if sb.slot() == slot {
                Ok(sb)
            } else {
                Err(FormatError::invalid(
                    "generation",
                    format!(
                        "generation {} does not belong in the copy at {slot}",
                        sb.generation
                    ),
                ))
            }
        })
    };
    match (parity(a, SLOT_A), parity(b, SLOT_B)) {
        (Ok(x), Ok(y)) => Ok(if y.generation > x.generation { y } else { x }),
        (Ok(x), Err(_)) | (Err(_), Ok(x)) => Ok(x),
        (Err(ea), Err(eb)) => Err(if rank(&eb) > rank(&ea) { eb } else { ea }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TestRng;

    fn sample() -> Superblock {
        let layout = Layout::new(1 << 30, 64 * 1024, 4 << 20).expect("layout");
        let mut sb = Superblock::new(&layout, *b"0123456789abcdef");
        sb.generation = 6;
        sb.checkpoint = 17;
        sb.ckpt_seq = 12345;
        sb.journal_head = 3;
        sb
    }

    fn invalid_field(r: Result<Superblock, FormatError>) -> &'static str {
        match r {
            Err(FormatError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn round_trip() {
        let sb = sample();
        let img = sb.encode();
        assert_eq!(&img[..8], b"VBLKPOOL");
        assert_eq!(Superblock::decode(&img), Ok(sb));
        // Longer input: only the first block is read.
        let mut long = img.to_vec();
        long.extend_from_slice(&[0xff; 100]);
        assert_eq!(Superblock::decode(&long), Ok(sb));
    }

    #[test]
    fn layout_helpers() {
        let l = Layout::new(1 << 30, 64 * 1024, 4 << 20).unwrap();
        assert_eq!(l.journal_off, 64 * 1024);
        assert_eq!(l.data_off, 64 * 1024 + (4 << 20)); // already a multiple of 64 KiB
        assert_eq!(l.clusters, ((1u64 << 30) - l.data_off) / (64 * 1024));
        assert_eq!(l.cluster_offset(0), Some(l.data_off));
        assert_eq!(l.cluster_offset(2), Some(l.data_off + 128 * 1024));
        assert_eq!(l.cluster_offset(l.clusters), None);
        assert!(l.end() <= 1 << 30);
        assert_eq!(l.journal_blocks(), 1024);
        assert_eq!(l.journal_block_offset(1), Some(64 * 1024 + 4096));
        assert_eq!(l.journal_block_offset(1024), None);

        // Rounding up to a 2 MiB cluster.
        let l = Layout::new(64 << 20, 2 << 20, 4096).unwrap();
        assert_eq!(l.data_off, 2 << 20);
        assert_eq!(l.clusters, 31);

        assert_eq!(
            invalid_layout(Layout::new(1 << 30, 3 * 4096, 4096)),
            "cluster_size"
        );
        assert_eq!(
            invalid_layout(Layout::new(1 << 30, 2048, 4096)),
            "cluster_size"
        );
        assert_eq!(
            invalid_layout(Layout::new(1 << 30, 4 << 20, 4096)),
            "cluster_size"
        );
        assert_eq!(invalid_layout(Layout::new(1 << 30, 4096, 0)), "journal_len");
        assert_eq!(
            invalid_layout(Layout::new(1 << 30, 4096, 1000)),
            "journal_len"
        );
        assert_eq!(
            invalid_layout(Layout::new(64 * 1024 + 4096, 4096, 4096)),
            "device_len"
        );
        assert_eq!(invalid_layout(Layout::new(0, 4096, 4096)), "device_len");
        assert_eq!(
            invalid_layout(Layout::new(u64::MAX, 4096, 4096)),
            "clusters"
        );
        assert!(Layout::new(64 * 1024 + 8192, 4096, 4096).is_ok_and(|l| l.clusters == 1));
    }

    fn invalid_layout(r: Result<Layout, FormatError>) -> &'static str {
        match r {
            Err(FormatError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn slots() {
        assert_eq!(slot_for(0), 0);
        assert_eq!(slot_for(1), 4096);
        assert_eq!(slot_for(7), 4096);
        assert_eq!(slot_for(u64::MAX - 1), 0);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let img = sample().encode();
        for bit in 0..BLOCK_SIZE * 8 {
            let mut c = img;
            c[bit / 8] ^= 1 << (bit % 8);
            let r = Superblock::decode(&c);
            assert!(r.is_err(), "flip of bit {bit} not detected");
            if bit / 8 >= 8 {
                assert!(
                    matches!(r, Err(FormatError::BadChecksum { .. })),
                    "bit {bit}: {r:?}"
                );
            } else {
                assert_eq!(r, Err(FormatError::BadMagic), "bit {bit}");
            }
        }
    }

    #[test]
    fn truncated() {
        let img = sample().encode();
        for len in [0, 1, 8, 95, 96, 4095] {
            assert_eq!(
                Superblock::decode(&img[..len]),
                Err(FormatError::Truncated { len })
            );
        }
    }

    #[test]
    fn future_version_refused() {
        let mut sb = sample();
        sb.version = FORMAT_VERSION + 1;
        assert_eq!(
            Superblock::decode(&sb.encode()),
            Err(FormatError::FutureVersion {
                found: FORMAT_VERSION + 1,
                supported: FORMAT_VERSION
            })
        );
        let msg = Superblock::decode(&sb.encode()).unwrap_err().to_string();
        assert!(
            msg.contains("version 4") && msg.contains("supported version 3"),
            "{msg}"
        );
        sb.version = 0;
        assert_eq!(invalid_field(Superblock::decode(&sb.encode())), "version");
    }

    #[test]
    fn invalid_fields() {
        type Mutate = fn(&mut Superblock);
        let cases: Vec<(&str, Mutate)> = vec![
            ("flags", |s| s.flags = 1),
            ("cluster_size", |s| s.cluster_size = 65 * 1024),
            ("cluster_size", |s| s.cluster_size = 2048),
            ("cluster_size", |s| s.cluster_size = 4 << 20),
            ("cluster_size", |s| s.cluster_size = 0),
            ("clusters", |s| s.clusters = 0),
            ("clusters", |s| s.clusters = MAX_CLUSTERS + 1),
            ("journal_off", |s| s.journal_off = 4096),
            ("journal_off", |s| s.journal_off = 0),
            ("journal_off", |s| s.journal_off = 64 * 1024 + 1),
            ("journal_len", |s| s.journal_len = 0),
            ("journal_len", |s| s.journal_len = 4097),
            ("journal_len", |s| s.journal_len = u64::MAX - 4095),
            ("clusters", |s| {
                s.cluster_size = 2 << 20;
                s.clusters = MAX_CLUSTERS;
                s.journal_off = (u64::MAX - (16 << 20)) & !4095;
            }),
            ("checkpoint", |s| s.checkpoint = s.clusters),
            ("journal_head", |s| s.journal_head = s.journal_len / 4096),
        ];
        for (field, f) in cases {
            let mut sb = sample();
            f(&mut sb);
            assert_eq!(
                invalid_field(Superblock::decode(&sb.encode())),
                field,
                "{sb:?}"
            );
        }
        // Reserved bytes must be zero (crc recomputed so only that check fails).
        let mut img = sample().encode();
        img[1000] = 1;
        img[OFF_CRC..OFF_CRC + 4].fill(0);
        let crc = checksum(&img);
        img[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(invalid_field(Superblock::decode(&img)), "reserved");
    }

    /// Re-crcs an image whose bytes a test changed.
    fn resealed(mut img: [u8; BLOCK_SIZE]) -> [u8; BLOCK_SIZE] {
        img[OFF_CRC..OFF_CRC + 4].fill(0);
        let crc = checksum(&img);
        img[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        img
    }

    #[test]
    fn boot_id_round_trips_and_version_1_still_reads() {
        let mut sb = sample();
        sb.boot_id = *b"fedcba9876543210";
        assert_eq!(Superblock::decode(&sb.encode()), Ok(sb));
        // A version 1 copy (bytes 96.. reserved, zero) reads with no boot id.
        let mut v1 = sample();
        v1.version = 1;
        assert_eq!(Superblock::decode(&v1.encode()), Ok(v1));
        assert_eq!(v1.boot_id, [0; 16]);
        // ... and a non-zero byte where version 2 keeps the boot id is refused.
        let mut img = v1.encode();
        img[OFF_BOOT_ID + 3] = 1;
        assert_eq!(
            invalid_field(Superblock::decode(&resealed(img))),
            "reserved"
        );
    }

    #[test]
    fn device_fit() {
        let sb = sample();
        assert!(sb.check_device(1 << 30).is_ok());
        assert_eq!(invalid_layout(sb.check_device((1 << 30) - 1)), "clusters");
        assert_eq!(invalid_layout(sb.check_device(0)), "clusters");
    }

    #[test]
    fn pick_all_combinations() {
        let with_gen = |g| {
            let mut sb = sample();
            sb.generation = g;
            sb
        };
        let dec = |sb: Superblock| Superblock::decode(&sb.encode());
        // All fields live in the first sector, so a torn write of a copy
        // leaves either the whole old or the whole new sector 0: model the
        // old one as garbage (bad magic) or as a corrupted image (bad crc).
        let wiped = |sb: Superblock| {
            let mut img = sb.encode();
            img[..512].fill(0xa5);
            Superblock::decode(&img)
        };
        let torn = |sb: Superblock| {
            let mut img = sb.encode();
            img[70] ^= 0x10;
            Superblock::decode(&img)
        };
        // Both valid, either way round.
        assert_eq!(pick(dec(with_gen(4)), dec(with_gen(5))), Ok(with_gen(5)));
        assert_eq!(pick(dec(with_gen(6)), dec(with_gen(5))), Ok(with_gen(6)));
        // One torn: the other wins, whatever its generation.
        assert_eq!(pick(torn(with_gen(6)), dec(with_gen(5))), Ok(with_gen(5)));
        assert_eq!(pick(dec(with_gen(4)), torn(with_gen(5))), Ok(with_gen(4)));
        assert_eq!(pick(wiped(with_gen(6)), dec(with_gen(5))), Ok(with_gen(5)));
        assert_eq!(pick(dec(with_gen(4)), wiped(with_gen(5))), Ok(with_gen(4)));
        assert_eq!(
            pick(wiped(with_gen(4)), wiped(with_gen(5))),
            Err(FormatError::BadMagic)
        );
        assert_eq!(
            pick(dec(with_gen(0)), Err(FormatError::BadMagic)),
            Ok(with_gen(0))
        );
        assert_eq!(
            pick(Err(FormatError::Truncated { len: 0 }), dec(with_gen(1))),
            Ok(with_gen(1))
        );
        // Wrong parity for the slot: that copy is not trusted.
        assert_eq!(pick(dec(with_gen(7)), dec(with_gen(5))), Ok(with_gen(5)));
        assert_eq!(pick(dec(with_gen(4)), dec(with_gen(8))), Ok(with_gen(4)));
        assert_eq!(
            invalid_field(pick(dec(with_gen(3)), dec(with_gen(2)))),
            "generation"
        );
        // Both invalid: the more specific error, A's on a tie.
        assert!(matches!(
            pick(torn(with_gen(4)), Err(FormatError::BadMagic)),
            Err(FormatError::BadChecksum { .. })
        ));
        assert!(matches!(
            pick(Err(FormatError::BadMagic), torn(with_gen(5))),
            Err(FormatError::BadChecksum { .. })
        ));
        assert_eq!(
            pick(
                Err(FormatError::BadMagic),
                Err(FormatError::Truncated { len: 3 })
            ),
            Err(FormatError::BadMagic)
        );
        let ta = torn(with_gen(4));
        assert_eq!(pick(ta.clone(), torn(with_gen(5))), ta);
        // A newer writer's copy refuses the pool even beside a valid older copy.
        let mut future = with_gen(5);
        future.version = FORMAT_VERSION + 1;
        let fv = Err(FormatError::FutureVersion {
            found: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION,
        });
        assert_eq!(pick(dec(with_gen(4)), dec(future)), fv);
        let mut future = with_gen(4);
        future.version = FORMAT_VERSION + 1;
        assert_eq!(pick(dec(future), dec(with_gen(3))), fv);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = TestRng::new(0x5eed_0001);
        let mut buf = [0u8; BLOCK_SIZE];
        for i in 0..20_000 {
            rng.fill(&mut buf);
            if i % 2 == 0 {
                buf[..8].copy_from_slice(&SUPERBLOCK_MAGIC); // get past the magic check
            }
            assert!(Superblock::decode(&buf).is_err());
            let len = rng.below(BLOCK_SIZE as u64 + 1) as usize;
            let _ = Superblock::decode(&buf[..len]);
        }
    }

    #[test]
    fn random_field_values_never_panic() {
        // Valid crc, random (often extreme) field values: exercises every
        // field check, which must reject or accept without panicking, and
        // whatever is accepted must re-encode to the same bytes.
        let mut rng = TestRng::new(0x5eed_0002);
        let extremes = [
            0,
            1,
            4096,
            65536,
            2 << 20,
            u32::MAX as u64,
            MAX_CLUSTERS,
            u64::MAX / 2,
            u64::MAX,
        ];
        let pick_val = |rng: &mut TestRng| match rng.below(3) {
            0 => extremes[rng.below(extremes.len() as u64) as usize],
            1 => rng.below(1 << 20),
            _ => rng.next_u64(),
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut sb = sample();
            for _ in 0..1 + rng.below(3) {
                let v = pick_val(&mut rng);
                match rng.below(11) {
                    0 => sb.version = v as u32,
                    1 => sb.flags = v as u32,
                    2 => sb.cluster_size = v as u32,
                    3 => sb.clusters = v,
                    4 => sb.journal_off = v,
                    5 => sb.journal_len = v,
                    6 => sb.generation = v,
                    7 => sb.checkpoint = v,
                    8 => sb.ckpt_seq = v,
                    9 => sb.journal_head = v,
                    _ => sb.uuid = [v as u8; 16],
                }
            }
            if let Ok(d) = Superblock::decode(&sb.encode()) {
                accepted += 1;
                assert_eq!(d, sb);
                assert_eq!(d.encode(), sb.encode());
                let l = d.layout().expect("accepted superblock has a layout");
                let _ = l.cluster_offset(d.clusters - 1).expect("last cluster");
                let _ = d.check_device(u64::MAX);
            }
        }
        assert!(accepted > 100, "only {accepted} accepted");
    }

    #[test]
    fn display_messages() {
        let e = FormatError::BadChecksum {
            stored: 1,
            computed: 2,
        };
        assert_eq!(
            e.to_string(),
            "bad checksum: stored crc32c 0x00000001, computed 0x00000002"
        );
        assert_eq!(
            FormatError::Truncated { len: 10 }.to_string(),
            "truncated: 10 bytes, need 4096"
        );
        assert_eq!(
            FormatError::invalid("clusters", "zero clusters").to_string(),
            "invalid clusters: zero clusters"
        );
        assert!(FormatError::BadMagic.to_string().contains("magic"));
    }
}
