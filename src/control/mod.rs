//! The control plane: a Unix socket speaking [`protocol`] (JSON lines), used
//! by `fabricctl` and scripts.

pub mod protocol;
