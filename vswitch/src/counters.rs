//! Traffic counters with drops by reason: one generic [`Counters`] over a
//! [`Reason`] enum, for switch ports ([`DropReason`], plus broken queues in
//! [`PortCounters`]) and tunnels ([`crate::vxlan::TunnelDrop`]), so every
//! report reads both the same way.
//!
//! Relaxed atomics: each counter is written by the thread that handles the
//! frame and read by whoever reports; no ordering between counters is promised.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a frame was dropped, for one kind of port: every drop is counted
/// under exactly one reason.
pub trait Reason: Copy + 'static {
    /// Every reason, each at the position of its [`Reason::index`].
    const ALL: &'static [Self];
    /// Position in [`Reason::ALL`], below [`MAX_REASONS`].
    fn index(self) -> usize;
    /// Stable snake_case name, used by metrics and the control socket.
    fn name(self) -> &'static str;
}

/// Most reasons a [`Reason`] enum may have (the counters' array size).
pub const MAX_REASONS: usize = 24;

/// Why a frame was dropped. Every drop is counted under exactly one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than an Ethernet header (or header plus tag).
    Runt,
    /// Longer than the ingress port's MTU allows.
    Oversize,
    /// Source MAC is multicast/broadcast or all-zero: never a station.
    InvalidSource,
    /// A tagged frame on an access port (would be VLAN hopping).
    TaggedOnAccess,
    /// An untagged frame on a trunk without a native VLAN.
    UntaggedOnTrunk,
    /// A tag for a VLAN the trunk does not carry.
    VlanNotAllowed,
    /// Destination was learned on the ingress port itself: never sent back.
    SamePort,
    /// The frame is larger than the egress port's MTU.
    MtuExceeded,
    /// The egress port had no receive buffer (guest not keeping up) or is down.
    NoBuffer,
    /// A descriptor chain the guest gave us was malformed (bad address, length,
    /// flags or loop); the chain is returned and nothing is forwarded.
    BadDescriptor,
    /// virtio-net header with a GSO type but `gso_size` 0 (virtio 1.2
    /// §5.1.6.2.1: the driver sets `gso_size` whenever `gso_type` is not NONE).
    GsoSizeZero,
    /// virtio-net header whose `hdr_len` lies past the end of the frame.
    HeaderPastFrame,
    /// virtio-net header whose `csum_start` + `csum_offset` (the 2-byte
    /// checksum field) lies outside the frame (§5.1.6.2.1, NEEDS_CSUM).
    CsumOutsideFrame,
    /// A GSO frame whose NEEDS_CSUM fields do not name its TCP/UDP checksum
    /// field (Linux's `virtio_net_hdr_to_skb` refuses these too).
    CsumNotL4,
    /// A GSO frame that would segment into more segments than any peer
    /// sends (above 64 KiB of payload).
    TooManySegments,
    /// A GSO type or header flag we do not implement (UFO, unknown bits), or
    /// one that does not match the frame's own headers.
    GsoUnsupported,
    /// An offload the port did not negotiate (GSO from a guest without
    /// HOST_TSO4, a checksum to complete from one without CSUM, §5.1.6.2).
    OffloadNotNegotiated,
    /// Received on a port the operator set administratively down.
    AdminDown,
    /// Over the ingress port's policing rate (`rate`, `burst`): received,
    /// then dropped before the switch looked at it.
    Policed,
}

impl DropReason {
    pub const ALL: [DropReason; 19] = [
        DropReason::Runt,
        DropReason::Oversize,
        DropReason::InvalidSource,
        DropReason::TaggedOnAccess,
        DropReason::UntaggedOnTrunk,
        DropReason::VlanNotAllowed,
        DropReason::SamePort,
        DropReason::MtuExceeded,
        DropReason::NoBuffer,
        DropReason::BadDescriptor,
        DropReason::GsoSizeZero,
        DropReason::HeaderPastFrame,
        DropReason::CsumOutsideFrame,
        DropReason::CsumNotL4,
        DropReason::TooManySegments,
        DropReason::GsoUnsupported,
        DropReason::OffloadNotNegotiated,
        DropReason::AdminDown,
        DropReason::Policed,
    ];

    /// Stable snake_case name, used by metrics and the control socket.
    /// Whether this drop refuses what never became a received frame (not in
    /// `rx_packets`): a malformed descriptor chain, or virtio-net offload
    /// metadata refused at ingress.
    pub fn before_receive(self) -> bool {
        use DropReason::*;
        matches!(
            self,
            BadDescriptor
                | GsoSizeZero
                | HeaderPastFrame
                | CsumOutsideFrame
                | CsumNotL4
                | TooManySegments
                | GsoUnsupported
                | OffloadNotNegotiated
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Oversize => "oversize",
            DropReason::InvalidSource => "invalid_source",
            DropReason::TaggedOnAccess => "tagged_on_access",
            DropReason::UntaggedOnTrunk => "untagged_on_trunk",
            DropReason::VlanNotAllowed => "vlan_not_allowed",
            DropReason::SamePort => "same_port",
            DropReason::MtuExceeded => "mtu_exceeded",
            DropReason::NoBuffer => "no_buffer",
            DropReason::BadDescriptor => "bad_descriptor",
            DropReason::GsoSizeZero => "gso_size_zero",
            DropReason::HeaderPastFrame => "header_past_frame",
            DropReason::CsumOutsideFrame => "csum_outside_frame",
            DropReason::CsumNotL4 => "csum_not_l4",
            DropReason::TooManySegments => "too_many_segments",
            DropReason::GsoUnsupported => "gso_unsupported",
            DropReason::OffloadNotNegotiated => "offload_not_negotiated",
            DropReason::AdminDown => "admin_down",
            DropReason::Policed => "policed",
        }
    }
}

impl Reason for DropReason {
    const ALL: &'static [DropReason] = &DropReason::ALL;

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        DropReason::name(self)
    }
}

const _: () = assert!(DropReason::ALL.len() <= MAX_REASONS);

/// Counters of one port or tunnel: traffic, and drops by reason `R`.
#[derive(Debug)]
pub struct Counters<R> {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; MAX_REASONS],
    reason: PhantomData<fn(R)>,
}

impl<R> Default for Counters<R> {
    fn default() -> Self {
        Counters {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: Default::default(),
            reason: PhantomData,
        }
    }
}

/// A point-in-time copy of [`Counters`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountersSnapshot<R> {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    drops: [u64; MAX_REASONS],
    reason: PhantomData<fn(R)>,
}

impl<R> Default for CountersSnapshot<R> {
    fn default() -> Self {
        CountersSnapshot {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            drops: [0; MAX_REASONS],
            reason: PhantomData,
        }
    }
}

impl<R: Reason> CountersSnapshot<R> {
    pub fn dropped(&self, reason: R) -> u64 {
        self.drops[reason.index()]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Every reason with its count, in [`Reason::ALL`] order.
    pub fn drops(&self) -> impl Iterator<Item = (R, u64)> + '_ {
        R::ALL.iter().map(|&r| (r, self.dropped(r)))
    }
}

impl<R: Reason> Counters<R> {
    pub fn add_rx(&self, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Relaxed);
        self.rx_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn add_tx(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Relaxed);
        self.tx_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn add_drop(&self, reason: R) {
        self.drops[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> CountersSnapshot<R> {
        CountersSnapshot {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            drops: std::array::from_fn(|i| self.drops[i].load(Relaxed)),
            reason: PhantomData,
        }
    }
}

/// Most queues (queue pairs of a guest, TAP queues) a port counts apart.
pub const MAX_QUEUES: usize = 8;

/// Packets of one queue (pair) of a port, in the port's direction: `rx` from
/// the peer through this queue, `tx` to the peer through it.
#[derive(Default, Debug)]
struct QueueCounters {
    rx_packets: AtomicU64,
    tx_packets: AtomicU64,
}

/// A point-in-time copy of one queue's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// Counters of one switch port. `rx` is what the port received from its peer
/// (a guest's transmissions), `tx` what the switch delivered to it.
#[derive(Default, Debug)]
pub struct PortCounters {
    traffic: Counters<DropReason>,
    broken_queues: AtomicU64,
    announces: AtomicU64,
    offload: OffloadCounters,
    /// Queues the port runs (set by its driver); 1 until it says more.
    queue_count: AtomicU64,
    queues: [QueueCounters; MAX_QUEUES],
}

/// What the switch did with offloaded frames delivered to one port.
#[derive(Default, Debug)]
struct OffloadCounters {
    tx_gso_packets: AtomicU64,
    gso_segmented: AtomicU64,
    csum_completed: AtomicU64,
}

/// How a frame carrying an offload reached a port (see [`PortCounters::add_offload`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadOutcome {
    /// A GSO super-frame handed over intact, with its virtio-net header.
    GsoPassed,
    /// A GSO super-frame segmented in software (the port does not take it).
    Segmented,
    /// A partial checksum completed in software (the port does not take it).
    CsumCompleted,
}

/// A port's counters are [`Counters`] plus broken queues.
impl Deref for PortCounters {
    type Target = Counters<DropReason>;

    fn deref(&self) -> &Counters<DropReason> {
        &self.traffic
    }
}

/// A point-in-time copy of [`PortCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortCountersSnapshot {
    pub traffic: CountersSnapshot<DropReason>,
    /// Times a queue of the port was stopped as broken (a driver that put its
    /// avail index further ahead than the ring holds, or its rings outside
    /// guest memory). The queue stays stopped until the frontend resets it.
    pub broken_queues: u64,
    /// Announcements the port's driver sent on behalf of its peer (a
    /// migrated guest's RARP, vhost-user SEND_RARP), each also counted as a
    /// received frame.
    pub announces: u64,
    /// GSO super-frames delivered intact (the port accepts the offload).
    pub tx_gso_packets: u64,
    /// GSO super-frames segmented in software for this port.
    pub gso_segmented: u64,
    /// Partial checksums completed in software for this port (segmented
    /// frames not included: segmentation completes every checksum anyway).
    pub csum_completed: u64,
    /// Per queue (pair), for a port with more than one; empty otherwise.
    pub queues: Vec<QueueSnapshot>,
}

impl Deref for PortCountersSnapshot {
    type Target = CountersSnapshot<DropReason>;

    fn deref(&self) -> &CountersSnapshot<DropReason> {
        &self.traffic
    }
}

impl PortCounters {
    pub fn add_broken_queue(&self) {
        self.broken_queues.fetch_add(1, Relaxed);
    }

    pub fn add_announce(&self) {
        self.announces.fetch_add(1, Relaxed);
    }

    /// Counts `n` frames delivered to the port as `outcome` says.
    pub fn add_offload(&self, outcome: OffloadOutcome, n: u64) {
        let o = &self.offload;
        let counter = match outcome {
            OffloadOutcome::GsoPassed => &o.tx_gso_packets,
            OffloadOutcome::Segmented => &o.gso_segmented,
            OffloadOutcome::CsumCompleted => &o.csum_completed,
        };
        counter.fetch_add(n, Relaxed);
    }

    /// The port runs `n` queues (clamped to `1..=MAX_QUEUES`): reports list
    /// that many when above 1.
    pub fn set_queue_count(&self, n: usize) {
        self.queue_count
            .store(n.clamp(1, MAX_QUEUES) as u64, Relaxed);
    }

    /// `packets` came from the peer through queue `queue` (ignored past
    /// [`MAX_QUEUES`]: the caller validated it already).
    pub fn add_queue_rx(&self, queue: usize, packets: u64) {
        if let Some(q) = self.queues.get(queue) {
            q.rx_packets.fetch_add(packets, Relaxed);
        }
    }

    /// `packets` went to the peer through queue `queue`.
    pub fn add_queue_tx(&self, queue: usize, packets: u64) {
        if let Some(q) = self.queues.get(queue) {
            q.tx_packets.fetch_add(packets, Relaxed);
        }
    }

    pub fn snapshot(&self) -> PortCountersSnapshot {
        let n = self.queue_count.load(Relaxed) as usize;
        let queues = match n {
            0 | 1 => Vec::new(),
            n => self.queues[..n.min(MAX_QUEUES)]
                .iter()
                .map(|q| QueueSnapshot {
                    rx_packets: q.rx_packets.load(Relaxed),
                    tx_packets: q.tx_packets.load(Relaxed),
                })
                .collect(),
        };
        let o = &self.offload;
        PortCountersSnapshot {
            traffic: self.traffic.snapshot(),
            broken_queues: self.broken_queues.load(Relaxed),
            announces: self.announces.load(Relaxed),
            tx_gso_packets: o.tx_gso_packets.load(Relaxed),
            gso_segmented: o.gso_segmented.load(Relaxed),
            csum_completed: o.csum_completed.load(Relaxed),
            queues,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each reason counts in its own slot; the port's extra counter apart.
    #[test]
    fn counts_by_reason() {
        let c = PortCounters::default();
        c.add_rx(2, 128);
        c.add_tx(3, 1500);
        c.add_drop(DropReason::Runt);
        c.add_drop(DropReason::BadDescriptor);
        c.add_drop(DropReason::BadDescriptor);
        c.add_broken_queue();
        c.add_announce();
        c.add_announce();
        c.add_offload(OffloadOutcome::GsoPassed, 4);
        c.add_offload(OffloadOutcome::Segmented, 2);
        c.add_offload(OffloadOutcome::CsumCompleted, 1);
        let s = c.snapshot();
        assert_eq!(
            (s.tx_gso_packets, s.gso_segmented, s.csum_completed),
            (4, 2, 1)
        );
        assert_eq!(
            (s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes),
            (2, 128, 3, 1500)
        );
        assert_eq!(s.dropped(DropReason::Runt), 1);
        assert_eq!(s.dropped(DropReason::BadDescriptor), 2);
        assert_eq!(s.dropped(DropReason::Oversize), 0);
        assert_eq!((s.total_drops(), s.broken_queues, s.announces), (3, 1, 2));
        let listed: Vec<_> = s.drops().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            listed,
            [(DropReason::Runt, 1), (DropReason::BadDescriptor, 2)]
        );
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert!(s.queues.is_empty(), "a single-queue port lists no queues");
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    /// Per-queue counters are listed for the queues the port runs, each in
    /// its own slot; a queue index past the array is ignored, not a panic.
    #[test]
    fn per_queue_counts() {
        let c = PortCounters::default();
        c.set_queue_count(3);
        c.add_queue_rx(0, 5);
        c.add_queue_rx(2, 7);
        c.add_queue_tx(1, 11);
        c.add_queue_tx(MAX_QUEUES, 1);
        let q = c.snapshot().queues;
        let got: Vec<_> = q.iter().map(|q| (q.rx_packets, q.tx_packets)).collect();
        assert_eq!(got, [(5, 0), (0, 11), (7, 0)]);
        c.set_queue_count(100);
        assert_eq!(c.snapshot().queues.len(), MAX_QUEUES);
    }
}
