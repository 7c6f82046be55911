//! The vhost-user-net device of one frontend connection: feature negotiation,
//! config space, and the events of its queues (2N = receiveq N, 2N+1 =
//! transmitq N, one pair per `queues` of the port).

use super::connection::{rx_queue, Connection, MAX_QUEUE_PAIRS};
use super::port::{NetPort, NetPortHandle};
use super::rx::GuestRx;
use super::tx::{TxQueue, TxScratch};
use super::Vring;
use crate::datapath::PollQueue;
use crate::dirty_log::DirtyLog;
use crate::relay::{LogGeometry, RelayHooks};
use crate::session::{ServeOptions, SessionBackend, SocketServer};
use crate::split_ring::set_kicks;
use crate::GuestMemAtomic;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_USO4, VIRTIO_NET_F_GUEST_USO6, VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_USO, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Device features we offer (virtio 1.x §5.1.3): [`OFFLOAD_FEATURES`] unless
/// the port turns them off, mergeable buffers (a 64 KiB frame spans many of a
/// guest's buffers), and VIRTIO_NET_F_GUEST_ANNOUNCE: the guest announces
/// itself after a migration. That needs the control queue, which we do not
/// offer: QEMU adds its own CTRL_VQ, sets VIRTIO_NET_S_ANNOUNCE in the config
/// status it serves itself, takes the guest's ANNOUNCE_ACK, and sends no
/// SEND_RARP for a guest that acked it. A frontend without a control queue
/// must not ack it (§5.1.3.1) and gets SEND_RARP handling (`super::announce`).
pub const OFFERED_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | OFFLOAD_FEATURES
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_MTU
    | 1 << VIRTIO_NET_F_GUEST_ANNOUNCE;

/// The checksum and segmentation offloads, both ways (the switch completes in
/// software what a receiver did not negotiate, `forward::offload`); not
/// offered on a port with `offloads = false`.
pub const OFFLOAD_FEATURES: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN
    | 1 << VIRTIO_NET_F_HOST_USO
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN
    | 1 << VIRTIO_NET_F_GUEST_USO4
    | 1 << VIRTIO_NET_F_GUEST_USO6;

/// Where one connection's device is in its single life: its rings are
/// published at most once, and never after the session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// The frontend is still setting the rings up.
    Setup,
    /// RX queues reachable, TX queues served, link up.
    Published,
    /// The session ended: a vring worker that runs on after the handler
    /// (they are joined only after the detach) must not bring the link up
    /// again over rings nobody drives.
    Ended,
}

/// The device of one connection: the connection's shared state and, while
/// datapath threads serve them, the TX queues.
pub(crate) struct Device {
    pub(crate) conn: Arc<Connection>,
    /// Published yet: checked on every kick without taking `life`.
    published: AtomicBool,
    life: Mutex<Life>,
    /// The TX queue of each pair, by pair, while datapath threads serve them.
    tx: Mutex<Vec<Arc<TxQueue>>>,
}

/// The datapath key of a port's pair: pairs of one port go to consecutive
/// threads (`(port + pair) % threads`), so two pairs use two cores.
fn thread_key(conn: &Connection, pair: usize) -> usize {
    conn.port.id as usize + pair
}

impl Device {
    /// Makes the guest's RX queues reachable by senders, hands each TX queue
    /// to its datapath thread and brings the link up. `vrings` are all the
    /// device's queues, receiveq and transmitq of each pair in turn.
    fn publish(&self, vrings: &[Vring]) {
        if self.published.load(Ordering::Acquire) {
            return;
        }
        let mut life = self.life.lock().unwrap_or_else(|e| e.into_inner());
        if *life != Life::Setup {
            return;
        }
        let conn = &self.conn;
        let pairs = conn.port.config.pairs().min(vrings.len() / 2);
        let rx = vrings.iter().step_by(2).take(pairs).cloned();
        conn.port
            .table
            .publish(conn.port.id, Box::new(GuestRx::new(rx, conn.clone())));
        if let Some(p) = conn.port.switch.topology().port(conn.port.id) {
            p.state.counters.set_queue_count(pairs);
        }
        let mut served = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        for (pair, vring) in vrings.iter().skip(1).step_by(2).take(pairs).enumerate() {
            let queue = Arc::new(TxQueue {
                conn: conn.clone(),
                pair,
                vring: vring.clone(),
                scratch: Mutex::new(TxScratch::default()),
            });
            served.push(queue.clone());
            // A ring has no descriptors to watch: adding it cannot fail.
            let _ = conn.port.datapath.add(thread_key(conn, pair), queue);
        }
        conn.port.switch.set_link(conn.port.id, true);
        // A new guest runs here: its stations are held again.
        conn.port.switch.fdb().set_peer_stopped(conn.port.id, false);
        log::info!(
            "port {}: frontend ready, link up ({pairs} queue pair{})",
            conn.port.name,
            if pairs == 1 { "" } else { "s" }
        );
        *life = Life::Published;
        self.published.store(true, Ordering::Release);
    }

    /// The session ended. Link down: withdraw the RX queues and forget the
    /// port's stations; the device is never published again.
    pub(crate) fn withdraw(&self) {
        let mut life = self.life.lock().unwrap_or_else(|e| e.into_inner());
        let was = std::mem::replace(&mut *life, Life::Ended);
        self.published.store(false, Ordering::Release);
        if was == Life::Published {
            self.conn.port.table.withdraw(self.conn.port.id);
            let queues = std::mem::take(&mut *self.tx.lock().unwrap_or_else(|e| e.into_inner()));
            for queue in queues {
                let key = thread_key(&self.conn, queue.pair);
                let queue: Arc<dyn PollQueue> = queue;
                self.conn.port.datapath.remove(key, &queue);
            }
            self.conn.port.switch.set_link(self.conn.port.id, false);
        } else {
            // Never published, but it may have announced (SEND_RARP before
            // the rings): forget those stations too.
            self.conn.port.switch.fdb().flush_port(self.conn.port.id);
        }
    }
}

/// The `VhostUserBackend` of one connection (cheap to clone: the daemon does).
#[derive(Clone)]
pub struct NetBackend(pub(crate) Arc<Device>);

impl NetBackend {
    /// The device of one connection of `port`; `live_migration`: offer the
    /// dirty log (VHOST_F_LOG_ALL, VHOST_USER_PROTOCOL_F_LOG_SHMFD), without
    /// which QEMU refuses to migrate the guest.
    pub fn new(port: Arc<NetPort>, mem: GuestMemAtomic, live_migration: bool) -> NetBackend {
        let conn = Arc::new(Connection {
            port,
            mem,
            acked_features: AtomicU64::new(0),
            broken: Default::default(),
            log: DirtyLog::new(live_migration),
        });
        NetBackend(Arc::new(Device {
            conn,
            published: AtomicBool::new(false),
            life: Mutex::new(Life::Setup),
            tx: Mutex::new(Vec::new()),
        }))
    }

    /// `virtio_net_config` up to `mtu`: mac[6], status, max_virtqueue_pairs, mtu
    /// (all little-endian, §5.1.4). `max_virtqueue_pairs` is the port's pairs
    /// (read by the driver only with VIRTIO_NET_F_MQ, offered when above 1).
    fn config_space(&self) -> [u8; 12] {
        let cfg = &self.0.conn.port.config;
        let mut space = [0u8; 12];
        space[0..6].copy_from_slice(&cfg.mac.unwrap_or_default());
        space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        space[8..10].copy_from_slice(&(cfg.pairs() as u16).to_le_bytes());
        space[10..12].copy_from_slice(&cfg.mtu.to_le_bytes());
        space
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    /// Two per pair; GET_QUEUE_NUM answers this (VHOST_USER_PROTOCOL_F_MQ),
    /// and a vring message for a queue beyond it is refused by the
    /// `vhost-user-backend` handler (InvalidParam), never indexed.
    fn num_queues(&self) -> usize {
        2 * self.0.conn.port.config.pairs()
    }

    fn max_queue_size(&self) -> usize {
        self.0.conn.port.config.queue_size as usize
    }

    fn features(&self) -> u64 {
        let mut features = OFFERED_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.0.conn.port.config.mac.is_none() {
            features &= !(1 << VIRTIO_NET_F_MAC);
        }
        if !self.0.conn.port.config.offloads {
            features &= !OFFLOAD_FEATURES;
        }
        if self.0.conn.port.config.pairs() > 1 {
            features |= 1 << VIRTIO_NET_F_MQ;
        }
        features | self.0.conn.log.features()
    }

    fn acked_features(&self, features: u64) {
        self.0
            .conn
            .acked_features
            .store(features, Ordering::Relaxed);
        self.0.conn.log.set_features(features);
    }

    /// RARP: SEND_RARP is answered by the relay ([`RelayHooks::send_rarp`]).
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::RARP
            | self.0.conn.log.protocol_features()
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
        if queue_index % 2 == 1 {
            let pair = (queue_index / 2) as usize;
            let queue = self
                .0
                .tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(pair)
                .cloned();
            if let Some(queue) = queue {
                drop(queue.scratch.lock().unwrap_or_else(|e| e.into_inner()));
            }
            // The guest can no longer send from here (a paused or migrated
            // VM): a move hold no longer protects its stations, so its
            // announcement from behind a tunnel moves them at once
            // (`vswitch::Fdb::set_peer_stopped`). Set after the batch in
            // flight, which clears it; its next frame clears it.
            let port = &self.0.conn.port;
            port.switch.fdb().set_peer_stopped(port.id, true);
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
        if vrings.len() < 2 {
            return Ok(());
        }
        self.0.publish(vrings);
        // One worker serves all queues: the event is the queue index.
        let queue = usize::from(device_event);
        let pair = queue / 2;
        if pair >= vrings.len() / 2 || pair >= MAX_QUEUE_PAIRS {
            return Ok(());
        }
        if queue % 2 == 1 {
            // The datapath thread does the work; a kick only means it may be asleep.
            self.0
                .conn
                .port
                .datapath
                .wake(thread_key(&self.0.conn, pair));
        } else {
            // RX kicks only say the guest posted buffers; frames that found none
            // were already dropped and counted. We never need them: ask the
            // driver to stop sending them (VRING_USED_F_NO_NOTIFY; with
            // EVENT_IDX our avail_event never moves, so they are rare anyway).
            let _ = set_kicks(
                &vrings[usize::from(rx_queue(pair))],
                &self.0.conn.log,
                false,
            );
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
        let live_migration = options.live_migration;
        SocketServer::spawn_with(&name, &socket, options, move |mem| {
            Ok(NetBackend::new(self.clone(), mem, live_migration))
        })
    }
}

impl SessionBackend for NetBackend {
    fn detach(&self) {
        // Link down: withdraw the RX queue and forget the port's stations.
        self.0.withdraw();
    }

    fn relay_hooks(&self) -> Arc<dyn RelayHooks> {
        Arc::new(self.clone())
    }
}

impl RelayHooks for NetBackend {
    fn set_log_base(&self, log: &LogGeometry, fd: OwnedFd) -> io::Result<()> {
        self.0.conn.log.set_base(log, fd)
    }

    /// Forwards a RARP for `mac` from this port (see [`super::announce`]);
    /// a MAC that is no station is refused (logged by the relay, and
    /// answered with a failure if the frontend asked for a reply).
    fn send_rarp(&self, mac: [u8; 6]) -> io::Result<()> {
        super::announce::announce(&self.0.conn, vswitch::MacAddr(mac))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::PortTable;
    use crate::net::connection::{rx_queue, tx_queue};
    use crate::net::NetPortConfig;
    use crate::{GuestMem, GuestMemAtomic};
    use virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ;
    use vswitch::{Switch, VlanMode};

    fn backend(queue_pairs: u16) -> NetBackend {
        backend_with(queue_pairs, true)
    }

    fn backend_with(queue_pairs: u16, offloads: bool) -> NetBackend {
        let switch = Arc::new(Switch::new("br0", 100, 100, 300));
        let vlan = VlanMode::Access(vswitch::VlanId::new(10).unwrap());
        let id = switch.add_port("p", vlan, 1500).unwrap();
        let port = Arc::new(NetPort {
            name: "p".into(),
            id,
            switch,
            table: Arc::new(PortTable::default()),
            datapath: Arc::new(crate::datapath::Datapath::new(1).unwrap()),
            config: NetPortConfig {
                socket: "/nonexistent".into(),
                mac: None,
                mtu: 1500,
                queue_size: 256,
                queue_pairs,
                offloads,
            },
        });
        NetBackend::new(port, GuestMemAtomic::new(GuestMem::default()), true)
    }

    /// One pair: no MQ, one pair in config space, two queues. N pairs: MQ
    /// offered, N in `max_virtqueue_pairs` (§5.1.4), 2N queues; a value
    /// past the bound is clamped, never trusted.
    #[test]
    fn queue_pairs_shape_features_config_and_queues() {
        for (asked, pairs) in [(1u16, 1usize), (2, 2), (8, 8), (0, 1), (9, 8)] {
            let b = backend(asked);
            assert_eq!(b.num_queues(), 2 * pairs, "queues={asked}");
            let mq = b.features() & (1 << VIRTIO_NET_F_MQ) != 0;
            assert_eq!(mq, pairs > 1, "queues={asked}");
            let space = b.get_config(8, 2);
            assert_eq!(u16::from_le_bytes([space[0], space[1]]), pairs as u16);
        }
    }

    /// `offloads = false` withdraws exactly the offload bits: a guest then
    /// sends and takes complete frames only, and everything else is offered
    /// as before.
    #[test]
    fn offloads_off_withdraws_only_the_offload_features() {
        let on = backend_with(1, true).features();
        let off = backend_with(1, false).features();
        assert_eq!(on & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
        assert_eq!(off & OFFLOAD_FEATURES, 0);
        assert_eq!(on & !OFFLOAD_FEATURES, off);
        for bit in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_HOST_USO,
        ] {
            assert_eq!(off & (1 << bit), 0, "bit {bit}");
        }
        assert_ne!(off & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
    }

    /// GUEST_ANNOUNCE is offered on every port, whatever its offloads and
    /// queue pairs; the control queue it needs is the frontend's (QEMU's),
    /// never ours.
    #[test]
    fn guest_announce_is_offered_on_every_port_without_a_control_queue() {
        for (pairs, offloads) in [(1, true), (1, false), (4, true), (4, false)] {
            let f = backend_with(pairs, offloads).features();
            let what = format!("queues={pairs} offloads={offloads}");
            assert_ne!(f & (1 << VIRTIO_NET_F_GUEST_ANNOUNCE), 0, "{what}");
            assert_eq!(f & (1 << VIRTIO_NET_F_CTRL_VQ), 0, "{what}");
        }
    }

    /// Without VIRTIO_NET_F_MQ acked only the first pair is served, whatever
    /// the port offers (§5.1.5); with it, all. A queue index past the device
    /// reads as broken and cannot be marked: no panic, no slot.
    #[test]
    fn only_negotiated_pairs_are_served_and_indices_are_checked() {
        let b = backend(4);
        let conn = &b.0.conn;
        assert_eq!(conn.pairs_negotiated(), 1);
        b.acked_features(1 << VIRTIO_NET_F_MQ);
        assert_eq!(conn.pairs_negotiated(), 4);
        assert!(!conn.is_broken(tx_queue(3)));
        conn.mark_broken(rx_queue(3), "test");
        assert!(conn.is_broken(rx_queue(3)));
        assert!(
            !conn.is_broken(tx_queue(3)),
            "one queue broken, not its pair"
        );
        let past = tx_queue(MAX_QUEUE_PAIRS);
        assert!(
            conn.is_broken(past),
            "a queue past the device is never served"
        );
        conn.mark_broken(past, "out of range");
        conn.mark_broken(u16::MAX, "out of range");
        // stop_vring of a queue past the device answers without effect.
        assert!(b.stop_vring(u32::MAX).is_ok());
        assert!(b.stop_vring(rx_queue(3).into()).is_ok());
        assert!(!conn.is_broken(rx_queue(3)), "stop_vring resets the queue");
        b.0.conn.port.datapath.shutdown();
    }

    /// A session publishes its rings once and never after it ended: a kick
    /// handled by a vring worker after the detach (the workers are joined
    /// only later) leaves the link down and the port table empty. Seen in
    /// CI as a port that came back up after its frontend was refused.
    #[test]
    fn a_kick_after_the_session_ended_does_not_bring_the_link_up() {
        use vhost_user_backend::VringT;
        let b = backend(1);
        let port = b.0.conn.port.clone();
        let is_up = || port.switch.topology().port(port.id).unwrap().state.is_up();
        let in_table = || port.table.with(port.id, |_| ()).is_some();
        let mem = GuestMemAtomic::new(GuestMem::default());
        let vrings: Vec<Vring> = (0..2)
            .map(|_| Vring::new(mem.clone(), 256).unwrap())
            .collect();
        b.handle_event(1, EventSet::IN, &vrings, 0).unwrap();
        assert!(is_up() && in_table(), "the first kick publishes");
        b.detach();
        assert!(!is_up() && !in_table(), "the detach withdraws");
        b.handle_event(1, EventSet::IN, &vrings, 0).unwrap();
        assert!(!is_up(), "a late kick brought the link up again");
        assert!(!in_table(), "a late kick published rings nobody drives");
        port.datapath.shutdown();
    }
}
