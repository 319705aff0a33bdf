//! Transaction commands: MULTI, EXEC, DISCARD, WATCH, UNWATCH, and the interactive
//! transactions' AFT.BEGIN, AFT.COMMIT, AFT.ABORT, AFT.ATTACH, AFT.DETACH, AFT.STATUS,
//! AFT.IDEMPOTENT.
//!
//! They change what the connection is doing (its mode), so the session runs them; this
//! module parses them.
//!
//! # Format and deviations
//!
//! * `MULTI`, `EXEC`, `DISCARD`, `WATCH key…`, `UNWATCH`: as in Redis 7.0, replies included.
//!   EXEC runs the queued commands as one read-atomic transaction.
//! * `AFT.BEGIN [IDEMPOTENCY-KEY key] [TIMEOUT ms]`: opens an interactive transaction and
//!   replies its id (32 hex digits, 128 random bits).
//! * `AFT.COMMIT`, `AFT.ABORT`, `AFT.DETACH`, `AFT.ATTACH txid`, `AFT.STATUS txid|key`.
//! * `AFT.IDEMPOTENT key`, inside MULTI only: EXEC commits only if no commit used the key.

use std::time::Duration;

use bytes::Bytes;

use super::table::Id;
use super::util::{err, parse_i64, SYNTAX};
use crate::resp::Reply;

/// A parsed transaction command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnCmd {
    /// `MULTI`.
    Multi,
    /// `EXEC`.
    Exec,
    /// `DISCARD`.
    Discard,
    /// `WATCH key…`.
    Watch(Vec<Bytes>),
    /// `UNWATCH`.
    Unwatch,
    /// `AFT.BEGIN [IDEMPOTENCY-KEY key] [TIMEOUT ms]`.
    Begin {
        /// The idempotency key.
        idempotency_key: Option<Bytes>,
        /// The idle timeout asked for.
        timeout: Option<Duration>,
    },
    /// `AFT.COMMIT`.
    Commit,
    /// `AFT.ABORT`.
    Abort,
    /// `AFT.ATTACH txid`.
    Attach(Bytes),
    /// `AFT.DETACH`.
    Detach,
    /// `AFT.STATUS txid|idempotency-key`.
    Status(Bytes),
    /// `AFT.IDEMPOTENT key`.
    Idempotent(Bytes),
}

impl TxnCmd {
    /// Parses `args` (a transaction command whose arity was checked); `Err` is the run-time
    /// error reply.
    pub fn parse(id: Id, args: Vec<Bytes>) -> Result<Self, Reply> {
        let mut rest = args.into_iter().skip(1);
        Ok(match id {
            Id::Multi => TxnCmd::Multi,
            Id::Exec => TxnCmd::Exec,
            Id::Discard => TxnCmd::Discard,
            Id::Watch => TxnCmd::Watch(rest.collect()),
            Id::Unwatch => TxnCmd::Unwatch,
            Id::AftBegin => parse_begin(rest.collect())?,
            Id::AftCommit => TxnCmd::Commit,
            Id::AftAbort => TxnCmd::Abort,
            Id::AftAttach => TxnCmd::Attach(rest.next().unwrap_or_default()),
            Id::AftDetach => TxnCmd::Detach,
            Id::AftStatus => TxnCmd::Status(rest.next().unwrap_or_default()),
            Id::AftIdempotent => TxnCmd::Idempotent(rest.next().unwrap_or_default()),
            _ => return Err(err(SYNTAX)),
        })
    }
}

fn parse_begin(args: Vec<Bytes>) -> Result<TxnCmd, Reply> {
    let (mut idempotency_key, mut timeout) = (None, None);
    let mut i = 0;
    while i < args.len() {
        let Some(value) = args.get(i + 1) else {
            return Err(err(SYNTAX));
        };
        match &args[i].to_ascii_uppercase()[..] {
            b"IDEMPOTENCY-KEY" if idempotency_key.is_none() => {
                idempotency_key = Some(value.clone())
            }
            b"TIMEOUT" if timeout.is_none() => match parse_i64(value) {
                Some(ms) if ms > 0 => timeout = Some(Duration::from_millis(ms as u64)),
                _ => return Err(err("ERR timeout is not a positive integer (milliseconds)")),
            },
            _ => return Err(err(SYNTAX)),
        }
        i += 2;
    }
    Ok(TxnCmd::Begin {
        idempotency_key,
        timeout,
    })
}
