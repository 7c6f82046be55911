//! Complete: one operation came back from the device. Reads are copied
//! out of their bounce buffer, copy-on-write goes on to its write, new
//! clusters are mapped, pins are dropped.

use std::io;
use std::sync::Mutex;

use super::iov::{copy_iov, slice_iov};
use super::plan::{lock, Stage};
use super::request::Request;
use super::window::PieceOp;
use crate::dev::BlockDev;
use crate::pool::{Pool, PoolError};

/// What comes after an operation's completion.
pub(super) enum Next {
    /// The piece has another operation: push `op` again.
    Again,
    /// The piece is finished, with its error if any.
    Done(Option<PoolError>),
}

/// `op`, a piece of request `r`, finished with `result` (bytes or -errno).
pub(super) fn complete<D: BlockDev>(
    op: &mut PieceOp,
    result: i32,
    pool: &Mutex<Pool<D>>,
    r: &Request,
) -> Next {
    let want: usize = op.iov.iter().map(|v| v.iov_len).sum();
    let err = if result < 0 {
        Some(io::Error::from_raw_os_error(-result))
    } else if result as usize != want {
        Some(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short transfer: {result} of {want} bytes"),
        ))
    } else {
        None
    };
    let volume = r.volume;
    let mut error = err.map(|source| PoolError::Io {
        what: format!("volume {volume} offset {}", r.offset),
        source,
    });
    match op.stage {
        Stage::Read { pcluster } => {
            lock(pool).unpin(pcluster);
            if let (None, Some(b)) = (&error, &mut op.bounce) {
                let user = slice_iov(&r.iov, op.piece.at, op.piece.len);
                // SAFETY: the request is still live (its completion comes
                // after all its pieces), so `user` is valid, writable and
                // untouched by the caller (`submit` contract); the kernel is
                // done with `b`, whose read has just completed.
                unsafe { copy_iov(&user, b, true) };
            }
        }
        Stage::Write { pcluster } => lock(pool).unpin(pcluster),
        Stage::CowRead { source, pcluster } if error.is_none() => {
            // Patch the new data into the copy, then write it whole.
            let user = slice_iov(&r.iov, op.piece.at, op.piece.len);
            if let Some(b) = op.bounce.as_mut() {
                let p = op.piece;
                // SAFETY: `user` is the live request's memory (`submit`
                // contract), only read; the kernel is done with `b`, whose
                // copy-on-write read has just completed.
                unsafe { copy_iov(&user, &mut b[p.within..p.within + p.len], false) };
            }
            op.stage = Stage::Fill {
                source: Some(source),
                pcluster,
            };
            op.dev_off = lock(pool).cluster_offset(pcluster);
            return Next::Again;
        }
        Stage::CowRead { source, pcluster } => {
            let mut p = lock(pool);
            p.unpin(source);
            if let Err(e) = p.finish_allocation(volume, op.piece.vcluster, pcluster, false) {
                error.get_or_insert(e);
            }
        }
        Stage::Fill { source, pcluster } => {
            let mut p = lock(pool);
            if let Some(s) = source {
                p.unpin(s);
            }
            if let Err(e) =
                p.finish_allocation(volume, op.piece.vcluster, pcluster, error.is_none())
            {
                error.get_or_insert(e);
            }
        }
    }
    Next::Done(error)
}
