//! Why a command failed, and the exit status that says so.

use std::fmt;
use std::io;

use super::table::plural;

/// Why a command failed. [`exit_code`](CliError::exit_code) is the process
/// exit status; `Display` is the message for stderr.
#[derive(Debug)]
pub enum CliError {
    /// Bad command line (unknown command or option, missing or malformed
    /// argument): exit status 2.
    Usage(String),
    /// The command failed: exit status 1.
    Failed(String),
    /// `check` found problems, already listed on the output: exit status 1.
    CheckFailed { problems: usize },
}

impl CliError {
    /// 2 for a usage error, 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) | CliError::CheckFailed { .. } => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
            CliError::CheckFailed { problems } => write!(
                f,
                "check failed: {problems} problem{} found (nothing was repaired)",
                plural(*problems as u64)
            ),
        }
    }
}

impl std::error::Error for CliError {}

impl From<io::Error> for CliError {
    /// Only for writing the output (the pool's own errors carry their context).
    fn from(e: io::Error) -> Self {
        CliError::Failed(format!("writing the output: {e}"))
    }
}

pub(super) fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

pub(super) fn failed(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}
