//! The node: the state one aft process shares between its connections — the transaction
//! engine, the open interactive transactions, the configuration, counters — and the one
//! function that opens a node's storage and engine from a [`Config`], for `aft serve` and for
//! the tests alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{BackendKind, Config};
use crate::storage::dynamodb::DynamoDbStorage;
use crate::storage::embedded::{CacheBudget, EmbeddedOptions, EmbeddedStorage};
use crate::storage::memory::MemoryStorage;
use crate::storage::redis::RedisStorage;
use crate::storage::{Durability, Storage};
use crate::txn::open::{OpenLimits, OpenTxns};
use crate::txn::{Engine, EngineConfig};

/// The node's shared state: what every connection of one aft process uses.
pub struct Node {
    /// The transaction engine.
    pub engine: Arc<Engine>,
    /// Open interactive transactions.
    pub open_txns: Arc<OpenTxns>,
    /// The configuration the server runs with.
    pub config: Arc<Config>,
    /// The address the server listens on.
    pub listen_addr: String,
    /// Next CLIENT ID.
    pub next_client_id: AtomicU64,
    /// Commands processed (since start or the last CONFIG RESETSTAT, like every counter).
    pub commands: AtomicU64,
    /// Connections accepted.
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connected: AtomicU64,
    /// Connections refused because of `max_clients`.
    pub rejected: AtomicU64,
    /// The most reply bytes any connection held before writing them (INFO clients'
    /// `client_recent_max_output_buffer`): bounded by the flush mark plus one reply.
    pub peak_output_buffer: AtomicU64,
    /// When the server started.
    pub started: Instant,
    /// When the server started, in seconds since the epoch.
    pub started_unix: u64,
    /// Set by SHUTDOWN: the server stops as on SIGTERM.
    pub(crate) shutdown: tokio::sync::Notify,
}

impl Node {
    /// The node of a server listening on `listen_addr`, over `engine`. Starts the reaper of
    /// idle interactive transactions (needs a tokio runtime).
    pub fn new(engine: Arc<Engine>, config: Arc<Config>, listen_addr: String) -> Arc<Node> {
        Arc::new(Node {
            open_txns: OpenTxns::start(engine.clone(), OpenLimits::from(&*config)),
            engine,
            config,
            listen_addr,
            next_client_id: AtomicU64::new(1),
            commands: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            peak_output_buffer: AtomicU64::new(0),
            started: Instant::now(),
            started_unix: crate::txn::clock::wall_ms() / 1000,
            shutdown: tokio::sync::Notify::new(),
        })
    }

    /// Zeroes the counters INFO reports (CONFIG RESETSTAT), as Redis does: commands
    /// processed, connections received and rejected, the engine's and the interactive
    /// transactions' counters. Gauges (connected clients, keys, open transactions, versions
    /// in memory) describe the present and are kept.
    pub fn reset_stats(&self) {
        for counter in [&self.commands, &self.connections_total, &self.rejected] {
            counter.store(0, Ordering::Relaxed);
        }
        self.engine.stats().reset();
        self.open_txns.stats().reset();
    }

    /// What the backend does with acknowledged writes, in Redis's terms (see
    /// [`Persistence`]).
    pub fn persistence(&self) -> Persistence {
        match self.engine.storage_durability() {
            Durability::Synced => Persistence {
                appendonly: true,
                appendfsync: "always",
            },
            Durability::WithinASecond => Persistence {
                appendonly: true,
                appendfsync: "everysec",
            },
            // Claims nothing it cannot vouch for, and reports Redis's defaults.
            Durability::NotClaimed => Persistence {
                appendonly: false,
                appendfsync: "everysec",
            },
        }
    }

    /// Asks the server to shut down gracefully (the SHUTDOWN command).
    pub fn request_shutdown(&self) {
        // A stored permit: `run` sees it even if it is not waiting right now.
        self.shutdown.notify_one();
    }
}

/// Durability in the terms of Redis's `appendonly` and `appendfsync`, for CONFIG GET and
/// INFO's `aof_enabled`, which clients such as redis-benchmark read. RDB snapshots never
/// happen, so `save` is always empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// Every acknowledged commit is in a log that survives a restart of aft.
    pub appendonly: bool,
    /// `always`: each commit is on stable storage before it is acknowledged; `everysec`:
    /// within about a second after.
    pub appendfsync: &'static str,
}

/// Opens the storage `config` names, and the engine's settings for it (the value cache gets
/// what `cache_mb` leaves once the embedded store's page cache took its share).
pub async fn open_storage(config: &Config) -> Result<(Arc<dyn Storage>, EngineConfig), String> {
    let mut engine = EngineConfig::from(config);
    let storage: Arc<dyn Storage> = match config.backend_kind().map_err(|e| e.to_string())? {
        BackendKind::Embedded => {
            let budget = CacheBudget::split(engine.cache_bytes);
            engine.cache_bytes = budget.value_cache;
            let options = EmbeddedOptions {
                fsync: config.fsync,
                cache_bytes: budget.page_cache,
            };
            Arc::new(
                EmbeddedStorage::open(&config.data_dir, options)
                    .map_err(|e| format!("cannot open the embedded backend: {e}"))?,
            )
        }
        BackendKind::Memory => Arc::new(MemoryStorage::new()),
        BackendKind::DynamoDb(options) => {
            let table = options.table.clone();
            Arc::new(
                DynamoDbStorage::connect(options)
                    .await
                    .map_err(|e| format!("cannot open DynamoDB table {table}: {e}"))?,
            )
        }
        BackendKind::Redis(options) => Arc::new(
            RedisStorage::connect(&options)
                .await
                .map_err(|e| format!("cannot open the Redis backend: {e}"))?,
        ),
    };
    Ok((storage, engine))
}

/// Opens the storage `config` names and the engine over it (recovering its commit set).
pub async fn open_engine(config: &Config) -> Result<Arc<Engine>, String> {
    let (storage, engine) = open_storage(config).await?;
    Engine::open(storage, engine)
        .await
        .map_err(|e| format!("cannot recover the commit set: {e}"))
}
