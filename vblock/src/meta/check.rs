//! [`Metadata::check`]: every in-memory invariant, verified from scratch.

use std::collections::BTreeSet;

use super::alloc::ClusterState;
use super::error::Violation;
use super::volume::VolumeKind;
use super::Metadata;

impl Metadata {
    /// Every invariant (the in-memory half of `FORMAT.md`'s "What `check`
    /// verifies"): counts equal map references (+1 per held cluster); no
    /// cluster both free and referenced; releasing clusters have count 0 and
    /// are not free; no cluster leaked; every map entry inside the data area
    /// and below its volume's end; names unique and indexed; snapshots
    /// read-only. Cost: O(clusters + mapped entries).
    pub fn check(&self) -> Result<(), Vec<Violation>> {
        let mut out = Vec::new();
        self.alloc.violations(&mut out);
        let refs = self.alloc.refcounts();
        let range = refs.range();
        let mut seen = vec![0u32; range.len()];
        for vol in self.volumes.values() {
            let clusters = self.clusters_for(vol.size);
            for (vcluster, pc) in vol.map.iter() {
                let pcluster = pc.get();
                if vcluster >= clusters {
                    out.push(Violation::MappedBeyondEnd {
                        volume: vol.id,
                        vcluster,
                        clusters,
                    });
                }
                match pcluster
                    .checked_sub(range.start)
                    .and_then(|i| seen.get_mut(i as usize))
                {
                    Some(n) => *n = n.saturating_add(1),
                    None => out.push(Violation::MapOutsideData {
                        volume: vol.id,
                        vcluster,
                        pcluster,
                    }),
                }
            }
            if vol.kind == VolumeKind::Snapshot && !vol.read_only {
                out.push(Violation::SnapshotWritable { volume: vol.id });
            }
        }
        for &c in &self.held {
            match c
                .checked_sub(range.start)
                .and_then(|i| seen.get_mut(i as usize))
            {
                Some(n) => *n = n.saturating_add(1),
                None => out.push(Violation::HeldOutsideData { cluster: c }),
            }
        }
        for ((cluster, count), &references) in refs.iter().zip(&seen) {
            if count != references {
                out.push(Violation::RefcountMismatch {
                    cluster,
                    count,
                    references,
                });
            }
            if references > 0 && self.alloc.state(cluster) == Some(ClusterState::Free) {
                out.push(Violation::FreeButReferenced {
                    cluster,
                    references,
                });
            }
        }
        let mut names = BTreeSet::new();
        for vol in self.volumes.values() {
            if !names.insert(vol.name.as_str()) {
                out.push(Violation::DuplicateName {
                    name: vol.name.clone(),
                });
            }
            if self.names.get(&vol.name) != Some(&vol.id) {
                out.push(Violation::NameIndexMismatch {
                    name: vol.name.clone(),
                });
            }
        }
        for (name, id) in &self.names {
            if self.volumes.get(id).map(|v| v.name.as_str()) != Some(name.as_str()) {
                out.push(Violation::NameIndexMismatch { name: name.clone() });
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }
}
