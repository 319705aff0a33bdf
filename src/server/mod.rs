//! The network side: accepting clients, serving each connection, shutting down cleanly.
//!
//! [`run`] takes an already bound listener (tests bind port 0) and a shutdown future; it
//! returns once every connection has finished its current batch and the backend is closed.

pub mod connection;
pub mod info;
pub mod parser;
pub mod process;

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

    /// Asks the server to shut down gracefully (the SHUTDOWN command).
    pub fn request_shutdown(&self) {
        // A stored permit: `run` sees it even if it is not waiting right now.
        self.shutdown.notify_one();
    }
}

/// Shortest time between two `accept failed` log lines.
const ACCEPT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Rate limit of the `accept failed` warning: the first failure is reported at once, later
/// ones at most once per interval, as a count.
struct AcceptFailures {
    interval: Duration,
    last_report: Option<Instant>,
    /// Failures not reported yet.
    pending: u64,
}

impl AcceptFailures {
    fn new(interval: Duration) -> Self {
        AcceptFailures {
            interval,
            last_report: None,
            pending: 0,
        }
    }

    /// Counts a failure at `now`. Returns the number of failures to report now (this one
    /// included), or `None` if it is too soon after the last report.
    fn record(&mut self, now: Instant) -> Option<u64> {
        self.pending = self.pending.saturating_add(1);
        let due = self
            .last_report
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// Serves clients on `listener` until `shutdown` completes, then stops accepting, lets
/// every connection finish the requests it has read (commits in progress complete), and
/// closes the backend.
pub async fn run(listener: TcpListener, ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Config::validate bounds max_clients far below Semaphore::MAX_PERMITS; the clamp keeps
    // a context built without validation from panicking here.
    let slots = Arc::new(Semaphore::new(
        ctx.config.max_clients.min(Semaphore::MAX_PERMITS),
    ));
    let mut accept_failures = AcceptFailures::new(ACCEPT_FAILURE_LOG_INTERVAL);
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
                        // E.g. too many open files: back off instead of spinning, and log
                        // a summary instead of a line per attempt.
                        match accept_failures.record(Instant::now()) {
                            Some(1) => tracing::warn!(error = %e, "accept failed"),
                            Some(failures) => tracing::warn!(
                                error = %e,
                                failures,
                                "accept failed {failures} times since the last report"
                            ),
                            None => {}
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_reported_once_then_at_most_once_per_interval() {
        let mut failures = AcceptFailures::new(Duration::from_secs(5));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(failures.record(at(0)), Some(1));
        // A failure every 50 ms (the back-off) for 5 s: one more line, with the count.
        let reported: Vec<u64> = (1..=100)
            .filter_map(|i| failures.record(at(i * 50)))
            .collect();
        assert_eq!(reported, vec![100]);
        // After a quiet spell the next failure is reported at once, alone.
        assert_eq!(failures.record(at(60_000)), Some(1));
        assert_eq!(failures.record(at(60_001)), None);
        assert_eq!(failures.record(at(65_000)), Some(2));
    }
}
