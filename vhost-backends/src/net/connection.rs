//! What the device, its receive side and its transmit queues share about one
//! frontend connection: the port, the guest's memory, the negotiated
//! features and which queues the driver broke.
//!
//! Queues of a virtio-net device (virtio 1.2 §5.1.2): receiveq N is queue
//! 2N, transmitq N is queue 2N+1, for N below the queue pairs in use; the
//! control queue would follow the last pair, but no frontend hands it to a
//! vhost-user backend (see [`super`]), so we have none.

use super::port::NetPort;
use crate::dirty_log::DirtyLog;
use crate::GuestMemAtomic;
use fabric_offload::Accepts;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_USO, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
};

/// Most queue pairs a port offers: one per counted queue of the port.
pub const MAX_QUEUE_PAIRS: usize = vswitch::MAX_QUEUES;
pub(super) const MAX_QUEUES: usize = 2 * MAX_QUEUE_PAIRS;

/// Index of receiveq `pair`.
pub const fn rx_queue(pair: usize) -> u16 {
    (2 * pair) as u16
}

/// Index of transmitq `pair`.
pub const fn tx_queue(pair: usize) -> u16 {
    (2 * pair + 1) as u16
}

/// State of one frontend connection. A new one is made for every connection so
/// nothing negotiated by a previous guest leaks into the next.
pub struct Connection {
    pub(crate) port: Arc<NetPort>,
    pub(crate) mem: GuestMemAtomic,
    pub(super) acked_features: AtomicU64,
    /// Per queue: stopped as broken until the frontend stops it (GET_VRING_BASE)
    /// and sets it up again, or reconnects.
    pub(super) broken: [AtomicBool; MAX_QUEUES],
    /// The dirty log every write into this guest's memory is marked in.
    pub(crate) log: DirtyLog,
}

impl Connection {
    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked_features.load(Ordering::Relaxed) & (1 << bit) != 0
    }

    /// What the guest may send (virtio 1.2 §5.1.6.2): a partial checksum
    /// with CSUM, GSO with HOST_TSO4/6, HOST_ECN, HOST_USO.
    pub(crate) fn host_offloads(&self) -> Accepts {
        let mut a = Accepts::NONE;
        for (bit, offload) in [
            (VIRTIO_NET_F_CSUM, Accepts::CSUM),
            (VIRTIO_NET_F_HOST_TSO4, Accepts::TSO4),
            (VIRTIO_NET_F_HOST_TSO6, Accepts::TSO6),
            (VIRTIO_NET_F_HOST_ECN, Accepts::TSO_ECN),
            (VIRTIO_NET_F_HOST_USO, Accepts::USO),
        ] {
            if self.has_feature(bit) {
                a = a | offload;
            }
        }
        a
    }

    /// What the guest takes (§5.1.6.4): a partial checksum or DATA_VALID
    /// with GUEST_CSUM; GSO with GUEST_TSO4/6, GUEST_ECN, GUEST_USO4+6. GSO
    /// only with MRG_RXBUF as well: a driver without it may post buffers too
    /// small for 64 KiB (posting 65562-byte ones is only a SHOULD,
    /// §5.1.6.3.1), and a super-frame that finds none would be lost. Such a
    /// guest gets segments instead.
    pub(crate) fn guest_offloads(&self) -> Accepts {
        let all = Accepts::from_guest_features(self.acked_features.load(Ordering::Relaxed));
        if self.has_feature(VIRTIO_NET_F_MRG_RXBUF) || !all.contains(Accepts::CSUM) {
            all
        } else {
            Accepts::CSUM
        }
    }

    /// Queue pairs the driver may use: the port's pairs if it negotiated
    /// VIRTIO_NET_F_MQ, else only the first (§5.1.5: without MQ only
    /// receiveq1 and transmitq1 exist). Queues above are never served,
    /// whatever the frontend sets up there.
    pub(crate) fn pairs_negotiated(&self) -> usize {
        if self.has_feature(VIRTIO_NET_F_MQ) {
            self.port.config.pairs()
        } else {
            1
        }
    }

    pub(crate) fn is_broken(&self, queue: u16) -> bool {
        self.broken
            .get(queue as usize)
            .is_none_or(|b| b.load(Ordering::Acquire))
    }

    /// Stops serving `queue`: its driver broke the ring (`why`). Counted and
    /// logged once; there is no way to set DEVICE_NEEDS_RESET through
    /// vhost-user, so the guest learns of it only by its queue not moving.
    pub(crate) fn mark_broken(&self, queue: u16, why: &str) {
        let Some(flag) = self.broken.get(queue as usize) else {
            return;
        };
        if flag.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(p) = self.port.switch.topology().port(self.port.id) {
            p.state.counters.add_broken_queue();
        }
        let name = if queue.is_multiple_of(2) {
            "receive"
        } else {
            "transmit"
        };
        log::error!(
            "port {}: {name} queue {queue} broken ({why}); stopped until the frontend resets it",
            self.port.name
        );
    }
}
