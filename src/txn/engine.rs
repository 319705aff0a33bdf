//! The engine: one node's commit set (the version index), its clock, its storage, and the
//! commit path that every transaction ends in.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::clock::{self, Clock};
use super::gc::{Collector, Snapshots};
use super::index::{Index, VersionMeta};
use super::peers::{Peers, PeersConfig};
use super::record::{self, Entry, Kind, WriteMeta};
use super::resolve::{self, Unresolved};
use super::transaction::Txn;
use super::TxnError;
use crate::storage::{
    CommitBatch, CommitOutcome, CommitRecord, Conditions, LogPos, Storage, StorageError, VersionId,
    VersionKey,
};

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
    /// Several nodes over one backend (ignored on a backend only one process uses).
    pub peers: PeersConfig,
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
            peers: PeersConfig::default(),
        }
    }
}

counters! {
    /// Counters reported by INFO.
    pub struct Stats {
    /// Transactions committed by this node.
    commits,
    /// Commits rejected by write-conflict checks.
    conflicts,
    /// Transactions whose watched keys changed.
    watch_failures,
    /// Commits that failed in the backend.
    storage_errors,
    /// Values read from the backend (version cache misses).
    storage_reads,
    /// Reads served from the version cache.
    cache_hits,
    /// Commit records loaded at start.
    recovered_commits,
    /// Stored versions deleted by garbage collection.
    versions_collected,
    /// Commit records deleted by garbage collection.
    commits_collected,
    /// Keys removed from memory because their only version was a tombstone or expired.
    keys_removed,
    /// Garbage collection rounds run.
    gc_runs,
    /// Storage calls of garbage collection that failed (retried later).
    gc_errors,
    /// Orphan versions (written by commits that never got a commit record) reclaimed.
    orphans_reclaimed,
    /// Commits whose outcome the backend left unknown (a lost reply).
    outcome_unknown,
    /// Of those, commits found to be committed (and then published).
    unknown_committed,
    /// Of those, commits found not to be committed (their keys were released).
    unknown_aborted,
    /// Snapshots revoked for being older than the limit.
    snapshots_revoked,
}
}

impl Stats {
    /// Zeroes every counter (CONFIG RESETSTAT) except `recovered_commits`, a fact about the start rather
    /// than a running count.
    pub fn reset(&self) {
        let kept = self.recovered_commits.load(Ordering::Relaxed);
        for counter in self.all() {
            counter.store(0, Ordering::Relaxed);
        }
        self.recovered_commits.store(kept, Ordering::Relaxed);
    }
}

/// Keys of commits that are validated but not yet published (or whose outcome is not yet
/// known), and FLUSHALLs between taking their timestamp and fencing their keys.
#[derive(Default, Debug)]
pub(super) struct Inflight {
    pub(super) keys: HashMap<Bytes, usize>,
    pub(super) flushing: usize,
}

/// One node's transaction engine. Cheap to share: wrap it in an `Arc`.
pub struct Engine {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) index: Index,
    pub(super) clock: Clock,
    /// Sequence number of the last commit published to the index.
    pub(super) seq: AtomicU64,
    /// Serialises publication so that sequence numbers are handed out in index order.
    pub(super) publish_lock: Mutex<()>,
    /// Pins and clocks of running transactions.
    pub(super) snapshots: Mutex<Snapshots>,
    /// Tickets of pinned snapshots below this are revoked (see [`Snapshots`]).
    pub(super) revoked_below: AtomicU64,
    pub(super) max_snapshot_age: Duration,
    pub(super) max_value_len: usize,
    /// Garbage collection bookkeeping and its background task.
    pub(super) gc: Collector,
    /// Commits in flight: validation reserves their keys here (first committer wins).
    pub(super) inflight: Mutex<Inflight>,
    /// Keys under WATCH by some connection -> number of watchers. Garbage collection does
    /// not remove a watched key from the index, so that its latest version only grows.
    pub(super) watched: Mutex<HashMap<Bytes, usize>>,
    /// Woken whenever keys reserved by a commit are released (it was published, failed or
    /// settled) or a FLUSHALL's window closes, for transactions waiting to retry.
    pub(super) released: tokio::sync::Notify,
    /// Set by [`Engine::close`]: unresolved commits stop being retried.
    pub(super) closing: AtomicBool,
    /// Wakes the tasks resolving unknown outcomes when the engine closes.
    pub(super) resolvers_stop: Arc<tokio::sync::Notify>,
    /// Commits whose outcome is being resolved.
    pub(super) unresolved: AtomicU64,
    /// Membership, the commit log and the cluster-wide watermark (see [`super::peers`]).
    pub(super) peers: Peers,
    pub(super) stats: Stats,
    /// Tests: runs once, in the next commit, just before it validates.
    #[cfg(test)]
    pub(super) before_validation: Mutex<Option<TestHook>>,
}

/// A step a test runs inside a commit.
#[cfg(test)]
pub(super) type TestHook =
    Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

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
            released: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            resolvers_stop: Arc::new(tokio::sync::Notify::new()),
            unresolved: AtomicU64::new(0),
            peers: Peers::new(config.peers.clone()),
            stats: Stats::default(),
            #[cfg(test)]
            before_validation: Mutex::new(None),
        });
        let others = engine.join().await?;
        // Renewed from now on: loading may take longer than the lease.
        engine.start_renewals();
        if others {
            // Others run: let every one of them see this node hold deletions back before it
            // reads a record (see the peers module).
            tokio::time::sleep(super::peers::JOIN_WAIT).await;
        }
        engine.recover().await?;
        engine.gc.start(Arc::downgrade(&engine), config.gc_interval);
        engine.start_tailer();
        Ok(engine)
    }

    /// Rebuilds the commit set from the stored records. On a shared backend, the log's head
    /// is read first and the log is applied from it after the scan, so that nothing committed
    /// during the scan is missed (what both find is applied once).
    async fn recover(&self) -> Result<(), StorageError> {
        const PAGE: usize = 1024;
        if self.peers.shared() {
            let head = self.storage.log_tail(LogPos::default(), 0).await?.head;
            *self.peers.cursor.lock() = head;
        }
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
                self.publish(record.id, &writes, values, record.idempotency_key.as_ref());
                self.stats.recovered_commits.fetch_add(1, Ordering::Relaxed);
            }
            if !full {
                break;
            }
        }
        if self.peers.shared() {
            self.catch_up().await.map_err(|e| match e {
                TxnError::Storage(e) => e,
                other => StorageError::Io(other.to_string().into()),
            })?;
        }
        Ok(())
    }

    /// The backend's name.
    pub fn storage_name(&self) -> &'static str {
        self.storage.name()
    }

    /// What the backend vouches for with an acknowledged commit (see
    /// [`Storage::durability`]).
    pub fn storage_durability(&self) -> crate::storage::Durability {
        self.storage.durability()
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
        self.stop_peers().await;
        self.leave().await;
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
        let now_ms = self.snapshots.lock().start_clock();
        Txn::new(self.clone(), self.new_txn_id(), now_ms)
    }

    /// Waits until some commit releases the keys it reserved (or a FLUSHALL its window), or
    /// `timeout` passes.
    pub async fn wait_for_release(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.released.notified()).await;
    }

    /// Starts a transaction that sees every commit acknowledged anywhere before this call,
    /// or within the configured bounded staleness (see [`super::peers::Freshness`]).
    pub async fn begin_fresh(self: &Arc<Self>) -> Result<Txn, TxnError> {
        self.fresh().await?;
        Ok(self.begin())
    }

    /// Revokes every snapshot held now; returns how many.
    pub(super) fn revoke_all_snapshots(&self) -> usize {
        let mut snapshots = self.snapshots.lock();
        let revoked = snapshots.revoke_all();
        self.revoked_below
            .store(snapshots.revoked_below(), Ordering::Release);
        self.stats
            .snapshots_revoked
            .fetch_add(revoked as u64, Ordering::Relaxed);
        revoked
    }

    /// Pins the current snapshot for a transaction whose clock is `clock`.
    pub(super) fn pin(&self, clock: u64) -> Pin {
        // Before the sequence: every record at or below the cursor is published.
        let pos = self.peers.cursor.lock().clone();
        let mut snapshots = self.snapshots.lock();
        // Read under the lock: a round computing its watermark sees this pin, or a
        // sequence number no greater than it.
        let seq = self.seq.load(Ordering::Acquire);
        let ticket = snapshots.pin(seq, pos, clock, std::time::Instant::now());
        Pin { seq, ticket }
    }

    /// Releases what a transaction registered: its pin, if it took one, and its clock.
    pub(super) fn release(&self, pin: Option<Pin>, now_ms: u64) {
        self.snapshots.lock().release(pin.map(|p| p.ticket), now_ms);
    }

    /// Makes a durable commit visible: every version at one new sequence number. The commit
    /// record is tracked for garbage collection first, and the versions the insertion
    /// supersedes become garbage. Idempotent by id (a node finds its own commits in the
    /// log): returns whether the commit was new.
    pub(super) fn publish(
        &self,
        id: VersionId,
        writes: &[WriteMeta],
        values: Vec<Option<Bytes>>,
        idempotency_key: Option<&Bytes>,
    ) -> bool {
        let _order = self.publish_lock.lock();
        {
            let mut tracker = self.gc.tracker.lock();
            if tracker.commit_of(id.txn).is_some() {
                return false;
            }
            tracker.track(
                id,
                writes.iter().map(|w| w.key.clone()).collect(),
                idempotency_key.cloned(),
                std::time::Instant::now(),
            );
        }
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
        true
    }

    /// Removes `keys` from the in-flight set (one reservation each), and wakes the
    /// transactions waiting to retry.
    pub(super) fn release_inflight(&self, keys: &[Bytes]) {
        {
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
        self.released.notify_waiters();
    }

    /// Applies the backend's answer to a commit, the first attempt's or a resolver's:
    /// publishes it, or, if another commit holds its idempotency key or won a conflict check
    /// in the backend, queues its versions for reclamation. A commit that found its own
    /// idempotency entry was applied by an earlier attempt.
    pub(super) fn conclude(&self, pending: PendingCommit, answer: CommitOutcome) -> Concluded {
        let id = pending.batch.record.id;
        match answer {
            CommitOutcome::Duplicate(existing) if existing != id => {
                self.gc.tracker.lock().orphans(pending.orphans());
                Concluded::Duplicate(existing)
            }
            // Sent again after its log position was taken (a resend of an unknown outcome):
            // never applied, and never will be at that position.
            CommitOutcome::Moved => {
                self.gc.tracker.lock().orphans(pending.orphans());
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                Concluded::Conflict { watched: false }
            }
            CommitOutcome::Conflict(check) => {
                self.gc.tracker.lock().orphans(pending.orphans());
                if check < pending.watched {
                    self.stats.watch_failures.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Concluded::Conflict {
                    watched: check < pending.watched,
                }
            }
            _ => {
                let idempotency_key = pending.batch.record.idempotency_key.as_ref();
                self.publish(id, &pending.metas, pending.cached, idempotency_key);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                Concluded::Committed(id)
            }
        }
    }

    /// Settles a commit the backend answered: publishes it, or accounts for its failure.
    /// An unknown outcome is handed to a background resolver, which keeps `guard`'s keys
    /// fenced until it knows.
    pub(super) fn settle(
        self: &Arc<Self>,
        outcome: Result<CommitOutcome, StorageError>,
        pending: PendingCommit,
        guard: InflightGuard,
    ) -> Result<Option<VersionId>, TxnError> {
        match outcome {
            Ok(answer) => match self.conclude(pending, answer) {
                Concluded::Committed(id) => Ok(Some(id)),
                Concluded::Duplicate(existing) => Err(TxnError::Duplicate(existing)),
                Concluded::Conflict { watched: true } => Err(TxnError::WatchFailed),
                Concluded::Conflict { watched: false } => Err(TxnError::Conflict),
            },
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

/// What [`Engine::conclude`] made of the backend's answer.
pub(super) enum Concluded {
    /// Published at this id.
    Committed(VersionId),
    /// Another commit holds the idempotency key.
    Duplicate(VersionId),
    /// A check in the backend failed: on a watched key, or on a key read for update.
    Conflict { watched: bool },
}

/// A commit sent (or to send) to the backend, with what publishing it needs.
#[derive(Clone)]
pub(super) struct PendingCommit {
    pub(super) batch: CommitBatch,
    pub(super) metas: Vec<WriteMeta>,
    pub(super) cached: Vec<Option<Bytes>>,
    /// The first checks of `batch.conditions` are on watched keys: this many.
    pub(super) watched: usize,
}

impl PendingCommit {
    /// The versions to reclaim if the commit certainly created no record.
    pub(super) fn orphans(&self) -> Vec<VersionKey> {
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
pub(super) struct Pin {
    pub(super) seq: u64,
    pub(super) ticket: u64,
}

/// Removes a commit's keys from the in-flight set when the commit ends, however it ends
/// (unless [`InflightGuard::keep`] hands them to a resolver).
pub(super) struct InflightGuard {
    pub(super) engine: Arc<Engine>,
    pub(super) keys: Vec<Bytes>,
}

impl InflightGuard {
    /// Keeps the keys reserved past the guard; the caller releases them later with
    /// [`Engine::release_inflight`].
    pub(super) fn keep(mut self) -> Vec<Bytes> {
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
pub(super) struct FlushGuard(pub(super) Arc<Engine>);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.0.inflight.lock().flushing -= 1;
        self.0.released.notify_waiters();
    }
}

impl Engine {
    /// The keys a FLUSHALL committing at `id` must delete, besides the transaction's own
    /// `writes` (which stand): every key whose newest version older than `id` is live, and
    /// every key of a commit that was in flight when it took its timestamp (`captured`:
    /// those commits are older, and may publish later).
    pub(super) async fn flush_targets(
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
    /// The commit of `writes` at `id`; `conditions` (its checks, watched keys first:
    /// `watched` of them) go to a shared backend, with the keys it deletes added.
    pub(super) fn new(
        id: VersionId,
        writes: Vec<(Bytes, Option<Entry>)>,
        idempotency_key: Option<Bytes>,
        mut conditions: Conditions,
        watched: usize,
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
                    if conditions.node.is_some() {
                        conditions.deleted.push(key.clone());
                    }
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
            batch: CommitBatch {
                versions,
                record: CommitRecord {
                    id,
                    idempotency_key,
                    body: record::encode_body(&metas),
                },
                conditions,
            },
            metas,
            cached,
            watched,
        }
    }
}
