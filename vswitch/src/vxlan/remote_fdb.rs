//! The remote FDB: (VNI, MAC) -> the remote VTEP a station sits behind.
//!
//! Learned from received packets: the inner source MAC of a frame decapsulated
//! from VNI `n`, sent by VTEP `ip`, is reachable in `n` via `ip` (RFC 7348 §4.1).
//! A known (VNI, MAC) is sent to its VTEP only; unknown ones are flooded to the
//! VNI's [`super::VtepSet`].
//!
//! Concurrency, clock and aging follow [`crate::Fdb`]: shards behind `RwLock`s,
//! a refresh takes only a read lock, time is the switch clock in seconds
//! (`now: u32`, wrapping), dynamic entries expire `aging_secs` after last seen,
//! static entries never age and never move. Memory is bounded twice, as in the
//! switch's FDB: a global capacity, and a per-VTEP limit on learned entries so
//! one remote host (or a sender spoofing many source MACs) fills only its own
//! share. At a limit a station is simply not learned and frames to it are
//! flooded.

use super::header::Vni;
use crate::frame::MacAddr;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};

const SHARDS: usize = 16;

/// A remote station: the same MAC in two segments is two stations.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    vni: Vni,
    mac: MacAddr,
}

/// Hashed as one 72-bit value, (VNI << 48) | MAC.
impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u128(u128::from(self.vni.get()) << 48 | u128::from(self.mac.to_u64()));
    }
}

fn key(vni: Vni, mac: MacAddr) -> Key {
    Key { vni, mac }
}

struct Entry {
    key: Key,
    vtep: Ipv4Addr,
    is_static: bool,
    /// Seconds on the switch clock when the source was last seen.
    last_seen: AtomicU32,
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

/// What learning a remote source address did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteLearn {
    /// Already known behind this VTEP; its age was reset.
    Refreshed,
    Learned,
    /// The station was known behind another VTEP: it moved (counted).
    Moved {
        from: Ipv4Addr,
    },
    /// The capacity is reached; not learned.
    TableFull,
    /// The sending VTEP has reached its limit of learned MACs; not learned (a
    /// move to it forgets the old entry).
    VtepLimit,
    /// A static entry pins the MAC to another VTEP; not moved.
    Static,
    /// A group (multicast/broadcast) or all-zero MAC is never a station.
    InvalidSource,
}

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

pub struct RemoteFdb {
    shards: Box<[RwLock<HashTable<Entry>>]>,
    hasher: DefaultHashBuilder,
    capacity: u32,
    vtep_limit: u32,
    aging_secs: u32,
    len: AtomicU32,
    /// Learned (dynamic) entries per VTEP; touched only when an entry is
    /// added, moved or removed, never on a lookup or refresh.
    per_vtep: Mutex<hashbrown::HashMap<Ipv4Addr, u32>>,
    learned: AtomicU64,
    moved: AtomicU64,
    aged: AtomicU64,
    refused_full: AtomicU64,
    refused_vtep_limit: AtomicU64,
}

impl RemoteFdb {
    /// At most `capacity` entries (static included), at most `vtep_limit`
    /// learned behind any one VTEP (static entries do not count); dynamic
    /// entries expire `aging_secs` after their station was last seen.
    pub fn new(capacity: u32, vtep_limit: u32, aging_secs: u32) -> RemoteFdb {
        RemoteFdb {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: DefaultHashBuilder::default(),
            capacity,
            vtep_limit,
            aging_secs,
            len: AtomicU32::new(0),
            per_vtep: Mutex::new(hashbrown::HashMap::new()),
            learned: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            aged: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            refused_vtep_limit: AtomicU64::new(0),
        }
    }

    pub fn aging_secs(&self) -> u32 {
        self.aging_secs
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn vtep_limit(&self) -> u32 {
        self.vtep_limit
    }

    /// Learned entries behind `vtep`.
    pub fn vtep_len(&self, vtep: Ipv4Addr) -> u32 {
        let per = self.per_vtep.lock().unwrap_or_else(|e| e.into_inner());
        per.get(&vtep).copied().unwrap_or(0)
    }

    /// Takes one of `vtep`'s learned-entry slots, if free.
    fn reserve_vtep(&self, vtep: Ipv4Addr) -> bool {
        let mut per = self.per_vtep.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(vtep).or_insert(0);
        if *n >= self.vtep_limit {
            if *n == 0 {
                per.remove(&vtep);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back the slots of `n` learned entries behind `vtep`.
    fn release_vtep(&self, vtep: Ipv4Addr, n: u32) {
        let mut per = self.per_vtep.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(have) = per.get_mut(&vtep) {
            *have = have.saturating_sub(n);
            if *have == 0 {
                per.remove(&vtep);
            }
        }
    }

    /// Releases what removed entry `e` held.
    fn release(&self, e: &Entry) {
        self.len.fetch_sub(1, Relaxed);
        if !e.is_static {
            self.release_vtep(e.vtep, 1);
        }
    }

    fn locate(&self, key: Key) -> (u64, &RwLock<HashTable<Entry>>) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[(hash >> 60) as usize % SHARDS])
    }

    fn is_live(&self, e: &Entry, now: u32) -> bool {
        e.is_static || now.wrapping_sub(e.last_seen.load(Relaxed)) < self.aging_secs
    }

    /// The VTEP behind which `mac` sits in `vni`, if its entry is live.
    pub fn lookup(&self, vni: Vni, mac: MacAddr, now: u32) -> Option<Ipv4Addr> {
        let key = key(vni, mac);
        let (hash, shard) = self.locate(key);
        let table = shard.read().unwrap_or_else(|e| e.into_inner());
        let e = table.find(hash, |e| e.key == key)?;
        self.is_live(e, now).then_some(e.vtep)
    }

    /// Learns that `mac` in `vni` sits behind `vtep` (the outer source address of
    /// the packet it arrived in). A station known behind another VTEP moves
    /// there, unless pinned by a static entry.
    pub fn learn(&self, vni: Vni, mac: MacAddr, vtep: Ipv4Addr, now: u32) -> RemoteLearn {
        if mac.is_multicast() || mac.is_zero() {
            return RemoteLearn::InvalidSource;
        }
        let key = key(vni, mac);
        let (hash, shard) = self.locate(key);
        {
            let table = shard.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = table.find(hash, |e| e.key == key) {
                if e.vtep == vtep {
                    if e.last_seen.load(Relaxed) != now {
                        e.last_seen.store(now, Relaxed);
                    }
                    return RemoteLearn::Refreshed;
                }
                if e.is_static {
                    return RemoteLearn::Static;
                }
            }
        }
        let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = table.find_mut(hash, |e| e.key == key) {
            if e.vtep == vtep {
                e.last_seen.store(now, Relaxed);
                return RemoteLearn::Refreshed;
            }
            if e.is_static {
                return RemoteLearn::Static;
            }
            let from = e.vtep;
            // A move is a new station for the VTEP it lands on; if that VTEP
            // is full, the stale entry still goes.
            self.release_vtep(from, 1);
            if self.reserve_vtep(vtep) {
                e.vtep = vtep;
                e.last_seen.store(now, Relaxed);
                self.moved.fetch_add(1, Relaxed);
                return RemoteLearn::Moved { from };
            }
            if let Ok(o) = table.find_entry(hash, |e| e.key == key) {
                o.remove();
                self.len.fetch_sub(1, Relaxed);
            }
            self.refused_vtep_limit.fetch_add(1, Relaxed);
            return RemoteLearn::VtepLimit;
        }
        if !self.reserve() {
            self.refused_full.fetch_add(1, Relaxed);
            return RemoteLearn::TableFull;
        }
        if !self.reserve_vtep(vtep) {
            self.len.fetch_sub(1, Relaxed);
            self.refused_vtep_limit.fetch_add(1, Relaxed);
            return RemoteLearn::VtepLimit;
        }
        table.insert_unique(
            hash,
            Entry {
                key,
                vtep,
                is_static: false,
                last_seen: AtomicU32::new(now),
            },
            |e| self.hasher.hash_one(e.key),
        );
        self.learned.fetch_add(1, Relaxed);
        RemoteLearn::Learned
    }

    fn reserve(&self) -> bool {
        if self.len.fetch_add(1, Relaxed) >= self.capacity {
            self.len.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Adds or replaces a static entry: never ages, never moves, counts against
    /// the capacity. Errors are [`RemoteLearn::TableFull`] and
    /// [`RemoteLearn::InvalidSource`].
    pub fn add_static(&self, vni: Vni, mac: MacAddr, vtep: Ipv4Addr) -> Result<(), RemoteLearn> {
        if mac.is_multicast() || mac.is_zero() {
            return Err(RemoteLearn::InvalidSource);
        }
        let key = key(vni, mac);
        let (hash, shard) = self.locate(key);
        let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = table.find_mut(hash, |e| e.key == key) {
            if !e.is_static {
                self.release_vtep(e.vtep, 1);
            }
            e.vtep = vtep;
            e.is_static = true;
            return Ok(());
        }
        if !self.reserve() {
            return Err(RemoteLearn::TableFull);
        }
        table.insert_unique(
            hash,
            Entry {
                key,
                vtep,
                is_static: true,
                last_seen: AtomicU32::new(0),
            },
            |e| self.hasher.hash_one(e.key),
        );
        Ok(())
    }

    /// Removes one entry, static or dynamic. Returns whether there was one.
    pub fn remove(&self, vni: Vni, mac: MacAddr) -> bool {
        let key = key(vni, mac);
        let (hash, shard) = self.locate(key);
        let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
        match table.find_entry(hash, |e| e.key == key) {
            Ok(e) => {
                let (e, _) = e.remove();
                self.release(&e);
                true
            }
            Err(_) => false,
        }
    }

    fn remove_where(&self, mut doomed: impl FnMut(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
            table.retain(|e| {
                let gone = doomed(e);
                if gone {
                    self.release(e);
                    removed += 1;
                }
                !gone
            });
        }
        removed
    }

    /// Drops dynamic entries not seen for the aging time. Returns how many.
    pub fn age(&self, now: u32) -> usize {
        let n = self.remove_where(|e| !self.is_live(e, now));
        self.aged.fetch_add(n as u64, Relaxed);
        n
    }

    /// Forgets the dynamic entries learned behind `vtep` (the VTEP went away or
    /// was removed from the configuration). Returns how many.
    pub fn flush_vtep(&self, vtep: Ipv4Addr) -> usize {
        self.remove_where(|e| e.vtep == vtep && !e.is_static)
    }

    /// Forgets every entry behind `vtep`, static ones too.
    pub fn purge_vtep(&self, vtep: Ipv4Addr) -> usize {
        self.remove_where(|e| e.vtep == vtep)
    }

    /// Forgets the dynamic entries of one VNI (its mapping was removed).
    pub fn flush_vni(&self, vni: Vni) -> usize {
        self.remove_where(|e| e.key.vni == vni && !e.is_static)
    }

    /// Forgets every dynamic entry.
    pub fn flush(&self) -> usize {
        self.remove_where(|e| !e.is_static)
    }

    pub fn len(&self) -> usize {
        self.len.load(Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live entries, sorted by VNI then MAC.
    pub fn entries(&self, now: u32) -> Vec<RemoteFdbEntry> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let table = shard.read().unwrap_or_else(|e| e.into_inner());
            out.extend(
                table
                    .iter()
                    .filter(|e| self.is_live(e, now))
                    .map(|e| RemoteFdbEntry {
                        vni: e.key.vni,
                        mac: e.key.mac,
                        vtep: e.vtep,
                        is_static: e.is_static,
                        age: if e.is_static {
                            0
                        } else {
                            now.wrapping_sub(e.last_seen.load(Relaxed))
                        },
                    }),
            );
        }
        out.sort_by_key(|e| (e.vni, e.mac));
        out
    }

    pub fn stats(&self) -> RemoteFdbStats {
        RemoteFdbStats {
            entries: self.len.load(Relaxed),
            learned: self.learned.load(Relaxed),
            moved: self.moved.load(Relaxed),
            aged: self.aged.load(Relaxed),
            refused_full: self.refused_full.load(Relaxed),
            refused_vtep_limit: self.refused_vtep_limit.load(Relaxed),
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
        assert_eq!(f.learn(vni(1), mac(3), V1, 0), RemoteLearn::VtepLimit);
        assert_eq!(f.learn(vni(2), mac(4), V1, 0), RemoteLearn::VtepLimit);
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
        assert_eq!(f.learn(vni(1), mac(10), V1, 2), RemoteLearn::VtepLimit);
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
