//! The backend's tests: the conformance suite on one server and on a cluster, then what is
//! particular to Redis (URLs, layout, scripts, reconnection, orphans).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::types::Value;
use fred::util::redis_keyslot;

use super::client::{bytes, frame_int, id_arg, text};
use super::commit::{Committed, Part};
use super::layout::{decode_key_list, encode_key_list, Layout};
use super::*;
use crate::storage::testkit::conformance::{batch, commit_ok, get_one, scan_all, vid, vkey};
use crate::storage::testkit::redis_server::{
    free_port, shared_cluster, unique_prefix, RedisCluster, RedisServer,
};
use crate::storage::{record, Beat, Conditions, LogPos, NodeId};

/// Connects, blocking (the conformance factories are synchronous).
fn connect_blocking(url: &str) -> Arc<RedisStorage> {
    let options = RedisOptions::parse(url).expect("valid url");
    let storage = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(RedisStorage::connect(&options))
    })
    .expect("connect");
    Arc::new(storage)
}

async fn connect(url: &str) -> RedisStorage {
    let options = RedisOptions::parse(url).expect("valid url");
    RedisStorage::connect(&options).await.expect("connect")
}

fn standalone() -> (Arc<RedisStorage>, RedisServer) {
    let server = RedisServer::start();
    let storage = connect_blocking(&format!("redis://127.0.0.1:{}", server.port));
    (storage, server)
}

/// One server whose log has three shards, as a cluster's would.
fn standalone_sharded() -> (Arc<RedisStorage>, RedisServer) {
    let server = RedisServer::start();
    let storage = connect_blocking(&format!("redis://127.0.0.1:{}?shards=3", server.port));
    (storage, server)
}

fn cluster() -> (Arc<RedisStorage>, Arc<RedisCluster>) {
    let cluster = shared_cluster();
    let storage = connect_blocking(&cluster.url(&format!("?prefix={}", unique_prefix())));
    (storage, cluster)
}

mod standalone {
    use super::*;
    crate::storage_conformance_tests!(standalone);
}

mod cluster {
    use super::*;
    crate::storage_conformance_tests!(cluster);
}

mod standalone_sharded {
    use super::*;
    crate::storage_conformance_tests!(standalone_sharded);
}

#[test]
fn urls_parse() {
    let o = RedisOptions::parse("redis://localhost").unwrap();
    assert_eq!(
        o.topology,
        Topology::Standalone {
            host: "localhost".into(),
            port: 6379
        }
    );
    assert!(!o.tls);
    assert_eq!((o.database, o.pool, o.timeout), (0, 4, DEFAULT_TIMEOUT));
    assert_eq!(o.prefix, "aft:");
    assert_eq!(o.idempotency_ttl, None);

    let o = RedisOptions::parse(
        "rediss://al%40ice:p%3Ass@10.0.0.1:7000/3?prefix=app%3Aaft:&timeout_ms=250&pool=2\
         &idempotency_ttl=60",
    )
    .unwrap();
    assert!(o.tls);
    assert_eq!(o.username.as_deref(), Some("al@ice"));
    assert_eq!(o.password.as_deref(), Some("p:ss"));
    assert_eq!(o.database, 3);
    assert_eq!(o.prefix, "app:aft:");
    assert_eq!(o.timeout, Duration::from_millis(250));
    assert_eq!(o.pool, 2);
    assert_eq!(o.idempotency_ttl, Some(Duration::from_secs(60)));
    assert_eq!(o.to_string(), "rediss://10.0.0.1:7000/3");
    assert!(
        !format!("{o:?}").contains("p:ss"),
        "the password is redacted"
    );

    let o = RedisOptions::parse("redis://:secret@[::1]:6380/").unwrap();
    assert_eq!(o.username, None);
    assert_eq!(o.password.as_deref(), Some("secret"));
    assert_eq!(
        o.topology,
        Topology::Standalone {
            host: "::1".into(),
            port: 6380
        }
    );

    let o = RedisOptions::parse("redis-cluster://a:7000,b,[::1]:7002?pool=1").unwrap();
    assert_eq!(
        o.topology,
        Topology::Cluster {
            seeds: vec![("a".into(), 7000), ("b".into(), 6379), ("::1".into(), 7002)]
        }
    );
    assert_eq!(o.to_string(), "redis-cluster://a:7000,b:6379,[::1]:7002");
    assert!(RedisOptions::parse("rediss-cluster://a:1").unwrap().tls);

    for bad in [
        "redis//x",
        "http://x",
        "redis://",
        "redis://a:0",
        "redis://a:65536",
        "redis://a:x",
        "redis://a,b",
        "redis://a/256",
        "redis://a/x",
        "redis-cluster://a/1",
        "redis://a?prefix=",
        "redis://a?prefix=x{y",
        "redis://a?prefix=x}",
        "redis://a?timeout_ms=0",
        "redis://a?pool=0",
        "redis://a?pool=65",
        "redis://a?idempotency_ttl=-1",
        "redis://a?nope=1",
        "redis://a%zz@b",
        "redis://[::1:5",
    ] {
        assert!(RedisOptions::parse(bad).is_err(), "{bad} should be refused");
    }
    assert!(RedisOptions::is_redis_url("redis-cluster://x"));
    assert!(!RedisOptions::is_redis_url("memory"));
}

#[test]
fn layout_is_injective_and_slots_group_what_goes_together() {
    let layout = Layout::new("aft:", 1);
    let meta = &layout.shards[0];
    assert_eq!(&meta.meta[..], b"aft:{aft:}");
    for shard in &Layout::new("aft:", 5).shards {
        for key in [
            &shard.rec,
            &shard.log,
            &shard.pending,
            &shard.pendkeys,
            &shard.tail,
            &shard.seq,
            &shard.heads,
            &shard.nodes,
            &shard.locks,
            &shard.txlocks,
        ] {
            assert_eq!(redis_keyslot(key), shard.slot);
        }
        assert_eq!(redis_keyslot(&shard.idempotency(b"x{y}")), shard.slot);
        assert_eq!(redis_keyslot(&shard.idempotency(b"")), shard.slot);
    }

    let keys: [&[u8]; 7] = [b"", b"a", b"ab", b"a\0", b"{a}", b"}{", &[0xff; 3]];
    let ids = [vid(1, 2), vid(2, 1), vid(0, 0)];
    let mut seen = std::collections::HashSet::new();
    for key in keys {
        let slots: std::collections::HashSet<u16> = ids
            .iter()
            .map(|id| redis_keyslot(&layout.version(key, *id).unwrap()))
            .collect();
        assert_eq!(slots.len(), 1, "every version of {key:?} in one slot");
        for id in ids {
            let stored = layout.version(key, id).unwrap();
            assert!(stored.starts_with(b"aft:v{"));
            assert!(seen.insert(stored), "{key:?} {id:?} collides");
        }
    }
    // Keys spread over the cluster.
    let slots: std::collections::HashSet<u16> = (0..100)
        .map(|i| {
            redis_keyslot(
                &layout
                    .version(format!("k{i}").as_bytes(), vid(1, 1))
                    .unwrap(),
            )
        })
        .collect();
    assert!(slots.len() > 90, "{} slots", slots.len());
}

#[test]
fn records_and_key_lists_round_trip() {
    for (idem, body) in [
        (None, &b""[..]),
        (Some(&b""[..]), &b"body"[..]),
        (Some(&b"key"[..]), &[0u8, 1, 2][..]),
    ] {
        let record = CommitRecord {
            id: vid(3, 4),
            idempotency_key: idem.map(Bytes::copy_from_slice),
            body: Bytes::copy_from_slice(body),
        };
        let encoded = record::encode("redis", &record).unwrap();
        assert_eq!(record::decode("redis", record.id, encoded).unwrap(), record);
    }
    for bad in [
        &b""[..],
        b"\x01",
        b"\x02\x00",
        b"\x01\x02",
        b"\x01\x01\x00\x00\x00\x05ab",
    ] {
        assert!(matches!(
            record::decode("redis", vid(1, 1), Bytes::copy_from_slice(bad)),
            Err(StorageError::Corrupt(_))
        ));
    }
    let keys = vec![
        Bytes::from_static(b"a"),
        Bytes::new(),
        Bytes::from_static(b"xyz"),
    ];
    assert_eq!(
        decode_key_list(&encode_key_list(&keys).unwrap()).unwrap(),
        keys
    );
    assert!(decode_key_list(&Bytes::from_static(b"\0\0\0\x05ab")).is_err());
}

fn commandstat(server: &RedisServer, command: &str) -> u64 {
    let info = server.cli(&["info", "commandstats"]);
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_commit_is_one_evalsha() {
    let server = RedisServer::start();
    let s = connect(&format!("redis://127.0.0.1:{}", server.port)).await;
    assert_eq!(s.name(), "redis");
    server.cli(&["config", "resetstat"]);
    for i in 0..20u64 {
        let idem = format!("idem-{i}");
        commit_ok(
            &s,
            batch(
                vid(i, 1),
                Some(idem.as_bytes()),
                &[(b"a", b"1"), (b"b", b"2")],
            ),
        )
        .await;
    }
    assert_eq!(commandstat(&server, "evalsha"), 20);
    assert_eq!(commandstat(&server, "eval"), 0);
    assert_eq!(commandstat(&server, "mset"), 0);
    // The idempotency entry expires.
    let ttl: i64 = server
        .cli(&["ttl", "aft:{aft:}i:idem-3"])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 86_400 && ttl <= 90_000, "ttl {ttl}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_sent_again_after_a_flush() {
    let server = RedisServer::start();
    let s = connect(&format!("redis://127.0.0.1:{}", server.port)).await;
    commit_ok(&s, batch(vid(1, 1), None, &[(b"k", b"1")])).await;
    server.cli(&["script", "flush"]);
    commit_ok(&s, batch(vid(2, 1), None, &[(b"k", b"2")])).await;
    assert_eq!(scan_all(&s).await.len(), 2);
    server.cli(&["script", "flush"]);
    assert_eq!(scan_all(&s).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_and_databases_keep_stores_apart() {
    let server = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}", server.port);
    let a = connect(&url).await;
    let b = connect(&format!("{url}?prefix=other:")).await;
    let c = connect(&format!("{url}/5")).await;
    commit_ok(&a, batch(vid(1, 1), Some(b"i"), &[(b"k", b"a")])).await;
    commit_ok(&b, batch(vid(2, 2), Some(b"i"), &[(b"k", b"b")])).await;
    commit_ok(&c, batch(vid(3, 3), Some(b"i"), &[(b"k", b"c")])).await;
    for (s, id) in [(&a, vid(1, 1)), (&b, vid(2, 2)), (&c, vid(3, 3))] {
        let ids: Vec<VersionId> = scan_all(s).await.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![id]);
        assert_eq!(
            s.find_idempotent(Bytes::from_static(b"i")).await.unwrap(),
            Some(id)
        );
    }
    assert_eq!(get_one(&b, b"k", vid(1, 1)).await, None);
    // A version, the records, both logs, the log's position, the key's head, the
    // idempotency entry, the log's shard count.
    assert_eq!(server.cli(&["-n", "5", "dbsize"]).trim(), "8");
    // Everything aft stores starts with its prefix.
    let keys = server.cli(&["--scan"]);
    assert!(keys
        .lines()
        .all(|k| k.starts_with("aft:") || k.starts_with("other:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_clear_errors_then_reconnection() {
    let mut server = RedisServer::durable();
    let s = connect(&format!(
        "redis://127.0.0.1:{}?timeout_ms=1000",
        server.port
    ))
    .await;
    commit_ok(&s, batch(vid(1, 1), Some(b"one"), &[(b"k", b"1")])).await;
    server.kill();
    // A request caught in flight fails after the timeout (its outcome unknown); once the
    // pool knows, requests are refused before they are sent.
    let mut refused = 0;
    for i in 0..10 {
        match s.commit(batch(vid(2, i), None, &[(b"k", b"2")])).await {
            Err(StorageError::Unavailable(m)) if m.message().contains("not connected") => {
                assert_eq!(m.backend(), "redis");
                refused += 1
            }
            Err(StorageError::Unavailable(_)) | Err(StorageError::OutcomeUnknown(_)) => {}
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(matches!(
            s.get_versions(vec![vkey(b"k", vid(1, 1))]).await,
            Err(StorageError::Unavailable(_))
        ));
    }
    assert!(
        refused >= 8,
        "{refused} of 10 commits refused before sending"
    );
    server.restart();
    // The pool reconnects by itself; the restarted server has no scripts cached.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match s.commit(batch(vid(3, 3), None, &[(b"k", b"3")])).await {
            Ok(CommitOutcome::Committed) => break,
            Err(StorageError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("no reconnection: {other:?}"),
        }
    }
    let ids: Vec<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
    assert_eq!(
        ids.first(),
        Some(&vid(1, 1)),
        "the acknowledged commit survived"
    );
    assert_eq!(ids.last(), Some(&vid(3, 3)));
    assert_eq!(
        get_one(&s, b"k", vid(1, 1)).await,
        Some(Bytes::from_static(b"1"))
    );
    assert_eq!(
        s.find_idempotent(Bytes::from_static(b"one")).await.unwrap(),
        Some(vid(1, 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_clearly() {
    let port = free_port();
    let options = RedisOptions::parse(&format!("redis://127.0.0.1:{port}?timeout_ms=300")).unwrap();
    let err = RedisStorage::connect(&options).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&port.to_string()), "{text}");
    assert!(text.contains("refused"), "the cause is given: {text}");
    assert_eq!(err.backend(), Some("redis"));
    assert!(
        std::error::Error::source(&err).is_some(),
        "the client library's error is kept: {err:?}"
    );

    let options =
        RedisOptions::parse(&format!("redis-cluster://127.0.0.1:{port}?timeout_ms=300")).unwrap();
    let err = RedisStorage::connect(&options).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    assert_eq!(err.backend(), Some("redis-cluster"));
}

/// The home shard of a commit without idempotency key writing `keys`.
fn home_of(s: &RedisStorage, keys: &[&[u8]]) -> usize {
    let keys: Vec<Bytes> = keys.iter().map(|k| Bytes::copy_from_slice(k)).collect();
    s.layout.shard_of(&crate::storage::anchor(None, &keys))
}

/// Writes a cluster commit's marker and versions, as a commit that crashed before its
/// record would have.
async fn half_commit(s: &RedisStorage, id: VersionId, keys: &[&[u8]]) -> Vec<Bytes> {
    let stored: Vec<Bytes> = keys
        .iter()
        .map(|k| s.layout.version(k, id).unwrap())
        .collect();
    let home = &s.layout.shards[home_of(s, keys)];
    s.eval(
        &s.scripts.mark,
        home.slot,
        vec![
            bytes(&home.pending),
            bytes(&home.pendkeys),
            bytes(&home.idempotency(b"")),
            bytes(&home.rec),
        ],
        vec![
            Value::Bytes(Bytes::copy_from_slice(&id.to_bytes())),
            Value::Bytes(encode_key_list(&stored).unwrap()),
            text("0"),
        ],
    )
    .await
    .unwrap();
    for key in &stored {
        s.call(redis_keyslot(key), "SET", vec![bytes(key), text("orphan")])
            .await
            .unwrap();
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_orphans_are_reclaimed_and_their_commit_cannot_finish() {
    let (s, _cluster) = cluster();
    assert_eq!(s.name(), "redis-cluster");
    let orphan = vid(1, 1);
    let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("key-{i}").into_bytes()).collect();
    let key_refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    half_commit(&s, orphan, &key_refs).await;
    commit_ok(&*s, batch(vid(2, 2), None, &[(b"key-0", b"live")])).await;
    for key in &key_refs {
        assert!(get_one(&*s, key, orphan).await.is_some());
    }

    // Too young: untouched.
    assert_eq!(
        s.reclaim_orphans(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    assert!(get_one(&*s, b"key-0", orphan).await.is_some());

    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.reclaim_orphans(Duration::ZERO).await.unwrap(), 20);
    for key in &key_refs {
        assert_eq!(get_one(&*s, key, orphan).await, None);
    }
    assert_eq!(
        get_one(&*s, b"key-0", vid(2, 2)).await,
        Some(Bytes::from_static(b"live"))
    );
    assert_eq!(s.reclaim_orphans(Duration::ZERO).await.unwrap(), 0);

    // The crashed commit's record can no longer be created.
    let crashed = batch(orphan, None, &[]);
    let home = home_of(&s, &key_refs);
    let part = Part::default();
    let (keys, args) = s
        .commit_request(
            home,
            &crashed.record,
            &crashed.conditions,
            &part,
            Vec::new(),
            true,
        )
        .unwrap();
    assert!(matches!(
        s.decide_commit(home, keys, args, &part, 0, |_| true).await,
        Ok(Committed::MarkerGone)
    ));
    let ids: Vec<VersionId> = scan_all(&*s).await.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![vid(2, 2)]);
}

/// Another node resends a cluster commit (its outcome was unknown there) while this node's
/// orphan reclamation has taken its marker and is deleting its versions: the resend must not
/// make a fresh marker and commit over versions being deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_cluster_commit_cannot_revive_a_taken_marker() {
    let (s, _cluster) = cluster();
    let id = vid(1, 1);
    let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"b", b"2")];
    half_commit(&s, id, &[b"a", b"b"]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The first step of a reclamation: the marker is taken, the versions not yet deleted.
    let home = &s.layout.shards[home_of(&s, &[b"a", b"b"])];
    s.eval(
        &s.scripts.reclaim,
        home.slot,
        vec![
            bytes(&home.rec),
            bytes(&home.pending),
            bytes(&home.pendkeys),
        ],
        vec![text("0"), text("100")],
    )
    .await
    .unwrap();
    let resent = s.commit(batch(id, None, &pairs)).await;
    assert!(
        matches!(resent, Err(StorageError::Io(_))),
        "the resend must fail: {resent:?}"
    );
    assert!(
        scan_all(&*s).await.is_empty(),
        "no record over doomed versions"
    );
    // The reclamation finishes; the commit is gone for good.
    assert_eq!(s.reclaim_orphans(Duration::ZERO).await.unwrap(), 2);
    assert!(scan_all(&*s).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commits_leave_no_marker_and_duplicates_leave_no_versions() {
    let (s, _cluster) = cluster();
    let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..30)
        .map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes()))
        .collect();
    let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    commit_ok(&*s, batch(vid(1, 1), Some(b"once"), &pairs)).await;
    let dup = s
        .commit(batch(vid(2, 2), Some(b"once"), &pairs))
        .await
        .unwrap();
    assert_eq!(dup, CommitOutcome::Duplicate(vid(1, 1)));
    for (k, v) in &pairs {
        assert_eq!(get_one(&*s, k, vid(1, 1)).await.as_deref(), Some(*v));
        assert_eq!(get_one(&*s, k, vid(2, 2)).await, None);
    }
    for shard in &s.layout.shards {
        let pending = s
            .call(shard.slot, "ZCARD", vec![bytes(&shard.pending)])
            .await
            .unwrap();
        assert_eq!(frame_int(&pending), Some(0));
    }
    // A commit sent again (a retried request) is reported, not applied twice.
    let again = batch(vid(1, 1), Some(b"once"), &[]);
    let home = s.layout.shard_of(b"once");
    let part = Part::default();
    let (keys, args) = s
        .commit_request(
            home,
            &again.record,
            &again.conditions,
            &part,
            Vec::new(),
            true,
        )
        .unwrap();
    assert!(matches!(
        s.decide_commit(home, keys, args, &part, 0, |_| true).await,
        Ok(Committed::Yes)
    ));
    assert_eq!(scan_all(&*s).await.len(), 1);
}

/// A lease for `node`.
fn beat(node: u128, kind: Beat, lease_ms: u64, watermark: u64) -> Heartbeat {
    Heartbeat {
        node: NodeId(node),
        lease: Duration::from_millis(lease_ms),
        watermark: LogPos::single(watermark),
        oldest_clock_ms: 7,
        address: "127.0.0.1:1 x".into(),
        kind,
    }
}

/// `batch` made by `node`, reading `checks` and deleting `deleted`.
fn conditional(
    id: VersionId,
    node: u128,
    checks: &[(&[u8], Option<VersionId>)],
    versions: &[(&[u8], &[u8])],
    deleted: &[&[u8]],
) -> CommitBatch {
    let mut b = batch(id, None, versions);
    b.conditions = Conditions {
        node: Some(NodeId(node)),
        at_ms: 0,
        log_at: None,
        checks: checks
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), *v))
            .collect(),
        deleted: deleted.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
    };
    b
}

async fn leases_fence_commits_and_list_live_nodes(s: &RedisStorage) {
    let members = s
        .heartbeat(beat(1, Beat::Join, 60_000, 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].node, NodeId(1));
    assert_eq!(
        members[0].address, "127.0.0.1:1_x",
        "spaces cannot break the lease"
    );
    let members = s
        .heartbeat(beat(2, Beat::Join, 150, 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(members.len(), 2);
    let members = s
        .heartbeat(beat(1, Beat::Renew, 60_000, 42))
        .await
        .unwrap()
        .unwrap();
    let one = members.iter().find(|m| m.node == NodeId(1)).unwrap();
    assert_eq!(
        (one.watermark.clone(), one.oldest_clock_ms),
        (LogPos::single(42), 7)
    );

    // A node with a live lease commits; one without a lease does not.
    let ok = conditional(vid(1, 1), 1, &[], &[(b"k", b"v")], &[]);
    assert_eq!(s.commit(ok).await.unwrap(), CommitOutcome::Committed);
    let stranger = conditional(vid(2, 9), 9, &[], &[(b"k", b"w")], &[]);
    assert!(matches!(
        s.commit(stranger).await,
        Err(StorageError::Fenced(_))
    ));

    // Node 2's lease expires: it is no longer listed, and neither commits nor renews.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let members = s
        .heartbeat(beat(1, Beat::Renew, 60_000, 42))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        members.iter().map(|m| m.node).collect::<Vec<_>>(),
        [NodeId(1)]
    );
    let late = conditional(vid(3, 2), 2, &[], &[(b"k", b"late")], &[]);
    assert!(matches!(s.commit(late).await, Err(StorageError::Fenced(_))));
    assert!(matches!(
        s.heartbeat(beat(2, Beat::Renew, 60_000, 0)).await,
        Err(StorageError::Fenced(_))
    ));
    assert_eq!(
        get_one(s, b"k", vid(3, 2)).await,
        None,
        "nothing of the late commit"
    );
    // A node that leaves is gone at once.
    s.heartbeat(beat(1, Beat::Leave, 0, 0)).await.unwrap();
    let members = s
        .heartbeat(beat(3, Beat::Join, 60_000, 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        members.iter().map(|m| m.node).collect::<Vec<_>>(),
        [NodeId(3)]
    );
}

async fn checks_are_first_committer_wins_across_writers(s: &RedisStorage) {
    s.heartbeat(beat(1, Beat::Join, 60_000, 0)).await.unwrap();
    let first = conditional(vid(10, 1), 1, &[(b"c", None)], &[(b"c", b"1")], &[]);
    assert_eq!(s.commit(first).await.unwrap(), CommitOutcome::Committed);
    // Two read-modify-writes of the version they both read: the first wins.
    let a = conditional(
        vid(20, 2),
        1,
        &[(b"c", Some(vid(10, 1)))],
        &[(b"c", b"2")],
        &[],
    );
    let b = conditional(
        vid(21, 3),
        1,
        &[(b"c", Some(vid(10, 1)))],
        &[(b"c", b"2")],
        &[],
    );
    assert_eq!(s.commit(a).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(s.commit(b).await.unwrap(), CommitOutcome::Conflict(0));
    assert_eq!(
        get_one(s, b"c", vid(21, 3)).await,
        None,
        "the loser wrote nothing"
    );
    // The index names the failed check.
    let c = conditional(
        vid(22, 4),
        1,
        &[(b"free", None), (b"c", Some(vid(10, 1)))],
        &[(b"c", b"3")],
        &[],
    );
    assert_eq!(s.commit(c).await.unwrap(), CommitOutcome::Conflict(1));
    // A blind write with an older id than the head does not move it back.
    let blind = conditional(vid(15, 5), 1, &[], &[(b"c", b"old")], &[]);
    assert_eq!(s.commit(blind).await.unwrap(), CommitOutcome::Committed);
    let d = conditional(
        vid(30, 6),
        1,
        &[(b"c", Some(vid(20, 2)))],
        &[(b"c", b"4")],
        &[],
    );
    assert_eq!(s.commit(d).await.unwrap(), CommitOutcome::Committed);
    // A delete moves the head to a tombstone: "nothing read" then passes, a stale read not.
    let del = conditional(vid(40, 7), 1, &[], &[], &[b"c"]);
    assert_eq!(s.commit(del).await.unwrap(), CommitOutcome::Committed);
    let stale = conditional(
        vid(50, 8),
        1,
        &[(b"c", Some(vid(30, 6)))],
        &[(b"c", b"5")],
        &[],
    );
    assert_eq!(s.commit(stale).await.unwrap(), CommitOutcome::Conflict(0));
    let absent = conditional(vid(51, 9), 1, &[(b"c", None)], &[(b"c", b"5")], &[]);
    assert_eq!(s.commit(absent).await.unwrap(), CommitOutcome::Committed);
    // A dropped head (its tombstone collected) passes any check; a head that moved on stays.
    let del = conditional(vid(60, 10), 1, &[], &[], &[b"c", b"e"]);
    assert_eq!(s.commit(del).await.unwrap(), CommitOutcome::Committed);
    s.drop_heads(vec![vkey(b"c", vid(60, 10)), vkey(b"e", vid(1, 1))])
        .await
        .unwrap();
    let after = conditional(
        vid(70, 11),
        1,
        &[(b"c", Some(vid(10, 1)))],
        &[(b"c", b"6")],
        &[],
    );
    assert_eq!(s.commit(after).await.unwrap(), CommitOutcome::Committed);
    let kept = conditional(
        vid(71, 12),
        1,
        &[(b"e", Some(vid(1, 1)))],
        &[(b"e", b"1")],
        &[],
    );
    assert_eq!(s.commit(kept).await.unwrap(), CommitOutcome::Conflict(0));
}

async fn the_log_lists_records_in_creation_order(s: &RedisStorage) {
    let start = LogPos::default();
    assert!(s.log_tail(start.clone(), 10).await.unwrap().head.is_zero());
    // Created out of id order: the log keeps creation order (in the shard of `k`).
    for id in [vid(30, 1), vid(10, 2), vid(20, 3)] {
        commit_ok(s, batch(id, None, &[(b"k", b"v")])).await;
    }
    let at = |p: u64| start.with(s.layout.shard_of(b"k"), p);
    let page = s.log_tail(start.clone(), 10).await.unwrap();
    assert_eq!((page.head.clone(), page.through), (at(3), at(3)));
    let order: Vec<VersionId> = page.records.iter().map(|r| r.id).collect();
    assert_eq!(order, [vid(30, 1), vid(10, 2), vid(20, 3)]);
    let page = s.log_tail(at(1), 1).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].id, vid(10, 2));
    assert_eq!(
        page.through,
        at(2),
        "a page cut at its limit covers up to its last entry"
    );
    assert!(s.log_tail(at(3), 10).await.unwrap().records.is_empty());
    // Limit 0 reads the heads only.
    let heads = s.log_tail(start.clone(), 0).await.unwrap();
    assert_eq!((heads.head, heads.records.len()), (at(3), 0));
    // Deleted records leave the log.
    s.delete(vec![], vec![vkey(b"k", vid(10, 2))])
        .await
        .unwrap();
    let page = s.log_tail(start.clone(), 10).await.unwrap();
    assert_eq!(page.head, at(3));
    let ids: Vec<VersionId> = page.records.iter().map(|r| r.id).collect();
    assert_eq!(ids, [vid(30, 1), vid(20, 3)]);
}

/// [`conditional`] with keys as `Bytes` and values as text.
fn cond(
    id: VersionId,
    node: u128,
    checks: &[(&Bytes, Option<VersionId>)],
    versions: &[(&Bytes, &str)],
    deleted: &[&Bytes],
) -> CommitBatch {
    let checks: Vec<(&[u8], Option<VersionId>)> =
        checks.iter().map(|(k, v)| (&k[..], *v)).collect();
    let versions: Vec<(&[u8], &[u8])> = versions
        .iter()
        .map(|(k, v)| (&k[..], v.as_bytes()))
        .collect();
    let deleted: Vec<&[u8]> = deleted.iter().map(|k| &k[..]).collect();
    conditional(id, node, &checks, &versions, &deleted)
}

/// Two keys whose heads lie in different shards, and the shard of each.
fn keys_in_two_shards(s: &RedisStorage) -> ((Bytes, usize), (Bytes, usize)) {
    let a = Bytes::from_static(b"k0");
    let sa = s.layout.shard_of(&a);
    let b = (1..)
        .map(|i| Bytes::from(format!("k{i}")))
        .find(|k| s.layout.shard_of(k) != sa)
        .expect("another shard");
    let sb = s.layout.shard_of(&b);
    ((a, sa), (b, sb))
}

/// Locks and lock lists held in every shard.
async fn locks_held(s: &RedisStorage) -> i64 {
    let mut held = 0;
    for shard in &s.layout.shards {
        for key in [&shard.locks, &shard.txlocks] {
            let n = s.call(shard.slot, "HLEN", vec![bytes(key)]).await.unwrap();
            held += frame_int(&n).unwrap();
        }
    }
    held
}

/// Steps (1) to (3) of commit `b` across shards — marker, versions, prepare everywhere but
/// home — as a node that dies before its decision leaves it; returns its home.
async fn prepare_only(s: &RedisStorage, b: &CommitBatch) -> usize {
    let written = super::commit::written_keys(&b.versions);
    let home = s.layout.shard_of(&crate::storage::anchor(
        None,
        written.iter().chain(&b.conditions.deleted),
    ));
    let (keys, values) = s.version_keys(b).unwrap();
    assert!(s
        .mark_and_write(b, home, &keys, values)
        .await
        .unwrap()
        .is_none());
    let node = b.conditions.node.unwrap().to_string();
    for (shard, part) in s.parts(&b.conditions, &written) {
        if shard != home {
            let answer = s
                .prepare(shard, b.record.id, home, &node, &part, 0, |_| true)
                .await
                .unwrap();
            assert!(matches!(answer, Committed::Yes), "{answer:?}");
        }
    }
    home
}

/// Step (4) of commit `b` prepared by [`prepare_only`]: its decision, without step (5).
async fn decide_only(s: &RedisStorage, b: &CommitBatch, home: usize) -> Committed {
    let written = super::commit::written_keys(&b.versions);
    let mut parts = s.parts(&b.conditions, &written);
    let part = parts.remove(&home).unwrap_or_default();
    let (keys, args) = s
        .commit_request(home, &b.record, &b.conditions, &part, Vec::new(), true)
        .unwrap();
    s.decide_commit(home, keys, args, &part, 0, |_| false)
        .await
        .unwrap()
}

async fn commits_across_shards_check_and_move_every_head(s: &RedisStorage) {
    assert!(s.shards() > 1);
    let ((a, _), (b, _)) = keys_in_two_shards(s);
    s.heartbeat(beat(1, Beat::Join, 60_000, 0)).await.unwrap();
    let first = cond(vid(10, 1), 1, &[], &[(&a, "1"), (&b, "1")], &[]);
    assert_eq!(s.commit(first).await.unwrap(), CommitOutcome::Committed);
    let both = [(&a, Some(vid(10, 1))), (&b, Some(vid(10, 1)))];
    let second = cond(vid(20, 2), 1, &both, &[(&a, "2"), (&b, "2")], &[]);
    assert_eq!(s.commit(second).await.unwrap(), CommitOutcome::Committed);
    // Stale in the second shard only: the failed check is named by its index in the whole
    // commit, and nothing of the loser stays.
    let stale = [(&a, Some(vid(20, 2))), (&b, Some(vid(10, 1)))];
    let loser = cond(vid(30, 3), 1, &stale, &[(&a, "3"), (&b, "3")], &[]);
    assert_eq!(s.commit(loser).await.unwrap(), CommitOutcome::Conflict(1));
    assert_eq!(get_one(s, &a, vid(30, 3)).await, None);
    // A delete across shards moves both heads to tombstones.
    let del = cond(vid(40, 4), 1, &[], &[], &[&a, &b]);
    assert_eq!(s.commit(del).await.unwrap(), CommitOutcome::Committed);
    let gone = [(&a, None), (&b, None)];
    let after = cond(vid(50, 5), 1, &gone, &[(&a, "5")], &[]);
    assert_eq!(s.commit(after).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(locks_held(s).await, 0, "every lock ended");
    let ids: Vec<VersionId> = scan_all(s).await.iter().map(|r| r.id).collect();
    assert_eq!(ids, [vid(10, 1), vid(20, 2), vid(40, 4), vid(50, 5)]);
}

async fn a_commit_whose_node_died_prepared_is_aborted_by_the_next(s: &RedisStorage) {
    let ((a, _), (b, _)) = keys_in_two_shards(s);
    s.heartbeat(beat(1, Beat::Join, 60_000, 0)).await.unwrap();
    s.heartbeat(beat(2, Beat::Join, 400, 0)).await.unwrap();
    let dead = cond(vid(10, 2), 2, &[], &[(&a, "dead"), (&b, "dead")], &[]);
    let home = prepare_only(s, &dead).await;
    assert!(locks_held(s).await > 0);
    // A commit of node 1 on both keys meets the lock of a commit in flight: it waits until
    // node 2's lease expires, then aborts that commit and goes on.
    let started = Instant::now();
    let next = cond(vid(20, 1), 1, &[], &[(&a, "next"), (&b, "next")], &[]);
    assert_eq!(s.commit(next).await.unwrap(), CommitOutcome::Committed);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    // The dead commit can no longer be decided: its marker was taken (and its node is
    // fenced besides).
    let shard = &s.layout.shards[home];
    let marker = s
        .call(
            shard.slot,
            "ZSCORE",
            vec![bytes(&shard.pending), id_arg(dead.record.id)],
        )
        .await
        .unwrap();
    let marker = super::client::frame_bytes(marker).unwrap().unwrap();
    assert_eq!(&marker[..], b"-1", "taken");
    assert!(matches!(
        decide_only(s, &dead, home).await,
        Committed::Fenced
    ));
    assert_eq!(locks_held(s).await, 0);
    let ids: Vec<VersionId> = scan_all(s).await.iter().map(|r| r.id).collect();
    assert_eq!(ids, [vid(20, 1)]);
    assert_eq!(
        get_one(s, &b, vid(20, 1)).await.as_deref(),
        Some(&b"next"[..])
    );
}

async fn a_commit_whose_node_died_after_its_decision_moves_its_heads_later(s: &RedisStorage) {
    let ((a, _), (b, _)) = keys_in_two_shards(s);
    s.heartbeat(beat(1, Beat::Join, 60_000, 0)).await.unwrap();
    // Decided, its locks not ended: the next commit that needs one rolls it forward.
    let done = cond(vid(10, 1), 1, &[], &[(&a, "1"), (&b, "1")], &[]);
    let home = prepare_only(s, &done).await;
    assert!(matches!(decide_only(s, &done, home).await, Committed::Yes));
    let other = if s.layout.shard_of(&a) == home {
        &b
    } else {
        &a
    };
    let blind = cond(vid(20, 2), 1, &[(other, None)], &[(other, "2")], &[]);
    assert_eq!(
        s.commit(blind).await.unwrap(),
        CommitOutcome::Conflict(0),
        "the decided commit's write counts in the shard it did not reach"
    );
    let read = cond(
        vid(21, 3),
        1,
        &[(other, Some(vid(10, 1)))],
        &[(other, "3")],
        &[],
    );
    assert_eq!(s.commit(read).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(locks_held(s).await, 0);

    // The same, ended by orphan reclamation instead.
    let done = cond(vid(30, 1), 1, &[], &[(&a, "4"), (&b, "4")], &[]);
    let home = prepare_only(s, &done).await;
    assert!(matches!(decide_only(s, &done, home).await, Committed::Yes));
    assert!(locks_held(s).await > 0);
    s.reclaim_orphans(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(locks_held(s).await, 0);
    let other = if s.layout.shard_of(&a) == home {
        &b
    } else {
        &a
    };
    let read = cond(
        vid(40, 4),
        1,
        &[(other, Some(vid(30, 1)))],
        &[(other, "5")],
        &[],
    );
    assert_eq!(s.commit(read).await.unwrap(), CommitOutcome::Committed);
}

async fn concurrent_commits_across_shards_all_commit(s: &RedisStorage) {
    let ((a, _), (b, _)) = keys_in_two_shards(s);
    s.heartbeat(beat(1, Beat::Join, 60_000, 0)).await.unwrap();
    let commits = (0..40u64).map(|i| {
        let value = i.to_string();
        let c = cond(
            vid(100 + (i * 7919) % 40, u128::from(i)),
            1,
            &[],
            &[(&a, &value), (&b, &value)],
            &[],
        );
        s.commit(c)
    });
    for outcome in futures_util::future::join_all(commits).await {
        assert_eq!(outcome.unwrap(), CommitOutcome::Committed);
    }
    assert_eq!(locks_held(s).await, 0);
    assert_eq!(scan_all(s).await.len(), 40);
}

async fn commits_spread_over_the_shards(s: &RedisStorage) {
    s.heartbeat(beat(1, Beat::Join, 60_000, 0)).await.unwrap();
    for i in 0..300u64 {
        let key = format!("spread-{i}");
        let c = cond(
            vid(i + 1, u128::from(i)),
            1,
            &[],
            &[(&Bytes::from(key), "v")],
            &[],
        );
        assert_eq!(s.commit(c).await.unwrap(), CommitOutcome::Committed);
    }
    let head = s.log_tail(LogPos::default(), 0).await.unwrap().head;
    let per_shard: Vec<u64> = (0..s.shards()).map(|i| head.get(i)).collect();
    assert_eq!(per_shard.iter().sum::<u64>(), 300);
    let fair = 300 / s.shards() as u64;
    assert!(
        per_shard.iter().all(|n| *n > fair / 2),
        "records per shard: {per_shard:?}"
    );
}

/// One module of tests `$name(&storage)`, each run on one server (made by `$server`) and on a
/// cluster.
macro_rules! on_topologies {
    ($module:ident, $server:ident, $($name:ident),* $(,)?) => {
        mod $module {
            $(
                mod $name {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn standalone() {
                        let (s, _server) = super::super::$server();
                        super::super::$name(&s).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn cluster() {
                        let (s, _cluster) = super::super::cluster();
                        super::super::$name(&s).await;
                    }
                }
            )*
        }
    };
}

// On a log of several shards (one server's of three, a cluster's of one per master).
on_topologies!(
    sharded_log,
    standalone_sharded,
    commits_across_shards_check_and_move_every_head,
    a_commit_whose_node_died_prepared_is_aborted_by_the_next,
    a_commit_whose_node_died_after_its_decision_moves_its_heads_later,
    concurrent_commits_across_shards_all_commit,
    commits_spread_over_the_shards,
);

on_topologies!(
    shared_backend,
    standalone,
    leases_fence_commits_and_list_live_nodes,
    checks_are_first_committer_wins_across_writers,
    the_log_lists_records_in_creation_order,
);
