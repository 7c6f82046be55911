//! [`TestDir`]: the one fresh-directory helper every harness and test uses.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Environment variable naming where on-disk test directories go (default
/// `/var/tmp`): pools and images are opened O_DIRECT, which tmpfs refuses.
pub const DISK_DIR_ENV: &str = "VBLOCK_TEST_DIR";
/// Longest path a Unix socket address holds (sun_path less the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A fresh, empty directory `TAG-PID-N`, removed on drop (or kept for its logs
/// when the test fails, if asked: [`TestDir::keep_on_panic`]).
pub struct TestDir {
    path: PathBuf,
    keep_on_panic: bool,
}

impl TestDir {
    /// Under the system temp dir (short, so socket paths fit).
    pub fn new(tag: &str) -> TestDir {
        Self::new_in(&std::env::temp_dir(), tag)
    }

    /// Under `$VBLOCK_TEST_DIR` (default `/var/tmp`); panics when that is tmpfs.
    pub fn on_disk(tag: &str) -> TestDir {
        let base = std::env::var_os(DISK_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        Self::on_disk_in(&base, tag)
    }

    /// Under `base`, which must not be tmpfs (O_DIRECT fails there).
    pub fn on_disk_in(base: &Path, tag: &str) -> TestDir {
        let dir = Self::new_in(base, tag);
        assert!(
            !is_tmpfs(dir.path()),
            "{} is on tmpfs, where O_DIRECT (cache.direct=on) fails: point {DISK_DIR_ENV} at a \
             disk filesystem",
            dir.path().display()
        );
        dir
    }

    /// Under `base` (created if needed).
    pub fn new_in(base: &Path, tag: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create test directory {}: {e}", path.display()));
        TestDir {
            path,
            keep_on_panic: false,
        }
    }

    /// Keep the directory (and name it on stderr) when the test panics: the
    /// logs, serial consoles and images inside explain the failure.
    pub fn keep_on_panic(mut self) -> TestDir {
        self.keep_on_panic = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// A socket path in this directory (checked against the sun_path limit).
    pub fn socket(&self, name: &str) -> PathBuf {
        let p = self.join(name);
        assert!(
            p.as_os_str().len() <= MAX_SOCKET_PATH,
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter {DISK_DIR_ENV}",
            p.display()
        );
        p
    }
}

/// A `TestDir` is used where a path is: `&dir` is a `&Path`.
impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.keep_on_panic && std::thread::panicking() {
            eprintln!("keeping {} for its logs", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: `libc::statfs` is plain integers; all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path alive for the call; statfs writes
    // only into `st`, a local nothing else references.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type == libc::TMPFS_MAGIC
}
