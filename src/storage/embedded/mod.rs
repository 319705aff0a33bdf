//! Embedded backend: one [redb] file on local disk, written with group commit.
//!
//! # Layout
//!
//! The file `aft.redb` in the directory given to [`EmbeddedStorage::open`] holds four tables:
//!
//! * `versions`: `u32` big-endian length of the user key ‖ user key ‖ [`VersionId::to_bytes`]
//!   → value. The length prefix keeps keys that are prefixes of each other apart.
//! * `commits`: [`VersionId::to_bytes`] → commit record (the encoding every backend shares,
//!   [`record`](crate::storage::record)); the byte order of the keys is the id order, so a
//!   range scan lists records in id order.
//! * `idempotency`: idempotency key → [`VersionId::to_bytes`] of the commit holding it.
//! * `meta`: `"format"` → the layout version, checked on open; `"probe"` → how many write
//!   probes have run (see *Write failures and recovery*).
//!
//! # Writes: group commit
//!
//! A dedicated thread owns every write. [`Storage::commit`] and [`Storage::delete`] queue their
//! request and wait for its answer; the thread takes everything queued (up to
//! [`MAX_GROUP_REQUESTS`] requests or [`MAX_GROUP_BYTES`] bytes), applies it in **one** redb
//! write transaction and commits it with one `fsync`, then answers every waiter. Within the
//! transaction, commits are applied in queue order, each conditional on its idempotency key
//! (which earlier commits of the same group already hold), then deletions. Every request of a
//! group waits for the same transaction, so none is answered before the group is durable.
//!
//! If the group fails before redb commits, every waiter gets [`StorageError::Io`] (a redb
//! transaction is atomic: nothing was written). If redb's commit itself fails, the group may
//! or may not have become durable (redb documents this for a failed commit), so waiters get
//! [`StorageError::OutcomeUnknown`].
//!
//! # Write failures and recovery
//!
//! After a failed write (a disk full, an `fsync` error) redb refuses every later operation on
//! that [`Database`] until it is reopened. The writer thread therefore treats any failed
//! group, flush or reopen as the start of an *outage*:
//!
//! * the store stops accepting writes at once: [`Storage::commit`] and [`Storage::delete`]
//!   fail fast with [`StorageError::Unavailable`] (nothing was written; the caller may retry),
//!   without queueing behind the writer;
//! * the writer drops the failed database and reopens the file right away (redb repairs it as
//!   after a crash: it holds exactly the groups that became durable), so reads keep working
//!   whenever the disk allows the file to be opened; until then they fail with
//!   [`StorageError::Unavailable`];
//! * after [`RETRY_BACKOFF_MIN`], doubling with each consecutive failure up to
//!   [`RETRY_BACKOFF_MAX`], the writer probes the disk with a small durable write transaction
//!   (it bumps `meta["probe"]`); once one commits, writes are accepted again.
//!
//! The start and the end of an outage are each logged once (`warn`, then `info`); the state is
//! reported by [`EmbeddedStorage::health`] and counted in [`EmbeddedStorage::stats`]. No
//! request is ever acknowledged unless the transaction holding it committed.
//!
//! With [`EmbeddedOptions::fsync`] off, groups are committed without `fsync` (redb's
//! `Durability::None`), and a durable commit follows within [`NON_DURABLE_FLUSH_INTERVAL`], at
//! close, and when the store is dropped: a crash of the process or of the machine loses at most
//! the acknowledged commits of that last interval. So does a write failure: the reopen that
//! follows it (see above) finds the file as a crash would leave it.
//!
//! # Reads
//!
//! Reads run a redb read transaction on the blocking thread pool
//! ([`tokio::task::spawn_blocking`]); they see every commit acknowledged before they began.
//!
//! # Memory
//!
//! redb caches pages (those read, and those written but not yet on disk) up to
//! [`EmbeddedOptions::cache_bytes`]; [`CacheBudget::split`] shares one budget between that
//! cache and the engine's value cache, so that `cache_mb` bounds both.

mod error;
mod group;
mod layout;
mod options;
mod read;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;
use redb::Database;
use tokio::sync::oneshot;

pub use group::{MAX_GROUP_BYTES, MAX_GROUP_REQUESTS};
pub use layout::FILE_NAME;
pub use options::{CacheBudget, EmbeddedOptions, DEFAULT_CACHE_BYTES, MIN_PAGE_CACHE_BYTES};
pub use writer::{
    EmbeddedHealth, EmbeddedStats, NON_DURABLE_FLUSH_INTERVAL, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN,
};

use error::{failure, open_error, BACKEND};
use layout::{version_key, Deletion, EncodedCommit};
use writer::{Opener, Request, Shared};

use super::{
    BoxFuture, CommitBatch, CommitOutcome, CommitRecord, Durability, Storage, StorageError,
    VersionId, VersionKey,
};

/// The on-disk [`Storage`]: a redb database written by one group-commit thread.
///
/// At most one `EmbeddedStorage`, in any process, has a given directory open; see
/// [`EmbeddedStorage::open`]. Dropping it without [`Storage::close`] still applies and flushes
/// every queued request, stops the writer thread and releases the file, blocking the dropping
/// thread meanwhile (at most one group commit).
///
/// Reads and [`Storage::close`] run on Tokio's blocking pool, so they must be awaited inside a
/// Tokio runtime.
pub struct EmbeddedStorage {
    path: PathBuf,
    /// Set by `close` and `drop`, before they stop the writer.
    closed: AtomicBool,
    /// Requests to the writer thread; `None` only while dropping.
    requests: Option<mpsc::Sender<Request>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    /// Groups are fsynced before they are acknowledged.
    fsync: bool,
}

impl EmbeddedStorage {
    /// Opens (creating it if needed) the store in `dir`: the directory, then the file
    /// [`FILE_NAME`] in it; starts the writer thread.
    ///
    /// Fails with [`StorageError::Unavailable`] if the store is already open, by another
    /// process or by another `EmbeddedStorage` of this one (redb locks the file; the lock is
    /// released when the owner closes, drops or dies), with [`StorageError::Corrupt`] if the
    /// file is not a readable store, and with [`StorageError::Io`] otherwise.
    ///
    /// Blocks: it does file I/O, and after a crash redb repairs the file before it returns.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StorageError::Io(
                failure(format!("cannot create directory {}: {e}", dir.display())).because(e),
            )
        })?;
        let path = dir.join(FILE_NAME);
        let file = path.clone();
        let cache_bytes = options.cache_bytes;
        let open: Opener = Box::new(move || {
            Database::builder()
                .set_cache_size(cache_bytes)
                .create(&file)
                .map_err(|e| open_error(&file, e))
        });
        Self::start(open, path, options)
    }

    /// Opens (creating it if empty) a store kept in a redb [`StorageBackend`] rather than in a
    /// file, e.g. one that injects faults. `name` stands for the path in [`Self::path`] and in
    /// messages.
    ///
    /// `backend` is called once now, and again for every reopen after a write failure (see the
    /// module documentation); every call must return a handle on the same storage, and may
    /// fail (the open, or the reopen, then fails with [`StorageError::Io`]). Errors are those
    /// of [`Self::open`]. Blocks like it.
    ///
    /// [`StorageBackend`]: redb::StorageBackend
    pub fn open_with_backend<B, F>(
        name: impl Into<PathBuf>,
        options: EmbeddedOptions,
        backend: F,
    ) -> Result<Self, StorageError>
    where
        B: redb::StorageBackend,
        F: Fn() -> std::io::Result<B> + Send + 'static,
    {
        let path = name.into();
        let label = path.clone();
        let cache_bytes = options.cache_bytes;
        let open: Opener = Box::new(move || {
            let backend = backend().map_err(|e| {
                StorageError::Io(
                    failure(format!(
                        "cannot open the backend of {}: {e}",
                        label.display()
                    ))
                    .because(e),
                )
            })?;
            Database::builder()
                .set_cache_size(cache_bytes)
                .create_with_backend(backend)
                .map_err(|e| open_error(&label, e))
        });
        Self::start(open, path, options)
    }

    /// Opens the database, initializes its tables and starts the writer thread.
    fn start(open: Opener, path: PathBuf, options: EmbeddedOptions) -> Result<Self, StorageError> {
        let db = open()?;
        layout::init_tables(&db, &path)?;
        let db = Arc::new(db);
        let shared = Arc::new(Shared::new(db.clone()));
        let (requests, handle) =
            writer::spawn(db, open, path.clone(), options.fsync, shared.clone())?;
        Ok(EmbeddedStorage {
            path,
            closed: AtomicBool::new(false),
            requests: Some(requests),
            writer: Mutex::new(Some(handle)),
            shared,
            fsync: options.fsync,
        })
    }

    /// Path of the database file (the name given to [`Self::open_with_backend`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the writer thread has done so far.
    pub fn stats(&self) -> EmbeddedStats {
        self.shared.stats()
    }

    /// Whether the store accepts writes: `false` from a failed write until the writer has
    /// reopened the database and committed a write again. Cheap (one atomic load).
    pub fn healthy(&self) -> bool {
        self.shared.writable.load(Ordering::Acquire)
    }

    /// The store's health in detail; see the module documentation for what happens during an
    /// outage.
    pub fn health(&self) -> EmbeddedHealth {
        let closed = self.closed.load(Ordering::Acquire);
        let writable = self.healthy() && !closed;
        let readable = !closed && self.shared.db.read().is_some();
        let outage = self.shared.outage.lock();
        EmbeddedHealth {
            writable,
            readable,
            error: outage.as_ref().map(|o| o.error.clone()),
            failing_for: outage.as_ref().map(|o| o.since.elapsed()),
        }
    }
}

impl fmt::Debug for EmbeddedStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStorage")
            .field("path", &self.path)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .field("healthy", &self.healthy())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Storage for EmbeddedStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Each group commit is a redb transaction, committed before it is acknowledged:
    /// fsynced first, unless `fsync` is off (then on disk within about a second).
    fn durability(&self) -> Durability {
        if self.fsync {
            Durability::Synced
        } else {
            Durability::WithinASecond
        }
    }

    fn health(&self) -> Result<(), String> {
        let health = EmbeddedStorage::health(self);
        if health.writable || self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(format!(
            "cannot write for {} ms: {}",
            health.failing_for.unwrap_or_default().as_millis(),
            health.error.as_deref().unwrap_or("unknown error")
        ))
    }

    fn commit(&self, batch: CommitBatch) -> BoxFuture<'_, Result<CommitOutcome, StorageError>> {
        Box::pin(async move {
            self.check_writable()?;
            // Encoded here, on the caller's thread, to keep the writer thread on I/O.
            let commit = EncodedCommit::new(batch)?;
            self.submit(
                |reply| Request::Commit { commit, reply },
                || StorageError::OutcomeUnknown(failure("the storage writer thread stopped")),
            )
            .await
        })
    }

    fn get_versions(
        &self,
        keys: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, StorageError>> {
        Box::pin(async move {
            // A key too long to encode was never stored.
            let encoded: Vec<Option<Vec<u8>>> = keys
                .iter()
                .map(|k| version_key(&k.key, k.version).ok())
                .collect();
            self.read(move |db| read::get_versions(db, &encoded)).await
        })
    }

    fn scan_commits(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommitRecord>, StorageError>> {
        Box::pin(async move {
            self.read(move |db| read::scan_commits(db, after, limit))
                .await
        })
    }

    fn find_idempotent(
        &self,
        idempotency_key: Bytes,
    ) -> BoxFuture<'_, Result<Option<VersionId>, StorageError>> {
        Box::pin(async move {
            self.read(move |db| read::find_idempotent(db, &idempotency_key))
                .await
        })
    }

    fn delete(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        let commits: Vec<VersionId> = commits.into_iter().map(|c| c.version).collect();
        Box::pin(async move {
            if versions.is_empty() && commits.is_empty() {
                return if self.closed.load(Ordering::Acquire) {
                    Err(StorageError::Closed)
                } else {
                    Ok(())
                };
            }
            let deletion = Deletion {
                // A key too long to encode was never stored.
                versions: versions
                    .iter()
                    .filter_map(|k| version_key(&k.key, k.version).ok())
                    .collect(),
                commits,
            };
            self.submit(
                |reply| Request::Delete { deletion, reply },
                || StorageError::Io(failure("the storage writer thread stopped")),
            )
            .await
        })
    }

    /// Applies and flushes every request queued before it, stops the writer thread and
    /// releases the file (once in-flight reads finish). Requests that arrive later fail with
    /// [`StorageError::Closed`]. Idempotent: a second `close` returns `Ok` once the first has
    /// flushed.
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            let (reply, answer) = oneshot::channel();
            let sent = match &self.requests {
                Some(requests) => requests.send(Request::Close { reply }).is_ok(),
                None => false,
            };
            let answered = if sent { answer.await.ok() } else { None };
            // Unanswered: the writer had already stopped, after an earlier close (whose result
            // it kept) or by a panic.
            let mut result = answered.unwrap_or_else(|| {
                self.shared.close_result.lock().clone().unwrap_or_else(|| {
                    Err(StorageError::Io(failure(
                        "the storage writer thread stopped",
                    )))
                })
            });
            let handle = self.writer.lock().take();
            if let Some(handle) = handle {
                let joined = tokio::task::spawn_blocking(move || handle.join()).await;
                if !matches!(joined, Ok(Ok(()))) && result.is_ok() {
                    result = Err(StorageError::Io(failure(
                        "the storage writer thread panicked",
                    )));
                }
            }
            self.shared.db.write().take();
            result
        })
    }
}

impl Drop for EmbeddedStorage {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        // The writer applies what is queued, flushes and exits when its queue disconnects.
        self.requests.take();
        if let Some(handle) = self.writer.get_mut().take() {
            if handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "the storage writer thread panicked");
            }
        }
    }
}
