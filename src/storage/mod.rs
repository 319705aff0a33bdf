//! Storage: the contract between the transaction core and a backend.
//!
//! A backend stores three kinds of records (protocol.md §3):
//!
//! * **key versions**: `(user key, version id) -> value`, written once and never overwritten;
//! * **commit records**: `version id -> (idempotency key, opaque body)`; the durable existence
//!   of a commit record *is* the commit;
//! * **idempotency entries**: `idempotency key -> version id` of the commit that used it.
//!
//! The core never names a concrete backend and backends never see RESP. Every method is
//! async and batch-oriented so that a networked backend can serve a whole call in as few
//! round trips as its topology allows.
//!
//! # Contract
//!
//! * [`Storage::commit`] makes every version of the batch durable **before** the commit
//!   record becomes durable (ordered, or atomic as one write), and creates the commit record
//!   only if no commit record already holds the same idempotency key (a conditional create).
//!   When it returns `Ok(CommitOutcome::Committed)`, the commit survives a crash of the
//!   process and of the machine (per the backend's durability settings).
//! * A commit that returned an error other than [`StorageError::OutcomeUnknown`] left no
//!   commit record: orphan versions may remain, which are invisible (readers only learn of
//!   versions through commit records) and are reclaimed by garbage collection.
//! * A future that is dropped before it completes leaves the same states as an error: either
//!   nothing, orphan versions, or a complete commit. Callers that must know the outcome do not
//!   drop commit futures.
//! * [`Storage::get_versions`] returns, for every requested version, the value written by the
//!   commit that created it, or `None` if the version does not exist (never written, or
//!   collected). Reads are strongly consistent: a version whose commit returned `Ok` is found.
//! * [`Storage::scan_commits`] lists commit records in increasing [`VersionId`] order, so that
//!   a restarted node rebuilds its commit set by paging through it.
//! * [`Storage::delete`] removes versions and commit records; deleting what does not exist is
//!   not an error (idempotent).
//! * **A commit is idempotent by its id.** Callers never commit two *different* batches with
//!   the same [`VersionId`] (ids embed a unique transaction id), but they do send the *same*
//!   batch again after [`StorageError::OutcomeUnknown`], to settle the outcome. If the first
//!   attempt created the commit record (or creates it later: a request that arrives late
//!   finds the record and writes nothing), the retry returns `Ok(CommitOutcome::Committed)`
//!   — or `Duplicate` naming the batch's own id — and leaves one record; if it did not, the
//!   retry commits exactly as the first attempt would have. Either way, once a retry
//!   returned `Ok`, the outcome is known and final.
//! * [`Storage::close`] is idempotent: once the first close has flushed, later closes return
//!   `Ok` and every other call fails with [`StorageError::Closed`].
//!
//! Keys and values are arbitrary bytes. Backends encode, never split, user keys.

pub mod dynamodb;
pub mod embedded;
mod error;
pub mod memory;
mod position;
pub mod record;
pub mod redis;
#[cfg(feature = "testkit")]
pub mod testkit;
mod url;

pub use error::{Failure, StorageError};
pub use position::LogPos;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A boxed, sendable future: what every [`Storage`] method returns, so that the core can hold
/// an `Arc<dyn Storage>` and backends can be chosen at run time.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Transaction identifier: unique across nodes and restarts.
///
/// The high 64 bits identify the node incarnation that created the transaction (random at
/// start), the low 64 bits count transactions within it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TxnId(pub u128);

impl fmt::Debug for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Identifies one version of every key a transaction wrote: its commit timestamp (a hybrid
/// logical clock value) and its transaction id. Versions are ordered by timestamp, then id;
/// the greater version of a key is the newer one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct VersionId {
    /// Commit timestamp from the hybrid logical clock.
    pub ts: u64,
    /// The writing transaction.
    pub txn: TxnId,
}

impl VersionId {
    /// Encoded size of [`VersionId::to_bytes`].
    pub const ENCODED_LEN: usize = 24;

    /// Big-endian encoding whose byte order is the version order.
    pub fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.ts.to_be_bytes());
        out[8..].copy_from_slice(&self.txn.0.to_be_bytes());
        out
    }

    /// Decodes [`VersionId::to_bytes`]; `None` if `bytes` has the wrong length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let ts = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let txn = u128::from_be_bytes(bytes[8..].try_into().ok()?);
        Some(VersionId {
            ts,
            txn: TxnId(txn),
        })
    }
}

/// Names one stored key version.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct VersionKey {
    /// The user key (arbitrary bytes).
    pub key: Bytes,
    /// The version of it.
    pub version: VersionId,
}

/// A commit record as the backend sees it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommitRecord {
    /// The version id shared by every version the transaction wrote.
    pub id: VersionId,
    /// Client-chosen key making the commit idempotent: at most one commit record ever holds
    /// a given idempotency key.
    pub idempotency_key: Option<Bytes>,
    /// The core's encoding of the write set; opaque to the backend.
    pub body: Bytes,
}

/// Everything one transaction commits: its versions (all at `record.id`) and its record.
#[derive(Clone, Debug)]
pub struct CommitBatch {
    /// `(user key, value)` for every version to write.
    pub versions: Vec<(Bytes, Bytes)>,
    /// Written only after every version is durable.
    pub record: CommitRecord,
    /// What a shared backend checks and moves with the record (see [`Conditions`]).
    pub conditions: Conditions,
}

/// Identifies one running aft process (one incarnation: random at every start).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u128);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The cross-node part of a commit (protocol.md §9), decided by a shared backend in the same
/// atomic step that creates the commit record. A backend only one process uses (see
/// [`Storage::heartbeat`]) ignores it: the node's own checks decide.
///
/// Every key the commit writes has a **head** in the backend, the greatest version id
/// committed to it (and whether that version is a tombstone), moved forward (never back) by
/// each commit that writes the key. Garbage collection may drop the head of a key whose last
/// version, a tombstone, was collected ([`Storage::drop_heads`]).
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    /// The committing node: the record is created only while its lease is live, so that a
    /// node others consider dead cannot commit ([`StorageError::Fenced`]).
    pub node: Option<NodeId>,
    /// When the commit started by the committer's clock (ms since the epoch): a backend that
    /// judges lease expiry by the committer's clock (DynamoDB) checks the lease at this
    /// time, the same in every resend of the commit.
    pub at_ms: u64,
    /// The log position up to which the committer knew every commit when it validated the
    /// checks. A backend that decides conflicts by ordering commits in its log (DynamoDB,
    /// whose log is one shard) creates the record only if the log's head is still there, and
    /// otherwise answers [`CommitOutcome::Moved`]: the committer catches up, validates
    /// again, and resends.
    pub log_at: Option<LogPos>,
    /// `(key, version read)`: the commit is refused with [`CommitOutcome::Conflict`] (the
    /// index of the first failed check) unless the key's head is that version, or the key
    /// has no head (collected), or nothing was read (`None`) and the head is a tombstone.
    pub checks: Vec<(Bytes, Option<VersionId>)>,
    /// Keys the commit deletes: they have no stored version, but their heads move too.
    pub deleted: Vec<Bytes>,
}

/// The key that places a commit record in a backend that spreads records over shards: its
/// idempotency key if it has one (the entry and the record are decided together), else the
/// least key it writes or deletes (empty if none). Both the backend that stores the record
/// and the core that later deletes it ([`Storage::delete`]) derive it from the record.
pub fn anchor<'a>(
    idempotency_key: Option<&'a Bytes>,
    written: impl IntoIterator<Item = &'a Bytes>,
) -> Bytes {
    match idempotency_key {
        Some(key) => key.clone(),
        None => written.into_iter().min().cloned().unwrap_or_default(),
    }
}

/// A page of the commit log (see [`Storage::log_tail`]).
#[derive(Clone, Debug, Default)]
pub struct LogPage {
    /// The position of the newest record of every shard when the page was read.
    pub head: LogPos,
    /// The records, in creation order within each shard.
    pub records: Vec<CommitRecord>,
    /// Every record created after the page's start and at or below this position (shard by
    /// shard) is in `records` (those garbage collection deleted excepted): `head` when the
    /// page reached the head, less in a shard where it stopped at its limit.
    pub through: LogPos,
}

/// What a node tells the others with each renewal of its lease.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    /// The node.
    pub node: NodeId,
    /// How long the lease lasts from now.
    pub lease: std::time::Duration,
    /// The node's watermark: the log position up to which it knows every commit and below
    /// which it holds no snapshot (garbage collection on every node stays behind it).
    pub watermark: LogPos,
    /// The clock (ms since the epoch) of the node's oldest running transaction: a key that
    /// expired before it may still be read there.
    pub oldest_clock_ms: u64,
    /// Where clients reach the node (`host:port`), for INFO.
    pub address: String,
    /// What the renewal does.
    pub kind: Beat,
}

/// The kinds of [`Heartbeat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// Creates the lease (a node that starts, or rejoins after losing it).
    Join,
    /// Extends a live lease; refused ([`StorageError::Fenced`]) if it already expired.
    Renew,
    /// Gives the lease up (a clean shutdown).
    Leave,
}

/// A live node, as the backend knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// Its last published watermark.
    pub watermark: LogPos,
    /// Its last published oldest transaction clock.
    pub oldest_clock_ms: u64,
    /// Its address, as it published it.
    pub address: String,
    /// Milliseconds left on its lease, by the backend's clock.
    pub expires_in_ms: u64,
}

/// What [`Storage::commit`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CommitOutcome {
    /// The commit record was created: the transaction is committed.
    Committed,
    /// A commit record with the same idempotency key already exists (its id is given); no
    /// commit record was created for this batch. Its versions may remain as orphans.
    Duplicate(VersionId),
    /// The check at this index of [`Conditions::checks`] failed: another commit wrote the
    /// key first. No commit record was created; versions may remain as orphans.
    Conflict(usize),
    /// The log moved past [`Conditions::log_at`]: no commit record was created (versions
    /// may remain, and are the same if the commit is sent again with a later `log_at`).
    Moved,
}

/// When an acknowledged commit is safe, as a backend vouches for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage before it is acknowledged (`appendfsync always`).
    Synced,
    /// On stable storage within about a second after (`appendfsync everysec`).
    WithinASecond,
    /// Nothing claimed: kept in memory only, or the durability is a remote store's own
    /// configuration, which aft does not inspect (a Redis backend).
    NotClaimed,
}

/// The storage contract. See the module documentation for the guarantees each method gives.
pub trait Storage: Send + Sync + 'static {
    /// Short name of the backend, for INFO and logs.
    fn name(&self) -> &'static str;

    /// Writes every version, then the commit record (conditional on its idempotency key).
    fn commit(&self, batch: CommitBatch) -> BoxFuture<'_, Result<CommitOutcome, StorageError>>;

    /// Reads versions; the result has one entry per requested key, in order.
    fn get_versions(
        &self,
        keys: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, StorageError>>;

    /// Up to `limit` commit records with id greater than `after` (all if `None`), in
    /// increasing id order.
    fn scan_commits(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommitRecord>, StorageError>>;

    /// The id of the commit record holding `idempotency_key`, if any.
    fn find_idempotent(
        &self,
        idempotency_key: Bytes,
    ) -> BoxFuture<'_, Result<Option<VersionId>, StorageError>>;

    /// Deletes versions and commit records (with their idempotency entries). Idempotent. A
    /// record is named by its id and its [`anchor`] (`key`), which tells a backend that
    /// spreads records over shards where it is.
    fn delete(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Flushes what is buffered and releases resources; later calls fail with `Closed`.
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// What the backend does with a commit it acknowledged (for INFO and CONFIG GET, in
    /// Redis's `appendonly`/`appendfsync` terms). The default claims nothing.
    fn durability(&self) -> Durability {
        Durability::NotClaimed
    }

    /// Whether the backend takes writes now, as far as it knows without a request:
    /// `Err(reason)` while it knows it refuses them (a full disk it is waiting out, say), so
    /// that INFO can show it. The default knows nothing of the kind: `Ok(())`.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Deletes orphan versions: versions written by commits that never got their commit
    /// record and started more than `older_than` ago (commits still in flight must not be
    /// touched). Returns how many versions were deleted. A backend whose commits are atomic
    /// (versions and record in one write) has no orphans: the default does nothing. Backends
    /// find orphans without scanning the keyspace (e.g. from pending markers written before
    /// the versions).
    fn reclaim_orphans(
        &self,
        older_than: std::time::Duration,
    ) -> BoxFuture<'_, Result<u64, StorageError>> {
        let _ = older_than;
        Box::pin(async { Ok(0) })
    }

    /// Creates, renews or gives up a node's lease, and lists the live nodes (the caller
    /// included). `Ok(None)`: the backend is one process's alone (memory, an embedded file),
    /// so there is no membership — and no [`Conditions`] or [`Storage::log_tail`]. A renewal
    /// of a lease that expired fails with [`StorageError::Fenced`]: the node must rejoin.
    fn heartbeat(
        &self,
        beat: Heartbeat,
    ) -> BoxFuture<'_, Result<Option<Vec<Member>>, StorageError>> {
        let _ = beat;
        Box::pin(async { Ok(None) })
    }

    /// Whether a commit that succeeded with [`Conditions::log_at`] `= p` holds log position
    /// `p[s] + 1` of each shard `s` it claims ([`Storage::claimed_shards`]; the backend
    /// orders commits by those claims, DynamoDB), so that its committer, if it had applied
    /// everything up to `p[s]` in shard `s`, has applied everything up to `p[s] + 1` there. The
    /// default: positions are given otherwise (Redis numbers records as it creates them).
    fn commits_claim_positions(&self) -> bool {
        false
    }

    /// The shards of the log a commit of `batch` claims a position of, when
    /// [`Storage::commits_claim_positions`]. The default: none.
    fn claimed_shards(&self, batch: &CommitBatch) -> Vec<usize> {
        let _ = batch;
        Vec::new()
    }

    /// Commit records created after log position `after`, in the order they were created
    /// within each shard (at most `limit` per shard), with the log's head. Positions grow by
    /// one per record in each shard, so a reader that applied a whole page up to `head`
    /// knows every record created before the call. Records garbage collection deleted are
    /// left out. `limit` 0 reads the head only. Only for shared backends.
    fn log_tail(
        &self,
        after: LogPos,
        limit: usize,
    ) -> BoxFuture<'_, Result<LogPage, StorageError>> {
        let _ = (after, limit);
        Box::pin(async { Ok(LogPage::default()) })
    }

    /// Drops the heads (see [`Conditions`]) of keys whose last version — the given one, a
    /// tombstone — was collected; a head that moved on to another version stays. Only for
    /// shared backends.
    fn drop_heads(&self, heads: Vec<VersionKey>) -> BoxFuture<'_, Result<(), StorageError>> {
        let _ = heads;
        Box::pin(async { Ok(()) })
    }
}
