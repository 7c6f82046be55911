//! The storage side end to end: exports to libblkio (`blk_export`,
//! `blk_client_selftest`), malformed requests (`blk_malformed`), reconnects
//! (`blk_reconnect`), a migration's handover between two frontends
//! (`blk_handover`), online growth (`blk_resize`), the pool's space warning
//! (`blk_pool_warn`), real QEMU guests (`qemu_blk`) and the NBD server under
//! qemu-img and nbdinfo (`nbd`). One test binary: each
//! file is a module.

mod blk_client_selftest;
mod blk_dirty_log;
mod blk_export;
mod blk_handover;
mod blk_limits;
mod blk_malformed;
mod blk_pool_warn;
mod blk_reconnect;
mod blk_resize;
mod nbd;
mod qemu_blk;
