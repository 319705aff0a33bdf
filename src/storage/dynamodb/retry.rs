//! The one retry loop every request goes through (exponential backoff with full jitter,
//! counted in [`DynamoDbStats`](super::DynamoDbStats)), what a call that failed after its
//! retries returns, and the requests built on it: single items, batches of 25 writes or 100
//! reads sent several at once until nothing is left unprocessed, and queries of one
//! partition.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::types::{TransactWriteItem, WriteRequest};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::api::{self, CallError, QueryRequest};
use super::layout::{corrupt, delete_request, key_bytes, Item};
use super::stats::bump;
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{Failure, StorageError};

/// Items per `BatchWriteItem` (DynamoDB's limit).
pub(super) const BATCH_WRITE_ITEMS: usize = 25;

/// Keys per `BatchGetItem` (DynamoDB's limit).
pub(super) const BATCH_GET_KEYS: usize = 100;

/// Batch requests of one call in flight at once.
pub(super) const CONCURRENCY: usize = 8;

/// Items per `Query` page we ask for.
pub(super) const QUERY_PAGE: i32 = 1000;

/// First backoff delay, doubled at each attempt, up to [`MAX_BACKOFF`].
pub(super) const BASE_BACKOFF: Duration = Duration::from_millis(20);

/// Longest backoff delay.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a call failed after its retries, as the retry loop saw it.
pub(super) struct CallFailure {
    /// The last attempt's error.
    pub(super) last: CallError,
    /// Some attempt may have been applied.
    pub(super) ambiguous: bool,
}

impl DynamoDbStorage {
    /// Runs `attempt` until it succeeds, fails without being retryable, or
    /// `max_attempts` attempts failed; backs off exponentially with full jitter in between.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        operation: &str,
        mut attempt: F,
    ) -> Result<T, CallFailure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut ambiguous = false;
        let mut tries = 0;
        loop {
            tries += 1;
            bump(&self.counters.requests, 1);
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if let CallError::Retry {
                message,
                throttled,
                conflict,
                ambiguous: maybe,
                ..
            } = &error
            {
                ambiguous |= *maybe;
                if *throttled {
                    bump(&self.counters.throttled, 1);
                } else if *conflict {
                    bump(&self.counters.conflicts, 1);
                } else {
                    bump(&self.counters.transient_errors, 1);
                }
                if tries < self.max_attempts {
                    bump(&self.counters.retries, 1);
                    tracing::debug!(operation, attempt = tries, "dynamodb: retrying: {message}");
                    tokio::time::sleep(self.backoff(tries)).await;
                    continue;
                }
                bump(&self.counters.exhausted, 1);
                tracing::warn!(
                    operation,
                    attempts = tries,
                    "dynamodb: giving up: {message}"
                );
            }
            return Err(CallFailure {
                last: error,
                ambiguous,
            });
        }
    }

    /// Full jitter: uniform in [0, min(MAX_BACKOFF, BASE_BACKOFF * 2^attempt)].
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let cap = BASE_BACKOFF
            .saturating_mul(1u32 << attempt.min(16))
            .min(MAX_BACKOFF);
        let random = {
            let mut state = self.jitter.lock();
            // xorshift64
            let mut x = *state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *state = x;
            x
        };
        let micros = cap.as_micros() as u64;
        Duration::from_micros(random % micros.max(1) + 1)
    }

    /// The [`StorageError`] for a call that failed. `commit`: the call was a commit's
    /// transaction, whose application may be unknown.
    pub(super) fn failed(&self, failure: CallFailure, commit: bool) -> StorageError {
        if commit && failure.ambiguous {
            let (message, cause) = match failure.last {
                CallError::Retry { message, cause, .. } | CallError::Fatal { message, cause } => {
                    (message, cause)
                }
                other => (format!("{other:?}"), None),
            };
            return StorageError::OutcomeUnknown(api::failure(message, cause));
        }
        match failure.last {
            CallError::Retry { message, cause, .. } => StorageError::Unavailable(api::failure(
                format!("{message} (gave up after {} attempts)", self.max_attempts),
                cause,
            )),
            CallError::Fatal { message, cause } => StorageError::Io(api::failure(message, cause)),
            CallError::ConditionFailed(_) => StorageError::Io(Failure::new(
                BACKEND,
                "unexpected conditional check failure",
            )),
            CallError::Canceled(reasons) => StorageError::Io(Failure::new(
                BACKEND,
                format!(
                    "transaction cancelled: {}",
                    reasons
                        .iter()
                        .map(|r| r.code.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    // --- building blocks ----------------------------------------------------------------------

    /// `GetItem` (consistent), retried.
    pub(super) async fn get_item(&self, key: Item) -> Result<Option<Item>, StorageError> {
        self.retrying("GetItem", || self.api.get(key.clone()))
            .await
            .map_err(|f| self.failed(f, false))
    }

    /// `PutItem`, `UpdateItem` or `DeleteItem`, retried; a failed condition is left to the
    /// caller to interpret.
    pub(super) async fn write_one(&self, action: TransactWriteItem) -> Result<(), CallFailure> {
        let operation = if action.put.is_some() {
            "PutItem"
        } else if action.update.is_some() {
            "UpdateItem"
        } else {
            "DeleteItem"
        };
        self.retrying(operation, || self.api.write(action.clone()))
            .await
    }

    /// Deletes the items with these keys with [`Self::batch_write`] (nothing to do if there
    /// are none).
    pub(super) async fn delete_items(&self, keys: Vec<Item>) -> Result<(), StorageError> {
        if keys.is_empty() {
            return Ok(());
        }
        let requests = keys
            .into_iter()
            .map(delete_request)
            .collect::<Result<_, _>>()?;
        self.batch_write(requests).await
    }

    /// Writes `requests` with `BatchWriteItem`, 25 per request and several requests at once,
    /// sending `UnprocessedItems` again after a backoff until none are left.
    pub(super) async fn batch_write(
        &self,
        requests: Vec<WriteRequest>,
    ) -> Result<(), StorageError> {
        let batches: Vec<Vec<WriteRequest>> = requests
            .chunks(BATCH_WRITE_ITEMS)
            .map(<[WriteRequest]>::to_vec)
            .collect();
        stream::iter(batches)
            .map(|batch| self.batch_write_one(batch))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    async fn batch_write_one(&self, mut pending: Vec<WriteRequest>) -> Result<(), StorageError> {
        let mut stalled = 0;
        loop {
            let unprocessed = self
                .retrying("BatchWriteItem", || self.api.batch_write(pending.clone()))
                .await
                .map_err(|f| self.failed(f, false))?;
            if unprocessed.is_empty() {
                return Ok(());
            }
            bump(&self.counters.unprocessed_items, unprocessed.len() as u64);
            let progress = unprocessed.len() < pending.len();
            self.next_pass(
                "BatchWriteItem",
                "items",
                &mut stalled,
                progress,
                unprocessed.len(),
            )
            .await?;
            pending = unprocessed;
        }
    }

    /// Between two passes of a batch call that left `left` entries unprocessed: counts
    /// the passes in a row that made no `progress`, gives up once `max_attempts` did, and
    /// otherwise backs off before the next pass.
    async fn next_pass(
        &self,
        call: &str,
        what: &str,
        stalled: &mut u32,
        progress: bool,
        left: usize,
    ) -> Result<(), StorageError> {
        if progress {
            *stalled = 0;
        } else {
            *stalled += 1;
            if *stalled >= self.max_attempts {
                bump(&self.counters.exhausted, 1);
                return Err(StorageError::Unavailable(Failure::new(
                    BACKEND,
                    format!(
                        "{call} left {left} {what} unprocessed after {} attempts",
                        self.max_attempts
                    ),
                )));
            }
        }
        bump(&self.counters.retries, 1);
        tokio::time::sleep(self.backoff((*stalled).max(1))).await;
        Ok(())
    }

    /// Reads `keys` (consistently) with `BatchGetItem`, 100 per request and several requests
    /// at once, asking again for `UnprocessedKeys`. Returns the items found, by key.
    pub(super) async fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: Option<&'static [&'static str]>,
    ) -> Result<HashMap<(Vec<u8>, Vec<u8>), Item>, StorageError> {
        let batches: Vec<Vec<Item>> = keys.chunks(BATCH_GET_KEYS).map(<[Item]>::to_vec).collect();
        let pages: Vec<Vec<Item>> = stream::iter(batches)
            .map(|batch| self.batch_get_one(batch, projection))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut found = HashMap::new();
        for item in pages.into_iter().flatten() {
            let key = key_bytes(&item).ok_or_else(|| corrupt("item without binary keys".into()))?;
            found.insert(key, item);
        }
        Ok(found)
    }

    async fn batch_get_one(
        &self,
        mut pending: Vec<Item>,
        projection: Option<&'static [&'static str]>,
    ) -> Result<Vec<Item>, StorageError> {
        let mut found = Vec::new();
        let mut stalled = 0;
        loop {
            let (items, unprocessed) = self
                .retrying("BatchGetItem", || {
                    self.api.batch_get(pending.clone(), projection)
                })
                .await
                .map_err(|f| self.failed(f, false))?;
            let progress = !items.is_empty();
            found.extend(items);
            if unprocessed.is_empty() {
                return Ok(found);
            }
            bump(&self.counters.unprocessed_keys, unprocessed.len() as u64);
            self.next_pass(
                "BatchGetItem",
                "keys",
                &mut stalled,
                progress,
                unprocessed.len(),
            )
            .await?;
            pending = unprocessed;
        }
    }

    /// Every item of a partition (after `after`, or from `from`), in sort-key order, up to
    /// `limit`.
    pub(super) async fn query_all(
        &self,
        pk: Vec<u8>,
        after: Option<Vec<u8>>,
        from: Option<Vec<u8>>,
        projection: Option<&'static [&'static str]>,
        limit: usize,
    ) -> Result<Vec<Item>, StorageError> {
        let mut items = Vec::new();
        let mut start = None;
        while items.len() < limit {
            let page_limit = (limit - items.len()).min(QUERY_PAGE as usize) as i32;
            let request = QueryRequest {
                pk: pk.clone(),
                after: after.clone(),
                from: from.clone(),
                projection,
                limit: page_limit,
                start: start.take(),
            };
            let (page, next) = self
                .retrying("Query", || self.api.query(request.clone()))
                .await
                .map_err(|f| self.failed(f, false))?;
            items.extend(page);
            match next {
                Some(next) => start = Some(next),
                None => break,
            }
        }
        items.truncate(limit);
        Ok(items)
    }
}
