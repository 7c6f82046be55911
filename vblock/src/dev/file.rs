//! [`FileDev`]: a regular file or block device opened `O_DIRECT`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{check_request, AlignedBuf, BlockDev, DIRECT_ALIGN};

vmm_sys_util::ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);

/// Largest bounce buffer: unaligned requests bigger than this are copied in
/// pieces, so a huge unaligned request does not double its memory.
const BOUNCE_MAX: usize = 1 << 20;

const ALIGN: u64 = DIRECT_ALIGN as u64;

/// A regular file or block device opened with `O_DIRECT | O_CLOEXEC`.
///
/// `O_DIRECT` keeps the page cache out of the way, so a completed write is on
/// the device (or in its own volatile cache, which [`flush`](BlockDev::flush)
/// = `fdatasync` drains) and the crash model of `SimDisk` (feature `sim`)
/// matches what the pool sees here.
///
/// Requests whose buffer, offset and length are all 4096-aligned go straight
/// to the kernel. Others are bounced through an [`AlignedBuf`]; a write that
/// covers only part of a 4 KiB block reads that block first
/// (read-modify-write). Those read-modify-writes are serialised by a lock, so
/// concurrent sub-4 KiB writes to different sectors of one block do not undo
/// each other. (Concurrent writes to the *same* sectors have no defined order,
/// as on any disk.)
///
/// [`write_cached`](BlockDev::write_cached) goes through a second
/// descriptor without `O_DIRECT`, into the host's page cache: it survives
/// this process, and `fdatasync` (per file, not per descriptor) makes it
/// durable with everything else. Linux keeps the two views coherent: a
/// direct read or write of a range first writes back the cached pages in
/// it.
///
/// The usable length is the file or device size rounded down to 4096 bytes.
#[derive(Debug)]
pub struct FileDev {
    file: File,
    /// The same file without `O_DIRECT`, for writable devices.
    cached: Option<File>,
    path: PathBuf,
    len: u64,
    rmw: Mutex<()>,
}

impl FileDev {
    /// Opens an existing file or block device read-write, with an
    /// exclusive lock (`ResourceBusy` if another process has it open).
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileDev> {
        Self::open_mode(path.as_ref(), true)
    }

    /// Opens an existing file or block device read-only (inspection), with
    /// a shared lock: writes fail with `EBADF`.
    pub fn open_read_only(path: impl AsRef<Path>) -> io::Result<FileDev> {
        Self::open_mode(path.as_ref(), false)
    }

    fn open_mode(path: &Path, write: bool) -> io::Result<FileDev> {
        let file = open_locked(path, false, write)?;
        let meta = file.metadata().map_err(|e| annotate(path, "stat", e))?;
        let size = if meta.file_type().is_block_device() {
            block_device_size(&file).map_err(|e| annotate(path, "BLKGETSIZE64", e))?
        } else if meta.file_type().is_file() {
            meta.len()
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file or block device", path.display()),
            ));
        };
        Ok(FileDev {
            file,
            cached: write.then(|| open_cached(path)).transpose()?,
            path: path.to_owned(),
            len: size - size % ALIGN,
            rmw: Mutex::new(()),
        })
    }

    /// Creates a sparse regular file of `len` bytes (a multiple of 4096).
    ///
    /// An existing empty file is reused; an existing non-empty one is an
    /// `AlreadyExists` error, so a pool is never formatted over by accident.
    /// Use [`create_replacing`](Self::create_replacing) to discard it.
    pub fn create(path: impl AsRef<Path>, len: u64) -> io::Result<FileDev> {
        Self::create_inner(path.as_ref(), len, false)
    }

    /// Like [`create`](Self::create), but an existing regular file is
    /// truncated and its contents are lost.
    pub fn create_replacing(path: impl AsRef<Path>, len: u64) -> io::Result<FileDev> {
        Self::create_inner(path.as_ref(), len, true)
    }

    fn create_inner(path: &Path, len: u64, replace: bool) -> io::Result<FileDev> {
        if !len.is_multiple_of(ALIGN) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: device length {len} is not a multiple of {ALIGN}",
                    path.display()
                ),
            ));
        }
        let file = open_direct(path, true)?;
        let meta = file.metadata().map_err(|e| annotate(path, "stat", e))?;
        if !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: not a regular file; open block devices with FileDev::open",
                    path.display()
                ),
            ));
        }
        if meta.len() != 0 {
            if !replace {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{}: exists and is not empty ({} bytes); refusing to overwrite it",
                        path.display(),
                        meta.len()
                    ),
                ));
            }
            file.set_len(0).map_err(|e| annotate(path, "truncate", e))?;
        }
        file.set_len(len)
            .map_err(|e| annotate(path, "set length", e))?;
        // Reserve the space now: a pool on a sparse file would meet the host
        // filesystem's ENOSPC in the middle of a guest write, with free
        // clusters left in the pool. Filesystems without fallocate keep the
        // sparse file (the space is then not guaranteed).
        // SAFETY: fallocate on an fd we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                len as libc::off_t,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(annotate(path, "fallocate", e));
            }
        }
        Ok(FileDev {
            file,
            cached: Some(open_cached(path)?),
            path: path.to_owned(),
            len,
            rmw: Mutex::new(()),
        })
    }

    /// The path this device was opened with (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying file, e.g. to register its fd with io_uring.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io_error("read", buf.len(), offset, e))
    }

    fn pwrite(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_error("write", buf.len(), offset, e))
    }

    fn io_error(&self, what: &str, len: usize, offset: u64, e: io::Error) -> io::Error {
        let hint = if e.raw_os_error() == Some(libc::EINVAL) {
            " (O_DIRECT I/O refused: the filesystem or device does not support 4096-aligned direct I/O)"
        } else {
            ""
        };
        io::Error::new(
            e.kind(),
            format!(
                "{}: {what} of {len} bytes at offset {offset}: {e}{hint}",
                self.path.display()
            ),
        )
    }

    /// The unaligned read path: whole aligned blocks into a bounce buffer,
    /// then the wanted bytes out of it, piece by piece.
    fn read_bounced(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut bounce = AlignedBuf::new(bounce_size(offset, end));
        let mut pos = offset;
        while pos < end {
            let start = align_down(pos);
            let chunk_end = align_up(end).min(start + BOUNCE_MAX as u64);
            let chunk = &mut bounce[..(chunk_end - start) as usize];
            self.pread(chunk, start)?;
            let n = (end.min(chunk_end) - pos) as usize;
            let from = (pos - start) as usize;
            let to = (pos - offset) as usize;
            buf[to..to + n].copy_from_slice(&chunk[from..from + n]);
            pos += n as u64;
        }
        Ok(())
    }

    /// The unaligned write path: for each piece, read the partly covered
    /// first and last blocks, overlay the new bytes, write whole blocks.
    fn write_bounced(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut bounce = AlignedBuf::new(bounce_size(offset, end));
        let partial = !offset.is_multiple_of(ALIGN) || !end.is_multiple_of(ALIGN);
        // Only read-modify-write needs the lock; an aligned request whose
        // buffer is merely misaligned overwrites whole blocks.
        let _guard = partial.then(|| self.rmw.lock().unwrap_or_else(|e| e.into_inner()));
        let mut pos = offset;
        while pos < end {
            let start = align_down(pos);
            let chunk_end = align_up(end).min(start + BOUNCE_MAX as u64);
            let chunk = &mut bounce[..(chunk_end - start) as usize];
            let n = (end.min(chunk_end) - pos) as usize;
            let from = (pos - start) as usize;
            if from != 0 {
                self.pread(&mut chunk[..DIRECT_ALIGN], start)?;
            }
            let data_end = from + n;
            if !data_end.is_multiple_of(DIRECT_ALIGN) {
                let last = data_end - data_end % DIRECT_ALIGN;
                // The first block may be the last one too and is already read.
                if !(from != 0 && last == 0) {
                    self.pread(&mut chunk[last..last + DIRECT_ALIGN], start + last as u64)?;
                }
            }
            let to = (pos - offset) as usize;
            chunk[from..data_end].copy_from_slice(&buf[to..to + n]);
            self.pwrite(chunk, start)?;
            pos += n as u64;
        }
        Ok(())
    }
}

fn direct_ok(ptr: *const u8, len: usize, offset: u64) -> bool {
    AlignedBuf::is_aligned(ptr) && len.is_multiple_of(DIRECT_ALIGN) && offset.is_multiple_of(ALIGN)
}

fn align_down(x: u64) -> u64 {
    x - x % ALIGN
}

/// Callers only pass ends within the device, whose length is aligned, so this
/// cannot overflow.
fn align_up(x: u64) -> u64 {
    align_down(x + ALIGN - 1)
}

fn bounce_size(offset: u64, end: u64) -> usize {
    ((align_up(end) - align_down(offset)) as usize).min(BOUNCE_MAX)
}

impl BlockDev for FileDev {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_request(self.len, offset, buf.len(), "read")?;
        if buf.is_empty() {
            Ok(())
        } else if direct_ok(buf.as_ptr(), buf.len(), offset) {
            self.pread(buf, offset)
        } else {
            self.read_bounced(buf, offset)
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_request(self.len, offset, buf.len(), "write")?;
        if buf.is_empty() {
            Ok(())
        } else if direct_ok(buf.as_ptr(), buf.len(), offset) {
            self.pwrite(buf, offset)
        } else {
            self.write_bounced(buf, offset)
        }
    }

    fn write_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_request(self.len, offset, buf.len(), "write")?;
        let Some(cached) = &self.cached else {
            // Opened read-only: fails as any write does.
            return self.write_at(buf, offset);
        };
        cached
            .write_all_at(buf, offset)
            .map_err(|e| self.io_error("cached write", buf.len(), offset, e))
    }

    fn flush(&self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(|e| annotate(&self.path, "fdatasync", e))
    }
}

/// Opens `path` O_DIRECT and takes a non-blocking `flock`: exclusive for
/// writers, shared for read-only opens, so a pool a daemon serves is never
/// opened for writing by a second process (and not inspected mid-change).
fn open_direct(path: &Path, create: bool) -> io::Result<File> {
    open_locked(path, create, true)
}

/// How long a lock held by someone else may take to go away. A daemon killed
/// with I/O in flight keeps its files open, and so locked, until the kernel has
/// torn down its io_uring instances, which waits for that I/O: a restart right
/// after a crash must not fail on its own predecessor's lock.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

fn open_locked(path: &Path, create: bool, write: bool) -> io::Result<File> {
    let file = open_unlocked(path, create, write)?;
    let op = if write { libc::LOCK_EX } else { libc::LOCK_SH };
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    // SAFETY: flock on an fd we own.
    while unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), op | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(annotate(path, "flock", e));
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{}: in use by another process (locked)", path.display()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(file)
}

fn open_unlocked(path: &Path, create: bool, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "{}: cannot open with O_DIRECT: the filesystem refuses direct I/O ({e}); \
                         put the pool on a filesystem that supports it (ext4, xfs, btrfs) or a block device, not tmpfs",
                        path.display()
                    ),
                )
            } else {
                annotate(path, "open (O_DIRECT)", e)
            }
        })
}

/// A second, buffered descriptor on a device already opened (and locked)
/// for writing, for [`BlockDev::write_cached`].
fn open_cached(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| annotate(path, "open (buffered)", e))
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(file, BLKGETSIZE64(), &mut size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn annotate(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch directory on a filesystem that supports O_DIRECT: /var/tmp by
    /// default (tmpfs refuses O_DIRECT on many kernels), or $VBLOCK_TEST_DIR.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let base = std::env::var_os("VBLOCK_TEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp"));
            let dir = base.join(format!(
                "vblock-dev-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Reads the whole device through the aligned path.
    fn image(dev: &FileDev) -> Vec<u8> {
        let mut buf = AlignedBuf::new(dev.len() as usize);
        dev.read_at(&mut buf, 0).unwrap();
        buf.to_vec()
    }

    #[test]
    fn create_is_sparse_zeroed_and_reopens() {
        let dir = Scratch::new();
        let p = dir.path("dev");
        let dev = FileDev::create(&p, 1 << 20).unwrap();
        assert_eq!(dev.len(), 1 << 20);
        assert!(image(&dev).iter().all(|&b| b == 0));
        let data = AlignedBuf::from_slice(&pattern(8192, 1));
        dev.write_at(&data, 4096).unwrap();
        dev.flush().unwrap();
        drop(dev);
        let dev = FileDev::open(&p).unwrap();
        assert_eq!(dev.len(), 1 << 20);
        let mut back = AlignedBuf::new(8192);
        dev.read_at(&mut back, 4096).unwrap();
        assert_eq!(&back[..], &data[..]);
    }

    /// A cached write is what the direct path reads next, in this process
    /// and after the device is closed and opened again (a restarted daemon),
    /// and a direct write over it afterwards wins; a read-only device refuses it.
    #[test]
    fn cached_writes_are_seen_by_direct_reads_and_after_reopening() {
        let dir = Scratch::new();
        let p = dir.path("dev");
        let dev = FileDev::create(&p, 1 << 20).unwrap();
        let cached = pattern(8192, 7);
        dev.write_cached(&cached, 16384).unwrap();
        let mut back = AlignedBuf::new(8192);
        dev.read_at(&mut back, 16384).unwrap();
        assert_eq!(&back[..], &cached[..]);
        drop(dev);

        let dev = FileDev::open(&p).unwrap();
        let mut back = AlignedBuf::new(8192);
        dev.read_at(&mut back, 16384).unwrap();
        assert_eq!(&back[..], &cached[..], "after reopening");
        let direct = AlignedBuf::from_slice(&pattern(4096, 9));
        dev.write_at(&direct, 16384).unwrap();
        drop(dev);

        let dev = FileDev::open_read_only(&p).unwrap();
        let mut back = AlignedBuf::new(8192);
        dev.read_at(&mut back, 16384).unwrap();
        assert_eq!(&back[..4096], &direct[..], "the later direct write");
        assert_eq!(&back[4096..], &cached[4096..]);
        assert!(dev.write_cached(&cached, 0).is_err(), "read-only");
        assert!(matches!(
            dev.write_cached(&cached, 1 << 20).map_err(|e| e.kind()),
            Err(io::ErrorKind::UnexpectedEof)
        ));
    }

    #[test]
    fn create_refuses_non_empty_unless_replacing() {
        let dir = Scratch::new();
        let p = dir.path("dev");
        std::fs::write(&p, b"precious").unwrap();
        let err = FileDev::create(&p, 8192).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
        let dev = FileDev::create_replacing(&p, 8192).unwrap();
        assert!(image(&dev).iter().all(|&b| b == 0));
        // An existing empty file is fine.
        let q = dir.path("empty");
        std::fs::write(&q, b"").unwrap();
        assert_eq!(FileDev::create(&q, 4096).unwrap().len(), 4096);
        // Length must be 4096-aligned.
        let err = FileDev::create(dir.path("odd"), 1000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// The kernel really has O_DIRECT (and O_CLOEXEC) set on the fd.
    #[test]
    fn fd_is_direct_and_cloexec() {
        use std::os::fd::AsRawFd;
        let dir = Scratch::new();
        let dev = FileDev::create(dir.path("dev"), 4096).unwrap();
        let fd = dev.file().as_raw_fd();
        // SAFETY: F_GETFL/F_GETFD on an fd we own.
        let (fl, fdfl) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        assert!(fl & libc::O_DIRECT != 0, "O_DIRECT missing: {fl:#o}");
        assert!(fdfl & libc::FD_CLOEXEC != 0);
        assert_eq!(dev.path(), dir.path("dev"));
    }

    #[test]
    fn open_missing_names_the_path() {
        let dir = Scratch::new();
        let p = dir.path("missing");
        let err = FileDev::open(&p).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn open_rounds_odd_sizes_down() {
        let dir = Scratch::new();
        let p = dir.path("odd");
        std::fs::write(&p, vec![7u8; 4096 * 3 + 100]).unwrap();
        assert_eq!(FileDev::open(&p).unwrap().len(), 4096 * 3);
    }

    #[test]
    fn unaligned_buffers_offsets_and_lengths_round_trip() {
        let dir = Scratch::new();
        let dev = FileDev::create(dir.path("dev"), 64 * 1024).unwrap();
        let mut model = vec![0u8; 64 * 1024];
        // (offset, length) pairs covering: aligned with a misaligned buffer,
        // sub-block, straddling blocks, starting/ending mid-block, whole device.
        let cases = [
            (0usize, 4096usize),
            (512, 512),
            (3584, 1024),
            (1024, 10 * 1024),
            (8192, 4096),
            (4096 * 5 + 512, 4096 * 3),
            (64 * 1024 - 512, 512),
            (0, 64 * 1024),
            (512, 64 * 1024 - 1024),
        ];
        for (i, &(off, len)) in cases.iter().enumerate() {
            // Misalign the source buffer by one byte to force the bounce path.
            let mut backing = vec![0u8; len + 1];
            backing[1..].copy_from_slice(&pattern(len, i as u8 + 1));
            let src = &backing[1..];
            dev.write_at(src, off as u64).unwrap();
            model[off..off + len].copy_from_slice(src);
            // Read back through a misaligned buffer and through an aligned one.
            let mut back = vec![0u8; len + 1];
            dev.read_at(&mut back[1..], off as u64).unwrap();
            assert_eq!(&back[1..], src, "case {i}");
            assert_eq!(image(&dev), model, "case {i}: neighbours must be untouched");
        }
    }

    #[test]
    fn large_unaligned_requests_go_in_pieces() {
        let dir = Scratch::new();
        let len = 3 * BOUNCE_MAX + 8192;
        let dev = FileDev::create(dir.path("dev"), len as u64).unwrap();
        let data = pattern(len - 1024, 9);
        dev.write_at(&data, 512).unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read_at(&mut back, 512).unwrap();
        assert!(back == data);
        let img = image(&dev);
        assert!(img[..512].iter().all(|&b| b == 0));
        assert!(img[len - 512..].iter().all(|&b| b == 0));
    }

    #[test]
    fn partial_block_write_preserves_the_rest_of_the_block() {
        let dir = Scratch::new();
        let dev = FileDev::create(dir.path("dev"), 16384).unwrap();
        let base = AlignedBuf::from_slice(&pattern(16384, 3));
        dev.write_at(&base, 0).unwrap();
        // One sector in the middle of block 1.
        dev.write_at(&[0xee; 512], 4096 + 1024).unwrap();
        let mut expect = base.to_vec();
        expect[5120..5632].fill(0xee);
        assert_eq!(image(&dev), expect);
        // Straddling blocks 1 and 2, partial at both ends.
        dev.write_at(&[0xdd; 2048], 8192 - 1024).unwrap();
        expect[7168..9216].fill(0xdd);
        assert_eq!(image(&dev), expect);
    }

    #[test]
    fn concurrent_sector_writes_within_one_block_all_land() {
        let dir = Scratch::new();
        let dev = FileDev::create(dir.path("dev"), 4096).unwrap();
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let dev = &dev;
                s.spawn(move || {
                    for _ in 0..50 {
                        dev.write_at(&[i + 1; 512], i as u64 * 512).unwrap();
                    }
                });
            }
        });
        let img = image(&dev);
        for i in 0..8 {
            assert!(
                img[i * 512..(i + 1) * 512]
                    .iter()
                    .all(|&b| b == i as u8 + 1),
                "sector {i}"
            );
        }
    }

    #[test]
    fn misaligned_and_out_of_range_requests_fail_cleanly() {
        let dir = Scratch::new();
        let dev = FileDev::create(dir.path("dev"), 8192).unwrap();
        let mut buf = vec![0u8; 512];
        let kind = |r: io::Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(dev.read_at(&mut buf, 100)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(dev.write_at(&buf[..100], 0)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(dev.read_at(&mut buf, 8192)),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(kind(dev.write_at(&buf, 8192)), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            kind(dev.write_at(&buf, u64::MAX - 511)),
            io::ErrorKind::UnexpectedEof
        );
        let mut big = vec![0u8; 8192 + 512];
        assert_eq!(kind(dev.read_at(&mut big, 0)), io::ErrorKind::UnexpectedEof);
        // The file never grows past its length.
        assert_eq!(std::fs::metadata(dir.path("dev")).unwrap().len(), 8192);
        // Zero-length requests are fine up to the end.
        dev.read_at(&mut [], 8192).unwrap();
        dev.write_at(&[], 0).unwrap();
    }

    #[test]
    fn flush_succeeds_and_data_is_in_the_file() {
        let dir = Scratch::new();
        let p = dir.path("dev");
        let dev = FileDev::create(&p, 8192).unwrap();
        dev.write_at(&[0x5a; 1024], 512).unwrap();
        dev.flush().unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert!(on_disk[512..1536].iter().all(|&b| b == 0x5a));
        assert!(on_disk[..512].iter().all(|&b| b == 0));
    }

    #[test]
    fn not_a_file_or_device_is_refused() {
        let dir = Scratch::new();
        let err = FileDev::open(&dir.0).unwrap_err();
        assert!(err.to_string().contains(dir.0.to_str().unwrap()), "{err}");
    }

    /// tmpfs refuses O_DIRECT on many kernels (newer ones accept it); when it
    /// does, the error must say so and name the path.
    #[test]
    fn o_direct_refusal_is_explained() {
        let p = PathBuf::from(format!("/dev/shm/vblock-dev-test-{}", std::process::id()));
        let res = FileDev::create(&p, 4096);
        let _ = std::fs::remove_file(&p);
        match res {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let msg = e.to_string();
                assert!(
                    msg.contains(p.to_str().unwrap()) && msg.contains("O_DIRECT"),
                    "{msg}"
                );
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => eprintln!("this kernel's tmpfs accepts O_DIRECT; refusal not testable here"),
        }
    }
}
