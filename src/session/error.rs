//! The one place where the core's errors become replies: each typed error of a transaction
//! ([`TxnError`]) or of the registry of interactive transactions ([`OpenError`]) gets its
//! RESP error code and text here, and nowhere else.
//!
//! | error | reply |
//! |---|---|
//! | write conflict | `-CONFLICT transaction aborted: …` |
//! | watched key changed | null array (EXEC) |
//! | idempotency key already used | `-COMMITTED <txid> …` |
//! | snapshot revoked | `-ERR snapshot too old: …` |
//! | commit outcome unknown | `-ERR commit outcome unknown (…): …` |
//! | other storage failures | `-ERR backend …; nothing was committed` |

use crate::resp::Reply;
use crate::storage::StorageError;
use crate::txn::open::OpenError;
use crate::txn::TxnError;

/// The reply for a transaction that could not complete.
pub fn txn_error_reply(e: &TxnError) -> Reply {
    match e {
        TxnError::Conflict => Reply::error(
            "CONFLICT transaction aborted: a key it read was changed by a concurrent commit; nothing was applied, retry it",
        ),
        TxnError::WatchFailed => Reply::NilArray,
        TxnError::Duplicate(existing) => Reply::error(format!(
            "COMMITTED {} a transaction with this idempotency key already committed; nothing was applied",
            existing.txn
        )),
        TxnError::Storage(StorageError::OutcomeUnknown(m)) => Reply::error(format!(
            "ERR commit outcome unknown (backend failed after the commit was sent): {m}"
        )),
        TxnError::Storage(e) => Reply::error(format!("ERR {e}; nothing was committed")),
        TxnError::SnapshotTooOld(limit) => Reply::error(format!(
            "ERR snapshot too old: the transaction's snapshot is older than {} ms (max_snapshot_age_ms) and what it read may have been collected; it was aborted, nothing was applied, run it again",
            limit.as_millis()
        )),
        TxnError::Rejoined => Reply::error(format!("ERR {e}")),
        TxnError::Internal(m) => Reply::error(format!("ERR internal error: {m}")),
    }
}

/// The reply for a refused operation on interactive transactions.
pub fn open_error_reply(e: &OpenError) -> Reply {
    let code = match e {
        OpenError::AlreadyCommitted(_) => "COMMITTED",
        _ => "ERR",
    };
    Reply::error(format!("{code} {e}"))
}
