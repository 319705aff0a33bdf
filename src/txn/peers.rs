//! Many nodes over one backend (protocol.md §9): leases, the commit log, freshness, and the
//! cluster-wide watermark of garbage collection. Nothing here talks to another node: every
//! node talks to the backend only.
//!
//! # Membership
//!
//! A node joins with a lease ([`Storage::heartbeat`](crate::storage::Storage::heartbeat)) before it loads anything and renews it
//! every [`PeersConfig::lease`] / 5 in the background. A node whose lease expired is dead to
//! the others: its watermark stops holding collection back, and the backend refuses its
//! commits and renewals (the commit record is created only while the committing node's lease
//! is live, in the same atomic step), so a node that was paused past its lease cannot make a
//! late commit visible. It notices at its next renewal, revokes every snapshot it holds
//! (their versions may be gone) and rejoins under a new node id, so that a commit still in
//! flight under the old id can never pass the fence.
//!
//! # The commit log
//!
//! The backend positions commit records in the order it created them, in each shard of its
//! log ([`Storage::log_tail`](crate::storage::Storage::log_tail); a [`LogPos`] is one position
//! per shard, compared shard by shard). A node applies the log in that order, a page at a
//! time, each record whole (one sequence number: a commit enters the commit set whole, so
//! reads stay read atomic across nodes), advancing its hybrid clock past every timestamp it
//! learns. Its *cursor* is the position up to which it has applied every record, in every
//! shard. A node's own commits are published when they commit
//! and again found in the log; publication is idempotent by commit id.
//!
//! # Freshness
//!
//! With [`Freshness::RealTime`] (the default) a transaction first makes sure its node has
//! applied every commit acknowledged anywhere before it began: one read of the log's tail,
//! shared by every transaction that begins while it is in flight (a *round*; a transaction
//! waits for a round that started after it arrived, so at most one round trip, and usually a
//! shared one). With [`Freshness::Bounded`] it does not wait: the background tailer applies
//! remote commits every [`PeersConfig::tail_interval`], and INFO reports the lag. A node
//! that knows it is alone (its last membership view, younger than [`VIEW_FRESH`], lists only
//! itself) does not wait either: a node that joins it waits [`JOIN_WAIT`] before it serves,
//! by which time the first node's view lists it.
//!
//! # Garbage collection
//!
//! Each node publishes, with its lease, its watermark: the cursor at its oldest live
//! snapshot (or its cursor) and the clock of its oldest running transaction. Deletion work a
//! round takes is stamped with the log head read *after* the versions were superseded (so
//! every superseding commit is at or below the stamp) and the time, and runs only once every
//! live node's watermark passed both: by then no snapshot anywhere can read what it deletes.
//! A dead node's lease expires and its watermark stops counting, so it does not stall
//! collection. Deletions wait while the membership view is older than [`VIEW_FRESH`], and a
//! node that joins a running group waits [`JOIN_WAIT`] (longer than that) before it loads,
//! so that the others hold deletions back for it before it reads a record.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::clock::{self, Clock};
use super::gc::Work;
use super::record;
use super::{Engine, TxnError};
use crate::storage::{Beat, Heartbeat, LogPos, Member, NodeId, StorageError, TxnId};

/// Default lease of a node.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Default pause between two reads of the log by the background tailer.
pub const DEFAULT_TAIL_INTERVAL: Duration = Duration::from_millis(100);
/// A membership view older than this does not allow deletions.
pub const VIEW_FRESH: Duration = Duration::from_secs(2);
/// How long a node that finds others waits after joining before it loads.
pub const JOIN_WAIT: Duration = Duration::from_secs(3);
/// Most records one read of the log returns.
const TAIL_PAGE: usize = 1024;

/// What a transaction that begins on one node sees of commits acknowledged by others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Freshness {
    /// Every commit acknowledged anywhere before it began (one shared read of the log).
    #[default]
    RealTime,
    /// Remote commits within the tailer's lag (no extra round trip).
    Bounded,
}

impl Freshness {
    /// The setting's name, as configured and reported.
    pub fn name(self) -> &'static str {
        match self {
            Freshness::RealTime => "realtime",
            Freshness::Bounded => "bounded",
        }
    }
}

/// Tuning of the multi-node machinery (ignored on a backend only one process uses).
#[derive(Clone, Debug)]
pub struct PeersConfig {
    /// See [`Freshness`].
    pub freshness: Freshness,
    /// How long a node's lease lasts; renewed every fifth of it.
    pub lease: Duration,
    /// Pause between two reads of the log by the background tailer.
    pub tail_interval: Duration,
    /// Where clients reach this node (`host:port`), published for INFO.
    pub address: String,
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            freshness: Freshness::default(),
            lease: DEFAULT_LEASE,
            tail_interval: DEFAULT_TAIL_INTERVAL,
            address: String::new(),
        }
    }
}

/// The live nodes as the last successful heartbeat listed them, and the tags of nodes
/// that were listed before and no longer are (oldest first, at most [`DEPARTED`]).
#[derive(Default)]
struct View {
    members: Vec<Member>,
    at: Option<Instant>,
    departed: VecDeque<u128>,
}

/// Rounds of reading the log (see the module documentation).
#[derive(Default)]
struct Rounds {
    started: u64,
    completed: u64,
    /// The last round that succeeded.
    ok_through: u64,
    running: bool,
    last_error: Option<StorageError>,
}

/// Deletion work waiting for the cluster-wide watermark.
struct Deferred {
    pos: LogPos,
    at_ms: u64,
    work: Work,
}

/// A node's multi-node state, held by its [`Engine`].
pub(crate) struct Peers {
    node: Mutex<NodeId>,
    /// Other processes may use the backend: the lease, the log, the checks and the
    /// deferral are on.
    shared: AtomicBool,
    /// Every record at or below this log position is applied.
    pub(super) cursor: Mutex<LogPos>,
    /// The newest log position seen.
    head: Mutex<LogPos>,
    view: Mutex<View>,
    rounds: Mutex<Rounds>,
    round_done: Notify,
    pub(super) config: PeersConfig,
    deferred: Mutex<VecDeque<Deferred>>,
    /// Records in `deferred` (a record is offered by every round until deleted).
    deferred_records: Mutex<HashSet<TxnId>>,
    stop: Arc<Notify>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Remote commits applied from the log.
    pub(super) remote_commits: AtomicU64,
    /// Delay between a remote commit's timestamp and its application here, last and max.
    lag_last_ms: AtomicU64,
    lag_max_ms: AtomicU64,
    /// Times this node found its lease expired and rejoined.
    pub(super) rejoins: AtomicU64,
    /// Set once the node has loaded the commit set: until then its watermark is zero.
    loaded: AtomicBool,
    /// Serialises rejoins.
    rejoining: tokio::sync::Mutex<()>,
    /// Until when (ms on [`Peers::epoch`]) a node that rejoined others serves nothing: as
    /// after a start, they must see it first (see [`JOIN_WAIT`]).
    serve_after_ms: AtomicU64,
    /// Until when (ms on [`Peers::epoch`]) the node knows it is the only live node.
    alone_until_ms: AtomicU64,
    epoch: Instant,
}

/// Which node runs an interactive transaction, from its id (see [`Engine::owner_of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This node (or the backend is one process's alone).
    Here,
    /// Another live node, reachable at this address.
    Node(String),
    /// A node this one saw live and then leave or die: the transaction died with it.
    Gone,
    /// No node this one knows of (never began anywhere, or long ago).
    Unknown,
}

/// How many departed nodes [`Engine::owner_of`] remembers.
const DEPARTED: usize = 4096;

/// The bits of a transaction id that name the node that began it (on a shared backend).
const OWNER_SHIFT: u32 = 96;

/// What INFO shows of the multi-node machinery.
#[derive(Clone, Debug, Default)]
pub struct PeersInfo {
    /// Whether the backend is shared (membership is on).
    pub shared: bool,
    /// This node's current id.
    pub node: NodeId,
    /// The live nodes, as last seen.
    pub members: Vec<Member>,
    /// Age of that view.
    pub view_age: Option<Duration>,
    /// See [`Freshness`].
    pub freshness: Freshness,
    /// Log position up to which every record is applied.
    pub cursor: LogPos,
    /// Newest log position seen.
    pub head: LogPos,
    /// Remote commits applied.
    pub remote_commits: u64,
    /// Delay from the last remote commit's timestamp to its application here.
    pub lag_last_ms: u64,
    /// The longest such delay seen.
    pub lag_max_ms: u64,
    /// Deletion batches waiting for the cluster-wide watermark.
    pub deferred: usize,
    /// Rejoins after an expired lease.
    pub rejoins: u64,
}

impl Peers {
    pub(super) fn new(config: PeersConfig) -> Peers {
        Peers {
            node: Mutex::new(NodeId(rand::random())),
            shared: AtomicBool::new(false),
            cursor: Mutex::new(LogPos::default()),
            head: Mutex::new(LogPos::default()),
            view: Mutex::new(View::default()),
            rounds: Mutex::new(Rounds::default()),
            round_done: Notify::new(),
            config,
            deferred: Mutex::new(VecDeque::new()),
            deferred_records: Mutex::new(HashSet::new()),
            stop: Arc::new(Notify::new()),
            tasks: Mutex::new(Vec::new()),
            remote_commits: AtomicU64::new(0),
            lag_last_ms: AtomicU64::new(0),
            lag_max_ms: AtomicU64::new(0),
            rejoins: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            rejoining: tokio::sync::Mutex::new(()),
            serve_after_ms: AtomicU64::new(0),
            alone_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether other processes may use the backend (membership is on).
    pub(super) fn shared(&self) -> bool {
        self.shared.load(Ordering::Acquire)
    }

    /// This node's current id.
    pub(super) fn node(&self) -> NodeId {
        *self.node.lock()
    }
}

impl Engine {
    /// Joins the backend's membership. Returns whether other live nodes were found (`false`
    /// also on a backend only one process uses).
    pub(super) async fn join(&self) -> Result<bool, StorageError> {
        let node = self.peers.node();
        let Some(members) = self.heartbeat(Beat::Join, node).await? else {
            return Ok(false);
        };
        self.peers.shared.store(true, Ordering::Release);
        let others = members.iter().any(|m| m.node != node);
        tracing::info!(%node, nodes = members.len(), "joined the nodes sharing the backend");
        Ok(others)
    }

    async fn heartbeat(
        &self,
        kind: Beat,
        node: NodeId,
    ) -> Result<Option<Vec<Member>>, StorageError> {
        // Zero until the node has loaded: every deletion waits for it.
        let (watermark, oldest_clock_ms) = self.node_watermark();
        let asked = Instant::now();
        let members = self
            .storage
            .heartbeat(Heartbeat {
                node,
                lease: self.peers.config.lease,
                watermark,
                oldest_clock_ms,
                address: self.peers.config.address.clone(),
                kind,
            })
            .await?;
        if let Some(members) = &members {
            let alone = members.iter().all(|m| m.node == node);
            let until = if alone {
                let at = asked.saturating_duration_since(self.peers.epoch) + VIEW_FRESH;
                u64::try_from(at.as_millis()).unwrap_or(u64::MAX)
            } else {
                0
            };
            self.peers.alone_until_ms.store(until, Ordering::Release);
            let mut view = self.peers.view.lock();
            let gone: Vec<u128> = view
                .members
                .iter()
                .filter(|old| !members.iter().any(|m| m.node == old.node))
                .map(|old| old.node.0 >> OWNER_SHIFT)
                .collect();
            for tag in gone {
                if view.departed.len() >= DEPARTED {
                    view.departed.pop_front();
                }
                view.departed.push_back(tag);
            }
            view.members = members.clone();
            view.at = Some(asked);
        }
        Ok(members)
    }

    /// This node's watermark: the cursor at its oldest live snapshot (or its cursor), and
    /// the clock of its oldest running transaction.
    fn node_watermark(&self) -> (LogPos, u64) {
        if !self.peers.loaded.load(Ordering::Acquire) {
            return (LogPos::default(), 0);
        }
        let cursor = self.peers.cursor.lock().clone();
        let mut snapshots = self.snapshots.lock();
        let pos = snapshots.min_pos(&cursor);
        let clock = snapshots
            .watermark(self.seq.load(Ordering::Acquire))
            .min_now;
        (pos, clock)
    }

    /// Renews the lease; a lease found expired is replaced (see the module documentation).
    async fn renew(&self) {
        let node = self.peers.node();
        match self.heartbeat(Beat::Renew, node).await {
            Ok(_) => {}
            Err(StorageError::Fenced(_)) => self.rejoin_after(node).await,
            Err(e) => tracing::warn!(error = %e, "cannot renew this node's lease; will retry"),
        }
    }

    /// Rejoins under a new id after the lease of `expired` was found expired (by a renewal
    /// or a commit), unless that already happened: its snapshots are revoked (what they
    /// read may be gone), and no commit still in flight under the old id can pass the fence.
    pub(super) async fn rejoin_after(&self, expired: NodeId) {
        let _one_at_a_time = self.peers.rejoining.lock().await;
        if self.peers.node() != expired {
            return;
        }
        let fresh = NodeId(rand::random());
        // Before the new id can be read (and pass the fence): a node that believes itself
        // alone must see this one before it commits under it.
        let until = self.peers.epoch.elapsed() + JOIN_WAIT;
        self.peers.serve_after_ms.store(
            u64::try_from(until.as_millis()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        *self.peers.node.lock() = fresh;
        let revoked = self.revoke_all_snapshots();
        self.peers.rejoins.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            old = %expired,
            new = %fresh,
            revoked,
            "this node's lease expired (others may have taken over); rejoining under a new id"
        );
        match self.heartbeat(Beat::Join, fresh).await {
            // Alone: nobody to wait for.
            Ok(Some(members)) if members.iter().all(|m| m.node == fresh) => {
                self.peers.serve_after_ms.store(0, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot rejoin; will retry"),
        }
    }

    /// Waits out the pause after a rejoin (see [`Engine::rejoin_after`]).
    pub(super) async fn wait_until_known(&self) {
        let until = self.peers.serve_after_ms.load(Ordering::Acquire);
        let now = u64::try_from(self.peers.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if until > now {
            tokio::time::sleep(Duration::from_millis(until - now)).await;
        }
    }

    /// Gives the lease up (a clean shutdown), best effort.
    pub(super) async fn leave(&self) {
        if !self.peers.shared() {
            return;
        }
        let node = self.peers.node();
        if let Err(e) = self.heartbeat(Beat::Leave, node).await {
            tracing::debug!(error = %e, "cannot give up the lease; it expires by itself");
        }
    }

    /// Makes sure every commit acknowledged anywhere before this call is applied here: waits
    /// for a round of reading the log that started after the call (starting one if none is
    /// running). Does nothing on a backend only one process uses.
    pub async fn catch_up(&self) -> Result<(), TxnError> {
        if !self.peers.shared() {
            return Ok(());
        }
        let target = self.peers.rounds.lock().started + 1;
        loop {
            let notified = self.peers.round_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lead = {
                let mut rounds = self.peers.rounds.lock();
                if rounds.completed >= target {
                    return if rounds.ok_through >= target {
                        Ok(())
                    } else {
                        Err(TxnError::Storage(rounds.last_error.clone().unwrap_or(
                            StorageError::Unavailable("cannot read the commit log".into()),
                        )))
                    };
                }
                if rounds.running {
                    None
                } else {
                    rounds.running = true;
                    rounds.started += 1;
                    Some(rounds.started)
                }
            };
            let Some(round) = lead else {
                notified.await;
                continue;
            };
            let result = self.read_log().await;
            {
                let mut rounds = self.peers.rounds.lock();
                rounds.running = false;
                rounds.completed = round;
                match &result {
                    Ok(()) => rounds.ok_through = round,
                    Err(e) => rounds.last_error = Some(e.clone()),
                }
            }
            self.peers.round_done.notify_waiters();
            if round >= target {
                return result.map_err(TxnError::Storage);
            }
        }
    }

    /// Catches up before a transaction begins (or WATCH takes its versions), if the
    /// freshness setting asks for it.
    pub(crate) async fn fresh(&self) -> Result<(), TxnError> {
        self.wait_until_known().await;
        match self.peers.config.freshness {
            Freshness::RealTime if !self.alone() => self.catch_up().await,
            _ => Ok(()),
        }
    }

    /// Whether this node knows it is the only live one, from a view younger than
    /// [`VIEW_FRESH`]: then no other node can have acknowledged a commit it does not know,
    /// since a node that joins others waits [`JOIN_WAIT`] (longer) before it serves.
    fn alone(&self) -> bool {
        let now = self.peers.epoch.elapsed().as_millis();
        u128::from(self.peers.alone_until_ms.load(Ordering::Acquire)) > now
    }

    /// A fresh transaction id: 128 random bits, or on a shared backend this node's tag (the
    /// top 32 bits of its id) and 96 random bits, so that any node can tell which node runs
    /// an interactive transaction (AFT.ATTACH through another node) and nobody can guess it.
    pub(super) fn new_txn_id(&self) -> TxnId {
        let random = rand::random::<u128>();
        if !self.peers.shared() {
            return TxnId(random);
        }
        let tag = self.peers.node().0 >> OWNER_SHIFT << OWNER_SHIFT;
        TxnId(tag | (random & ((1u128 << OWNER_SHIFT) - 1)))
    }

    /// Which node runs the transaction `txid` (its id carries the tag of the node that
    /// began it), by the last membership view.
    pub fn owner_of(&self, txid: TxnId) -> Owner {
        if !self.peers.shared() {
            return Owner::Here;
        }
        let tag = txid.0 >> OWNER_SHIFT;
        if self.peers.node().0 >> OWNER_SHIFT == tag {
            return Owner::Here;
        }
        let view = self.peers.view.lock();
        match view.members.iter().find(|m| m.node.0 >> OWNER_SHIFT == tag) {
            Some(m) => Owner::Node(m.address.clone()),
            None if view.departed.contains(&tag) => Owner::Gone,
            None => Owner::Unknown,
        }
    }

    /// Reads the log from the cursor to its head, applying every record (one round).
    async fn read_log(&self) -> Result<(), StorageError> {
        let mut after = self.peers.cursor.lock().clone();
        loop {
            let page = self.storage.log_tail(after.clone(), TAIL_PAGE).await?;
            let now = clock::wall_ms();
            for rec in page.records {
                let writes = record::decode_body(&rec.body)?;
                self.clock.observe(rec.id.ts);
                let fresh = self.publish(
                    rec.id,
                    &writes,
                    vec![None; writes.len()],
                    rec.idempotency_key.as_ref(),
                );
                if fresh {
                    let lag = now.saturating_sub(Clock::physical_ms(rec.id.ts));
                    self.peers.remote_commits.fetch_add(1, Ordering::Relaxed);
                    self.peers.lag_last_ms.store(lag, Ordering::Relaxed);
                    self.peers.lag_max_ms.fetch_max(lag, Ordering::Relaxed);
                }
            }
            {
                let mut head = self.peers.head.lock();
                *head = head.max(&page.head);
            }
            // Published before the cursor moves: a pin that reads the cursor sees them.
            {
                let mut cursor = self.peers.cursor.lock();
                *cursor = cursor.max(&page.through);
            }
            if page.through.covers(&page.head) || after.covers(&page.through) {
                return Ok(());
            }
            after = page.through;
        }
    }

    /// Starts renewing the lease in the background (a task of its own, so that a slow read
    /// of the log never delays a renewal).
    pub(super) fn start_renewals(self: &Arc<Self>) {
        let renew_every = (self.peers.config.lease / 5).max(Duration::from_millis(10));
        self.spawn_every(renew_every, Task::Renew);
    }

    /// Marks the node loaded (its watermark counts from now on) and starts the background
    /// tailer.
    pub(super) fn start_tailer(self: &Arc<Self>) {
        self.peers.loaded.store(true, Ordering::Release);
        let tail_every = self
            .peers
            .config
            .tail_interval
            .max(Duration::from_millis(1));
        self.spawn_every(tail_every, Task::Tail);
    }

    fn spawn_every(self: &Arc<Self>, interval: Duration, task: Task) {
        let wanted = match task {
            Task::Renew | Task::Tail => self.peers.shared(),
        };
        if !wanted {
            return;
        }
        let handle = tokio::spawn(every(
            Arc::downgrade(self),
            self.peers.stop.clone(),
            interval,
            task,
        ));
        self.peers.tasks.lock().push(handle);
    }

    /// Stops the background tasks.
    pub(super) async fn stop_peers(&self) {
        self.peers.stop.notify_waiters();
        let tasks = std::mem::take(&mut *self.peers.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The cluster-wide watermark, `(log position, clock)`, if deletions may run now: the
    /// minimum over live nodes, from a view younger than [`VIEW_FRESH`]. Always allowed (no
    /// limit) on a backend only one process uses.
    fn cluster_watermark(&self) -> Option<(Option<LogPos>, u64)> {
        if !self.peers.shared() {
            return Some((None, u64::MAX));
        }
        let view = self.peers.view.lock();
        let fresh = view.at.is_some_and(|at| at.elapsed() < VIEW_FRESH);
        if !fresh {
            return None;
        }
        let own = self.peers.node();
        let (own_pos, own_clock) = self.node_watermark();
        let mut pos = own_pos;
        let mut clock = own_clock;
        for m in view.members.iter().filter(|m| m.node != own) {
            pos = pos.min(&m.watermark);
            clock = clock.min(m.oldest_clock_ms);
        }
        Some((Some(pos), clock))
    }

    /// Garbage collection's deletion work, held back until every live node's watermark
    /// passed it: queues `work` (stamped with a log head read after it was taken), and
    /// returns what may be deleted now. On a backend only one process uses, `work` itself.
    pub(super) async fn release_work(&self, work: Work) -> Work {
        if !self.peers.shared() {
            return work;
        }
        let Work {
            versions,
            records,
            heads,
        } = work;
        let records: Vec<_> = {
            let mut queued = self.peers.deferred_records.lock();
            records
                .into_iter()
                .filter(|id| queued.insert(id.version.txn))
                .collect()
        };
        let work = Work {
            versions,
            records,
            heads,
        };
        if !work.is_empty() {
            // A round that starts now reads a head at or above every superseding commit.
            match self.catch_up().await {
                Ok(()) => {
                    let pos = self.peers.head.lock().clone();
                    self.peers.deferred.lock().push_back(Deferred {
                        pos,
                        at_ms: clock::wall_ms(),
                        work,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection: cannot read the log; deletions wait");
                    self.give_back(work);
                }
            }
        }
        let Some((pos, clock)) = self.cluster_watermark() else {
            return Work::default();
        };
        let mut out = Work::default();
        let mut deferred = self.peers.deferred.lock();
        while deferred
            .front()
            .is_some_and(|d| pos.as_ref().is_none_or(|p| p.covers(&d.pos)) && d.at_ms <= clock)
        {
            let Some(d) = deferred.pop_front() else { break };
            out.versions.extend(d.work.versions);
            out.records.extend(d.work.records);
            out.heads.extend(d.work.heads);
        }
        drop(deferred);
        let mut queued = self.peers.deferred_records.lock();
        for id in &out.records {
            queued.remove(&id.version.txn);
        }
        out
    }

    /// Returns work that could not be queued to the tracker (retried next round).
    fn give_back(&self, work: Work) {
        {
            let mut queued = self.peers.deferred_records.lock();
            for id in &work.records {
                queued.remove(&id.version.txn);
            }
        }
        let mut tracker = self.gc.tracker.lock();
        tracker.versions_failed(work.versions);
        tracker.heads_failed(work.heads);
    }

    /// What INFO shows of the multi-node machinery.
    pub fn peers_info(&self) -> PeersInfo {
        let view = self.peers.view.lock();
        PeersInfo {
            shared: self.peers.shared(),
            node: self.peers.node(),
            members: view.members.clone(),
            view_age: view.at.map(|at| at.elapsed()),
            freshness: self.peers.config.freshness,
            cursor: self.peers.cursor.lock().clone(),
            head: self.peers.head.lock().clone(),
            remote_commits: self.peers.remote_commits.load(Ordering::Relaxed),
            lag_last_ms: self.peers.lag_last_ms.load(Ordering::Relaxed),
            lag_max_ms: self.peers.lag_max_ms.load(Ordering::Relaxed),
            deferred: self.peers.deferred.lock().len(),
            rejoins: self.peers.rejoins.load(Ordering::Relaxed),
        }
    }
}

/// A background task of [`Engine::start_renewals`] or [`Engine::start_tailer`].
#[derive(Clone, Copy)]
enum Task {
    Tail,
    Renew,
}

async fn every(engine: Weak<Engine>, stop: Arc<Notify>, interval: Duration, task: Task) {
    let mut failures = 0u64;
    loop {
        let stopped = stop.notified();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped => return,
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        if engine.closing.load(Ordering::Acquire) {
            return;
        }
        match task {
            Task::Renew => engine.renew().await,
            // Alone, there is nothing to learn (garbage collection still reads the log).
            Task::Tail if engine.alone() => {}
            Task::Tail => match engine.catch_up().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "cannot read the commit log; will retry");
                    }
                }
            },
        }
    }
}
