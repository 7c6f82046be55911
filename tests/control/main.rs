//! The control surface: the control socket (`control`), `fabricctl` against a
//! fake server (`fabricctl`) and a real daemon (`fabricctl_e2e`; revert and
//! export pause in `fabricctl_revert`), socket files
//! and permissions (`sockets`), and the one name rule (`names`). One test
//! binary: each file is a module.

mod control;
mod fabricctl;
mod fabricctl_daily;
mod fabricctl_e2e;
mod fabricctl_revert;
mod names;
mod sockets;
