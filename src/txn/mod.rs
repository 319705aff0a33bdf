//! The protocol core: read-atomic transactions over any [`Storage`] (protocol.md §4–§7).
//!
//! An [`Engine`] owns a node's commit set (the [`index::Index`] of committed versions), its
//! hybrid logical clock and its storage. A [`Txn`] buffers writes, reads from a snapshot of
//! the commit set pinned at its first read, and commits by writing every version, then the
//! commit record, then publishing the commit to the index — in that order, so that no reader
//! ever sees part of a transaction or anything that is not durable.
//!
//! # Commit outcomes
//!
//! A commit the backend acknowledged is published at once. One that certainly failed leaves
//! nothing visible (its orphan versions are reclaimed). One whose outcome is unknown (the
//! reply was lost: the backend may have applied it) is never forgotten: its keys stay fenced
//! for conflict checks and garbage collection, and a background task settles it by sending
//! the same commit again (commits are idempotent by id, see the storage contract) until the
//! backend answers; the commit is then published, or reclaimed (see [`resolve`]).
//!
//! # Snapshots that grow too old
//!
//! A snapshot holds back garbage collection of every version it can read. A snapshot older
//! than [`EngineConfig::max_snapshot_age`] stops doing so: garbage collection revokes it, and
//! the transaction's next read (or its commit, if it validated reads) fails with
//! [`TxnError::SnapshotTooOld`].
//!
//! The core knows nothing of RESP or of any concrete backend.

pub mod clock;
pub mod gc;
pub mod index;
pub mod open;
pub mod record;
mod resolve;
pub mod run;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use index::{Index, VersionMeta, MAX_POSITION};
pub use record::{Entry, Kind, Value, WriteMeta};
use resolve::Unresolved;
pub use watch::{WatchState, Watches};

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
    /// The transaction's snapshot is older than the configured limit: what it could read
    /// may have been collected. Nothing was written; it may be run again.
    #[error("snapshot too old: the transaction read a snapshot taken more than {} ms ago", .0.as_millis())]
    SnapshotTooOld(Duration),
    /// The backend failed; see [`StorageError`] for whether anything was committed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A bug: the commit task ended without an outcome.
    #[error("internal error: {0}")]
    Internal(String),
}

impl TxnError {
    /// Whether the transaction can simply run again from scratch, its client having seen
    /// nothing of it (write conflicts and revoked snapshots).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TxnError::Conflict | TxnError::SnapshotTooOld(_))
    }
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
    /// The longest a snapshot holds garbage collection back; older snapshots are revoked
    /// (see the module documentation). Zero: no limit.
    pub max_snapshot_age: Duration,
    /// Largest value a command may build (APPEND, SETRANGE): Redis's proto-max-bulk-len.
    pub max_value_len: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_bytes: 256 << 20,
            gc_interval: Duration::from_secs(1),
            idempotency_retention: Duration::from_secs(24 * 3600),
            status_retention: Duration::from_secs(60),
            max_snapshot_age: Duration::from_secs(60),
            max_value_len: 512 << 20,
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
    /// Commits whose outcome the backend left unknown (a lost reply).
    pub outcome_unknown: AtomicU64,
    /// Of those, commits found to be committed (and then published).
    pub unknown_committed: AtomicU64,
    /// Of those, commits found not to be committed (their keys were released).
    pub unknown_aborted: AtomicU64,
    /// Snapshots revoked for being older than the limit.
    pub snapshots_revoked: AtomicU64,
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
            outcome_unknown,
            unknown_committed,
            unknown_aborted,
            snapshots_revoked,
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
            outcome_unknown,
            unknown_committed,
            unknown_aborted,
            snapshots_revoked,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Keys of commits that are validated but not yet published (or whose outcome is not yet
/// known), and FLUSHALLs between taking their timestamp and fencing their keys.
#[derive(Default, Debug)]
struct Inflight {
    keys: HashMap<Bytes, usize>,
    flushing: usize,
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
    /// Tickets of pinned snapshots below this are revoked (see [`Snapshots`]).
    revoked_below: AtomicU64,
    max_snapshot_age: Duration,
    max_value_len: usize,
    /// Garbage collection bookkeeping and its background task.
    gc: Collector,
    /// Commits in flight: validation reserves their keys here (first committer wins).
    inflight: Mutex<Inflight>,
    /// Keys under WATCH by some connection -> number of watchers. Garbage collection does
    /// not remove a watched key from the index, so that its latest version only grows.
    watched: Mutex<HashMap<Bytes, usize>>,
    /// Woken whenever a commit is published, for transactions waiting to retry.
    published: tokio::sync::Notify,
    /// Set by [`Engine::close`]: unresolved commits stop being retried.
    closing: AtomicBool,
    /// Wakes the tasks resolving unknown outcomes when the engine closes.
    resolvers_stop: Arc<tokio::sync::Notify>,
    /// Commits whose outcome is being resolved.
    unresolved: AtomicU64,
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
            revoked_below: AtomicU64::new(0),
            max_snapshot_age: config.max_snapshot_age,
            max_value_len: config.max_value_len,
            gc: Collector::new(config.idempotency_retention, config.status_retention),
            inflight: Mutex::new(Inflight::default()),
            watched: Mutex::new(HashMap::new()),
            published: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            resolvers_stop: Arc::new(tokio::sync::Notify::new()),
            unresolved: AtomicU64::new(0),
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

    /// The backend's health as it knows it (see [`Storage::health`]).
    pub fn storage_health(&self) -> Result<(), String> {
        self.storage.health()
    }

    /// Stops garbage collection (waiting for a round in progress) and the resolution of
    /// unknown outcomes (a restarted node finds them in the store), then flushes and closes
    /// the backend.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.closing.store(true, Ordering::Release);
        self.resolvers_stop.notify_waiters();
        let unresolved = self.unresolved.load(Ordering::Relaxed);
        if unresolved > 0 {
            tracing::warn!(
                unresolved,
                "closing with commits whose outcome is unknown; a restart settles them"
            );
        }
        self.gc.stop().await;
        self.storage.close().await
    }

    /// Counters for INFO.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Commits whose outcome is unknown and still being resolved.
    pub fn unresolved_commits(&self) -> u64 {
        self.unresolved.load(Ordering::Relaxed)
    }

    /// `(versions held in memory, bytes of cached values)`.
    pub fn memory_stats(&self) -> (usize, usize) {
        (self.index.version_count(), self.index.cached_bytes())
    }

    /// `(keys, keys with an expiry)` live now, as of the latest published commit. Costs
    /// O(shards), not O(keys).
    pub fn key_counts(&self) -> (usize, usize) {
        // No commit is half published while the publication lock is held.
        let _published = self.publish_lock.lock();
        self.index.key_counts(clock::wall_ms())
    }

    /// The age of the oldest snapshot still pinned by a running transaction.
    pub fn oldest_snapshot_age(&self) -> Option<Duration> {
        self.snapshots
            .lock()
            .oldest_pin_age(std::time::Instant::now())
    }

    /// Starts a transaction. It pins its snapshot at its first read.
    pub fn begin(self: &Arc<Self>) -> Txn {
        Txn {
            id: new_txn_id(),
            engine: self.clone(),
            pin: None,
            now_ms: self.snapshots.lock().start_clock(),
            writes: HashMap::new(),
            write_bytes: 0,
            reads: HashMap::new(),
            checks: HashMap::new(),
            idempotency_key: None,
            flushed: false,
            validate_reads: false,
        }
    }

    /// Waits until some commit is published, or `timeout` passes.
    pub async fn wait_for_publication(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.published.notified()).await;
    }

    /// Pins the current snapshot for a transaction whose clock is `clock`.
    fn pin(&self, clock: u64) -> Pin {
        let mut snapshots = self.snapshots.lock();
        // Read under the lock: a round computing its watermark sees this pin, or a
        // sequence number no greater than it.
        let seq = self.seq.load(Ordering::Acquire);
        let ticket = snapshots.pin(seq, clock, std::time::Instant::now());
        Pin { seq, ticket }
    }

    /// Releases what a transaction registered: its pin, if it took one, and its clock.
    fn release(&self, pin: Option<Pin>, now_ms: u64) {
        self.snapshots
            .lock()
            .release(pin.map(|p| (p.seq, p.ticket)), now_ms);
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

    /// Removes `keys` from the in-flight set (one reservation each).
    fn release_inflight(&self, keys: &[Bytes]) {
        let mut inflight = self.inflight.lock();
        for key in keys {
            if let Some(n) = inflight.keys.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    inflight.keys.remove(key);
                }
            }
        }
    }

    /// Settles a commit the backend answered: publishes it, or accounts for its failure.
    /// An unknown outcome is handed to a background resolver, which keeps `guard`'s keys
    /// fenced until it knows.
    fn settle(
        self: &Arc<Self>,
        outcome: Result<CommitOutcome, StorageError>,
        pending: PendingCommit,
        guard: InflightGuard,
    ) -> Result<Option<VersionId>, TxnError> {
        let id = pending.batch.record.id;
        match outcome {
            Ok(CommitOutcome::Committed) => {
                self.publish(id, &pending.metas, pending.cached, pending.idempotent);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(id))
            }
            // A commit that found its own idempotency entry had applied (a retried request).
            Ok(CommitOutcome::Duplicate(existing)) if existing == id => {
                self.publish(id, &pending.metas, pending.cached, pending.idempotent);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(id))
            }
            Ok(CommitOutcome::Duplicate(existing)) => {
                self.gc.tracker.lock().orphans(pending.orphans());
                Err(TxnError::Duplicate(existing))
            }
            Err(StorageError::OutcomeUnknown(message)) => {
                self.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.outcome_unknown.fetch_add(1, Ordering::Relaxed);
                let keys = guard.keep();
                resolve::spawn(
                    self,
                    Unresolved {
                        pending,
                        keys,
                        first_error: message.to_string(),
                    },
                );
                Err(TxnError::Storage(StorageError::OutcomeUnknown(message)))
            }
            Err(e) => {
                self.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
                self.gc.tracker.lock().orphans(pending.orphans());
                Err(TxnError::Storage(e))
            }
        }
    }
}

/// A commit sent (or to send) to the backend, with what publishing it needs.
#[derive(Clone)]
struct PendingCommit {
    batch: CommitBatch,
    metas: Vec<WriteMeta>,
    cached: Vec<Option<Bytes>>,
    idempotent: bool,
}

impl PendingCommit {
    /// The versions to reclaim if the commit certainly created no record.
    fn orphans(&self) -> Vec<VersionKey> {
        self.batch
            .versions
            .iter()
            .map(|(key, _)| VersionKey {
                key: key.clone(),
                version: self.batch.record.id,
            })
            .collect()
    }
}

/// A pinned snapshot: the sequence it reads at, and its ticket (for revocation).
#[derive(Clone, Copy, Debug)]
struct Pin {
    seq: u64,
    ticket: u64,
}

/// Removes a commit's keys from the in-flight set when the commit ends, however it ends
/// (unless [`InflightGuard::keep`] hands them to a resolver).
struct InflightGuard {
    engine: Arc<Engine>,
    keys: Vec<Bytes>,
}

impl InflightGuard {
    /// Keeps the keys reserved past the guard; the caller releases them later with
    /// [`Engine::release_inflight`].
    fn keep(mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.keys)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if !self.keys.is_empty() {
            self.engine.release_inflight(&self.keys);
        }
    }
}

/// Ends a FLUSHALL's window between taking its timestamp and fencing its keys, however its
/// commit task ends.
struct FlushGuard(Arc<Engine>);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.0.inflight.lock().flushing -= 1;
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

impl KeyMeta {
    fn of_entry(entry: &Entry) -> KeyMeta {
        KeyMeta {
            kind: entry.value.kind(),
            expire_at: entry.expire_at,
        }
    }

    fn of_version(meta: &VersionMeta) -> KeyMeta {
        KeyMeta {
            kind: meta.kind,
            expire_at: (meta.expire_at != 0).then_some(meta.expire_at),
        }
    }
}

/// A transaction: a write buffer over a pinned snapshot of the commit set.
///
/// Reads see the transaction's own writes first, then the snapshot (repeatable and
/// atomic). Writes touch nothing outside the transaction until [`Txn::commit`].
pub struct Txn {
    id: TxnId,
    engine: Arc<Engine>,
    pin: Option<Pin>,
    now_ms: u64,
    writes: HashMap<Bytes, Option<Entry>>,
    /// Bytes held by `writes` (keys and values), for limits on open transactions.
    write_bytes: usize,
    reads: HashMap<Bytes, Read>,
    /// Keys read by read-modify-write commands -> the version read (validated at commit).
    checks: HashMap<Bytes, Option<VersionId>>,
    idempotency_key: Option<Bytes>,
    /// FLUSHALL ran in it: every key of the snapshot is deleted (writes after it stand).
    flushed: bool,
    /// Reads of the snapshot made once the transaction has written are validated at
    /// commit (see [`Txn::validate_reads_after_writes`]).
    validate_reads: bool,
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.engine.release(self.pin.take(), self.now_ms);
    }
}

impl Txn {
    /// The transaction's id (its commit record carries it): 128 random bits, unguessable.
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
        let ticket = self.pin.map(|p| p.ticket);
        self.now_ms = self.engine.snapshots.lock().move_clock(ticket, self.now_ms);
    }

    /// Largest value a command may build (see [`EngineConfig::max_value_len`]).
    pub fn max_value_len(&self) -> usize {
        self.engine.max_value_len
    }

    /// The time commands of this transaction run at (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Whether the transaction has buffered any write (a FLUSHALL counts).
    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty() || self.flushed
    }

    /// Makes the commit conditional on no other commit having used `key`.
    pub fn set_idempotency_key(&mut self, key: Bytes) {
        self.idempotency_key = Some(key);
    }

    /// From now on, every read of the snapshot made while the transaction has buffered a
    /// write is validated at commit like a read-modify-write read: the transaction then
    /// commits only if what those reads saw is still the latest state, so that its reads and
    /// writes take effect together at commit, as if run one after the other with nothing in
    /// between. A pipelined group of commands runs in this mode. Keyspace-wide reads (KEYS,
    /// SCAN, RANDOMKEY, DBSIZE) are not validated: the caller must not run them in this
    /// mode after a write.
    pub fn validate_reads_after_writes(&mut self) {
        self.validate_reads = true;
    }

    /// Whether the snapshot is still valid; `Err(SnapshotTooOld)` once garbage collection
    /// revoked it. A caller checks this after a command's reads: reads made before a
    /// successful check saw the snapshot intact.
    pub fn check_snapshot(&self) -> Result<(), TxnError> {
        if self.revoked() {
            Err(TxnError::SnapshotTooOld(self.engine.max_snapshot_age))
        } else {
            Ok(())
        }
    }

    fn revoked(&self) -> bool {
        self.pin
            .is_some_and(|p| p.ticket < self.engine.revoked_below.load(Ordering::Acquire))
    }

    fn pinned(&mut self) -> u64 {
        match self.pin {
            Some(p) => p.seq,
            None => {
                let p = self.engine.pin(self.now_ms);
                self.pin = Some(p);
                p.seq
            }
        }
    }

    fn read_meta(&mut self, key: &Bytes) -> &mut Read {
        let pin = self.pinned();
        let engine = &self.engine;
        let flushed = self.flushed;
        self.reads.entry(key.clone()).or_insert_with(|| {
            let meta = if flushed {
                None
            } else {
                engine.index.visible(key, pin)
            };
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

    /// A snapshot read of `key` by a command: validated at commit in
    /// [`Txn::validate_reads_after_writes`] mode once the transaction has written.
    fn note_read(&mut self, key: &Bytes) {
        if self.validate_reads && self.has_writes() {
            self.check(key);
        }
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
                // Collected under a revoked snapshot; otherwise a committed version must exist.
                self.check_snapshot()?;
                return Err(StorageError::Corrupt(
                    format!("committed version {:?} of a key is missing", vk.version).into(),
                )
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
        self.note_read(key);
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
                .map(KeyMeta::of_entry);
        }
        self.note_read(key);
        let now = self.now_ms;
        let read = self.read_meta(key);
        read.meta
            .as_ref()
            .filter(|m| m.is_live(now))
            .map(KeyMeta::of_version)
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
        let version = if self.writes.contains_key(key) || self.flushed {
            // Our own write decided the value; validate the snapshot version anyway.
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

    /// FLUSHALL: deletes every key. Writes buffered so far are dropped, later ones stand;
    /// the snapshot reads as empty from now on. At commit, the deletion covers every key
    /// committed before this transaction's commit timestamp, including commits in flight,
    /// so that it is atomic against every concurrent commit: each of those is entirely
    /// before it (deleted) or entirely after it (kept).
    pub fn flush_all(&mut self) {
        self.writes.clear();
        self.write_bytes = 0;
        self.reads.clear();
        self.flushed = true;
    }

    /// Accounts for a buffered write replaced by a newer one of the same key.
    fn release_write(&mut self, key_len: usize, old: Option<Entry>) {
        let size = key_len + old.as_ref().map_or(0, entry_size);
        self.write_bytes = self.write_bytes.saturating_sub(size);
    }

    /// Own writes live at the transaction's clock.
    fn live_writes(&self) -> impl Iterator<Item = (&Bytes, &Entry)> {
        let now = self.now_ms;
        self.writes.iter().filter_map(move |(k, w)| {
            w.as_ref()
                .filter(|e| e.expire_at.is_none_or(|at| at > now))
                .map(|e| (k, e))
        })
    }

    /// Every key live in this transaction's view (snapshot plus own writes) accepted by
    /// `filter`, unordered (KEYS). Walks the keyspace one index shard at a time, letting
    /// other tasks run in between.
    pub async fn keys_where(&mut self, filter: &(dyn Fn(&[u8]) -> bool + Sync)) -> Vec<Bytes> {
        let pin = self.pinned();
        let now = self.now_ms;
        let mut keys = Vec::new();
        if !self.flushed {
            for shard in 0..self.engine.index.shard_count() {
                let writes = &self.writes;
                let found = self
                    .engine
                    .index
                    .live_keys(shard, pin, now, &|k| !writes.contains_key(k) && filter(k));
                keys.extend(found.into_iter().map(|k| k.key));
                tokio::task::yield_now().await;
            }
        }
        keys.extend(
            self.live_writes()
                .filter(|(k, _)| filter(k))
                .map(|(k, _)| k.clone()),
        );
        keys
    }

    /// One SCAN step from `cursor`: visits about `count` keys in scan order and returns
    /// the cursor to continue from (0 at the end) and the visited keys live in this
    /// transaction's view, with their metadata. O(log n + count).
    pub fn scan(&mut self, cursor: u64, count: usize) -> (u64, Vec<(Bytes, KeyMeta)>) {
        let pin = self.pinned();
        let now = self.now_ms;
        let index = &self.engine.index;
        let page = index.scan(cursor, count, pin, now);
        let start = cursor.max(1);
        let end = if page.next == 0 { u64::MAX } else { page.next };
        let mut out: Vec<(u64, Bytes, KeyMeta)> = Vec::with_capacity(page.keys.len());
        if !self.flushed {
            out.extend(
                page.keys
                    .into_iter()
                    .filter(|k| !self.writes.contains_key(&k.key))
                    .map(|k| (k.pos, k.key, KeyMeta::of_version(&k.meta))),
            );
        }
        if start <= MAX_POSITION {
            for (key, entry) in self.live_writes() {
                let pos = index.position(key);
                if pos >= start && pos < end {
                    out.push((pos, key.clone(), KeyMeta::of_entry(entry)));
                }
            }
        }
        out.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        (page.next, out.into_iter().map(|(_, k, m)| (k, m)).collect())
    }

    /// A random key live in this transaction's view (RANDOMKEY): O(1) in the common case.
    pub fn random_key(&mut self) -> Option<Bytes> {
        let pin = self.pinned();
        let now = self.now_ms;
        if !self.flushed {
            let index = &self.engine.index;
            for _ in 0..4 {
                let from = rand::random::<u64>() % MAX_POSITION + 1;
                match index.random_live(from, 128, pin, now) {
                    Some(key) if !self.writes.contains_key(&key) => return Some(key),
                    _ => {}
                }
            }
            // Mostly dead keys around the positions tried: look at every shard.
            for shard in 0..index.shard_count() {
                let writes = &self.writes;
                if let Some(k) = index
                    .live_keys(shard, pin, now, &|k| !writes.contains_key(k))
                    .into_iter()
                    .next()
                {
                    return Some(k.key);
                }
            }
        }
        self.live_writes().map(|(k, _)| k.clone()).next()
    }

    /// Number of live keys in this transaction's view (DBSIZE): the latest published state
    /// adjusted by the transaction's own writes. O(shards + own writes).
    pub fn key_count(&mut self) -> usize {
        if self.flushed {
            return self.live_writes().count();
        }
        let (base, _) = self.engine.key_counts();
        let now = self.now_ms;
        let mut count = base as i64;
        for (key, write) in &self.writes {
            let own = write
                .as_ref()
                .is_some_and(|e| e.expire_at.is_none_or(|at| at > now));
            let latest = self
                .engine
                .index
                .latest_meta(key)
                .is_some_and(|m| m.is_live(now));
            count += own as i64 - latest as i64;
        }
        count.max(0) as usize
    }

    /// Commits, with no watched keys; see [`Txn::commit_watched`].
    pub async fn commit(self) -> Result<Option<VersionId>, TxnError> {
        self.commit_inner(None).await
    }

    /// Commits: validates read-modify-write keys and `watches`, writes every version, then
    /// the commit record, then publishes. Returns the commit's version id, or `None` for a
    /// transaction that wrote nothing. On any error nothing of it is visible, except an
    /// unknown outcome ([`StorageError::OutcomeUnknown`]): that commit is settled in the
    /// background and becomes visible whole if the backend applied it.
    pub async fn commit_watched(self, watches: &Watches) -> Result<Option<VersionId>, TxnError> {
        self.commit_inner(Some(watches)).await
    }

    async fn commit_inner(
        mut self,
        watches: Option<&Watches>,
    ) -> Result<Option<VersionId>, TxnError> {
        let unwatched = watches.is_none_or(Watches::is_empty);
        if self.writes.is_empty() && !self.flushed && self.checks.is_empty() && unwatched {
            // Read only, nothing to validate: done (no lock taken).
            return Ok(None);
        }
        let engine = self.engine.clone();
        if !self.checks.is_empty() {
            // Validation relies on the reads' snapshot having stayed pinned.
            self.check_snapshot()?;
        }
        let now = clock::wall_ms();
        let writes = std::mem::take(&mut self.writes);
        let flushed = self.flushed;
        // Validate and reserve in one critical section: first committer wins.
        let (id, guard, flush) = {
            let mut inflight = engine.inflight.lock();
            for (key, state) in watches.into_iter().flat_map(Watches::iter) {
                let latest = engine.index.latest(key);
                if !state.unchanged(latest, now)
                    || inflight.keys.contains_key(key)
                    || inflight.flushing > 0
                {
                    engine.stats.watch_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(TxnError::WatchFailed);
                }
            }
            for (key, version) in &self.checks {
                if !unchanged_since_read(engine.index.latest(key), *version)
                    || inflight.keys.contains_key(key)
                    || inflight.flushing > 0
                {
                    engine.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    return Err(TxnError::Conflict);
                }
            }
            if writes.is_empty() && !flushed {
                return Ok(None);
            }
            let id = VersionId {
                ts: engine.clock.tick(),
                txn: self.id,
            };
            let keys: Vec<Bytes> = writes.keys().cloned().collect();
            for key in &keys {
                *inflight.keys.entry(key.clone()).or_insert(0) += 1;
            }
            let flush = flushed.then(|| {
                inflight.flushing += 1;
                let captured: Vec<Bytes> = inflight.keys.keys().cloned().collect();
                (FlushGuard(engine.clone()), captured)
            });
            (
                id,
                InflightGuard {
                    engine: engine.clone(),
                    keys,
                },
                flush,
            )
        };
        let idempotency_key = self.idempotency_key.take();
        // The rest runs in its own task: once the commit is sent, a client that goes away
        // cannot leave it durable but unpublished, nor a FLUSHALL half fenced.
        let task = tokio::spawn(async move {
            let mut guard = guard;
            let mut writes: Vec<(Bytes, Option<Entry>)> = writes.into_iter().collect();
            if let Some((flushing, captured)) = flush {
                let doomed = engine.flush_targets(id, captured, &writes).await;
                {
                    let mut inflight = engine.inflight.lock();
                    for key in &doomed {
                        *inflight.keys.entry(key.clone()).or_insert(0) += 1;
                    }
                }
                guard.keys.extend(doomed.iter().cloned());
                drop(flushing);
                writes.extend(doomed.into_iter().map(|k| (k, None)));
            }
            let pending = PendingCommit::new(id, writes, idempotency_key);
            let outcome = engine.storage.commit(pending.batch.clone()).await;
            engine.settle(outcome, pending, guard)
        });
        task.await
            .map_err(|e| TxnError::Internal(format!("commit task failed: {e}")))?
    }
}

impl Engine {
    /// The keys a FLUSHALL committing at `id` must delete, besides the transaction's own
    /// `writes` (which stand): every key whose newest version older than `id` is live, and
    /// every key of a commit that was in flight when it took its timestamp (`captured`:
    /// those commits are older, and may publish later).
    async fn flush_targets(
        &self,
        id: VersionId,
        captured: Vec<Bytes>,
        writes: &[(Bytes, Option<Entry>)],
    ) -> Vec<Bytes> {
        let own: HashSet<&Bytes> = writes.iter().map(|(k, _)| k).collect();
        let now = clock::wall_ms();
        let mut doomed: HashSet<Bytes> =
            captured.into_iter().filter(|k| !own.contains(k)).collect();
        for shard in 0..self.index.shard_count() {
            for key in self.index.live_before(shard, id, now) {
                if !own.contains(&key) {
                    doomed.insert(key);
                }
            }
            tokio::task::yield_now().await;
        }
        doomed.into_iter().collect()
    }
}

impl PendingCommit {
    fn new(
        id: VersionId,
        writes: Vec<(Bytes, Option<Entry>)>,
        idempotency_key: Option<Bytes>,
    ) -> PendingCommit {
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
        PendingCommit {
            idempotent: idempotency_key.is_some(),
            batch: CommitBatch {
                versions,
                record: CommitRecord {
                    id,
                    idempotency_key,
                    body: record::encode_body(&metas),
                },
            },
            metas,
            cached,
        }
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

/// A fresh transaction id: 128 bits from the thread's cryptographically secure generator,
/// so that nobody can guess the id of another client's transaction (AFT.ATTACH takes one).
fn new_txn_id() -> TxnId {
    TxnId(rand::random::<u128>())
}

#[cfg(test)]
mod tests;
