//! vhost-user-net ports: one vhost-user socket per switch port.
//!
//! Data flows TX -> switch -> RX: [`tx`] pops a batch from a guest's transmit
//! queue and hands it to [`crate::forward`]; [`rx`] is the guest's receive
//! queue as a `FrameSink`. [`device`] is the vhost-user device (features,
//! config space, events), [`port`] the accept loop that serves one frontend
//! after another on the same socket.
//!
//! # Multi-queue (VIRTIO_NET_F_MQ, virtio 1.2 §5.1.6.5.5)
//!
//! A port with `queues = N` has N queue pairs: receiveq N is queue 2N,
//! transmitq N queue 2N+1 ([`connection`]). The device offers
//! VIRTIO_NET_F_MQ and `max_virtqueue_pairs = N` in config space when N > 1,
//! and VHOST_USER_PROTOCOL_F_MQ, whose GET_QUEUE_NUM the
//! `vhost-user-backend` handler answers with the device's queue count (2N,
//! at least the N pairs both frontends ask for).
//!
//! Who runs the control queue: not the backend. What the real frontends do
//! (read in their sources):
//! - QEMU (`hw/net/vhost_net.c`): `user_feature_bits`, the bits it lets a
//!   vhost-user backend decide, include VIRTIO_NET_F_MQ but not
//!   VIRTIO_NET_F_CTRL_VQ, CTRL_RX, CTRL_VLAN or CTRL_MAC_ADDR: those are
//!   QEMU's own virtio-net model's. Its control queue handler
//!   (`virtio_net_handle_ctrl` -> `virtio_net_handle_mq` in
//!   `hw/net/virtio-net.c`) takes VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET and tells
//!   the backend the pairs in use with VHOST_USER_SET_VRING_ENABLE on both
//!   rings of each pair (`vhost_set_vring_enable`). `vhost_net_start` hands
//!   a backend the control queue (`cvq`) only for vhost-vdpa.
//! - DPDK `net_virtio_user` (`drivers/net/virtio/virtio_user/virtio_user_dev.c`):
//!   `cq=1` makes virtio_user emulate the control queue itself
//!   (`virtio_user_handle_cq`), VIRTIO_NET_F_CTRL_VQ is stripped from the
//!   features sent to the backend unless it has a hardware control queue
//!   (vDPA only), and MQ_VQ_PAIRS_SET becomes SET_VRING_ENABLE per ring
//!   (`virtio_user_handle_mq`). It needs VIRTIO_NET_F_MQ from the backend
//!   and reads `max_virtqueue_pairs` through GET_CONFIG.
//!
//! So no frontend can hand this backend a control queue: the device has
//! none, and MAC table, VLAN filter and RX mode commands stay with the
//! frontend (which filters nothing for a vhost-user backend; the switch's
//! VLAN rules apply to the port). What the backend does is honour
//! SET_VRING_ENABLE: a pair the driver disabled gets nothing
//! (`rx::GuestRx` picks among enabled, started, unbroken pairs only; with
//! none the frame is a `no_buffer` drop), a transmitq is served only while
//! enabled, and pairs beyond those negotiated (no MQ acked: only the first)
//! are never served. A vring message for a queue past 2N is refused by the
//! `vhost-user-backend` handler (InvalidParam, and that session ends).
//!
//! # Announcing a migrated guest
//!
//! Both ways a VMM has are offered, and the VMM picks one per guest.
//! VIRTIO_NET_F_GUEST_ANNOUNCE: a guest that negotiates it announces itself.
//! It needs the control queue, which QEMU adds and serves itself (as for
//! MQ): after a migration or QMP `announce-self` QEMU sets
//! VIRTIO_NET_S_ANNOUNCE in the config status it serves, and the Linux guest
//! sends its own gratuitous ARP (and IPv6 advertisements) through its
//! transmitq, one set per round; we see ordinary frames. QEMU then sends no
//! SEND_RARP. A guest without the control queue (QEMU `ctrl_vq=off`), or a
//! frontend that does not ack GUEST_ANNOUNCE, gets VHOST_USER_PROTOCOL_F_RARP
//! instead: QEMU's SEND_RARP becomes a RARP forwarded from the port
//! ([`announce`]). A VMM that passes our features to a guest without adding
//! a control queue of its own would present GUEST_ANNOUNCE (like MQ) without
//! CTRL_VQ, which Linux refuses (§5.1.3.1).
//!
//! Each transmitq is a `PollQueue` on datapath thread `(port + pair) %
//! threads`, so the pairs of one port use different cores. A frame for a
//! multi-queue guest goes to the receive queue its flow hash picks
//! (`crate::forward::flow_hash`), so one flow keeps its order; each chosen
//! queue is locked once per batch and notified at most once.

pub(crate) mod announce;
pub(crate) mod connection;
pub(crate) mod device;
pub(crate) mod port;
pub(crate) mod rx;
pub(crate) mod tx;

pub use port::{NetPort, NetPortConfig, NetPortHandle};

use crate::GuestMemAtomic;
use vhost_user_backend::VringMutex;

/// The vring type of our devices: a mutex is enough, every access is short.
pub(crate) type Vring = VringMutex<GuestMemAtomic>;
