//! A connection attached to an interactive transaction that another node runs: its commands
//! go to that node over a client connection of this one, and the replies come back, until
//! the transaction ends or the connection detaches (protocol.md §6; serverless platforms
//! route each invocation of a workflow to any node behind a load balancer).
//!
//! The forwarded connection speaks RESP2; its replies are turned back into this node's
//! replies, encoded in the client's own protocol. The transaction keeps every guarantee it
//! has on its node (read-your-writes, repeatable reads, read atomicity): it runs there.

use std::time::Duration;

use bytes::Bytes;

use crate::check::client::{self, Connection};
use crate::resp::Reply;
use crate::storage::TxnId;

/// Longest wait for a reply of the node that runs the transaction (a commit included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A client connection to the node that runs an attached transaction.
pub(super) struct Forward {
    conn: Connection,
    /// The transaction.
    pub(super) txid: TxnId,
    /// The node's address.
    pub(super) addr: String,
}

impl Forward {
    /// Connects to `addr` (authenticating with `password`, which every node shares) and
    /// attaches to `txid` there. The error is the reply to give the client.
    pub(super) async fn attach(
        addr: &str,
        password: Option<&str>,
        txid: TxnId,
    ) -> Result<Forward, Reply> {
        let unreachable = |e: client::ClientError| {
            Reply::Error(
                format!(
                    "ERR transaction {txid} runs on the node at {addr}, which cannot be reached: {e}"
                )
                .into(),
            )
        };
        let mut conn = Connection::connect(addr, REPLY_TIMEOUT)
            .await
            .map_err(unreachable)?;
        if let Some(password) = password {
            let reply = conn
                .call(&[b"AUTH", password.as_bytes()])
                .await
                .map_err(unreachable)?;
            if !reply.is_ok() {
                return Err(from_remote(reply));
            }
        }
        let id = txid.to_string();
        let reply = conn
            .call(&[b"AFT.ATTACH", id.as_bytes()])
            .await
            .map_err(unreachable)?;
        if !reply.is_ok() {
            return Err(from_remote(reply));
        }
        Ok(Forward {
            conn,
            txid,
            addr: addr.to_string(),
        })
    }

    /// Runs one command on the transaction's node; `Err` if the connection broke.
    pub(super) async fn call(&mut self, args: &[Bytes]) -> Result<Reply, client::ClientError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
        self.conn.call(&args).await.map(from_remote)
    }

    /// One command on the node at `addr`, on a connection of its own (AFT.STATUS of a
    /// transaction another node runs).
    pub(super) async fn once(
        addr: &str,
        password: Option<&str>,
        args: &[&[u8]],
    ) -> Result<Reply, client::ClientError> {
        let mut conn = Connection::connect(addr, REPLY_TIMEOUT).await?;
        if let Some(password) = password {
            conn.call(&[b"AUTH", password.as_bytes()]).await?;
        }
        conn.call(args).await.map(from_remote)
    }
}

/// A RESP2 reply of another node as this node's reply.
fn from_remote(reply: client::Reply) -> Reply {
    match reply {
        client::Reply::Status(s) => Reply::StatusOwned(s),
        client::Reply::Error(e) => Reply::ErrorBytes(e),
        client::Reply::Integer(n) => Reply::Integer(n),
        client::Reply::Bulk(Some(b)) => Reply::Bulk(b),
        client::Reply::Bulk(None) => Reply::Nil,
        client::Reply::Array(Some(items)) => {
            Reply::Array(items.into_iter().map(from_remote).collect())
        }
        client::Reply::Array(None) => Reply::NilArray,
    }
}
