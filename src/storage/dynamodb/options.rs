//! How to reach the table: the `dynamodb://` URL, [`DynamoDbOptions`], where credentials come
//! from, and the size limits DynamoDB sets.

use std::fmt;
use std::time::Duration;

use super::layout::CHUNK_BYTES;
use crate::storage::url::percent_decode;

/// Largest `TransactWriteItems`: DynamoDB's limit on actions.
pub(super) const TXN_MAX_ITEMS: usize = 100;

/// Largest `TransactWriteItems` in bytes: DynamoDB's 4 MB, less a margin for our estimate.
pub(super) const TXN_MAX_BYTES: usize = 4 * 1024 * 1024 - 256 * 1024;

/// Where the backend finds AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// The standard AWS chain: environment, shared config and credentials files (profiles,
    /// SSO, `credential_process`), web identity, ECS and EC2 instance metadata.
    Chain,
    /// Fixed keys, for emulators (which accept any) or explicit keys.
    Static {
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: String,
    },
}

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Chain => f.write_str("Chain"),
            CredentialSource::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .finish(),
        }
    }
}

/// How to reach the table: parsed from a `dynamodb://TABLE?…` URL by
/// [`DynamoDbOptions::from_url`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamoDbOptions {
    /// Table name.
    pub table: String,
    /// AWS region; `None`: from the environment (`AWS_REGION`, profile), or `us-east-1` with a
    /// custom endpoint.
    pub region: Option<String>,
    /// Endpoint URL instead of AWS's (an emulator, a VPC endpoint).
    pub endpoint: Option<String>,
    /// Create the table (and enable TTL) if it does not exist.
    pub create_table: bool,
    /// Where credentials come from.
    pub credentials: CredentialSource,
    /// Attempts per request before giving up (at least 1).
    pub max_attempts: u32,
    /// Time limit of one attempt of one request.
    pub attempt_timeout: Duration,
    /// TTL of idempotency entries (a backstop; see [the backend's documentation](super)).
    /// Must exceed aft's `idempotency_retention_secs`.
    pub idempotency_ttl: Duration,
    /// Shards of the commit log of several nodes, for a table that has none yet (1 to
    /// [`MAX_LOG_SHARDS`]): the first node to open the table decides, later nodes use the
    /// count it stored. A table written before shards existed has one.
    pub log_shards: usize,
}

/// Default of [`DynamoDbOptions::log_shards`].
pub const DEFAULT_LOG_SHARDS: usize = 4;
/// Most shards the commit log may have.
pub const MAX_LOG_SHARDS: usize = 64;

/// Dummy key used with emulators when the environment has none.
const EMULATOR_KEY: &str = "aft-local";

impl DynamoDbOptions {
    /// Options for `table` with defaults: region from the environment, AWS's endpoint,
    /// credentials from the standard chain, no table creation.
    pub fn new(table: impl Into<String>) -> Self {
        DynamoDbOptions {
            table: table.into(),
            region: None,
            endpoint: None,
            create_table: false,
            credentials: CredentialSource::Chain,
            max_attempts: 10,
            attempt_timeout: Duration::from_secs(10),
            // A day plus an hour: the default retention plus the margin `aft serve` adds.
            idempotency_ttl: Duration::from_secs(86_400 + 3_600),
            log_shards: DEFAULT_LOG_SHARDS,
        }
    }

    /// Parses `dynamodb://TABLE[?option=value&…]`. Options:
    ///
    /// * `region=R`: the AWS region;
    /// * `endpoint=URL`: a custom endpoint (emulator);
    /// * `create_table=true|false`: create the table if missing (default false);
    /// * `credentials=chain|static`: the standard AWS chain (the default without `endpoint`),
    ///   or static keys from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, or dummy keys if
    ///   those are unset (the default with `endpoint`: emulators accept any key, and the chain
    ///   would probe the EC2 metadata service);
    /// * `max_attempts=N`: attempts per request (default 10);
    /// * `timeout_ms=N`: time limit of one attempt (default 10,000);
    /// * `log_shards=N`: shards of the commit log, for a new table (default 4).
    ///
    /// Values may be percent-encoded.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("dynamodb://")
            .ok_or_else(|| format!("'{url}' is not a dynamodb:// URL"))?;
        let (table, query) = match rest.split_once('?') {
            Some((table, query)) => (table, query),
            None => (rest, ""),
        };
        let table = table.trim_end_matches('/');
        let valid_name = (3..=255).contains(&table.len())
            && table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid_name {
            return Err(format!(
                "invalid DynamoDB table name '{table}' (3 to 255 characters: letters, digits, \
                 '_', '-', '.')"
            ));
        }
        let mut options = DynamoDbOptions::new(table);
        let mut credentials = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            let number = |what: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{what} must be a positive integer, not '{value}'"))
                    .and_then(|n| {
                        if n == 0 {
                            Err(format!("{what} must be positive"))
                        } else {
                            Ok(n)
                        }
                    })
            };
            match name {
                "region" if !value.is_empty() => options.region = Some(value.clone()),
                "endpoint" if !value.is_empty() => options.endpoint = Some(value.clone()),
                "create_table" => {
                    options.create_table = match value.as_str() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => {
                            return Err(format!(
                                "create_table must be true or false, not '{value}'"
                            ))
                        }
                    }
                }
                "credentials" => {
                    credentials = Some(match value.as_str() {
                        "chain" => CredentialSource::Chain,
                        "static" => static_credentials_from_env(),
                        _ => {
                            return Err(format!(
                                "credentials must be chain or static, not '{value}'"
                            ))
                        }
                    })
                }
                "max_attempts" => {
                    options.max_attempts = u32::try_from(number("max_attempts")?.min(1000))
                        .map_err(|_| "max_attempts is too large".to_owned())?
                }
                "timeout_ms" => {
                    options.attempt_timeout = Duration::from_millis(number("timeout_ms")?)
                }
                "log_shards" => {
                    options.log_shards = usize::try_from(number("log_shards")?)
                        .ok()
                        .filter(|n| *n <= MAX_LOG_SHARDS)
                        .ok_or_else(|| format!("log_shards must be at most {MAX_LOG_SHARDS}"))?
                }
                _ => {
                    return Err(format!(
                        "unknown or empty DynamoDB option '{name}' (known: region, endpoint, \
                         create_table, credentials, max_attempts, timeout_ms, log_shards)"
                    ))
                }
            }
        }
        options.credentials = match credentials {
            Some(c) => c,
            None if options.endpoint.is_some() => static_credentials_from_env(),
            None => CredentialSource::Chain,
        };
        Ok(options)
    }
}

/// Static keys from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, or dummy keys if either
/// is unset.
fn static_credentials_from_env() -> CredentialSource {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => CredentialSource::Static {
            access_key_id,
            secret_access_key,
        },
        _ => CredentialSource::Static {
            access_key_id: EMULATOR_KEY.into(),
            secret_access_key: EMULATOR_KEY.into(),
        },
    }
}

/// Size limits, fixed by DynamoDB; tests shrink them to exercise the general path and the
/// splitting of payloads cheaply.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Actions in one `TransactWriteItems`.
    pub txn_max_items: usize,
    /// Bytes in one `TransactWriteItems` (as [`item_size`](super::layout::item_size) counts them).
    pub txn_max_bytes: usize,
    /// Payload bytes in one item: a head or an overflow chunk.
    pub chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            txn_max_items: TXN_MAX_ITEMS,
            txn_max_bytes: TXN_MAX_BYTES,
            chunk_bytes: CHUNK_BYTES,
        }
    }
}
