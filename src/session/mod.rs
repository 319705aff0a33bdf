//! One client connection's state, and where each request goes.
//!
//! A session is in one mode: normal (each data command is its own transaction, or part of
//! its pipeline's group), MULTI (commands are queued and run at EXEC as one transaction), or
//! attached to an interactive transaction (data commands run inside it). It also holds the
//! connection's [`Client`] state (protocol, name, authentication) and its WATCHed keys.
//!
//! [`Session::handle`] takes one request and appends its reply to an output buffer, and
//! [`Session::handle_batch`] a pipelined batch (pipeline groups); neither writes to the socket,
//! so a batch is answered with one write, and both are testable without sockets. Every
//! failure of a transaction becomes a reply in one place, [`error`].

mod batch;
pub mod error;
mod forward;
mod interactive;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::cmd::connection::{client_command, Client, ConnectionCmd};
use crate::cmd::table::{CommandSpec, Id};
use crate::cmd::transaction::TxnCmd;
use crate::cmd::util::err;
use crate::cmd::{self, Command, DataCmd, ParseError};
use crate::node::Node;
use crate::resp::{Protocol, Reply};
use crate::txn::open::{Holder, OpenTxn};
use crate::txn::run::Runner;
use crate::txn::{Txn, TxnError, Watches};
use error::txn_error_reply;

/// What the connection is doing.
enum Mode {
    /// Each data command is its own transaction (or its pipeline group's).
    Normal,
    /// Between MULTI and EXEC: commands are queued.
    Multi(Multi),
    /// Attached to an interactive transaction: data commands run inside it.
    Interactive(Arc<OpenTxn>),
    /// Attached to an interactive transaction another node runs: commands go there.
    Forwarded(Box<forward::Forward>),
}

/// A MULTI block being queued.
struct Multi {
    queue: Vec<Command>,
    /// A queue-time error happened: EXEC must abort.
    dirty: bool,
}

/// One client connection's state.
pub struct Session {
    node: Arc<Node>,
    client: Client,
    mode: Mode,
    watches: Watches,
    /// What this connection holds open (bounds the interactive transactions it may begin).
    holder: Arc<Holder>,
    /// Data commands of a pipelined batch still to run as one transaction.
    group: VecDeque<Command>,
}

impl Session {
    /// A new session on `node` for a client connected from `peer`.
    pub fn new(node: Arc<Node>, peer: String) -> Self {
        let id = node.next_client_id.fetch_add(1, Ordering::Relaxed);
        let client = Client::new(id, peer, node.listen_addr.clone(), &node.config);
        Session {
            watches: node.engine.watches(),
            node,
            client,
            mode: Mode::Normal,
            holder: Holder::new(),
            group: VecDeque::new(),
        }
    }

    /// Whether the connection must be closed once the replies so far are written (QUIT,
    /// SHUTDOWN).
    pub fn should_close(&self) -> bool {
        self.client.closing
    }

    /// Whether the client has authenticated (always true without `requirepass`).
    pub fn is_authenticated(&self) -> bool {
        self.client.authenticated
    }

    /// The protocol replies are encoded in.
    pub fn protocol(&self) -> Protocol {
        self.client.protocol
    }

    /// Runs one request and appends its reply to `out`.
    pub async fn handle(&mut self, args: Vec<Bytes>, out: &mut BytesMut) {
        self.node.commands.fetch_add(1, Ordering::Relaxed);
        let reply = self.dispatch(args).await;
        self.reply(reply, out);
    }

    fn reply(&self, reply: Reply, out: &mut BytesMut) {
        if !self.client.silent {
            reply.encode(self.client.protocol, out);
        }
    }

    async fn dispatch(&mut self, args: Vec<Bytes>) -> Reply {
        let Some(spec) = args.first().and_then(|n| cmd::lookup(n)) else {
            let e = ParseError::Unknown(cmd::unknown_command_message(&args));
            return self.queue_error(e);
        };
        if !spec.arity_ok(args.len()) {
            if spec.id == Id::Exec {
                // Redis rejects a malformed EXEC by aborting the transaction (in MULTI or
                // not). An attached AFT transaction is not a MULTI block: it stays attached.
                if matches!(self.mode, Mode::Multi(_)) {
                    self.mode = Mode::Normal;
                }
                self.watches.clear();
                return err("EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command");
            }
            return self.queue_error(ParseError::Arity(spec.name));
        }
        if !self.client.authenticated
            && !matches!(spec.id, Id::Auth | Id::Hello | Id::Quit | Id::Reset)
        {
            return err("NOAUTH Authentication required.");
        }
        if spec.no_multi() && matches!(self.mode, Mode::Multi(_)) {
            return self.queue_error(ParseError::NotInMulti);
        }
        if matches!(self.mode, Mode::Forwarded(_))
            && !matches!(
                spec.id,
                Id::Auth | Id::Hello | Id::Quit | Id::Reset | Id::Client
            )
        {
            return self.forward(spec, args).await;
        }
        let command = cmd::parse_known(spec, args);
        self.execute(spec, command).await
    }

    /// Runs a parsed, well-formed command in the current mode.
    async fn execute(&mut self, spec: &CommandSpec, command: Command) -> Reply {
        if let Mode::Multi(multi) = &mut self.mode {
            match &command {
                Command::Txn(TxnCmd::Exec) => return self.exec().await,
                Command::Txn(TxnCmd::Discard) => {
                    self.mode = Mode::Normal;
                    self.watches.clear();
                    return Reply::ok();
                }
                Command::Txn(TxnCmd::Multi) => return err("ERR MULTI calls can not be nested"),
                Command::Txn(TxnCmd::Watch(_)) => {
                    return err("ERR WATCH inside MULTI is not allowed")
                }
                Command::Txn(
                    TxnCmd::Begin { .. }
                    | TxnCmd::Commit
                    | TxnCmd::Abort
                    | TxnCmd::Attach(_)
                    | TxnCmd::Detach,
                ) => {
                    return err(format!(
                        "ERR {} inside MULTI is not allowed",
                        spec.name.to_ascii_uppercase()
                    ))
                }
                Command::Connection(ConnectionCmd::Quit | ConnectionCmd::Reset) => {}
                _ => {
                    multi.queue.push(command);
                    return Reply::Status("QUEUED");
                }
            }
        }
        if let Mode::Interactive(open) = &self.mode {
            let open = open.clone();
            match &command {
                Command::Txn(TxnCmd::Multi) => {
                    return err("ERR MULTI inside an AFT transaction is not allowed; AFT.COMMIT or AFT.ABORT it first")
                }
                Command::Txn(TxnCmd::Watch(_)) => {
                    return err("ERR WATCH inside an AFT transaction is not allowed")
                }
                Command::Txn(TxnCmd::Begin { .. } | TxnCmd::Attach(_)) => {
                    return err(format!(
                        "ERR already in transaction {}; AFT.COMMIT, AFT.ABORT or AFT.DETACH it first",
                        open.id()
                    ))
                }
                Command::Data(c) => return self.interactive_data(&open, c).await,
                _ => {}
            }
        }
        match command {
            Command::Data(c) => self.autocommit(&c).await,
            Command::Connection(c) => self.connection(c).await,
            Command::Server(c) => c.apply(&self.node, &mut self.client),
            Command::Txn(c) => self.transaction(c).await,
            Command::Invalid(reply) => reply,
        }
    }

    /// Runs a command of a connection attached to another node's transaction there. The
    /// transaction's end (AFT.COMMIT, AFT.ABORT, AFT.DETACH), or a broken connection to that
    /// node, detaches this connection.
    async fn forward(&mut self, spec: &CommandSpec, args: Vec<Bytes>) -> Reply {
        let Mode::Forwarded(remote) = &mut self.mode else {
            return err("ERR internal error: not attached to another node's transaction");
        };
        let ends = matches!(spec.id, Id::AftCommit | Id::AftAbort | Id::AftDetach);
        match remote.call(&args).await {
            Ok(reply) => {
                if ends {
                    self.mode = Mode::Normal;
                }
                reply
            }
            Err(e) => {
                let (txid, addr) = (remote.txid, remote.addr.clone());
                self.mode = Mode::Normal;
                if spec.id == Id::AftCommit {
                    err(format!(
                        "ERR commit outcome unknown: the connection to the node running transaction {txid} ({addr}) broke: {e}; AFT.STATUS {txid} tells"
                    ))
                } else {
                    err(format!(
                        "ERR the connection to the node running transaction {txid} ({addr}) broke: {e}; this connection is detached (AFT.ATTACH it again, or AFT.STATUS it)"
                    ))
                }
            }
        }
    }

    /// A queue-time error: inside MULTI it also marks the transaction for EXECABORT.
    fn queue_error(&mut self, e: ParseError) -> Reply {
        if let Mode::Multi(m) = &mut self.mode {
            m.dirty = true;
        }
        e.reply()
    }

    /// Commands queued in MULTI, if in MULTI (CLIENT INFO/LIST show it).
    fn queued(&self) -> Option<usize> {
        match &self.mode {
            Mode::Multi(m) => Some(m.queue.len()),
            _ => None,
        }
    }

    async fn connection(&mut self, command: ConnectionCmd) -> Reply {
        match &command {
            ConnectionCmd::Reset => {
                // An interactive transaction stays open for others: RESET only detaches.
                self.leave_interactive();
                if let Mode::Forwarded(remote) = &mut self.mode {
                    // Best effort: the other node detaches it when this connection goes.
                    let _ = remote.call(&[Bytes::from_static(b"AFT.DETACH")]).await;
                }
                self.mode = Mode::Normal;
                self.watches.clear();
            }
            ConnectionCmd::Client(args) => {
                let queued = self.queued();
                return client_command(&mut self.client, args, queued);
            }
            _ => {}
        }
        command.apply(&mut self.client, &self.node.config)
    }

    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH and AFT.* outside MULTI.
    async fn transaction(&mut self, command: TxnCmd) -> Reply {
        match command {
            TxnCmd::Multi => {
                self.mode = Mode::Multi(Multi {
                    queue: Vec::new(),
                    dirty: false,
                });
                Reply::ok()
            }
            TxnCmd::Exec => err("ERR EXEC without MULTI"),
            TxnCmd::Discard => err("ERR DISCARD without MULTI"),
            TxnCmd::Watch(keys) => {
                // What is watched is the latest version anywhere (a commit acknowledged by
                // another node before the WATCH is not a change after it).
                if let Err(e) = self.node.engine.fresh().await {
                    return txn_error_reply(&e);
                }
                for key in &keys {
                    self.watches.watch(key);
                }
                Reply::ok()
            }
            TxnCmd::Unwatch => {
                self.watches.clear();
                Reply::ok()
            }
            TxnCmd::Idempotent(_) => err("ERR AFT.IDEMPOTENT is only valid inside MULTI"),
            other => self.interactive_command(other).await,
        }
    }

    /// Runs a data command as its own transaction, re-run after write conflicts (the client
    /// has seen nothing of a failed attempt).
    async fn autocommit(&mut self, command: &DataCmd) -> Reply {
        let mut runner = Runner::new(&self.node.engine, None);
        let outcome = loop {
            let mut txn = match runner.begin().await {
                Ok(txn) => txn,
                Err(e) => break Err(e),
            };
            let body = async {
                if !command.value_keys().is_empty() {
                    txn.prefetch(command.value_keys()).await?;
                }
                apply(command, &mut txn).await
            }
            .await;
            if let Some(outcome) = runner.finish(txn, body).await {
                break outcome;
            }
        };
        outcome.unwrap_or_else(|e| txn_error_reply(&e))
    }

    async fn exec(&mut self) -> Reply {
        let Mode::Multi(multi) = std::mem::replace(&mut self.mode, Mode::Normal) else {
            return err("ERR EXEC without MULTI");
        };
        // Released (unwatched) when this EXEC is over, whatever its outcome.
        let watches = std::mem::replace(&mut self.watches, self.node.engine.watches());
        if multi.dirty {
            return err("EXECABORT Transaction discarded because of previous errors.");
        }
        let mut runner = Runner::new(&self.node.engine, Some(&watches));
        let ran = loop {
            let mut txn = match runner.begin().await {
                Ok(txn) => txn,
                Err(e) => break Err(e),
            };
            let body = self.exec_once(&multi.queue, &mut txn).await;
            if let Some(outcome) = runner.finish(txn, body).await {
                break outcome;
            }
        };
        let mut replies = match ran {
            Ok(replies) => replies,
            Err(e) => return txn_error_reply(&e),
        };
        // Connection and server commands act once, and only if the transaction committed
        // (as in Redis, where an aborted EXEC runs none of its commands).
        for (command, reply) in multi.queue.iter().zip(&mut replies) {
            match command {
                Command::Connection(c) => *reply = self.connection(c.clone()).await,
                Command::Server(c) => *reply = c.apply(&self.node, &mut self.client),
                _ => {}
            }
        }
        Reply::Array(replies)
    }
}

impl Session {
    /// Runs the data commands queued in a MULTI block in `txn` (it may run again after a
    /// conflict); their replies, in queue order, with a placeholder for each connection or
    /// server command, which [`Session::exec`] runs once the transaction committed.
    async fn exec_once(&self, queue: &[Command], txn: &mut Txn) -> Result<Vec<Reply>, TxnError> {
        let keys = queue.iter().flat_map(|c| match c {
            Command::Data(d) => d.value_keys(),
            _ => &[],
        });
        txn.prefetch(keys).await?;
        let mut replies = Vec::with_capacity(queue.len());
        for command in queue {
            replies.push(match command {
                Command::Data(c) => apply(c, txn).await?,
                Command::Connection(_) | Command::Server(_) => Reply::Nil,
                Command::Txn(TxnCmd::Unwatch) => Reply::ok(),
                Command::Txn(TxnCmd::Idempotent(key)) => {
                    txn.set_idempotency_key(key.clone());
                    Reply::ok()
                }
                Command::Txn(TxnCmd::Status(arg)) => self.status(arg).await,
                // Refused when queued.
                Command::Txn(_) => err("ERR internal error: not allowed inside MULTI"),
                Command::Invalid(reply) => reply.clone(),
            });
        }
        Ok(replies)
    }
}

impl Drop for Session {
    /// A closed connection detaches from its interactive transaction (which stays open
    /// until its timeout, for another connection to attach).
    fn drop(&mut self) {
        self.leave_interactive();
    }
}

/// Runs a data command in `txn`; the reply stands only if the snapshot it read was not
/// revoked meanwhile.
async fn apply(command: &DataCmd, txn: &mut Txn) -> Result<Reply, TxnError> {
    let reply = command.apply(txn).await?;
    txn.check_snapshot()?;
    Ok(reply)
}
