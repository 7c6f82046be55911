//! The sending side of a tunnel port: frames the switch hands it, stripped of
//! their tag, encapsulated per destination VTEP and sent in batches.

use super::mmsg::SendBatch;
use super::{Tunnel, ETH_HLEN, TAG_LEN, TPID_8021Q};
use crate::forward::{Delivery, DeliveryReport, FrameSink, FrameSource};
use fabric_offload::Accepts;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vswitch::vxlan::{fits_underlay, flow_src_port, Ipv4Encap, SrcPortRange, TunnelDrop, Vni};
use vswitch::{DropReason, MacAddr, Switch, VlanId};

/// A tunnel's sending buffers, locked per delivered batch.
pub(super) struct SendScratch {
    /// One egress frame, assembled from the sender's buffers.
    frame: Vec<u8>,
    pub batch: SendBatch,
}

impl SendScratch {
    /// Buffers for frames up to `max_frame` bytes and packets within
    /// `underlay_mtu` (plus the Ethernet header the slot starts with).
    pub fn new(max_frame: usize, underlay_mtu: u16) -> SendScratch {
        SendScratch {
            frame: Vec::with_capacity(max_frame),
            batch: SendBatch::new(ETH_HLEN + underlay_mtu as usize),
        }
    }
}

/// The receive side of the tunnel port: frames the switch sends across.
pub(super) struct TunnelSink {
    pub tunnel: Arc<Tunnel>,
    pub now: Arc<Switch>,
}

impl FrameSink for TunnelSink {
    fn deliver(&self, batch: &[Delivery], frames: &[FrameSource], report: &mut dyn DeliveryReport) {
        let t = &self.tunnel;
        let mut guard = t.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let scratch = &mut *guard;
        let now = self.now.now();
        for d in batch {
            assemble(d, &frames[d.frame], &mut scratch.frame);
            let result = t.queue_frame(scratch, now);
            if let Err(drop) = &result {
                t.counters.add_drop(*drop);
            }
            report.outcome(
                d,
                result.map_err(|drop| match drop {
                    TunnelDrop::TooBig => DropReason::MtuExceeded,
                    _ => DropReason::VlanNotAllowed,
                }),
            );
        }
        t.flush(&mut scratch.batch);
    }

    /// Nothing yet: the switch completes checksums and segments for the
    /// overlay, which sends plain frames.
    fn accepts(&self) -> Accepts {
        Accepts::NONE
    }
}

/// Writes the egress frame of `d` to `frame`: the rewritten head, then the
/// rest of the sender's frame.
fn assemble(d: &Delivery, source: &FrameSource, frame: &mut Vec<u8>) {
    frame.clear();
    frame.extend_from_slice(d.egress.head());
    let head = frame.len();
    frame.resize(head + source.len().saturating_sub(d.egress.skip()), 0);
    let mut at = head;
    source.for_each_slice(d.egress.skip(), |s| {
        let n = s.len().min(frame.len() - at);
        let _ = s.subslice(0, n).map(|s| s.copy_to(&mut frame[at..at + n]));
        at += n;
        true
    });
}

impl Tunnel {
    /// Strips the tag of the frame in `scratch`, picks the VTEP(s) and queues
    /// one encapsulated copy per VTEP (sending the batch when it is full).
    fn queue_frame(&self, scratch: &mut SendScratch, now: u32) -> Result<(), TunnelDrop> {
        let frame = &mut scratch.frame;
        // The port is a trunk without a native VLAN: every frame is tagged.
        if frame.len() < ETH_HLEN + TAG_LEN
            || u16::from_be_bytes([frame[12], frame[13]]) != TPID_8021Q
        {
            return Err(TunnelDrop::InnerTagged);
        }
        let vid = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
        let vlan = VlanId::new(vid).map_err(|_| TunnelDrop::UnknownVni)?;
        let vni = self.config.vnis.vni(vlan).ok_or(TunnelDrop::UnknownVni)?;
        frame.drain(12..16);
        if !fits_underlay(frame.len(), self.config.underlay_mtu) {
            return Err(TunnelDrop::TooBig);
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        let unicast = dst[0] & 1 == 0;
        let known = if unicast {
            self.remote_fdb.lookup(vni, MacAddr(dst), now)
        } else {
            None
        };
        let batch = &mut scratch.batch;
        let inner = &scratch.frame[..];
        match known {
            Some(vtep) => self.queue_copy(inner, vni, vtep, batch),
            None => self
                .config
                .vteps
                .flood_targets(vni)
                .for_each(|vtep| self.queue_copy(inner, vni, vtep, batch)),
        }
        Ok(())
    }

    /// Encapsulates one copy of `inner` for `to` into the next slot of
    /// `batch`. The UDP source port follows the inner flow (RFC 7348 §5).
    /// Each copy is counted: sent, or dropped under its reason.
    fn queue_copy(&self, inner: &[u8], vni: Vni, to: Ipv4Addr, batch: &mut SendBatch) {
        if batch.is_full() {
            self.flush(batch);
        }
        let mut encap = Ipv4Encap::new(
            vni,
            MacAddr([0; 6]),
            MacAddr([0; 6]),
            self.config.local,
            to,
            flow_src_port(inner, SrcPortRange::DEFAULT),
        );
        encap.dst_port = self.config.udp_port;
        match encap.encapsulate(inner, batch.next_slot()) {
            Ok(len) => batch.push(len, to, inner.len()),
            Err(_) => self.counters.add_drop(TunnelDrop::TooBig),
        }
    }

    /// Sends the queued copies; the kernel routes each IP packet (the outer
    /// Ethernet header is its job) and counts each copy.
    fn flush(&self, batch: &mut SendBatch) {
        batch.flush(
            self.raw.as_raw_fd(),
            ETH_HLEN,
            |inner, result| match result {
                Ok(()) => self.counters.add_tx(1, inner as u64),
                Err(drop) => self.counters.add_drop(drop),
            },
        );
    }
}
