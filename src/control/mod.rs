//! The control plane: a Unix socket speaking [`protocol`] (JSON lines), used
//! by `fabricctl` and scripts.

pub mod cli;
pub mod client;
mod daily;
pub mod ops;
pub mod protocol;
pub mod server;
