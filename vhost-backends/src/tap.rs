//! TAP ports: a switch port backed by a kernel TAP device, so the host (or a
//! network namespace the device is moved into) joins a VLAN.
//!
//! The device is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a
//! 12-byte virtio-net header (the VERSION_1 layout the guests use), and
//! `TUNSETOFFLOAD` with checksum, TSO4/6 and ECN offload (and USO4/6 where
//! the kernel has them): the kernel then hands us 64 KiB super-frames with a
//! partial checksum, which pass intact to ports that take them, and takes
//! the same from us. The header of every frame read is validated once
//! (`FrameSource::with_header`); every frame written carries its header.
//!
//! Frames written to the port go out through [`TapSink`] (one `writev` per
//! frame, non-blocking: a full device queue drops and counts `no_buffer`).
//! Frames from the device are read in batches by a datapath thread, which
//! waits for the device to be readable in the same `epoll_wait` as for its
//! other queues ([`TapQueue`] is a [`PollQueue`]), and forwarded with the same
//! [`forward`] as a guest's transmit queue.
//!
//! Multi-queue (`multi_queue = true`): the device is opened with
//! `IFF_MULTI_QUEUE` once per queue (each `TUNSETIFF` on a new
//! `/dev/net/tun` descriptor attaches one more queue, Documentation/
//! networking/tuntap.rst "Multiqueue tuntap interface"), one queue per
//! datapath thread, and queue i is read by the thread of key `port + i`. The
//! kernel spreads the flows it sends over the queues by its own flow hash
//! (`tun_select_queue`); the sink writes each frame on the queue its flow hash
//! picks ([`crate::forward::flow_hash`]), so one flow keeps one queue.

use crate::datapath::{Datapath, DatapathPort, PollQueue, Polled};
use crate::forward::offload::{egress_header, HeaderFrom, MAX_GSO_FRAME};
use crate::forward::{
    flow_hash, forward, pick_queue, Delivery, DeliveryReport, ForwardScratch, FrameSink,
    FrameSource, Ingress, PortTable, BATCH, HDR_LEN,
};
use arrayvec::ArrayVec;
use fabric_offload::Accepts;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use vm_memory::VolatileSlice;
use vswitch::{DropReason, PortId, Switch};

/// Largest frame read from the device: a 64 KiB GSO super-frame with its
/// Ethernet header (and a tag).
const MAX_FRAME: usize = MAX_GSO_FRAME;

/// The offloads a TAP port asks of the kernel by default (`TUNSETOFFLOAD`:
/// what the device may hand us; see [`set_offloads`]).
pub const TAP_OFFLOADS: Accepts = Accepts::ALL;
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_NAME: usize = 15;

/// An open TAP device: one descriptor per queue.
pub struct TapDevice {
    queues: Vec<File>,
    name: String,
    /// What `TUNSETOFFLOAD` accepted: what the device may hand us, and
    /// what we hand it.
    offloads: Accepts,
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
    /// one, non-blocking, with the virtio-net header on: one queue.
    pub fn open(name: &str) -> io::Result<TapDevice> {
        Self::open_queues(name, 1, false, TAP_OFFLOADS)
    }

    /// Like [`TapDevice::open`] with `queues` queues (1 to
    /// [`vswitch::MAX_QUEUES`]); `multi_queue` opens it with
    /// `IFF_MULTI_QUEUE` (needed for more than one; a device made so cannot
    /// be attached to without it), asking the kernel for the `offloads`
    /// (`Accepts::NONE`: complete frames only, both ways).
    pub fn open_queues(
        name: &str,
        queues: usize,
        multi_queue: bool,
        offloads: Accepts,
    ) -> io::Result<TapDevice> {
        if queues == 0 || queues > vswitch::MAX_QUEUES || (queues > 1 && !multi_queue) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{name}: {queues} queues (1 to {} with IFF_MULTI_QUEUE)",
                    vswitch::MAX_QUEUES
                ),
            ));
        }
        let queues = (0..queues)
            .map(|_| Self::attach_queue(name, multi_queue))
            .collect::<io::Result<Vec<File>>>()?;
        // The offloads are the device's, whichever queue sets them.
        let offloads = set_offloads(&queues[0], name, offloads)?;
        Ok(TapDevice {
            queues,
            name: name.to_owned(),
            offloads,
        })
    }

    /// Opens one more queue of the device `name`.
    fn attach_queue(name: &str, multi_queue: bool) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
        let mut req = ifreq(name)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        req.ifr_ifru.ifru_flags = flags as i16;
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
        Ok(file)
    }

    /// Queues the device was opened with.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// What the device and we exchange besides complete frames.
    pub fn offloads(&self) -> Accepts {
        self.offloads
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

/// Enables `wanted` on the device, without USO if the kernel refuses it
/// (EINVAL before Linux 6.2); returns what was enabled. The flags set what
/// the kernel hands us: with none, it segments and checksums every frame
/// before the device sees it. We write frames with only the offloads enabled.
fn set_offloads(file: &File, name: &str, wanted: Accepts) -> io::Result<Accepts> {
    let mut result = Ok(());
    for offloads in [wanted, wanted.without(Accepts::USO)] {
        let flags = offloads.tun_offload_flags();
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        result = check(r, "TUNSETOFFLOAD", name);
        match &result {
            // No CSUM means no flags at all (Linux refuses TSO without it).
            Ok(()) if flags == 0 => return Ok(Accepts::NONE),
            Ok(()) => return Ok(offloads),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(_) => break,
        }
    }
    result.map(|()| Accepts::NONE)
}

/// The receive side of a TAP port: frames the switch sends to it.
pub struct TapSink {
    dev: Arc<TapDevice>,
}

impl FrameSink for TapSink {
    /// Each frame is written on one queue: the only one, or the one its
    /// flow hash picks among all of them (one flow, one queue, in order).
    fn deliver(&self, batch: &[Delivery], frames: &[FrameSource], report: &mut dyn DeliveryReport) {
        let accepts = self.accepts();
        let queues = self.dev.queues.len();
        let all = (1u32 << queues) - 1;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(8);
        let mut written = [0u64; vswitch::MAX_QUEUES];
        for d in batch {
            // num_buffers means nothing to the device: 0.
            let hdr = egress_header(frames[d.frame].offload(), d.egress.shift(), accepts, 0);
            let queue = match queues {
                1 => 0,
                _ => pick_queue(flow_hash(&frames[d.frame]), all).unwrap_or(0),
            };
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
                    self.dev.queues[queue].as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                )
            };
            let result = if n < 0 {
                Err(DropReason::NoBuffer)
            } else {
                written[queue] += 1;
                Ok(())
            };
            report.outcome(d, result);
        }
        if queues > 1 {
            for (queue, &n) in written[..queues]
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
            {
                report.delivered_on_queue(queue, n);
            }
        }
    }

    fn accepts(&self) -> Accepts {
        self.dev.offloads
    }
}

/// A running TAP port; [`TapPortHandle::stop`] ends it.
pub struct TapPortHandle(DatapathPort);

/// How a TAP port's device is set up.
#[derive(Clone, Copy, Debug)]
pub struct TapSetup {
    pub mtu: u16,
    /// One queue per datapath thread (at most [`vswitch::MAX_QUEUES`]),
    /// opened with `IFF_MULTI_QUEUE`; otherwise one.
    pub multi_queue: bool,
    /// Ask for [`TAP_OFFLOADS`]; false: none (complete frames both ways).
    pub offloads: bool,
}

/// Serves switch port `id` through TAP device `device` (created if absent),
/// set up as `setup` says: publishes the sink, brings the link up, and has
/// `datapath` threads read the device.
pub fn spawn(
    device: &str,
    setup: TapSetup,
    id: PortId,
    switch: Arc<Switch>,
    table: Arc<PortTable>,
    datapath: Arc<Datapath>,
) -> io::Result<TapPortHandle> {
    let queues = match setup.multi_queue {
        true => datapath.threads().min(vswitch::MAX_QUEUES),
        false => 1,
    };
    let offloads = match setup.offloads {
        true => TAP_OFFLOADS,
        false => Accepts::NONE,
    };
    let dev = Arc::new(TapDevice::open_queues(
        device,
        queues,
        setup.multi_queue,
        offloads,
    )?);
    dev.configure(setup.mtu)?;
    if let Some(p) = switch.topology().port(id) {
        p.state.counters.set_queue_count(queues);
    }
    let sink = Box::new(TapSink { dev: dev.clone() });
    let readers: Vec<Arc<dyn PollQueue>> = (0..queues)
        .map(|queue| {
            Arc::new(TapQueue {
                id,
                queue,
                switch: switch.clone(),
                table: table.clone(),
                fd: dev.queues[queue].as_raw_fd(),
                reader: Mutex::new(Some(TapReader {
                    bufs: (0..BATCH).map(|_| vec![0u8; HDR_LEN + MAX_FRAME]).collect(),
                    lens: [0; BATCH],
                    scratch: ForwardScratch::default(),
                    dev: dev.clone(),
                    gone: false,
                })),
            }) as Arc<dyn PollQueue>
        })
        .collect();
    DatapathPort::start(datapath, readers, sink, table, switch, id).map(TapPortHandle)
}

/// The transmit side of a TAP port (frames the host sends), as a datapath
/// thread polls it.
struct TapQueue {
    id: PortId,
    /// Which queue of the device this is.
    queue: usize,
    switch: Arc<Switch>,
    table: Arc<PortTable>,
    /// The queue's descriptor, open while `reader` holds the device.
    fd: RawFd,
    /// `None` once the port is stopped (the device is closed).
    reader: Mutex<Option<TapReader>>,
}

struct TapReader {
    dev: Arc<TapDevice>,
    /// One buffer per frame of a batch, allocated once.
    bufs: Vec<Vec<u8>>,
    /// Bytes read into each buffer.
    lens: [usize; BATCH],
    scratch: ForwardScratch,
    /// The device went away (said once; never read again).
    gone: bool,
}

impl PollQueue for TapQueue {
    /// Reads a batch and forwards it. A device that goes away under us (`ip
    /// link del`) takes the port link down, logged once, and is no longer
    /// polled, rather than poll a dead descriptor that is always "ready".
    fn poll(&self) -> Polled {
        let mut guard = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = guard.as_mut().filter(|r| !r.gone) else {
            return Polled::Gone;
        };
        let (count, short, gone) = read_batch(self.fd, &mut r.bufs, &mut r.lens);
        if count > 0 || short > 0 {
            let segments: ArrayVec<VolatileSlice<'_>, BATCH> = r.bufs[..count]
                .iter_mut()
                .zip(&r.lens)
                .map(|(b, &n)| VolatileSlice::from(&mut b[..n]))
                .collect();
            let mut frames = ArrayVec::<FrameSource<'_, '_>, BATCH>::new();
            let mut dropped = ArrayVec::<DropReason, BATCH>::new();
            dropped.extend((0..short).map(|_| DropReason::BadDescriptor));
            for i in 0..count {
                match FrameSource::with_header(&segments[i..=i], r.dev.offloads, HeaderFrom::Kernel)
                {
                    Ok(frame) => frames.push(frame),
                    Err(reason) => dropped.push(reason),
                }
            }
            let ingress = Ingress {
                id: self.id,
                switch: &self.switch,
                table: &self.table,
                queue: self.queue,
            };
            forward(&ingress, &frames, &dropped, &mut r.scratch);
        }
        let Some(e) = gone else {
            return Polled::Frames(count);
        };
        r.gone = true;
        self.table.withdraw(self.id);
        self.switch.set_link(self.id, false);
        log::error!(
            "TAP device {}: {e}; the device is gone: port link down, no longer read",
            r.dev.name
        );
        Polled::Gone
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.fd]
    }

    fn close(&self) {
        // Under the lock: a batch in flight ends first.
        drop(self.reader.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// Makes up to a batch of reads into `bufs`, their lengths into `lens`.
/// Returns the frames read, the reads too short to hold a header (dropped),
/// and the error that says the device is gone, if it is.
fn read_batch(
    fd: RawFd,
    bufs: &mut [Vec<u8>],
    lens: &mut [usize],
) -> (usize, u64, Option<io::Error>) {
    let (mut count, mut short) = (0, 0u64);
    // Short reads count against the batch too: one poll stays bounded.
    for _ in 0..bufs.len() {
        let buf = &mut bufs[count];
        // SAFETY: reading into our own buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => (count, short, None),
                _ => (count, short, Some(e)), // EBADFD: the device was deleted
            };
        }
        let n = n as usize;
        if n < HDR_LEN {
            short += 1;
            continue;
        }
        lens[count] = n;
        count += 1;
    }
    (count, short, None)
}

impl TapPortHandle {
    /// Withdraws the sink, takes the link down, stops reading and closes the
    /// device (a device the daemon created disappears).
    pub fn stop(self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;
    use vswitch::VlanMode;

    /// IEEE local experimental EtherType: the kernel's own frames (neighbour
    /// discovery) never carry it.
    const ETHERTYPE_TEST: [u8; 2] = [0x88, 0xb5];
    /// Only a guard against hanging: the frame arrives at once.
    const HANG: Duration = Duration::from_secs(10);

    /// Passes the frames of [`ETHERTYPE_TEST`] it is given to the test.
    struct Catch(Mutex<mpsc::Sender<Vec<u8>>>);

    impl FrameSink for Catch {
        fn deliver(
            &self,
            batch: &[Delivery],
            frames: &[FrameSource],
            report: &mut dyn DeliveryReport,
        ) {
            for d in batch {
                let out = d.bytes(frames);
                if out.get(12..14) == Some(&ETHERTYPE_TEST[..]) {
                    let _ = self.0.lock().unwrap().send(out);
                }
                report.outcome(d, Ok(()));
            }
        }

        fn accepts(&self) -> fabric_offload::Accepts {
            fabric_offload::Accepts::NONE
        }
    }

    /// Names of this process's threads.
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim_end().to_owned())
            .collect()
    }

    /// Sends `frame` out of interface `ifname` (so the TAP device reads it).
    fn send_out(ifname: &str, frame: &[u8]) {
        let name = CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name we own.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "{ifname}: {}", io::Error::last_os_error());
        // SAFETY: plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: our buffer and a valid sockaddr_ll of the size given.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        let sent = io::Error::last_os_error();
        // SAFETY: closing the socket we opened.
        unsafe { libc::close(fd) };
        assert_eq!(n, frame.len() as isize, "sendto {ifname}: {sent}");
    }

    /// A TAP port has no thread of its own: a datapath thread reads the
    /// device, forwards what the host sends, and stopping the port closes
    /// the device (its name is free again at once).
    #[test]
    fn a_tap_port_is_read_by_the_datapath_not_a_thread_of_its_own() {
        // A thread of its own: the network namespace below is per thread.
        std::thread::spawn(|| {
            // SAFETY: unshare(2) with a flag, no memory passed. The device and
            // its name are this test's alone.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            let switch = Arc::new(Switch::new("br0", 100, 100, 300));
            let table = Arc::new(PortTable::default());
            let datapath = Arc::new(Datapath::new(1).unwrap());
            let tap = switch
                .add_port(
                    "tap",
                    VlanMode::Access(vswitch::VlanId::new(10).unwrap()),
                    1500,
                )
                .unwrap();
            let out = switch
                .add_port(
                    "out",
                    VlanMode::Access(vswitch::VlanId::new(10).unwrap()),
                    1500,
                )
                .unwrap();
            switch.set_link(out, true);
            let (tx, rx) = mpsc::channel();
            table.publish(out, Box::new(Catch(Mutex::new(tx))));
            let (s, t, d) = (switch.clone(), table.clone(), datapath.clone());
            let handle = spawn(
                "fwdtap0",
                TapSetup {
                    mtu: 1500,
                    multi_queue: false,
                    offloads: true,
                },
                tap,
                s,
                t,
                d,
            )
            .unwrap();
            let names = thread_names();
            assert!(
                !names.iter().any(|n| n.starts_with("tap-")),
                "a thread per TAP port: {names:?}"
            );

            let mut frame = vec![0xff; 6];
            frame.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
            frame.extend_from_slice(&ETHERTYPE_TEST);
            frame.resize(60, 0xab);
            send_out("fwdtap0", &frame);
            assert_eq!(rx.recv_timeout(HANG), Ok(frame));

            handle.stop();
            // Still open, the old device would hold the name (EBUSY).
            TapDevice::open("fwdtap0").expect("the stopped port's device is closed");
            datapath.shutdown();
            assert!(rx.try_recv().is_err(), "one frame sent, one forwarded");
        })
        .join()
        .unwrap();
    }
}
