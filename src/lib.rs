//! Daemon assembly: turns a validated `fabric.toml` into running switches,
//! ports, pools and exports, with the control socket and metrics. The
//! binaries (`vswitchd`, `fabricctl`) are thin wrappers around [`Daemon`] and
//! [`control::cli`]. See ARCHITECTURE.md at the repository root.

pub mod accept;
pub mod control;
pub mod daemon;
pub mod libvirt;
pub mod logging;
pub mod metrics;
pub mod nbd;
pub mod runtime;
pub mod service;
pub mod sockets;
pub mod storage;

pub use daemon::Daemon;
