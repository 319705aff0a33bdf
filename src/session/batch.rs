//! Pipelined batches: the requests a connection read at once, run in order, their data
//! commands grouped into transactions ("group commit" of a pipeline).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::{apply, txn_error_reply, Mode, Session};
use crate::cmd::table::Id;
use crate::cmd::util::err;
use crate::cmd::{self, Command};
use crate::txn::run::Runner;
use crate::txn::TxnError;

/// Most pipelined data commands run as one transaction.
const MAX_GROUP: usize = 256;

impl Session {
    /// Runs requests from the front of a pipelined batch, appending their replies to `out`
    /// in order, until the batch is empty or `out` holds at least `flush_at` bytes: the
    /// caller then writes what is pending and calls again, so that a pipeline of large
    /// replies is written as it goes instead of piling up in memory.
    ///
    /// Consecutive data commands outside MULTI and interactive transactions are run as
    /// one transaction with one commit: each still gets its own reply, errors included, and
    /// the result is the same as running them one after the other with no other commit in
    /// between: reads that follow the group's first write are validated at commit. It saves
    /// a backend round trip per write. Stops early after QUIT or SHUTDOWN.
    pub async fn handle_batch(
        &mut self,
        requests: &mut VecDeque<Vec<Bytes>>,
        out: &mut BytesMut,
        flush_at: usize,
    ) {
        while out.len() < flush_at && !self.client.closing {
            if !self.group.is_empty() {
                self.run_group(out, flush_at).await;
                continue;
            }
            let Some(args) = requests.pop_front() else {
                return;
            };
            let Some(spec) = self.groupable(&args) else {
                self.handle(args, out).await;
                continue;
            };
            match cmd::parse_known(spec, args) {
                command @ Command::Data(_) => {
                    self.group.push_back(command);
                    // The group goes on with the data commands that follow.
                    while self.group.len() < MAX_GROUP {
                        let Some(spec) = requests
                            .front()
                            .and_then(|next| self.groupable(next))
                            .filter(|spec| spec.is_data())
                        else {
                            break;
                        };
                        let Some(next) = requests.pop_front() else {
                            break;
                        };
                        self.group.push_back(cmd::parse_known(spec, next));
                    }
                }
                command => {
                    self.node.commands.fetch_add(1, Ordering::Relaxed);
                    let reply = self.execute(spec, command).await;
                    self.reply(reply, out);
                }
            }
        }
    }

    /// Whether commands of a pipelined group are still to run (the output limit stopped
    /// [`Session::handle_batch`] before them): call it again once the output is written.
    pub fn has_pending(&self) -> bool {
        !self.group.is_empty()
    }

    /// The spec of `args` if it is a well-formed command in normal mode, which a pipeline
    /// group may take (if it is a data command) or run between groups.
    fn groupable(&self, args: &[Bytes]) -> Option<&'static cmd::CommandSpec> {
        if !matches!(self.mode, Mode::Normal) || !self.client.authenticated {
            return None;
        }
        let spec = args.first().and_then(|n| cmd::lookup(n))?;
        (spec.arity_ok(args.len()) && !matches!(spec.id, Id::Exec | Id::Discard)).then_some(spec)
    }

    /// Runs data commands from the front of the pending group as one transaction and
    /// appends their replies; see [`Session::handle_batch`].
    ///
    /// The group is "as if one by one": reads before its first write see the snapshot
    /// (pinned at the first read), and every read after a write is validated at commit
    /// ([`crate::txn::Txn::validate_reads_after_writes`]), so the group's writes and the reads that
    /// follow them take effect together at commit. A losing group is re-run (its client
    /// saw nothing). The transaction ends early — leaving the rest pending — before a
    /// keyspace-wide read (KEYS, SCAN, RANDOMKEY, DBSIZE) that follows a write (it cannot be
    /// validated key by key), and once `out` holds `flush_at` bytes.
    async fn run_group(&mut self, out: &mut BytesMut, flush_at: usize) {
        let mut group = std::mem::take(&mut self.group);
        if let [Command::Data(single)] = group.make_contiguous() {
            self.node.commands.fetch_add(1, Ordering::Relaxed);
            let reply = self.autocommit(single).await;
            self.reply(reply, out);
            return;
        }
        let protocol = self.client.protocol;
        // The group's replies go straight into `out`, from here; an attempt that must run
        // again takes its replies back.
        let start = out.len();
        let mut ran = 0;
        let mut runner = Runner::new(&self.node.engine, None);
        let result = loop {
            let mut txn = match runner.begin().await {
                Ok(txn) => txn,
                Err(e) => break Err(e),
            };
            txn.validate_reads_after_writes();
            ran = 0;
            out.truncate(start);
            let body = async {
                let keys = group.iter().flat_map(|c| match c {
                    Command::Data(d) => d.value_keys(),
                    _ => &[],
                });
                txn.prefetch(keys).await?;
                for command in group.iter() {
                    if ran > 0 && out.len() >= flush_at {
                        break;
                    }
                    let reply = match command {
                        Command::Data(c) => {
                            if ran > 0 && c.reads_keyspace() && txn.has_writes() {
                                break;
                            }
                            apply(c, &mut txn).await?
                        }
                        Command::Invalid(reply) => reply.clone(),
                        // `handle_batch` runs these itself, between groups.
                        _ => err("ERR internal error: not a data command"),
                    };
                    reply.encode(protocol, out);
                    ran += 1;
                }
                Ok::<_, TxnError>(())
            }
            .await;
            if let Some(outcome) = runner.finish(txn, body).await {
                break outcome;
            }
        };
        if let Err(e) = result {
            // Every command of the failed attempt gets the error; the rest run next.
            ran = ran.clamp(1, group.len());
            out.truncate(start);
            let reply = txn_error_reply(&e);
            for _ in 0..ran {
                reply.encode(protocol, out);
            }
        }
        self.node.commands.fetch_add(ran as u64, Ordering::Relaxed);
        group.drain(..ran);
        self.group = group;
    }
}
