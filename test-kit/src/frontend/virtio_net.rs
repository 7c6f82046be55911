//! `GuestNic`: a virtio-net driver over a vhost-user socket, playing the VMM and the guest
//! driver at once (what QEMU plus the guest's virtio_net would do), for integration tests.
//!
//! One queue pair by default, split virtqueues: queue 0 = RX (device writes), queue 1 = TX
//! (device reads). With `NicOptions::queue_pairs` above 1 it negotiates VIRTIO_NET_F_MQ and
//! sets up pairs 1.. too (queues 2N, 2N+1), each RX queue with its own buffers: frames on
//! them are read with [`GuestNic::recv_on`]; their TX queues stay empty. Like QEMU and DPDK,
//! the harness keeps the control queue to itself and tells the backend which pairs are in
//! use with SET_VRING_ENABLE ([`GuestNic::set_vring_enable`]). The driver side of the rings is in [`super::split_ring`]. Every frame carries a
//! 12-byte `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1 is required, 5.1.6).
//!
//! Device (backend) protocol violations seen on the rings, such as a used id that was never
//! made available or a used length larger than the buffer, panic with a message starting
//! with "device bug": in a test they are failures of the code under test. Errors that can
//! legitimately happen (socket gone, feature not offered) are returned as `io::Error`.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest_memory::GuestRam;
use super::split_ring::{
    Desc, RingAreas, SplitRing, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
pub use super::vhost_frontend::RawDesc;
use super::vhost_frontend::{
    connect_frontend, drain, enable_queue, negotiate, set_mem_table, setup_queue, vu,
    wait_readable, write_raw_chain, Negotiated,
};

/// Feature bits (as u64 masks) used by the harness.
pub mod features {
    use virtio_bindings::{virtio_config, virtio_net, virtio_ring};

    pub const CSUM: u64 = 1 << virtio_net::VIRTIO_NET_F_CSUM;
    pub const GUEST_CSUM: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_CSUM;
    pub const MTU: u64 = 1 << virtio_net::VIRTIO_NET_F_MTU;
    pub const MAC: u64 = 1 << virtio_net::VIRTIO_NET_F_MAC;
    pub const GUEST_TSO4: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_TSO4;
    pub const GUEST_TSO6: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_TSO6;
    pub const HOST_TSO4: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_TSO4;
    pub const HOST_TSO6: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_TSO6;
    pub const GUEST_ECN: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_ECN;
    pub const HOST_ECN: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_ECN;
    pub const GUEST_USO4: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_USO4;
    pub const GUEST_USO6: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_USO6;
    pub const HOST_USO: u64 = 1 << virtio_net::VIRTIO_NET_F_HOST_USO;
    /// What a guest sends offloaded: partial checksums, TSO, ECN, USO (5.1.6.2).
    pub const HOST_OFFLOADS: u64 = CSUM | HOST_TSO4 | HOST_TSO6 | HOST_ECN | HOST_USO;
    /// What a guest takes offloaded (5.1.6.4).
    pub const GUEST_OFFLOADS: u64 =
        GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN | GUEST_USO4 | GUEST_USO6;
    pub const MRG_RXBUF: u64 = 1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    pub const STATUS: u64 = 1 << virtio_net::VIRTIO_NET_F_STATUS;
    pub const CTRL_VQ: u64 = 1 << virtio_net::VIRTIO_NET_F_CTRL_VQ;
    pub const GUEST_ANNOUNCE: u64 = 1 << virtio_net::VIRTIO_NET_F_GUEST_ANNOUNCE;
    pub const MQ: u64 = 1 << virtio_net::VIRTIO_NET_F_MQ;
    pub const INDIRECT_DESC: u64 = 1 << virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
    pub const EVENT_IDX: u64 = 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    pub const VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;
    /// vhost-user's own bit in the feature word (VHOST_USER_F_PROTOCOL_FEATURES).
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
}

/// Size of `struct virtio_net_hdr_v1` (5.1.6): the header with VERSION_1 is always 12
/// bytes, whether or not MRG_RXBUF is negotiated.
pub const VNET_HDR_LEN: usize = 12;

/// Largest frame `send` accepts (a 64 KiB GSO frame plus headers, 5.1.6.3.1).
pub const TX_MAX_FRAME: usize = 65550;

/// `virtio_net_hdr_v1` flags and GSO types (5.1.6).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;

/// `struct virtio_net_hdr_v1`, little endian on the wire (VERSION_1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }
}

/// The first fields of `struct virtio_net_config` (5.1.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    /// Valid if VIRTIO_NET_F_STATUS was negotiated; bit 0 = VIRTIO_NET_S_LINK_UP.
    pub status: u16,
    /// Valid if VIRTIO_NET_F_MQ (or RSS) was negotiated.
    pub max_virtqueue_pairs: u16,
    /// Valid if VIRTIO_NET_F_MTU was negotiated.
    pub mtu: u16,
}

/// Bytes of `virtio_net_config` the harness reads: mac, status, max_virtqueue_pairs, mtu.
const NET_CONFIG_LEN: u32 = 12;

/// How the guest side is set up.
#[derive(Clone, Debug)]
pub struct NicOptions {
    /// Entries per virtqueue (a power of two).
    pub queue_size: u16,
    /// Accept VIRTIO_NET_F_MRG_RXBUF if offered.
    pub mrg_rxbuf: bool,
    /// Accept VIRTIO_RING_F_EVENT_IDX if offered.
    pub event_idx: bool,
    /// Accept VIRTIO_RING_F_INDIRECT_DESC if offered; TX then also uses indirect tables.
    pub indirect: bool,
    /// Bytes per RX buffer, including the 12-byte header. Without MRG_RXBUF a buffer must
    /// hold a whole frame: 1526 for 1514-byte frames, 65562 with guest GSO (5.1.6.3.1).
    pub rx_buffer_len: u32,
    /// RX buffers to post, clamped to `queue_size`; 0 posts none.
    pub rx_buffers: u16,
    /// More virtio-net feature bits to accept if offered (e.g. `features::GUEST_CSUM`).
    pub extra_features: u64,
    /// Kick after every publish, ignoring the device's suppression hints (avail_event or
    /// VIRTQ_USED_F_NO_NOTIFY). Off by default: the driver honours them, as Linux does.
    pub always_kick: bool,
    /// Queue pairs to set up (VIRTIO_NET_F_MQ when above 1; the backend must offer it).
    pub queue_pairs: u16,
    /// Ack VHOST_USER_PROTOCOL_F_LOG_SHMFD if offered: the VMM may then hand over a
    /// dirty log ([`super::dirty_log::FrontendLog`]).
    pub dirty_log: bool,
}

impl Default for NicOptions {
    fn default() -> Self {
        NicOptions {
            queue_size: 256,
            mrg_rxbuf: true,
            event_idx: true,
            indirect: false,
            rx_buffer_len: 2048,
            rx_buffers: 256,
            extra_features: 0,
            always_kick: false,
            queue_pairs: 1,
            dirty_log: false,
        }
    }
}

impl NicOptions {
    /// Defaults plus `extra` feature bits (e.g. [`features::HOST_OFFLOADS`]):
    /// a guest that negotiates those offloads, or, without them, refuses them.
    pub fn with_features(extra: u64) -> Self {
        NicOptions {
            extra_features: extra,
            ..Default::default()
        }
    }

    /// Defaults without MRG_RXBUF: every RX buffer holds a 64 KiB frame.
    pub fn without_mrg() -> Self {
        NicOptions {
            mrg_rxbuf: false,
            rx_buffer_len: 65562,
            ..Default::default()
        }
    }
}

/// TX buffer slot per chain head: header at 0 (split and indirect layouts), indirect table
/// at 16, frame at 64; the combined layout puts the header at 52, right before the frame.
const TX_SLOT_SIZE: u64 = 69632;
const TX_SLOT_INDIRECT: u64 = 16;
const TX_SLOT_FRAME: u64 = 64;
const SCRATCH_SIZE: u64 = 1 << 20;

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;

/// How a TX frame is laid out in descriptors; `send` rotates through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxLayout {
    /// One descriptor: header and frame contiguous.
    Combined,
    /// Two chained descriptors: header, then frame (not adjacent in memory).
    Split,
    /// One INDIRECT descriptor pointing at a two-entry table (header, frame).
    Indirect,
}

/// A queue pair past the first: its RX queue with buffers posted (one per descriptor,
/// descriptor `i` always buffer `i`), its TX queue set up and never used.
struct ExtraPair {
    rx: SplitRing,
    rx_bufs: Vec<u64>,
    rx_kick: EventFd,
    rx_call: EventFd,
    _tx: SplitRing,
    _tx_kick: EventFd,
    _tx_call: EventFd,
}

/// A received frame whose `num_buffers` buffers have not all arrived yet.
struct PartialFrame {
    hdr: VirtioNetHdr,
    data: Vec<u8>,
    buffers_left: u16,
}

/// A guest virtio-net device connected to a vhost-user-net backend.
pub struct GuestNic {
    // Field order is drop order: close the socket first, like a dying VMM.
    frontend: Frontend,
    ram: GuestRam,
    features: u64,
    protocol_features: VhostUserProtocolFeatures,
    always_kick: bool,
    rx: SplitRing,
    tx: SplitRing,
    rx_kick: EventFd,
    rx_call: EventFd,
    tx_kick: EventFd,
    tx_call: EventFd,
    rx_buffer_len: u32,
    /// Guest address of RX buffer `i`; descriptor `i` always points at buffer `i`.
    rx_bufs: Vec<u64>,
    rx_partial: Option<PartialFrame>,
    /// Buffers of the frame [`GuestNic::poll_rx_frames`] is in the middle of.
    rx_polled_left: u16,
    /// Where the device said it wrote each RX buffer it returned: (guest
    /// address, used length), in order; see [`GuestNic::take_rx_landed`].
    rx_landed: Vec<(u64, u32)>,
    /// Free TX descriptor indices.
    tx_free: Vec<u16>,
    /// Descriptors of the in-flight chain whose head is the index.
    tx_inflight: Vec<Option<Vec<u16>>>,
    /// Heads posted with `send_raw_head` that the device has not returned yet.
    tx_raw_heads: VecDeque<u16>,
    tx_slots: u64,
    tx_posted: u64,
    tx_done: u64,
    tx_layouts: Vec<TxLayout>,
    send_seq: usize,
    scratch: u64,
    scratch_next: u64,
    kicks: u64,
    missed_notifications: u64,
    /// Pairs 1.. (index 0 is pair 1).
    extra: Vec<ExtraPair>,
}

impl GuestNic {
    /// Connects to the vhost-user-net socket (retrying for up to 5 s while the daemon may
    /// still be binding) and brings the device up the way QEMU does.
    pub fn connect(socket: &Path, opts: NicOptions) -> io::Result<GuestNic> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if !opts.queue_size.is_power_of_two() || opts.queue_size > 32768 {
            return Err(invalid(format!("queue_size {}", opts.queue_size)));
        }
        if (opts.rx_buffer_len as usize) < VNET_HDR_LEN {
            // 5.1.6.3.1: every RX buffer must at least hold the header.
            return Err(invalid(format!("rx_buffer_len {}", opts.rx_buffer_len)));
        }
        let qs = opts.queue_size;
        let rx_count = opts.rx_buffers.min(qs);

        let pairs = opts.queue_pairs.max(1);
        // One pair more than set up may be addressed: tests of a hostile frontend send
        // vring messages for a queue the device does not have.
        let mut frontend = connect_frontend(socket, 2 * u64::from(pairs) + 2)?;
        let mut wanted = features::VERSION_1
            | features::MAC
            | features::STATUS
            | features::MTU
            | opts.extra_features;
        if opts.mrg_rxbuf {
            wanted |= features::MRG_RXBUF;
        }
        if opts.event_idx {
            wanted |= features::EVENT_IDX;
        }
        if opts.indirect {
            wanted |= features::INDIRECT_DESC;
        }
        if pairs > 1 {
            wanted |= features::MQ;
        }
        let Negotiated {
            features: acked,
            protocol: protocol_features,
            ..
        } = negotiate(
            &mut frontend,
            wanted,
            VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::RARP
                | match opts.dirty_log {
                    true => VhostUserProtocolFeatures::LOG_SHMFD,
                    false => VhostUserProtocolFeatures::empty(),
                },
        )?;

        let event_idx = acked & features::EVENT_IDX != 0;
        let indirect = acked & features::INDIRECT_DESC != 0;

        // Guest RAM: rings, RX buffers, TX slots, scratch; rounded up, at least 32 MiB.
        let n = u64::from(qs);
        let rx_stride = u64::from(opts.rx_buffer_len).next_multiple_of(64);
        let need = 4096
            + u64::from(pairs) * (2 * (26 * n + 4 * 4096) + u64::from(rx_count) * rx_stride)
            + 4096
            + n * TX_SLOT_SIZE
            + SCRATCH_SIZE;
        let ram_size = need.next_multiple_of(2 << 20).max(32 << 20);
        let mut ram = GuestRam::new(ram_size as usize)?;
        let mut rx = SplitRing::new(&mut ram, qs, event_idx)?;
        let tx = SplitRing::new(&mut ram, qs, event_idx)?;
        let rx_base = ram.alloc(u64::from(rx_count) * rx_stride, 4096)?;
        let rx_bufs: Vec<u64> = (0..u64::from(rx_count))
            .map(|i| rx_base + i * rx_stride)
            .collect();
        let tx_slots = ram.alloc(n * TX_SLOT_SIZE, 4096)?;
        let scratch = ram.alloc(SCRATCH_SIZE, 4096)?;

        // Post all RX buffers: one device-writable descriptor each (5.1.6.3).
        for (i, &gpa) in rx_bufs.iter().enumerate() {
            let d = Desc {
                addr: gpa,
                len: opts.rx_buffer_len,
                flags: VIRTQ_DESC_F_WRITE,
                next: 0,
            };
            rx.write_desc(&ram, i as u16, d);
            rx.push_avail(&ram, i as u16);
        }
        rx.publish(&ram);
        rx.enable_interrupt(&ram);
        // TX completions are reclaimed by polling; interrupts only while waiting for them.
        tx.disable_interrupt(&ram);

        let efd = || EventFd::new(EFD_NONBLOCK);
        let (rx_kick, rx_call, tx_kick, tx_call) = (efd()?, efd()?, efd()?, efd()?);

        set_mem_table(&mut frontend, &ram)?;
        for (q, ring, kick, call) in [
            (RX_QUEUE, &rx, &rx_kick, &rx_call),
            (TX_QUEUE, &tx, &tx_kick, &tx_call),
        ] {
            setup_queue(&mut frontend, q, ring, &ram, 0, kick, call)?;
        }
        for q in [RX_QUEUE, TX_QUEUE] {
            enable_queue(&mut frontend, q, acked)?;
        }
        let mut extra = Vec::new();
        if pairs > 1 && acked & features::MQ == 0 {
            return Err(invalid(format!(
                "{pairs} queue pairs asked, VIRTIO_NET_F_MQ not offered"
            )));
        }
        for pair in 1..usize::from(pairs) {
            let mut rx = SplitRing::new(&mut ram, qs, event_idx)?;
            let tx = SplitRing::new(&mut ram, qs, event_idx)?;
            let base = ram.alloc(u64::from(rx_count) * rx_stride, 4096)?;
            let bufs: Vec<u64> = (0..u64::from(rx_count))
                .map(|i| base + i * rx_stride)
                .collect();
            for (i, &gpa) in bufs.iter().enumerate() {
                let d = Desc {
                    addr: gpa,
                    len: opts.rx_buffer_len,
                    flags: VIRTQ_DESC_F_WRITE,
                    next: 0,
                };
                rx.write_desc(&ram, i as u16, d);
                rx.push_avail(&ram, i as u16);
            }
            rx.publish(&ram);
            rx.enable_interrupt(&ram);
            let p = ExtraPair {
                rx,
                rx_bufs: bufs,
                rx_kick: efd()?,
                rx_call: efd()?,
                _tx: tx,
                _tx_kick: efd()?,
                _tx_call: efd()?,
            };
            setup_queue(
                &mut frontend,
                2 * pair,
                &p.rx,
                &ram,
                0,
                &p.rx_kick,
                &p.rx_call,
            )?;
            setup_queue(
                &mut frontend,
                2 * pair + 1,
                &p._tx,
                &ram,
                0,
                &p._tx_kick,
                &p._tx_call,
            )?;
            enable_queue(&mut frontend, 2 * pair, acked)?;
            enable_queue(&mut frontend, 2 * pair + 1, acked)?;
            extra.push(p);
        }

        let mut tx_layouts = vec![TxLayout::Combined, TxLayout::Split];
        if indirect {
            tx_layouts.push(TxLayout::Indirect);
        }
        let mut nic = GuestNic {
            frontend,
            ram,
            features: acked,
            protocol_features,
            always_kick: opts.always_kick,
            rx,
            tx,
            rx_kick,
            rx_call,
            tx_kick,
            tx_call,
            rx_buffer_len: opts.rx_buffer_len,
            rx_bufs,
            rx_partial: None,
            rx_polled_left: 0,
            rx_landed: Vec::new(),
            tx_free: (0..qs).rev().collect(),
            tx_inflight: vec![None; usize::from(qs)],
            tx_raw_heads: VecDeque::new(),
            tx_slots,
            tx_posted: 0,
            tx_done: 0,
            tx_layouts,
            send_seq: 0,
            scratch,
            scratch_next: 0,
            kicks: 0,
            missed_notifications: 0,
            extra,
        };
        // Tell the device RX buffers are there (it may also just look at avail.idx).
        if rx_count > 0 {
            nic.kick(RX_QUEUE);
        }
        Ok(nic)
    }

    /// The virtio feature bits acked with SET_FEATURES (includes PROTOCOL_FEATURES).
    pub fn negotiated_features(&self) -> u64 {
        self.features
    }

    /// The vhost-user protocol features acked (a subset of REPLY_ACK | CONFIG).
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Reads the device config space now (GET_CONFIG); `None` if the backend does not
    /// offer VHOST_USER_PROTOCOL_F_CONFIG or the request failed.
    pub fn config(&self) -> Option<NetConfig> {
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return None;
        }
        // Frontend is a handle to a shared, locked connection: cloning it is cheap and
        // lets a `&self` method issue a request.
        let mut fe = self.frontend.clone();
        let buf = [0u8; NET_CONFIG_LEN as usize];
        let (_, b) = fe
            .get_config(0, NET_CONFIG_LEN, VhostUserConfigFlags::empty(), &buf)
            .ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(NetConfig {
            mac: [b[0], b[1], b[2], b[3], b[4], b[5]],
            status: u16_at(6),
            max_virtqueue_pairs: u16_at(8),
            mtu: u16_at(10),
        })
    }

    /// Receives one frame (without the virtio-net header) on the RX queue of `pair`,
    /// waiting up to `timeout`. Pairs above 0 take frames of one buffer only (small
    /// frames; `num_buffers` must be 1).
    pub fn recv_on(&mut self, pair: usize, timeout: Duration) -> Option<Vec<u8>> {
        if pair == 0 {
            return self.recv(timeout);
        }
        let ram = &self.ram;
        let rx_buffer_len = self.rx_buffer_len;
        let p = self
            .extra
            .get_mut(pair - 1)
            .unwrap_or_else(|| panic!("no queue pair {pair}"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((id, len)) = p.rx.pop_used(ram) {
                let gpa = usize::try_from(id)
                    .ok()
                    .and_then(|i| p.rx_bufs.get(i))
                    .copied()
                    .unwrap_or_else(|| panic!("device bug: RX {pair} used id {id} never posted"));
                assert!(
                    (VNET_HDR_LEN as u32..=rx_buffer_len).contains(&len),
                    "device bug: RX {pair} used len {len}"
                );
                let mut chunk = vec![0u8; len as usize];
                ram.read(gpa, &mut chunk)
                    .unwrap_or_else(|e| panic!("RX buffer read: {e}"));
                let hdr = VirtioNetHdr::from_bytes(chunk[..VNET_HDR_LEN].try_into().unwrap());
                assert_eq!(
                    hdr.num_buffers, 1,
                    "device bug: RX {pair} frame spans buffers"
                );
                p.rx.push_avail(ram, id as u16);
                p.rx.publish(ram);
                return Some(chunk.split_off(VNET_HDR_LEN));
            }
            p.rx.enable_interrupt(ram);
            if p.rx.used_pending(ram) > 0 {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            wait_readable(&[p.rx_call.as_raw_fd()], deadline - now);
            drain(&p.rx_call);
        }
    }

    /// Queue pairs set up.
    pub fn queue_pairs(&self) -> usize {
        1 + self.extra.len()
    }

    /// SET_VRING_ENABLE for `queue` (2N = RX of pair N, 2N+1 = its TX), as QEMU and
    /// DPDK send it when the driver changes the pairs in use (VIRTIO_NET_CTRL_MQ).
    pub fn set_vring_enable(&mut self, queue: usize, enable: bool) -> io::Result<()> {
        vu(
            "SET_VRING_ENABLE",
            self.frontend.set_vring_enable(queue, enable),
        )
    }

    /// Config-space MAC; zeros when the backend does not offer GET_CONFIG.
    pub fn config_mac(&self) -> [u8; 6] {
        self.config().map(|c| c.mac).unwrap_or_default()
    }

    /// Config-space status (bit 0 = link up); 0 when the backend does not offer GET_CONFIG.
    pub fn config_status(&self) -> u16 {
        self.config().map(|c| c.status).unwrap_or_default()
    }

    /// Config-space MTU; 0 when the backend does not offer GET_CONFIG.
    pub fn config_mtu(&self) -> u16 {
        self.config().map(|c| c.mtu).unwrap_or_default()
    }

    /// Sends one frame with a zeroed virtio-net header. Returns false if the TX ring is
    /// full (after reclaiming completed chains).
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.send_with_header(&VirtioNetHdr::default(), frame)
    }

    /// Sends one frame with the given virtio-net header (e.g. NEEDS_CSUM or GSO fields).
    pub fn send_with_header(&mut self, hdr: &VirtioNetHdr, frame: &[u8]) -> bool {
        self.reclaim_tx();
        let ok = self.post_tx(hdr, frame);
        if ok {
            self.publish_tx();
        }
        ok
    }

    /// Posts as many of `frames` as fit, then publishes them with at most ONE kick.
    /// Returns how many were posted.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> usize {
        self.reclaim_tx();
        let hdr = VirtioNetHdr::default();
        let posted = frames.iter().take_while(|f| self.post_tx(&hdr, f)).count();
        if posted > 0 {
            self.publish_tx();
        }
        posted
    }

    /// TX descriptors free right now (after reclaiming); a frame needs at most 2.
    pub fn tx_free_descriptors(&mut self) -> usize {
        self.reclaim_tx();
        self.tx_free.len()
    }

    /// How many TX chains the backend has marked used so far (including raw chains).
    pub fn tx_completed(&self) -> u64 {
        self.tx_done + u64::from(self.tx.used_pending(&self.ram))
    }

    /// TX chains posted so far (including raw chains).
    pub fn tx_posted(&self) -> u64 {
        self.tx_posted
    }

    /// Waits until the backend has marked every posted TX chain used; false on timeout.
    pub fn wait_tx_completed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.reclaim_tx();
            if self.tx_done == self.tx_posted {
                self.tx.disable_interrupt(&self.ram);
                return true;
            }
            self.tx.enable_interrupt(&self.ram);
            if self.tx.used_pending(&self.ram) > 0 {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                self.tx.disable_interrupt(&self.ram);
                return false;
            }
            wait_readable(&[self.tx_call.as_raw_fd()], deadline - now);
            drain(&self.tx_call);
        }
    }

    /// Receives one frame (without the virtio-net header), waiting up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_with_header(timeout).map(|(_, frame)| frame)
    }

    /// Receives one frame without waiting.
    pub fn try_recv(&mut self) -> Option<Vec<u8>> {
        self.recv(Duration::ZERO)
    }

    /// Receives one frame with its virtio-net header (`num_buffers` as the device wrote
    /// it in the first buffer). Sleeps on the call eventfd, so a backend that forgets to
    /// notify makes this time out; see also [`GuestNic::missed_notifications`].
    pub fn recv_with_header(&mut self, timeout: Duration) -> Option<(VirtioNetHdr, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.poll_rx() {
                return Some(frame);
            }
            // Re-arm, then re-check: the device may have published between our last look
            // and its read of used_event (2.7.10 / 2.7.14 driver notes).
            self.rx.enable_interrupt(&self.ram);
            if self.rx.used_pending(&self.ram) > 0 {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let woke = wait_readable(&[self.rx_call.as_raw_fd()], deadline - now);
            drain(&self.rx_call);
            if !woke && self.rx.used_pending(&self.ram) > 0 {
                // The device published used entries we asked to be told about, and did
                // not signal: a notification bug in the device. Count it, don't hide it.
                self.missed_notifications += 1;
                eprintln!(
                    "GuestNic: device published RX used entries without notifying \
                     (event_idx={})",
                    self.features & features::EVENT_IDX != 0
                );
            }
        }
    }

    /// A polling driver's receive (DPDK's virtio PMD): takes every whole
    /// frame waiting on the first pair's RX ring, re-posting the buffers,
    /// without waiting and with notifications off (until a `recv` arms them
    /// again); returns how many. The frames are dropped.
    ///
    /// Nothing is copied out: only each frame's `num_buffers` is read (with
    /// MRG_RXBUF), and the buffers are made available again at once, one
    /// available-index update per call; [`GuestNic::take_rx_landed`] does
    /// not see them. Do not mix with `recv` halfway through a frame.
    pub fn poll_rx_frames(&mut self) -> usize {
        assert!(
            self.rx_partial.is_none(),
            "poll_rx_frames halfway through a frame recv took in part"
        );
        self.rx.disable_interrupt(&self.ram);
        let mrg = self.features & features::MRG_RXBUF != 0;
        let (mut frames, mut reposted) = (0, 0);
        while let Some((id, len)) = self.rx.pop_used(&self.ram) {
            let gpa = self.rx_used_buffer(id, len);
            if self.rx_polled_left == 0 {
                assert!(
                    len as usize >= VNET_HDR_LEN,
                    "device bug: RX buffer of {len} bytes has no virtio-net header"
                );
                let mut b = [0u8; 2];
                self.ram
                    .read(gpa + 10, &mut b)
                    .unwrap_or_else(|e| panic!("RX buffer read: {e}"));
                // 5.1.6.4: as in `poll_rx`.
                self.rx_polled_left = if mrg { u16::from_le_bytes(b) } else { 1 };
                assert!(self.rx_polled_left >= 1, "device bug: num_buffers = 0");
            }
            self.rx_polled_left -= 1;
            if self.rx_polled_left == 0 {
                frames += 1;
            }
            self.rx.push_avail(&self.ram, id as u16);
            reposted += 1;
        }
        if reposted > 0 && (self.rx.publish(&self.ram) || self.always_kick) {
            self.kick(RX_QUEUE);
        }
        frames
    }

    /// Everything that arrives until `quiet` passes with nothing new.
    pub fn recv_all(&mut self, quiet: Duration) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.recv(quiet)).collect()
    }

    /// Times `recv` found RX used entries after sleeping its whole timeout without a
    /// notification. A correct device keeps this at 0.
    pub fn missed_notifications(&self) -> u64 {
        self.missed_notifications
    }

    /// Kicks (eventfd writes) sent on both queues so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Posts an arbitrary TX chain and kicks (unconditionally). Descriptors are placed in
    /// free table slots; `RawDesc::next` is relative to `descs` (see [`RawDesc`]). The
    /// harness frees the slots if the device ever returns the chain's head. Returns false
    /// if there are not enough free descriptors (or `descs` is empty).
    pub fn send_raw_chain(&mut self, descs: &[RawDesc]) -> bool {
        self.reclaim_tx();
        if descs.is_empty() || self.tx_free.len() < descs.len() {
            return false;
        }
        let slots: Vec<u16> = (0..descs.len())
            .filter_map(|_| self.tx_free.pop())
            .collect();
        write_raw_chain(&self.tx, &self.ram, descs, &slots);
        let head = slots[0];
        self.tx_inflight[usize::from(head)] = Some(slots);
        self.tx.push_avail(&self.ram, head);
        self.tx_posted += 1;
        self.tx.publish(&self.ram);
        self.kick(TX_QUEUE);
        true
    }

    /// Puts `head` in the TX available ring as-is (e.g. an index `>= queue_size`, or one
    /// whose descriptor was never written) and kicks.
    pub fn send_raw_head(&mut self, head: u16) {
        self.tx.push_avail(&self.ram, head);
        self.tx_raw_heads.push_back(head);
        self.tx_posted += 1;
        self.tx.publish(&self.ram);
        self.kick(TX_QUEUE);
    }

    /// Copies `data` into a 1 MiB scratch area of guest memory (reused round-robin) and
    /// returns its guest address: buffers and indirect tables for raw chains.
    pub fn guest_alloc(&mut self, data: &[u8]) -> u64 {
        let len = (data.len() as u64).next_multiple_of(16);
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

    /// The RX buffers (first pair) the device returned since the last call:
    /// (guest address, used length) each, for tests of what it wrote where.
    pub fn take_rx_landed(&mut self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.rx_landed)
    }

    /// Where the rings of the first pair are: (RX, TX).
    pub fn ring_areas(&self) -> (RingAreas, RingAreas) {
        (self.rx.areas(), self.tx.areas())
    }

    /// Guest memory holding the TX buffers (header, frame, indirect table
    /// of every chain `send` posts).
    pub fn tx_buffer_area(&self) -> Range<u64> {
        let n = u64::from(self.tx.size());
        self.tx_slots..self.tx_slots + n * TX_SLOT_SIZE
    }

    /// Guest memory holding the RX buffers of the first pair.
    pub fn rx_buffer_area(&self) -> Range<u64> {
        match (self.rx_bufs.first(), self.rx_bufs.last()) {
            (Some(&first), Some(&last)) => first..last + u64::from(self.rx_buffer_len),
            _ => 0..0,
        }
    }

    /// Guest memory (for tests that poke at it directly).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Size of guest memory: addresses `>= mem_size()` are outside it.
    pub fn mem_size(&self) -> u64 {
        self.ram.size()
    }

    /// The RX call eventfd (readable when the device signalled RX used entries).
    pub fn rx_call_fd(&self) -> RawFd {
        self.rx_call.as_raw_fd()
    }

    /// True if a frame (or part of one) is waiting in the RX used ring.
    pub fn rx_ready(&self) -> bool {
        self.rx.used_pending(&self.ram) > 0
    }

    /// Stops both rings like QEMU does when a VM stops (GET_VRING_BASE); returns the
    /// device's next available index for (RX, TX).
    pub fn stop(&mut self) -> io::Result<(u32, u32)> {
        let rx = vu("GET_VRING_BASE", self.frontend.get_vring_base(RX_QUEUE))?;
        let tx = vu("GET_VRING_BASE", self.frontend.get_vring_base(TX_QUEUE))?;
        Ok((rx, tx))
    }

    /// Starts both rings again after [`GuestNic::stop`], the way QEMU resumes a
    /// VM: SET_VRING_NUM, _ADDR, _BASE (the bases `stop` returned), _CALL,
    /// _KICK; then kicks TX so frames posted meanwhile go out.
    pub fn resume(&mut self, (rx_base, tx_base): (u32, u32)) -> io::Result<()> {
        for (q, ring, base, kick, call) in [
            (RX_QUEUE, &self.rx, rx_base, &self.rx_kick, &self.rx_call),
            (TX_QUEUE, &self.tx, tx_base, &self.tx_kick, &self.tx_call),
        ] {
            setup_queue(
                &mut self.frontend,
                q,
                ring,
                &self.ram,
                base as u16,
                kick,
                call,
            )?;
        }
        self.kick(TX_QUEUE);
        Ok(())
    }

    /// SEND_RARP for `mac`, as QEMU sends it after a migration (payload: a
    /// u64 whose first six bytes are the MAC), asking for a reply: the
    /// backend's status, 0 for success. The `vhost` crate's frontend has no
    /// such request, so it goes out raw on the same socket (no other request
    /// is in flight: the frontend is used from this thread only).
    pub fn send_rarp(&mut self, mac: [u8; 6]) -> io::Result<u64> {
        send_rarp_on(&self.frontend, mac)
    }

    /// A second handle on the vhost-user connection, for requests sent from
    /// another thread while the test goes on (e.g. a GET_VRING_BASE that must
    /// be answered in time).
    pub fn frontend(&self) -> Frontend {
        self.frontend.clone()
    }

    /// Where the TX descriptor table is (guest address) and its size, for
    /// tests that model what the device reads.
    pub fn tx_desc_table(&self) -> (u64, u16) {
        (self.tx.desc_table(), self.tx.size())
    }

    /// The head of the TX chain posted last.
    pub fn tx_last_head(&self) -> u16 {
        self.tx.last_pushed_head(&self.ram)
    }

    /// The TX avail index this driver has published (every chain posted).
    pub fn tx_avail_idx(&self) -> u16 {
        self.tx.avail_idx()
    }

    /// Writes the TX (`queue` 1) or RX (0) avail index as-is and kicks: a
    /// hostile driver's index, e.g. further ahead than the ring holds.
    pub fn publish_raw_avail_idx(&mut self, queue: usize, idx: u16) {
        let ring = if queue == RX_QUEUE {
            &mut self.rx
        } else {
            &mut self.tx
        };
        ring.force_avail_idx(&self.ram, idx);
        self.kick(queue);
    }

    /// Drops the vhost-user connection without any goodbye, like a VMM that died.
    pub fn disconnect(self) {
        drop(self);
    }

    fn kick(&mut self, queue: usize) {
        let fd = if queue == RX_QUEUE {
            &self.rx_kick
        } else {
            &self.tx_kick
        };
        // A full eventfd counter (EAGAIN) still means "kicked"; nothing else can fail.
        let _ = fd.write(1);
        self.kicks += 1;
    }

    fn publish_tx(&mut self) {
        if self.tx.publish(&self.ram) || self.always_kick {
            self.kick(TX_QUEUE);
        }
    }

    fn tx_slot(&self, head: u16) -> u64 {
        self.tx_slots + u64::from(head) * TX_SLOT_SIZE
    }

    /// Writes one frame into a free chain and the available ring (not yet published).
    fn post_tx(&mut self, hdr: &VirtioNetHdr, frame: &[u8]) -> bool {
        assert!(
            frame.len() <= TX_MAX_FRAME,
            "frame of {} bytes is larger than TX_MAX_FRAME",
            frame.len()
        );
        let mut layout = self.tx_layouts[self.send_seq % self.tx_layouts.len()];
        if frame.is_empty() {
            // Avoid zero-length descriptors; the device sees a header-only buffer.
            layout = TxLayout::Combined;
        }
        let ndesc = if layout == TxLayout::Split { 2 } else { 1 };
        if self.tx_free.len() < ndesc {
            return false;
        }
        self.send_seq += 1;
        let head = self.tx_free.pop().expect("checked above");
        let slot = self.tx_slot(head);
        let hdr = hdr.to_bytes();
        let frame_gpa = slot + TX_SLOT_FRAME;
        let frame_len = frame.len() as u32;
        let ram = &self.ram;
        let write = |gpa: u64, data: &[u8]| {
            ram.write(gpa, data)
                .unwrap_or_else(|e| panic!("TX slot write: {e}"))
        };
        write(frame_gpa, frame);
        let mut chain = vec![head];
        match layout {
            TxLayout::Combined => {
                let hdr_gpa = frame_gpa - VNET_HDR_LEN as u64;
                write(hdr_gpa, &hdr);
                let d = Desc {
                    addr: hdr_gpa,
                    len: VNET_HDR_LEN as u32 + frame_len,
                    flags: 0,
                    next: 0,
                };
                self.tx.write_desc(ram, head, d);
            }
            TxLayout::Split => {
                let second = self.tx_free.pop().expect("checked above");
                chain.push(second);
                write(slot, &hdr);
                let d = Desc {
                    addr: slot,
                    len: VNET_HDR_LEN as u32,
                    flags: VIRTQ_DESC_F_NEXT,
                    next: second,
                };
                self.tx.write_desc(ram, head, d);
                let d = Desc {
                    addr: frame_gpa,
                    len: frame_len,
                    flags: 0,
                    next: 0,
                };
                self.tx.write_desc(ram, second, d);
            }
            TxLayout::Indirect => {
                // 2.7.5.3: the table's `next` fields index the table itself, and the
                // ring descriptor has INDIRECT without NEXT (2.7.5.3.1).
                write(slot, &hdr);
                let table = slot + TX_SLOT_INDIRECT;
                let d0 = Desc {
                    addr: slot,
                    len: VNET_HDR_LEN as u32,
                    flags: VIRTQ_DESC_F_NEXT,
                    next: 1,
                };
                let d1 = Desc {
                    addr: frame_gpa,
                    len: frame_len,
                    flags: 0,
                    next: 0,
                };
                write(table, &d0.to_bytes());
                write(table + 16, &d1.to_bytes());
                let d = Desc {
                    addr: table,
                    len: 32,
                    flags: VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                };
                self.tx.write_desc(ram, head, d);
            }
        }
        self.tx_inflight[usize::from(head)] = Some(chain);
        self.tx.push_avail(&self.ram, head);
        self.tx_posted += 1;
        true
    }

    /// Takes back every TX chain the device has marked used.
    fn reclaim_tx(&mut self) {
        while let Some((id, _len)) = self.tx.pop_used(&self.ram) {
            let chain = usize::try_from(id)
                .ok()
                .and_then(|i| self.tx_inflight.get_mut(i))
                .and_then(Option::take);
            if let Some(chain) = chain {
                self.tx_free.extend(chain);
            } else if let Some(pos) = self.tx_raw_heads.iter().position(|&h| u32::from(h) == id) {
                self.tx_raw_heads.remove(pos);
            } else {
                panic!("device bug: TX used id {id} is not the head of an in-flight chain");
            }
            self.tx_done += 1;
        }
    }

    /// The guest address of the RX buffer (first pair) the device returned
    /// as used element `(id, len)`, checked.
    fn rx_used_buffer(&self, id: u32, len: u32) -> u64 {
        let gpa = usize::try_from(id)
            .ok()
            .and_then(|i| self.rx_bufs.get(i))
            .copied()
            .unwrap_or_else(|| panic!("device bug: RX used id {id} was never posted"));
        // 2.7.8.1: the device must not claim to have written more than the buffer.
        assert!(
            len <= self.rx_buffer_len,
            "device bug: RX used len {len} > buffer len {}",
            self.rx_buffer_len
        );
        gpa
    }

    /// Consumes RX used entries until one whole frame is assembled; re-posts each
    /// buffer as soon as its bytes are copied out.
    fn poll_rx(&mut self) -> Option<(VirtioNetHdr, Vec<u8>)> {
        let mrg = self.features & features::MRG_RXBUF != 0;
        let mut done = None;
        let mut reposted = 0;
        while done.is_none() {
            let Some((id, len)) = self.rx.pop_used(&self.ram) else {
                break;
            };
            let gpa = self.rx_used_buffer(id, len);
            self.rx_landed.push((gpa, len));
            let mut chunk = vec![0u8; len as usize];
            self.ram
                .read(gpa, &mut chunk)
                .unwrap_or_else(|e| panic!("RX buffer read: {e}"));
            self.rx.push_avail(&self.ram, id as u16);
            reposted += 1;

            let mut partial = match self.rx_partial.take() {
                Some(mut p) => {
                    p.data.extend_from_slice(&chunk);
                    p.buffers_left -= 1;
                    p
                }
                None => {
                    let hdr_bytes: &[u8; VNET_HDR_LEN] = chunk
                        .get(..VNET_HDR_LEN)
                        .and_then(|h| h.try_into().ok())
                        .unwrap_or_else(|| {
                            panic!("device bug: RX buffer of {len} bytes has no virtio-net header")
                        });
                    let hdr = VirtioNetHdr::from_bytes(hdr_bytes);
                    // 5.1.6.4: with MRG_RXBUF, num_buffers counts the buffers this frame
                    // spans (>= 1); without it each frame is exactly one buffer.
                    let buffers = if mrg { hdr.num_buffers } else { 1 };
                    assert!(buffers >= 1, "device bug: num_buffers = 0");
                    PartialFrame {
                        hdr,
                        data: chunk[VNET_HDR_LEN..].to_vec(),
                        buffers_left: buffers - 1,
                    }
                }
            };
            if partial.buffers_left == 0 {
                done = Some((partial.hdr, std::mem::take(&mut partial.data)));
            } else {
                self.rx_partial = Some(partial);
            }
        }
        if reposted > 0 && (self.rx.publish(&self.ram) || self.always_kick) {
            self.kick(RX_QUEUE);
        }
        done
    }
}

/// Sleeps until any of `nics` has RX used entries (or signalled) or `timeout` passes.
/// Arms RX interrupts first, so a correct device wakes us.
pub fn wait_any(nics: &mut [&mut GuestNic], timeout: Duration) {
    let mut fds = Vec::with_capacity(nics.len());
    for nic in nics.iter() {
        nic.rx.enable_interrupt(&nic.ram);
        if nic.rx_ready() {
            return;
        }
        fds.push(nic.rx_call_fd());
    }
    wait_readable(&fds, timeout);
    for nic in nics.iter() {
        drain(&nic.rx_call);
    }
}

/// See [`GuestNic::send_rarp`].
fn send_rarp_on(frontend: &Frontend, mac: [u8; 6]) -> io::Result<u64> {
    use std::io::{Read, Write};
    const SEND_RARP: u32 = 19;
    const FLAGS: u32 = 0x1 | 0x8; // version 1, NEED_REPLY
                                  // SAFETY: `frontend` owns the fd and keeps it open while we borrow it
                                  // to duplicate it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(frontend.as_raw_fd()) };
    let mut sock = std::os::unix::net::UnixStream::from(fd.try_clone_to_owned()?);
    let mut payload = [0u8; 8];
    payload[..6].copy_from_slice(&mac);
    let mut msg = Vec::with_capacity(20);
    for word in [SEND_RARP, FLAGS, 8] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    msg.extend_from_slice(&payload);
    sock.write_all(&msg)?;
    let mut reply = [0u8; 20];
    sock.read_exact(&mut reply)?;
    let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != SEND_RARP || word(4) & 0x4 == 0 || word(8) != 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SEND_RARP reply {reply:?}"),
        ));
    }
    Ok(u64::from_le_bytes(
        reply[12..20].try_into().expect("8 bytes"),
    ))
}
