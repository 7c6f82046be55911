//! The receive sides of a switch's ports, indexed by port id.
//!
//! A port's driver publishes a [`FrameSink`] when its peer is ready to receive
//! (the guest enabled its RX queue) and withdraws it when the peer goes away. A
//! sender resolves the FDB's port id here, then copies the frame into the sink
//! itself: delivery happens on the sender's thread, locking only the destination
//! queue, briefly.

use crate::net::frame_source::FrameSource;
use arc_swap::ArcSwapOption;
use std::sync::Arc;
use vswitch::{fdb::MAX_PORTS, DropReason, Egress, PortId};

/// One frame of a TX batch for one egress port, as the switch decided.
#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    pub port: PortId,
    /// Index of the frame in the batch's frame list.
    pub frame: usize,
    pub egress: Egress,
}

/// Something that takes frames for one switch port: a guest's RX queue, a TAP
/// device or a VXLAN tunnel.
pub trait FrameSink: Send + Sync {
    /// Delivers every item of `batch` (all for this port) in order: writes
    /// `egress.head()` followed by `frames[frame]` from `egress.skip()` on.
    /// Reports each outcome to `report`, and notifies the peer once at the
    /// end, not per frame.
    fn deliver(&self, batch: &[Delivery], frames: &[FrameSource], report: &mut dyn DeliveryReport);
}

/// What a sink tells the sender about a batch it delivers.
pub trait DeliveryReport {
    /// The outcome of one item, in batch order.
    fn outcome(&mut self, item: &Delivery, result: Result<(), DropReason>);
    /// The items reported so far are about to become visible to the peer (a
    /// guest's used index): the sender's counters must not lag behind what the
    /// peer can see. Sinks whose every write is visible at once (a socket, a
    /// TAP device) need not call it.
    fn publishing(&mut self) {}
}

/// `Box` because arc-swap holds sized types only.
type Slot = ArcSwapOption<Box<dyn FrameSink>>;

pub struct PortTable {
    slots: Box<[Slot]>,
}

impl Default for PortTable {
    fn default() -> Self {
        PortTable {
            slots: (0..MAX_PORTS).map(|_| ArcSwapOption::empty()).collect(),
        }
    }
}

impl PortTable {
    pub fn publish(&self, port: PortId, sink: Box<dyn FrameSink>) {
        self.slots[port as usize].store(Some(Arc::new(sink)));
    }

    pub fn withdraw(&self, port: PortId) {
        self.slots[port as usize].store(None);
    }

    /// Runs `f` on the port's sink, if one is published. No reference count is
    /// taken on this path (arc-swap's guard), so senders on many cores do not
    /// contend on the sink.
    pub fn with<R>(&self, port: PortId, f: impl FnOnce(&dyn FrameSink) -> R) -> Option<R> {
        let guard = self.slots.get(port as usize)?.load();
        guard.as_ref().map(|sink| f(sink.as_ref().as_ref()))
    }
}

/// A port whose receive side is published in a [`PortTable`] and whose
/// frames are read by a thread of its own (TAP devices, tunnels).
pub struct ReaderPort {
    pub(crate) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
    pub(crate) table: Arc<PortTable>,
    pub(crate) switch: Arc<vswitch::Switch>,
    pub(crate) id: PortId,
}

impl ReaderPort {
    /// Stops the reader, withdraws the sink and takes the link down.
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.table.withdraw(self.id);
        self.switch.set_link(self.id, false);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
