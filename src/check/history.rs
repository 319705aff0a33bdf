//! The recorded history of a check run and its analysis.
//!
//! Every value written is unique (it names its writer), so a value read identifies the
//! transaction that wrote it. Where the analysis needs to know that one version of a key is
//! older than another it uses real time only: if writer `A` was acknowledged before writer
//! `B` started, `B`'s versions are newer than `A`'s (on aft, whose commit timestamps follow
//! real time on one node, and on Redis, which applies commands in arrival order). Writers
//! whose outcome is unknown have no acknowledgement instant and never serve as the older
//! side of such an argument, so nothing is reported that did not happen.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

/// A key of the workload, by index; its name on the server is [`key_name`].
pub type Key = u32;

/// The name on the server of workload key `k`.
pub fn key_name(k: Key) -> String {
    format!("aft-check:k{k}")
}

/// Identifies a transaction: the client that ran it and its sequence number there.
/// Client 0 is the loader that seeds every key before the measured run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId {
    /// The client (connection) number; 0 is the seed loader.
    pub client: u32,
    /// The transaction's number on that client.
    pub seq: u64,
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}-{}", self.client, self.seq)
    }
}

/// The unique value `id` writes to every key: `t<client>-<seq>@<run>|k3,k17|`, padded
/// with dots to `size` bytes (never truncated). `run` tells values of this run from
/// those an earlier run left behind.
pub fn value_for(run: &str, id: TxnId, write_set: &[Key], size: usize) -> Bytes {
    let keys: Vec<String> = write_set.iter().map(|k| format!("k{k}")).collect();
    let mut v = format!("{id}@{run}|{}|", keys.join(",")).into_bytes();
    if v.len() < size {
        v.resize(size, b'.');
    }
    Bytes::from(v)
}

/// How a transaction ended, as far as the client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server acknowledged the commit (in plain mode: every command was acknowledged).
    Committed,
    /// Aborted on purpose (DISCARD, AFT.ABORT; in plain mode, stopped after its first write
    /// as if it crashed halfway).
    Aborted,
    /// Definitely not committed: the commit was never sent, or the server said so.
    Failed,
    /// The connection failed (or the reply made no sense) after the commit may have been
    /// applied: it may or may not have committed.
    Unknown,
}

impl Outcome {
    /// Its lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::Aborted => "aborted",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One operation of a transaction, in the order the client issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A write of `value` to `key` (recorded once sent, whether or not it took effect).
    Write {
        /// The key.
        key: Key,
        /// The value written.
        value: Bytes,
    },
    /// A read of `key` that returned `value` (`None`: nil). Only reads whose reply arrived
    /// are recorded.
    Read {
        /// The key.
        key: Key,
        /// What the server returned.
        value: Option<Bytes>,
    },
}

/// One transaction of the history.
#[derive(Clone, Debug)]
pub struct TxnRecord {
    /// Its id.
    pub id: TxnId,
    /// When the client started sending it (since the run's epoch, monotonic clock).
    pub start: Duration,
    /// When the client got its last reply, or saw the failure.
    pub end: Duration,
    /// Its writes and reads in order.
    pub ops: Vec<Op>,
    /// How it ended.
    pub outcome: Outcome,
}

impl TxnRecord {
    /// The keys it wrote, in order, without repeats.
    pub fn write_set(&self) -> Vec<Key> {
        let mut ws = Vec::new();
        for op in &self.ops {
            if let Op::Write { key, .. } = op {
                if !ws.contains(key) {
                    ws.push(*key);
                }
            }
        }
        ws
    }
}

/// Everything a run observed.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Every transaction attempted, including the seed writers (client 0).
    pub txns: Vec<TxnRecord>,
    /// Each key's value read once more after the run, from a fresh connection; `None` if
    /// that read could not be done.
    pub final_state: Option<Vec<(Key, Option<Bytes>)>>,
}

/// The kinds of anomaly the analysis finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnomalyKind {
    /// A transaction saw some but not all of another transaction's writes.
    FracturedRead,
    /// A transaction did not read back its own write.
    ReadYourWrites,
    /// A value written by a transaction that never committed was read.
    DirtyRead,
    /// An acknowledged write is not in the final state.
    LostWrite,
    /// A value was read that no transaction of the run wrote to that key.
    UnexplainedValue,
}

impl AnomalyKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::FracturedRead => "fractured read",
            AnomalyKind::ReadYourWrites => "read-your-writes",
            AnomalyKind::DirtyRead => "dirty read",
            AnomalyKind::LostWrite => "lost write",
            AnomalyKind::UnexplainedValue => "unexplained value",
        }
    }
}

/// One anomaly, described for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Its kind.
    pub kind: AnomalyKind,
    /// What happened, naming transactions and keys.
    pub text: String,
}

/// What [`analyze`] found. Read anomalies are counted per transaction (a transaction with
/// two fractured reads counts once, as in the AFT paper's "anomalies per 10,000
/// transactions"); lost writes per key. The final read also counts towards dirty reads and
/// unexplained values when it returns such a value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Anomalies {
    /// Transactions with a fractured read.
    pub fractured_reads: u64,
    /// Transactions that did not read their own write.
    pub read_your_writes: u64,
    /// Transactions (and final-state keys) that read a value of a never-committed writer.
    pub dirty_reads: u64,
    /// Keys whose final state lost an acknowledged write.
    pub lost_writes: u64,
    /// Transactions (and final-state keys) that read a value nobody in the run wrote there.
    pub unexplained_values: u64,
    /// Up to `max_examples` examples of each kind.
    pub examples: Vec<Example>,
}

impl Anomalies {
    /// All anomalies together.
    pub fn total(&self) -> u64 {
        self.fractured_reads
            + self.read_your_writes
            + self.dirty_reads
            + self.lost_writes
            + self.unexplained_values
    }
}

/// Who wrote a value that was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Nil.
    Nil,
    /// The transaction at this index of the history.
    Writer(usize),
    /// Several writes carry these exact bytes: no conclusion is drawn from it.
    Ambiguous,
    /// Nobody wrote these bytes to this key.
    Unexplained,
}

struct Analyzer<'h> {
    history: &'h History,
    /// (key, value bytes) -> writer index, or `None` when several transactions wrote the
    /// same bytes to the key.
    writers: HashMap<(Key, &'h [u8]), Option<usize>>,
    max_examples: usize,
    found: Anomalies,
    shown: HashMap<AnomalyKind, usize>,
}

/// Finds the anomalies of `history`, keeping up to `max_examples` examples of each kind.
pub fn analyze(history: &History, max_examples: usize) -> Anomalies {
    let mut writers: HashMap<(Key, &[u8]), Option<usize>> = HashMap::new();
    for (i, t) in history.txns.iter().enumerate() {
        for op in &t.ops {
            if let Op::Write { key, value } = op {
                writers
                    .entry((*key, value.as_ref()))
                    .and_modify(|w| {
                        if *w != Some(i) {
                            *w = None;
                        }
                    })
                    .or_insert(Some(i));
            }
        }
    }
    let mut a = Analyzer {
        history,
        writers,
        max_examples,
        found: Anomalies::default(),
        shown: HashMap::new(),
    };
    for r in 0..history.txns.len() {
        a.check_reads(r);
    }
    if let Some(state) = &history.final_state {
        a.check_final_state(state);
    }
    // Group the examples by kind, in the order of the report's rows.
    a.found.examples.sort_by_key(|e| e.kind as u8);
    a.found
}

impl<'h> Analyzer<'h> {
    fn txn(&self, i: usize) -> &'h TxnRecord {
        &self.history.txns[i]
    }

    fn source(&self, key: Key, value: &Option<Bytes>) -> Source {
        match value {
            None => Source::Nil,
            Some(v) => match self.writers.get(&(key, v.as_ref())) {
                Some(Some(w)) => Source::Writer(*w),
                Some(None) => Source::Ambiguous,
                None => Source::Unexplained,
            },
        }
    }

    fn describe(&self, source: Source, value: &Option<Bytes>) -> String {
        match source {
            Source::Nil => "nil".to_string(),
            Source::Writer(w) => format!("{}'s value", self.txn(w).id),
            Source::Ambiguous | Source::Unexplained => {
                let v = value.as_deref().unwrap_or_default();
                format!("{:?}", String::from_utf8_lossy(&v[..v.len().min(48)]))
            }
        }
    }

    fn example(&mut self, kind: AnomalyKind, text: impl FnOnce() -> String) {
        let n = self.shown.entry(kind).or_insert(0);
        if *n < self.max_examples {
            *n += 1;
            self.found.examples.push(Example { kind, text: text() });
        }
    }

    /// Read-your-writes, dirty reads, unexplained values and fractured reads of one
    /// transaction's reads.
    fn check_reads(&mut self, r: usize) {
        let txn = self.txn(r);
        let ws: HashSet<Key> = txn.write_set().into_iter().collect();
        let mut own: HashMap<Key, &Bytes> = HashMap::new();
        // Reads of keys the transaction never writes: where fractured reads can show.
        let mut external: Vec<(Key, Source)> = Vec::new();
        let (mut ryw, mut dirty, mut unexplained) = (false, false, false);
        for op in &txn.ops {
            match op {
                Op::Write { key, value } => {
                    own.insert(*key, value);
                }
                Op::Read { key, value } => {
                    let source = self.source(*key, value);
                    if let Some(mine) = own.get(key) {
                        if value.as_ref() != Some(*mine) && !ryw {
                            ryw = true;
                            let got = self.describe(source, value);
                            self.example(AnomalyKind::ReadYourWrites, || {
                                format!("{} wrote k{key}, then read it back as {got}", txn.id)
                            });
                        }
                    }
                    match source {
                        Source::Unexplained if !unexplained => {
                            unexplained = true;
                            let got = self.describe(source, value);
                            self.example(AnomalyKind::UnexplainedValue, || {
                                format!(
                                    "{} read k{key} = {got}, which no transaction of this run \
                                     wrote to k{key}",
                                    txn.id
                                )
                            });
                        }
                        Source::Writer(w) if w != r && !dirty => {
                            let writer = self.txn(w);
                            if matches!(writer.outcome, Outcome::Aborted | Outcome::Failed) {
                                dirty = true;
                                self.example(AnomalyKind::DirtyRead, || {
                                    format!(
                                        "{} read k{key} = {}'s value, but {} {}",
                                        txn.id,
                                        writer.id,
                                        writer.id,
                                        never_committed(writer.outcome)
                                    )
                                });
                            }
                        }
                        _ => {}
                    }
                    if !ws.contains(key) {
                        external.push((*key, source));
                    }
                }
            }
        }
        let fractured = self.fractured(r, &ws, &external);
        self.found.read_your_writes += u64::from(ryw);
        self.found.dirty_reads += u64::from(dirty);
        self.found.unexplained_values += u64::from(unexplained);
        self.found.fractured_reads += u64::from(fractured);
    }

    /// True if some read of `k` saw `T_i` while a read of another key `l` of `ws(T_i)` saw
    /// nil or a writer acknowledged before `T_i` started.
    fn fractured(&mut self, r: usize, ws: &HashSet<Key>, external: &[(Key, Source)]) -> bool {
        let reader = self.txn(r);
        for &(k, source) in external {
            let Source::Writer(i) = source else { continue };
            let ti = self.txn(i);
            // Reads of aborted or failed writers are dirty reads, counted as such.
            if i == r || !matches!(ti.outcome, Outcome::Committed | Outcome::Unknown) {
                continue;
            }
            for l in ti.write_set() {
                if l == k || ws.contains(&l) {
                    continue;
                }
                for &(key, seen) in external {
                    if key != l {
                        continue;
                    }
                    let older = match seen {
                        Source::Nil => Some("nil".to_string()),
                        Source::Writer(j) => {
                            let tj = self.txn(j);
                            (j != i && tj.outcome == Outcome::Committed && tj.end < ti.start).then(
                                || {
                                    format!(
                                        "{}'s value, acknowledged {} before {} started",
                                        tj.id,
                                        millis(ti.start - tj.end),
                                        ti.id
                                    )
                                },
                            )
                        }
                        Source::Ambiguous | Source::Unexplained => None,
                    };
                    if let Some(older) = older {
                        self.example(AnomalyKind::FracturedRead, || {
                            format!(
                                "{} read k{k} = {}'s value; {} also wrote k{l}, but {} read k{l} \
                                 = {older}",
                                reader.id, ti.id, ti.id, reader.id
                            )
                        });
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Lost acknowledged writes (and dirty or unexplained values) in the final state.
    fn check_final_state(&mut self, state: &[(Key, Option<Bytes>)]) {
        // Per key, the committed writer that started last.
        let mut last_start: HashMap<Key, usize> = HashMap::new();
        for (i, t) in self.history.txns.iter().enumerate() {
            if t.outcome != Outcome::Committed {
                continue;
            }
            for k in t.write_set() {
                let e = last_start.entry(k).or_insert(i);
                if self.history.txns[*e].start < t.start {
                    *e = i;
                }
            }
        }
        for (key, value) in state {
            let key = *key;
            let newest = last_start.get(&key).map(|&i| self.txn(i));
            match self.source(key, value) {
                Source::Nil => {
                    if let Some(w) = newest {
                        self.found.lost_writes += 1;
                        self.example(AnomalyKind::LostWrite, || {
                            format!(
                                "k{key} is nil after the run, but {} wrote it and was \
                                 acknowledged",
                                w.id
                            )
                        });
                    }
                }
                Source::Writer(j) => {
                    let tj = self.txn(j);
                    match tj.outcome {
                        Outcome::Committed => {
                            if let Some(ti) = newest.filter(|ti| ti.start > tj.end) {
                                self.found.lost_writes += 1;
                                self.example(AnomalyKind::LostWrite, || {
                                    format!(
                                        "k{key} ends as {}'s value, but {} wrote k{key} and \
                                         was acknowledged, and it started {} after {} was \
                                         acknowledged",
                                        tj.id,
                                        ti.id,
                                        millis(ti.start - tj.end),
                                        tj.id
                                    )
                                });
                            }
                        }
                        Outcome::Aborted | Outcome::Failed => {
                            self.found.dirty_reads += 1;
                            self.example(AnomalyKind::DirtyRead, || {
                                format!(
                                    "k{key} ends as {}'s value, but {} {}",
                                    tj.id,
                                    tj.id,
                                    never_committed(tj.outcome)
                                )
                            });
                        }
                        Outcome::Unknown => {}
                    }
                }
                Source::Unexplained => {
                    self.found.unexplained_values += 1;
                    let got = self.describe(Source::Unexplained, value);
                    self.example(AnomalyKind::UnexplainedValue, || {
                        format!("k{key} ends as {got}, which no transaction of this run wrote")
                    });
                }
                Source::Ambiguous => {}
            }
        }
    }
}

fn never_committed(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Aborted => "aborted",
        _ => "never committed",
    }
}

fn millis(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "test";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A history builder: transactions are given as (client, seq, start, end, outcome, ops).
    struct Builder {
        history: History,
    }

    fn val(id: TxnId) -> Bytes {
        value_for(RUN, id, &[], 0)
    }

    impl Builder {
        /// Keys `0..keys` seeded by client 0 during [0, 1] ms.
        fn seeded(keys: Key) -> Builder {
            let txns = (0..keys)
                .map(|k| {
                    let id = TxnId {
                        client: 0,
                        seq: u64::from(k),
                    };
                    TxnRecord {
                        id,
                        start: ms(0),
                        end: ms(1),
                        ops: vec![Op::Write {
                            key: k,
                            value: val(id),
                        }],
                        outcome: Outcome::Committed,
                    }
                })
                .collect();
            Builder {
                history: History {
                    txns,
                    final_state: None,
                },
            }
        }

        /// Adds a transaction; `writes` are its keys (value derived from its id), `reads`
        /// the keys read and whose value they saw (`None` nil, `Some(id)` that writer).
        fn txn(
            mut self,
            (client, seq): (u32, u64),
            (start, end): (u64, u64),
            outcome: Outcome,
            writes: &[Key],
            reads: &[(Key, Option<(u32, u64)>)],
        ) -> Builder {
            let id = TxnId { client, seq };
            let mut ops: Vec<Op> = writes
                .iter()
                .map(|&key| Op::Write {
                    key,
                    value: val(id),
                })
                .collect();
            ops.extend(reads.iter().map(|&(key, w)| Op::Read {
                key,
                value: w.map(|(client, seq)| val(TxnId { client, seq })),
            }));
            self.history.txns.push(TxnRecord {
                id,
                start: ms(start),
                end: ms(end),
                ops,
                outcome,
            });
            self
        }

        fn final_state(mut self, state: &[(Key, Option<(u32, u64)>)]) -> Builder {
            self.history.final_state = Some(
                state
                    .iter()
                    .map(|&(k, w)| (k, w.map(|(client, seq)| val(TxnId { client, seq }))))
                    .collect(),
            );
            self
        }

        fn analyze(self) -> Anomalies {
            analyze(&self.history, 3)
        }
    }

    use Outcome::*;

    #[test]
    fn a_clean_history_has_no_anomaly() {
        let found = Builder::seeded(4)
            // t1-1 writes k0,k1 and reads its own k0 and the seed's k2.
            .txn(
                (1, 1),
                (2, 5),
                Committed,
                &[0, 1],
                &[(0, Some((1, 1))), (2, Some((0, 2)))],
            )
            // t2-1 runs later and sees all of t1-1.
            .txn(
                (2, 1),
                (6, 8),
                Committed,
                &[2, 3],
                &[(0, Some((1, 1))), (1, Some((1, 1)))],
            )
            // Concurrent with t1-1: it may see the old versions of both keys.
            .txn(
                (3, 1),
                (3, 4),
                Committed,
                &[],
                &[(0, Some((0, 0))), (1, Some((0, 1)))],
            )
            // An aborted writer nobody read.
            .txn((4, 1), (9, 10), Aborted, &[0, 1], &[])
            // An unknown writer may be read without anomaly.
            .txn((5, 1), (11, 12), Unknown, &[3], &[])
            .txn((6, 1), (13, 14), Committed, &[], &[(3, Some((5, 1)))])
            .final_state(&[
                (0, Some((1, 1))),
                (1, Some((1, 1))),
                (2, Some((2, 1))),
                (3, Some((5, 1))),
            ])
            .analyze();
        assert_eq!(found, Anomalies::default(), "{:#?}", found.examples);
    }

    #[test]
    fn fractured_read_against_an_acknowledged_older_writer() {
        let found = Builder::seeded(4)
            .txn((1, 1), (2, 3), Committed, &[0, 1], &[])
            .txn((2, 1), (4, 6), Committed, &[0, 1], &[])
            // Reads k0 from t2-1 but k1 from t1-1, acknowledged before t2-1 started.
            .txn(
                (3, 1),
                (7, 8),
                Committed,
                &[],
                &[(0, Some((2, 1))), (1, Some((1, 1)))],
            )
            // Reads k1 from t2-1 and k0 from the seed.
            .txn(
                (3, 2),
                (9, 10),
                Committed,
                &[],
                &[(1, Some((2, 1))), (0, Some((0, 0)))],
            )
            .analyze();
        assert_eq!(found.fractured_reads, 2, "{:#?}", found.examples);
        assert_eq!(found.total(), 2);
        assert!(found.examples[0].text.contains("t2-1 also wrote k1"));
    }

    #[test]
    fn fractured_read_of_nil() {
        let found = Builder::seeded(0)
            .txn((1, 1), (2, 3), Committed, &[0, 1], &[])
            .txn(
                (2, 1),
                (2, 3),
                Committed,
                &[],
                &[(0, Some((1, 1))), (1, None)],
            )
            .analyze();
        assert_eq!(found.fractured_reads, 1);
    }

    #[test]
    fn concurrent_writers_do_not_make_a_fractured_read() {
        // t1-1 and t2-1 overlap: no version order between them is known.
        let found = Builder::seeded(2)
            .txn((1, 1), (2, 5), Committed, &[0, 1], &[])
            .txn((2, 1), (4, 6), Committed, &[0, 1], &[])
            .txn(
                (3, 1),
                (7, 8),
                Committed,
                &[],
                &[(0, Some((2, 1))), (1, Some((1, 1)))],
            )
            // An unknown writer is never the older side.
            .txn((4, 1), (9, 10), Unknown, &[1], &[])
            .txn((5, 1), (11, 12), Committed, &[0, 1], &[])
            .txn(
                (6, 1),
                (13, 14),
                Committed,
                &[],
                &[(0, Some((5, 1))), (1, Some((4, 1)))],
            )
            // Own writes are not fractured reads.
            .txn(
                (7, 1),
                (15, 16),
                Committed,
                &[1],
                &[(0, Some((5, 1))), (1, Some((7, 1)))],
            )
            .analyze();
        assert_eq!(found, Anomalies::default(), "{:#?}", found.examples);
    }

    #[test]
    fn read_your_writes_violation() {
        let found = Builder::seeded(2)
            .txn((1, 1), (2, 3), Committed, &[0], &[])
            .txn((2, 1), (2, 4), Committed, &[0], &[(0, Some((1, 1)))])
            .txn((3, 1), (2, 4), Committed, &[1], &[(1, None)])
            .analyze();
        assert_eq!(found.read_your_writes, 2, "{:#?}", found.examples);
        assert_eq!(found.total(), 2);
    }

    #[test]
    fn dirty_reads_of_aborted_and_failed_writers() {
        let found = Builder::seeded(2)
            .txn((1, 1), (2, 3), Aborted, &[0], &[])
            .txn((1, 2), (4, 5), Failed, &[1], &[])
            .txn((2, 1), (6, 7), Committed, &[], &[(0, Some((1, 1)))])
            .txn((3, 1), (6, 7), Committed, &[], &[(1, Some((1, 2)))])
            // Reading its own write in a transaction it then aborts is fine.
            .txn((4, 1), (6, 7), Aborted, &[1], &[(1, Some((4, 1)))])
            .analyze();
        assert_eq!(found.dirty_reads, 2, "{:#?}", found.examples);
        assert_eq!(found.fractured_reads, 0);
        assert_eq!(found.total(), 2);
    }

    #[test]
    fn lost_acknowledged_writes() {
        let found = Builder::seeded(4)
            .txn((1, 1), (2, 3), Committed, &[0, 1], &[])
            .txn((2, 1), (4, 5), Committed, &[0, 1], &[])
            // Overlaps t2-1: either may win k2.
            .txn((3, 1), (2, 5), Committed, &[2], &[])
            .txn((4, 1), (3, 6), Committed, &[2], &[])
            .final_state(&[
                (0, Some((1, 1))), // lost t2-1's write
                (1, Some((2, 1))),
                (2, Some((3, 1))),
                (3, None), // lost the seed's write
            ])
            .analyze();
        assert_eq!(found.lost_writes, 2, "{:#?}", found.examples);
        assert_eq!(found.total(), 2);
    }

    #[test]
    fn unexplained_values() {
        let mut b = Builder::seeded(2).txn((1, 1), (2, 3), Committed, &[0], &[]);
        // t1-1's value, but read from the wrong key; and bytes nobody wrote.
        b.history.txns.push(TxnRecord {
            id: TxnId { client: 2, seq: 1 },
            start: ms(4),
            end: ms(5),
            ops: vec![
                Op::Read {
                    key: 1,
                    value: Some(val(TxnId { client: 1, seq: 1 })),
                },
                Op::Read {
                    key: 0,
                    value: Some(Bytes::from_static(b"garbage")),
                },
            ],
            outcome: Committed,
        });
        let found = b
            .final_state(&[(0, Some((9, 9))), (1, Some((0, 1)))])
            .analyze();
        assert_eq!(found.unexplained_values, 2, "{:#?}", found.examples);
        assert_eq!(found.total(), 2);
    }

    #[test]
    fn examples_are_capped_per_kind() {
        let mut b = Builder::seeded(1).txn((1, 1), (2, 3), Aborted, &[0], &[]);
        for seq in 0..10 {
            b = b.txn((2, seq), (4, 5), Committed, &[], &[(0, Some((1, 1)))]);
        }
        let found = b.analyze();
        assert_eq!(found.dirty_reads, 10);
        assert_eq!(found.examples.len(), 3);
    }

    #[test]
    fn values_name_their_writer_and_write_set() {
        let v = value_for("ab12", TxnId { client: 3, seq: 17 }, &[3, 17], 32);
        assert_eq!(&v[..], b"t3-17@ab12|k3,k17|..............");
        let long = value_for("ab12", TxnId { client: 3, seq: 17 }, &[3, 17], 4);
        assert_eq!(&long[..], b"t3-17@ab12|k3,k17|");
    }
}
