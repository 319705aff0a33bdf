//! Settling commits whose outcome is unknown (protocol.md §9, "Unknown outcomes").
//!
//! When the backend's reply to a commit is lost, the commit may or may not have been
//! applied, and may even still be applied later (a stalled server executes it when it
//! wakes up). Forgetting it would be wrong either way: if it was applied, its versions are
//! the newest of their keys after a restart, so later conflict checks on those keys would
//! pass against a stale version (a lost update), and garbage collection could delete what
//! it supersedes, then the record of a later delete, and bring an older value back.
//!
//! So the commit is *settled*: a background task sends the same commit again until the
//! backend answers. The storage contract makes a commit idempotent by its id — sent again, a
//! commit that was applied reports `Committed` and writes nothing, one that was not is
//! applied now — so the answer is definitive: `Committed` (the commit is published, whole),
//! or `Duplicate` of another commit (its idempotency key was taken: nothing of it will ever
//! be visible, its versions are reclaimed). Until then its keys stay reserved in the
//! engine's in-flight set: read-modify-write commands and WATCH on them wait, and garbage
//! collection does not remove them from the index.
//!
//! Attempts back off from [`FIRST_DELAY`] to [`MAX_DELAY`] and go on for as long as the
//! engine runs (a backend that stays down keeps those keys fenced, visibly: INFO reports
//! unresolved commits). A node that stops first leaves the question to recovery, which
//! finds the record if the commit was applied.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::engine::{Concluded, Engine, PendingCommit};
use crate::storage::StorageError;

/// Delay before the first attempt to settle a commit.
pub const FIRST_DELAY: Duration = Duration::from_millis(20);
/// Longest delay between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// A commit whose outcome is unknown, with the keys it keeps reserved.
pub(super) struct Unresolved {
    pub(super) pending: PendingCommit,
    pub(super) keys: Vec<Bytes>,
    pub(super) first_error: String,
}

/// Starts settling `unresolved` in the background.
pub(super) fn spawn(engine: &Arc<Engine>, unresolved: Unresolved) {
    engine.unresolved.fetch_add(1, Ordering::Relaxed);
    let id = unresolved.pending.batch.record.id;
    tracing::warn!(
        ?id,
        error = %unresolved.first_error,
        "commit outcome unknown; settling it in the background, its keys stay fenced"
    );
    let stop = engine.resolvers_stop.clone();
    let weak = Arc::downgrade(engine);
    tokio::spawn(async move {
        tokio::select! {
            _ = settle(weak.clone(), unresolved) => {}
            _ = stop.notified() => {}
        }
    });
}

async fn settle(weak: Weak<Engine>, unresolved: Unresolved) {
    let Unresolved { pending, keys, .. } = unresolved;
    let id = pending.batch.record.id;
    let mut delay = FIRST_DELAY;
    let mut attempts = 0u64;
    loop {
        tokio::time::sleep(delay).await;
        let Some(engine) = weak.upgrade() else {
            return;
        };
        if engine.closing.load(Ordering::Acquire) {
            return;
        }
        attempts += 1;
        let outcome = engine.storage.commit(pending.batch.clone()).await;
        let answer = match outcome {
            Ok(answer) => Some(answer),
            // Refused by the fence, which the record check precedes: it was never applied,
            // and no attempt under that node id can pass the fence any more.
            Err(StorageError::Fenced(_)) => None,
            Err(e) => {
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(?id, attempts, error = %e, "commit outcome still unknown; retrying");
                }
                delay = (delay * 2).min(MAX_DELAY);
                continue;
            }
        };
        let committed = match answer {
            Some(answer) => matches!(engine.conclude(pending, answer), Concluded::Committed(_)),
            None => {
                engine.gc.tracker.lock().orphans(pending.orphans());
                false
            }
        };
        if committed {
            engine
                .stats
                .unknown_committed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                ?id,
                attempts,
                "commit of unknown outcome settled: committed"
            );
        } else {
            engine.stats.unknown_aborted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                ?id,
                attempts,
                "commit of unknown outcome settled: not committed"
            );
        }
        // Waiters on the fence retry now, not at their next timeout.
        engine.release_inflight(&keys);
        engine.unresolved.fetch_sub(1, Ordering::Relaxed);
        return;
    }
}
