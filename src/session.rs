//! Per-connection state and the command dispatcher.
//!
//! A session is in one of two modes: normal (each data command is its own transaction,
//! "autocommit") or MULTI (commands are queued and run at EXEC as one transaction). It also
//! holds the connection's protocol version, name, authentication state and WATCHed keys.
//!
//! [`Session::handle`] takes one request and appends its reply to an output buffer; it never
//! writes to the socket, so a pipelined batch is answered with one write, and it is testable
//! without sockets.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::cmd::table::Id;
use crate::cmd::util::{err, parse_i64, NOT_INTEGER, SYNTAX};
use crate::cmd::{self, Command, DataCmd, ParseError};
use crate::reply::{Protocol, Reply};
use crate::server::Context;
use crate::storage::StorageError;
use crate::txn::open::{Holder, OpenTxn, Slot, Status};
use crate::txn::{Txn, TxnError, Watches};

/// The version reported to clients (HELLO, INFO): the Redis version whose behaviour aft
/// follows, so that clients enable the features they would with that Redis.
pub const REDIS_VERSION: &str = "7.0.15";

/// Most pipelined data commands run as one transaction.
const MAX_GROUP: usize = 256;

/// How long an autocommit or MULTI transaction keeps retrying after write conflicts.
const CONFLICT_RETRY_LIMIT: Duration = Duration::from_secs(10);

struct Multi {
    queue: Vec<Command>,
    /// A queue-time error happened: EXEC must abort.
    dirty: bool,
}

/// One client connection's state.
pub struct Session {
    ctx: Arc<Context>,
    id: u64,
    peer: String,
    protocol: Protocol,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    authenticated: bool,
    /// The user the connection is authenticated as (there is one user so far: `default`).
    user: Bytes,
    watches: Watches,
    multi: Option<Multi>,
    /// The interactive transaction this connection is attached to.
    interactive: Option<Arc<OpenTxn>>,
    /// What this connection holds open (bounds the interactive transactions it may begin).
    holder: Arc<Holder>,
    /// Data commands of a pipelined batch still to run as one transaction.
    group: VecDeque<Command>,
    closing: bool,
    /// The connection closes without a reply (SHUTDOWN).
    silent: bool,
    created: Instant,
}

impl Session {
    /// A new session for a client connected from `peer`.
    pub fn new(ctx: Arc<Context>, peer: String) -> Self {
        let id = ctx.next_client_id.fetch_add(1, Ordering::Relaxed);
        let authenticated = ctx.config.requirepass.is_none();
        Session {
            ctx: ctx.clone(),
            id,
            peer,
            protocol: Protocol::Resp2,
            name: None,
            lib_name: None,
            lib_ver: None,
            authenticated,
            user: Bytes::from_static(b"default"),
            watches: ctx.engine.watches(),
            multi: None,
            interactive: None,
            holder: Holder::new(),
            group: VecDeque::new(),
            closing: false,
            silent: false,
            created: Instant::now(),
        }
    }

    /// Whether the connection must be closed once the replies so far are written (QUIT).
    pub fn should_close(&self) -> bool {
        self.closing
    }

    /// Whether the client has authenticated (always true without `requirepass`).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The protocol replies are encoded in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Runs one request and appends its reply to `out`.
    pub async fn handle(&mut self, args: Vec<Bytes>, out: &mut BytesMut) {
        self.ctx.commands.fetch_add(1, Ordering::Relaxed);
        let reply = self.dispatch(args).await;
        if !self.silent {
            reply.encode(self.protocol, out);
        }
    }

    /// Runs requests from the front of a pipelined batch, appending their replies to `out`
    /// in order, until the batch is empty or `out` holds at least `flush_at` bytes: the
    /// caller then writes what is pending and calls again, so that a pipeline of large
    /// replies is written as it goes instead of piling up in memory.
    ///
    /// Consecutive data commands outside MULTI and interactive transactions are run as
    /// one transaction with one commit ("group commit" of a pipeline): each still gets its
    /// own reply, errors included, and the result is the same as running them one after
    /// the other with no other commit in between (see [`Session::run_group`]). It saves a
    /// backend round trip per write. Stops early after QUIT or SHUTDOWN.
    pub async fn handle_batch(
        &mut self,
        requests: &mut VecDeque<Vec<Bytes>>,
        out: &mut BytesMut,
        flush_at: usize,
    ) {
        while out.len() < flush_at && !self.closing {
            if !self.group.is_empty() {
                self.run_group(out, flush_at).await;
                continue;
            }
            let Some(args) = requests.pop_front() else {
                return;
            };
            if !self.groupable(&args) {
                self.handle(args, out).await;
                continue;
            }
            match cmd::parse(args) {
                Ok(Command::Server(id, args)) => {
                    self.ctx.commands.fetch_add(1, Ordering::Relaxed);
                    let reply = self.server(id, &args).await;
                    if !self.silent {
                        reply.encode(self.protocol, out);
                    }
                }
                Ok(command) => {
                    self.group.push_back(command);
                    // The group goes on with the data commands that follow.
                    while self.group.len() < MAX_GROUP {
                        let joins = requests.front().is_some_and(|next| {
                            self.groupable(next)
                                && cmd::lookup(&next[0]).is_some_and(|spec| spec.is_data())
                        });
                        if !joins {
                            break;
                        }
                        let Some(next) = requests.pop_front() else {
                            break;
                        };
                        match cmd::parse(next) {
                            Ok(c) => self.group.push_back(c),
                            // Not reached: `groupable` checked the name and the arity.
                            Err(e) => self.group.push_back(Command::Invalid(e.reply())),
                        }
                    }
                }
                // Not reached: `groupable` checked the name and the arity.
                Err(e) => e.reply().encode(self.protocol, out),
            }
        }
    }

    /// Whether commands of a pipelined group are still to run (the output limit stopped
    /// [`Session::handle_batch`] before them): call it again once the output is written.
    pub fn has_pending(&self) -> bool {
        !self.group.is_empty()
    }

    /// Whether `args` is a well-formed command in autocommit mode: data commands among
    /// those join a pipeline group.
    fn groupable(&self, args: &[Bytes]) -> bool {
        if self.multi.is_some() || self.interactive.is_some() || !self.authenticated {
            return false;
        }
        let Some(spec) = args.first().and_then(|n| cmd::lookup(n)) else {
            return false;
        };
        spec.arity_ok(args.len()) && !matches!(spec.id, Id::Exec | Id::Discard)
    }

    /// Runs data commands from the front of `group` as one transaction and appends their
    /// replies; see [`Session::handle_batch`].
    ///
    /// The group is "as if one by one": reads before its first write see the snapshot
    /// (pinned at the first read), and every read after a write is validated at commit
    /// ([`Txn::validate_reads_after_writes`]), so the group's writes and the reads that
    /// follow them take effect together at commit. A losing group is re-run (its client
    /// saw nothing). The transaction ends early — leaving the rest in `group` — before a
    /// keyspace-wide read (KEYS, SCAN, RANDOMKEY, DBSIZE) that follows a write (it cannot be
    /// validated key by key), and once its replies reach `flush_at` bytes.
    async fn run_group(&mut self, out: &mut BytesMut, flush_at: usize) {
        let mut group = std::mem::take(&mut self.group);
        if let [Command::Data(single)] = group.make_contiguous() {
            self.ctx.commands.fetch_add(1, Ordering::Relaxed);
            let reply = self.autocommit(single).await;
            reply.encode(self.protocol, out);
            return;
        }
        let deadline = Instant::now() + CONFLICT_RETRY_LIMIT;
        let protocol = self.protocol;
        let (ran, replies) = loop {
            let mut txn = self.ctx.engine.begin();
            txn.validate_reads_after_writes();
            let mut replies = BytesMut::new();
            let mut ran = 0;
            let attempt = async {
                let keys = group.iter().flat_map(|c| match c {
                    Command::Data(d) => d.value_keys(),
                    _ => &[],
                });
                txn.prefetch(keys).await?;
                for command in group.iter() {
                    if ran > 0 && replies.len() >= flush_at {
                        break;
                    }
                    let reply = match command {
                        Command::Data(c) => {
                            if ran > 0 && c.reads_keyspace() && txn.has_writes() {
                                break;
                            }
                            apply(c, &mut txn).await?
                        }
                        Command::Invalid(reply) => reply.clone(),
                        // `handle_batch` runs these itself, between groups.
                        Command::Server(..) => err("ERR internal error: not a data command"),
                    };
                    reply.encode(protocol, &mut replies);
                    ran += 1;
                }
                if txn.has_writes() {
                    txn.commit().await?;
                }
                Ok::<_, TxnError>(())
            };
            match attempt.await {
                Ok(()) => break (ran, replies),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    self.ctx
                        .engine
                        .wait_for_publication(Duration::from_millis(5))
                        .await;
                }
                Err(e) => {
                    let mut replies = BytesMut::new();
                    let ran = ran.max(1).min(group.len());
                    for _ in 0..ran {
                        txn_error_reply(&e).encode(protocol, &mut replies);
                    }
                    break (ran, replies);
                }
            }
        };
        self.ctx.commands.fetch_add(ran as u64, Ordering::Relaxed);
        group.drain(..ran);
        self.group = group;
        out.extend_from_slice(&replies);
    }

    async fn dispatch(&mut self, args: Vec<Bytes>) -> Reply {
        let Some(spec) = args.first().and_then(|n| cmd::lookup(n)) else {
            let e = ParseError::Unknown(cmd::unknown_command_message(&args));
            return self.queue_error(e);
        };
        if !spec.arity_ok(args.len()) {
            if spec.id == Id::Exec {
                // Redis rejects a malformed EXEC by aborting the transaction.
                self.multi = None;
                self.watches.clear();
                return err("EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command");
            }
            return self.queue_error(ParseError::Arity(spec.name));
        }
        if !self.authenticated && !matches!(spec.id, Id::Auth | Id::Hello | Id::Quit | Id::Reset) {
            return err("NOAUTH Authentication required.");
        }
        if self.multi.is_some() {
            match spec.id {
                Id::Exec => return self.exec().await,
                Id::Discard => {
                    self.multi = None;
                    self.watches.clear();
                    return Reply::ok();
                }
                Id::Multi => return err("ERR MULTI calls can not be nested"),
                Id::Watch => return err("ERR WATCH inside MULTI is not allowed"),
                Id::AftBegin | Id::AftCommit | Id::AftAbort | Id::AftAttach | Id::AftDetach => {
                    return err(format!(
                        "ERR {} inside MULTI is not allowed",
                        spec.name.to_ascii_uppercase()
                    ))
                }
                Id::Quit | Id::Reset => {}
                _ => {
                    return match cmd::parse(args) {
                        Ok(c) => {
                            if let Some(m) = self.multi.as_mut() {
                                m.queue.push(c);
                            }
                            Reply::Status("QUEUED")
                        }
                        Err(e) => self.queue_error(e),
                    };
                }
            }
        }
        if let Some(open) = self.interactive.clone() {
            match spec.id {
                Id::Multi => {
                    return err("ERR MULTI inside an AFT transaction is not allowed; AFT.COMMIT or AFT.ABORT it first")
                }
                Id::Watch => return err("ERR WATCH inside an AFT transaction is not allowed"),
                Id::AftBegin | Id::AftAttach => {
                    return err(format!(
                        "ERR already in transaction {}; AFT.COMMIT, AFT.ABORT or AFT.DETACH it first",
                        open.id()
                    ))
                }
                _ => {}
            }
            if let Ok(Command::Data(c)) = cmd::parse(args.clone()) {
                return self.interactive_data(&open, &c).await;
            }
        }
        match cmd::parse(args) {
            Ok(Command::Data(c)) => self.autocommit(&c).await,
            Ok(Command::Server(id, args)) => self.server(id, &args).await,
            Ok(Command::Invalid(reply)) => reply,
            Err(e) => e.reply(),
        }
    }

    /// A queue-time error: inside MULTI it also marks the transaction for EXECABORT.
    fn queue_error(&mut self, e: ParseError) -> Reply {
        if let Some(m) = self.multi.as_mut() {
            m.dirty = true;
        }
        e.reply()
    }

    /// Runs a data command as its own transaction, retrying after write conflicts (the
    /// client has seen nothing of a failed attempt).
    async fn autocommit(&mut self, command: &DataCmd) -> Reply {
        let deadline = Instant::now() + CONFLICT_RETRY_LIMIT;
        loop {
            let mut txn = self.ctx.engine.begin();
            let attempt = async {
                if !command.value_keys().is_empty() {
                    txn.prefetch(command.value_keys()).await?;
                }
                let reply = apply(command, &mut txn).await?;
                if txn.has_writes() && !reply.is_error() {
                    txn.commit().await?;
                }
                Ok::<_, TxnError>(reply)
            };
            match attempt.await {
                Ok(reply) => return reply,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    self.ctx
                        .engine
                        .wait_for_publication(Duration::from_millis(5))
                        .await;
                }
                Err(e) => return txn_error_reply(&e),
            }
        }
    }

    /// Leaves the attached interactive transaction, if any (it stays open for others).
    fn leave_interactive(&mut self) -> Option<Arc<OpenTxn>> {
        let open = self.interactive.take()?;
        open.detach();
        Some(open)
    }

    /// Runs a data command inside the attached interactive transaction: reads return at
    /// once, writes are buffered until AFT.COMMIT.
    async fn interactive_data(&mut self, open: &Arc<OpenTxn>, command: &DataCmd) -> Reply {
        let registry = self.ctx.open_txns.clone();
        let mut slot = open.lock().await;
        let Some(txn) = slot.txn.as_mut() else {
            let word = slot.ended.unwrap_or(Status::Unknown).word();
            self.leave_interactive();
            return err(format!(
                "ERR transaction {} is no longer running ({word})",
                open.id()
            ));
        };
        open.touch();
        txn.touch_clock();
        let result = async {
            if !command.value_keys().is_empty() {
                txn.prefetch(command.value_keys()).await?;
            }
            apply(command, txn).await
        }
        .await;
        match result {
            Ok(reply) => match registry.account(open, &mut slot) {
                Ok(()) => reply,
                Err(e) => {
                    self.leave_interactive();
                    err(e.to_string())
                }
            },
            Err(e @ TxnError::SnapshotTooOld(_)) => {
                // What it read may be gone: it cannot go on.
                registry.abort(open, &mut slot);
                self.leave_interactive();
                txn_error_reply(&e)
            }
            Err(e) => txn_error_reply(&e),
        }
    }

    /// AFT.BEGIN [IDEMPOTENCY-KEY key] [TIMEOUT ms]
    async fn aft_begin(&mut self, args: &[Bytes]) -> Reply {
        let (mut key, mut timeout) = (None, None);
        let mut i = 1;
        while i < args.len() {
            let Some(value) = args.get(i + 1) else {
                return err(SYNTAX);
            };
            match &args[i].to_ascii_uppercase()[..] {
                b"IDEMPOTENCY-KEY" if key.is_none() => key = Some(value.clone()),
                b"TIMEOUT" if timeout.is_none() => match parse_i64(value) {
                    Some(ms) if ms > 0 => timeout = Some(Duration::from_millis(ms as u64)),
                    _ => return err("ERR timeout is not a positive integer (milliseconds)"),
                },
                _ => return err(SYNTAX),
            }
            i += 2;
        }
        match self
            .ctx
            .open_txns
            .begin(key, timeout, &self.holder, &self.user)
            .await
        {
            Ok(open) => {
                let id = open.id();
                self.interactive = Some(open);
                Reply::Bulk(Bytes::from(id.to_string()))
            }
            Err(e) => err(e.to_string()),
        }
    }

    /// AFT.COMMIT: the session leaves the transaction whatever the outcome.
    async fn aft_commit(&mut self) -> Reply {
        let Some(open) = self.leave_interactive() else {
            return err("ERR AFT.COMMIT without AFT.BEGIN");
        };
        let mut slot = open.lock().await;
        if let Some(ended) = ended_reply(&open, &slot, "") {
            return ended;
        }
        match self.ctx.open_txns.commit(&open, &mut slot).await {
            Ok(_) => Reply::ok(),
            Err(e) => txn_error_reply(&e),
        }
    }

    /// AFT.ABORT: the session leaves the transaction; one that already ended keeps the
    /// outcome it had, and the reply says which.
    async fn aft_abort(&mut self) -> Reply {
        let Some(open) = self.leave_interactive() else {
            return err("ERR AFT.ABORT without AFT.BEGIN");
        };
        let mut slot = open.lock().await;
        if let Some(ended) = ended_reply(&open, &slot, "; nothing was aborted") {
            return ended;
        }
        self.ctx.open_txns.abort(&open, &mut slot);
        Reply::ok()
    }

    async fn exec(&mut self) -> Reply {
        let Some(multi) = self.multi.take() else {
            return err("ERR EXEC without MULTI");
        };
        // Released (unwatched) when this EXEC is over, whatever its outcome.
        let watches = std::mem::replace(&mut self.watches, self.ctx.engine.watches());
        if multi.dirty {
            return err("EXECABORT Transaction discarded because of previous errors.");
        }
        let deadline = Instant::now() + CONFLICT_RETRY_LIMIT;
        loop {
            match self.exec_once(&multi.queue, &watches).await {
                Ok(replies) => return replies,
                Err(TxnError::WatchFailed) => return Reply::NilArray,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    self.ctx
                        .engine
                        .wait_for_publication(Duration::from_millis(5))
                        .await;
                }
                Err(e) => return txn_error_reply(&e),
            }
        }
    }

    async fn exec_once(&mut self, queue: &[Command], watches: &Watches) -> Result<Reply, TxnError> {
        let mut txn = self.ctx.engine.begin();
        let keys = queue.iter().flat_map(|c| match c {
            Command::Data(d) => d.value_keys(),
            _ => &[],
        });
        txn.prefetch(keys).await?;
        let mut replies = Vec::with_capacity(queue.len());
        for command in queue {
            replies.push(match command {
                Command::Data(c) => apply(c, &mut txn).await?,
                Command::Server(Id::Unwatch, _) => Reply::ok(),
                Command::Server(Id::AftIdempotent, args) => {
                    txn.set_idempotency_key(args[1].clone());
                    Reply::ok()
                }
                Command::Server(id, args) => self.server(*id, args).await,
                Command::Invalid(reply) => reply.clone(),
            });
        }
        txn.commit_watched(watches).await?;
        Ok(Reply::Array(replies))
    }

    /// Connection and server commands.
    async fn server(&mut self, id: Id, args: &[Bytes]) -> Reply {
        match id {
            Id::Multi => {
                self.multi = Some(Multi {
                    queue: Vec::new(),
                    dirty: false,
                });
                Reply::ok()
            }
            Id::Exec => err("ERR EXEC without MULTI"),
            Id::Discard => err("ERR DISCARD without MULTI"),
            Id::Watch => {
                for key in &args[1..] {
                    self.watches.watch(key);
                }
                Reply::ok()
            }
            Id::Unwatch => {
                self.watches.clear();
                Reply::ok()
            }
            Id::Ping => match args.len() {
                1 => Reply::Status("PONG"),
                2 => Reply::Bulk(args[1].clone()),
                _ => err("ERR wrong number of arguments for 'ping' command"),
            },
            Id::Echo => Reply::Bulk(args[1].clone()),
            Id::Hello => self.hello(args),
            Id::Auth => self.auth(args),
            Id::Select => match parse_i64(&args[1]) {
                Some(0) => Reply::ok(),
                Some(_) => err("ERR DB index is out of range"),
                None => err(NOT_INTEGER),
            },
            Id::Client => self.client(args),
            Id::Quit => {
                self.closing = true;
                Reply::ok()
            }
            Id::Reset => {
                // An interactive transaction stays open for others: RESET only detaches.
                self.leave_interactive();
                self.multi = None;
                self.watches.clear();
                self.protocol = Protocol::Resp2;
                self.name = None;
                self.authenticated = self.ctx.config.requirepass.is_none();
                Reply::Status("RESET")
            }
            Id::Info => Reply::Verbatim(Bytes::from(self.ctx.info(&args[1..]))),
            Id::Command => crate::server::info::command(args),
            Id::Config => self.ctx.config_command(args),
            Id::Debug => err("ERR DEBUG is not supported"),
            Id::Time => {
                let now = crate::txn::clock::wall_ms() as u128 * 1000
                    + (std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_micros() % 1000)
                        .unwrap_or(0)) as u128;
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from((now / 1_000_000).to_string())),
                    Reply::Bulk(Bytes::from((now % 1_000_000).to_string())),
                ])
            }
            Id::Function => {
                let sub = args[1].to_ascii_uppercase();
                match &sub[..] {
                    b"FLUSH" if args.len() <= 3 => Reply::ok(),
                    b"LIST" => Reply::Array(vec![]),
                    _ => unknown_subcommand(args),
                }
            }
            Id::AftBegin => self.aft_begin(args).await,
            Id::AftCommit => self.aft_commit().await,
            Id::AftAbort => self.aft_abort().await,
            Id::AftAttach => match self.ctx.open_txns.attach(&args[1], &self.user) {
                Ok(open) => {
                    self.interactive = Some(open);
                    Reply::ok()
                }
                Err(e) => err(e.to_string()),
            },
            Id::AftDetach => match self.leave_interactive() {
                Some(open) => {
                    open.touch();
                    Reply::ok()
                }
                None => err("ERR AFT.DETACH without a transaction"),
            },
            Id::AftStatus => match self.ctx.open_txns.status(&args[1]).await {
                Ok(status) => Reply::Bulk(Bytes::from_static(status.word().as_bytes())),
                Err(e) => err(format!("ERR {e}")),
            },
            Id::AftIdempotent => err("ERR AFT.IDEMPOTENT is only valid inside MULTI"),
            Id::LastSave => Reply::Integer(self.ctx.started_unix as i64),
            Id::Save => Reply::ok(),
            Id::Shutdown => {
                let modes_ok = args[1..].iter().all(|a| {
                    matches!(
                        &a.to_ascii_uppercase()[..],
                        b"NOSAVE" | b"SAVE" | b"NOW" | b"FORCE"
                    )
                });
                if !modes_ok {
                    return err(SYNTAX);
                }
                // Like Redis: no reply, the connection closes, the server stops gracefully
                // (every acknowledged commit is already durable).
                self.ctx.request_shutdown();
                self.closing = true;
                self.silent = true;
                Reply::ok()
            }
            // Data commands never reach here (parse returns Command::Data for them).
            _ => err(SYNTAX),
        }
    }

    fn check_password(&self, user: &[u8], password: &[u8]) -> bool {
        match &self.ctx.config.requirepass {
            None => user == b"default",
            Some(expected) => user == b"default" && constant_time_eq(expected.as_bytes(), password),
        }
    }

    fn auth(&mut self, args: &[Bytes]) -> Reply {
        let (user, password) = match args.len() {
            2 => {
                if self.ctx.config.requirepass.is_none() {
                    return err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
                }
                (&b"default"[..], &args[1][..])
            }
            3 => (&args[1][..], &args[2][..]),
            _ => return err(SYNTAX),
        };
        if self.check_password(user, password) {
            self.authenticated = true;
            Reply::ok()
        } else {
            err("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut protocol = self.protocol;
        if let Some(v) = args.get(1) {
            protocol = match parse_i64(v) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return err("NOPROTO unsupported protocol version"),
                None => return err("ERR Protocol version is not an integer or out of range"),
            };
        }
        let mut i = 2;
        let mut auth = None;
        let mut name = None;
        while i < args.len() {
            let opt = args[i].to_ascii_uppercase();
            let left = args.len() - i - 1;
            match &opt[..] {
                b"AUTH" if left >= 2 => {
                    auth = Some((args[i + 1].clone(), args[i + 2].clone()));
                    i += 3;
                }
                b"SETNAME" if left >= 1 => {
                    name = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => {
                    return err(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&args[i])
                    ))
                }
            }
        }
        if let Some((user, password)) = auth {
            if !self.check_password(&user, &password) {
                return err("WRONGPASS invalid username-password pair or user is disabled.");
            }
            self.authenticated = true;
        }
        if !self.authenticated {
            return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        if let Some(name) = name {
            if !valid_name(&name) {
                return err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            self.name = (!name.is_empty()).then_some(name);
        }
        self.protocol = protocol;
        let s = |v: &'static str| Reply::Bulk(Bytes::from_static(v.as_bytes()));
        Reply::Map(vec![
            (s("server"), s("redis")),
            (s("version"), s(REDIS_VERSION)),
            (
                s("proto"),
                Reply::Integer(if protocol == Protocol::Resp3 { 3 } else { 2 }),
            ),
            (s("id"), Reply::Integer(self.id as i64)),
            (s("mode"), s("standalone")),
            (s("role"), s("master")),
            (s("modules"), Reply::Array(vec![])),
        ])
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let sub = args[1].to_ascii_uppercase();
        let arity = |n: usize, name: &str| {
            if args.len() == n {
                None
            } else {
                Some(err(format!(
                    "ERR wrong number of arguments for 'client|{name}' command"
                )))
            }
        };
        match &sub[..] {
            b"ID" => arity(2, "id").unwrap_or(Reply::Integer(self.id as i64)),
            b"GETNAME" => arity(2, "getname")
                .unwrap_or_else(|| self.name.clone().map_or(Reply::Nil, Reply::Bulk)),
            b"SETNAME" => {
                if let Some(e) = arity(3, "setname") {
                    return e;
                }
                if !valid_name(&args[2]) {
                    return err(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                Reply::ok()
            }
            b"SETINFO" => {
                if let Some(e) = arity(4, "setinfo") {
                    return e;
                }
                let attr = args[2].to_ascii_uppercase();
                let slot = match &attr[..] {
                    b"LIB-NAME" => &mut self.lib_name,
                    b"LIB-VER" => &mut self.lib_ver,
                    _ => {
                        return err(format!(
                            "ERR Unrecognized option '{}'",
                            String::from_utf8_lossy(&args[2])
                        ))
                    }
                };
                if !valid_name(&args[3]) {
                    return err(format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        String::from_utf8_lossy(&args[2]).to_ascii_lowercase()
                    ));
                }
                *slot = Some(args[3].clone());
                Reply::ok()
            }
            b"INFO" => arity(2, "info").unwrap_or_else(|| {
                let mut line = self.info_line();
                line.push('\n');
                Reply::Verbatim(Bytes::from(line))
            }),
            b"LIST" => {
                let mut line = self.info_line();
                line.push('\n');
                Reply::Verbatim(Bytes::from(line))
            }
            b"NO-EVICT" | b"NO-TOUCH" => {
                if let Some(e) = arity(3, &String::from_utf8_lossy(&sub).to_ascii_lowercase()) {
                    return e;
                }
                match &args[2].to_ascii_uppercase()[..] {
                    b"ON" | b"OFF" => Reply::ok(),
                    _ => err(SYNTAX),
                }
            }
            b"HELP" => Reply::Array(
                [
                    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                    "GETNAME",
                    "    Return the name of the current connection.",
                    "ID",
                    "    Return the ID of the current connection.",
                    "INFO",
                    "    Return information about the current client connection.",
                    "LIST",
                    "    Return information about client connections (this one).",
                    "SETNAME <name>",
                    "    Assign the name <name> to the current connection.",
                    "SETINFO <LIB-NAME|LIB-VER> <value>",
                    "    Set client library name or version.",
                    "HELP",
                    "    Print this help.",
                ]
                .iter()
                .map(|l| Reply::Status(l))
                .collect(),
            ),
            _ => unknown_subcommand(args),
        }
    }

    fn info_line(&self) -> String {
        let text = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle=0 flags={} db=0 sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.peer,
            self.ctx.listen_addr,
            text(&self.name),
            self.created.elapsed().as_secs(),
            if self.multi.is_some() { "x" } else { "N" },
            self.multi.as_ref().map_or(-1, |m| m.queue.len() as i64),
            if self.protocol == Protocol::Resp3 { 3 } else { 2 },
            text(&self.lib_name),
            text(&self.lib_ver),
        )
    }
}

impl Drop for Session {
    /// A closed connection detaches from its interactive transaction (which stays open
    /// until its timeout, for another connection to attach).
    fn drop(&mut self) {
        self.leave_interactive();
    }
}

/// The error for a command on an interactive transaction that already ended (saying how),
/// or `None` while it runs.
fn ended_reply(open: &OpenTxn, slot: &Slot, more: &str) -> Option<Reply> {
    if slot.txn.is_some() {
        return None;
    }
    let word = slot.ended.unwrap_or(Status::Unknown).word();
    Some(err(format!(
        "ERR transaction {} is no longer running ({word}){more}",
        open.id()
    )))
}

/// Runs a data command in `txn`; the reply stands only if the snapshot it read was not
/// revoked meanwhile.
async fn apply(command: &DataCmd, txn: &mut Txn) -> Result<Reply, TxnError> {
    let reply = command.apply(txn).await?;
    txn.check_snapshot()?;
    Ok(reply)
}

/// Redis's reply to an unknown subcommand of `args[0]`.
pub fn unknown_subcommand(args: &[Bytes]) -> Reply {
    err(format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        String::from_utf8_lossy(&args[1][..args[1].len().min(128)]),
        String::from_utf8_lossy(&args[0]).to_ascii_uppercase()
    ))
}

/// Client names and library names: printable ASCII without spaces.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The error reply for a transaction that could not complete.
pub fn txn_error_reply(e: &TxnError) -> Reply {
    match e {
        TxnError::Conflict => err(
            "CONFLICT transaction aborted: a key it read was changed by a concurrent commit; nothing was applied, retry it",
        ),
        TxnError::WatchFailed => Reply::NilArray,
        TxnError::Duplicate(existing) => err(format!(
            "COMMITTED {} a transaction with this idempotency key already committed; nothing was applied",
            existing.txn
        )),
        TxnError::Storage(StorageError::OutcomeUnknown(m)) => err(format!(
            "ERR commit outcome unknown (backend failed after the commit was sent): {m}"
        )),
        TxnError::Storage(e) => err(format!("ERR {e}; nothing was committed")),
        TxnError::SnapshotTooOld(limit) => err(format!(
            "ERR snapshot too old: the transaction's snapshot is older than {} ms (max_snapshot_age_ms) and what it read may have been collected; it was aborted, nothing was applied, run it again",
            limit.as_millis()
        )),
        TxnError::Internal(m) => err(format!("ERR internal error: {m}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::storage::memory::MemoryStorage;
    use crate::txn::{Engine, EngineConfig};

    async fn context(config: Config) -> Arc<Context> {
        let engine = Engine::open(Arc::new(MemoryStorage::new()), EngineConfig::default())
            .await
            .unwrap();
        Context::new(engine, Arc::new(config), "127.0.0.1:7379".into())
    }

    async fn session() -> Session {
        Session::new(context(Config::default()).await, "127.0.0.1:1".into())
    }

    /// Runs a space-separated command and returns the exact reply bytes as text.
    async fn run(s: &mut Session, line: &str) -> String {
        let args = line
            .split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        let mut out = BytesMut::new();
        s.handle(args, &mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn expect(s: &mut Session, script: &[(&str, &str)]) {
        for (cmd, want) in script {
            assert_eq!(run(s, cmd).await, *want, "command: {cmd}");
        }
    }

    #[tokio::test]
    async fn strings_get_set_and_conditions() {
        let mut s = session().await;
        expect(
            &mut s,
            &[
                ("GET k", "$-1\r\n"),
                ("SET k v", "+OK\r\n"),
                ("GET k", "$1\r\nv\r\n"),
                ("SET k w NX", "$-1\r\n"),
                ("SET k w XX GET", "$1\r\nv\r\n"),
                ("SET other x XX", "$-1\r\n"),
                ("SET n 1 NX GET", "$-1\r\n"),
                ("SETNX k z", ":0\r\n"),
                ("SETNX fresh z", ":1\r\n"),
                ("GETSET k new", "$1\r\nw\r\n"),
                ("GETDEL k", "$3\r\nnew\r\n"),
                ("GETDEL k", "$-1\r\n"),
                ("MSET a 1 b 2", "+OK\r\n"),
                ("MGET a b nope", "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n"),
                ("MSETNX a 9 c 9", ":0\r\n"),
                ("MSETNX c 3 d 4", ":1\r\n"),
                (
                    "MSET a",
                    "-ERR wrong number of arguments for 'mset' command\r\n",
                ),
                (
                    "MSET a 1 b",
                    "-ERR wrong number of arguments for 'mset' command\r\n",
                ),
                (
                    "SET k v EX 0",
                    "-ERR invalid expire time in 'set' command\r\n",
                ),
                ("SET k v BOGUS", "-ERR syntax error\r\n"),
                (
                    "SET k v EX nope",
                    "-ERR value is not an integer or out of range\r\n",
                ),
                (
                    "SETEX k 0 v",
                    "-ERR invalid expire time in 'setex' command\r\n",
                ),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn string_editing_and_counters() {
        let mut s = session().await;
        expect(
            &mut s,
            &[
                ("APPEND s Hello", ":5\r\n"),
                ("APPEND s _World", ":11\r\n"),
                ("STRLEN s", ":11\r\n"),
                ("STRLEN none", ":0\r\n"),
                ("GETRANGE s 0 4", "$5\r\nHello\r\n"),
                ("GETRANGE s -5 -1", "$5\r\nWorld\r\n"),
                ("GETRANGE none 0 -1", "$0\r\n\r\n"),
                ("SETRANGE s 6 Redis", ":11\r\n"),
                ("GET s", "$11\r\nHello_Redis\r\n"),
                ("SETRANGE pad 3 x", ":4\r\n"),
                ("GET pad", "$4\r\n\0\0\0x\r\n"),
                ("SETRANGE s -1 x", "-ERR offset is out of range\r\n"),
                ("INCR n", ":1\r\n"),
                ("INCRBY n 10", ":11\r\n"),
                ("DECR n", ":10\r\n"),
                ("DECRBY n 20", ":-10\r\n"),
                ("INCR s", "-ERR value is not an integer or out of range\r\n"),
                (
                    "INCRBY n x",
                    "-ERR value is not an integer or out of range\r\n",
                ),
                ("SET big 9223372036854775807", "+OK\r\n"),
                ("INCR big", "-ERR increment or decrement would overflow\r\n"),
                (
                    "DECRBY n -9223372036854775808",
                    "-ERR decrement would overflow\r\n",
                ),
                ("SET f 10.5", "+OK\r\n"),
                ("INCRBYFLOAT f 0.1", "$4\r\n10.6\r\n"),
                ("INCRBYFLOAT f -10.6", "$1\r\n0\r\n"),
                ("INCRBYFLOAT s 1", "-ERR value is not a valid float\r\n"),
                ("INCRBYFLOAT f nan", "-ERR value is not a valid float\r\n"),
                ("SET f 1", "+OK\r\n"),
                (
                    "INCRBYFLOAT f inf",
                    "-ERR increment would produce NaN or Infinity\r\n",
                ),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn keyspace_and_expiry() {
        let mut s = session().await;
        expect(
            &mut s,
            &[
                ("SET a 1", "+OK\r\n"),
                ("SET b 2 EX 100", "+OK\r\n"),
                ("EXISTS a b c a", ":3\r\n"),
                ("TYPE a", "+string\r\n"),
                ("TYPE c", "+none\r\n"),
                ("TTL a", ":-1\r\n"),
                ("TTL b", ":100\r\n"),
                ("TTL c", ":-2\r\n"),
                ("EXPIRE a 50", ":1\r\n"),
                ("EXPIRE a 10 GT", ":0\r\n"),
                ("EXPIRE a 10 LT", ":1\r\n"),
                ("TTL a", ":10\r\n"),
                ("EXPIRE a 10 NX", ":0\r\n"),
                ("EXPIRE c 10", ":0\r\n"),
                ("PERSIST a", ":1\r\n"),
                ("PERSIST a", ":0\r\n"),
                ("TTL a", ":-1\r\n"),
                ("EXPIRE a 10 XX", ":0\r\n"),
                (
                    "EXPIRE a 10 NX XX",
                    "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
                ),
                (
                    "EXPIRE a 10 GT LT",
                    "-ERR GT and LT options at the same time are not compatible\r\n",
                ),
                ("EXPIRE a 10 FOO", "-ERR Unsupported option FOO\r\n"),
                ("DBSIZE", ":2\r\n"),
                ("EXPIRE a -1", ":1\r\n"),
                ("GET a", "$-1\r\n"),
                ("DBSIZE", ":1\r\n"),
                ("DEL b c", ":1\r\n"),
                ("KEYS *", "*0\r\n"),
                ("MSET k1 1 k2 2 x 3", "+OK\r\n"),
                ("EXPIRETIME k1", ":-1\r\n"),
                ("GETEX k1 EX 100", "$1\r\n1\r\n"),
                ("TTL k1", ":100\r\n"),
                ("GETEX k1 PERSIST", "$1\r\n1\r\n"),
                ("TTL k1", ":-1\r\n"),
                (
                    "GETEX k1 EX 0",
                    "-ERR invalid expire time in 'getex' command\r\n",
                ),
                ("FLUSHALL", "+OK\r\n"),
                ("DBSIZE", ":0\r\n"),
                ("RANDOMKEY", "$-1\r\n"),
                ("SET p 1 PX 1", "+OK\r\n"),
            ],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        expect(&mut s, &[("GET p", "$-1\r\n"), ("EXISTS p", ":0\r\n")]).await;
    }

    #[tokio::test]
    async fn keys_and_scan_visit_every_key() {
        let mut s = session().await;
        for i in 0..25 {
            run(&mut s, &format!("SET key:{i} v")).await;
        }
        run(&mut s, "SET other v").await;
        let keys = run(&mut s, "KEYS key:*").await;
        assert!(keys.starts_with("*25\r\n"), "{keys}");
        let mut seen = std::collections::HashSet::new();
        let mut cursor = "0".to_string();
        loop {
            let reply = run(&mut s, &format!("SCAN {cursor} MATCH key:* COUNT 7")).await;
            let lines: Vec<&str> = reply.split("\r\n").collect();
            cursor = lines[2].to_string();
            for l in &lines[4..] {
                if l.starts_with("key:") {
                    seen.insert(l.to_string());
                }
            }
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(seen.len(), 25);
        assert_eq!(run(&mut s, "SCAN x").await, "-ERR invalid cursor\r\n");
    }

    #[tokio::test]
    async fn multi_exec_replies_like_redis() {
        let mut s = session().await;
        expect(
            &mut s,
            &[
                ("EXEC", "-ERR EXEC without MULTI\r\n"),
                ("DISCARD", "-ERR DISCARD without MULTI\r\n"),
                ("MULTI", "+OK\r\n"),
                ("MULTI", "-ERR MULTI calls can not be nested\r\n"),
                ("SET a 1", "+QUEUED\r\n"),
                ("INCR a", "+QUEUED\r\n"),
                ("SET s x", "+QUEUED\r\n"),
                ("INCR s", "+QUEUED\r\n"),
                ("SET a b c", "+QUEUED\r\n"),
                ("GET a", "+QUEUED\r\n"),
                ("PING", "+QUEUED\r\n"),
                (
                    "EXEC",
                    "*7\r\n+OK\r\n:2\r\n+OK\r\n-ERR value is not an integer or out of range\r\n-ERR syntax error\r\n$1\r\n2\r\n+PONG\r\n",
                ),
                ("MULTI", "+OK\r\n"),
                ("EXEC", "*0\r\n"),
                ("MULTI", "+OK\r\n"),
                ("SET a 5", "+QUEUED\r\n"),
                ("NOSUCH x", "-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n"),
                ("GET", "-ERR wrong number of arguments for 'get' command\r\n"),
                ("EXEC", "-EXECABORT Transaction discarded because of previous errors.\r\n"),
                ("GET a", "$1\r\n2\r\n"),
                ("MULTI", "+OK\r\n"),
                ("SET a 6", "+QUEUED\r\n"),
                ("DISCARD", "+OK\r\n"),
                ("GET a", "$1\r\n2\r\n"),
                ("MULTI", "+OK\r\n"),
                ("WATCH a", "-ERR WATCH inside MULTI is not allowed\r\n"),
                ("EXEC", "*0\r\n"),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn watch_fails_exec_when_the_key_changes() {
        let ctx = context(Config::default()).await;
        let mut a = Session::new(ctx.clone(), "a".into());
        let mut b = Session::new(ctx.clone(), "b".into());
        expect(&mut a, &[("SET k 1", "+OK\r\n"), ("WATCH k", "+OK\r\n")]).await;
        expect(&mut b, &[("SET k 2", "+OK\r\n")]).await;
        expect(
            &mut a,
            &[
                ("MULTI", "+OK\r\n"),
                ("SET k 3", "+QUEUED\r\n"),
                ("EXEC", "*-1\r\n"),
                ("GET k", "$1\r\n2\r\n"),
                // Watches were cleared: the next transaction runs.
                ("MULTI", "+OK\r\n"),
                ("SET k 3", "+QUEUED\r\n"),
                ("EXEC", "*1\r\n+OK\r\n"),
                // A change by the watcher itself also counts.
                ("WATCH k", "+OK\r\n"),
                ("SET k 4", "+OK\r\n"),
                ("MULTI", "+OK\r\n"),
                ("GET k", "+QUEUED\r\n"),
                ("EXEC", "*-1\r\n"),
                // UNWATCH forgets.
                ("WATCH k", "+OK\r\n"),
                ("UNWATCH", "+OK\r\n"),
                ("SET k 5", "+OK\r\n"),
                ("MULTI", "+OK\r\n"),
                ("GET k", "+QUEUED\r\n"),
                ("EXEC", "*1\r\n$1\r\n5\r\n"),
                // A watched key that does not exist and is not created: EXEC runs.
                ("WATCH ghost", "+OK\r\n"),
                ("MULTI", "+OK\r\n"),
                ("EXEC", "*0\r\n"),
            ],
        )
        .await;
    }

    fn request(line: &str) -> Vec<Bytes> {
        line.split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    #[tokio::test]
    async fn a_pipelined_batch_replies_in_order_and_commits_its_writes_together() {
        let mut s = session().await;
        run(&mut s, "SET w 0").await;
        let engine = s.ctx.engine.clone();
        let commits = || engine.stats().commits.load(Ordering::Relaxed);
        let before = commits();
        let batch = [
            "SET a 1",
            "INCR a",
            "SET s str",
            "INCR s",
            "GET a",
            "SET a b c",
            "APPEND a x",
            "MGET a s nope",
            "PING",
            "DEL s",
            "EXISTS s a",
        ];
        let mut out = BytesMut::new();
        let mut requests = batch.iter().map(|l| request(l)).collect();
        s.handle_batch(&mut requests, &mut out, usize::MAX).await;
        assert_eq!(
            String::from_utf8_lossy(&out),
            "+OK\r\n:2\r\n+OK\r\n-ERR value is not an integer or out of range\r\n$1\r\n2\r\n-ERR syntax error\r\n:2\r\n*3\r\n$2\r\n2x\r\n$3\r\nstr\r\n$-1\r\n+PONG\r\n:1\r\n:1\r\n"
        );
        // The writes before PING were one commit, those after it another.
        assert_eq!(commits() - before, 2);
        assert_eq!(run(&mut s, "MGET a s").await, "*2\r\n$2\r\n2x\r\n$-1\r\n");

        // Mode changes inside a batch take effect for the requests after them.
        let batch = [
            "WATCH w",
            "SET w 1",
            "MULTI",
            "SET a 9",
            "EXEC",
            "GET a",
            "MULTI",
            "INCR a",
            "EXEC",
            "QUIT",
            "SET never 1",
        ];
        let mut out = BytesMut::new();
        let mut requests = batch.iter().map(|l| request(l)).collect();
        s.handle_batch(&mut requests, &mut out, usize::MAX).await;
        assert_eq!(
            String::from_utf8_lossy(&out),
            "+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n$2\r\n2x\r\n+OK\r\n+QUEUED\r\n*1\r\n-ERR value is not an integer or out of range\r\n+OK\r\n"
        );
        assert!(s.should_close());
        let mut other = session_on(s.ctx.clone()).await;
        assert_eq!(run(&mut other, "EXISTS never").await, ":0\r\n");
    }

    async fn session_on(ctx: Arc<Context>) -> Session {
        Session::new(ctx, "other".into())
    }

    /// A pipelined batch on `s`, replies as text.
    async fn pipeline(s: &mut Session, lines: &[&str]) -> String {
        let mut requests = lines.iter().map(|l| request(l)).collect();
        let mut out = BytesMut::new();
        s.handle_batch(&mut requests, &mut out, usize::MAX).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_pipelined_group_is_as_if_its_commands_ran_one_by_one() {
        use crate::storage::testkit::fault::{FaultConfig, FaultyStorage};
        let storage = Arc::new(FaultyStorage::new(
            Arc::new(MemoryStorage::new()),
            FaultConfig::new(3),
        ));
        let engine = Engine::open(storage.clone(), EngineConfig::default())
            .await
            .unwrap();
        let ctx = Context::new(engine, Arc::new(Config::default()), "127.0.0.1:7379".into());
        let mut first = session_on(ctx.clone()).await;
        let mut second = session_on(ctx.clone()).await;
        // The first group's commit stalls in the backend after it read b (absent).
        let gate = storage.pause_next_commits(1);
        let first_group =
            tokio::spawn(async move { pipeline(&mut first, &["SET a 1", "GET b"]).await });
        gate.until_waiting(1).await;
        // The second group reads a after writing b: if its read stood on the snapshot (a
        // absent), both groups would read nil, which no order of the four commands gives.
        let second_group =
            tokio::spawn(async move { pipeline(&mut second, &["SET b 1", "GET a"]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.open();
        let first_replies = first_group.await.unwrap();
        let second_replies = second_group.await.unwrap();
        assert_eq!(first_replies, "+OK\r\n$-1\r\n");
        assert_eq!(second_replies, "+OK\r\n$1\r\n1\r\n");
    }

    #[tokio::test]
    async fn a_keyspace_read_after_a_write_ends_the_pipelined_group() {
        let mut s = session().await;
        let engine = s.ctx.engine.clone();
        let commits = || engine.stats().commits.load(Ordering::Relaxed);
        let before = commits();
        let replies = pipeline(&mut s, &["SET a 1", "DBSIZE", "SET b 2", "KEYS *", "GET a"]).await;
        assert!(
            replies.starts_with("+OK\r\n:1\r\n+OK\r\n*2\r\n"),
            "{replies}"
        );
        assert!(replies.ends_with("$1\r\n1\r\n"), "{replies}");
        assert_eq!(commits() - before, 2, "split before DBSIZE and before KEYS");
    }

    #[tokio::test]
    async fn a_pipeline_stops_at_the_output_limit_and_resumes() {
        let mut s = session().await;
        run(&mut s, "SET big 0123456789").await;
        let mut requests: VecDeque<Vec<Bytes>> = (0..10).map(|_| request("GET big")).collect();
        requests.push_back(request("SET after 1"));
        let mut out = BytesMut::new();
        // Each reply is 17 bytes: a limit of 40 stops after 3 of them.
        s.handle_batch(&mut requests, &mut out, 40).await;
        assert_eq!(out.len(), 3 * 17);
        let mut rounds = 1;
        while !requests.is_empty() || s.has_pending() {
            out.clear();
            s.handle_batch(&mut requests, &mut out, 40).await;
            assert!(out.len() <= 3 * 17 + 4, "{}", out.len());
            rounds += 1;
        }
        assert!(rounds >= 4);
        assert_eq!(run(&mut s, "GET after").await, "$1\r\n1\r\n");
    }

    #[tokio::test]
    async fn aft_abort_of_a_transaction_that_committed_says_so_and_changes_nothing() {
        let ctx = context(Config::default()).await;
        let mut a = session_on(ctx.clone()).await;
        let mut b = session_on(ctx.clone()).await;
        let id = run(&mut a, "AFT.BEGIN").await;
        let id = id.split("\r\n").nth(1).unwrap().to_string();
        assert_eq!(run(&mut a, "SET x 1").await, "+OK\r\n");
        assert_eq!(run(&mut b, &format!("AFT.ATTACH {id}")).await, "+OK\r\n");
        assert_eq!(run(&mut b, "AFT.COMMIT").await, "+OK\r\n");
        assert_eq!(
            run(&mut a, "AFT.ABORT").await,
            format!(
                "-ERR transaction {id} is no longer running (committed); nothing was aborted\r\n"
            )
        );
        assert_eq!(
            run(&mut a, &format!("AFT.STATUS {id}")).await,
            "$9\r\ncommitted\r\n"
        );
        assert_eq!(run(&mut a, "GET x").await, "$1\r\n1\r\n");
    }

    #[tokio::test]
    async fn a_neighbouring_transaction_id_attaches_to_nothing() {
        let ctx = context(Config::default()).await;
        let mut a = session_on(ctx.clone()).await;
        let mut thief = session_on(ctx.clone()).await;
        let first = run(&mut a, "AFT.BEGIN").await;
        let first = first.split("\r\n").nth(1).unwrap().to_string();
        run(&mut a, "AFT.DETACH").await;
        run(&mut a, "AFT.BEGIN").await;
        run(&mut a, "SET secret 1").await;
        run(&mut a, "AFT.DETACH").await;
        let n = u128::from_str_radix(&first, 16).unwrap();
        for guess in [n.wrapping_add(1), n.wrapping_sub(1)] {
            let reply = run(&mut thief, &format!("AFT.ATTACH {guess:032x}")).await;
            assert!(reply.starts_with("-ERR unknown transaction"), "{reply}");
        }
    }

    #[tokio::test]
    async fn info_reports_the_oldest_pinned_snapshot() {
        let ctx = context(Config::default()).await;
        let mut a = session_on(ctx.clone()).await;
        let mut b = session_on(ctx.clone()).await;
        let age = |info: String| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix("aft_oldest_snapshot_age_ms:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("aft_oldest_snapshot_age_ms")
        };
        run(&mut a, "SET k 1").await;
        run(&mut a, "AFT.BEGIN").await;
        run(&mut a, "GET k").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(age(run(&mut b, "INFO transactions").await) >= 30);
        run(&mut a, "AFT.ABORT").await;
        assert_eq!(age(run(&mut b, "INFO transactions").await), 0);
    }

    #[tokio::test]
    async fn one_client_cannot_lock_others_out_of_interactive_transactions() {
        let config = Config {
            max_open_txns: 8,
            max_open_txns_per_client: 3,
            txn_timeout_ms: 100,
            ..Config::default()
        };
        let ctx = context(config).await;
        let mut greedy = session_on(ctx.clone()).await;
        for _ in 0..3 {
            assert!(run(&mut greedy, "AFT.BEGIN TIMEOUT 3600000")
                .await
                .starts_with('$'));
            run(&mut greedy, "AFT.DETACH").await;
        }
        let refused = run(&mut greedy, "AFT.BEGIN TIMEOUT 3600000").await;
        assert!(refused.contains("max_open_txns_per_client"), "{refused}");
        // The greedy client reconnects again and again until the registry is full.
        let mut clients = Vec::new();
        while ctx.open_txns.gauges().0 < 8 {
            let mut c = session_on(ctx.clone()).await;
            run(&mut c, "AFT.BEGIN TIMEOUT 3600000").await;
            run(&mut c, "AFT.DETACH").await;
            clients.push(c);
        }
        let mut victim = session_on(ctx.clone()).await;
        assert!(run(&mut victim, "AFT.BEGIN")
            .await
            .starts_with("-ERR too many open"));
        // Once the hoarded transactions sat idle and detached for the default timeout, one
        // of them makes room for a client that needs it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(run(&mut victim, "AFT.BEGIN").await.starts_with('$'));
        assert_eq!(ctx.open_txns.stats().evicted.load(Ordering::Relaxed), 1);
        assert_eq!(ctx.open_txns.gauges().0, 8);
    }

    #[tokio::test]
    async fn connection_commands() {
        let mut s = session().await;
        expect(
            &mut s,
            &[
                ("PING", "+PONG\r\n"),
                ("PING hi", "$2\r\nhi\r\n"),
                ("PING a b", "-ERR wrong number of arguments for 'ping' command\r\n"),
                ("ECHO hey", "$3\r\nhey\r\n"),
                ("SELECT 0", "+OK\r\n"),
                ("SELECT 1", "-ERR DB index is out of range\r\n"),
                ("SELECT x", "-ERR value is not an integer or out of range\r\n"),
                ("CLIENT SETNAME app", "+OK\r\n"),
                ("CLIENT GETNAME", "$3\r\napp\r\n"),
                (
                    "CLIENT SETNAME a\nb",
                    "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
                ),
                ("CLIENT SETINFO LIB-NAME redis-py", "+OK\r\n"),
                ("CLIENT SETINFO LIB-VER 1.0", "+OK\r\n"),
                ("CLIENT ID", ":1\r\n"),
                ("CLIENT NOPE", "-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n"),
                (
                    "AUTH x",
                    "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
                ),
                ("HELLO 4", "-NOPROTO unsupported protocol version\r\n"),
                ("HELLO x", "-ERR Protocol version is not an integer or out of range\r\n"),
                ("FUNCTION FLUSH", "+OK\r\n"),
                ("DEBUG LOG hi", "-ERR DEBUG is not supported\r\n"),
                ("COMMAND COUNT", &format!(":{}\r\n", crate::cmd::COMMANDS.len())),
                ("CONFIG GET save", "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
                (
                    "CONFIG GET appendonly",
                    "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n",
                ),
                (
                    "FOO a b",
                    "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
                ),
                ("QUIT", "+OK\r\n"),
            ],
        )
        .await;
        assert!(s.should_close());
    }

    #[tokio::test]
    async fn hello_3_switches_to_resp3() {
        let mut s = session().await;
        let hello = run(&mut s, "HELLO 3 SETNAME me").await;
        assert!(
            hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
            "{hello}"
        );
        assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
        expect(
            &mut s,
            &[
                ("GET missing", "_\r\n"),
                ("CLIENT GETNAME", "$2\r\nme\r\n"),
                ("CONFIG GET save", "%1\r\n$4\r\nsave\r\n$0\r\n\r\n"),
                ("SET k 1", "+OK\r\n"),
                ("WATCH k", "+OK\r\n"),
                ("SET k 2", "+OK\r\n"),
                ("MULTI", "+OK\r\n"),
                ("EXEC", "_\r\n"),
                ("RESET", "+RESET\r\n"),
                ("GET missing", "$-1\r\n"),
            ],
        )
        .await;
        let info = run(&mut s, "INFO").await;
        assert!(info.contains("redis_version:7.0.15\r\n"), "{info}");
    }

    #[tokio::test]
    async fn requirepass_gates_commands() {
        let config = Config {
            requirepass: Some("secret".into()),
            ..Config::default()
        };
        let mut s = Session::new(context(config).await, "x".into());
        assert!(!s.is_authenticated());
        expect(
            &mut s,
            &[
                ("GET k", "-NOAUTH Authentication required.\r\n"),
                (
                    "AUTH wrong",
                    "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
                ),
                (
                    "AUTH other secret",
                    "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
                ),
                ("AUTH secret", "+OK\r\n"),
                ("GET k", "$-1\r\n"),
                ("RESET", "+RESET\r\n"),
                ("GET k", "-NOAUTH Authentication required.\r\n"),
            ],
        )
        .await;
        let hello = run(&mut s, "HELLO 3").await;
        assert!(hello.starts_with("-NOAUTH HELLO must be called"), "{hello}");
        let hello = run(&mut s, "HELLO 3 AUTH default secret").await;
        assert!(hello.starts_with("%7\r\n"), "{hello}");
        assert!(s.is_authenticated());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_increments_are_never_lost() {
        let ctx = context(Config::default()).await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let ctx = ctx.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = Session::new(ctx, format!("c{i}"));
                for _ in 0..50 {
                    assert!(run(&mut s, "INCR counter").await.starts_with(':'));
                    run(&mut s, "MULTI").await;
                    run(&mut s, "INCRBY other 2").await;
                    run(&mut s, "APPEND log x").await;
                    assert!(run(&mut s, "EXEC").await.starts_with("*2\r\n:"));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut s = Session::new(ctx, "check".into());
        expect(
            &mut s,
            &[
                ("GET counter", "$3\r\n400\r\n"),
                ("GET other", "$3\r\n800\r\n"),
                ("STRLEN log", ":400\r\n"),
            ],
        )
        .await;
    }
}
