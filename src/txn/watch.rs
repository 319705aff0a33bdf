//! WATCH: the keys a connection watches, registered with the engine.
//!
//! A watch records the key's newest published version (and whether it was live). EXEC then
//! commits only if that is still the newest version. For this to detect every change, the
//! newest version of a watched key must only ever grow: garbage collection would otherwise
//! remove a key whose sole version is dead (a tombstone, or expired), and a key that was
//! absent, then set, then deleted and removed, would look unchanged. So a watched key is
//! registered with the engine, and garbage collection leaves registered keys in the index
//! until the last watcher lets go ([`Watches`] unregisters its keys when cleared or dropped).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{clock, Engine};
use crate::storage::VersionId;

/// What WATCH remembers about a key: the version it had and until when it was live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchState {
    version: Option<VersionId>,
    /// Expiry of the watched version if the key was live when watched (0: no expiry).
    live_until: Option<u64>,
}

impl WatchState {
    /// The version watched (`None`: the key did not exist).
    pub fn version(&self) -> Option<VersionId> {
        self.version
    }

    /// Whether a key watched in this state had no commit since, given its `latest` version
    /// at `now_ms`, and did not expire meanwhile (Redis counts an expiry as a change).
    pub fn unchanged(&self, latest: Option<VersionId>, now_ms: u64) -> bool {
        let expired_since = self.live_until.is_some_and(|at| at != 0 && at <= now_ms);
        latest == self.version && !expired_since
    }
}

/// The keys one connection watches. Dropping it (or [`Watches::clear`]) releases them.
pub struct Watches {
    engine: Arc<Engine>,
    keys: HashMap<Bytes, WatchState>,
}

impl Watches {
    /// Watches `key`, unless it is already watched (the first state counts, as in Redis).
    pub fn watch(&mut self, key: &Bytes) {
        if self.keys.contains_key(key) {
            return;
        }
        // Registered before the state is read: garbage collection, which checks the
        // registration under the key's index lock, cannot remove the key in between.
        *self.engine.watched.lock().entry(key.clone()).or_insert(0) += 1;
        let state = self.engine.watch_state(key);
        self.keys.insert(key.clone(), state);
    }

    /// Stops watching every key.
    pub fn clear(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut watched = self.engine.watched.lock();
        for (key, _) in self.keys.drain() {
            if let Some(n) = watched.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    watched.remove(&key);
                }
            }
        }
    }

    /// Whether no key is watched.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The watched keys and their states.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &WatchState)> {
        self.keys.iter()
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Engine {
    /// An empty set of watched keys, for one connection.
    pub fn watches(self: &Arc<Self>) -> Watches {
        Watches {
            engine: self.clone(),
            keys: HashMap::new(),
        }
    }

    /// Whether some connection watches `key` (garbage collection keeps it in the index).
    pub(crate) fn is_watched(&self, key: &[u8]) -> bool {
        self.watched.lock().contains_key(key)
    }

    /// The current state of `key` for WATCH.
    fn watch_state(&self, key: &[u8]) -> WatchState {
        let now = clock::wall_ms();
        // The newest *published* version: a commit being published right now is already in
        // the index but not yet readable, and a watch that recorded it could let EXEC pass
        // after its client read the version before it (a lost update).
        let published = self.seq.load(Ordering::Acquire);
        match self.index.visible(key, published) {
            None => WatchState {
                version: None,
                live_until: None,
            },
            Some(m) => WatchState {
                version: Some(m.id),
                live_until: m.is_live(now).then_some(m.expire_at),
            },
        }
    }
}
