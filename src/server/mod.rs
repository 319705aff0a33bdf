//! The network side: accepting clients, serving each connection, shutting down cleanly.
//!
//! [`run`] takes an already bound listener (tests bind port 0) and a shutdown future; it
//! returns once every connection has finished its current batch and the backend is closed.

pub mod connection;
pub mod info;
pub mod parser;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::txn::open::{OpenLimits, OpenTxns};
use crate::txn::Engine;

/// State shared by every connection of a server.
pub struct Context {
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
    /// Commands processed.
    pub commands: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connected: AtomicU64,
    /// Connections refused because of `max_clients`.
    pub rejected: AtomicU64,
    /// When the server started.
    pub started: Instant,
    /// When the server started, in seconds since the epoch.
    pub started_unix: u64,
    /// Set by SHUTDOWN: the server stops as on SIGTERM.
    shutdown: tokio::sync::Notify,
}

impl Context {
    /// A context for a server listening on `listen_addr`. Starts the reaper of idle
    /// interactive transactions (needs a tokio runtime).
    pub fn new(engine: Arc<Engine>, config: Arc<Config>, listen_addr: String) -> Arc<Context> {
        let limits = OpenLimits {
            default_timeout: Duration::from_millis(config.txn_timeout_ms),
            max_timeout: Duration::from_millis(
                config.max_txn_timeout_ms.max(config.txn_timeout_ms),
            ),
            max_open: config.max_open_txns,
            max_txn_bytes: config.max_txn_bytes,
            max_total_bytes: config.max_open_txn_bytes,
            max_per_client: config.max_open_txns_per_client,
        };
        Arc::new(Context {
            open_txns: OpenTxns::start(engine.clone(), limits),
            engine,
            config,
            listen_addr,
            next_client_id: AtomicU64::new(1),
            commands: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            started: Instant::now(),
            started_unix: crate::txn::clock::wall_ms() / 1000,
            shutdown: tokio::sync::Notify::new(),
        })
    }

    /// Asks the server to shut down gracefully (the SHUTDOWN command).
    pub fn request_shutdown(&self) {
        // A stored permit: `run` sees it even if it is not waiting right now.
        self.shutdown.notify_one();
    }
}

/// Serves clients on `listener` until `shutdown` completes, then stops accepting, lets
/// every connection finish the requests it has read (commits in progress complete), and
/// closes the backend.
pub async fn run(listener: TcpListener, ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(ctx.config.max_clients));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ctx.shutdown.notified() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // E.g. too many open files: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let ctx = ctx.clone();
                let stop = stop_rx.clone();
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(async move {
                            connection::serve(stream, peer.to_string(), ctx, stop).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        ctx.rejected.fetch_add(1, Ordering::Relaxed);
                        connections.spawn(connection::refuse(stream));
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::info!("shutting down: no new connections, finishing requests in progress");
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections did not finish within 10 s; closing them");
        connections.shutdown().await;
    }
    match ctx.engine.close().await {
        Ok(()) => tracing::info!("backend closed"),
        Err(e) => tracing::error!(error = %e, "closing the backend failed"),
    }
}
