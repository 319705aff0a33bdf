//! Where every record lives in the one table: the attribute names, the partition and sort key
//! of each kind of item (versions, commit records and their directory, idempotency entries,
//! pending markers), the splitting of large payloads into overflow chunks, and the encoding
//! of a pending marker's key list. See the table in the module documentation.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::error::BuildError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, Put, PutRequest, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, WriteRequest,
};
use sha2::{Digest, Sha256};

use super::BACKEND;
use crate::storage::{record, Failure, StorageError, VersionId};

/// Bytes of payload in one item (a head or a chunk): below DynamoDB's 400 KB item limit with
/// room for the keys and attribute names.
pub const CHUNK_BYTES: usize = 350 * 1024;

/// User keys (and idempotency keys) up to this length are stored as they are in `pk`; longer
/// ones are replaced by their SHA-256 (DynamoDB partition keys hold at most 2,048 bytes).
pub const MAX_PLAIN_KEY: usize = 1024;

/// Partitions each commit-record time bucket is spread over.
pub const COMMIT_SHARDS: u8 = 4;

/// A commit record's bucket is its timestamp shifted right by this many bits: with aft's
/// clock (milliseconds << 16) a bucket spans 2^26 ms, about 18.6 hours.
pub(super) const BUCKET_SHIFT: u32 = 42;

/// Partition key (binary).
pub(super) const PK: &str = "pk";
/// Sort key (binary).
pub(super) const SK: &str = "sk";
/// Payload (value, encoded record, key list), or its first part.
pub(super) const VALUE: &str = "v";
/// Number of overflow chunks after the head.
pub(super) const CHUNKS: &str = "n";
/// Idempotency entry: the commit's version id.
pub(super) const ID: &str = "id";
/// Idempotency entry: TTL, seconds since the epoch.
pub(super) const EXPIRES: &str = "exp";
/// Pending marker: start, milliseconds since the epoch.
pub(super) const STARTED: &str = "at";
/// Pending marker: the commit record was written.
pub(super) const DONE: &str = "d";
/// Pending marker: abandoned by clean-up; the commit may no longer complete.
pub(super) const ABANDONED: &str = "ab";
/// Format item: layout version.
pub(super) const FORMAT: &str = "format";

/// The commit directory's partition.
pub(super) const DIRECTORY_PK: &[u8] = b"d";
/// The pending markers' partition.
pub(super) const MARKER_PK: &[u8] = b"p";
/// The format item's partition.
pub(super) const FORMAT_PK: &[u8] = b"m";
/// `pk` of the log heads (`sk` the shard, one byte: shard 0's is [`SINGLE_SK`]): attribute
/// [`LOG_SEQ`].
pub(super) const LOG_HEAD_PK: &[u8] = b"g";
/// `pk` of shard 0's log entries (`sk` the position, u64 BE): attribute [`ID`], the record's
/// id; shard `s`'s are under `pk` this and the byte `s` (see [`log_pk`]).
pub(super) const LOG_PK: &[u8] = b"l";
/// The log head's position of the newest entry.
pub(super) const LOG_SEQ: &str = "s";
/// On a commit record head that claimed a position of shard 0 only: that position.
pub(super) const LOG_POSITION: &str = "lp";
/// On a commit record head that claimed positions of other shards: `shard:position`,
/// space-separated.
pub(super) const LOG_CLAIMS: &str = "lc";
/// On the format item: the number of shards of the log (absent: one).
pub(super) const LOG_SHARDS: &str = "ls";

/// The key of shard `shard`'s log head.
pub(super) fn log_head_key(shard: usize) -> Item {
    key_item(LOG_HEAD_PK.to_vec(), vec![shard as u8])
}

/// The partition of shard `shard`'s log entries.
pub(super) fn log_pk(shard: usize) -> Vec<u8> {
    let mut pk = LOG_PK.to_vec();
    if shard > 0 {
        pk.push(shard as u8);
    }
    pk
}

/// The shard of the log a user key's commits claim a position of, of `shards`.
pub(super) fn log_shard_of(key: &[u8], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    // 64-bit FNV-1a: stable across processes and versions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}
/// Sort key of items alone in their partition (idempotency entries, the format item).
pub(super) const SINGLE_SK: &[u8] = &[0];

/// A DynamoDB item.
pub(super) type Item = HashMap<String, AttributeValue>;

// ---------------------------------------------------------------------------------------------
// Attributes

/// A binary attribute.
pub(super) fn bin(bytes: impl Into<Vec<u8>>) -> AttributeValue {
    AttributeValue::B(Blob::new(bytes))
}

/// A number attribute.
pub(super) fn num(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// The key of the item at (`pk`, `sk`).
pub(super) fn key_item(pk: Vec<u8>, sk: Vec<u8>) -> Item {
    HashMap::from([(PK.to_owned(), bin(pk)), (SK.to_owned(), bin(sk))])
}

/// The binary attribute `name` of `item`; corrupt if it is missing or not binary.
pub(super) fn get_bin<'a>(item: &'a Item, name: &str) -> Result<&'a [u8], StorageError> {
    match item.get(name) {
        Some(AttributeValue::B(b)) => Ok(b.as_ref()),
        Some(_) => Err(corrupt(format!("attribute {name} is not binary"))),
        None => Err(corrupt(format!("item without attribute {name}"))),
    }
}

/// The number attribute `name` of `item`, if present; corrupt if it is not a `u64`.
pub(super) fn get_num(item: &Item, name: &str) -> Result<Option<u64>, StorageError> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n
            .parse()
            .map(Some)
            .map_err(|_| corrupt(format!("attribute {name} is not a count: {n}"))),
        Some(_) => Err(corrupt(format!("attribute {name} is not a number"))),
        None => Ok(None),
    }
}

/// An item that does not decode.
pub(super) fn corrupt(message: String) -> StorageError {
    StorageError::Corrupt(Failure::new(BACKEND, message))
}

/// A request the SDK refused to build.
pub(super) fn build_failed(error: BuildError) -> StorageError {
    StorageError::Io(Failure::new(BACKEND, error.to_string()).because(error))
}

/// DynamoDB's size of an item: attribute names plus values.
pub(super) fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::B(b) => b.as_ref().len(),
                    AttributeValue::N(n) => n.len(),
                    AttributeValue::S(s) => s.len(),
                    _ => 8,
                }
        })
        .sum()
}

/// The commit an idempotency entry names.
pub(super) fn entry_id(entry: &Item) -> Result<VersionId, StorageError> {
    record::decode_id(BACKEND, get_bin(entry, ID)?, "idempotency entry")
}

// ---------------------------------------------------------------------------------------------
// Keys

/// `plain` ‖ `key`, or `hashed` ‖ SHA-256(`key`) for keys over [`MAX_PLAIN_KEY`] bytes.
fn user_pk(plain: u8, hashed: u8, key: &[u8]) -> Vec<u8> {
    if key.len() <= MAX_PLAIN_KEY {
        let mut pk = Vec::with_capacity(1 + key.len());
        pk.push(plain);
        pk.extend_from_slice(key);
        pk
    } else {
        let mut pk = Vec::with_capacity(33);
        pk.push(hashed);
        pk.extend_from_slice(&Sha256::digest(key));
        pk
    }
}

/// Partition of a user key's versions.
pub(super) fn version_pk(key: &[u8]) -> Vec<u8> {
    user_pk(b'v', b'h', key)
}

/// Partition of an idempotency entry.
pub(super) fn idempotency_pk(key: &[u8]) -> Vec<u8> {
    user_pk(b'i', b'j', key)
}

/// The time bucket of a commit record.
pub(super) fn bucket(id: VersionId) -> u64 {
    id.ts >> BUCKET_SHIFT
}

/// The shard of a commit record: from its transaction id, so one bucket's commits spread
/// over [`COMMIT_SHARDS`] partitions.
pub(super) fn shard(id: VersionId) -> u8 {
    let txn = id.txn.0;
    ((txn as u64 ^ (txn >> 64) as u64) % u64::from(COMMIT_SHARDS)) as u8
}

/// Partition of the commit records of (`bucket`, `shard`).
pub(super) fn commit_pk_of(bucket: u64, shard: u8) -> Vec<u8> {
    let mut pk = Vec::with_capacity(10);
    pk.push(b'c');
    pk.extend_from_slice(&bucket.to_be_bytes());
    pk.push(shard);
    pk
}

/// Partition of the commit record `id`.
pub(super) fn commit_pk(id: VersionId) -> Vec<u8> {
    commit_pk_of(bucket(id), shard(id))
}

/// Sort key of the directory entry of (`bucket`, `shard`).
pub(super) fn directory_sk(bucket: u64, shard: u8) -> Vec<u8> {
    let mut sk = bucket.to_be_bytes().to_vec();
    sk.push(shard);
    sk
}

// ---------------------------------------------------------------------------------------------
// Payloads split over items

/// Partition of the overflow chunks of the item at (`head_pk`, `head_sk`).
pub(super) fn chunk_pk(head_pk: &[u8], head_sk: &[u8]) -> Vec<u8> {
    let mut pk = Vec::with_capacity(1 + head_pk.len() + head_sk.len());
    pk.push(b'o');
    pk.extend_from_slice(head_pk);
    pk.extend_from_slice(head_sk);
    pk
}

/// Keys of the `count` overflow chunks of the item at (`head_pk`, `head_sk`).
pub(super) fn chunk_keys(head_pk: &[u8], head_sk: &[u8], count: u32) -> Vec<Item> {
    let pk = chunk_pk(head_pk, head_sk);
    (1..=count)
        .map(|i| key_item(pk.clone(), i.to_be_bytes().to_vec()))
        .collect()
}

/// Extra chunks a payload of `len` bytes needs beyond its head.
pub(super) fn chunks_needed(len: usize, chunk: usize) -> u32 {
    if len <= chunk {
        0
    } else {
        u32::try_from((len - 1) / chunk).unwrap_or(u32::MAX)
    }
}

/// The head item (with `extra` attributes) and overflow chunks holding `payload`.
pub(super) fn split_payload(
    pk: Vec<u8>,
    sk: Vec<u8>,
    payload: &[u8],
    chunk: usize,
    extra: Vec<(&str, AttributeValue)>,
) -> (Item, Vec<Item>) {
    let count = chunks_needed(payload.len(), chunk);
    let first = payload.len().min(chunk);
    let mut chunks = Vec::with_capacity(count as usize);
    if count > 0 {
        let cpk = chunk_pk(&pk, &sk);
        for (i, part) in payload[first..].chunks(chunk).enumerate() {
            let mut item = key_item(cpk.clone(), ((i + 1) as u32).to_be_bytes().to_vec());
            item.insert(VALUE.into(), bin(part));
            chunks.push(item);
        }
    }
    let mut head = key_item(pk, sk);
    head.insert(VALUE.into(), bin(&payload[..first]));
    if count > 0 {
        head.insert(CHUNKS.into(), num(u64::from(count)));
    }
    for (name, value) in extra {
        head.insert(name.to_owned(), value);
    }
    (head, chunks)
}

/// The number of overflow chunks after `item`, a head.
pub(super) fn chunk_count(item: &Item) -> Result<u32, StorageError> {
    let count = get_num(item, CHUNKS)?.unwrap_or(0);
    u32::try_from(count).map_err(|_| corrupt(format!("chunk count {count} out of range")))
}

// ---------------------------------------------------------------------------------------------
// Pending markers and the directory

/// Version of the pending-marker encoding.
const MARKER_FORMAT: u8 = 1;

/// What a pending marker lists: the chunks of the commit record and every version's user key
/// with its chunk count.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct MarkerPlan {
    /// Overflow chunks of the encoded commit record.
    pub(super) record_chunks: u32,
    /// Every version's user key, with its value's overflow chunk count.
    pub(super) versions: Vec<(Vec<u8>, u32)>,
}

/// The payload of a pending marker listing `plan`:
///
/// ```text
/// format: u8 = 1
/// record chunks: u32 BE
/// versions: u32 BE count, then per version: key length u32 BE, key, chunks u32 BE
/// ```
pub(super) fn encode_marker(plan: &MarkerPlan) -> Result<Vec<u8>, StorageError> {
    let too_long = || StorageError::Io(Failure::new(BACKEND, "transaction is too large to record"));
    let mut out = Vec::with_capacity(
        9 + plan
            .versions
            .iter()
            .map(|(k, _)| 8 + k.len())
            .sum::<usize>(),
    );
    out.push(MARKER_FORMAT);
    out.extend_from_slice(&plan.record_chunks.to_be_bytes());
    let count = u32::try_from(plan.versions.len()).map_err(|_| too_long())?;
    out.extend_from_slice(&count.to_be_bytes());
    for (key, chunks) in &plan.versions {
        let len = u32::try_from(key.len()).map_err(|_| too_long())?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&chunks.to_be_bytes());
    }
    Ok(out)
}

/// Decodes [`encode_marker`]; corrupt unless `bytes` is exactly one plan.
pub(super) fn decode_marker(bytes: &[u8]) -> Result<MarkerPlan, StorageError> {
    fn u32_at(bytes: &[u8], at: &mut usize) -> Option<u32> {
        let v = u32::from_be_bytes(bytes.get(*at..*at + 4)?.try_into().ok()?);
        *at += 4;
        Some(v)
    }
    let bad = || corrupt("pending marker does not decode".into());
    if bytes.first() != Some(&MARKER_FORMAT) {
        return Err(bad());
    }
    let mut at = 1;
    let record_chunks = u32_at(bytes, &mut at).ok_or_else(bad)?;
    let count = u32_at(bytes, &mut at).ok_or_else(bad)?;
    let mut versions = Vec::with_capacity((count as usize).min(1 << 16));
    for _ in 0..count {
        let len = u32_at(bytes, &mut at).ok_or_else(bad)? as usize;
        let key = bytes.get(at..at + len).ok_or_else(bad)?.to_vec();
        at += len;
        let chunks = u32_at(bytes, &mut at).ok_or_else(bad)?;
        versions.push((key, chunks));
    }
    if at != bytes.len() {
        return Err(bad());
    }
    Ok(MarkerPlan {
        record_chunks,
        versions,
    })
}

/// (bucket, shard) of a directory entry's sort key.
pub(super) fn decode_directory(sk: &[u8]) -> Result<(u64, u8), StorageError> {
    match sk {
        [bucket @ .., shard] => {
            let bucket: [u8; 8] = bucket
                .try_into()
                .map_err(|_| corrupt("directory entry does not decode".into()))?;
            Ok((u64::from_be_bytes(bucket), *shard))
        }
        [] => Err(corrupt("empty directory entry".into())),
    }
}

/// Milliseconds since the epoch (0 if the clock is before it).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Writes

/// An unconditional put of `item`.
pub(super) fn put_action(table: &str, item: Item) -> Result<TransactWriteItem, StorageError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .build()
        .map_err(build_failed)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// A put that fails if an item with the same key exists (and then returns it).
pub(super) fn put_new_action(table: &str, item: Item) -> Result<TransactWriteItem, StorageError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(#pk)")
        .expression_attribute_names("#pk", PK)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .map_err(build_failed)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// A `BatchWriteItem` put of `item`.
pub(super) fn put_request(item: Item) -> Result<WriteRequest, StorageError> {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(build_failed)?;
    Ok(WriteRequest::builder().put_request(put).build())
}

/// A `BatchWriteItem` delete of the item at `key`.
pub(super) fn delete_request(key: Item) -> Result<WriteRequest, StorageError> {
    let delete = DeleteRequest::builder()
        .set_key(Some(key))
        .build()
        .map_err(build_failed)?;
    Ok(WriteRequest::builder().delete_request(delete).build())
}

/// The key (`pk`, `sk`) of `item`.
pub(super) fn key_of(item: &Item) -> Item {
    item.iter()
        .filter(|(name, _)| *name == PK || *name == SK)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// (`pk`, `sk`) of a key item, as a map key.
pub(super) fn key_bytes(item: &Item) -> Option<(Vec<u8>, Vec<u8>)> {
    let pk = item.get(PK)?.as_b().ok()?.as_ref().to_vec();
    let sk = item.get(SK)?.as_b().ok()?.as_ref().to_vec();
    Some((pk, sk))
}
