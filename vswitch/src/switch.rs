//! The switch: ports, their VLAN rules, and the forwarding decision for a frame.
//!
//! A port driver hands [`Switch::receive`] the head of each frame it receives and
//! gets back an [`Ingress`]: the VLAN and where the frame goes (one port, or a
//! flood of the VLAN). For each egress port, [`Topology::egress`] says how the
//! frame is rewritten on the way out ([`Egress`]: the new first bytes and how many
//! of the original to skip), so the driver can copy straight from the source
//! buffer to the destination with no intermediate frame.
//!
//! The port set is an immutable [`Topology`] swapped atomically on change
//! (`arc-swap`): the datapath loads it once per batch without a lock.

use crate::counters::{DropReason, PortCounters};
use crate::fdb::{Fdb, LearnOutcome, MAX_PORTS};
use crate::frame::{EthernetHead, MacAddr, ETH_HLEN, HEAD_LEN, TPID_8021Q, VLAN_TAG_LEN};
use crate::token_bucket::{monotonic_ns, Rate, TokenBucket};
use crate::vlan::{Classified, EgressTag, VlanId, VlanMode};
use arc_swap::{ArcSwap, Guard};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use crate::fdb::PortId;

/// Run-time state of a port shared between its driver and every sender.
#[derive(Debug, Default)]
pub struct PortState {
    link_up: AtomicBool,
    /// Set by the operator (`port set --admin down`): the port neither
    /// sends nor receives, whatever its link.
    admin_down: AtomicBool,
    pub counters: PortCounters,
    /// Ingress policing in bits (see [`PortState::police`]); `policing`
    /// says whether there is one, so an unpoliced port takes no lock.
    policer: Mutex<Option<TokenBucket>>,
    policing: AtomicBool,
}

impl PortState {
    /// Whether its peer is there (the link), whatever the admin state.
    pub fn is_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    /// Whether the operator left it up.
    pub fn is_admin_up(&self) -> bool {
        !self.admin_down.load(Ordering::Acquire)
    }

    /// Whether it forwards: link up and admin up.
    fn forwards(&self) -> bool {
        self.is_up() && self.is_admin_up()
    }

    /// Polices the port's ingress at `rate` bits a second with a burst of
    /// that many bits (a fresh, full bucket), or no longer (`None`).
    pub fn set_policing(&self, rate: Option<Rate>) {
        let mut policer = self.policer.lock().unwrap_or_else(|e| e.into_inner());
        *policer = rate.map(|r| TokenBucket::new(r, monotonic_ns()));
        self.policing.store(policer.is_some(), Ordering::Release);
    }

    /// The policing rate in bits, if any.
    pub fn policing(&self) -> Option<Rate> {
        if !self.policing.load(Ordering::Acquire) {
            return None;
        }
        let policer = self.policer.lock().unwrap_or_else(|e| e.into_inner());
        policer.as_ref().map(TokenBucket::rate)
    }

    /// Ingress policing of a batch of frames of `lens` bytes: calls
    /// `policed(i)` for each frame over the rate, which is then counted
    /// under [`DropReason::Policed`] and must not be forwarded. One lock and
    /// one clock read per batch, none for a port without policing.
    pub fn police(&self, lens: impl Iterator<Item = usize>, mut policed: impl FnMut(usize)) {
        if !self.policing.load(Ordering::Acquire) {
            return;
        }
        let mut policer = self.policer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = policer.as_mut() else {
            return;
        };
        let now = monotonic_ns();
        for (i, len) in lens.enumerate() {
            if bucket.try_take(len as u64 * 8, now).is_err() {
                self.counters.add_drop(DropReason::Policed);
                policed(i);
            }
        }
    }
}

/// A port as configured.
#[derive(Clone, Debug)]
pub struct PortInfo {
    pub id: PortId,
    pub name: String,
    pub mode: VlanMode,
    /// Largest payload (frame without Ethernet header and tag) the port takes.
    pub mtu: u16,
    pub state: Arc<PortState>,
}

/// An immutable snapshot of the ports and, per VLAN, which ports carry it.
pub struct Topology {
    ports: Vec<Option<PortInfo>>,
    /// `members[vlan]`: ports carrying `vlan`, ascending.
    members: Vec<Vec<PortId>>,
}

impl Topology {
    fn new(ports: Vec<Option<PortInfo>>) -> Topology {
        let mut members = vec![Vec::new(); 4096];
        for p in ports.iter().flatten() {
            for vlan in p.mode.vlans().iter() {
                members[vlan.index()].push(p.id);
            }
        }
        Topology { ports, members }
    }

    pub fn port(&self, id: PortId) -> Option<&PortInfo> {
        self.ports.get(id as usize)?.as_ref()
    }

    pub fn ports(&self) -> impl Iterator<Item = &PortInfo> {
        self.ports.iter().flatten()
    }

    /// Ports a flood of `ingress` goes to: every other port carrying its VLAN.
    /// Ports that are down or fail the MTU check are filtered by [`Self::egress`].
    pub fn flood_targets<'a>(&'a self, ingress: &'a Ingress) -> impl Iterator<Item = PortId> + 'a {
        self.members[ingress.vlan.index()]
            .iter()
            .copied()
            .filter(move |p| *p != ingress.port)
    }

    /// How `out` emits the frame, or `None` if it does not: the port is gone or
    /// down, does not carry the VLAN, or the frame exceeds its MTU (counted).
    pub fn egress(&self, out: PortId, ingress: &Ingress) -> Option<Egress> {
        let port = self.port(out)?;
        if !port.state.forwards() {
            return None;
        }
        let tag = port.mode.egress_tag(ingress.vlan)?;
        if ingress.largest_untagged > port.mtu as usize + ETH_HLEN {
            port.state.counters.add_drop(DropReason::MtuExceeded);
            return None;
        }
        Some(Egress::new(out, ingress, tag))
    }
}

/// Where a received frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// A known unicast station behind one port.
    Port(PortId),
    /// Broadcast, multicast or unknown unicast: every other port of the VLAN.
    Flood,
}

/// The switch's decision on a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ingress {
    pub port: PortId,
    pub vlan: VlanId,
    pub dest: Dest,
    dst: MacAddr,
    src: MacAddr,
    /// The EtherType after the MACs and any tag, as decided on.
    ethertype: [u8; 2],
    tagged: bool,
    pcp_dei: u16,
    len: usize,
    /// The largest frame, untagged, this one puts on a wire: its own length,
    /// or for a GSO super-frame the length of its largest segment. What the
    /// MTU checks compare.
    largest_untagged: usize,
}

/// How one egress port emits a frame: write `head()`, then the received frame
/// from byte `skip()` on. Covers all three rewrites: keep, strip or add a tag.
///
/// The head is the whole Ethernet header (MACs, tag, EtherType) built from
/// the copy the switch decided on, and `skip` passes over all of it in the
/// received frame: a guest rewriting its buffer after the decision (a second
/// vCPU) cannot turn an untagged frame into a tagged one on the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Egress {
    pub port: PortId,
    head: [u8; HEAD_LEN],
    head_len: u8,
    skip: u8,
    len: u32,
}

impl Egress {
    fn new(port: PortId, ing: &Ingress, tag: EgressTag) -> Egress {
        let mut head = [0u8; HEAD_LEN];
        head[0..6].copy_from_slice(&ing.dst.0);
        head[6..12].copy_from_slice(&ing.src.0);
        let macs_and_tag = match tag {
            EgressTag::Untagged => 12,
            EgressTag::Tagged(vlan) => {
                head[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
                head[14..16].copy_from_slice(&(ing.pcp_dei | vlan.get()).to_be_bytes());
                16
            }
        };
        head[macs_and_tag..macs_and_tag + 2].copy_from_slice(&ing.ethertype);
        let head_len = macs_and_tag + 2;
        let skip = if ing.tagged {
            ETH_HLEN + VLAN_TAG_LEN
        } else {
            ETH_HLEN
        };
        let len = (ing.len - skip + head_len) as u32;
        Egress {
            port,
            head,
            head_len: head_len as u8,
            skip: skip as u8,
            len,
        }
    }

    /// The rewritten first bytes of the outgoing frame.
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len as usize]
    }

    /// Bytes of the received frame replaced by [`Self::head`].
    pub fn skip(&self) -> usize {
        self.skip as usize
    }

    /// Length of the outgoing frame.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Emits a frame already rewritten for `port` (a segment the switch cut
    /// from a GSO frame after the decision) as it is: no head, nothing skipped.
    pub fn verbatim(port: PortId, len: usize) -> Egress {
        Egress {
            port,
            head: [0u8; HEAD_LEN],
            head_len: 0,
            skip: 0,
            len: len as u32,
        }
    }

    /// Bytes the rewrite adds to the frame (negative: removes): +4 when a tag
    /// is pushed, -4 when one is popped. Offsets into the frame past the
    /// Ethernet header (a checksum start) move by this much.
    pub fn shift(&self) -> isize {
        self.head_len as isize - self.skip as isize
    }

    /// Writes the outgoing frame for a received frame held in one buffer.
    pub fn write_into(&self, frame: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.head());
        out.extend_from_slice(&frame[self.skip()..]);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SwitchError {
    DuplicatePort(String),
    NoSuchPort(String),
    TooManyPorts,
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchError::DuplicatePort(n) => write!(f, "port {n:?} already exists"),
            SwitchError::NoSuchPort(n) => write!(f, "no port {n:?}"),
            SwitchError::TooManyPorts => write!(f, "a switch holds at most {MAX_PORTS} ports"),
        }
    }
}

impl std::error::Error for SwitchError {}

pub struct Switch {
    pub name: String,
    fdb: Fdb,
    topology: ArcSwap<Topology>,
    /// Serialises topology writers (readers never wait).
    topology_writer: Mutex<()>,
    epoch: Instant,
}

impl Switch {
    pub fn new(name: &str, fdb_capacity: u32, port_mac_limit: u32, aging_secs: u32) -> Switch {
        Switch {
            name: name.to_string(),
            fdb: Fdb::new(fdb_capacity, port_mac_limit, aging_secs),
            topology: ArcSwap::from_pointee(Topology::new(Vec::new())),
            topology_writer: Mutex::new(()),
            epoch: Instant::now(),
        }
    }

    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Seconds since the switch started: the clock the FDB ages by.
    pub fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// The current port set; hold it for a batch, not longer.
    pub fn topology(&self) -> Guard<Arc<Topology>> {
        self.topology.load()
    }

    fn update_topology(
        &self,
        f: impl FnOnce(&mut Vec<Option<PortInfo>>) -> Result<PortId, SwitchError>,
    ) -> Result<PortId, SwitchError> {
        let _writer = self
            .topology_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut ports = self.topology.load().ports.clone();
        let id = f(&mut ports)?;
        self.topology.store(Arc::new(Topology::new(ports)));
        Ok(id)
    }

    /// Adds a port (link down until its driver says otherwise).
    pub fn add_port(&self, name: &str, mode: VlanMode, mtu: u16) -> Result<PortId, SwitchError> {
        self.update_topology(|ports| {
            if ports.iter().flatten().any(|p| p.name == name) {
                return Err(SwitchError::DuplicatePort(name.to_string()));
            }
            let id = match ports.iter().position(Option::is_none) {
                Some(free) => free,
                None if ports.len() < MAX_PORTS => {
                    ports.push(None);
                    ports.len() - 1
                }
                None => return Err(SwitchError::TooManyPorts),
            };
            let state = Arc::new(PortState::default());
            ports[id] = Some(PortInfo {
                id: id as PortId,
                name: name.to_string(),
                mode,
                mtu,
                state,
            });
            Ok(id as PortId)
        })
    }

    /// Changes a port's VLAN rule and MTU in place: same id, same state and
    /// counters, its driver and peer untouched. A new VLAN rule forgets the
    /// port's learned stations (they were learned in the old VLANs).
    pub fn set_port(
        &self,
        name: &str,
        mode: Option<VlanMode>,
        mtu: Option<u16>,
    ) -> Result<PortId, SwitchError> {
        let new_vlans = mode.is_some();
        let id = self.update_topology(|ports| {
            let port = ports
                .iter_mut()
                .flatten()
                .find(|p| p.name == name)
                .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
            if let Some(mode) = mode {
                port.mode = mode;
            }
            if let Some(mtu) = mtu {
                port.mtu = mtu;
            }
            Ok(port.id)
        })?;
        if new_vlans {
            self.fdb.flush_port(id);
        }
        Ok(id)
    }

    /// Sets a port administratively up or down. Down, the frames its peer
    /// sends are dropped and counted (`admin_down`), nothing is delivered to
    /// it, and its learned stations are forgotten so their traffic floods
    /// until they show up elsewhere; the peer stays connected.
    pub fn set_admin(&self, port: PortId, up: bool) {
        if let Some(p) = self.topology().port(port) {
            p.state.admin_down.store(!up, Ordering::Release);
        }
        if !up {
            self.fdb.flush_port(port);
        }
    }

    /// Removes a port and every FDB entry pointing at it.
    pub fn remove_port(&self, name: &str) -> Result<PortId, SwitchError> {
        let id = self.update_topology(|ports| {
            let slot = ports
                .iter_mut()
                .find(|p| p.as_ref().is_some_and(|p| p.name == name))
                .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
            let id = slot.as_ref().map(|p| p.id).unwrap_or_default();
            *slot = None;
            Ok(id)
        })?;
        self.fdb.purge_port(id);
        Ok(id)
    }

    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.topology()
            .ports()
            .find(|p| p.name == name)
            .map(|p| p.id)
    }

    /// Whether `port` (from some topology snapshot) is still the port of its
    /// id: not removed, and its id not reused by a port added since. Each
    /// added port has a state of its own, so the state's identity is its
    /// generation.
    pub fn is_current(&self, port: &PortInfo) -> bool {
        self.topology()
            .port(port.id)
            .is_some_and(|p| Arc::ptr_eq(&p.state, &port.state))
    }

    /// Link state follows the port's peer (guest connected and driver ready).
    /// Going down forgets the port's learned stations so traffic to them floods
    /// until they show up again, possibly elsewhere.
    pub fn set_link(&self, port: PortId, up: bool) {
        if let Some(p) = self.topology().port(port) {
            p.state.link_up.store(up, Ordering::Release);
        }
        if !up {
            self.fdb.flush_port(port);
        }
    }

    /// Classifies, learns and looks up one received frame.
    ///
    /// `head` is the start of the frame (at least [`crate::HEAD_LEN`] bytes when the
    /// frame is that long), `len` the whole frame's length. Counts the drop reason
    /// if the frame is dropped; the caller counts received packets and bytes with
    /// [`Counters::add_rx`](crate::counters::Counters::add_rx), once per batch (an atomic add per frame costs
    /// about a tenth of the forwarding time at 64 bytes).
    pub fn receive(
        &self,
        topo: &Topology,
        port: PortId,
        head: &[u8],
        len: usize,
        now: u32,
    ) -> Result<Ingress, DropReason> {
        self.receive_offloaded(topo, port, head, len, len, now)
    }

    /// [`Self::receive`] for a frame that may be a GSO super-frame: `largest`
    /// is the longest frame its segments put on a wire (`len` for any other
    /// frame). The ingress and egress MTU checks compare `largest`, so a
    /// 64 KiB TSO frame from a 1500-MTU guest passes when its segments fit.
    pub fn receive_offloaded(
        &self,
        topo: &Topology,
        port: PortId,
        head: &[u8],
        len: usize,
        largest: usize,
        now: u32,
    ) -> Result<Ingress, DropReason> {
        let Some(info) = topo.port(port) else {
            return Err(DropReason::NoBuffer);
        };
        let counters = &info.state.counters;
        self.decide(info, head, len, largest.min(len), now)
            .inspect_err(|reason| counters.add_drop(*reason))
    }

    fn decide(
        &self,
        info: &PortInfo,
        head: &[u8],
        len: usize,
        largest: usize,
        now: u32,
    ) -> Result<Ingress, DropReason> {
        if !info.state.is_admin_up() {
            return Err(DropReason::AdminDown);
        }
        let frame = EthernetHead::parse(head, len).ok_or(DropReason::Runt)?;
        // The tag, if any, is in every segment as in the frame.
        let largest_untagged = largest.saturating_sub(len - frame.untagged_len());
        if largest_untagged > info.mtu as usize + ETH_HLEN {
            return Err(DropReason::Oversize);
        }
        let src = frame.src();
        if src.is_multicast() || src.is_zero() {
            return Err(DropReason::InvalidSource);
        }
        let Classified {
            vlan,
            tagged,
            pcp_dei,
        } = info.mode.classify(&frame)?;
        // A MAC pinned elsewhere by a static entry is not moved; the frame is still
        // forwarded, as a Linux bridge does.
        let learned = self.fdb.learn(vlan, src, info.id, now);
        if matches!(learned, LearnOutcome::Learned | LearnOutcome::Moved { .. })
            && !self.is_current(info)
        {
            // The port was removed while this frame was in flight (its entries
            // purged after the topology changed), its id maybe reused: the
            // entry would send the station's traffic to another port.
            self.fdb.forget(vlan, src, info.id);
        }
        let dst = frame.dst();
        // Parsing checked the length: 14 bytes untagged, 18 tagged.
        let at = if tagged {
            ETH_HLEN + VLAN_TAG_LEN
        } else {
            ETH_HLEN
        } - 2;
        let ethertype = [head[at], head[at + 1]];
        let dest = if dst.is_multicast() {
            Dest::Flood
        } else {
            match self.fdb.lookup(vlan, dst, now) {
                Some(p) if p == info.id => return Err(DropReason::SamePort),
                Some(p) => Dest::Port(p),
                None => Dest::Flood,
            }
        };
        Ok(Ingress {
            port: info.id,
            vlan,
            dest,
            dst,
            src,
            ethertype,
            tagged,
            pcp_dei,
            len,
            largest_untagged,
        })
    }

    /// Convenience for drivers whose frames sit in one buffer (TAP, VXLAN, tests):
    /// decides, then calls `deliver` once per egress port with the rewritten frame.
    /// Returns how many ports it was delivered to.
    pub fn forward_buffer(
        &self,
        port: PortId,
        frame: &[u8],
        now: u32,
        scratch: &mut Vec<u8>,
        mut deliver: impl FnMut(PortId, &[u8]),
    ) -> Result<usize, DropReason> {
        let topo = self.topology();
        let head = &frame[..frame.len().min(crate::HEAD_LEN)];
        if let Some(p) = topo.port(port) {
            p.state.counters.add_rx(1, frame.len() as u64);
        }
        let ingress = self.receive(&topo, port, head, frame.len(), now)?;
        let mut emit = |out: PortId| {
            if let Some(egress) = topo.egress(out, &ingress) {
                egress.write_into(frame, scratch);
                deliver(out, scratch);
                if let Some(p) = topo.port(out) {
                    p.state.counters.add_tx(1, scratch.len() as u64);
                }
                1
            } else {
                0
            }
        };
        Ok(match ingress.dest {
            Dest::Port(out) => emit(out),
            Dest::Flood => topo.flood_targets(&ingress).map(emit).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlan::{vid, VlanSet};
    use crate::DropReason::*;

    fn mac(n: u8) -> [u8; 6] {
        [0x02, 0, 0, 0, 0, n]
    }

    /// A frame from `src` to `dst`, tagged with `vid` if given, 64 bytes untagged.
    fn frame(dst: [u8; 6], src: [u8; 6], vid: Option<u16>) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        if let Some(v) = vid {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&(0x6000 | v).to_be_bytes()); // PCP 3
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.resize(f.len() + 50, 0xab);
        f
    }

    fn trunk(allowed: &[u16], native: Option<u16>) -> VlanMode {
        VlanMode::Trunk {
            allowed: allowed.iter().map(|&v| vid(v)).collect::<VlanSet>(),
            native: native.map(vid),
        }
    }

    struct Bench {
        sw: Switch,
        names: Vec<&'static str>,
    }

    impl Bench {
        fn new(ports: &[(&'static str, VlanMode)]) -> Bench {
            let sw = Switch::new("br0", 1000, 100, 300);
            for (name, mode) in ports {
                let id = sw.add_port(name, mode.clone(), 1500).unwrap();
                sw.set_link(id, true);
            }
            Bench {
                sw,
                names: ports.iter().map(|p| p.0).collect(),
            }
        }

        fn id(&self, name: &str) -> PortId {
            self.sw.port_id(name).unwrap()
        }

        fn counters(&self, name: &str) -> crate::counters::PortCountersSnapshot {
            let topo = self.sw.topology();
            topo.port(self.id(name)).unwrap().state.counters.snapshot()
        }

        /// Sends `f` in on `port`; returns (egress port, tag it carries) sorted, or the drop.
        fn send(
            &self,
            port: &str,
            f: &[u8],
            now: u32,
        ) -> Result<Vec<(&'static str, Option<u16>)>, DropReason> {
            let mut out = Vec::new();
            let mut scratch = Vec::new();
            self.sw
                .forward_buffer(self.id(port), f, now, &mut scratch, |p, bytes| {
                    // Payload must survive the rewrite untouched.
                    assert_eq!(&bytes[bytes.len() - 50..], &f[f.len() - 50..]);
                    assert_eq!(&bytes[..12], &f[..12]);
                    let h = EthernetHead::parse(bytes, bytes.len()).unwrap();
                    if let Some(tci) = h.tci() {
                        assert_eq!(
                            tci & 0xf000,
                            if f[12] == 0x81 { 0x6000 } else { 0 },
                            "PCP kept"
                        );
                    }
                    out.push((self.names[p as usize], h.vid()));
                })?;
            out.sort();
            Ok(out)
        }
    }

    /// `set_port` changes the VLAN rule and MTU of a port in place (same id,
    /// same counters); admin down drops what the port sends (counted) and
    /// delivers nothing to it; admin up forwards again.
    #[test]
    fn a_port_changed_in_place_keeps_its_id_and_counters() {
        let b = Bench::new(&[
            ("a1", VlanMode::Access(vid(10))),
            ("a2", VlanMode::Access(vid(10))),
            ("a3", VlanMode::Access(vid(20))),
        ]);
        let id = b.id("a1");
        let bcast = frame([0xff; 6], mac(1), None);
        assert_eq!(b.send("a1", &bcast, 0), Ok(vec![("a2", None)]));
        assert_eq!(b.sw.fdb().lookup(vid(10), MacAddr(mac(1)), 0), Some(id));

        // VLAN 20 now: same id, the station learned in VLAN 10 forgotten.
        let state = b.sw.topology().port(id).unwrap().state.clone();
        assert_eq!(
            b.sw.set_port("a1", Some(VlanMode::Access(vid(20))), Some(9000)),
            Ok(id)
        );
        let topo = b.sw.topology();
        let p = topo.port(id).unwrap();
        assert!(Arc::ptr_eq(&p.state, &state) && p.mtu == 9000);
        assert!(b.sw.is_current(p));
        assert_eq!(b.sw.fdb().lookup(vid(10), MacAddr(mac(1)), 0), None);
        assert_eq!(b.send("a1", &bcast, 0), Ok(vec![("a3", None)]));
        let mut big = frame([0xff; 6], mac(1), None);
        big.resize(14 + 2000, 0xab);
        // Taken in at MTU 9000 (not `oversize`), refused by a3's 1500 on the way out.
        assert_eq!(b.send("a1", &big, 0), Ok(vec![]));
        let a3 = b.counters("a3");
        assert_eq!(a3.dropped(MtuExceeded), 1);
        assert_eq!(
            b.sw.set_port("nope", None, Some(1500)),
            Err(SwitchError::NoSuchPort("nope".into()))
        );

        // Admin down: its frames are dropped and counted, none reach it.
        b.sw.set_admin(b.id("a3"), false);
        assert_eq!(
            b.send("a3", &frame([0xff; 6], mac(3), None), 0),
            Err(AdminDown)
        );
        assert_eq!(b.send("a1", &bcast, 0), Ok(vec![]));
        let drops = b.counters("a3");
        assert_eq!(drops.dropped(AdminDown), 1);
        b.sw.set_admin(b.id("a3"), true);
        assert_eq!(b.send("a1", &bcast, 0), Ok(vec![("a3", None)]));
    }

    /// A per-port MAC limit replaces the switch's for that port only, and is
    /// forgotten with the port; `remove` forgets static and learned entries.
    #[test]
    fn per_port_mac_limit_and_entry_removal() {
        let b = Bench::new(&[
            ("a1", VlanMode::Access(vid(10))),
            ("a2", VlanMode::Access(vid(10))),
        ]);
        let (a1, a2) = (b.id("a1"), b.id("a2"));
        let fdb = b.sw.fdb();
        fdb.set_port_limit(a1, Some(2));
        assert_eq!((fdb.port_limit(a1), fdb.port_limit(a2)), (2, 100));
        for n in 1..=3 {
            b.send("a1", &frame([0xff; 6], mac(n), None), 0).unwrap();
        }
        assert_eq!(fdb.port_len(a1), 2);
        assert_eq!(fdb.stats().refused_port_limit, 1);
        assert!(fdb.remove(vid(10), MacAddr(mac(1))));
        assert!(!fdb.remove(vid(10), MacAddr(mac(1))));
        assert_eq!(fdb.port_len(a1), 1, "the learned count follows");
        fdb.add_static(vid(10), MacAddr(mac(9)), a2).unwrap();
        assert!(fdb.remove(vid(10), MacAddr(mac(9))));
        assert_eq!(fdb.lookup(vid(10), MacAddr(mac(9)), 0), None);
        b.sw.remove_port("a1").unwrap();
        assert_eq!(fdb.port_limit(a1), 100, "reset with the port");
    }

    /// A frame decided on a snapshot taken before its port was removed and
    /// its id reused must not teach the FDB that its source is behind the
    /// new port; the old port is no longer current.
    #[test]
    fn a_frame_in_flight_from_a_removed_port_is_not_learned_on_its_successor() {
        let b = Bench::new(&[
            ("a1", VlanMode::Access(vid(10))),
            ("a2", VlanMode::Access(vid(10))),
        ]);
        let old_id = b.id("a1");
        let topo = b.sw.topology();
        let old = topo.port(old_id).unwrap().clone();
        b.sw.remove_port("a1").unwrap();
        let new_id =
            b.sw.add_port("n1", VlanMode::Access(vid(10)), 1500)
                .unwrap();
        assert_eq!(new_id, old_id, "the id is reused");
        assert!(!b.sw.is_current(&old));
        assert!(b.sw.is_current(b.sw.topology().port(new_id).unwrap()));
        let f = frame([0xff; 6], mac(7), None);
        b.sw.receive(&topo, old_id, &f[..HEAD_LEN], f.len(), 0)
            .unwrap();
        assert_eq!(b.sw.fdb().lookup(vid(10), MacAddr(mac(7)), 0), None);
        // From the current topology the same frame is learned as usual.
        let now = b.sw.topology();
        b.sw.receive(&now, new_id, &f[..HEAD_LEN], f.len(), 0)
            .unwrap();
        assert_eq!(b.sw.fdb().lookup(vid(10), MacAddr(mac(7)), 0), Some(new_id));
    }

    /// The egress head is the whole header as decided on: a buffer rewritten
    /// after the decision (untagged 0x0800 turned into a tag for VLAN 20)
    /// still leaves untagged on the native VLAN, and tagged 10 on a trunk.
    #[test]
    fn egress_never_rereads_the_decided_header() {
        let b = Bench::new(&[
            ("a1", VlanMode::Access(vid(10))),
            ("t1", trunk(&[10, 20], Some(10))),
            ("t2", trunk(&[10, 20], None)),
        ]);
        let f = frame([0xff; 6], mac(1), None);
        let topo = b.sw.topology();
        let ingress = b.sw.receive(&topo, b.id("a1"), &f[..HEAD_LEN], f.len(), 0);
        let ingress = ingress.unwrap();
        let mut raced = f.clone();
        raced[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x14]);
        let mut out = Vec::new();
        let native = topo.egress(b.id("t1"), &ingress).unwrap();
        assert_eq!((native.head().len(), native.skip()), (14, 14));
        native.write_into(&raced, &mut out);
        assert_eq!(&out[..14], &f[..14], "untagged, EtherType as decided");
        assert_eq!(&out[14..], &raced[14..], "payload bytes as they are");
        let tagged = topo.egress(b.id("t2"), &ingress).unwrap();
        assert_eq!((tagged.head().len(), tagged.skip()), (18, 14));
        tagged.write_into(&raced, &mut out);
        assert_eq!(&out[12..18], &[0x81, 0x00, 0x00, 10, 0x08, 0x00]);
        assert_eq!(out.len(), tagged.len());

        // Tagged in, untagged out: the inner EtherType comes from the copy too.
        let f = frame([0xff; 6], mac(2), Some(10));
        let ingress = b.sw.receive(&topo, b.id("t2"), &f[..HEAD_LEN], f.len(), 0);
        let access = topo.egress(b.id("a1"), &ingress.unwrap()).unwrap();
        assert_eq!((access.head().len(), access.skip()), (14, 18));
        let mut raced = f.clone();
        raced[16..18].copy_from_slice(&[0x81, 0x00]);
        access.write_into(&raced, &mut out);
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        assert_eq!(out.len(), access.len());
    }

    /// The VLAN truth table: for each ingress port mode and frame tag, the exact
    /// set of egress ports and the tag each emits (broadcast, so every member floods).
    #[test]
    fn vlan_truth_table() {
        let b = Bench::new(&[
            ("a1", VlanMode::Access(vid(10))),
            ("a2", VlanMode::Access(vid(10))),
            ("a3", VlanMode::Access(vid(20))),
            ("t1", trunk(&[10, 20], Some(1))),
            ("t2", trunk(&[10, 30], None)),
            ("t3", trunk(&[20], Some(10))),
        ]);
        let bc = [0xff; 6];
        type Row = (
            &'static str,
            Option<u16>,
            Result<Vec<(&'static str, Option<u16>)>, DropReason>,
        );
        let table: Vec<Row> = vec![
            (
                "a1",
                None,
                Ok(vec![
                    ("a2", None),
                    ("t1", Some(10)),
                    ("t2", Some(10)),
                    ("t3", None),
                ]),
            ),
            ("a1", Some(10), Err(TaggedOnAccess)),
            ("a1", Some(20), Err(TaggedOnAccess)),
            ("a1", Some(0), Err(TaggedOnAccess)),
            ("a3", None, Ok(vec![("t1", Some(20)), ("t3", Some(20))])),
            ("a3", Some(20), Err(TaggedOnAccess)),
            ("t1", None, Ok(vec![])),
            ("t1", Some(0), Ok(vec![])),
            ("t1", Some(1), Ok(vec![])),
            (
                "t1",
                Some(10),
                Ok(vec![
                    ("a1", None),
                    ("a2", None),
                    ("t2", Some(10)),
                    ("t3", None),
                ]),
            ),
            ("t1", Some(20), Ok(vec![("a3", None), ("t3", Some(20))])),
            ("t1", Some(30), Err(VlanNotAllowed)),
            ("t2", None, Err(UntaggedOnTrunk)),
            ("t2", Some(0), Err(UntaggedOnTrunk)),
            (
                "t2",
                Some(10),
                Ok(vec![
                    ("a1", None),
                    ("a2", None),
                    ("t1", Some(10)),
                    ("t3", None),
                ]),
            ),
            ("t2", Some(30), Ok(vec![])),
            ("t2", Some(20), Err(VlanNotAllowed)),
            (
                "t3",
                None,
                Ok(vec![
                    ("a1", None),
                    ("a2", None),
                    ("t1", Some(10)),
                    ("t2", Some(10)),
                ]),
            ),
            (
                "t3",
                Some(10),
                Ok(vec![
                    ("a1", None),
                    ("a2", None),
                    ("t1", Some(10)),
                    ("t2", Some(10)),
                ]),
            ),
            ("t3", Some(20), Ok(vec![("a3", None), ("t1", Some(20))])),
            ("t3", Some(4094), Err(VlanNotAllowed)),
        ];
        for (i, (port, tag, expected)) in table.into_iter().enumerate() {
            let src = mac(100 + i as u8);
            let got = b.send(port, &frame(bc, src, tag), 0);
            assert_eq!(got, expected, "ingress {port} tag {tag:?}");
        }
    }

    #[test]
    fn unicast_learned_goes_to_one_port() {
        let b = Bench::new(&[
            ("p1", VlanMode::Access(vid(1))),
            ("p2", VlanMode::Access(vid(1))),
            ("p3", VlanMode::Access(vid(1))),
        ]);
        // unknown unicast floods
        assert_eq!(
            b.send("p1", &frame(mac(2), mac(1), None), 0).unwrap(),
            vec![("p2", None), ("p3", None)]
        );
        // p2 answers: p1 known, so one port only
        assert_eq!(
            b.send("p2", &frame(mac(1), mac(2), None), 0).unwrap(),
            vec![("p1", None)]
        );
        assert_eq!(
            b.send("p1", &frame(mac(2), mac(1), None), 0).unwrap(),
            vec![("p2", None)]
        );
        // a frame to a station on the ingress port is filtered
        assert_eq!(b.send("p1", &frame(mac(1), mac(9), None), 0), Err(SamePort));
        // station move: mac 2 shows up on p3
        b.send("p3", &frame([0xff; 6], mac(2), None), 1).unwrap();
        assert_eq!(
            b.send("p1", &frame(mac(2), mac(1), None), 1).unwrap(),
            vec![("p3", None)]
        );
        assert_eq!(b.sw.fdb().stats().moved, 1);
        // aging: after 300 s of silence mac 2 floods again
        assert_eq!(
            b.send("p1", &frame(mac(2), mac(1), None), 301).unwrap(),
            vec![("p2", None), ("p3", None)]
        );
    }

    #[test]
    fn same_mac_in_two_vlans_is_two_stations() {
        let b = Bench::new(&[
            ("a10", VlanMode::Access(vid(10))),
            ("a20", VlanMode::Access(vid(20))),
            ("t", trunk(&[10, 20], None)),
        ]);
        b.send("a10", &frame([0xff; 6], mac(1), None), 0).unwrap();
        b.send("a20", &frame([0xff; 6], mac(1), None), 0).unwrap();
        assert_eq!(
            b.send("t", &frame(mac(1), mac(5), Some(10)), 0).unwrap(),
            vec![("a10", None)]
        );
        assert_eq!(
            b.send("t", &frame(mac(1), mac(5), Some(20)), 0).unwrap(),
            vec![("a20", None)]
        );
    }

    #[test]
    fn bad_frames_dropped_and_counted() {
        let b = Bench::new(&[
            ("p1", VlanMode::Access(vid(1))),
            ("p2", VlanMode::Access(vid(1))),
        ]);
        assert_eq!(b.send("p1", &[0u8; 13], 0), Err(Runt));
        let mut mc_src = frame(mac(2), mac(1), None);
        mc_src[6] |= 1;
        assert_eq!(b.send("p1", &mc_src, 0), Err(InvalidSource));
        assert_eq!(
            b.send("p1", &frame(mac(2), [0; 6], None), 0),
            Err(InvalidSource)
        );
        let mut big = frame(mac(2), mac(1), None);
        big.resize(1515, 0);
        assert_eq!(b.send("p1", &big, 0), Err(Oversize));
        big.truncate(1514);
        assert!(b.send("p1", &big, 0).is_ok());
        let c =
            b.sw.topology()
                .port(b.id("p1"))
                .unwrap()
                .state
                .counters
                .snapshot();
        assert_eq!(c.rx_packets, 5);
        assert_eq!(
            (
                c.dropped(Runt),
                c.dropped(InvalidSource),
                c.dropped(Oversize)
            ),
            (1, 2, 1)
        );
        let c2 =
            b.sw.topology()
                .port(b.id("p2"))
                .unwrap()
                .state
                .counters
                .snapshot();
        assert_eq!((c2.tx_packets, c2.tx_bytes), (1, 1514));
    }

    #[test]
    fn egress_mtu_and_link_down() {
        let sw = Switch::new("br0", 100, 100, 300);
        let p1 = sw.add_port("p1", VlanMode::Access(vid(1)), 9000).unwrap();
        let p2 = sw.add_port("p2", VlanMode::Access(vid(1)), 1500).unwrap();
        let p3 = sw.add_port("p3", VlanMode::Access(vid(1)), 1500).unwrap();
        for p in [p1, p2, p3] {
            sw.set_link(p, true);
        }
        let mut f = frame([0xff; 6], mac(1), None);
        f.resize(3000, 0);
        let mut s = Vec::new();
        assert_eq!(sw.forward_buffer(p1, &f, 0, &mut s, |_, _| {}), Ok(0));
        let topo = sw.topology();
        assert_eq!(
            topo.port(p2)
                .unwrap()
                .state
                .counters
                .snapshot()
                .dropped(MtuExceeded),
            1
        );
        // p3 goes down: its stations are forgotten and floods skip it
        sw.forward_buffer(p3, &frame([0xff; 6], mac(3), None), 0, &mut s, |_, _| {})
            .unwrap();
        assert_eq!(sw.fdb().lookup(vid(1), MacAddr(mac(3)), 0), Some(p3));
        sw.set_link(p3, false);
        assert_eq!(sw.fdb().lookup(vid(1), MacAddr(mac(3)), 0), None);
        let mut got = Vec::new();
        sw.forward_buffer(p1, &frame([0xff; 6], mac(1), None), 0, &mut s, |p, _| {
            got.push(p)
        })
        .unwrap();
        assert_eq!(got, vec![p2]);
    }

    /// A GSO super-frame is checked against both MTUs by its largest
    /// segment, not its own length; tagged, the tag is not counted.
    #[test]
    fn gso_frames_are_mtu_checked_by_their_largest_segment() {
        let sw = Switch::new("br0", 100, 100, 300);
        let p1 = sw.add_port("p1", trunk(&[7], None), 1500).unwrap();
        let p2 = sw.add_port("p2", VlanMode::Access(vid(7)), 1500).unwrap();
        let small = sw
            .add_port("small", VlanMode::Access(vid(7)), 1400)
            .unwrap();
        for p in [p1, p2, small] {
            sw.set_link(p, true);
        }
        let topo = sw.topology();
        let mut f = frame([0xff; 6], mac(1), Some(7));
        f.resize(65_000, 0);
        let head = &f[..HEAD_LEN];
        let ingress = sw
            .receive_offloaded(&topo, p1, head, f.len(), 1518, 0)
            .unwrap();
        assert!(topo.egress(p2, &ingress).is_some());
        assert_eq!(topo.egress(small, &ingress), None);
        let drops = |p: PortId| topo.port(p).unwrap().state.counters.snapshot();
        assert_eq!(drops(small).dropped(MtuExceeded), 1);
        assert_eq!(
            sw.receive_offloaded(&topo, p1, head, f.len(), 1519, 0),
            Err(Oversize)
        );
        assert_eq!(drops(p1).dropped(Oversize), 1);
        // Without offload the length itself is what is checked.
        assert_eq!(sw.receive(&topo, p1, head, f.len(), 0), Err(Oversize));
    }

    #[test]
    fn remove_and_reuse_port_ids() {
        let sw = Switch::new("br0", 100, 100, 300);
        let a = sw.add_port("a", VlanMode::Access(vid(1)), 1500).unwrap();
        assert_eq!(
            sw.add_port("a", VlanMode::Access(vid(1)), 1500),
            Err(SwitchError::DuplicatePort("a".into()))
        );
        sw.set_link(a, true);
        sw.fdb().add_static(vid(1), MacAddr(mac(1)), a).unwrap();
        assert_eq!(sw.remove_port("a"), Ok(a));
        assert!(sw.fdb().is_empty());
        assert_eq!(
            sw.remove_port("a"),
            Err(SwitchError::NoSuchPort("a".into()))
        );
        assert_eq!(sw.add_port("b", VlanMode::Access(vid(1)), 1500), Ok(a));
    }
}
