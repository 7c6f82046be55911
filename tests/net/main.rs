//! The network side end to end: the switch in process (`switch_harness`), the
//! overlay against kernel peers (`overlay`), DPDK testpmd peers (`testpmd`) and a
//! real QEMU guest (`qemu_guest`), multi-queue ports
//! (`multiqueue`). One test binary: each file is a module.

mod multiqueue;
mod offload;
mod overlay;
mod qemu_guest;
mod switch_harness;
mod testpmd;
