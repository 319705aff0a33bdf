//! The one transaction runner: one retry policy and one commit rule for every transaction
//! whose client has seen nothing of it before it commits (a command on its own, a pipelined
//! group, MULTI/EXEC). Interactive transactions show their reads as they go, so they are not
//! re-run: their conflicts reach the client.
//!
//! * **Commit rule**: the body runs in a fresh [`Txn`]; then the transaction commits (with the
//!   watched keys, if any): validation of what it read, then its writes, if any.
//! * **Retry policy**: a transaction that lost a write conflict or whose snapshot was revoked
//!   ([`TxnError::is_retryable`]) runs again from scratch (after a conflict, once some commit
//!   released its keys, or after [`RETRY_WAIT`]), for up to [`CONFLICT_RETRY_LIMIT`] from the
//!   first retry; then the error is returned. A watch
//!   failure is returned at once (EXEC replies null).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Engine, Txn, TxnError, Watches};

/// How long a transaction that keeps losing write conflicts is re-run before its client
/// gets the conflict error.
pub const CONFLICT_RETRY_LIMIT: Duration = Duration::from_secs(10);

/// Longest wait for a release of reserved keys between two attempts.
pub const RETRY_WAIT: Duration = Duration::from_millis(5);

/// Runs a transaction body until it commits. A call site loops:
///
/// ```ignore
/// let mut runner = Runner::new(&engine, watches);
/// let outcome = loop {
///     let mut txn = match runner.begin().await {
///         Ok(txn) => txn,
///         Err(e) => break Err(e),
///     };
///     let body = body(&mut txn).await; // the commands
///     if let Some(outcome) = runner.finish(txn, body).await {
///         break outcome;
///     }
/// };
/// ```
pub struct Runner<'w> {
    engine: &'w Arc<Engine>,
    watches: Option<&'w Watches>,
    /// Set at the first retry: most transactions never need it.
    deadline: Option<Instant>,
}

impl<'w> Runner<'w> {
    /// A runner of transactions on `engine`, committed with `watches` (EXEC after WATCH).
    pub fn new(engine: &'w Arc<Engine>, watches: Option<&'w Watches>) -> Self {
        Runner {
            engine,
            watches,
            deadline: None,
        }
    }

    /// A fresh transaction for the next attempt, after catching up with the commits of
    /// other nodes (see [`Engine::begin_fresh`]). A first attempt fails at once if the
    /// backend is unavailable for that; a retry (its client already waits for a conflict to
    /// clear) tries again until the retry limit.
    pub async fn begin(&self) -> Result<Txn, TxnError> {
        loop {
            match self.engine.begin_fresh().await {
                Err(TxnError::Storage(e))
                    if e.is_retryable() && self.deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    tokio::time::sleep(RETRY_WAIT * 4).await;
                }
                other => return other,
            }
        }
    }

    /// Ends an attempt whose body returned `body`: commits `txn` if the body succeeded,
    /// then returns the outcome — or `None` if the attempt lost a conflict (or its snapshot
    /// was revoked) and must run again. After a conflict it first waits until some commit
    /// releases its keys (or [`RETRY_WAIT`] passes): the conflict may be a key still
    /// reserved by a commit in flight. A revoked snapshot is retried at once.
    pub async fn finish<T>(
        &mut self,
        txn: Txn,
        body: Result<T, TxnError>,
    ) -> Option<Result<T, TxnError>> {
        let outcome = match body {
            Ok(value) => match self.watches {
                Some(watches) => txn.commit_watched(watches).await,
                None => txn.commit().await,
            }
            .map(|_| value),
            Err(e) => {
                drop(txn);
                Err(e)
            }
        };
        match outcome {
            Err(e) if e.is_retryable() => {
                let now = Instant::now();
                let deadline = *self.deadline.get_or_insert(now + CONFLICT_RETRY_LIMIT);
                if now >= deadline {
                    return Some(Err(e));
                }
                if matches!(e, TxnError::Conflict) {
                    self.engine.wait_for_release(RETRY_WAIT).await;
                }
                None
            }
            done => Some(done),
        }
    }
}
