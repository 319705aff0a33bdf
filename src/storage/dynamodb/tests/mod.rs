//! The backend against the DynamoDB emulator: the conformance suite (on both commit paths),
//! then what is particular to DynamoDB, with faults injected under the [`Api`].

mod commit;
mod encoding;
mod fault;
mod log;
mod read;
mod recovery;
mod retry;
mod table;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::api::*;
use super::commit::*;
use super::layout::*;
use super::options::*;
use super::retry::*;
use super::*;
use crate::storage::testkit::conformance::{batch, vkey};
use crate::storage::testkit::dynamodb_emulator::Emulator;
use fault::{Call, FaultApi, NoApi};

/// A store with `limits` on a fresh emulator, which lives as long as the returned handle.
async fn open(limits: Limits) -> (Arc<DynamoDbStorage>, Emulator) {
    let emulator = Emulator::start().await;
    let storage = DynamoDbStorage::connect_with(emulator.options("aft"), limits)
        .await
        .expect("connect");
    (Arc::new(storage), emulator)
}

/// For the conformance macro, whose factory is synchronous.
fn open_blocking(limits: Limits) -> (Arc<DynamoDbStorage>, Emulator) {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(open(limits)))
}

/// Every commit takes the general path, and every payload over 4 KiB is split.
fn tiny() -> Limits {
    Limits {
        txn_max_items: 1,
        txn_max_bytes: TXN_MAX_BYTES,
        chunk_bytes: 4096,
    }
}

crate::storage_conformance_tests!(|| open_blocking(Limits::default()));

mod general_path {
    use super::{open_blocking, tiny};

    crate::storage_conformance_tests!(|| open_blocking(tiny()));
}

/// A store whose requests go through a [`FaultApi`], on the same table as `storage`.
fn faulty(
    storage: &DynamoDbStorage,
    limits: Limits,
    attempts: u32,
) -> (DynamoDbStorage, Arc<FaultApi>) {
    let faults = FaultApi::new(storage.api.clone());
    let mut store = DynamoDbStorage::with_api(
        faults.clone(),
        &storage.table,
        limits,
        attempts,
        Duration::from_secs(3600),
    );
    store.log_shards = storage.log_shards;
    (store, faults)
}

fn big_batch(id: VersionId, keys: usize, idempotency_key: Option<&[u8]>) -> CommitBatch {
    let values: Vec<(Vec<u8>, Vec<u8>)> = (0..keys)
        .map(|i| {
            (
                format!("key-{i}").into_bytes(),
                format!("value-{i}-{id:?}").into_bytes(),
            )
        })
        .collect();
    let pairs: Vec<(&[u8], &[u8])> = values.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    batch(id, idempotency_key, &pairs)
}

async fn read_all(s: &dyn Storage, id: VersionId, keys: usize) -> Vec<Option<Bytes>> {
    s.get_versions(
        (0..keys)
            .map(|i| vkey(format!("key-{i}").as_bytes(), id))
            .collect(),
    )
    .await
    .expect("get_versions")
}

async fn markers(s: &DynamoDbStorage) -> usize {
    s.query_all(MARKER_PK.to_vec(), None, None, None, usize::MAX)
        .await
        .expect("query markers")
        .len()
}
