//! Embedded backend: one [redb] file on local disk, written with group commit.
//!
//! # Layout
//!
//! The file `aft.redb` in the directory given to [`EmbeddedStorage::open`] holds four tables:
//!
//! * `versions`: `u32` big-endian length of the user key ‖ user key ‖ [`VersionId::to_bytes`]
//!   → value. The length prefix keeps keys that are prefixes of each other apart.
//! * `commits`: [`VersionId::to_bytes`] → commit record (a small versioned encoding, see
//!   `encode_record`); the byte order of the keys is the id order, so a range scan lists
//!   records in id order.
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

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{
    BoxFuture, CommitBatch, CommitOutcome, CommitRecord, Storage, StorageError, VersionId,
    VersionKey,
};

/// Name of the database file inside the directory given to [`EmbeddedStorage::open`].
pub const FILE_NAME: &str = "aft.redb";

/// Most requests (commits and deletions) applied in one write transaction.
pub const MAX_GROUP_REQUESTS: usize = 1024;

/// A group stops taking requests once their encoded size reaches this many bytes (a single
/// larger request still forms a group of its own).
pub const MAX_GROUP_BYTES: usize = 64 << 20;

/// With [`EmbeddedOptions::fsync`] off, the longest time a commit stays non-durable.
pub const NON_DURABLE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Largest encoded key + value of one record. redb's own limit is about 3 GiB per value; this
/// leaves room and is far above what Redis accepts (512 MiB).
const MAX_RECORD_BYTES: usize = 1 << 30;

/// Layout version stored in the `meta` table.
const FORMAT_VERSION: u64 = 1;

const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
const COMMITS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("commits");
const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// First wait, after a failed write, before the writer probes the disk again; it doubles with
/// every consecutive failure, up to [`RETRY_BACKOFF_MAX`].
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest wait between two probes of a failing disk.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a reopen waits for reads still using the failed database to finish (it then tries
/// anyway; a reopen that fails because the file is still held is retried later).
const READERS_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// [`EmbeddedOptions::cache_bytes`] by default: a quarter of the default 256 MiB budget, as
/// [`CacheBudget::split`] gives.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Smallest page cache [`CacheBudget::split`] gives redb out of a budget that allows it.
pub const MIN_PAGE_CACHE_BYTES: usize = 4 << 20;

/// Options of [`EmbeddedStorage::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// `true` (the default): every acknowledged commit has been `fsync`ed. `false`: commits are
    /// acknowledged once applied, and flushed within [`NON_DURABLE_FLUSH_INTERVAL`] (like
    /// Redis's `appendfsync everysec`).
    pub fsync: bool,
    /// Bytes of redb's page cache ([`redb::Builder::set_cache_size`]): pages read, and pages
    /// written but not yet on disk (at most half of it), are held in memory up to this size.
    /// redb's own default is 1 GiB; this one is [`DEFAULT_CACHE_BYTES`]. See [`CacheBudget`]
    /// for sharing one budget with the engine's value cache.
    pub cache_bytes: usize,
}

impl Default for EmbeddedOptions {
    /// `fsync: true`, `cache_bytes:` [`DEFAULT_CACHE_BYTES`].
    fn default() -> Self {
        EmbeddedOptions {
            fsync: true,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// One memory budget (the `cache_mb` setting) shared by redb's page cache and the engine's
/// value cache, so that the two together stay within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheBudget {
    /// Bytes for redb's page cache: [`EmbeddedOptions::cache_bytes`].
    pub page_cache: usize,
    /// Bytes for the engine's value cache: `EngineConfig::cache_bytes`.
    pub value_cache: usize,
}

impl CacheBudget {
    /// Splits `total` bytes: a quarter goes to redb's page cache, but at least
    /// [`MIN_PAGE_CACHE_BYTES`] (all of `total` if it is smaller); the rest goes to the
    /// value cache. The two always add up to `total`.
    ///
    /// The engine caches the values it serves, so redb's cache mostly holds the pages of the
    /// tree above them and the pages being written: a quarter is plenty.
    pub fn split(total: usize) -> CacheBudget {
        let page_cache = (total / 4).max(MIN_PAGE_CACHE_BYTES).min(total);
        CacheBudget {
            page_cache,
            value_cache: total - page_cache,
        }
    }
}

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

/// Whether the store can write and read; see [`EmbeddedStorage::health`].
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
type Opener = Box<dyn Fn() -> Result<Database, StorageError> + Send>;

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
            StorageError::Io(format!("cannot create directory {}: {e}", dir.display()).into())
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
                    format!("cannot open the backend of {}: {e}", label.display()).into(),
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
        init_tables(&db, &path)?;
        let db = Arc::new(db);
        let shared = Arc::new(Shared::new(db.clone()));
        let (requests, queue) = mpsc::channel();
        let writer = Writer {
            db: Some(db),
            open,
            path: path.clone(),
            queue,
            fsync: options.fsync,
            unflushed_since: None,
            retry: None,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("aft-storage-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| {
                StorageError::Io(format!("cannot start the storage writer thread: {e}").into())
            })?;
        Ok(EmbeddedStorage {
            path,
            closed: AtomicBool::new(false),
            requests: Some(requests),
            writer: Mutex::new(Some(handle)),
            shared,
        })
    }

    /// Path of the database file (the name given to [`Self::open_with_backend`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the writer thread has done so far.
    pub fn stats(&self) -> EmbeddedStats {
        let s = &self.shared;
        EmbeddedStats {
            groups: s.groups.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            write_failures: s.write_failures.load(Ordering::Relaxed),
            reopen_failures: s.reopen_failures.load(Ordering::Relaxed),
            reopens: s.reopens.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
        }
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

    /// `Ok` if the store takes writes now. During an outage requests fail fast here, rather
    /// than queue behind a writer that may be reopening the database.
    fn check_writable(&self) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        if !self.healthy() {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(self.shared.unwritable());
        }
        Ok(())
    }

    /// Queues a request for the writer, if the store takes writes, and waits for its answer.
    async fn submit<T>(
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
            StorageError::Io("the storage writer thread has stopped".into())
        }
    }

    /// Runs `read` on a read transaction, on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let db = self.shared.db.read().clone();
        let Some(db) = db else {
            return Err(if self.closed.load(Ordering::Acquire) {
                StorageError::Closed
            } else {
                self.shared.unreadable()
            });
        };
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .map_err(|e| StorageError::Io(format!("storage read task failed: {e}").into()))?
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
        "embedded"
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
                || StorageError::OutcomeUnknown("the storage writer thread stopped".into()),
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
            self.read(move |db| {
                let txn = db.begin_read().or_io("begin read")?;
                let table = txn.open_table(VERSIONS).or_io("open versions")?;
                encoded
                    .iter()
                    .map(|key| {
                        let Some(key) = key else { return Ok(None) };
                        let value = table.get(key.as_slice()).or_io("read version")?;
                        Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
                    })
                    .collect()
            })
            .await
        })
    }

    fn scan_commits(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommitRecord>, StorageError>> {
        Box::pin(async move {
            self.read(move |db| {
                let txn = db.begin_read().or_io("begin read")?;
                let table = txn.open_table(COMMITS).or_io("open commits")?;
                let after = after.map(VersionId::to_bytes);
                let lower = match &after {
                    Some(after) => Bound::Excluded(after.as_slice()),
                    None => Bound::Unbounded,
                };
                let range = table
                    .range::<&[u8]>((lower, Bound::Unbounded))
                    .or_io("scan commits")?;
                let mut records = Vec::with_capacity(limit.min(1024));
                for entry in range.take(limit) {
                    let (key, value) = entry.or_io("scan commits")?;
                    let id = decode_id(key.value(), "commit id")?;
                    records.push(decode_record(id, value.value())?);
                }
                Ok(records)
            })
            .await
        })
    }

    fn find_idempotent(
        &self,
        idempotency_key: Bytes,
    ) -> BoxFuture<'_, Result<Option<VersionId>, StorageError>> {
        Box::pin(async move {
            self.read(move |db| {
                let txn = db.begin_read().or_io("begin read")?;
                let table = txn.open_table(IDEMPOTENCY).or_io("open idempotency")?;
                let entry = table.get(&idempotency_key[..]).or_io("read idempotency")?;
                entry
                    .map(|id| decode_id(id.value(), "idempotency entry"))
                    .transpose()
            })
            .await
        })
    }

    fn delete(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionId>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
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
                || StorageError::Io("the storage writer thread stopped".into()),
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
                    Err(StorageError::Io("the storage writer thread stopped".into()))
                })
            });
            let handle = self.writer.lock().take();
            if let Some(handle) = handle {
                let joined = tokio::task::spawn_blocking(move || handle.join()).await;
                if !matches!(joined, Ok(Ok(()))) && result.is_ok() {
                    result = Err(StorageError::Io(
                        "the storage writer thread panicked".into(),
                    ));
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

fn open_error(path: &Path, error: DatabaseError) -> StorageError {
    match error {
        DatabaseError::DatabaseAlreadyOpen => StorageError::Unavailable(
            format!(
                "{} is already open (by another aft process, or another store in this one); \
             an embedded store has a single owner",
                path.display()
            )
            .into(),
        ),
        DatabaseError::UpgradeRequired(version) => StorageError::Io(
            format!(
                "{}: redb file format {version} must be upgraded before this build can open it",
                path.display()
            )
            .into(),
        ),
        DatabaseError::Storage(redb::StorageError::Corrupted(message)) => {
            StorageError::Corrupt(format!("{}: {message}", path.display()).into())
        }
        // redb reports a file that is not a database (bad magic number) this way.
        DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            StorageError::Corrupt(format!("{}: {e}", path.display()).into())
        }
        other => StorageError::Io(format!("cannot open {}: {other}", path.display()).into()),
    }
}

/// Creates the tables if needed and checks the layout version.
fn init_tables(db: &Database, path: &Path) -> Result<(), StorageError> {
    let txn = db.begin_write().or_io("begin write")?;
    {
        txn.open_table(VERSIONS).or_io("create versions")?;
        txn.open_table(COMMITS).or_io("create commits")?;
        txn.open_table(IDEMPOTENCY).or_io("create idempotency")?;
        let mut meta = txn.open_table(META).or_io("create meta")?;
        let stored = meta.get("format").or_io("read format")?.map(|v| v.value());
        match stored {
            None => {
                meta.insert("format", FORMAT_VERSION)
                    .or_io("write format")?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StorageError::Io(
                    format!(
                        "{} has layout version {other}; this build reads version {FORMAT_VERSION}",
                        path.display()
                    )
                    .into(),
                ))
            }
        }
    }
    txn.commit().or_io("commit table creation")
}

/// Maps redb errors into [`StorageError`]: corruption found by redb is `Corrupt`, the rest `Io`.
trait OrIo<T> {
    fn or_io(self, what: &str) -> Result<T, StorageError>;
}

impl<T, E: Into<redb::Error>> OrIo<T> for Result<T, E> {
    fn or_io(self, what: &str) -> Result<T, StorageError> {
        self.map_err(|e| match e.into() {
            redb::Error::Corrupted(message) => {
                StorageError::Corrupt(format!("{what}: {message}").into())
            }
            other => StorageError::Io(format!("{what}: {other}").into()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// `u32` big-endian length of `key` ‖ `key` ‖ `version`: the `versions` table key.
fn version_key(key: &[u8], version: VersionId) -> Result<Vec<u8>, StorageError> {
    let len = u32::try_from(key.len())
        .ok()
        .filter(|_| key.len() <= MAX_RECORD_BYTES)
        .ok_or_else(|| {
            StorageError::Io(format!("key of {} bytes is too long", key.len()).into())
        })?;
    let mut out = Vec::with_capacity(4 + key.len() + VersionId::ENCODED_LEN);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&version.to_bytes());
    Ok(out)
}

/// Version of the commit-record encoding.
const RECORD_FORMAT: u8 = 1;
/// Flag: an idempotency key follows the header.
const HAS_IDEMPOTENCY_KEY: u8 = 0b1;

/// Encodes a commit record (the id is the table key, not repeated):
///
/// ```text
/// format: u8 = 1
/// flags:  u8, bit 0 = an idempotency key follows; other bits zero
/// [if bit 0] idempotency key length: u32 big-endian, then its bytes
/// body: the rest
/// ```
fn encode_record(idempotency_key: Option<&[u8]>, body: &[u8]) -> Result<Vec<u8>, StorageError> {
    let key_len = idempotency_key.map_or(0, |k| 4 + k.len());
    let len = 2 + key_len + body.len();
    if len > MAX_RECORD_BYTES {
        return Err(StorageError::Io(
            format!("commit record of {len} bytes is too long").into(),
        ));
    }
    let mut out = Vec::with_capacity(len);
    out.push(RECORD_FORMAT);
    match idempotency_key {
        Some(key) => {
            out.push(HAS_IDEMPOTENCY_KEY);
            // Fits: bounded by MAX_RECORD_BYTES above.
            let key_len = u32::try_from(key.len())
                .map_err(|_| StorageError::Io("idempotency key is too long".into()))?;
            out.extend_from_slice(&key_len.to_be_bytes());
            out.extend_from_slice(key);
        }
        None => out.push(0),
    }
    out.extend_from_slice(body);
    Ok(out)
}

/// Splits an encoded record into its idempotency key and body, without copying.
fn parse_record(bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8]), String> {
    let [format, flags, rest @ ..] = bytes else {
        return Err(format!(
            "commit record of {} bytes is truncated",
            bytes.len()
        ));
    };
    if *format != RECORD_FORMAT {
        return Err(format!("unknown commit record format {format}"));
    }
    match *flags {
        0 => Ok((None, rest)),
        HAS_IDEMPOTENCY_KEY => {
            let (len, rest) = rest
                .split_first_chunk::<4>()
                .ok_or("commit record truncated in its idempotency key length")?;
            let len = usize::try_from(u32::from_be_bytes(*len))
                .map_err(|_| "idempotency key length does not fit in memory")?;
            if rest.len() < len {
                return Err("commit record truncated in its idempotency key".into());
            }
            let (key, body) = rest.split_at(len);
            Ok((Some(key), body))
        }
        other => Err(format!("unknown commit record flags {other:#04x}")),
    }
}

/// Decodes the record stored under `id`.
fn decode_record(id: VersionId, bytes: &[u8]) -> Result<CommitRecord, StorageError> {
    let (key, body) = parse_record(bytes)
        .map_err(|e| StorageError::Corrupt(format!("commit {id:?}: {e}").into()))?;
    Ok(CommitRecord {
        id,
        idempotency_key: key.map(Bytes::copy_from_slice),
        body: Bytes::copy_from_slice(body),
    })
}

/// Decodes a stored version id (`what` names it in the error).
fn decode_id(bytes: &[u8], what: &str) -> Result<VersionId, StorageError> {
    VersionId::from_bytes(bytes).ok_or_else(|| {
        StorageError::Corrupt(
            format!(
                "{what} has {} bytes, expected {}",
                bytes.len(),
                VersionId::ENCODED_LEN
            )
            .into(),
        )
    })
}

/// A commit, encoded for the tables.
struct EncodedCommit {
    id: [u8; VersionId::ENCODED_LEN],
    idempotency_key: Option<Bytes>,
    record: Vec<u8>,
    /// `(versions table key, value)`.
    versions: Vec<(Vec<u8>, Bytes)>,
}

impl EncodedCommit {
    fn new(batch: CommitBatch) -> Result<Self, StorageError> {
        let CommitBatch { versions, record } = batch;
        let encoded_record = encode_record(record.idempotency_key.as_deref(), &record.body)?;
        let versions = versions
            .into_iter()
            .map(|(key, value)| {
                let key = version_key(&key, record.id)?;
                if key.len() + value.len() > MAX_RECORD_BYTES {
                    return Err(StorageError::Io(
                        format!("version of {} bytes is too long", key.len() + value.len()).into(),
                    ));
                }
                Ok((key, value))
            })
            .collect::<Result<_, StorageError>>()?;
        Ok(EncodedCommit {
            id: record.id.to_bytes(),
            idempotency_key: record.idempotency_key,
            record: encoded_record,
            versions,
        })
    }

    /// Bytes this commit adds to a group.
    fn size(&self) -> usize {
        let versions: usize = self.versions.iter().map(|(k, v)| k.len() + v.len()).sum();
        versions + self.record.len() + self.idempotency_key.as_ref().map_or(0, |k| k.len())
    }
}

/// A deletion, encoded for the tables.
struct Deletion {
    /// `versions` table keys.
    versions: Vec<Vec<u8>>,
    commits: Vec<VersionId>,
}

impl Deletion {
    fn size(&self) -> usize {
        self.versions.iter().map(Vec::len).sum::<usize>()
            + self.commits.len() * VersionId::ENCODED_LEN
    }
}

// ---------------------------------------------------------------------------------------------
// The writer thread

enum Request {
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
struct Shared {
    /// For reads; `None` once closed, and while the writer reopens the database.
    db: RwLock<Option<Arc<Database>>>,
    /// Whether requests are accepted; cleared by the writer at a failure, set again once a
    /// write commits.
    writable: AtomicBool,
    /// The outage in progress, if any.
    outage: Mutex<Option<Outage>>,
    groups: AtomicU64,
    requests: AtomicU64,
    write_failures: AtomicU64,
    reopen_failures: AtomicU64,
    reopens: AtomicU64,
    refused: AtomicU64,
    /// The final flush's result, once a close has stopped the writer.
    close_result: Mutex<Option<Result<(), StorageError>>>,
}

/// A period during which the store cannot write.
struct Outage {
    /// When its first failure happened.
    since: Instant,
    /// The error of its latest failed attempt.
    error: String,
}

impl Shared {
    fn new(db: Arc<Database>) -> Self {
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

    /// The error of the outage in progress, for messages.
    fn outage_error(&self) -> String {
        self.outage
            .lock()
            .as_ref()
            .map_or_else(|| "a write failed".to_owned(), |o| o.error.clone())
    }

    /// The answer to a request refused during an outage: nothing was written.
    fn unwritable(&self) -> StorageError {
        StorageError::Unavailable(
            format!(
                "the embedded store cannot write ({}); it is retrying in the background",
                self.outage_error()
            )
            .into(),
        )
    }

    /// The answer to a read while the database is being reopened.
    fn unreadable(&self) -> StorageError {
        StorageError::Unavailable(
            format!(
                "the embedded store is reopening its file after a write failure ({})",
                self.outage_error()
            )
            .into(),
        )
    }
}

/// Requests applied together in one write transaction.
#[derive(Default)]
struct Group {
    commits: Vec<EncodedCommit>,
    commit_replies: Vec<oneshot::Sender<Result<CommitOutcome, StorageError>>>,
    deletions: Vec<Deletion>,
    delete_replies: Vec<oneshot::Sender<Result<(), StorageError>>>,
    bytes: usize,
}

impl Group {
    fn len(&self) -> usize {
        self.commits.len() + self.deletions.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_full(&self) -> bool {
        self.len() >= MAX_GROUP_REQUESTS || self.bytes >= MAX_GROUP_BYTES
    }

    /// Adds a request; returns the reply of a `Close` instead of adding it.
    fn push(&mut self, request: Request) -> Option<oneshot::Sender<Result<(), StorageError>>> {
        match request {
            Request::Commit { commit, reply } => {
                self.bytes += commit.size();
                self.commits.push(commit);
                self.commit_replies.push(reply);
                None
            }
            Request::Delete { deletion, reply } => {
                self.bytes += deletion.size();
                self.deletions.push(deletion);
                self.delete_replies.push(reply);
                None
            }
            Request::Close { reply } => Some(reply),
        }
    }
}

/// Per-request results of a group that redb committed.
struct GroupResults {
    commits: Vec<Result<CommitOutcome, StorageError>>,
    deletions: Vec<Result<(), StorageError>>,
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
            .map_err(|e| StorageError::Io(format!("flush: {e}").into()))?;
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
            return Err(StorageError::Io("the database is not open".into()));
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

/// Applies a group in one write transaction. `Err` means the whole group failed: `Io` if redb
/// failed before its commit (nothing written), `OutcomeUnknown` if its commit failed.
fn apply_group(
    db: &Database,
    commits: &[EncodedCommit],
    deletions: &[Deletion],
    durability: Durability,
) -> Result<GroupResults, StorageError> {
    let mut txn = db.begin_write().or_io("begin write")?;
    txn.set_durability(durability).or_io("set durability")?;
    let results = {
        let mut versions = txn.open_table(VERSIONS).or_io("open versions")?;
        let mut records = txn.open_table(COMMITS).or_io("open commits")?;
        let mut idempotency = txn.open_table(IDEMPOTENCY).or_io("open idempotency")?;
        let mut tables = Tables {
            versions: &mut versions,
            records: &mut records,
            idempotency: &mut idempotency,
        };
        GroupResults {
            commits: commits
                .iter()
                .map(|c| tables.commit(c))
                .collect::<Result<_, redb::StorageError>>()
                .or_io("write commit")?,
            deletions: deletions
                .iter()
                .map(|d| tables.delete(d))
                .collect::<Result<_, redb::StorageError>>()
                .or_io("delete")?,
        }
    };
    txn.commit().map_err(|e| {
        StorageError::OutcomeUnknown(format!("commit of the write transaction: {e}").into())
    })?;
    Ok(results)
}

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// The tables of one write transaction. Methods return `Err` for a redb failure (the group
/// fails) and `Ok(Err)` for a failure of the request alone, which then wrote nothing.
struct Tables<'a, 't> {
    versions: &'a mut Table<'t>,
    records: &'a mut Table<'t>,
    idempotency: &'a mut Table<'t>,
}

impl Tables<'_, '_> {
    fn commit(
        &mut self,
        commit: &EncodedCommit,
    ) -> Result<Result<CommitOutcome, StorageError>, redb::StorageError> {
        if self.records.get(&commit.id[..])?.is_some() {
            // Sent again after an unknown outcome: the first attempt applied.
            return Ok(Ok(CommitOutcome::Committed));
        }
        if let Some(key) = &commit.idempotency_key {
            let existing = self
                .idempotency
                .get(&key[..])?
                .map(|id| decode_id(id.value(), "idempotency entry"));
            match existing {
                Some(Ok(id)) => return Ok(Ok(CommitOutcome::Duplicate(id))),
                Some(Err(e)) => return Ok(Err(e)),
                None => {}
            }
        }
        for (key, value) in &commit.versions {
            self.versions.insert(key.as_slice(), &value[..])?;
        }
        self.records
            .insert(&commit.id[..], commit.record.as_slice())?;
        if let Some(key) = &commit.idempotency_key {
            self.idempotency.insert(&key[..], &commit.id[..])?;
        }
        Ok(Ok(CommitOutcome::Committed))
    }

    fn delete(
        &mut self,
        deletion: &Deletion,
    ) -> Result<Result<(), StorageError>, redb::StorageError> {
        // Decode every record first, so that a corrupt one fails the request before it
        // changes anything.
        let mut owned_keys = Vec::new();
        for id in &deletion.commits {
            let id_bytes = id.to_bytes();
            let key = match self.records.get(&id_bytes[..])? {
                None => continue,
                Some(record) => match parse_record(record.value()) {
                    Ok((key, _)) => key.map(<[u8]>::to_vec),
                    Err(e) => {
                        return Ok(Err(StorageError::Corrupt(
                            format!("commit {id:?}: {e}").into(),
                        )))
                    }
                },
            };
            owned_keys.push((id_bytes, key));
        }
        for key in &deletion.versions {
            self.versions.remove(key.as_slice())?;
        }
        for (id, key) in owned_keys {
            self.records.remove(&id[..])?;
            let Some(key) = key else { continue };
            // Only the entry that points at this commit belongs to it.
            let points_here = self
                .idempotency
                .get(key.as_slice())?
                .is_some_and(|entry| entry.value() == id);
            if points_here {
                self.idempotency.remove(key.as_slice())?;
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::task::{Context, Waker};

    use redb::backends::InMemoryBackend;
    use redb::{ReadableTableMetadata, StorageBackend};
    use tempfile::TempDir;

    use super::*;
    use crate::storage::testkit::conformance::{
        batch, commit_ok, get_one, plain, scan_all, vid, vkey,
    };

    fn open_temp(fsync: bool) -> (Arc<EmbeddedStorage>, TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = EmbeddedOptions {
            fsync,
            ..EmbeddedOptions::default()
        };
        let storage = EmbeddedStorage::open(dir.path(), options).expect("open");
        (Arc::new(storage), dir)
    }

    fn reopen(dir: &TempDir, fsync: bool) -> EmbeddedStorage {
        let options = EmbeddedOptions {
            fsync,
            ..EmbeddedOptions::default()
        };
        EmbeddedStorage::open(dir.path(), options).expect("reopen")
    }

    crate::storage_conformance_tests!(|| open_temp(true));

    mod without_fsync {
        use super::open_temp;

        crate::storage_conformance_tests!(|| open_temp(false));
    }

    /// Commits a few records (one later deleted) and returns what should remain.
    async fn populate(s: &dyn Storage) -> Vec<VersionId> {
        let ids: Vec<VersionId> = (1..=20).map(|i| vid(i, u128::from(i) << 64)).collect();
        for (i, id) in ids.iter().enumerate() {
            let idem = format!("idem-{i}");
            let value = format!("value-{i}");
            commit_ok(
                s,
                batch(*id, Some(idem.as_bytes()), &[(b"k", value.as_bytes())]),
            )
            .await;
        }
        s.delete(vec![vkey(b"k", ids[0])], vec![ids[0]])
            .await
            .expect("delete");
        ids[1..].to_vec()
    }

    async fn check_populated(s: &dyn Storage, expected: &[VersionId]) {
        let ids: Vec<VersionId> = scan_all(s).await.iter().map(|r| r.id).collect();
        assert_eq!(ids, expected);
        for (i, id) in expected.iter().enumerate() {
            let value = format!("value-{}", i + 1);
            assert_eq!(
                get_one(s, b"k", *id).await.as_deref(),
                Some(value.as_bytes())
            );
            let idem = Bytes::from(format!("idem-{}", i + 1));
            assert_eq!(plain(s.find_idempotent(idem).await), Ok(Some(*id)));
        }
        assert_eq!(
            plain(s.find_idempotent(Bytes::from_static(b"idem-0")).await),
            Ok(None)
        );
        // Idempotency survives the restart.
        let retry = s
            .commit(batch(vid(99, 99), Some(b"idem-1"), &[(b"k", b"again")]))
            .await;
        assert_eq!(plain(retry), Ok(CommitOutcome::Duplicate(expected[0])));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_after_close_finds_everything() {
        for fsync in [true, false] {
            let (s, dir) = open_temp(fsync);
            let expected = populate(&*s).await;
            s.close().await.expect("close");
            drop(s);
            let s = reopen(&dir, fsync);
            check_populated(&s, &expected).await;
            s.close().await.expect("close");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_after_drop_finds_every_acknowledged_commit() {
        for fsync in [true, false] {
            let (s, dir) = open_temp(fsync);
            let expected = populate(&*s).await;
            // Concurrent commits, then the store is dropped with no close.
            let tasks: Vec<_> = (0..64u64)
                .map(|i| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        let id = vid(1000 + i, u128::from(i));
                        (id, s.commit(batch(id, None, &[(b"c", b"v")])).await)
                    })
                })
                .collect();
            let mut acknowledged = Vec::new();
            for task in tasks {
                let (id, result) = task.await.expect("task");
                assert_eq!(plain(result), Ok(CommitOutcome::Committed));
                acknowledged.push(id);
            }
            drop(Arc::into_inner(s).expect("sole owner"));

            let s = reopen(&dir, fsync);
            let found: BTreeSet<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
            for id in expected.iter().chain(&acknowledged) {
                assert!(found.contains(id), "fsync {fsync}: {id:?} lost");
            }
            for id in &acknowledged {
                assert_eq!(get_one(&s, b"c", *id).await.as_deref(), Some(&b"v"[..]));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_open_fails_clearly_until_closed() {
        let (s, dir) = open_temp(true);
        commit_ok(&*s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
        let second = EmbeddedStorage::open(dir.path(), EmbeddedOptions::default());
        match second {
            Err(StorageError::Unavailable(message)) => {
                assert!(message.message().contains("already open"), "{message}");
                assert!(message.message().contains(FILE_NAME), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // The first store is unharmed.
        assert_eq!(
            get_one(&*s, b"k", vid(1, 1)).await.as_deref(),
            Some(&b"v"[..])
        );
        commit_ok(&*s, batch(vid(2, 2), None, &[(b"k", b"w")])).await;

        // Closing releases the file, even while the value is still alive.
        s.close().await.expect("close");
        let third = reopen(&dir, true);
        assert_eq!(scan_all(&third).await.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_records_are_reported() {
        let (s, dir) = open_temp(true);
        let good = vid(1, 1);
        commit_ok(&*s, batch(good, Some(b"good"), &[(b"k", b"v")])).await;
        s.close().await.expect("close");
        drop(s);

        let bad = vid(5, 5);
        {
            let db = Database::create(dir.path().join(FILE_NAME)).expect("raw open");
            let txn = db.begin_write().expect("begin");
            {
                let mut commits = txn.open_table(COMMITS).expect("commits");
                commits
                    .insert(&bad.to_bytes()[..], &[9u8, 0][..])
                    .expect("insert");
                let mut idempotency = txn.open_table(IDEMPOTENCY).expect("idempotency");
                idempotency
                    .insert(&b"bad"[..], &b"short"[..])
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }

        let s = reopen(&dir, true);
        let corrupt = |what: &str, result: Result<(), StorageError>| {
            assert!(
                matches!(result, Err(StorageError::Corrupt(_))),
                "{what}: {result:?}"
            );
        };
        corrupt("scan", s.scan_commits(None, 10).await.map(drop));
        corrupt(
            "find",
            s.find_idempotent(Bytes::from_static(b"bad"))
                .await
                .map(drop),
        );
        let retry = s
            .commit(batch(vid(6, 6), Some(b"bad"), &[(b"k", b"x")]))
            .await;
        corrupt("commit", retry.map(drop));
        corrupt("delete", s.delete(vec![vkey(b"k", good)], vec![bad]).await);

        // Nothing of the failed requests was applied; the rest of the store works.
        assert_eq!(get_one(&s, b"k", vid(6, 6)).await, None);
        assert_eq!(get_one(&s, b"k", good).await.as_deref(), Some(&b"v"[..]));
        assert_eq!(
            plain(s.find_idempotent(Bytes::from_static(b"good")).await),
            Ok(Some(good))
        );
        let after_bad = s
            .scan_commits(Some(bad), 10)
            .await
            .expect("scan past the bad record");
        assert!(after_bad.is_empty());
        let first = s
            .scan_commits(None, 1)
            .await
            .expect("scan before the bad record");
        assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), vec![good]);
        commit_ok(&s, batch(vid(7, 7), Some(b"fresh"), &[(b"k", b"y")])).await;
    }

    #[test]
    fn open_rejects_a_file_that_is_not_a_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage: Vec<u8> = b"not a database "
            .iter()
            .copied()
            .cycle()
            .take(64 * 1024)
            .collect();
        std::fs::write(dir.path().join(FILE_NAME), garbage).expect("write");
        let result = EmbeddedStorage::open(dir.path(), EmbeddedOptions::default());
        match result {
            Err(StorageError::Corrupt(message)) => {
                assert!(message.message().contains(FILE_NAME), "{message}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn record_encoding_round_trips_and_rejects_garbage() {
        let id = vid(3, 4);
        for (key, body) in [
            (None, &b""[..]),
            (None, &b"body"[..]),
            (Some(&b""[..]), &b"body"[..]),
            (Some(&b"\x00\xff"[..]), &b""[..]),
            (Some(&b"idem"[..]), &b"\x01\x00\x00\x00\x05body"[..]),
        ] {
            let encoded = encode_record(key, body).expect("encode");
            let record = decode_record(id, &encoded).expect("decode");
            assert_eq!(record.id, id);
            assert_eq!(record.idempotency_key.as_deref(), key);
            assert_eq!(&record.body[..], body);
        }
        for garbage in [
            &b""[..],
            &b"\x01"[..],
            &b"\x02\x00body"[..],
            &b"\x01\x02body"[..],
            &b"\x01\x01\x00\x00"[..],
            &b"\x01\x01\x00\x00\x00\x05abcd"[..],
            &b"\x01\x01\xff\xff\xff\xff"[..],
        ] {
            let result = decode_record(id, garbage);
            assert!(
                matches!(result, Err(StorageError::Corrupt(_))),
                "{garbage:?}: {result:?}"
            );
        }
        for bad_id in [&b""[..], &[0u8; 23][..], &[0u8; 25][..]] {
            assert!(matches!(
                decode_id(bad_id, "id"),
                Err(StorageError::Corrupt(_))
            ));
        }
        assert_eq!(decode_id(&id.to_bytes(), "id").ok(), Some(id));

        // The length prefix keeps prefixes apart: "a" ‖ id never equals "" ‖ something.
        let a = version_key(b"a", id).expect("encode");
        assert_eq!(&a[..4], &[0, 0, 0, 1]);
        assert_eq!(&a[4..5], b"a");
        assert_eq!(&a[5..], &id.to_bytes());
    }

    #[test]
    fn duplicates_within_one_group_and_against_the_table() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .expect("db");
        init_tables(&db, Path::new("memory")).expect("tables");
        let encode = |b: CommitBatch| EncodedCommit::new(b).expect("encode");

        let first = vid(1, 1);
        let results = apply_group(
            &db,
            &[
                encode(batch(first, Some(b"k"), &[(b"x", b"1")])),
                encode(batch(vid(2, 2), Some(b"k"), &[(b"x", b"2")])),
                encode(batch(vid(3, 3), None, &[(b"x", b"3")])),
                encode(batch(vid(4, 4), Some(b"other"), &[])),
            ],
            &[Deletion {
                versions: vec![version_key(b"x", vid(3, 3)).expect("key")],
                commits: vec![vid(4, 4)],
            }],
            Durability::Immediate,
        )
        .expect("group");
        let outcomes: Vec<_> = results.commits.into_iter().map(plain).collect();
        assert_eq!(
            outcomes,
            vec![
                Ok(CommitOutcome::Committed),
                Ok(CommitOutcome::Duplicate(first)),
                Ok(CommitOutcome::Committed),
                Ok(CommitOutcome::Committed),
            ]
        );
        assert_eq!(
            results.deletions.into_iter().map(plain).collect::<Vec<_>>(),
            vec![Ok(())]
        );

        // A later group sees the key in the table.
        let results = apply_group(
            &db,
            &[encode(batch(vid(5, 5), Some(b"k"), &[(b"x", b"5")]))],
            &[],
            Durability::Immediate,
        )
        .expect("group");
        assert_eq!(
            plain(results.commits.into_iter().next().expect("one")),
            Ok(CommitOutcome::Duplicate(first))
        );

        let txn = db.begin_read().expect("read");
        let versions = txn.open_table(VERSIONS).expect("versions");
        let present = |id: VersionId| {
            let key = version_key(b"x", id).expect("key");
            versions.get(key.as_slice()).expect("get").is_some()
        };
        assert!(present(first));
        assert!(!present(vid(2, 2)), "duplicate wrote a version");
        assert!(!present(vid(3, 3)), "deleted in the same group");
        assert!(!present(vid(5, 5)), "duplicate wrote a version");
        let commits = txn.open_table(COMMITS).expect("commits");
        assert_eq!(commits.len().expect("len"), 2);
        let idempotency = txn.open_table(IDEMPOTENCY).expect("idempotency");
        assert!(idempotency.get(&b"other"[..]).expect("get").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_commits_share_one_write_transaction() {
        let (s, _dir) = open_temp(true);
        let db = s.shared.db.read().clone().expect("open");
        // While the test holds redb's write lock the writer thread cannot begin a group, so
        // every commit below is queued before any is applied.
        let blocker = db.begin_write().expect("begin write");
        let mut pending: Vec<_> = (0..64u64)
            .map(|i| s.commit(batch(vid(i, u128::from(i)), None, &[(b"k", b"v")])))
            .collect();
        let mut cx = Context::from_waker(Waker::noop());
        for commit in &mut pending {
            assert!(commit.as_mut().poll(&mut cx).is_pending());
        }
        blocker.abort().expect("abort");
        drop(db);
        for commit in pending {
            assert_eq!(plain(commit.await), Ok(CommitOutcome::Committed));
        }
        // The first request the writer took may form a group alone; the rest share one.
        let stats = s.stats();
        assert_eq!(stats.requests, 64);
        assert!(stats.groups <= 2, "{stats:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_applies_what_was_queued_and_refuses_the_rest() {
        let (s, dir) = open_temp(true);
        let tasks: Vec<_> = (0..100u64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let id = vid(i, u128::from(i));
                    (id, s.commit(batch(id, None, &[(b"k", b"v")])).await)
                })
            })
            .collect();
        let closer = s.clone();
        let close = tokio::spawn(async move { closer.close().await });
        let mut committed = Vec::new();
        let mut refused = Vec::new();
        for task in tasks {
            match task.await.expect("task") {
                (id, Ok(CommitOutcome::Committed)) => committed.push(id),
                (id, Err(StorageError::Closed)) => refused.push(id),
                (id, other) => panic!("{id:?}: {other:?}"),
            }
        }
        close.await.expect("close task").expect("close");
        drop(Arc::into_inner(s).expect("sole owner"));

        let s = reopen(&dir, true);
        let found: BTreeSet<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
        assert_eq!(found, committed.iter().copied().collect());
        for id in refused {
            assert_eq!(get_one(&s, b"k", id).await, None);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_closes_all_succeed_after_one_flush() {
        for fsync in [true, false] {
            let (s, dir) = open_temp(fsync);
            commit_ok(&*s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
            let closes: Vec<_> = (0..4)
                .map(|_| {
                    let s = s.clone();
                    tokio::spawn(async move { s.close().await })
                })
                .collect();
            for close in closes {
                close.await.expect("task").expect("close");
            }
            s.close().await.expect("close again");
            drop(s);
            let s = reopen(&dir, fsync);
            assert_eq!(
                get_one(&s, b"k", vid(1, 1)).await.as_deref(),
                Some(&b"v"[..])
            );
        }
    }

    /// An in-memory disk that fails on demand like a full or broken one: while `full` is set,
    /// and for the next `failing_syncs` calls of `sync_data`, those calls fail with
    /// `StorageFull` (ENOSPC) and change nothing. Clones share the bytes and the switches, so
    /// a store can reopen the same disk. Counts the bytes read from it.
    #[derive(Clone, Debug, Default)]
    struct FaultyDisk {
        bytes: Arc<InMemoryBackend>,
        /// Every `write`, `set_len` and `sync_data` fails.
        full: Arc<AtomicBool>,
        /// This many more `sync_data` calls fail.
        failing_syncs: Arc<AtomicU64>,
        read_bytes: Arc<AtomicU64>,
    }

    impl FaultyDisk {
        fn set_full(&self, full: bool) {
            self.full.store(full, Ordering::SeqCst);
        }

        fn fail_syncs(&self, n: u64) {
            self.failing_syncs.store(n, Ordering::SeqCst);
        }

        fn check(&self) -> Result<(), std::io::Error> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "injected: no space left on device",
                ));
            }
            Ok(())
        }

        /// Opens a store on this disk.
        fn open(&self, options: EmbeddedOptions) -> Result<EmbeddedStorage, StorageError> {
            let disk = self.clone();
            EmbeddedStorage::open_with_backend("faulty-disk", options, move || Ok(disk.clone()))
        }
    }

    impl StorageBackend for FaultyDisk {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.bytes.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.read_bytes
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            StorageBackend::read(&*self.bytes, offset, out)
        }

        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.check()?;
            self.bytes.set_len(len)
        }

        fn sync_data(&self) -> Result<(), std::io::Error> {
            self.check()?;
            let failing =
                self.failing_syncs
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                return Err(std::io::Error::other("injected: fsync failed"));
            }
            self.bytes.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.check()?;
            StorageBackend::write(&*self.bytes, offset, data)
        }
    }

    /// Polls until the store accepts writes again.
    async fn wait_until_healthy(s: &EmbeddedStorage) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.healthy() {
            assert!(
                Instant::now() < deadline,
                "the store did not recover by itself: {:?}, {:?}",
                s.health(),
                s.stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn value_of(id: VersionId) -> Bytes {
        Bytes::from(format!("value-{}", id.ts))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_resume_by_themselves_once_a_full_disk_has_room() {
        let disk = FaultyDisk::default();
        let s = disk.open(EmbeddedOptions::default()).expect("open");
        let commit = |id: VersionId| s.commit(batch(id, None, &[(b"k", &value_of(id))]));
        let mut acknowledged = Vec::new();
        for ts in 1..=5 {
            let id = vid(ts, u128::from(ts));
            assert_eq!(plain(commit(id).await), Ok(CommitOutcome::Committed));
            acknowledged.push(id);
        }
        assert!(s.healthy());

        disk.set_full(true);
        // The group whose commit failed may or may not be durable.
        let unknown = vid(10, 10);
        let failed = commit(unknown).await;
        assert!(
            matches!(
                failed,
                Err(StorageError::OutcomeUnknown(_) | StorageError::Io(_))
            ),
            "{failed:?}"
        );
        assert!(!s.healthy());

        // While the disk is full, commits fail at once, write nothing and say why; the
        // writer keeps retrying (and failing) meanwhile.
        let mut refused = Vec::new();
        for ts in 11..=20 {
            let id = vid(ts, u128::from(ts));
            let start = Instant::now();
            let result = commit(id).await;
            assert!(start.elapsed() < Duration::from_secs(1), "a refusal waited");
            match result {
                Err(StorageError::Unavailable(message)) => {
                    assert!(message.message().contains("no space left"), "{message}");
                }
                other => panic!("a commit while the disk is full: {other:?}"),
            }
            refused.push(id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let health = s.health();
        assert!(!health.writable, "{health:?}");
        assert!(health.failing_for.is_some(), "{health:?}");
        // What INFO shows: the store says it cannot write, and why.
        let reported = Storage::health(&s);
        assert!(
            reported
                .as_ref()
                .is_err_and(|e| e.contains("no space left")),
            "{reported:?}"
        );
        let stats = s.stats();
        assert_eq!(stats.refused, 10, "{stats:?}");
        assert!(stats.write_failures >= 1, "{stats:?}");
        assert!(stats.reopen_failures >= 1, "{stats:?}");

        // Space is back: nothing from outside, the store takes commits again.
        disk.set_full(false);
        wait_until_healthy(&s).await;
        let health = s.health();
        assert!(health.readable && health.error.is_none(), "{health:?}");
        assert_eq!(Storage::health(&s), Ok(()));
        assert!(s.stats().reopens >= 1);
        for ts in 21..=25 {
            let id = vid(ts, u128::from(ts));
            assert_eq!(plain(commit(id).await), Ok(CommitOutcome::Committed));
            acknowledged.push(id);
        }
        for id in &acknowledged {
            assert_eq!(get_one(&s, b"k", *id).await, Some(value_of(*id)));
        }
        s.close().await.expect("close");
        drop(s);

        // Opened afresh: every acknowledged commit is there, no refused one is.
        let s = disk.open(EmbeddedOptions::default()).expect("reopen");
        let found: BTreeSet<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
        for id in &acknowledged {
            assert!(found.contains(id), "acknowledged {id:?} lost");
            assert_eq!(get_one(&s, b"k", *id).await, Some(value_of(*id)));
        }
        for id in &refused {
            assert!(!found.contains(id), "refused {id:?} was written");
            assert_eq!(get_one(&s, b"k", *id).await, None);
        }
        if found.contains(&unknown) {
            assert_eq!(get_one(&s, b"k", unknown).await, Some(value_of(unknown)));
        }
        s.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_failed_fsync_is_outcome_unknown_and_reads_go_on() {
        let disk = FaultyDisk::default();
        let s = disk.open(EmbeddedOptions::default()).expect("open");
        let before = vid(1, 1);
        commit_ok(&s, batch(before, None, &[(b"k", &value_of(before))])).await;

        disk.fail_syncs(1);
        let unknown = vid(2, 2);
        let failed = s
            .commit(batch(unknown, None, &[(b"k", &value_of(unknown))]))
            .await;
        assert!(
            matches!(failed, Err(StorageError::OutcomeUnknown(_))),
            "{failed:?}"
        );
        // The disk works again, so the writer's reopen succeeds: reads are served at once,
        // while writes wait for the probe.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.health().readable {
            assert!(Instant::now() < deadline, "{:?}", s.health());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(get_one(&s, b"k", before).await, Some(value_of(before)));
        wait_until_healthy(&s).await;
        let after = vid(3, 3);
        commit_ok(&s, batch(after, None, &[(b"k", &value_of(after))])).await;
        let stats = s.stats();
        assert_eq!((stats.write_failures, stats.reopen_failures), (1, 0));
        s.close().await.expect("close");
        drop(s);

        let s = disk.open(EmbeddedOptions::default()).expect("reopen");
        assert_eq!(get_one(&s, b"k", before).await, Some(value_of(before)));
        assert_eq!(get_one(&s, b"k", after).await, Some(value_of(after)));
        s.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_group_commit_answers_every_waiter_with_an_error() {
        let disk = FaultyDisk::default();
        let s = Arc::new(disk.open(EmbeddedOptions::default()).expect("open"));
        commit_ok(&*s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;

        disk.set_full(true);
        let tasks: Vec<_> = (2..18u64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.commit(batch(vid(i, 0), None, &[(b"k", b"v")])).await })
            })
            .collect();
        let mut unknown = 0;
        for task in tasks {
            match task.await.expect("task") {
                // The group whose commit failed may or may not be durable.
                Err(StorageError::OutcomeUnknown(_)) => unknown += 1,
                // Later requests: refused, unapplied, until the disk has room again.
                Err(StorageError::Unavailable(_) | StorageError::Io(_)) => {}
                other => panic!("expected an error, got {other:?}"),
            }
        }
        assert!(unknown >= 1);
        let later = s.commit(batch(vid(30, 0), None, &[])).await;
        assert!(
            matches!(later, Err(StorageError::Unavailable(_))),
            "{later:?}"
        );
        let deletion = s.delete(vec![vkey(b"k", vid(1, 1))], vec![]).await;
        assert!(
            matches!(deletion, Err(StorageError::Unavailable(_))),
            "{deletion:?}"
        );
        // Closing during the outage neither hangs nor fails: nothing acknowledged is pending.
        s.close().await.expect("close");
        let after_close = s.commit(batch(vid(31, 0), None, &[])).await;
        assert!(
            matches!(after_close, Err(StorageError::Closed)),
            "{after_close:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_without_fsync_starts_an_outage_that_ends() {
        let disk = FaultyDisk::default();
        let options = EmbeddedOptions {
            fsync: false,
            ..EmbeddedOptions::default()
        };
        let s = disk.open(options).expect("open");
        disk.fail_syncs(1);
        // Acknowledged without fsync; the flush a second later fails.
        commit_ok(&s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.stats().write_failures == 0 {
            assert!(Instant::now() < deadline, "{:?}", s.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wait_until_healthy(&s).await;
        commit_ok(&s, batch(vid(2, 2), None, &[(b"k", b"w")])).await;
        s.close().await.expect("close");
        drop(s);
        let s = disk.open(options).expect("reopen");
        assert_eq!(
            get_one(&s, b"k", vid(2, 2)).await.as_deref(),
            Some(&b"w"[..])
        );
        s.close().await.expect("close");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), RETRY_BACKOFF_MIN);
        assert_eq!(backoff(2), RETRY_BACKOFF_MIN * 2);
        assert_eq!(backoff(4), RETRY_BACKOFF_MIN * 8);
        assert_eq!(backoff(1000), RETRY_BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_BACKOFF_MAX);
    }

    #[test]
    fn the_cache_budget_gives_redb_a_quarter() {
        let split = |total| {
            let b = CacheBudget::split(total);
            assert_eq!(b.page_cache + b.value_cache, total);
            (b.page_cache, b.value_cache)
        };
        assert_eq!(split(256 << 20), (64 << 20, 192 << 20));
        assert_eq!(split(256 << 20).0, DEFAULT_CACHE_BYTES);
        assert_eq!(split(8 << 20), (MIN_PAGE_CACHE_BYTES, 4 << 20));
        assert_eq!(split(1 << 20), (1 << 20, 0));
        assert_eq!(split(0), (0, 0));
    }

    /// Bytes read from the disk by a second read of every value, after a first one.
    async fn bytes_read_by_a_second_pass(cache_bytes: usize) -> u64 {
        const VALUES: u64 = 32;
        let disk = FaultyDisk::default();
        let options = EmbeddedOptions {
            fsync: true,
            cache_bytes,
        };
        let s = disk.open(options).expect("open");
        let value = vec![7u8; 256 << 10];
        let ids: Vec<VersionId> = (1..=VALUES).map(|i| vid(i, u128::from(i))).collect();
        for id in &ids {
            commit_ok(&s, batch(*id, None, &[(b"k", &value)])).await;
        }
        let read_all = || async {
            for id in &ids {
                assert_eq!(
                    get_one(&s, b"k", *id).await.map(|v| v.len()),
                    Some(value.len())
                );
            }
        };
        read_all().await;
        let before = disk.read_bytes.load(Ordering::Relaxed);
        read_all().await;
        let read = disk.read_bytes.load(Ordering::Relaxed) - before;
        s.close().await.expect("close");
        read
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_page_cache_holds_cache_bytes_and_no_more() {
        // 8 MiB of values through a 1 MiB page cache: the second pass misses again.
        let small = bytes_read_by_a_second_pass(1 << 20).await;
        assert!(small >= 6 << 20, "{small} bytes read through a 1 MiB cache");
        // Through a 64 MiB cache it is all served from memory.
        let large = bytes_read_by_a_second_pass(64 << 20).await;
        assert!(large < 1 << 20, "{large} bytes read through a 64 MiB cache");
    }

    const CRASH_DIR_ENV: &str = "AFT_STORAGE_CRASH_TEST_DIR";

    /// The child process of `killed_process_keeps_acknowledged_commits`: commits from 8 tasks
    /// until killed, printing `ACK <ts> <txn>` once each commit is acknowledged.
    #[test]
    #[ignore = "run as a child process by killed_process_keeps_acknowledged_commits"]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let storage = Arc::new(
                EmbeddedStorage::open(Path::new(&dir), EmbeddedOptions::default()).expect("open"),
            );
            let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel();
            for task in 0..8u64 {
                let storage = storage.clone();
                let acks = acks.clone();
                tokio::spawn(async move {
                    for i in 0.. {
                        let id = vid(i, (u128::from(task) << 64) | u128::from(i));
                        let value = format!("{task}:{i}");
                        let b = batch(id, None, &[(b"k", value.as_bytes())]);
                        if let Ok(CommitOutcome::Committed) = storage.commit(b).await {
                            if acks.send(id).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
            while let Some(id) = acked.recv().await {
                println!("ACK {} {}", id.ts, id.txn.0);
            }
        });
    }

    #[test]
    fn killed_process_keeps_acknowledged_commits() {
        const ACKS: usize = 300;
        let dir = tempfile::tempdir().expect("tempdir");
        let module = module_path!().split_once("::").map_or("", |(_, path)| path);
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                &format!("{module}::crash_child"),
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (lines, received) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if lines.send(line).is_err() {
                    return;
                }
            }
        });

        let mut acknowledged = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acknowledged.len() < ACKS {
            let line = received.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            let Ok(line) = line else {
                let _ = child.kill();
                panic!(
                    "the child stopped after {} acknowledgements",
                    acknowledged.len()
                );
            };
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let (ts, txn) = rest.split_once(' ').expect("ACK line");
            acknowledged.push(vid(ts.parse().expect("ts"), txn.parse().expect("txn")));
        }
        // SIGKILL: no destructor, no flush; only what reached the disk survives.
        child.kill().expect("kill");
        child.wait().expect("wait");
        drop(received);
        let _ = reader.join();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let s = reopen(&dir, true);
            let found: BTreeSet<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
            assert!(found.len() >= ACKS);
            for id in &acknowledged {
                assert!(found.contains(id), "acknowledged {id:?} lost");
                let task = id.txn.0 >> 64;
                let value = format!("{task}:{}", id.ts);
                assert_eq!(
                    get_one(&s, b"k", *id).await.as_deref(),
                    Some(value.as_bytes())
                );
            }
            s.close().await.expect("close");
        });
    }

    /// Commits per second through the store with fsync on, from 1 task and from 64.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: cargo test --release -- --ignored --nocapture group_commit_throughput"]
    async fn group_commit_throughput() {
        const RUN: Duration = Duration::from_secs(3);
        for tasks in [1u64, 64] {
            let (s, _dir) = open_temp(true);
            let start = Instant::now();
            let workers: Vec<_> = (0..tasks)
                .map(|task| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        let mut done = 0u64;
                        while start.elapsed() < RUN {
                            let id = vid(done, (u128::from(task) << 64) | u128::from(done));
                            let key = format!("key-{task}-{}", done % 100);
                            let b =
                                batch(id, None, &[(key.as_bytes(), &[7u8; 100]), (b"hot", b"v")]);
                            assert_eq!(plain(s.commit(b).await), Ok(CommitOutcome::Committed));
                            done += 1;
                        }
                        done
                    })
                })
                .collect();
            let mut commits = 0;
            for worker in workers {
                commits += worker.await.expect("worker");
            }
            let elapsed = start.elapsed().as_secs_f64();
            let stats = s.stats();
            println!(
                "{tasks:>2} task(s): {commits} commits in {elapsed:.2} s = {:.0} commits/s, \
                 {} fsynced groups ({:.1} commits per group)",
                commits as f64 / elapsed,
                stats.groups,
                stats.requests as f64 / stats.groups.max(1) as f64,
            );
            s.close().await.expect("close");
        }
    }
}
