//! The one error type of this crate.
//!
//! Every message points at a place a human can go and fix:
//! `fabric.toml:14: switch[0].port[2].vlan.tag: VLAN id 4095 is outside 1..=4094`.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions, not UTF-8, ...).
    Read { path: PathBuf, source: io::Error },
    /// The text is not valid TOML, or does not fit the schema: unknown key,
    /// missing required key, wrong value type. Reported by toml/serde.
    Syntax {
        /// The config file as named by the caller.
        file: String,
        /// 1-based line, when toml reported a position.
        line: Option<usize>,
        /// Dotted key path (`switch[0].port[1].mtu`), when the position could
        /// be mapped back to a key.
        key: Option<String>,
        message: String,
    },
    /// Well-formed TOML whose values break a rule (range, uniqueness, VLAN
    /// mode consistency, ...). Always has a line and a key path.
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error points at, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. } => *line,
            ConfigError::Invalid { line, .. } => Some(*line),
        }
    }

    /// The dotted key path the error points at, if known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Syntax {
                file,
                line,
                key,
                message,
            } => {
                write!(f, "{file}")?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                if let Some(key) = key {
                    write!(f, ": {key}")?;
                }
                write!(f, ": {message}")
            }
            ConfigError::Invalid {
                file,
                line,
                key,
                message,
            } => write!(f, "{file}:{line}: {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}
