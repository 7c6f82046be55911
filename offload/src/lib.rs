//! The virtio-net offload wire layer: what a frame's `virtio_net_hdr_v1`
//! (virtio 1.2 §5.1.6) means, validated once, and the software fallbacks a switch
//! needs when the port a frame goes to does not accept that offload: checksum
//! completion (§5.1.6.2) and GSO segmentation that matches Linux's
//! `tcp_gso_segment`/`inet_gso_segment`/`ipv6_gso_segment`/`__udp_gso_segment`
//! byte for byte (proved against the kernel in `tests/`).
//!
//! The data flows through small modules, each a typed view over bytes, no I/O and
//! no allocation:
//! - [`hdr`]: the 12 header bytes, [`VnetHdr`].
//! - [`headers`]: the Ethernet/802.1Q/IPv4/IPv6/TCP/UDP head of a frame, [`Layout`].
//! - [`meta`]: [`Offload`], the validated meaning of a header for one frame, and
//!   [`Accepts`], what a port takes.
//! - [`csum`]: the Internet checksum (RFC 1071), completion and verification.
//! - [`segment`]: software GSO, one contiguous segment at a time.
//! - [`error`]: [`OffloadError`], one variant per drop reason.

pub mod csum;
pub mod error;
pub mod hdr;
pub mod headers;
pub mod meta;
pub mod segment;

pub use csum::{complete_csum, is_partial_csum, l4_csum_valid, Checksum};
pub use error::OffloadError;
pub use hdr::VnetHdr;
pub use hdr::VNET_HDR_LEN;
pub use headers::{IpVersion, L4Proto, Layout, MAX_HEAD_LEN};
pub use meta::{Accepts, Gso, GsoKind, Offload};
pub use segment::segment;
