//! DynamoDB backend: every record in one table, written with `TransactWriteItems` when a
//! commit fits in one transaction and with a pending marker and batches beyond that.
//!
//! # Table
//!
//! One table with a binary partition key `pk` and a binary sort key `sk` (both `B`), billing
//! of the user's choice, and DynamoDB TTL enabled on the number attribute `exp`. With
//! `create_table=true` the backend creates it (on-demand billing) and enables TTL. The first
//! byte of `pk` says what an item is; user bytes are never split, only prefixed or hashed:
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | version head | `v` ‖ user key, or `h` ‖ SHA-256(user key) for keys over 1,024 bytes | [`VersionId::to_bytes`] (24 bytes, big-endian) | `v` value (or its first part), `n` extra chunks |
//! | commit record head | `c` ‖ bucket (u64 BE) ‖ shard (u8) | version id | `v` encoded record (or its first part), `n` |
//! | commit directory | `d` | bucket ‖ shard | |
//! | idempotency entry | `i` ‖ key, or `j` ‖ SHA-256(key) over 1,024 bytes | `0x00` | `id` commit version id, `exp` TTL |
//! | pending marker | `p` | version id | `at` start (ms), `v` key list, `n`, `d` done, `ab` abandoned |
//! | overflow chunk | `o` ‖ head `pk` ‖ head `sk` | chunk number (u32 BE, from 1) | `v` |
//! | format | `m` | `0x00` | `format` |
//!
//! * A key's versions share one partition, sorted by version id: a `Query` with
//!   `ScanIndexForward=false` lists them newest first.
//! * Commit records are partitioned by time bucket (the commit timestamp's top bits, about
//!   18.6 hours of physical time with aft's clock) and by one of [`COMMIT_SHARDS`] shards (from
//!   the transaction id, which spreads one bucket's writes over several partitions). Sort keys
//!   are version ids, so a partition is in commit order, and a node's recent commits — everyone's
//!   recent commits — are one `Query` per shard of the current bucket. The directory partition
//!   `d` lists every (bucket, shard) partition that was ever written, so
//!   [`Storage::scan_commits`] never scans the table: it queries the directory from the bucket
//!   of `after` on, then each bucket's shards, merged in id order. A directory entry is written
//!   (once per bucket and shard per process) before the first commit record that needs it;
//!   entries of empty buckets older than two days are dropped by the scan that finds them empty.
//! * Values larger than one item allows are split: the head holds the first
//!   [`CHUNK_BYTES`] bytes and `n`, the rest lives in overflow chunks keyed by the head's key.
//!   Encoded commit records and pending markers are split the same way. Keys, values and
//!   commit bodies of any size therefore work (up to what a transaction writes in total, see
//!   below); nothing is refused for its size.
//!
//! # Commit
//!
//! **Fast path** — the commit fits in one `TransactWriteItems` (at most 100 items, 4 MB): one
//! request puts every version (and chunk), the commit record head (conditional on not existing)
//! and, with an idempotency key, the idempotency entry (conditional on not existing). The
//! request is atomic, so a crash or an error leaves nothing or everything, and a duplicate
//! writes nothing. Its `ClientRequestToken` is derived from the version id, so a retry after a
//! lost response is recognised by DynamoDB for ten minutes; beyond that the retry fails its
//! condition on the commit record, which can only be ours (ids are unique): committed.
//!
//! **General path** — larger commits (1,000 keys, or megabytes of values):
//!
//! 1. with an idempotency key, read its entry: if it exists, `Duplicate`, nothing written;
//! 2. put the pending marker `p`/id: start time and the list of keys (and chunk counts)
//!    the commit is about to write;
//! 3. `BatchWriteItem` every version, chunk and record chunk (25 per request, several requests
//!    in flight, `UnprocessedItems` retried with exponential backoff and jitter);
//! 4. one `TransactWriteItems`: put the commit record head (conditional on not existing), put
//!    the idempotency entry (conditional on not existing), and set `d` on the marker
//!    (conditional on the marker existing and not being abandoned);
//! 5. delete the marker (best effort: a marker with `d` set is deleted by the next
//!    [`Storage::reclaim_orphans`]).
//!
//! The idempotency claim and the commit record are created by the same atomic request, so an
//! idempotency entry never exists without its commit record (there is no claim to recover),
//! and the marker's `d` flag changes with them. What a crash leaves:
//!
//! | crash | state | visible | clean-up |
//! |---|---|---|---|
//! | before 2 | nothing | no | none |
//! | in 2 or 3 | marker (maybe partial), some versions | no: no commit record | `reclaim_orphans` |
//! | after 4 | committed; marker with `d` | yes | `reclaim_orphans` deletes the marker |
//!
//! [`Storage::reclaim_orphans`] queries the marker partition (never the keyspace). For a marker
//! older than its argument and not done, it first sets `ab` on it (conditional on `d` not being
//! set): from then on step 4 of that commit fails its condition, so a commit that is merely slow
//! can never become visible with versions deleted under it. It then deletes the versions, chunks
//! and record chunks the marker lists, and the marker last (a crash during reclaim leaves the
//! marker, and the next reclaim finishes the work). A marker whose key list is incomplete
//! (crash while writing it) never had versions written: only the marker is deleted.
//!
//! A general-path commit that loses the idempotency race (step 4 fails on the idempotency
//! entry) abandons its marker the same way before it returns `Duplicate`, so a duplicate leaves
//! no versions behind unless that clean-up itself fails (then `reclaim_orphans` does it).
//!
//! # Reads, scans, deletions
//!
//! Versions are read with `BatchGetItem` (100 keys per request, `ConsistentRead`,
//! `UnprocessedKeys` retried), then the chunks of split values the same way. Deletions read the
//! heads first (to learn their chunks and idempotency keys), delete chunks before heads and
//! idempotency entries before records (conditional on still naming the record), so that a crash
//! mid-way leaves what the next, idempotent, attempt needs.
//!
//! # Errors and retries
//!
//! The SDK's own retries are off: every request goes through one retry loop (exponential
//! backoff with full jitter, [`DynamoDbOptions::max_attempts`] attempts) that counts what it
//! sees ([`DynamoDbStorage::stats`]). Throttling, transaction conflicts, 5xx answers, timeouts
//! and connection failures are retried; when attempts run out the call fails with
//! [`StorageError::Unavailable`], or, for a commit request that may have been applied (a
//! timeout, a lost connection or a 5xx after it was sent), with
//! [`StorageError::OutcomeUnknown`]. Validation errors, a missing table and refused credentials
//! are [`StorageError::Io`] with DynamoDB's message; items that do not decode are
//! [`StorageError::Corrupt`].
//!
//! # Idempotency entries and TTL
//!
//! aft deletes an idempotency entry with its commit record (the entry first, conditional on
//! still naming the record) once the record's retention is over, and this layout never leaves
//! an entry without its record. Entries also carry `exp`, a DynamoDB TTL counted from the
//! commit ([`DynamoDbOptions::idempotency_ttl`]; `aft serve` sets it to
//! `idempotency_retention_secs` plus a week), which bounds how long any entry can outlive what
//! aft promises: a retry is recognised for at least the retention. The one consequence: a
//! record whose versions stay live past the TTL keeps its record but no longer blocks its
//! idempotency key.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, DeleteRequest, KeySchemaElement,
    KeyType, KeysAndAttributes, Put, PutRequest, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem,
    Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use bytes::Bytes;

use super::url::percent_decode;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::{
    BoxFuture, CommitBatch, CommitOutcome, CommitRecord, Storage, StorageError, VersionId,
    VersionKey,
};

/// Bytes of payload in one item (a head or a chunk): below DynamoDB's 400 KB item limit with
/// room for the keys and attribute names.
pub const CHUNK_BYTES: usize = 350 * 1024;

/// User keys (and idempotency keys) up to this length are stored as they are in `pk`; longer
/// ones are replaced by their SHA-256 (DynamoDB partition keys hold at most 2,048 bytes).
pub const MAX_PLAIN_KEY: usize = 1024;

/// Partitions each commit-record time bucket is spread over.
pub const COMMIT_SHARDS: u8 = 4;

/// A commit record's bucket is its timestamp shifted right by this many bits: with aft's
/// clock (milliseconds << 16) a bucket spans 2^26 ms, about 18.6 hours.
const BUCKET_SHIFT: u32 = 42;

/// Directory entries of empty buckets that ended this long ago are dropped.
const PRUNE_AFTER: Duration = Duration::from_secs(2 * 86_400);

/// Largest `TransactWriteItems`: DynamoDB's limit on actions.
const TXN_MAX_ITEMS: usize = 100;

/// Largest `TransactWriteItems` in bytes: DynamoDB's 4 MB, less a margin for our estimate.
const TXN_MAX_BYTES: usize = 4 * 1024 * 1024 - 256 * 1024;

/// Items per `BatchWriteItem` (DynamoDB's limit).
const BATCH_WRITE_ITEMS: usize = 25;

/// Keys per `BatchGetItem` (DynamoDB's limit).
const BATCH_GET_KEYS: usize = 100;

/// Batch requests of one call in flight at once.
const CONCURRENCY: usize = 8;

/// Items per `Query` page we ask for.
const QUERY_PAGE: i32 = 1000;

/// First backoff delay, doubled at each attempt, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(20);

/// Longest backoff delay.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Layout version stored in the format item, checked on open.
const FORMAT_VERSION: u64 = 1;

const PK: &str = "pk";
const SK: &str = "sk";
/// Payload (value, encoded record, key list), or its first part.
const VALUE: &str = "v";
/// Number of overflow chunks after the head.
const CHUNKS: &str = "n";
/// Idempotency entry: the commit's version id.
const ID: &str = "id";
/// Idempotency entry: TTL, seconds since the epoch.
const EXPIRES: &str = "exp";
/// Pending marker: start, milliseconds since the epoch.
const STARTED: &str = "at";
/// Pending marker: the commit record was written.
const DONE: &str = "d";
/// Pending marker: abandoned by clean-up; the commit may no longer complete.
const ABANDONED: &str = "ab";
/// Format item: layout version.
const FORMAT: &str = "format";

const DIRECTORY_PK: &[u8] = b"d";
const MARKER_PK: &[u8] = b"p";
const FORMAT_PK: &[u8] = b"m";
const SINGLE_SK: &[u8] = &[0];

/// A DynamoDB item.
type Item = HashMap<String, AttributeValue>;

/// A `Query` page and the key to continue from.
type Page = (Vec<Item>, Option<Item>);

/// A `BatchGetItem` answer: the items found and the keys left unprocessed.
type Fetched = (Vec<Item>, Vec<Item>);

/// An encoded commit record's idempotency key and body.
type RecordParts<'a> = (Option<&'a [u8]>, &'a [u8]);

// ---------------------------------------------------------------------------------------------
// Options

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
    /// TTL of idempotency entries (a backstop; see the module documentation). Must exceed
    /// aft's `idempotency_retention_secs`.
    pub idempotency_ttl: Duration,
}

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
            idempotency_ttl: Duration::from_secs(8 * 86_400),
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
    /// * `timeout_ms=N`: time limit of one attempt (default 10,000).
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
                _ => {
                    return Err(format!(
                        "unknown or empty DynamoDB option '{name}' (known: region, endpoint, \
                         create_table, credentials, max_attempts, timeout_ms)"
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

// ---------------------------------------------------------------------------------------------
// Statistics

/// What the backend has done and seen, for INFO and monitoring. Counters only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DynamoDbStats {
    /// Requests sent (every attempt counts).
    pub requests: u64,
    /// Attempts refused by throttling (`ProvisionedThroughputExceeded`, `ThrottlingException`,
    /// `RequestLimitExceeded`, or throttled transaction items).
    pub throttled: u64,
    /// Attempts that failed with a 5xx, a timeout or a connection error.
    pub transient_errors: u64,
    /// `TransactWriteItems` attempts cancelled by a conflicting transaction.
    pub conflicts: u64,
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// Calls that failed because every attempt failed.
    pub exhausted: u64,
    /// Items returned in `UnprocessedItems` and sent again.
    pub unprocessed_items: u64,
    /// Keys returned in `UnprocessedKeys` and asked again.
    pub unprocessed_keys: u64,
    /// Commits written by one `TransactWriteItems`.
    pub fast_commits: u64,
    /// Commits written through a pending marker and batches.
    pub general_commits: u64,
    /// Commits that found their idempotency key taken.
    pub duplicates: u64,
    /// Orphan versions deleted by clean-up.
    pub orphans_reclaimed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    throttled: AtomicU64,
    transient_errors: AtomicU64,
    conflicts: AtomicU64,
    retries: AtomicU64,
    exhausted: AtomicU64,
    unprocessed_items: AtomicU64,
    unprocessed_keys: AtomicU64,
    fast_commits: AtomicU64,
    general_commits: AtomicU64,
    duplicates: AtomicU64,
    orphans_reclaimed: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> DynamoDbStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DynamoDbStats {
            requests: get(&self.requests),
            throttled: get(&self.throttled),
            transient_errors: get(&self.transient_errors),
            conflicts: get(&self.conflicts),
            retries: get(&self.retries),
            exhausted: get(&self.exhausted),
            unprocessed_items: get(&self.unprocessed_items),
            unprocessed_keys: get(&self.unprocessed_keys),
            fast_commits: get(&self.fast_commits),
            general_commits: get(&self.general_commits),
            duplicates: get(&self.duplicates),
            orphans_reclaimed: get(&self.orphans_reclaimed),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The requests the backend sends, behind a trait so that tests can inject faults.

/// Why one attempt of a request failed.
#[derive(Clone, Debug)]
pub(crate) enum CallError {
    /// Worth another attempt. `throttled`: refused by throttling (nothing applied);
    /// `conflict`: a transaction conflict (nothing applied); `ambiguous`: the request may have
    /// been applied (timeout, lost connection, 5xx after sending).
    Retry {
        message: String,
        throttled: bool,
        conflict: bool,
        ambiguous: bool,
    },
    /// A single-item write's condition failed; the current item, if DynamoDB returned it.
    ConditionFailed(Option<Item>),
    /// `TransactWriteItems` was cancelled: one reason per action, in order.
    Canceled(Vec<Reason>),
    /// Not worth retrying: validation error, missing table, refused credentials…
    Fatal(String),
}

/// One action's cancellation reason.
#[derive(Clone, Debug)]
pub(crate) struct Reason {
    /// DynamoDB's code: `None`, `ConditionalCheckFailed`, `TransactionConflict`, …
    pub code: String,
    /// The item, when the action asked for it on a failed condition.
    pub item: Option<Item>,
}

impl Reason {
    fn condition_failed(&self) -> bool {
        self.code == "ConditionalCheckFailed"
    }
}

/// A query of one partition, in sort-key order.
#[derive(Clone, Debug)]
pub(crate) struct QueryRequest {
    pub pk: Vec<u8>,
    /// Only sort keys greater than this one.
    pub after: Option<Vec<u8>>,
    /// Only sort keys at least this one.
    pub from: Option<Vec<u8>>,
    /// Attributes to return (`None`: all).
    pub projection: Option<&'static [&'static str]>,
    pub limit: i32,
    pub start: Option<Item>,
}

/// The DynamoDB requests the backend uses, on its one table.
pub(crate) trait Api: Send + Sync + 'static {
    /// `BatchWriteItem`; returns the unprocessed requests.
    fn batch_write(
        &self,
        requests: Vec<WriteRequest>,
    ) -> BoxFuture<'_, Result<Vec<WriteRequest>, CallError>>;

    /// Consistent `BatchGetItem`; returns the items found and the unprocessed keys.
    fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: Option<&'static [&'static str]>,
    ) -> BoxFuture<'_, Result<Fetched, CallError>>;

    /// `TransactWriteItems` with a client request token.
    fn transact_write(
        &self,
        items: Vec<TransactWriteItem>,
        token: String,
    ) -> BoxFuture<'_, Result<(), CallError>>;

    /// Consistent `Query`; returns a page and the key to continue from.
    fn query(&self, request: QueryRequest) -> BoxFuture<'_, Result<Page, CallError>>;

    /// Consistent `GetItem`.
    fn get(&self, key: Item) -> BoxFuture<'_, Result<Option<Item>, CallError>>;

    /// `PutItem`, `UpdateItem` or `DeleteItem`, described as a transaction action (whose
    /// condition, if any, fails with [`CallError::ConditionFailed`]).
    fn write(&self, write: TransactWriteItem) -> BoxFuture<'_, Result<(), CallError>>;
}

/// [`Api`] on the AWS SDK.
struct SdkApi {
    client: Client,
    table: String,
}

impl Api for SdkApi {
    fn batch_write(
        &self,
        requests: Vec<WriteRequest>,
    ) -> BoxFuture<'_, Result<Vec<WriteRequest>, CallError>> {
        Box::pin(async move {
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| classify("BatchWriteItem", e))?;
            Ok(output
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default())
        })
    }

    fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: Option<&'static [&'static str]>,
    ) -> BoxFuture<'_, Result<Fetched, CallError>> {
        Box::pin(async move {
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true);
            if let Some(names) = projection {
                let (expression, names) = projection_expression(names);
                request = request
                    .projection_expression(expression)
                    .set_expression_attribute_names(Some(names));
            }
            let request = request
                .build()
                .map_err(|e| CallError::Fatal(e.to_string()))?;
            let output = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| classify("BatchGetItem", e))?;
            let found = output
                .responses
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            let unprocessed = output
                .unprocessed_keys
                .and_then(|mut m| m.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
            Ok((found, unprocessed))
        })
    }

    fn transact_write(
        &self,
        items: Vec<TransactWriteItem>,
        token: String,
    ) -> BoxFuture<'_, Result<(), CallError>> {
        Box::pin(async move {
            use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(token)
                .send()
                .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) => match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                        Err(CallError::Canceled(
                            c.cancellation_reasons()
                                .iter()
                                .map(|r| Reason {
                                    code: r.code().unwrap_or("None").to_owned(),
                                    item: r.item().cloned(),
                                })
                                .collect(),
                        ))
                    }
                    _ => Err(classify("TransactWriteItems", e)),
                },
            }
        })
    }

    fn query(&self, request: QueryRequest) -> BoxFuture<'_, Result<Page, CallError>> {
        Box::pin(async move {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .limit(request.limit)
                .set_exclusive_start_key(request.start)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", bin(request.pk));
            let mut condition = "#pk = :pk".to_owned();
            if let Some(after) = request.after {
                condition.push_str(" AND #sk > :sk");
                query = query
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":sk", bin(after));
            } else if let Some(from) = request.from {
                condition.push_str(" AND #sk >= :sk");
                query = query
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":sk", bin(from));
            }
            if let Some(names) = request.projection {
                let mut expression = String::new();
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        expression.push_str(", ");
                    }
                    let alias = format!("#p{i}");
                    expression.push_str(&alias);
                    query = query.expression_attribute_names(alias, *name);
                }
                query = query.projection_expression(expression);
            }
            let output = query
                .key_condition_expression(condition)
                .send()
                .await
                .map_err(|e| classify("Query", e))?;
            Ok((output.items.unwrap_or_default(), output.last_evaluated_key))
        })
    }

    fn get(&self, key: Item) -> BoxFuture<'_, Result<Option<Item>, CallError>> {
        Box::pin(async move {
            let output = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| classify("GetItem", e))?;
            Ok(output.item)
        })
    }

    fn write(&self, write: TransactWriteItem) -> BoxFuture<'_, Result<(), CallError>> {
        Box::pin(async move {
            use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
            use aws_sdk_dynamodb::operation::put_item::PutItemError;
            use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
            let old = Some(aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld);
            if let Some(put) = write.put {
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(put.item))
                    .set_condition_expression(put.condition_expression)
                    .set_expression_attribute_names(put.expression_attribute_names)
                    .set_expression_attribute_values(put.expression_attribute_values)
                    .set_return_values_on_condition_check_failure(old)
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(PutItemError::ConditionalCheckFailedException(c)) => {
                            CallError::ConditionFailed(c.item().cloned())
                        }
                        _ => classify("PutItem", e),
                    })?;
            } else if let Some(update) = write.update {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(update.key))
                    .update_expression(update.update_expression)
                    .set_condition_expression(update.condition_expression)
                    .set_expression_attribute_names(update.expression_attribute_names)
                    .set_expression_attribute_values(update.expression_attribute_values)
                    .set_return_values_on_condition_check_failure(old)
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                            CallError::ConditionFailed(c.item().cloned())
                        }
                        _ => classify("UpdateItem", e),
                    })?;
            } else if let Some(delete) = write.delete {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(delete.key))
                    .set_condition_expression(delete.condition_expression)
                    .set_expression_attribute_names(delete.expression_attribute_names)
                    .set_expression_attribute_values(delete.expression_attribute_values)
                    .set_return_values_on_condition_check_failure(old)
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(DeleteItemError::ConditionalCheckFailedException(c)) => {
                            CallError::ConditionFailed(c.item().cloned())
                        }
                        _ => classify("DeleteItem", e),
                    })?;
            } else {
                return Err(CallError::Fatal("empty write".into()));
            }
            Ok(())
        })
    }
}

fn projection_expression(names: &[&str]) -> (String, HashMap<String, String>) {
    let mut expression = String::new();
    let mut map = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            expression.push_str(", ");
        }
        let alias = format!("#p{i}");
        expression.push_str(&alias);
        map.insert(alias, (*name).to_owned());
    }
    (expression, map)
}

/// Maps an SDK error to what the retry loop needs to know.
fn classify<E>(operation: &str, error: SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = format!("{operation}: {}", DisplayErrorContext(&error));
    let retry = |throttled, conflict, ambiguous| CallError::Retry {
        message: message.clone(),
        throttled,
        conflict,
        ambiguous,
    };
    match &error {
        SdkError::ConstructionFailure(_) => CallError::Fatal(message),
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => retry(false, false, true),
        SdkError::DispatchFailure(failure) => {
            if failure.is_io() || failure.is_timeout() {
                retry(false, false, true)
            } else {
                CallError::Fatal(message)
            }
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            // The service's own words; the SDK's context adds the whole raw response.
            let message = format!(
                "{operation}: {code}: {} (HTTP {status})",
                service.err().message().unwrap_or("no message")
            );
            let retry = |throttled, conflict, ambiguous| CallError::Retry {
                message: message.clone(),
                throttled,
                conflict,
                ambiguous,
            };
            match code {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded" => retry(true, false, false),
                "TransactionConflictException" | "TransactionInProgressException" => {
                    retry(false, true, false)
                }
                "InternalServerError" | "ServiceUnavailable" => retry(false, false, true),
                _ if status >= 500 => retry(false, false, true),
                _ => CallError::Fatal(message),
            }
        }
        _ => CallError::Fatal(message),
    }
}

// ---------------------------------------------------------------------------------------------
// Item encoding

fn bin(bytes: impl Into<Vec<u8>>) -> AttributeValue {
    AttributeValue::B(Blob::new(bytes))
}

fn num(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn key_item(pk: Vec<u8>, sk: Vec<u8>) -> Item {
    HashMap::from([(PK.to_owned(), bin(pk)), (SK.to_owned(), bin(sk))])
}

fn get_bin<'a>(item: &'a Item, name: &str) -> Result<&'a [u8], StorageError> {
    match item.get(name) {
        Some(AttributeValue::B(b)) => Ok(b.as_ref()),
        Some(_) => Err(corrupt(format!("attribute {name} is not binary"))),
        None => Err(corrupt(format!("item without attribute {name}"))),
    }
}

fn get_num(item: &Item, name: &str) -> Result<Option<u64>, StorageError> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n
            .parse()
            .map(Some)
            .map_err(|_| corrupt(format!("attribute {name} is not a count: {n}"))),
        Some(_) => Err(corrupt(format!("attribute {name} is not a number"))),
        None => Ok(None),
    }
}

fn corrupt(message: String) -> StorageError {
    StorageError::Corrupt(format!("dynamodb: {message}").into())
}

/// DynamoDB's size of an item: attribute names plus values.
fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::B(b) => b.as_ref().len(),
                    AttributeValue::N(n) => n.len(),
                    AttributeValue::S(s) => s.len(),
                    _ => 8,
                }
        })
        .sum()
}

/// `prefix` ‖ `key`, or `hashed_prefix` ‖ SHA-256(`key`) for long keys.
fn user_pk(plain: u8, hashed: u8, key: &[u8]) -> Vec<u8> {
    if key.len() <= MAX_PLAIN_KEY {
        let mut pk = Vec::with_capacity(1 + key.len());
        pk.push(plain);
        pk.extend_from_slice(key);
        pk
    } else {
        let mut pk = Vec::with_capacity(33);
        pk.push(hashed);
        pk.extend_from_slice(&Sha256::digest(key));
        pk
    }
}

fn version_pk(key: &[u8]) -> Vec<u8> {
    user_pk(b'v', b'h', key)
}

fn idempotency_pk(key: &[u8]) -> Vec<u8> {
    user_pk(b'i', b'j', key)
}

fn bucket(id: VersionId) -> u64 {
    id.ts >> BUCKET_SHIFT
}

fn shard(id: VersionId) -> u8 {
    let txn = id.txn.0;
    ((txn as u64 ^ (txn >> 64) as u64) % u64::from(COMMIT_SHARDS)) as u8
}

fn commit_pk_of(bucket: u64, shard: u8) -> Vec<u8> {
    let mut pk = Vec::with_capacity(10);
    pk.push(b'c');
    pk.extend_from_slice(&bucket.to_be_bytes());
    pk.push(shard);
    pk
}

fn commit_pk(id: VersionId) -> Vec<u8> {
    commit_pk_of(bucket(id), shard(id))
}

fn directory_sk(bucket: u64, shard: u8) -> Vec<u8> {
    let mut sk = bucket.to_be_bytes().to_vec();
    sk.push(shard);
    sk
}

fn chunk_pk(head_pk: &[u8], head_sk: &[u8]) -> Vec<u8> {
    let mut pk = Vec::with_capacity(1 + head_pk.len() + head_sk.len());
    pk.push(b'o');
    pk.extend_from_slice(head_pk);
    pk.extend_from_slice(head_sk);
    pk
}

/// Keys of the `count` overflow chunks of the item at (`head_pk`, `head_sk`).
fn chunk_keys(head_pk: &[u8], head_sk: &[u8], count: u32) -> Vec<Item> {
    let pk = chunk_pk(head_pk, head_sk);
    (1..=count)
        .map(|i| key_item(pk.clone(), i.to_be_bytes().to_vec()))
        .collect()
}

/// Extra chunks a payload of `len` bytes needs beyond its head.
fn chunks_needed(len: usize, chunk: usize) -> u32 {
    if len <= chunk {
        0
    } else {
        u32::try_from((len - 1) / chunk).unwrap_or(u32::MAX)
    }
}

/// The head item (with `extra` attributes) and overflow chunks holding `payload`.
fn split_payload(
    pk: Vec<u8>,
    sk: Vec<u8>,
    payload: &[u8],
    chunk: usize,
    extra: Vec<(&str, AttributeValue)>,
) -> (Item, Vec<Item>) {
    let count = chunks_needed(payload.len(), chunk);
    let first = payload.len().min(chunk);
    let mut chunks = Vec::with_capacity(count as usize);
    if count > 0 {
        let cpk = chunk_pk(&pk, &sk);
        for (i, part) in payload[first..].chunks(chunk).enumerate() {
            let mut item = key_item(cpk.clone(), ((i + 1) as u32).to_be_bytes().to_vec());
            item.insert(VALUE.into(), bin(part));
            chunks.push(item);
        }
    }
    let mut head = key_item(pk, sk);
    head.insert(VALUE.into(), bin(&payload[..first]));
    if count > 0 {
        head.insert(CHUNKS.into(), num(u64::from(count)));
    }
    for (name, value) in extra {
        head.insert(name.to_owned(), value);
    }
    (head, chunks)
}

fn chunk_count(item: &Item) -> Result<u32, StorageError> {
    let count = get_num(item, CHUNKS)?.unwrap_or(0);
    u32::try_from(count).map_err(|_| corrupt(format!("chunk count {count} out of range")))
}

/// Version of the commit-record encoding.
const RECORD_FORMAT: u8 = 1;
/// Flag: an idempotency key follows the header.
const HAS_IDEMPOTENCY_KEY: u8 = 0b1;

/// Encodes a commit record (the id is the item's key, not repeated):
///
/// ```text
/// format: u8 = 1
/// flags:  u8, bit 0 = an idempotency key follows; other bits zero
/// [if bit 0] idempotency key length: u32 big-endian, then its bytes
/// body: the rest
/// ```
fn encode_record(idempotency_key: Option<&[u8]>, body: &[u8]) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(6 + idempotency_key.map_or(0, <[u8]>::len) + body.len());
    out.push(RECORD_FORMAT);
    match idempotency_key {
        Some(key) => {
            out.push(HAS_IDEMPOTENCY_KEY);
            let len = u32::try_from(key.len())
                .map_err(|_| StorageError::Io("idempotency key is too long".into()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(key);
        }
        None => out.push(0),
    }
    out.extend_from_slice(body);
    Ok(out)
}

/// Splits an encoded record into its idempotency key and body. `Ok(None)` if `bytes` is a
/// prefix too short to hold the whole idempotency key.
fn parse_record(bytes: &[u8]) -> Result<Option<RecordParts<'_>>, String> {
    let [format, flags, rest @ ..] = bytes else {
        return Ok(None);
    };
    if *format != RECORD_FORMAT {
        return Err(format!("unknown commit record format {format}"));
    }
    match *flags {
        0 => Ok(Some((None, rest))),
        HAS_IDEMPOTENCY_KEY => {
            let Some((len, rest)) = rest.split_first_chunk::<4>() else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(*len) as usize;
            if rest.len() < len {
                return Ok(None);
            }
            let (key, body) = rest.split_at(len);
            Ok(Some((Some(key), body)))
        }
        other => Err(format!("unknown commit record flags {other:#x}")),
    }
}

fn decode_record(id: VersionId, bytes: &[u8]) -> Result<CommitRecord, StorageError> {
    match parse_record(bytes) {
        Ok(Some((key, body))) => Ok(CommitRecord {
            id,
            idempotency_key: key.map(Bytes::copy_from_slice),
            body: Bytes::copy_from_slice(body),
        }),
        Ok(None) => Err(corrupt(format!("commit record {id:?} is truncated"))),
        Err(e) => Err(corrupt(format!("commit record {id:?}: {e}"))),
    }
}

/// Version of the pending-marker encoding.
const MARKER_FORMAT: u8 = 1;

/// What a pending marker lists: the chunks of the commit record and every version's user key
/// with its chunk count.
#[derive(Debug, PartialEq, Eq)]
struct MarkerPlan {
    record_chunks: u32,
    versions: Vec<(Vec<u8>, u32)>,
}

/// ```text
/// format: u8 = 1
/// record chunks: u32 BE
/// versions: u32 BE count, then per version: key length u32 BE, key, chunks u32 BE
/// ```
fn encode_marker(plan: &MarkerPlan) -> Result<Vec<u8>, StorageError> {
    let too_long = || StorageError::Io("transaction is too large to record".into());
    let mut out = Vec::with_capacity(
        9 + plan
            .versions
            .iter()
            .map(|(k, _)| 8 + k.len())
            .sum::<usize>(),
    );
    out.push(MARKER_FORMAT);
    out.extend_from_slice(&plan.record_chunks.to_be_bytes());
    let count = u32::try_from(plan.versions.len()).map_err(|_| too_long())?;
    out.extend_from_slice(&count.to_be_bytes());
    for (key, chunks) in &plan.versions {
        let len = u32::try_from(key.len()).map_err(|_| too_long())?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&chunks.to_be_bytes());
    }
    Ok(out)
}

fn decode_marker(bytes: &[u8]) -> Result<MarkerPlan, StorageError> {
    fn u32_at(bytes: &[u8], at: &mut usize) -> Option<u32> {
        let v = u32::from_be_bytes(bytes.get(*at..*at + 4)?.try_into().ok()?);
        *at += 4;
        Some(v)
    }
    let bad = || corrupt("pending marker does not decode".into());
    if bytes.first() != Some(&MARKER_FORMAT) {
        return Err(bad());
    }
    let mut at = 1;
    let record_chunks = u32_at(bytes, &mut at).ok_or_else(bad)?;
    let count = u32_at(bytes, &mut at).ok_or_else(bad)?;
    let mut versions = Vec::with_capacity((count as usize).min(1 << 16));
    for _ in 0..count {
        let len = u32_at(bytes, &mut at).ok_or_else(bad)? as usize;
        let key = bytes.get(at..at + len).ok_or_else(bad)?.to_vec();
        at += len;
        let chunks = u32_at(bytes, &mut at).ok_or_else(bad)?;
        versions.push((key, chunks));
    }
    if at != bytes.len() {
        return Err(bad());
    }
    Ok(MarkerPlan {
        record_chunks,
        versions,
    })
}

/// (bucket, shard) of a directory entry's sort key.
fn decode_directory(sk: &[u8]) -> Result<(u64, u8), StorageError> {
    match sk {
        [bucket @ .., shard] => {
            let bucket: [u8; 8] = bucket
                .try_into()
                .map_err(|_| corrupt("directory entry does not decode".into()))?;
            Ok((u64::from_be_bytes(bucket), *shard))
        }
        [] => Err(corrupt("empty directory entry".into())),
    }
}

fn decode_id(bytes: &[u8], what: &str) -> Result<VersionId, StorageError> {
    VersionId::from_bytes(bytes)
        .ok_or_else(|| corrupt(format!("{what}: a version id of {} bytes", bytes.len())))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The client request token of a commit's transaction: derived from its id, so a retry of
/// the same request carries the same token. At most 36 characters.
fn request_token(kind: &str, id: VersionId) -> String {
    let digest = Sha256::digest(id.to_bytes());
    let mut token = format!("aft{kind}-");
    for byte in &digest[..16] {
        token.push_str(&format!("{byte:02x}"));
    }
    token.truncate(36);
    token
}

fn put_action(table: &str, item: Item) -> Result<TransactWriteItem, StorageError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .build()
        .map_err(|e| StorageError::Io(format!("dynamodb: {e}").into()))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// A put that fails if an item with the same key exists (and then returns it).
fn put_new_action(table: &str, item: Item) -> Result<TransactWriteItem, StorageError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(#pk)")
        .expression_attribute_names("#pk", PK)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .map_err(|e| StorageError::Io(format!("dynamodb: {e}").into()))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn put_request(item: Item) -> Result<WriteRequest, StorageError> {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(|e| StorageError::Io(format!("dynamodb: {e}").into()))?;
    Ok(WriteRequest::builder().put_request(put).build())
}

fn delete_request(key: Item) -> Result<WriteRequest, StorageError> {
    let delete = DeleteRequest::builder()
        .set_key(Some(key))
        .build()
        .map_err(|e| StorageError::Io(format!("dynamodb: {e}").into()))?;
    Ok(WriteRequest::builder().delete_request(delete).build())
}

fn key_of(item: &Item) -> Item {
    item.iter()
        .filter(|(name, _)| *name == PK || *name == SK)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// (`pk`, `sk`) of a key item, as a map key.
fn key_bytes(item: &Item) -> Option<(Vec<u8>, Vec<u8>)> {
    let pk = item.get(PK)?.as_b().ok()?.as_ref().to_vec();
    let sk = item.get(SK)?.as_b().ok()?.as_ref().to_vec();
    Some((pk, sk))
}

// ---------------------------------------------------------------------------------------------
// The store

/// Size limits, fixed by DynamoDB; tests shrink them to exercise the general path and the
/// splitting of payloads cheaply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub txn_max_items: usize,
    pub txn_max_bytes: usize,
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

/// Why a call failed after its retries, as the retry loop saw it.
struct Failure {
    /// The last attempt's error.
    last: CallError,
    /// Some attempt may have been applied.
    ambiguous: bool,
}

/// The DynamoDB [`Storage`]. See the module documentation for the layout and the guarantees.
pub struct DynamoDbStorage {
    api: Arc<dyn Api>,
    table: String,
    limits: Limits,
    max_attempts: u32,
    idempotency_ttl: Duration,
    /// Commit directory entries this process wrote (or saw) already.
    registered: Mutex<HashSet<(u64, u8)>>,
    /// Held shared by every call, exclusively by `close`; `true` once closed.
    gate: tokio::sync::RwLock<bool>,
    counters: Counters,
    jitter: Mutex<u64>,
}

impl fmt::Debug for DynamoDbStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoDbStorage")
            .field("table", &self.table)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DynamoDbStorage {
    /// Connects to the table of `options`: builds the client, checks the table's key schema
    /// (creating the table first with `create_table`) and its layout version.
    ///
    /// Fails with [`StorageError::Io`] if the table is missing (without `create_table`), has
    /// another key schema, or cannot be reached with the credentials found; with
    /// [`StorageError::Unavailable`] if DynamoDB keeps failing.
    pub async fn connect(options: DynamoDbOptions) -> Result<Self, StorageError> {
        Self::connect_with(options, Limits::default()).await
    }

    pub(crate) async fn connect_with(
        options: DynamoDbOptions,
        limits: Limits,
    ) -> Result<Self, StorageError> {
        let client = sdk_client(&options).await?;
        ensure_table(&client, &options).await?;
        let api = Arc::new(SdkApi {
            client,
            table: options.table.clone(),
        });
        let storage = Self::with_api(
            api,
            &options.table,
            limits,
            options.max_attempts,
            options.idempotency_ttl,
        );
        storage.check_format().await?;
        Ok(storage)
    }

    pub(crate) fn with_api(
        api: Arc<dyn Api>,
        table: &str,
        limits: Limits,
        max_attempts: u32,
        idempotency_ttl: Duration,
    ) -> Self {
        DynamoDbStorage {
            api,
            table: table.to_owned(),
            limits,
            max_attempts: max_attempts.max(1),
            idempotency_ttl,
            registered: Mutex::new(HashSet::new()),
            gate: tokio::sync::RwLock::new(false),
            counters: Counters::default(),
            jitter: Mutex::new(now_ms() | 1),
        }
    }

    /// What the backend has done so far (requests, retries, throttling, commits by path…).
    pub fn stats(&self) -> DynamoDbStats {
        self.counters.snapshot()
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Writes the format item, or checks the one there.
    async fn check_format(&self) -> Result<(), StorageError> {
        let key = key_item(FORMAT_PK.to_vec(), SINGLE_SK.to_vec());
        let mut item = key.clone();
        item.insert(FORMAT.into(), num(FORMAT_VERSION));
        let action = put_new_action(&self.table, item)?;
        let existing = match self
            .retrying("PutItem", || self.api.write(action.clone()))
            .await
        {
            Ok(()) => return Ok(()),
            Err(Failure {
                last: CallError::ConditionFailed(Some(item)),
                ..
            }) => Some(item),
            Err(Failure {
                last: CallError::ConditionFailed(None),
                ..
            }) => self.get_item(key).await?,
            Err(f) => return Err(self.failed(f, false)),
        };
        let found = existing
            .as_ref()
            .map(|i| get_num(i, FORMAT))
            .transpose()?
            .flatten();
        match found {
            Some(FORMAT_VERSION) => Ok(()),
            other => Err(StorageError::Io(
                format!(
                    "table {} holds aft layout version {other:?}; this build reads version \
                 {FORMAT_VERSION}",
                    self.table
                )
                .into(),
            )),
        }
    }

    // --- the retry loop ---------------------------------------------------------------------

    /// Runs `attempt` until it succeeds, fails without being retryable, or
    /// `max_attempts` attempts failed; backs off exponentially with full jitter in between.
    async fn retrying<T, F, Fut>(&self, operation: &str, mut attempt: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut ambiguous = false;
        let mut tries = 0;
        loop {
            tries += 1;
            bump(&self.counters.requests, 1);
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if let CallError::Retry {
                message,
                throttled,
                conflict,
                ambiguous: maybe,
            } = &error
            {
                ambiguous |= *maybe;
                if *throttled {
                    bump(&self.counters.throttled, 1);
                } else if *conflict {
                    bump(&self.counters.conflicts, 1);
                } else {
                    bump(&self.counters.transient_errors, 1);
                }
                if tries < self.max_attempts {
                    bump(&self.counters.retries, 1);
                    tracing::debug!(operation, attempt = tries, "dynamodb: retrying: {message}");
                    tokio::time::sleep(self.backoff(tries)).await;
                    continue;
                }
                bump(&self.counters.exhausted, 1);
                tracing::warn!(
                    operation,
                    attempts = tries,
                    "dynamodb: giving up: {message}"
                );
            }
            return Err(Failure {
                last: error,
                ambiguous,
            });
        }
    }

    /// Full jitter: uniform in [0, min(MAX_BACKOFF, BASE_BACKOFF * 2^attempt)].
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = BASE_BACKOFF
            .saturating_mul(1u32 << attempt.min(16))
            .min(MAX_BACKOFF);
        let random = {
            let mut state = self.jitter.lock();
            // xorshift64
            let mut x = *state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *state = x;
            x
        };
        let micros = cap.as_micros() as u64;
        Duration::from_micros(random % micros.max(1) + 1)
    }

    /// The [`StorageError`] for a call that failed. `commit`: the call was a commit's
    /// transaction, whose application may be unknown.
    fn failed(&self, failure: Failure, commit: bool) -> StorageError {
        if commit && failure.ambiguous {
            let message = match &failure.last {
                CallError::Retry { message, .. } | CallError::Fatal(message) => message.clone(),
                other => format!("{other:?}"),
            };
            return StorageError::OutcomeUnknown(format!("dynamodb: {message}").into());
        }
        match failure.last {
            CallError::Retry { message, .. } => StorageError::Unavailable(
                format!(
                    "dynamodb: {message} (gave up after {} attempts)",
                    self.max_attempts
                )
                .into(),
            ),
            CallError::Fatal(message) => StorageError::Io(format!("dynamodb: {message}").into()),
            CallError::ConditionFailed(_) => {
                StorageError::Io("dynamodb: unexpected conditional check failure".into())
            }
            CallError::Canceled(reasons) => StorageError::Io(
                format!(
                    "dynamodb: transaction cancelled: {}",
                    reasons
                        .iter()
                        .map(|r| r.code.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into(),
            ),
        }
    }

    // --- building blocks ----------------------------------------------------------------------

    async fn get_item(&self, key: Item) -> Result<Option<Item>, StorageError> {
        self.retrying("GetItem", || self.api.get(key.clone()))
            .await
            .map_err(|f| self.failed(f, false))
    }

    async fn write_one(&self, action: TransactWriteItem) -> Result<(), Failure> {
        let operation = if action.put.is_some() {
            "PutItem"
        } else if action.update.is_some() {
            "UpdateItem"
        } else {
            "DeleteItem"
        };
        self.retrying(operation, || self.api.write(action.clone()))
            .await
    }

    /// Writes `requests` with `BatchWriteItem`, 25 per request and several requests at once,
    /// sending `UnprocessedItems` again after a backoff until none are left.
    async fn batch_write(&self, requests: Vec<WriteRequest>) -> Result<(), StorageError> {
        let batches: Vec<Vec<WriteRequest>> = requests
            .chunks(BATCH_WRITE_ITEMS)
            .map(<[WriteRequest]>::to_vec)
            .collect();
        stream::iter(batches)
            .map(|batch| self.batch_write_one(batch))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    async fn batch_write_one(&self, mut pending: Vec<WriteRequest>) -> Result<(), StorageError> {
        let mut stalled = 0;
        loop {
            let unprocessed = self
                .retrying("BatchWriteItem", || self.api.batch_write(pending.clone()))
                .await
                .map_err(|f| self.failed(f, false))?;
            if unprocessed.is_empty() {
                return Ok(());
            }
            bump(&self.counters.unprocessed_items, unprocessed.len() as u64);
            if unprocessed.len() >= pending.len() {
                stalled += 1;
                if stalled >= self.max_attempts {
                    bump(&self.counters.exhausted, 1);
                    return Err(StorageError::Unavailable(
                        format!(
                            "dynamodb: BatchWriteItem left {} items unprocessed after {} attempts",
                            unprocessed.len(),
                            self.max_attempts
                        )
                        .into(),
                    ));
                }
            } else {
                stalled = 0;
            }
            bump(&self.counters.retries, 1);
            tokio::time::sleep(self.backoff(stalled.max(1))).await;
            pending = unprocessed;
        }
    }

    /// Reads `keys` (consistently) with `BatchGetItem`, 100 per request and several requests
    /// at once, asking again for `UnprocessedKeys`. Returns the items found, by key.
    async fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: Option<&'static [&'static str]>,
    ) -> Result<HashMap<(Vec<u8>, Vec<u8>), Item>, StorageError> {
        let batches: Vec<Vec<Item>> = keys.chunks(BATCH_GET_KEYS).map(<[Item]>::to_vec).collect();
        let pages: Vec<Vec<Item>> = stream::iter(batches)
            .map(|batch| self.batch_get_one(batch, projection))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut found = HashMap::new();
        for item in pages.into_iter().flatten() {
            let key = key_bytes(&item).ok_or_else(|| corrupt("item without binary keys".into()))?;
            found.insert(key, item);
        }
        Ok(found)
    }

    async fn batch_get_one(
        &self,
        mut pending: Vec<Item>,
        projection: Option<&'static [&'static str]>,
    ) -> Result<Vec<Item>, StorageError> {
        let mut found = Vec::new();
        let mut stalled = 0;
        loop {
            let (items, unprocessed) = self
                .retrying("BatchGetItem", || {
                    self.api.batch_get(pending.clone(), projection)
                })
                .await
                .map_err(|f| self.failed(f, false))?;
            let progress = !items.is_empty();
            found.extend(items);
            if unprocessed.is_empty() {
                return Ok(found);
            }
            bump(&self.counters.unprocessed_keys, unprocessed.len() as u64);
            if progress {
                stalled = 0;
            } else {
                stalled += 1;
                if stalled >= self.max_attempts {
                    bump(&self.counters.exhausted, 1);
                    return Err(StorageError::Unavailable(
                        format!(
                            "dynamodb: BatchGetItem left {} keys unprocessed after {} attempts",
                            unprocessed.len(),
                            self.max_attempts
                        )
                        .into(),
                    ));
                }
            }
            bump(&self.counters.retries, 1);
            tokio::time::sleep(self.backoff(stalled.max(1))).await;
            pending = unprocessed;
        }
    }

    /// Every item of a partition (after `after`, or from `from`), in sort-key order, up to
    /// `limit`.
    async fn query_all(
        &self,
        pk: Vec<u8>,
        after: Option<Vec<u8>>,
        from: Option<Vec<u8>>,
        projection: Option<&'static [&'static str]>,
        limit: usize,
    ) -> Result<Vec<Item>, StorageError> {
        let mut items = Vec::new();
        let mut start = None;
        while items.len() < limit {
            let page_limit = (limit - items.len()).min(QUERY_PAGE as usize) as i32;
            let request = QueryRequest {
                pk: pk.clone(),
                after: after.clone(),
                from: from.clone(),
                projection,
                limit: page_limit,
                start: start.take(),
            };
            let (page, next) = self
                .retrying("Query", || self.api.query(request.clone()))
                .await
                .map_err(|f| self.failed(f, false))?;
            items.extend(page);
            match next {
                Some(next) => start = Some(next),
                None => break,
            }
        }
        items.truncate(limit);
        Ok(items)
    }

    /// Reassembles the payloads of `heads` (their `v` and overflow chunks). `None` for a head
    /// whose chunks are not all there.
    async fn payloads(&self, heads: &[&Item]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut wanted = Vec::new();
        let mut counts = Vec::with_capacity(heads.len());
        for head in heads {
            let count = chunk_count(head)?;
            counts.push(count);
            if count > 0 {
                let pk = get_bin(head, PK)?;
                let sk = get_bin(head, SK)?;
                wanted.extend(chunk_keys(pk, sk, count));
            }
        }
        let chunks = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.batch_get(wanted, None).await?
        };
        let mut out = Vec::with_capacity(heads.len());
        'heads: for (head, count) in heads.iter().zip(counts) {
            let mut payload = get_bin(head, VALUE)?.to_vec();
            if count > 0 {
                let cpk = chunk_pk(get_bin(head, PK)?, get_bin(head, SK)?);
                for i in 1..=count {
                    match chunks.get(&(cpk.clone(), i.to_be_bytes().to_vec())) {
                        Some(chunk) => payload.extend_from_slice(get_bin(chunk, VALUE)?),
                        None => {
                            out.push(None);
                            continue 'heads;
                        }
                    }
                }
            }
            out.push(Some(payload));
        }
        Ok(out)
    }

    /// Writes the directory entry of `id`'s commit partition, unless this process did already.
    async fn register_partition(&self, id: VersionId) -> Result<(), StorageError> {
        let entry = (bucket(id), shard(id));
        if self.registered.lock().contains(&entry) {
            return Ok(());
        }
        let item = key_item(DIRECTORY_PK.to_vec(), directory_sk(entry.0, entry.1));
        let action = put_action(&self.table, item)?;
        self.write_one(action)
            .await
            .map_err(|f| self.failed(f, false))?;
        self.registered.lock().insert(entry);
        Ok(())
    }

    /// The id of the commit holding `key`, read consistently.
    async fn read_idempotent(&self, key: &[u8]) -> Result<Option<VersionId>, StorageError> {
        let item = self
            .get_item(key_item(idempotency_pk(key), SINGLE_SK.to_vec()))
            .await?;
        item.map(|i| decode_id(get_bin(&i, ID)?, "idempotency entry"))
            .transpose()
    }

    fn idempotency_item(&self, key: &[u8], id: VersionId) -> Item {
        let mut item = key_item(idempotency_pk(key), SINGLE_SK.to_vec());
        item.insert(ID.into(), bin(id.to_bytes()));
        let expires = SystemTime::now()
            .checked_add(self.idempotency_ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX / 2, |d| d.as_secs());
        item.insert(EXPIRES.into(), num(expires));
        item
    }

    // --- commit ---------------------------------------------------------------------------

    async fn commit_now(&self, batch: CommitBatch) -> Result<CommitOutcome, StorageError> {
        let CommitBatch { versions, record } = batch;
        let id = record.id;
        let chunk = self.limits.chunk_bytes;
        // One version per key: the last one, as every backend applies them in order.
        let mut latest: HashMap<Bytes, usize> = HashMap::with_capacity(versions.len());
        for (i, (key, _)) in versions.iter().enumerate() {
            latest.insert(key.clone(), i);
        }
        let sk = id.to_bytes().to_vec();
        let mut version_items = Vec::with_capacity(versions.len());
        let mut plan = Vec::with_capacity(versions.len());
        for (i, (key, value)) in versions.iter().enumerate() {
            if latest.get(key) != Some(&i) {
                continue;
            }
            let (head, chunks) = split_payload(version_pk(key), sk.clone(), value, chunk, vec![]);
            plan.push((key.to_vec(), chunks.len() as u32));
            version_items.push(head);
            version_items.extend(chunks);
        }
        let encoded = encode_record(record.idempotency_key.as_deref(), &record.body)?;
        let (record_head, record_chunks) =
            split_payload(commit_pk(id), sk.clone(), &encoded, chunk, vec![]);
        let idempotency = record
            .idempotency_key
            .as_ref()
            .map(|key| self.idempotency_item(key, id));

        self.register_partition(id).await?;

        let count =
            version_items.len() + record_chunks.len() + 1 + usize::from(idempotency.is_some());
        let bytes: usize = version_items
            .iter()
            .chain(&record_chunks)
            .chain(std::iter::once(&record_head))
            .chain(idempotency.iter())
            .map(item_size)
            .sum();
        if count <= self.limits.txn_max_items && bytes <= self.limits.txn_max_bytes {
            let outcome = self
                .commit_fast(id, version_items, record_chunks, record_head, idempotency)
                .await?;
            bump(&self.counters.fast_commits, 1);
            return Ok(outcome);
        }
        let plan = MarkerPlan {
            record_chunks: record_chunks.len() as u32,
            versions: plan,
        };
        let outcome = self
            .commit_general(
                id,
                plan,
                version_items,
                record_chunks,
                record_head,
                idempotency,
            )
            .await?;
        bump(&self.counters.general_commits, 1);
        Ok(outcome)
    }

    /// One `TransactWriteItems` with everything.
    async fn commit_fast(
        &self,
        id: VersionId,
        versions: Vec<Item>,
        record_chunks: Vec<Item>,
        record_head: Item,
        idempotency: Option<Item>,
    ) -> Result<CommitOutcome, StorageError> {
        let mut actions = Vec::with_capacity(versions.len() + record_chunks.len() + 2);
        for item in versions.into_iter().chain(record_chunks) {
            actions.push(put_action(&self.table, item)?);
        }
        let record_at = actions.len();
        actions.push(put_new_action(&self.table, record_head)?);
        let idempotency_at = match idempotency {
            Some(item) => {
                actions.push(put_new_action(&self.table, item)?);
                Some(actions.len() - 1)
            }
            None => None,
        };
        self.final_transaction(id, actions, "f", record_at, idempotency_at, None)
            .await
    }

    /// Sends a commit's transaction and interprets its outcome. `record_at`,
    /// `idempotency_at`, `marker_at`: positions of the conditional actions.
    async fn final_transaction(
        &self,
        id: VersionId,
        actions: Vec<TransactWriteItem>,
        kind: &str,
        record_at: usize,
        idempotency_at: Option<usize>,
        marker_at: Option<usize>,
    ) -> Result<CommitOutcome, StorageError> {
        let token = request_token(kind, id);
        let mut ambiguous = false;
        // A duplicate whose entry disappears before we read it (deleted with its commit) lets
        // the commit try again; bounded, as each round needs another deletion.
        for _ in 0..3 {
            let result = self
                .retrying("TransactWriteItems", || {
                    let attempt = self.api.transact_write(actions.clone(), token.clone());
                    async move {
                        match attempt.await {
                            Err(CallError::Canceled(reasons)) => Err(cancel_to_retry(reasons)),
                            other => other,
                        }
                    }
                })
                .await;
            let reasons = match result {
                Ok(()) => return Ok(CommitOutcome::Committed),
                Err(Failure {
                    last: CallError::Canceled(reasons),
                    ambiguous: earlier,
                }) => {
                    ambiguous |= earlier;
                    reasons
                }
                Err(mut failure) => {
                    failure.ambiguous |= ambiguous;
                    return Err(self.failed(failure, true));
                }
            };
            let failed = |at: Option<usize>| {
                at.and_then(|i| reasons.get(i))
                    .is_some_and(Reason::condition_failed)
            };
            if failed(Some(record_at)) {
                // Only this commit writes a record with this id: an earlier attempt applied.
                return Ok(CommitOutcome::Committed);
            }
            if failed(marker_at) {
                return Err(StorageError::Io(
                    format!(
                        "dynamodb: commit {id:?} was abandoned by orphan clean-up before it \
                     completed"
                    )
                    .into(),
                ));
            }
            if failed(idempotency_at) {
                let returned = idempotency_at
                    .and_then(|i| reasons.get(i))
                    .and_then(|r| r.item.as_ref())
                    .map(|item| get_bin(item, ID).and_then(|b| decode_id(b, "idempotency entry")))
                    .transpose()?;
                let existing = match returned {
                    Some(existing) => Some(existing),
                    None => {
                        let key = actions
                            .get(idempotency_at.unwrap_or(0))
                            .and_then(|a| a.put.as_ref())
                            .map(|p| p.item.clone())
                            .ok_or_else(|| StorageError::Io("lost idempotency action".into()))?;
                        self.get_item(key_of(&key))
                            .await?
                            .map(|i| {
                                get_bin(&i, ID).and_then(|b| decode_id(b, "idempotency entry"))
                            })
                            .transpose()?
                    }
                };
                match existing {
                    Some(existing) if existing == id => return Ok(CommitOutcome::Committed),
                    Some(existing) => {
                        bump(&self.counters.duplicates, 1);
                        return Ok(CommitOutcome::Duplicate(existing));
                    }
                    None => continue,
                }
            }
            return Err(self.failed(
                Failure {
                    last: CallError::Canceled(reasons),
                    ambiguous,
                },
                true,
            ));
        }
        Err(StorageError::Unavailable(
            format!("dynamodb: commit {id:?}: its idempotency key keeps changing owner").into(),
        ))
    }

    /// Pending marker, batches, then one transaction with the record, the idempotency entry
    /// and the marker's `done` flag.
    async fn commit_general(
        &self,
        id: VersionId,
        plan: MarkerPlan,
        versions: Vec<Item>,
        record_chunks: Vec<Item>,
        record_head: Item,
        idempotency: Option<Item>,
    ) -> Result<CommitOutcome, StorageError> {
        let sk = id.to_bytes().to_vec();
        if let Some(item) = &idempotency {
            if let Some(existing) = self.read_idempotent_item(item).await? {
                bump(&self.counters.duplicates, 1);
                return Ok(CommitOutcome::Duplicate(existing));
            }
        }

        // The marker first (its head, then its key list's chunks), so that every version
        // written below is listed by a durable marker.
        let payload = encode_marker(&plan)?;
        let (marker_head, marker_chunks) = split_payload(
            MARKER_PK.to_vec(),
            sk.clone(),
            &payload,
            self.limits.chunk_bytes,
            vec![(STARTED, num(now_ms()))],
        );
        let marker_chunk_count = marker_chunks.len() as u32;
        self.write_one(put_action(&self.table, marker_head)?)
            .await
            .map_err(|f| self.failed(f, false))?;
        self.batch_write(
            marker_chunks
                .into_iter()
                .map(put_request)
                .collect::<Result<_, _>>()?,
        )
        .await?;

        self.batch_write(
            versions
                .into_iter()
                .chain(record_chunks)
                .map(put_request)
                .collect::<Result<_, _>>()?,
        )
        .await?;

        let mut actions = vec![put_new_action(&self.table, record_head)?];
        let idempotency_at = match idempotency {
            Some(item) => {
                actions.push(put_new_action(&self.table, item)?);
                Some(1)
            }
            None => None,
        };
        let done = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key_item(MARKER_PK.to_vec(), sk.clone())))
            .update_expression("SET #d = :t")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#ab)")
            .expression_attribute_names("#d", DONE)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#ab", ABANDONED)
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .build()
            .map_err(|e| StorageError::Io(format!("dynamodb: {e}").into()))?;
        actions.push(TransactWriteItem::builder().update(done).build());
        let marker_at = actions.len() - 1;
        let outcome = self
            .final_transaction(id, actions, "g", 0, idempotency_at, Some(marker_at))
            .await?;
        match outcome {
            CommitOutcome::Committed => {
                if let Err(e) = self.delete_marker(id, marker_chunk_count).await {
                    tracing::warn!(?id, "dynamodb: pending marker left for clean-up: {e}");
                }
            }
            CommitOutcome::Duplicate(_) => {
                if let Err(e) = self.abandon(id).await {
                    tracing::warn!(?id, "dynamodb: duplicate's versions left for clean-up: {e}");
                }
            }
        }
        Ok(outcome)
    }

    async fn read_idempotent_item(&self, item: &Item) -> Result<Option<VersionId>, StorageError> {
        self.get_item(key_of(item))
            .await?
            .map(|i| decode_id(get_bin(&i, ID)?, "idempotency entry"))
            .transpose()
    }

    /// Deletes a pending marker: its chunks, then its head.
    async fn delete_marker(&self, id: VersionId, chunks: u32) -> Result<(), StorageError> {
        let sk = id.to_bytes().to_vec();
        if chunks > 0 {
            self.batch_write(
                chunk_keys(MARKER_PK, &sk, chunks)
                    .into_iter()
                    .map(delete_request)
                    .collect::<Result<_, _>>()?,
            )
            .await?;
        }
        self.batch_write(vec![delete_request(key_item(MARKER_PK.to_vec(), sk))?])
            .await
    }

    /// Resolves the pending marker of `id`: if its commit completed, deletes the marker;
    /// otherwise forbids the commit to complete, then deletes what it wrote and the marker.
    /// Returns the number of versions deleted.
    async fn abandon(&self, id: VersionId) -> Result<u64, StorageError> {
        let sk = id.to_bytes().to_vec();
        let marker_key = key_item(MARKER_PK.to_vec(), sk.clone());
        let fence = Update::builder()
            .table_name(&self.table)
            .set_key(Some(marker_key.clone()))
            .update_expression("SET #ab = :t")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#d)")
            .expression_attribute_names("#ab", ABANDONED)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#d", DONE)
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .build()
            .map_err(|e| StorageError::Io(format!("dynamodb: {e}").into()))?;
        match self
            .write_one(TransactWriteItem::builder().update(fence).build())
            .await
        {
            Ok(()) => {}
            Err(Failure {
                last: CallError::ConditionFailed(_),
                ..
            }) => {
                // Gone (resolved by someone else), or done: the commit is complete.
                let Some(marker) = self.get_item(marker_key).await? else {
                    return Ok(0);
                };
                self.delete_marker(id, chunk_count(&marker)?).await?;
                return Ok(0);
            }
            Err(f) => return Err(self.failed(f, false)),
        }
        let Some(marker) = self.get_item(marker_key).await? else {
            return Ok(0);
        };
        let marker_chunks = chunk_count(&marker)?;
        let payload = self.payloads(&[&marker]).await?.pop().flatten();
        let Some(payload) = payload else {
            // The key list was never completely written, so no version was.
            self.delete_marker(id, marker_chunks).await?;
            return Ok(0);
        };
        let plan = decode_marker(&payload)?;
        let mut chunks = chunk_keys(&commit_pk(id), &sk, plan.record_chunks);
        let mut heads = Vec::with_capacity(plan.versions.len());
        for (key, count) in &plan.versions {
            let pk = version_pk(key);
            chunks.extend(chunk_keys(&pk, &sk, *count));
            heads.push(key_item(pk, sk.clone()));
        }
        let deleted = heads.len() as u64;
        self.batch_write(
            chunks
                .into_iter()
                .map(delete_request)
                .collect::<Result<_, _>>()?,
        )
        .await?;
        self.batch_write(
            heads
                .into_iter()
                .map(delete_request)
                .collect::<Result<_, _>>()?,
        )
        .await?;
        self.delete_marker(id, marker_chunks).await?;
        bump(&self.counters.orphans_reclaimed, deleted);
        Ok(deleted)
    }

    // --- reads ------------------------------------------------------------------------------

    async fn get_now(&self, keys: Vec<VersionKey>) -> Result<Vec<Option<Bytes>>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut unique: HashMap<(Vec<u8>, Vec<u8>), usize> = HashMap::new();
        let mut wanted = Vec::new();
        let mut slots = Vec::with_capacity(keys.len());
        for k in &keys {
            let key = (version_pk(&k.key), k.version.to_bytes().to_vec());
            let next = unique.len();
            let slot = *unique.entry(key.clone()).or_insert_with(|| {
                wanted.push(key_item(key.0, key.1));
                next
            });
            slots.push(slot);
        }
        let found = self.batch_get(wanted.clone(), None).await?;
        let heads: Vec<Option<&Item>> = wanted
            .iter()
            .map(|k| key_bytes(k).and_then(|kb| found.get(&kb)))
            .collect();
        let present: Vec<&Item> = heads.iter().flatten().copied().collect();
        let mut payloads = self.payloads(&present).await?.into_iter();
        let mut values = Vec::with_capacity(heads.len());
        for head in &heads {
            values.push(match head {
                Some(_) => {
                    let payload = payloads.next().flatten().ok_or_else(|| {
                        corrupt("a split value is missing some of its chunks".into())
                    })?;
                    Some(Bytes::from(payload))
                }
                None => None,
            });
        }
        Ok(slots.into_iter().map(|slot| values[slot].clone()).collect())
    }

    async fn scan_now(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        let mut records = Vec::new();
        if limit == 0 {
            return Ok(records);
        }
        let from_bucket = after.map_or(0, bucket);
        let after_sk = after.map(|a| a.to_bytes().to_vec());
        // Only the first bucket's records are limited by `after`.
        let after_in = |b: u64| after_sk.clone().filter(|_| b == from_bucket);
        let mut directory_start = None;
        let mut current: Option<u64> = None;
        let mut shards: Vec<u8> = Vec::new();
        loop {
            // Directory entries, in (bucket, shard) order.
            let request = QueryRequest {
                pk: DIRECTORY_PK.to_vec(),
                after: None,
                from: Some(from_bucket.to_be_bytes().to_vec()),
                projection: Some(&[PK, SK]),
                limit: QUERY_PAGE,
                start: directory_start.take(),
            };
            let (page, next) = self
                .retrying("Query", || self.api.query(request.clone()))
                .await
                .map_err(|f| self.failed(f, false))?;
            for entry in page {
                let (b, shard) = decode_directory(get_bin(&entry, SK)?)?;
                if let Some(done) = current.filter(|c| *c != b) {
                    let wanted = limit - records.len();
                    records.extend(
                        self.scan_bucket(done, &shards, after_in(done), wanted)
                            .await?,
                    );
                    shards.clear();
                    if records.len() >= limit {
                        return Ok(records);
                    }
                }
                current = Some(b);
                shards.push(shard);
            }
            match next {
                Some(next) => directory_start = Some(next),
                None => break,
            }
        }
        if let Some(last) = current {
            let wanted = limit - records.len();
            records.extend(
                self.scan_bucket(last, &shards, after_in(last), wanted)
                    .await?,
            );
        }
        Ok(records)
    }

    /// Up to `limit` records of one bucket (after `after`), merged across its shards in id
    /// order.
    async fn scan_bucket(
        &self,
        bucket: u64,
        shards: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        let pages: Vec<(u8, Vec<Item>)> = stream::iter(shards.iter().copied())
            .map(|shard| {
                let after = after.clone();
                async move {
                    let items = self
                        .query_all(commit_pk_of(bucket, shard), after, None, None, limit)
                        .await?;
                    Ok::<_, StorageError>((shard, items))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut heads = Vec::new();
        for (shard, items) in pages {
            if items.is_empty() && after.is_none() {
                self.maybe_prune(bucket, shard).await;
            }
            for item in items {
                let id = decode_id(get_bin(&item, SK)?, "commit record key")?;
                heads.push((id, item));
            }
        }
        heads.sort_by_key(|(id, _)| *id);
        heads.truncate(limit);
        let refs: Vec<&Item> = heads.iter().map(|(_, item)| item).collect();
        let payloads = self.payloads(&refs).await?;
        heads
            .iter()
            .zip(payloads)
            .map(|((id, _), payload)| {
                let payload = payload.ok_or_else(|| {
                    corrupt(format!(
                        "commit record {id:?} is missing some of its chunks"
                    ))
                })?;
                decode_record(*id, &payload)
            })
            .collect()
    }

    /// Drops the directory entry of an empty commit partition whose bucket ended long ago.
    async fn maybe_prune(&self, bucket: u64, shard: u8) {
        let bucket_end_ms = (bucket.saturating_add(1) << BUCKET_SHIFT) >> 16;
        let horizon = now_ms().saturating_sub(PRUNE_AFTER.as_millis() as u64);
        if bucket_end_ms >= horizon {
            return;
        }
        self.registered.lock().remove(&(bucket, shard));
        let key = key_item(DIRECTORY_PK.to_vec(), directory_sk(bucket, shard));
        if let Ok(request) = delete_request(key) {
            if let Err(e) = self.batch_write(vec![request]).await {
                tracing::debug!("dynamodb: directory entry not pruned: {e}");
            }
        }
    }

    // --- deletions -------------------------------------------------------------------------

    async fn delete_now(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionId>,
    ) -> Result<(), StorageError> {
        if !versions.is_empty() {
            let mut seen = HashSet::new();
            let keys: Vec<Item> = versions
                .iter()
                .map(|v| (version_pk(&v.key), v.version.to_bytes().to_vec()))
                .filter(|k| seen.insert(k.clone()))
                .map(|(pk, sk)| key_item(pk, sk))
                .collect();
            self.delete_split(keys).await?;
        }
        if !commits.is_empty() {
            let mut seen = HashSet::new();
            let keys: Vec<Item> = commits
                .iter()
                .filter(|id| seen.insert(**id))
                .map(|id| key_item(commit_pk(*id), id.to_bytes().to_vec()))
                .collect();
            let found = self.batch_get(keys, None).await?;
            // Idempotency entries first, each only if it still names this commit.
            let mut owned = Vec::new();
            let heads: Vec<&Item> = found.values().collect();
            let payloads = self.payloads(&heads).await?;
            for (head, payload) in heads.iter().zip(payloads) {
                let id = decode_id(get_bin(head, SK)?, "commit record key")?;
                let bytes = match &payload {
                    Some(p) => p.as_slice(),
                    None => get_bin(head, VALUE)?,
                };
                match parse_record(bytes) {
                    Ok(Some((Some(key), _))) => owned.push((key.to_vec(), id)),
                    Ok(Some((None, _))) => {}
                    Ok(None) | Err(_) => {
                        return Err(corrupt(format!("commit record {id:?} does not decode")))
                    }
                }
            }
            stream::iter(owned)
                .map(|(key, id)| self.delete_idempotency(key, id))
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            self.delete_split_known(heads).await?;
        }
        Ok(())
    }

    async fn delete_idempotency(&self, key: Vec<u8>, id: VersionId) -> Result<(), StorageError> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key_item(idempotency_pk(&key), SINGLE_SK.to_vec())))
            .condition_expression("#id = :id")
            .expression_attribute_names("#id", ID)
            .expression_attribute_values(":id", bin(id.to_bytes()))
            .build()
            .map_err(|e| StorageError::Io(format!("dynamodb: {e}").into()))?;
        match self
            .write_one(TransactWriteItem::builder().delete(delete).build())
            .await
        {
            Ok(())
            | Err(Failure {
                last: CallError::ConditionFailed(_),
                ..
            }) => Ok(()),
            Err(f) => Err(self.failed(f, false)),
        }
    }

    /// Deletes the items at `keys` that exist, with their chunks (chunks first).
    async fn delete_split(&self, keys: Vec<Item>) -> Result<(), StorageError> {
        let found = self.batch_get(keys, Some(&[PK, SK, CHUNKS])).await?;
        self.delete_split_known(found.values().collect()).await
    }

    async fn delete_split_known(&self, heads: Vec<&Item>) -> Result<(), StorageError> {
        let mut chunks = Vec::new();
        for head in &heads {
            let count = chunk_count(head)?;
            if count > 0 {
                chunks.extend(chunk_keys(get_bin(head, PK)?, get_bin(head, SK)?, count));
            }
        }
        if !chunks.is_empty() {
            self.batch_write(
                chunks
                    .into_iter()
                    .map(delete_request)
                    .collect::<Result<_, _>>()?,
            )
            .await?;
        }
        self.batch_write(
            heads
                .iter()
                .map(|h| delete_request(key_of(h)))
                .collect::<Result<_, _>>()?,
        )
        .await
    }

    // --- orphans ----------------------------------------------------------------------------

    async fn reclaim_now(&self, older_than: Duration) -> Result<u64, StorageError> {
        let horizon = now_ms().saturating_sub(older_than.as_millis() as u64);
        let markers = self
            .query_all(
                MARKER_PK.to_vec(),
                None,
                None,
                Some(&[PK, SK, STARTED, DONE, CHUNKS]),
                usize::MAX,
            )
            .await?;
        let mut deleted = 0;
        for marker in markers {
            let started = get_num(&marker, STARTED)?.unwrap_or(0);
            if started > horizon {
                continue;
            }
            let id = decode_id(get_bin(&marker, SK)?, "pending marker key")?;
            if marker.contains_key(DONE) {
                self.delete_marker(id, chunk_count(&marker)?).await?;
            } else {
                deleted += self.abandon(id).await?;
            }
        }
        Ok(deleted)
    }

    /// Runs `f` unless the store is closed; `close` waits for calls in progress.
    async fn open_call<T, Fut>(&self, f: Fut) -> Result<T, StorageError>
    where
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let closed = self.gate.read().await;
        if *closed {
            return Err(StorageError::Closed);
        }
        let result = f.await;
        drop(closed);
        result
    }
}

/// A cancellation that only conflicts or throttling caused is retried like a throttled
/// request; others are the commit's answer.
fn cancel_to_retry(reasons: Vec<Reason>) -> CallError {
    let transient = |code: &str| {
        matches!(
            code,
            "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded"
        )
    };
    let any_transient = reasons.iter().any(|r| transient(&r.code));
    let only_transient = reasons
        .iter()
        .all(|r| r.code == "None" || transient(&r.code));
    if any_transient && only_transient {
        let conflict = reasons.iter().any(|r| r.code == "TransactionConflict");
        CallError::Retry {
            message: format!(
                "TransactWriteItems cancelled: {}",
                reasons
                    .iter()
                    .map(|r| r.code.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            throttled: !conflict,
            conflict,
            ambiguous: false,
        }
    } else {
        CallError::Canceled(reasons)
    }
}

impl Storage for DynamoDbStorage {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    fn commit(&self, batch: CommitBatch) -> BoxFuture<'_, Result<CommitOutcome, StorageError>> {
        Box::pin(self.open_call(self.commit_now(batch)))
    }

    fn get_versions(
        &self,
        keys: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, StorageError>> {
        Box::pin(self.open_call(self.get_now(keys)))
    }

    fn scan_commits(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommitRecord>, StorageError>> {
        Box::pin(self.open_call(self.scan_now(after, limit)))
    }

    fn find_idempotent(
        &self,
        idempotency_key: Bytes,
    ) -> BoxFuture<'_, Result<Option<VersionId>, StorageError>> {
        Box::pin(self.open_call(async move { self.read_idempotent(&idempotency_key).await }))
    }

    fn delete(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionId>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.open_call(self.delete_now(versions, commits)))
    }

    /// Waits for calls in progress, then refuses every later call with
    /// [`StorageError::Closed`]. Nothing is buffered. Idempotent.
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            *self.gate.write().await = true;
            Ok(())
        })
    }

    /// Resolves pending markers older than `older_than` (see the module documentation):
    /// deletes the versions of commits that never got their record, and the markers of
    /// commits that did.
    fn reclaim_orphans(&self, older_than: Duration) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(self.open_call(self.reclaim_now(older_than)))
    }
}

// ---------------------------------------------------------------------------------------------
// Client and table set-up

/// The SDK client the backend uses for `options`: TLS with rustls, the SDK's retries off (the
/// backend retries and counts), per-attempt timeouts, the chosen credentials and endpoint.
/// Public for tools and benchmarks that talk to the same table.
pub async fn sdk_client(options: &DynamoDbOptions) -> Result<Client, StorageError> {
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
    use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3).min(options.attempt_timeout))
        .operation_attempt_timeout(options.attempt_timeout)
        .build();
    // Our own loop retries (and counts); the SDK's would hide throttling from it.
    let retries = RetryConfig::disabled();
    match &options.credentials {
        CredentialSource::Static {
            access_key_id,
            secret_access_key,
        } => {
            let region = options
                .region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
                .unwrap_or_else(|| "us-east-1".to_owned());
            let mut config = aws_sdk_dynamodb::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(region))
                .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                    access_key_id,
                    secret_access_key,
                    None,
                    None,
                    "aft-static",
                ))
                .http_client(http)
                .timeout_config(timeouts)
                .retry_config(retries);
            if let Some(endpoint) = &options.endpoint {
                config = config.endpoint_url(endpoint);
            }
            Ok(Client::from_conf(config.build()))
        }
        CredentialSource::Chain => {
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http)
                .timeout_config(timeouts)
                .retry_config(retries);
            if let Some(region) = &options.region {
                loader = loader.region(Region::new(region.clone()));
            }
            if let Some(endpoint) = &options.endpoint {
                loader = loader.endpoint_url(endpoint);
            }
            let shared = loader.load().await;
            if shared.region().is_none() {
                return Err(StorageError::Io(
                    "dynamodb: no AWS region: add region=… to the backend URL or set AWS_REGION"
                        .into(),
                ));
            }
            Ok(Client::new(&shared))
        }
    }
}

/// Checks the table's key schema; creates the table (and enables TTL) if it is missing and
/// `create_table` is set.
async fn ensure_table(client: &Client, options: &DynamoDbOptions) -> Result<(), StorageError> {
    use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
    let table = &options.table;
    let described = client.describe_table().table_name(table).send().await;
    let description = match described {
        Ok(output) => output.table,
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(DescribeTableError::ResourceNotFoundException(_))
            ) =>
        {
            if !options.create_table {
                return Err(StorageError::Io(
                    format!(
                    "dynamodb: table {table} does not exist (create it, see the README, or add \
                     create_table=true to the backend URL)"
                )
                    .into(),
                ));
            }
            create_table(client, table).await?;
            return Ok(());
        }
        Err(e) => return Err(setup_error(&format!("DescribeTable {table}"), e)),
    };
    let Some(description) = description else {
        return Err(StorageError::Io(
            format!("dynamodb: DescribeTable {table} returned no table").into(),
        ));
    };
    let schema_ok = {
        let keys = description.key_schema();
        let attrs = description.attribute_definitions();
        let has_key = |name: &str, kind: KeyType| {
            keys.iter()
                .any(|k| k.attribute_name() == name && *k.key_type() == kind)
        };
        let is_binary = |name: &str| {
            attrs.iter().any(|a| {
                a.attribute_name() == name && *a.attribute_type() == ScalarAttributeType::B
            })
        };
        keys.len() == 2
            && has_key(PK, KeyType::Hash)
            && has_key(SK, KeyType::Range)
            && is_binary(PK)
            && is_binary(SK)
    };
    if !schema_ok {
        return Err(StorageError::Io(
            format!(
                "dynamodb: table {table} must have partition key pk (binary) and sort key sk \
             (binary); see the README"
            )
            .into(),
        ));
    }
    if description.table_status() == Some(&TableStatus::Creating) {
        wait_active(client, table).await?;
    }
    if options.create_table {
        enable_ttl(client, table).await?;
    }
    Ok(())
}

async fn create_table(client: &Client, table: &str) -> Result<(), StorageError> {
    use aws_sdk_dynamodb::operation::create_table::CreateTableError;
    let build =
        |e: aws_sdk_dynamodb::error::BuildError| StorageError::Io(format!("dynamodb: {e}").into());
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(PK)
                .attribute_type(ScalarAttributeType::B)
                .build()
                .map_err(build)?,
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(SK)
                .attribute_type(ScalarAttributeType::B)
                .build()
                .map_err(build)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(PK)
                .key_type(KeyType::Hash)
                .build()
                .map_err(build)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(SK)
                .key_type(KeyType::Range)
                .build()
                .map_err(build)?,
        )
        .send()
        .await;
    match created {
        Ok(_) => {}
        // Created meanwhile by another node.
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(CreateTableError::ResourceInUseException(_))
            ) => {}
        Err(e) => return Err(setup_error(&format!("CreateTable {table}"), e)),
    }
    wait_active(client, table).await?;
    enable_ttl(client, table).await
}

async fn wait_active(client: &Client, table: &str) -> Result<(), StorageError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let output = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| setup_error(&format!("DescribeTable {table}"), e))?;
        if output.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StorageError::Unavailable(
                format!("dynamodb: table {table} did not become ACTIVE within 5 minutes").into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn enable_ttl(client: &Client, table: &str) -> Result<(), StorageError> {
    let status = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| setup_error(&format!("DescribeTimeToLive {table}"), e))?;
    let current = status
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status());
    if matches!(
        current,
        Some(TimeToLiveStatus::Enabled) | Some(TimeToLiveStatus::Enabling)
    ) {
        return Ok(());
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(EXPIRES)
        .build()
        .map_err(|e| StorageError::Io(format!("dynamodb: {e}").into()))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| setup_error(&format!("UpdateTimeToLive {table}"), e))?;
    Ok(())
}

fn setup_error<E>(what: &str, error: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match classify(what, error) {
        CallError::Retry { message, .. } => {
            StorageError::Unavailable(format!("dynamodb: {message}").into())
        }
        CallError::Fatal(message) => StorageError::Io(format!("dynamodb: {message}").into()),
        other => StorageError::Io(format!("dynamodb: {what}: {other:?}").into()),
    }
}

/// The DynamoDB emulator for tests (shared with the integration tests, hence the path).
#[cfg(test)]
pub(crate) use crate::storage::testkit::dynamodb_emulator as testing;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::sync::Notify;

    use super::testing::Emulator;
    use super::*;
    use crate::storage::testkit::conformance::{self, batch, get_one, plain, scan_all, vid, vkey};

    async fn open(limits: Limits) -> (Arc<DynamoDbStorage>, Emulator) {
        let emulator = Emulator::start().await;
        let storage = DynamoDbStorage::connect_with(emulator.options("aft"), limits)
            .await
            .expect("connect");
        (Arc::new(storage), emulator)
    }

    /// For the conformance macro, whose factory is synchronous.
    fn open_blocking(limits: Limits) -> (Arc<DynamoDbStorage>, Emulator) {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(open(limits)))
    }

    /// Every commit takes the general path, and every payload over 4 KiB is split.
    fn tiny() -> Limits {
        Limits {
            txn_max_items: 1,
            txn_max_bytes: TXN_MAX_BYTES,
            chunk_bytes: 4096,
        }
    }

    crate::storage_conformance_tests!(|| open_blocking(Limits::default()));

    mod general_path {
        use super::{open_blocking, tiny};

        crate::storage_conformance_tests!(|| open_blocking(tiny()));
    }

    // --- a fault-injecting Api --------------------------------------------------------------

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Call {
        BatchWrite,
        BatchGet,
        Transact,
        Query,
        Get,
        Write,
    }

    type CrashRule = Box<dyn Fn(Call, u64) -> bool + Send + Sync>;

    /// Wraps the real requests: crashes (every call fails from a chosen call on), throttles,
    /// loses replies after applying, leaves items unprocessed, or holds transactions.
    struct FaultApi {
        inner: Arc<dyn Api>,
        crashed: AtomicBool,
        crash_when: parking_lot::Mutex<Option<CrashRule>>,
        calls: parking_lot::Mutex<HashMap<String, u64>>,
        throttle_next: AtomicU64,
        lose_replies: AtomicU64,
        half_unprocessed: AtomicBool,
        hold: parking_lot::Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
    }

    impl FaultApi {
        fn new(inner: Arc<dyn Api>) -> Arc<FaultApi> {
            Arc::new(FaultApi {
                inner,
                crashed: AtomicBool::new(false),
                crash_when: parking_lot::Mutex::new(None),
                calls: parking_lot::Mutex::new(HashMap::new()),
                throttle_next: AtomicU64::new(0),
                lose_replies: AtomicU64::new(0),
                half_unprocessed: AtomicBool::new(false),
                hold: parking_lot::Mutex::new(None),
            })
        }

        fn crash_when(&self, rule: impl Fn(Call, u64) -> bool + Send + Sync + 'static) {
            *self.crash_when.lock() = Some(Box::new(rule));
        }

        /// Decides what happens to a call before it is sent.
        fn before(&self, call: Call) -> Result<(), CallError> {
            let n = {
                let mut calls = self.calls.lock();
                let n = calls.entry(format!("{call:?}")).or_insert(0);
                *n += 1;
                *n
            };
            if let Some(rule) = &*self.crash_when.lock() {
                if rule(call, n) {
                    self.crashed.store(true, Ordering::SeqCst);
                }
            }
            if self.crashed.load(Ordering::SeqCst) {
                return Err(CallError::Fatal("injected crash".into()));
            }
            let throttled = self
                .throttle_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if throttled {
                return Err(CallError::Retry {
                    message: "injected throttling".into(),
                    throttled: true,
                    conflict: false,
                    ambiguous: false,
                });
            }
            Ok(())
        }
    }

    impl Api for FaultApi {
        fn batch_write(
            &self,
            mut requests: Vec<WriteRequest>,
        ) -> BoxFuture<'_, Result<Vec<WriteRequest>, CallError>> {
            Box::pin(async move {
                self.before(Call::BatchWrite)?;
                let kept = if self.half_unprocessed.load(Ordering::SeqCst) && requests.len() > 1 {
                    requests.split_off(requests.len() / 2)
                } else {
                    Vec::new()
                };
                let mut unprocessed = self.inner.batch_write(requests).await?;
                unprocessed.extend(kept);
                Ok(unprocessed)
            })
        }

        fn batch_get(
            &self,
            mut keys: Vec<Item>,
            projection: Option<&'static [&'static str]>,
        ) -> BoxFuture<'_, Result<Fetched, CallError>> {
            Box::pin(async move {
                self.before(Call::BatchGet)?;
                let kept = if self.half_unprocessed.load(Ordering::SeqCst) && keys.len() > 1 {
                    keys.split_off(keys.len() / 2)
                } else {
                    Vec::new()
                };
                let (found, mut unprocessed) = self.inner.batch_get(keys, projection).await?;
                unprocessed.extend(kept);
                Ok((found, unprocessed))
            })
        }

        fn transact_write(
            &self,
            items: Vec<TransactWriteItem>,
            token: String,
        ) -> BoxFuture<'_, Result<(), CallError>> {
            Box::pin(async move {
                let hold = self.hold.lock().clone();
                if let Some((reached, release)) = hold {
                    reached.notify_one();
                    release.notified().await;
                }
                self.before(Call::Transact)?;
                let result = self.inner.transact_write(items, token).await;
                let lose = self
                    .lose_replies
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if lose && result.is_ok() {
                    return Err(CallError::Retry {
                        message: "injected: reply lost".into(),
                        throttled: false,
                        conflict: false,
                        ambiguous: true,
                    });
                }
                result
            })
        }

        fn query(&self, request: QueryRequest) -> BoxFuture<'_, Result<Page, CallError>> {
            Box::pin(async move {
                self.before(Call::Query)?;
                self.inner.query(request).await
            })
        }

        fn get(&self, key: Item) -> BoxFuture<'_, Result<Option<Item>, CallError>> {
            Box::pin(async move {
                self.before(Call::Get)?;
                self.inner.get(key).await
            })
        }

        fn write(&self, write: TransactWriteItem) -> BoxFuture<'_, Result<(), CallError>> {
            Box::pin(async move {
                self.before(Call::Write)?;
                self.inner.write(write).await
            })
        }
    }

    /// A store whose requests go through a [`FaultApi`], on the same table as `storage`.
    fn faulty(
        storage: &DynamoDbStorage,
        limits: Limits,
        attempts: u32,
    ) -> (DynamoDbStorage, Arc<FaultApi>) {
        let faults = FaultApi::new(storage.api.clone());
        let store = DynamoDbStorage::with_api(
            faults.clone(),
            &storage.table,
            limits,
            attempts,
            Duration::from_secs(3600),
        );
        (store, faults)
    }

    fn big_batch(id: VersionId, keys: usize, idempotency_key: Option<&[u8]>) -> CommitBatch {
        let values: Vec<(Vec<u8>, Vec<u8>)> = (0..keys)
            .map(|i| {
                (
                    format!("key-{i}").into_bytes(),
                    format!("value-{i}-{id:?}").into_bytes(),
                )
            })
            .collect();
        let pairs: Vec<(&[u8], &[u8])> = values.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        batch(id, idempotency_key, &pairs)
    }

    async fn read_all(s: &dyn Storage, id: VersionId, keys: usize) -> Vec<Option<Bytes>> {
        s.get_versions(
            (0..keys)
                .map(|i| vkey(format!("key-{i}").as_bytes(), id))
                .collect(),
        )
        .await
        .expect("get_versions")
    }

    async fn markers(s: &DynamoDbStorage) -> usize {
        s.query_all(MARKER_PK.to_vec(), None, None, None, usize::MAX)
            .await
            .expect("query markers")
            .len()
    }

    // --- tests --------------------------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_keys_commit_and_read_back() {
        let (s, _emulator) = open(Limits::default()).await;
        let id = vid(100, 1);
        conformance::commit_ok(&*s, big_batch(id, 1000, Some(b"big"))).await;
        let values = read_all(&*s, id, 1000).await;
        for (i, value) in values.iter().enumerate() {
            let expected = format!("value-{i}-{id:?}");
            assert_eq!(value.as_deref(), Some(expected.as_bytes()), "key {i}");
        }
        let stats = s.stats();
        assert_eq!((stats.general_commits, stats.fast_commits), (1, 0));
        assert_eq!(
            markers(&s).await,
            0,
            "the marker is deleted after the commit"
        );
        assert_eq!(scan_all(&*s).await.len(), 1);
        assert_eq!(
            plain(s.find_idempotent(Bytes::from_static(b"big")).await),
            Ok(Some(id))
        );
        // A retry of the same transaction is a duplicate and writes nothing.
        let retry = s.commit(big_batch(vid(101, 1), 1000, Some(b"big"))).await;
        assert_eq!(plain(retry), Ok(CommitOutcome::Duplicate(id)));
        assert!(read_all(&*s, vid(101, 1), 1000)
            .await
            .iter()
            .all(Option::is_none));
        // 99 versions and a record: still one transaction.
        conformance::commit_ok(&*s, big_batch(vid(102, 1), 99, None)).await;
        assert_eq!(s.stats().fast_commits, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_over_the_item_limit_are_split_and_deleted_whole() {
        let (s, _emulator) = open(Limits::default()).await;
        let value = |len: usize, seed: u32| -> Vec<u8> {
            (0..len as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8)
                .collect()
        };
        let medium = value(1_500_000, 1); // 5 items: one transaction
        let large = value(6_000_000, 2); // over 4 MB: the general path
        let exact = value(CHUNK_BYTES, 3); // fits in the head
        let a = vid(1, 1);
        let b = vid(2, 2);
        conformance::commit_ok(&*s, batch(a, None, &[(b"m", &medium), (b"e", &exact)])).await;
        conformance::commit_ok(&*s, batch(b, None, &[(b"l", &large)])).await;
        assert_eq!((s.stats().fast_commits, s.stats().general_commits), (1, 1));
        assert_eq!(get_one(&*s, b"m", a).await.as_deref(), Some(&medium[..]));
        assert_eq!(get_one(&*s, b"e", a).await.as_deref(), Some(&exact[..]));
        assert_eq!(get_one(&*s, b"l", b).await.as_deref(), Some(&large[..]));

        let chunks_of = |key: &[u8], id: VersionId| {
            let count = chunks_needed(
                if key == b"m" {
                    medium.len()
                } else {
                    large.len()
                },
                CHUNK_BYTES,
            );
            chunk_keys(&version_pk(key), &id.to_bytes(), count)
        };
        let m_chunks = chunks_of(b"m", a);
        let l_chunks = chunks_of(b"l", b);
        assert_eq!((m_chunks.len(), l_chunks.len()), (4, 16));
        s.delete(vec![vkey(b"m", a), vkey(b"l", b)], vec![])
            .await
            .expect("delete");
        assert_eq!(get_one(&*s, b"m", a).await, None);
        assert_eq!(get_one(&*s, b"l", b).await, None);
        for key in m_chunks.into_iter().chain(l_chunks) {
            assert_eq!(s.get_item(key).await.expect("get chunk"), None);
        }
        assert_eq!(get_one(&*s, b"e", a).await.as_deref(), Some(&exact[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unprocessed_items_and_keys_are_sent_again() {
        let (s, _emulator) = open(Limits::default()).await;
        let (f, faults) = faulty(&s, Limits::default(), 5);
        faults.half_unprocessed.store(true, Ordering::SeqCst);
        let id = vid(7, 7);
        conformance::commit_ok(&f, big_batch(id, 300, None)).await;
        let values = read_all(&f, id, 300).await;
        assert!(values.iter().all(Option::is_some));
        let stats = f.stats();
        assert!(stats.unprocessed_items >= 150, "{stats:?}");
        assert!(stats.unprocessed_keys >= 150, "{stats:?}");
        // Against the real table too.
        assert!(read_all(&*s, id, 300).await.iter().all(Option::is_some));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throttling_is_retried_counted_then_reported() {
        let (s, _emulator) = open(Limits::default()).await;
        let (f, faults) = faulty(&s, Limits::default(), 4);
        faults.throttle_next.store(3, Ordering::SeqCst);
        conformance::commit_ok(&f, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
        let stats = f.stats();
        assert_eq!((stats.throttled, stats.retries, stats.exhausted), (3, 3, 0));

        faults.throttle_next.store(u64::MAX, Ordering::SeqCst);
        let result = f.commit(batch(vid(2, 2), None, &[(b"k", b"w")])).await;
        assert!(
            matches!(&result, Err(StorageError::Unavailable(m)) if m.message().contains("gave up after 4 attempts")),
            "{result:?}"
        );
        let read = f.get_versions(vec![vkey(b"k", vid(1, 1))]).await;
        assert!(
            matches!(read, Err(StorageError::Unavailable(_))),
            "{read:?}"
        );
        assert!(f.stats().exhausted >= 2);
        faults.throttle_next.store(0, Ordering::SeqCst);
        assert_eq!(get_one(&f, b"k", vid(2, 2)).await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_reply_is_resolved_by_the_retry_or_reported_unknown() {
        let (s, _emulator) = open(Limits::default()).await;
        let (f, faults) = faulty(&s, Limits::default(), 3);
        // Applied, reply lost once: the retry (same token) learns it committed.
        faults.lose_replies.store(1, Ordering::SeqCst);
        conformance::commit_ok(&f, batch(vid(1, 1), Some(b"i"), &[(b"k", b"v")])).await;
        assert_eq!(scan_all(&f).await.len(), 1);

        // Every reply lost: the outcome is unknown, and the commit did happen.
        faults.lose_replies.store(u64::MAX, Ordering::SeqCst);
        let result = f
            .commit(batch(vid(2, 2), Some(b"j"), &[(b"k", b"w")]))
            .await;
        assert!(
            matches!(result, Err(StorageError::OutcomeUnknown(_))),
            "{result:?}"
        );
        faults.lose_replies.store(0, Ordering::SeqCst);
        assert_eq!(
            get_one(&f, b"k", vid(2, 2)).await,
            Some(Bytes::from_static(b"w"))
        );
        // The client's retry is a duplicate of it.
        let retry = f
            .commit(batch(vid(3, 3), Some(b"j"), &[(b"k", b"x")]))
            .await;
        assert_eq!(plain(retry), Ok(CommitOutcome::Duplicate(vid(2, 2))));

        // The same in the general path: its final transaction's retry finds its own record.
        let (g, faults) = faulty(&s, tiny(), 3);
        faults.lose_replies.store(1, Ordering::SeqCst);
        conformance::commit_ok(&g, big_batch(vid(4, 4), 10, Some(b"g"))).await;
        assert_eq!(markers(&g).await, 0);
    }

    /// A general-path commit that "crashes" where `rule` says; returns the id and key count.
    async fn crash_during_general_commit(
        s: &DynamoDbStorage,
        rule: impl Fn(Call, u64) -> bool + Send + Sync + 'static,
    ) -> Result<CommitOutcome, StorageError> {
        let (f, faults) = faulty(s, Limits::default(), 3);
        faults.crash_when(rule);
        f.commit(big_batch(vid(50, 5), 300, Some(b"crash"))).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn orphans_of_a_crash_before_the_record_are_invisible_and_reclaimed() {
        let (s, _emulator) = open(Limits::default()).await;
        let id = vid(50, 5);
        conformance::commit_ok(&*s, batch(vid(1, 1), None, &[(b"key-0", b"old")])).await;
        // Crash when the commit sends its final transaction: every version is written.
        let result = crash_during_general_commit(&s, |call, _| call == Call::Transact).await;
        assert!(matches!(result, Err(StorageError::Io(_))), "{result:?}");
        // What a restarted node finds: versions, a marker, no record.
        assert!(read_all(&*s, id, 300).await.iter().all(Option::is_some));
        assert_eq!(markers(&s).await, 1);
        assert_eq!(
            scan_all(&*s).await.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![vid(1, 1)]
        );
        assert_eq!(
            plain(s.find_idempotent(Bytes::from_static(b"crash")).await),
            Ok(None)
        );
        // Too young: untouched.
        assert_eq!(
            plain(s.reclaim_orphans(Duration::from_secs(3600)).await),
            Ok(0)
        );
        assert_eq!(markers(&s).await, 1);
        assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(300));
        assert!(read_all(&*s, id, 300).await.iter().all(Option::is_none));
        assert_eq!(markers(&s).await, 0);
        assert_eq!(s.stats().orphans_reclaimed, 300);
        assert_eq!(
            get_one(&*s, b"key-0", vid(1, 1)).await,
            Some(Bytes::from_static(b"old"))
        );
        // The idempotency key is free: the client's retry commits.
        conformance::commit_ok(&*s, big_batch(vid(60, 6), 300, Some(b"crash"))).await;
        assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn orphans_of_a_crash_among_the_batches_are_reclaimed() {
        let (s, _emulator) = open(Limits::default()).await;
        let id = vid(50, 5);
        // The third BatchWriteItem never happens, nor anything after it.
        let result =
            crash_during_general_commit(&s, |call, n| call == Call::BatchWrite && n == 3).await;
        assert!(result.is_err());
        // Requests in flight when the crash came may or may not have been applied.
        let present = read_all(&*s, id, 300)
            .await
            .iter()
            .filter(|v| v.is_some())
            .count();
        assert!(present < 300, "{present}");
        assert_eq!(markers(&s).await, 1);
        assert!(scan_all(&*s).await.is_empty());
        assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(300));
        assert!(read_all(&*s, id, 300).await.iter().all(Option::is_none));
        assert_eq!(markers(&s).await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_the_record_keeps_the_commit() {
        let (s, _emulator) = open(Limits::default()).await;
        let id = vid(50, 5);
        // The marker's deletion (a BatchWriteItem after the transaction) never happens.
        let result = crash_during_general_commit(&s, {
            let after_txn = Arc::new(AtomicBool::new(false));
            move |call, _| {
                if call == Call::Transact {
                    after_txn.store(true, Ordering::SeqCst);
                    return false;
                }
                call == Call::BatchWrite && after_txn.load(Ordering::SeqCst)
            }
        })
        .await;
        assert_eq!(plain(result), Ok(CommitOutcome::Committed));
        assert_eq!(markers(&s).await, 1);
        assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(0));
        assert_eq!(markers(&s).await, 0);
        assert!(read_all(&*s, id, 300).await.iter().all(Option::is_some));
        assert_eq!(scan_all(&*s).await.len(), 1);
        assert_eq!(
            plain(s.find_idempotent(Bytes::from_static(b"crash")).await),
            Ok(Some(id))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_while_writing_the_marker_leaves_only_the_marker() {
        let (s, _emulator) = open(Limits::default()).await;
        let limits = Limits {
            chunk_bytes: 1024,
            ..Limits::default()
        };
        let (f, faults) = faulty(&s, limits, 3);
        // With 1 KiB chunks the key list has overflow chunks: crash while writing them.
        faults.crash_when(|call, n| call == Call::BatchWrite && n == 1);
        let result = f.commit(big_batch(vid(50, 5), 300, None)).await;
        assert!(result.is_err());
        assert_eq!(markers(&s).await, 1);
        assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(0));
        assert_eq!(markers(&s).await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reclaim_fences_a_slow_commit() {
        let (s, _emulator) = open(Limits::default()).await;
        let (f, faults) = faulty(&s, Limits::default(), 3);
        let reached = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        *faults.hold.lock() = Some((reached.clone(), release.clone()));
        let f = Arc::new(f);
        let commit = tokio::spawn({
            let f = f.clone();
            async move { f.commit(big_batch(vid(50, 5), 300, Some(b"slow"))).await }
        });
        reached.notified().await;
        // The commit has written its versions and waits to send its transaction.
        assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(300));
        release.notify_one();
        let result = commit.await.expect("commit task");
        assert!(
            matches!(&result, Err(StorageError::Io(m)) if m.message().contains("abandoned")),
            "{result:?}"
        );
        assert!(scan_all(&*s).await.is_empty());
        assert!(read_all(&*s, vid(50, 5), 300)
            .await
            .iter()
            .all(Option::is_none));
        assert_eq!(
            plain(s.find_idempotent(Bytes::from_static(b"slow")).await),
            Ok(None)
        );
        assert_eq!(markers(&s).await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scans_drop_empty_ancient_buckets_and_still_find_new_commits() {
        let (s, _emulator) = open(Limits::default()).await;
        let directory = || async {
            s.query_all(DIRECTORY_PK.to_vec(), None, None, None, usize::MAX)
                .await
                .expect("directory")
                .len()
        };
        conformance::commit_ok(&*s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
        assert_eq!(directory().await, 1);
        s.delete(vec![vkey(b"k", vid(1, 1))], vec![vid(1, 1)])
            .await
            .expect("delete");
        assert!(scan_all(&*s).await.is_empty());
        assert_eq!(directory().await, 0, "an empty bucket of 1970 is dropped");
        conformance::commit_ok(&*s, batch(vid(2, 1), None, &[(b"k", b"w")])).await;
        assert_eq!(scan_all(&*s).await.len(), 1);
        // Recent buckets stay even when empty.
        let now = now_ms() << 16;
        conformance::commit_ok(&*s, batch(vid(now, 1), None, &[])).await;
        s.delete(vec![], vec![vid(now, 1)]).await.expect("delete");
        assert_eq!(scan_all(&*s).await.len(), 1);
        assert_eq!(directory().await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_spread_over_buckets_and_shards_scan_in_order() {
        let (s, _emulator) = open(Limits::default()).await;
        let mut ids = Vec::new();
        for b in [0u64, 1, 5, 1 << 20] {
            for t in 0..12u128 {
                ids.push(vid(
                    (b << BUCKET_SHIFT) + (t as u64 % 3),
                    t * 0x1_0000_0001 + 7,
                ));
            }
        }
        for id in ids.iter().rev() {
            conformance::commit_ok(&*s, batch(*id, None, &[])).await;
        }
        ids.sort();
        let shards: HashSet<u8> = ids.iter().map(|id| shard(*id)).collect();
        assert_eq!(shards.len(), COMMIT_SHARDS as usize);
        for limit in [1, 5, 12, 13, 100] {
            let mut paged = Vec::new();
            let mut after = None;
            loop {
                let page = s.scan_commits(after, limit).await.expect("scan");
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                paged.extend(page.into_iter().map(|r| r.id));
            }
            assert_eq!(paged, ids, "limit {limit}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_table_and_wrong_schema_are_clear_errors() {
        let emulator = Emulator::start().await;
        let mut options = emulator.options("nope");
        options.create_table = false;
        let error = DynamoDbStorage::connect(options)
            .await
            .expect_err("no table");
        assert!(
            matches!(&error, StorageError::Io(m) if m.message().contains("does not exist") && m.message().contains("create_table=true")),
            "{error}"
        );
        // A table with another key schema.
        let client = sdk_client(&emulator.options("other"))
            .await
            .expect("client");
        client
            .create_table()
            .table_name("other")
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("definition"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("id")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("schema"),
            )
            .send()
            .await
            .expect("create other");
        let error = DynamoDbStorage::connect(emulator.options("other"))
            .await
            .expect_err("wrong schema");
        assert!(
            matches!(&error, StorageError::Io(m) if m.message().contains("partition key pk (binary)")),
            "{error}"
        );
        // An unreachable endpoint: retried, then unavailable.
        let mut options = emulator.options("aft");
        options.endpoint = Some(format!("http://127.0.0.1:{}", closed_port()));
        let error = DynamoDbStorage::connect(options)
            .await
            .expect_err("unreachable");
        assert!(matches!(error, StorageError::Unavailable(_)), "{error}");
    }

    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_table_enables_ttl_and_reopening_checks_the_format() {
        let emulator = Emulator::start().await;
        let first = DynamoDbStorage::connect(emulator.options("ttl1"))
            .await
            .expect("create");
        let client = sdk_client(&emulator.options("ttl1")).await.expect("client");
        let ttl = client
            .describe_time_to_live()
            .table_name("ttl1")
            .send()
            .await
            .expect("describe ttl");
        let description = ttl.time_to_live_description().expect("ttl description");
        assert_eq!(description.attribute_name(), Some(EXPIRES));
        conformance::commit_ok(&first, batch(vid(1, 1), Some(b"i"), &[(b"k", b"v")])).await;
        first.close().await.expect("close");
        // Without create_table: the existing table is used as it is.
        let mut options = emulator.options("ttl1");
        options.create_table = false;
        let second = DynamoDbStorage::connect(options).await.expect("reopen");
        assert_eq!(
            get_one(&second, b"k", vid(1, 1)).await,
            Some(Bytes::from_static(b"v"))
        );
        // The idempotency entry carries a TTL beyond the retention.
        let entry = second
            .get_item(key_item(idempotency_pk(b"i"), SINGLE_SK.to_vec()))
            .await
            .expect("get")
            .expect("entry");
        let expires = get_num(&entry, EXPIRES).expect("number").expect("exp");
        assert!(expires > now_ms() / 1000 + 3000, "{expires}");
        // A table holding another layout version is refused.
        let mut format = key_item(FORMAT_PK.to_vec(), SINGLE_SK.to_vec());
        format.insert(FORMAT.into(), num(99));
        second
            .write_one(put_action("ttl1", format).expect("action"))
            .await
            .map_err(|f| second.failed(f, false))
            .expect("overwrite format");
        let error = DynamoDbStorage::connect(emulator.options("ttl1"))
            .await
            .expect_err("format");
        assert!(
            matches!(&error, StorageError::Io(m) if m.message().contains("layout version")),
            "{error}"
        );
    }

    #[test]
    fn urls_parse_into_options() {
        let o = DynamoDbOptions::from_url(
            "dynamodb://aft?endpoint=http://127.0.0.1:8000&region=us-east-1&create_table=true",
        )
        .expect("parse");
        assert_eq!(o.table, "aft");
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:8000"));
        assert_eq!(o.region.as_deref(), Some("us-east-1"));
        assert!(o.create_table);
        assert!(matches!(o.credentials, CredentialSource::Static { .. }));

        let o = DynamoDbOptions::from_url("dynamodb://my-table.v2").expect("parse");
        assert_eq!(o.credentials, CredentialSource::Chain);
        assert_eq!((o.region, o.endpoint, o.create_table), (None, None, false));

        let o = DynamoDbOptions::from_url(
            "dynamodb://t_1?endpoint=http%3A%2F%2Flocalhost%3A9&credentials=chain&max_attempts=3&timeout_ms=250",
        )
        .expect("parse");
        assert_eq!(o.endpoint.as_deref(), Some("http://localhost:9"));
        assert_eq!(o.credentials, CredentialSource::Chain);
        assert_eq!(o.max_attempts, 3);
        assert_eq!(o.attempt_timeout, Duration::from_millis(250));

        for bad in [
            "redis://x",
            "dynamodb://",
            "dynamodb://ab",
            "dynamodb://a b c",
            "dynamodb://aft?nope=1",
            "dynamodb://aft?create_table=maybe",
            "dynamodb://aft?credentials=magic",
            "dynamodb://aft?max_attempts=0",
            "dynamodb://aft?timeout_ms=x",
            "dynamodb://aft?region=",
            "dynamodb://aft?endpoint=%zz",
        ] {
            assert!(DynamoDbOptions::from_url(bad).is_err(), "{bad}");
        }
        let debug = format!(
            "{:?}",
            CredentialSource::Static {
                access_key_id: "AKIA".into(),
                secret_access_key: "hunter2".into()
            }
        );
        assert!(
            debug.contains("AKIA") && !debug.contains("hunter2"),
            "{debug}"
        );
    }

    #[test]
    fn encodings_round_trip() {
        for (key, body) in [
            (None, &b""[..]),
            (Some(&b""[..]), b"x"),
            (Some(b"k\0"), b"body"),
        ] {
            let encoded = encode_record(key, body).expect("encode");
            let (k, b) = parse_record(&encoded).expect("parse").expect("complete");
            assert_eq!((k, b), (key, body));
            // A prefix cut inside the key is incomplete, not garbage.
            if let Some(key) = key.filter(|k| !k.is_empty()) {
                assert_eq!(parse_record(&encoded[..6 + key.len() - 1]), Ok(None));
            }
        }
        assert!(parse_record(&[9, 0]).is_err());
        assert!(parse_record(&[1, 7]).is_err());

        let plan = MarkerPlan {
            record_chunks: 3,
            versions: vec![(b"".to_vec(), 0), (vec![0xff; 70_000], 2)],
        };
        let encoded = encode_marker(&plan).expect("encode");
        assert_eq!(decode_marker(&encoded).expect("decode"), plan);
        assert!(decode_marker(&encoded[..encoded.len() - 1]).is_err());
        assert!(decode_marker(&[encoded.as_slice(), &[0]].concat()).is_err());

        assert_eq!(chunks_needed(0, 10), 0);
        assert_eq!(chunks_needed(10, 10), 0);
        assert_eq!(chunks_needed(11, 10), 1);
        assert_eq!(chunks_needed(30, 10), 2);
        let (head, chunks) = split_payload(b"v".to_vec(), b"s".to_vec(), &[7; 25], 10, vec![]);
        assert_eq!(chunks.len(), 2);
        assert_eq!(get_num(&head, CHUNKS).expect("n"), Some(2));
        assert_eq!(get_bin(&chunks[1], VALUE).expect("v"), &[7; 5]);

        let token = request_token("g", vid(u64::MAX, u128::MAX));
        assert!(token.len() <= 36 && token.starts_with("aftg-"), "{token}");
        assert_ne!(token, request_token("g", vid(u64::MAX, u128::MAX - 1)));
        assert_ne!(version_pk(&[1; 1025]), version_pk(&[1; 1026]));
        assert_eq!(version_pk(&[1; 1025]).len(), 33);
        assert_eq!(version_pk(b"ab"), b"vab");
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let s = DynamoDbStorage::with_api(
            FaultApi::new(Arc::new(NoApi)),
            "t",
            Limits::default(),
            3,
            Duration::ZERO,
        );
        for attempt in 1..40 {
            let d = s.backoff(attempt);
            assert!(d > Duration::ZERO && d <= MAX_BACKOFF, "{attempt}: {d:?}");
        }
        let first: Vec<Duration> = (0..50).map(|_| s.backoff(1)).collect();
        assert!(first.iter().all(|d| *d <= BASE_BACKOFF * 2));
        assert!(first.windows(2).any(|w| w[0] != w[1]));
    }

    /// An Api with no table behind it.
    struct NoApi;

    impl Api for NoApi {
        fn batch_write(
            &self,
            _: Vec<WriteRequest>,
        ) -> BoxFuture<'_, Result<Vec<WriteRequest>, CallError>> {
            Box::pin(async { Err(CallError::Fatal("no api".into())) })
        }
        fn batch_get(
            &self,
            _: Vec<Item>,
            _: Option<&'static [&'static str]>,
        ) -> BoxFuture<'_, Result<Fetched, CallError>> {
            Box::pin(async { Err(CallError::Fatal("no api".into())) })
        }
        fn transact_write(
            &self,
            _: Vec<TransactWriteItem>,
            _: String,
        ) -> BoxFuture<'_, Result<(), CallError>> {
            Box::pin(async { Err(CallError::Fatal("no api".into())) })
        }
        fn query(&self, _: QueryRequest) -> BoxFuture<'_, Result<Page, CallError>> {
            Box::pin(async { Err(CallError::Fatal("no api".into())) })
        }
        fn get(&self, _: Item) -> BoxFuture<'_, Result<Option<Item>, CallError>> {
            Box::pin(async { Err(CallError::Fatal("no api".into())) })
        }
        fn write(&self, _: TransactWriteItem) -> BoxFuture<'_, Result<(), CallError>> {
            Box::pin(async { Err(CallError::Fatal("no api".into())) })
        }
    }
}
