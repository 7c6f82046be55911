//! Per-port counters. Relaxed atomics: each counter is written by the thread that
//! handles the frame and read by whoever reports; no ordering between counters is
//! promised.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
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
    ];

    /// Stable snake_case name, used by metrics and the control socket.
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
        }
    }
}

const N_REASONS: usize = DropReason::ALL.len();

/// Counters of one port. `rx` is what the port received from its peer (a guest's
/// transmissions), `tx` what the switch delivered to it.
#[derive(Default, Debug)]
pub struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; N_REASONS],
    broken_queues: AtomicU64,
}

/// A point-in-time copy of [`PortCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortCountersSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: [u64; N_REASONS],
    /// Times a queue of the port was stopped as broken (a driver that put its
    /// avail index further ahead than the ring holds, or its rings outside
    /// guest memory). The queue stays stopped until the frontend resets it.
    pub broken_queues: u64,
}

impl PortCountersSnapshot {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

impl PortCounters {
    pub fn add_rx(&self, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Relaxed);
        self.rx_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn add_tx(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Relaxed);
        self.tx_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn add_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn add_broken_queue(&self) {
        self.broken_queues.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> PortCountersSnapshot {
        PortCountersSnapshot {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            drops: std::array::from_fn(|i| self.drops[i].load(Relaxed)),
            broken_queues: self.broken_queues.load(Relaxed),
        }
    }
}
