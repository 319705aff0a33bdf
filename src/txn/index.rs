//! The in-memory index of committed versions: for every key, the versions a running or
//! future transaction may still read, each tagged with the sequence number at which its
//! commit became known to this node (protocol.md §5, "snapshot of the known commit set").
//!
//! A reader pinned at sequence `p` sees, for each key, the greatest version whose sequence is
//! `<= p`. Versions carry an optional cached value: versions are immutable, so the cache
//! never needs invalidation, only a byte budget.
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
//!   transaction) and visible to every reader is removed entirely ([`Index::sweep_shard`]),
//!   when the caller confirms that nothing in storage could bring an older version back.
//!
//! Each shard remembers which of its keys may need such work (several versions, or a sole
//! version that is a tombstone or expires), so that a sweep does not visit every key.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use super::record::Kind;
use crate::storage::VersionId;

const SHARDS: usize = 64;

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

/// What [`Index::sweep_shard`] did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Versions that left the index, superseded ones and those of removed keys.
    pub dropped: Vec<Dropped>,
    /// Keys removed entirely (their sole version was dead).
    pub removed_keys: usize,
}

#[derive(Default)]
struct Shard {
    /// Every key with its versions, oldest first.
    keys: HashMap<Bytes, Vec<VersionMeta>>,
    /// Keys a sweep must visit: those for which [`needs_sweep`] held when last touched.
    candidates: HashSet<Bytes>,
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

/// Sharded map from user key to its versions, oldest first.
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

    fn shard(&self, key: &[u8]) -> &RwLock<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The version of `key` visible to a reader pinned at `pin`.
    pub fn visible(&self, key: &[u8], pin: u64) -> Option<VersionMeta> {
        let shard = self.shard(key).read();
        let versions = shard.keys.get(key)?;
        visible_in(versions, pin).cloned()
    }

    /// The greatest committed version of `key` known, whatever its sequence.
    pub fn latest(&self, key: &[u8]) -> Option<VersionId> {
        let shard = self.shard(key).read();
        shard.keys.get(key).and_then(|v| v.last()).map(|v| v.id)
    }

    /// The greatest committed version of `key` with its expiry and liveness at `now_ms`.
    pub fn latest_meta(&self, key: &[u8]) -> Option<VersionMeta> {
        let shard = self.shard(key).read();
        shard
            .keys
            .get(key)
            .and_then(|v| v.last())
            .map(|v| VersionMeta {
                value: None,
                ..v.clone()
            })
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
        let mut guard = self.shard(&key).write();
        let shard = &mut *guard;
        let versions = shard.keys.entry(key.clone()).or_default();
        let at = versions.partition_point(|v| v.id < meta.id);
        if versions.get(at).is_some_and(|v| v.id == meta.id) {
            // Already known (e.g. learned twice): keep the first.
            if let Some(v) = &meta.value {
                self.release_cache(v.len());
            }
            return dropped;
        }
        versions.insert(at, meta);
        self.prune(&key, versions, min_pin, &mut dropped);
        if needs_sweep(versions) {
            shard.candidates.insert(key);
        }
        dropped
    }

    /// Drops versions invisible to every reader pinned at `min_pin` or later into `dropped`.
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

    /// Collects the garbage of shard `shard` (under its lock, which is held for this call
    /// only): drops superseded versions as [`Index::insert`] does, and removes every key
    /// whose only version is dead at `min_now` (a tombstone, or expired at or before it)
    /// and visible at `min_pin`, provided `removable(key)` agrees.
    ///
    /// `min_now` must be at most the clock of every running transaction, so that none of
    /// them still considers a removed key live. `removable` is called with the shard lock
    /// held: it must not touch the index.
    pub fn sweep_shard(
        &self,
        shard: usize,
        min_pin: u64,
        min_now: u64,
        removable: &mut dyn FnMut(&Bytes) -> bool,
    ) -> Sweep {
        let mut sweep = Sweep::default();
        let mut released = 0;
        let mut guard = self.shards[shard].write();
        let Shard { keys, candidates } = &mut *guard;
        candidates.retain(|key| {
            let Some(versions) = keys.get_mut(key) else {
                return false;
            };
            self.prune(key, versions, min_pin, &mut sweep.dropped);
            let dead = match versions.as_slice() {
                [only] => only.seq <= min_pin && !only.is_live(min_now),
                _ => false,
            };
            if dead && removable(key) {
                if let Some(only) = keys.remove(key).and_then(|mut v| v.pop()) {
                    released += only.value.as_ref().map_or(0, |b| b.len());
                    sweep.dropped.push(Dropped {
                        key: key.clone(),
                        id: only.id,
                        kind: only.kind,
                    });
                    sweep.removed_keys += 1;
                }
                return false;
            }
            needs_sweep(versions)
        });
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
        let mut shard = self.shard(key).write();
        if let Some(v) = shard
            .keys
            .get_mut(key)
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
            if current + len > self.cache_budget {
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

    /// Every key live at `now_ms` for a reader pinned at `pin`, with its visible version.
    pub fn live_keys(&self, pin: u64, now_ms: u64) -> Vec<(Bytes, VersionMeta)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            for (key, versions) in shard.keys.iter() {
                if let Some(v) = visible_in(versions, pin).filter(|v| v.is_live(now_ms)) {
                    out.push((
                        key.clone(),
                        VersionMeta {
                            value: None,
                            ..v.clone()
                        },
                    ));
                }
            }
        }
        out
    }

    /// `(keys, keys with an expiry)` live at `now_ms` for a reader pinned at `pin`.
    pub fn count_live(&self, pin: u64, now_ms: u64) -> (usize, usize) {
        let (mut keys, mut expires) = (0, 0);
        for shard in self.shards.iter() {
            for versions in shard.read().keys.values() {
                if let Some(v) = visible_in(versions, pin).filter(|v| v.is_live(now_ms)) {
                    keys += 1;
                    if v.expire_at != 0 {
                        expires += 1;
                    }
                }
            }
        }
        (keys, expires)
    }

    /// Number of versions held in memory.
    pub fn version_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().keys.values().map(Vec::len).sum::<usize>())
            .sum()
    }
}

fn visible_in(versions: &[VersionMeta], pin: u64) -> Option<&VersionMeta> {
    // Newest first: in the common case the newest version is already visible.
    versions.iter().rev().find(|v| v.seq <= pin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::TxnId;

    fn meta(ts: u64, seq: u64, value: &'static [u8]) -> VersionMeta {
        VersionMeta {
            id: VersionId {
                ts,
                txn: TxnId(ts as u128),
            },
            seq,
            kind: Kind::String,
            expire_at: 0,
            value: Some(Bytes::from_static(value)),
        }
    }

    #[test]
    fn reader_sees_greatest_version_at_its_pin() {
        let index = Index::new(1 << 20);
        index.insert(Bytes::from_static(b"k"), meta(10, 1, b"a"), 0);
        index.insert(Bytes::from_static(b"k"), meta(20, 2, b"b"), 0);
        assert_eq!(index.visible(b"k", 1).unwrap().id.ts, 10);
        assert_eq!(index.visible(b"k", 2).unwrap().id.ts, 20);
        assert!(index.visible(b"k", 0).is_none());
        assert!(index.visible(b"other", 2).is_none());
    }

    #[test]
    fn a_late_older_version_never_shadows_a_newer_one() {
        // A commit with a smaller timestamp that becomes known later.
        let index = Index::new(1 << 20);
        index.insert(Bytes::from_static(b"k"), meta(20, 1, b"new"), 0);
        index.insert(Bytes::from_static(b"k"), meta(10, 2, b"old"), 0);
        assert_eq!(index.visible(b"k", 2).unwrap().id.ts, 20);
        assert_eq!(index.latest(b"k").unwrap().ts, 20);
    }

    #[test]
    fn pruning_keeps_what_pinned_readers_need() {
        let index = Index::new(1 << 20);
        let k = Bytes::from_static(b"k");
        index.insert(k.clone(), meta(10, 1, b"a"), 0);
        index.insert(k.clone(), meta(20, 2, b"b"), 1); // a reader pinned at 1 exists
        index.insert(k.clone(), meta(30, 3, b"c"), 1);
        assert_eq!(index.visible(b"k", 1).unwrap().id.ts, 10);
        assert_eq!(index.version_count(), 3);
        index.insert(k.clone(), meta(40, 4, b"d"), 3); // oldest reader now at 3
        assert_eq!(index.version_count(), 2);
        assert_eq!(index.visible(b"k", 3).unwrap().id.ts, 30);
        assert_eq!(index.cached_bytes(), 2);
    }

    #[test]
    fn cache_respects_its_budget() {
        let index = Index::new(3);
        index.insert(Bytes::from_static(b"a"), meta(1, 1, b"12"), 0);
        index.insert(Bytes::from_static(b"b"), meta(2, 2, b"34"), 0);
        assert!(index.visible(b"a", 2).unwrap().value.is_some());
        assert!(index.visible(b"b", 2).unwrap().value.is_none());
        assert_eq!(index.cached_bytes(), 2);
    }

    fn ids(dropped: &[Dropped]) -> Vec<u64> {
        let mut ts: Vec<u64> = dropped.iter().map(|d| d.id.ts).collect();
        ts.sort_unstable();
        ts
    }

    fn tombstone(ts: u64, seq: u64) -> VersionMeta {
        VersionMeta {
            kind: Kind::Tombstone,
            value: None,
            ..meta(ts, seq, b"")
        }
    }

    #[test]
    fn insert_returns_the_versions_it_prunes() {
        let index = Index::new(1 << 20);
        let k = Bytes::from_static(b"k");
        assert!(index.insert(k.clone(), meta(10, 1, b"a"), 0).is_empty());
        // A reader pinned at 1 keeps version 10.
        assert!(index.insert(k.clone(), meta(20, 2, b"b"), 1).is_empty());
        let dropped = index.insert(k.clone(), meta(30, 3, b"c"), 2);
        assert_eq!(
            dropped,
            vec![Dropped {
                key: k.clone(),
                id: meta(10, 1, b"").id,
                kind: Kind::String
            }]
        );
        assert_eq!(index.version_count(), 2);
        // Learning a version twice drops nothing and keeps one copy.
        assert!(index.insert(k, meta(30, 4, b"c"), 4).is_empty());
        assert_eq!(index.version_count(), 2);
    }

    fn sweep_all(index: &Index, min_pin: u64, min_now: u64, removable: bool) -> Sweep {
        let mut total = Sweep::default();
        for shard in 0..index.shard_count() {
            let s = index.sweep_shard(shard, min_pin, min_now, &mut |_| removable);
            total.dropped.extend(s.dropped);
            total.removed_keys += s.removed_keys;
        }
        total
    }

    #[test]
    fn sweep_drops_what_pins_released() {
        let index = Index::new(1 << 20);
        let k = Bytes::from_static(b"k");
        index.insert(k.clone(), meta(10, 1, b"a"), 0);
        index.insert(k.clone(), meta(20, 2, b"b"), 1);
        index.insert(k.clone(), meta(30, 3, b"c"), 1);
        // The reader at 1 is still there: nothing to drop.
        assert!(sweep_all(&index, 1, 0, true).dropped.is_empty());
        assert_eq!(index.visible(b"k", 1).unwrap().id.ts, 10);
        // It ended: only the newest stays; a live key is never removed.
        let swept = sweep_all(&index, 3, u64::MAX, true);
        assert_eq!(ids(&swept.dropped), vec![10, 20]);
        assert_eq!(swept.removed_keys, 0);
        assert_eq!(index.visible(b"k", 3).unwrap().id.ts, 30);
        assert_eq!(index.cached_bytes(), 1);
    }

    #[test]
    fn sweep_removes_a_sole_tombstone_visible_to_every_pin() {
        let index = Index::new(1 << 20);
        let k = Bytes::from_static(b"k");
        index.insert(k.clone(), meta(10, 1, b"a"), 0);
        index.insert(k.clone(), tombstone(20, 2), 1);
        // A reader at 1 still sees the value.
        let swept = sweep_all(&index, 1, 0, true);
        assert!(swept.dropped.is_empty());
        // Visible to all, but the caller refuses (an older record lists the key).
        let swept = sweep_all(&index, 2, 0, false);
        assert_eq!(ids(&swept.dropped), vec![10]);
        assert_eq!(swept.removed_keys, 0);
        assert_eq!(index.latest(b"k").unwrap().ts, 20);
        // The caller agrees: the key is gone.
        let swept = sweep_all(&index, 2, 0, true);
        assert_eq!(swept.removed_keys, 1);
        assert_eq!(
            swept.dropped,
            vec![Dropped {
                key: k,
                id: tombstone(20, 2).id,
                kind: Kind::Tombstone
            }]
        );
        assert!(index.latest(b"k").is_none());
        assert_eq!(index.version_count(), 0);
        assert_eq!(index.cached_bytes(), 0);
    }

    #[test]
    fn sweep_removes_expired_keys_only_once_every_clock_passed_the_expiry() {
        let index = Index::new(1 << 20);
        let mut v = meta(10, 1, b"abc");
        v.expire_at = 1_000;
        index.insert(Bytes::from_static(b"k"), v, 0);
        // A transaction whose clock is before the expiry still sees the key.
        assert_eq!(sweep_all(&index, 1, 999, true).removed_keys, 0);
        // A version not yet visible to every pin stays.
        assert_eq!(sweep_all(&index, 0, 1_000, true).removed_keys, 0);
        let swept = sweep_all(&index, 1, 1_000, true);
        assert_eq!(swept.removed_keys, 1);
        assert_eq!(ids(&swept.dropped), vec![10]);
        assert_eq!(index.cached_bytes(), 0);
    }

    #[test]
    fn sweep_visits_only_keys_that_may_have_garbage() {
        let index = Index::new(1 << 20);
        for i in 0..100u64 {
            let key = Bytes::from(format!("live{i}"));
            index.insert(key, meta(i + 1, i + 1, b"v"), 0);
        }
        index.insert(Bytes::from_static(b"gone"), tombstone(500, 101), 0);
        let mut asked = Vec::new();
        for shard in 0..index.shard_count() {
            index.sweep_shard(shard, 101, 0, &mut |key| {
                asked.push(key.clone());
                true
            });
        }
        assert_eq!(asked, vec![Bytes::from_static(b"gone")]);
        // A removed key and a key reduced to one plain version leave the candidates.
        let k = Bytes::from_static(b"k");
        index.insert(k.clone(), meta(600, 102, b"a"), 0);
        index.insert(k.clone(), meta(601, 103, b"b"), 0);
        assert_eq!(sweep_all(&index, 103, 0, true).dropped.len(), 1);
        let shards = index.shards.iter();
        assert_eq!(
            shards.map(|s| s.read().candidates.len()).sum::<usize>(),
            0,
            "nothing left to visit"
        );
    }

    #[test]
    fn live_keys_skip_tombstones_and_expired() {
        let index = Index::new(0);
        index.insert(Bytes::from_static(b"a"), meta(1, 1, b""), 0);
        let mut dead = meta(2, 2, b"");
        dead.kind = Kind::Tombstone;
        index.insert(Bytes::from_static(b"b"), dead, 0);
        let mut expired = meta(3, 3, b"");
        expired.expire_at = 100;
        index.insert(Bytes::from_static(b"c"), expired, 0);
        let keys: Vec<_> = index
            .live_keys(3, 200)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![Bytes::from_static(b"a")]);
        assert_eq!(index.count_live(3, 50), (2, 1));
    }
}
