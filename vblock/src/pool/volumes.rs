//! Volume operations: listing, create, delete, resize, rename, snapshot,
//! clone and revert. Each records its journal record, applies it and commits it before
//! returning.

use super::info::{volume_info, VolumeInfo};
use super::{Pool, PoolError};
use crate::dev::BlockDev;
use crate::format::checkpoint::Image;
use crate::format::Record;
use crate::meta::MetaError;

impl<D: BlockDev> Pool<D> {
    /// Every volume, by id.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        self.meta
            .volumes()
            .filter_map(|v| self.info(v.id()))
            .collect()
    }

    /// One volume by name.
    pub fn volume(&self, name: &str) -> Result<VolumeInfo, PoolError> {
        let id = self.id(name)?;
        self.info(id)
            .ok_or_else(|| PoolError::NoSuchVolume(name.into()))
    }

    fn info(&self, id: u32) -> Option<VolumeInfo> {
        let u = self.meta.usage(id).ok()?;
        volume_info(
            &self.meta,
            id,
            u.exclusive * u64::from(self.meta.cluster_size()),
        )
    }

    /// Id of the volume named `name`.
    pub fn id(&self, name: &str) -> Result<u32, PoolError> {
        self.meta
            .volume_by_name(name)
            .map(|v| v.id())
            .ok_or_else(|| PoolError::NoSuchVolume(name.into()))
    }

    // ---- control operations: record, apply, commit before returning ----

    /// Creates an empty volume (reads as zeros). Over-commit is allowed:
    /// [`PoolSpace::provisioned`](super::PoolSpace::provisioned) reports it.
    pub fn create_volume(
        &mut self,
        name: &str,
        size: u64,
        block_size: u32,
    ) -> Result<u32, PoolError> {
        let id = self.next_id;
        self.reserve_for(
            0,
            crate::format::checkpoint::Image::volume_len(name.len(), 0),
        )?;
        self.record(Record::CreateVolume {
            id,
            name: name.into(),
            size,
            block_size,
        })?;
        self.next_id += 1;
        self.commit()?;
        Ok(id)
    }

    /// Deletes a volume; clusters no other volume shares return to the pool
    /// (no data is copied, also when clones share them).
    pub fn delete_volume(&mut self, name: &str) -> Result<(), PoolError> {
        let id = self.id(name)?;
        self.record(Record::DeleteVolume { id })?;
        self.commit()
    }

    /// Grows or shrinks a volume. Shrinking needs `force`: the clusters
    /// beyond the new end are released and the tail of the last one zeroed,
    /// so growing again reads zeros there.
    pub fn resize(&mut self, name: &str, size: u64, force: bool) -> Result<(), PoolError> {
        let id = self.id(name)?;
        let v = self
            .meta
            .volume(id)
            .ok_or_else(|| PoolError::NoSuchVolume(name.into()))?;
        let old = v.size();
        if v.read_only() {
            return Err(PoolError::ReadOnly(name.into()));
        }
        if size < old {
            if !force {
                return Err(PoolError::ShrinkNeedsForce {
                    name: name.into(),
                    size: old,
                    new_size: size,
                });
            }
            // Validate the new size before zeroing anything.
            if size == 0 || !size.is_multiple_of(u64::from(v.block_size())) {
                return Err(PoolError::Refused(MetaError::InvalidSize(size)));
            }
            let cs = u64::from(self.meta.cluster_size());
            let tail_end = size.next_multiple_of(cs).min(old);
            if tail_end > size {
                self.zero_range(id, size, tail_end - size, false)?;
            }
        }
        self.record(Record::Resize { id, size })?;
        self.commit()
    }

    /// Renames a volume.
    pub fn rename(&mut self, name: &str, new_name: &str) -> Result<(), PoolError> {
        let id = self.id(name)?;
        self.record(Record::Rename {
            id,
            name: new_name.into(),
        })?;
        self.commit()
    }

    /// Read-only snapshot of `source` as it is now (everything written before
    /// is flushed first). Copies no data.
    pub fn snapshot(&mut self, source: &str, name: &str) -> Result<u32, PoolError> {
        self.copy(source, name, true)
    }

    /// Writable clone of `source` (a volume, snapshot or clone). Copies no data.
    pub fn clone_volume(&mut self, source: &str, name: &str) -> Result<u32, PoolError> {
        self.copy(source, name, false)
    }

    /// Makes volume `name` read as `snapshot` (a snapshot in this pool with
    /// the same block size) did when taken: the volume takes the snapshot's
    /// map in one journal record, so a crash leaves the old content or the
    /// new, never a mix. Copies no data; the clusters only the old content
    /// used are freed (after the commit, rule 3). The size becomes the
    /// snapshot's unless the volume is larger (then the rest reads zeros).
    ///
    /// Refused with [`PoolError::Busy`] while an engine has an allocating
    /// write to the volume in flight (its `Map` would land on the reverted
    /// map): the caller stops the volume's I/O first.
    pub fn revert(&mut self, name: &str, snapshot: &str) -> Result<(), PoolError> {
        let id = self.id(name)?;
        let source = self.id(snapshot)?;
        if self.allocating.iter().any(|&(v, _)| v == id) {
            return Err(PoolError::Busy(name.into()));
        }
        let entries = self.meta.volume(source).map_or(0, |v| v.map().len());
        let runs = usize::try_from(entries).unwrap_or(usize::MAX);
        self.reserve_for(0, Image::volume_len(0, runs))?;
        self.record(Record::Revert {
            id,
            snapshot: source,
        })?;
        self.commit()
    }

    fn copy(&mut self, source: &str, name: &str, snapshot: bool) -> Result<u32, PoolError> {
        let src = self.id(source)?;
        let entries = self.meta.volume(src).map_or(0, |v| v.map().len());
        let runs = usize::try_from(entries).unwrap_or(usize::MAX);
        self.reserve_for(0, Image::volume_len(name.len(), runs))?;
        let id = self.next_id;
        let name = name.to_owned();
        self.record(if snapshot {
            Record::Snapshot {
                source: src,
                id,
                name,
            }
        } else {
            Record::Clone {
                source: src,
                id,
                name,
            }
        })?;
        self.next_id += 1;
        self.commit()?;
        Ok(id)
    }
}
