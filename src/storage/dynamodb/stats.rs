//! What the backend counts: [`DynamoDbStats`], from counters every request updates.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the backend has done and seen, for INFO and monitoring. Counters only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DynamoDbStats {
    /// Requests sent (every attempt counts).
    pub requests: u64,
    /// Attempts refused by throttling (`ProvisionedThroughputExceeded`, `ThrottlingException`,
    /// `RequestLimitExceeded`, or throttled transaction items).
    pub throttled: u64,
    /// Attempts that failed with a 5xx, a timeout or a connection error.
    pub transient_errors: u64,
    /// `TransactWriteItems` attempts cancelled by a conflicting transaction.
    pub conflicts: u64,
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// Calls that failed because every attempt failed.
    pub exhausted: u64,
    /// Items returned in `UnprocessedItems` and sent again.
    pub unprocessed_items: u64,
    /// Keys returned in `UnprocessedKeys` and asked again.
    pub unprocessed_keys: u64,
    /// Commits written by one `TransactWriteItems`.
    pub fast_commits: u64,
    /// Commits written through a pending marker and batches.
    pub general_commits: u64,
    /// Commits that found their idempotency key taken.
    pub duplicates: u64,
    /// Orphan versions deleted by clean-up.
    pub orphans_reclaimed: u64,
    /// Commits refused because another node claimed the log position first.
    pub log_moved: u64,
}

/// The live counters behind [`DynamoDbStats`] (one field each, same meaning).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) transient_errors: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) exhausted: AtomicU64,
    pub(super) unprocessed_items: AtomicU64,
    pub(super) unprocessed_keys: AtomicU64,
    pub(super) fast_commits: AtomicU64,
    pub(super) general_commits: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) orphans_reclaimed: AtomicU64,
    pub(super) log_moved: AtomicU64,
}

/// Adds `by` to `counter`.
pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    /// The counters' values now.
    pub(super) fn snapshot(&self) -> DynamoDbStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DynamoDbStats {
            requests: get(&self.requests),
            throttled: get(&self.throttled),
            transient_errors: get(&self.transient_errors),
            conflicts: get(&self.conflicts),
            retries: get(&self.retries),
            exhausted: get(&self.exhausted),
            unprocessed_items: get(&self.unprocessed_items),
            unprocessed_keys: get(&self.unprocessed_keys),
            fast_commits: get(&self.fast_commits),
            general_commits: get(&self.general_commits),
            duplicates: get(&self.duplicates),
            orphans_reclaimed: get(&self.orphans_reclaimed),
            log_moved: get(&self.log_moved),
        }
    }
}
