//! The vhost-user-net device of one frontend connection: feature negotiation,
//! config space, and the events of its two queues (0 = receiveq, 1 = transmitq).

use super::connection::{Connection, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use super::port::{NetPort, NetPortHandle};
use super::rx::GuestRx;
use super::tx::{TxQueue, TxScratch};
use super::Vring;
use crate::datapath::PollQueue;
use crate::session::{ServeOptions, SessionBackend, SocketServer};
use crate::GuestMemAtomic;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_USO4, VIRTIO_NET_F_GUEST_USO6,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_USO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Device features we offer (virtio 1.x §5.1.3): the checksum and
/// segmentation offloads both ways (the switch completes in software what a
/// receiver did not negotiate, `forward::offload`), mergeable buffers (a
/// 64 KiB frame spans many of a guest's buffers).
pub const OFFERED_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN
    | 1 << VIRTIO_NET_F_HOST_USO
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN
    | 1 << VIRTIO_NET_F_GUEST_USO4
    | 1 << VIRTIO_NET_F_GUEST_USO6
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_MTU;

/// The device of one connection: the connection's shared state and, while
/// a datapath thread serves it, the TX queue.
pub(crate) struct Device {
    pub(crate) conn: Arc<Connection>,
    published: AtomicBool,
    /// The TX queue while a datapath thread serves it.
    tx: Mutex<Option<Arc<TxQueue>>>,
}

impl Device {
    /// Makes the guest's RX queue reachable by senders, hands its TX queue to a
    /// datapath thread and brings the link up.
    fn publish(&self, rx: &Vring, tx: &Vring) {
        if !self.published.swap(true, Ordering::AcqRel) {
            self.conn.port.table.publish(
                self.conn.port.id,
                Box::new(GuestRx::new(rx.clone(), self.conn.clone())),
            );
            let queue = Arc::new(TxQueue {
                conn: self.conn.clone(),
                vring: tx.clone(),
                scratch: Mutex::new(TxScratch::default()),
            });
            *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(queue.clone());
            // A ring has no descriptors to watch: adding it cannot fail.
            let _ = self
                .conn
                .port
                .datapath
                .add(self.conn.port.id as usize, queue);
            self.conn.port.switch.set_link(self.conn.port.id, true);
            log::info!("port {}: frontend ready, link up", self.conn.port.name);
        }
    }

    /// Link down: withdraw the RX queue and forget the port's stations.
    pub(crate) fn withdraw(&self) {
        if self.published.swap(false, Ordering::AcqRel) {
            self.conn.port.table.withdraw(self.conn.port.id);
            if let Some(queue) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let queue: Arc<dyn PollQueue> = queue;
                self.conn
                    .port
                    .datapath
                    .remove(self.conn.port.id as usize, &queue);
            }
            self.conn.port.switch.set_link(self.conn.port.id, false);
        }
    }
}

/// The `VhostUserBackend` of one connection (cheap to clone: the daemon does).
#[derive(Clone)]
pub struct NetBackend(pub(crate) Arc<Device>);

impl NetBackend {
    pub fn new(port: Arc<NetPort>, mem: GuestMemAtomic) -> NetBackend {
        let conn = Arc::new(Connection {
            port,
            mem,
            acked_features: AtomicU64::new(0),
            broken: Default::default(),
        });
        NetBackend(Arc::new(Device {
            conn,
            published: AtomicBool::new(false),
            tx: Mutex::new(None),
        }))
    }

    /// `virtio_net_config` up to `mtu`: mac[6], status, max_virtqueue_pairs, mtu
    /// (all little-endian, §5.1.4).
    fn config_space(&self) -> [u8; 12] {
        let cfg = &self.0.conn.port.config;
        let mut space = [0u8; 12];
        space[0..6].copy_from_slice(&cfg.mac.unwrap_or_default());
        space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        space[8..10].copy_from_slice(&1u16.to_le_bytes());
        space[10..12].copy_from_slice(&cfg.mtu.to_le_bytes());
        space
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        self.0.conn.port.config.queue_size as usize
    }

    fn features(&self) -> u64 {
        let mut features = OFFERED_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.0.conn.port.config.mac.is_none() {
            features &= !(1 << VIRTIO_NET_F_MAC);
        }
        features
    }

    fn acked_features(&self, features: u64) {
        self.0
            .conn
            .acked_features
            .store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The handler sets EVENT_IDX on each vring; the datapath reads it there.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        crate::config_read(&self.config_space(), offset, size)
    }

    fn update_memory(&self, _mem: GuestMemAtomic) -> io::Result<()> {
        // `mem` is the same atomic we hold; the new map is already visible in it.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one, dropping the daemon would hang joining the workers.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the frontend may reuse every buffer we have not returned
        // once we answer. A TX batch in flight holds `scratch` until its chains
        // are marked used, so taking the lock waits for it; the ring is already
        // marked not ready, so no new batch starts. RX deliveries hold the RX
        // vring lock, which marking it not ready already waited for.
        // The batch publishes its chains even though the ring is stopped
        // (`RingView::stopping`), so none is lost to the guest.
        if queue_index == TX_QUEUE as u32 {
            let queue = self.0.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(queue) = queue {
                drop(queue.scratch.lock().unwrap_or_else(|e| e.into_inner()));
            }
        }
        // A broken queue gets another chance once the frontend sets it up anew.
        if let Some(broken) = self.0.conn.broken.get(queue_index as usize) {
            broken.store(false, Ordering::Release);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Also called once when a vring is enabled, not only on kicks: idempotent.
        if vrings.len() < NUM_QUEUES {
            return Ok(());
        }
        self.0
            .publish(&vrings[RX_QUEUE as usize], &vrings[TX_QUEUE as usize]);
        match device_event {
            // The datapath thread does the work; a kick only means it may be asleep.
            TX_QUEUE => self.0.conn.port.datapath.wake(self.0.conn.port.id as usize),
            // RX kicks only say the guest posted buffers; frames that found none
            // were already dropped and counted. We never need them: ask the
            // driver to stop sending them (VRING_USED_F_NO_NOTIFY; with
            // EVENT_IDX our avail_event never moves, so they are rare anyway).
            RX_QUEUE => {
                let _ = vrings[RX_QUEUE as usize].disable_notification();
            }
            _ => {}
        }
        Ok(())
    }
}

impl NetPort {
    /// Binds the socket now (so a bad path fails at start-up) and serves
    /// frontends on a thread of its own, as `options` say.
    pub fn spawn(self: Arc<Self>, options: &ServeOptions) -> io::Result<NetPortHandle> {
        let socket = self.config.socket.clone();
        let name = format!("port {}", self.name);
        SocketServer::spawn_with(&name, &socket, options, move |mem| {
            Ok(NetBackend::new(self.clone(), mem))
        })
    }
}

impl SessionBackend for NetBackend {
    fn detach(&self) {
        // Link down: withdraw the RX queue and forget the port's stations.
        self.0.withdraw();
    }
}
