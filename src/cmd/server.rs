//! Server commands: INFO, COMMAND, CONFIG, TIME, LASTSAVE, SAVE, FUNCTION, DEBUG, SHUTDOWN.
//!
//! # Format and deviations
//!
//! * `INFO [section …]` never fails (clients such as ioredis use it as a ready check); it
//!   reports Redis's usual fields where they make sense and aft's own counters as `aft_*`
//!   fields, in the sections `server clients memory persistence stats transactions gc
//!   replication nodes keyspace` (`nodes`: the aft nodes sharing the backend, with
//!   `aft_shared_backend:0` and nothing else on a backend only one process uses).
//! * `COMMAND [COUNT|LIST|INFO name…|DOCS]`: from the command table (DOCS is empty).
//! * `CONFIG GET pattern…` answers a fixed set of parameters; `CONFIG RESETSTAT` zeroes
//!   INFO's counters; `CONFIG SET` is not supported, `CONFIG REWRITE` has no file to write.
//! * `TIME`, `LASTSAVE` (the start time), `SAVE` (`+OK`: everything acknowledged is already
//!   durable), `FUNCTION FLUSH|LIST` (no functions), `DEBUG …` (always an error).
//! * `SHUTDOWN [NOSAVE|SAVE|NOW|FORCE]`: no reply; the connection closes and the server
//!   stops gracefully.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::connection::{unknown_subcommand, Client, REDIS_VERSION};
use super::table::Id;
use super::util::{err, glob_match, SYNTAX};
use super::{lookup, CommandSpec, COMMANDS};
use crate::node::Node;
use crate::process;
use crate::resp::Reply;

/// A parsed server command.
#[derive(Clone, Debug)]
pub enum ServerCmd {
    /// `INFO [section …]`.
    Info(Vec<Bytes>),
    /// `COMMAND …` (arguments as given).
    Command(Vec<Bytes>),
    /// `CONFIG …` (arguments as given).
    Config(Vec<Bytes>),
    /// `DEBUG …`.
    Debug,
    /// `TIME`.
    Time,
    /// `LASTSAVE`.
    LastSave,
    /// `SAVE`.
    Save,
    /// `FUNCTION …` (arguments as given).
    Function(Vec<Bytes>),
    /// `SHUTDOWN [NOSAVE|SAVE|NOW|FORCE …]`.
    Shutdown,
}

impl ServerCmd {
    /// Parses `args` (a server command whose arity was checked); `Err` is the run-time
    /// error reply.
    pub fn parse(id: Id, args: Vec<Bytes>) -> Result<Self, Reply> {
        Ok(match id {
            Id::Info => ServerCmd::Info(args.into_iter().skip(1).collect()),
            Id::Command => ServerCmd::Command(args),
            Id::Config => ServerCmd::Config(args),
            Id::Debug => ServerCmd::Debug,
            Id::Time => ServerCmd::Time,
            Id::LastSave => ServerCmd::LastSave,
            Id::Save => ServerCmd::Save,
            Id::Function => ServerCmd::Function(args),
            Id::Shutdown => {
                let modes_ok = args[1..].iter().all(|a| {
                    matches!(
                        &a.to_ascii_uppercase()[..],
                        b"NOSAVE" | b"SAVE" | b"NOW" | b"FORCE"
                    )
                });
                if !modes_ok {
                    return Err(err(SYNTAX));
                }
                ServerCmd::Shutdown
            }
            _ => return Err(err(SYNTAX)),
        })
    }

    /// Runs the command for `client` on `node`.
    pub fn apply(&self, node: &Node, client: &mut Client) -> Reply {
        match self {
            ServerCmd::Info(sections) => Reply::Verbatim(Bytes::from(info(node, sections))),
            ServerCmd::Command(args) => command(args),
            ServerCmd::Config(args) => config(node, args),
            ServerCmd::Debug => err("ERR DEBUG is not supported"),
            ServerCmd::Time => {
                let micros = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros())
                    .unwrap_or(0);
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from((micros / 1_000_000).to_string())),
                    Reply::Bulk(Bytes::from((micros % 1_000_000).to_string())),
                ])
            }
            ServerCmd::LastSave => Reply::Integer(node.started_unix as i64),
            ServerCmd::Save => Reply::ok(),
            ServerCmd::Function(args) => match &args[1].to_ascii_uppercase()[..] {
                b"FLUSH" if args.len() <= 3 => Reply::ok(),
                b"LIST" => Reply::Array(vec![]),
                _ => unknown_subcommand(args),
            },
            ServerCmd::Shutdown => {
                // Like Redis: no reply, the connection closes, the server stops gracefully
                // (every acknowledged commit is already durable).
                node.request_shutdown();
                client.closing = true;
                client.silent = true;
                Reply::ok()
            }
        }
    }
}

const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "transactions",
    "gc",
    "replication",
    "nodes",
    "keyspace",
];

/// The INFO text for the requested sections (all default ones if none are named).
pub fn info(node: &Node, sections: &[Bytes]) -> String {
    let wanted: Vec<String> = sections
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|s| s == "all" || s == "default" || s == "everything");
    let mut out = String::new();
    for section in SECTIONS {
        if !all && !wanted.iter().any(|w| w == section) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        info_section(node, section, &mut out);
    }
    out
}

fn info_section(node: &Node, section: &str, out: &mut String) {
    let engine = &node.engine;
    let stats = engine.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let port = node.listen_addr.rsplit(':').next().unwrap_or("0");
    // Writing to a String cannot fail.
    let _ = match section {
            "server" => write!(
                out,
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\naft_version:{}\r\naft_backend:{}\r\nos:{} {}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{port}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                engine.storage_name(),
                std::env::consts::OS,
                std::env::consts::ARCH,
                std::process::id(),
                node.started.elapsed().as_secs(),
                node.started.elapsed().as_secs() / 86_400,
            ),
            "clients" => write!(
                out,
                "# Clients\r\nconnected_clients:{}\r\nclient_recent_max_output_buffer:{}\r\nmaxclients:{}\r\nrejected_connections:{}\r\n",
                get(&node.connected),
                get(&node.peak_output_buffer),
                node.config.max_clients,
                get(&node.rejected),
            ),
            "gc" => {
                let g = engine.gc_gauges();
                write!(
                    out,
                    "# GC\r\naft_versions_live:{}\r\naft_commit_records:{}\r\naft_commit_records_retained:{}\r\naft_versions_pending_deletion:{}\r\naft_versions_collected:{}\r\naft_commits_collected:{}\r\naft_keys_removed:{}\r\naft_orphans_reclaimed:{}\r\naft_gc_runs:{}\r\naft_gc_errors:{}\r\n",
                    g.versions,
                    g.commits,
                    g.retained_commits,
                    g.pending_versions,
                    get(&stats.versions_collected),
                    get(&stats.commits_collected),
                    get(&stats.keys_removed),
                    get(&stats.orphans_reclaimed),
                    get(&stats.gc_runs),
                    get(&stats.gc_errors),
                )
            }
            "memory" => {
                let (versions, cached) = engine.memory_stats();
                let cached = u64::try_from(cached).unwrap_or(u64::MAX);
                let rss = process::resident_memory();
                // Without an allocator of its own to ask, aft's best measure of the memory it
                // uses is its resident set; where the system does not tell, the cached
                // values (the part that grows with the data).
                let used = rss.unwrap_or(cached);
                let rss = rss.unwrap_or(0);
                write!(
                    out,
                    "# Memory\r\nused_memory:{used}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\nused_memory_rss_human:{}\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\nmaxmemory_policy:noeviction\r\naft_versions_in_memory:{versions}\r\naft_cached_value_bytes:{cached}\r\naft_cache_budget_bytes:{}\r\n",
                    human_bytes(used),
                    human_bytes(rss),
                    node.config.cache_bytes(),
                )
            }
            "persistence" => {
                let health = engine.storage_health();
                write!(
                    out,
                    "# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:0\r\nrdb_bgsave_in_progress:0\r\naof_enabled:{}\r\naof_rewrite_in_progress:0\r\naof_last_write_status:{}\r\naft_recovered_commits:{}\r\naft_storage_writable:{}\r\naft_storage_error:{}\r\n",
                    u8::from(node.persistence().appendonly),
                    if health.is_ok() { "ok" } else { "err" },
                    get(&stats.recovered_commits),
                    u8::from(health.is_ok()),
                    health.err().unwrap_or_default().replace(['\r', '\n'], " "),
                )
            }
            "stats" => write!(
                out,
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\naft_commits:{}\r\naft_conflicts:{}\r\naft_watch_failures:{}\r\naft_storage_errors:{}\r\naft_storage_reads:{}\r\naft_cache_hits:{}\r\n",
                get(&node.connections_total),
                get(&node.commands),
                get(&stats.commits),
                get(&stats.conflicts),
                get(&stats.watch_failures),
                get(&stats.storage_errors),
                get(&stats.storage_reads),
                get(&stats.cache_hits),
            ),
            "transactions" => {
                let open = &node.open_txns;
                let (count, bytes) = open.gauges();
                let st = open.stats();
                write!(
                    out,
                    "# Transactions\r\naft_open_txns:{count}\r\naft_open_txn_bytes:{bytes}\r\naft_txns_begun:{}\r\naft_txns_committed:{}\r\naft_txns_aborted:{}\r\naft_txns_timed_out:{}\r\naft_txns_over_limit:{}\r\naft_txns_evicted:{}\r\naft_idempotent_duplicates:{}\r\naft_oldest_snapshot_age_ms:{}\r\naft_snapshots_revoked:{}\r\naft_commits_outcome_unknown:{}\r\naft_commits_unresolved:{}\r\naft_unknown_found_committed:{}\r\naft_unknown_found_not_committed:{}\r\n",
                    get(&st.begun),
                    get(&st.committed),
                    get(&st.aborted),
                    get(&st.timed_out),
                    get(&st.over_limit),
                    get(&st.evicted),
                    get(&st.duplicates),
                    engine
                        .oldest_snapshot_age()
                        .map_or(0, |age| age.as_millis() as u64),
                    get(&stats.snapshots_revoked),
                    get(&stats.outcome_unknown),
                    engine.unresolved_commits(),
                    get(&stats.unknown_committed),
                    get(&stats.unknown_aborted),
                )
            }
            "replication" => write!(out, "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
            "nodes" => {
                let p = engine.peers_info();
                let _ = write!(out, "# Nodes\r\naft_shared_backend:{}\r\n", u8::from(p.shared));
                if p.shared {
                    let _ = write!(
                        out,
                        "aft_node_id:{}\r\naft_freshness:{}\r\naft_nodes_live:{}\r\naft_nodes_view_age_ms:{}\r\naft_log_cursor:{}\r\naft_log_head:{}\r\naft_remote_commits:{}\r\naft_remote_lag_last_ms:{}\r\naft_remote_lag_max_ms:{}\r\naft_gc_deferred_batches:{}\r\naft_rejoins:{}\r\n",
                        p.node,
                        p.freshness.name(),
                        p.members.len(),
                        p.view_age.map_or(0, |a| a.as_millis() as u64),
                        p.cursor,
                        p.head,
                        p.remote_commits,
                        p.lag_last_ms,
                        p.lag_max_ms,
                        p.deferred,
                        p.rejoins,
                    );
                    for (i, m) in p.members.iter().enumerate() {
                        let _ = write!(
                            out,
                            "node{i}:id={},address={},lease_left_ms={},watermark={},self={}\r\n",
                            m.node,
                            m.address,
                            m.expires_in_ms,
                            m.watermark,
                            u8::from(m.node == p.node),
                        );
                    }
                }
                Ok(())
            }
            "keyspace" => {
                let (keys, expires) = engine.key_counts();
                out.push_str("# Keyspace\r\n");
                if keys > 0 {
                    let _ = write!(out, "db0:keys={keys},expires={expires},avg_ttl=0\r\n");
                }
                Ok(())
            }
            _ => Ok(()),
        };
}

/// CONFIG GET / SET / RESETSTAT / REWRITE.
fn config(node: &Node, args: &[Bytes]) -> Reply {
    let sub = args[1].to_ascii_uppercase();
    match &sub[..] {
        b"GET" => {
            if args.len() < 3 {
                return err("ERR wrong number of arguments for 'config|get' command");
            }
            let c = &node.config;
            let port = node
                .listen_addr
                .rsplit(':')
                .next()
                .unwrap_or("0")
                .to_string();
            let bind = node
                .listen_addr
                .rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or_default();
            let persistence = node.persistence();
            let yes_no = |b: bool| if b { "yes" } else { "no" };
            let params: Vec<(&str, String)> = vec![
                ("appendfsync", persistence.appendfsync.into()),
                ("appendonly", yes_no(persistence.appendonly).into()),
                ("bind", bind),
                ("databases", "1".into()),
                ("maxclients", c.max_clients.to_string()),
                ("maxmemory", "0".into()),
                ("maxmemory-policy", "noeviction".into()),
                ("port", port),
                ("proto-max-bulk-len", c.max_bulk_len.to_string()),
                (
                    "requirepass",
                    c.requirepass
                        .as_ref()
                        .map(|p| p.expose().to_owned())
                        .unwrap_or_default(),
                ),
                ("save", String::new()),
                ("timeout", "0".into()),
            ];
            let mut out = Vec::new();
            for (name, value) in params {
                if args[2..]
                    .iter()
                    .any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
                {
                    out.push((
                        Reply::Bulk(Bytes::from_static(name.as_bytes())),
                        Reply::Bulk(Bytes::from(value)),
                    ));
                }
            }
            Reply::Map(out)
        }
        b"SET" => {
            if args.len() < 4 || !args.len().is_multiple_of(2) {
                return err("ERR wrong number of arguments for 'config|set' command");
            }
            err(format!(
                "ERR Unsupported CONFIG parameter: {}",
                String::from_utf8_lossy(&args[2])
            ))
        }
        b"RESETSTAT" => {
            if args.len() != 2 {
                return err("ERR wrong number of arguments for 'config|resetstat' command");
            }
            node.reset_stats();
            Reply::ok()
        }
        b"REWRITE" => err("ERR The server is running without a config file"),
        _ => unknown_subcommand(args),
    }
}

/// Bytes as Redis's INFO prints them in `*_human` fields: `1023B`, `1.00K`, `15.34M`, …,
/// up to `P`; beyond that, in bytes again.
fn human_bytes(n: u64) -> String {
    if n < 1 << 10 {
        return format!("{n}B");
    }
    for (shift, suffix) in [(10, "K"), (20, "M"), (30, "G"), (40, "T"), (50, "P")] {
        if n < 1 << (shift + 10) {
            return format!("{:.2}{suffix}", n as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{n}B")
}

/// COMMAND, COMMAND COUNT / LIST / INFO / DOCS.
pub fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|s| s.to_ascii_uppercase()) else {
        return Reply::Array(COMMANDS.iter().map(command_info).collect());
    };
    match &sub[..] {
        b"COUNT" => Reply::Integer(COMMANDS.len() as i64),
        b"LIST" => Reply::Array(
            COMMANDS
                .iter()
                .map(|c| Reply::Bulk(Bytes::from_static(c.name.as_bytes())))
                .collect(),
        ),
        b"INFO" => {
            if args.len() == 2 {
                return Reply::Array(COMMANDS.iter().map(command_info).collect());
            }
            Reply::Array(
                args[2..]
                    .iter()
                    .map(|n| lookup(n).map_or(Reply::Nil, command_info))
                    .collect(),
            )
        }
        b"DOCS" => Reply::Map(vec![]),
        _ => unknown_subcommand(args),
    }
}

fn command_info(c: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(Bytes::from_static(c.name.as_bytes())),
        Reply::Integer(c.arity as i64),
        Reply::Set(c.flags.iter().map(|f| Reply::Status(f)).collect()),
        Reply::Integer(c.keys.0 as i64),
        Reply::Integer(c.keys.1 as i64),
        Reply::Integer(c.keys.2 as i64),
        Reply::Set(vec![]),
        Reply::Set(vec![]),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
    ])
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn human_bytes_are_printed_like_redis() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1024), "1.00K");
        assert_eq!(human_bytes(1536), "1.50K");
        assert_eq!(human_bytes(16_089_088), "15.34M");
        assert_eq!(human_bytes(3 << 30), "3.00G");
        assert_eq!(human_bytes((1 << 60) - (1 << 48)), "1023.75P");
        assert_eq!(human_bytes(u64::MAX), "18446744073709551615B");
    }
}
