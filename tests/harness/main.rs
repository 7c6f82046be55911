//! The test harnesses checked against themselves and third parties
//! (`harness_selftest`, `netns_selftest`) and the guest-driver fuzzer
//! (`guest_fuzz`). One test binary: each file is a module.

mod guest_fuzz;
mod harness_selftest;
mod netns_selftest;
