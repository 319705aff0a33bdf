//! Commits: one script on a standalone server; marker, versions per slot, then the record on
//! a cluster (see the [backend's documentation](super#commits)).

use bytes::Bytes;
use fred::types::{Resp3Frame, Value};

use super::client::{bytes, frame_array, frame_bytes, frame_int, id_arg, text, RequestError};
use super::layout::encode_key_list;
use super::RedisStorage;
use crate::storage::{
    record, CommitBatch, CommitOutcome, CommitRecord, Conditions, StorageError, VersionId,
};

/// What the commit script (or the marking script) answered.
#[derive(Debug)]
pub(super) enum Committed {
    Yes,
    Duplicate(VersionId),
    /// The pending marker was reclaimed: nothing was written.
    MarkerGone,
    /// The node's lease expired: nothing was written.
    Fenced,
    /// The check at this index failed: nothing was written.
    Conflict(usize),
}

/// `{1}`, `{0, id}`, `{2}`, `{3}` or `{4, i}`.
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

impl RedisStorage {
    /// KEYS and ARGV of `lua/commit.lua` for `record`, with `versions` written by the script
    /// (empty when they were written before), the heads of `written` keys moved (the user
    /// keys of the versions), and the pending-marker check on or off.
    pub(super) fn commit_request(
        &self,
        record: &CommitRecord,
        conditions: &Conditions,
        written: &[Bytes],
        versions: Vec<(Bytes, Bytes)>,
        expect_marker: bool,
    ) -> Result<(Vec<Value>, Vec<Value>), StorageError> {
        let idem = match &record.idempotency_key {
            Some(key) => self.layout.idempotency(key),
            None => self.layout.idempotency(b""),
        };
        let mut keys = Vec::with_capacity(5 + versions.len());
        keys.extend([
            bytes(&self.layout.rec),
            bytes(&self.layout.log),
            bytes(&self.layout.pending),
            bytes(&self.layout.pendkeys),
            bytes(&idem),
            bytes(&self.layout.tail),
            bytes(&self.layout.seq),
            bytes(&self.layout.heads),
            bytes(&self.layout.nodes),
        ]);
        let heads = written.len() + conditions.deleted.len();
        let mut args =
            Vec::with_capacity(8 + 2 * (conditions.checks.len() + heads) + versions.len());
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
            text(conditions.checks.len().to_string()),
            text(heads.to_string()),
        ]);
        for (key, read) in &conditions.checks {
            args.push(bytes(key));
            args.push(match read {
                Some(id) => id_arg(*id),
                None => text(""),
            });
        }
        for key in written {
            args.push(bytes(key));
            args.push(text("1"));
        }
        for key in &conditions.deleted {
            args.push(bytes(key));
            args.push(text("0"));
        }
        for (key, value) in versions {
            keys.push(Value::Bytes(key));
            args.push(Value::Bytes(value));
        }
        Ok((keys, args))
    }

    /// Runs the commit script: the request that decides the commit.
    pub(super) async fn run_commit_script(
        &self,
        keys: Vec<Value>,
        args: Vec<Value>,
    ) -> Result<Committed, StorageError> {
        self.eval(&self.scripts.commit, keys, args)
            .await
            .and_then(parse_commit_reply)
            .map_err(|e| e.deciding(self.backend))
    }

    /// The standalone commit (and a cluster commit without versions): one script.
    pub(super) async fn commit_in_one(
        &self,
        batch: CommitBatch,
    ) -> Result<CommitOutcome, StorageError> {
        let id = batch.record.id;
        let written = written_keys(&batch.versions);
        let mut versions = Vec::with_capacity(batch.versions.len());
        for (key, value) in batch.versions {
            let key = self
                .layout
                .version(&key, id)
                .map_err(|e| self.io_error(e.to_string()))?;
            versions.push((key, value));
        }
        let (keys, args) =
            self.commit_request(&batch.record, &batch.conditions, &written, versions, false)?;
        match self.run_commit_script(keys, args).await? {
            Committed::Yes => Ok(CommitOutcome::Committed),
            Committed::Duplicate(existing) => Ok(CommitOutcome::Duplicate(existing)),
            Committed::Conflict(i) => Ok(CommitOutcome::Conflict(i)),
            Committed::Fenced => Err(self.fenced()),
            Committed::MarkerGone => {
                Err(self.io_error("unexpected reply to a commit without pending marker"))
            }
        }
    }

    /// The cluster commit: marker, versions per slot in parallel, then the record.
    pub(super) async fn commit_in_cluster(
        &self,
        batch: CommitBatch,
    ) -> Result<CommitOutcome, StorageError> {
        let backend = self.backend;
        let id = batch.record.id;
        let written = written_keys(&batch.versions);
        let mut keys = Vec::with_capacity(batch.versions.len());
        let mut values = Vec::with_capacity(batch.versions.len());
        for (key, value) in batch.versions {
            let key = self
                .layout
                .version(&key, id)
                .map_err(|e| self.io_error(e.to_string()))?;
            keys.push(key);
            values.push(value);
        }
        let idem = batch
            .record
            .idempotency_key
            .as_ref()
            .map(|k| self.layout.idempotency(k));
        let key_list = encode_key_list(&keys).map_err(|e| self.io_error(e.to_string()))?;

        // 1. The pending marker (and an early duplicate check).
        let mark = self
            .eval(
                &self.scripts.mark,
                vec![
                    bytes(&self.layout.pending),
                    bytes(&self.layout.pendkeys),
                    bytes(&idem.clone().unwrap_or_else(|| self.layout.idempotency(b""))),
                    bytes(&self.layout.rec),
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
            Committed::Duplicate(existing) => return Ok(CommitOutcome::Duplicate(existing)),
            Committed::MarkerGone => {
                return Err(self.io_error(format!(
                    "commit {id:?} was reclaimed as an orphan before it could finish; \
                     nothing was committed"
                )));
            }
            Committed::Fenced | Committed::Conflict(_) => {
                return Err(self.corrupt("unexpected reply to a pending marker"));
            }
        }

        // 2. The versions: one MSET per slot, in parallel. A failure here leaves no record
        // (the marker lets `reclaim_orphans` find what was written).
        let writes = self.by_slot(&keys).into_iter().map(|(slot, indexes)| {
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

        // 3. The record, if the marker is still live.
        let (script_keys, args) =
            self.commit_request(&batch.record, &batch.conditions, &written, Vec::new(), true)?;
        let refused = match self.run_commit_script(script_keys, args).await? {
            Committed::Yes => return Ok(CommitOutcome::Committed),
            Committed::Duplicate(existing) => Ok(CommitOutcome::Duplicate(existing)),
            Committed::Conflict(i) => Ok(CommitOutcome::Conflict(i)),
            Committed::Fenced => Err(self.fenced()),
            Committed::MarkerGone => {
                return Err(self.io_error(format!(
                    "commit {id:?} took longer than the orphan grace period and was reclaimed; \
                     nothing was committed"
                )))
            }
        };
        // Refused (a duplicate idempotency key, a conflict, a fence): the versions are
        // orphans. Delete them now (best effort); the marker goes only once they are gone.
        if self.delete_keys(&keys).await.is_ok() {
            let _ = self
                .eval(
                    &self.scripts.forget,
                    vec![bytes(&self.layout.pending), bytes(&self.layout.pendkeys)],
                    vec![id_arg(id)],
                )
                .await;
        }
        refused
    }

    /// The error of a commit or renewal refused because the node's lease expired.
    pub(super) fn fenced(&self) -> StorageError {
        StorageError::Fenced(crate::storage::Failure::new(
            self.backend,
            "this node's lease expired; it must rejoin before it commits",
        ))
    }
}

/// The distinct user keys of `versions`, whose heads a commit moves.
fn written_keys(versions: &[(Bytes, Bytes)]) -> Vec<Bytes> {
    let mut keys: Vec<Bytes> = versions.iter().map(|(k, _)| k.clone()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}
