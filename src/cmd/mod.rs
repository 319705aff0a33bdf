//! Commands: every command aft knows, typed, one module per family, each with its format in
//! its documentation; parsing a request into a [`Command`].
//!
//! | family | module | runs against |
//! |---|---|---|
//! | strings | [`string`] | a transaction ([`DataCmd::apply`]) |
//! | keys, expiry, the keyspace | [`keyspace`] | a transaction |
//! | connection (PING, HELLO, AUTH, CLIENT…) | [`connection`] | the connection's [`connection::Client`] |
//! | server (INFO, CONFIG, COMMAND, SHUTDOWN…) | [`server`] | the node |
//! | transactions (MULTI, EXEC, WATCH, AFT.*) | [`transaction`] | the session's mode |
//!
//! Parsing reports two kinds of errors, as Redis does: [`ParseError`] (unknown command, wrong
//! number of arguments) is found when a command is queued and aborts a MULTI block; every
//! other error (syntax, bad integer…) is a run-time error, kept as [`Command::Invalid`] and
//! replied when the command runs (inside the EXEC reply for a queued command).
//!
//! Data commands are run by [`DataCmd::apply`], a function of the transaction alone that
//! returns the reply: the same code serves autocommit, pipelines, MULTI/EXEC and
//! interactive transactions.

pub mod connection;
pub mod keyspace;
pub mod lcs;
pub mod server;
pub mod string;
pub mod table;
pub mod transaction;
pub mod util;

use bytes::Bytes;

use crate::resp::Reply;
use crate::txn::{Txn, TxnError};
pub use table::{lookup, CommandSpec, COMMANDS};

/// A queue-time error: the command cannot be run at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No such command (the whole error message, raw bytes as Redis sends them).
    Unknown(Bytes),
    /// Wrong number of arguments.
    Arity(&'static str),
    /// A command Redis refuses inside MULTI (SAVE, SHUTDOWN).
    NotInMulti,
}

impl ParseError {
    /// The exact Redis error reply.
    pub fn reply(&self) -> Reply {
        match self {
            ParseError::Unknown(msg) => Reply::ErrorBytes(msg.clone()),
            ParseError::Arity(name) => Reply::error(format!(
                "ERR wrong number of arguments for '{name}' command"
            )),
            ParseError::NotInMulti => Reply::error("ERR Command not allowed inside a transaction"),
        }
    }
}

/// A parsed request.
#[derive(Clone, Debug)]
pub enum Command {
    /// Reads or writes keys: runs inside a transaction.
    Data(DataCmd),
    /// Acts on the connection.
    Connection(connection::ConnectionCmd),
    /// Acts on the server.
    Server(server::ServerCmd),
    /// Changes the connection's transaction mode (MULTI, EXEC, WATCH, AFT.*).
    Txn(transaction::TxnCmd),
    /// A run-time error found while parsing (e.g. a syntax error): replied when run.
    Invalid(Reply),
}

/// A command that reads or writes keys.
#[derive(Clone, Debug)]
pub enum DataCmd {
    /// Strings.
    Str(string::StringCmd),
    /// Keys, expiry and the whole keyspace.
    Key(keyspace::KeyCmd),
}

impl DataCmd {
    /// Runs the command in `txn` and returns its reply. `Err` only for failures of the
    /// transaction itself (backend errors); command errors are error replies.
    pub async fn apply(&self, txn: &mut Txn) -> Result<Reply, TxnError> {
        match self {
            DataCmd::Str(c) => c.apply(txn).await,
            DataCmd::Key(c) => c.apply(txn).await,
        }
    }

    /// Keys whose values the command reads, to load them in one backend call beforehand.
    pub fn value_keys(&self) -> &[Bytes] {
        match self {
            DataCmd::Str(c) => c.value_keys(),
            DataCmd::Key(c) => c.value_keys(),
        }
    }

    /// Whether the command reads the whole keyspace (KEYS, SCAN, RANDOMKEY, DBSIZE) rather
    /// than named keys.
    pub fn reads_keyspace(&self) -> bool {
        match self {
            DataCmd::Str(_) => false,
            DataCmd::Key(c) => c.reads_keyspace(),
        }
    }
}

/// Parses a request (`args[0]` is the command name).
pub fn parse(args: Vec<Bytes>) -> Result<Command, ParseError> {
    let Some(name) = args.first() else {
        return Err(ParseError::Unknown(Bytes::from_static(
            b"ERR empty command",
        )));
    };
    let Some(spec) = lookup(name) else {
        return Err(ParseError::Unknown(unknown_command_message(&args)));
    };
    if !spec.arity_ok(args.len()) {
        return Err(ParseError::Arity(spec.name));
    }
    Ok(parse_known(spec, args))
}

/// Parses `args`, a request for `spec` whose arity the caller checked (it looked the command
/// up already: the session, to check authentication and MULTI rules first).
pub fn parse_known(spec: &CommandSpec, args: Vec<Bytes>) -> Command {
    use table::Family;
    let parsed = match spec.id.family() {
        Family::String => {
            string::StringCmd::parse(spec, args).map(|c| Command::Data(DataCmd::Str(c)))
        }
        Family::Keyspace => {
            keyspace::KeyCmd::parse(spec, args).map(|c| Command::Data(DataCmd::Key(c)))
        }
        Family::Connection => {
            connection::ConnectionCmd::parse(spec.id, args).map(Command::Connection)
        }
        Family::Server => server::ServerCmd::parse(spec.id, args).map(Command::Server),
        Family::Transaction => transaction::TxnCmd::parse(spec.id, args).map(Command::Txn),
    };
    parsed.unwrap_or_else(Command::Invalid)
}

/// Redis's reply to an unknown command, byte for byte (the client's bytes are echoed raw;
/// like Redis's `%s`, each stops at a NUL byte).
pub fn unknown_command_message(args: &[Bytes]) -> Bytes {
    let mut list = Vec::new();
    for arg in args.iter().skip(1) {
        if list.len() >= 128 {
            break;
        }
        let room = 128 - list.len();
        list.push(b'\'');
        list.extend_from_slice(truncate(arg, room));
        list.extend_from_slice(b"' ");
    }
    let name = args.first().map(|n| truncate(n, 128)).unwrap_or_default();
    let mut msg = b"ERR unknown command '".to_vec();
    msg.extend_from_slice(name);
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend_from_slice(&list);
    Bytes::from(msg)
}

/// At most `max` bytes of `b`, up to its first NUL.
fn truncate(b: &[u8], max: usize) -> &[u8] {
    let b = &b[..b.len().min(max)];
    match b.iter().position(|&c| c == 0) {
        Some(nul) => &b[..nul],
        None => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&str]) -> Vec<Bytes> {
        parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect()
    }

    #[test]
    fn unknown_command_lists_arguments_like_redis() {
        assert_eq!(
            unknown_command_message(&args(&["FOO", "a", "b"])),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            unknown_command_message(&args(&["foo"])),
            "ERR unknown command 'foo', with args beginning with: "
        );
        let raw = [Bytes::from_static(b"FOO"), Bytes::from_static(b"\xff\xfe")];
        assert_eq!(
            &unknown_command_message(&raw)[..],
            b"ERR unknown command 'FOO', with args beginning with: '\xff\xfe' "
        );
    }

    #[test]
    fn arity_errors_name_the_command_in_lower_case() {
        let err = parse(args(&["GET"])).unwrap_err();
        assert_eq!(
            err.reply(),
            Reply::error("ERR wrong number of arguments for 'get' command")
        );
        assert!(matches!(
            parse(args(&["MSET", "a"])),
            Err(ParseError::Arity("mset"))
        ));
    }

    #[test]
    fn syntax_errors_are_run_time_errors() {
        assert!(matches!(
            parse(args(&["set", "k", "v", "bogus"])),
            Ok(Command::Invalid(_))
        ));
    }
}
