//! The network side: accepting clients, serving each connection, shutting down cleanly.
//!
//! [`run`] takes an already bound listener (tests bind port 0), the node it serves and a
//! shutdown future; it returns once every connection has finished its current batch and the
//! backend is closed.

pub mod connection;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::node::{self, Node};
use crate::process;

/// `aft serve`: fits `max_clients` to the open-file limit, opens the node's storage and
/// engine (recovering the commit set), listens on `config.listen`, and serves until SIGINT,
/// SIGTERM or SHUTDOWN; SIGHUP is ignored. Returns once everything acknowledged is durable
/// and the backend is closed.
pub async fn serve(mut config: Config) -> Result<(), String> {
    ignore_hangups()?;
    // Before the backend opens its files and connections, so that they count too.
    config.max_clients = process::fit_max_clients(config.max_clients)?.max_clients;
    let engine = node::open_engine(&config).await?;
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
    let recovered = engine.stats().recovered_commits.load(Ordering::Relaxed);
    tracing::info!(%addr, backend, recovered, "aft ready: listening on {addr}");
    let node = Node::new(engine, Arc::new(config), addr);
    run(listener, node, shutdown).await;
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
pub async fn run(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Config::validate bounds max_clients far below Semaphore::MAX_PERMITS; the clamp keeps
    // a context built without validation from panicking here.
    let slots = Arc::new(Semaphore::new(
        node.config.max_clients.min(Semaphore::MAX_PERMITS),
    ));
    let mut accept_failures = AcceptFailures::new(ACCEPT_FAILURE_LOG_INTERVAL);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = node.shutdown.notified() => break,
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
                let node = node.clone();
                let stop = stop_rx.clone();
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(async move {
                            connection::serve(stream, peer.to_string(), node, stop).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        node.rejected.fetch_add(1, Ordering::Relaxed);
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
    match node.engine.close().await {
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
