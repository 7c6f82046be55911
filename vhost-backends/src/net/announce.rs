//! Announcing a migrated guest (VHOST_USER_PROTOCOL_F_RARP).
//!
//! After a live migration the guest's NIC sits on another port, often on
//! another host, and every FDB still points at its old place. A guest that
//! did not negotiate VIRTIO_NET_F_GUEST_ANNOUNCE (offered, but it needs the
//! VMM's control queue) cannot announce itself, so QEMU asks the backend to
//! (`qemu_announce_self`, `vhost_user_migration_done`): one SEND_RARP per
//! announce round (5 rounds by default, 50 ms apart and growing), its
//! payload the guest's MAC.
//!
//! We build the frame QEMU itself would send (`announce_self_create` in
//! `net/announce.c`) and forward it as if the guest had sent it from this
//! port: the port's VLAN rules classify it, the switch learns the MAC here
//! (a move, counted in the FDB's `moved`, if it was elsewhere) and floods it
//! within the VLAN, VXLAN tunnels included, so the remote hosts learn our
//! VTEP for it too. Counted in the port's `announces` (and as a received
//! frame).
//!
//! It does not wait for the guest's rings: the frame lives in our own
//! buffer, so an announcement before the rings are published (a frontend
//! that sends SEND_RARP early) is forwarded and learned all the same; frames
//! for the guest are then `no_buffer` drops until its receive rings are
//! published. A session that ends forgets what it announced with the
//! port's other stations (`Device::withdraw`).

use super::connection::Connection;
use crate::forward::{forward, ForwardScratch, FrameSource, Ingress};
use std::fmt;
use vm_memory::VolatileSlice;
use vswitch::MacAddr;

/// A RARP frame as QEMU builds it: Ethernet header, RFC 903 body, zero
/// padding to the 60-byte minimum.
pub const RARP_LEN: usize = 60;

/// RFC 903: the RARP ethertype and its "request reverse" opcode.
const ETHERTYPE_RARP: u16 = 0x8035;
const OP_REQUEST_REVERSE: u16 = 3;

/// Why an announcement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceError {
    /// The MAC is multicast, broadcast or zero: never a guest's address,
    /// and the switch would drop the frame as an invalid source anyway.
    NotAStation(MacAddr),
    /// The port left the switch.
    PortGone,
}

impl fmt::Display for AnnounceError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            AnnounceError::NotAStation(mac) => write!(f, "{mac} is not a station address"),
            AnnounceError::PortGone => f.write_str("the port is no longer in its switch"),
        }
    }
}

impl std::error::Error for AnnounceError {}

/// The RARP frame announcing `mac` (QEMU's `announce_self_create`): to
/// broadcast from `mac`, Ethernet hardware (1) and IPv4 protocol (0x0800)
/// addresses of 6 and 4 bytes, reverse request, sender and target hardware
/// address `mac`, both protocol addresses 0.
pub fn rarp_frame(mac: MacAddr) -> [u8; RARP_LEN] {
    let mut f = [0u8; RARP_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // htype: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype: IPv4
    f[18] = 6; // hlen
    f[19] = 4; // plen
    f[20..22].copy_from_slice(&OP_REQUEST_REVERSE.to_be_bytes());
    f[22..28].copy_from_slice(&mac.0); // sha; spa (28..32) stays 0
    f[32..38].copy_from_slice(&mac.0); // tha; tpa (38..42) stays 0
    f
}

/// Forwards the RARP for `mac` as ingress of the connection's port and
/// counts it.
pub(crate) fn announce(conn: &Connection, mac: MacAddr) -> Result<(), AnnounceError> {
    if !mac.is_station() {
        return Err(AnnounceError::NotAStation(mac));
    }
    let port = &conn.port;
    let topo = port.switch.topology();
    let Some(info) = topo.port(port.id).filter(|p| port.switch.is_current(p)) else {
        return Err(AnnounceError::PortGone);
    };
    let mut frame = rarp_frame(mac);
    let segments = [VolatileSlice::from(&mut frame[..])];
    let frames = [FrameSource::new(&segments, 0)];
    let ingress = Ingress {
        id: port.id,
        switch: &port.switch,
        table: &port.table,
        queue: 0,
    };
    // Rare (a few per migration): a scratch of its own, not a queue's.
    forward(&ingress, &frames, &[], &mut ForwardScratch::default());
    info.state.counters.add_announce();
    log::info!("port {}: announced {mac} (RARP)", port.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte for byte the frame QEMU 10's `announce_self_create` builds for
    /// 52:54:00:12:34:56.
    #[test]
    fn rarp_frame_is_qemus() {
        let mac = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        let mut want = vec![0xff; 6];
        want.extend_from_slice(&mac.0);
        want.extend_from_slice(&[0x80, 0x35, 0, 1, 0x08, 0x00, 6, 4, 0, 3]);
        want.extend_from_slice(&mac.0);
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(&mac.0);
        want.extend_from_slice(&[0; 4]);
        want.resize(RARP_LEN, 0);
        assert_eq!(rarp_frame(mac).to_vec(), want);
    }
}
