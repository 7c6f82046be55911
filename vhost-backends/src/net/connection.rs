//! What the device, its receive side and its transmit queue share about one
//! frontend connection: the port, the guest's memory, the negotiated
//! features and which queues the driver broke.

use super::port::NetPort;
use crate::GuestMemAtomic;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub(super) const NUM_QUEUES: usize = 2;

/// State of one frontend connection. A new one is made for every connection so
/// nothing negotiated by a previous guest leaks into the next.
pub struct Connection {
    pub(crate) port: Arc<NetPort>,
    pub(crate) mem: GuestMemAtomic,
    pub(super) acked_features: AtomicU64,
    /// Per queue: stopped as broken until the frontend stops it (GET_VRING_BASE)
    /// and sets it up again, or reconnects.
    pub(super) broken: [AtomicBool; NUM_QUEUES],
}

impl Connection {
    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked_features.load(Ordering::Relaxed) & (1 << bit) != 0
    }

    pub(crate) fn is_broken(&self, queue: u16) -> bool {
        self.broken[queue as usize].load(Ordering::Acquire)
    }

    /// Stops serving `queue`: its driver broke the ring (`why`). Counted and
    /// logged once; there is no way to set DEVICE_NEEDS_RESET through
    /// vhost-user, so the guest learns of it only by its queue not moving.
    pub(crate) fn mark_broken(&self, queue: u16, why: &str) {
        if self.broken[queue as usize].swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(p) = self.port.switch.topology().port(self.port.id) {
            p.state.counters.add_broken_queue();
        }
        let name = if queue == RX_QUEUE {
            "receive"
        } else {
            "transmit"
        };
        log::error!(
            "port {}: {name} queue broken ({why}); stopped until the frontend resets it",
            self.port.name
        );
    }
}
