//! The writer thread: it owns every write. It takes the queued requests in groups (see
//! [`group`](super::group)), commits each group with one `fsync` (or flushes later, with
//! `fsync` off), and after a failed write runs the outage: refuse writes, reopen the database
//! for reads, probe the disk with backoff until a write commits again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadableTable};
use tokio::sync::oneshot;

use super::error::{failure, OrIo};
use super::group::{apply_group, Group};
use super::layout::{Deletion, EncodedCommit, META};
use super::EmbeddedStorage;
use crate::storage::{CommitOutcome, StorageError};

/// With [`EmbeddedOptions::fsync`](super::EmbeddedOptions::fsync) off, the longest time a
/// commit stays non-durable.
pub const NON_DURABLE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// First wait, after a failed write, before the writer probes the disk again; it doubles with
/// every consecutive failure, up to [`RETRY_BACKOFF_MAX`].
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest wait between two probes of a failing disk.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a reopen waits for reads still using the failed database to finish (it then tries
/// anyway; a reopen that fails because the file is still held is retried later).
const READERS_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Counters of the writer thread, for INFO and for checking that group commit groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Write transactions committed (one per group).
    pub groups: u64,
    /// Commits and deletions applied by those transactions.
    pub requests: u64,
    /// Write transactions (groups, flushes and probes) that failed.
    pub write_failures: u64,
    /// Attempts to reopen the database after a failure that failed themselves.
    pub reopen_failures: u64,
    /// Times the database was reopened after a failure.
    pub reopens: u64,
    /// Commits and deletions refused, unapplied, because the store could not write.
    pub refused: u64,
}

/// Whether the store can write and read; see
/// [`EmbeddedStorage::health`](super::EmbeddedStorage::health).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedHealth {
    /// Commits and deletions are accepted: `false` from a failed write until a later write
    /// transaction commits.
    pub writable: bool,
    /// Reads are served: `false` while the database is closed, or could not be reopened after
    /// a failure.
    pub readable: bool,
    /// While not writable: the error of the latest failed attempt (a write or a reopen).
    pub error: Option<String>,
    /// While not writable: how long ago the first failure of this outage happened.
    pub failing_for: Option<Duration>,
}

/// Opens the database: at start, and again after each write failure. Each call must return a
/// handle on the same storage.
pub(super) type Opener = Box<dyn Fn() -> Result<Database, StorageError> + Send>;

/// What the store asks of its writer thread.
pub(super) enum Request {
    Commit {
        commit: EncodedCommit,
        reply: oneshot::Sender<Result<CommitOutcome, StorageError>>,
    },
    Delete {
        deletion: Deletion,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Apply what came before, flush, answer, stop.
    Close {
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
}

/// State shared by the store and its writer thread.
pub(super) struct Shared {
    /// For reads; `None` once closed, and while the writer reopens the database.
    pub(super) db: RwLock<Option<Arc<Database>>>,
    /// Whether requests are accepted; cleared by the writer at a failure, set again once a
    /// write commits.
    pub(super) writable: AtomicBool,
    /// The outage in progress, if any.
    pub(super) outage: Mutex<Option<Outage>>,
    groups: AtomicU64,
    requests: AtomicU64,
    write_failures: AtomicU64,
    reopen_failures: AtomicU64,
    reopens: AtomicU64,
    refused: AtomicU64,
    /// The final flush's result, once a close has stopped the writer.
    pub(super) close_result: Mutex<Option<Result<(), StorageError>>>,
}

/// A period during which the store cannot write.
pub(super) struct Outage {
    /// When its first failure happened.
    pub(super) since: Instant,
    /// The error of its latest failed attempt.
    pub(super) error: String,
}

impl Shared {
    pub(super) fn new(db: Arc<Database>) -> Self {
        Shared {
            db: RwLock::new(Some(db)),
            writable: AtomicBool::new(true),
            outage: Mutex::new(None),
            groups: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            reopen_failures: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            close_result: Mutex::new(None),
        }
    }

    /// What the writer thread has done so far.
    pub(super) fn stats(&self) -> EmbeddedStats {
        EmbeddedStats {
            groups: self.groups.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            reopen_failures: self.reopen_failures.load(Ordering::Relaxed),
            reopens: self.reopens.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// The error of the outage in progress, for messages.
    fn outage_error(&self) -> String {
        self.outage
            .lock()
            .as_ref()
            .map_or_else(|| "a write failed".to_owned(), |o| o.error.clone())
    }

    /// The answer to a request refused during an outage: nothing was written.
    fn unwritable(&self) -> StorageError {
        StorageError::Unavailable(failure(format!(
            "the embedded store cannot write ({}); it is retrying in the background",
            self.outage_error()
        )))
    }

    /// The answer to a read while the database is being reopened.
    pub(super) fn unreadable(&self) -> StorageError {
        StorageError::Unavailable(failure(format!(
            "the embedded store is reopening its file after a write failure ({})",
            self.outage_error()
        )))
    }
}

/// Starts the writer thread on `db` (opened by `open`, which reopens it after failures).
/// Returns the queue of its requests and the thread; it stops after a `Close`, or once every
/// sender of the queue is dropped, having applied and flushed what was queued.
pub(super) fn spawn(
    db: Arc<Database>,
    open: Opener,
    path: PathBuf,
    fsync: bool,
    shared: Arc<Shared>,
) -> Result<(mpsc::Sender<Request>, JoinHandle<()>), StorageError> {
    let (requests, queue) = mpsc::channel();
    let writer = Writer {
        db: Some(db),
        open,
        path,
        queue,
        fsync,
        unflushed_since: None,
        retry: None,
        shared,
    };
    let handle = std::thread::Builder::new()
        .name("aft-storage-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| {
            StorageError::Io(
                failure(format!("cannot start the storage writer thread: {e}")).because(e),
            )
        })?;
    Ok((requests, handle))
}

impl EmbeddedStorage {
    /// `Ok` if the store takes writes now. During an outage requests fail fast here, rather
    /// than queue behind a writer that may be reopening the database.
    pub(super) fn check_writable(&self) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        if !self.healthy() {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(self.shared.unwritable());
        }
        Ok(())
    }

    /// Queues a request for the writer, if the store takes writes, and waits for its answer;
    /// `lost` is the answer if the writer drops the request unanswered while the store is open.
    pub(super) async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> Request,
        lost: impl FnOnce() -> StorageError,
    ) -> Result<T, StorageError> {
        self.check_writable()?;
        let (reply, answer) = oneshot::channel();
        let sent = match &self.requests {
            Some(requests) => requests.send(make(reply)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.writer_gone());
        }
        match answer.await {
            Ok(result) => result,
            // The writer dropped the request unanswered: it was refused at close (never
            // applied), or the thread died while applying it.
            Err(_) if self.closed.load(Ordering::Acquire) => Err(StorageError::Closed),
            Err(_) => Err(lost()),
        }
    }

    /// The error for a request the writer thread could not take.
    fn writer_gone(&self) -> StorageError {
        if self.closed.load(Ordering::Acquire) {
            StorageError::Closed
        } else {
            StorageError::Io(failure("the storage writer thread has stopped"))
        }
    }
}

struct Writer {
    /// The open database; `None` after a failure until a reopen succeeds.
    db: Option<Arc<Database>>,
    open: Opener,
    /// For logs.
    path: PathBuf,
    queue: mpsc::Receiver<Request>,
    fsync: bool,
    /// With `fsync` off: when the oldest commit not yet flushed was made.
    unflushed_since: Option<Instant>,
    /// During an outage: when to try writing again. `None` while writes are accepted.
    retry: Option<Retry>,
    shared: Arc<Shared>,
}

/// When the writer tries again during an outage.
struct Retry {
    /// Consecutive failed attempts (writes and reopens) so far; at least 1.
    failures: u32,
    /// When to reopen the database (if it is not open) and probe it.
    at: Instant,
}

/// The wait before the next attempt after `failures` consecutive failures.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_BACKOFF_MIN
        .saturating_mul(1 << doublings)
        .min(RETRY_BACKOFF_MAX)
}

impl Writer {
    fn run(mut self) {
        loop {
            let Some(first) = self.next_request() else {
                // Every sender is gone: the store was dropped.
                if let Err(e) = self.flush() {
                    tracing::error!(error = %e, "flushing the embedded store at drop failed");
                }
                return;
            };
            let mut group = Group::default();
            let mut close = group.push(first);
            while close.is_none() && !group.is_full() {
                match self.queue.try_recv() {
                    Ok(request) => close = group.push(request),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                if self.retry.is_some() {
                    self.refuse(group);
                } else {
                    self.apply(group);
                }
            }
            if let Some(reply) = close {
                let result = self.flush();
                *self.shared.close_result.lock() = Some(result.clone());
                // Ignored send errors here and below: the waiter gave up on its answer.
                let _ = reply.send(result);
                self.refuse_the_rest();
                return;
            }
        }
    }

    /// The next request; `None` once every sender is gone. Meanwhile, with unflushed commits,
    /// flushes when [`NON_DURABLE_FLUSH_INTERVAL`] passes without a request, and during an
    /// outage tries writing again when its retry is due.
    fn next_request(&mut self) -> Option<Request> {
        loop {
            // Checked before waiting, so that requests arriving steadily cannot hold it off.
            if self.retry.as_ref().is_some_and(|r| r.at <= Instant::now()) {
                self.retry_writes();
                continue;
            }
            let flush_at = self.unflushed_since.map(|t| t + NON_DURABLE_FLUSH_INTERVAL);
            let wake = match (flush_at, self.retry.as_ref().map(|r| r.at)) {
                (Some(flush), Some(retry)) => flush.min(retry),
                (Some(at), None) | (None, Some(at)) => at,
                (None, None) => return self.queue.recv().ok(),
            };
            match self
                .queue
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(request) => return Some(request),
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if flush_at.is_some_and(|t| t <= Instant::now()) {
                        if let Err(e) = self.flush() {
                            self.note_failure(&e);
                            self.reopen_for_reads();
                        }
                    }
                }
            }
        }
    }

    /// Answers every request queued after a `Close`: the store is closed.
    fn refuse_the_rest(&mut self) {
        while let Ok(request) = self.queue.try_recv() {
            match request {
                Request::Commit { reply, .. } => {
                    let _ = reply.send(Err(StorageError::Closed));
                }
                Request::Delete { reply, .. } => {
                    let _ = reply.send(Err(StorageError::Closed));
                }
                // The first close flushed; same answer.
                Request::Close { reply } => {
                    let result = self.shared.close_result.lock().clone();
                    let _ = reply.send(result.unwrap_or(Ok(())));
                }
            }
        }
    }

    /// Answers a group taken during an outage without applying it.
    fn refuse(&mut self, group: Group) {
        self.shared
            .refused
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        for reply in group.commit_replies {
            let _ = reply.send(Err(self.shared.unwritable()));
        }
        for reply in group.delete_replies {
            let _ = reply.send(Err(self.shared.unwritable()));
        }
    }

    fn apply(&mut self, group: Group) {
        let Some(db) = self.db.clone() else {
            // Not reached: the database is open whenever no retry is pending.
            self.refuse(group);
            return;
        };
        let durable = self.fsync
            || self
                .unflushed_since
                .is_some_and(|t| t.elapsed() >= NON_DURABLE_FLUSH_INTERVAL);
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        let Group {
            commits,
            commit_replies,
            deletions,
            delete_replies,
            ..
        } = group;
        let requests = commits.len() + deletions.len();
        match apply_group(&db, &commits, &deletions, durability) {
            Ok(results) => {
                self.shared.groups.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .requests
                    .fetch_add(requests as u64, Ordering::Relaxed);
                if durable {
                    self.unflushed_since = None;
                } else {
                    self.unflushed_since.get_or_insert_with(Instant::now);
                }
                for (reply, result) in commit_replies.into_iter().zip(results.commits) {
                    let _ = reply.send(result);
                }
                for (reply, result) in delete_replies.into_iter().zip(results.deletions) {
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                drop(db);
                // Writes are refused from here on; the waiters learn first, then the reopen.
                self.note_failure(&error);
                for reply in commit_replies {
                    let _ = reply.send(Err(error.clone()));
                }
                for reply in delete_replies {
                    let _ = reply.send(Err(error.clone()));
                }
                self.reopen_for_reads();
            }
        }
    }

    /// Makes every commit so far durable (with `fsync` off).
    fn flush(&mut self) -> Result<(), StorageError> {
        if self.unflushed_since.is_none() {
            return Ok(());
        }
        let Some(db) = &self.db else {
            // Not reached: a failure, which closes the database, forgets unflushed commits.
            return Ok(());
        };
        let txn = db.begin_write().or_io("begin flush")?;
        // A new write transaction is durable (`Durability::Immediate`) unless told otherwise.
        txn.commit()
            .map_err(|e| StorageError::Io(failure(format!("flush: {e}")).because(e)))?;
        self.unflushed_since = None;
        Ok(())
    }

    /// Starts or extends the outage after `error`: refuses writes, schedules the next
    /// attempt, logs (the first failure only, above `debug`).
    fn note_failure(&mut self, error: &StorageError) {
        self.shared.writable.store(false, Ordering::Release);
        if self.db.is_some() {
            // A write failed (reopen failures are counted by `reopen`).
            self.shared.write_failures.fetch_add(1, Ordering::Relaxed);
        }
        let failures = self.retry.as_ref().map_or(0, |r| r.failures) + 1;
        let wait = backoff(failures);
        self.retry = Some(Retry {
            failures,
            at: Instant::now() + wait,
        });
        let lost_unflushed = self.unflushed_since.take().is_some();
        let path = self.path.display();
        let mut outage = self.shared.outage.lock();
        match &mut *outage {
            Some(outage) => {
                tracing::debug!(%path, %error, failures, ?wait, "embedded store still cannot write");
                outage.error = error.to_string();
            }
            None => {
                tracing::warn!(
                    %path,
                    %error,
                    "embedded store cannot write: refusing writes until a retry succeeds"
                );
                *outage = Some(Outage {
                    since: Instant::now(),
                    error: error.to_string(),
                });
            }
        }
        if lost_unflushed {
            tracing::error!(
                %path,
                "commits acknowledged without fsync since the last flush may be lost"
            );
        }
    }

    /// After a failed write: replaces the failed database (which redb no longer lets anyone
    /// use) by a fresh one, so that reads go on while writes wait for their retry.
    fn reopen_for_reads(&mut self) {
        if self.db.is_none() {
            // The failure was a reopen; the next one waits for the retry.
            return;
        }
        if let Err(error) = self.reopen() {
            tracing::debug!(path = %self.path.display(), %error, "reopening the embedded store failed");
            if let Some(outage) = &mut *self.shared.outage.lock() {
                outage.error = error.to_string();
            }
        }
    }

    /// Closes the database (waiting a little for reads still using it) and opens it again.
    fn reopen(&mut self) -> Result<(), StorageError> {
        self.release_database();
        match (self.open)() {
            Ok(db) => {
                let db = Arc::new(db);
                *self.shared.db.write() = Some(db.clone());
                self.db = Some(db);
                self.shared.reopens.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.shared.reopen_failures.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// Drops the database, and waits up to [`READERS_DRAIN_TIMEOUT`] for the reads that still
    /// hold it, so that its file is released before it is opened again.
    fn release_database(&mut self) {
        self.shared.db.write().take();
        let Some(db) = self.db.take() else { return };
        let held = Arc::downgrade(&db);
        drop(db);
        let deadline = Instant::now() + READERS_DRAIN_TIMEOUT;
        while held.strong_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The retry of an outage: reopens the database if needed and probes it with a write;
    /// ends the outage if that commits.
    fn retry_writes(&mut self) {
        let result = match self.db.is_some() {
            true => Ok(()),
            false => self.reopen(),
        }
        .and_then(|()| self.probe());
        match result {
            Ok(()) => {
                let failures = self.retry.take().map_or(0, |r| r.failures);
                let outage = self.shared.outage.lock().take();
                self.shared.writable.store(true, Ordering::Release);
                let down = outage.map(|o| o.since.elapsed()).unwrap_or_default();
                tracing::info!(
                    path = %self.path.display(),
                    ?down,
                    failures,
                    "embedded store writes again"
                );
            }
            Err(error) => {
                self.note_failure(&error);
                self.reopen_for_reads();
            }
        }
    }

    /// A small durable write transaction, to learn whether the disk takes writes again.
    fn probe(&self) -> Result<(), StorageError> {
        let Some(db) = &self.db else {
            return Err(StorageError::Io(failure("the database is not open")));
        };
        let txn = db.begin_write().or_io("begin probe")?;
        {
            let mut meta = txn.open_table(META).or_io("open meta")?;
            let probes = meta
                .get("probe")
                .or_io("read probe")?
                .map_or(0, |v| v.value());
            meta.insert("probe", probes.wrapping_add(1))
                .or_io("write probe")?;
        }
        txn.commit().or_io("commit probe")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), RETRY_BACKOFF_MIN);
        assert_eq!(backoff(2), RETRY_BACKOFF_MIN * 2);
        assert_eq!(backoff(4), RETRY_BACKOFF_MIN * 8);
        assert_eq!(backoff(1000), RETRY_BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_BACKOFF_MAX);
    }
}
