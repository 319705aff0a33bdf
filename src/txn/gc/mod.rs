//! Garbage collection (protocol.md §8): storage stays bounded by the live data, not by history.
//!
//! # What is garbage
//!
//! * A **version** is garbage once it left the [`Index`](super::index::Index): superseded by a newer version and
//!   invisible to every running and future reader, or the sole, dead version of a key that
//!   was removed (see [`Index::sweep_shard`](super::index::Index::sweep_shard)). Its stored value is deleted (a tombstone
//!   stores none), and its commit record loses one live key.
//! * A **commit record** is garbage once none of its keys is live in the index, and stays
//!   stored for a retention measured from that moment: `idempotency_retention` if it holds
//!   an idempotency key (so that a retry with that key is still recognised), otherwise
//!   `status_retention` (so that [`Engine::commit_of`] still answers). It is deleted only
//!   after the deletion of every one of its garbage versions succeeded.
//! * A **key** whose only version is dead is removed from the index only if no *other*
//!   stored commit record lists it: recovery takes, for each key, the greatest version among
//!   stored records, so an older record still listing the key would bring an older version
//!   (whose value may already be deleted) back to life. The [`Tracker`] counts, per key, the
//!   stored records listing it. A key waiting for such a record is removed by the round
//!   after the one that deleted the record.
//! * The versions of a commit that certainly created no record (a duplicate idempotency
//!   key, or a storage error other than an unknown outcome) are deleted too. Versions
//!   orphaned by a crash in the middle of a commit are not found (nothing lists them).
//!
//! Recovery rebuilds the same bookkeeping from the stored records: records all of whose
//! versions are superseded are garbage at once, their retention counted from the restart.
//!
//! # Who may still read what
//!
//! Both limits come from one place, [`Snapshots::watermark`]: `min_pin`, no greater than the
//! pin of any running or future transaction, and `min_now`, no greater than the clock of any
//! running or future transaction (a key that expires is dead only once every transaction
//! agrees it is). A later multi-node design replaces these by cluster-wide watermarks.
//!
//! # When
//!
//! A background task started by [`Engine::open`] calls [`Engine::collect_garbage`] every
//! `gc_interval`; it holds only a weak reference and stops when the engine is dropped or
//! closed. A round sweeps the index shard by shard (one brief lock each), then deletes
//! garbage versions in batches of at most [`DELETE_BATCH`], then the records whose retention
//! ended. A failed deletion is logged and retried next round (deletion is idempotent).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::clock;
use super::index::Dropped;
use super::record::Kind;
use super::Engine;
use crate::storage::{LogPos, TxnId, VersionId, VersionKey};

/// Most versions (and most commit records) deleted by one storage call.
pub const DELETE_BATCH: usize = 1000;

/// The limits below which garbage collection may act (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// No running or future transaction pins a snapshot below this sequence number.
    pub min_pin: u64,
    /// No running or future transaction evaluates expiry at a time before this (ms since
    /// the epoch).
    pub min_now: u64,
}

/// The snapshots and clocks of running transactions.
///
/// Every transaction registers its clock (`now_ms`) when it begins and its pin when it first
/// reads; both are released when it ends. Clocks handed out never go backwards, even if the
/// wall clock does, so that a transaction that begins after a collection round never
/// considers live a key that round found expired.
///
/// Each pin gets a *ticket*, increasing in pin order. [`Snapshots::revoke_older_than`]
/// revokes the oldest pins: their pins and clocks stop holding garbage collection back, and
/// every ticket below [`Snapshots::revoked_below`] is revoked (the engine mirrors it in an
/// atomic so that a transaction checks its ticket without locking).
#[derive(Debug, Default)]
pub struct Snapshots {
    clocks: BTreeMap<u64, usize>,
    /// Live (not revoked) pins by ticket. Tickets and sequence numbers grow together, so
    /// the first is also the lowest pin.
    pinned: BTreeMap<u64, PinnedReader>,
    next_ticket: u64,
    revoked_below: u64,
    /// The greatest clock handed out or used by a round.
    floor: u64,
}

/// A pinned, not revoked, transaction.
#[derive(Debug, Clone)]
struct PinnedReader {
    seq: u64,
    /// The node's log cursor when it pinned (see [`super::peers`]).
    pos: LogPos,
    clock: u64,
    at: Instant,
}

fn add(set: &mut BTreeMap<u64, usize>, at: u64) {
    *set.entry(at).or_insert(0) += 1;
}

fn remove(set: &mut BTreeMap<u64, usize>, at: u64) {
    if let Some(n) = set.get_mut(&at) {
        *n -= 1;
        if *n == 0 {
            set.remove(&at);
        }
    }
}

impl Snapshots {
    /// The current time in ms, never less than any returned before.
    fn now(&mut self) -> u64 {
        self.floor = self.floor.max(clock::wall_ms());
        self.floor
    }

    /// Registers a reader pinned at `seq` (the current sequence number, read under the same
    /// lock as this call: never below an earlier pin's) and at log cursor `pos` (read before
    /// `seq`), whose clock is `clock`, at time `at`; returns its ticket.
    pub fn pin(&mut self, seq: u64, pos: LogPos, clock: u64, at: Instant) -> u64 {
        debug_assert!(self
            .pinned
            .last_key_value()
            .is_none_or(|(_, r)| r.seq <= seq));
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pinned.insert(
            ticket,
            PinnedReader {
                seq,
                pos,
                clock,
                at,
            },
        );
        ticket
    }

    /// Whether the pin with this ticket was revoked.
    pub fn is_revoked(&self, ticket: u64) -> bool {
        ticket < self.revoked_below
    }

    /// Tickets below this are revoked.
    pub fn revoked_below(&self) -> u64 {
        self.revoked_below
    }

    /// Registers the clock of a transaction that begins; returns it.
    pub fn start_clock(&mut self) -> u64 {
        let now = self.now();
        add(&mut self.clocks, now);
        now
    }

    /// Moves the clock of a transaction (pinned with `ticket`, if it is) from `old` to now
    /// (never backwards); returns the new value.
    pub fn move_clock(&mut self, ticket: Option<u64>, old: u64) -> u64 {
        let now = self.now().max(old);
        if ticket.is_some_and(|t| self.is_revoked(t)) {
            // Its registrations were released when it was revoked.
            return now;
        }
        if now != old {
            remove(&mut self.clocks, old);
            add(&mut self.clocks, now);
            if let Some(reader) = ticket.and_then(|t| self.pinned.get_mut(&t)) {
                reader.clock = now;
            }
        }
        now
    }

    /// Releases what a transaction registered: its pin (by ticket) if it took one, and its
    /// clock at its last value. A revoked pin's registrations are already released.
    pub fn release(&mut self, ticket: Option<u64>, clock: u64) {
        match ticket {
            Some(ticket) if self.is_revoked(ticket) => {}
            Some(ticket) => {
                self.pinned.remove(&ticket);
                remove(&mut self.clocks, clock);
            }
            None => remove(&mut self.clocks, clock),
        }
    }

    /// Revokes every pin taken `max_age` or more before `now` (zero: none); returns how many.
    pub fn revoke_older_than(&mut self, max_age: Duration, now: Instant) -> usize {
        if max_age.is_zero() {
            return 0;
        }
        let mut revoked = 0;
        while let Some((&ticket, reader)) = self.pinned.first_key_value() {
            if now.saturating_duration_since(reader.at) < max_age {
                break;
            }
            let clock = reader.clock;
            self.pinned.remove(&ticket);
            remove(&mut self.clocks, clock);
            self.revoked_below = ticket + 1;
            revoked += 1;
        }
        revoked
    }

    /// Revokes every live pin (a node that lost its lease: what they read may be gone);
    /// returns how many.
    pub fn revoke_all(&mut self) -> usize {
        let revoked = self.pinned.len();
        for (_, reader) in std::mem::take(&mut self.pinned) {
            remove(&mut self.clocks, reader.clock);
        }
        self.revoked_below = self.next_ticket;
        revoked
    }

    /// The lowest log cursor of a live pin, shard by shard, or `current` (the node's cursor)
    /// where lower.
    pub fn min_pos(&self, current: &LogPos) -> LogPos {
        self.pinned
            .values()
            .fold(current.clone(), |low, r| low.min(&r.pos))
    }

    /// How long ago the oldest live pin was taken.
    pub fn oldest_pin_age(&self, now: Instant) -> Option<Duration> {
        self.pinned
            .first_key_value()
            .map(|(_, r)| now.saturating_duration_since(r.at))
    }

    /// The lowest pin a running or future reader can have, `current` being the sequence of
    /// the last published commit (readers pin the current sequence).
    pub fn min_pin(&self, current: u64) -> u64 {
        self.pinned
            .first_key_value()
            .map_or(current, |(_, r)| r.seq)
            .min(current)
    }

    /// The watermark of a collection round; see [`Watermark`].
    pub fn watermark(&mut self, current: u64) -> Watermark {
        let now = self.now();
        Watermark {
            min_pin: self.min_pin(current),
            min_now: self.clocks.keys().next().copied().unwrap_or(now).min(now),
        }
    }
}

/// What garbage collection knows of one stored commit record.
#[derive(Debug)]
struct RecordState {
    id: VersionId,
    /// Every key it lists (deduplicated, in order).
    keys: Box<[Bytes]>,
    /// Its idempotency key, which is then its [anchor](crate::storage::anchor).
    idempotency_key: Option<Bytes>,
    /// Keys whose version from this record is still in the index.
    live: usize,
    /// When `live` reached 0.
    dead_since: Option<Instant>,
}

/// Deletion work taken by a round: versions first, then records.
#[derive(Debug, Default)]
pub struct Work {
    /// Stored versions to delete.
    pub versions: Vec<VersionKey>,
    /// Commit records to delete once every version above is deleted, each named by its
    /// [anchor](crate::storage::anchor) and id.
    pub records: Vec<VersionKey>,
    /// Tombstones that left the index, whose keys' heads a shared backend drops (if they
    /// still name them).
    pub heads: Vec<VersionKey>,
}

impl Work {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.records.is_empty() && self.heads.is_empty()
    }
}

/// The bookkeeping of garbage collection: stored commit records, per-key counts of stored
/// records listing a key, versions waiting for deletion and dead records waiting for their
/// retention to end.
#[derive(Debug)]
pub struct Tracker {
    records: HashMap<TxnId, RecordState>,
    /// Number of stored commit records listing each key (absent: none).
    listing: HashMap<Bytes, u32>,
    /// Versions that left the index, not yet deleted from storage.
    pending: Vec<VersionKey>,
    /// Tombstones that left the index, whose heads are not yet dropped.
    pending_heads: Vec<VersionKey>,
    /// Dead records holding an idempotency key, in the order they died.
    dead_idempotent: VecDeque<(Instant, TxnId)>,
    /// Other dead records, in the order they died.
    dead_plain: VecDeque<(Instant, TxnId)>,
    /// Records whose retention ended but whose deletion failed or waits for versions.
    due: Vec<TxnId>,
    idempotency_retention: Duration,
    status_retention: Duration,
}

impl Tracker {
    /// Empty bookkeeping with the two retentions.
    pub fn new(idempotency_retention: Duration, status_retention: Duration) -> Self {
        Tracker {
            records: HashMap::new(),
            listing: HashMap::new(),
            pending: Vec::new(),
            pending_heads: Vec::new(),
            dead_idempotent: VecDeque::new(),
            dead_plain: VecDeque::new(),
            due: Vec::new(),
            idempotency_retention,
            status_retention,
        }
    }

    /// Starts tracking a stored commit record listing `keys`, all live, holding
    /// `idempotency_key`. Must be called before any of its versions enters the index.
    pub fn track(
        &mut self,
        id: VersionId,
        mut keys: Vec<Bytes>,
        idempotency_key: Option<Bytes>,
        now: Instant,
    ) {
        let idempotent = idempotency_key.is_some();
        keys.sort_unstable();
        keys.dedup();
        for key in &keys {
            *self.listing.entry(key.clone()).or_insert(0) += 1;
        }
        let live = keys.len();
        self.records.insert(
            id.txn,
            RecordState {
                id,
                keys: keys.into_boxed_slice(),
                live,
                idempotency_key,
                dead_since: None,
            },
        );
        if live == 0 {
            self.died(id.txn, idempotent, now);
        }
    }

    fn died(&mut self, txn: TxnId, idempotent: bool, now: Instant) {
        if let Some(r) = self.records.get_mut(&txn) {
            r.dead_since = Some(now);
        }
        if idempotent {
            self.dead_idempotent.push_back((now, txn));
        } else {
            self.dead_plain.push_back((now, txn));
        }
    }

    /// Accounts for versions that left the index: their stored values are queued for
    /// deletion and their records lose a live key (dying at `now` when none is left).
    pub fn discard(&mut self, dropped: Vec<Dropped>, now: Instant) {
        for d in dropped {
            let Some(record) = self.records.get_mut(&d.id.txn) else {
                // Untracked (a bug): still delete the value, never the record.
                debug_assert!(false, "dropped a version of an untracked record");
                if d.kind != Kind::Tombstone {
                    self.pending.push(VersionKey {
                        key: d.key,
                        version: d.id,
                    });
                }
                continue;
            };
            record.live = record.live.saturating_sub(1);
            let died = record.live == 0 && record.dead_since.is_none();
            let idempotent = record.idempotency_key.is_some();
            let version = VersionKey {
                key: d.key,
                version: d.id,
            };
            if d.kind == Kind::Tombstone {
                self.pending_heads.push(version);
            } else {
                self.pending.push(version);
            }
            if died {
                self.died(d.id.txn, idempotent, now);
            }
        }
    }

    /// Queues versions that no commit record references (a failed commit's) for deletion.
    pub fn orphans(&mut self, versions: Vec<VersionKey>) {
        self.pending.extend(versions);
    }

    /// Number of stored commit records that list `key`.
    pub fn records_listing(&self, key: &[u8]) -> u32 {
        self.listing.get(key).copied().unwrap_or(0)
    }

    /// The id of the tracked (stored, live or retained) commit record of transaction `txn`.
    pub fn commit_of(&self, txn: TxnId) -> Option<VersionId> {
        self.records.get(&txn).map(|r| r.id)
    }

    /// Takes everything to delete at `now`: every pending version, and every record whose
    /// retention ended. Every version of such a record is among the versions taken (or was
    /// deleted before), because a record dies only after all its versions were queued.
    pub fn take_work(&mut self, now: Instant) -> Work {
        for (queue, retention) in [
            (&mut self.dead_idempotent, self.idempotency_retention),
            (&mut self.dead_plain, self.status_retention),
        ] {
            while let Some(&(since, txn)) = queue.front() {
                if now.saturating_duration_since(since) < retention {
                    break;
                }
                queue.pop_front();
                self.due.push(txn);
            }
        }
        let records = self
            .due
            .iter()
            .filter_map(|txn| {
                self.records.get(txn).map(|r| VersionKey {
                    key: crate::storage::anchor(r.idempotency_key.as_ref(), r.keys.iter()),
                    version: r.id,
                })
            })
            .collect();
        Work {
            versions: std::mem::take(&mut self.pending),
            records,
            heads: std::mem::take(&mut self.pending_heads),
        }
    }

    /// Gives back heads whose dropping failed, for the next round.
    pub fn heads_failed(&mut self, heads: Vec<VersionKey>) {
        self.pending_heads.extend(heads);
    }

    /// Gives back versions whose deletion failed, for the next round.
    pub fn versions_failed(&mut self, versions: Vec<VersionKey>) {
        self.pending.extend(versions);
    }

    /// Forgets records deleted from storage; keys no stored record lists any more may then
    /// be removed from the index.
    pub fn records_deleted(&mut self, records: &[VersionKey]) {
        for id in records.iter().map(|r| r.version) {
            let Some(record) = self.records.remove(&id.txn) else {
                continue;
            };
            for key in record.keys.iter() {
                if let Some(n) = self.listing.get_mut(key) {
                    *n -= 1;
                    if *n == 0 {
                        self.listing.remove(key);
                    }
                }
            }
        }
        let deleted: std::collections::HashSet<TxnId> =
            records.iter().map(|r| r.version.txn).collect();
        self.due.retain(|txn| !deleted.contains(txn));
    }

    /// Stored commit records tracked (live or retained).
    pub fn tracked(&self) -> usize {
        self.records.len()
    }

    /// Tracked records all of whose keys are garbage (retained or due).
    pub fn dead(&self) -> usize {
        self.records
            .values()
            .filter(|r| r.dead_since.is_some())
            .count()
    }

    /// Versions waiting for deletion.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// What one collection round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Versions that left the index during the sweep (superseded, or of removed keys).
    pub versions_dropped: usize,
    /// Keys removed from the index (their only version was a tombstone or expired).
    pub keys_removed: usize,
    /// Stored versions deleted from storage.
    pub versions_deleted: usize,
    /// Commit records deleted from storage.
    pub commits_deleted: usize,
    /// Storage calls that failed (their work is retried next round).
    pub errors: usize,
    /// Orphan versions (of commits that never got a record) the backend reclaimed.
    pub orphans_reclaimed: u64,
}

/// How often a round also asks the backend to reclaim orphan versions.
pub const ORPHAN_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Orphans younger than this are left alone: their commit may still be in flight.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// Sizes of what garbage collection tracks, for INFO and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcGauges {
    /// Versions held by the index.
    pub versions: usize,
    /// Stored commit records tracked (live or retained).
    pub commits: usize,
    /// Of those, records whose keys are all garbage (kept for their retention).
    pub retained_commits: usize,
    /// Garbage versions waiting for deletion from storage.
    pub pending_versions: usize,
}

/// The collector state an [`Engine`] holds.
pub(crate) struct Collector {
    pub(crate) tracker: Mutex<Tracker>,
    /// Serialises rounds; holds when orphans were last looked for.
    round: tokio::sync::Mutex<Option<Instant>>,
    stop: Arc<Notify>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Collector {
    pub(crate) fn new(idempotency_retention: Duration, status_retention: Duration) -> Self {
        Collector {
            tracker: Mutex::new(Tracker::new(idempotency_retention, status_retention)),
            round: tokio::sync::Mutex::new(None),
            stop: Arc::new(Notify::new()),
            task: Mutex::new(None),
        }
    }

    /// Starts the background task (not if `interval` is zero).
    pub(crate) fn start(&self, engine: Weak<Engine>, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        let stop = self.stop.clone();
        *self.task.lock() = Some(tokio::spawn(run(engine, interval, stop)));
    }

    /// Stops the background task, waiting for a round in progress.
    pub(crate) async fn stop(&self) {
        self.stop.notify_one();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Asks the background task to stop, without waiting (for `Drop`).
    pub(crate) fn signal_stop(&self) {
        self.stop.notify_one();
    }
}

impl Drop for Engine {
    /// Wakes the background task so that it notices the engine is gone.
    fn drop(&mut self) {
        self.gc.signal_stop();
    }
}

async fn run(engine: Weak<Engine>, interval: Duration, stop: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.notified() => return,
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.collect_garbage().await;
    }
}

impl Engine {
    /// The watermark below which garbage collection may act: the one place that decides
    /// which versions running and future transactions may still read.
    ///
    /// Snapshots older than the limit are revoked first: they no longer hold it back.
    pub(crate) fn watermark(&self) -> Watermark {
        let mut snapshots = self.snapshots.lock();
        let revoked = snapshots.revoke_older_than(self.max_snapshot_age, Instant::now());
        if revoked > 0 {
            // Published before any version they could read is dropped (the round prunes
            // after this, under the index's locks).
            self.revoked_below
                .store(snapshots.revoked_below(), Ordering::Release);
            self.stats
                .snapshots_revoked
                .fetch_add(revoked as u64, Ordering::Relaxed);
            tracing::warn!(
                revoked,
                max_age_ms = self.max_snapshot_age.as_millis() as u64,
                "revoked snapshots older than the limit: their transactions get 'snapshot too old'"
            );
        }
        snapshots.watermark(self.seq.load(Ordering::Acquire))
    }

    /// Runs one garbage collection round now (the background task calls this every
    /// `gc_interval`): sweeps the index, deletes garbage versions from storage, then the
    /// commit records whose retention ended. Storage errors are logged and counted; what
    /// failed is retried by the next round. Rounds do not overlap.
    pub async fn collect_garbage(&self) -> GcReport {
        let mut round = self.gc.round.lock().await;
        let mut report = GcReport::default();
        // Not while a commit of unknown outcome is being sent again: a resend racing the
        // reclamation of the same commit's versions could complete over deleted versions.
        let settling = self.unresolved.load(Ordering::Acquire) > 0;
        if !settling && round.is_none_or(|last| last.elapsed() >= ORPHAN_CHECK_INTERVAL) {
            *round = Some(Instant::now());
            match self.storage.reclaim_orphans(ORPHAN_GRACE).await {
                Ok(n) => {
                    report.orphans_reclaimed = n;
                    self.stats.orphans_reclaimed.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection: cannot reclaim orphan versions; will retry");
                    report.errors += 1;
                }
            }
        }
        let mark = self.watermark();
        self.sweep(mark, &mut report);
        self.stats
            .keys_removed
            .fetch_add(report.keys_removed as u64, Ordering::Relaxed);

        let work = self.gc.tracker.lock().take_work(Instant::now());
        let Work {
            mut versions,
            records,
            heads,
        } = self.release_work(work).await;
        if !heads.is_empty() && self.peers.shared() {
            if let Err(e) = self.storage.drop_heads(heads.clone()).await {
                tracing::warn!(error = %e, "garbage collection: cannot drop key heads; will retry");
                report.errors += 1;
                self.gc.tracker.lock().heads_failed(heads);
            }
        }
        let mut versions_ok = true;
        while !versions.is_empty() {
            // From the end: each batch costs its own length, not the whole backlog's.
            let batch = versions.split_off(versions.len().saturating_sub(DELETE_BATCH));
            let n = batch.len();
            match self.storage.delete(batch.clone(), Vec::new()).await {
                Ok(()) => {
                    report.versions_deleted += n;
                    self.stats
                        .versions_collected
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, versions = n, "garbage collection: cannot delete versions; will retry");
                    report.errors += 1;
                    let mut tracker = self.gc.tracker.lock();
                    tracker.versions_failed(batch);
                    tracker.versions_failed(std::mem::take(&mut versions));
                    versions_ok = false;
                }
            }
        }
        // Records only once all their versions are gone: a record deleted before one of its
        // versions would leave that version unreachable after a crash.
        if versions_ok {
            for batch in records.chunks(DELETE_BATCH) {
                match self.storage.delete(Vec::new(), batch.to_vec()).await {
                    Ok(()) => {
                        report.commits_deleted += batch.len();
                        self.stats
                            .commits_collected
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        self.gc.tracker.lock().records_deleted(batch);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, records = batch.len(), "garbage collection: cannot delete commit records; will retry");
                        report.errors += 1;
                        break;
                    }
                }
            }
        }
        self.stats.gc_runs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .gc_errors
            .fetch_add(report.errors as u64, Ordering::Relaxed);
        report
    }

    /// The committed transaction `txid`'s version id, while its commit record is stored
    /// (live, or retained after its versions were collected); `None` once collected or if
    /// it never committed (as far as this node knows).
    pub fn commit_of(&self, txid: TxnId) -> Option<VersionId> {
        self.gc.tracker.lock().commit_of(txid)
    }

    /// Sizes of what garbage collection tracks.
    pub fn gc_gauges(&self) -> GcGauges {
        let versions = self.index.version_count();
        let tracker = self.gc.tracker.lock();
        GcGauges {
            versions,
            commits: tracker.tracked(),
            retained_commits: tracker.dead(),
            pending_versions: tracker.pending(),
        }
    }
}

impl Engine {
    /// Sweeps every shard of the index at `mark`, accounting what left it in the tracker.
    ///
    /// A dead key (its sole version a tombstone or expired) is removed only if nothing could
    /// bring an older version of it back: no other stored commit record lists it (recovery
    /// would resurrect that record's version), and no commit on it is in flight or of
    /// unknown outcome (its version, older than any commit validated from now on, could still
    /// be published). Both are checked without holding index locks; the removal then
    /// re-checks, under the shard's lock, that the key is unchanged and not watched.
    fn sweep(&self, mark: Watermark, report: &mut GcReport) {
        for shard in 0..self.index.shard_count() {
            let swept = self.index.sweep_shard(shard, mark.min_pin, mark.min_now);
            if !swept.dropped.is_empty() {
                report.versions_dropped += swept.dropped.len();
                self.gc
                    .tracker
                    .lock()
                    .discard(swept.dropped, Instant::now());
            }
            if swept.dead.is_empty() {
                continue;
            }
            let mut dead = swept.dead;
            {
                let tracker = self.gc.tracker.lock();
                dead.retain(|d| tracker.records_listing(&d.key) <= 1);
            }
            {
                let inflight = self.inflight.lock();
                dead.retain(|d| !inflight.keys.contains_key(&d.key));
            }
            if dead.is_empty() {
                continue;
            }
            let removed = self
                .index
                .remove_dead(shard, dead, mark.min_pin, mark.min_now, &|key| {
                    self.is_watched(key)
                });
            report.keys_removed += removed.removed_keys;
            if !removed.dropped.is_empty() {
                report.versions_dropped += removed.dropped.len();
                self.gc
                    .tracker
                    .lock()
                    .discard(removed.dropped, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests;
