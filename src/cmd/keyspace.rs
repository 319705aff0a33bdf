//! Keyspace commands: DEL/UNLINK, EXISTS, TYPE, the EXPIRE and TTL families, PERSIST,
//! FLUSHALL/FLUSHDB, DBSIZE, KEYS, SCAN, RANDOMKEY.
//!
//! # Format and deviations
//!
//! Redis 7.0's arguments and replies. FLUSHALL/FLUSHDB delete every live key in one
//! transaction (so they are atomic, and a concurrent reader sees all keys or none). DEL,
//! EXPIRE* and PERSIST are validated at commit like read-modify-write commands. Expired keys
//! are removed lazily: they are invisible at once and their storage is reclaimed later.
//! SCAN's cursor is a position in a keyed hash order of the keys (valid while the process
//! runs): keys present for a whole scan are returned at least once, and a call visits about
//! COUNT keys (it returns the live ones among them, so possibly fewer), in O(log n + COUNT).
//! RANDOMKEY costs O(1) in the common case and DBSIZE O(1) (counts kept by the index); KEYS
//! walks the keyspace one part at a time, letting other connections run in between. DBSIZE
//! counts the latest state (adjusted by the transaction's own writes), not the snapshot.

use bytes::Bytes;

use super::string::take;
use super::table::{CommandSpec, Id};
use super::util::{err, glob_match, int_arg, SYNTAX};
use crate::resp::Reply;
use crate::txn::{Txn, TxnError};

/// EXPIRE's NX/XX/GT/LT condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

/// A parsed keyspace command.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum KeyCmd {
    Del {
        keys: Vec<Bytes>,
    },
    Exists {
        keys: Vec<Bytes>,
    },
    Type {
        key: Bytes,
    },
    Expire {
        keys: [Bytes; 1],
        /// Seconds or ms as given.
        amount: i64,
        /// 1000 for seconds, 1 for ms.
        scale: i64,
        absolute: bool,
        flags: ExpireFlags,
        name: &'static str,
    },
    Ttl {
        key: Bytes,
        ms: bool,
    },
    ExpireTime {
        key: Bytes,
        ms: bool,
    },
    Persist {
        keys: [Bytes; 1],
    },
    FlushAll,
    DbSize,
    Keys {
        pattern: Bytes,
    },
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        kind: Option<Bytes>,
    },
    RandomKey,
}

impl KeyCmd {
    /// Parses `args` (arity already checked). `Err` is a run-time error reply.
    pub fn parse(spec: &CommandSpec, args: Vec<Bytes>) -> Result<Self, Reply> {
        let mut it = args.into_iter().skip(1);
        Ok(match spec.id {
            Id::Del => KeyCmd::Del { keys: it.collect() },
            Id::Exists => KeyCmd::Exists { keys: it.collect() },
            Id::Type => KeyCmd::Type { key: take(&mut it) },
            Id::Expire | Id::PExpire | Id::ExpireAt | Id::PExpireAt => {
                let key = take(&mut it);
                let amount = int_arg(&take(&mut it))?;
                let mut flags = ExpireFlags::default();
                for opt in it {
                    match &opt.to_ascii_uppercase()[..] {
                        b"NX" => flags.nx = true,
                        b"XX" => flags.xx = true,
                        b"GT" => flags.gt = true,
                        b"LT" => flags.lt = true,
                        _ => {
                            return Err(err(format!(
                                "ERR Unsupported option {}",
                                String::from_utf8_lossy(&opt)
                            )))
                        }
                    }
                }
                if flags.nx && (flags.xx || flags.gt || flags.lt) {
                    return Err(err(
                        "ERR NX and XX, GT or LT options at the same time are not compatible",
                    ));
                }
                if flags.gt && flags.lt {
                    return Err(err(
                        "ERR GT and LT options at the same time are not compatible",
                    ));
                }
                KeyCmd::Expire {
                    keys: [key],
                    amount,
                    scale: if matches!(spec.id, Id::Expire | Id::ExpireAt) {
                        1000
                    } else {
                        1
                    },
                    absolute: matches!(spec.id, Id::ExpireAt | Id::PExpireAt),
                    flags,
                    name: spec.name,
                }
            }
            Id::Ttl | Id::PTtl => KeyCmd::Ttl {
                key: take(&mut it),
                ms: spec.id == Id::PTtl,
            },
            Id::ExpireTime | Id::PExpireTime => KeyCmd::ExpireTime {
                key: take(&mut it),
                ms: spec.id == Id::PExpireTime,
            },
            Id::Persist => KeyCmd::Persist {
                keys: [take(&mut it)],
            },
            Id::FlushAll => {
                for opt in it {
                    if !matches!(&opt.to_ascii_uppercase()[..], b"ASYNC" | b"SYNC") {
                        return Err(err(SYNTAX));
                    }
                }
                KeyCmd::FlushAll
            }
            Id::DbSize => KeyCmd::DbSize,
            Id::Keys => KeyCmd::Keys {
                pattern: take(&mut it),
            },
            Id::Scan => {
                let cursor = take(&mut it);
                let cursor = std::str::from_utf8(&cursor)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| err("ERR invalid cursor"))?;
                let (mut pattern, mut count, mut kind) = (None, 10usize, None);
                let rest: Vec<Bytes> = it.collect();
                let mut i = 0;
                while i < rest.len() {
                    let Some(arg) = rest.get(i + 1) else {
                        return Err(err(SYNTAX));
                    };
                    match &rest[i].to_ascii_uppercase()[..] {
                        b"MATCH" => pattern = Some(arg.clone()),
                        b"COUNT" => {
                            let n = int_arg(arg)?;
                            if n < 1 {
                                return Err(err(SYNTAX));
                            }
                            count = n as usize;
                        }
                        b"TYPE" => kind = Some(arg.clone()),
                        _ => return Err(err(SYNTAX)),
                    }
                    i += 2;
                }
                KeyCmd::Scan {
                    cursor,
                    pattern,
                    count,
                    kind,
                }
            }
            Id::RandomKey => KeyCmd::RandomKey,
            _ => return Err(err(SYNTAX)),
        })
    }

    /// Keys whose values the command reads (none: keyspace commands use metadata only).
    pub fn value_keys(&self) -> &[Bytes] {
        &[]
    }

    /// Runs the command in `txn`.
    pub async fn apply(&self, txn: &mut Txn) -> Result<Reply, TxnError> {
        let now = txn.now_ms();
        Ok(match self {
            KeyCmd::Del { keys } => {
                let mut n = 0;
                for key in keys {
                    if txn.meta_for_update(key).is_some() {
                        txn.delete(key.clone());
                        n += 1;
                    }
                }
                Reply::Integer(n)
            }
            KeyCmd::Exists { keys } => {
                Reply::Integer(keys.iter().filter(|k| txn.meta(k).is_some()).count() as i64)
            }
            KeyCmd::Type { key } => {
                Reply::Status(txn.meta(key).map_or("none", |m| m.kind.type_name()))
            }
            KeyCmd::Expire {
                keys: [key],
                amount,
                scale,
                absolute,
                flags,
                name,
            } => {
                let invalid = || err(format!("ERR invalid expire time in '{name}' command"));
                let Some(ms) = amount.checked_mul(*scale) else {
                    return Ok(invalid());
                };
                let at = if *absolute {
                    Some(ms)
                } else {
                    ms.checked_add(now as i64)
                };
                let Some(at) = at else {
                    return Ok(invalid());
                };
                if txn.meta_for_update(key).is_none() {
                    return Ok(Reply::Integer(0));
                }
                let Some(mut entry) = txn.get(key).await? else {
                    return Ok(Reply::Integer(0));
                };
                let current = entry.expire_at;
                let allowed = if flags.nx {
                    current.is_none()
                } else if flags.xx && current.is_none() {
                    false
                } else if flags.gt {
                    current.is_some_and(|c| at > c as i64)
                } else if flags.lt {
                    current.is_none_or(|c| at < c as i64)
                } else {
                    true
                };
                if !allowed {
                    return Ok(Reply::Integer(0));
                }
                if at <= now as i64 {
                    txn.delete(key.clone());
                } else {
                    entry.expire_at = Some(at as u64);
                    txn.put(key.clone(), entry);
                }
                Reply::Integer(1)
            }
            KeyCmd::Ttl { key, ms } => match txn.meta(key) {
                None => Reply::Integer(-2),
                Some(m) => match m.expire_at {
                    None => Reply::Integer(-1),
                    Some(at) => {
                        let left = at.saturating_sub(now) as i64;
                        Reply::Integer(if *ms { left } else { (left + 500) / 1000 })
                    }
                },
            },
            KeyCmd::ExpireTime { key, ms } => match txn.meta(key) {
                None => Reply::Integer(-2),
                Some(m) => match m.expire_at {
                    None => Reply::Integer(-1),
                    Some(at) => Reply::Integer(if *ms {
                        at as i64
                    } else {
                        ((at + 500) / 1000) as i64
                    }),
                },
            },
            KeyCmd::Persist { keys: [key] } => {
                match txn.meta_for_update(key) {
                    Some(m) if m.expire_at.is_some() => {}
                    _ => return Ok(Reply::Integer(0)),
                }
                let Some(mut entry) = txn.get(key).await? else {
                    return Ok(Reply::Integer(0));
                };
                entry.expire_at = None;
                txn.put(key.clone(), entry);
                Reply::Integer(1)
            }
            KeyCmd::FlushAll => {
                txn.flush_all();
                Reply::ok()
            }
            KeyCmd::DbSize => Reply::Integer(txn.key_count() as i64),
            KeyCmd::Keys { pattern } => {
                let all = pattern[..] == b"*"[..];
                let keys = txn
                    .keys_where(&|k: &[u8]| all || glob_match(pattern, k))
                    .await;
                Reply::Array(keys.into_iter().map(Reply::Bulk).collect())
            }
            KeyCmd::Scan {
                cursor,
                pattern,
                count,
                kind,
            } => {
                let (next, keys) = txn.scan(*cursor, *count);
                let out = keys
                    .into_iter()
                    .filter(|(key, _)| pattern.as_ref().is_none_or(|p| glob_match(p, key)))
                    .filter(|(_, meta)| {
                        kind.as_ref().is_none_or(|k| {
                            k.eq_ignore_ascii_case(meta.kind.type_name().as_bytes())
                        })
                    })
                    .map(|(key, _)| Reply::Bulk(key))
                    .collect();
                let mut buf = itoa::Buffer::new();
                Reply::Array(vec![
                    Reply::Bulk(Bytes::copy_from_slice(buf.format(next).as_bytes())),
                    Reply::Array(out),
                ])
            }
            KeyCmd::RandomKey => txn.random_key().map_or(Reply::Nil, Reply::Bulk),
        })
    }

    /// Whether the command reads the whole keyspace rather than named keys (such reads
    /// cannot be validated key by key; see [`crate::txn::Txn::validate_reads_after_writes`]).
    pub fn reads_keyspace(&self) -> bool {
        matches!(
            self,
            KeyCmd::DbSize | KeyCmd::Keys { .. } | KeyCmd::Scan { .. } | KeyCmd::RandomKey
        )
    }
}
