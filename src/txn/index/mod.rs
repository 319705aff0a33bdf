//! The in-memory index of committed versions: for every key, the versions a running or
//! future transaction may still read, each tagged with the sequence number at which its
//! commit became known to this node (protocol.md §5, "snapshot of the known commit set").
//!
//! A reader pinned at sequence `p` sees, for each key, the greatest version whose sequence is
//! `<= p`. Versions carry an optional cached value: versions are immutable, so the cache
//! never needs invalidation, only a byte budget.
//!
//! # Order
//!
//! Keys are kept in the order of their *scan position*, a keyed 64-bit hash of the key (the
//! key's bytes break ties): shard `i` holds the `i`-th slice of the position space, and each
//! shard is a B-tree. So a SCAN cursor is simply a position: [`Index::scan`] resumes from it
//! in O(log n + COUNT), [`Index::random_live`] starts from a random one, and no command needs
//! to walk the whole keyspace except KEYS (which walks it one shard at a time).
//!
//! # Counts
//!
//! Each shard counts its keys whose newest version is a value (not a tombstone), and the
//! expiry times of those newest versions, so that [`Index::key_counts`] (DBSIZE, INFO
//! keyspace) costs O(shards + keys expired but not yet collected), not O(keys).
//!
//! # Leaving the index
//!
//! A version leaves the index in two ways, and each time it is handed back to the caller as
//! a [`Dropped`] version so that garbage collection can delete what storage holds for it:
//!
//! * **superseded**: given the lowest pin any running or future reader can have (`min_pin`),
//!   every version older than the greatest one at or below `min_pin` is invisible to all of
//!   them ([`Index::insert`] and [`Index::sweep_shard`]);
//! * **dead key**: a key whose only version is dead (a tombstone, or expired for every running
//!   transaction) and visible to every reader is removed entirely, in two steps:
//!   [`Index::sweep_shard`] reports it as a [`DeadKey`], the caller checks that nothing could
//!   bring an older version back (without holding any index lock), and
//!   [`Index::remove_dead`] removes it if it is still in the same state.
//!
//! Each shard remembers which of its keys may need such work (several versions, or a sole
//! version that is a tombstone or expires), so that a sweep does not visit every key.

use std::borrow::Borrow;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use super::record::Kind;
use crate::storage::VersionId;

/// log2 of the number of shards.
const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
/// Scan positions are in `1..=MAX_POSITION` (0 is the cursor that starts and ends a scan).
pub const MAX_POSITION: u64 = 1 << 63;

/// One committed version of a key, as the index knows it.
#[derive(Clone, Debug)]
pub struct VersionMeta {
    /// The version (commit timestamp and transaction).
    pub id: VersionId,
    /// When its commit became known to this node.
    pub seq: u64,
    /// What it is.
    pub kind: Kind,
    /// Absolute expiry in ms, 0 for none.
    pub expire_at: u64,
    /// The stored value, if cached.
    pub value: Option<Bytes>,
}

impl VersionMeta {
    /// Whether the key holds a value at this version at time `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.kind != Kind::Tombstone && (self.expire_at == 0 || self.expire_at > now_ms)
    }

    /// The same metadata without the cached value.
    fn bare(&self) -> VersionMeta {
        VersionMeta {
            value: None,
            ..self.clone()
        }
    }
}

/// A version that left the index: no reader, running or future, can see it any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The user key.
    pub key: Bytes,
    /// The version.
    pub id: VersionId,
    /// What it was (a tombstone stores no value).
    pub kind: Kind,
}

/// A key whose sole version is dead for every reader: a candidate for [`Index::remove_dead`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadKey {
    /// The user key.
    pub key: Bytes,
    /// Its sole version when the sweep saw it.
    pub id: VersionId,
}

/// What [`Index::sweep_shard`] and [`Index::remove_dead`] did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Versions that left the index, superseded ones and those of removed keys.
    pub dropped: Vec<Dropped>,
    /// Keys whose sole version is dead (from [`Index::sweep_shard`]).
    pub dead: Vec<DeadKey>,
    /// Keys removed entirely (by [`Index::remove_dead`]).
    pub removed_keys: usize,
}

/// A key in a shard's B-tree: its scan position, then its bytes.
#[derive(Clone, Debug)]
struct Slot {
    pos: u64,
    key: Bytes,
}

/// What a shard's B-tree is searched with: a stored [`Slot`], or a borrowed position and key.
trait Probe {
    fn pos(&self) -> u64;
    fn bytes(&self) -> &[u8];
}

impl Probe for Slot {
    fn pos(&self) -> u64 {
        self.pos
    }
    fn bytes(&self) -> &[u8] {
        &self.key
    }
}

impl Probe for (u64, &[u8]) {
    fn pos(&self) -> u64 {
        self.0
    }
    fn bytes(&self) -> &[u8] {
        self.1
    }
}

impl<'a> Borrow<dyn Probe + 'a> for Slot {
    fn borrow(&self) -> &(dyn Probe + 'a) {
        self
    }
}

impl PartialEq for dyn Probe + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.pos() == other.pos() && self.bytes() == other.bytes()
    }
}
impl Eq for dyn Probe + '_ {}
impl PartialOrd for dyn Probe + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn Probe + '_ {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.pos(), self.bytes()).cmp(&(other.pos(), other.bytes()))
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn Probe) == (other as &dyn Probe)
    }
}
impl Eq for Slot {}
impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Slot {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self as &dyn Probe).cmp(other as &dyn Probe)
    }
}

#[derive(Default)]
struct Shard {
    /// Every key with its versions, oldest first, in scan order.
    keys: BTreeMap<Slot, Vec<VersionMeta>>,
    /// Keys a sweep must visit: those for which [`needs_sweep`] held when last touched.
    candidates: BTreeSet<Slot>,
    /// Keys whose newest version is a value.
    values: usize,
    /// Expiry time -> number of keys whose newest version is a value expiring then.
    expiring: BTreeMap<u64, usize>,
    /// Sum of `expiring`'s counts.
    expiring_total: usize,
    /// Versions held.
    versions: usize,
}

impl Shard {
    /// Accounts for `newest` becoming (`add`) or ceasing to be (`!add`) a key's newest version.
    fn count_newest(&mut self, newest: Option<&VersionMeta>, add: bool) {
        let Some(v) = newest.filter(|v| v.kind != Kind::Tombstone) else {
            return;
        };
        if add {
            self.values += 1;
        } else {
            self.values -= 1;
        }
        if v.expire_at != 0 {
            if add {
                *self.expiring.entry(v.expire_at).or_insert(0) += 1;
                self.expiring_total += 1;
            } else if let Some(n) = self.expiring.get_mut(&v.expire_at) {
                *n -= 1;
                if *n == 0 {
                    self.expiring.remove(&v.expire_at);
                }
                self.expiring_total -= 1;
            }
        }
    }

    /// Keys with an expired newest value at `now_ms`.
    fn expired(&self, now_ms: u64) -> usize {
        self.expiring.range(..=now_ms).map(|(_, n)| n).sum()
    }
}

/// Whether a key with these versions may have work for a sweep: an old version to drop, or
/// a sole version that may become dead (a tombstone, or one that expires).
fn needs_sweep(versions: &[VersionMeta]) -> bool {
    match versions {
        [] => false,
        [only] => only.kind == Kind::Tombstone || only.expire_at != 0,
        _ => true,
    }
}

/// A key live for a reader, as [`Index::scan`] and [`Index::live_keys`] return it.
#[derive(Clone, Debug)]
pub struct LiveKey {
    /// The user key.
    pub key: Bytes,
    /// Its scan position.
    pub pos: u64,
    /// Its visible version (without the cached value).
    pub meta: VersionMeta,
}

/// A page of [`Index::scan`].
#[derive(Debug, Default)]
pub struct ScanPage {
    /// The keys visited that are live for the reader, in scan order.
    pub keys: Vec<LiveKey>,
    /// The cursor to continue from: 0 once every position was visited.
    pub next: u64,
}

/// Sharded, ordered map from user key to its versions, oldest first.
pub struct Index {
    shards: Box<[RwLock<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    cached_bytes: AtomicUsize,
    cache_budget: usize,
}

impl Index {
    /// An empty index whose value cache holds at most `cache_budget` bytes.
    pub fn new(cache_budget: usize) -> Self {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: Default::default(),
            cached_bytes: AtomicUsize::new(0),
            cache_budget,
        }
    }

    /// The scan position of `key`: in `1..=MAX_POSITION`, stable for this process.
    pub fn position(&self, key: &[u8]) -> u64 {
        (self.hasher.hash_one(key) >> 1) + 1
    }

    /// The shard holding position `pos` (`pos` in `1..=MAX_POSITION`).
    fn shard_of(pos: u64) -> usize {
        ((pos - 1) >> (63 - SHARD_BITS)) as usize
    }

    fn locate(&self, key: &[u8]) -> (u64, &RwLock<Shard>) {
        let pos = self.position(key);
        (pos, &self.shards[Self::shard_of(pos)])
    }

    /// The version of `key` visible to a reader pinned at `pin`.
    pub fn visible(&self, key: &[u8], pin: u64) -> Option<VersionMeta> {
        let (pos, shard) = self.locate(key);
        let shard = shard.read();
        let versions = shard.keys.get(&(pos, key) as &dyn Probe)?;
        visible_in(versions, pin).cloned()
    }

    /// The greatest committed version of `key` known, whatever its sequence.
    pub fn latest(&self, key: &[u8]) -> Option<VersionId> {
        self.with_latest(key, |v| v.id)
    }

    /// The greatest committed version of `key` known, without its value.
    pub fn latest_meta(&self, key: &[u8]) -> Option<VersionMeta> {
        self.with_latest(key, VersionMeta::bare)
    }

    fn with_latest<T>(&self, key: &[u8], f: impl FnOnce(&VersionMeta) -> T) -> Option<T> {
        let (pos, shard) = self.locate(key);
        let shard = shard.read();
        shard
            .keys
            .get(&(pos, key) as &dyn Probe)
            .and_then(|v| v.last())
            .map(f)
    }

    /// Adds a committed version. Versions that no reader pinned at `min_pin` or later can
    /// read any more are dropped (the greatest one at or below `min_pin` is kept) and
    /// returned: they are garbage.
    ///
    /// `min_pin` must be at most the pin of every running reader and of every reader that
    /// can still start (no reader pins below it from now on).
    pub fn insert(&self, key: Bytes, mut meta: VersionMeta, min_pin: u64) -> Vec<Dropped> {
        if let Some(v) = &meta.value {
            if !self.reserve_cache(v.len()) {
                meta.value = None;
            }
        }
        let mut dropped = Vec::new();
        let (pos, shard) = self.locate(&key);
        let mut guard = shard.write();
        let shard = &mut *guard;
        let slot = Slot { pos, key };
        let versions = shard.keys.entry(slot.clone()).or_default();
        let at = versions.partition_point(|v| v.id < meta.id);
        if versions.get(at).is_some_and(|v| v.id == meta.id) {
            // Already known (e.g. learned twice): keep the first.
            if let Some(v) = &meta.value {
                self.release_cache(v.len());
            }
            return dropped;
        }
        let newest_before = versions.last().map(VersionMeta::bare);
        versions.insert(at, meta);
        let before = versions.len();
        self.prune(&slot.key, versions, min_pin, &mut dropped);
        let pruned = before - versions.len();
        let sweep = needs_sweep(versions);
        let newest_after = (at + 1 == before).then(|| versions.last().map(VersionMeta::bare));
        shard.versions = shard.versions + 1 - pruned;
        if let Some(newest_after) = newest_after {
            shard.count_newest(newest_before.as_ref(), false);
            shard.count_newest(newest_after.as_ref(), true);
        }
        if sweep {
            shard.candidates.insert(slot);
        }
        dropped
    }

    /// Drops versions invisible to every reader pinned at `min_pin` or later into `dropped`.
    /// The newest version always stays.
    fn prune(
        &self,
        key: &Bytes,
        versions: &mut Vec<VersionMeta>,
        min_pin: u64,
        dropped: &mut Vec<Dropped>,
    ) {
        if versions.len() < 2 {
            return;
        }
        // The greatest version at or below min_pin stays; smaller ones at or below min_pin
        // are shadowed by it for every pin >= min_pin.
        let Some(keep) = versions.iter().rposition(|v| v.seq <= min_pin) else {
            return;
        };
        let mut released = 0;
        let mut i = 0;
        versions.retain(|v| {
            let drop = i < keep && v.seq <= min_pin;
            i += 1;
            if drop {
                released += v.value.as_ref().map_or(0, |b| b.len());
                dropped.push(Dropped {
                    key: key.clone(),
                    id: v.id,
                    kind: v.kind,
                });
            }
            !drop
        });
        if released > 0 {
            self.release_cache(released);
        }
    }

    /// Number of shards, for [`Index::sweep_shard`].
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Collects the garbage of shard `shard` (under its lock, held for this call only):
    /// drops superseded versions as [`Index::insert`] does, and reports every key whose
    /// only version is dead at `min_now` (a tombstone, or expired at or before it) and
    /// visible at `min_pin`, for [`Index::remove_dead`].
    ///
    /// `min_now` must be at most the clock of every running transaction, so that none of
    /// them still considers such a key live.
    pub fn sweep_shard(&self, shard: usize, min_pin: u64, min_now: u64) -> Sweep {
        let mut sweep = Sweep::default();
        let mut guard = self.shards[shard].write();
        let Shard {
            keys,
            candidates,
            versions: held,
            ..
        } = &mut *guard;
        candidates.retain(|slot| {
            let Some(versions) = keys.get_mut(slot) else {
                return false;
            };
            let before = versions.len();
            self.prune(&slot.key, versions, min_pin, &mut sweep.dropped);
            *held -= before - versions.len();
            if let [only] = versions.as_slice() {
                if only.seq <= min_pin && !only.is_live(min_now) {
                    sweep.dead.push(DeadKey {
                        key: slot.key.clone(),
                        id: only.id,
                    });
                }
            }
            needs_sweep(versions)
        });
        sweep
    }

    /// Removes the keys of `dead` (found by [`Index::sweep_shard`] of the same shard) whose
    /// sole version is still the one seen, still dead at `min_now` and visible at `min_pin`,
    /// unless `keep(key)` says otherwise. `keep` is called under the shard's lock: it must
    /// not touch the index.
    pub fn remove_dead(
        &self,
        shard: usize,
        dead: Vec<DeadKey>,
        min_pin: u64,
        min_now: u64,
        keep: &dyn Fn(&Bytes) -> bool,
    ) -> Sweep {
        let mut sweep = Sweep::default();
        let mut released = 0;
        let mut guard = self.shards[shard].write();
        let shard = &mut *guard;
        for DeadKey { key, id } in dead {
            let pos = self.position(&key);
            let probe = (pos, &key[..]);
            let still_dead = match shard.keys.get(&probe as &dyn Probe).map(Vec::as_slice) {
                Some([only]) => only.id == id && only.seq <= min_pin && !only.is_live(min_now),
                _ => false,
            };
            if !still_dead || keep(&key) {
                continue;
            }
            let Some((slot, mut versions)) = shard.keys.remove_entry(&probe as &dyn Probe) else {
                continue;
            };
            shard.candidates.remove(&slot);
            let Some(only) = versions.pop() else { continue };
            shard.count_newest(Some(&only), false);
            shard.versions -= 1;
            released += only.value.as_ref().map_or(0, |b| b.len());
            sweep.dropped.push(Dropped {
                key,
                id: only.id,
                kind: only.kind,
            });
            sweep.removed_keys += 1;
        }
        drop(guard);
        if released > 0 {
            self.release_cache(released);
        }
        sweep
    }

    /// Caches the value of a version read from storage, if the budget allows.
    pub fn cache_value(&self, key: &[u8], id: VersionId, value: &Bytes) {
        if !self.reserve_cache(value.len()) {
            return;
        }
        let (pos, shard) = self.locate(key);
        let mut shard = shard.write();
        if let Some(v) = shard
            .keys
            .get_mut(&(pos, key) as &dyn Probe)
            .and_then(|vs| vs.iter_mut().find(|v| v.id == id))
        {
            if v.value.is_none() {
                v.value = Some(value.clone());
                return;
            }
        }
        drop(shard);
        self.release_cache(value.len());
    }

    fn reserve_cache(&self, len: usize) -> bool {
        let mut current = self.cached_bytes.load(Ordering::Relaxed);
        loop {
            if current.saturating_add(len) > self.cache_budget {
                return false;
            }
            match self.cached_bytes.compare_exchange_weak(
                current,
                current + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(c) => current = c,
            }
        }
    }

    fn release_cache(&self, len: usize) {
        self.cached_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    /// Bytes of values currently cached.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes.load(Ordering::Relaxed)
    }

    /// Every key of shard `shard` live at `now_ms` for a reader pinned at `pin` and
    /// accepted by `filter`, in scan order. One shard at a time, so that a walk of the whole
    /// keyspace (KEYS) can let other work run between shards.
    pub fn live_keys(
        &self,
        shard: usize,
        pin: u64,
        now_ms: u64,
        filter: &dyn Fn(&[u8]) -> bool,
    ) -> Vec<LiveKey> {
        let shard = self.shards[shard].read();
        shard
            .keys
            .iter()
            .filter_map(|(slot, versions)| {
                let v = visible_in(versions, pin).filter(|v| v.is_live(now_ms))?;
                filter(&slot.key).then(|| LiveKey {
                    key: slot.key.clone(),
                    pos: slot.pos,
                    meta: v.bare(),
                })
            })
            .collect()
    }

    /// The keys of shard `shard` whose newest version older than `before` is live at
    /// `now_ms`, whatever the readers' pins (FLUSHALL).
    pub fn live_before(&self, shard: usize, before: VersionId, now_ms: u64) -> Vec<Bytes> {
        let shard = self.shards[shard].read();
        shard
            .keys
            .iter()
            .filter(|(_, versions)| {
                versions
                    .iter()
                    .rev()
                    .find(|v| v.id < before)
                    .is_some_and(|v| v.is_live(now_ms))
            })
            .map(|(slot, _)| slot.key.clone())
            .collect()
    }

    /// Visits keys in scan order from position `cursor` on, up to `count` of them (more if
    /// several keys share the last position: a position is never split between pages), and
    /// returns those live at `now_ms` for a reader pinned at `pin`. Keys present from the
    /// first call to the last of a scan are returned at least once.
    pub fn scan(&self, cursor: u64, count: usize, pin: u64, now_ms: u64) -> ScanPage {
        let mut page = ScanPage::default();
        let start = cursor.max(1);
        if start > MAX_POSITION {
            return page;
        }
        let count = count.max(1);
        let mut visited = 0;
        let mut last_pos = None;
        for shard in Self::shard_of(start)..SHARDS {
            let guard = self.shards[shard].read();
            let from = Slot {
                pos: start,
                key: Bytes::new(),
            };
            for (slot, versions) in guard.keys.range((Bound::Included(from), Bound::Unbounded)) {
                if visited >= count && last_pos != Some(slot.pos) {
                    page.next = slot.pos;
                    return page;
                }
                visited += 1;
                last_pos = Some(slot.pos);
                if let Some(v) = visible_in(versions, pin).filter(|v| v.is_live(now_ms)) {
                    page.keys.push(LiveKey {
                        key: slot.key.clone(),
                        pos: slot.pos,
                        meta: v.bare(),
                    });
                }
            }
        }
        page
    }

    /// A key live at `now_ms` for a reader pinned at `pin`, chosen from position `from` on
    /// (wrapping around), looking at no more than `budget` keys; `None` if none was found
    /// within the budget.
    pub fn random_live(&self, from: u64, budget: usize, pin: u64, now_ms: u64) -> Option<Bytes> {
        let from = from.clamp(1, MAX_POSITION);
        let first = Self::shard_of(from);
        let mut looked = 0;
        for i in 0..=SHARDS {
            let shard = (first + i) % SHARDS;
            let guard = self.shards[shard].read();
            let lower = if i == 0 {
                Bound::Included(Slot {
                    pos: from,
                    key: Bytes::new(),
                })
            } else {
                Bound::Unbounded
            };
            for (slot, versions) in guard.keys.range((lower, Bound::Unbounded)) {
                if looked >= budget {
                    return None;
                }
                looked += 1;
                if visible_in(versions, pin).is_some_and(|v| v.is_live(now_ms)) {
                    return Some(slot.key.clone());
                }
            }
        }
        None
    }

    /// `(keys, keys with an expiry)` whose newest version is a value live at `now_ms`.
    /// Not a snapshot: the caller excludes concurrent insertions if it needs one.
    pub fn key_counts(&self, now_ms: u64) -> (usize, usize) {
        let (mut keys, mut expires) = (0, 0);
        for shard in self.shards.iter() {
            let shard = shard.read();
            let expired = shard.expired(now_ms);
            keys += shard.values - expired;
            expires += shard.expiring_total - expired;
        }
        (keys, expires)
    }

    /// Number of versions held in memory.
    pub fn version_count(&self) -> usize {
        self.shards.iter().map(|s| s.read().versions).sum()
    }
}

fn visible_in(versions: &[VersionMeta], pin: u64) -> Option<&VersionMeta> {
    // Newest first: in the common case the newest version is already visible.
    versions.iter().rev().find(|v| v.seq <= pin)
}

#[cfg(test)]
mod tests;
