//! `GuestBlk`: a virtio-blk driver over a vhost-user socket, playing the VMM and the
//! guest driver at once (what QEMU plus the guest's virtio_blk would do), for
//! integration tests of vhost-user-blk backends.
//!
//! N request queues, split virtqueues (driver side in [`super::split_ring`]). A request
//! (virtio 1.2, 5.2.6) is a 16-byte header `{type le32, reserved le32, sector le64}`,
//! data, and a last device-writable status byte.
//!
//! Two ways to talk to the device:
//! - well-formed requests ([`GuestBlk::read`], [`GuestBlk::write`], ... or
//!   [`GuestBlk::submit`] + [`GuestBlk::wait`] to keep several in flight), laid out the
//!   way Linux does (header, data, status; alternately in one indirect table when
//!   INDIRECT_DESC is negotiated);
//! - raw chains for hostile input ([`GuestBlk::post_raw`], [`GuestBlk::post_raw_head`],
//!   [`GuestBlk::wait_used`]): any descriptors, any addresses; the test reads the status
//!   byte back where it put it.
//!
//! Device protocol violations seen on the rings (a used id that was never made available
//! or is returned twice) panic with a message starting with "device bug". Waiting never
//! hangs: every wait has a timeout, and the convenience helpers panic when it passes.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::VhostBackend;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest_memory::GuestRam;
use super::split_ring::{
    Desc, RingAreas, SplitRing, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use super::vhost_frontend::{
    connect_frontend, drain, enable_queue, negotiate_with, set_mem_table, setup_queue, vu,
    wait_readable, write_raw_chain, RawDesc,
};

/// Feature bits (as u64 masks).
pub mod features {
    use virtio_bindings::{virtio_blk as b, virtio_config, virtio_ring};

    pub const SIZE_MAX: u64 = 1 << b::VIRTIO_BLK_F_SIZE_MAX;
    pub const SEG_MAX: u64 = 1 << b::VIRTIO_BLK_F_SEG_MAX;
    pub const RO: u64 = 1 << b::VIRTIO_BLK_F_RO;
    pub const BLK_SIZE: u64 = 1 << b::VIRTIO_BLK_F_BLK_SIZE;
    pub const FLUSH: u64 = 1 << b::VIRTIO_BLK_F_FLUSH;
    pub const TOPOLOGY: u64 = 1 << b::VIRTIO_BLK_F_TOPOLOGY;
    pub const CONFIG_WCE: u64 = 1 << b::VIRTIO_BLK_F_CONFIG_WCE;
    pub const MQ: u64 = 1 << b::VIRTIO_BLK_F_MQ;
    pub const DISCARD: u64 = 1 << b::VIRTIO_BLK_F_DISCARD;
    pub const WRITE_ZEROES: u64 = 1 << b::VIRTIO_BLK_F_WRITE_ZEROES;
    pub const INDIRECT_DESC: u64 = 1 << virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
    pub const EVENT_IDX: u64 = 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    pub const VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
}

/// Request types (5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_GET_LIFETIME: u32 = 10;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const T_SECURE_ERASE: u32 = 14;

/// Status values (5.2.6).
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Write-zeroes flag: the device may unmap (5.2.6).
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

pub const SECTOR: u64 = 512;
pub const HEADER_LEN: usize = 16;
/// `struct virtio_blk_discard_write_zeroes`.
pub const SEGMENT_LEN: usize = 16;
/// `VIRTIO_BLK_ID_BYTES`.
pub const ID_BYTES: usize = 20;

/// The status byte's value before the device writes it.
pub const STATUS_UNWRITTEN: u8 = 0xff;

/// How long the convenience helpers wait for a completion.
pub const WAIT: Duration = Duration::from_secs(5);

/// Size of the config space we read: `struct virtio_blk_config` up to
/// `write_zeroes_may_unmap` and its padding (5.2.4).
pub const CONFIG_LEN: u32 = 60;

/// A request header (little endian).
pub fn header(kind: u32, sector: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A discard / write-zeroes segment (little endian).
pub fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; SEGMENT_LEN] {
    let mut s = [0u8; SEGMENT_LEN];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

/// `struct virtio_blk_config` (5.2.4), as read with GET_CONFIG.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub writeback: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    pub fn from_bytes(b: &[u8]) -> BlkConfig {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        BlkConfig {
            capacity: u64::from(u32_at(0)) | u64::from(u32_at(4)) << 32,
            size_max: u32_at(8),
            seg_max: u32_at(12),
            blk_size: u32_at(20),
            physical_block_exp: b[24],
            alignment_offset: b[25],
            min_io_size: u16_at(26),
            opt_io_size: u32_at(28),
            writeback: b[32],
            num_queues: u16_at(34),
            max_discard_sectors: u32_at(36),
            max_discard_seg: u32_at(40),
            discard_sector_alignment: u32_at(44),
            max_write_zeroes_sectors: u32_at(48),
            max_write_zeroes_seg: u32_at(52),
            write_zeroes_may_unmap: b[56],
        }
    }

    /// Capacity in bytes.
    pub fn bytes(&self) -> u64 {
        self.capacity * SECTOR
    }
}

/// How the guest side is set up.
#[derive(Clone, Debug)]
pub struct BlkOptions {
    /// Request queues to set up (the device must offer at least as many).
    pub queues: u16,
    /// Entries per virtqueue (a power of two, at most the device's maximum).
    pub queue_size: u16,
    /// Largest data buffer of a well-formed request, in bytes.
    pub max_data: u32,
    /// Accept VIRTIO_RING_F_EVENT_IDX if offered.
    pub event_idx: bool,
    /// Accept VIRTIO_RING_F_INDIRECT_DESC if offered; well-formed requests then
    /// alternate between direct chains and indirect tables.
    pub indirect: bool,
    /// Bytes of guest memory left to the test, at the very end of guest memory (see
    /// [`GuestBlk::sandbox`]); the harness never puts anything there.
    pub sandbox: u64,
    /// Accept VIRTIO_BLK_F_FLUSH (a write-back cache) if offered; without it the
    /// device must be write-through.
    pub flush: bool,
    /// Ack VHOST_USER_PROTOCOL_F_LOG_SHMFD if offered: the VMM may then hand over a
    /// dirty log ([`super::dirty_log::FrontendLog`]).
    pub dirty_log: bool,
    /// Set up and enable the rings at connect. Off: the device is negotiated
    /// only (a migration's destination QEMU, started with `-incoming`) until
    /// [`GuestBlk::start_rings`].
    pub start_rings: bool,
    /// Negotiate VHOST_USER_PROTOCOL_F_BACKEND_REQ if offered and hand the device a
    /// backend request channel (SET_BACKEND_REQ_FD), as QEMU does; see
    /// [`GuestBlk::config_changes`].
    pub backend_req: bool,
}

/// Counts the CONFIG_CHANGE_MSGs the device sends on its backend request channel.
#[derive(Default)]
struct ConfigChanges(AtomicU64);

impl VhostUserFrontendReqHandler for ConfigChanges {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(0)
    }
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            queues: 1,
            queue_size: 128,
            max_data: 64 * 1024,
            event_idx: true,
            indirect: true,
            sandbox: 0,
            flush: true,
            dirty_log: false,
            start_rings: true,
            backend_req: false,
        }
    }
}

/// A well-formed request.
#[derive(Clone, Copy, Debug)]
pub enum Req<'a> {
    /// Read `len` bytes at `sector`.
    Read {
        sector: u64,
        len: usize,
    },
    Write {
        sector: u64,
        data: &'a [u8],
    },
    Flush,
    GetId,
    Discard {
        sector: u64,
        sectors: u32,
        flags: u32,
    },
    WriteZeroes {
        sector: u64,
        sectors: u32,
        flags: u32,
    },
    /// A header of any type and just a status byte (no data).
    Other {
        kind: u32,
        sector: u64,
    },
}

/// A completed well-formed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    /// The status byte as the device left it ([`STATUS_UNWRITTEN`] if it did not).
    pub status: u8,
    /// The used length the device reported.
    pub used_len: u32,
    /// The data buffer after completion: reads and GET_ID only.
    pub data: Vec<u8>,
}

impl Done {
    pub fn ok(&self) -> bool {
        self.status == S_OK
    }
}

/// Per-head slot of well-formed requests: header, status, segment and indirect table
/// in the first page, data from the second.
const SLOT_HEADER: u64 = 0;
const SLOT_STATUS: u64 = 16;
const SLOT_SEGMENT: u64 = 32;
const SLOT_TABLE: u64 = 64;
const SLOT_DATA: u64 = 4096;
const SCRATCH_SIZE: u64 = 1 << 20;

/// A chain the driver made available and the device has not returned yet.
struct Chain {
    /// Descriptor table slots it occupies (the head first).
    descs: Vec<u16>,
    /// Well-formed: where its status byte is and how many data bytes to read back.
    status: Option<u64>,
    read_back: usize,
}

/// A used element taken off the ring, not yet claimed by the test.
struct Used {
    id: u32,
    len: u32,
    /// The chain it returned (None for a raw head).
    chain: Option<Chain>,
}

struct Queue {
    ring: SplitRing,
    kick: EventFd,
    call: EventFd,
    free: Vec<u16>,
    inflight: Vec<Option<Chain>>,
    /// Heads posted with `post_raw_head`, not returned yet.
    raw_heads: Vec<u16>,
    used: Vec<Used>,
    /// Guest address of head 0's slot.
    slots: u64,
}

/// A guest virtio-blk device connected to a vhost-user-blk backend.
pub struct GuestBlk {
    // Field order is drop order: close the socket first, like a dying VMM.
    frontend: Frontend,
    ram: GuestRam,
    features: u64,
    protocol_features: VhostUserProtocolFeatures,
    config: BlkConfig,
    /// The config space as read before SET_FEATURES (QEMU's cached copy).
    config_before_features: Option<BlkConfig>,
    queues: Vec<Queue>,
    queue_size: u16,
    max_data: u32,
    slot_size: u64,
    indirect: bool,
    submitted: u64,
    scratch: u64,
    scratch_next: u64,
    sandbox: (u64, u64),
    missed_notifications: u64,
    /// The frontend side of the backend request channel, if one was given.
    backend_req: Option<FrontendReqHandler<ConfigChanges>>,
    config_changes: Arc<ConfigChanges>,
}

impl GuestBlk {
    /// Connects to the vhost-user-blk socket (retrying for up to 5 s while the daemon
    /// may still be binding) and brings the device up the way QEMU does: features,
    /// protocol features (CONFIG, MQ, REPLY_ACK), GET_QUEUE_NUM, GET_CONFIG, memory
    /// table, then each queue.
    pub fn connect(socket: &Path, opts: BlkOptions) -> io::Result<GuestBlk> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let qs = opts.queue_size;
        if !qs.is_power_of_two() || qs > 32768 {
            return Err(invalid(format!("queue_size {qs}")));
        }
        if opts.queues == 0 {
            return Err(invalid("no queues".into()));
        }
        let mut frontend = connect_frontend(socket, u64::from(opts.queues))?;
        let mut wanted = features::VERSION_1
            | features::SIZE_MAX
            | features::SEG_MAX
            | features::BLK_SIZE
            | features::TOPOLOGY
            | features::FLUSH
            | features::CONFIG_WCE
            | features::DISCARD
            | features::WRITE_ZEROES
            | features::MQ
            | features::RO;
        if opts.event_idx {
            wanted |= features::EVENT_IDX;
        }
        if opts.indirect {
            wanted |= features::INDIRECT_DESC;
        }
        if !opts.flush {
            wanted &= !(features::FLUSH | features::CONFIG_WCE);
        }
        let mut config_before_features = None;
        let mut wanted_protocol = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        if opts.backend_req {
            wanted_protocol |= VhostUserProtocolFeatures::BACKEND_REQ;
        }
        if opts.dirty_log {
            wanted_protocol |= VhostUserProtocolFeatures::LOG_SHMFD;
        }
        let n = negotiate_with(&mut frontend, wanted, wanted_protocol, |fe, protocol| {
            if protocol.contains(VhostUserProtocolFeatures::CONFIG) {
                config_before_features = Some(read_config(fe)?);
            }
            Ok(())
        })?;
        let (acked, protocol_features) = (n.features, n.protocol);
        if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
            let max = vu("GET_QUEUE_NUM", frontend.get_queue_num())?;
            if max < u64::from(opts.queues) {
                return Err(invalid(format!(
                    "{} queues wanted, the backend has {max}",
                    opts.queues
                )));
            }
        } else if opts.queues > 1 {
            return Err(invalid(
                "several queues need VHOST_USER_PROTOCOL_F_MQ".into(),
            ));
        }
        if !protocol_features.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "backend does not offer VHOST_USER_PROTOCOL_F_CONFIG",
            ));
        }
        let config = read_config(&frontend)?;
        let config_changes = Arc::new(ConfigChanges::default());
        let backend_req = if protocol_features.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let handler = FrontendReqHandler::new(config_changes.clone())
                .map_err(|e| io::Error::other(format!("backend request channel: {e}")))?;
            let tx = handler.get_tx_raw_fd();
            // SAFETY: `tx` is the handler's open socket, alive for this call.
            let tx = unsafe { std::os::fd::BorrowedFd::borrow_raw(tx) };
            vu("SET_BACKEND_REQ_FD", frontend.set_backend_request_fd(&tx))?;
            Some(handler)
        } else {
            None
        };

        let event_idx = acked & features::EVENT_IDX != 0;
        let indirect = acked & features::INDIRECT_DESC != 0;
        let slot_size = (SLOT_DATA + u64::from(opts.max_data)).next_multiple_of(4096);
        let per_queue = 4 * 4096 + 26 * u64::from(qs) + u64::from(qs) * slot_size;
        let need = 4096 + u64::from(opts.queues) * per_queue + SCRATCH_SIZE + 4096 + opts.sandbox;
        let ram_size = need.next_multiple_of(2 << 20).max(16 << 20);
        let mut ram = GuestRam::new(ram_size as usize)?;
        let efd = || EventFd::new(EFD_NONBLOCK);
        let mut queues = Vec::new();
        for _ in 0..opts.queues {
            let ring = SplitRing::new(&mut ram, qs, event_idx)?;
            let slots = ram.alloc(u64::from(qs) * slot_size, 4096)?;
            queues.push(Queue {
                ring,
                kick: efd()?,
                call: efd()?,
                free: (0..qs).rev().collect(),
                inflight: (0..qs).map(|_| None).collect(),
                raw_heads: Vec::new(),
                used: Vec::new(),
                slots,
            });
        }
        let scratch = ram.alloc(SCRATCH_SIZE, 4096)?;
        // The sandbox is everything left, so that it ends where guest memory ends.
        let sandbox_start = ram.alloc(0, 4096)?;
        let sandbox_len = ram.remaining();
        ram.alloc(sandbox_len, 1)?;

        let mut blk = GuestBlk {
            frontend,
            ram,
            features: acked,
            protocol_features,
            config,
            config_before_features,
            queues,
            queue_size: qs,
            max_data: opts.max_data,
            slot_size,
            indirect,
            submitted: 0,
            scratch,
            scratch_next: 0,
            sandbox: (sandbox_start, sandbox_len),
            missed_notifications: 0,
            backend_req,
            config_changes,
        };
        if opts.start_rings {
            blk.start_rings()?;
        }
        Ok(blk)
    }

    /// The memory table, then each ring set up and enabled (what QEMU sends
    /// when the VM starts running). [`GuestBlk::connect`] does it unless
    /// `BlkOptions::start_rings` is off.
    pub fn start_rings(&mut self) -> io::Result<()> {
        set_mem_table(&mut self.frontend, &self.ram)?;
        for (q, queue) in self.queues.iter().enumerate() {
            queue.ring.enable_interrupt(&self.ram);
            setup_queue(
                &mut self.frontend,
                q,
                &queue.ring,
                &self.ram,
                0,
                &queue.kick,
                &queue.call,
            )?;
        }
        for q in 0..self.queues.len() {
            enable_queue(&mut self.frontend, q, self.features)?;
        }
        Ok(())
    }

    /// CONFIG_CHANGE_MSGs received on the backend request channel so far: handles
    /// every message already sent (answering one that asks for a reply) without
    /// waiting for more. Panics without a channel (`BlkOptions::backend_req`, and
    /// the device must offer BACKEND_REQ) or on a message the vhost crate's
    /// `FrontendReqHandler` refuses (a malformed header, an unknown request).
    pub fn config_changes(&mut self) -> u64 {
        let handler = self
            .backend_req
            .as_mut()
            .expect("no backend request channel: BlkOptions::backend_req, BACKEND_REQ offered");
        while wait_readable(&[handler.as_raw_fd()], Duration::ZERO) {
            if let Err(e) = handler.handle_request() {
                panic!("device bug: backend request refused: {e}");
            }
        }
        self.config_changes.0.load(Ordering::Relaxed)
    }

    /// The virtio feature bits acked with SET_FEATURES (includes PROTOCOL_FEATURES).
    pub fn negotiated_features(&self) -> u64 {
        self.features
    }

    /// The vhost-user protocol features acked.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// The config space as read at connect.
    pub fn config(&self) -> BlkConfig {
        self.config
    }

    /// The config space as read before SET_FEATURES, the copy QEMU reads when it
    /// creates the device and shows to the guest.
    pub fn config_before_features(&self) -> Option<BlkConfig> {
        self.config_before_features
    }

    /// Whether a Linux guest runs this disk with a write-back cache (virtblk's rule:
    /// the `writeback` byte QEMU showed it with CONFIG_WCE, else FLUSH negotiated).
    pub fn guest_sees_write_back(&self) -> bool {
        if self.features & features::CONFIG_WCE != 0 {
            self.config_before_features
                .is_some_and(|c| c.writeback != 0)
        } else {
            self.features & features::FLUSH != 0
        }
    }

    /// Reads the config space again (GET_CONFIG).
    pub fn read_config(&self) -> io::Result<BlkConfig> {
        read_config(&self.frontend)
    }

    /// Switches the device's write cache (5.2.5: SET_CONFIG of `writeback`, with
    /// CONFIG_WCE negotiated): off, every write is durable when it completes.
    pub fn set_writeback(&mut self, on: bool) -> io::Result<()> {
        vu(
            "SET_CONFIG",
            self.frontend
                .set_config(32, VhostUserConfigFlags::WRITABLE, &[u8::from(on)]),
        )?;
        self.config = self.read_config()?;
        Ok(())
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.config.capacity
    }

    /// The device offered (and we acked) VIRTIO_BLK_F_RO.
    pub fn read_only(&self) -> bool {
        self.features & features::RO != 0
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Largest data buffer of a well-formed request.
    pub fn max_data(&self) -> usize {
        self.max_data as usize
    }

    /// Guest memory (for tests that poke at it directly).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Size of guest memory: addresses `>= mem_size()` are outside it.
    pub fn mem_size(&self) -> u64 {
        self.ram.size()
    }

    /// `(start, len)` of the memory left to the test (`BlkOptions::sandbox`); it ends
    /// at [`GuestBlk::mem_size`].
    pub fn sandbox(&self) -> (u64, u64) {
        self.sandbox
    }

    /// One byte of guest memory.
    pub fn read_byte(&self, gpa: u64) -> u8 {
        let mut b = [0u8];
        self.ram
            .read(gpa, &mut b)
            .unwrap_or_else(|e| panic!("guest read: {e}"));
        b[0]
    }

    /// `len` bytes of guest memory.
    pub fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.ram
            .read(gpa, &mut b)
            .unwrap_or_else(|e| panic!("guest read: {e}"));
        b
    }

    /// Copies `data` into a 1 MiB scratch area of guest memory (reused round-robin,
    /// 512-byte aligned) and returns its guest address: headers, buffers and indirect
    /// tables for raw chains.
    pub fn guest_alloc(&mut self, data: &[u8]) -> u64 {
        let len = (data.len() as u64).max(1).next_multiple_of(512);
        assert!(
            len <= SCRATCH_SIZE,
            "guest_alloc: {} bytes is too big",
            data.len()
        );
        if self.scratch_next + len > SCRATCH_SIZE {
            self.scratch_next = 0;
        }
        let gpa = self.scratch + self.scratch_next;
        self.scratch_next += len;
        self.ram
            .write(gpa, data)
            .unwrap_or_else(|e| panic!("scratch write: {e}"));
        gpa
    }

    /// Times a wait found used elements after its poll timed out without a
    /// notification. A correct device keeps this at 0.
    pub fn missed_notifications(&self) -> u64 {
        self.missed_notifications
    }

    /// Free descriptors of queue `q` (after taking used elements off the ring).
    pub fn free_descriptors(&mut self, q: usize) -> usize {
        self.reclaim(q);
        self.queues[q].free.len()
    }

    /// Chains (and raw heads) made available on `q` that the device has not returned.
    pub fn in_flight(&mut self, q: usize) -> usize {
        self.reclaim(q);
        let queue = &self.queues[q];
        queue.inflight.iter().filter(|c| c.is_some()).count() + queue.raw_heads.len()
    }

    /// The device's used index of queue `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.queues[q].ring.used_idx(&self.ram)
    }

    // ---- well-formed requests ----

    /// Posts a well-formed request on queue `q` and kicks if the device wants it.
    /// Where a well-formed request at `head` of queue `q` has its status
    /// byte and its data (guest addresses); the header, segment and indirect
    /// table share the status byte's page.
    pub fn request_layout(&self, q: usize, head: u16) -> (u64, u64) {
        let slot = self.queues[q].slots + u64::from(head) * self.slot_size;
        (slot + SLOT_STATUS, slot + SLOT_DATA)
    }

    /// Where the rings of queue `q` are.
    pub fn ring_areas(&self, q: usize) -> RingAreas {
        self.queues[q].ring.areas()
    }

    /// A second handle on the vhost-user connection (e.g. to hand over a
    /// dirty log).
    pub fn frontend(&self) -> Frontend {
        self.frontend.clone()
    }

    /// Returns the chain's head, or `WouldBlock` if the queue has no room.
    pub fn submit(&mut self, q: usize, req: &Req<'_>) -> io::Result<u16> {
        let head = self.post(q, req)?;
        self.publish(q);
        Ok(head)
    }

    /// Posts all of `reqs` on queue `q`, then makes them available at once (one
    /// available-index update, at most one kick): the device sees them in one go.
    /// Returns their heads; `WouldBlock` (nothing posted) unless there are 3 free
    /// descriptors per request.
    pub fn submit_batch(&mut self, q: usize, reqs: &[Req<'_>]) -> io::Result<Vec<u16>> {
        self.reclaim(q);
        let free = self.queues[q].free.len();
        if free < 3 * reqs.len() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "queue {q}: {free} free descriptors for {} requests",
                    reqs.len()
                ),
            ));
        }
        let heads = reqs
            .iter()
            .map(|req| self.post(q, req))
            .collect::<io::Result<Vec<u16>>>()
            .unwrap_or_else(|e| panic!("queue {q}: a request of the batch: {e}"));
        self.publish(q);
        Ok(heads)
    }

    fn publish(&mut self, q: usize) {
        let queue = &mut self.queues[q];
        if queue.ring.publish(&self.ram) {
            let _ = queue.kick.write(1);
        }
    }

    /// Writes a well-formed request into a free chain and the available ring (not yet
    /// published).
    fn post(&mut self, q: usize, req: &Req<'_>) -> io::Result<u16> {
        self.reclaim(q);
        let use_indirect = self.indirect && self.submitted % 2 == 1;
        let (kind, sector) = match *req {
            Req::Read { sector, .. } => (T_IN, sector),
            Req::Write { sector, .. } => (T_OUT, sector),
            Req::Flush => (T_FLUSH, 0),
            Req::GetId => (T_GET_ID, 0),
            Req::Discard { sector, .. } => (T_DISCARD, sector),
            Req::WriteZeroes { sector, .. } => (T_WRITE_ZEROES, sector),
            Req::Other { kind, sector } => (kind, sector),
        };
        let data_len = match *req {
            Req::Read { len, .. } => len,
            Req::Write { data, .. } => data.len(),
            Req::GetId => ID_BYTES,
            _ => 0,
        };
        if data_len > self.max_data as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{data_len} bytes of data, max_data is {}", self.max_data),
            ));
        }
        let has_data = match req {
            Req::Discard { .. } | Req::WriteZeroes { .. } => true,
            _ => data_len > 0,
        };
        // Header, data or segment, status.
        let ndesc = 2 + usize::from(has_data);
        let need = if use_indirect { 1 } else { ndesc };
        let queue = &mut self.queues[q];
        if queue.free.len() < need {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("queue {q}: {} free descriptors", queue.free.len()),
            ));
        }
        let head = queue.free.pop().expect("checked above");
        let slot = queue.slots + u64::from(head) * self.slot_size;
        let ram = &self.ram;
        let write = |gpa: u64, data: &[u8]| {
            ram.write(gpa, data)
                .unwrap_or_else(|e| panic!("slot write: {e}"))
        };
        write(slot + SLOT_HEADER, &header(kind, sector));
        write(slot + SLOT_STATUS, &[STATUS_UNWRITTEN]);
        let data = slot + SLOT_DATA;
        let mut bufs = vec![(slot + SLOT_HEADER, HEADER_LEN as u32, 0u16)];
        let mut read_back = 0;
        match *req {
            Req::Read { len, .. } => {
                // Stale bytes would hide a device that does not write the data.
                ram.fill(data, len, 0xa5)
                    .unwrap_or_else(|e| panic!("slot write: {e}"));
                bufs.push((data, len as u32, VIRTQ_DESC_F_WRITE));
                read_back = len;
            }
            Req::GetId => {
                ram.fill(data, ID_BYTES, 0xa5)
                    .unwrap_or_else(|e| panic!("slot write: {e}"));
                bufs.push((data, ID_BYTES as u32, VIRTQ_DESC_F_WRITE));
                read_back = ID_BYTES;
            }
            Req::Write { data: d, .. } if !d.is_empty() => {
                write(data, d);
                bufs.push((data, d.len() as u32, 0));
            }
            Req::Discard {
                sector,
                sectors,
                flags,
            }
            | Req::WriteZeroes {
                sector,
                sectors,
                flags,
            } => {
                write(slot + SLOT_SEGMENT, &segment(sector, sectors, flags));
                bufs.push((slot + SLOT_SEGMENT, SEGMENT_LEN as u32, 0));
            }
            _ => {}
        }
        bufs.push((slot + SLOT_STATUS, 1, VIRTQ_DESC_F_WRITE));
        let chain = |i: usize, &(addr, len, flags): &(u64, u32, u16)| RawDesc {
            addr,
            len,
            flags: flags
                | if i + 1 < bufs.len() {
                    VIRTQ_DESC_F_NEXT
                } else {
                    0
                },
            next: (i + 1) as u16,
        };
        let descs = if use_indirect {
            // 2.7.5.3: the table's `next` fields index the table itself.
            for (i, b) in bufs.iter().enumerate() {
                let r = chain(i, b);
                let d = Desc {
                    addr: r.addr,
                    len: r.len,
                    flags: r.flags,
                    next: if r.flags & VIRTQ_DESC_F_NEXT != 0 {
                        r.next
                    } else {
                        0
                    },
                };
                write(slot + SLOT_TABLE + 16 * i as u64, &d.to_bytes());
            }
            let d = Desc {
                addr: slot + SLOT_TABLE,
                len: 16 * bufs.len() as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            };
            queue.ring.write_desc(ram, head, d);
            vec![head]
        } else {
            let mut slots = vec![head];
            slots.extend((1..bufs.len()).map(|_| queue.free.pop().expect("checked above")));
            let raw: Vec<RawDesc> = bufs.iter().enumerate().map(|(i, b)| chain(i, b)).collect();
            write_raw_chain(&queue.ring, ram, &raw, &slots);
            slots
        };
        queue.inflight[usize::from(head)] = Some(Chain {
            descs,
            status: Some(slot + SLOT_STATUS),
            read_back,
        });
        queue.ring.push_avail(ram, head);
        self.submitted += 1;
        Ok(head)
    }

    /// Waits for the well-formed request at `head` on `q`; `TimedOut` if the device
    /// does not return it within `timeout`.
    pub fn wait(&mut self, q: usize, head: u16, timeout: Duration) -> io::Result<Done> {
        let (len, chain) = self.wait_used_chain(q, u32::from(head), timeout)?;
        let chain = chain.unwrap_or_else(|| panic!("head {head} was posted raw"));
        let status_gpa = chain
            .status
            .unwrap_or_else(|| panic!("head {head} is a raw chain: use wait_used"));
        let slot = status_gpa - SLOT_STATUS;
        let done = Done {
            status: self.read_byte(status_gpa),
            used_len: len,
            data: self.read_mem(slot + SLOT_DATA, chain.read_back),
        };
        self.queues[q].free.extend(chain.descs);
        Ok(done)
    }

    /// Submits `req` on `q` and waits for it ([`WAIT`]); panics if the queue is full or
    /// the device does not answer in time.
    pub fn request(&mut self, q: usize, req: &Req<'_>) -> Done {
        let head = self
            .submit(q, req)
            .unwrap_or_else(|e| panic!("queue {q}: submitting {req:?}: {e}"));
        self.wait(q, head, WAIT)
            .unwrap_or_else(|e| panic!("queue {q}: {req:?}: {e}"))
    }

    pub fn read(&mut self, q: usize, sector: u64, len: usize) -> Done {
        self.request(q, &Req::Read { sector, len })
    }

    pub fn write(&mut self, q: usize, sector: u64, data: &[u8]) -> Done {
        self.request(q, &Req::Write { sector, data })
    }

    pub fn flush(&mut self, q: usize) -> Done {
        self.request(q, &Req::Flush)
    }

    pub fn get_id(&mut self, q: usize) -> Done {
        self.request(q, &Req::GetId)
    }

    pub fn discard(&mut self, q: usize, sector: u64, sectors: u32, flags: u32) -> Done {
        self.request(
            q,
            &Req::Discard {
                sector,
                sectors,
                flags,
            },
        )
    }

    pub fn write_zeroes(&mut self, q: usize, sector: u64, sectors: u32, flags: u32) -> Done {
        self.request(
            q,
            &Req::WriteZeroes {
                sector,
                sectors,
                flags,
            },
        )
    }

    // ---- raw chains ----

    /// Posts an arbitrary chain on queue `q` and kicks (unconditionally). Descriptors
    /// go into free table slots; `RawDesc::next` is relative to `descs` (see
    /// [`RawDesc`]). Returns the head, or None if there are not enough free
    /// descriptors (or `descs` is empty).
    pub fn post_raw(&mut self, q: usize, descs: &[RawDesc]) -> Option<u16> {
        self.reclaim(q);
        let queue = &mut self.queues[q];
        if descs.is_empty() || queue.free.len() < descs.len() {
            return None;
        }
        let slots: Vec<u16> = (0..descs.len()).filter_map(|_| queue.free.pop()).collect();
        write_raw_chain(&queue.ring, &self.ram, descs, &slots);
        let head = slots[0];
        queue.inflight[usize::from(head)] = Some(Chain {
            descs: slots,
            status: None,
            read_back: 0,
        });
        queue.ring.push_avail(&self.ram, head);
        queue.ring.publish(&self.ram);
        let _ = queue.kick.write(1);
        Some(head)
    }

    /// The descriptor slot the next [`GuestBlk::post_raw`] on `q` will use as its head
    /// (None if none is free): lets a test lay out memory per head before posting.
    pub fn next_head(&mut self, q: usize) -> Option<u16> {
        self.reclaim(q);
        self.queues[q].free.last().copied()
    }

    /// Puts `head` in the available ring of `q` as-is (e.g. an index `>= queue_size`)
    /// and kicks. Its descriptors are not the harness's business.
    pub fn post_raw_head(&mut self, q: usize, head: u16) {
        let queue = &mut self.queues[q];
        queue.ring.push_avail(&self.ram, head);
        queue.raw_heads.push(head);
        queue.ring.publish(&self.ram);
        let _ = queue.kick.write(1);
    }

    /// Moves the available index of `q` `ahead` entries past what the driver made
    /// available (more than the queue holds: a broken driver) and kicks.
    pub fn post_avail_ahead(&mut self, q: usize, ahead: u16) {
        let queue = &mut self.queues[q];
        let idx = queue.ring.avail_idx().wrapping_add(ahead);
        queue.ring.force_avail_idx(&self.ram, idx);
        let _ = queue.kick.write(1);
    }

    /// Kicks queue `q` without making anything available.
    pub fn kick(&self, q: usize) {
        let _ = self.queues[q].kick.write(1);
    }

    /// Forgets a raw head the device will never return (the test proved it).
    pub fn forget_raw_head(&mut self, q: usize, head: u16) {
        let heads = &mut self.queues[q].raw_heads;
        if let Some(pos) = heads.iter().position(|&h| h == head) {
            heads.remove(pos);
        }
    }

    /// Waits for the used element of `head` (a raw chain, a raw head, or a well-formed
    /// request whose data the test does not want) and returns its used length; None if
    /// it does not come within `timeout`. The chain's descriptors are free again.
    pub fn wait_used(&mut self, q: usize, head: u16, timeout: Duration) -> Option<u32> {
        let (len, chain) = self.wait_used_chain(q, u32::from(head), timeout).ok()?;
        if let Some(chain) = chain {
            self.queues[q].free.extend(chain.descs);
        }
        Some(len)
    }

    /// Used elements of `q` returned so far and not claimed yet, as `(id, len)`, in
    /// the order the device returned them; all are claimed (descriptors free again).
    pub fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        self.reclaim(q);
        let queue = &mut self.queues[q];
        let mut out = Vec::new();
        for u in queue.used.drain(..) {
            if let Some(chain) = u.chain {
                queue.free.extend(chain.descs);
            }
            out.push((u.id, u.len));
        }
        out
    }

    /// Waits until `q` has at least one unclaimed used element; false on timeout.
    pub fn wait_any(&mut self, q: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.reclaim(q);
            if !self.queues[q].used.is_empty() {
                return true;
            }
            if !self.sleep(q, deadline) {
                return false;
            }
        }
    }

    /// Waits until every chain posted on `q` with descriptors (raw heads aside) has been
    /// returned; false on timeout.
    pub fn wait_chains_returned(&mut self, q: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.reclaim(q);
            if self.queues[q].inflight.iter().all(Option::is_none) {
                return true;
            }
            if !self.sleep(q, deadline) {
                return false;
            }
        }
    }

    // ---- lifecycle ----

    /// Stops every queue like QEMU does when a VM stops (GET_VRING_BASE); returns the
    /// device's next available index per queue. Used elements the device published
    /// before answering can still be taken off the rings afterwards.
    pub fn stop(&mut self) -> io::Result<Vec<u32>> {
        (0..self.queues.len())
            .map(|q| vu("GET_VRING_BASE", self.frontend.get_vring_base(q)))
            .collect()
    }

    /// Drops the vhost-user connection without any goodbye, like a VMM that died.
    pub fn disconnect(self) {
        drop(self);
    }

    // ---- internals ----

    /// Takes every used element of `q` off the ring, checking its id.
    fn reclaim(&mut self, q: usize) {
        let queue = &mut self.queues[q];
        while let Some((id, len)) = queue.ring.pop_used(&self.ram) {
            let chain = usize::try_from(id)
                .ok()
                .and_then(|i| queue.inflight.get_mut(i))
                .and_then(Option::take);
            if chain.is_none() {
                match queue.raw_heads.iter().position(|&h| u32::from(h) == id) {
                    Some(pos) => {
                        queue.raw_heads.remove(pos);
                    }
                    None => panic!(
                        "device bug: queue {q}: used id {id} (len {len}) is not the head of a \
                         chain in flight (never made available, or returned twice)"
                    ),
                }
            }
            queue.used.push(Used { id, len, chain });
        }
    }

    fn wait_used_chain(
        &mut self,
        q: usize,
        id: u32,
        timeout: Duration,
    ) -> io::Result<(u32, Option<Chain>)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reclaim(q);
            let used = &mut self.queues[q].used;
            if let Some(pos) = used.iter().position(|u| u.id == id) {
                let u = used.remove(pos);
                return Ok((u.len, u.chain));
            }
            if !self.sleep(q, deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "queue {q}: the device did not return head {id} within {timeout:?} \
                         (used idx {})",
                        self.used_idx(q)
                    ),
                ));
            }
        }
    }

    /// Arms the interrupt of `q` and sleeps until it fires, a used element shows up or
    /// `deadline` passes (false then). Polls in slices of 50 ms so that a device that
    /// publishes without notifying is counted (`missed_notifications`), not waited for.
    fn sleep(&mut self, q: usize, deadline: Instant) -> bool {
        let queue = &self.queues[q];
        queue.ring.enable_interrupt(&self.ram);
        if queue.ring.used_pending(&self.ram) > 0 {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let slice = (deadline - now).min(Duration::from_millis(50));
        let fd = queue.call.as_raw_fd();
        let woke = wait_readable(&[fd], slice);
        drain(&queue.call);
        if !woke && queue.ring.used_pending(&self.ram) > 0 {
            // Give a notification in the making a moment before calling it missed.
            if !wait_readable(&[fd], Duration::from_millis(20)) {
                self.missed_notifications += 1;
                eprintln!("GuestBlk: queue {q}: used elements published without a notification");
            }
            drain(&self.queues[q].call);
        }
        true
    }
}

fn read_config(frontend: &Frontend) -> io::Result<BlkConfig> {
    // Frontend is a handle to a shared, locked connection: cloning it lets a `&self`
    // method issue a request.
    let mut fe = frontend.clone();
    let buf = [0u8; CONFIG_LEN as usize];
    let (_, b) = vu(
        "GET_CONFIG",
        fe.get_config(0, CONFIG_LEN, VhostUserConfigFlags::empty(), &buf),
    )?;
    Ok(BlkConfig::from_bytes(&b))
}
