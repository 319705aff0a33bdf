//! The protocol core: read-atomic transactions over any [`Storage`](crate::storage::Storage) (protocol.md §4–§7).
//!
//! An [`Engine`] owns a node's commit set (the [`index::Index`] of committed versions), its
//! hybrid logical clock and its storage. A [`Txn`] buffers writes, reads from a snapshot of
//! the commit set pinned at its first read, and commits by writing every version, then the
//! commit record, then publishing the commit to the index — in that order, so that no reader
//! ever sees part of a transaction or anything that is not durable.
//!
//! # Commit outcomes
//!
//! A commit the backend acknowledged is published at once. One that certainly failed leaves
//! nothing visible (its orphan versions are reclaimed). One whose outcome is unknown (the
//! reply was lost: the backend may have applied it) is never forgotten: its keys stay fenced
//! for conflict checks and garbage collection, and a background task settles it by sending
//! the same commit again (commits are idempotent by id, see the storage contract) until the
//! backend answers; the commit is then published, or reclaimed (`txn/resolve.rs`).
//!
//! # Snapshots that grow too old
//!
//! A snapshot holds back garbage collection of every version it can read. A snapshot older
//! than [`EngineConfig::max_snapshot_age`] stops doing so: garbage collection revokes it, and
//! the transaction's next read (or its commit, if it validated reads) fails with
//! [`TxnError::SnapshotTooOld`].
//!
//! The core knows nothing of RESP or of any concrete backend.

/// Declares a struct of `AtomicU64` counters (`Default`, `Debug`, public fields) with
/// `all()`, every counter once: what is reset or reported cannot miss one added later.
macro_rules! counters {
    ($(#[$meta:meta])* pub struct $name:ident { $( $(#[$doc:meta])* $field:ident, )* }) => {
        $(#[$meta])*
        #[derive(Default, Debug)]
        pub struct $name {
            $( $(#[$doc])* pub $field: std::sync::atomic::AtomicU64, )*
        }

        impl $name {
            /// Every counter.
            pub fn all(&self) -> [&std::sync::atomic::AtomicU64; [$(stringify!($field)),*].len()] {
                [$(&self.$field),*]
            }
        }
    };
}

pub mod clock;
mod engine;
mod error;
pub mod gc;
pub mod index;
pub mod open;
pub mod peers;
pub mod record;
mod resolve;
pub mod run;
mod transaction;
mod watch;

pub use engine::{Engine, EngineConfig, Stats};
pub use error::TxnError;
pub use gc::{GcGauges, GcReport};
pub use peers::{Freshness, Owner, PeersConfig, PeersInfo};
pub use record::{Entry, Kind, Value, WriteMeta};
pub use transaction::{KeyMeta, Txn};
pub use watch::{WatchState, Watches};

#[cfg(test)]
mod tests;
