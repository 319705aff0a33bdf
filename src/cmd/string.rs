//! String commands: GET, SET and its variants, MGET/MSET, APPEND, ranges and counters.
//!
//! # Format and deviations
//!
//! Every command takes Redis 7.0's arguments and gives its replies. Read-modify-write
//! commands (INCR*, DECR*, APPEND, SETRANGE, SETNX, SET NX/XX/GET/KEEPTTL, GETSET, GETDEL,
//! GETEX, MSETNX) read their keys through [`Txn::get_for_update`]: if another transaction
//! commits the key first, this one is retried (or fails) instead of losing an update.

use bytes::{Bytes, BytesMut};

use super::lcs::{lcs, LcsOptions};
use super::table::{CommandSpec, Id};
use super::util::{err, format_f64, int_arg, parse_f64, parse_i64, NOT_FLOAT, SYNTAX};
use crate::resp::Reply;
use crate::txn::{Entry, Txn, TxnError, Value};

/// When a write should expire, as given by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireArg {
    /// Relative, in milliseconds (EX/PX, SETEX/PSETEX).
    In(i64),
    /// Absolute, in milliseconds since the epoch (EXAT/PXAT).
    At(i64),
}

impl ExpireArg {
    /// Parses an EX/PX/EXAT/PXAT value; `scale` is 1000 for seconds, 1 for milliseconds.
    /// Non-positive or overflowing values give `invalid expire time in '<cmd>' command`.
    fn parse(b: &[u8], scale: i64, absolute: bool, cmd: &str) -> Result<Self, Reply> {
        let v = int_arg(b)?;
        let invalid = || err(format!("ERR invalid expire time in '{cmd}' command"));
        if v <= 0 {
            return Err(invalid());
        }
        let ms = v.checked_mul(scale).ok_or_else(invalid)?;
        Ok(if absolute {
            ExpireArg::At(ms)
        } else {
            ExpireArg::In(ms)
        })
    }

    /// The absolute expiry in ms at `now`, or the error reply if it overflows.
    fn resolve(self, now: u64, cmd: &str) -> Result<u64, Reply> {
        let at = match self {
            ExpireArg::In(ms) => ms.checked_add(now as i64),
            ExpireArg::At(ms) => Some(ms),
        };
        at.map(|at| at.max(1) as u64)
            .ok_or_else(|| err(format!("ERR invalid expire time in '{cmd}' command")))
    }
}

/// SET's condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    Always,
    /// NX: only if the key does not exist.
    IfAbsent,
    /// XX: only if it exists.
    IfPresent,
}

/// What GETEX does to the expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetExAction {
    /// Nothing (plain GET).
    Keep,
    /// PERSIST.
    Persist,
    /// EX/PX/EXAT/PXAT.
    Expire(ExpireArg),
}

/// A parsed string command.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum StringCmd {
    Get {
        keys: [Bytes; 1],
    },
    Set {
        keys: [Bytes; 1],
        value: Bytes,
        expire: Option<ExpireArg>,
        condition: Condition,
        get: bool,
        keep_ttl: bool,
        /// The command name for error messages (set, setex, psetex).
        name: &'static str,
    },
    SetNx {
        keys: [Bytes; 1],
        value: Bytes,
    },
    GetSet {
        keys: [Bytes; 1],
        value: Bytes,
    },
    GetDel {
        keys: [Bytes; 1],
    },
    GetEx {
        keys: [Bytes; 1],
        action: GetExAction,
    },
    MGet {
        keys: Vec<Bytes>,
    },
    MSet {
        keys: Vec<Bytes>,
        values: Vec<Bytes>,
        only_if_none_exist: bool,
    },
    Append {
        keys: [Bytes; 1],
        value: Bytes,
    },
    Strlen {
        keys: [Bytes; 1],
    },
    GetRange {
        keys: [Bytes; 1],
        start: i64,
        end: i64,
    },
    SetRange {
        keys: [Bytes; 1],
        offset: i64,
        value: Bytes,
    },
    /// LCS: the options, or the error they earn (given once the keys were read, as Redis
    /// checks the keys' types first).
    Lcs {
        keys: [Bytes; 2],
        options: Result<LcsOptions, Reply>,
    },
    IncrBy {
        keys: [Bytes; 1],
        delta: i64,
    },
    IncrByFloat {
        keys: [Bytes; 1],
        delta: f64,
    },
}

impl StringCmd {
    /// Parses `args` (arity already checked). `Err` is a run-time error reply.
    pub fn parse(spec: &CommandSpec, args: Vec<Bytes>) -> Result<Self, Reply> {
        let mut it = args.into_iter().skip(1);
        Ok(match spec.id {
            Id::Get => StringCmd::Get {
                keys: [take(&mut it)],
            },
            Id::Set => {
                let key = take(&mut it);
                let value = take(&mut it);
                let rest: Vec<Bytes> = it.by_ref().collect();
                parse_set(key, value, &rest)?
            }
            Id::SetNx => StringCmd::SetNx {
                keys: [take(&mut it)],
                value: take(&mut it),
            },
            Id::SetEx | Id::PSetEx => {
                let key = take(&mut it);
                let (scale, name) = if spec.id == Id::SetEx {
                    (1000, "setex")
                } else {
                    (1, "psetex")
                };
                let expire = ExpireArg::parse(&take(&mut it), scale, false, name)?;
                StringCmd::Set {
                    keys: [key],
                    value: take(&mut it),
                    expire: Some(expire),
                    condition: Condition::Always,
                    get: false,
                    keep_ttl: false,
                    name,
                }
            }
            Id::GetSet => StringCmd::GetSet {
                keys: [take(&mut it)],
                value: take(&mut it),
            },
            Id::GetDel => StringCmd::GetDel {
                keys: [take(&mut it)],
            },
            Id::GetEx => {
                let key = take(&mut it);
                let rest: Vec<Bytes> = it.by_ref().collect();
                StringCmd::GetEx {
                    keys: [key],
                    action: parse_getex(&rest)?,
                }
            }
            Id::MGet => StringCmd::MGet {
                keys: it.by_ref().collect(),
            },
            Id::MSet | Id::MSetNx => {
                let rest: Vec<Bytes> = it.by_ref().collect();
                if !rest.len().is_multiple_of(2) {
                    return Err(err(format!(
                        "ERR wrong number of arguments for '{}' command",
                        spec.name
                    )));
                }
                let (mut keys, mut values) = (Vec::new(), Vec::new());
                for pair in rest.chunks_exact(2) {
                    keys.push(pair[0].clone());
                    values.push(pair[1].clone());
                }
                StringCmd::MSet {
                    keys,
                    values,
                    only_if_none_exist: spec.id == Id::MSetNx,
                }
            }
            Id::Append => StringCmd::Append {
                keys: [take(&mut it)],
                value: take(&mut it),
            },
            Id::Strlen => StringCmd::Strlen {
                keys: [take(&mut it)],
            },
            Id::GetRange => StringCmd::GetRange {
                keys: [take(&mut it)],
                start: int_arg(&take(&mut it))?,
                end: int_arg(&take(&mut it))?,
            },
            Id::Lcs => {
                let keys = [take(&mut it), take(&mut it)];
                let rest: Vec<Bytes> = it.by_ref().collect();
                StringCmd::Lcs {
                    keys,
                    options: LcsOptions::parse(&rest),
                }
            }
            Id::SetRange => StringCmd::SetRange {
                keys: [take(&mut it)],
                offset: int_arg(&take(&mut it))?,
                value: take(&mut it),
            },
            Id::Incr => StringCmd::IncrBy {
                keys: [take(&mut it)],
                delta: 1,
            },
            Id::Decr => StringCmd::IncrBy {
                keys: [take(&mut it)],
                delta: -1,
            },
            Id::IncrBy => {
                let key = take(&mut it);
                let delta = int_arg(&take(&mut it))?;
                StringCmd::IncrBy { keys: [key], delta }
            }
            Id::DecrBy => {
                let key = take(&mut it);
                let delta = int_arg(&take(&mut it))?;
                if delta == i64::MIN {
                    return Err(err("ERR decrement would overflow"));
                }
                StringCmd::IncrBy {
                    keys: [key],
                    delta: -delta,
                }
            }
            Id::IncrByFloat => {
                let key = take(&mut it);
                let delta = parse_f64(&take(&mut it)).ok_or_else(|| err(NOT_FLOAT))?;
                StringCmd::IncrByFloat { keys: [key], delta }
            }
            _ => return Err(err(SYNTAX)),
        })
    }

    /// Keys whose values the command reads.
    pub fn value_keys(&self) -> &[Bytes] {
        match self {
            StringCmd::Get { keys }
            | StringCmd::GetSet { keys, .. }
            | StringCmd::GetDel { keys }
            | StringCmd::GetEx { keys, .. }
            | StringCmd::Append { keys, .. }
            | StringCmd::Strlen { keys }
            | StringCmd::GetRange { keys, .. }
            | StringCmd::SetRange { keys, .. }
            | StringCmd::IncrBy { keys, .. }
            | StringCmd::IncrByFloat { keys, .. } => keys,
            StringCmd::Lcs { keys, .. } => keys,
            StringCmd::Set { keys, get, .. } if *get => keys,
            StringCmd::MGet { keys } => keys,
            StringCmd::Set { .. } | StringCmd::SetNx { .. } | StringCmd::MSet { .. } => &[],
        }
    }

    /// Runs the command in `txn`.
    pub async fn apply(&self, txn: &mut Txn) -> Result<Reply, TxnError> {
        let now = txn.now_ms();
        Ok(match self {
            StringCmd::Get { keys: [key] } => match txn.get(key).await? {
                Some(e) => string_reply(e),
                None => Reply::Nil,
            },
            StringCmd::Set {
                keys: [key],
                value,
                expire,
                condition,
                get,
                keep_ttl,
                name,
            } => {
                let expire_at = match expire.map(|e| e.resolve(now, name)).transpose() {
                    Ok(at) => at,
                    Err(reply) => return Ok(reply),
                };
                let needs_read = *get || *keep_ttl || *condition != Condition::Always;
                let old = if *get {
                    txn.get_for_update(key).await?
                } else if needs_read {
                    txn.meta_for_update(key).map(|m| Entry {
                        value: Value::Str(Bytes::new()),
                        expire_at: m.expire_at,
                    })
                } else {
                    None
                };
                let exists = old.is_some();
                let go = match condition {
                    Condition::Always => true,
                    Condition::IfAbsent => !exists,
                    Condition::IfPresent => exists,
                };
                if go {
                    let expire_at = if *keep_ttl {
                        old.as_ref().and_then(|o| o.expire_at)
                    } else {
                        expire_at
                    };
                    txn.put(
                        key.clone(),
                        Entry {
                            value: Value::Str(value.clone()),
                            expire_at,
                        },
                    );
                }
                match (get, go) {
                    (true, _) => old.map_or(Reply::Nil, string_reply),
                    (false, true) => Reply::ok(),
                    (false, false) => Reply::Nil,
                }
            }
            StringCmd::SetNx { keys: [key], value } => {
                if txn.meta_for_update(key).is_some() {
                    Reply::Integer(0)
                } else {
                    txn.put(key.clone(), Entry::string(value.clone()));
                    Reply::Integer(1)
                }
            }
            StringCmd::GetSet { keys: [key], value } => {
                let old = txn.get_for_update(key).await?;
                txn.put(key.clone(), Entry::string(value.clone()));
                old.map_or(Reply::Nil, string_reply)
            }
            StringCmd::GetDel { keys: [key] } => match txn.get_for_update(key).await? {
                Some(old) => {
                    txn.delete(key.clone());
                    string_reply(old)
                }
                None => Reply::Nil,
            },
            StringCmd::GetEx {
                keys: [key],
                action,
            } => {
                let Some(mut entry) = txn.get_for_update(key).await? else {
                    return Ok(Reply::Nil);
                };
                let reply = string_reply(entry.clone());
                match action {
                    GetExAction::Keep => {}
                    GetExAction::Persist => {
                        if entry.expire_at.is_some() {
                            entry.expire_at = None;
                            txn.put(key.clone(), entry);
                        }
                    }
                    GetExAction::Expire(e) => {
                        let at = match e.resolve(now, "getex") {
                            Ok(at) => at,
                            Err(reply) => return Ok(reply),
                        };
                        if at <= now {
                            txn.delete(key.clone());
                        } else {
                            entry.expire_at = Some(at);
                            txn.put(key.clone(), entry);
                        }
                    }
                }
                reply
            }
            StringCmd::MGet { keys } => {
                txn.prefetch(keys.iter()).await?;
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    out.push(match txn.get(key).await? {
                        Some(e) => string_reply(e),
                        None => Reply::Nil,
                    });
                }
                Reply::Array(out)
            }
            StringCmd::MSet {
                keys,
                values,
                only_if_none_exist,
            } => {
                if *only_if_none_exist {
                    let mut any = false;
                    for key in keys {
                        any |= txn.meta_for_update(key).is_some();
                    }
                    if any {
                        return Ok(Reply::Integer(0));
                    }
                }
                for (key, value) in keys.iter().zip(values) {
                    txn.put(key.clone(), Entry::string(value.clone()));
                }
                if *only_if_none_exist {
                    Reply::Integer(1)
                } else {
                    Reply::ok()
                }
            }
            StringCmd::Append { keys: [key], value } => {
                let old = txn.get_for_update(key).await?;
                let (bytes, expire_at) = match old {
                    Some(Entry {
                        value: Value::Str(b),
                        expire_at,
                    }) => (b, expire_at),
                    None => (Bytes::new(), None),
                };
                if bytes.len() + value.len() > txn.max_value_len() {
                    return Ok(too_big());
                }
                let mut joined = BytesMut::with_capacity(bytes.len() + value.len());
                joined.extend_from_slice(&bytes);
                joined.extend_from_slice(value);
                let len = joined.len() as i64;
                txn.put(
                    key.clone(),
                    Entry {
                        value: Value::Str(joined.freeze()),
                        expire_at,
                    },
                );
                Reply::Integer(len)
            }
            StringCmd::Strlen { keys: [key] } => match txn.get(key).await? {
                Some(Entry {
                    value: Value::Str(b),
                    ..
                }) => Reply::Integer(b.len() as i64),
                None => Reply::Integer(0),
            },
            StringCmd::GetRange {
                keys: [key],
                start,
                end,
            } => {
                let bytes = string_or_empty(txn.get(key).await?);
                Reply::Bulk(substring(&bytes, *start, *end))
            }
            StringCmd::Lcs {
                keys: [a, b],
                options,
            } => {
                let a = string_or_empty(txn.get(a).await?);
                let b = string_or_empty(txn.get(b).await?);
                match options {
                    Ok(options) => lcs(a, b, options.clone(), txn.max_value_len()).await,
                    Err(reply) => reply.clone(),
                }
            }
            StringCmd::SetRange {
                keys: [key],
                offset,
                value,
            } => {
                if *offset < 0 {
                    return Ok(err("ERR offset is out of range"));
                }
                let old = txn.get_for_update(key).await?;
                let (bytes, expire_at) = match old {
                    Some(Entry {
                        value: Value::Str(b),
                        expire_at,
                    }) => (b, expire_at),
                    None => (Bytes::new(), None),
                };
                if value.is_empty() {
                    return Ok(Reply::Integer(bytes.len() as i64));
                }
                let offset = *offset as usize;
                if offset.saturating_add(value.len()) > txn.max_value_len() {
                    return Ok(too_big());
                }
                let len = bytes.len().max(offset + value.len());
                let mut out = BytesMut::zeroed(len);
                out[..bytes.len()].copy_from_slice(&bytes);
                out[offset..offset + value.len()].copy_from_slice(value);
                txn.put(
                    key.clone(),
                    Entry {
                        value: Value::Str(out.freeze()),
                        expire_at,
                    },
                );
                Reply::Integer(len as i64)
            }
            StringCmd::IncrBy { keys: [key], delta } => {
                let old = txn.get_for_update(key).await?;
                let (current, expire_at) = match &old {
                    Some(Entry {
                        value: Value::Str(b),
                        expire_at,
                    }) => match parse_i64(b) {
                        Some(v) => (v, *expire_at),
                        None => return Ok(err(super::util::NOT_INTEGER)),
                    },
                    None => (0, None),
                };
                let Some(new) = current.checked_add(*delta) else {
                    return Ok(err("ERR increment or decrement would overflow"));
                };
                let mut buf = itoa::Buffer::new();
                txn.put(
                    key.clone(),
                    Entry {
                        value: Value::Str(Bytes::copy_from_slice(buf.format(new).as_bytes())),
                        expire_at,
                    },
                );
                Reply::Integer(new)
            }
            StringCmd::IncrByFloat { keys: [key], delta } => {
                let old = txn.get_for_update(key).await?;
                let (current, expire_at) = match &old {
                    Some(Entry {
                        value: Value::Str(b),
                        expire_at,
                    }) => match parse_f64(b) {
                        Some(v) => (v, *expire_at),
                        None => return Ok(err(NOT_FLOAT)),
                    },
                    None => (0.0, None),
                };
                let new = current + delta;
                if !new.is_finite() {
                    return Ok(err("ERR increment would produce NaN or Infinity"));
                }
                let text = Bytes::from(format_f64(new));
                txn.put(
                    key.clone(),
                    Entry {
                        value: Value::Str(text.clone()),
                        expire_at,
                    },
                );
                Reply::Bulk(text)
            }
        })
    }
}

/// The next argument (arity was checked, so it is there; empty otherwise).
pub(crate) fn take(it: &mut impl Iterator<Item = Bytes>) -> Bytes {
    it.next().unwrap_or_default()
}

fn too_big() -> Reply {
    err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
}

fn string_reply(entry: Entry) -> Reply {
    match entry.value {
        Value::Str(b) => Reply::Bulk(b),
    }
}

/// GETRANGE's index arithmetic, exactly as Redis 7.0 does it.
/// A string's bytes, or empty for a missing key.
fn string_or_empty(entry: Option<Entry>) -> Bytes {
    match entry {
        Some(Entry {
            value: Value::Str(b),
            ..
        }) => b,
        None => Bytes::new(),
    }
}

fn substring(bytes: &Bytes, start: i64, end: i64) -> Bytes {
    let len = bytes.len() as i64;
    if start < 0 && end < 0 && start > end {
        return Bytes::new();
    }
    let mut start = if start < 0 { len + start } else { start };
    let mut end = if end < 0 { len + end } else { end };
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        return Bytes::new();
    }
    bytes.slice(start as usize..=end as usize)
}

fn parse_set(key: Bytes, value: Bytes, opts: &[Bytes]) -> Result<StringCmd, Reply> {
    let mut expire = None;
    let mut condition = Condition::Always;
    let mut get = false;
    let mut keep_ttl = false;
    let mut i = 0;
    while i < opts.len() {
        let opt = opts[i].to_ascii_uppercase();
        let arg = opts.get(i + 1);
        match (&opt[..], arg) {
            (b"NX", _) if condition == Condition::Always => condition = Condition::IfAbsent,
            (b"XX", _) if condition == Condition::Always => condition = Condition::IfPresent,
            (b"GET", _) => get = true,
            (b"KEEPTTL", _) if expire.is_none() => keep_ttl = true,
            (b"EX" | b"PX" | b"EXAT" | b"PXAT", Some(arg)) if expire.is_none() && !keep_ttl => {
                let scale = if opt[0] == b'E' { 1000 } else { 1 };
                expire = Some(ExpireArg::parse(arg, scale, opt.len() == 4, "set")?);
                i += 1;
            }
            _ => return Err(err(SYNTAX)),
        }
        i += 1;
    }
    Ok(StringCmd::Set {
        keys: [key],
        value,
        expire,
        condition,
        get,
        keep_ttl,
        name: "set",
    })
}

fn parse_getex(opts: &[Bytes]) -> Result<GetExAction, Reply> {
    let mut action = GetExAction::Keep;
    let mut i = 0;
    while i < opts.len() {
        let opt = opts[i].to_ascii_uppercase();
        match (&opt[..], opts.get(i + 1)) {
            (b"PERSIST", _) if action == GetExAction::Keep => action = GetExAction::Persist,
            (b"EX" | b"PX" | b"EXAT" | b"PXAT", Some(arg)) if action == GetExAction::Keep => {
                let scale = if opt[0] == b'E' { 1000 } else { 1 };
                action =
                    GetExAction::Expire(ExpireArg::parse(arg, scale, opt.len() == 4, "getex")?);
                i += 1;
            }
            _ => return Err(err(SYNTAX)),
        }
        i += 1;
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrange_matches_redis_index_rules() {
        let s = Bytes::from_static(b"Hello World");
        assert_eq!(substring(&s, 0, 3), "Hell");
        assert_eq!(substring(&s, 0, -1), "Hello World");
        assert_eq!(substring(&s, -3, -1), "rld");
        assert_eq!(substring(&s, 5, 3), "");
        assert_eq!(substring(&s, 5, 5000), " World");
        assert_eq!(substring(&s, -5000, 10000), "Hello World");
        assert_eq!(substring(&s, -1, -5), "");
        assert_eq!(substring(&Bytes::new(), 0, -1), "");
    }

    #[test]
    fn set_options_are_validated_like_redis() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let k = || b("k");
        assert!(parse_set(k(), b("v"), &[b("nx"), b("xx")]).is_err());
        assert!(parse_set(k(), b("v"), &[b("ex"), b("1"), b("px"), b("1")]).is_err());
        assert!(parse_set(k(), b("v"), &[b("keepttl"), b("ex"), b("1")]).is_err());
        assert!(parse_set(k(), b("v"), &[b("ex")]).is_err());
        assert!(parse_set(k(), b("v"), &[b("nx"), b("get")]).is_ok());
        assert_eq!(
            parse_set(k(), b("v"), &[b("ex"), b("0")]).unwrap_err(),
            err("ERR invalid expire time in 'set' command")
        );
        assert_eq!(
            parse_set(k(), b("v"), &[b("ex"), b("x")]).unwrap_err(),
            err(super::super::util::NOT_INTEGER)
        );
        assert_eq!(
            parse_set(k(), b("v"), &[b("ex"), b("9223372036854775807")]).unwrap_err(),
            err("ERR invalid expire time in 'set' command")
        );
    }
}
