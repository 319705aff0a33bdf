//! A transaction: a write buffer over a pinned snapshot of the commit set, its reads, and
//! its commit (validation, then the engine's commit path).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::clock;
use super::engine::{Engine, FlushGuard, InflightGuard, PendingCommit, Pin};
use super::index::{VersionMeta, MAX_POSITION};
use super::record::{Entry, Kind, Value};
use super::watch::Watches;
use super::TxnError;
use crate::storage::{CommitOutcome, Conditions, StorageError, TxnId, VersionId, VersionKey};

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
    /// A transaction of `engine` with this id, whose clock was registered at `now_ms`.
    pub(super) fn new(engine: Arc<Engine>, id: TxnId, now_ms: u64) -> Txn {
        Txn {
            id,
            engine,
            pin: None,
            now_ms,
            writes: HashMap::new(),
            write_bytes: 0,
            reads: HashMap::new(),
            checks: HashMap::new(),
            idempotency_key: None,
            flushed: false,
            validate_reads: false,
        }
    }

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

    /// Largest value a command may build (see [`super::EngineConfig::max_value_len`]).
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
        let now = clock::wall_ms();
        let writes = std::mem::take(&mut self.writes);
        let flushed = self.flushed;
        #[cfg(test)]
        {
            let hook = engine.before_validation.lock().take();
            if let Some(hook) = hook {
                hook().await;
            }
        }
        // Validate and reserve in one critical section: first committer wins. The log
        // position is read first: every commit at or below it is in the index validated.
        // Only a backend whose commits claim log positions (DynamoDB) uses it: not copied for
        // one that does not, on every commit.
        let claims = engine.peers.shared() && engine.storage.commits_claim_positions();
        let log_at = claims.then(|| engine.peers.cursor.lock().clone());
        let (id, guard, flush) = {
            let mut inflight = engine.inflight.lock();
            if !self.checks.is_empty() {
                // Validation relies on the reads' snapshot having stayed pinned. Checked
                // under the lock that garbage collection takes before it removes a key, so
                // that a key read here cannot be removed (looking unchanged) in between.
                self.check_snapshot()?;
            }
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
        // What validation saw, to validate again if the backend's log moved meanwhile (only
        // a backend whose commits claim log positions answers that).
        let revalidate = claims.then(|| Revalidation {
            checks: self.checks.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            watches: watches
                .into_iter()
                .flat_map(Watches::iter)
                .map(|(k, s)| (k.clone(), *s))
                .collect(),
        });
        // On a shared backend the backend decides the checks again, against every node's
        // commits: watched keys first, then keys read for update.
        let (conditions, watched) = if engine.peers.shared() {
            let mut checks: Vec<(Bytes, Option<VersionId>)> = watches
                .into_iter()
                .flat_map(Watches::iter)
                .map(|(key, state)| (key.clone(), state.version()))
                .collect();
            let watched = checks.len();
            checks.extend(self.checks.iter().map(|(k, v)| (k.clone(), *v)));
            let conditions = Conditions {
                node: Some(engine.peers.node()),
                at_ms: clock::Clock::physical_ms(id.ts),
                log_at,
                checks,
                deleted: Vec::new(),
            };
            (conditions, watched)
        } else {
            (Conditions::default(), 0)
        };
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
            let committer = conditions.node;
            // A node that just rejoined others commits only once they can know it.
            engine.wait_until_known().await;
            let mut pending = PendingCommit::new(id, writes, idempotency_key, conditions, watched);
            let outcome = loop {
                let outcome = engine.storage.commit(pending.batch.clone()).await;
                if !matches!(outcome, Ok(CommitOutcome::Moved)) {
                    break outcome;
                }
                // Another node committed first: catch up, validate again, send again.
                if let Err(e) = engine.catch_up().await {
                    engine.gc.tracker.lock().orphans(pending.orphans());
                    return Err(e);
                }
                let at = engine.peers.cursor.lock().clone();
                let valid = match &revalidate {
                    Some(what) => engine.still_valid(what, clock::wall_ms()),
                    None => Err(TxnError::Internal(
                        "the backend answered Moved to a commit that claims no log position".into(),
                    )),
                };
                if let Err(e) = valid {
                    engine.gc.tracker.lock().orphans(pending.orphans());
                    return Err(e);
                }
                pending.batch.conditions.log_at = Some(at);
            };
            let claimed = pending.batch.conditions.log_at.clone();
            let shards = if claims {
                engine.storage.claimed_shards(&pending.batch)
            } else {
                Vec::new()
            };
            let settled = engine.settle(outcome, pending, guard);
            if let (Ok(Some(_)), Some(at)) = (&settled, claimed) {
                // This commit took position at[s] + 1 of each shard s it claimed: nothing
                // lies between, so a node that had applied everything up to at[s] there has
                // applied everything up to it.
                let mut cursor = engine.peers.cursor.lock();
                for s in shards {
                    if cursor.get(s) == at.get(s) {
                        *cursor = cursor.with(s, at.get(s) + 1);
                    }
                }
            }
            match (settled, committer) {
                (Err(TxnError::Storage(StorageError::Fenced(_))), Some(node))
                    if engine.peers.shared() =>
                {
                    // Refused whole: nothing was written. Rejoin, and let it run again.
                    engine.rejoin_after(node).await;
                    Err(TxnError::Rejoined)
                }
                (settled, _) => settled,
            }
        });
        task.await
            .map_err(|e| TxnError::Internal(format!("commit task failed: {e}")))?
    }
}

/// What a commit validated, kept to validate again (see [`Engine::still_valid`]).
pub(super) struct Revalidation {
    checks: Vec<(Bytes, Option<VersionId>)>,
    watches: Vec<(Bytes, super::WatchState)>,
}

impl Engine {
    /// Validates a commit again against the index now (after catching up with the log):
    /// the keys it read for update and the keys it watched are unchanged.
    pub(super) fn still_valid(&self, what: &Revalidation, now: u64) -> Result<(), TxnError> {
        for (key, state) in &what.watches {
            if !state.unchanged(self.index.latest(key), now) {
                self.stats.watch_failures.fetch_add(1, Ordering::Relaxed);
                return Err(TxnError::WatchFailed);
            }
        }
        for (key, version) in &what.checks {
            if !unchanged_since_read(self.index.latest(key), *version) {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                return Err(TxnError::Conflict);
            }
        }
        Ok(())
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
