//! Connection commands: PING, ECHO, HELLO, AUTH, SELECT, CLIENT, QUIT, RESET.
//!
//! They act on the connection's [`Client`] state (protocol, name, authentication), never on
//! data, and run the same inside and outside a transaction. RESET also leaves MULTI, the
//! watches and any interactive transaction: the session does that part.
//!
//! # Format and deviations
//!
//! * `PING [message]`: `+PONG`, or the message as a bulk string.
//! * `ECHO message`.
//! * `HELLO [2|3 [AUTH user password] [SETNAME name]]`: a map of the server's properties;
//!   `-NOPROTO unsupported protocol version` for other versions.
//! * `AUTH [user] password`: only the user `default` exists (its password is
//!   `requirepass`); passwords are compared in constant time.
//! * `SELECT 0`: there is one database; other indexes reply `ERR DB index is out of range`.
//! * `CLIENT ID|GETNAME|SETNAME|SETINFO|INFO|LIST|NO-EVICT|NO-TOUCH|HELP`: `LIST` lists the
//!   calling connection only.
//! * `QUIT`: `+OK`, then the connection closes. `RESET`: `+RESET`.

use std::time::Instant;

use bytes::Bytes;

use super::table::Id;
use super::util::{err, parse_i64, NOT_INTEGER, SYNTAX};
use crate::config::Config;
use crate::resp::{Protocol, Reply};

/// The version reported to clients (HELLO, INFO): the Redis version whose behaviour aft
/// follows, so that clients enable the features they would with that Redis.
pub const REDIS_VERSION: &str = "7.0.15";

/// What a connection is: its identity, protocol and authentication, as connection commands
/// set them.
#[derive(Debug)]
pub struct Client {
    /// CLIENT ID.
    pub id: u64,
    /// The peer's address.
    pub peer: String,
    /// The address it connected to.
    pub local: String,
    /// The protocol replies are encoded in.
    pub protocol: Protocol,
    /// CLIENT SETNAME / HELLO SETNAME.
    pub name: Option<Bytes>,
    /// CLIENT SETINFO LIB-NAME.
    pub lib_name: Option<Bytes>,
    /// CLIENT SETINFO LIB-VER.
    pub lib_ver: Option<Bytes>,
    /// Whether it authenticated (always true without `requirepass`).
    pub authenticated: bool,
    /// The user it is authenticated as (there is one user so far: `default`).
    pub user: Bytes,
    /// When it connected.
    pub created: Instant,
    /// The connection closes once the replies so far are written (QUIT, SHUTDOWN).
    pub closing: bool,
    /// The connection closes without a reply (SHUTDOWN).
    pub silent: bool,
}

impl Client {
    /// A client that just connected from `peer` to `local`.
    pub fn new(id: u64, peer: String, local: String, config: &Config) -> Self {
        Client {
            id,
            peer,
            local,
            protocol: Protocol::Resp2,
            name: None,
            lib_name: None,
            lib_ver: None,
            authenticated: config.requirepass.is_none(),
            user: Bytes::from_static(b"default"),
            created: Instant::now(),
            closing: false,
            silent: false,
        }
    }

    /// RESET: back to a fresh connection's protocol, name and authentication.
    pub fn reset(&mut self, config: &Config) {
        self.protocol = Protocol::Resp2;
        self.name = None;
        self.authenticated = config.requirepass.is_none();
    }

    fn check_password(&self, config: &Config, user: &[u8], password: &[u8]) -> bool {
        match &config.requirepass {
            None => user == b"default",
            Some(expected) => {
                user == b"default" && constant_time_eq(expected.expose().as_bytes(), password)
            }
        }
    }

    /// The line CLIENT INFO and CLIENT LIST print for this connection; `in_multi` is the
    /// number of queued commands if it is in MULTI.
    pub fn info_line(&self, in_multi: Option<usize>) -> String {
        let text = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle=0 flags={} db=0 sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.peer,
            self.local,
            text(&self.name),
            self.created.elapsed().as_secs(),
            if in_multi.is_some() { "x" } else { "N" },
            in_multi.map_or(-1, |n| n as i64),
            if self.protocol == Protocol::Resp3 { 3 } else { 2 },
            text(&self.lib_name),
            text(&self.lib_ver),
        )
    }
}

/// A parsed connection command.
#[derive(Clone, Debug)]
pub enum ConnectionCmd {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `HELLO [protover [AUTH user password] [SETNAME name]]`.
    Hello {
        /// The protocol asked for.
        protocol: Option<Protocol>,
        /// `AUTH user password`.
        auth: Option<(Bytes, Bytes)>,
        /// `SETNAME name`.
        name: Option<Bytes>,
    },
    /// `AUTH [user] password` (`user` is `None` in the one-argument form).
    Auth {
        /// The user named, if any.
        user: Option<Bytes>,
        /// The password.
        password: Bytes,
    },
    /// `SELECT index`.
    Select(i64),
    /// `CLIENT subcommand …` (arguments as given).
    Client(Vec<Bytes>),
    /// `QUIT`.
    Quit,
    /// `RESET`.
    Reset,
}

impl ConnectionCmd {
    /// Parses `args` (a connection command whose arity was checked). `Err` is the run-time
    /// error reply, as Redis gives it when the command runs.
    pub fn parse(id: Id, args: Vec<Bytes>) -> Result<Self, Reply> {
        let mut args = args.into_iter().skip(1);
        Ok(match id {
            Id::Ping => {
                let message = args.next();
                if args.next().is_some() {
                    return Err(err("ERR wrong number of arguments for 'ping' command"));
                }
                ConnectionCmd::Ping(message)
            }
            Id::Echo => ConnectionCmd::Echo(args.next().unwrap_or_default()),
            Id::Hello => parse_hello(args.collect())?,
            Id::Auth => {
                let rest: Vec<Bytes> = args.collect();
                match <[Bytes; 2]>::try_from(rest) {
                    Ok([user, password]) => ConnectionCmd::Auth {
                        user: Some(user),
                        password,
                    },
                    Err(rest) => match <[Bytes; 1]>::try_from(rest) {
                        Ok([password]) => ConnectionCmd::Auth {
                            user: None,
                            password,
                        },
                        Err(_) => return Err(err(SYNTAX)),
                    },
                }
            }
            Id::Select => match args.next().as_deref().and_then(parse_i64) {
                Some(index) => ConnectionCmd::Select(index),
                None => return Err(err(NOT_INTEGER)),
            },
            Id::Client => {
                let mut all = vec![Bytes::from_static(b"CLIENT")];
                all.extend(args);
                ConnectionCmd::Client(all)
            }
            Id::Quit => ConnectionCmd::Quit,
            Id::Reset => ConnectionCmd::Reset,
            _ => return Err(err(SYNTAX)),
        })
    }

    /// Runs the command on `client`. RESET only resets the client here; the session also
    /// leaves its transaction modes.
    pub fn apply(&self, client: &mut Client, config: &Config) -> Reply {
        match self {
            ConnectionCmd::Ping(None) => Reply::Status("PONG"),
            ConnectionCmd::Ping(Some(message)) => Reply::Bulk(message.clone()),
            ConnectionCmd::Echo(message) => Reply::Bulk(message.clone()),
            ConnectionCmd::Hello {
                protocol,
                auth,
                name,
            } => hello(client, config, *protocol, auth.as_ref(), name.as_ref()),
            ConnectionCmd::Auth { user, password } => {
                let user = match user {
                    Some(user) => user.as_ref(),
                    None => {
                        if config.requirepass.is_none() {
                            return err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
                        }
                        b"default"
                    }
                };
                if client.check_password(config, user, password) {
                    client.authenticated = true;
                    Reply::ok()
                } else {
                    err("WRONGPASS invalid username-password pair or user is disabled.")
                }
            }
            ConnectionCmd::Select(0) => Reply::ok(),
            ConnectionCmd::Select(_) => err("ERR DB index is out of range"),
            ConnectionCmd::Client(args) => client_command(client, args, None),
            ConnectionCmd::Quit => {
                client.closing = true;
                Reply::ok()
            }
            ConnectionCmd::Reset => {
                client.reset(config);
                Reply::Status("RESET")
            }
        }
    }
}

fn parse_hello(args: Vec<Bytes>) -> Result<ConnectionCmd, Reply> {
    let mut protocol = None;
    if let Some(v) = args.first() {
        protocol = Some(match parse_i64(v) {
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => return Err(err("NOPROTO unsupported protocol version")),
            None => {
                return Err(err(
                    "ERR Protocol version is not an integer or out of range",
                ))
            }
        });
    }
    let (mut auth, mut name) = (None, None);
    let mut i = 1;
    while i < args.len() {
        let left = args.len() - i - 1;
        match &args[i].to_ascii_uppercase()[..] {
            b"AUTH" if left >= 2 => {
                auth = Some((args[i + 1].clone(), args[i + 2].clone()));
                i += 3;
            }
            b"SETNAME" if left >= 1 => {
                name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => {
                return Err(err(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[i])
                )))
            }
        }
    }
    Ok(ConnectionCmd::Hello {
        protocol,
        auth,
        name,
    })
}

fn hello(
    client: &mut Client,
    config: &Config,
    protocol: Option<Protocol>,
    auth: Option<&(Bytes, Bytes)>,
    name: Option<&Bytes>,
) -> Reply {
    let protocol = protocol.unwrap_or(client.protocol);
    if let Some((user, password)) = auth {
        if !client.check_password(config, user, password) {
            return err("WRONGPASS invalid username-password pair or user is disabled.");
        }
        client.authenticated = true;
    }
    if !client.authenticated {
        return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if let Some(name) = name {
        if !valid_name(name) {
            return err("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        client.name = (!name.is_empty()).then(|| name.clone());
    }
    client.protocol = protocol;
    let s = |v: &'static str| Reply::Bulk(Bytes::from_static(v.as_bytes()));
    Reply::Map(vec![
        (s("server"), s("redis")),
        (s("version"), s(REDIS_VERSION)),
        (
            s("proto"),
            Reply::Integer(if protocol == Protocol::Resp3 { 3 } else { 2 }),
        ),
        (s("id"), Reply::Integer(client.id as i64)),
        (s("mode"), s("standalone")),
        (s("role"), s("master")),
        (s("modules"), Reply::Array(vec![])),
    ])
}

/// `CLIENT …`; `in_multi` as for [`Client::info_line`].
pub fn client_command(client: &mut Client, args: &[Bytes], in_multi: Option<usize>) -> Reply {
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
        b"ID" => arity(2, "id").unwrap_or(Reply::Integer(client.id as i64)),
        b"GETNAME" => arity(2, "getname")
            .unwrap_or_else(|| client.name.clone().map_or(Reply::Nil, Reply::Bulk)),
        b"SETNAME" => {
            if let Some(e) = arity(3, "setname") {
                return e;
            }
            if !valid_name(&args[2]) {
                return err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            client.name = (!args[2].is_empty()).then(|| args[2].clone());
            Reply::ok()
        }
        b"SETINFO" => {
            if let Some(e) = arity(4, "setinfo") {
                return e;
            }
            let attr = args[2].to_ascii_uppercase();
            let slot = match &attr[..] {
                b"LIB-NAME" => &mut client.lib_name,
                b"LIB-VER" => &mut client.lib_ver,
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
        b"INFO" => arity(2, "info")
            .unwrap_or_else(|| Reply::Verbatim(Bytes::from(client.info_line(in_multi)))),
        b"LIST" => Reply::Verbatim(Bytes::from(client.info_line(in_multi))),
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
