//! Deterministic fault injection, as a wrapper around any backend.
//!
//! [`FaultyStorage`] forwards every call to an inner [`Storage`] and, driven by a seeded
//! pseudo-random generator, makes some of them fail the way a real deployment does:
//!
//! * **fail before**: `commit` returns [`StorageError::Unavailable`] without reaching the inner
//!   store (the request was lost on its way);
//! * **fail after**: `commit` is applied by the inner store, then the reply is lost and the
//!   caller gets [`StorageError::OutcomeUnknown`];
//! * **read failure**: `get_versions` returns [`StorageError::Unavailable`];
//! * on demand, deterministically: the next `n` commits lose their reply
//!   ([`FaultyStorage::lose_next_replies`]) or are lost unapplied and reported as unknown
//!   ([`FaultyStorage::drop_next_requests`]), commits are refused before reaching the
//!   store ([`FaultyStorage::refuse_commits`], a backend that is down), or the next `n`
//!   commits wait at a gate until the test opens it ([`FaultyStorage::pause_next_commits`],
//!   a slow backend: a commit stays in flight as long as a test needs), the next commits are
//!   orphaned ([`FaultyStorage::orphan_next_commits`]), or deletions fail after a number of
//!   them ([`FaultyStorage::fail_deletes_after`]);
//! * **crash**: after [`FaultyStorage::crash`] (or [`CrashHandle::crash`], from any task) every
//!   call returns [`StorageError::Unavailable`], as if the process had died. A commit in flight
//!   when the crash happens completes in the inner store and reports
//!   [`StorageError::OutcomeUnknown`]. To "restart", take the inner store back with
//!   [`FaultyStorage::inner`] or [`FaultyStorage::into_inner`]: it holds exactly what was
//!   applied.
//!
//! Each `commit` and each `get_versions` draws exactly one number from the generator, so for a
//! given seed the faults depend only on the order of those calls: a single-task test replays
//! exactly; a concurrent one replays as far as its schedule does.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::storage::{
    BoxFuture, CommitBatch, CommitOutcome, CommitRecord, Durability, Heartbeat, LogPage, Member,
    Storage, StorageError, VersionId, VersionKey,
};

/// What to inject, and the seed that makes it reproducible.
///
/// Probabilities are in `[0, 1]` (values outside are clamped). For `commit`, one draw `u` in
/// `[0, 1)` decides: `u < fail_before` fails before, else `u < fail_before + fail_after` fails
/// after, else the call is clean; so `fail_before + fail_after` should not exceed 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultConfig {
    /// Seed of the generator; the same seed and call order give the same faults.
    pub seed: u64,
    /// Probability that `commit` fails with `Unavailable` without touching the inner store.
    pub fail_before: f64,
    /// Probability that `commit` is applied but reports `OutcomeUnknown` (a lost reply).
    pub fail_after: f64,
    /// Probability that `get_versions` fails with `Unavailable`.
    pub fail_read: f64,
}

impl FaultConfig {
    /// No faults (until configured), with the given seed.
    pub fn new(seed: u64) -> Self {
        FaultConfig {
            seed,
            fail_before: 0.0,
            fail_after: 0.0,
            fail_read: 0.0,
        }
    }
}

impl Default for FaultConfig {
    /// No faults, seed 0.
    fn default() -> Self {
        FaultConfig::new(0)
    }
}

/// How many faults were injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Commits failed with `Unavailable` before reaching the inner store.
    pub failed_before: u64,
    /// Commits applied by the inner store whose reply was replaced by `OutcomeUnknown`
    /// (`fail_after`, and commits in flight when [`FaultyStorage::crash`] was called).
    pub lost_replies: u64,
    /// `get_versions` calls failed with `Unavailable`.
    pub failed_reads: u64,
    /// Calls refused because the store had crashed.
    pub refused_after_crash: u64,
    /// `reclaim_orphans` calls (faults or not).
    pub reclaims: u64,
}

/// Marks a [`FaultyStorage`] as crashed; clonable and usable from any task or thread.
#[derive(Clone, Debug, Default)]
pub struct CrashHandle(Arc<AtomicBool>);

impl CrashHandle {
    /// From now on, every call on the store returns `Unavailable`. Irreversible.
    pub fn crash(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CrashHandle::crash`] was called.
    pub fn is_crashed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A [`Storage`] that injects faults into calls to an inner store. See the module
/// documentation for the kinds of faults and their semantics.
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    config: FaultConfig,
    rng: Mutex<SmallRng>,
    crash: CrashHandle,
    failed_before: AtomicU64,
    lost_replies: AtomicU64,
    failed_reads: AtomicU64,
    refused_after_crash: AtomicU64,
    reclaims: AtomicU64,
    /// Commits still to lose the reply of ([`FaultyStorage::lose_next_replies`]).
    lose_next: AtomicU64,
    /// Commits still to drop unapplied, reported as unknown ([`FaultyStorage::drop_next_requests`]).
    drop_next: AtomicU64,
    /// Commits still to orphan ([`FaultyStorage::orphan_next_commits`]), and the last one.
    orphan_next: AtomicU64,
    last_orphaned: Mutex<Option<VersionId>>,
    /// Deletions still to let through ([`FaultyStorage::fail_deletes_after`]).
    deletes_left: AtomicU64,
    /// Commits it accepts fail before reaching the store ([`FaultyStorage::refuse_commits`]).
    refusing: Mutex<Option<CommitFilter>>,
    /// Commits still to stop at the gate, and the gate.
    paused: Mutex<Option<(usize, CommitGate)>>,
}

/// Which commits [`FaultyStorage::refuse_commits_where`] refuses.
type CommitFilter = Arc<dyn Fn(&CommitBatch) -> bool + Send + Sync>;

/// A gate commits wait at (see [`FaultyStorage::pause_next_commits`]).
#[derive(Clone, Debug)]
pub struct CommitGate {
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl CommitGate {
    /// Lets every commit waiting at the gate, and every later one it holds, go on.
    pub fn open(&self) {
        self.permits.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Commits waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waits until `n` commits wait at the gate (polling; for tests).
    pub async fn until_waiting(&self, n: usize) {
        while self.waiting() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultyStorage {
    /// Wraps `inner`, injecting faults as `config` says.
    pub fn new(inner: Arc<dyn Storage>, config: FaultConfig) -> Self {
        let clamp = |p: f64| if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        let config = FaultConfig {
            seed: config.seed,
            fail_before: clamp(config.fail_before),
            fail_after: clamp(config.fail_after),
            fail_read: clamp(config.fail_read),
        };
        FaultyStorage {
            inner,
            config,
            rng: Mutex::new(SmallRng::seed_from_u64(config.seed)),
            crash: CrashHandle::default(),
            failed_before: AtomicU64::new(0),
            lost_replies: AtomicU64::new(0),
            failed_reads: AtomicU64::new(0),
            refused_after_crash: AtomicU64::new(0),
            reclaims: AtomicU64::new(0),
            lose_next: AtomicU64::new(0),
            drop_next: AtomicU64::new(0),
            orphan_next: AtomicU64::new(0),
            last_orphaned: Mutex::new(None),
            deletes_left: AtomicU64::new(u64::MAX),
            refusing: Mutex::new(None),
            paused: Mutex::new(None),
        }
    }

    /// The next `n` commits are applied and their replies lost (`OutcomeUnknown`), whatever
    /// the configured probabilities say.
    pub fn lose_next_replies(&self, n: u64) {
        self.lose_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` commits are lost before reaching the inner store, and reported as
    /// `OutcomeUnknown` (a timeout: the caller cannot tell whether they were applied).
    pub fn drop_next_requests(&self, n: u64) {
        self.drop_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` commits write their versions but no commit record, and fail with `Io`
    /// (a backend that failed half way through a commit): their versions are orphans.
    pub fn orphan_next_commits(&self, n: u64) {
        self.orphan_next.store(n, Ordering::SeqCst);
    }

    /// The version id of the last commit [`FaultyStorage::orphan_next_commits`] orphaned.
    pub fn last_orphaned(&self) -> Option<VersionId> {
        *self.last_orphaned.lock()
    }

    /// The next `n` deletions go through, then every later one fails with `Unavailable`
    /// (a crash in the middle of garbage collection; `u64::MAX`: never, the default).
    pub fn fail_deletes_after(&self, n: u64) {
        self.deletes_left.store(n, Ordering::SeqCst);
    }

    /// While `on`, every commit fails with `Unavailable` without reaching the inner store
    /// (other calls go through): the backend is down for writes.
    pub fn refuse_commits(&self, on: bool) {
        *self.refusing.lock() = on.then(|| Arc::new(|_: &CommitBatch| true) as CommitFilter);
    }

    /// From now on, the commits `refuse` accepts fail with `Unavailable` without reaching the
    /// inner store (until [`FaultyStorage::refuse_commits`]`(false)`).
    pub fn refuse_commits_where(
        &self,
        refuse: impl Fn(&CommitBatch) -> bool + Send + Sync + 'static,
    ) {
        *self.refusing.lock() = Some(Arc::new(refuse));
    }

    /// The next `n` commits wait, before reaching the inner store, until the returned gate
    /// is opened: they stay in flight for as long as a test needs.
    pub fn pause_next_commits(&self, n: usize) -> CommitGate {
        let gate = CommitGate {
            permits: Arc::new(Semaphore::new(0)),
            waiting: Arc::new(AtomicUsize::new(0)),
        };
        *self.paused.lock() = Some((n, gate.clone()));
        gate
    }

    /// The gate this commit must wait at, if any.
    fn gate(&self) -> Option<CommitGate> {
        let mut paused = self.paused.lock();
        let (left, gate) = paused.as_mut()?;
        if *left == 0 {
            return None;
        }
        *left -= 1;
        Some(gate.clone())
    }

    /// The configuration in force (probabilities clamped to `[0, 1]`).
    pub fn config(&self) -> FaultConfig {
        self.config
    }

    /// Simulates the death of the process: every later call returns `Unavailable`.
    pub fn crash(&self) {
        self.crash.crash();
    }

    /// A handle that crashes this store from elsewhere (another task, a test driver).
    pub fn crash_handle(&self) -> CrashHandle {
        self.crash.clone()
    }

    /// Whether the store has crashed.
    pub fn is_crashed(&self) -> bool {
        self.crash.is_crashed()
    }

    /// Faults injected so far.
    pub fn stats(&self) -> FaultStats {
        FaultStats {
            failed_before: self.failed_before.load(Ordering::Relaxed),
            lost_replies: self.lost_replies.load(Ordering::Relaxed),
            failed_reads: self.failed_reads.load(Ordering::Relaxed),
            refused_after_crash: self.refused_after_crash.load(Ordering::Relaxed),
            reclaims: self.reclaims.load(Ordering::Relaxed),
        }
    }

    /// The wrapped store, which holds exactly what was applied, faults or not: what a restarted
    /// process would find.
    pub fn inner(&self) -> &Arc<dyn Storage> {
        &self.inner
    }

    /// Unwraps the store (see [`FaultyStorage::inner`]).
    pub fn into_inner(self) -> Arc<dyn Storage> {
        self.inner
    }

    fn draw(&self) -> f64 {
        self.rng.lock().gen::<f64>()
    }

    fn refuse_if_crashed(&self) -> Result<(), StorageError> {
        if self.crash.is_crashed() {
            self.refused_after_crash.fetch_add(1, Ordering::Relaxed);
            Err(crashed())
        } else {
            Ok(())
        }
    }

    /// A reply computed by the inner store, unless the process died meanwhile.
    fn reply<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if self.crash.is_crashed() {
            self.refused_after_crash.fetch_add(1, Ordering::Relaxed);
            return Err(crashed());
        }
        result
    }
}

/// Takes one from a count of faults still to inject; `false` if none is left.
fn take_one(count: &AtomicU64) -> bool {
    count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn crashed() -> StorageError {
    StorageError::Unavailable("injected fault: the process has crashed".into())
}

impl fmt::Debug for FaultyStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStorage")
            .field("inner", &self.inner.name())
            .field("config", &self.config)
            .field("crashed", &self.is_crashed())
            .field("stats", &self.stats())
            .finish()
    }
}

#[deny(clippy::missing_trait_methods)]
impl Storage for FaultyStorage {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn commit(&self, batch: CommitBatch) -> BoxFuture<'_, Result<CommitOutcome, StorageError>> {
        Box::pin(async move {
            self.refuse_if_crashed()?;
            if let Some(gate) = self.gate() {
                gate.pass().await;
            }
            let u = self.draw();
            let refuse = self.refusing.lock().clone();
            if refuse.is_some_and(|refuse| refuse(&batch)) {
                self.failed_before.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::Unavailable(
                    "injected fault: the backend refuses commits".into(),
                ));
            }
            if take_one(&self.drop_next) {
                self.lost_replies.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::OutcomeUnknown(
                    "injected fault: request lost before reaching the backend".into(),
                ));
            }
            if take_one(&self.orphan_next) {
                let id = batch.record.id;
                *self.last_orphaned.lock() = Some(id);
                let anchor = crate::storage::anchor(
                    batch.record.idempotency_key.as_ref(),
                    batch
                        .versions
                        .iter()
                        .map(|(k, _)| k)
                        .chain(&batch.conditions.deleted),
                );
                self.inner.commit(batch).await?;
                let record = VersionKey {
                    key: anchor,
                    version: id,
                };
                self.inner.delete(Vec::new(), vec![record]).await?;
                return Err(StorageError::Io(
                    "injected fault: versions written, commit record not".into(),
                ));
            }
            let lose_forced = take_one(&self.lose_next);
            if u < self.config.fail_before && !lose_forced {
                self.failed_before.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::Unavailable(
                    "injected fault: commit lost before reaching the backend".into(),
                ));
            }
            let lose_reply = lose_forced || u < self.config.fail_before + self.config.fail_after;
            let result = self.inner.commit(batch).await;
            let applied = matches!(result, Ok(_) | Err(StorageError::OutcomeUnknown(_)));
            if applied && self.crash.is_crashed() {
                self.lost_replies.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::OutcomeUnknown(
                    "injected fault: the process crashed during the commit".into(),
                ));
            }
            if lose_reply && result.is_ok() {
                self.lost_replies.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::OutcomeUnknown(
                    "injected fault: commit applied, reply lost".into(),
                ));
            }
            // Not applied: nothing to lose, and `Unavailable` is exact.
            self.reply(result)
        })
    }

    fn get_versions(
        &self,
        keys: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, StorageError>> {
        Box::pin(async move {
            self.refuse_if_crashed()?;
            if self.draw() < self.config.fail_read {
                self.failed_reads.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::Unavailable(
                    "injected fault: read failed".into(),
                ));
            }
            let result = self.inner.get_versions(keys).await;
            self.reply(result)
        })
    }

    fn scan_commits(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommitRecord>, StorageError>> {
        Box::pin(async move {
            self.refuse_if_crashed()?;
            let result = self.inner.scan_commits(after, limit).await;
            self.reply(result)
        })
    }

    fn find_idempotent(
        &self,
        idempotency_key: Bytes,
    ) -> BoxFuture<'_, Result<Option<VersionId>, StorageError>> {
        Box::pin(async move {
            self.refuse_if_crashed()?;
            let result = self.inner.find_idempotent(idempotency_key).await;
            self.reply(result)
        })
    }

    fn delete(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.refuse_if_crashed()?;
            if !take_one(&self.deletes_left) {
                return Err(StorageError::Unavailable(
                    "injected fault: deletions fail".into(),
                ));
            }
            let result = self.inner.delete(versions, commits).await;
            self.reply(result)
        })
    }

    /// Closes the inner store, unless crashed (a dead process closes nothing).
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.refuse_if_crashed()?;
            let result = self.inner.close().await;
            self.reply(result)
        })
    }

    fn durability(&self) -> Durability {
        self.inner.durability()
    }

    fn health(&self) -> Result<(), String> {
        if self.crash.is_crashed() {
            return Err("injected fault: the process has crashed".into());
        }
        self.inner.health()
    }

    fn reclaim_orphans(&self, older_than: Duration) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move {
            self.reclaims.fetch_add(1, Ordering::Relaxed);
            self.refuse_if_crashed()?;
            let result = self.inner.reclaim_orphans(older_than).await;
            self.reply(result)
        })
    }

    fn heartbeat(
        &self,
        beat: Heartbeat,
    ) -> BoxFuture<'_, Result<Option<Vec<Member>>, StorageError>> {
        Box::pin(async move {
            self.refuse_if_crashed()?;
            let result = self.inner.heartbeat(beat).await;
            self.reply(result)
        })
    }

    fn commits_claim_positions(&self) -> bool {
        self.inner.commits_claim_positions()
    }

    fn claimed_shards(&self, batch: &CommitBatch) -> Vec<usize> {
        self.inner.claimed_shards(batch)
    }

    fn log_tail(
        &self,
        after: crate::storage::LogPos,
        limit: usize,
    ) -> BoxFuture<'_, Result<LogPage, StorageError>> {
        Box::pin(async move {
            self.refuse_if_crashed()?;
            let result = self.inner.log_tail(after, limit).await;
            self.reply(result)
        })
    }

    fn drop_heads(&self, heads: Vec<VersionKey>) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.refuse_if_crashed()?;
            let result = self.inner.drop_heads(heads).await;
            self.reply(result)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::{FaultConfig, FaultStats, FaultyStorage};
    use crate::storage::memory::MemoryStorage;
    use crate::storage::testkit::conformance::{self, batch, get_one, plain, scan_all, vid, vkey};
    use crate::storage::{CommitOutcome, Storage, StorageError};

    fn faulty(config: FaultConfig) -> Arc<FaultyStorage> {
        Arc::new(FaultyStorage::new(Arc::new(MemoryStorage::new()), config))
    }

    // With no faults configured the wrapper is transparent: it passes the whole suite.
    crate::storage_conformance_tests!(|| (faulty(FaultConfig::new(7)), ()));

    #[tokio::test]
    async fn fail_before_leaves_nothing() {
        let s = faulty(FaultConfig {
            fail_before: 1.0,
            ..FaultConfig::new(1)
        });
        let result = s
            .commit(batch(vid(1, 1), Some(b"i"), &[(b"k", b"v")]))
            .await;
        assert!(
            matches!(result, Err(StorageError::Unavailable(_))),
            "{result:?}"
        );
        assert!(result.is_err_and(|e| e.is_retryable()));
        let inner = &**s.inner();
        assert!(scan_all(inner).await.is_empty());
        assert_eq!(get_one(inner, b"k", vid(1, 1)).await, None);
        assert_eq!(
            s.stats(),
            FaultStats {
                failed_before: 1,
                ..FaultStats::default()
            }
        );
    }

    #[tokio::test]
    async fn fail_after_applies_the_commit() {
        let s = faulty(FaultConfig {
            fail_after: 1.0,
            ..FaultConfig::new(2)
        });
        let result = s
            .commit(batch(vid(1, 1), Some(b"i"), &[(b"k", b"v")]))
            .await;
        assert!(
            matches!(result, Err(StorageError::OutcomeUnknown(_))),
            "{result:?}"
        );
        // The data is there, through the wrapper and in the inner store.
        assert_eq!(
            get_one(&*s, b"k", vid(1, 1)).await,
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(
            get_one(&**s.inner(), b"k", vid(1, 1)).await,
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(
            plain(s.find_idempotent(Bytes::from_static(b"i")).await),
            Ok(Some(vid(1, 1)))
        );
        // The retry a client would send is a duplicate in the inner store.
        let retry = s.inner().commit(batch(vid(2, 2), Some(b"i"), &[])).await;
        assert_eq!(plain(retry), Ok(CommitOutcome::Duplicate(vid(1, 1))));
        assert_eq!(s.stats().lost_replies, 1);
    }

    #[tokio::test]
    async fn read_failures_hit_get_versions_only() {
        let s = faulty(FaultConfig {
            fail_read: 1.0,
            ..FaultConfig::new(3)
        });
        conformance::commit_ok(&*s, batch(vid(1, 1), Some(b"i"), &[(b"k", b"v")])).await;
        let result = s.get_versions(vec![vkey(b"k", vid(1, 1))]).await;
        assert!(
            matches!(result, Err(StorageError::Unavailable(_))),
            "{result:?}"
        );
        assert_eq!(scan_all(&*s).await.len(), 1);
        assert_eq!(
            plain(s.find_idempotent(Bytes::from_static(b"i")).await),
            Ok(Some(vid(1, 1)))
        );
        assert_eq!(s.stats().failed_reads, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_makes_everything_unavailable_until_restart() {
        let s = faulty(FaultConfig::new(4));
        conformance::commit_ok(&*s, batch(vid(1, 1), Some(b"i"), &[(b"k", b"v")])).await;

        let handle = s.crash_handle();
        tokio::spawn(async move { handle.crash() })
            .await
            .expect("crash task");
        assert!(s.is_crashed());

        let unavailable = |r: Result<(), StorageError>| {
            assert!(matches!(r, Err(StorageError::Unavailable(_))), "{r:?}");
        };
        unavailable(
            s.commit(batch(vid(2, 2), None, &[(b"k", b"w")]))
                .await
                .map(drop),
        );
        unavailable(s.get_versions(vec![vkey(b"k", vid(1, 1))]).await.map(drop));
        unavailable(s.scan_commits(None, 10).await.map(drop));
        unavailable(s.find_idempotent(Bytes::from_static(b"i")).await.map(drop));
        unavailable(
            s.delete(vec![vkey(b"k", vid(1, 1))], vec![vkey(b"k", vid(1, 1))])
                .await,
        );
        unavailable(s.close().await);
        assert_eq!(s.stats().refused_after_crash, 6);

        // Restart: the inner store holds what was applied before the crash, and nothing else.
        let s = Arc::into_inner(s).expect("sole owner");
        let restarted = s.into_inner();
        assert_eq!(
            get_one(&*restarted, b"k", vid(1, 1)).await,
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(get_one(&*restarted, b"k", vid(2, 2)).await, None);
        assert_eq!(scan_all(&*restarted).await.len(), 1);
    }

    /// Runs 300 commits and reads on a fresh store; the outcome of each, as text.
    async fn run_schedule(seed: u64) -> (Vec<String>, FaultStats) {
        let s = faulty(FaultConfig {
            seed,
            fail_before: 0.2,
            fail_after: 0.2,
            fail_read: 0.3,
        });
        let mut outcomes = Vec::new();
        for i in 0..150u64 {
            let id = vid(i, u128::from(i));
            let result = s.commit(batch(id, None, &[(b"k", b"v")])).await;
            outcomes.push(match result {
                Ok(o) => format!("{o:?}"),
                Err(StorageError::Unavailable(_)) => "before".into(),
                Err(StorageError::OutcomeUnknown(_)) => "after".into(),
                Err(e) => panic!("unexpected {e}"),
            });
            let read = s.get_versions(vec![vkey(b"k", id)]).await;
            outcomes.push(format!("{read:?}"));
        }
        (outcomes, s.stats())
    }

    #[tokio::test]
    async fn faults_are_deterministic_by_seed() {
        let (a, stats_a) = run_schedule(42).await;
        let (b, stats_b) = run_schedule(42).await;
        let (c, _) = run_schedule(43).await;
        assert_eq!(a, b);
        assert_eq!(stats_a, stats_b);
        assert_ne!(a, c);
        // Each kind of fault happened, about as often as configured.
        for (count, expected) in [
            (stats_a.failed_before, 30),
            (stats_a.lost_replies, 30),
            (stats_a.failed_reads, 45),
        ] {
            assert!(count.abs_diff(expected) < expected / 2, "{stats_a:?}");
        }
        // A commit whose reply was lost is readable; one failed before is not.
        for pair in a.chunks(2) {
            match pair[0].as_str() {
                "before" => assert!(pair[1] == "Ok([None])" || pair[1].starts_with("Err")),
                _ => assert!(pair[1] == "Ok([Some(b\"v\")])" || pair[1].starts_with("Err")),
            }
        }
    }

    /// A store with orphans to reclaim: reports how many it was asked to reclaim.
    struct WithOrphans(MemoryStorage);

    impl Storage for WithOrphans {
        fn name(&self) -> &'static str {
            "with-orphans"
        }
        fn commit(
            &self,
            batch: crate::storage::CommitBatch,
        ) -> crate::storage::BoxFuture<'_, Result<CommitOutcome, StorageError>> {
            self.0.commit(batch)
        }
        fn get_versions(
            &self,
            keys: Vec<crate::storage::VersionKey>,
        ) -> crate::storage::BoxFuture<'_, Result<Vec<Option<Bytes>>, StorageError>> {
            self.0.get_versions(keys)
        }
        fn scan_commits(
            &self,
            after: Option<crate::storage::VersionId>,
            limit: usize,
        ) -> crate::storage::BoxFuture<'_, Result<Vec<crate::storage::CommitRecord>, StorageError>>
        {
            self.0.scan_commits(after, limit)
        }
        fn find_idempotent(
            &self,
            key: Bytes,
        ) -> crate::storage::BoxFuture<'_, Result<Option<crate::storage::VersionId>, StorageError>>
        {
            self.0.find_idempotent(key)
        }
        fn delete(
            &self,
            versions: Vec<crate::storage::VersionKey>,
            commits: Vec<crate::storage::VersionKey>,
        ) -> crate::storage::BoxFuture<'_, Result<(), StorageError>> {
            self.0.delete(versions, commits)
        }
        fn close(&self) -> crate::storage::BoxFuture<'_, Result<(), StorageError>> {
            self.0.close()
        }
        fn reclaim_orphans(
            &self,
            older_than: std::time::Duration,
        ) -> crate::storage::BoxFuture<'_, Result<u64, StorageError>> {
            Box::pin(async move { Ok(older_than.as_secs()) })
        }
    }

    #[tokio::test]
    async fn orphan_reclamation_reaches_the_inner_store() {
        let s = FaultyStorage::new(
            Arc::new(WithOrphans(MemoryStorage::new())),
            FaultConfig::new(5),
        );
        let reclaimed = s.reclaim_orphans(std::time::Duration::from_secs(7)).await;
        assert_eq!(plain(reclaimed), Ok(7));
        s.crash();
        assert!(s
            .reclaim_orphans(std::time::Duration::from_secs(7))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn on_demand_faults_lose_refuse_and_pause() {
        let s = faulty(FaultConfig::new(6));
        s.lose_next_replies(1);
        let lost = s.commit(batch(vid(1, 1), None, &[(b"k", b"v")])).await;
        assert!(
            matches!(lost, Err(StorageError::OutcomeUnknown(_))),
            "{lost:?}"
        );
        assert_eq!(scan_all(&**s.inner()).await.len(), 1, "applied");
        s.refuse_commits(true);
        let refused = s.commit(batch(vid(2, 2), None, &[(b"k", b"w")])).await;
        assert!(
            matches!(refused, Err(StorageError::Unavailable(_))),
            "{refused:?}"
        );
        s.refuse_commits(false);
        let gate = s.pause_next_commits(1);
        let store = s.clone();
        let paused =
            tokio::spawn(
                async move { store.commit(batch(vid(3, 3), None, &[(b"k", b"x")])).await },
            );
        gate.until_waiting(1).await;
        assert_eq!(scan_all(&**s.inner()).await.len(), 1, "still in flight");
        gate.open();
        assert_eq!(
            plain(paused.await.expect("task")),
            Ok(CommitOutcome::Committed)
        );
        assert_eq!(scan_all(&**s.inner()).await.len(), 2);
    }
}
