//! The backend's tests: the conformance suite on one server and on a cluster, then what is
//! particular to Redis (URLs, layout, scripts, reconnection, orphans).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::types::Value;
use fred::util::redis_keyslot;

use super::client::{bytes, frame_int, text};
use super::commit::Committed;
use super::layout::{decode_key_list, encode_key_list, Layout};
use super::*;
use crate::storage::testkit::conformance::{batch, commit_ok, get_one, scan_all, vid, vkey};
use crate::storage::testkit::redis_server::{
    free_port, shared_cluster, unique_prefix, RedisCluster, RedisServer,
};
use crate::storage::{record, Beat, Conditions, NodeId};

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
    let layout = Layout::new("aft:");
    assert_eq!(&layout.meta[..], b"aft:{aft:}");
    for key in [&layout.rec, &layout.log, &layout.pending, &layout.pendkeys] {
        assert_eq!(redis_keyslot(key), layout.meta_slot);
    }
    assert_eq!(
        redis_keyslot(&layout.idempotency(b"x{y}")),
        layout.meta_slot
    );
    assert_eq!(redis_keyslot(&layout.idempotency(b"")), layout.meta_slot);

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
    // idempotency entry.
    assert_eq!(server.cli(&["-n", "5", "dbsize"]).trim(), "7");
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

/// Writes a cluster commit's marker and versions, as a commit that crashed before its
/// record would have.
async fn half_commit(s: &RedisStorage, id: VersionId, keys: &[&[u8]]) -> Vec<Bytes> {
    let stored: Vec<Bytes> = keys
        .iter()
        .map(|k| s.layout.version(k, id).unwrap())
        .collect();
    s.eval(
        &s.scripts.mark,
        vec![
            bytes(&s.layout.pending),
            bytes(&s.layout.pendkeys),
            bytes(&s.layout.idempotency(b"")),
            bytes(&s.layout.rec),
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
    let (keys, args) = s
        .commit_request(&crashed.record, &crashed.conditions, &[], Vec::new(), true)
        .unwrap();
    assert!(matches!(
        s.run_commit_script(keys, args).await,
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
    s.eval(
        &s.scripts.reclaim,
        vec![
            bytes(&s.layout.rec),
            bytes(&s.layout.pending),
            bytes(&s.layout.pendkeys),
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
    let pending = s
        .call(s.layout.meta_slot, "ZCARD", vec![bytes(&s.layout.pending)])
        .await
        .unwrap();
    assert_eq!(frame_int(&pending), Some(0));
    // A commit sent again (a retried request) is reported, not applied twice.
    let again = batch(vid(1, 1), Some(b"once"), &[]);
    let (keys, args) = s
        .commit_request(&again.record, &again.conditions, &[], Vec::new(), true)
        .unwrap();
    assert!(matches!(
        s.run_commit_script(keys, args).await,
        Ok(Committed::Yes)
    ));
    assert_eq!(scan_all(&*s).await.len(), 1);
}

/// A lease for `node`.
fn beat(node: u128, kind: Beat, lease_ms: u64, watermark: u64) -> Heartbeat {
    Heartbeat {
        node: NodeId(node),
        lease: Duration::from_millis(lease_ms),
        watermark,
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
    assert_eq!((one.watermark, one.oldest_clock_ms), (42, 7));

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
    assert_eq!(s.log_tail(0, 10).await.unwrap().head, 0);
    // Created out of id order: the log keeps creation order.
    for id in [vid(30, 1), vid(10, 2), vid(20, 3)] {
        commit_ok(s, batch(id, None, &[(b"k", b"v")])).await;
    }
    let page = s.log_tail(0, 10).await.unwrap();
    assert_eq!((page.head, page.through), (3, 3));
    let order: Vec<(u64, VersionId)> = page.records.iter().map(|(p, r)| (*p, r.id)).collect();
    assert_eq!(order, [(1, vid(30, 1)), (2, vid(10, 2)), (3, vid(20, 3))]);
    let page = s.log_tail(1, 1).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].0, 2);
    assert_eq!(
        page.through, 2,
        "a page cut at its limit covers up to its last entry"
    );
    assert!(s.log_tail(3, 10).await.unwrap().records.is_empty());
    // Deleted records leave the log.
    s.delete(vec![], vec![vid(10, 2)]).await.unwrap();
    let page = s.log_tail(0, 10).await.unwrap();
    assert_eq!(page.head, 3);
    let ids: Vec<VersionId> = page.records.iter().map(|(_, r)| r.id).collect();
    assert_eq!(ids, [vid(30, 1), vid(20, 3)]);
}

macro_rules! on_both_topologies {
    ($($name:ident),* $(,)?) => {
        mod shared_backend {
            $(
                mod $name {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn standalone() {
                        let (s, _server) = super::super::standalone();
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

on_both_topologies!(
    leases_fence_commits_and_list_live_nodes,
    checks_are_first_committer_wins_across_writers,
    the_log_lists_records_in_creation_order,
);
