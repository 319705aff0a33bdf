//! Commits: one script on a standalone server; marker, versions per slot, then the record on
//! a cluster; and, when a commit's keys lie in several shards of the log, a prepare in each
//! shard other than its home before the record (see the [backend's documentation](super#commits)).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use fred::types::{Resp3Frame, Value};

use super::client::{bytes, frame_array, frame_bytes, frame_int, id_arg, text, RequestError};
use super::layout::{decode_key_list, encode_key_list};
use super::RedisStorage;
use crate::storage::{
    anchor, record, CommitBatch, CommitOutcome, CommitRecord, Conditions, StorageError, VersionId,
};

/// A lock a commit across shards holds on a key (see `lua/prepare.lua`).
#[derive(Debug, Clone)]
pub(super) struct Lock {
    /// The commit holding it.
    pub(super) id: VersionId,
    /// Its home shard, which decides it.
    pub(super) home: usize,
    /// Its node (hex), whose lease tells whether it can still finish.
    pub(super) node: String,
    /// The key, in the shard that answered.
    pub(super) key: Bytes,
}

/// What the commit script (or the marking or prepare script) answered.
#[derive(Debug)]
pub(super) enum Committed {
    Yes,
    Duplicate(VersionId),
    /// The pending marker was reclaimed: nothing was written.
    MarkerGone,
    /// The node's lease expired: nothing was written.
    Fenced,
    /// The check at this index (of the script's checks) failed: nothing was written.
    Conflict(usize),
    /// A key is locked by another commit, to resolve first: nothing was written.
    Locked(Lock),
    /// A key is locked by a younger commit in flight, which this one does not wait for:
    /// nothing was written.
    Blocked,
}

/// `id ‖ kind ‖ home ' ' node`, as `lua/prepare.lua` writes a lock.
pub(super) fn parse_lock(lock: &[u8], key: Bytes) -> Option<Lock> {
    let id = VersionId::from_bytes(lock.get(..VersionId::ENCODED_LEN)?)?;
    let tail = std::str::from_utf8(lock.get(VersionId::ENCODED_LEN + 1..)?).ok()?;
    let (home, node) = tail.split_once(' ')?;
    Some(Lock {
        id,
        home: home.parse().ok()?,
        node: node.to_string(),
        key,
    })
}

/// `{1}`, `{0, id}`, `{2}`, `{3}`, `{4, i}` or `{5, lock, key}`.
fn parse_commit_reply(frame: Resp3Frame) -> Result<Committed, RequestError> {
    let items = frame_array(frame)?;
    match items.first().and_then(frame_int) {
        Some(1) => Ok(Committed::Yes),
        Some(2) => Ok(Committed::MarkerGone),
        Some(3) => Ok(Committed::Fenced),
        Some(4) => items
            .get(1)
            .and_then(frame_int)
            .and_then(|i| usize::try_from(i).ok())
            .map(Committed::Conflict)
            .ok_or_else(|| RequestError::corrupt("conflict without a check index")),
        Some(5) => {
            let mut items = items.into_iter().skip(1);
            let lock = items.next().map(frame_bytes).transpose()?.flatten();
            let key = items.next().map(frame_bytes).transpose()?.flatten();
            lock.zip(key)
                .and_then(|(lock, key)| parse_lock(&lock, key))
                .map(Committed::Locked)
                .ok_or_else(|| RequestError::corrupt("a lock that does not parse"))
        }
        Some(0) => {
            let id = items
                .into_iter()
                .nth(1)
                .map(frame_bytes)
                .transpose()?
                .flatten()
                .ok_or_else(|| RequestError::corrupt("duplicate without an id"))?;
            // Not `record::decode_id`: for the request that decides a commit, a reply that
            // does not decode leaves the outcome unknown.
            VersionId::from_bytes(&id)
                .map(Committed::Duplicate)
                .ok_or_else(|| {
                    RequestError::corrupt(format!(
                        "idempotency entry has {} bytes, expected {}",
                        id.len(),
                        VersionId::ENCODED_LEN
                    ))
                })
        }
        _ => Err(RequestError::corrupt("unexpected reply to a commit script")),
    }
}

/// One shard's part of a commit: its checks (each with its index in [`Conditions::checks`])
/// and the heads it moves (`b'1'` for a value, `b'0'` for a tombstone).
#[derive(Default, Debug)]
pub(super) struct Part {
    checks: Vec<(usize, Bytes, Option<VersionId>)>,
    heads: Vec<(Bytes, u8)>,
}

impl Part {
    /// Every key of the part, each once (a key both read and written is locked as written).
    fn keys(&self) -> Vec<Bytes> {
        let mut keys: Vec<Bytes> = self
            .checks
            .iter()
            .map(|(_, k, _)| k.clone())
            .chain(self.heads.iter().map(|(k, _)| k.clone()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// A script to run in one shard (see [`RedisStorage::run_resolving`]).
struct Request<'a> {
    script: &'a super::script::Script,
    shard: usize,
    keys: Vec<Value>,
    args: Vec<Value>,
    /// Whether it is the request that decides a commit (a lost reply leaves the outcome
    /// unknown).
    deciding: bool,
}

/// How long a lock blocks others before they look again, first and at most.
const LOCK_BACKOFF: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));

impl RedisStorage {
    /// How long a commit across shards may stay undecided before another commit that needs
    /// one of its keys takes its marker (it can then no longer commit): longer than its
    /// steps can take while its node is live.
    fn lock_grace_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis())
            .unwrap_or(u64::MAX / 8)
            .saturating_mul(4)
            .max(1000)
    }

    /// [`Storage::commit`](crate::storage::Storage::commit): in one script when every key
    /// lies in the commit's home shard (on a cluster with versions, after the marker and the
    /// versions), else across shards.
    pub(super) async fn commit_now(
        &self,
        batch: CommitBatch,
    ) -> Result<CommitOutcome, StorageError> {
        let written = written_keys(&batch.versions);
        let home = self.layout.shard_of(&anchor(
            batch.record.idempotency_key.as_ref(),
            written.iter().chain(&batch.conditions.deleted),
        ));
        let mut parts = self.parts(&batch.conditions, &written);
        if parts.keys().any(|s| *s != home) {
            return self.commit_across(batch, home, parts).await;
        }
        let part = parts.remove(&home).unwrap_or_default();
        if self.cluster && !batch.versions.is_empty() {
            self.commit_in_cluster(batch, home, part).await
        } else {
            self.commit_in_one(batch, home, part).await
        }
    }

    /// The parts of a commit by shard (see [`Part`]).
    pub(super) fn parts(
        &self,
        conditions: &Conditions,
        written: &[Bytes],
    ) -> BTreeMap<usize, Part> {
        let mut parts: BTreeMap<usize, Part> = BTreeMap::new();
        for (i, (key, read)) in conditions.checks.iter().enumerate() {
            let part = parts.entry(self.layout.shard_of(key)).or_default();
            part.checks.push((i, key.clone(), *read));
        }
        for (key, kind) in written
            .iter()
            .map(|k| (k, b'1'))
            .chain(conditions.deleted.iter().map(|k| (k, b'0')))
        {
            let part = parts.entry(self.layout.shard_of(key)).or_default();
            part.heads.push((key.clone(), kind));
        }
        parts
    }

    /// KEYS and ARGV of `lua/commit.lua` in shard `home` for `record`, with `versions`
    /// written by the script (empty when they were written before), `part`'s checks and
    /// heads, and the pending-marker check on or off.
    pub(super) fn commit_request(
        &self,
        home: usize,
        record: &CommitRecord,
        conditions: &Conditions,
        part: &Part,
        versions: Vec<(Bytes, Bytes)>,
        expect_marker: bool,
    ) -> Result<(Vec<Value>, Vec<Value>), StorageError> {
        let shard = &self.layout.shards[home];
        let idem = shard.idempotency(record.idempotency_key.as_deref().unwrap_or_default());
        let mut keys = Vec::with_capacity(10 + versions.len());
        keys.extend([
            bytes(&shard.rec),
            bytes(&shard.log),
            bytes(&shard.pending),
            bytes(&shard.pendkeys),
            bytes(&idem),
            bytes(&shard.tail),
            bytes(&shard.seq),
            bytes(&shard.heads),
            bytes(&shard.nodes),
            bytes(&shard.locks),
        ]);
        let mut args =
            Vec::with_capacity(8 + 2 * (part.checks.len() + part.heads.len()) + versions.len());
        args.extend([
            id_arg(record.id),
            Value::Bytes(record::encode(self.backend, record)?),
            text(if record.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            }),
            text(self.idempotency_ttl_secs.to_string()),
            text(if expect_marker { "1" } else { "0" }),
            text(conditions.node.map(|n| n.to_string()).unwrap_or_default()),
            text(part.checks.len().to_string()),
            text(part.heads.len().to_string()),
        ]);
        push_checks_and_heads(&mut args, part);
        for (key, value) in versions {
            keys.push(Value::Bytes(key));
            args.push(Value::Bytes(value));
        }
        Ok((keys, args))
    }

    /// Runs the commit script in shard `home` (the request that decides the commit),
    /// resolving the locks it meets: a lock of a commit still in flight is waited for while
    /// `waits` (given the lock) says so, else the answer is [`Committed::Blocked`].
    pub(super) async fn decide_commit(
        &self,
        home: usize,
        keys: Vec<Value>,
        args: Vec<Value>,
        part: &Part,
        checks: usize,
        waits: impl Fn(&Lock) -> bool,
    ) -> Result<Committed, StorageError> {
        let script = Request {
            script: &self.scripts.commit,
            shard: home,
            keys,
            args,
            deciding: true,
        };
        self.run_resolving(script, part, checks, waits).await
    }

    /// Runs a script that answers like the commit script (the commit script itself, or the
    /// prepare script), resolving the locks it meets and running it again: a lock of a
    /// commit still in flight is waited for while `waits` (given the lock) says so, else the
    /// answer is [`Committed::Blocked`]. A failed check is answered with its index in
    /// [`Conditions::checks`] (`part`'s checks map the script's indexes to those).
    async fn run_resolving(
        &self,
        request: Request<'_>,
        part: &Part,
        checks: usize,
        waits: impl Fn(&Lock) -> bool,
    ) -> Result<Committed, StorageError> {
        let slot = self.layout.shards[request.shard].slot;
        let mut backoff = LOCK_BACKOFF.0;
        loop {
            let answer = self
                .eval(
                    request.script,
                    slot,
                    request.keys.clone(),
                    request.args.clone(),
                )
                .await
                .and_then(parse_commit_reply)
                .map_err(|e| {
                    if request.deciding {
                        e.deciding(self.backend)
                    } else {
                        e.plain(self.backend)
                    }
                })?;
            match answer {
                Committed::Locked(lock) => {
                    if !self.resolve_lock(request.shard, &lock).await? {
                        if !waits(&lock) {
                            return Ok(Committed::Blocked);
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(LOCK_BACKOFF.1);
                    }
                }
                Committed::Conflict(i) => {
                    return Ok(Committed::Conflict(
                        part.checks.get(i).map_or(checks, |(index, _, _)| *index),
                    ))
                }
                other => return Ok(other),
            }
        }
    }

    /// The standalone commit (and a cluster commit without versions) within one shard: one
    /// script.
    async fn commit_in_one(
        &self,
        batch: CommitBatch,
        home: usize,
        part: Part,
    ) -> Result<CommitOutcome, StorageError> {
        let (keys, values) = self.version_keys(&batch)?;
        let versions = keys.into_iter().zip(values).collect();
        let (keys, args) = self.commit_request(
            home,
            &batch.record,
            &batch.conditions,
            &part,
            versions,
            false,
        )?;
        let checks = batch.conditions.checks.len();
        match self
            .decide_commit(home, keys, args, &part, checks, |_| true)
            .await?
        {
            Committed::Yes => Ok(CommitOutcome::Committed),
            Committed::Duplicate(existing) => Ok(CommitOutcome::Duplicate(existing)),
            Committed::Conflict(i) => Ok(CommitOutcome::Conflict(i)),
            Committed::Fenced => Err(self.fenced()),
            Committed::MarkerGone | Committed::Locked(_) | Committed::Blocked => {
                Err(self.io_error("unexpected reply to a commit without pending marker"))
            }
        }
    }

    /// Steps (1) and (2) of a commit in several steps: the pending marker in shard `home`
    /// (and an early duplicate check), then the versions, one `MSET` per slot in parallel.
    /// `Ok(Some(outcome))`: the commit ends there.
    pub(super) async fn mark_and_write(
        &self,
        batch: &CommitBatch,
        home: usize,
        keys: &[Bytes],
        values: Vec<Bytes>,
    ) -> Result<Option<CommitOutcome>, StorageError> {
        let backend = self.backend;
        let id = batch.record.id;
        let shard = &self.layout.shards[home];
        let idem = batch
            .record
            .idempotency_key
            .as_ref()
            .map(|k| shard.idempotency(k));
        let key_list = encode_key_list(keys).map_err(|e| self.io_error(e.to_string()))?;
        let mark = self
            .eval(
                &self.scripts.mark,
                shard.slot,
                vec![
                    bytes(&shard.pending),
                    bytes(&shard.pendkeys),
                    bytes(&idem.clone().unwrap_or_else(|| shard.idempotency(b""))),
                    bytes(&shard.rec),
                ],
                vec![
                    id_arg(id),
                    Value::Bytes(key_list),
                    text(if idem.is_some() { "1" } else { "0" }),
                ],
            )
            .await
            .and_then(parse_commit_reply)
            .map_err(|e| e.plain(backend))?;
        match mark {
            Committed::Yes => {}
            Committed::Duplicate(existing) => return Ok(Some(CommitOutcome::Duplicate(existing))),
            Committed::MarkerGone => {
                return Err(self.io_error(format!(
                    "commit {id:?} was reclaimed as an orphan before it could finish; \
                     nothing was committed"
                )));
            }
            Committed::Fenced
            | Committed::Conflict(_)
            | Committed::Locked(_)
            | Committed::Blocked => {
                return Err(self.corrupt("unexpected reply to a pending marker"));
            }
        }
        // A failure here leaves no record (the marker lets `reclaim_orphans` find what was
        // written).
        let writes = self.by_slot(keys).into_iter().map(|(slot, indexes)| {
            let mut args = Vec::with_capacity(2 * indexes.len());
            for i in indexes {
                args.push(bytes(&keys[i]));
                args.push(bytes(&values[i]));
            }
            self.call(slot, "MSET", args)
        });
        for reply in futures_util::future::join_all(writes).await {
            reply.map_err(|e| e.plain(backend))?;
        }
        Ok(None)
    }

    /// The storage keys and values of a batch's versions.
    pub(super) fn version_keys(
        &self,
        batch: &CommitBatch,
    ) -> Result<(Vec<Bytes>, Vec<Bytes>), StorageError> {
        let id = batch.record.id;
        let mut keys = Vec::with_capacity(batch.versions.len());
        let mut values = Vec::with_capacity(batch.versions.len());
        for (key, value) in &batch.versions {
            let key = self
                .layout
                .version(key, id)
                .map_err(|e| self.io_error(e.to_string()))?;
            keys.push(key);
            values.push(value.clone());
        }
        Ok((keys, values))
    }

    /// A commit refused after its versions were written (a duplicate idempotency key, a
    /// conflict, a fence): its versions are orphans. They are deleted now (best effort), and
    /// the marker goes only once they are gone.
    async fn drop_refused(&self, home: usize, id: VersionId, keys: &[Bytes]) {
        if self.delete_keys(keys).await.is_ok() {
            let shard = &self.layout.shards[home];
            let _ = self
                .eval(
                    &self.scripts.forget,
                    shard.slot,
                    vec![bytes(&shard.pending), bytes(&shard.pendkeys)],
                    vec![id_arg(id)],
                )
                .await;
        }
    }

    /// The cluster commit within one shard: marker, versions per slot in parallel, then the
    /// record.
    async fn commit_in_cluster(
        &self,
        batch: CommitBatch,
        home: usize,
        part: Part,
    ) -> Result<CommitOutcome, StorageError> {
        let id = batch.record.id;
        let (keys, values) = self.version_keys(&batch)?;
        if let Some(outcome) = self.mark_and_write(&batch, home, &keys, values).await? {
            return Ok(outcome);
        }
        // 3. The record, if the marker is still live.
        let (script_keys, args) = self.commit_request(
            home,
            &batch.record,
            &batch.conditions,
            &part,
            Vec::new(),
            true,
        )?;
        let checks = batch.conditions.checks.len();
        let refused = match self
            .decide_commit(home, script_keys, args, &part, checks, |_| true)
            .await?
        {
            Committed::Yes => return Ok(CommitOutcome::Committed),
            Committed::Duplicate(existing) => Ok(CommitOutcome::Duplicate(existing)),
            Committed::Conflict(i) => Ok(CommitOutcome::Conflict(i)),
            Committed::Fenced => Err(self.fenced()),
            Committed::MarkerGone | Committed::Locked(_) | Committed::Blocked => {
                return Err(self.marker_gone(id));
            }
        };
        self.drop_refused(home, id, &keys).await;
        refused
    }

    fn marker_gone(&self, id: VersionId) -> StorageError {
        self.io_error(format!(
            "commit {id:?} took longer than the orphan grace period and was reclaimed; \
             nothing was committed"
        ))
    }

    /// A commit whose keys lie in several shards: (1) the marker in its home shard and
    /// (2) the versions, as a cluster commit; (3) in every other shard it touches, in
    /// parallel, a prepare that checks its reads there and locks its keys; (4) the commit
    /// script in the home shard, with the home shard's checks and heads: the record, the
    /// decision; (5) in the other shards, the heads move and the locks go.
    ///
    /// A commit that meets a lock of a commit still in flight waits for it only if it is
    /// older (wait-die: no two commits wait for each other), else it is refused as a
    /// conflict, and its own locks go.
    async fn commit_across(
        &self,
        batch: CommitBatch,
        home: usize,
        mut parts: BTreeMap<usize, Part>,
    ) -> Result<CommitOutcome, StorageError> {
        let id = batch.record.id;
        let checks = batch.conditions.checks.len();
        let node = batch
            .conditions
            .node
            .map(|n| n.to_string())
            .unwrap_or_default();
        let home_part = parts.remove(&home).unwrap_or_default();
        let (keys, values) = self.version_keys(&batch)?;
        if let Some(outcome) = self.mark_and_write(&batch, home, &keys, values).await? {
            return Ok(outcome);
        }
        let older = |lock: &Lock| id < lock.id;
        let mut backoff = LOCK_BACKOFF.0;
        let (outcome, prepared) = loop {
            // 3. Prepare.
            let prepares = parts
                .iter()
                .map(|(shard, part)| self.prepare(*shard, id, home, &node, part, checks, older));
            let mut refused = None;
            let mut blocked = false;
            let mut prepared = Vec::new();
            for (shard, answer) in parts
                .keys()
                .zip(futures_util::future::join_all(prepares).await)
            {
                match answer {
                    Ok(Committed::Yes) => prepared.push(*shard),
                    Ok(Committed::Blocked) => blocked = true,
                    Ok(Committed::Conflict(i)) => {
                        refused.get_or_insert(Ok(CommitOutcome::Conflict(i)));
                    }
                    Ok(Committed::Fenced) => {
                        refused.get_or_insert(Err(self.fenced()));
                    }
                    Ok(_) => {
                        refused.get_or_insert(Err(self.corrupt("unexpected reply to a prepare")));
                    }
                    // Perhaps prepared: its locks are ended below all the same.
                    Err(e) => {
                        prepared.push(*shard);
                        refused.get_or_insert(Err(e));
                    }
                }
            }
            if let Some(refused) = refused {
                break (refused, prepared);
            }
            // 4. The decision.
            let answer = if blocked {
                Committed::Blocked
            } else {
                let (script_keys, args) = self.commit_request(
                    home,
                    &batch.record,
                    &batch.conditions,
                    &home_part,
                    Vec::new(),
                    true,
                )?;
                match self
                    .decide_commit(home, script_keys, args, &home_part, checks, older)
                    .await
                {
                    Ok(answer) => answer,
                    // Unknown: the locks stay until the outcome is known (another commit that
                    // needs one of the keys asks the home shard, which knows).
                    Err(e @ StorageError::OutcomeUnknown(_)) => return Err(e),
                    // Not decided, and never will be (the error says the record was not
                    // created): the locks go now rather than after the grace period.
                    Err(e) => break (Err(e), prepared),
                }
            };
            let outcome = match answer {
                Committed::Yes => Ok(CommitOutcome::Committed),
                Committed::Duplicate(existing) => Ok(CommitOutcome::Duplicate(existing)),
                Committed::Conflict(i) => Ok(CommitOutcome::Conflict(i)),
                Committed::Fenced => Err(self.fenced()),
                Committed::MarkerGone | Committed::Locked(_) => Err(self.marker_gone(id)),
                // A younger commit in flight holds a key: give up this commit's locks so that
                // it can finish (it may wait for them), and prepare again.
                Committed::Blocked => {
                    let ends = prepared.iter().map(|shard| {
                        let keys = parts.get(shard).map(Part::keys).unwrap_or_default();
                        self.finish(*shard, id, false, keys)
                    });
                    for end in futures_util::future::join_all(ends).await {
                        end?;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LOCK_BACKOFF.1);
                    continue;
                }
            };
            break (outcome, prepared);
        };
        // 5. End the locks, best effort: another commit that meets one resolves it.
        let committed = matches!(outcome, Ok(CommitOutcome::Committed));
        let ends = prepared.iter().map(|shard| {
            let keys = parts.get(shard).map(Part::keys).unwrap_or_default();
            self.finish(*shard, id, committed, keys)
        });
        for end in futures_util::future::join_all(ends).await {
            if let Err(e) = end {
                tracing::debug!(error = %e, "cannot end the locks of a commit across shards; another commit will");
            }
        }
        if !committed {
            self.drop_refused(home, id, &keys).await;
        }
        outcome
    }

    /// Prepares `part` of commit `id` in `shard` (see `lua/prepare.lua`), resolving the locks
    /// it meets (waiting for a commit in flight while `waits` says so). A check that fails is
    /// answered with its index in [`Conditions::checks`]; a lock it does not wait for, with
    /// [`Committed::Blocked`].
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn prepare(
        &self,
        shard: usize,
        id: VersionId,
        home: usize,
        node: &str,
        part: &Part,
        checks: usize,
        waits: impl Fn(&Lock) -> bool,
    ) -> Result<Committed, StorageError> {
        let s = &self.layout.shards[shard];
        let list = encode_key_list(&part.keys()).map_err(|e| self.io_error(e.to_string()))?;
        let mut args = Vec::with_capacity(6 + 2 * (part.checks.len() + part.heads.len()));
        args.extend([
            id_arg(id),
            text(node),
            text(part.checks.len().to_string()),
            text(part.heads.len().to_string()),
            text(format!("{home} {node}")),
            Value::Bytes(list),
        ]);
        push_checks_and_heads(&mut args, part);
        let keys = vec![
            bytes(&s.heads),
            bytes(&s.nodes),
            bytes(&s.locks),
            bytes(&s.txlocks),
        ];
        let request = Request {
            script: &self.scripts.prepare,
            shard,
            keys,
            args,
            deciding: false,
        };
        self.run_resolving(request, part, checks, waits).await
    }

    /// Ends commit `id`'s locks on `keys` in `shard` (see `lua/finish.lua`).
    pub(super) async fn finish(
        &self,
        shard: usize,
        id: VersionId,
        committed: bool,
        keys: Vec<Bytes>,
    ) -> Result<(), StorageError> {
        let s = &self.layout.shards[shard];
        let mut args = Vec::with_capacity(2 + keys.len());
        args.push(id_arg(id));
        args.push(text(if committed { "c" } else { "a" }));
        args.extend(keys.into_iter().map(Value::Bytes));
        self.eval(
            &self.scripts.finish,
            s.slot,
            vec![bytes(&s.heads), bytes(&s.locks), bytes(&s.txlocks)],
            args,
        )
        .await
        .map_err(|e| e.plain(self.backend))?;
        Ok(())
    }

    /// Resolves a lock found in `shard`: asks its commit's home shard whether it committed
    /// (see `lua/decide.lua`) and, if it is decided, ends its locks in `shard`. Returns
    /// whether the lock is gone (`false`: its commit is still in flight).
    pub(super) async fn resolve_lock(
        &self,
        shard: usize,
        lock: &Lock,
    ) -> Result<bool, StorageError> {
        let backend = self.backend;
        let Some(home) = self.layout.shards.get(lock.home) else {
            return Err(self.corrupt(format!(
                "a lock names shard {} of {}",
                lock.home,
                self.layout.shards.len()
            )));
        };
        let decided = self
            .eval(
                &self.scripts.decide,
                home.slot,
                vec![bytes(&home.rec), bytes(&home.pending), bytes(&home.nodes)],
                vec![
                    id_arg(lock.id),
                    text(lock.node.as_str()),
                    text(self.lock_grace_ms().to_string()),
                ],
            )
            .await
            .and_then(frame_bytes)
            .map_err(|e| e.plain(backend))?;
        let committed = match decided.as_deref() {
            Some(b"c") => true,
            Some(b"a") => false,
            Some(b"w") => return Ok(false),
            _ => return Err(self.corrupt("unexpected reply to a lock's decision")),
        };
        let s = &self.layout.shards[shard];
        let list = self
            .call(s.slot, "HGET", vec![bytes(&s.txlocks), id_arg(lock.id)])
            .await
            .and_then(frame_bytes)
            .map_err(|e| e.plain(backend))?
            .unwrap_or_default();
        let mut keys = decode_key_list(&list).map_err(|e| self.corrupt(e))?;
        keys.push(lock.key.clone());
        self.finish(shard, lock.id, committed, keys).await?;
        Ok(true)
    }

    /// The error of a commit or renewal refused because the node's lease expired.
    pub(super) fn fenced(&self) -> StorageError {
        StorageError::Fenced(crate::storage::Failure::new(
            self.backend,
            "this node's lease expired; it must rejoin before it commits",
        ))
    }
}

/// ARGV of a part's checks then heads: `(key, id read or '')` pairs, then `(key, kind)`.
fn push_checks_and_heads(args: &mut Vec<Value>, part: &Part) {
    for (_, key, read) in &part.checks {
        args.push(bytes(key));
        args.push(match read {
            Some(id) => id_arg(*id),
            None => text(""),
        });
    }
    for (key, kind) in &part.heads {
        args.push(bytes(key));
        args.push(text(if *kind == b'1' { "1" } else { "0" }));
    }
}

/// The distinct user keys of `versions`, whose heads a commit moves.
pub(super) fn written_keys(versions: &[(Bytes, Bytes)]) -> Vec<Bytes> {
    let mut keys: Vec<Bytes> = versions.iter().map(|(k, _)| k.clone()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}
