//! What a sender hands a receiving port: the switch's decision per frame
//! ([`Delivery`]), the receiving side itself ([`FrameSink`]), and what the sink
//! reports back for the sender's counters ([`DeliveryReport`]).

use super::FrameSource;
use fabric_offload::Accepts;
use vswitch::{DropReason, Egress, PortId};

/// One frame of a TX batch for one egress port, as the switch decided.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Delivery {
    pub port: PortId,
    /// Index of the frame in the batch's frame list.
    pub frame: usize,
    pub egress: Egress,
}

#[cfg(test)]
impl Delivery {
    /// The bytes a sink writes for this item: the egress head, then the
    /// frame from `egress.skip()` on (for tests to compare).
    pub(crate) fn bytes(&self, frames: &[FrameSource]) -> Vec<u8> {
        let mut out = self.egress.head().to_vec();
        frames[self.frame].for_each_slice(self.egress.skip(), |s| {
            let mut b = vec![0u8; s.len()];
            s.copy_to(&mut b[..]);
            out.extend_from_slice(&b);
            true
        });
        out
    }
}

/// Something that takes frames for one switch port: a guest's RX queue, a TAP
/// device or a VXLAN tunnel.
pub(crate) trait FrameSink: Send + Sync {
    /// Delivers every item of `batch` (all for this port) in order: writes
    /// `egress.head()` followed by `frames[frame]` from `egress.skip()` on,
    /// behind the virtio-net header of the frame's offload if the peer takes
    /// one (`forward::offload::egress_header`). Reports each outcome to
    /// `report`, and notifies the peer once at the end, not per frame.
    ///
    /// Every frame of `batch` needs only offloads of [`Self::accepts`]: the
    /// switch completes the others in software before they get here.
    fn deliver(&self, batch: &[Delivery], frames: &[FrameSource], report: &mut dyn DeliveryReport);

    /// The offloads the peer takes with a frame (what it negotiated: the
    /// guest's GUEST_* features, the TAP device's offloads), read per batch.
    fn accepts(&self) -> Accepts;
}

/// What a sink tells the sender about a batch it delivers.
pub(crate) trait DeliveryReport {
    /// The outcome of one item, in batch order.
    fn outcome(&mut self, item: &Delivery, result: Result<(), DropReason>);
    /// The items reported so far are about to become visible to the peer (a
    /// guest's used index): the sender's counters must not lag behind what the
    /// peer can see. Sinks whose every write is visible at once (a socket, a
    /// TAP device) need not call it.
    fn publishing(&mut self) {}
    /// `packets` of the items reported went through the sink's queue
    /// `queue` (a guest's receive queue pair, a TAP queue): for the
    /// per-queue counters. Multi-queue sinks call it before `publishing`.
    fn delivered_on_queue(&mut self, _queue: usize, _packets: u64) {}
}
