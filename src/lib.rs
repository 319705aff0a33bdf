//! aft: a RESP proxy that makes every Redis client transaction read atomic and durable.
//!
//! # Layout
//!
//! A request flows down the layers, each using only those below it:
//!
//! | module | what it holds |
//! |---|---|
//! | [`server`] | the listener and each connection's loop: read, run a batch, one write |
//! | [`resp`] | the protocol: request parser, reply encoder (RESP2 and RESP3) |
//! | [`session`] | one connection's state machine (normal, MULTI, interactive), pipeline groups, the one map from errors to replies |
//! | [`cmd`] | every command, typed, one module per family, with its format |
//! | [`node`] | the state a process shares (engine, open transactions, config, counters), and opening it from a [`config::Config`] |
//! | [`txn`] | the protocol core: engine, transactions, the one runner, commit, version index, garbage collection, interactive transactions |
//! | [`storage`] | the storage contract and its backends (memory, embedded, Redis, DynamoDB), the test kit |
//! | [`config`] | every setting, once: TOML keys, flags, environment variables, defaults |
//! | [`process`] | the operating system: open-file limit, resident memory |
//! | [`check`] | `aft check`, a checker of read atomicity for any RESP endpoint |
//!
//! The protocol is described in `docs/protocol.md`.

#![warn(missing_docs)]

pub mod check;
pub mod cmd;
pub mod config;
pub mod node;
pub mod process;
pub mod resp;
pub mod server;
pub mod session;
pub mod storage;
pub mod txn;

pub use server::serve;
