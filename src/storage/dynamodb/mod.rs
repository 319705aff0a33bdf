//! DynamoDB backend: every record in one table, written with `TransactWriteItems` when a
//! commit fits in one transaction and with a pending marker and batches beyond that.
//!
//! # Table
//!
//! One table with a binary partition key `pk` and a binary sort key `sk` (both `B`), billing
//! of the user's choice, and DynamoDB TTL enabled on the number attribute `exp`. With
//! `create_table=true` the backend creates it (on-demand billing) and enables TTL. The first
//! byte of `pk` says what an item is; user bytes are never split, only prefixed or hashed:
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | version head | `v` ‖ user key, or `h` ‖ SHA-256(user key) for keys over 1,024 bytes | [`VersionId::to_bytes`] (24 bytes, big-endian) | `v` value (or its first part), `n` extra chunks |
//! | commit record head | `c` ‖ bucket (u64 BE) ‖ shard (u8) | version id | `v` encoded record (or its first part), `n`; with several nodes its log claims: `lp` position in shard 0 alone, or `lc` `shard:position …` |
//! | commit directory | `d` | bucket ‖ shard | |
//! | idempotency entry | `i` ‖ key, or `j` ‖ SHA-256(key) over 1,024 bytes | `0x00` | `id` commit version id, `exp` TTL |
//! | pending marker | `p` | version id | `at` start (ms), `v` key list, `n`, `d` done, `ab` abandoned |
//! | overflow chunk | `o` ‖ head `pk` ‖ head `sk` | chunk number (u32 BE, from 1) | `v` |
//! | format | `m` | `0x00` | `format`, `ls` shards of the log (absent: one) |
//! | lease (several nodes) | `n` | node id | `x` expiry (ms), `a` address, `w` watermark in log shard 0, `ws` in every shard, `c` oldest transaction's clock |
//! | log head (several nodes) | `g` | log shard (u8) | `s` newest position |
//! | log entry (several nodes) | `l` (shard 0), `l` ‖ shard (u8) | position (u64 BE) | `id` the record's version id |
//!
//! * A key's versions share one partition, sorted by version id: a `Query` with
//!   `ScanIndexForward=false` lists them newest first.
//! * Commit records are partitioned by time bucket (the commit timestamp's top bits, about
//!   18.6 hours of physical time with aft's clock) and by one of [`COMMIT_SHARDS`] shards (from
//!   the transaction id, which spreads one bucket's writes over several partitions). Sort keys
//!   are version ids, so a partition is in commit order, and a node's recent commits — everyone's
//!   recent commits — are one `Query` per shard of the current bucket. The directory partition
//!   `d` lists every (bucket, shard) partition that was ever written, so
//!   [`Storage::scan_commits`] never scans the table: it queries the directory from the bucket
//!   of `after` on, then each bucket's shards, merged in id order. A directory entry is written
//!   (once per bucket and shard per process) before the first commit record that needs it;
//!   entries of empty buckets older than two days are dropped by the scan that finds them empty.
//! * Values larger than one item allows are split: the head holds the first
//!   [`CHUNK_BYTES`] bytes and `n`, the rest lives in overflow chunks keyed by the head's key.
//!   Encoded commit records and pending markers are split the same way. Keys, values and
//!   commit bodies of any size therefore work (up to what a transaction writes in total, see
//!   below); nothing is refused for its size.
//!
//! # Commit
//!
//! **Fast path** — the commit fits in one `TransactWriteItems` (at most 100 items, 4 MB): one
//! request puts every version (and chunk), the commit record head (conditional on not existing)
//! and, with an idempotency key, the idempotency entry (conditional on not existing). The
//! request is atomic, so a crash or an error leaves nothing or everything, and a duplicate
//! writes nothing. Its `ClientRequestToken` is derived from the version id, so a retry after a
//! lost response is recognised by DynamoDB for ten minutes; beyond that the retry fails its
//! condition on the commit record, which can only be ours (ids are unique): committed.
//!
//! **General path** — larger commits (1,000 keys, or megabytes of values):
//!
//! 1. with an idempotency key, read its entry: if it exists, `Duplicate`, nothing written;
//! 2. put the pending marker `p`/id: start time and the list of keys (and chunk counts)
//!    the commit is about to write;
//! 3. `BatchWriteItem` every version, chunk and record chunk (25 per request, several requests
//!    in flight, `UnprocessedItems` retried with exponential backoff and jitter);
//! 4. one `TransactWriteItems`: put the commit record head (conditional on not existing), put
//!    the idempotency entry (conditional on not existing), and set `d` on the marker
//!    (conditional on the marker existing and not being abandoned);
//! 5. delete the marker (best effort: a marker with `d` set is deleted by the next
//!    [`Storage::reclaim_orphans`]).
//!
//! The idempotency claim and the commit record are created by the same atomic request, so an
//! idempotency entry never exists without its commit record (there is no claim to recover),
//! and the marker's `d` flag changes with them. What a crash leaves:
//!
//! | crash | state | visible | clean-up |
//! |---|---|---|---|
//! | before 2 | nothing | no | none |
//! | in 2 or 3 | marker (maybe partial), some versions | no: no commit record | `reclaim_orphans` |
//! | after 4 | committed; marker with `d` | yes | `reclaim_orphans` deletes the marker |
//!
//! [`Storage::reclaim_orphans`] queries the marker partition (never the keyspace). For a marker
//! older than its argument and not done, it first sets `ab` on it (conditional on `d` not being
//! set): from then on step 4 of that commit fails its condition, so a commit that is merely slow
//! can never become visible with versions deleted under it. It then deletes the versions, chunks
//! and record chunks the marker lists, and the marker last (a crash during reclaim leaves the
//! marker, and the next reclaim finishes the work). A marker whose key list is incomplete
//! (crash while writing it) never had versions written: only the marker is deleted.
//!
//! A general-path commit that loses the idempotency race (step 4 fails on the idempotency
//! entry) abandons its marker the same way before it returns `Duplicate`, so a duplicate leaves
//! no versions behind unless that clean-up itself fails (then `reclaim_orphans` does it).
//!
//! # Reads, scans, deletions
//!
//! Versions are read with `BatchGetItem` (100 keys per request, `ConsistentRead`,
//! `UnprocessedKeys` retried), then the chunks of split values the same way. Deletions read the
//! heads first (to learn their chunks and idempotency keys), delete chunks before heads and
//! idempotency entries before records (conditional on still naming the record), so that a crash
//! mid-way leaves what the next, idempotent, attempt needs.
//!
//! # Errors and retries
//!
//! The SDK's own retries are off: every request goes through one retry loop (exponential
//! backoff with full jitter, [`DynamoDbOptions::max_attempts`] attempts) that counts what it
//! sees ([`DynamoDbStorage::stats`]). Throttling, transaction conflicts, 5xx answers, timeouts
//! and connection failures are retried; when attempts run out the call fails with
//! [`StorageError::Unavailable`], or, for a commit request that may have been applied (a
//! timeout, a lost connection or a 5xx after it was sent), with
//! [`StorageError::OutcomeUnknown`]. Validation errors, a missing table and refused credentials
//! are [`StorageError::Io`] with DynamoDB's message; items that do not decode are
//! [`StorageError::Corrupt`].
//!
//! # Idempotency entries and TTL
//!
//! aft deletes an idempotency entry with its commit record (the entry first, conditional on
//! still naming the record) once the record's retention is over, and this layout never leaves
//! an entry without its record. Entries also carry `exp`, a DynamoDB TTL counted from the
//! commit ([`DynamoDbOptions::idempotency_ttl`]; `aft serve` sets it, as for every backend,
//! to `idempotency_retention_secs` plus an hour: `Config::idempotency_ttl`), which bounds how long any entry can outlive what
//! aft promises: a retry is recognised for at least the retention. The one consequence: a
//! record whose versions stay live past the TTL keeps its record but no longer blocks its
//! idempotency key.

// The code, by concern:
//
//   options   the URL, DynamoDbOptions, credentials, size limits
//   layout    item keys and attributes, chunks of large payloads, pending markers
//   api       the requests (the Api trait, on the SDK), error classification, the SDK client
//   retry     the one retry loop, batches and queries on it
//   stats     counters
//   commit    fast path and general path
//   read      versions, scans over the commit directory, idempotency entries
//   delete    versions and records with their chunks and idempotency entries
//   recovery  orphan clean-up from pending markers
//   table     key schema, creation, TTL, the format item

mod api;
mod commit;
mod delete;
mod layout;
mod lease;
mod log;
mod options;
mod read;
mod recovery;
mod retry;
mod stats;
mod table;
#[cfg(test)]
mod tests;

pub use api::sdk_client;
pub use layout::{CHUNK_BYTES, COMMIT_SHARDS, MAX_PLAIN_KEY};
pub use options::{CredentialSource, DynamoDbOptions, DEFAULT_LOG_SHARDS, MAX_LOG_SHARDS};
pub use stats::DynamoDbStats;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    BoxFuture, CommitBatch, CommitOutcome, CommitRecord, Durability, Storage, StorageError,
    VersionId, VersionKey,
};
use api::{Api, SdkApi};
use layout::now_ms;
use options::Limits;
use stats::Counters;

/// The backend's name, in every error it returns ([`Storage::name`]).
const BACKEND: &str = "dynamodb";

/// The DynamoDB [`Storage`]. See the module documentation for the layout and the guarantees.
pub struct DynamoDbStorage {
    /// Where requests go: the SDK, or a wrapper of it in tests.
    api: Arc<dyn Api>,
    table: String,
    limits: Limits,
    /// Attempts per request, at least 1.
    max_attempts: u32,
    /// TTL of the idempotency entries written.
    idempotency_ttl: Duration,
    /// Commit directory entries this process wrote (or saw) already.
    registered: Mutex<HashSet<(u64, u8)>>,
    /// Held shared by every call, exclusively by `close`; `true` once closed.
    gate: tokio::sync::RwLock<bool>,
    counters: Counters,
    /// State of the backoff's random jitter.
    jitter: Mutex<u64>,
    /// Shards of the commit log (as the table's format item says).
    log_shards: usize,
}

impl fmt::Debug for DynamoDbStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoDbStorage")
            .field("table", &self.table)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DynamoDbStorage {
    /// Connects to the table of `options`: builds the client, checks the table's key schema
    /// (creating the table first with `create_table`) and its layout version.
    ///
    /// Fails with [`StorageError::Io`] if the table is missing (without `create_table`), has
    /// another key schema, or cannot be reached with the credentials found; with
    /// [`StorageError::Unavailable`] if DynamoDB keeps failing.
    pub async fn connect(options: DynamoDbOptions) -> Result<Self, StorageError> {
        Self::connect_with(options, Limits::default()).await
    }

    /// [`connect`](Self::connect) with other size limits.
    async fn connect_with(options: DynamoDbOptions, limits: Limits) -> Result<Self, StorageError> {
        let client = sdk_client(&options).await?;
        table::ensure_table(&client, &options).await?;
        let api = Arc::new(SdkApi {
            client,
            table: options.table.clone(),
        });
        let mut storage = Self::with_api(
            api,
            &options.table,
            limits,
            options.max_attempts,
            options.idempotency_ttl,
        );
        storage.log_shards = storage.check_format(options.log_shards).await?;
        Ok(storage)
    }

    /// A store sending its requests to `api`, on `table` (which must exist and have been
    /// checked).
    fn with_api(
        api: Arc<dyn Api>,
        table: &str,
        limits: Limits,
        max_attempts: u32,
        idempotency_ttl: Duration,
    ) -> Self {
        DynamoDbStorage {
            api,
            table: table.to_owned(),
            limits,
            max_attempts: max_attempts.max(1),
            idempotency_ttl,
            registered: Mutex::new(HashSet::new()),
            gate: tokio::sync::RwLock::new(false),
            counters: Counters::default(),
            jitter: Mutex::new(now_ms() | 1),
            log_shards: 1,
        }
    }

    /// What the backend has done so far (requests, retries, throttling, commits by path…).
    pub fn stats(&self) -> DynamoDbStats {
        self.counters.snapshot()
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Runs `f` unless the store is closed; `close` waits for calls in progress.
    async fn open_call<T, Fut>(&self, f: Fut) -> Result<T, StorageError>
    where
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let closed = self.gate.read().await;
        if *closed {
            return Err(StorageError::Closed);
        }
        let result = f.await;
        drop(closed);
        result
    }
}

impl Storage for DynamoDbStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// DynamoDB acknowledges a write once it is durable in several availability zones.
    fn durability(&self) -> Durability {
        Durability::Synced
    }

    fn commit(&self, batch: CommitBatch) -> BoxFuture<'_, Result<CommitOutcome, StorageError>> {
        Box::pin(self.open_call(self.commit_now(batch)))
    }

    fn get_versions(
        &self,
        keys: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, StorageError>> {
        Box::pin(self.open_call(self.get_now(keys)))
    }

    fn scan_commits(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommitRecord>, StorageError>> {
        Box::pin(self.open_call(self.scan_now(after, limit)))
    }

    fn find_idempotent(
        &self,
        idempotency_key: Bytes,
    ) -> BoxFuture<'_, Result<Option<VersionId>, StorageError>> {
        Box::pin(self.open_call(async move { self.read_idempotent(&idempotency_key).await }))
    }

    fn delete(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        let commits = commits.into_iter().map(|c| c.version).collect();
        Box::pin(self.open_call(self.delete_now(versions, commits)))
    }

    /// Waits for calls in progress, then refuses every later call with
    /// [`StorageError::Closed`]. Nothing is buffered. Idempotent.
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            *self.gate.write().await = true;
            Ok(())
        })
    }

    /// Resolves pending markers older than `older_than` (see the module documentation):
    /// deletes the versions of commits that never got their record, and the markers of
    /// commits that did.
    fn reclaim_orphans(&self, older_than: Duration) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(self.open_call(self.reclaim_now(older_than)))
    }

    /// Nodes' leases (see the `lease` module).
    fn heartbeat(
        &self,
        beat: crate::storage::Heartbeat,
    ) -> BoxFuture<'_, Result<Option<Vec<crate::storage::Member>>, StorageError>> {
        Box::pin(self.open_call(self.heartbeat_now(beat)))
    }

    fn commits_claim_positions(&self) -> bool {
        true
    }

    fn claimed_shards(&self, batch: &CommitBatch) -> Vec<usize> {
        DynamoDbStorage::claimed_shards(self, batch)
    }

    fn log_tail(
        &self,
        after: crate::storage::LogPos,
        limit: usize,
    ) -> BoxFuture<'_, Result<crate::storage::LogPage, StorageError>> {
        Box::pin(self.open_call(self.tail_now(after, limit)))
    }
}
