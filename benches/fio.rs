//! Host fio as the reference of the storage benches (`benches/blk_io.rs`,
//! `vblock/benches/pool_io.rs` include this file).

use std::path::Path;
use std::process::Command;

/// IOPS of fio (io_uring, O_DIRECT, 4 KiB, queue depth `qd`) doing `rw`
/// (`randread` or `randwrite`) on `path` (laid out by fio at `size` unless
/// it already has that size) for `secs`; with `cpu`, fio and all its threads
/// run on that CPU (`taskset -c CPU fio ...`).
pub fn fio_iops(path: &Path, size: u64, rw: &str, qd: usize, secs: u64, cpu: Option<usize>) -> f64 {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "fio"]);
            c
        }
        None => Command::new("fio"),
    };
    let out = cmd
        .args([
            "--name=raw",
            &format!("--filename={}", path.display()),
            &format!("--size={size}"),
            "--ioengine=io_uring",
            "--direct=1",
            &format!("--iodepth={qd}"),
            &format!("--rw={rw}"),
            "--bs=4k",
            "--time_based",
            &format!("--runtime={secs}"),
            "--randrepeat=0",
            "--norandommap",
            "--output-format=json",
        ])
        .output()
        .expect("fio must be installed (Debian package fio; scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // The first "iops" of the read or write section (no JSON dependency).
    let section = if rw.contains("read") {
        "\"read\""
    } else {
        "\"write\""
    };
    let at = text.find(section).expect("fio json section");
    let rest = &text[at..];
    let i = rest.find("\"iops\"").expect("iops field");
    let num: String = rest[i + 6..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().expect("iops number")
}
