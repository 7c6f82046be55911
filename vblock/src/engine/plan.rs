//! Plan and map: a request becomes pieces (one per cluster it touches),
//! each resolved under the pool lock to the operation that carries it out.

use std::sync::{Mutex, MutexGuard};

use super::request::{EngineStats, IoKind, Request};
use crate::dev::BlockDev;
use crate::pool::{pieces, Piece, Pool, PoolError, WritePlan};

/// The pool lock. A panic elsewhere cannot leave the pool half-changed:
/// every pool operation validates before it mutates.
pub(super) fn lock<D: BlockDev>(pool: &Mutex<Pool<D>>) -> MutexGuard<'_, Pool<D>> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one piece's operation is doing.
pub(super) enum Stage {
    /// Read into the request's memory (or `bounce`, copied out after).
    Read { pcluster: u32 },
    /// In-place write.
    Write { pcluster: u32 },
    /// Copy-on-write, first half: reading `source` into `bounce`.
    CowRead { source: u32, pcluster: u32 },
    /// Whole-cluster write of a new cluster, then `Map`.
    Fill { source: Option<u32>, pcluster: u32 },
}

/// A planned piece not yet running (see the engine docs: the window).
pub(super) struct Planned {
    pub(super) req: usize,
    pub(super) piece: Piece,
    pub(super) stage: Stage,
    /// Device offset of the cluster the first operation goes to.
    pub(super) cluster_off: u64,
}

/// What became of a request under the lock.
pub(super) enum Plan {
    /// A cluster it writes has an allocating write in flight: try again
    /// after that one finished (nothing was changed).
    Wait,
    /// Its operations, and the unmapped read pieces to zero-fill (once the
    /// lock is dropped). Both empty: done already (a discard).
    Pieces {
        planned: Vec<Planned>,
        zero: Vec<Piece>,
    },
    /// Refused; nothing stays pinned or allocated.
    Failed(PoolError),
}

/// Maps request `index` (`r`, not a flush) on `pool`: pins what it reads,
/// allocates what it writes first, discards at once.
pub(super) fn plan<D: BlockDev>(
    pool: &mut Pool<D>,
    index: usize,
    r: &Request,
    stats: &mut EngineStats,
) -> Plan {
    let (volume, offset, len) = (r.volume, r.offset, r.len);
    let mut zero = Vec::new();
    let result = match r.kind {
        IoKind::Flush => Ok(Vec::new()),
        IoKind::Discard | IoKind::WriteZeroes => {
            if pool.is_allocating(volume, offset, len) {
                stats.deferred += 1;
                return Plan::Wait;
            }
            pool.discard(volume, offset, len).map(|()| Vec::new())
        }
        IoKind::Read => plan_read(pool, volume, offset, len, &mut zero),
        IoKind::Write => match pool.plan_write(volume, offset, len) {
            Ok(None) => {
                stats.deferred += 1;
                return Plan::Wait;
            }
            Ok(Some(plans)) => {
                let cs = pool.metadata().cluster_size() as usize;
                let stages = plans
                    .into_iter()
                    .map(|(p, plan)| (p, write_stage(p, plan, cs)));
                Ok(stages.collect())
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(ops) => Plan::Pieces {
            planned: ops
                .into_iter()
                .map(|(piece, stage)| {
                    let pc = match &stage {
                        Stage::Read { pcluster } | Stage::Write { pcluster } => *pcluster,
                        Stage::CowRead { source, .. } => *source,
                        Stage::Fill { pcluster, .. } => *pcluster,
                    };
                    Planned {
                        req: index,
                        piece,
                        stage,
                        cluster_off: pool.cluster_offset(pc),
                    }
                })
                .collect(),
            zero,
        },
        Err(e) => Plan::Failed(e),
    }
}

/// The mapped pieces of a read (pinned); unmapped ones go to `zero`.
fn plan_read<D: BlockDev>(
    pool: &mut Pool<D>,
    volume: u32,
    offset: u64,
    len: u64,
    zero: &mut Vec<Piece>,
) -> Result<Vec<(Piece, Stage)>, PoolError> {
    let cs = pool.metadata().cluster_size();
    let mut ops = Vec::new();
    for p in pieces(cs, offset, len) {
        match pool.plan_read(volume, p.vcluster) {
            Ok(Some(pc)) => ops.push((p, Stage::Read { pcluster: pc })),
            Ok(None) => zero.push(p),
            Err(e) => {
                for (_, s) in &ops {
                    if let Stage::Read { pcluster } = s {
                        pool.unpin(*pcluster);
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(ops)
}

/// The first operation of a write piece of a cluster of `cs` bytes.
fn write_stage(p: Piece, plan: WritePlan, cs: usize) -> Stage {
    match plan {
        WritePlan::InPlace { pcluster } => Stage::Write { pcluster },
        // A piece covering the whole cluster replaces it: nothing to copy.
        WritePlan::Allocate {
            pcluster,
            source: Some(source),
        } if p.len == cs => Stage::Fill {
            source: Some(source),
            pcluster,
        },
        WritePlan::Allocate {
            pcluster,
            source: Some(source),
        } => Stage::CowRead { source, pcluster },
        WritePlan::Allocate {
            pcluster,
            source: None,
        } => Stage::Fill {
            source: None,
            pcluster,
        },
    }
}
