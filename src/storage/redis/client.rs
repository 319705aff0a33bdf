//! The fred client: connecting (with the reconnect policy), sending one command to the node of
//! a slot, and what a request's failure means ([`RequestError`], mapped to a [`StorageError`]
//! by what the request was for).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::{
    Config as FredConfig, ConnectionConfig, Options, PerformanceConfig, ReconnectPolicy,
    ServerConfig, TlsConnector, UnresponsiveConfig,
};
use fred::types::{Builder, ClusterHash, CustomCommand, Resp3Frame, Value};
use fred::util::redis_keyslot;

use super::layout::Layout;
use super::script::Scripts;
use super::{RedisOptions, RedisStorage, Topology, DEFAULT_IDEMPOTENCY_TTL};
use crate::storage::{Failure, StorageError, VersionId};

impl RedisStorage {
    /// Connects to the servers of `options` and waits (at most `options.timeout`) until every
    /// connection of the pool is up; fails with [`StorageError::Unavailable`] if they are not.
    /// From then on the pool reconnects by itself whenever a connection drops.
    ///
    /// Must be called inside a Tokio runtime (the connections run as tasks on it).
    pub async fn connect(options: &RedisOptions) -> Result<RedisStorage, StorageError> {
        let backend = options.topology.backend_name();
        let servers = options.to_string();
        let config_error = |e: FredError| {
            let message = format!("cannot configure {servers}: {e}");
            StorageError::Unavailable(Failure::new(backend, message).because(e))
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
                // A request in flight when its connection drops fails (see `Kind::Lost`)
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
            // One shard until the backend says how many (see `choose_shards`).
            layout: Layout::new(&options.prefix, 1),
            scripts: Scripts::new(),
            cluster: matches!(options.topology, Topology::Cluster { .. }),
            backend,
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
                let mut storage = storage;
                let count = match storage.choose_shards(options.shards).await {
                    Ok(count) => count,
                    Err(e) => {
                        storage.closed.store(true, Ordering::Release);
                        storage.shutdown().await;
                        return Err(e);
                    }
                };
                storage.layout = Layout::new(&options.prefix, count);
                storage.load_scripts().await;
                Ok(storage)
            }
            outcome => {
                let (mut why, mut cause) = match outcome {
                    Ok(Err(e)) => (e.to_string(), Some(e)),
                    _ => (
                        format!("no connection within {} ms", timeout.as_millis()),
                        None,
                    ),
                };
                let mut last = None;
                while let Some(Ok((e, _))) = errors.as_mut().map(|rx| rx.try_recv()) {
                    last = Some(e);
                }
                if let Some(e) = last {
                    why = format!("{why} (last error: {e})");
                    // The last connection error is the one that says why (refused, TLS…).
                    cause = Some(e);
                }
                storage.closed.store(true, Ordering::Release);
                storage.shutdown().await;
                let failure = Failure::new(
                    backend,
                    format!("cannot connect to {}: {why}", storage.servers),
                );
                Err(StorageError::Unavailable(match cause {
                    Some(e) => failure.because(e),
                    None => failure,
                }))
            }
        }
    }

    /// Stops every connection task.
    pub(super) async fn shutdown(&self) {
        for client in self.pool.clients() {
            let _ = tokio::time::timeout(self.timeout, client.quit()).await;
        }
    }

    /// A connected client of the pool, or `NotSent`.
    fn client(&self) -> Result<&Client, RequestError> {
        let client = self.pool.next_connected();
        if client.is_connected() {
            Ok(client)
        } else {
            Err(RequestError::new(
                Kind::NotSent,
                format!("not connected to {} (reconnecting)", self.servers),
            ))
        }
    }

    /// Sends one command to the node owning `slot`, once (never again behind the caller's
    /// back); an error reply is a [`RequestError`].
    pub(super) async fn call(
        &self,
        slot: u16,
        command: &'static str,
        args: Vec<Value>,
    ) -> Result<Resp3Frame, RequestError> {
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

    /// Groups `keys` by slot (one group on a standalone server), keeping each key's index.
    pub(super) fn by_slot(&self, keys: &[Bytes]) -> BTreeMap<u16, Vec<usize>> {
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = if self.cluster {
                redis_keyslot(key)
            } else {
                self.layout.root_slot
            };
            groups.entry(slot).or_default().push(i);
        }
        groups
    }

    /// Deletes `keys`, one `DEL` per slot, slots in parallel; returns how many existed.
    pub(super) async fn delete_keys(&self, keys: &[Bytes]) -> Result<u64, RequestError> {
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
}

// ---------------------------------------------------------------------------------------------
// Failures

/// What happened to a failed request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Not sent: no connection.
    NotSent,
    /// Sent, no reply (timeout, connection lost): it may have been applied.
    Lost,
    /// Redis refused it without applying it (loading, busy, read-only replica, cluster down,
    /// out of memory…).
    Refused,
    /// Redis answered with another error.
    Server,
    /// Unexpected reply.
    Corrupt,
}

/// How a request failed, before it is mapped to a [`StorageError`] by what it was for
/// ([`RequestError::plain`] or [`RequestError::deciding`]).
#[derive(Debug)]
pub(super) struct RequestError {
    kind: Kind,
    message: String,
    /// The client library's error, if it reported one.
    source: Option<FredError>,
}

impl RequestError {
    fn new(kind: Kind, message: impl Into<String>) -> Self {
        RequestError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    fn because(mut self, source: FredError) -> Self {
        self.source = Some(source);
        self
    }

    /// A reply that is not what the request expects.
    pub(super) fn corrupt(message: impl Into<String>) -> Self {
        RequestError::new(Kind::Corrupt, message)
    }

    /// Whether Redis did not know the script of an `EVALSHA`.
    pub(super) fn is_noscript(&self) -> bool {
        self.kind == Kind::Server && self.message.contains("NOSCRIPT")
    }

    /// For a request whose effect, if any, decides nothing: anything but an error reply is
    /// "unavailable". `backend` names the backend in the error.
    pub(super) fn plain(self, backend: &'static str) -> StorageError {
        match self.kind {
            Kind::NotSent | Kind::Lost | Kind::Refused => {
                StorageError::Unavailable(self.into_failure(backend))
            }
            Kind::Server => StorageError::Io(self.into_failure(backend)),
            Kind::Corrupt => StorageError::Corrupt(self.into_failure(backend)),
        }
    }

    /// For the request that creates a commit record: a lost reply leaves the outcome unknown.
    pub(super) fn deciding(self, backend: &'static str) -> StorageError {
        match self.kind {
            Kind::Lost | Kind::Corrupt => StorageError::OutcomeUnknown(self.into_failure(backend)),
            _ => self.plain(backend),
        }
    }

    fn into_failure(self, backend: &'static str) -> Failure {
        let failure = Failure::new(backend, self.message);
        match self.source {
            Some(source) => failure.because(source),
            None => failure,
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

fn server_error(text: &str) -> RequestError {
    let text = text.trim();
    if REFUSALS.iter().any(|p| text.starts_with(p)) {
        RequestError::new(Kind::Refused, format!("Redis refused the request: {text}"))
    } else {
        RequestError::new(Kind::Server, format!("Redis error: {text}"))
    }
}

fn client_error(e: FredError, timeout: Duration) -> RequestError {
    let error = match e.kind() {
        ErrorKind::Timeout => RequestError::new(
            Kind::Lost,
            format!("no reply from Redis within {} ms", timeout.as_millis()),
        ),
        ErrorKind::Routing | ErrorKind::Backpressure => {
            RequestError::new(Kind::NotSent, format!("cannot send to Redis: {e}"))
        }
        ErrorKind::Cluster | ErrorKind::Auth => {
            RequestError::new(Kind::Refused, format!("Redis: {e}"))
        }
        // A connection lost with the request in flight, or something unexpected: the request
        // may have been applied.
        _ => RequestError::new(Kind::Lost, format!("Redis connection failed: {e}")),
    };
    error.because(e)
}

// ---------------------------------------------------------------------------------------------
// Replies and arguments

/// Whether a frame is an error reply; its text if so.
fn error_text(frame: &Resp3Frame) -> Option<String> {
    match frame {
        Resp3Frame::SimpleError { data, .. } => Some(data.to_string()),
        Resp3Frame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

/// A string reply, or `None` for nil.
pub(super) fn frame_bytes(frame: Resp3Frame) -> Result<Option<Bytes>, RequestError> {
    match frame {
        Resp3Frame::Null => Ok(None),
        Resp3Frame::BlobString { data, .. } | Resp3Frame::SimpleString { data, .. } => {
            Ok(Some(data))
        }
        other => Err(RequestError::corrupt(format!(
            "unexpected reply from Redis: {}",
            describe(&other)
        ))),
    }
}

/// An array reply (nil is empty).
pub(super) fn frame_array(frame: Resp3Frame) -> Result<Vec<Resp3Frame>, RequestError> {
    match frame {
        Resp3Frame::Array { data, .. } => Ok(data),
        Resp3Frame::Null => Ok(Vec::new()),
        other => Err(RequestError::corrupt(format!(
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

/// An integer reply.
pub(super) fn frame_int(frame: &Resp3Frame) -> Option<i64> {
    match frame {
        Resp3Frame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

/// A binary argument.
pub(super) fn bytes(b: &Bytes) -> Value {
    Value::Bytes(b.clone())
}

/// A text argument.
pub(super) fn text(s: impl Into<String>) -> Value {
    Value::Bytes(Bytes::from(s.into()))
}

/// A version id argument (its 24 bytes).
pub(super) fn id_arg(id: VersionId) -> Value {
    Value::Bytes(Bytes::copy_from_slice(&id.to_bytes()))
}
