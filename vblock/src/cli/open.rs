//! Opening a pool for a command: read-only for inspection, read-write for
//! changes; failures as the command's message.

use crate::dev::FileDev;
use crate::pool::{Loaded, Pool, PoolError};

use super::error::{failed, CliError};
use super::table::human;

pub(super) fn open_dev(path: &str) -> Result<FileDev, CliError> {
    // FileDev's errors name the path.
    FileDev::open(path).map_err(|e| failed(e.to_string()))
}

/// Loads without writing anything (info, list, check, dump).
pub(super) fn open_read_only(path: &str) -> Result<(Pool<FileDev>, Loaded), CliError> {
    let dev = FileDev::open_read_only(path).map_err(|e| failed(e.to_string()))?;
    Pool::open_read_only(dev).map_err(|e| failed(format!("{path}: cannot load the pool: {e}")))
}

/// Opens for changes: replays the journal and writes a fresh checkpoint.
pub(super) fn open_read_write(path: &str) -> Result<Pool<FileDev>, CliError> {
    Pool::open(open_dev(path)?).map_err(|e| failed(format!("{path}: cannot open the pool: {e}")))
}

/// The message of a failed operation, with the CLI's spelling of options.
pub(super) fn op_failed(e: PoolError) -> CliError {
    match e {
        PoolError::ShrinkNeedsForce {
            name,
            size,
            new_size,
        } => failed(format!(
            "shrinking {name:?} from {} to {} discards the data beyond the new end; use --force",
            human(size),
            human(new_size)
        )),
        e => failed(e.to_string()),
    }
}
