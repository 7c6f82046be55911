//! The layer-2 values every part of the fabric talks about, each with its
//! protocol rule checked once, where the value enters: `fabric.toml` (the
//! config crate parses straight into these), the control socket, or a frame.
//! After that a [`VlanId`] is a usable VLAN and a configured [`Vni`] a usable
//! segment, so nothing downstream checks again.
//!
//! A leaf crate: `fabric-config` and `vswitch` both use it and know nothing of
//! each other.

mod mac;
mod vlan;
mod vlan_set;
mod vni;

pub use mac::{MacAddr, MacError};
pub use vlan::{VlanId, VlanIdError, VlanIdParseError};
pub use vlan_set::VlanSet;
pub use vni::{Vni, VniError};
