//! aft: a RESP proxy that makes every Redis client transaction read atomic and durable.
//!
//! Data flows top to bottom: [`server`] (sockets, RESP parsing) → [`session`] (connection
//! state, MULTI/EXEC) → [`cmd`] (commands as functions of a transaction) → [`txn`] (the
//! protocol core) → [`storage`] (backends behind one contract).

#![warn(missing_docs)]

pub mod check;
pub mod cmd;
pub mod config;
pub mod reply;
pub mod server;
pub mod session;
pub mod storage;
pub mod txn;
