//! TAP ports: a switch port backed by a kernel TAP device, so the host (or a
//! network namespace the device is moved into) joins a VLAN.
//!
//! The device is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a
//! 12-byte virtio-net header (the VERSION_1 layout the guests use), so
//! offloads can be carried later; today no offload is enabled
//! (`TUNSETOFFLOAD` is never called), so every frame read is complete and
//! every frame written goes out with an all-zero header.
//!
//! Frames written to the port go out through [`TapSink`] (one `writev` per
//! frame, non-blocking: a full device queue drops and counts `no_buffer`).
//! Frames from the device are read by one thread per port, in batches, and
//! forwarded with the same [`forward`](crate::net::tx::forward) as a guest's
//! transmit queue.

use crate::net::frame_source::FrameSource;
use crate::net::tx::{forward, Ingress, BATCH};
use crate::net::HDR_LEN;
use crate::port_table::{Delivery, DeliveryReport, FrameSink, PortTable, ReaderPort};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vm_memory::VolatileSlice;
use vswitch::{DropReason, PortId, Switch};

/// Largest frame read from the device (a 64 KiB IP packet plus Ethernet).
const MAX_FRAME: usize = 65_535 + 14;
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_NAME: usize = 15;

/// An open TAP device.
pub struct TapDevice {
    file: File,
    name: String,
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1 to {MAX_NAME} bytes"),
        ));
    }
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(c.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn check(r: libc::c_int, what: &str, name: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{name}: {what}: {e}")));
    }
    Ok(())
}

impl TapDevice {
    /// Creates the TAP device `name`, or attaches to an existing persistent
    /// one, non-blocking, with the virtio-net header on.
    pub fn open(name: &str) -> io::Result<TapDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        check(
            // SAFETY: TUNSETIFF reads and writes the ifreq we own.
            unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) },
            "TUNSETIFF",
            name,
        )?;
        let hdr: libc::c_int = HDR_LEN as libc::c_int;
        check(
            // SAFETY: TUNSETVNETHDRSZ reads an int we own.
            unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr) },
            "TUNSETVNETHDRSZ",
            name,
        )?;
        Ok(TapDevice {
            file,
            name: name.to_owned(),
        })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the interface's MTU and brings it up (in the namespace it is in now).
    pub fn configure(&self, mtu: u16) -> io::Result<()> {
        // SAFETY: a plain socket for interface ioctls, closed below.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        check(sock, "socket", &self.name)?;
        let result = (|| {
            let mut req = ifreq(&self.name)?;
            req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
            check(
                // SAFETY: SIOCSIFMTU reads the ifreq we own.
                unsafe { libc::ioctl(sock, libc::SIOCSIFMTU, &req) },
                "SIOCSIFMTU",
                &self.name,
            )?;
            let mut req = ifreq(&self.name)?;
            check(
                // SAFETY: SIOCGIFFLAGS writes the ifreq we own.
                unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) },
                "SIOCGIFFLAGS",
                &self.name,
            )?;
            // SAFETY: the flags member was just filled by the kernel.
            unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as i16 };
            check(
                // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
                unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) },
                "SIOCSIFFLAGS",
                &self.name,
            )
        })();
        // SAFETY: closing the socket we opened.
        unsafe { libc::close(sock) };
        result
    }
}

/// The receive side of a TAP port: frames the switch sends to it.
pub struct TapSink {
    dev: Arc<TapDevice>,
}

impl FrameSink for TapSink {
    fn deliver(&self, batch: &[Delivery], frames: &[FrameSource], report: &mut dyn DeliveryReport) {
        // All-zero header: no checksum offload, no segmentation.
        let hdr = [0u8; HDR_LEN];
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(8);
        for d in batch {
            iov.clear();
            iov.push(libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: HDR_LEN,
            });
            let head = d.egress.head();
            iov.push(libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            });
            frames[d.frame].for_each_slice(d.egress.skip(), |s| {
                iov.push(libc::iovec {
                    iov_base: s.ptr_guard().as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                });
                true
            });
            // SAFETY: every iovec points at memory alive for this call (our
            // header, the egress head, the sender's frame buffers).
            let n = unsafe {
                libc::writev(
                    self.dev.file.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                )
            };
            report.outcome(
                d,
                if n < 0 {
                    Err(DropReason::NoBuffer)
                } else {
                    Ok(())
                },
            );
        }
    }
}

/// A running TAP port; [`TapPortHandle::stop`] ends it.
pub struct TapPortHandle(ReaderPort);

/// Serves switch port `id` through TAP device `device` (created if absent),
/// with `mtu`: publishes the sink, brings the link up, and reads frames on a
/// thread of its own.
pub fn spawn(
    device: &str,
    mtu: u16,
    id: PortId,
    switch: Arc<Switch>,
    table: Arc<PortTable>,
) -> io::Result<TapPortHandle> {
    let dev = Arc::new(TapDevice::open(device)?);
    dev.configure(mtu)?;
    table.publish(id, Box::new(TapSink { dev: dev.clone() }));
    switch.set_link(id, true);
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, switch2, table2) = (stop.clone(), switch.clone(), table.clone());
    let thread = std::thread::Builder::new()
        .name(format!("tap-{device}"))
        .spawn(move || read_loop(&dev, id, &switch2, &table2, &stop2));
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            table.withdraw(id);
            switch.set_link(id, false);
            return Err(e);
        }
    };
    Ok(TapPortHandle(ReaderPort {
        stop,
        thread: Some(thread),
        table,
        switch,
        id,
    }))
}

/// Reads frames in batches and forwards them, until `stop` or until the
/// device goes away under us (`ip link del`): then the port goes link down
/// and the thread ends, logged once, rather than poll a dead descriptor that
/// is always "ready".
fn read_loop(dev: &TapDevice, id: PortId, switch: &Switch, table: &PortTable, stop: &AtomicBool) {
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; HDR_LEN + MAX_FRAME]).collect();
    let mut lens = [0usize; BATCH];
    let mut deliveries = Vec::with_capacity(4 * BATCH);
    let ingress = Ingress { id, switch, table };
    let fd = dev.file.as_raw_fd();
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. 200 ms bounds how long stop() waits.
        let ready = unsafe { libc::poll(&mut pfd, 1, 200) };
        if ready <= 0 {
            continue;
        }
        let mut gone = (pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0)
            .then(|| io::Error::other("poll reports an error"));
        let mut count = 0;
        let mut short = 0u64;
        while count < BATCH && gone.is_none() {
            let buf = &mut bufs[count];
            // SAFETY: reading into our own buffer of buf.len() bytes.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => break,
                    _ => gone = Some(e), // EBADFD: the device was deleted
                }
                break;
            }
            let n = n as usize;
            if n < HDR_LEN {
                short += 1;
                continue;
            }
            lens[count] = n;
            count += 1;
        }
        let segments: Vec<VolatileSlice<'_>> = bufs[..count]
            .iter_mut()
            .zip(&lens)
            .map(|(b, &n)| VolatileSlice::from(&mut b[..n]))
            .collect();
        let frames: Vec<FrameSource<'_, '_>> = (0..count)
            .map(|i| FrameSource::new(&segments[i..=i], HDR_LEN))
            .collect();
        forward(&ingress, &frames, short, &mut deliveries);
        if let Some(e) = gone {
            table.withdraw(id);
            switch.set_link(id, false);
            log::error!(
                "TAP device {}: {e}; the device is gone: port link down, no longer read",
                dev.name
            );
            return;
        }
    }
}

impl TapPortHandle {
    /// Stops reading, withdraws the sink, takes the link down and closes the
    /// device (a device the daemon created disappears).
    pub fn stop(self) {
        self.0.stop();
    }
}
