//! Daemon assembly: turns a validated `fabric.toml` into running switches and
//! ports. The binaries (`vswitchd`) are thin wrappers around [`Daemon`].

pub mod control;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod sockets;
pub mod storage;

pub use daemon::Daemon;
