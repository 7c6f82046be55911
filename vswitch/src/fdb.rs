//! The forwarding database: (VLAN, MAC) -> port, learned from source addresses.
//!
//! An [`AgingTable`] (sharded, read-mostly, aged by the switch clock) whose
//! owners are ports: memory is bounded by a global capacity and a per-port
//! limit, so a guest that floods random source MACs fills only its own share
//! and never evicts another port's stations. When a limit is hit the station
//! is simply not learned: its frames are still forwarded, and frames to it are
//! flooded.
//!
//! A port can also hold stations back: with a move hold of `n` seconds set on
//! it ([`Fdb::set_move_hold`], used for tunnel ports), a station seen on another
//! port within the last `n` seconds does not move to it. A remote peer that
//! spoofs a local guest's source MAC then cannot steal its traffic.
//!
//! The hold protects a running guest only. A port whose peer is stopped
//! ([`Fdb::set_peer_stopped`]: a paused or migrated guest, its transmit rings
//! stopped by the frontend) holds none of its stations back, so the first
//! frame of a migrated guest's announcement from behind the tunnel moves the
//! station at once (counted in `moved`) instead of after the hold. A stopped
//! guest can neither send nor receive, so nothing is stolen from it; once it
//! runs and sends again (a cancelled migration) it takes its address back,
//! as local ports hold nothing back.

use crate::aging::{AgingTable, Learn, Owners};
use crate::frame::MacAddr;
use crate::vlan::VlanId;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

const SHARDS: usize = 64;

/// Index of a port in its switch (the FDB's answer, the switch's port table key).
pub type PortId = u16;

/// Ports the FDB can count entries for; port ids must be below this.
pub const MAX_PORTS: usize = 4096;

/// A station: the same MAC in two VLANs is two stations.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    vlan: VlanId,
    mac: MacAddr,
}

/// Hashed as one word, (VLAN << 48) | MAC: one hasher round per lookup.
impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(u64::from(self.vlan.get()) << 48 | self.mac.to_u64());
    }
}

fn key(vlan: VlanId, mac: MacAddr) -> Key {
    Key { vlan, mac }
}

/// One FDB entry as reported to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub vlan: VlanId,
    pub mac: MacAddr,
    pub port: PortId,
    pub is_static: bool,
    /// Seconds since the station was last seen.
    pub age: u32,
}

/// What learning a source address did ([`Learn::OwnerLimit`]: the ingress
/// port reached its MAC limit; [`Learn::Held`]: the station was seen on its
/// port within the ingress port's move hold).
pub type LearnOutcome = Learn<PortId>;

/// Event counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdbStats {
    pub entries: u32,
    pub learned: u64,
    pub moved: u64,
    pub aged: u64,
    pub refused_full: u64,
    pub refused_port_limit: u64,
    /// Moves refused by a port's move hold.
    pub refused_move: u64,
}

/// The FDB's owners: a MAC limit and a move hold per port.
struct Ports {
    /// The switch's default MAC limit per port.
    default_limit: u32,
    /// Per port: its MAC limit (the default unless set).
    limit: Box<[AtomicU32]>,
    learned: Box<[AtomicU32]>,
    /// Per port: seconds a station must be silent elsewhere before it may move here.
    move_hold: Box<[AtomicU32]>,
    /// Per port: its peer is stopped, so its stations are not held.
    peer_stopped: Box<[AtomicBool]>,
}

impl Owners<PortId> for Ports {
    fn reserve(&self, port: PortId) -> bool {
        let slot = &self.learned[port as usize];
        if slot.fetch_add(1, Relaxed) >= self.limit[port as usize].load(Relaxed) {
            slot.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    fn release(&self, port: PortId) {
        self.learned[port as usize].fetch_sub(1, Relaxed);
    }

    fn holds(&self, from: PortId, to: PortId, silent_for: u32) -> bool {
        let hold = self.move_hold[to as usize].load(Relaxed);
        hold != 0 && silent_for < hold && !self.peer_stopped[from as usize].load(Relaxed)
    }
}

pub struct Fdb {
    table: AgingTable<Key, PortId, Ports>,
}

impl Fdb {
    /// `capacity` entries in all, at most `port_limit` learned on any one port,
    /// dynamic entries expire `aging_secs` after their station was last seen.
    pub fn new(capacity: u32, port_limit: u32, aging_secs: u32) -> Fdb {
        let ports = Ports {
            default_limit: port_limit,
            limit: (0..MAX_PORTS).map(|_| AtomicU32::new(port_limit)).collect(),
            learned: (0..MAX_PORTS).map(|_| AtomicU32::new(0)).collect(),
            move_hold: (0..MAX_PORTS).map(|_| AtomicU32::new(0)).collect(),
            peer_stopped: (0..MAX_PORTS).map(|_| AtomicBool::new(false)).collect(),
        };
        Fdb {
            table: AgingTable::new(SHARDS, capacity, aging_secs, ports),
        }
    }

    pub fn aging_secs(&self) -> u32 {
        self.table.aging_secs()
    }

    /// `port`'s MAC limit (`None`: the switch's default). Lowering it below
    /// what the port has learned forgets nothing: new stations are refused
    /// until enough of the old ones age out or are flushed. Reset when the
    /// port is purged.
    pub fn set_port_limit(&self, port: PortId, limit: Option<u32>) {
        let owners = self.table.owners();
        owners.limit[port as usize].store(limit.unwrap_or(owners.default_limit), Relaxed);
    }

    /// `port`'s MAC limit.
    pub fn port_limit(&self, port: PortId) -> u32 {
        self.table.owners().limit[port as usize].load(Relaxed)
    }

    /// A station seen on another port within the last `secs` seconds does not
    /// move to `port` (0, the default, allows every move). Reset when the port
    /// is purged, so a reused port id starts without one.
    pub fn set_move_hold(&self, port: PortId, secs: u32) {
        self.table.owners().move_hold[port as usize].store(secs, Relaxed);
    }

    /// Whether `port`'s peer is stopped (see the module docs): while it is,
    /// no move hold keeps the port's stations. Set by a guest port's driver
    /// when the frontend stops its transmit rings; cleared when the guest
    /// sends again, and when the port is purged.
    pub fn set_peer_stopped(&self, port: PortId, stopped: bool) {
        let flag = &self.table.owners().peer_stopped[port as usize];
        // Read first: the datapath clears it once per batch, and a store
        // would take the cache line from every other reader.
        if flag.load(Relaxed) != stopped {
            flag.store(stopped, Relaxed);
        }
    }

    /// The port a station was learned on, if its entry is live.
    pub fn lookup(&self, vlan: VlanId, mac: MacAddr, now: u32) -> Option<PortId> {
        self.table.lookup(key(vlan, mac), now)
    }

    /// Whether learning `mac` on `port` now would be refused by `port`'s move
    /// hold; a refusal is counted. Lets a driver drop such a frame before it
    /// is forwarded (read lock only). [`Fdb::learn`] applies the same rule.
    pub fn refuse_held_move(&self, vlan: VlanId, mac: MacAddr, port: PortId, now: u32) -> bool {
        self.table.refuse_held_move(key(vlan, mac), port, now)
    }

    /// Learns that `mac` in `vlan` sits behind `port`.
    pub fn learn(&self, vlan: VlanId, mac: MacAddr, port: PortId, now: u32) -> LearnOutcome {
        self.table.learn(key(vlan, mac), port, now)
    }

    /// Adds or replaces a static entry (never ages, never moves). Static entries
    /// count against the global capacity but not the port limit.
    pub fn add_static(&self, vlan: VlanId, mac: MacAddr, port: PortId) -> Result<(), LearnOutcome> {
        self.table.add_static(key(vlan, mac), port)
    }

    /// Drops dynamic entries not seen for the aging time. Returns how many.
    pub fn age(&self, now: u32) -> usize {
        self.table.age(now)
    }

    /// Forgets one station's dynamic entry if it points at `port`: a learn
    /// that lost the race with that port's removal. Returns whether it did.
    pub fn forget(&self, vlan: VlanId, mac: MacAddr, port: PortId) -> bool {
        self.table
            .remove_if(key(vlan, mac), |p, is_static| p == port && !is_static)
    }

    /// Forgets one station's entry, static or learned, wherever it points
    /// (`fdb del`). Returns whether there was one.
    pub fn remove(&self, vlan: VlanId, mac: MacAddr) -> bool {
        self.table.remove_if(key(vlan, mac), |_, _| true)
    }

    /// Forgets the dynamic entries of a port (link down, port removed).
    pub fn flush_port(&self, port: PortId) -> usize {
        self.table
            .remove_where(|_, p, is_static| p == port && !is_static)
    }

    /// Forgets every entry of a port, static ones too (port removed).
    pub fn purge_port(&self, port: PortId) -> usize {
        self.set_move_hold(port, 0);
        self.set_peer_stopped(port, false);
        self.set_port_limit(port, None);
        self.table.remove_where(|_, p, _| p == port)
    }

    /// Forgets every dynamic entry.
    pub fn flush(&self) -> usize {
        self.table.remove_where(|_, _, is_static| !is_static)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Entries learned on `port` (dynamic only).
    pub fn port_len(&self, port: PortId) -> usize {
        self.table.owners().learned[port as usize].load(Relaxed) as usize
    }

    /// Live entries, sorted by VLAN then MAC.
    pub fn entries(&self, now: u32) -> Vec<FdbEntry> {
        let mut out: Vec<FdbEntry> = (self.table.rows(now).into_iter())
            .map(|r| FdbEntry {
                vlan: r.key.vlan,
                mac: r.key.mac,
                port: r.owner,
                is_static: r.is_static,
                age: r.age,
            })
            .collect();
        out.sort_by_key(|e| (e.vlan, e.mac));
        out
    }

    pub fn stats(&self) -> FdbStats {
        let s = self.table.stats();
        FdbStats {
            entries: s.entries,
            learned: s.learned,
            moved: s.moved,
            aged: s.aged,
            refused_full: s.refused_full,
            refused_port_limit: s.refused_owner_limit,
            refused_move: s.refused_move,
        }
    }

    /// Heap bytes held by the tables (for the memory-per-entry figure).
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlan::vid;

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn learn_lookup_move_age() {
        let fdb = Fdb::new(100, 10, 300);
        assert_eq!(fdb.learn(vid(10), mac(1), 1, 0), LearnOutcome::Learned);
        assert_eq!(fdb.learn(vid(10), mac(1), 1, 5), LearnOutcome::Refreshed);
        assert_eq!(fdb.lookup(vid(10), mac(1), 5), Some(1));
        // same MAC in another VLAN is another station
        assert_eq!(fdb.lookup(vid(20), mac(1), 5), None);
        assert_eq!(
            fdb.learn(vid(10), mac(1), 2, 6),
            LearnOutcome::Moved { from: 1 }
        );
        assert_eq!(fdb.lookup(vid(10), mac(1), 6), Some(2));
        assert_eq!((fdb.port_len(1), fdb.port_len(2)), (0, 1));
        // expired entries miss before the sweep and vanish with it
        assert_eq!(fdb.lookup(vid(10), mac(1), 6 + 300), None);
        assert_eq!(fdb.age(6 + 299), 0);
        assert_eq!(fdb.age(6 + 300), 1);
        assert!(fdb.is_empty());
        assert_eq!(fdb.port_len(2), 0);
        assert_eq!(fdb.stats().moved, 1);
        assert_eq!(fdb.stats().aged, 1);
    }

    #[test]
    fn port_limit_protects_other_ports() {
        let fdb = Fdb::new(1000, 8, 300);
        for i in 0..4 {
            assert_eq!(fdb.learn(vid(1), mac(i), 1, 0), LearnOutcome::Learned);
        }
        // port 2 floods random sources
        for i in 100..10_000 {
            fdb.learn(vid(1), mac(i), 2, 0);
        }
        assert_eq!(fdb.port_len(2), 8);
        assert_eq!(fdb.len(), 12);
        for i in 0..4 {
            assert_eq!(
                fdb.lookup(vid(1), mac(i), 0),
                Some(1),
                "port 1's stations survive"
            );
        }
        assert_eq!(fdb.stats().refused_port_limit, 10_000 - 100 - 8);
    }

    #[test]
    fn capacity_is_global() {
        let fdb = Fdb::new(5, 5, 300);
        for i in 0..5 {
            assert_eq!(
                fdb.learn(vid(1), mac(i), (i % 3) as u16, 0),
                LearnOutcome::Learned
            );
        }
        assert_eq!(fdb.learn(vid(1), mac(99), 3, 0), LearnOutcome::TableFull);
        assert_eq!(fdb.len(), 5);
        assert_eq!(fdb.flush_port(0), 2);
        assert_eq!(fdb.learn(vid(1), mac(99), 3, 0), LearnOutcome::Learned);
    }

    #[test]
    fn move_into_full_port_forgets_stale_entry() {
        let fdb = Fdb::new(100, 1, 300);
        fdb.learn(vid(1), mac(1), 1, 0);
        fdb.learn(vid(1), mac(2), 2, 0);
        assert_eq!(fdb.learn(vid(1), mac(1), 2, 1), LearnOutcome::OwnerLimit);
        assert_eq!(fdb.lookup(vid(1), mac(1), 1), None);
        assert_eq!((fdb.len(), fdb.port_len(1), fdb.port_len(2)), (1, 0, 1));
    }

    #[test]
    fn move_hold_keeps_a_recent_station_on_its_port() {
        let fdb = Fdb::new(100, 10, 300);
        fdb.set_move_hold(9, 5);
        fdb.learn(vid(1), mac(1), 1, 100);
        // seen on port 1 at 100: no move to port 9 before 105
        assert_eq!(fdb.learn(vid(1), mac(1), 9, 100), LearnOutcome::Held);
        assert_eq!(fdb.learn(vid(1), mac(1), 9, 104), LearnOutcome::Held);
        assert_eq!(fdb.lookup(vid(1), mac(1), 104), Some(1));
        assert_eq!((fdb.stats().refused_move, fdb.stats().moved), (2, 0));
        // silent on port 1 for the hold time: it moves
        assert_eq!(
            fdb.learn(vid(1), mac(1), 9, 105),
            LearnOutcome::Moved { from: 1 }
        );
        // the hold is per destination port: moving back is immediate
        assert_eq!(
            fdb.learn(vid(1), mac(1), 1, 105),
            LearnOutcome::Moved { from: 9 }
        );
        assert_eq!(
            fdb.learn(vid(1), mac(1), 2, 105),
            LearnOutcome::Moved { from: 1 }
        );
        assert_eq!((fdb.stats().refused_move, fdb.stats().moved), (2, 3));
        // a new station is learned on the held port at once
        assert_eq!(fdb.learn(vid(1), mac(2), 9, 105), LearnOutcome::Learned);
        // the query a driver asks first: refused (and counted) only while held
        fdb.learn(vid(1), mac(4), 1, 150);
        assert!(fdb.refuse_held_move(vid(1), mac(4), 9, 154));
        assert!(!fdb.refuse_held_move(vid(1), mac(4), 9, 155));
        assert!(!fdb.refuse_held_move(vid(1), mac(4), 1, 150), "not a move");
        assert!(
            !fdb.refuse_held_move(vid(1), mac(5), 9, 150),
            "unknown station"
        );
        assert_eq!(fdb.stats().refused_move, 3);
        // purging the port (removed; its id may be reused) clears the hold
        fdb.purge_port(9);
        fdb.learn(vid(1), mac(3), 1, 200);
        assert_eq!(
            fdb.learn(vid(1), mac(3), 9, 200),
            LearnOutcome::Moved { from: 1 }
        );
        assert_eq!(fdb.stats().refused_move, 3);
    }

    /// A migrated guest: its old port's peer is stopped, so its announcement
    /// from behind the tunnel moves it at once, counted as one move; while
    /// the guest runs, the hold still keeps a spoofer out.
    #[test]
    fn a_stopped_peer_holds_no_station_back() {
        let fdb = Fdb::new(100, 10, 300);
        fdb.set_move_hold(9, 10);
        fdb.learn(vid(1), mac(1), 1, 100);
        assert_eq!(fdb.learn(vid(1), mac(1), 9, 100), LearnOutcome::Held);
        fdb.set_peer_stopped(1, true);
        assert!(!fdb.refuse_held_move(vid(1), mac(1), 9, 100));
        assert_eq!(
            fdb.learn(vid(1), mac(1), 9, 100),
            LearnOutcome::Moved { from: 1 }
        );
        assert_eq!((fdb.stats().moved, fdb.stats().refused_move), (1, 1));
        // only the stopped port's stations: another port's stay held
        fdb.learn(vid(1), mac(2), 2, 100);
        assert_eq!(fdb.learn(vid(1), mac(2), 9, 101), LearnOutcome::Held);
        // the guest runs again: its stations are held again
        fdb.set_peer_stopped(1, false);
        fdb.learn(vid(1), mac(3), 1, 102);
        assert_eq!(fdb.learn(vid(1), mac(3), 9, 102), LearnOutcome::Held);
        // purging the port (removed; its id may be reused) clears the flag
        fdb.set_peer_stopped(1, true);
        fdb.purge_port(1);
        fdb.learn(vid(1), mac(4), 1, 103);
        assert_eq!(fdb.learn(vid(1), mac(4), 9, 103), LearnOutcome::Held);
    }

    #[test]
    fn static_entries_pin_and_survive() {
        let fdb = Fdb::new(100, 10, 10);
        fdb.add_static(vid(1), mac(7), 3).unwrap();
        assert_eq!(fdb.learn(vid(1), mac(7), 4, 0), LearnOutcome::Static);
        assert_eq!(fdb.age(1_000_000), 0);
        assert_eq!(fdb.flush_port(3), 0);
        assert_eq!(fdb.lookup(vid(1), mac(7), 1_000_000), Some(3));
        assert_eq!(fdb.purge_port(3), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn entries_report() {
        let fdb = Fdb::new(100, 10, 300);
        fdb.learn(vid(20), mac(2), 1, 10);
        fdb.learn(vid(10), mac(1), 2, 10);
        let e = fdb.entries(15);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].vlan, e[0].mac, e[0].port, e[0].age),
            (vid(10), mac(1), 2, 5)
        );
        assert!(fdb.heap_bytes() > 0);
    }
}
