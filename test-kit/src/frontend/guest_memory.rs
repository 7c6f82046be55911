//! Guest RAM for the test VMM.
//!
//! One memfd-backed region at guest physical address 0, mapped `MAP_SHARED` so that the
//! backend, which maps the same fd after `VHOST_USER_SET_MEM_TABLE`, sees every byte we
//! write. The memfd uses ordinary 4 KiB pages (no hugetlbfs): backends must not assume
//! hugepage fds. A bump allocator hands out descriptor tables, rings and buffers; nothing
//! is ever freed (a `GuestNic` allocates everything once at setup).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::atomic::Ordering;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest memory plus a bump allocator over it.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    next: u64,
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM (rounded up to 4 KiB) at guest address 0.
    pub fn new(size: usize) -> io::Result<Self> {
        let size = size.div_ceil(4096) * 4096;
        let name = CString::new("fabric-guest-ram").map_err(io::Error::other)?;
        // SAFETY: `name` is a valid NUL-terminated string; flags are valid memfd flags.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| io::Error::other(format!("mapping guest memory: {e}")))?;
        Ok(GuestRam {
            mem,
            size: size as u64,
            // Keep guest address 0 unused so that a zeroed descriptor never points at
            // anything the harness owns.
            next: 4096,
        })
    }

    /// Total size in bytes; guest addresses `>= size()` are outside guest memory.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The underlying vm-memory object.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Allocates `len` bytes aligned to `align` (a power of two); returns the guest address.
    /// Fresh memfd pages are zero.
    pub fn alloc(&mut self, len: u64, align: u64) -> io::Result<u64> {
        debug_assert!(align.is_power_of_two());
        let start = self.next.next_multiple_of(align);
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "guest RAM exhausted: want {len} bytes at {start:#x}, size {:#x}",
                        self.size
                    ),
                )
            })?;
        self.next = end;
        Ok(start)
    }

    /// Bytes not yet handed out by [`GuestRam::alloc`].
    pub fn remaining(&self) -> u64 {
        self.size - self.next
    }

    /// The memory table for `VHOST_USER_SET_MEM_TABLE`.
    pub fn vhost_regions(&self) -> io::Result<Vec<VhostUserMemoryRegionInfo>> {
        self.mem
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region)
                    .map_err(|e| io::Error::other(format!("memory table entry: {e}")))
            })
            .collect()
    }

    /// Address of guest address `gpa` in this process. vhost-user ring addresses
    /// (`VHOST_USER_SET_VRING_ADDR`) are frontend virtual addresses, not guest addresses:
    /// the backend translates them through the `userspace_addr` of the memory table.
    pub fn host_addr(&self, gpa: u64) -> io::Result<u64> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| io::Error::other(format!("guest address {gpa:#x}: {e}")))
    }

    /// Copies `data` to guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> io::Result<()> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| io::Error::other(format!("write {} bytes at {gpa:#x}: {e}", data.len())))
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| io::Error::other(format!("read {} bytes at {gpa:#x}: {e}", buf.len())))
    }

    /// Fills `len` bytes at `gpa` with `byte`.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) -> io::Result<()> {
        self.write(gpa, &vec![byte; len])
    }

    // Ring accessors. The rings live in memory this harness allocated, so an access
    // failure is a harness bug, not a runtime condition: these panic with a message.

    pub(crate) fn ring_u16(&self, gpa: u64, order: Ordering) -> u16 {
        self.mem
            .load::<u16>(GuestAddress(gpa), order)
            .unwrap_or_else(|e| panic!("ring read at {gpa:#x}: {e}"))
    }

    pub(crate) fn set_ring_u16(&self, gpa: u64, val: u16, order: Ordering) {
        self.mem
            .store(val, GuestAddress(gpa), order)
            .unwrap_or_else(|e| panic!("ring write at {gpa:#x}: {e}"))
    }

    pub(crate) fn ring_u32(&self, gpa: u64) -> u32 {
        self.mem
            .load::<u32>(GuestAddress(gpa), Ordering::Relaxed)
            .unwrap_or_else(|e| panic!("ring read at {gpa:#x}: {e}"))
    }

    pub(crate) fn set_ring_bytes(&self, gpa: u64, data: &[u8]) {
        self.write(gpa, data)
            .unwrap_or_else(|e| panic!("ring write: {e}"))
    }
}
