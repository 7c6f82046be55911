//! The switch engine: a learning L2 switch with 802.1Q VLANs.
//!
//! Pure logic over byte slices. The data flows through the modules in order:
//! [`frame`] (typed view of the Ethernet header) -> [`vlan`] (classify the frame
//! into a VLAN by the ingress port's rule) -> [`fdb`] (learn the source, look up
//! the destination) -> [`switch`] (pick egress ports and the tag each one emits).
//! [`vxlan`] holds the tunnel's decisions (VLAN <-> VNI, remote FDB, which VTEPs,
//! the outer headers); the FDB and the remote FDB are both an [`aging`] table.
//! The L2 value types come from `fabric-l2` and are re-exported here. Port
//! drivers (vhost-user, TAP, VXLAN) live elsewhere and copy the frame; this
//! crate only decides.

pub mod aging;
pub mod counters;
pub mod fdb;
pub mod frame;
pub mod switch;
pub mod token_bucket;
pub mod vlan;
pub mod vxlan;

pub use counters::{
    Counters, CountersSnapshot, DropReason, OffloadOutcome, PortCounters, PortCountersSnapshot,
    QueueSnapshot, Reason, MAX_QUEUES,
};
pub use fabric_l2::{MacAddr, MacError, VlanIdError};
pub use fdb::{Fdb, FdbEntry, FdbStats, LearnOutcome};
pub use frame::{EthernetHead, HEAD_LEN};
pub use switch::{
    Dest, Egress, Ingress, PortId, PortInfo, PortState, Switch, SwitchError, Topology,
};
pub use token_bucket::{monotonic_ns, Rate, TokenBucket};
pub use vlan::{VlanId, VlanMode, VlanSet};
pub use vxlan::{RemoteFdb, TunnelCounters, Vni, VniMap, VtepSet, VxlanPacket};
