//! Per-tunnel counters. Relaxed atomics, as in [`crate::counters`]: written by
//! the thread handling the packet, read by whoever reports.

use super::header::DecodeError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a tunnel dropped a packet. Every drop is counted under exactly one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum TunnelDrop {
    /// Received: not a VXLAN header (truncated, or the I flag clear).
    BadHeader,
    /// Received: the VNI is not mapped to a VLAN.
    UnknownVni,
    /// Received: the sender is not an accepted remote VTEP.
    UnknownVtep,
    /// Transmit: the encapsulated frame exceeds the underlay MTU.
    TooBig,
    /// Received: the inner frame is shorter than an Ethernet header.
    InnerRunt,
    /// Received: the inner frame carries a VLAN tag (RFC 7348 §6).
    InnerTagged,
    /// Transmit: the send socket's buffer is full (EAGAIN/ENOBUFS); the copy is
    /// dropped rather than stalling the datapath thread.
    TxBusy,
    /// Transmit: the kernel refused the packet (e.g. no route to the VTEP).
    TxError,
    /// Received: the inner source MAC is a station seen on a local port within
    /// the move hold; the packet is dropped and the station stays local.
    HeldStation,
}

impl TunnelDrop {
    pub const ALL: [TunnelDrop; 9] = [
        TunnelDrop::BadHeader,
        TunnelDrop::UnknownVni,
        TunnelDrop::UnknownVtep,
        TunnelDrop::TooBig,
        TunnelDrop::InnerRunt,
        TunnelDrop::InnerTagged,
        TunnelDrop::TxBusy,
        TunnelDrop::TxError,
        TunnelDrop::HeldStation,
    ];

    /// Stable snake_case name, used by metrics and the control socket.
    pub fn name(self) -> &'static str {
        match self {
            TunnelDrop::BadHeader => "bad_header",
            TunnelDrop::UnknownVni => "unknown_vni",
            TunnelDrop::UnknownVtep => "unknown_vtep",
            TunnelDrop::TooBig => "too_big",
            TunnelDrop::InnerRunt => "inner_runt",
            TunnelDrop::InnerTagged => "inner_tagged",
            TunnelDrop::TxBusy => "tx_busy",
            TunnelDrop::TxError => "tx_error",
            TunnelDrop::HeldStation => "held_station",
        }
    }
}

impl From<DecodeError> for TunnelDrop {
    fn from(e: DecodeError) -> TunnelDrop {
        match e {
            DecodeError::Truncated | DecodeError::NoVniFlag => TunnelDrop::BadHeader,
            DecodeError::InnerRunt => TunnelDrop::InnerRunt,
            DecodeError::InnerTagged => TunnelDrop::InnerTagged,
        }
    }
}

const N_REASONS: usize = TunnelDrop::ALL.len();

/// Counters of one tunnel. `rx` counts packets decapsulated and handed to the
/// switch, `tx` packets encapsulated and sent (one per copy when flooding to
/// several VTEPs). Bytes are inner Ethernet frame bytes, comparable with the
/// guest ports' counters; the underlay's bytes are that plus 50 per packet.
#[derive(Debug, Default)]
pub struct TunnelCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; N_REASONS],
}

/// A point-in-time copy of [`TunnelCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelCountersSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: [u64; N_REASONS],
}

impl TunnelCountersSnapshot {
    pub fn dropped(&self, reason: TunnelDrop) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

impl TunnelCounters {
    pub fn add_rx(&self, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Relaxed);
        self.rx_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn add_tx(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Relaxed);
        self.tx_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn add_drop(&self, reason: TunnelDrop) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> TunnelCountersSnapshot {
        TunnelCountersSnapshot {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            drops: std::array::from_fn(|i| self.drops[i].load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vxlan::header::VxlanPacket;

    #[test]
    fn counts_by_reason() {
        let c = TunnelCounters::default();
        c.add_rx(2, 128);
        c.add_tx(3, 1500);
        for bad in [&[0u8; 3][..], &[0u8; 30], &[0x08; 10]] {
            c.add_drop(VxlanPacket::parse(bad).unwrap_err().into());
        }
        c.add_drop(TunnelDrop::TooBig);
        let s = c.snapshot();
        assert_eq!(
            (s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes),
            (2, 128, 3, 1500)
        );
        assert_eq!(s.dropped(TunnelDrop::BadHeader), 2);
        assert_eq!(s.dropped(TunnelDrop::InnerRunt), 1);
        assert_eq!(s.dropped(TunnelDrop::TooBig), 1);
        assert_eq!(s.total_drops(), 4);
        for (i, r) in TunnelDrop::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let names: std::collections::HashSet<_> =
            TunnelDrop::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), TunnelDrop::ALL.len());
    }
}
