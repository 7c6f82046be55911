//! The control surface: the control socket (`control`), `fabricctl` against a
//! fake server (`fabricctl`) and a real daemon (`fabricctl_e2e`; revert and
//! export pause in `fabricctl_revert`), socket files and permissions
//! (`sockets`), the one name rule (`names`), a full pool through the daemon
//! and a real client (`pool_full`). One test
//! binary: each file is a module.

mod control;
mod fabricctl;
mod fabricctl_daily;
mod fabricctl_e2e;
mod fabricctl_revert;
mod names;
mod pool_full;
mod sockets;
