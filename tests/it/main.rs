//! Integration tests: a real `aft` server on a loopback port, real clients, real sockets.
//!
//! One test binary (faster to build); each module covers one area.

mod harness;
mod differential;
mod wire;
mod core_props;
