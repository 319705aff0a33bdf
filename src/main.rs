//! The `aft` command line: `aft serve` runs the proxy.

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use aft::config::{BackendKind, Config};
use aft::server::{self, process, Context};
use aft::storage::dynamodb::DynamoDbStorage;
use aft::storage::embedded::{CacheBudget, EmbeddedOptions, EmbeddedStorage};
use aft::storage::memory::MemoryStorage;
use aft::storage::redis::RedisStorage;
use aft::storage::Storage;
use aft::txn::{Engine, EngineConfig};

#[derive(Parser)]
#[command(
    name = "aft",
    version,
    about = "Read-atomic transactions for unmodified Redis clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Drive concurrent transactions against a RESP server and report anomalies
    /// (fractured reads, read-your-writes, dirty reads, lost writes). Exit status: 0 no
    /// anomaly, 1 anomalies found, 2 usage or connection error.
    Check(CheckArgs),
}

/// What `aft check` runs, and against which server.
#[derive(Args)]
struct CheckArgs {
    /// Server host.
    #[arg(long, default_value = "127.0.0.1", env = "AFT_CHECK_HOST")]
    host: String,
    /// Server port.
    #[arg(long, default_value_t = 7379, env = "AFT_CHECK_PORT")]
    port: u16,
    /// Password (sent with AUTH on every connection).
    #[arg(long, env = "AFT_CHECK_PASSWORD")]
    password: Option<String>,
    /// plain (no transactions) | multi (MULTI/EXEC) | interactive (AFT.BEGIN/COMMIT).
    #[arg(long, default_value = "multi")]
    mode: aft::check::Mode,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Transactions to run, in total.
    #[arg(long, default_value_t = 10_000)]
    txns: u64,
    /// Size of the key space.
    #[arg(long, default_value_t = 100)]
    keys: u32,
    /// Keys written per transaction.
    #[arg(long, default_value_t = 2)]
    writes: usize,
    /// Keys read per transaction (after its writes; some of them its own).
    #[arg(long, default_value_t = 4)]
    reads: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Fraction of transactions aborted on purpose.
    #[arg(long, default_value_t = 0.05)]
    abort_rate: f64,
    /// Seed of the workload (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep trying to (re)connect for this many seconds before giving up.
    #[arg(long, default_value_t = 5.0)]
    reconnect_for: f64,
    /// Seconds to wait for any one reply.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Flags override the config file; each has an environment variable too.
#[derive(Args)]
struct ServeArgs {
    /// TOML config file (see conf/aft.toml).
    #[arg(long, env = "AFT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT (port 0 picks a free one).
    #[arg(long, env = "AFT_LISTEN")]
    listen: Option<String>,
    /// Storage backend: embedded | memory | dynamodb://TABLE?region=R[&endpoint=URL][&create_table=true]
    /// | redis://[user:pass@]host:port[/db] | rediss://… | redis-cluster://host:port[,host:port…]
    /// (Redis options: ?prefix=…&timeout_ms=…&pool=…&idempotency_ttl=…).
    #[arg(long, env = "AFT_BACKEND")]
    backend: Option<String>,
    /// Data directory of the embedded backend.
    #[arg(long, env = "AFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Require this password (AUTH / HELLO AUTH default <password>).
    #[arg(long, env = "AFT_REQUIREPASS")]
    requirepass: Option<String>,
    /// fsync each group commit before acknowledging it (true | false).
    #[arg(long, env = "AFT_FSYNC")]
    fsync: Option<bool>,
    /// Memory for cached values, in MiB.
    #[arg(long, env = "AFT_CACHE_MB")]
    cache_mb: Option<usize>,
    /// Most clients connected at once (lowered at start if the open-file limit is too low).
    #[arg(long, env = "AFT_MAX_CLIENTS")]
    max_clients: Option<usize>,
    /// Log filter (error | warn | info | debug | trace, or directives: aft=debug,info).
    #[arg(long, env = "AFT_LOG")]
    log: Option<String>,
}

impl ServeArgs {
    fn into_config(self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.backend {
            config.backend = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.requirepass {
            config.requirepass = Some(v);
        }
        if let Some(v) = self.fsync {
            config.fsync = v;
        }
        if let Some(v) = self.cache_mb {
            config.cache_mb = v;
        }
        if let Some(v) = self.max_clients {
            config.max_clients = v;
        }
        if let Some(v) = self.log {
            config.log = v;
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(args),
        Command::Serve(args) => {
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("aft: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = init_logging(&config.log) {
                eprintln!("aft: {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("aft: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("aft: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `aft check`: 0 no anomaly, 1 anomalies, 2 usage or connection error.
fn check(args: CheckArgs) -> ExitCode {
    let secs = |name: &str, v: f64| {
        std::time::Duration::try_from_secs_f64(v)
            .map_err(|_| format!("--{name} must be a non-negative number of seconds"))
    };
    let durations = secs("reconnect-for", args.reconnect_for)
        .and_then(|r| secs("timeout", args.timeout).map(|t| (r, t)));
    let (reconnect_for, timeout) = match durations {
        Ok(d) => d,
        Err(e) => {
            eprintln!("aft check: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let config = aft::check::CheckConfig {
        host: args.host,
        port: args.port,
        password: args.password,
        mode: args.mode,
        clients: args.clients,
        txns: args.txns,
        keys: args.keys,
        writes: args.writes,
        reads: args.reads,
        value_size: args.value_size,
        abort_rate: args.abort_rate,
        seed,
        reconnect_for,
        timeout,
        ..aft::check::CheckConfig::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aft check: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(aft::check::run(config)) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            if report.anomalies() > 0 {
                ExitCode::from(1)
            } else if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("aft check: {e}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, in colour only when stderr is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>), so that log files and journals get plain text.
fn init_logging(filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("invalid log filter '{filter}': {e}"))?;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))
}

async fn serve(mut config: Config) -> Result<(), String> {
    ignore_hangups()?;
    // Before the backend opens its files and connections, so that they count too.
    config.max_clients = process::fit_max_clients(config.max_clients)?.max_clients;
    // `cache_mb` bounds every cache: the engine's values, and redb's pages when embedded.
    let mut value_cache_bytes = config.cache_bytes();
    let storage: Arc<dyn Storage> = match config.backend_kind().map_err(|e| e.to_string())? {
        BackendKind::Embedded => {
            let budget = CacheBudget::split(value_cache_bytes);
            value_cache_bytes = budget.value_cache;
            Arc::new(
                EmbeddedStorage::open(
                    &config.data_dir,
                    EmbeddedOptions {
                        fsync: config.fsync,
                        cache_bytes: budget.page_cache,
                    },
                )
                .map_err(|e| format!("cannot open the embedded backend: {e}"))?,
            )
        }
        BackendKind::Memory => Arc::new(MemoryStorage::new()),
        BackendKind::DynamoDb(mut options) => {
            // The TTL of idempotency entries is a backstop: well past the retention.
            options.idempotency_ttl = std::time::Duration::from_secs(
                config.idempotency_retention_secs.saturating_add(7 * 86_400),
            );
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
    let engine = Engine::open(
        storage,
        EngineConfig {
            cache_bytes: value_cache_bytes,
            gc_interval: std::time::Duration::from_millis(config.gc_interval_ms),
            idempotency_retention: std::time::Duration::from_secs(
                config.idempotency_retention_secs,
            ),
            status_retention: std::time::Duration::from_secs(config.status_retention_secs),
            max_snapshot_age: std::time::Duration::from_millis(config.max_snapshot_age_ms),
        },
    )
    .await
    .map_err(|e| format!("cannot recover the commit set: {e}"))?;
    // Registered before listening: from the first client on, SIGTERM is graceful.
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.listen.clone());
    let backend = engine.storage_name();
    let recovered = engine
        .stats()
        .recovered_commits
        .load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%addr, backend, recovered, "aft ready: listening on {addr}");
    let ctx = Context::new(engine, Arc::new(config), addr);
    server::run(listener, ctx, shutdown).await;
    Ok(())
}

/// Logs and otherwise ignores SIGHUP, as Redis does: a closed terminal or a
/// `systemctl reload` must not stop the server.
#[cfg(unix)]
fn ignore_hangups() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups =
        signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("received SIGHUP: ignored (SIGTERM or SHUTDOWN stops aft)");
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn ignore_hangups() -> Result<(), String> {
    Ok(())
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed
/// now, so a signal that arrives before the future is first polled is not lost.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
    })
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl Future<Output = ()>, String> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
