use super::*;
use crate::storage::TxnId;

fn meta(ts: u64, seq: u64, value: &'static [u8]) -> VersionMeta {
    VersionMeta {
        id: VersionId {
            ts,
            txn: TxnId(ts as u128),
        },
        seq,
        kind: Kind::String,
        expire_at: 0,
        value: Some(Bytes::from_static(value)),
    }
}

#[test]
fn reader_sees_greatest_version_at_its_pin() {
    let index = Index::new(1 << 20);
    index.insert(Bytes::from_static(b"k"), meta(10, 1, b"a"), 0);
    index.insert(Bytes::from_static(b"k"), meta(20, 2, b"b"), 0);
    assert_eq!(index.visible(b"k", 1).unwrap().id.ts, 10);
    assert_eq!(index.visible(b"k", 2).unwrap().id.ts, 20);
    assert!(index.visible(b"k", 0).is_none());
    assert!(index.visible(b"other", 2).is_none());
}

#[test]
fn a_late_older_version_never_shadows_a_newer_one() {
    // A commit with a smaller timestamp that becomes known later.
    let index = Index::new(1 << 20);
    index.insert(Bytes::from_static(b"k"), meta(20, 1, b"new"), 0);
    index.insert(Bytes::from_static(b"k"), meta(10, 2, b"old"), 0);
    assert_eq!(index.visible(b"k", 2).unwrap().id.ts, 20);
    assert_eq!(index.latest(b"k").unwrap().ts, 20);
}

#[test]
fn pruning_keeps_what_pinned_readers_need() {
    let index = Index::new(1 << 20);
    let k = Bytes::from_static(b"k");
    index.insert(k.clone(), meta(10, 1, b"a"), 0);
    index.insert(k.clone(), meta(20, 2, b"b"), 1); // a reader pinned at 1 exists
    index.insert(k.clone(), meta(30, 3, b"c"), 1);
    assert_eq!(index.visible(b"k", 1).unwrap().id.ts, 10);
    assert_eq!(index.version_count(), 3);
    index.insert(k.clone(), meta(40, 4, b"d"), 3); // oldest reader now at 3
    assert_eq!(index.version_count(), 2);
    assert_eq!(index.visible(b"k", 3).unwrap().id.ts, 30);
    assert_eq!(index.cached_bytes(), 2);
}

#[test]
fn cache_respects_its_budget() {
    let index = Index::new(3);
    index.insert(Bytes::from_static(b"a"), meta(1, 1, b"12"), 0);
    index.insert(Bytes::from_static(b"b"), meta(2, 2, b"34"), 0);
    assert!(index.visible(b"a", 2).unwrap().value.is_some());
    assert!(index.visible(b"b", 2).unwrap().value.is_none());
    assert_eq!(index.cached_bytes(), 2);
}

fn ids(dropped: &[Dropped]) -> Vec<u64> {
    let mut ts: Vec<u64> = dropped.iter().map(|d| d.id.ts).collect();
    ts.sort_unstable();
    ts
}

fn tombstone(ts: u64, seq: u64) -> VersionMeta {
    VersionMeta {
        kind: Kind::Tombstone,
        value: None,
        ..meta(ts, seq, b"")
    }
}

#[test]
fn insert_returns_the_versions_it_prunes() {
    let index = Index::new(1 << 20);
    let k = Bytes::from_static(b"k");
    assert!(index.insert(k.clone(), meta(10, 1, b"a"), 0).is_empty());
    // A reader pinned at 1 keeps version 10.
    assert!(index.insert(k.clone(), meta(20, 2, b"b"), 1).is_empty());
    let dropped = index.insert(k.clone(), meta(30, 3, b"c"), 2);
    assert_eq!(
        dropped,
        vec![Dropped {
            key: k.clone(),
            id: meta(10, 1, b"").id,
            kind: Kind::String
        }]
    );
    assert_eq!(index.version_count(), 2);
    // Learning a version twice drops nothing and keeps one copy.
    assert!(index.insert(k, meta(30, 4, b"c"), 4).is_empty());
    assert_eq!(index.version_count(), 2);
}

/// Sweeps every shard, removing dead keys unless `keep` says otherwise.
fn sweep_all(index: &Index, min_pin: u64, min_now: u64, removable: bool) -> Sweep {
    let mut total = Sweep::default();
    for shard in 0..index.shard_count() {
        let s = index.sweep_shard(shard, min_pin, min_now);
        total.dropped.extend(s.dropped);
        total.dead.extend(s.dead.iter().cloned());
        let removed = index.remove_dead(shard, s.dead, min_pin, min_now, &|_| !removable);
        total.dropped.extend(removed.dropped);
        total.removed_keys += removed.removed_keys;
    }
    total
}

#[test]
fn sweep_drops_what_pins_released() {
    let index = Index::new(1 << 20);
    let k = Bytes::from_static(b"k");
    index.insert(k.clone(), meta(10, 1, b"a"), 0);
    index.insert(k.clone(), meta(20, 2, b"b"), 1);
    index.insert(k.clone(), meta(30, 3, b"c"), 1);
    // The reader at 1 is still there: nothing to drop.
    assert!(sweep_all(&index, 1, 0, true).dropped.is_empty());
    assert_eq!(index.visible(b"k", 1).unwrap().id.ts, 10);
    // It ended: only the newest stays; a live key is never removed.
    let swept = sweep_all(&index, 3, u64::MAX, true);
    assert_eq!(ids(&swept.dropped), vec![10, 20]);
    assert_eq!(swept.removed_keys, 0);
    assert_eq!(index.visible(b"k", 3).unwrap().id.ts, 30);
    assert_eq!(index.cached_bytes(), 1);
    assert_eq!(index.version_count(), 1);
}

#[test]
fn sweep_removes_a_sole_tombstone_visible_to_every_pin() {
    let index = Index::new(1 << 20);
    let k = Bytes::from_static(b"k");
    index.insert(k.clone(), meta(10, 1, b"a"), 0);
    index.insert(k.clone(), tombstone(20, 2), 1);
    // A reader at 1 still sees the value.
    let swept = sweep_all(&index, 1, 0, true);
    assert!(swept.dropped.is_empty());
    // Visible to all, but the caller refuses (an older record lists the key).
    let swept = sweep_all(&index, 2, 0, false);
    assert_eq!(ids(&swept.dropped), vec![10]);
    assert_eq!(swept.removed_keys, 0);
    assert_eq!(index.latest(b"k").unwrap().ts, 20);
    // The caller agrees: the key is gone.
    let swept = sweep_all(&index, 2, 0, true);
    assert_eq!(swept.removed_keys, 1);
    assert_eq!(
        swept.dropped,
        vec![Dropped {
            key: k,
            id: tombstone(20, 2).id,
            kind: Kind::Tombstone
        }]
    );
    assert!(index.latest(b"k").is_none());
    assert_eq!(index.version_count(), 0);
    assert_eq!(index.cached_bytes(), 0);
}

#[test]
fn a_dead_key_that_changed_after_the_sweep_is_not_removed() {
    let index = Index::new(1 << 20);
    let k = Bytes::from_static(b"k");
    index.insert(k.clone(), tombstone(10, 1), 0);
    let shard = Index::shard_of(index.position(&k));
    let swept = index.sweep_shard(shard, 1, 0);
    assert_eq!(swept.dead.len(), 1);
    // A commit of the key lands between the sweep and the removal.
    index.insert(k.clone(), meta(20, 2, b"v"), 1);
    let removed = index.remove_dead(shard, swept.dead, 2, 0, &|_| false);
    assert_eq!(removed.removed_keys, 0);
    assert_eq!(index.latest(b"k").unwrap().ts, 20);
}

#[test]
fn sweep_removes_expired_keys_only_once_every_clock_passed_the_expiry() {
    let index = Index::new(1 << 20);
    let mut v = meta(10, 1, b"abc");
    v.expire_at = 1_000;
    index.insert(Bytes::from_static(b"k"), v, 0);
    // A transaction whose clock is before the expiry still sees the key.
    assert_eq!(sweep_all(&index, 1, 999, true).removed_keys, 0);
    // A version not yet visible to every pin stays.
    assert_eq!(sweep_all(&index, 0, 1_000, true).removed_keys, 0);
    let swept = sweep_all(&index, 1, 1_000, true);
    assert_eq!(swept.removed_keys, 1);
    assert_eq!(ids(&swept.dropped), vec![10]);
    assert_eq!(index.cached_bytes(), 0);
}

#[test]
fn sweep_visits_only_keys_that_may_have_garbage() {
    let index = Index::new(1 << 20);
    for i in 0..100u64 {
        let key = Bytes::from(format!("live{i}"));
        index.insert(key, meta(i + 1, i + 1, b"v"), 0);
    }
    index.insert(Bytes::from_static(b"gone"), tombstone(500, 101), 0);
    let swept = sweep_all(&index, 101, 0, true);
    let dead: Vec<Bytes> = swept.dead.into_iter().map(|d| d.key).collect();
    assert_eq!(dead, vec![Bytes::from_static(b"gone")]);
    // A removed key and a key reduced to one plain version leave the candidates.
    let k = Bytes::from_static(b"k");
    index.insert(k.clone(), meta(600, 102, b"a"), 0);
    index.insert(k.clone(), meta(601, 103, b"b"), 0);
    assert_eq!(sweep_all(&index, 103, 0, true).dropped.len(), 1);
    let shards = index.shards.iter();
    assert_eq!(
        shards.map(|s| s.read().candidates.len()).sum::<usize>(),
        0,
        "nothing left to visit"
    );
}

fn all_live(index: &Index, pin: u64, now: u64) -> Vec<Bytes> {
    let mut keys: Vec<Bytes> = (0..index.shard_count())
        .flat_map(|s| index.live_keys(s, pin, now, &|_| true))
        .map(|k| k.key)
        .collect();
    keys.sort();
    keys
}

#[test]
fn live_keys_skip_tombstones_and_expired() {
    let index = Index::new(0);
    index.insert(Bytes::from_static(b"a"), meta(1, 1, b""), 0);
    let mut dead = meta(2, 2, b"");
    dead.kind = Kind::Tombstone;
    index.insert(Bytes::from_static(b"b"), dead, 0);
    let mut expired = meta(3, 3, b"");
    expired.expire_at = 100;
    index.insert(Bytes::from_static(b"c"), expired, 0);
    assert_eq!(all_live(&index, 3, 200), vec![Bytes::from_static(b"a")]);
    assert_eq!(index.key_counts(50), (2, 1));
    assert_eq!(index.key_counts(200), (1, 0));
}

#[test]
fn key_counts_follow_the_newest_version() {
    let index = Index::new(0);
    let k = Bytes::from_static(b"k");
    let mut v = meta(10, 1, b"");
    v.expire_at = 1_000;
    index.insert(k.clone(), v, 0);
    assert_eq!(index.key_counts(0), (1, 1));
    index.insert(k.clone(), meta(20, 2, b""), 0);
    assert_eq!(index.key_counts(0), (1, 0), "overwritten without expiry");
    // A late, older version does not change what the newest is.
    index.insert(k.clone(), tombstone(5, 3), 0);
    assert_eq!(index.key_counts(0), (1, 0));
    index.insert(k.clone(), tombstone(30, 4), 0);
    assert_eq!(index.key_counts(0), (0, 0));
    let swept = sweep_all(&index, 4, 0, true);
    assert_eq!(swept.removed_keys, 1);
    assert_eq!(index.key_counts(0), (0, 0));
    assert_eq!(index.version_count(), 0);
}

#[test]
fn a_scan_visits_every_key_once_in_pages_of_count() {
    let index = Index::new(0);
    for i in 0..1000u64 {
        index.insert(Bytes::from(format!("key:{i}")), meta(i + 1, 1, b""), 0);
    }
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut calls = 0;
    loop {
        let page = index.scan(cursor, 10, 1, 0);
        assert!(page.keys.len() <= 11, "about COUNT keys per call");
        seen.extend(page.keys.into_iter().map(|k| k.key));
        calls += 1;
        cursor = page.next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(calls, 100);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 1000);
    assert!(index.scan(MAX_POSITION + 1, 10, 1, 0).keys.is_empty());
    assert!(index.random_live(12345, 100, 1, 0).is_some());
}
