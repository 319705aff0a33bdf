//! Redis backend: a standalone Redis server or a Redis Cluster, through the [fred] client.
//!
//! # URL
//!
//! ```text
//! redis://[user:password@]host[:port][/db][?option=value&…]           one server
//! rediss://…                                                          one server, TLS
//! redis-cluster://[user:password@]host[:port][,host[:port]…][?…]     Redis Cluster
//! rediss-cluster://…                                                  Redis Cluster, TLS
//! ```
//!
//! The port defaults to 6379, the database to 0 (a cluster only has database 0). The hosts of
//! a cluster URL are seeds: the other nodes are discovered from them. User and password are
//! percent-decoded. TLS uses rustls with the platform's root certificates. Options:
//!
//! | option | default | |
//! |---|---|---|
//! | `prefix` | `aft:` | prepended to every key aft stores, so that aft can share a Redis with other data; non-empty, without `{` or `}` |
//! | `timeout_ms` | 5000 | longest wait for any one reply (and for a connection) |
//! | `pool` | 4 | multiplexed connections (per node in a cluster) |
//! | `idempotency_ttl` | aft's `idempotency_retention_secs` + 3600 | seconds an idempotency entry lives after its commit |
//! | `shards` | 1 on a server, one per master on a cluster | shards of the commit log, 1 to [`MAX_SHARDS`]; the first node to use the prefix decides, later ones use the stored count |
//!
//! # Layout
//!
//! With prefix `P`, the metadata is kept in the **shards** of the commit log. Each shard has a
//! tag `M` that every one of its keys starts with, so that a shard lives in one cluster slot
//! and one Lua script updates it atomically: `P{P}` for a log of one shard; for `n` shards,
//! shard `s` is tagged `P{P~k}`, `k` the least number whose slot lies in the `s`-th of `n`
//! equal ranges of the 16,384 slots (a cluster whose masters hold equal ranges holds one shard
//! each). `P{P}shards` holds `n`, decided by the first node (`lua/shards.lua`: a store written
//! before shards existed is one shard).
//!
//! A user key belongs to shard `fnv1a(key) mod n` (its head, its locks); a commit record to
//! the shard of its [anchor](crate::storage::anchor) (its idempotency key, else the least key
//! it writes), with its log entries, its idempotency entry and its pending marker. The keys
//! (every metadata key of a shard starts with its `M`):
//!
//! * **version**: `P v{h} ‖ u32 BE key length ‖ user key ‖ VersionId::to_bytes` → the value,
//!   where `h` is 16 hex digits of a 64-bit FNV-1a hash of the user key. The length prefix makes
//!   the encoding injective (no two (key, id) pairs share a storage key); the hash tag keeps
//!   every version of one key in one slot while spreading keys over the cluster (a user key may
//!   contain `{` or `}`, which is why it is hashed rather than used as the tag).
//! * **commit records**: hash `M rec`, field = the 24-byte id, value = the record in the
//!   encoding every backend shares ([`record`](crate::storage::record): format byte, flags,
//!   optional length-prefixed idempotency key, body).
//! * **commit log**: sorted set `M log`, every member at score 0, member = the 24-byte id. The
//!   ids' byte order is the version order, so `ZRANGEBYLEX` pages through commits in id order.
//! * **idempotency entries**: string `M i: ‖ key` → the 24-byte id, with a TTL
//!   (`idempotency_ttl`): a retry is recognised for that long after the commit.
//! * **pending markers** (cluster commits and commits across shards): sorted set
//!   `M pending`, score = the server's time in ms when the commit started (negative once
//!   orphan reclamation, or a commit that needed one of its keys, took it), member = id; hash
//!   `M pendkeys`, field = id → the version keys the commit writes (`u32 BE length ‖ key`,
//!   repeated).
//! * **commit log in creation order**: sorted set `M tail`, score = the position (`INCR` of
//!   `M seq`), member = id.
//! * **heads**: hash `M heads`, user key → the id of the latest version committed to it, then
//!   `1` (a value) or `0` (a tombstone): what write-conflict checks compare.
//! * **leases**: hash `M nodes`, node id → `expiry-ms watermark oldest-clock-ms address`.
//!   Shard 0's decide (`lua/heartbeat.lua`); the others hold copies that expire a fifth of the
//!   lease earlier, against which their commits are checked (`lua/lease.lua`).
//! * **locks**: hash `M locks`, user key → `id ‖ kind ‖ home ' ' node` of a commit across
//!   shards that prepared here (`r` read, `1` written, `0` deleted); hash `M txlocks`, id →
//!   the keys it locked here.
//!
//! Versions and metadata never collide: after `P`, version keys continue with `v`, metadata
//! keys with `{`.
//!
//! # Commits
//!
//! * **Standalone**: one `EVALSHA` of a script that returns the existing id if the idempotency
//!   key is taken (writing nothing), else writes every version, the record, the log entry and
//!   the idempotency entry. A script is atomic, so there are no orphans, and with
//!   `appendfsync always` the reply comes after the whole script is on disk. The script is
//!   sent by its SHA1; after a `NOSCRIPT` (a restarted or flushed server) it is sent whole once.
//! * **Cluster**: (1) a script on the slot of the commit's shard checks the idempotency key and
//!   writes a pending marker; (2) the versions are written with one `MSET` per slot, all slots
//!   in parallel; (3) the same commit script as above, without versions, on the shard's slot:
//!   it creates the record only if the marker is still live, and removes the marker. A
//!   duplicate found in (3) (a racing commit with the same idempotency key) deletes the versions
//!   it wrote, best effort. A commit without versions is one script, as on a standalone server.
//! * **Across shards** (a commit whose keys' heads lie in several shards): (1) and (2) as on a
//!   cluster, in its home shard (its anchor's); then in every other shard it touches, in
//!   parallel, `lua/prepare.lua` checks its reads there and locks its keys; then (3) in the
//!   home shard, with the home shard's own checks: the decision; then `lua/finish.lua` in the
//!   other shards moves their heads (if it committed) and drops its locks. A commit that meets
//!   another's lock resolves it with `lua/decide.lua` in that commit's home: committed (the
//!   heads it locked are moved now), never to commit (no live marker; a marker whose node's
//!   lease expired, or older than four reply timeouts, is taken so), or in flight: then it
//!   waits, unless it holds locks itself and is the younger, in which case it gives them up
//!   and prepares again (wait-die: no two commits wait for each other). Orphan reclamation
//!   also resolves every lock it finds, so a commit that died after its decision has its heads
//!   moved within a minute.
//!
//! The commit script first checks whether the commit's record exists, so that sending it
//! again (a retried request) reports the commit instead of applying it twice.
//!
//! # Failures
//!
//! * No connection (Redis down, reconnecting): calls fail at once with
//!   [`StorageError::Unavailable`]; the client reconnects by itself, with exponential backoff
//!   (50 ms doubling to 1 s), forever.
//! * A reply that does not come within `timeout_ms`, or a connection that drops while a
//!   request is in flight: [`StorageError::OutcomeUnknown`] for the request that decides a
//!   commit (the script that creates the record), [`StorageError::Unavailable`] otherwise.
//! * Redis refusing a request it did not apply (`LOADING`, `BUSY`, `READONLY`, `CLUSTERDOWN`,
//!   `TRYAGAIN`, `MASTERDOWN`, `OOM`, …): [`StorageError::Unavailable`]; other error replies:
//!   [`StorageError::Io`]; data that does not decode: [`StorageError::Corrupt`].
//! * Versions orphaned by a cluster commit that never reached step (3) keep their pending
//!   marker; [`Storage::reclaim_orphans`] deletes them. Its `older_than` must exceed the time a
//!   commit can take (up to three times `timeout_ms`); a commit whose marker was reclaimed
//!   fails with [`StorageError::Io`] without creating its record.
//! * A request is never sent twice by the client library: a lost reply is reported, not
//!   retried behind the caller's back.
//! * Every error names the backend as [`Storage::name`] does, `redis` on one server and
//!   `redis-cluster` on a cluster, and keeps the client library's error, if there is one, as
//!   its [source](std::error::Error::source).
//!
//! Redis must not evict keys (`maxmemory-policy noeviction`, the default), and durability is
//! Redis's own: acknowledged commits survive a crash of Redis only with `appendonly yes` and
//! `appendfsync always`, and a failover to an (asynchronous) replica may lose the last ones.
//!
//! # Code
//!
//! `options` parses the URL; `layout` names the stored keys; `client` connects, sends
//! commands and classifies their failures; `script` holds the Lua scripts (one file each in
//! `lua/`, its `KEYS` and `ARGV` at the top); `commit`, `read` and `recovery` implement the
//! [`Storage`] calls on them.

mod client;
mod commit;
mod layout;
mod members;
mod options;
mod read;
mod recovery;
mod script;
#[cfg(test)]
mod tests;

pub use options::{
    RedisOptions, Topology, DEFAULT_IDEMPOTENCY_TTL, DEFAULT_POOL, DEFAULT_PREFIX, DEFAULT_TIMEOUT,
    MAX_POOL, MAX_SHARDS,
};

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;

use super::{
    BoxFuture, CommitBatch, CommitOutcome, CommitRecord, Failure, Heartbeat, LogPage, LogPos,
    Member, Storage, StorageError, VersionId, VersionKey,
};
use layout::Layout;
use script::Scripts;

/// A [`Storage`] on Redis or Redis Cluster. See the module documentation.
///
/// Cheap to share (`Arc`); every call may run concurrently with every other, over a pool of
/// multiplexed connections.
pub struct RedisStorage {
    pool: Pool,
    layout: Layout,
    scripts: Scripts,
    cluster: bool,
    /// `redis` or `redis-cluster`: [`Storage::name`], and the name every error carries.
    backend: &'static str,
    timeout: Duration,
    idempotency_ttl_secs: u64,
    /// The servers, for messages.
    servers: String,
    closed: AtomicBool,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("servers", &self.servers)
            .field("prefix", &String::from_utf8_lossy(&self.layout.prefix))
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisStorage {
    /// Whether this is a Redis Cluster backend.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The key prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.layout.prefix
    }

    /// How many shards the commit log has.
    pub fn shards(&self) -> usize {
        self.layout.shards.len()
    }

    /// The slot of each shard of the commit log (all on one server when not a cluster).
    pub fn shard_slots(&self) -> Vec<u16> {
        self.layout.shards.iter().map(|s| s.slot).collect()
    }

    /// The number of shards the log of this prefix has: the count the first node stored,
    /// else `wanted`, else one on a server and one per master of a cluster.
    async fn choose_shards(&self, wanted: Option<usize>) -> Result<usize, StorageError> {
        let backend = self.backend;
        let default = match wanted {
            Some(n) => n,
            None if self.cluster => self.masters().await?,
            None => 1,
        }
        .clamp(1, layout::MAX_SHARDS);
        let single = &self.layout.shards[0];
        let count = self
            .eval(
                &self.scripts.shards,
                self.layout.root_slot,
                vec![
                    client::bytes(&self.layout.root),
                    client::bytes(&single.nodes),
                    client::bytes(&single.seq),
                    client::bytes(&single.rec),
                ],
                vec![client::text(default.to_string())],
            )
            .await
            .map_err(|e| e.plain(backend))?;
        let count = client::frame_int(&count)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=layout::MAX_SHARDS).contains(n))
            .ok_or_else(|| self.corrupt("the stored shard count is not a number from 1 to 64"))?;
        if wanted.is_some_and(|w| w != count) {
            tracing::warn!(
                wanted = wanted.unwrap_or(0),
                count,
                "the commit log of this prefix already has another number of shards; using it"
            );
        }
        Ok(count)
    }

    /// How many masters of the cluster serve slots.
    async fn masters(&self) -> Result<usize, StorageError> {
        let nodes = self
            .call(
                self.layout.root_slot,
                "CLUSTER",
                vec![client::text("NODES")],
            )
            .await
            .and_then(client::frame_bytes)
            .map_err(|e| e.plain(self.backend))?
            .unwrap_or_default();
        let masters = String::from_utf8_lossy(&nodes)
            .lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                fields.get(2).is_some_and(|flags| {
                    flags.split(',').any(|f| f == "master") && !flags.contains("fail")
                }) && fields.len() > 8
            })
            .count();
        Ok(masters.max(1))
    }

    fn check_open(&self) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StorageError::Closed)
        } else {
            Ok(())
        }
    }

    /// A [`StorageError::Io`] of this backend.
    fn io_error(&self, message: impl Into<String>) -> StorageError {
        StorageError::Io(Failure::new(self.backend, message))
    }

    /// A [`StorageError::Corrupt`] of this backend.
    fn corrupt(&self, message: impl Into<String>) -> StorageError {
        StorageError::Corrupt(Failure::new(self.backend, message))
    }
}

impl Storage for RedisStorage {
    fn name(&self) -> &'static str {
        self.backend
    }

    fn commit(&self, batch: CommitBatch) -> BoxFuture<'_, Result<CommitOutcome, StorageError>> {
        Box::pin(async move {
            self.check_open()?;
            self.commit_now(batch).await
        })
    }

    fn get_versions(
        &self,
        keys: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, StorageError>> {
        Box::pin(self.get_now(keys))
    }

    fn scan_commits(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommitRecord>, StorageError>> {
        Box::pin(self.scan_now(after, limit))
    }

    fn find_idempotent(
        &self,
        idempotency_key: Bytes,
    ) -> BoxFuture<'_, Result<Option<VersionId>, StorageError>> {
        Box::pin(self.find_now(idempotency_key))
    }

    fn delete(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.delete_now(versions, commits))
    }

    /// Closes every connection. Requests in flight may complete or fail; every later call
    /// returns [`StorageError::Closed`]. Everything acknowledged is already in Redis.
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            if !self.closed.swap(true, Ordering::AcqRel) {
                self.shutdown().await;
            }
            Ok(())
        })
    }

    /// Deletes the versions of commits written in several steps (cluster commits, commits
    /// across shards) whose pending marker is older than `older_than` (by the Redis server's
    /// clock) and that have no record; such a commit can no longer create its record. Then
    /// ends the locks commits across shards left behind. A standalone server with a log of
    /// one shard has no markers (its commits are atomic): this finds nothing.
    fn reclaim_orphans(&self, older_than: Duration) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(self.reclaim_now(older_than))
    }

    /// Leases live in the hash `M nodes` of shard 0, renewed by a script on the server's
    /// clock, with copies in the other shards.
    fn heartbeat(
        &self,
        beat: Heartbeat,
    ) -> BoxFuture<'_, Result<Option<Vec<Member>>, StorageError>> {
        Box::pin(self.heartbeat_now(beat))
    }

    fn log_tail(
        &self,
        after: LogPos,
        limit: usize,
    ) -> BoxFuture<'_, Result<LogPage, StorageError>> {
        Box::pin(self.tail_now(after, limit))
    }

    fn drop_heads(&self, heads: Vec<VersionKey>) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.drop_heads_now(heads))
    }
}

impl Drop for RedisStorage {
    /// Without a `close`, the connection tasks are told to stop (they would otherwise keep
    /// reconnecting).
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let clients: Vec<Client> = self.pool.clients().to_vec();
                let timeout = self.timeout;
                runtime.spawn(async move {
                    for client in clients {
                        let _ = tokio::time::timeout(timeout, client.quit()).await;
                    }
                });
            }
        }
    }
}
