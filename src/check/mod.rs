//! `aft check`: a Jepsen-style anomaly checker for any RESP server (aft, Redis, …).
//!
//! [`run`] seeds every key, then drives concurrent transactions in the style of the AFT
//! paper's benchmark (a few writes, then a few reads, some of them of its own writes),
//! records a [`history::History`] (who wrote what, who read what, when, and how each
//! transaction ended), reads every key once more after the run, and analyzes the history
//! for fractured reads, read-your-writes violations, dirty reads and lost acknowledged
//! writes (protocol.md §2). Clients survive a server that drops connections or restarts:
//! they reconnect and mark the transaction in flight as unknown.
//!
//! The checker assumes it is alone on its keys (`aft-check:k<n>`): another writer of
//! those keys during the run shows up as unexplained values.

pub mod client;
pub mod history;
mod report;
mod workload;

pub use report::Report;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use history::{History, Outcome};
use workload::{client_loop, connect, final_state, probe_interactive, run_tag, seed, Shared};

/// How transactions are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No transaction: each SET and GET is its own command, as an application that uses
    /// Redis without transactions does. An aborted transaction stops after its first write,
    /// as if it crashed halfway.
    Plain,
    /// Writes and reads in one `MULTI … EXEC`; an aborted one sends `DISCARD`.
    Multi,
    /// aft's interactive transactions: `AFT.BEGIN`, SETs and GETs one at a time,
    /// `AFT.COMMIT` (or `AFT.ABORT`).
    Interactive,
}

impl Mode {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Multi => "multi",
            Mode::Interactive => "interactive",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s.to_ascii_lowercase().as_str() {
            "plain" => Ok(Mode::Plain),
            "multi" => Ok(Mode::Multi),
            "interactive" => Ok(Mode::Interactive),
            _ => Err(format!(
                "unknown mode {s:?} (expected plain, multi or interactive)"
            )),
        }
    }
}

/// What to run and against which server.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Ports of further servers on the same host (other aft nodes on one backend): client
    /// `c` of the run talks to the `c mod n`-th of `port` and these.
    pub more_ports: Vec<u16>,
    /// Password sent with `AUTH` on every connection.
    pub password: Option<String>,
    /// How transactions are sent.
    pub mode: Mode,
    /// Concurrent clients, one connection each.
    pub clients: usize,
    /// Transactions to run, in total over all clients.
    pub txns: u64,
    /// Size of the key space.
    pub keys: u32,
    /// Distinct keys each transaction writes.
    pub writes: usize,
    /// Distinct keys each transaction reads (after its writes).
    pub reads: usize,
    /// Values are padded to this many bytes.
    pub value_size: usize,
    /// Fraction of transactions aborted on purpose, in `[0, 1]`.
    pub abort_rate: f64,
    /// Seed of the workload's random choices (the interleaving is up to the server).
    pub seed: u64,
    /// How long a client keeps trying to (re)connect before it gives up.
    pub reconnect_for: Duration,
    /// How long to wait for any one reply.
    pub timeout: Duration,
    /// Examples kept per anomaly kind.
    pub max_examples: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            host: "127.0.0.1".to_string(),
            port: 7379,
            more_ports: Vec::new(),
            password: None,
            mode: Mode::Multi,
            clients: 8,
            txns: 10_000,
            keys: 100,
            writes: 2,
            reads: 4,
            value_size: 32,
            abort_rate: 0.05,
            seed: 1,
            reconnect_for: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            max_examples: 3,
        }
    }
}

impl CheckConfig {
    /// `host:port` (IPv6 literals in brackets).
    pub fn addr(&self) -> String {
        self.addr_at(self.port)
    }

    /// `host:port` of the server client `client` talks to (see [`CheckConfig::more_ports`]).
    pub fn client_addr(&self, client: u32) -> String {
        let ports = 1 + self.more_ports.len();
        match (client as usize) % ports {
            0 => self.addr(),
            i => self.addr_at(self.more_ports[i - 1]),
        }
    }

    fn addr_at(&self, port: u16) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, port)
        } else {
            format!("{}:{}", self.host, port)
        }
    }

    fn validate(&self) -> Result<(), CheckError> {
        let bad = |m: String| Err(CheckError::Config(m));
        if self.clients == 0 {
            return bad("--clients must be at least 1".into());
        }
        if self.keys == 0 {
            return bad("--keys must be at least 1".into());
        }
        if self.writes == 0 && self.reads == 0 {
            return bad("a transaction needs at least one write or read".into());
        }
        if self.writes > self.keys as usize || self.reads > self.keys as usize {
            return bad(format!(
                "--writes ({}) and --reads ({}) must not exceed --keys ({})",
                self.writes, self.reads, self.keys
            ));
        }
        if !(0.0..=1.0).contains(&self.abort_rate) {
            return bad(format!(
                "--abort-rate must be between 0 and 1, not {}",
                self.abort_rate
            ));
        }
        if self.timeout.is_zero() {
            return bad("the reply timeout must be positive".into());
        }
        Ok(())
    }
}

/// Why a check could not run (as opposed to finding anomalies).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The configuration makes no sense.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The server could not be reached within the reconnect time.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The last error.
        reason: String,
    },
    /// AUTH was refused.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server does not have the commands the mode needs.
    #[error("{0}")]
    Unsupported(String),
    /// The server replied something that stops the check (e.g. seeding was refused).
    #[error("{0}")]
    Server(String),
}

/// Runs a check: seed every key, drive `config.txns` transactions from `config.clients`
/// concurrent clients, read the final state and analyze the history.
///
/// Anomalies are part of the [`Report`]; an `Err` means the check itself could not run
/// (bad configuration, unreachable server, refused AUTH, missing commands).
pub async fn run(config: CheckConfig) -> Result<Report, CheckError> {
    config.validate()?;
    let epoch = Instant::now();
    let run_tag = run_tag(config.seed);
    let mut history = History::default();

    // Seed every key, so that nil is never a legitimate read.
    let mut conn = connect(&config).await?;
    if config.mode == Mode::Interactive {
        probe_interactive(&mut conn, &config).await?;
    }
    history
        .txns
        .extend(seed(&mut conn, &config, &run_tag, epoch).await?);
    drop(conn);

    let shared = Arc::new(Shared {
        config: config.clone(),
        run_tag,
        epoch,
        tickets: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        reconnects: AtomicU64::new(0),
        fatal: Mutex::new(None),
        interrupted: Mutex::new(None),
    });
    let started = epoch.elapsed();
    let tasks: Vec<_> = (1..=config.clients)
        .map(|c| tokio::spawn(client_loop(c as u32, Arc::clone(&shared))))
        .collect();
    for task in tasks {
        match task.await {
            Ok(records) => history.txns.extend(records),
            Err(e) => {
                return Err(CheckError::Server(format!("a client task failed: {e}")));
            }
        }
    }
    let elapsed = epoch.elapsed().saturating_sub(started);
    if let Some(fatal) = shared.fatal.lock().take() {
        return Err(fatal);
    }

    let final_read_error = match final_state(&config).await {
        Ok(state) => {
            history.final_state = Some(state);
            None
        }
        Err(e) => Some(e.to_string()),
    };

    let found = history::analyze(&history, config.max_examples);
    let measured = || history.txns.iter().filter(|t| t.id.client != 0);
    let count = |o: Outcome| measured().filter(|t| t.outcome == o).count() as u64;
    let transactions = measured().count() as u64;
    let (committed, aborted, failed, unknown) = (
        count(Outcome::Committed),
        count(Outcome::Aborted),
        count(Outcome::Failed),
        count(Outcome::Unknown),
    );
    let interrupted = shared.interrupted.lock().take();
    Ok(Report {
        mode: config.mode,
        addr: config.addr(),
        clients: config.clients,
        keys: config.keys,
        writes: config.writes,
        reads: config.reads,
        seed: config.seed,
        transactions,
        committed,
        aborted,
        failed,
        unknown,
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        elapsed,
        throughput: committed as f64 / elapsed.as_secs_f64().max(1e-9),
        fractured_reads: found.fractured_reads,
        read_your_writes: found.read_your_writes,
        dirty_reads: found.dirty_reads,
        lost_writes: found.lost_writes,
        unexplained_values: found.unexplained_values,
        examples: found.examples,
        interrupted,
        final_read_error,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::history::{Key, TxnId};
    use super::workload::{plan, Rng};
    use super::*;

    #[test]
    fn plans_write_distinct_keys_and_read_some_of_them() {
        let config = CheckConfig {
            keys: 6,
            writes: 2,
            reads: 4,
            ..CheckConfig::default()
        };
        let mut rng = Rng::new(7);
        let mut own_reads = 0;
        for seq in 0..200 {
            let p = plan(&mut rng, &config, "x", TxnId { client: 1, seq });
            let ws: Vec<Key> = p.writes.iter().map(|(k, _)| *k).collect();
            assert_eq!(ws.len(), 2);
            assert_ne!(ws[0], ws[1]);
            assert_eq!(p.reads.len(), 4);
            let mut r = p.reads.clone();
            r.sort_unstable();
            r.dedup();
            assert_eq!(r.len(), 4, "reads are distinct");
            assert!(p.reads.iter().all(|&k| k < 6));
            own_reads += p.reads.iter().filter(|k| ws.contains(k)).count();
        }
        assert!(own_reads > 100 && own_reads < 400, "{own_reads}");
        // Every key read, the whole key space.
        let all = CheckConfig {
            keys: 3,
            writes: 3,
            reads: 3,
            ..CheckConfig::default()
        };
        let p = plan(&mut rng, &all, "x", TxnId { client: 1, seq: 1 });
        assert_eq!(p.reads.len(), 3);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("plain".parse::<Mode>(), Ok(Mode::Plain));
        assert_eq!("MULTI".parse::<Mode>(), Ok(Mode::Multi));
        assert_eq!("interactive".parse::<Mode>(), Ok(Mode::Interactive));
        assert!("serializable".parse::<Mode>().is_err());
    }

    #[test]
    fn invalid_configurations_are_refused() {
        for config in [
            CheckConfig {
                clients: 0,
                ..CheckConfig::default()
            },
            CheckConfig {
                keys: 3,
                writes: 4,
                ..CheckConfig::default()
            },
            CheckConfig {
                abort_rate: 1.5,
                ..CheckConfig::default()
            },
        ] {
            assert!(matches!(config.validate(), Err(CheckError::Config(_))));
        }
        assert!(CheckConfig::default().validate().is_ok());
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[rng.below(4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        let hits = (0..10_000).filter(|_| rng.chance(0.05)).count();
        assert!((300..700).contains(&hits), "{hits}");
    }
}
