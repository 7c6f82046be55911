//! One sharded aging table: key -> owner, learned from traffic, forgotten
//! after silence. The switch's FDB ((VLAN, MAC) -> port) and the tunnel's
//! remote FDB ((VNI, MAC) -> VTEP) are both this table.
//!
//! Read-mostly and shared by every datapath thread, so it is split into shards,
//! each behind its own `RwLock`. A lookup or the refresh of an entry already
//! at the right owner takes only a read lock (the last-seen time is an
//! atomic); only a new key, a move, or removal takes a shard's write lock.
//!
//! Time is the switch clock in seconds (`now: u32`, wrapping). Dynamic
//! entries expire `aging_secs` after last seen; static ones never age and
//! never move. Memory is bounded twice: a global capacity, and a per-owner
//! quota ([`Owners`]) on learned entries, so one port or VTEP flooding random
//! sources fills only its own share. At a limit a key is simply not learned.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;

/// The per-owner hook: a quota on learned (dynamic) entries, and optionally a
/// hold that keeps a recently seen key from moving to an owner.
pub trait Owners<O> {
    /// Takes one of `owner`'s learned-entry slots, if free.
    fn reserve(&self, owner: O) -> bool;
    /// Gives back one slot of `owner`.
    fn release(&self, owner: O);
    /// Whether a key seen at its owner `from` `silent_for` seconds ago may
    /// not move to `to` yet. Default: every move is allowed.
    fn holds(&self, from: O, to: O, silent_for: u32) -> bool {
        let _ = (from, to, silent_for);
        false
    }
}

/// What learning a key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learn<O> {
    /// Already known at this owner; its age was reset.
    Refreshed,
    Learned,
    /// The key moved here from another owner (counted).
    Moved {
        from: O,
    },
    /// The global capacity is reached; not learned.
    TableFull,
    /// The owner reached its quota; not learned (a move to it forgets the
    /// old entry).
    OwnerLimit,
    /// A static entry pins the key to another owner; not moved.
    Static,
    /// The key was seen at its owner within the new owner's hold; not moved
    /// (counted). Only tables whose [`Owners::holds`] says so.
    Held,
    /// The key can never be learned (the remote FDB's group or zero source
    /// MAC); checked by the table's user before learning.
    InvalidSource,
}

/// Event counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub entries: u32,
    pub learned: u64,
    pub moved: u64,
    pub aged: u64,
    pub refused_full: u64,
    pub refused_owner_limit: u64,
    pub refused_move: u64,
}

/// One live entry as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row<K, O> {
    pub key: K,
    pub owner: O,
    pub is_static: bool,
    /// Seconds since the key was last seen (0 for static entries).
    pub age: u32,
}

struct Entry<K, O> {
    key: K,
    owner: O,
    is_static: bool,
    /// Seconds on the switch clock when the key was last seen.
    last_seen: AtomicU32,
}

/// One shard: its part of the entries behind its own lock.
type Shard<K, O> = RwLock<HashTable<Entry<K, O>>>;

/// The table; `Q` is its per-owner hook.
pub struct AgingTable<K, O, Q> {
    shards: Box<[Shard<K, O>]>,
    /// `64 - log2(shards)`: the hash's high bits pick the shard, the table
    /// itself uses the low bits.
    shard_shift: u32,
    hasher: DefaultHashBuilder,
    capacity: u32,
    aging_secs: u32,
    len: AtomicU32,
    owners: Q,
    learned: AtomicU64,
    moved: AtomicU64,
    aged: AtomicU64,
    refused_full: AtomicU64,
    refused_owner_limit: AtomicU64,
    refused_move: AtomicU64,
}

impl<K: Copy + Eq + Hash, O: Copy + Eq, Q: Owners<O>> AgingTable<K, O, Q> {
    /// `shards` (rounded to a power of two in 2..=2^16) behind their own locks,
    /// `capacity` entries in all, dynamic entries expire `aging_secs` after
    /// last seen.
    pub fn new(shards: usize, capacity: u32, aging_secs: u32, owners: Q) -> Self {
        let shards = shards.clamp(2, 1 << 16).next_power_of_two();
        AgingTable {
            shards: (0..shards).map(|_| RwLock::new(HashTable::new())).collect(),
            shard_shift: 64 - shards.trailing_zeros(),
            hasher: DefaultHashBuilder::default(),
            capacity,
            aging_secs,
            len: AtomicU32::new(0),
            owners,
            learned: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            aged: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            refused_owner_limit: AtomicU64::new(0),
            refused_move: AtomicU64::new(0),
        }
    }

    pub fn owners(&self) -> &Q {
        &self.owners
    }

    pub fn aging_secs(&self) -> u32 {
        self.aging_secs
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn locate(&self, key: &K) -> (u64, &Shard<K, O>) {
        let hash = self.hasher.hash_one(key);
        // At least two shards: the shift is below 64 and the index in range.
        (hash, &self.shards[(hash >> self.shard_shift) as usize])
    }

    fn is_live(&self, e: &Entry<K, O>, now: u32) -> bool {
        e.is_static || now.wrapping_sub(e.last_seen.load(Relaxed)) < self.aging_secs
    }

    /// Whether `e` may not move to `to` at `now` (counted when so).
    fn held(&self, e: &Entry<K, O>, to: O, now: u32) -> bool {
        let held = !e.is_static
            && e.owner != to
            && self
                .owners
                .holds(e.owner, to, now.wrapping_sub(e.last_seen.load(Relaxed)));
        if held {
            self.refused_move.fetch_add(1, Relaxed);
        }
        held
    }

    /// The owner of `key`, if its entry is live.
    pub fn lookup(&self, key: K, now: u32) -> Option<O> {
        let (hash, shard) = self.locate(&key);
        let table = shard.read().unwrap_or_else(|e| e.into_inner());
        let e = table.find(hash, |e| e.key == key)?;
        self.is_live(e, now).then_some(e.owner)
    }

    /// Whether learning `key` at `owner` now would be refused by the owner's
    /// hold; a refusal is counted. Read lock only.
    pub fn refuse_held_move(&self, key: K, owner: O, now: u32) -> bool {
        let (hash, shard) = self.locate(&key);
        let table = shard.read().unwrap_or_else(|e| e.into_inner());
        table
            .find(hash, |e| e.key == key)
            .is_some_and(|e| self.held(e, owner, now))
    }

    /// Learns that `key` is at `owner`.
    pub fn learn(&self, key: K, owner: O, now: u32) -> Learn<O> {
        let (hash, shard) = self.locate(&key);
        {
            // Fast path: the key is where we last saw it.
            let table = shard.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = table.find(hash, |e| e.key == key) {
                if e.owner == owner {
                    // Skip the store when unchanged so the cache line stays shared.
                    if e.last_seen.load(Relaxed) != now {
                        e.last_seen.store(now, Relaxed);
                    }
                    return Learn::Refreshed;
                }
                if e.is_static {
                    return Learn::Static;
                }
                if self.held(e, owner, now) {
                    return Learn::Held;
                }
            }
        }
        let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = table.find_mut(hash, |e| e.key == key) {
            if e.owner == owner {
                e.last_seen.store(now, Relaxed);
                return Learn::Refreshed;
            }
            if e.is_static {
                return Learn::Static;
            }
            if self.held(e, owner, now) {
                return Learn::Held;
            }
            let from = e.owner;
            // A move is a new key for the owner it lands on: it counts against
            // that owner's quota. If that owner is full, the stale entry still goes.
            self.owners.release(from);
            if self.owners.reserve(owner) {
                e.owner = owner;
                e.last_seen.store(now, Relaxed);
                self.moved.fetch_add(1, Relaxed);
                return Learn::Moved { from };
            }
            if let Ok(o) = table.find_entry(hash, |e| e.key == key) {
                o.remove();
                self.len.fetch_sub(1, Relaxed);
            }
            self.refused_owner_limit.fetch_add(1, Relaxed);
            return Learn::OwnerLimit;
        }
        if !self.reserve() {
            self.refused_full.fetch_add(1, Relaxed);
            return Learn::TableFull;
        }
        if !self.owners.reserve(owner) {
            self.len.fetch_sub(1, Relaxed);
            self.refused_owner_limit.fetch_add(1, Relaxed);
            return Learn::OwnerLimit;
        }
        table.insert_unique(
            hash,
            Entry {
                key,
                owner,
                is_static: false,
                last_seen: AtomicU32::new(now),
            },
            |e| self.hasher.hash_one(e.key),
        );
        self.learned.fetch_add(1, Relaxed);
        Learn::Learned
    }

    /// Takes one global slot, if free.
    fn reserve(&self) -> bool {
        if self.len.fetch_add(1, Relaxed) >= self.capacity {
            self.len.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Adds or replaces a static entry: never ages, never moves, counts against
    /// the capacity but not the owner's quota. A replaced entry keeps its slot.
    pub fn add_static(&self, key: K, owner: O) -> Result<(), Learn<O>> {
        let (hash, shard) = self.locate(&key);
        let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = table.find_mut(hash, |e| e.key == key) {
            if !e.is_static {
                self.owners.release(e.owner);
            }
            e.owner = owner;
            e.is_static = true;
            return Ok(());
        }
        if !self.reserve() {
            return Err(Learn::TableFull);
        }
        table.insert_unique(
            hash,
            Entry {
                key,
                owner,
                is_static: true,
                last_seen: AtomicU32::new(0),
            },
            |e| self.hasher.hash_one(e.key),
        );
        Ok(())
    }

    /// Releases what removed entry `e` held.
    fn release(&self, e: &Entry<K, O>) {
        self.len.fetch_sub(1, Relaxed);
        if !e.is_static {
            self.owners.release(e.owner);
        }
    }

    /// Removes `key`'s entry if `doomed(owner, is_static)`. Returns whether it did.
    pub fn remove_if(&self, key: K, doomed: impl FnOnce(O, bool) -> bool) -> bool {
        let (hash, shard) = self.locate(&key);
        let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
        match table.find_entry(hash, |e| e.key == key) {
            Ok(o) if doomed(o.get().owner, o.get().is_static) => {
                let (e, _) = o.remove();
                self.release(&e);
                true
            }
            _ => false,
        }
    }

    /// Removes every entry for which `doomed(key, owner, is_static)`; returns how many.
    pub fn remove_where(&self, mut doomed: impl FnMut(&K, O, bool) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
            table.retain(|e| {
                let gone = doomed(&e.key, e.owner, e.is_static);
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
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
            table.retain(|e| {
                let live = self.is_live(e, now);
                if !live {
                    self.release(e);
                    removed += 1;
                }
                live
            });
        }
        self.aged.fetch_add(removed as u64, Relaxed);
        removed
    }

    pub fn len(&self) -> usize {
        self.len.load(Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live entries, unordered.
    pub fn rows(&self, now: u32) -> Vec<Row<K, O>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let table = shard.read().unwrap_or_else(|e| e.into_inner());
            out.extend(table.iter().filter(|e| self.is_live(e, now)).map(|e| Row {
                key: e.key,
                owner: e.owner,
                is_static: e.is_static,
                age: if e.is_static {
                    0
                } else {
                    now.wrapping_sub(e.last_seen.load(Relaxed))
                },
            }));
        }
        out
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            entries: self.len.load(Relaxed),
            learned: self.learned.load(Relaxed),
            moved: self.moved.load(Relaxed),
            aged: self.aged.load(Relaxed),
            refused_full: self.refused_full.load(Relaxed),
            refused_owner_limit: self.refused_owner_limit.load(Relaxed),
            refused_move: self.refused_move.load(Relaxed),
        }
    }

    /// Heap bytes held by the shards' tables.
    pub fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .allocation_size()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Owners 0..4, each with `limit` learned slots; owner 3 holds moves for 5 s.
    struct Quota {
        limit: u32,
        used: Mutex<[u32; 4]>,
    }

    impl Owners<u8> for Quota {
        fn reserve(&self, o: u8) -> bool {
            let mut used = self.used.lock().unwrap();
            let ok = used[o as usize] < self.limit;
            used[o as usize] += u32::from(ok);
            ok
        }
        fn release(&self, o: u8) {
            self.used.lock().unwrap()[o as usize] -= 1;
        }
        fn holds(&self, _from: u8, to: u8, silent_for: u32) -> bool {
            to == 3 && silent_for < 5
        }
    }

    fn table(shards: usize, capacity: u32, limit: u32) -> AgingTable<u32, u8, Quota> {
        let quota = Quota {
            limit,
            used: Mutex::new([0; 4]),
        };
        AgingTable::new(shards, capacity, 100, quota)
    }

    fn used(t: &AgingTable<u32, u8, Quota>) -> [u32; 4] {
        *t.owners().used.lock().unwrap()
    }

    #[test]
    fn learn_refresh_move_age() {
        for shards in [2, 16, 64] {
            let t = table(shards, 10, 10);
            assert_eq!(t.learn(7, 0, 0), Learn::Learned);
            assert_eq!(t.learn(7, 0, 50), Learn::Refreshed);
            assert_eq!(t.learn(7, 1, 60), Learn::Moved { from: 0 });
            assert_eq!((t.lookup(7, 159), t.lookup(7, 160)), (Some(1), None));
            assert_eq!(used(&t), [0, 1, 0, 0]);
            assert_eq!((t.age(159), t.age(160)), (0, 1));
            assert_eq!((t.len(), used(&t)), (0, [0; 4]));
            let s = t.stats();
            assert_eq!((s.learned, s.moved, s.aged), (1, 1, 1));
        }
    }

    #[test]
    fn capacity_and_owner_quota() {
        let t = table(4, 5, 2);
        assert_eq!(t.learn(1, 0, 0), Learn::Learned);
        assert_eq!(t.learn(2, 0, 0), Learn::Learned);
        assert_eq!(t.learn(3, 0, 0), Learn::OwnerLimit);
        assert_eq!(t.learn(3, 1, 0), Learn::Learned);
        assert_eq!(t.learn(4, 1, 0), Learn::Learned);
        // a move into a full owner forgets the stale entry
        assert_eq!(t.learn(1, 1, 0), Learn::OwnerLimit);
        assert_eq!((t.lookup(1, 0), t.len(), used(&t)), (None, 3, [1, 2, 0, 0]));
        t.add_static(10, 2).unwrap();
        t.add_static(11, 2).unwrap();
        assert_eq!(t.learn(12, 2, 0), Learn::TableFull);
        assert_eq!(t.add_static(13, 2), Err(Learn::TableFull));
        // statics take no quota; turning a learned entry static frees its slot
        t.add_static(3, 2).unwrap();
        assert_eq!((t.len(), used(&t)), (5, [1, 1, 0, 0]));
        let s = t.stats();
        assert_eq!((s.refused_full, s.refused_owner_limit), (1, 2));
    }

    #[test]
    fn holds_and_statics() {
        let t = table(8, 10, 10);
        t.learn(1, 0, 100);
        assert!(t.refuse_held_move(1, 3, 104));
        assert_eq!(t.learn(1, 3, 104), Learn::Held);
        assert!(!t.refuse_held_move(1, 0, 104), "not a move");
        assert_eq!(t.learn(1, 3, 105), Learn::Moved { from: 0 });
        assert_eq!(t.stats().refused_move, 2);
        t.add_static(2, 0).unwrap();
        assert_eq!(t.learn(2, 1, 0), Learn::Static);
        assert!(
            !t.refuse_held_move(2, 3, 0),
            "a static entry is not held, it is pinned"
        );
        assert_eq!(t.age(u32::MAX / 2), 1);
        assert_eq!(t.lookup(2, u32::MAX / 2), Some(0));
        assert!(!t.remove_if(2, |_, is_static| !is_static));
        assert_eq!(t.remove_where(|_, o, _| o == 0), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn rows_report_live_entries() {
        let t = table(2, 10, 10);
        t.learn(1, 0, 10);
        t.learn(2, 1, 12);
        t.add_static(3, 2).unwrap();
        let mut rows = t.rows(15);
        rows.sort_by_key(|r| r.key);
        let ages: Vec<_> = rows
            .iter()
            .map(|r| (r.key, r.owner, r.is_static, r.age))
            .collect();
        assert_eq!(ages, [(1, 0, false, 5), (2, 1, false, 3), (3, 2, true, 0)]);
        assert_eq!(t.rows(111).len(), 2, "key 1 expired");
        assert!(t.heap_bytes() > 0);
    }
}
