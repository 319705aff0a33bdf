//! Redis backend: a standalone Redis server or a Redis Cluster, through the [fred] client.
//!
//! # URL
//!
//! ```text
//! redis://[user:password@]host[:port][/db][?option=value&…]           one server
//! rediss://…                                                          one server, TLS
//! redis-cluster://[user:password@]host[:port][,host[:port]…][?…]     Redis Cluster
//! rediss-cluster://…                                                  Redis Cluster, TLS
//! ```
//!
//! The port defaults to 6379, the database to 0 (a cluster only has database 0). The hosts of
//! a cluster URL are seeds: the other nodes are discovered from them. User and password are
//! percent-decoded. TLS uses rustls with the platform's root certificates. Options:
//!
//! | option | default | |
//! |---|---|---|
//! | `prefix` | `aft:` | prepended to every key aft stores, so that aft can share a Redis with other data; non-empty, without `{` or `}` |
//! | `timeout_ms` | 5000 | longest wait for any one reply (and for a connection) |
//! | `pool` | 4 | multiplexed connections (per node in a cluster) |
//! | `idempotency_ttl` | aft's `idempotency_retention_secs` + 3600 | seconds an idempotency entry lives after its commit |
//!
//! # Layout
//!
//! With prefix `P`, the metadata tag `M` is `P{P}`: every metadata key carries the same hash
//! tag, so they all live in one cluster slot and one Lua script can update them atomically.
//!
//! * **version**: `P v{h} ‖ u32 BE key length ‖ user key ‖ VersionId::to_bytes` → the value,
//!   where `h` is 16 hex digits of a 64-bit FNV-1a hash of the user key. The length prefix makes
//!   the encoding injective (no two (key, id) pairs share a storage key); the hash tag keeps
//!   every version of one key in one slot while spreading keys over the cluster (a user key may
//!   contain `{` or `}`, which is why it is hashed rather than used as the tag).
//! * **commit records**: hash `M rec`, field = the 24-byte id, value = the record encoding
//!   (format byte, flags, optional length-prefixed idempotency key, body).
//! * **commit log**: sorted set `M log`, every member at score 0, member = the 24-byte id. The
//!   ids' byte order is the version order, so `ZRANGEBYLEX` pages through commits in id order.
//! * **idempotency entries**: string `M i: ‖ key` → the 24-byte id, with a TTL
//!   (`idempotency_ttl`): a retry is recognised for that long after the commit.
//! * **pending markers** (cluster commits only): sorted set `M pending`, score = the server's
//!   time in ms when the commit started (negative once orphan reclamation took it), member =
//!   id; hash `M pendkeys`, field = id → the version keys the commit writes
//!   (`u32 BE length ‖ key`, repeated).
//!
//! Versions and metadata never collide: after `P`, version keys continue with `v`, metadata
//! keys with `{`.
//!
//! # Commits
//!
//! * **Standalone**: one `EVALSHA` of a script that returns the existing id if the idempotency
//!   key is taken (writing nothing), else writes every version, the record, the log entry and
//!   the idempotency entry. A script is atomic, so there are no orphans, and with
//!   `appendfsync always` the reply comes after the whole script is on disk. The script is
//!   sent by its SHA1; after a `NOSCRIPT` (a restarted or flushed server) it is sent whole once.
//! * **Cluster**: (1) a script on the metadata slot checks the idempotency key and writes a
//!   pending marker; (2) the versions are written with one `MSET` per slot, all slots in
//!   parallel; (3) the same commit script as above, without versions, on the metadata slot:
//!   it creates the record only if the marker is still live, and removes the marker. A
//!   duplicate found in (3) (a racing commit with the same idempotency key) deletes the versions
//!   it wrote, best effort. A commit without versions is one script, as on a standalone server.
//!
//! The commit script first checks whether the commit's record exists, so that sending it
//! again (a retried request) reports the commit instead of applying it twice.
//!
//! # Failures
//!
//! * No connection (Redis down, reconnecting): calls fail at once with
//!   [`StorageError::Unavailable`]; the client reconnects by itself, with exponential backoff
//!   (50 ms doubling to 1 s), forever.
//! * A reply that does not come within `timeout_ms`, or a connection that drops while a
//!   request is in flight: [`StorageError::OutcomeUnknown`] for the request that decides a
//!   commit (the script that creates the record), [`StorageError::Unavailable`] otherwise.
//! * Redis refusing a request it did not apply (`LOADING`, `BUSY`, `READONLY`, `CLUSTERDOWN`,
//!   `TRYAGAIN`, `MASTERDOWN`, `OOM`, …): [`StorageError::Unavailable`]; other error replies:
//!   [`StorageError::Io`]; data that does not decode: [`StorageError::Corrupt`].
//! * Versions orphaned by a cluster commit that never reached step (3) keep their pending
//!   marker; [`Storage::reclaim_orphans`] deletes them. Its `older_than` must exceed the time a
//!   commit can take (up to three times `timeout_ms`); a commit whose marker was reclaimed
//!   fails with [`StorageError::Io`] without creating its record.
//! * A request is never sent twice by the client library: a lost reply is reported, not
//!   retried behind the caller's back.
//!
//! Redis must not evict keys (`maxmemory-policy noeviction`, the default), and durability is
//! Redis's own: acknowledged commits survive a crash of Redis only with `appendonly yes` and
//! `appendfsync always`, and a failover to an (asynchronous) replica may lose the last ones.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::url::percent_decode;
use fred::clients::{Client, Pool};
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::{
    Config as FredConfig, ConnectionConfig, Options, PerformanceConfig, ReconnectPolicy,
    ServerConfig, TlsConnector, UnresponsiveConfig,
};
use fred::types::{Builder, ClusterHash, CustomCommand, Resp3Frame, Value};
use fred::util::redis_keyslot;

use super::{
    BoxFuture, CommitBatch, CommitOutcome, CommitRecord, Storage, StorageError, VersionId,
    VersionKey,
};

/// The name errors carry.
const BACKEND: &str = "redis";

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "aft:";
/// Default reply timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);
/// Default number of multiplexed connections.
pub const DEFAULT_POOL: usize = 4;
/// Most connections `pool` may ask for.
pub const MAX_POOL: usize = 64;

/// Most records one scan script returns (Lua's `unpack` has a stack limit).
const SCAN_PAGE: usize = 1000;
/// Most pending markers one reclamation script takes.
const RECLAIM_PAGE: usize = 1000;

/// Where the servers are.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Topology {
    /// One server (or a primary that fails over behind one address).
    Standalone {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Redis Cluster, found from these seed nodes.
    Cluster {
        /// `(host, port)` of each seed.
        seeds: Vec<(String, u16)>,
    },
}

/// Everything a Redis backend URL says; see the module documentation.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// The servers.
    pub topology: Topology,
    /// `rediss://`: connect with TLS.
    pub tls: bool,
    /// ACL user name.
    pub username: Option<String>,
    /// Password (of `username`, or of the `default` user).
    pub password: Option<String>,
    /// Database number (standalone only).
    pub database: u8,
    /// Prefix of every stored key.
    pub prefix: String,
    /// Longest wait for a reply or a connection.
    pub timeout: Duration,
    /// Multiplexed connections (per node).
    pub pool: usize,
    /// How long an idempotency entry lives after its commit; `None` when the URL does not say,
    /// in which case [`RedisStorage::connect`] uses [`DEFAULT_IDEMPOTENCY_TTL`] unless the
    /// caller filled it in (aft uses its `idempotency_retention_secs` plus an hour).
    pub idempotency_ttl: Option<Duration>,
}

/// Idempotency TTL when neither the URL nor the caller gives one: a day and an hour.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(86_400 + 3_600);

impl fmt::Debug for RedisOptions {
    /// Like the URL, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("topology", &self.topology)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("pool", &self.pool)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .finish()
    }
}

impl fmt::Display for RedisOptions {
    /// The servers as a URL, without credentials or options (for logs and errors).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls { "s" } else { "" };
        match &self.topology {
            Topology::Standalone { host, port } => {
                write!(f, "redis{s}://{}/{}", host_port(host, *port), self.database)
            }
            Topology::Cluster { seeds } => {
                write!(f, "redis{s}-cluster://")?;
                for (i, (host, port)) in seeds.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&host_port(host, *port))?;
                }
                Ok(())
            }
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl RedisOptions {
    /// Whether `url` names a Redis backend (by its scheme), whether or not it is valid.
    pub fn is_redis_url(url: &str) -> bool {
        [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
        ]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    }

    /// Parses a backend URL (see the module documentation); the error says what is wrong.
    pub fn parse(url: &str) -> Result<RedisOptions, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("'{url}' is not a URL"))?;
        let (tls, cluster) = match scheme {
            "redis" => (false, false),
            "rediss" => (true, false),
            "redis-cluster" => (false, true),
            "rediss-cluster" => (true, true),
            other => return Err(format!("unknown Redis URL scheme '{other}'")),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = match info.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (info, None),
                };
                let user = percent_decode(user)?;
                let pass = pass.map(percent_decode).transpose()?;
                ((!user.is_empty()).then_some(user), pass)
            }
        };
        let mut seeds = Vec::new();
        for part in hosts.split(',') {
            seeds.push(parse_host_port(part)?);
        }
        if seeds.len() > 1 && !cluster {
            return Err(format!(
                "several hosts need a {scheme}-cluster:// URL, got '{hosts}'"
            ));
        }
        let database = match path {
            "" => 0,
            db => db
                .parse::<u8>()
                .map_err(|_| format!("invalid database '{db}' (expected 0 to 255)"))?,
        };
        if cluster && database != 0 {
            return Err("a Redis Cluster only has database 0".into());
        }
        let mut options = RedisOptions {
            topology: if cluster {
                Topology::Cluster { seeds }
            } else {
                let (host, port) = seeds.remove(0);
                Topology::Standalone { host, port }
            },
            tls,
            username,
            password,
            database,
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
            pool: DEFAULT_POOL,
            idempotency_ttl: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            let number = |what: &str| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{what} must be a positive integer, got '{value}'"))
            };
            match name {
                "prefix" => options.prefix = value.clone(),
                "timeout_ms" => options.timeout = Duration::from_millis(number(name)?),
                "pool" => {
                    options.pool = usize::try_from(number(name)?)
                        .ok()
                        .filter(|n| *n <= MAX_POOL)
                        .ok_or_else(|| format!("pool must be at most {MAX_POOL}"))?
                }
                "idempotency_ttl" => {
                    options.idempotency_ttl = Some(Duration::from_secs(number(name)?))
                }
                other => {
                    return Err(format!(
                        "unknown option '{other}' (expected prefix, timeout_ms, pool or \
                         idempotency_ttl)"
                    ))
                }
            }
        }
        if options.prefix.is_empty() || options.prefix.contains(['{', '}']) {
            return Err(format!(
                "prefix must be non-empty and contain neither '{{' nor '}}', got '{}'",
                options.prefix
            ));
        }
        Ok(options)
    }
}

/// `host[:port]` or `[v6]:port`; the port defaults to 6379.
fn parse_host_port(part: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = part.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in host '{part}'"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("invalid host '{part}'")),
        }
    } else {
        match part.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (part, None),
        }
    };
    if host.is_empty() {
        return Err(format!("missing host in '{part}'"));
    }
    let port = match port {
        None => 6379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port in '{part}'"))?,
    };
    Ok((host.to_owned(), port))
}

// ---------------------------------------------------------------------------------------------
// Layout

/// The storage keys of one prefix.
#[derive(Debug)]
struct Layout {
    /// `P`.
    prefix: Vec<u8>,
    /// `M = P{P}`.
    meta: Vec<u8>,
    rec: Bytes,
    log: Bytes,
    pending: Bytes,
    pendkeys: Bytes,
    /// The slot of every metadata key.
    meta_slot: u16,
}

impl Layout {
    fn new(prefix: &str) -> Layout {
        let prefix = prefix.as_bytes().to_vec();
        let mut meta = prefix.clone();
        meta.push(b'{');
        meta.extend_from_slice(&prefix);
        meta.push(b'}');
        let key = |suffix: &[u8]| Bytes::from([meta.as_slice(), suffix].concat());
        Layout {
            rec: key(b"rec"),
            log: key(b"log"),
            pending: key(b"pending"),
            pendkeys: key(b"pendkeys"),
            meta_slot: redis_keyslot(&meta),
            prefix,
            meta,
        }
    }

    /// `P v{h} ‖ u32 BE length ‖ key ‖ id`.
    fn version(&self, key: &[u8], id: VersionId) -> Result<Bytes, StorageError> {
        let len = u32::try_from(key.len()).map_err(|_| {
            StorageError::Io(format!("key of {} bytes is too long", key.len()).into())
        })?;
        let mut out =
            Vec::with_capacity(self.prefix.len() + 20 + 4 + key.len() + VersionId::ENCODED_LEN);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"v{");
        out.extend_from_slice(format!("{:016x}", fnv1a(key)).as_bytes());
        out.push(b'}');
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&id.to_bytes());
        Ok(Bytes::from(out))
    }

    /// `M i: ‖ key`.
    fn idempotency(&self, key: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.meta.len() + 2 + key.len());
        out.extend_from_slice(&self.meta);
        out.extend_from_slice(b"i:");
        out.extend_from_slice(key);
        Bytes::from(out)
    }
}

/// 64-bit FNV-1a: stable across processes and versions (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Version of the commit-record encoding.
const RECORD_FORMAT: u8 = 1;
/// Flag: an idempotency key follows the header.
const HAS_IDEMPOTENCY_KEY: u8 = 0b1;

/// `format: u8 = 1 ‖ flags: u8 (bit 0: an idempotency key follows) ‖ [u32 BE length ‖ key] ‖
/// body`.
fn encode_record(record: &CommitRecord) -> Result<Bytes, StorageError> {
    let key_len = record.idempotency_key.as_ref().map_or(0, |k| 4 + k.len());
    let mut out = Vec::with_capacity(2 + key_len + record.body.len());
    out.push(RECORD_FORMAT);
    match &record.idempotency_key {
        Some(key) => {
            out.push(HAS_IDEMPOTENCY_KEY);
            let len = u32::try_from(key.len())
                .map_err(|_| StorageError::Io("idempotency key is too long".into()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(key);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&record.body);
    Ok(Bytes::from(out))
}

/// Decodes [`encode_record`]; `bytes` is sliced, not copied.
fn decode_record(id: VersionId, bytes: Bytes) -> Result<CommitRecord, StorageError> {
    let corrupt =
        |what: &str| StorageError::Corrupt(format!("commit record {id:?}: {what}").into());
    let (format, flags) = match bytes.get(..2) {
        Some([format, flags]) => (*format, *flags),
        _ => return Err(corrupt("truncated")),
    };
    if format != RECORD_FORMAT {
        return Err(corrupt(&format!("unknown format {format}")));
    }
    match flags {
        0 => Ok(CommitRecord {
            id,
            idempotency_key: None,
            body: bytes.slice(2..),
        }),
        HAS_IDEMPOTENCY_KEY => {
            let len = bytes
                .get(2..6)
                .and_then(|l| <[u8; 4]>::try_from(l).ok())
                .map(u32::from_be_bytes)
                .and_then(|l| usize::try_from(l).ok())
                .ok_or_else(|| corrupt("truncated in its idempotency key length"))?;
            let end = 6usize
                .checked_add(len)
                .filter(|end| *end <= bytes.len())
                .ok_or_else(|| corrupt("truncated in its idempotency key"))?;
            Ok(CommitRecord {
                id,
                idempotency_key: Some(bytes.slice(6..end)),
                body: bytes.slice(end..),
            })
        }
        other => Err(corrupt(&format!("unknown flags {other:#04x}"))),
    }
}

/// `u32 BE length ‖ key`, repeated.
fn encode_key_list(keys: &[Bytes]) -> Result<Bytes, StorageError> {
    let mut out = Vec::with_capacity(keys.iter().map(|k| 4 + k.len()).sum());
    for key in keys {
        let len = u32::try_from(key.len()).map_err(|_| {
            StorageError::Io(format!("key of {} bytes is too long", key.len()).into())
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(key);
    }
    Ok(Bytes::from(out))
}

fn decode_key_list(bytes: &Bytes) -> Result<Vec<Bytes>, StorageError> {
    let mut keys = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let len = bytes
            .get(at..at + 4)
            .and_then(|l| <[u8; 4]>::try_from(l).ok())
            .map(u32::from_be_bytes)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| StorageError::Corrupt("pending key list truncated".into()))?;
        let end = (at + 4)
            .checked_add(len)
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| StorageError::Corrupt("pending key list truncated".into()))?;
        keys.push(bytes.slice(at + 4..end));
        at = end;
    }
    Ok(keys)
}

fn decode_id(bytes: &[u8], what: &str) -> Result<VersionId, StorageError> {
    VersionId::from_bytes(bytes).ok_or_else(|| {
        StorageError::Corrupt(
            format!(
                "{what} has {} bytes, expected {}",
                bytes.len(),
                VersionId::ENCODED_LEN
            )
            .into(),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Scripts

/// A Lua script and its SHA1, sent with `EVALSHA` (and whole after `NOSCRIPT`).
struct Script {
    body: &'static str,
    sha: String,
}

impl Script {
    fn new(body: &'static str) -> Script {
        Script {
            body,
            sha: sha1_smol::Sha1::from(body).digest().to_string(),
        }
    }
}

/// Creates a commit record. Returns `{1}` committed, `{0, id}` duplicate of `id`, `{2}` the
/// pending marker is gone (reclaimed): nothing written.
///
/// KEYS: rec, log, pending, pendkeys, idempotency entry (a placeholder without a key), then
/// the version keys. ARGV: id, record, '1' if idempotent, TTL in seconds, '1' if a pending
/// marker must be live (and is removed), then one value per version key (ARGV[i] goes to
/// KEYS[i]).
const COMMIT_LUA: &str = r#"
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 1 then return {1} end
if ARGV[5] == '1' then
  local s = redis.call('ZSCORE', KEYS[3], id)
  if (not s) or tonumber(s) < 0 then return {2} end
end
if ARGV[3] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {0, existing} end
end
for i = 6, #KEYS do redis.call('SET', KEYS[i], ARGV[i]) end
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('ZADD', KEYS[2], 0, id)
if ARGV[3] == '1' then redis.call('SET', KEYS[5], id, 'EX', ARGV[4]) end
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
return {1}
"#;

/// Writes a pending marker (cluster commits). Returns `{1}`, or `{0, id}` if the idempotency
/// key is taken (nothing written).
///
/// KEYS: pending, pendkeys, idempotency entry (placeholder without a key). ARGV: id, encoded
/// version keys, '1' if idempotent.
const MARK_LUA: &str = r#"
if ARGV[3] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {1}
"#;

/// Takes pending markers older than ARGV[1] ms (by the server's clock) whose commit has no
/// record (score set to -1, so that the commit can no longer finish), drops those whose
/// commit has a record, and returns `{id, keys, …}` for every taken marker (at most ARGV[2]).
///
/// KEYS: rec, pending, pendkeys.
const RECLAIM_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], 0, now - tonumber(ARGV[1]), 'LIMIT', 0, ARGV[2])
for _, id in ipairs(old) do
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  else
    redis.call('ZADD', KEYS[2], -1, id)
  end
end
local taken = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(0', 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(taken) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
end
return out
"#;

/// Removes pending markers. KEYS: pending, pendkeys. ARGV: ids.
const FORGET_LUA: &str = r#"
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
"#;

/// Pages through the commit log: `{id, record, …}` for up to ARGV[2] ids from ARGV[1] (a
/// `ZRANGEBYLEX` bound). KEYS: rec, log.
const SCAN_LUA: &str = r#"
local ids = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], '+', 'LIMIT', 0, ARGV[2])
if #ids == 0 then return {} end
local recs = redis.call('HMGET', KEYS[1], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  out[2 * i - 1] = id
  out[2 * i] = recs[i]
end
return out
"#;

/// Deletes commit records and log entries, and the idempotency entries that still name them.
///
/// KEYS: rec, log, then idempotency entries. ARGV: n, then n ids, then for each idempotency
/// entry the id it must hold to be deleted.
const DELETE_LUA: &str = r#"
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
for j = 3, #KEYS do
  if redis.call('GET', KEYS[j]) == ARGV[n + j - 1] then redis.call('DEL', KEYS[j]) end
end
return 1
"#;

struct Scripts {
    commit: Script,
    mark: Script,
    reclaim: Script,
    forget: Script,
    scan: Script,
    delete: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            commit: Script::new(COMMIT_LUA),
            mark: Script::new(MARK_LUA),
            reclaim: Script::new(RECLAIM_LUA),
            forget: Script::new(FORGET_LUA),
            scan: Script::new(SCAN_LUA),
            delete: Script::new(DELETE_LUA),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calls and their failures

/// How a request failed, before it is mapped to a [`StorageError`] by what it was for.
#[derive(Debug)]
enum Failure {
    /// Not sent: no connection.
    NotSent(String),
    /// Sent, no reply (timeout, connection lost): it may have been applied.
    Lost(String),
    /// Redis refused it without applying it (loading, busy, read-only replica, cluster down,
    /// out of memory…).
    Refused(String),
    /// Redis answered with another error.
    Server(String),
    /// Unexpected reply.
    Corrupt(String),
}

impl Failure {
    /// For a request whose effect, if any, decides nothing: anything but an error reply is
    /// "unavailable".
    fn plain(self) -> StorageError {
        match self {
            Failure::NotSent(m) | Failure::Lost(m) | Failure::Refused(m) => {
                StorageError::Unavailable(super::Failure::new(BACKEND, m))
            }
            Failure::Server(m) => StorageError::Io(super::Failure::new(BACKEND, m)),
            Failure::Corrupt(m) => StorageError::Corrupt(super::Failure::new(BACKEND, m)),
        }
    }

    /// For the request that creates a commit record: a lost reply leaves the outcome unknown.
    fn deciding(self) -> StorageError {
        match self {
            Failure::Lost(m) | Failure::Corrupt(m) => {
                StorageError::OutcomeUnknown(super::Failure::new(BACKEND, m))
            }
            other => other.plain(),
        }
    }
}

/// Error replies of requests that Redis did not apply.
const REFUSALS: [&str; 9] = [
    "LOADING",
    "BUSY",
    "READONLY",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MASTERDOWN",
    "OOM",
    "NOREPLICAS",
    "MOVED",
];

fn server_error(text: &str) -> Failure {
    let text = text.trim();
    if REFUSALS.iter().any(|p| text.starts_with(p)) {
        Failure::Refused(format!("Redis refused the request: {text}"))
    } else {
        Failure::Server(format!("Redis error: {text}"))
    }
}

fn client_error(e: FredError, timeout: Duration) -> Failure {
    match e.kind() {
        ErrorKind::Timeout => Failure::Lost(format!(
            "no reply from Redis within {} ms",
            timeout.as_millis()
        )),
        ErrorKind::Routing | ErrorKind::Backpressure => {
            Failure::NotSent(format!("cannot send to Redis: {e}"))
        }
        ErrorKind::Cluster | ErrorKind::Auth => Failure::Refused(format!("Redis: {e}")),
        // A connection lost with the request in flight, or something unexpected: the request
        // may have been applied.
        _ => Failure::Lost(format!("Redis connection failed: {e}")),
    }
}

/// Whether a frame is an error reply; its text if so.
fn error_text(frame: &Resp3Frame) -> Option<String> {
    match frame {
        Resp3Frame::SimpleError { data, .. } => Some(data.to_string()),
        Resp3Frame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

fn frame_bytes(frame: Resp3Frame) -> Result<Option<Bytes>, Failure> {
    match frame {
        Resp3Frame::Null => Ok(None),
        Resp3Frame::BlobString { data, .. } | Resp3Frame::SimpleString { data, .. } => {
            Ok(Some(data))
        }
        other => Err(Failure::Corrupt(format!(
            "unexpected reply from Redis: {}",
            describe(&other)
        ))),
    }
}

fn frame_array(frame: Resp3Frame) -> Result<Vec<Resp3Frame>, Failure> {
    match frame {
        Resp3Frame::Array { data, .. } => Ok(data),
        Resp3Frame::Null => Ok(Vec::new()),
        other => Err(Failure::Corrupt(format!(
            "unexpected reply from Redis: {} (expected an array)",
            describe(&other)
        ))),
    }
}

/// The kind of a frame, for messages.
fn describe(frame: &Resp3Frame) -> &'static str {
    match frame {
        Resp3Frame::Null => "nil",
        Resp3Frame::BlobString { .. } | Resp3Frame::SimpleString { .. } => "a string",
        Resp3Frame::Number { .. } => "an integer",
        Resp3Frame::Array { .. } => "an array",
        Resp3Frame::SimpleError { .. } | Resp3Frame::BlobError { .. } => "an error",
        _ => "an unexpected type",
    }
}

fn frame_int(frame: &Resp3Frame) -> Option<i64> {
    match frame {
        Resp3Frame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

/// What the commit script answered.
enum Committed {
    Yes,
    Duplicate(VersionId),
    /// The pending marker was reclaimed: nothing was written.
    MarkerGone,
}

fn parse_commit_reply(frame: Resp3Frame) -> Result<Committed, Failure> {
    let items = frame_array(frame)?;
    match items.first().and_then(frame_int) {
        Some(1) => Ok(Committed::Yes),
        Some(2) => Ok(Committed::MarkerGone),
        Some(0) => {
            let id = items
                .into_iter()
                .nth(1)
                .map(frame_bytes)
                .transpose()?
                .flatten()
                .ok_or_else(|| Failure::Corrupt("duplicate without an id".into()))?;
            VersionId::from_bytes(&id)
                .map(Committed::Duplicate)
                .ok_or_else(|| {
                    Failure::Corrupt(format!(
                        "idempotency entry has {} bytes, expected {}",
                        id.len(),
                        VersionId::ENCODED_LEN
                    ))
                })
        }
        _ => Err(Failure::Corrupt(
            "unexpected reply to a commit script".into(),
        )),
    }
}

fn bytes(b: &Bytes) -> Value {
    Value::Bytes(b.clone())
}

fn text(s: impl Into<String>) -> Value {
    Value::Bytes(Bytes::from(s.into()))
}

// ---------------------------------------------------------------------------------------------
// The backend

/// A [`Storage`] on Redis or Redis Cluster. See the module documentation.
///
/// Cheap to share (`Arc`); every call may run concurrently with every other, over a pool of
/// multiplexed connections.
pub struct RedisStorage {
    pool: Pool,
    layout: Layout,
    scripts: Scripts,
    cluster: bool,
    timeout: Duration,
    idempotency_ttl_secs: u64,
    /// The servers, for messages.
    servers: String,
    closed: AtomicBool,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("servers", &self.servers)
            .field("prefix", &String::from_utf8_lossy(&self.layout.prefix))
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisStorage {
    /// Connects to the servers of `options` and waits (at most `options.timeout`) until every
    /// connection of the pool is up; fails with [`StorageError::Unavailable`] if they are not.
    /// From then on the pool reconnects by itself whenever a connection drops.
    ///
    /// Must be called inside a Tokio runtime (the connections run as tasks on it).
    pub async fn connect(options: &RedisOptions) -> Result<RedisStorage, StorageError> {
        let servers = options.to_string();
        let config_error = |e: FredError| {
            StorageError::Unavailable(format!("cannot configure {servers}: {e}").into())
        };
        let server = match &options.topology {
            Topology::Standalone { host, port } => {
                ServerConfig::new_centralized(host.as_str(), *port)
            }
            Topology::Cluster { seeds } => ServerConfig::new_clustered(
                seeds
                    .iter()
                    .map(|(host, port)| (host.as_str(), *port))
                    .collect(),
            ),
        };
        let tls = if options.tls {
            Some(TlsConnector::default_rustls().map_err(config_error)?.into())
        } else {
            None
        };
        let config = FredConfig {
            // Keep trying the first connection too; `connect` bounds the wait.
            fail_fast: false,
            username: options.username.clone(),
            password: options.password.clone(),
            server,
            database: (options.database != 0).then_some(options.database),
            tls,
            ..FredConfig::default()
        };
        let timeout = options.timeout;
        let mut builder = Builder::from_config(config);
        builder
            // Forever, 50 ms doubling to 1 s (plus fred's jitter).
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
            .set_connection_config(ConnectionConfig {
                connection_timeout: timeout,
                internal_command_timeout: timeout,
                // A request in flight when its connection drops fails (see `Failure::Lost`)
                // rather than being sent again later.
                max_command_attempts: 1,
                unresponsive: UnresponsiveConfig {
                    max_timeout: Some(timeout.max(Duration::from_secs(1)) * 2),
                    interval: (timeout / 4).max(Duration::from_millis(100)),
                },
                ..ConnectionConfig::default()
            })
            .set_performance_config(PerformanceConfig {
                default_command_timeout: timeout,
                ..PerformanceConfig::default()
            });
        let pool = builder.build_pool(options.pool).map_err(config_error)?;
        // To say why the first connection failed, if it does.
        let mut errors = pool.clients().first().map(|c| c.error_rx());
        // The tasks driving the connections; they end at `quit`.
        let _ = pool.connect_pool();
        let storage = RedisStorage {
            pool,
            layout: Layout::new(&options.prefix),
            scripts: Scripts::new(),
            cluster: matches!(options.topology, Topology::Cluster { .. }),
            timeout,
            idempotency_ttl_secs: options
                .idempotency_ttl
                .unwrap_or(DEFAULT_IDEMPOTENCY_TTL)
                .as_secs()
                .max(1),
            servers,
            closed: AtomicBool::new(false),
        };
        match tokio::time::timeout(timeout, storage.pool.wait_for_connect()).await {
            Ok(Ok(())) => {
                storage.load_scripts().await;
                Ok(storage)
            }
            outcome => {
                let mut why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no connection within {} ms", timeout.as_millis()),
                };
                let mut last = None;
                while let Some(Ok((e, _))) = errors.as_mut().map(|rx| rx.try_recv()) {
                    last = Some(e);
                }
                if let Some(e) = last {
                    why = format!("{why} (last error: {e})");
                }
                storage.closed.store(true, Ordering::Release);
                storage.shutdown().await;
                Err(StorageError::Unavailable(
                    format!("cannot connect to {}: {why}", storage.servers).into(),
                ))
            }
        }
    }

    /// Loads every script on the server of the metadata slot, so that the first commit is
    /// already one `EVALSHA`. Best effort: a script that is missing later is sent whole.
    async fn load_scripts(&self) {
        let s = &self.scripts;
        for script in [
            &s.commit, &s.mark, &s.reclaim, &s.forget, &s.scan, &s.delete,
        ] {
            let load = vec![text("LOAD"), text(script.body)];
            if let Err(e) = self.call(self.layout.meta_slot, "SCRIPT", load).await {
                tracing::debug!("cannot preload a script on {}: {e:?}", self.servers);
            }
        }
    }

    /// Whether this is a Redis Cluster backend.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The key prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.layout.prefix
    }

    /// Stops every connection task.
    async fn shutdown(&self) {
        for client in self.pool.clients() {
            let _ = tokio::time::timeout(self.timeout, client.quit()).await;
        }
    }

    fn check_open(&self) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StorageError::Closed)
        } else {
            Ok(())
        }
    }

    /// A connected client of the pool, or `NotSent`.
    fn client(&self) -> Result<&Client, Failure> {
        let client = self.pool.next_connected();
        if client.is_connected() {
            Ok(client)
        } else {
            Err(Failure::NotSent(format!(
                "not connected to {} (reconnecting)",
                self.servers
            )))
        }
    }

    /// Sends one command to the node owning `slot`; an error reply is a `Failure`.
    async fn call(
        &self,
        slot: u16,
        command: &'static str,
        args: Vec<Value>,
    ) -> Result<Resp3Frame, Failure> {
        let client = self.client()?;
        let options = Options {
            fail_fast: true,
            max_attempts: Some(1),
            timeout: Some(self.timeout),
            ..Options::default()
        };
        let cmd = CustomCommand::new_static(command, ClusterHash::Custom(slot), false);
        let frame = client
            .with_options(&options)
            .custom_raw(cmd, args)
            .await
            .map_err(|e| client_error(e, self.timeout))?;
        match error_text(&frame) {
            Some(text) => Err(server_error(&text)),
            None => Ok(frame),
        }
    }

    /// Runs a script on the metadata slot: `EVALSHA`, and `EVAL` after `NOSCRIPT` (which
    /// also caches it on that server).
    async fn eval(
        &self,
        script: &Script,
        keys: Vec<Value>,
        args: Vec<Value>,
    ) -> Result<Resp3Frame, Failure> {
        let numkeys = keys.len();
        let mut request = Vec::with_capacity(2 + keys.len() + args.len());
        request.push(text(script.sha.as_str()));
        request.push(Value::Integer(numkeys as i64));
        request.extend(keys);
        request.extend(args);
        match self
            .call(self.layout.meta_slot, "EVALSHA", request.clone())
            .await
        {
            Err(Failure::Server(message)) if message.contains("NOSCRIPT") => {
                request[0] = text(script.body);
                self.call(self.layout.meta_slot, "EVAL", request).await
            }
            other => other,
        }
    }

    /// Groups `keys` by slot (one group on a standalone server), keeping each key's index.
    fn by_slot(&self, keys: &[Bytes]) -> BTreeMap<u16, Vec<usize>> {
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = if self.cluster {
                redis_keyslot(key)
            } else {
                self.layout.meta_slot
            };
            groups.entry(slot).or_default().push(i);
        }
        groups
    }

    /// Deletes `keys`, one `DEL` per slot, slots in parallel; returns how many existed.
    async fn delete_keys(&self, keys: &[Bytes]) -> Result<u64, Failure> {
        let calls = self.by_slot(keys).into_iter().map(|(slot, indexes)| {
            let args = indexes.iter().map(|i| bytes(&keys[*i])).collect();
            self.call(slot, "DEL", args)
        });
        let mut deleted = 0u64;
        for reply in futures_util::future::join_all(calls).await {
            let reply = reply?;
            deleted += frame_int(&reply)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0);
        }
        Ok(deleted)
    }

    /// KEYS and ARGV of [`COMMIT_LUA`] for `batch`, with `version_keys` written by the script
    /// (empty when they were written before) and the pending-marker check on or off.
    fn commit_request(
        &self,
        record: &CommitRecord,
        versions: Vec<(Bytes, Bytes)>,
        expect_marker: bool,
    ) -> Result<(Vec<Value>, Vec<Value>), StorageError> {
        let idem = match &record.idempotency_key {
            Some(key) => self.layout.idempotency(key),
            None => self.layout.idempotency(b""),
        };
        let mut keys = Vec::with_capacity(5 + versions.len());
        keys.extend([
            bytes(&self.layout.rec),
            bytes(&self.layout.log),
            bytes(&self.layout.pending),
            bytes(&self.layout.pendkeys),
            bytes(&idem),
        ]);
        let mut args = Vec::with_capacity(5 + versions.len());
        args.extend([
            Value::Bytes(Bytes::copy_from_slice(&record.id.to_bytes())),
            Value::Bytes(encode_record(record)?),
            text(if record.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            }),
            text(self.idempotency_ttl_secs.to_string()),
            text(if expect_marker { "1" } else { "0" }),
        ]);
        for (key, value) in versions {
            keys.push(Value::Bytes(key));
            args.push(Value::Bytes(value));
        }
        Ok((keys, args))
    }

    /// Runs the commit script: the request that decides the commit.
    async fn run_commit_script(
        &self,
        keys: Vec<Value>,
        args: Vec<Value>,
    ) -> Result<Committed, StorageError> {
        let reply = self
            .eval(&self.scripts.commit, keys, args)
            .await
            .map_err(Failure::deciding)?;
        parse_commit_reply(reply).map_err(Failure::deciding)
    }

    /// The standalone commit (and a cluster commit without versions): one script.
    async fn commit_in_one(&self, batch: CommitBatch) -> Result<CommitOutcome, StorageError> {
        let id = batch.record.id;
        let mut versions = Vec::with_capacity(batch.versions.len());
        for (key, value) in batch.versions {
            versions.push((self.layout.version(&key, id)?, value));
        }
        let (keys, args) = self.commit_request(&batch.record, versions, false)?;
        match self.run_commit_script(keys, args).await? {
            Committed::Yes => Ok(CommitOutcome::Committed),
            Committed::Duplicate(existing) => Ok(CommitOutcome::Duplicate(existing)),
            Committed::MarkerGone => Err(StorageError::Io(
                "unexpected reply to a commit without pending marker".into(),
            )),
        }
    }

    /// The cluster commit: marker, versions per slot in parallel, then the record.
    async fn commit_in_cluster(&self, batch: CommitBatch) -> Result<CommitOutcome, StorageError> {
        let id = batch.record.id;
        let id_bytes = Bytes::copy_from_slice(&id.to_bytes());
        let mut keys = Vec::with_capacity(batch.versions.len());
        let mut values = Vec::with_capacity(batch.versions.len());
        for (key, value) in batch.versions {
            keys.push(self.layout.version(&key, id)?);
            values.push(value);
        }
        let idem = batch
            .record
            .idempotency_key
            .as_ref()
            .map(|k| self.layout.idempotency(k));

        // 1. The pending marker (and an early duplicate check).
        let mark = self
            .eval(
                &self.scripts.mark,
                vec![
                    bytes(&self.layout.pending),
                    bytes(&self.layout.pendkeys),
                    bytes(&idem.clone().unwrap_or_else(|| self.layout.idempotency(b""))),
                ],
                vec![
                    bytes(&id_bytes),
                    Value::Bytes(encode_key_list(&keys)?),
                    text(if idem.is_some() { "1" } else { "0" }),
                ],
            )
            .await
            .map_err(Failure::plain)?;
        match parse_commit_reply(mark).map_err(Failure::plain)? {
            Committed::Yes => {}
            Committed::Duplicate(existing) => return Ok(CommitOutcome::Duplicate(existing)),
            Committed::MarkerGone => {
                return Err(StorageError::Corrupt(
                    "unexpected reply to a pending marker".into(),
                ))
            }
        }

        // 2. The versions: one MSET per slot, in parallel. A failure here leaves no record
        // (the marker lets `reclaim_orphans` find what was written).
        let writes = self.by_slot(&keys).into_iter().map(|(slot, indexes)| {
            let mut args = Vec::with_capacity(2 * indexes.len());
            for i in indexes {
                args.push(bytes(&keys[i]));
                args.push(bytes(&values[i]));
            }
            self.call(slot, "MSET", args)
        });
        for reply in futures_util::future::join_all(writes).await {
            reply.map_err(Failure::plain)?;
        }

        // 3. The record, if the marker is still live.
        let (script_keys, args) = self.commit_request(&batch.record, Vec::new(), true)?;
        match self.run_commit_script(script_keys, args).await? {
            Committed::Yes => Ok(CommitOutcome::Committed),
            Committed::Duplicate(existing) => {
                // Lost a race on the idempotency key: the versions are orphans. Delete them now
                // (best effort); the marker goes only once they are gone.
                if self.delete_keys(&keys).await.is_ok() {
                    let _ = self
                        .eval(
                            &self.scripts.forget,
                            vec![bytes(&self.layout.pending), bytes(&self.layout.pendkeys)],
                            vec![bytes(&id_bytes)],
                        )
                        .await;
                }
                Ok(CommitOutcome::Duplicate(existing))
            }
            Committed::MarkerGone => Err(StorageError::Io(
                format!(
                    "commit {id:?} took longer than the orphan grace period and was reclaimed; \
                 nothing was committed"
                )
                .into(),
            )),
        }
    }

    async fn get_now(
        &self,
        requested: Vec<VersionKey>,
    ) -> Result<Vec<Option<Bytes>>, StorageError> {
        self.check_open()?;
        let mut out = vec![None; requested.len()];
        // A key too long to encode was never stored.
        let mut keys = Vec::with_capacity(requested.len());
        let mut positions = Vec::with_capacity(requested.len());
        for (i, v) in requested.iter().enumerate() {
            if let Ok(key) = self.layout.version(&v.key, v.version) {
                keys.push(key);
                positions.push(i);
            }
        }
        let groups = self.by_slot(&keys);
        let reads = groups.iter().map(|(slot, indexes)| {
            let args = indexes.iter().map(|i| bytes(&keys[*i])).collect();
            self.call(*slot, "MGET", args)
        });
        let replies = futures_util::future::join_all(reads).await;
        for (indexes, reply) in groups.values().zip(replies) {
            let values = frame_array(reply.map_err(Failure::plain)?).map_err(Failure::plain)?;
            if values.len() != indexes.len() {
                return Err(StorageError::Corrupt(
                    format!(
                        "MGET of {} keys returned {} values",
                        indexes.len(),
                        values.len()
                    )
                    .into(),
                ));
            }
            for (i, value) in indexes.iter().zip(values) {
                out[positions[*i]] = frame_bytes(value).map_err(Failure::plain)?;
            }
        }
        Ok(out)
    }

    async fn scan_now(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        self.check_open()?;
        let mut records = Vec::new();
        let mut after = after;
        while records.len() < limit {
            let page = (limit - records.len()).min(SCAN_PAGE);
            let from = match after {
                Some(id) => Value::Bytes(Bytes::from([&b"("[..], &id.to_bytes()].concat())),
                None => text("-"),
            };
            let reply = self
                .eval(
                    &self.scripts.scan,
                    vec![bytes(&self.layout.rec), bytes(&self.layout.log)],
                    vec![from, text(page.to_string())],
                )
                .await
                .map_err(Failure::plain)?;
            let items = frame_array(reply).map_err(Failure::plain)?;
            let got = items.len() / 2;
            let mut items = items.into_iter();
            while let (Some(id), Some(record)) = (items.next(), items.next()) {
                let id = frame_bytes(id)
                    .map_err(Failure::plain)?
                    .ok_or_else(|| StorageError::Corrupt("commit log entry is nil".into()))?;
                let id = decode_id(&id, "commit log entry")?;
                let record = frame_bytes(record)
                    .map_err(Failure::plain)?
                    .ok_or_else(|| {
                        StorageError::Corrupt(
                            format!("the commit log lists {id:?} but its record is missing").into(),
                        )
                    })?;
                records.push(decode_record(id, record)?);
                after = Some(id);
            }
            if got < page {
                break;
            }
        }
        Ok(records)
    }

    async fn find_now(&self, key: Bytes) -> Result<Option<VersionId>, StorageError> {
        self.check_open()?;
        let entry = self.layout.idempotency(&key);
        let reply = self
            .call(self.layout.meta_slot, "GET", vec![Value::Bytes(entry)])
            .await
            .map_err(Failure::plain)?;
        frame_bytes(reply)
            .map_err(Failure::plain)?
            .map(|id| decode_id(&id, "idempotency entry"))
            .transpose()
    }

    async fn delete_now(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionId>,
    ) -> Result<(), StorageError> {
        self.check_open()?;
        // A key too long to encode was never stored.
        let keys: Vec<Bytes> = versions
            .iter()
            .filter_map(|v| self.layout.version(&v.key, v.version).ok())
            .collect();
        if !keys.is_empty() {
            self.delete_keys(&keys).await.map_err(Failure::plain)?;
        }
        for chunk in commits.chunks(SCAN_PAGE) {
            self.delete_records(chunk).await?;
        }
        Ok(())
    }

    /// Reads the records (for their idempotency keys), then deletes them, their log entries
    /// and the idempotency entries that still name them, in one script.
    async fn delete_records(&self, ids: &[VersionId]) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        let id_values: Vec<Value> = ids
            .iter()
            .map(|id| Value::Bytes(Bytes::copy_from_slice(&id.to_bytes())))
            .collect();
        let mut request = vec![bytes(&self.layout.rec)];
        request.extend(id_values.iter().cloned());
        let reply = self
            .call(self.layout.meta_slot, "HMGET", request)
            .await
            .map_err(Failure::plain)?;
        let stored = frame_array(reply).map_err(Failure::plain)?;
        let mut keys = vec![bytes(&self.layout.rec), bytes(&self.layout.log)];
        let mut args = vec![text(ids.len().to_string())];
        args.extend(id_values.iter().cloned());
        let mut owners = Vec::new();
        for (id, record) in ids.iter().zip(stored) {
            let Some(record) = frame_bytes(record).map_err(Failure::plain)? else {
                continue;
            };
            if let Some(key) = decode_record(*id, record)?.idempotency_key {
                keys.push(Value::Bytes(self.layout.idempotency(&key)));
                owners.push(Value::Bytes(Bytes::copy_from_slice(&id.to_bytes())));
            }
        }
        args.extend(owners);
        self.eval(&self.scripts.delete, keys, args)
            .await
            .map_err(Failure::plain)?;
        Ok(())
    }

    async fn reclaim_now(&self, older_than: Duration) -> Result<u64, StorageError> {
        self.check_open()?;
        let older_ms = u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX);
        let mut deleted = 0u64;
        loop {
            let reply = self
                .eval(
                    &self.scripts.reclaim,
                    vec![
                        bytes(&self.layout.rec),
                        bytes(&self.layout.pending),
                        bytes(&self.layout.pendkeys),
                    ],
                    vec![text(older_ms.to_string()), text(RECLAIM_PAGE.to_string())],
                )
                .await
                .map_err(Failure::plain)?;
            let items = frame_array(reply).map_err(Failure::plain)?;
            if items.is_empty() {
                return Ok(deleted);
            }
            let taken = items.len() / 2;
            let mut ids = Vec::with_capacity(taken);
            let mut keys = Vec::new();
            let mut items = items.into_iter();
            while let (Some(id), Some(list)) = (items.next(), items.next()) {
                let id = frame_bytes(id)
                    .map_err(Failure::plain)?
                    .ok_or_else(|| StorageError::Corrupt("pending marker id is nil".into()))?;
                let list = frame_bytes(list)
                    .map_err(Failure::plain)?
                    .unwrap_or_default();
                keys.extend(decode_key_list(&list)?);
                ids.push(Value::Bytes(id));
            }
            if !keys.is_empty() {
                deleted += self.delete_keys(&keys).await.map_err(Failure::plain)?;
            }
            self.eval(
                &self.scripts.forget,
                vec![bytes(&self.layout.pending), bytes(&self.layout.pendkeys)],
                ids,
            )
            .await
            .map_err(Failure::plain)?;
            if taken < RECLAIM_PAGE {
                return Ok(deleted);
            }
        }
    }
}

impl Storage for RedisStorage {
    fn name(&self) -> &'static str {
        if self.cluster {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn commit(&self, batch: CommitBatch) -> BoxFuture<'_, Result<CommitOutcome, StorageError>> {
        Box::pin(async move {
            self.check_open()?;
            if self.cluster && !batch.versions.is_empty() {
                self.commit_in_cluster(batch).await
            } else {
                self.commit_in_one(batch).await
            }
        })
    }

    fn get_versions(
        &self,
        keys: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, StorageError>> {
        Box::pin(self.get_now(keys))
    }

    fn scan_commits(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommitRecord>, StorageError>> {
        Box::pin(self.scan_now(after, limit))
    }

    fn find_idempotent(
        &self,
        idempotency_key: Bytes,
    ) -> BoxFuture<'_, Result<Option<VersionId>, StorageError>> {
        Box::pin(self.find_now(idempotency_key))
    }

    fn delete(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionId>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.delete_now(versions, commits))
    }

    /// Closes every connection. Requests in flight may complete or fail; every later call
    /// returns [`StorageError::Closed`]. Everything acknowledged is already in Redis.
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            if !self.closed.swap(true, Ordering::AcqRel) {
                self.shutdown().await;
            }
            Ok(())
        })
    }

    /// Deletes the versions of cluster commits whose pending marker is older than
    /// `older_than` (by the Redis server's clock) and that have no record; such a commit can
    /// no longer create its record. A standalone server has no markers (its commits are
    /// atomic): this finds nothing.
    fn reclaim_orphans(&self, older_than: Duration) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(self.reclaim_now(older_than))
    }
}

impl Drop for RedisStorage {
    /// Without a `close`, the connection tasks are told to stop (they would otherwise keep
    /// reconnecting).
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let clients: Vec<Client> = self.pool.clients().to_vec();
                let timeout = self.timeout;
                runtime.spawn(async move {
                    for client in clients {
                        let _ = tokio::time::timeout(timeout, client.quit()).await;
                    }
                });
            }
        }
    }
}

/// Redis servers for tests (shared with the integration tests, hence the path).
#[cfg(test)]
pub(crate) use crate::storage::testkit::redis_server as testing;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::testing::{shared_cluster, unique_prefix, RedisCluster, RedisServer};
    use super::*;
    use crate::storage::testkit::conformance::{batch, commit_ok, get_one, scan_all, vid, vkey};

    /// Connects, blocking (the conformance factories are synchronous).
    fn connect_blocking(url: &str) -> Arc<RedisStorage> {
        let options = RedisOptions::parse(url).expect("valid url");
        let storage = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(RedisStorage::connect(&options))
        })
        .expect("connect");
        Arc::new(storage)
    }

    async fn connect(url: &str) -> RedisStorage {
        let options = RedisOptions::parse(url).expect("valid url");
        RedisStorage::connect(&options).await.expect("connect")
    }

    fn standalone() -> (Arc<RedisStorage>, RedisServer) {
        let server = RedisServer::start();
        let storage = connect_blocking(&format!("redis://127.0.0.1:{}", server.port));
        (storage, server)
    }

    fn cluster() -> (Arc<RedisStorage>, Arc<RedisCluster>) {
        let cluster = shared_cluster();
        let storage = connect_blocking(&cluster.url(&format!("?prefix={}", unique_prefix())));
        (storage, cluster)
    }

    mod standalone {
        use super::*;
        crate::storage_conformance_tests!(standalone);
    }

    mod cluster {
        use super::*;
        crate::storage_conformance_tests!(cluster);
    }

    #[test]
    fn urls_parse() {
        let o = RedisOptions::parse("redis://localhost").unwrap();
        assert_eq!(
            o.topology,
            Topology::Standalone {
                host: "localhost".into(),
                port: 6379
            }
        );
        assert!(!o.tls);
        assert_eq!((o.database, o.pool, o.timeout), (0, 4, DEFAULT_TIMEOUT));
        assert_eq!(o.prefix, "aft:");
        assert_eq!(o.idempotency_ttl, None);

        let o = RedisOptions::parse(
            "rediss://al%40ice:p%3Ass@10.0.0.1:7000/3?prefix=app%3Aaft:&timeout_ms=250&pool=2\
             &idempotency_ttl=60",
        )
        .unwrap();
        assert!(o.tls);
        assert_eq!(o.username.as_deref(), Some("al@ice"));
        assert_eq!(o.password.as_deref(), Some("p:ss"));
        assert_eq!(o.database, 3);
        assert_eq!(o.prefix, "app:aft:");
        assert_eq!(o.timeout, Duration::from_millis(250));
        assert_eq!(o.pool, 2);
        assert_eq!(o.idempotency_ttl, Some(Duration::from_secs(60)));
        assert_eq!(o.to_string(), "rediss://10.0.0.1:7000/3");
        assert!(
            !format!("{o:?}").contains("p:ss"),
            "the password is redacted"
        );

        let o = RedisOptions::parse("redis://:secret@[::1]:6380/").unwrap();
        assert_eq!(o.username, None);
        assert_eq!(o.password.as_deref(), Some("secret"));
        assert_eq!(
            o.topology,
            Topology::Standalone {
                host: "::1".into(),
                port: 6380
            }
        );

        let o = RedisOptions::parse("redis-cluster://a:7000,b,[::1]:7002?pool=1").unwrap();
        assert_eq!(
            o.topology,
            Topology::Cluster {
                seeds: vec![("a".into(), 7000), ("b".into(), 6379), ("::1".into(), 7002)]
            }
        );
        assert_eq!(o.to_string(), "redis-cluster://a:7000,b:6379,[::1]:7002");
        assert!(RedisOptions::parse("rediss-cluster://a:1").unwrap().tls);

        for bad in [
            "redis//x",
            "http://x",
            "redis://",
            "redis://a:0",
            "redis://a:65536",
            "redis://a:x",
            "redis://a,b",
            "redis://a/256",
            "redis://a/x",
            "redis-cluster://a/1",
            "redis://a?prefix=",
            "redis://a?prefix=x{y",
            "redis://a?prefix=x}",
            "redis://a?timeout_ms=0",
            "redis://a?pool=0",
            "redis://a?pool=65",
            "redis://a?idempotency_ttl=-1",
            "redis://a?nope=1",
            "redis://a%zz@b",
            "redis://[::1:5",
        ] {
            assert!(RedisOptions::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(RedisOptions::is_redis_url("redis-cluster://x"));
        assert!(!RedisOptions::is_redis_url("memory"));
    }

    #[test]
    fn layout_is_injective_and_slots_group_what_goes_together() {
        let layout = Layout::new("aft:");
        assert_eq!(&layout.meta[..], b"aft:{aft:}");
        for key in [&layout.rec, &layout.log, &layout.pending, &layout.pendkeys] {
            assert_eq!(redis_keyslot(key), layout.meta_slot);
        }
        assert_eq!(
            redis_keyslot(&layout.idempotency(b"x{y}")),
            layout.meta_slot
        );
        assert_eq!(redis_keyslot(&layout.idempotency(b"")), layout.meta_slot);

        let keys: [&[u8]; 7] = [b"", b"a", b"ab", b"a\0", b"{a}", b"}{", &[0xff; 3]];
        let ids = [vid(1, 2), vid(2, 1), vid(0, 0)];
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            let slots: std::collections::HashSet<u16> = ids
                .iter()
                .map(|id| redis_keyslot(&layout.version(key, *id).unwrap()))
                .collect();
            assert_eq!(slots.len(), 1, "every version of {key:?} in one slot");
            for id in ids {
                let stored = layout.version(key, id).unwrap();
                assert!(stored.starts_with(b"aft:v{"));
                assert!(seen.insert(stored), "{key:?} {id:?} collides");
            }
        }
        // Keys spread over the cluster.
        let slots: std::collections::HashSet<u16> = (0..100)
            .map(|i| {
                redis_keyslot(
                    &layout
                        .version(format!("k{i}").as_bytes(), vid(1, 1))
                        .unwrap(),
                )
            })
            .collect();
        assert!(slots.len() > 90, "{} slots", slots.len());
    }

    #[test]
    fn records_and_key_lists_round_trip() {
        for (idem, body) in [
            (None, &b""[..]),
            (Some(&b""[..]), &b"body"[..]),
            (Some(&b"key"[..]), &[0u8, 1, 2][..]),
        ] {
            let record = CommitRecord {
                id: vid(3, 4),
                idempotency_key: idem.map(Bytes::copy_from_slice),
                body: Bytes::copy_from_slice(body),
            };
            let encoded = encode_record(&record).unwrap();
            assert_eq!(decode_record(record.id, encoded).unwrap(), record);
        }
        for bad in [
            &b""[..],
            b"\x01",
            b"\x02\x00",
            b"\x01\x02",
            b"\x01\x01\x00\x00\x00\x05ab",
        ] {
            assert!(matches!(
                decode_record(vid(1, 1), Bytes::copy_from_slice(bad)),
                Err(StorageError::Corrupt(_))
            ));
        }
        let keys = vec![
            Bytes::from_static(b"a"),
            Bytes::new(),
            Bytes::from_static(b"xyz"),
        ];
        assert_eq!(
            decode_key_list(&encode_key_list(&keys).unwrap()).unwrap(),
            keys
        );
        assert!(decode_key_list(&Bytes::from_static(b"\0\0\0\x05ab")).is_err());
    }

    fn commandstat(server: &RedisServer, command: &str) -> u64 {
        let info = server.cli(&["info", "commandstats"]);
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_standalone_commit_is_one_evalsha() {
        let server = RedisServer::start();
        let s = connect(&format!("redis://127.0.0.1:{}", server.port)).await;
        assert_eq!(s.name(), "redis");
        server.cli(&["config", "resetstat"]);
        for i in 0..20u64 {
            let idem = format!("idem-{i}");
            commit_ok(
                &s,
                batch(
                    vid(i, 1),
                    Some(idem.as_bytes()),
                    &[(b"a", b"1"), (b"b", b"2")],
                ),
            )
            .await;
        }
        assert_eq!(commandstat(&server, "evalsha"), 20);
        assert_eq!(commandstat(&server, "eval"), 0);
        assert_eq!(commandstat(&server, "mset"), 0);
        // The idempotency entry expires.
        let ttl: i64 = server
            .cli(&["ttl", "aft:{aft:}i:idem-3"])
            .trim()
            .parse()
            .unwrap();
        assert!(ttl > 86_400 && ttl <= 90_000, "ttl {ttl}");
        s.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scripts_are_sent_again_after_a_flush() {
        let server = RedisServer::start();
        let s = connect(&format!("redis://127.0.0.1:{}", server.port)).await;
        commit_ok(&s, batch(vid(1, 1), None, &[(b"k", b"1")])).await;
        server.cli(&["script", "flush"]);
        commit_ok(&s, batch(vid(2, 1), None, &[(b"k", b"2")])).await;
        assert_eq!(scan_all(&s).await.len(), 2);
        server.cli(&["script", "flush"]);
        assert_eq!(scan_all(&s).await.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefixes_and_databases_keep_stores_apart() {
        let server = RedisServer::start();
        let url = format!("redis://127.0.0.1:{}", server.port);
        let a = connect(&url).await;
        let b = connect(&format!("{url}?prefix=other:")).await;
        let c = connect(&format!("{url}/5")).await;
        commit_ok(&a, batch(vid(1, 1), Some(b"i"), &[(b"k", b"a")])).await;
        commit_ok(&b, batch(vid(2, 2), Some(b"i"), &[(b"k", b"b")])).await;
        commit_ok(&c, batch(vid(3, 3), Some(b"i"), &[(b"k", b"c")])).await;
        for (s, id) in [(&a, vid(1, 1)), (&b, vid(2, 2)), (&c, vid(3, 3))] {
            let ids: Vec<VersionId> = scan_all(s).await.iter().map(|r| r.id).collect();
            assert_eq!(ids, vec![id]);
            assert_eq!(
                s.find_idempotent(Bytes::from_static(b"i")).await.unwrap(),
                Some(id)
            );
        }
        assert_eq!(get_one(&b, b"k", vid(1, 1)).await, None);
        assert_eq!(server.cli(&["-n", "5", "dbsize"]).trim(), "4");
        // Everything aft stores starts with its prefix.
        let keys = server.cli(&["--scan"]);
        assert!(keys
            .lines()
            .all(|k| k.starts_with("aft:") || k.starts_with("other:")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_means_clear_errors_then_reconnection() {
        let mut server = RedisServer::durable();
        let s = connect(&format!(
            "redis://127.0.0.1:{}?timeout_ms=1000",
            server.port
        ))
        .await;
        commit_ok(&s, batch(vid(1, 1), Some(b"one"), &[(b"k", b"1")])).await;
        server.kill();
        // A request caught in flight fails after the timeout (its outcome unknown); once the
        // pool knows, requests are refused before they are sent.
        let mut refused = 0;
        for i in 0..10 {
            match s.commit(batch(vid(2, i), None, &[(b"k", b"2")])).await {
                Err(StorageError::Unavailable(m)) if m.message().contains("not connected") => {
                    refused += 1
                }
                Err(StorageError::Unavailable(_)) | Err(StorageError::OutcomeUnknown(_)) => {}
                other => panic!("expected a failure, got {other:?}"),
            }
            assert!(matches!(
                s.get_versions(vec![vkey(b"k", vid(1, 1))]).await,
                Err(StorageError::Unavailable(_))
            ));
        }
        assert!(
            refused >= 8,
            "{refused} of 10 commits refused before sending"
        );
        server.restart();
        // The pool reconnects by itself; the restarted server has no scripts cached.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match s.commit(batch(vid(3, 3), None, &[(b"k", b"3")])).await {
                Ok(CommitOutcome::Committed) => break,
                Err(StorageError::Unavailable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => panic!("no reconnection: {other:?}"),
            }
        }
        let ids: Vec<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
        assert_eq!(
            ids.first(),
            Some(&vid(1, 1)),
            "the acknowledged commit survived"
        );
        assert_eq!(ids.last(), Some(&vid(3, 3)));
        assert_eq!(
            get_one(&s, b"k", vid(1, 1)).await,
            Some(Bytes::from_static(b"1"))
        );
        assert_eq!(
            s.find_idempotent(Bytes::from_static(b"one")).await.unwrap(),
            Some(vid(1, 1))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connecting_to_nothing_fails_clearly() {
        let port = testing::free_port();
        let options =
            RedisOptions::parse(&format!("redis://127.0.0.1:{port}?timeout_ms=300")).unwrap();
        let err = RedisStorage::connect(&options).await.unwrap_err();
        assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&port.to_string()), "{text}");
        assert!(text.contains("refused"), "the cause is given: {text}");
    }

    /// Writes a cluster commit's marker and versions, as a commit that crashed before its
    /// record would have.
    async fn half_commit(s: &RedisStorage, id: VersionId, keys: &[&[u8]]) -> Vec<Bytes> {
        let stored: Vec<Bytes> = keys
            .iter()
            .map(|k| s.layout.version(k, id).unwrap())
            .collect();
        s.eval(
            &s.scripts.mark,
            vec![
                bytes(&s.layout.pending),
                bytes(&s.layout.pendkeys),
                bytes(&s.layout.idempotency(b"")),
            ],
            vec![
                Value::Bytes(Bytes::copy_from_slice(&id.to_bytes())),
                Value::Bytes(encode_key_list(&stored).unwrap()),
                text("0"),
            ],
        )
        .await
        .unwrap();
        for key in &stored {
            s.call(redis_keyslot(key), "SET", vec![bytes(key), text("orphan")])
                .await
                .unwrap();
        }
        stored
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_orphans_are_reclaimed_and_their_commit_cannot_finish() {
        let (s, _cluster) = cluster();
        assert_eq!(s.name(), "redis-cluster");
        let orphan = vid(1, 1);
        let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("key-{i}").into_bytes()).collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        half_commit(&s, orphan, &key_refs).await;
        commit_ok(&*s, batch(vid(2, 2), None, &[(b"key-0", b"live")])).await;
        for key in &key_refs {
            assert!(get_one(&*s, key, orphan).await.is_some());
        }

        // Too young: untouched.
        assert_eq!(
            s.reclaim_orphans(Duration::from_secs(3600)).await.unwrap(),
            0
        );
        assert!(get_one(&*s, b"key-0", orphan).await.is_some());

        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(s.reclaim_orphans(Duration::ZERO).await.unwrap(), 20);
        for key in &key_refs {
            assert_eq!(get_one(&*s, key, orphan).await, None);
        }
        assert_eq!(
            get_one(&*s, b"key-0", vid(2, 2)).await,
            Some(Bytes::from_static(b"live"))
        );
        assert_eq!(s.reclaim_orphans(Duration::ZERO).await.unwrap(), 0);

        // The crashed commit's record can no longer be created.
        let (keys, args) = s
            .commit_request(&batch(orphan, None, &[]).record, Vec::new(), true)
            .unwrap();
        assert!(matches!(
            s.run_commit_script(keys, args).await,
            Ok(Committed::MarkerGone)
        ));
        let ids: Vec<VersionId> = scan_all(&*s).await.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![vid(2, 2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_commits_leave_no_marker_and_duplicates_leave_no_versions() {
        let (s, _cluster) = cluster();
        let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..30)
            .map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes()))
            .collect();
        let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        commit_ok(&*s, batch(vid(1, 1), Some(b"once"), &pairs)).await;
        let dup = s
            .commit(batch(vid(2, 2), Some(b"once"), &pairs))
            .await
            .unwrap();
        assert_eq!(dup, CommitOutcome::Duplicate(vid(1, 1)));
        for (k, v) in &pairs {
            assert_eq!(get_one(&*s, k, vid(1, 1)).await.as_deref(), Some(*v));
            assert_eq!(get_one(&*s, k, vid(2, 2)).await, None);
        }
        let pending = s
            .call(s.layout.meta_slot, "ZCARD", vec![bytes(&s.layout.pending)])
            .await
            .unwrap();
        assert_eq!(frame_int(&pending), Some(0));
        // A commit sent again (a retried request) is reported, not applied twice.
        let (keys, args) = s
            .commit_request(
                &batch(vid(1, 1), Some(b"once"), &[]).record,
                Vec::new(),
                true,
            )
            .unwrap();
        assert!(matches!(
            s.run_commit_script(keys, args).await,
            Ok(Committed::Yes)
        ));
        assert_eq!(scan_all(&*s).await.len(), 1);
    }
}
