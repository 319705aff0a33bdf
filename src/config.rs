//! Configuration: one [`Config`] struct, read from a TOML file (see `conf/aft.toml`) and
//! overridden by command-line flags and environment variables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::storage::dynamodb::DynamoDbOptions;
use crate::storage::redis::RedisOptions;
use crate::txn::open::OpenLimits;
use crate::txn::{EngineConfig, Freshness, PeersConfig};

/// Declares every configuration key once: its type, its default, its environment variable
/// and its documentation. From this one list come the [`Config`] struct (TOML keys),
/// `Default`, the command-line flags ([`ConfigFlags`]: `--key-name`, each with its `AFT_*`
/// variable and the same documentation as help) and the list of keys ([`Config::KEYS`]).
macro_rules! config_keys {
    ($( $(#[$doc:meta])* $key:ident : $ty:ty = $default:expr, env $env:literal; )*) => {
        /// Everything that can be configured. Field names are the TOML keys; each has a
        /// flag (`--key-name`) and an environment variable (`AFT_KEY_NAME`) of `aft serve`.
        #[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $( $(#[$doc])* pub $key: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $key: $default, )* }
            }
        }

        /// Command-line flags and environment variables of `aft serve`: one per key of
        /// [`Config`], each overriding the config file.
        #[derive(clap::Args, Clone, Debug, Default)]
        pub struct ConfigFlags {
            $( $(#[$doc])* #[arg(long, env = $env)] pub $key: Option<<$ty as Flag>::Value>, )*
        }

        impl ConfigFlags {
            /// Sets every key given on the command line or in the environment.
            pub fn apply(self, config: &mut Config) {
                $( if let Some(v) = self.$key { config.$key = <$ty as Flag>::set(v); } )*
            }
        }

        impl Config {
            /// Every key, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$( stringify!($key), )*];

            /// `(key, its environment variable, its default as `--help` shows it)`.
            pub fn defaults() -> Vec<(&'static str, &'static str, String)> {
                let d = Config::default();
                vec![$( (stringify!($key), $env, Flag::shown(&d.$key)), )*]
            }
        }
    };
}

/// How a configuration value is given on the command line and shown in `--help`.
pub trait Flag {
    /// What the flag parses into.
    type Value: Clone + Send + Sync + std::str::FromStr + 'static;
    /// The value a flag sets.
    fn set(value: Self::Value) -> Self;
    /// The value as `--help` shows it.
    fn shown(&self) -> String;
}

macro_rules! plain_flag {
    ($($ty:ty),*) => {$(
        impl Flag for $ty {
            type Value = $ty;
            fn set(value: $ty) -> $ty {
                value
            }
            fn shown(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
plain_flag!(String, bool, usize, u64);

impl Flag for PathBuf {
    type Value = PathBuf;
    fn set(value: PathBuf) -> PathBuf {
        value
    }
    fn shown(&self) -> String {
        self.display().to_string()
    }
}

impl Flag for Option<Secret> {
    type Value = Secret;
    fn set(value: Secret) -> Self {
        Some(value)
    }
    fn shown(&self) -> String {
        match self {
            None => "none".into(),
            Some(_) => "***".into(),
        }
    }
}

/// A value that must not be printed: `Debug` and `--help` show `***`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// Default of [`Config::listen`].
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7379";
/// Default of [`Config::backend`].
pub const DEFAULT_BACKEND: &str = "embedded";
/// Default of [`Config::data_dir`].
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default of [`Config::cache_mb`].
pub const DEFAULT_CACHE_MB: usize = 256;
/// Default of [`Config::max_bulk_len`] (Redis's `proto-max-bulk-len`).
pub const DEFAULT_MAX_BULK_LEN: usize = 512 << 20;
/// Default of [`Config::max_multibulk_len`].
pub const DEFAULT_MAX_MULTIBULK_LEN: usize = 1 << 20;
/// Default of [`Config::max_inline_len`].
pub const DEFAULT_MAX_INLINE_LEN: usize = 64 << 10;
/// Default of [`Config::max_clients`] (Redis's `maxclients`).
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// Default of [`Config::log`].
pub const DEFAULT_LOG: &str = "info";
/// Default of [`Config::txn_timeout_ms`].
pub const DEFAULT_TXN_TIMEOUT_MS: u64 = 30_000;
/// Default of [`Config::max_txn_timeout_ms`].
pub const DEFAULT_MAX_TXN_TIMEOUT_MS: u64 = 3_600_000;
/// Default of [`Config::max_open_txns`].
pub const DEFAULT_MAX_OPEN_TXNS: usize = 10_000;
/// Default of [`Config::max_open_txns_per_client`].
pub const DEFAULT_MAX_OPEN_TXNS_PER_CLIENT: usize = 1_000;
/// Default of [`Config::max_snapshot_age_ms`].
pub const DEFAULT_MAX_SNAPSHOT_AGE_MS: u64 = 60_000;
/// Default of [`Config::max_txn_bytes`].
pub const DEFAULT_MAX_TXN_BYTES: usize = 64 << 20;
/// Default of [`Config::max_open_txn_bytes`].
pub const DEFAULT_MAX_OPEN_TXN_BYTES: usize = 1 << 30;
/// Default of [`Config::idempotency_retention_secs`] (a day).
pub const DEFAULT_IDEMPOTENCY_RETENTION_SECS: u64 = 86_400;
/// Default of [`Config::gc_interval_ms`].
pub const DEFAULT_GC_INTERVAL_MS: u64 = 1_000;
/// Default of [`Config::status_retention_secs`].
pub const DEFAULT_STATUS_RETENTION_SECS: u64 = 60;
/// How long an idempotency entry outlives the retention it serves, in every backend: the
/// entry's TTL is `idempotency_retention_secs` plus this.
pub const IDEMPOTENCY_TTL_MARGIN: Duration = Duration::from_secs(3_600);

config_keys! {
    /// Address to accept RESP clients on (HOST:PORT; port 0 picks a free one).
    listen: String = DEFAULT_LISTEN.into(), env "AFT_LISTEN";
    /// Storage backend: `embedded` (on disk), `memory` (nothing survives a restart; for
    /// tests and experiments), `dynamodb://TABLE?region=R[&endpoint=URL][&create_table=true]`
    /// (see `DynamoDbOptions::from_url`), or `redis://[user:pass@]host:port[/db]`,
    /// `rediss://…` (TLS), `redis-cluster://host:port[,host:port…]` with
    /// `?prefix=…&timeout_ms=…&pool=…&idempotency_ttl=…` (see `RedisOptions::parse`).
    backend: String = DEFAULT_BACKEND.into(), env "AFT_BACKEND";
    /// Directory of the embedded backend's data.
    data_dir: PathBuf = PathBuf::from(DEFAULT_DATA_DIR), env "AFT_DATA_DIR";
    /// Password clients must give with AUTH or HELLO (user `default`), if any.
    requirepass: Option<Secret> = None, env "AFT_REQUIREPASS";
    /// Whether the embedded backend fsyncs each group commit before acknowledging it;
    /// off trades durability on power loss for speed (like `appendfsync everysec`).
    fsync: bool = true, env "AFT_FSYNC";
    /// Memory for caches, in MiB (0 to 1073741824): the engine's cached values and, with
    /// the embedded backend, redb's page cache too (a quarter of it).
    cache_mb: usize = DEFAULT_CACHE_MB, env "AFT_CACHE_MB";
    /// Largest bulk string a client may send, and largest value APPEND and SETRANGE may
    /// make, in bytes (Redis's proto-max-bulk-len).
    max_bulk_len: usize = DEFAULT_MAX_BULK_LEN, env "AFT_MAX_BULK_LEN";
    /// Most elements a request may have.
    max_multibulk_len: usize = DEFAULT_MAX_MULTIBULK_LEN, env "AFT_MAX_MULTIBULK_LEN";
    /// Longest inline command, in bytes.
    max_inline_len: usize = DEFAULT_MAX_INLINE_LEN, env "AFT_MAX_INLINE_LEN";
    /// Most clients connected at once (1 to 1073741824); more are refused with an error. At
    /// start the open-file limit is raised to fit them if it can be, and this is lowered to
    /// what the limit allows if it cannot.
    max_clients: usize = DEFAULT_MAX_CLIENTS, env "AFT_MAX_CLIENTS";
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or directives such as
    /// `aft=debug,info`); a filter that does not parse stops the start.
    log: String = DEFAULT_LOG.into(), env "AFT_LOG";
    /// Idle time, in ms, after which an open interactive transaction is aborted, unless
    /// AFT.BEGIN gives a TIMEOUT.
    txn_timeout_ms: u64 = DEFAULT_TXN_TIMEOUT_MS, env "AFT_TXN_TIMEOUT_MS";
    /// The longest TIMEOUT AFT.BEGIN may ask for, in ms.
    max_txn_timeout_ms: u64 = DEFAULT_MAX_TXN_TIMEOUT_MS, env "AFT_MAX_TXN_TIMEOUT_MS";
    /// Most interactive transactions open at once.
    max_open_txns: usize = DEFAULT_MAX_OPEN_TXNS, env "AFT_MAX_OPEN_TXNS";
    /// Most open interactive transactions one client (connection) may have begun.
    max_open_txns_per_client: usize = DEFAULT_MAX_OPEN_TXNS_PER_CLIENT, env "AFT_MAX_OPEN_TXNS_PER_CLIENT";
    /// The longest, in ms, a transaction's snapshot may hold garbage collection back; an
    /// older snapshot is revoked and its transaction gets "snapshot too old" (0: no limit).
    max_snapshot_age_ms: u64 = DEFAULT_MAX_SNAPSHOT_AGE_MS, env "AFT_MAX_SNAPSHOT_AGE_MS";
    /// Most bytes of writes one interactive transaction may buffer.
    max_txn_bytes: usize = DEFAULT_MAX_TXN_BYTES, env "AFT_MAX_TXN_BYTES";
    /// Most bytes of writes all open interactive transactions may buffer together.
    max_open_txn_bytes: usize = DEFAULT_MAX_OPEN_TXN_BYTES, env "AFT_MAX_OPEN_TXN_BYTES";
    /// How long a retry is recognised by its idempotency key, in seconds.
    idempotency_retention_secs: u64 = DEFAULT_IDEMPOTENCY_RETENTION_SECS, env "AFT_IDEMPOTENCY_RETENTION_SECS";
    /// How often garbage collection runs, in ms.
    gc_interval_ms: u64 = DEFAULT_GC_INTERVAL_MS, env "AFT_GC_INTERVAL_MS";
    /// How long the commit record of a transaction without idempotency key is kept after
    /// its versions are collected, in seconds (AFT.STATUS txid answers `committed` meanwhile).
    status_retention_secs: u64 = DEFAULT_STATUS_RETENTION_SECS, env "AFT_STATUS_RETENTION_SECS";
    /// With several aft nodes on one backend: `realtime` (a transaction sees every commit
    /// acknowledged by any node before it began, for one shared read of the commit log) or
    /// `bounded` (no extra round trip; other nodes' commits become visible within the
    /// tailer's lag, which INFO reports).
    freshness: String = "realtime".into(), env "AFT_FRESHNESS";
    /// With several aft nodes on one backend: how long a node's lease lasts, in ms. A node
    /// that does not renew it in time is dead to the others (its commits are refused, its
    /// snapshots no longer hold garbage collection back).
    lease_ms: u64 = DEFAULT_LEASE_MS, env "AFT_LEASE_MS";
    /// With several aft nodes on one backend: how often, in ms, a node reads the commit log
    /// in the background.
    tail_interval_ms: u64 = DEFAULT_TAIL_INTERVAL_MS, env "AFT_TAIL_INTERVAL_MS";
}

/// Default of [`Config::lease_ms`].
pub const DEFAULT_LEASE_MS: u64 = 5_000;
/// Default of [`Config::tail_interval_ms`].
pub const DEFAULT_TAIL_INTERVAL_MS: u64 = 100;

/// Largest [`Config::max_clients`].
pub const MAX_CLIENTS: usize = 1 << 30;
/// Largest [`Config::cache_mb`] (1 PiB): the cache size in bytes stays far from overflow.
pub const MAX_CACHE_MB: usize = 1 << 30;
/// Largest size limit in bytes (1 TiB): `max_bulk_len`, `max_inline_len`, `max_txn_bytes`,
/// `max_open_txn_bytes`; and the largest `max_multibulk_len`.
pub const MAX_SIZE: usize = 1 << 40;
/// Longest timeout or interval in ms (a year): deadlines computed from it cannot overflow.
pub const MAX_MS: u64 = 365 * 86_400_000;
/// Longest retention in seconds (ten years): wall-clock arithmetic in ms cannot overflow.
pub const MAX_RETENTION_SECS: u64 = 10 * 365 * 86_400;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which storage backend to run on, parsed from [`Config::backend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// redb files in the data directory.
    Embedded,
    /// In memory only.
    Memory,
    /// A DynamoDB table.
    DynamoDb(DynamoDbOptions),
    /// A Redis server or Redis Cluster.
    Redis(RedisOptions),
}

impl Config {
    /// Reads a TOML file; keys it does not set keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks that every value is in range, so that nothing computed from them (sizes in
    /// bytes, deadlines, the semaphore of client slots) can overflow, and that the log
    /// filter parses. The error names the key and its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("max_bulk_len", self.max_bulk_len),
            ("max_multibulk_len", self.max_multibulk_len),
            ("max_inline_len", self.max_inline_len),
            ("max_txn_bytes", self.max_txn_bytes),
            ("max_open_txn_bytes", self.max_open_txn_bytes),
        ];
        for (key, value) in sizes {
            in_range(key, value, 1, MAX_SIZE)?;
        }
        in_range("max_clients", self.max_clients, 1, MAX_CLIENTS)?;
        in_range("cache_mb", self.cache_mb, 0, MAX_CACHE_MB)?;
        in_range("max_open_txns", self.max_open_txns, 0, MAX_CLIENTS)?;
        in_range(
            "max_open_txns_per_client",
            self.max_open_txns_per_client,
            1,
            MAX_CLIENTS,
        )?;
        in_range("max_snapshot_age_ms", self.max_snapshot_age_ms, 0, MAX_MS)?;
        in_range("lease_ms", self.lease_ms, 500, MAX_MS)?;
        in_range("tail_interval_ms", self.tail_interval_ms, 1, 60_000)?;
        self.freshness_setting()?;
        let timeouts = [
            ("txn_timeout_ms", self.txn_timeout_ms),
            ("max_txn_timeout_ms", self.max_txn_timeout_ms),
            ("gc_interval_ms", self.gc_interval_ms),
        ];
        for (key, value) in timeouts {
            in_range(key, value, 1, MAX_MS)?;
        }
        let retentions = [
            (
                "idempotency_retention_secs",
                self.idempotency_retention_secs,
            ),
            ("status_retention_secs", self.status_retention_secs),
        ];
        for (key, value) in retentions {
            in_range(key, value, 0, MAX_RETENTION_SECS)?;
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(ConfigError::Invalid(format!(
                "log filter '{}' does not parse: {e} (expected error, warn, info, debug, \
                 trace, or directives such as 'aft=debug,info')",
                self.log
            )));
        }
        Ok(())
    }

    /// How long a backend keeps an idempotency entry after its commit, whatever the
    /// backend: the retention plus [`IDEMPOTENCY_TTL_MARGIN`] (a Redis URL may set its own
    /// `idempotency_ttl`).
    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_secs(self.idempotency_retention_secs).saturating_add(IDEMPOTENCY_TTL_MARGIN)
    }

    /// The value cache's budget in bytes: `cache_mb` MiB (saturating; [`Config::validate`]
    /// keeps it far below overflow).
    pub fn cache_bytes(&self) -> usize {
        self.cache_mb.saturating_mul(1 << 20)
    }

    /// Checks values ([`Config::validate`]) and parses the backend URL.
    pub fn backend_kind(&self) -> Result<BackendKind, ConfigError> {
        self.validate()?;
        match self.backend.as_str() {
            "embedded" => Ok(BackendKind::Embedded),
            "memory" => Ok(BackendKind::Memory),
            url if url.starts_with("dynamodb://") => {
                let mut options = DynamoDbOptions::from_url(url)
                    .map_err(|e| ConfigError::Invalid(format!("backend {url}: {e}")))?;
                options.idempotency_ttl = self.idempotency_ttl();
                Ok(BackendKind::DynamoDb(options))
            }
            url if RedisOptions::is_redis_url(url) => {
                let mut options = RedisOptions::parse(url)
                    .map_err(|e| ConfigError::Invalid(format!("invalid Redis backend URL: {e}")))?;
                if options.idempotency_ttl.is_none() {
                    options.idempotency_ttl = Some(self.idempotency_ttl());
                }
                Ok(BackendKind::Redis(options))
            }
            other => Err(ConfigError::Invalid(format!(
                "unknown backend '{other}' (expected 'embedded', 'memory', \
                 'dynamodb://TABLE?…', or a redis://, rediss://, redis-cluster:// or \
                 rediss-cluster:// URL)"
            ))),
        }
    }
}

impl Config {
    /// [`Config::freshness`], parsed.
    pub fn freshness_setting(&self) -> Result<Freshness, ConfigError> {
        match self.freshness.as_str() {
            "realtime" => Ok(Freshness::RealTime),
            "bounded" => Ok(Freshness::Bounded),
            other => Err(ConfigError::Invalid(format!(
                "freshness must be 'realtime' or 'bounded', not '{other}'"
            ))),
        }
    }
}

impl From<&Config> for EngineConfig {
    /// The engine's settings; the whole cache budget goes to values (the node gives the
    /// embedded store's page cache its share).
    fn from(c: &Config) -> Self {
        EngineConfig {
            cache_bytes: c.cache_bytes(),
            gc_interval: Duration::from_millis(c.gc_interval_ms),
            idempotency_retention: Duration::from_secs(c.idempotency_retention_secs),
            status_retention: Duration::from_secs(c.status_retention_secs),
            max_snapshot_age: Duration::from_millis(c.max_snapshot_age_ms),
            max_value_len: c.max_bulk_len,
            peers: PeersConfig {
                freshness: c.freshness_setting().unwrap_or_default(),
                lease: Duration::from_millis(c.lease_ms),
                tail_interval: Duration::from_millis(c.tail_interval_ms),
                address: c.listen.clone(),
            },
        }
    }
}

impl From<&Config> for OpenLimits {
    fn from(c: &Config) -> Self {
        OpenLimits {
            default_timeout: Duration::from_millis(c.txn_timeout_ms),
            max_timeout: Duration::from_millis(c.max_txn_timeout_ms.max(c.txn_timeout_ms)),
            max_open: c.max_open_txns,
            max_txn_bytes: c.max_txn_bytes,
            max_total_bytes: c.max_open_txn_bytes,
            max_per_client: c.max_open_txns_per_client,
        }
    }
}

/// `Ok` if `min <= value <= max`, else an error naming `key` and the range.
fn in_range<T>(key: &str, value: T, min: T, max: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min || value > max {
        return Err(ConfigError::Invalid(format!(
            "{key} must be between {min} and {max} (got {value})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_flag_an_env_var_and_a_line_in_the_example_config() {
        use clap::CommandFactory;

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flags: ConfigFlags,
        }
        let command = Cli::command();
        let example = include_str!("../conf/aft.toml");
        for (key, env, _) in Config::defaults() {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == key)
                .unwrap_or_else(|| panic!("no flag for {key}"));
            assert_eq!(arg.get_long(), Some(key.replace('_', "-").as_str()));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env), "{key}");
            assert_eq!(env, format!("AFT_{}", key.to_ascii_uppercase()));
            let listed = example.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} ="))
            });
            assert!(listed, "conf/aft.toml does not list {key}");
        }
        assert_eq!(Config::KEYS.len(), Config::defaults().len());
        // And every field is a key (a field added without a flag would not compile into
        // ConfigFlags; this checks the other direction through serde).
        let table = toml::Table::try_from(Config {
            requirepass: Some("x".into()),
            ..Config::default()
        })
        .unwrap();
        let mut fields: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut keys = Config::KEYS.to_vec();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    #[test]
    fn flags_override_the_file_and_secrets_are_not_printed() {
        use clap::Parser;

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flags: ConfigFlags,
        }
        let cli = Cli::try_parse_from([
            "aft",
            "--cache-mb",
            "7",
            "--fsync",
            "false",
            "--requirepass",
            "hunter2",
            "--max-snapshot-age-ms",
            "5",
        ])
        .unwrap();
        let mut config = Config::from_toml("cache_mb = 3\nmax_clients = 9").unwrap();
        cli.flags.apply(&mut config);
        assert_eq!(config.cache_mb, 7);
        assert_eq!(config.max_clients, 9);
        assert!(!config.fsync);
        assert_eq!(config.max_snapshot_age_ms, 5);
        assert_eq!(
            config.requirepass.as_ref().map(Secret::expose),
            Some("hunter2")
        );
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("requirepass: Some(\"***\")"), "{printed}");
    }

    #[test]
    fn one_idempotency_ttl_rule_for_every_backend() {
        let config = Config {
            idempotency_retention_secs: 100,
            backend: "dynamodb://aft?region=us-east-1".into(),
            ..Config::default()
        };
        let BackendKind::DynamoDb(dynamodb) = config.backend_kind().unwrap() else {
            panic!("not dynamodb");
        };
        let redis = Config {
            backend: "redis://127.0.0.1".into(),
            ..config.clone()
        };
        let BackendKind::Redis(redis) = redis.backend_kind().unwrap() else {
            panic!("not redis");
        };
        assert_eq!(dynamodb.idempotency_ttl, Duration::from_secs(3_700));
        assert_eq!(redis.idempotency_ttl, Some(Duration::from_secs(3_700)));
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../conf/aft.toml");
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn unknown_keys_and_backends_are_rejected() {
        assert!(Config::from_toml("nope = 1").is_err());
        let config = Config::from_toml("backend = \"cassandra\"").unwrap();
        assert!(config.backend_kind().is_err());
        let config = Config::from_toml("backend = \"memory\"\nlisten = \"0.0.0.0:1\"").unwrap();
        assert_eq!(config.backend_kind().unwrap(), BackendKind::Memory);
        assert_eq!(config.listen, "0.0.0.0:1");
    }

    #[test]
    fn dynamodb_urls_are_parsed() {
        let config = Config::from_toml(
            "backend = \"dynamodb://aft?endpoint=http://127.0.0.1:8000&region=us-east-1&create_table=true\"",
        )
        .unwrap();
        let BackendKind::DynamoDb(options) = config.backend_kind().unwrap() else {
            panic!("not dynamodb");
        };
        assert_eq!(options.table, "aft");
        assert_eq!(options.region.as_deref(), Some("us-east-1"));
        assert_eq!(options.endpoint.as_deref(), Some("http://127.0.0.1:8000"));
        assert!(options.create_table);
        let config = Config::from_toml("backend = \"dynamodb://aft?bogus=1\"").unwrap();
        let error = config.backend_kind().unwrap_err().to_string();
        assert!(error.contains("bogus"), "{error}");
        let text = include_str!("../conf/dynamodb.toml");
        let config = Config::from_toml(text).unwrap();
        assert!(matches!(
            config.backend_kind().unwrap(),
            BackendKind::DynamoDb(_)
        ));
    }

    #[test]
    fn redis_urls_are_backends() {
        let mut config = Config {
            backend: "redis://127.0.0.1:6379/2?prefix=x:".into(),
            ..Config::default()
        };
        let BackendKind::Redis(options) = config.backend_kind().unwrap() else {
            panic!("not a Redis backend");
        };
        assert_eq!(options.database, 2);
        assert_eq!(options.prefix, "x:");
        assert_eq!(
            options.idempotency_ttl,
            Some(Duration::from_secs(86_400 + 3_600))
        );
        config.backend = "redis-cluster://a:1,b:2?idempotency_ttl=10".into();
        let BackendKind::Redis(options) = config.backend_kind().unwrap() else {
            panic!("not a Redis backend");
        };
        assert_eq!(options.idempotency_ttl, Some(Duration::from_secs(10)));
        config.backend = "redis://a?pool=0".into();
        let err = config.backend_kind().unwrap_err().to_string();
        assert!(err.contains("pool"), "{err}");
        let text = include_str!("../conf/redis.toml");
        let config_file = Config::from_toml(text).unwrap();
        assert!(matches!(
            config_file.backend_kind().unwrap(),
            BackendKind::Redis(_)
        ));
        config.backend = "cassandra://x".into();
        let err = config.backend_kind().unwrap_err().to_string();
        assert!(err.contains("unknown backend 'cassandra://x'"), "{err}");
    }

    /// The error of `config.validate()`, which must fail.
    fn invalid(config: Config) -> String {
        match config.validate() {
            Ok(()) => panic!("accepted: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn max_clients_must_be_positive_and_fit_a_semaphore() {
        let error = invalid(Config {
            max_clients: 0,
            ..Config::default()
        });
        assert!(
            error.contains("max_clients must be between 1 and"),
            "{error}"
        );
        assert!(error.contains("(got 0)"), "{error}");
        // Above tokio's Semaphore::MAX_PERMITS (usize::MAX >> 3) the server used to panic.
        for huge in [usize::MAX >> 2, usize::MAX, MAX_CLIENTS + 1] {
            let error = invalid(Config {
                max_clients: huge,
                ..Config::default()
            });
            assert!(error.contains(&format!("(got {huge})")), "{error}");
        }
        let config = Config {
            max_clients: MAX_CLIENTS,
            ..Config::default()
        };
        assert!(config.validate().is_ok());
        // backend_kind checks the values too.
        let config = Config {
            max_clients: 0,
            backend: "memory".into(),
            ..Config::default()
        };
        assert!(config.backend_kind().is_err());
    }

    #[test]
    fn cache_mb_cannot_overflow_the_cache_size_in_bytes() {
        // 1 << 44 MiB shifted by 20 is 1 << 64: it wrapped to a zero-byte cache.
        let error = invalid(Config {
            cache_mb: 1 << 44,
            ..Config::default()
        });
        assert!(error.contains("cache_mb must be between 0 and"), "{error}");
        let config = Config {
            cache_mb: MAX_CACHE_MB,
            ..Config::default()
        };
        assert!(config.validate().is_ok());
        assert_eq!(config.cache_bytes(), MAX_CACHE_MB << 20);
        assert_eq!(Config::default().cache_bytes(), 256 << 20);
        let config = Config {
            cache_mb: 0,
            ..Config::default()
        };
        assert!(config.validate().is_ok());
    }

    #[test]
    fn sizes_timeouts_and_retentions_are_range_checked_by_name() {
        let cases: Vec<(&str, Config)> = vec![
            (
                "max_bulk_len",
                Config {
                    max_bulk_len: 0,
                    ..Config::default()
                },
            ),
            (
                "max_bulk_len",
                Config {
                    max_bulk_len: usize::MAX,
                    ..Config::default()
                },
            ),
            (
                "max_multibulk_len",
                Config {
                    max_multibulk_len: 0,
                    ..Config::default()
                },
            ),
            (
                "max_inline_len",
                Config {
                    max_inline_len: 0,
                    ..Config::default()
                },
            ),
            (
                "max_txn_bytes",
                Config {
                    max_txn_bytes: 0,
                    ..Config::default()
                },
            ),
            (
                "max_txn_bytes",
                Config {
                    max_txn_bytes: MAX_SIZE + 1,
                    ..Config::default()
                },
            ),
            (
                "max_open_txn_bytes",
                Config {
                    max_open_txn_bytes: usize::MAX,
                    ..Config::default()
                },
            ),
            (
                "max_open_txns",
                Config {
                    max_open_txns: usize::MAX,
                    ..Config::default()
                },
            ),
            (
                "txn_timeout_ms",
                Config {
                    txn_timeout_ms: 0,
                    ..Config::default()
                },
            ),
            // Instant + Duration::from_millis(u64::MAX) panics.
            (
                "txn_timeout_ms",
                Config {
                    txn_timeout_ms: u64::MAX,
                    ..Config::default()
                },
            ),
            (
                "max_txn_timeout_ms",
                Config {
                    max_txn_timeout_ms: u64::MAX,
                    ..Config::default()
                },
            ),
            (
                "gc_interval_ms",
                Config {
                    gc_interval_ms: 0,
                    ..Config::default()
                },
            ),
            (
                "gc_interval_ms",
                Config {
                    gc_interval_ms: MAX_MS + 1,
                    ..Config::default()
                },
            ),
            (
                "idempotency_retention_secs",
                Config {
                    idempotency_retention_secs: u64::MAX,
                    ..Config::default()
                },
            ),
            (
                "status_retention_secs",
                Config {
                    status_retention_secs: MAX_RETENTION_SECS + 1,
                    ..Config::default()
                },
            ),
        ];
        for (key, config) in cases {
            let error = invalid(config);
            assert!(
                error.starts_with(&format!("invalid configuration: {key} must be between ")),
                "{key}: {error}"
            );
        }
        assert!(Config::default().validate().is_ok());
        let at_the_limits = Config {
            max_bulk_len: MAX_SIZE,
            txn_timeout_ms: MAX_MS,
            idempotency_retention_secs: MAX_RETENTION_SECS,
            status_retention_secs: 0,
            ..Config::default()
        };
        assert!(at_the_limits.validate().is_ok());
    }

    #[test]
    fn a_log_filter_that_does_not_parse_is_an_error_naming_it() {
        let error = invalid(Config {
            log: "not a[filter".into(),
            ..Config::default()
        });
        assert!(error.contains("log filter 'not a[filter'"), "{error}");
        for good in ["info", "warn", "aft=debug,info", "trace"] {
            let config = Config {
                log: good.into(),
                ..Config::default()
            };
            assert!(config.validate().is_ok(), "{good}");
        }
    }
}
