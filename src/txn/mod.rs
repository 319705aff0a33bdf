//! The protocol core: read-atomic transactions over any [`Storage`] (protocol.md §4–§7).
//!
//! An [`Engine`] owns a node's commit set (the [`index::Index`] of committed versions), its
//! hybrid logical clock and its storage. A [`Txn`] buffers writes, reads from a snapshot of
//! the commit set pinned at its first read, and commits by writing every version, then the
//! commit record, then publishing the commit to the index — in that order, so that no reader
//! ever sees part of a transaction or anything that is not durable.
//!
//! The core knows nothing of RESP or of any concrete backend.

pub mod clock;
pub mod gc;
pub mod index;
pub mod open;
pub mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::storage::{
    CommitBatch, CommitOutcome, CommitRecord, Storage, StorageError, TxnId, VersionId, VersionKey,
};
use clock::Clock;
use gc::{Collector, Snapshots};
pub use gc::{GcGauges, GcReport};
use index::{Index, VersionMeta};
pub use record::{Entry, Kind, Value, WriteMeta};

/// Why a transaction did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxnError {
    /// A key read by a read-modify-write command changed before commit (first committer
    /// wins). Nothing was written; the transaction may be re-executed from scratch.
    #[error("transaction conflict: a key it read was changed by a concurrent commit")]
    Conflict,
    /// A watched key changed after WATCH. Nothing was written.
    #[error("a watched key was changed")]
    WatchFailed,
    /// A commit with the same idempotency key already exists (its version id is given).
    #[error("a transaction with this idempotency key already committed")]
    Duplicate(VersionId),
    /// The backend failed; see [`StorageError`] for whether anything was committed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A bug: the commit task ended without an outcome.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Tuning of an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Bytes of values the version cache may hold.
    pub cache_bytes: usize,
    /// How often garbage collection runs in the background; zero: never (call
    /// [`Engine::collect_garbage`]).
    pub gc_interval: Duration,
    /// How long a commit record that holds an idempotency key is kept after its versions
    /// are superseded: the window in which a retry with the same key is recognised.
    pub idempotency_retention: Duration,
    /// How long any other commit record is kept after its versions are superseded, so that
    /// AFT.STATUS can still report the transaction as committed.
    pub status_retention: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_bytes: 256 << 20,
            gc_interval: Duration::from_secs(1),
            idempotency_retention: Duration::from_secs(24 * 3600),
            status_retention: Duration::from_secs(60),
        }
    }
}

/// Counters reported by INFO.
#[derive(Default, Debug)]
pub struct Stats {
    /// Transactions committed by this node.
    pub commits: AtomicU64,
    /// Commits rejected by write-conflict checks.
    pub conflicts: AtomicU64,
    /// Transactions whose watched keys changed.
    pub watch_failures: AtomicU64,
    /// Commits that failed in the backend.
    pub storage_errors: AtomicU64,
    /// Values read from the backend (version cache misses).
    pub storage_reads: AtomicU64,
    /// Reads served from the version cache.
    pub cache_hits: AtomicU64,
    /// Commit records loaded at start.
    pub recovered_commits: AtomicU64,
    /// Stored versions deleted by garbage collection.
    pub versions_collected: AtomicU64,
    /// Commit records deleted by garbage collection.
    pub commits_collected: AtomicU64,
    /// Keys removed from memory because their only version was a tombstone or expired.
    pub keys_removed: AtomicU64,
    /// Garbage collection rounds run.
    pub gc_runs: AtomicU64,
    /// Storage calls of garbage collection that failed (retried later).
    pub gc_errors: AtomicU64,
    /// Orphan versions (written by commits that never got a commit record) reclaimed.
    pub orphans_reclaimed: AtomicU64,
}

impl Stats {
    /// Zeroes every counter (CONFIG RESETSTAT) except `recovered_commits`, a fact about the
    /// start rather than a running count.
    pub fn reset(&self) {
        // Destructured so that a new counter cannot be forgotten here.
        let Stats {
            commits,
            conflicts,
            watch_failures,
            storage_errors,
            storage_reads,
            cache_hits,
            recovered_commits: _,
            versions_collected,
            commits_collected,
            keys_removed,
            gc_runs,
            gc_errors,
            orphans_reclaimed,
        } = self;
        for counter in [
            commits,
            conflicts,
            watch_failures,
            storage_errors,
            storage_reads,
            cache_hits,
            versions_collected,
            commits_collected,
            keys_removed,
            gc_runs,
            gc_errors,
            orphans_reclaimed,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// What WATCH remembers about a key: the version it had and until when it was live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchState {
    version: Option<VersionId>,
    /// Expiry of the watched version if the key was live when watched (0: no expiry).
    live_until: Option<u64>,
}

/// One node's transaction engine. Cheap to share: wrap it in an `Arc`.
pub struct Engine {
    storage: Arc<dyn Storage>,
    index: Index,
    clock: Clock,
    /// Sequence number of the last commit published to the index.
    seq: AtomicU64,
    /// Serialises publication so that sequence numbers are handed out in index order.
    publish_lock: Mutex<()>,
    /// Pins and clocks of running transactions.
    snapshots: Mutex<Snapshots>,
    /// Garbage collection bookkeeping and its background task.
    gc: Collector,
    /// Keys written by commits that are validated but not yet published.
    inflight: Mutex<HashMap<Bytes, usize>>,
    /// Woken whenever a commit is published, for transactions waiting to retry.
    published: tokio::sync::Notify,
    node: u64,
    next_txn: AtomicU64,
    stats: Stats,
}

impl Engine {
    /// Opens an engine over `storage`, rebuilding the commit set from its commit records.
    pub async fn open(
        storage: Arc<dyn Storage>,
        config: EngineConfig,
    ) -> Result<Arc<Engine>, StorageError> {
        let engine = Arc::new(Engine {
            storage,
            index: Index::new(config.cache_bytes),
            clock: Clock::new(),
            seq: AtomicU64::new(0),
            publish_lock: Mutex::new(()),
            snapshots: Mutex::new(Snapshots::default()),
            gc: Collector::new(config.idempotency_retention, config.status_retention),
            inflight: Mutex::new(HashMap::new()),
            published: tokio::sync::Notify::new(),
            node: random_u64(),
            next_txn: AtomicU64::new(1),
            stats: Stats::default(),
        });
        engine.recover().await?;
        engine.gc.start(Arc::downgrade(&engine), config.gc_interval);
        Ok(engine)
    }

    async fn recover(&self) -> Result<(), StorageError> {
        const PAGE: usize = 1024;
        let mut after = None;
        loop {
            let records = self.storage.scan_commits(after, PAGE).await?;
            let Some(last) = records.last() else { break };
            after = Some(last.id);
            let full = records.len() == PAGE;
            for record in records {
                let writes = record::decode_body(&record.body)?;
                self.clock.observe(record.id.ts);
                let values = vec![None; writes.len()];
                let idempotent = record.idempotency_key.is_some();
                self.publish(record.id, &writes, values, idempotent);
                self.stats.recovered_commits.fetch_add(1, Ordering::Relaxed);
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// The backend's name.
    pub fn storage_name(&self) -> &'static str {
        self.storage.name()
    }

    /// Stops garbage collection (waiting for a round in progress), then flushes and closes
    /// the backend.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.gc.stop().await;
        self.storage.close().await
    }

    /// Counters for INFO.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// `(versions held in memory, bytes of cached values)`.
    pub fn memory_stats(&self) -> (usize, usize) {
        (self.index.version_count(), self.index.cached_bytes())
    }

    /// `(keys, keys with an expiry)` live now, as of the latest commit.
    pub fn key_counts(&self) -> (usize, usize) {
        self.index
            .count_live(self.seq.load(Ordering::Acquire), clock::wall_ms())
    }

    /// Starts a transaction. It pins its snapshot at its first read.
    pub fn begin(self: &Arc<Self>) -> Txn {
        Txn {
            id: self.new_txn_id(),
            engine: self.clone(),
            pin: None,
            now_ms: self.snapshots.lock().start_clock(),
            writes: HashMap::new(),
            write_bytes: 0,
            reads: HashMap::new(),
            checks: HashMap::new(),
            idempotency_key: None,
        }
    }

    /// Records the current state of `key` for WATCH.
    pub fn watch(&self, key: &[u8]) -> WatchState {
        let now = clock::wall_ms();
        // The newest *published* version: a commit being published right now is already in
        // the index but not yet readable, and a watch that recorded it could let EXEC pass
        // after its client read the version before it (a lost update).
        let published = self.seq.load(Ordering::Acquire);
        match self.index.visible(key, published) {
            None => WatchState {
                version: None,
                live_until: None,
            },
            Some(m) => WatchState {
                version: Some(m.id),
                live_until: m.is_live(now).then_some(m.expire_at),
            },
        }
    }

    /// Whether a key watched in `state` had no commit since, given its `latest` version now.
    ///
    /// A watch holds no pin, so a key that garbage collection removed since (`latest` is
    /// `None`) is known unchanged only if the commit record of the watched version is still
    /// stored: the key is removed only when no other stored record lists it, so the removed
    /// version was the watched one. Otherwise the watch fails (conservatively).
    fn unchanged_since_watch(&self, latest: Option<VersionId>, state: &WatchState) -> bool {
        match (latest, state.version) {
            (None, Some(watched)) => self.commit_of(watched.txn) == Some(watched),
            _ => latest == state.version,
        }
    }

    /// Waits until some commit is published, or `timeout` passes.
    pub async fn wait_for_publication(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.published.notified()).await;
    }

    fn pin(&self) -> u64 {
        let mut snapshots = self.snapshots.lock();
        // Read under the lock: a round computing its watermark sees this pin, or a
        // sequence number no greater than it.
        let pin = self.seq.load(Ordering::Acquire);
        snapshots.pin(pin);
        pin
    }

    /// Releases what a transaction registered: its pin, if it took one, and its clock.
    fn release(&self, pin: Option<u64>, now_ms: u64) {
        let mut snapshots = self.snapshots.lock();
        if let Some(pin) = pin {
            snapshots.unpin(pin);
        }
        snapshots.stop_clock(now_ms);
    }

    /// Makes a durable commit visible: every version at one new sequence number. The commit
    /// record is tracked for garbage collection first, and the versions the insertion
    /// supersedes become garbage.
    fn publish(
        &self,
        id: VersionId,
        writes: &[WriteMeta],
        values: Vec<Option<Bytes>>,
        idempotent: bool,
    ) {
        let _order = self.publish_lock.lock();
        self.gc.tracker.lock().track(
            id,
            writes.iter().map(|w| w.key.clone()).collect(),
            idempotent,
            std::time::Instant::now(),
        );
        let current = self.seq.load(Ordering::Acquire);
        let seq = current + 1;
        // No transaction pinned now or later can pin below min_pin.
        let min_pin = self.snapshots.lock().min_pin(current);
        let mut dropped = Vec::new();
        for (w, value) in writes.iter().zip(values) {
            dropped.extend(self.index.insert(
                w.key.clone(),
                VersionMeta {
                    id,
                    seq,
                    kind: w.kind,
                    expire_at: w.expire_at,
                    value,
                },
                min_pin,
            ));
        }
        self.seq.store(seq, Ordering::Release);
        drop(_order);
        if !dropped.is_empty() {
            self.gc
                .tracker
                .lock()
                .discard(dropped, std::time::Instant::now());
        }
        self.published.notify_waiters();
    }

    fn new_txn_id(&self) -> TxnId {
        let n = self.next_txn.fetch_add(1, Ordering::Relaxed);
        TxnId(((self.node as u128) << 64) | n as u128)
    }
}

/// Removes a commit's keys from the in-flight set when the commit ends, however it ends.
struct InflightGuard {
    engine: Arc<Engine>,
    keys: Vec<Bytes>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut inflight = self.engine.inflight.lock();
        for key in &self.keys {
            if let Some(n) = inflight.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    inflight.remove(key);
                }
            }
        }
    }
}

/// A key as a transaction read it from its snapshot (not from its own writes).
#[derive(Clone, Debug)]
struct Read {
    meta: Option<VersionMeta>,
    /// The value, once loaded (always `None` for tombstones and absent keys).
    value: Option<Bytes>,
    loaded: bool,
}

/// Metadata of a live key, without its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    /// What the key holds.
    pub kind: Kind,
    /// Absolute expiry in ms, if any.
    pub expire_at: Option<u64>,
}

/// A transaction: a write buffer over a pinned snapshot of the commit set.
///
/// Reads see the transaction's own writes first, then the snapshot (repeatable and
/// atomic). Writes touch nothing outside the transaction until [`Txn::commit`].
pub struct Txn {
    id: TxnId,
    engine: Arc<Engine>,
    pin: Option<u64>,
    now_ms: u64,
    writes: HashMap<Bytes, Option<Entry>>,
    /// Bytes held by `writes` (keys and values), for limits on open transactions.
    write_bytes: usize,
    reads: HashMap<Bytes, Read>,
    /// Keys read by read-modify-write commands -> the version read (validated at commit).
    checks: HashMap<Bytes, Option<VersionId>>,
    idempotency_key: Option<Bytes>,
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.engine.release(self.pin.take(), self.now_ms);
    }
}

impl Txn {
    /// The transaction's id (its commit record carries it).
    pub fn id(&self) -> TxnId {
        self.id
    }

    /// Bytes of keys and values buffered by its writes.
    pub fn write_bytes(&self) -> usize {
        self.write_bytes
    }

    /// Moves the transaction's clock to now: an interactive transaction that lives for a
    /// while evaluates expiry at the time of each command.
    pub fn touch_clock(&mut self) {
        self.now_ms = self.engine.snapshots.lock().move_clock(self.now_ms);
    }

    /// The time commands of this transaction run at (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Whether the transaction has buffered any write.
    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Makes the commit conditional on no other commit having used `key`.
    pub fn set_idempotency_key(&mut self, key: Bytes) {
        self.idempotency_key = Some(key);
    }

    fn pinned(&mut self) -> u64 {
        match self.pin {
            Some(p) => p,
            None => {
                let p = self.engine.pin();
                self.pin = Some(p);
                p
            }
        }
    }

    fn read_meta(&mut self, key: &Bytes) -> &mut Read {
        let pin = self.pinned();
        let engine = &self.engine;
        self.reads.entry(key.clone()).or_insert_with(|| {
            let meta = engine.index.visible(key, pin);
            match meta {
                Some(m) if m.kind != Kind::Tombstone => {
                    let value = m.value.clone();
                    let loaded = value.is_some();
                    if loaded {
                        engine.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    Read {
                        meta: Some(VersionMeta { value: None, ..m }),
                        value,
                        loaded,
                    }
                }
                other => Read {
                    meta: other,
                    value: None,
                    loaded: true,
                },
            }
        })
    }

    /// Loads, in one backend call, the values of every key in `keys` not yet known.
    pub async fn prefetch<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k Bytes>,
    ) -> Result<(), TxnError> {
        let mut wanted = Vec::new();
        let now = self.now_ms;
        for key in keys {
            if self.writes.contains_key(key) {
                continue;
            }
            let read = self.read_meta(key);
            if !read.loaded {
                // Only live versions: garbage collection may delete the value of a version
                // that every running transaction considers expired.
                if let Some(m) = read.meta.as_ref().filter(|m| m.is_live(now)) {
                    wanted.push(VersionKey {
                        key: key.clone(),
                        version: m.id,
                    });
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_by(|a, b| a.key.cmp(&b.key));
        wanted.dedup_by(|a, b| a.key == b.key);
        self.engine
            .stats
            .storage_reads
            .fetch_add(wanted.len() as u64, Ordering::Relaxed);
        let values = self.engine.storage.get_versions(wanted.clone()).await?;
        for (vk, value) in wanted.into_iter().zip(values) {
            let Some(value) = value else {
                return Err(StorageError::Corrupt(format!(
                    "committed version {:?} of a key is missing",
                    vk.version
                ))
                .into());
            };
            self.engine.index.cache_value(&vk.key, vk.version, &value);
            if let Some(read) = self.reads.get_mut(&vk.key) {
                read.value = Some(value);
                read.loaded = true;
            }
        }
        Ok(())
    }

    /// The live content of `key`: the transaction's own write, else the snapshot's version
    /// (absent if deleted or expired).
    pub async fn get(&mut self, key: &Bytes) -> Result<Option<Entry>, TxnError> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone().filter(|e| !self.expired(e.expire_at)));
        }
        let now = self.now_ms;
        let read = self.read_meta(key);
        match &read.meta {
            Some(m) if m.is_live(now) => {}
            _ => return Ok(None),
        }
        if !read.loaded {
            self.prefetch(std::iter::once(key)).await?;
        }
        let read = &self.reads[key];
        let (Some(meta), Some(value)) = (&read.meta, &read.value) else {
            return Ok(None);
        };
        Ok(Value::decode(meta.kind, value.clone()).map(|value| Entry {
            value,
            expire_at: (meta.expire_at != 0).then_some(meta.expire_at),
        }))
    }

    /// Like [`Txn::get`], and the key's version is validated at commit: if another
    /// transaction commits a new version of it first, this one fails with
    /// [`TxnError::Conflict`]. Read-modify-write commands read through this.
    pub async fn get_for_update(&mut self, key: &Bytes) -> Result<Option<Entry>, TxnError> {
        self.check(key);
        self.get(key).await
    }

    /// Whether `key` is live, and what it holds, without loading its value.
    pub fn meta(&mut self, key: &Bytes) -> Option<KeyMeta> {
        if let Some(w) = self.writes.get(key) {
            return w
                .as_ref()
                .filter(|e| !self.expired(e.expire_at))
                .map(|e| KeyMeta {
                    kind: e.value.kind(),
                    expire_at: e.expire_at,
                });
        }
        let now = self.now_ms;
        let read = self.read_meta(key);
        read.meta
            .as_ref()
            .filter(|m| m.is_live(now))
            .map(|m| KeyMeta {
                kind: m.kind,
                expire_at: (m.expire_at != 0).then_some(m.expire_at),
            })
    }

    /// Like [`Txn::meta`], validated at commit like [`Txn::get_for_update`].
    pub fn meta_for_update(&mut self, key: &Bytes) -> Option<KeyMeta> {
        self.check(key);
        self.meta(key)
    }

    fn check(&mut self, key: &Bytes) {
        if self.checks.contains_key(key) {
            return;
        }
        let version = if self.writes.contains_key(key) {
            // Our own blind write decided the value; validate the snapshot version anyway.
            let pin = self.pinned();
            self.engine.index.visible(key, pin).map(|m| m.id)
        } else {
            self.read_meta(key).meta.as_ref().map(|m| m.id)
        };
        self.checks.insert(key.clone(), version);
    }

    fn expired(&self, expire_at: Option<u64>) -> bool {
        expire_at.is_some_and(|at| at <= self.now_ms)
    }

    /// Buffers a write of `key`.
    pub fn put(&mut self, key: Bytes, entry: Entry) {
        let key_len = key.len();
        self.write_bytes += key_len + entry_size(&entry);
        if let Some(old) = self.writes.insert(key, Some(entry)) {
            self.release_write(key_len, old);
        }
    }

    /// Buffers a delete of `key`.
    pub fn delete(&mut self, key: Bytes) {
        let key_len = key.len();
        self.write_bytes += key_len;
        if let Some(old) = self.writes.insert(key, None) {
            self.release_write(key_len, old);
        }
    }

    /// Accounts for a buffered write replaced by a newer one of the same key.
    fn release_write(&mut self, key_len: usize, old: Option<Entry>) {
        let size = key_len + old.as_ref().map_or(0, entry_size);
        self.write_bytes = self.write_bytes.saturating_sub(size);
    }

    /// Every key live in this transaction's view (snapshot plus own writes), unordered.
    pub fn keys(&mut self) -> Vec<Bytes> {
        let pin = self.pinned();
        let mut keys: Vec<Bytes> = self
            .engine
            .index
            .live_keys(pin, self.now_ms)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !self.writes.contains_key(k))
            .collect();
        let now = self.now_ms;
        keys.extend(
            self.writes
                .iter()
                .filter(|(_, w)| {
                    w.as_ref()
                        .is_some_and(|e| e.expire_at.is_none_or(|at| at > now))
                })
                .map(|(k, _)| k.clone()),
        );
        keys
    }

    /// Number of live keys in this transaction's view.
    pub fn key_count(&mut self) -> usize {
        let pin = self.pinned();
        if self.writes.is_empty() {
            return self.engine.index.count_live(pin, self.now_ms).0;
        }
        self.keys().len()
    }

    /// Commits: validates read-modify-write keys and `watches`, writes every version, then
    /// the commit record, then publishes. Returns the commit's version id, or `None` for a
    /// transaction that wrote nothing. On any error nothing of it is visible.
    pub async fn commit(
        mut self,
        watches: &HashMap<Bytes, WatchState>,
    ) -> Result<Option<VersionId>, TxnError> {
        let engine = self.engine.clone();
        let now = clock::wall_ms();
        let writes = std::mem::take(&mut self.writes);
        // Validate and reserve in one critical section: first committer wins.
        let (id, guard) = {
            let mut inflight = engine.inflight.lock();
            for (key, state) in watches {
                let latest = engine.index.latest(key);
                let expired_since = state.live_until.is_some_and(|at| at != 0 && at <= now);
                if !engine.unchanged_since_watch(latest, state)
                    || expired_since
                    || inflight.contains_key(key)
                {
                    engine.stats.watch_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(TxnError::WatchFailed);
                }
            }
            for (key, version) in &self.checks {
                if !unchanged_since_read(engine.index.latest(key), *version)
                    || inflight.contains_key(key)
                {
                    engine.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    return Err(TxnError::Conflict);
                }
            }
            if writes.is_empty() {
                return Ok(None);
            }
            let id = VersionId {
                ts: engine.clock.tick(),
                txn: self.id,
            };
            let keys: Vec<Bytes> = writes.keys().cloned().collect();
            for key in &keys {
                *inflight.entry(key.clone()).or_insert(0) += 1;
            }
            (
                id,
                InflightGuard {
                    engine: engine.clone(),
                    keys,
                },
            )
        };

        let mut metas = Vec::with_capacity(writes.len());
        let mut versions = Vec::with_capacity(writes.len());
        let mut cached = Vec::with_capacity(writes.len());
        for (key, write) in writes {
            match write {
                Some(entry) => {
                    let stored = entry.value.encode();
                    metas.push(WriteMeta {
                        key: key.clone(),
                        kind: entry.value.kind(),
                        expire_at: entry.expire_at.unwrap_or(0),
                    });
                    cached.push(Some(stored.clone()));
                    versions.push((key, stored));
                }
                None => {
                    metas.push(WriteMeta {
                        key,
                        kind: Kind::Tombstone,
                        expire_at: 0,
                    });
                    cached.push(None);
                }
            }
        }
        let idempotent = self.idempotency_key.is_some();
        // Versions to reclaim if the commit certainly created no record.
        let orphans: Vec<VersionKey> = versions
            .iter()
            .map(|(key, _)| VersionKey {
                key: key.clone(),
                version: id,
            })
            .collect();
        let batch = CommitBatch {
            versions,
            record: CommitRecord {
                id,
                idempotency_key: self.idempotency_key.take(),
                body: record::encode_body(&metas),
            },
        };
        // The write and the publication run in their own task: once the commit is sent,
        // a client that goes away cannot leave it durable but unpublished.
        let task = tokio::spawn(async move {
            let outcome = engine.storage.commit(batch).await;
            let result = match outcome {
                Ok(CommitOutcome::Committed) => {
                    engine.publish(id, &metas, cached, idempotent);
                    engine.stats.commits.fetch_add(1, Ordering::Relaxed);
                    Ok(Some(id))
                }
                Ok(CommitOutcome::Duplicate(existing)) => {
                    engine.gc.tracker.lock().orphans(orphans);
                    Err(TxnError::Duplicate(existing))
                }
                Err(e) => {
                    engine.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
                    // Only an unknown outcome may have created the record.
                    if !matches!(e, StorageError::OutcomeUnknown(_)) {
                        engine.gc.tracker.lock().orphans(orphans);
                    }
                    Err(TxnError::Storage(e))
                }
            };
            drop(guard);
            result
        });
        task.await
            .map_err(|e| TxnError::Internal(format!("commit task failed: {e}")))?
    }
}

/// Whether a key read (at `read`) by a still-pinned transaction had no commit since, given
/// its `latest` version now.
///
/// `latest == None` after reading a version means garbage collection removed the key, which
/// it does only when the key's sole version is dead for every running transaction and
/// visible to every pin. While the reader is pinned, the version it read stays in the index
/// until it is that sole version, and a commit after the removal shows as a new latest
/// version: so the key had no commit since the read.
fn unchanged_since_read(latest: Option<VersionId>, read: Option<VersionId>) -> bool {
    latest == read || latest.is_none()
}

fn entry_size(entry: &Entry) -> usize {
    match &entry.value {
        Value::Str(b) => b.len(),
    }
}

/// A random 64-bit number from the standard library's per-process hash seed.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    async fn engine() -> Arc<Engine> {
        let config = EngineConfig {
            gc_interval: Duration::ZERO,
            ..EngineConfig::default()
        };
        Engine::open(Arc::new(MemoryStorage::new()), config)
            .await
            .unwrap()
    }

    async fn set(engine: &Arc<Engine>, key: &'static [u8], value: &'static [u8]) -> VersionId {
        let mut txn = engine.begin();
        txn.put(
            Bytes::from_static(key),
            Entry::string(Bytes::from_static(value)),
        );
        txn.commit(&HashMap::new()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn watch_ignores_a_version_still_being_published() {
        let engine = engine().await;
        let first = set(&engine, b"k", b"1").await;
        // A commit half way through publication: in the index, sequence not yet visible.
        let pending = VersionId {
            ts: engine.clock.tick(),
            txn: engine.new_txn_id(),
        };
        let next_seq = engine.seq.load(Ordering::Acquire) + 1;
        engine.index.insert(
            Bytes::from_static(b"k"),
            VersionMeta {
                id: pending,
                seq: next_seq,
                kind: Kind::String,
                expire_at: 0,
                value: Some(Bytes::from_static(b"2")),
            },
            0,
        );
        // A client that WATCHes now and then reads sees the first version...
        let state = engine.watch(b"k");
        assert_eq!(state.version, Some(first));
        let mut reader = engine.begin();
        let read = reader
            .get(&Bytes::from_static(b"k"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.value, Value::Str(Bytes::from_static(b"1")));
        // ...so its EXEC must fail once the pending version is there, not write 1 + 1.
        let mut writer = engine.begin();
        writer.put(
            Bytes::from_static(b"k"),
            Entry::string(Bytes::from_static(b"2")),
        );
        let watches = HashMap::from([(Bytes::from_static(b"k"), state)]);
        assert!(matches!(
            writer.commit(&watches).await,
            Err(TxnError::WatchFailed)
        ));
    }

    #[tokio::test]
    async fn watch_passes_when_nothing_changed() {
        let engine = engine().await;
        set(&engine, b"k", b"1").await;
        let state = engine.watch(b"k");
        let mut writer = engine.begin();
        writer.put(
            Bytes::from_static(b"k"),
            Entry::string(Bytes::from_static(b"2")),
        );
        let watches = HashMap::from([(Bytes::from_static(b"k"), state)]);
        assert!(writer.commit(&watches).await.unwrap().is_some());
    }
}
