//! [`Storage::commit`](crate::storage::Storage::commit): the fast path (one
//! `TransactWriteItems`) and the general path (a pending marker, batches, then one
//! `TransactWriteItems` with the record), as the module documentation describes them.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::api::{CallError, Reason};
use super::layout::{
    bin, bucket, build_failed, commit_pk, directory_sk, encode_marker, entry_id, idempotency_pk,
    item_size, key_item, key_of, now_ms, num, put_action, put_new_action, put_request, shard,
    split_payload, version_pk, Item, MarkerPlan, ABANDONED, DIRECTORY_PK, DONE, EXPIRES, ID,
    MARKER_PK, PK, SINGLE_SK, STARTED,
};
use super::retry::CallFailure;
use super::stats::bump;
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{record, CommitBatch, CommitOutcome, Failure, StorageError, VersionId};

/// `(shard, position)` claims of log positions.
type Claims = Vec<(usize, u64)>;

/// What a commit writes besides its versions, and the checks of its final transaction.
struct RecordItems {
    /// The encoded record's overflow chunks.
    chunks: Vec<Item>,
    /// The record's head (put only if it does not exist).
    head: Item,
    /// The idempotency entry (put only if it does not exist).
    idempotency: Option<Item>,
    /// The check of the committer's lease.
    lease: Option<TransactWriteItem>,
    /// The claims of the next log position of each shard and their entries (several
    /// nodes: two actions per shard, the head's update first), and the `(shard, position)`
    /// the commit was validated at.
    log: Option<(Vec<TransactWriteItem>, Claims)>,
}

/// Positions of the conditional actions in a commit's final transaction.
struct Conditional {
    record_at: usize,
    idempotency_at: Option<usize>,
    marker_at: Option<usize>,
    lease_at: Option<usize>,
    /// Where the claims of log positions start, and the `(shard, position)` validated at
    /// (for the token).
    log: Option<(usize, Claims)>,
}

impl DynamoDbStorage {
    /// Writes the directory entry of `id`'s commit partition, unless this process did already.
    async fn register_partition(&self, id: VersionId) -> Result<(), StorageError> {
        let entry = (bucket(id), shard(id));
        if self.registered.lock().contains(&entry) {
            return Ok(());
        }
        let item = key_item(DIRECTORY_PK.to_vec(), directory_sk(entry.0, entry.1));
        let action = put_action(&self.table, item)?;
        self.write_one(action)
            .await
            .map_err(|f| self.failed(f, false))?;
        self.registered.lock().insert(entry);
        Ok(())
    }

    /// The idempotency entry claiming `key` for the commit `id`, with its TTL.
    fn idempotency_item(&self, key: &[u8], id: VersionId) -> Item {
        let mut item = key_item(idempotency_pk(key), SINGLE_SK.to_vec());
        item.insert(ID.into(), bin(id.to_bytes()));
        let expires = SystemTime::now()
            .checked_add(self.idempotency_ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX / 2, |d| d.as_secs());
        item.insert(EXPIRES.into(), num(expires));
        item
    }

    /// [`Storage::commit`](crate::storage::Storage::commit): the fast path if the commit fits
    /// in one transaction, the general path otherwise.
    pub(super) async fn commit_now(
        &self,
        batch: CommitBatch,
    ) -> Result<CommitOutcome, StorageError> {
        // The shards of the log it claims, each at the position it was validated at.
        let claims: Option<Claims> = batch.conditions.log_at.as_ref().map(|at| {
            self.claimed_shards(&batch)
                .into_iter()
                .map(|s| (s, at.get(s)))
                .collect()
        });
        let CommitBatch {
            versions,
            record,
            conditions,
        } = batch;
        // One node at a time serves a table: its commits check its lease (see `lease`).
        let lease = conditions
            .node
            .map(|node| self.lease_check(node, conditions.at_ms))
            .transpose()?;
        let log = match &claims {
            Some(claims) => {
                let mut actions = Vec::with_capacity(2 * claims.len());
                for (shard, at) in claims {
                    actions.extend(self.log_claim(*shard, *at, record.id)?);
                }
                Some((actions, claims.clone()))
            }
            None => None,
        };
        let id = record.id;
        let chunk = self.limits.chunk_bytes;
        // One version per key: the last one, as every backend applies them in order.
        let mut latest: HashMap<Bytes, usize> = HashMap::with_capacity(versions.len());
        for (i, (key, _)) in versions.iter().enumerate() {
            latest.insert(key.clone(), i);
        }
        let sk = id.to_bytes().to_vec();
        let mut version_items = Vec::with_capacity(versions.len());
        let mut plan = Vec::with_capacity(versions.len());
        for (i, (key, value)) in versions.iter().enumerate() {
            if latest.get(key) != Some(&i) {
                continue;
            }
            let (head, chunks) = split_payload(version_pk(key), sk.clone(), value, chunk, vec![]);
            plan.push((key.to_vec(), chunks.len() as u32));
            version_items.push(head);
            version_items.extend(chunks);
        }
        let encoded = record::encode(BACKEND, &record)?;
        let (record_head, record_chunks) = split_payload(
            commit_pk(id),
            sk.clone(),
            &encoded,
            chunk,
            claims
                .map(|claims| {
                    let claimed: Vec<(usize, u64)> =
                        claims.iter().map(|(s, at)| (*s, at + 1)).collect();
                    Self::claims_attribute(&claimed)
                })
                .into_iter()
                .collect(),
        );
        let idempotency = record
            .idempotency_key
            .as_ref()
            .map(|key| self.idempotency_item(key, id));

        self.register_partition(id).await?;

        let count = version_items.len()
            + record_chunks.len()
            + 1
            + usize::from(idempotency.is_some())
            + usize::from(lease.is_some())
            + log.as_ref().map_or(0, |(actions, _)| actions.len());
        let bytes: usize = version_items
            .iter()
            .chain(&record_chunks)
            .chain(std::iter::once(&record_head))
            .chain(idempotency.iter())
            .map(item_size)
            .sum();
        let fast = count <= self.limits.txn_max_items && bytes <= self.limits.txn_max_bytes;
        let plan = MarkerPlan {
            record_chunks: record_chunks.len() as u32,
            versions: plan,
        };
        let record = RecordItems {
            chunks: record_chunks,
            head: record_head,
            idempotency,
            lease,
            log,
        };
        if fast {
            let outcome = self.commit_fast(id, version_items, record).await?;
            bump(&self.counters.fast_commits, 1);
            return Ok(outcome);
        }
        let outcome = self.commit_general(id, plan, version_items, record).await?;
        bump(&self.counters.general_commits, 1);
        Ok(outcome)
    }

    /// One `TransactWriteItems` with everything.
    async fn commit_fast(
        &self,
        id: VersionId,
        versions: Vec<Item>,
        record: RecordItems,
    ) -> Result<CommitOutcome, StorageError> {
        let mut actions = Vec::with_capacity(versions.len() + record.chunks.len() + 3);
        for item in versions.into_iter().chain(record.chunks) {
            actions.push(put_action(&self.table, item)?);
        }
        let record_at = actions.len();
        actions.push(put_new_action(&self.table, record.head)?);
        let idempotency_at = match record.idempotency {
            Some(item) => {
                actions.push(put_new_action(&self.table, item)?);
                Some(actions.len() - 1)
            }
            None => None,
        };
        let lease_at = record.lease.map(|check| {
            actions.push(check);
            actions.len() - 1
        });
        let log = record.log.map(|(claim, validated)| {
            let at = actions.len();
            actions.extend(claim);
            (at, validated)
        });
        let at = Conditional {
            record_at,
            idempotency_at,
            marker_at: None,
            lease_at,
            log,
        };
        self.final_transaction(id, actions, "f", at).await
    }

    /// Sends a commit's transaction and interprets its outcome, from the positions of its
    /// conditional actions.
    async fn final_transaction(
        &self,
        id: VersionId,
        actions: Vec<TransactWriteItem>,
        kind: &str,
        at: Conditional,
    ) -> Result<CommitOutcome, StorageError> {
        let Conditional {
            record_at,
            idempotency_at,
            marker_at,
            lease_at,
            log,
        } = at;
        let token = request_token(kind, id, log.as_ref().map(|(_, validated)| &validated[..]));
        let mut ambiguous = false;
        // A duplicate whose entry disappears before we read it (deleted with its commit) lets
        // the commit try again; bounded, as each round needs another deletion.
        for _ in 0..3 {
            let result = self
                .retrying("TransactWriteItems", || {
                    let attempt = self.api.transact_write(actions.clone(), token.clone());
                    async move {
                        match attempt.await {
                            Err(CallError::Canceled(reasons)) => Err(cancel_to_retry(reasons)),
                            other => other,
                        }
                    }
                })
                .await;
            let reasons = match result {
                Ok(()) => return Ok(CommitOutcome::Committed),
                Err(CallFailure {
                    last: CallError::Canceled(reasons),
                    ambiguous: earlier,
                }) => {
                    ambiguous |= earlier;
                    reasons
                }
                Err(mut failure) => {
                    failure.ambiguous |= ambiguous;
                    return Err(self.failed(failure, true));
                }
            };
            let failed = |at: Option<usize>| {
                at.and_then(|i| reasons.get(i))
                    .is_some_and(Reason::condition_failed)
            };
            if failed(Some(record_at)) {
                // Only this commit writes a record with this id: an earlier attempt applied.
                return Ok(CommitOutcome::Committed);
            }
            if failed(lease_at) {
                return Err(self.fenced());
            }
            let moved = log.as_ref().is_some_and(|(at, claims)| {
                // Each claim is two actions, the head's update first.
                (0..claims.len()).any(|k| failed(Some(at + 2 * k)))
            });
            if moved {
                bump(&self.counters.log_moved, 1);
                return Ok(CommitOutcome::Moved);
            }
            if failed(marker_at) {
                return Err(StorageError::Io(Failure::new(
                    BACKEND,
                    format!("commit {id:?} was abandoned by orphan clean-up before it completed"),
                )));
            }
            if failed(idempotency_at) {
                let returned = idempotency_at
                    .and_then(|i| reasons.get(i))
                    .and_then(|r| r.item.as_ref())
                    .map(entry_id)
                    .transpose()?;
                let existing = match returned {
                    Some(existing) => Some(existing),
                    None => {
                        let key = actions
                            .get(idempotency_at.unwrap_or(0))
                            .and_then(|a| a.put.as_ref())
                            .map(|p| p.item.clone())
                            .ok_or_else(|| {
                                StorageError::Io(Failure::new(BACKEND, "lost idempotency action"))
                            })?;
                        self.get_item(key_of(&key))
                            .await?
                            .map(|entry| entry_id(&entry))
                            .transpose()?
                    }
                };
                match existing {
                    Some(existing) if existing == id => return Ok(CommitOutcome::Committed),
                    Some(existing) => {
                        bump(&self.counters.duplicates, 1);
                        return Ok(CommitOutcome::Duplicate(existing));
                    }
                    None => continue,
                }
            }
            return Err(self.failed(
                CallFailure {
                    last: CallError::Canceled(reasons),
                    ambiguous,
                },
                true,
            ));
        }
        Err(StorageError::Unavailable(Failure::new(
            BACKEND,
            format!("commit {id:?}: its idempotency key keeps changing owner"),
        )))
    }

    /// Pending marker, batches, then one transaction with the record, the idempotency entry
    /// and the marker's `done` flag.
    async fn commit_general(
        &self,
        id: VersionId,
        plan: MarkerPlan,
        versions: Vec<Item>,
        record: RecordItems,
    ) -> Result<CommitOutcome, StorageError> {
        let RecordItems {
            chunks: record_chunks,
            head: record_head,
            idempotency,
            lease,
            log,
        } = record;
        let sk = id.to_bytes().to_vec();
        if let Some(item) = &idempotency {
            if let Some(existing) = self.read_idempotent_item(item).await? {
                bump(&self.counters.duplicates, 1);
                return Ok(CommitOutcome::Duplicate(existing));
            }
        }

        // The marker first (its head, then its key list's chunks), so that every version
        // written below is listed by a durable marker.
        let payload = encode_marker(&plan)?;
        let (marker_head, marker_chunks) = split_payload(
            MARKER_PK.to_vec(),
            sk.clone(),
            &payload,
            self.limits.chunk_bytes,
            vec![(STARTED, num(now_ms()))],
        );
        let marker_chunk_count = marker_chunks.len() as u32;
        self.write_one(put_action(&self.table, marker_head)?)
            .await
            .map_err(|f| self.failed(f, false))?;
        self.batch_write(
            marker_chunks
                .into_iter()
                .map(put_request)
                .collect::<Result<_, _>>()?,
        )
        .await?;

        self.batch_write(
            versions
                .into_iter()
                .chain(record_chunks)
                .map(put_request)
                .collect::<Result<_, _>>()?,
        )
        .await?;

        let mut actions = vec![put_new_action(&self.table, record_head)?];
        let idempotency_at = match idempotency {
            Some(item) => {
                actions.push(put_new_action(&self.table, item)?);
                Some(1)
            }
            None => None,
        };
        let done = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key_item(MARKER_PK.to_vec(), sk.clone())))
            .update_expression("SET #d = :t")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#ab)")
            .expression_attribute_names("#d", DONE)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#ab", ABANDONED)
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .build()
            .map_err(build_failed)?;
        actions.push(TransactWriteItem::builder().update(done).build());
        let marker_at = actions.len() - 1;
        let lease_at = lease.map(|check| {
            actions.push(check);
            actions.len() - 1
        });
        let log = log.map(|(claim, validated)| {
            let at = actions.len();
            actions.extend(claim);
            (at, validated)
        });
        let outcome = self
            .final_transaction(
                id,
                actions,
                "g",
                Conditional {
                    record_at: 0,
                    idempotency_at,
                    marker_at: Some(marker_at),
                    lease_at,
                    log,
                },
            )
            .await;
        let outcome = match outcome {
            Err(StorageError::Fenced(f)) => {
                if let Err(e) = self.abandon(id).await {
                    tracing::warn!(
                        ?id,
                        "dynamodb: fenced commit's versions left for clean-up: {e}"
                    );
                }
                return Err(StorageError::Fenced(f));
            }
            other => other?,
        };
        match outcome {
            CommitOutcome::Committed => {
                if let Err(e) = self.delete_marker(id, marker_chunk_count).await {
                    tracing::warn!(?id, "dynamodb: pending marker left for clean-up: {e}");
                }
            }
            // Sent again at a later log position: the marker and versions serve again.
            CommitOutcome::Moved => {}
            CommitOutcome::Duplicate(_) | CommitOutcome::Conflict(_) => {
                if let Err(e) = self.abandon(id).await {
                    tracing::warn!(?id, "dynamodb: duplicate's versions left for clean-up: {e}");
                }
            }
        }
        Ok(outcome)
    }

    /// The id of the commit holding the idempotency entry `item` names, read consistently.
    async fn read_idempotent_item(&self, item: &Item) -> Result<Option<VersionId>, StorageError> {
        self.get_item(key_of(item))
            .await?
            .map(|entry| entry_id(&entry))
            .transpose()
    }
}

/// The client request token of a commit's transaction: derived from its id, so a retry of
/// the same request carries the same token. At most 36 characters.
pub(super) fn request_token(kind: &str, id: VersionId, log_at: Option<&[(usize, u64)]>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(id.to_bytes());
    // A commit sent again at another log position is another request.
    match log_at {
        None => {}
        Some([(0, at)]) => hasher.update(at.to_be_bytes()),
        Some(claims) => {
            for (shard, at) in claims {
                hasher.update((*shard as u64).to_be_bytes());
                hasher.update(at.to_be_bytes());
            }
        }
    }
    let digest = hasher.finalize();
    let mut token = format!("aft{kind}-");
    for byte in &digest[..16] {
        token.push_str(&format!("{byte:02x}"));
    }
    token.truncate(36);
    token
}

/// A cancellation that only conflicts or throttling caused is retried like a throttled
/// request; others are the commit's answer.
fn cancel_to_retry(reasons: Vec<Reason>) -> CallError {
    let transient = |code: &str| {
        matches!(
            code,
            "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded"
        )
    };
    let any_transient = reasons.iter().any(|r| transient(&r.code));
    let only_transient = reasons
        .iter()
        .all(|r| r.code == "None" || transient(&r.code));
    if any_transient && only_transient {
        let conflict = reasons.iter().any(|r| r.code == "TransactionConflict");
        CallError::Retry {
            message: format!(
                "TransactWriteItems cancelled: {}",
                reasons
                    .iter()
                    .map(|r| r.code.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            throttled: !conflict,
            conflict,
            ambiguous: false,
            cause: None,
        }
    } else {
        CallError::Canceled(reasons)
    }
}
