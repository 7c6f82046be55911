//! The runtime's one error type: what went wrong, as a [`ErrorKind`] the
//! control plane maps to its wire codes, and a message for humans.

use std::fmt;
use vblock::pool::PoolError;

/// The class of a refused or failed runtime operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such switch, port, pool, volume or export.
    NotFound,
    /// The name is taken.
    AlreadyExists,
    /// A value is out of range or does not make sense here.
    InvalidArgument,
    /// Refused because of the current state (a socket in use, an exported
    /// volume to delete...).
    Conflict,
    /// The pool has no room for it.
    NoSpace,
    /// It failed inside the daemon (I/O error...).
    Internal,
}

/// An operation on the running system refused or failed.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, message)
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::other(e.message)
    }
}

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Error {
        use vblock::meta::MetaError;
        use PoolError as P;
        let kind = match &e {
            P::NoSuchVolume(_) => ErrorKind::NotFound,
            P::Busy(_) => ErrorKind::Conflict,
            P::OutOfSpace { .. } => ErrorKind::NoSpace,
            P::Refused(MetaError::DuplicateName(_)) => ErrorKind::AlreadyExists,
            P::Refused(_) | P::ShrinkNeedsForce { .. } | P::ReadOnly(_) => {
                ErrorKind::InvalidArgument
            }
            _ => ErrorKind::Internal,
        };
        Error::new(kind, e.to_string())
    }
}
