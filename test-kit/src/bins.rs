//! The root package's binaries as built for this test run.
//!
//! Cargo tells an integration test where they are through `CARGO_BIN_EXE_*`,
//! but only while compiling that test, never this library; so they are found
//! where Cargo puts them: the directory above the test executable's `deps/`.

use std::path::PathBuf;

/// The built binary `name` of the root package; panics (never skips) when missing.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("{} is not in a Cargo target dir", exe.display()));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests through cargo, which builds it",
        path.display()
    );
    path
}

/// The daemon binary, `vswitchd`.
pub fn vswitchd() -> PathBuf {
    bin("vswitchd")
}

/// The control client binary, `fabricctl`.
pub fn fabricctl() -> PathBuf {
    bin("fabricctl")
}
