//! Hostile guests against the datapaths, net (`hostile_net`) and block
//! (`hostile_blk`). These tests measure this process's CPU time, memory and
//! datapath threads, so each holds `test_kit::serial()`: nothing else runs in the
//! process meanwhile. One test binary: each file is a module.

mod hostile_blk;
mod hostile_net;
