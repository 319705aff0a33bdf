//! What a Redis backend URL says: [`RedisOptions`], its [`Topology`] and the defaults.

use std::fmt;
use std::time::Duration;

use crate::storage::url::percent_decode;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "aft:";
/// Default reply timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);
/// Default number of multiplexed connections.
pub const DEFAULT_POOL: usize = 4;
/// Most connections `pool` may ask for.
pub const MAX_POOL: usize = 64;
/// Most shards the commit log may have (`shards`).
pub const MAX_SHARDS: usize = 64;
/// Idempotency TTL when neither the URL nor the caller gives one: a day and an hour.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(86_400 + 3_600);

/// The backend's name on one server: [`Storage::name`](crate::storage::Storage::name) and
/// the name its errors carry.
const STANDALONE: &str = "redis";
/// The backend's name on a Redis Cluster.
const CLUSTER: &str = "redis-cluster";

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

impl Topology {
    /// The backend's name over this topology: `redis`, or `redis-cluster` for a cluster.
    pub(super) fn backend_name(&self) -> &'static str {
        match self {
            Topology::Standalone { .. } => STANDALONE,
            Topology::Cluster { .. } => CLUSTER,
        }
    }
}

/// Everything a Redis backend URL says; see the [backend's documentation](super#url).
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
    /// in which case [`RedisStorage::connect`](super::RedisStorage::connect) uses
    /// [`DEFAULT_IDEMPOTENCY_TTL`] unless the caller filled it in (aft uses its
    /// `idempotency_retention_secs` plus an hour).
    pub idempotency_ttl: Option<Duration>,
    /// How many shards the commit log has, if the URL says (1 to
    /// [`MAX_SHARDS`]); otherwise one on a server and one per
    /// master on a cluster. The first node to use a prefix decides: later nodes take the
    /// count it stored.
    pub shards: Option<usize>,
}

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
            .field("shards", &self.shards)
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

    /// Parses a backend URL (see the [backend's documentation](super#url)); the error says
    /// what is wrong.
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
            shards: None,
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
                "shards" => {
                    let max = MAX_SHARDS;
                    options.shards = Some(
                        usize::try_from(number(name)?)
                            .ok()
                            .filter(|n| *n <= max)
                            .ok_or_else(|| format!("shards must be at most {max}"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "unknown option '{other}' (expected prefix, timeout_ms, pool, \
                         idempotency_ttl or shards)"
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
