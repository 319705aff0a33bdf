//! Interactive transactions in a session: AFT.BEGIN, AFT.COMMIT, AFT.ABORT, AFT.ATTACH,
//! AFT.DETACH, AFT.STATUS, and data commands run inside the attached transaction.

use std::sync::Arc;

use bytes::Bytes;

use super::error::{open_error_reply, txn_error_reply};
use super::forward::Forward;
use super::{apply, Mode, Session};
use crate::cmd::transaction::TxnCmd;
use crate::cmd::util::err;
use crate::cmd::DataCmd;
use crate::resp::Reply;
use crate::txn::open::{parse_txid, OpenError, OpenTxn, Slot, Status};
use crate::txn::Owner;
use crate::txn::TxnError;

impl Session {
    /// Leaves the attached interactive transaction, if any (it stays open for others).
    pub(super) fn leave_interactive(&mut self) -> Option<Arc<OpenTxn>> {
        let Mode::Interactive(open) = std::mem::replace(&mut self.mode, Mode::Normal) else {
            return None;
        };
        open.detach();
        Some(open)
    }

    /// Runs a data command inside the attached interactive transaction: reads return at
    /// once, writes are buffered until AFT.COMMIT.
    pub(super) async fn interactive_data(
        &mut self,
        open: &Arc<OpenTxn>,
        command: &DataCmd,
    ) -> Reply {
        let registry = self.node.open_txns.clone();
        let mut slot = open.lock().await;
        if let Some(ended) = ended_reply(open, &slot, "") {
            self.leave_interactive();
            return ended;
        }
        let Some(txn) = slot.txn.as_mut() else {
            return err("ERR internal error: transaction without a buffer");
        };
        open.touch();
        txn.touch_clock();
        let result = async {
            if !command.value_keys().is_empty() {
                txn.prefetch(command.value_keys()).await?;
            }
            apply(command, txn).await
        }
        .await;
        match result {
            Ok(reply) => match registry.account(open, &mut slot) {
                Ok(()) => reply,
                Err(e) => {
                    self.leave_interactive();
                    open_error_reply(&e)
                }
            },
            Err(e @ TxnError::SnapshotTooOld(_)) => {
                // What it read may be gone: it cannot go on.
                registry.abort(open, &mut slot);
                self.leave_interactive();
                txn_error_reply(&e)
            }
            Err(e) => txn_error_reply(&e),
        }
    }

    /// AFT.BEGIN, AFT.COMMIT, AFT.ABORT, AFT.ATTACH, AFT.DETACH, AFT.STATUS.
    pub(super) async fn interactive_command(&mut self, command: TxnCmd) -> Reply {
        let registry = self.node.open_txns.clone();
        match command {
            TxnCmd::Begin {
                idempotency_key,
                timeout,
            } => match registry
                .begin(idempotency_key, timeout, &self.holder, &self.client.user)
                .await
            {
                Ok(open) => {
                    let id = open.id();
                    self.mode = Mode::Interactive(open);
                    Reply::Bulk(Bytes::from(id.to_string()))
                }
                Err(e) => open_error_reply(&e),
            },
            TxnCmd::Commit => {
                // The session leaves the transaction whatever the outcome.
                let Some(open) = self.leave_interactive() else {
                    return err("ERR AFT.COMMIT without AFT.BEGIN");
                };
                let mut slot = open.lock().await;
                if let Some(ended) = ended_reply(&open, &slot, "") {
                    return ended;
                }
                match registry.commit(&open, &mut slot).await {
                    Ok(_) => Reply::ok(),
                    Err(e) => txn_error_reply(&e),
                }
            }
            TxnCmd::Abort => {
                // One that already ended keeps its outcome, and the reply says which.
                let Some(open) = self.leave_interactive() else {
                    return err("ERR AFT.ABORT without AFT.BEGIN");
                };
                let mut slot = open.lock().await;
                if let Some(ended) = ended_reply(&open, &slot, "; nothing was aborted") {
                    return ended;
                }
                registry.abort(&open, &mut slot);
                Reply::ok()
            }
            TxnCmd::Attach(txid) => match registry.attach(&txid, &self.client.user) {
                Ok(open) => {
                    self.mode = Mode::Interactive(open);
                    Reply::ok()
                }
                Err(e @ OpenError::UnknownTxn(_)) => self.attach_elsewhere(&txid, e).await,
                Err(e) => open_error_reply(&e),
            },
            TxnCmd::Detach => match self.leave_interactive() {
                Some(open) => {
                    open.touch();
                    Reply::ok()
                }
                None => err("ERR AFT.DETACH without a transaction"),
            },
            TxnCmd::Status(arg) => self.status(&arg).await,
            // The session runs the others itself.
            _ => err("ERR internal error: not an interactive transaction command"),
        }
    }
}

impl Session {
    /// AFT.ATTACH of a transaction this node does not run: on a shared backend, the node
    /// that runs it (named by its id) takes this connection's commands until it ends; if
    /// that node is gone, so is the transaction.
    async fn attach_elsewhere(&mut self, txid: &Bytes, unknown: OpenError) -> Reply {
        let Some(id) = parse_txid(txid) else {
            return open_error_reply(&unknown);
        };
        match self.node.engine.owner_of(id) {
            Owner::Here | Owner::Unknown => open_error_reply(&unknown),
            Owner::Gone => err(format!(
                "ERR transaction {id} was aborted: the node that ran it is gone; nothing of it was committed"
            )),
            Owner::Node(addr) => match Forward::attach(&addr, self.password(), id).await {
                Ok(remote) => {
                    self.mode = Mode::Forwarded(Box::new(remote));
                    Reply::ok()
                }
                Err(reply) => reply,
            },
        }
    }

    /// The password every node of a shared backend requires, if any.
    fn password(&self) -> Option<&str> {
        self.node.config.requirepass.as_ref().map(|s| s.expose())
    }

    /// AFT.STATUS: `running`, `committed`, `aborted` or `unknown`. A transaction this node
    /// knows nothing of may run on another node (asked, then), or have died with one.
    pub(super) async fn status(&self, arg: &Bytes) -> Reply {
        let local = match self.node.open_txns.status(arg).await {
            Ok(status) => status,
            Err(e) => return err(format!("ERR {e}")),
        };
        let word = |s: &'static str| Reply::Bulk(Bytes::from_static(s.as_bytes()));
        if local != Status::Unknown {
            return word(local.word());
        }
        let Some(id) = parse_txid(arg) else {
            return word(local.word());
        };
        match self.node.engine.owner_of(id) {
            Owner::Here | Owner::Unknown => word(local.word()),
            Owner::Gone => word(Status::Aborted.word()),
            Owner::Node(addr) => {
                match Forward::once(&addr, self.password(), &[b"AFT.STATUS", arg]).await {
                    Ok(reply) => reply,
                    Err(e) => err(format!(
                        "ERR transaction {id} runs on the node at {addr}, which cannot be reached: {e}"
                    )),
                }
            }
        }
    }
}

/// The error for a command on an interactive transaction that already ended (saying how),
/// or `None` while it runs.
fn ended_reply(open: &OpenTxn, slot: &Slot, more: &str) -> Option<Reply> {
    if slot.txn.is_some() {
        return None;
    }
    let word = slot.ended.unwrap_or(Status::Unknown).word();
    Some(err(format!(
        "ERR transaction {} is no longer running ({word}){more}",
        open.id()
    )))
}
