//! The command table: every command aft knows, with Redis's arity, flags and key positions
//! (used for arity checks and by COMMAND / COMMAND INFO / COMMAND COUNT).

use std::collections::HashMap;
use std::sync::OnceLock;

/// Identifies a command.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[allow(missing_docs)]
pub enum Id {
    // strings
    Get,
    Set,
    SetNx,
    SetEx,
    PSetEx,
    GetSet,
    GetDel,
    GetEx,
    MGet,
    MSet,
    MSetNx,
    Append,
    Strlen,
    GetRange,
    SetRange,
    Lcs,
    Incr,
    Decr,
    IncrBy,
    DecrBy,
    IncrByFloat,
    // keyspace
    Del,
    Exists,
    Type,
    Expire,
    PExpire,
    ExpireAt,
    PExpireAt,
    Ttl,
    PTtl,
    ExpireTime,
    PExpireTime,
    Persist,
    FlushAll,
    DbSize,
    Keys,
    Scan,
    RandomKey,
    // transactions
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    // connection and server
    Ping,
    Echo,
    Hello,
    Auth,
    Select,
    Client,
    Quit,
    Reset,
    Info,
    Command,
    Config,
    Debug,
    Time,
    Function,
    LastSave,
    Save,
    Shutdown,
    // interactive transactions
    AftBegin,
    AftCommit,
    AftAbort,
    AftAttach,
    AftDetach,
    AftStatus,
    AftIdempotent,
}

/// One command's static description.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower-case name, as Redis prints it in errors.
    pub name: &'static str,
    /// Redis arity: `n > 0` exactly n arguments (name included), `n < 0` at least `-n`.
    pub arity: i32,
    /// Redis command flags, for COMMAND INFO.
    pub flags: &'static [&'static str],
    /// Position of the first key (0: none), last key (-1: the last argument), key step.
    pub keys: (i32, i32, i32),
    /// Which command this is.
    pub id: Id,
}

impl CommandSpec {
    /// Whether a request of `argc` words (name included) has a valid length.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = self.arity as i64;
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    /// Whether Redis refuses the command inside MULTI (flag `no_multi`): it replies
    /// `ERR Command not allowed inside a transaction` and the transaction is aborted.
    pub fn no_multi(&self) -> bool {
        self.flags.contains(&"no_multi")
    }

    /// Whether the command reads or writes keys (runs inside a transaction), as opposed to
    /// acting on the connection or the server.
    pub fn is_data(&self) -> bool {
        self.id.is_data()
    }
}

/// Which module of [`crate::cmd`] a command belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Family {
    /// [`crate::cmd::string`].
    String,
    /// [`crate::cmd::keyspace`].
    Keyspace,
    /// [`crate::cmd::connection`].
    Connection,
    /// [`crate::cmd::server`].
    Server,
    /// [`crate::cmd::transaction`].
    Transaction,
}

impl Id {
    /// See [`CommandSpec::is_data`].
    pub fn is_data(self) -> bool {
        matches!(self.family(), Family::String | Family::Keyspace)
    }

    /// The command's family. Every command is listed (no catch-all), so that a new one
    /// cannot land in a family by default.
    pub fn family(self) -> Family {
        use Id::*;
        match self {
            Get | Set | SetNx | SetEx | PSetEx | GetSet | GetDel | GetEx | MGet | MSet | MSetNx
            | Append | Strlen | GetRange | SetRange | Lcs | Incr | Decr | IncrBy | DecrBy
            | IncrByFloat => Family::String,
            Del | Exists | Type | Expire | PExpire | ExpireAt | PExpireAt | Ttl | PTtl
            | ExpireTime | PExpireTime | Persist | FlushAll | DbSize | Keys | Scan | RandomKey => {
                Family::Keyspace
            }
            Ping | Echo | Hello | Auth | Select | Client | Quit | Reset => Family::Connection,
            Multi | Exec | Discard | Watch | Unwatch | AftBegin | AftCommit | AftAbort
            | AftAttach | AftDetach | AftStatus | AftIdempotent => Family::Transaction,
            Info | Command | Config | Debug | Time | Function | LastSave | Save | Shutdown => {
                Family::Server
            }
        }
    }
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const WX: &[&str] = &["write"];
const WXF: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const S: &[&str] = &["fast"];
const NS: &[&str] = &[
    "noscript",
    "loading",
    "stale",
    "fast",
    "no_auth",
    "allow_busy",
];
const A: &[&str] = &["admin", "noscript", "loading", "stale"];
/// SAVE and SHUTDOWN: administrative, and refused inside MULTI.
const AN: &[&str] = &["admin", "noscript", "loading", "stale", "no_multi"];
/// MULTI, DISCARD, WATCH, UNWATCH.
const TX: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $keys:expr, $id:ident) => {
        CommandSpec {
            name: $name,
            arity: $arity,
            flags: $flags,
            keys: $keys,
            id: Id::$id,
        }
    };
}

/// Every command, in no particular order.
pub static COMMANDS: &[CommandSpec] = &[
    spec!("get", 2, RF, (1, 1, 1), Get),
    spec!("set", -3, W, (1, 1, 1), Set),
    spec!("setnx", 3, WF, (1, 1, 1), SetNx),
    spec!("setex", 4, W, (1, 1, 1), SetEx),
    spec!("psetex", 4, W, (1, 1, 1), PSetEx),
    spec!("getset", 3, WF, (1, 1, 1), GetSet),
    spec!("getdel", 2, WXF, (1, 1, 1), GetDel),
    spec!("getex", -2, WXF, (1, 1, 1), GetEx),
    spec!("mget", -2, RF, (1, -1, 1), MGet),
    spec!("mset", -3, W, (1, -1, 2), MSet),
    spec!("msetnx", -3, W, (1, -1, 2), MSetNx),
    spec!("append", 3, WF, (1, 1, 1), Append),
    spec!("strlen", 2, RF, (1, 1, 1), Strlen),
    spec!("getrange", 4, R, (1, 1, 1), GetRange),
    spec!("substr", 4, R, (1, 1, 1), GetRange),
    spec!("setrange", 4, W, (1, 1, 1), SetRange),
    spec!("lcs", -3, R, (1, 2, 1), Lcs),
    spec!("incr", 2, WF, (1, 1, 1), Incr),
    spec!("decr", 2, WF, (1, 1, 1), Decr),
    spec!("incrby", 3, WF, (1, 1, 1), IncrBy),
    spec!("decrby", 3, WF, (1, 1, 1), DecrBy),
    spec!("incrbyfloat", 3, WF, (1, 1, 1), IncrByFloat),
    spec!("del", -2, WX, (1, -1, 1), Del),
    spec!("unlink", -2, WXF, (1, -1, 1), Del),
    spec!("exists", -2, RF, (1, -1, 1), Exists),
    spec!("type", 2, RF, (1, 1, 1), Type),
    spec!("expire", -3, WXF, (1, 1, 1), Expire),
    spec!("pexpire", -3, WXF, (1, 1, 1), PExpire),
    spec!("expireat", -3, WXF, (1, 1, 1), ExpireAt),
    spec!("pexpireat", -3, WXF, (1, 1, 1), PExpireAt),
    spec!("ttl", 2, RF, (1, 1, 1), Ttl),
    spec!("pttl", 2, RF, (1, 1, 1), PTtl),
    spec!("expiretime", 2, RF, (1, 1, 1), ExpireTime),
    spec!("pexpiretime", 2, RF, (1, 1, 1), PExpireTime),
    spec!("persist", 2, WXF, (1, 1, 1), Persist),
    spec!("flushall", -1, WX, (0, 0, 0), FlushAll),
    spec!("flushdb", -1, WX, (0, 0, 0), FlushAll),
    spec!("dbsize", 1, RF, (0, 0, 0), DbSize),
    spec!("keys", 2, R, (0, 0, 0), Keys),
    spec!("scan", -2, R, (0, 0, 0), Scan),
    spec!("randomkey", 1, R, (0, 0, 0), RandomKey),
    spec!("multi", 1, TX, (0, 0, 0), Multi),
    spec!(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        (0, 0, 0),
        Exec
    ),
    spec!("discard", 1, TX, (0, 0, 0), Discard),
    spec!("watch", -2, TX, (1, -1, 1), Watch),
    spec!("unwatch", 1, TX, (0, 0, 0), Unwatch),
    spec!("ping", -1, S, (0, 0, 0), Ping),
    spec!("echo", 2, S, (0, 0, 0), Echo),
    spec!("hello", -1, NS, (0, 0, 0), Hello),
    spec!("auth", -2, NS, (0, 0, 0), Auth),
    spec!(
        "select",
        2,
        &["loading", "stale", "fast"],
        (0, 0, 0),
        Select
    ),
    spec!(
        "client",
        -2,
        &["noscript", "loading", "stale"],
        (0, 0, 0),
        Client
    ),
    spec!("quit", -1, NS, (0, 0, 0), Quit),
    spec!("reset", 1, NS, (0, 0, 0), Reset),
    spec!("info", -1, &["loading", "stale"], (0, 0, 0), Info),
    spec!("command", -1, &["loading", "stale"], (0, 0, 0), Command),
    spec!("config", -2, A, (0, 0, 0), Config),
    spec!("debug", -2, A, (0, 0, 0), Debug),
    spec!("time", 1, &["loading", "stale", "fast"], (0, 0, 0), Time),
    spec!("function", -2, &["noscript"], (0, 0, 0), Function),
    spec!(
        "lastsave",
        1,
        &["loading", "stale", "fast"],
        (0, 0, 0),
        LastSave
    ),
    spec!("save", 1, AN, (0, 0, 0), Save),
    spec!("shutdown", -1, AN, (0, 0, 0), Shutdown),
    spec!("aft.begin", -1, &["noscript", "fast"], (0, 0, 0), AftBegin),
    spec!("aft.commit", 1, &["noscript"], (0, 0, 0), AftCommit),
    spec!("aft.abort", 1, &["noscript", "fast"], (0, 0, 0), AftAbort),
    spec!("aft.attach", 2, &["noscript", "fast"], (0, 0, 0), AftAttach),
    spec!("aft.detach", 1, &["noscript", "fast"], (0, 0, 0), AftDetach),
    spec!("aft.status", 2, &["noscript"], (0, 0, 0), AftStatus),
    spec!(
        "aft.idempotent",
        2,
        &["noscript", "fast"],
        (0, 0, 0),
        AftIdempotent
    ),
];

/// Finds a command by name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    static BY_NAME: OnceLock<HashMap<&'static [u8], &'static CommandSpec>> = OnceLock::new();
    let map = BY_NAME.get_or_init(|| COMMANDS.iter().map(|c| (c.name.as_bytes(), c)).collect());
    let mut buf = [0u8; 32];
    let lower = buf.get_mut(..name.len())?;
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    map.get(&lower[..]).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_rejects_long_names() {
        assert_eq!(lookup(b"GeT").unwrap().id, Id::Get);
        assert_eq!(lookup(b"UNLINK").unwrap().id, Id::Del);
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(&[b'a'; 100]).is_none());
        assert!(lookup(b"").is_none());
    }

    #[test]
    fn names_are_unique_and_lower_case() {
        let mut names: Vec<_> = COMMANDS.iter().map(|c| c.name).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '.')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
    }

    #[test]
    fn arity_follows_redis_rules() {
        let get = lookup(b"get").unwrap();
        assert!(get.arity_ok(2) && !get.arity_ok(1) && !get.arity_ok(3));
        let set = lookup(b"set").unwrap();
        assert!(set.arity_ok(3) && set.arity_ok(9) && !set.arity_ok(2));
    }
}
