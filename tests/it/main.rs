//! Integration tests: a real `aft` server on a loopback port, real clients, real sockets.
//!
//! One test binary (faster to build); each module covers one area.

mod check;
mod client;
mod core_props;
mod crash;
mod differential;
mod dynamodb;
mod faults;
mod gc;
mod harness;
mod interactive;
mod isolation;
mod nodes;
mod ops;
mod recovery;
mod redis_backend;
mod wire;
