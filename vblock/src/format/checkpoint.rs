//! Checkpoints (FORMAT.md "Checkpoint"): the whole metadata serialized into
//! a chain of pool clusters.
//!
//! Each cluster of the chain starts with a 32-byte header, then payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"VBCK"` |
//! | 4 | 4 | index of this cluster in the chain (0, 1, ...) |
//! | 8 | 8 | seq: journal sequence number the checkpoint covers up to |
//! | 16 | 4 | next: pool cluster of the next link, 0 on the last |
//! | 20 | 4 | used: payload bytes in this cluster |
//! | 24 | 4 | reserved, zero |
//! | 28 | 4 | crc32c over the header (crc field zeroed) and the `used` payload bytes |
//!
//! The payloads of the chain, concatenated, are the [`Image`]:
//!
//! ```text
//! volume_count u32
//! per volume: id u32, kind u8 (0 volume, 1 snapshot, 2 clone), reserved u8,
//!             name_len u16, size u64, block_size u32, run_count u32,
//!             reserved u32 (zero), name,
//!             runs: (vstart u64, pstart u32, len u32) * run_count
//! ```
//!
//! A run maps `len` consecutive virtual clusters from `vstart` to consecutive
//! pool clusters from `pstart`: sequentially written volumes cost a few runs,
//! a randomly written one 16 bytes per cluster at worst.

use super::{le_u16, le_u32, le_u64, FormatError};

/// `magic` of a checkpoint cluster: `"VBCK"` as a little-endian u32.
pub const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"VBCK");
/// Header bytes at the start of every checkpoint cluster.
pub const HEADER_LEN: usize = 32;
/// Fixed bytes of one volume entry before its name.
pub const VOLUME_FIXED_LEN: usize = 28;
/// Bytes of one run.
pub const RUN_LEN: usize = 16;

/// Kind code of a volume entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKindCode {
    Volume = 0,
    Snapshot = 1,
    Clone = 2,
}

/// `len` virtual clusters from `vstart` live in pool clusters from `pstart`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub vstart: u64,
    pub pstart: u32,
    pub len: u32,
}

/// One volume of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeImage {
    pub id: u32,
    pub kind: VolumeKindCode,
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    pub runs: Vec<Run>,
}

/// The metadata a checkpoint holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub volumes: Vec<VolumeImage>,
}

/// Header of one checkpoint cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkHeader {
    pub index: u32,
    pub seq: u64,
    pub next: u32,
    pub used: u32,
}

impl Image {
    /// Serialized payload length of a volume with `name_len` bytes of name
    /// and `runs` runs (for space reservations before serializing).
    pub fn volume_len(name_len: usize, runs: usize) -> usize {
        VOLUME_FIXED_LEN + name_len + runs * RUN_LEN
    }

    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let len = 4 + self
            .volumes
            .iter()
            .map(|v| Self::volume_len(v.name.len(), v.runs.len()))
            .sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(self.volumes.len() as u32).to_le_bytes());
        for v in &self.volumes {
            out.extend_from_slice(&v.id.to_le_bytes());
            out.push(v.kind as u8);
            out.push(0);
            out.extend_from_slice(&(v.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&v.size.to_le_bytes());
            out.extend_from_slice(&v.block_size.to_le_bytes());
            out.extend_from_slice(&(v.runs.len() as u32).to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(v.name.as_bytes());
            for r in &v.runs {
                out.extend_from_slice(&r.vstart.to_le_bytes());
                out.extend_from_slice(&r.pstart.to_le_bytes());
                out.extend_from_slice(&r.len.to_le_bytes());
            }
        }
        out
    }

    /// Parses the payload. Checks the structure only (lengths, kind codes,
    /// UTF-8 names, no trailing bytes, runs without overflow); whether the
    /// volumes make sense together is for the metadata layer to refuse.
    pub fn decode(b: &[u8]) -> Result<Image, FormatError> {
        let short = || FormatError::invalid("checkpoint", "payload ends inside an entry");
        let count = le_u32(b, 0).ok_or_else(short)?;
        let mut pos = 4usize;
        // Bounded by what the payload can hold, not by the untrusted count.
        let mut volumes = Vec::with_capacity((count as usize).min(b.len() / VOLUME_FIXED_LEN));
        for _ in 0..count {
            let id = le_u32(b, pos).ok_or_else(short)?;
            super::journal::check_volume_id(id, "checkpoint.id")?;
            let kind = match b.get(pos + 4).ok_or_else(short)? {
                0 => VolumeKindCode::Volume,
                1 => VolumeKindCode::Snapshot,
                2 => VolumeKindCode::Clone,
                k => {
                    return Err(FormatError::invalid(
                        "checkpoint.kind",
                        format!("unknown volume kind {k}"),
                    ))
                }
            };
            let name_len = usize::from(le_u16(b, pos + 6).ok_or_else(short)?);
            let size = le_u64(b, pos + 8).ok_or_else(short)?;
            let block_size = le_u32(b, pos + 16).ok_or_else(short)?;
            let run_count = le_u32(b, pos + 20).ok_or_else(short)? as usize;
            if le_u32(b, pos + 24).ok_or_else(short)? != 0 {
                return Err(FormatError::invalid("checkpoint.reserved", "must be zero"));
            }
            pos += VOLUME_FIXED_LEN;
            let name = b.get(pos..pos + name_len).ok_or_else(short)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| FormatError::invalid("checkpoint.name", "not UTF-8"))?
                .to_owned();
            pos += name_len;
            let runs_len = run_count.checked_mul(RUN_LEN).ok_or_else(short)?;
            let runs_bytes = b.get(pos..pos + runs_len).ok_or_else(short)?;
            let mut runs = Vec::with_capacity(run_count);
            for r in runs_bytes.chunks_exact(RUN_LEN) {
                let run = Run {
                    vstart: le_u64(r, 0).ok_or_else(short)?,
                    pstart: le_u32(r, 8).ok_or_else(short)?,
                    len: le_u32(r, 12).ok_or_else(short)?,
                };
                if run.len == 0
                    || run.vstart.checked_add(u64::from(run.len)).is_none()
                    || run.pstart.checked_add(run.len).is_none()
                {
                    return Err(FormatError::invalid(
                        "checkpoint.run",
                        format!("empty or overflowing run {run:?}"),
                    ));
                }
                runs.push(run);
            }
            pos += runs_len;
            volumes.push(VolumeImage {
                id,
                kind,
                name,
                size,
                block_size,
                runs,
            });
        }
        if pos != b.len() {
            return Err(FormatError::invalid(
                "checkpoint",
                format!("{} bytes after the last volume", b.len() - pos),
            ));
        }
        Ok(Image { volumes })
    }
}

/// Payload bytes one cluster of `cluster_size` holds.
pub fn payload_per_cluster(cluster_size: u32) -> usize {
    cluster_size as usize - HEADER_LEN
}

/// Clusters a payload of `len` bytes needs (at least one).
pub fn clusters_needed(len: usize, cluster_size: u32) -> usize {
    len.div_ceil(payload_per_cluster(cluster_size)).max(1)
}

/// crc32c of a link: header with the crc field zeroed, then the payload.
fn link_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&header[..HEADER_LEN]);
    h[28..32].fill(0);
    crc32c::crc32c_append(crc32c::crc32c(&h), payload)
}

/// Fills `cluster` (one whole cluster) with link `header` and `payload`
/// (`payload.len()` must equal `header.used`, at most the cluster minus the header).
pub fn encode_link(cluster: &mut [u8], header: LinkHeader, payload: &[u8]) {
    cluster.fill(0);
    cluster[0..4].copy_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
    cluster[4..8].copy_from_slice(&header.index.to_le_bytes());
    cluster[8..16].copy_from_slice(&header.seq.to_le_bytes());
    cluster[16..20].copy_from_slice(&header.next.to_le_bytes());
    cluster[20..24].copy_from_slice(&header.used.to_le_bytes());
    cluster[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let crc = link_crc(cluster, payload);
    cluster[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// Parses one link: magic, crc, and that `index` and `seq` are the expected
/// ones (a stale cluster of an older checkpoint fails here). Returns the
/// header and its payload.
pub fn decode_link(
    cluster: &[u8],
    index: u32,
    seq: u64,
) -> Result<(LinkHeader, &[u8]), FormatError> {
    let trunc = || FormatError::Truncated { len: cluster.len() };
    if cluster.len() < HEADER_LEN {
        return Err(trunc());
    }
    if le_u32(cluster, 0).ok_or_else(trunc)? != CHECKPOINT_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let header = LinkHeader {
        index: le_u32(cluster, 4).ok_or_else(trunc)?,
        seq: le_u64(cluster, 8).ok_or_else(trunc)?,
        next: le_u32(cluster, 16).ok_or_else(trunc)?,
        used: le_u32(cluster, 20).ok_or_else(trunc)?,
    };
    let payload = cluster
        .get(HEADER_LEN..HEADER_LEN + header.used as usize)
        .ok_or_else(|| {
            FormatError::invalid(
                "checkpoint.used",
                format!("{} bytes do not fit in the cluster", header.used),
            )
        })?;
    let stored = le_u32(cluster, 28).ok_or_else(trunc)?;
    let computed = link_crc(cluster, payload);
    if stored != computed {
        return Err(FormatError::BadChecksum { stored, computed });
    }
    if le_u32(cluster, 24) != Some(0) {
        return Err(FormatError::invalid("checkpoint.reserved", "must be zero"));
    }
    if header.index != index || header.seq != seq {
        return Err(FormatError::invalid(
            "checkpoint.link",
            format!(
                "link {} of seq {} where link {index} of seq {seq} was expected",
                header.index, header.seq
            ),
        ));
    }
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TestRng;

    fn sample() -> Image {
        Image {
            volumes: vec![
                VolumeImage {
                    id: 1,
                    kind: VolumeKindCode::Volume,
                    name: "root".into(),
                    size: 1 << 30,
                    block_size: 512,
                    runs: vec![
                        Run {
                            vstart: 0,
                            pstart: 5,
                            len: 10,
                        },
                        Run {
                            vstart: 100,
                            pstart: 1,
                            len: 1,
                        },
                    ],
                },
                VolumeImage {
                    id: 7,
                    kind: VolumeKindCode::Snapshot,
                    name: String::new(),
                    size: 4096,
                    block_size: 4096,
                    runs: vec![],
                },
            ],
        }
    }

    #[test]
    fn image_round_trip() {
        let img = sample();
        let bytes = img.encode();
        assert_eq!(
            bytes.len(),
            4 + Image::volume_len(4, 2) + Image::volume_len(0, 0)
        );
        assert_eq!(Image::decode(&bytes), Ok(img));
        assert_eq!(
            Image::decode(&Image::default().encode()),
            Ok(Image::default())
        );
    }

    #[test]
    fn image_rejects_damage_without_panicking() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Image::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Image::decode(&extra).is_err());
        let mut rng = TestRng::new(9);
        for _ in 0..5000 {
            let mut b = bytes.clone();
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.next_u64() as u8;
            let _ = Image::decode(&b);
            let mut junk = vec![0u8; rng.below(200) as usize];
            rng.fill(&mut junk);
            let _ = Image::decode(&junk);
        }
    }

    #[test]
    fn link_round_trip_and_checks() {
        let payload = b"hello checkpoint";
        let mut c = vec![0u8; 4096];
        let h = LinkHeader {
            index: 2,
            seq: 99,
            next: 17,
            used: payload.len() as u32,
        };
        encode_link(&mut c, h, payload);
        let (got, p) = decode_link(&c, 2, 99).unwrap();
        assert_eq!(got, h);
        assert_eq!(p, payload);
        assert!(matches!(
            decode_link(&c, 3, 99),
            Err(FormatError::Invalid { .. })
        ));
        assert!(matches!(
            decode_link(&c, 2, 98),
            Err(FormatError::Invalid { .. })
        ));
        let mut bad = c.clone();
        bad[HEADER_LEN + 1] ^= 1;
        assert!(matches!(
            decode_link(&bad, 2, 99),
            Err(FormatError::BadChecksum { .. })
        ));
        let mut big = c.clone();
        big[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_link(&big, 2, 99).is_err());
        assert_eq!(
            decode_link(&c[..10], 2, 99),
            Err(FormatError::Truncated { len: 10 })
        );
        assert_eq!(decode_link(&[0u8; 4096], 0, 0), Err(FormatError::BadMagic));
    }

    #[test]
    fn clusters_needed_rounds_up() {
        assert_eq!(clusters_needed(0, 4096), 1);
        assert_eq!(clusters_needed(4096 - 32, 4096), 1);
        assert_eq!(clusters_needed(4096 - 31, 4096), 2);
    }
}
