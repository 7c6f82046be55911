//! The receive sides of a switch's ports, indexed by port id.
//!
//! A port's driver publishes a [`FrameSink`] when its peer is ready to receive
//! (the guest enabled its RX queue) and withdraws it when the peer goes away. A
//! sender resolves the FDB's port id here, then copies the frame into the sink
//! itself: delivery happens on the sender's thread, locking only the destination
//! queue, briefly.

use super::FrameSink;
use arc_swap::ArcSwapOption;
use std::sync::Arc;
use vswitch::{fdb::MAX_PORTS, PortId};

/// `Box` because arc-swap holds sized types only.
type Slot = ArcSwapOption<Box<dyn FrameSink>>;

/// The published receive sides of one switch's ports.
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
    pub(crate) fn publish(&self, port: PortId, sink: Box<dyn FrameSink>) {
        self.slots[port as usize].store(Some(Arc::new(sink)));
    }

    pub(crate) fn withdraw(&self, port: PortId) {
        self.slots[port as usize].store(None);
    }

    /// Runs `f` on the port's sink, if one is published. No reference count is
    /// taken on this path (arc-swap's guard), so senders on many cores do not
    /// contend on the sink.
    pub(crate) fn with<R>(&self, port: PortId, f: impl FnOnce(&dyn FrameSink) -> R) -> Option<R> {
        let guard = self.slots.get(port as usize)?.load();
        guard.as_ref().map(|sink| f(sink.as_ref().as_ref()))
    }
}
