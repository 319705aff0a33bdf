//! An [`Api`] that injects faults into the real one, and one with no table behind it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::types::{TransactWriteItem, WriteRequest};
use tokio::sync::Notify;

use super::*;

/// The requests of [`Api`], as [`FaultApi`] counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    BatchWrite,
    BatchGet,
    Transact,
    Query,
    Get,
    Write,
}

type CrashRule = Box<dyn Fn(Call, u64) -> bool + Send + Sync>;

/// Wraps the real requests: crashes (every call fails from a chosen call on), throttles,
/// loses replies after applying, leaves items unprocessed, or holds transactions.
pub(super) struct FaultApi {
    inner: Arc<dyn Api>,
    crashed: AtomicBool,
    crash_when: parking_lot::Mutex<Option<CrashRule>>,
    calls: parking_lot::Mutex<HashMap<String, u64>>,
    pub(super) throttle_next: AtomicU64,
    pub(super) lose_replies: AtomicU64,
    pub(super) half_unprocessed: AtomicBool,
    /// Every batch is answered entirely unprocessed (no progress at all).
    pub(super) all_unprocessed: AtomicBool,
    pub(super) hold: parking_lot::Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
}

impl FaultApi {
    pub(super) fn new(inner: Arc<dyn Api>) -> Arc<FaultApi> {
        Arc::new(FaultApi {
            inner,
            crashed: AtomicBool::new(false),
            crash_when: parking_lot::Mutex::new(None),
            calls: parking_lot::Mutex::new(HashMap::new()),
            throttle_next: AtomicU64::new(0),
            lose_replies: AtomicU64::new(0),
            half_unprocessed: AtomicBool::new(false),
            all_unprocessed: AtomicBool::new(false),
            hold: parking_lot::Mutex::new(None),
        })
    }

    pub(super) fn crash_when(&self, rule: impl Fn(Call, u64) -> bool + Send + Sync + 'static) {
        *self.crash_when.lock() = Some(Box::new(rule));
    }

    /// Decides what happens to a call before it is sent.
    fn before(&self, call: Call) -> Result<(), CallError> {
        let n = {
            let mut calls = self.calls.lock();
            let n = calls.entry(format!("{call:?}")).or_insert(0);
            *n += 1;
            *n
        };
        if let Some(rule) = &*self.crash_when.lock() {
            if rule(call, n) {
                self.crashed.store(true, Ordering::SeqCst);
            }
        }
        if self.crashed.load(Ordering::SeqCst) {
            return Err(CallError::fatal("injected crash"));
        }
        let throttled = self
            .throttle_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if throttled {
            return Err(CallError::Retry {
                message: "injected throttling".into(),
                throttled: true,
                conflict: false,
                ambiguous: false,
                cause: None,
            });
        }
        Ok(())
    }

    /// Takes off `batch` what is to be answered as unprocessed: all of it with
    /// `all_unprocessed` set, the second half of a batch of two or more with
    /// `half_unprocessed`.
    fn keep_back<T>(&self, batch: &mut Vec<T>) -> Vec<T> {
        if self.all_unprocessed.load(Ordering::SeqCst) {
            std::mem::take(batch)
        } else if self.half_unprocessed.load(Ordering::SeqCst) && batch.len() > 1 {
            batch.split_off(batch.len() / 2)
        } else {
            Vec::new()
        }
    }
}

impl Api for FaultApi {
    fn batch_write(
        &self,
        mut requests: Vec<WriteRequest>,
    ) -> BoxFuture<'_, Result<Vec<WriteRequest>, CallError>> {
        Box::pin(async move {
            self.before(Call::BatchWrite)?;
            let kept = self.keep_back(&mut requests);
            if requests.is_empty() {
                return Ok(kept);
            }
            let mut unprocessed = self.inner.batch_write(requests).await?;
            unprocessed.extend(kept);
            Ok(unprocessed)
        })
    }

    fn batch_get(
        &self,
        mut keys: Vec<Item>,
        projection: Option<&'static [&'static str]>,
    ) -> BoxFuture<'_, Result<Fetched, CallError>> {
        Box::pin(async move {
            self.before(Call::BatchGet)?;
            let kept = self.keep_back(&mut keys);
            if keys.is_empty() {
                return Ok((Vec::new(), kept));
            }
            let (found, mut unprocessed) = self.inner.batch_get(keys, projection).await?;
            unprocessed.extend(kept);
            Ok((found, unprocessed))
        })
    }

    fn transact_write(
        &self,
        items: Vec<TransactWriteItem>,
        token: String,
    ) -> BoxFuture<'_, Result<(), CallError>> {
        Box::pin(async move {
            let hold = self.hold.lock().clone();
            if let Some((reached, release)) = hold {
                reached.notify_one();
                release.notified().await;
            }
            self.before(Call::Transact)?;
            let result = self.inner.transact_write(items, token).await;
            let lose = self
                .lose_replies
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lose && result.is_ok() {
                return Err(CallError::Retry {
                    message: "injected: reply lost".into(),
                    throttled: false,
                    conflict: false,
                    ambiguous: true,
                    cause: None,
                });
            }
            result
        })
    }

    fn query(&self, request: QueryRequest) -> BoxFuture<'_, Result<Page, CallError>> {
        Box::pin(async move {
            self.before(Call::Query)?;
            self.inner.query(request).await
        })
    }

    fn get(&self, key: Item) -> BoxFuture<'_, Result<Option<Item>, CallError>> {
        Box::pin(async move {
            self.before(Call::Get)?;
            self.inner.get(key).await
        })
    }

    fn write(&self, write: TransactWriteItem) -> BoxFuture<'_, Result<(), CallError>> {
        Box::pin(async move {
            self.before(Call::Write)?;
            self.inner.write(write).await
        })
    }
}

/// An Api with no table behind it.
pub(super) struct NoApi;

impl Api for NoApi {
    fn batch_write(
        &self,
        _: Vec<WriteRequest>,
    ) -> BoxFuture<'_, Result<Vec<WriteRequest>, CallError>> {
        Box::pin(async { Err(CallError::fatal("no api")) })
    }
    fn batch_get(
        &self,
        _: Vec<Item>,
        _: Option<&'static [&'static str]>,
    ) -> BoxFuture<'_, Result<Fetched, CallError>> {
        Box::pin(async { Err(CallError::fatal("no api")) })
    }
    fn transact_write(
        &self,
        _: Vec<TransactWriteItem>,
        _: String,
    ) -> BoxFuture<'_, Result<(), CallError>> {
        Box::pin(async { Err(CallError::fatal("no api")) })
    }
    fn query(&self, _: QueryRequest) -> BoxFuture<'_, Result<Page, CallError>> {
        Box::pin(async { Err(CallError::fatal("no api")) })
    }
    fn get(&self, _: Item) -> BoxFuture<'_, Result<Option<Item>, CallError>> {
        Box::pin(async { Err(CallError::fatal("no api")) })
    }
    fn write(&self, _: TransactWriteItem) -> BoxFuture<'_, Result<(), CallError>> {
        Box::pin(async { Err(CallError::fatal("no api")) })
    }
}
