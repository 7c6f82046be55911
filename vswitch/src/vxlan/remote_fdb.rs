//! The remote FDB: (VNI, MAC) -> the remote VTEP a station sits behind.
//!
//! Learned from received packets: the inner source MAC of a frame decapsulated
//! from VNI `n`, sent by VTEP `ip`, is reachable in `n` via `ip` (RFC 7348 §4.1).
//! A known (VNI, MAC) is sent to its VTEP only; unknown ones are flooded to the
//! VNI's [`super::VtepSet`].
//!
//! The same [`AgingTable`] as the switch's [`crate::Fdb`] (shards, read-locked
//! refresh, switch clock, statics that never age or move), with VTEPs as its
//! owners: a per-VTEP limit on learned entries, so one remote host (or a
//! sender spoofing many source MACs) fills only its own share. At a limit a
//! station is simply not learned and frames to it are flooded.

use super::header::Vni;
use crate::aging::{AgingTable, Learn, Owners};
use crate::frame::MacAddr;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::Mutex;

const SHARDS: usize = 16;

/// A remote station: the same MAC in two segments is two stations.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    vni: Vni,
    mac: MacAddr,
}

/// Hashed as one 72-bit value, (VNI << 48) | MAC.
impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u128(u128::from(self.vni.get()) << 48 | u128::from(self.mac.to_u64()));
    }
}

fn key(vni: Vni, mac: MacAddr) -> Key {
    Key { vni, mac }
}

/// One remote FDB entry as reported to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFdbEntry {
    pub vni: Vni,
    pub mac: MacAddr,
    pub vtep: Ipv4Addr,
    pub is_static: bool,
    /// Seconds since the station was last seen (0 for static entries).
    pub age: u32,
}

/// What learning a remote source address did ([`Learn::OwnerLimit`]: the
/// sending VTEP reached its limit; [`Learn::InvalidSource`]: a group or
/// all-zero MAC, never a station).
pub type RemoteLearn = Learn<Ipv4Addr>;

/// Event counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteFdbStats {
    pub entries: u32,
    pub learned: u64,
    pub moved: u64,
    pub aged: u64,
    pub refused_full: u64,
    pub refused_vtep_limit: u64,
}

/// The remote FDB's owners: learned entries per VTEP, touched only when an
/// entry is added, moved or removed, never on a lookup or refresh.
struct Vteps {
    limit: u32,
    learned: Mutex<hashbrown::HashMap<Ipv4Addr, u32>>,
}

impl Vteps {
    fn len(&self, vtep: Ipv4Addr) -> u32 {
        let per = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        per.get(&vtep).copied().unwrap_or(0)
    }
}

impl Owners<Ipv4Addr> for Vteps {
    fn reserve(&self, vtep: Ipv4Addr) -> bool {
        let mut per = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(vtep).or_insert(0);
        if *n >= self.limit {
            if *n == 0 {
                per.remove(&vtep);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, vtep: Ipv4Addr) {
        let mut per = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(have) = per.get_mut(&vtep) {
            *have = have.saturating_sub(1);
            if *have == 0 {
                per.remove(&vtep);
            }
        }
    }
}

pub struct RemoteFdb {
    table: AgingTable<Key, Ipv4Addr, Vteps>,
}

impl RemoteFdb {
    /// At most `capacity` entries (static included), at most `vtep_limit`
    /// learned behind any one VTEP (static entries do not count); dynamic
    /// entries expire `aging_secs` after their station was last seen.
    pub fn new(capacity: u32, vtep_limit: u32, aging_secs: u32) -> RemoteFdb {
        let vteps = Vteps {
            limit: vtep_limit,
            learned: Mutex::new(hashbrown::HashMap::new()),
        };
        RemoteFdb {
            table: AgingTable::new(SHARDS, capacity, aging_secs, vteps),
        }
    }

    pub fn aging_secs(&self) -> u32 {
        self.table.aging_secs()
    }

    pub fn capacity(&self) -> u32 {
        self.table.capacity()
    }

    pub fn vtep_limit(&self) -> u32 {
        self.table.owners().limit
    }

    /// Learned entries behind `vtep`.
    pub fn vtep_len(&self, vtep: Ipv4Addr) -> u32 {
        self.table.owners().len(vtep)
    }

    /// The VTEP behind which `mac` sits in `vni`, if its entry is live.
    pub fn lookup(&self, vni: Vni, mac: MacAddr, now: u32) -> Option<Ipv4Addr> {
        self.table.lookup(key(vni, mac), now)
    }

    /// Learns that `mac` in `vni` sits behind `vtep` (the outer source address of
    /// the packet it arrived in). A station known behind another VTEP moves
    /// there, unless pinned by a static entry.
    pub fn learn(&self, vni: Vni, mac: MacAddr, vtep: Ipv4Addr, now: u32) -> RemoteLearn {
        if !mac.is_station() {
            return Learn::InvalidSource;
        }
        self.table.learn(key(vni, mac), vtep, now)
    }

    /// Adds or replaces a static entry: never ages, never moves, counts against
    /// the capacity. Errors are [`Learn::TableFull`] and [`Learn::InvalidSource`].
    pub fn add_static(&self, vni: Vni, mac: MacAddr, vtep: Ipv4Addr) -> Result<(), RemoteLearn> {
        if !mac.is_station() {
            return Err(Learn::InvalidSource);
        }
        self.table.add_static(key(vni, mac), vtep)
    }

    /// Removes one entry, static or dynamic. Returns whether there was one.
    pub fn remove(&self, vni: Vni, mac: MacAddr) -> bool {
        self.table.remove_if(key(vni, mac), |_, _| true)
    }

    /// Drops dynamic entries not seen for the aging time. Returns how many.
    pub fn age(&self, now: u32) -> usize {
        self.table.age(now)
    }

    /// Forgets the dynamic entries learned behind `vtep` (the VTEP went away or
    /// was removed from the configuration). Returns how many.
    pub fn flush_vtep(&self, vtep: Ipv4Addr) -> usize {
        self.table
            .remove_where(|_, v, is_static| v == vtep && !is_static)
    }

    /// Forgets every entry behind `vtep`, static ones too.
    pub fn purge_vtep(&self, vtep: Ipv4Addr) -> usize {
        self.table.remove_where(|_, v, _| v == vtep)
    }

    /// Forgets the dynamic entries of one VNI (its mapping was removed).
    pub fn flush_vni(&self, vni: Vni) -> usize {
        self.table
            .remove_where(|k, _, is_static| k.vni == vni && !is_static)
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

    /// Live entries, sorted by VNI then MAC.
    pub fn entries(&self, now: u32) -> Vec<RemoteFdbEntry> {
        let mut out: Vec<RemoteFdbEntry> = (self.table.rows(now).into_iter())
            .map(|r| RemoteFdbEntry {
                vni: r.key.vni,
                mac: r.key.mac,
                vtep: r.owner,
                is_static: r.is_static,
                age: r.age,
            })
            .collect();
        out.sort_by_key(|e| (e.vni, e.mac));
        out
    }

    pub fn stats(&self) -> RemoteFdbStats {
        let s = self.table.stats();
        RemoteFdbStats {
            entries: s.entries,
            learned: s.learned,
            moved: s.moved,
            aged: s.aged,
            refused_full: s.refused_full,
            refused_vtep_limit: s.refused_owner_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    const V1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const V2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const V3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

    #[test]
    fn learn_lookup_refresh_age() {
        let f = RemoteFdb::new(100, 100, 300);
        assert_eq!(f.learn(vni(100), mac(1), V1, 0), RemoteLearn::Learned);
        assert_eq!(f.learn(vni(100), mac(1), V1, 200), RemoteLearn::Refreshed);
        assert_eq!(f.lookup(vni(100), mac(1), 200), Some(V1));
        // the same MAC in another segment is another station
        assert_eq!(f.lookup(vni(101), mac(1), 200), None);
        assert_eq!(f.lookup(vni(100), mac(2), 200), None);
        // the refresh at 200 keeps it alive until 499
        assert_eq!(f.lookup(vni(100), mac(1), 499), Some(V1));
        assert_eq!(
            f.lookup(vni(100), mac(1), 500),
            None,
            "expired before the sweep"
        );
        assert_eq!(f.age(499), 0);
        assert_eq!(f.age(500), 1);
        assert!(f.is_empty());
        assert_eq!(f.stats().aged, 1);
        assert_eq!(f.stats().learned, 1);
    }

    #[test]
    fn aging_across_clock_wrap() {
        let f = RemoteFdb::new(10, 10, 300);
        f.learn(vni(1), mac(1), V1, u32::MAX - 10);
        assert_eq!(f.lookup(vni(1), mac(1), 100), Some(V1));
        assert_eq!(f.age(288), 0);
        assert_eq!(f.age(289), 1);
    }

    #[test]
    fn moves_are_detected_and_counted() {
        let f = RemoteFdb::new(100, 100, 300);
        f.learn(vni(7), mac(1), V1, 0);
        assert_eq!(
            f.learn(vni(7), mac(1), V2, 5),
            RemoteLearn::Moved { from: V1 }
        );
        assert_eq!(f.lookup(vni(7), mac(1), 5), Some(V2));
        assert_eq!(
            f.learn(vni(7), mac(1), V1, 6),
            RemoteLearn::Moved { from: V2 }
        );
        assert_eq!(f.learn(vni(7), mac(1), V1, 7), RemoteLearn::Refreshed);
        let s = f.stats();
        assert_eq!((s.entries, s.learned, s.moved), (1, 1, 2));
        // the same MAC behind another VTEP in another VNI is not a move
        assert_eq!(f.learn(vni(8), mac(1), V3, 7), RemoteLearn::Learned);
        assert_eq!(f.stats().moved, 2);
    }

    #[test]
    fn static_entries_pin_and_survive() {
        let f = RemoteFdb::new(100, 100, 10);
        f.add_static(vni(1), mac(7), V1).unwrap();
        assert_eq!(f.learn(vni(1), mac(7), V2, 0), RemoteLearn::Static);
        assert_eq!(f.learn(vni(1), mac(7), V1, 0), RemoteLearn::Refreshed);
        assert_eq!(f.age(1_000_000), 0);
        assert_eq!(f.flush_vtep(V1), 0);
        assert_eq!(f.flush(), 0);
        assert_eq!(f.lookup(vni(1), mac(7), 1_000_000), Some(V1));
        // a dynamic entry turned static stops aging and moving
        f.learn(vni(1), mac(8), V2, 0);
        f.add_static(vni(1), mac(8), V3).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f.learn(vni(1), mac(8), V2, 5), RemoteLearn::Static);
        assert_eq!(f.age(1_000_000), 0);
        assert_eq!(f.purge_vtep(V1), 1);
        assert!(f.remove(vni(1), mac(8)));
        assert!(!f.remove(vni(1), mac(8)));
        assert!(f.is_empty());
        assert_eq!(
            f.add_static(vni(1), MacAddr::BROADCAST, V1),
            Err(RemoteLearn::InvalidSource)
        );
    }

    #[test]
    fn capacity_limit() {
        let f = RemoteFdb::new(5, 5, 300);
        for i in 0..4 {
            assert_eq!(f.learn(vni(1), mac(i), V1, 0), RemoteLearn::Learned);
        }
        f.add_static(vni(2), mac(0), V2).unwrap();
        assert_eq!(f.learn(vni(1), mac(99), V1, 0), RemoteLearn::TableFull);
        assert_eq!(
            f.add_static(vni(2), mac(1), V2),
            Err(RemoteLearn::TableFull)
        );
        // replacing an existing entry needs no new slot
        f.add_static(vni(2), mac(0), V3).unwrap();
        // moves and refreshes at the limit still work
        assert_eq!(
            f.learn(vni(1), mac(0), V2, 1),
            RemoteLearn::Moved { from: V1 }
        );
        assert_eq!(f.learn(vni(1), mac(1), V1, 1), RemoteLearn::Refreshed);
        assert_eq!((f.len(), f.stats().refused_full), (5, 1));
        assert!(f.remove(vni(1), mac(3)));
        assert_eq!(f.learn(vni(1), mac(99), V1, 0), RemoteLearn::Learned);
    }

    #[test]
    fn vtep_limit_protects_other_vteps() {
        let f = RemoteFdb::new(100, 3, 300);
        for i in 0..3 {
            assert_eq!(f.learn(vni(1), mac(i), V1, 0), RemoteLearn::Learned);
        }
        // V1 sends a fourth and fifth source: refused, counted, not stored
        assert_eq!(f.learn(vni(1), mac(3), V1, 0), RemoteLearn::OwnerLimit);
        assert_eq!(f.learn(vni(2), mac(4), V1, 0), RemoteLearn::OwnerLimit);
        assert_eq!(f.lookup(vni(1), mac(3), 0), None);
        assert_eq!(
            (f.len(), f.vtep_len(V1), f.stats().refused_vtep_limit),
            (3, 3, 2)
        );
        // refreshes at the limit still work; other VTEPs still learn
        assert_eq!(f.learn(vni(1), mac(0), V1, 1), RemoteLearn::Refreshed);
        assert_eq!(f.learn(vni(1), mac(10), V2, 1), RemoteLearn::Learned);
        // static entries do not count against a VTEP's limit
        f.add_static(vni(1), mac(20), V1).unwrap();
        assert_eq!(f.vtep_len(V1), 3);
        // a move into a full VTEP forgets the stale entry
        assert_eq!(f.learn(vni(1), mac(10), V1, 2), RemoteLearn::OwnerLimit);
        assert_eq!(f.lookup(vni(1), mac(10), 2), None);
        assert_eq!((f.len(), f.vtep_len(V2)), (4, 0));
        // a move out of it frees a slot
        assert_eq!(
            f.learn(vni(1), mac(0), V2, 3),
            RemoteLearn::Moved { from: V1 }
        );
        assert_eq!(f.learn(vni(1), mac(3), V1, 3), RemoteLearn::Learned);
        // removal, flushes and aging give the slots back
        assert!(f.remove(vni(1), mac(3)));
        assert_eq!(f.vtep_len(V1), 2);
        assert_eq!(f.flush_vtep(V1), 2);
        assert_eq!((f.vtep_len(V1), f.vtep_len(V2)), (0, 1));
        assert_eq!(f.age(1_000), 1);
        assert_eq!((f.len(), f.vtep_len(V2)), (1, 0), "the static entry stays");
        // a learned entry turned static frees its slot
        f.learn(vni(3), mac(30), V3, 0);
        f.add_static(vni(3), mac(30), V3).unwrap();
        assert_eq!(f.vtep_len(V3), 0);
        assert_eq!(f.stats().refused_vtep_limit, 3);
    }

    #[test]
    fn flush_per_vtep_and_vni() {
        let f = RemoteFdb::new(100, 100, 300);
        for i in 0..10 {
            f.learn(vni(1 + i % 2), mac(i), if i < 6 { V1 } else { V2 }, 0);
        }
        f.add_static(vni(1), mac(50), V1).unwrap();
        assert_eq!(f.flush_vtep(V1), 6);
        assert_eq!(f.flush_vtep(V1), 0);
        assert_eq!(f.len(), 5);
        assert!(f.entries(0).iter().all(|e| e.vtep == V2 || e.is_static));
        // V2 holds mac 6..10: 6 and 8 in VNI 1, 7 and 9 in VNI 2
        assert_eq!(f.flush_vni(vni(2)), 2);
        assert_eq!(f.flush(), 2);
        assert_eq!(f.len(), 1, "the static entry stays");
    }

    #[test]
    fn received_vni_zero_is_just_another_key() {
        use crate::vxlan::header::{VxlanPacket, FLAG_I};
        let mut pkt = vec![FLAG_I, 0, 0, 0, 0, 0, 0, 0];
        pkt.extend_from_slice(&[0; 14]);
        let zero = VxlanPacket::parse(&pkt).unwrap().vni();
        let f = RemoteFdb::new(10, 10, 300);
        assert_eq!(f.learn(zero, mac(1), V1, 0), RemoteLearn::Learned);
        assert_eq!(f.entries(0)[0].vni.get(), 0);
        assert_eq!(f.lookup(vni(1), mac(1), 0), None);
    }

    #[test]
    fn refuses_group_and_zero_sources() {
        let f = RemoteFdb::new(100, 100, 300);
        for m in [
            MacAddr::BROADCAST,
            MacAddr::ZERO,
            MacAddr([0x01, 0, 0x5e, 0, 0, 1]),
        ] {
            assert_eq!(f.learn(vni(1), m, V1, 0), RemoteLearn::InvalidSource);
        }
        assert!(f.is_empty());
    }

    #[test]
    fn entries_report() {
        let f = RemoteFdb::new(100, 100, 300);
        f.learn(vni(20), mac(2), V1, 10);
        f.learn(vni(10), mac(1), V2, 10);
        f.add_static(vni(10), mac(0), V3).unwrap();
        f.learn(
            vni(Vni::MAX),
            MacAddr([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]),
            V1,
            12,
        );
        let e = f.entries(15);
        assert_eq!(e.len(), 4);
        assert_eq!(
            (e[0].vni, e[0].mac, e[0].vtep, e[0].is_static, e[0].age),
            (vni(10), mac(0), V3, true, 0)
        );
        assert_eq!((e[1].mac, e[1].age), (mac(1), 5));
        assert_eq!(e[2].vni, vni(20));
        assert_eq!(
            (e[3].vni, e[3].mac, e[3].age),
            (
                vni(Vni::MAX),
                MacAddr([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]),
                3
            )
        );
        assert_eq!(f.entries(400).len(), 1, "only the static one is live");
    }

    #[test]
    fn concurrent_learning_keeps_count() {
        let f = Arc::new(RemoteFdb::new(1000, 1000, 1_000_000));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        // every thread sees every MAC, from its own VTEP: moves galore
                        f.learn(vni(1), mac(i % 1500), Ipv4Addr::new(10, 0, 0, t), i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(f.len(), 1000);
        assert_eq!(f.entries(2000).len(), 1000);
        assert_eq!(f.flush(), 1000);
        assert_eq!(f.len(), 0);
    }
}
