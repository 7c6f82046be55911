//! The network side end to end: the switch in process (`switch_harness`), the
//! overlay against kernel peers (`overlay`), DPDK testpmd peers (`testpmd`),
//! real QEMU guests (`qemu_guest`, `qemu_announce`: QMP `announce-self`,
//! `qemu_iperf`: iperf3 with offloads and two
//! queue pairs), multi-queue ports
//! (`multiqueue`), a migrated guest's announcement (`announce`), live migration
//! of a QEMU guest between two hosts (`migrate`). One test binary: each file is a
//! module.

mod announce;
mod dirty_log;
mod migrate;
mod multiqueue;
mod offload;
mod overlay;
mod policing;
mod qemu_announce;
mod qemu_guest;
mod qemu_iperf;
mod switch_harness;
mod testpmd;
