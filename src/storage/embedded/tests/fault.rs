//! Write failures, injected by a disk that fails on demand: outages start, refuse writes,
//! keep reads going and end by themselves; the page cache holds what it is given.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::backends::InMemoryBackend;
use redb::StorageBackend;

use crate::storage::embedded::{EmbeddedOptions, EmbeddedStorage};
use crate::storage::testkit::conformance::{batch, commit_ok, get_one, plain, scan_all, vid, vkey};
use crate::storage::{CommitOutcome, Storage, StorageError, VersionId};

/// An in-memory disk that fails on demand like a full or broken one: while `full` is set,
/// and for the next `failing_syncs` calls of `sync_data`, those calls fail with
/// `StorageFull` (ENOSPC) and change nothing. Clones share the bytes and the switches, so
/// a store can reopen the same disk. Counts the bytes read from it.
#[derive(Clone, Debug, Default)]
struct FaultyDisk {
    bytes: Arc<InMemoryBackend>,
    /// Every `write`, `set_len` and `sync_data` fails.
    full: Arc<AtomicBool>,
    /// This many more `sync_data` calls fail.
    failing_syncs: Arc<AtomicU64>,
    read_bytes: Arc<AtomicU64>,
}

impl FaultyDisk {
    fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    fn fail_syncs(&self, n: u64) {
        self.failing_syncs.store(n, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), std::io::Error> {
        if self.full.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        Ok(())
    }

    /// Opens a store on this disk.
    fn open(&self, options: EmbeddedOptions) -> Result<EmbeddedStorage, StorageError> {
        let disk = self.clone();
        EmbeddedStorage::open_with_backend("faulty-disk", options, move || Ok(disk.clone()))
    }
}

impl StorageBackend for FaultyDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.bytes.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.read_bytes
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        StorageBackend::read(&*self.bytes, offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.bytes.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        let failing = self
            .failing_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(std::io::Error::other("injected: fsync failed"));
        }
        self.bytes.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        StorageBackend::write(&*self.bytes, offset, data)
    }
}

/// Polls until the store accepts writes again.
async fn wait_until_healthy(s: &EmbeddedStorage) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.healthy() {
        assert!(
            Instant::now() < deadline,
            "the store did not recover by itself: {:?}, {:?}",
            s.health(),
            s.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn value_of(id: VersionId) -> Bytes {
    Bytes::from(format!("value-{}", id.ts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_by_themselves_once_a_full_disk_has_room() {
    let disk = FaultyDisk::default();
    let s = disk.open(EmbeddedOptions::default()).expect("open");
    let commit = |id: VersionId| s.commit(batch(id, None, &[(b"k", &value_of(id))]));
    let mut acknowledged = Vec::new();
    for ts in 1..=5 {
        let id = vid(ts, u128::from(ts));
        assert_eq!(plain(commit(id).await), Ok(CommitOutcome::Committed));
        acknowledged.push(id);
    }
    assert!(s.healthy());

    disk.set_full(true);
    // The group whose commit failed may or may not be durable.
    let unknown = vid(10, 10);
    let failed = commit(unknown).await;
    assert!(
        matches!(
            failed,
            Err(StorageError::OutcomeUnknown(_) | StorageError::Io(_))
        ),
        "{failed:?}"
    );
    assert!(!s.healthy());

    // While the disk is full, commits fail at once, write nothing and say why; the
    // writer keeps retrying (and failing) meanwhile.
    let mut refused = Vec::new();
    for ts in 11..=20 {
        let id = vid(ts, u128::from(ts));
        let start = Instant::now();
        let result = commit(id).await;
        assert!(start.elapsed() < Duration::from_secs(1), "a refusal waited");
        match result {
            Err(StorageError::Unavailable(message)) => {
                assert!(message.message().contains("no space left"), "{message}");
                assert_eq!(message.backend(), "embedded");
            }
            other => panic!("a commit while the disk is full: {other:?}"),
        }
        refused.push(id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = s.health();
    assert!(!health.writable, "{health:?}");
    assert!(health.failing_for.is_some(), "{health:?}");
    // What INFO shows: the store says it cannot write, and why.
    let reported = Storage::health(&s);
    assert!(
        reported
            .as_ref()
            .is_err_and(|e| e.contains("no space left")),
        "{reported:?}"
    );
    let stats = s.stats();
    assert_eq!(stats.refused, 10, "{stats:?}");
    assert!(stats.write_failures >= 1, "{stats:?}");
    assert!(stats.reopen_failures >= 1, "{stats:?}");

    // Space is back: nothing from outside, the store takes commits again.
    disk.set_full(false);
    wait_until_healthy(&s).await;
    let health = s.health();
    assert!(health.readable && health.error.is_none(), "{health:?}");
    assert_eq!(Storage::health(&s), Ok(()));
    assert!(s.stats().reopens >= 1);
    for ts in 21..=25 {
        let id = vid(ts, u128::from(ts));
        assert_eq!(plain(commit(id).await), Ok(CommitOutcome::Committed));
        acknowledged.push(id);
    }
    for id in &acknowledged {
        assert_eq!(get_one(&s, b"k", *id).await, Some(value_of(*id)));
    }
    s.close().await.expect("close");
    drop(s);

    // Opened afresh: every acknowledged commit is there, no refused one is.
    let s = disk.open(EmbeddedOptions::default()).expect("reopen");
    let found: BTreeSet<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
    for id in &acknowledged {
        assert!(found.contains(id), "acknowledged {id:?} lost");
        assert_eq!(get_one(&s, b"k", *id).await, Some(value_of(*id)));
    }
    for id in &refused {
        assert!(!found.contains(id), "refused {id:?} was written");
        assert_eq!(get_one(&s, b"k", *id).await, None);
    }
    if found.contains(&unknown) {
        assert_eq!(get_one(&s, b"k", unknown).await, Some(value_of(unknown)));
    }
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_fsync_is_outcome_unknown_and_reads_go_on() {
    let disk = FaultyDisk::default();
    let s = disk.open(EmbeddedOptions::default()).expect("open");
    let before = vid(1, 1);
    commit_ok(&s, batch(before, None, &[(b"k", &value_of(before))])).await;

    disk.fail_syncs(1);
    let unknown = vid(2, 2);
    let failed = s
        .commit(batch(unknown, None, &[(b"k", &value_of(unknown))]))
        .await;
    assert!(
        matches!(failed, Err(StorageError::OutcomeUnknown(_))),
        "{failed:?}"
    );
    // redb's error, which says what failed, is kept as the source.
    let source = failed.as_ref().err().and_then(std::error::Error::source);
    assert!(source.is_some(), "{failed:?}");
    // The disk works again, so the writer's reopen succeeds: reads are served at once,
    // while writes wait for the probe.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.health().readable {
        assert!(Instant::now() < deadline, "{:?}", s.health());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(get_one(&s, b"k", before).await, Some(value_of(before)));
    wait_until_healthy(&s).await;
    let after = vid(3, 3);
    commit_ok(&s, batch(after, None, &[(b"k", &value_of(after))])).await;
    let stats = s.stats();
    assert_eq!((stats.write_failures, stats.reopen_failures), (1, 0));
    s.close().await.expect("close");
    drop(s);

    let s = disk.open(EmbeddedOptions::default()).expect("reopen");
    assert_eq!(get_one(&s, b"k", before).await, Some(value_of(before)));
    assert_eq!(get_one(&s, b"k", after).await, Some(value_of(after)));
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_group_commit_answers_every_waiter_with_an_error() {
    let disk = FaultyDisk::default();
    let s = Arc::new(disk.open(EmbeddedOptions::default()).expect("open"));
    commit_ok(&*s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;

    disk.set_full(true);
    let tasks: Vec<_> = (2..18u64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.commit(batch(vid(i, 0), None, &[(b"k", b"v")])).await })
        })
        .collect();
    let mut unknown = 0;
    for task in tasks {
        match task.await.expect("task") {
            // The group whose commit failed may or may not be durable.
            Err(StorageError::OutcomeUnknown(_)) => unknown += 1,
            // Later requests: refused, unapplied, until the disk has room again.
            Err(StorageError::Unavailable(_) | StorageError::Io(_)) => {}
            other => panic!("expected an error, got {other:?}"),
        }
    }
    assert!(unknown >= 1);
    let later = s.commit(batch(vid(30, 0), None, &[])).await;
    assert!(
        matches!(later, Err(StorageError::Unavailable(_))),
        "{later:?}"
    );
    let deletion = s.delete(vec![vkey(b"k", vid(1, 1))], vec![]).await;
    assert!(
        matches!(deletion, Err(StorageError::Unavailable(_))),
        "{deletion:?}"
    );
    // Closing during the outage neither hangs nor fails: nothing acknowledged is pending.
    s.close().await.expect("close");
    let after_close = s.commit(batch(vid(31, 0), None, &[])).await;
    assert!(
        matches!(after_close, Err(StorageError::Closed)),
        "{after_close:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_without_fsync_starts_an_outage_that_ends() {
    let disk = FaultyDisk::default();
    let options = EmbeddedOptions {
        fsync: false,
        ..EmbeddedOptions::default()
    };
    let s = disk.open(options).expect("open");
    disk.fail_syncs(1);
    // Acknowledged without fsync; the flush a second later fails.
    commit_ok(&s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.stats().write_failures == 0 {
        assert!(Instant::now() < deadline, "{:?}", s.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_until_healthy(&s).await;
    commit_ok(&s, batch(vid(2, 2), None, &[(b"k", b"w")])).await;
    s.close().await.expect("close");
    drop(s);
    let s = disk.open(options).expect("reopen");
    assert_eq!(
        get_one(&s, b"k", vid(2, 2)).await.as_deref(),
        Some(&b"w"[..])
    );
    s.close().await.expect("close");
}

/// Bytes read from the disk by a second read of every value, after a first one.
async fn bytes_read_by_a_second_pass(cache_bytes: usize) -> u64 {
    const VALUES: u64 = 32;
    let disk = FaultyDisk::default();
    let options = EmbeddedOptions {
        fsync: true,
        cache_bytes,
    };
    let s = disk.open(options).expect("open");
    let value = vec![7u8; 256 << 10];
    let ids: Vec<VersionId> = (1..=VALUES).map(|i| vid(i, u128::from(i))).collect();
    for id in &ids {
        commit_ok(&s, batch(*id, None, &[(b"k", &value)])).await;
    }
    let read_all = || async {
        for id in &ids {
            assert_eq!(
                get_one(&s, b"k", *id).await.map(|v| v.len()),
                Some(value.len())
            );
        }
    };
    read_all().await;
    let before = disk.read_bytes.load(Ordering::Relaxed);
    read_all().await;
    let read = disk.read_bytes.load(Ordering::Relaxed) - before;
    s.close().await.expect("close");
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_cache_holds_cache_bytes_and_no_more() {
    // 8 MiB of values through a 1 MiB page cache: the second pass misses again.
    let small = bytes_read_by_a_second_pass(1 << 20).await;
    assert!(small >= 6 << 20, "{small} bytes read through a 1 MiB cache");
    // Through a 64 MiB cache it is all served from memory.
    let large = bytes_read_by_a_second_pass(64 << 20).await;
    assert!(large < 1 << 20, "{large} bytes read through a 64 MiB cache");
}
