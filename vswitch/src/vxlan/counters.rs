//! Per-tunnel counters: the generic [`Counters`] over [`TunnelDrop`].

use super::header::DecodeError;
use crate::counters::{Counters, CountersSnapshot, Reason, MAX_REASONS};
use std::ops::Deref;
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

impl Reason for TunnelDrop {
    const ALL: &'static [TunnelDrop] = &TunnelDrop::ALL;

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        TunnelDrop::name(self)
    }
}

const _: () = assert!(TunnelDrop::ALL.len() <= MAX_REASONS);

/// Counters of one tunnel: the generic [`Counters`] (through `Deref`) plus
/// `rx_coalesced`. `rx` counts packets decapsulated (inner frames accepted),
/// `tx` packets encapsulated and sent (one per copy when flooding to several
/// VTEPs). Bytes are inner Ethernet frame bytes, comparable with the guest
/// ports' counters; the underlay's bytes are that plus 50 per packet.
/// `rx_coalesced` counts the received inner TCP segments merged into the one
/// before them (receive coalescing within one batch): the switch was handed
/// `rx_packets - rx_coalesced` frames.
#[derive(Debug, Default)]
pub struct TunnelCounters {
    traffic: Counters<TunnelDrop>,
    rx_coalesced: AtomicU64,
}

impl Deref for TunnelCounters {
    type Target = Counters<TunnelDrop>;

    fn deref(&self) -> &Counters<TunnelDrop> {
        &self.traffic
    }
}

impl TunnelCounters {
    /// `n` received segments were merged into the segment before them.
    pub fn add_coalesced(&self, n: u64) {
        self.rx_coalesced.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> TunnelCountersSnapshot {
        TunnelCountersSnapshot {
            traffic: self.traffic.snapshot(),
            rx_coalesced: self.rx_coalesced.load(Relaxed),
        }
    }
}

/// A point-in-time copy of [`TunnelCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelCountersSnapshot {
    pub traffic: CountersSnapshot<TunnelDrop>,
    /// Received segments merged into the one before them (see [`TunnelCounters`]).
    pub rx_coalesced: u64,
}

impl Deref for TunnelCountersSnapshot {
    type Target = CountersSnapshot<TunnelDrop>;

    fn deref(&self) -> &CountersSnapshot<TunnelDrop> {
        &self.traffic
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
        c.add_coalesced(5);
        c.add_coalesced(2);
        let s = c.snapshot();
        assert_eq!(s.rx_coalesced, 7);
        assert_eq!(
            (s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes),
            (2, 128, 3, 1500)
        );
        assert_eq!(s.dropped(TunnelDrop::BadHeader), 2);
        assert_eq!(s.dropped(TunnelDrop::InnerRunt), 1);
        assert_eq!(s.dropped(TunnelDrop::TooBig), 1);
        assert_eq!(s.total_drops(), 4);
        for (i, r) in TunnelDrop::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let names: std::collections::HashSet<_> =
            TunnelDrop::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), TunnelDrop::ALL.len());
    }
}
