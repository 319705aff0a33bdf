//! The writer lease: one aft node at a time serves a table. A node takes the lease item
//! when it starts (refused while another node's lease runs), renews it, and every commit
//! checks it in the same transaction, so that a node that lost it (paused past its expiry
//! while another took over) can no longer commit. Expiry is judged by the committing or
//! renewing node's clock (DynamoDB conditions cannot read the server's), so the nodes'
//! clocks must agree to well within the lease.

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, TransactWriteItem};

use super::api::CallError;
use super::layout::{bin, build_failed, key_item, now_ms, num, put_action, Item, PK};
use super::retry::CallFailure;
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{Beat, Failure, Heartbeat, Member, NodeId, StorageError};

/// `pk` of the lease item (no other item's `pk` starts with `n`).
pub(super) const LEASE_PK: &[u8] = b"n";
/// `sk` of the lease item.
const LEASE_SK: &[u8] = b"writer";
/// The holder's node id (16 bytes).
const HOLDER: &str = "nd";
/// The lease's expiry, ms since the epoch by the holder's clock.
const EXPIRES_MS: &str = "x";
/// The holder's address.
const ADDRESS: &str = "a";

fn lease_key() -> Item {
    key_item(LEASE_PK.to_vec(), LEASE_SK.to_vec())
}

fn node_value(node: NodeId) -> AttributeValue {
    bin(node.0.to_be_bytes().to_vec())
}

/// Who holds the lease, from its item, for messages.
fn describe(item: Option<&Item>) -> String {
    let Some(item) = item else {
        return "another aft node".into();
    };
    let node = item
        .get(HOLDER)
        .and_then(|v| v.as_b().ok())
        .and_then(|b| <[u8; 16]>::try_from(b.as_ref()).ok())
        .map(|b| NodeId(u128::from_be_bytes(b)).to_string())
        .unwrap_or_else(|| "?".into());
    let address = item
        .get(ADDRESS)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default();
    let left = item
        .get(EXPIRES_MS)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |x| x.saturating_sub(now_ms()));
    format!("aft node {node} at {address} (its lease runs {left} ms more)")
}

impl DynamoDbStorage {
    /// [`Storage::heartbeat`](crate::storage::Storage::heartbeat): takes, renews or gives up
    /// the writer lease. The live nodes are the caller alone.
    pub(super) async fn heartbeat_now(
        &self,
        beat: Heartbeat,
    ) -> Result<Option<Vec<Member>>, StorageError> {
        let now = now_ms();
        let lease_ms = u64::try_from(beat.lease.as_millis()).unwrap_or(u64::MAX / 4);
        let action = match beat.kind {
            Beat::Leave => {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(lease_key()))
                    .condition_expression("#nd = :me")
                    .expression_attribute_names("#nd", HOLDER)
                    .expression_attribute_values(":me", node_value(beat.node))
                    .build()
                    .map_err(build_failed)?;
                return match self
                    .write_one(TransactWriteItem::builder().delete(delete).build())
                    .await
                {
                    Ok(())
                    | Err(CallFailure {
                        last: CallError::ConditionFailed(_),
                        ..
                    }) => Ok(Some(Vec::new())),
                    Err(f) => Err(self.failed(f, false)),
                };
            }
            Beat::Join | Beat::Renew => {
                let mut item = lease_key();
                item.insert(HOLDER.into(), node_value(beat.node));
                item.insert(EXPIRES_MS.into(), num(now.saturating_add(lease_ms)));
                item.insert(ADDRESS.into(), AttributeValue::S(beat.address.clone()));
                let condition = if beat.kind == Beat::Join {
                    "attribute_not_exists(#pk) OR #x < :now OR #nd = :me"
                } else {
                    "#nd = :me AND #x >= :now"
                };
                let mut action = put_action(&self.table, item)?;
                if let Some(put) = action.put.as_mut() {
                    put.condition_expression = Some(condition.into());
                    let names = put
                        .expression_attribute_names
                        .get_or_insert_with(Default::default);
                    if beat.kind == Beat::Join {
                        names.insert("#pk".into(), PK.into());
                    }
                    names.insert("#x".into(), EXPIRES_MS.into());
                    names.insert("#nd".into(), HOLDER.into());
                    let values = put
                        .expression_attribute_values
                        .get_or_insert_with(Default::default);
                    values.insert(":now".into(), num(now));
                    values.insert(":me".into(), node_value(beat.node));
                }
                action
            }
        };
        match self.write_one(action).await {
            Ok(()) => Ok(Some(vec![Member {
                node: beat.node,
                watermark: beat.watermark,
                oldest_clock_ms: beat.oldest_clock_ms,
                address: beat.address,
                expires_in_ms: lease_ms,
            }])),
            Err(CallFailure {
                last: CallError::ConditionFailed(holder),
                ..
            }) => Err(StorageError::Fenced(Failure::new(
                BACKEND,
                if beat.kind == Beat::Join {
                    format!(
                        "the table is served by {}; one aft node at a time serves a DynamoDB \
                         table (this one takes over once that lease expires)",
                        describe(holder.as_ref())
                    )
                } else {
                    format!(
                        "this node's lease expired and was taken by {}",
                        describe(holder.as_ref())
                    )
                },
            ))),
            Err(f) => Err(self.failed(f, false)),
        }
    }

    /// The action that makes a commit conditional on `node` holding the lease, live at
    /// `at_ms` (the commit's start: the same in every resend, whose request must be
    /// identical for DynamoDB to recognise it by its token). Another node that took the
    /// lease over is the fence; expiry alone matters only while nobody did.
    pub(super) fn lease_check(
        &self,
        node: NodeId,
        at_ms: u64,
    ) -> Result<TransactWriteItem, StorageError> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(lease_key()))
            .condition_expression("#nd = :me AND #x >= :now")
            .expression_attribute_names("#nd", HOLDER)
            .expression_attribute_names("#x", EXPIRES_MS)
            .expression_attribute_values(":me", node_value(node))
            .expression_attribute_values(":now", num(at_ms))
            .build()
            .map_err(build_failed)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// The error of a commit refused because this node's lease is gone.
    pub(super) fn fenced(&self) -> StorageError {
        StorageError::Fenced(Failure::new(
            BACKEND,
            "this node no longer holds the table's lease; nothing was committed",
        ))
    }
}
