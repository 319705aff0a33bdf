//! Configuration: one [`Config`] struct, read from a TOML file (see `conf/aft.toml`) and
//! overridden by command-line flags and environment variables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::storage::dynamodb::DynamoDbOptions;
use crate::storage::redis::RedisOptions;

/// Everything that can be configured. Field names are the TOML keys.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to accept RESP clients on.
    pub listen: String,
    /// Storage backend: `embedded` (on disk, the default), `memory` (nothing survives a
    /// restart; for tests and experiments), `dynamodb://TABLE?region=R[&endpoint=URL]
    /// [&create_table=true]` (see [`DynamoDbOptions::from_url`] for every option), or a Redis
    /// URL: `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS),
    /// `redis-cluster://host:port[,host:port…]` (Redis Cluster; the other nodes are
    /// discovered), with `?prefix=…&timeout_ms=…&pool=…&idempotency_ttl=…` (see
    /// [`RedisOptions::parse`]).
    pub backend: String,
    /// Directory of the embedded backend's data.
    pub data_dir: PathBuf,
    /// Password clients must give with AUTH or HELLO (user `default`), if any.
    pub requirepass: Option<String>,
    /// Whether the embedded backend fsyncs each group commit before acknowledging it.
    /// Turning this off trades durability on power loss for speed.
    pub fsync: bool,
    /// Memory for caches, in MiB: the engine's cached values and, with the embedded backend,
    /// redb's page cache too (a quarter of it; see
    /// [`CacheBudget`](crate::storage::embedded::CacheBudget)).
    pub cache_mb: usize,
    /// Largest bulk string a client may send, in bytes (Redis's proto-max-bulk-len).
    pub max_bulk_len: usize,
    /// Most elements a request may have.
    pub max_multibulk_len: usize,
    /// Longest inline command, in bytes.
    pub max_inline_len: usize,
    /// Most clients connected at once; more are refused with an error.
    pub max_clients: usize,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    pub log: String,
    /// Idle time, in ms, after which an open interactive transaction is aborted, unless
    /// AFT.BEGIN gives a TIMEOUT.
    pub txn_timeout_ms: u64,
    /// The longest TIMEOUT AFT.BEGIN may ask for, in ms.
    pub max_txn_timeout_ms: u64,
    /// Most interactive transactions open at once.
    pub max_open_txns: usize,
    /// Most bytes of writes one interactive transaction may buffer.
    pub max_txn_bytes: usize,
    /// Most bytes of writes all open interactive transactions may buffer together.
    pub max_open_txn_bytes: usize,
    /// How long a retry is recognised by its idempotency key, in seconds (at least a day by
    /// default; DynamoDB's own client tokens last 10 minutes).
    pub idempotency_retention_secs: u64,
    /// How often garbage collection runs, in ms.
    pub gc_interval_ms: u64,
    /// How long the commit record of a transaction without idempotency key is kept after
    /// its versions are collected, in seconds (AFT.STATUS txid answers `committed` meanwhile).
    pub status_retention_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7379".into(),
            backend: "embedded".into(),
            data_dir: PathBuf::from("./data"),
            requirepass: None,
            fsync: true,
            cache_mb: 256,
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
            max_clients: 10_000,
            log: "info".into(),
            txn_timeout_ms: 30_000,
            max_txn_timeout_ms: 3_600_000,
            max_open_txns: 10_000,
            max_txn_bytes: 64 << 20,
            max_open_txn_bytes: 1 << 30,
            idempotency_retention_secs: 86_400,
            gc_interval_ms: 1_000,
            status_retention_secs: 60,
        }
    }
}

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
    /// A Redis server or Redis Cluster. Unless the URL sets `idempotency_ttl`, it is
    /// `idempotency_retention_secs` plus an hour.
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

    /// Checks values and parses the backend URL.
    pub fn backend_kind(&self) -> Result<BackendKind, ConfigError> {
        if self.max_bulk_len == 0 || self.max_multibulk_len == 0 || self.max_inline_len == 0 {
            return Err(ConfigError::Invalid(
                "request size limits must be positive".into(),
            ));
        }
        if self.txn_timeout_ms == 0 || self.gc_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "txn_timeout_ms and gc_interval_ms must be positive".into(),
            ));
        }
        match self.backend.as_str() {
            "embedded" => Ok(BackendKind::Embedded),
            "memory" => Ok(BackendKind::Memory),
            url if url.starts_with("dynamodb://") => DynamoDbOptions::from_url(url)
                .map(BackendKind::DynamoDb)
                .map_err(|e| ConfigError::Invalid(format!("backend {url}: {e}"))),
            url if RedisOptions::is_redis_url(url) => {
                let mut options = RedisOptions::parse(url)
                    .map_err(|e| ConfigError::Invalid(format!("invalid Redis backend URL: {e}")))?;
                if options.idempotency_ttl.is_none() {
                    options.idempotency_ttl = Some(Duration::from_secs(
                        self.idempotency_retention_secs.saturating_add(3_600),
                    ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
