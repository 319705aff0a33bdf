//! The storage test kit (feature `testkit`, on for this crate's own tests): what it takes to
//! test a [`Storage`](super::Storage) implementation and what is built on one.
//!
//! * [`conformance`]: one suite of checks of the storage contract, run against every backend
//!   ([`storage_conformance_tests!`](crate::storage_conformance_tests) expands it into tests);
//! * [`fault`]: a wrapper that injects the failures of real deployments, at random (seeded)
//!   or on demand;
//! * [`redis_server`]: `redis-server` processes (one server, or a 3-master cluster) on free
//!   loopback ports, killed when dropped;
//! * [`dynamodb_emulator`]: a DynamoDB emulator inside the test process.

pub mod conformance;
pub mod dynamodb_emulator;
pub mod fault;
pub mod redis_server;
