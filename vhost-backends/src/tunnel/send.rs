//! The sending side of a tunnel port: frames the switch hands it, stripped of
//! their tag, resolved into wire frames (offloads), encapsulated per
//! destination VTEP and sent in batches.
//!
//! The tunnel takes every offload a frame may carry (it declares
//! [`Accepts::ALL`]) and resolves it itself, before encapsulation: a GSO
//! super-frame is cut (`fabric_offload::segment`) into inner packets that fit
//! the underlay (`underlay MTU - 50` of frame, TCP segments made smaller if
//! the sender's `gso_size` is too large for it), each with its own headers
//! and full checksums; a NEEDS_CSUM frame gets its checksum completed
//! (virtio 1.2 §5.1.6.2). A checksum left partial inside a tunnel would reach
//! a peer that cannot complete it. All the packets of a delivered batch leave
//! in as few `sendmmsg` calls as the slots allow.
//!
//! Why not UDP_SEGMENT (udp(7)) on the underlay: it applies to UDP sockets,
//! where the kernel writes the outer headers with the socket's one source
//! port, so the source port could no longer follow each inner flow (RFC 7348
//! §5), and it cuts a payload into equal chunks without replicating the inner
//! headers: each inner TCP segment would still need its own headers and
//! checksums written here. Segmenting before encapsulation does that work
//! once, and `sendmmsg` saves the system calls UDP_SEGMENT would.

use super::mmsg::SendBatch;
use super::{Tunnel, ETH_HLEN, MAX_FRAME, TAG_LEN, TPID_8021Q};
use crate::forward::offload::drop_reason;
use crate::forward::{Delivery, DeliveryReport, FrameSink, FrameSource};
use fabric_offload::{segment, Accepts, L4Proto, Offload, OffloadError};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vswitch::vxlan::{
    fits_underlay, flow_src_port, Ipv4Encap, SrcPortRange, TunnelDrop, Vni, OVERHEAD_IP,
};
use vswitch::{DropReason, MacAddr, Switch, VlanId};

/// A tunnel's sending buffers, locked per delivered batch.
pub(super) struct SendScratch {
    /// One egress frame, assembled from the sender's buffers.
    frame: Vec<u8>,
    /// Where `segment` builds each wire frame of a GSO frame.
    segment: Vec<u8>,
    pub batch: SendBatch,
}

impl SendScratch {
    /// Buffers for frames up to [`MAX_FRAME`] bytes and packets within
    /// `underlay_mtu` (plus the Ethernet header the slot starts with).
    pub fn new(underlay_mtu: u16) -> SendScratch {
        SendScratch {
            frame: Vec::with_capacity(MAX_FRAME),
            segment: vec![0; MAX_FRAME],
            batch: SendBatch::new(ETH_HLEN + underlay_mtu as usize),
        }
    }
}

/// Why a frame handed to the tunnel is not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendError {
    /// Counted by the tunnel under its reason.
    Tunnel(TunnelDrop),
    /// The frame's offload could not be resolved.
    Offload(OffloadError),
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
            let source = &frames[d.frame];
            assemble(d, source, &mut scratch.frame);
            let off = source.offload().shifted(d.egress.shift());
            let result = t.queue_frame(scratch, off, now).map_err(|e| match e {
                SendError::Tunnel(drop) => {
                    t.counters.add_drop(drop);
                    match drop {
                        TunnelDrop::TooBig => DropReason::MtuExceeded,
                        _ => DropReason::VlanNotAllowed,
                    }
                }
                SendError::Offload(e) => drop_reason(e),
            });
            report.outcome(d, result);
        }
        t.flush(&mut scratch.batch);
    }

    /// Everything: offloads are resolved here, before encapsulation, so the
    /// switch hands over GSO frames whole (see the module doc).
    fn accepts(&self) -> Accepts {
        Accepts::ALL
    }
}

/// Writes the egress frame of `d` to `frame`: the rewritten head, then the
/// rest of the sender's frame.
fn assemble(d: &Delivery, source: &FrameSource, frame: &mut Vec<u8>) {
    frame.clear();
    frame.extend_from_slice(d.egress.head());
    let head = frame.len();
    frame.resize(head + source.len().saturating_sub(d.egress.skip()), 0);
    source.copy_from(d.egress.skip(), &mut frame[head..]);
}

/// The offload `off` of an untagged inner frame of `len` bytes, made to fit
/// an underlay of `underlay_mtu`: a TCP GSO frame whose segments would not
/// fit is cut in smaller ones (any MSS up to the sender's is valid TCP). A
/// frame whose wire frames cannot fit is `TooBig` (RFC 7348 §4.3: never
/// fragmented): a plain frame too long, or a UDP GSO frame, whose datagram
/// size is the application's.
fn fit_underlay(mut off: Offload, len: usize, underlay_mtu: u16) -> Result<Offload, TunnelDrop> {
    let room = usize::from(underlay_mtu).saturating_sub(OVERHEAD_IP);
    if let Some(g) = &mut off.gso {
        let payload_room = room.saturating_sub(usize::from(g.hdr_len));
        if usize::from(g.size) > payload_room && g.proto() == L4Proto::Tcp && payload_room > 0 {
            g.size = payload_room as u16;
        }
    }
    match fits_underlay(off.largest_frame(len), underlay_mtu) {
        true => Ok(off),
        false => Err(TunnelDrop::TooBig),
    }
}

impl Tunnel {
    /// Strips the tag of the frame in `scratch` (carrying `off`), picks the
    /// VTEP(s), resolves the offload and queues one encapsulated copy of each
    /// wire frame per VTEP (sending the batch whenever it is full).
    fn queue_frame(
        &self,
        scratch: &mut SendScratch,
        off: Offload,
        now: u32,
    ) -> Result<(), SendError> {
        let SendScratch {
            frame,
            segment: seg_buf,
            batch,
        } = scratch;
        // The port is a trunk without a native VLAN: every frame is tagged.
        if frame.len() < ETH_HLEN + TAG_LEN
            || u16::from_be_bytes([frame[12], frame[13]]) != TPID_8021Q
        {
            return Err(SendError::Tunnel(TunnelDrop::InnerTagged));
        }
        let vid = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
        let vlan = VlanId::new(vid).map_err(|_| SendError::Tunnel(TunnelDrop::UnknownVni))?;
        let vni = (self.config.vnis.vni(vlan)).ok_or(SendError::Tunnel(TunnelDrop::UnknownVni))?;
        frame.drain(12..16);
        let off = fit_underlay(
            off.shifted(-(TAG_LEN as isize)),
            frame.len(),
            self.config.underlay_mtu,
        )
        .map_err(SendError::Tunnel)?;
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        let unicast = dst[0] & 1 == 0;
        let known = if unicast {
            self.remote_fdb.lookup(vni, MacAddr(dst), now)
        } else {
            None
        };
        let emit = |inner: &[u8]| {
            match known {
                Some(vtep) => self.queue_copy(inner, vni, vtep, batch),
                None => self
                    .config
                    .vteps
                    .flood_targets(vni)
                    .for_each(|vtep| self.queue_copy(inner, vni, vtep, batch)),
            }
            true
        };
        segment(frame, &off, seg_buf, emit).map_err(SendError::Offload)?;
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
    pub(super) fn flush(&self, batch: &mut SendBatch) {
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
