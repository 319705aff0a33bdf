//! The backend's Lua scripts, sent by SHA1 with `EVALSHA`, and whole after `NOSCRIPT`.
//!
//! Each script is a file of `lua/`, whose header lists its `KEYS`, its `ARGV` and its reply;
//! the scripts that check leases, heads and locks are sent with `lua/common.lua` before them.
//! Every script touches the metadata keys of one shard only, so it runs on the server of that
//! shard's slot.

use fred::types::{Resp3Frame, Value};

use super::client::{text, RequestError};
use super::RedisStorage;

/// A Lua script and its SHA1.
pub(super) struct Script {
    body: &'static str,
    sha: String,
}

impl Script {
    fn new(body: &'static str) -> Script {
        Script {
            body,
            sha: sha1_smol::Sha1::from(body).digest().to_string(),
        }
    }
}

/// Creates a commit record (or reports the commit that holds its idempotency key, or that
/// its pending marker was reclaimed): the request that decides a commit.
const COMMIT_LUA: &str = concat!(
    include_str!("lua/common.lua"),
    include_str!("lua/commit.lua")
);
/// Writes the pending marker of a cluster commit (or reports the commit that holds its
/// idempotency key).
const MARK_LUA: &str = include_str!("lua/mark.lua");
/// Takes the pending markers of commits too old to finish, and lists their version keys.
const RECLAIM_LUA: &str = include_str!("lua/reclaim.lua");
/// Removes pending markers.
const FORGET_LUA: &str = include_str!("lua/forget.lua");
/// Pages through the commit log, with the records.
const SCAN_LUA: &str = include_str!("lua/scan.lua");
/// Deletes commit records, their log entries and the idempotency entries that name them.
const DELETE_LUA: &str = include_str!("lua/delete.lua");
/// Reads the commit log in creation order.
const TAIL_LUA: &str = include_str!("lua/tail.lua");
/// Creates, renews or gives up a node's lease, and lists the live nodes.
const HEARTBEAT_LUA: &str = include_str!("lua/heartbeat.lua");
/// Drops the heads of collected keys.
const HEADS_LUA: &str = include_str!("lua/heads.lua");
/// Checks and locks the keys of a commit across shards in one shard other than its home.
const PREPARE_LUA: &str = concat!(
    include_str!("lua/common.lua"),
    include_str!("lua/prepare.lua")
);
/// Ends a commit across shards in one shard other than its home.
const FINISH_LUA: &str = concat!(
    include_str!("lua/common.lua"),
    include_str!("lua/finish.lua")
);
/// Decides, in its home shard, a commit across shards whose lock another commit found.
const DECIDE_LUA: &str = concat!(
    include_str!("lua/common.lua"),
    include_str!("lua/decide.lua")
);
/// Writes or removes a copy of a node's lease in another shard.
const LEASE_LUA: &str = include_str!("lua/lease.lua");
/// Decides how many shards the log has.
const SHARDS_LUA: &str = include_str!("lua/shards.lua");

/// Every script of the backend.
pub(super) struct Scripts {
    /// `lua/commit.lua`.
    pub(super) commit: Script,
    /// `lua/mark.lua`.
    pub(super) mark: Script,
    /// `lua/reclaim.lua`.
    pub(super) reclaim: Script,
    /// `lua/forget.lua`.
    pub(super) forget: Script,
    /// `lua/scan.lua`.
    pub(super) scan: Script,
    /// `lua/delete.lua`.
    pub(super) delete: Script,
    /// `lua/tail.lua`.
    pub(super) tail: Script,
    /// `lua/heartbeat.lua`.
    pub(super) heartbeat: Script,
    /// `lua/heads.lua`.
    pub(super) heads: Script,
    /// `lua/prepare.lua`.
    pub(super) prepare: Script,
    /// `lua/finish.lua`.
    pub(super) finish: Script,
    /// `lua/decide.lua`.
    pub(super) decide: Script,
    /// `lua/lease.lua`.
    pub(super) lease: Script,
    /// `lua/shards.lua`.
    pub(super) shards: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            commit: Script::new(COMMIT_LUA),
            mark: Script::new(MARK_LUA),
            reclaim: Script::new(RECLAIM_LUA),
            forget: Script::new(FORGET_LUA),
            scan: Script::new(SCAN_LUA),
            delete: Script::new(DELETE_LUA),
            tail: Script::new(TAIL_LUA),
            heartbeat: Script::new(HEARTBEAT_LUA),
            heads: Script::new(HEADS_LUA),
            prepare: Script::new(PREPARE_LUA),
            finish: Script::new(FINISH_LUA),
            decide: Script::new(DECIDE_LUA),
            lease: Script::new(LEASE_LUA),
            shards: Script::new(SHARDS_LUA),
        }
    }

    fn all(&self) -> [&Script; 14] {
        [
            &self.commit,
            &self.mark,
            &self.reclaim,
            &self.forget,
            &self.scan,
            &self.delete,
            &self.tail,
            &self.heartbeat,
            &self.heads,
            &self.prepare,
            &self.finish,
            &self.decide,
            &self.lease,
            &self.shards,
        ]
    }
}

impl RedisStorage {
    /// Loads every script on the server of every shard's slot, so that the first commit is
    /// already one `EVALSHA`. Best effort: a script that is missing later is sent whole.
    pub(super) async fn load_scripts(&self) {
        let mut slots: Vec<u16> = self.layout.shards.iter().map(|s| s.slot).collect();
        slots.push(self.layout.root_slot);
        slots.sort_unstable();
        slots.dedup();
        if !self.cluster {
            slots.truncate(1);
        }
        for slot in slots {
            for script in self.scripts.all() {
                let load = vec![text("LOAD"), text(script.body)];
                if let Err(e) = self.call(slot, "SCRIPT", load).await {
                    tracing::debug!("cannot preload a script on {}: {e:?}", self.servers);
                }
            }
        }
    }

    /// Runs a script on the server of `slot`: `EVALSHA`, and `EVAL` after `NOSCRIPT` (which
    /// also caches it on that server).
    pub(super) async fn eval(
        &self,
        script: &Script,
        slot: u16,
        keys: Vec<Value>,
        args: Vec<Value>,
    ) -> Result<Resp3Frame, RequestError> {
        let numkeys = keys.len();
        let mut request = Vec::with_capacity(2 + keys.len() + args.len());
        request.push(text(script.sha.as_str()));
        request.push(Value::Integer(numkeys as i64));
        request.extend(keys);
        request.extend(args);
        match self.call(slot, "EVALSHA", request.clone()).await {
            Err(e) if e.is_noscript() => {
                request[0] = text(script.body);
                self.call(slot, "EVAL", request).await
            }
            other => other,
        }
    }
}
