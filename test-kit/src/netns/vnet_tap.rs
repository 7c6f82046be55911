//! A TAP device inside a namespace whose frames carry the 12-byte virtio-net
//! header (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ` 12: `struct virtio_net_hdr_v1`), with
//! the offloads the test chooses (`TUNSETOFFLOAD`): what the kernel hands a
//! vhost-net backend, and how a test hands the kernel a GSO frame with its header.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::capture::wait_readable;
use super::{in_netns, Netns};

/// Bytes of the header in front of every frame read or written.
pub const VNET_HDR_SZ: usize = 12;
/// Largest read: a 64 KiB GSO frame, its headers and the vnet header.
pub const VNET_TAP_MTU_READ: usize = 65_536 + 512;

/// `TUNSETOFFLOAD` flags: checksum and every segmentation offload Linux offers.
pub const ALL_OFFLOADS: u32 = libc::TUN_F_CSUM
    | libc::TUN_F_TSO4
    | libc::TUN_F_TSO6
    | libc::TUN_F_TSO_ECN
    | libc::TUN_F_USO4
    | libc::TUN_F_USO6;

/// An open TAP device with the vnet header; the device lives in the namespace it
/// was made in and goes when the descriptor is closed.
pub struct VnetTap {
    file: File,
    name: String,
}

fn ioctl_ok(rc: libc::c_int, what: &str, name: &str) {
    assert!(
        rc >= 0,
        "{what} on TAP {name}: {}",
        std::io::Error::last_os_error()
    );
}

impl VnetTap {
    /// Creates TAP `name` in `ns` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, header
    /// size 12, `TUNSETOFFLOAD offloads`) and brings it up. Panics when
    /// /dev/net/tun is missing or the kernel refuses a flag.
    pub fn open(ns: &Netns, name: &str, offloads: u32) -> VnetTap {
        assert!(name.len() < libc::IFNAMSIZ, "TAP name {name:?} too long");
        let owned = name.to_string();
        let file = in_netns(ns, move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap_or_else(|e| panic!("open /dev/net/tun: {e} (modprobe tun)"));
            // SAFETY: an all-zero ifreq is valid; name and flags set below.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            let c_name = CString::new(owned.as_str()).unwrap();
            for (dst, src) in req.ifr_name.iter_mut().zip(c_name.as_bytes()) {
                *dst = *src as libc::c_char;
            }
            req.ifr_ifru.ifru_flags =
                (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
            let fd = file.as_raw_fd();
            // SAFETY: TUNSETIFF reads and writes the ifreq we own.
            ioctl_ok(
                unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) },
                "TUNSETIFF",
                &owned,
            );
            let sz: libc::c_int = VNET_HDR_SZ as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int we own.
            ioctl_ok(
                unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &sz) },
                "TUNSETVNETHDRSZ",
                &owned,
            );
            // SAFETY: TUNSETOFFLOAD takes the flags by value.
            ioctl_ok(
                unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, offloads as libc::c_ulong) },
                "TUNSETOFFLOAD",
                &owned,
            );
            file
        });
        ns.up(name);
        VnetTap {
            file,
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next frame (vnet header + frame) into `buf`, waiting up to `timeout`;
    /// its length, or None. `buf` is zeroed first: the kernel skips, without
    /// writing, the header bytes it does not fill (`num_buffers`).
    pub fn read_frame(&self, buf: &mut [u8], timeout: Duration) -> Option<usize> {
        if !wait_readable(self.file.as_raw_fd(), timeout) {
            return None;
        }
        let head = VNET_HDR_SZ.min(buf.len());
        buf[..head].fill(0);
        let n = (&self.file)
            .read(buf)
            .unwrap_or_else(|e| panic!("read TAP {}: {e}", self.name));
        Some(n)
    }

    /// Writes one frame with its vnet header in front (one `write(2)`: the
    /// kernel takes it as one packet). Returns the kernel's answer, so a test can
    /// assert that a frame is refused (EINVAL).
    pub fn write_frame(&self, bytes: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(bytes)
    }
}
