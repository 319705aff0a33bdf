//! The report of a check: what ran, what was found, as text or JSON.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::history::{Example, History};
use super::Mode;

/// The outcome of a check: what ran, and which anomalies were found.
#[derive(Clone, Debug)]
pub struct Report {
    /// How transactions were sent.
    pub mode: Mode,
    /// The server checked.
    pub addr: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Size of the key space.
    pub keys: u32,
    /// Writes per transaction.
    pub writes: usize,
    /// Reads per transaction.
    pub reads: usize,
    /// The workload seed.
    pub seed: u64,
    /// Transactions run (seeding excluded).
    pub transactions: u64,
    /// Transactions acknowledged as committed.
    pub committed: u64,
    /// Transactions aborted on purpose.
    pub aborted: u64,
    /// Transactions that definitely did not commit (an error, or a connection lost before
    /// the commit was sent).
    pub failed: u64,
    /// Transactions whose outcome is unknown (connection lost after the commit was sent).
    pub unknown: u64,
    /// Connections lost and re-established during the run.
    pub reconnects: u64,
    /// Duration of the measured run.
    pub elapsed: Duration,
    /// Committed transactions per second over the measured run.
    pub throughput: f64,
    /// Transactions with a fractured read.
    pub fractured_reads: u64,
    /// Transactions that did not read their own writes.
    pub read_your_writes: u64,
    /// Transactions (and final-state keys) that read a never-committed value.
    pub dirty_reads: u64,
    /// Keys whose final state lost an acknowledged write.
    pub lost_writes: u64,
    /// Reads of values that no transaction of this run wrote to that key.
    pub unexplained_values: u64,
    /// A few examples of each anomaly kind.
    pub examples: Vec<Example>,
    /// Why the run stopped early (a client could not reconnect in time), if it did.
    pub interrupted: Option<String>,
    /// Why the final read failed, if it did (lost writes were then not checked).
    pub final_read_error: Option<String>,
    /// The full history, for further inspection.
    pub history: History,
}

impl Report {
    /// All anomalies found.
    pub fn anomalies(&self) -> u64 {
        self.fractured_reads
            + self.read_your_writes
            + self.dirty_reads
            + self.lost_writes
            + self.unexplained_values
    }

    /// True if the run completed, the final state was checked, and nothing was found.
    pub fn is_clean(&self) -> bool {
        self.anomalies() == 0 && self.interrupted.is_none() && self.final_read_error.is_none()
    }

    fn anomaly_rows(&self) -> [(&'static str, &'static str, u64); 5] {
        [
            ("fractured_reads", "fractured reads", self.fractured_reads),
            (
                "read_your_writes",
                "read-your-writes violations",
                self.read_your_writes,
            ),
            ("dirty_reads", "dirty reads", self.dirty_reads),
            ("lost_writes", "lost acknowledged writes", self.lost_writes),
            (
                "unexplained_values",
                "unexplained values",
                self.unexplained_values,
            ),
        ]
    }

    /// The report as one JSON object (the counts, the anomaly counts by kind, examples and
    /// why the check may be incomplete; not the history).
    pub fn to_json(&self) -> String {
        let anomalies: Vec<(&str, u64)> = self
            .anomaly_rows()
            .iter()
            .map(|(name, _, n)| (*name, *n))
            .collect();
        let json = ReportJson {
            mode: self.mode.name(),
            addr: &self.addr,
            clients: self.clients,
            keys: self.keys,
            writes: self.writes,
            reads: self.reads,
            seed: self.seed,
            transactions: self.transactions,
            committed: self.committed,
            aborted: self.aborted,
            failed: self.failed,
            unknown: self.unknown,
            reconnects: self.reconnects,
            elapsed_s: self.elapsed.as_secs_f64(),
            throughput: self.throughput,
            by_kind: anomalies.into_iter().collect(),
            anomalies: self.anomalies(),
            examples: self
                .examples
                .iter()
                .map(|e| ExampleJson {
                    kind: e.kind.name(),
                    text: &e.text,
                })
                .collect(),
            interrupted: self.interrupted.as_deref(),
            final_read_error: self.final_read_error.as_deref(),
        };
        serde_json::to_string(&json).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// [`Report::to_json`]'s object, field by field.
#[derive(Serialize)]
struct ReportJson<'r> {
    mode: &'static str,
    addr: &'r str,
    clients: usize,
    keys: u32,
    writes: usize,
    reads: usize,
    seed: u64,
    transactions: u64,
    committed: u64,
    aborted: u64,
    failed: u64,
    unknown: u64,
    reconnects: u64,
    elapsed_s: f64,
    throughput: f64,
    #[serde(flatten)]
    by_kind: std::collections::BTreeMap<&'static str, u64>,
    anomalies: u64,
    examples: Vec<ExampleJson<'r>>,
    interrupted: Option<&'r str>,
    final_read_error: Option<&'r str>,
}

#[derive(Serialize)]
struct ExampleJson<'r> {
    kind: &'static str,
    text: &'r str,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "aft check: {} mode against {}, {} clients, {} keys, {} writes + {} reads per \
             transaction, seed {}",
            self.mode, self.addr, self.clients, self.keys, self.writes, self.reads, self.seed
        )?;
        writeln!(
            f,
            "transactions: {} run, {} committed, {} aborted on purpose, {} failed, {} unknown \
             ({} reconnects)",
            self.transactions,
            self.committed,
            self.aborted,
            self.failed,
            self.unknown,
            self.reconnects
        )?;
        writeln!(
            f,
            "throughput:   {:.0} committed txn/s over {:.2} s",
            self.throughput,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "anomalies:                      count  per 10,000 txns")?;
        for (_, label, n) in self.anomaly_rows() {
            let rate = if self.transactions == 0 {
                0.0
            } else {
                n as f64 * 10_000.0 / self.transactions as f64
            };
            writeln!(f, "  {label:<28} {n:>6}  {rate:>8.1}")?;
        }
        for e in &self.examples {
            writeln!(f, "  e.g. {}: {}", e.kind.name(), e.text)?;
        }
        if let Some(why) = &self.interrupted {
            writeln!(f, "interrupted: {why}")?;
        }
        if let Some(why) = &self.final_read_error {
            writeln!(f, "lost writes NOT checked: the final read failed: {why}")?;
        }
        let verdict = if self.anomalies() > 0 {
            format!("{} ANOMALIES FOUND", self.anomalies())
        } else if self.is_clean() {
            "no anomaly found".to_string()
        } else {
            "no anomaly found, but the check is incomplete".to_string()
        };
        write!(f, "result: {verdict}")
    }
}
