//! Interactive transactions that outlive a command, a connection, or the function that
//! began them (protocol.md §6).
//!
//! An open transaction is registered under its id so that any connection can attach to it
//! (the next function of a workflow, or the retry of a crashed one). Nothing it wrote is
//! visible until it commits. One that nobody touches for its timeout is aborted by a
//! background reaper, so a client that vanished leaves nothing behind.
//!
//! # Bounds
//!
//! Open transactions are bounded in number and in buffered bytes, in all and per client: a
//! connection may hold at most [`OpenLimits::max_per_client`] transactions it began and
//! that are still open. When the registry is full, the transaction that has been idle the
//! longest among those no connection is attached to is aborted to make room, provided it
//! has been idle for at least [`OpenLimits::default_timeout`]: so one client that opens
//! transactions and walks away cannot lock every other client out for the length of its
//! timeouts. Ids are 128 random bits (see [`crate::txn::Txn::id`]): a client cannot attach
//! to a transaction whose id it was not given.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Engine, Txn, TxnError};
use crate::storage::{StorageError, TxnId, VersionId};

/// Limits on open transactions.
#[derive(Clone, Debug)]
pub struct OpenLimits {
    /// Idle time after which an open transaction is aborted, unless AFT.BEGIN names one.
    pub default_timeout: Duration,
    /// The longest timeout AFT.BEGIN may ask for.
    pub max_timeout: Duration,
    /// Most transactions open at once.
    pub max_open: usize,
    /// Most bytes (keys and values) one transaction may buffer.
    pub max_txn_bytes: usize,
    /// Most bytes all open transactions together may buffer.
    pub max_total_bytes: usize,
    /// Most open transactions begun by one client (connection).
    pub max_per_client: usize,
}

impl Default for OpenLimits {
    fn default() -> Self {
        OpenLimits {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(3600),
            max_open: 10_000,
            max_txn_bytes: 64 << 20,
            max_total_bytes: 1 << 30,
            max_per_client: 1_000,
        }
    }
}

/// How an interactive transaction ended, or that it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Open: commands can still run in it.
    Running,
    /// Committed at this version.
    Committed(VersionId),
    /// Aborted (by AFT.ABORT, a timeout, a limit, or a conflict at commit).
    Aborted,
    /// Not known here: never existed, or ended too long ago to be remembered.
    Unknown,
}

impl Status {
    /// The word AFT.STATUS replies with.
    pub fn word(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Committed(_) => "committed",
            Status::Aborted => "aborted",
            Status::Unknown => "unknown",
        }
    }
}

/// Why an operation on open transactions failed. The session turns it into a reply
/// (`crate::session::error`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// `max_open` transactions are open.
    #[error("too many open transactions ({0}); commit or abort some first")]
    TooMany(usize),
    /// This client began `max_per_client` transactions that are still open.
    #[error("this client holds too many open transactions ({0}, max_open_txns_per_client); commit or abort some first")]
    TooManyForClient(usize),
    /// A commit with this idempotency key already exists.
    #[error("{0} a transaction with this idempotency key already committed; nothing was applied")]
    AlreadyCommitted(TxnId),
    /// The transaction has ended.
    #[error("transaction {0} is no longer running ({1})")]
    Ended(TxnId, &'static str),
    /// No open transaction has this id.
    #[error("unknown transaction {0} (never begun here, or ended long ago)")]
    UnknownTxn(String),
    /// The transaction buffered more than a limit allows; it was aborted.
    #[error("transaction {0} aborted: it buffered more than {1} bytes of writes")]
    TooBig(TxnId, usize),
    /// All open transactions together buffer too much; this one was aborted.
    #[error("transaction {0} aborted: open transactions buffer more than {1} bytes in all")]
    TotalTooBig(TxnId, usize),
    /// The backend failed.
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// The mutable part of an open transaction, behind an async mutex: commands of the
/// connections attached to it run one at a time.
pub struct Slot {
    /// The transaction while it runs.
    pub txn: Option<Txn>,
    /// Its status once it ended.
    pub ended: Option<Status>,
    /// Buffered bytes last accounted in the registry's total.
    accounted: usize,
}

/// What one client (connection) holds: the open transactions it began. A transaction
/// keeps counting against the client that began it until it ends, even after the client
/// detached or disconnected.
#[derive(Debug, Default)]
pub struct Holder {
    open: AtomicUsize,
}

impl Holder {
    /// A client that holds nothing yet.
    pub fn new() -> Arc<Holder> {
        Arc::default()
    }

    /// Open transactions it began.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// An interactive transaction registered in [`OpenTxns`].
pub struct OpenTxn {
    id: TxnId,
    timeout: Duration,
    /// When it was last used (deadline = last_used + timeout).
    last_used: Mutex<Instant>,
    /// Connections attached to it now.
    attached: AtomicUsize,
    /// The user that began it: only connections authenticated as that user may attach.
    user: Bytes,
    /// The client that began it; released once when it ends.
    holder: Mutex<Option<Arc<Holder>>>,
    slot: tokio::sync::Mutex<Slot>,
}

impl OpenTxn {
    /// Its id.
    pub fn id(&self) -> TxnId {
        self.id
    }

    /// Marks it as used now (its idle timeout starts again).
    pub fn touch(&self) {
        *self.last_used.lock() = Instant::now();
    }

    /// Locks it for one command.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Slot> {
        self.slot.lock().await
    }

    /// A connection stops being attached to it (DETACH, RESET, COMMIT, ABORT, a closed
    /// connection).
    pub fn detach(&self) {
        let _ = self
            .attached
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    fn is_detached(&self) -> bool {
        self.attached.load(Ordering::Acquire) == 0
    }

    fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.last_used.lock())
    }
}

counters! {
    /// Counters of interactive transactions, for INFO.
    pub struct OpenStats {
    /// AFT.BEGIN that opened a transaction.
    begun,
    /// Interactive transactions committed.
    committed,
    /// Interactive transactions aborted by AFT.ABORT or a conflict.
    aborted,
    /// Aborted by the reaper after their timeout.
    timed_out,
    /// Aborted for exceeding a buffer limit.
    over_limit,
    /// Retries recognised by their idempotency key.
    duplicates,
    /// Idle, detached transactions aborted to make room when the registry was full.
    evicted,
}
}

impl OpenStats {
    /// Zeroes every counter (CONFIG RESETSTAT).
    pub fn reset(&self) {
        for counter in self.all() {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// How long ended transactions are remembered for AFT.STATUS and AFT.ATTACH errors.
const REMEMBER_ENDED: Duration = Duration::from_secs(600);
const REMEMBER_MAX: usize = 100_000;

/// Recently ended transactions: how each ended, and the order they ended in (oldest first).
#[derive(Default)]
struct Ended {
    status: HashMap<TxnId, Status>,
    order: VecDeque<(Instant, TxnId)>,
}

/// The registry of open interactive transactions of one node.
pub struct OpenTxns {
    engine: Arc<Engine>,
    limits: OpenLimits,
    open: Mutex<HashMap<TxnId, Arc<OpenTxn>>>,
    ended: Mutex<Ended>,
    total_bytes: AtomicUsize,
    stats: OpenStats,
}

impl OpenTxns {
    /// A registry over `engine`, with a reaper task that aborts idle transactions. The task
    /// stops when the registry is dropped.
    pub fn start(engine: Arc<Engine>, limits: OpenLimits) -> Arc<OpenTxns> {
        let registry = Arc::new(OpenTxns {
            engine,
            limits,
            open: Mutex::new(HashMap::new()),
            ended: Mutex::new(Ended::default()),
            total_bytes: AtomicUsize::new(0),
            stats: OpenStats::default(),
        });
        let weak = Arc::downgrade(&registry);
        let period = (registry.limits.default_timeout / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(reap(weak, period));
        registry
    }

    /// Counters.
    pub fn stats(&self) -> &OpenStats {
        &self.stats
    }

    /// Number of open transactions, and bytes they buffer.
    pub fn gauges(&self) -> (usize, usize) {
        (
            self.open.lock().len(),
            self.total_bytes.load(Ordering::Relaxed),
        )
    }

    /// The limits in force.
    pub fn limits(&self) -> &OpenLimits {
        &self.limits
    }

    /// Opens a transaction for the client `holder`; the caller is attached to it. With an
    /// idempotency key that a commit already used, nothing is opened and the committed
    /// transaction's id is returned as an error.
    pub async fn begin(
        &self,
        idempotency_key: Option<Bytes>,
        timeout: Option<Duration>,
        holder: &Arc<Holder>,
        user: &Bytes,
    ) -> Result<Arc<OpenTxn>, OpenError> {
        if holder.open() >= self.limits.max_per_client {
            return Err(OpenError::TooManyForClient(self.limits.max_per_client));
        }
        if let Some(key) = &idempotency_key {
            if let Some(existing) = self.engine.storage.find_idempotent(key.clone()).await? {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return Err(OpenError::AlreadyCommitted(existing.txn));
            }
        }
        if self.open.lock().len() >= self.limits.max_open {
            self.evict_one();
        }
        let mut txn = self.engine.begin_fresh().await.map_err(|e| match e {
            TxnError::Storage(e) => OpenError::Storage(e),
            other => OpenError::Storage(StorageError::Io(other.to_string().into())),
        })?;
        if let Some(key) = idempotency_key {
            txn.set_idempotency_key(key);
        }
        let id = txn.id();
        let open = Arc::new(OpenTxn {
            id,
            timeout: timeout
                .unwrap_or(self.limits.default_timeout)
                .min(self.limits.max_timeout),
            last_used: Mutex::new(Instant::now()),
            attached: AtomicUsize::new(1),
            user: user.clone(),
            holder: Mutex::new(Some(holder.clone())),
            slot: tokio::sync::Mutex::new(Slot {
                txn: Some(txn),
                ended: None,
                accounted: 0,
            }),
        });
        let mut map = self.open.lock();
        if map.len() >= self.limits.max_open {
            return Err(OpenError::TooMany(self.limits.max_open));
        }
        if holder.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_per_client {
            holder.open.fetch_sub(1, Ordering::AcqRel);
            return Err(OpenError::TooManyForClient(self.limits.max_per_client));
        }
        map.insert(id, open.clone());
        self.stats.begun.fetch_add(1, Ordering::Relaxed);
        Ok(open)
    }

    /// Aborts the transaction idle the longest among those no connection is attached to,
    /// if it has been idle for at least the default timeout (see the module documentation).
    fn evict_one(&self) {
        let now = Instant::now();
        let floor = self.limits.default_timeout;
        let victim = self
            .open
            .lock()
            .values()
            .filter(|o| o.is_detached())
            .map(|o| (o.idle_for(now), o))
            .filter(|(idle, _)| *idle >= floor)
            .max_by_key(|(idle, _)| *idle)
            .map(|(_, o)| o.clone());
        let Some(victim) = victim else {
            return;
        };
        // Busy with a command: in use, not idle.
        let Ok(mut slot) = victim.slot.try_lock() else {
            return;
        };
        if slot.txn.is_some() {
            self.finish(&victim, &mut slot, Status::Aborted);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(txid = %victim.id, "aborted an idle, detached transaction to make room");
        }
    }

    /// The open transaction with this id, for AFT.ATTACH by a connection authenticated as
    /// `user`. Another user's transaction is reported as unknown (its existence is not
    /// revealed).
    pub fn attach(&self, txid: &[u8], user: &[u8]) -> Result<Arc<OpenTxn>, OpenError> {
        let text = String::from_utf8_lossy(txid).into_owned();
        let Some(id) = parse_txid(txid) else {
            return Err(OpenError::UnknownTxn(text));
        };
        if let Some(open) = self.open.lock().get(&id) {
            if open.user != user {
                return Err(OpenError::UnknownTxn(text));
            }
            open.touch();
            open.attached.fetch_add(1, Ordering::AcqRel);
            return Ok(open.clone());
        }
        match self.status_of(id) {
            Status::Committed(_) => Err(OpenError::Ended(id, "committed")),
            Status::Aborted => Err(OpenError::Ended(id, "aborted")),
            _ => Err(OpenError::UnknownTxn(text)),
        }
    }

    /// After a command ran in `slot`: enforces the buffer limits. On `Err` the transaction
    /// has been aborted.
    pub fn account(&self, open: &OpenTxn, slot: &mut Slot) -> Result<(), OpenError> {
        let now = slot.txn.as_ref().map_or(0, Txn::write_bytes);
        let before = slot.accounted;
        slot.accounted = now;
        let total = if now >= before {
            self.total_bytes.fetch_add(now - before, Ordering::Relaxed) + (now - before)
        } else {
            self.total_bytes.fetch_sub(before - now, Ordering::Relaxed) - (before - now)
        };
        let error = if now > self.limits.max_txn_bytes {
            OpenError::TooBig(open.id, self.limits.max_txn_bytes)
        } else if total > self.limits.max_total_bytes {
            OpenError::TotalTooBig(open.id, self.limits.max_total_bytes)
        } else {
            return Ok(());
        };
        self.stats.over_limit.fetch_add(1, Ordering::Relaxed);
        self.finish(open, slot, Status::Aborted);
        Err(error)
    }

    /// Commits the transaction in `slot`.
    pub async fn commit(&self, open: &OpenTxn, slot: &mut Slot) -> Result<VersionId, TxnError> {
        let Some(txn) = slot.txn.take() else {
            return Err(TxnError::Internal("transaction already ended".into()));
        };
        let result = txn.commit().await;
        let status = match &result {
            Ok(Some(id)) => Status::Committed(*id),
            // Read-only: nothing to commit; report it as committed at no version.
            Ok(None) => Status::Committed(VersionId::default()),
            Err(TxnError::Duplicate(_)) => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                Status::Aborted
            }
            Err(TxnError::Storage(StorageError::OutcomeUnknown(_))) => Status::Unknown,
            Err(_) => Status::Aborted,
        };
        match status {
            Status::Committed(_) => self.stats.committed.fetch_add(1, Ordering::Relaxed),
            _ => self.stats.aborted.fetch_add(1, Ordering::Relaxed),
        };
        self.finish(open, slot, status);
        result.map(|id| id.unwrap_or_default())
    }

    /// Aborts the transaction in `slot`: nothing it wrote becomes visible.
    pub fn abort(&self, open: &OpenTxn, slot: &mut Slot) {
        if slot.txn.is_some() {
            self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        }
        self.finish(open, slot, Status::Aborted);
    }

    /// Ends the transaction: drops its buffer and snapshot, unregisters it, remembers how it
    /// ended. A transaction that already ended keeps the outcome it had.
    fn finish(&self, open: &OpenTxn, slot: &mut Slot, status: Status) {
        if slot.ended.is_some() {
            return;
        }
        slot.txn = None;
        slot.ended = Some(status);
        self.total_bytes
            .fetch_sub(slot.accounted, Ordering::Relaxed);
        slot.accounted = 0;
        self.open.lock().remove(&open.id);
        if let Some(holder) = open.holder.lock().take() {
            holder.open.fetch_sub(1, Ordering::AcqRel);
        }
        let mut ended = self.ended.lock();
        let Ended { status: map, order } = &mut *ended;
        map.insert(open.id, status);
        order.push_back((Instant::now(), open.id));
        while order.len() > REMEMBER_MAX
            || order
                .front()
                .is_some_and(|(t, _)| t.elapsed() > REMEMBER_ENDED)
        {
            if let Some((_, id)) = order.pop_front() {
                map.remove(&id);
            }
        }
    }

    /// What is known of transaction `id` on this node.
    pub fn status_of(&self, id: TxnId) -> Status {
        if self.open.lock().contains_key(&id) {
            return Status::Running;
        }
        if let Some(status) = self.ended.lock().status.get(&id) {
            return *status;
        }
        Status::Unknown
    }

    /// AFT.STATUS: `arg` is a transaction id, or else an idempotency key (looked up in the
    /// backend, so the answer survives restarts of the proxy).
    pub async fn status(&self, arg: &Bytes) -> Result<Status, StorageError> {
        if let Some(id) = parse_txid(arg) {
            let status = self.status_of(id);
            if status != Status::Unknown {
                return Ok(status);
            }
            if let Some(version) = self.engine.commit_of(id) {
                return Ok(Status::Committed(version));
            }
        }
        match self.engine.storage.find_idempotent(arg.clone()).await? {
            Some(version) => Ok(Status::Committed(version)),
            None => Ok(Status::Unknown),
        }
    }

    /// Aborts every transaction idle for longer than its timeout; returns how many.
    pub async fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let idle: Vec<Arc<OpenTxn>> = self
            .open
            .lock()
            .values()
            .filter(|o| now.duration_since(*o.last_used.lock()) > o.timeout)
            .cloned()
            .collect();
        let mut reaped = 0;
        for open in idle {
            // A transaction busy with a command is in use: not idle.
            let Ok(mut slot) = open.slot.try_lock() else {
                continue;
            };
            if slot.txn.is_some() {
                self.finish(&open, &mut slot, Status::Aborted);
                self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                reaped += 1;
            }
        }
        reaped
    }
}

async fn reap(registry: Weak<OpenTxns>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let n = registry.reap_idle().await;
        if n > 0 {
            tracing::info!(aborted = n, "aborted idle transactions after their timeout");
        }
    }
}

/// Parses the 32 hex digits of a transaction id.
pub fn parse_txid(text: &[u8]) -> Option<TxnId> {
    if text.len() != 32 {
        return None;
    }
    let s = std::str::from_utf8(text).ok()?;
    u128::from_str_radix(s, 16).ok().map(TxnId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;
    use crate::txn::EngineConfig;

    #[tokio::test]
    async fn only_the_user_that_began_a_transaction_may_attach_to_it() {
        let engine = Engine::open(Arc::new(MemoryStorage::new()), EngineConfig::default())
            .await
            .unwrap();
        let registry = OpenTxns::start(engine, OpenLimits::default());
        let alice = Bytes::from_static(b"alice");
        let open = registry
            .begin(None, None, &Holder::new(), &alice)
            .await
            .unwrap();
        let id = open.id().to_string();
        open.detach();
        assert!(matches!(
            registry.attach(id.as_bytes(), b"bob"),
            Err(OpenError::UnknownTxn(_))
        ));
        assert!(registry.attach(id.as_bytes(), b"alice").is_ok());
    }
}
