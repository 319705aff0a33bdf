//! Incremental parser for client requests: RESP arrays of bulk strings
//! ("multibulk") and inline commands, with the exact framing rules, limits and
//! error messages of Redis 7.0 (`processMultibulkBuffer` /
//! `processInlineBuffer` in `networking.c`).
//!
//! The parser works on the connection's read buffer: [`RequestParser::parse`]
//! removes what it has parsed from the front of the buffer and keeps the
//! progress of a partially received request in its own state, so every input
//! byte is examined a bounded number of times however the request is split
//! across reads.
//!
//! Deliberate differences from Redis, all about inputs Redis itself mishandles:
//!
//! * A line that runs longer than its limit is rejected whether or not its
//!   terminator has already arrived. Redis only checks the length while the
//!   terminator is missing, so its verdict depends on how the bytes were split
//!   across reads; here it does not. Requests fed one byte at a time get
//!   Redis's answer.
//! * A NUL byte is an ordinary byte. Redis scans its query buffer with C string
//!   functions that stop at NUL, so a NUL in a count line or an inline request
//!   stalls the connection until the 64 KiB limit trips.
//! * Bytes 0x80..=0xFF in the `expected '$', got 'X'` message are shown as the
//!   Unicode character of the same value (the message is a `str`), where Redis
//!   sends the raw byte.

use bytes::{Buf, Bytes, BytesMut};

/// Size limits applied while parsing.
///
/// The defaults are Redis's: `max_bulk_len` 512 MiB (`proto-max-bulk-len`),
/// `max_multibulk_len` 1 Mi elements and `max_inline_len` 64 KiB
/// (`PROTO_INLINE_MAX_SIZE`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string accepted, in bytes; a larger declared length is
    /// `invalid bulk length`.
    pub max_bulk_len: usize,
    /// Largest number of elements in a multibulk request; a larger declared
    /// count is `invalid multibulk length`.
    pub max_multibulk_len: usize,
    /// Longest line accepted without its terminator, in bytes: an inline
    /// request (`too big inline request`), a multibulk count line
    /// (`too big mbulk count string`) or a bulk length line
    /// (`too big bulk count string`).
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// Most elements a request may have before the connection authenticates.
pub const UNAUTHENTICATED_MAX_MULTIBULK_LEN: usize = 10;

/// Largest bulk string a request may carry before the connection
/// authenticates, in bytes.
pub const UNAUTHENTICATED_MAX_BULK_LEN: usize = 16 * 1024;

/// Arguments shorter than this are copied out of the read buffer, so a small
/// value kept for long does not pin the whole buffer; longer ones are split off
/// without copying.
const COPY_THRESHOLD: usize = 16 * 1024;

/// Most argument slots allocated up front for a multibulk request, whatever
/// count the client declares.
const MAX_PREALLOCATED_ARGS: usize = 1024;

/// A protocol error. The connection must get it as an error reply and then be
/// closed: the stream cannot be resynchronised.
///
/// `Display` gives Redis's exact message without the leading `-`, e.g.
/// `ERR Protocol error: invalid multibulk length`, ready to be sent as an error
/// reply. It never contains CR or LF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// An inline request line longer than [`Limits::max_inline_len`].
    #[error("ERR Protocol error: too big inline request")]
    TooBigInlineRequest,
    /// An inline request with an unterminated quoted argument, or a closing
    /// quote followed by something other than whitespace.
    #[error("ERR Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A multibulk count line (`*<n>`) longer than [`Limits::max_inline_len`].
    #[error("ERR Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A multibulk count that is not an integer or exceeds
    /// [`Limits::max_multibulk_len`].
    #[error("ERR Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A multibulk count above [`UNAUTHENTICATED_MAX_MULTIBULK_LEN`] before the
    /// connection authenticated.
    #[error("ERR Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// A bulk length line (`$<len>`) longer than [`Limits::max_inline_len`].
    #[error("ERR Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// A multibulk element line starting with the given byte instead of `$`.
    /// CR and LF are shown as a space, as Redis does.
    #[error("ERR Protocol error: expected '$', got '{}'", shown_byte(*.0))]
    ExpectedDollar(u8),
    /// A bulk length that is not an integer, is negative or exceeds
    /// [`Limits::max_bulk_len`].
    #[error("ERR Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A bulk length above [`UNAUTHENTICATED_MAX_BULK_LEN`] before the
    /// connection authenticated.
    #[error("ERR Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
}

/// How a byte received in place of `$` appears in the error message.
fn shown_byte(b: u8) -> char {
    match b {
        b'\r' | b'\n' => ' ',
        _ => char::from(b),
    }
}

/// Where the parser is within the request stream.
#[derive(Debug)]
enum State {
    /// Between requests.
    Idle,
    /// Reading an inline request line.
    Inline,
    /// Reading the `*<n>` line of a multibulk request.
    MultibulkCount,
    /// Expecting the `$<len>` line of the next element; `remaining` elements
    /// are still to come, this one included.
    BulkLength { remaining: usize },
    /// Expecting the `len` payload bytes of an element plus two trailing bytes.
    BulkPayload { remaining: usize, len: usize },
    /// A protocol error occurred; it is returned again by every later call.
    Failed(ProtocolError),
}

/// Incremental parser for the requests of one connection.
///
/// Feed it the connection's read buffer after every read with
/// [`parse`](Self::parse); it returns one request at a time, so a command that
/// changes how the rest must be parsed (`AUTH`, which lifts the
/// unauthenticated limits) can be executed before the next request is parsed.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    authenticated: bool,
    state: State,
    /// Arguments of the multibulk request in progress.
    args: Vec<Bytes>,
    /// Bytes at the front of the buffer already searched for the terminator
    /// of the line being read, so that a long line arriving in pieces is
    /// scanned only once.
    scanned: usize,
    /// Value of [`needed`](Self::needed) after the last `parse`.
    needed: usize,
    /// Reused decoding space for quoted inline arguments.
    scratch: Vec<u8>,
}

/// Outcome of looking for the end of a line at the front of the buffer.
enum Line {
    /// The line's content (terminator excluded) is `buf[..len]`; it and its
    /// terminator take `consumed` bytes.
    Complete { len: usize, consumed: usize },
    /// More bytes are needed.
    Partial,
    /// The line is longer than the limit.
    TooLong,
}

impl RequestParser {
    /// A parser for a new connection, applying `limits`.
    ///
    /// The connection starts unauthenticated, with Redis's pre-`AUTH` limits
    /// ([`UNAUTHENTICATED_MAX_MULTIBULK_LEN`] elements,
    /// [`UNAUTHENTICATED_MAX_BULK_LEN`]-byte bulks); call
    /// [`set_authenticated(true)`](Self::set_authenticated) when `AUTH`
    /// succeeds, or right away when no password is required.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        RequestParser {
            limits,
            authenticated: false,
            state: State::Idle,
            args: Vec::new(),
            scanned: 0,
            needed: 0,
            scratch: Vec::new(),
        }
    }

    /// Sets whether the connection is authenticated.
    ///
    /// Before `AUTH` succeeds Redis allows at most
    /// [`UNAUTHENTICATED_MAX_MULTIBULK_LEN`] (10) elements and
    /// [`UNAUTHENTICATED_MAX_BULK_LEN`] (16384) byte bulks; larger requests fail
    /// with `unauthenticated multibulk length` / `unauthenticated bulk length`.
    /// Once authenticated, only [`Limits`] apply. The change affects length
    /// lines parsed from now on.
    pub fn set_authenticated(&mut self, yes: bool) {
        self.authenticated = yes;
    }

    /// Consumes bytes from the front of `buf` and returns the next complete
    /// request's arguments, or `Ok(None)` when more bytes are needed.
    ///
    /// `buf` must hold the connection's input in order: what the previous call
    /// left in it, followed by newly read bytes. Everything consumed so far is
    /// kept in the parser's state, so parsing is linear in the input and never
    /// re-scans from the start of a long request; a partial bulk payload stays
    /// in `buf` until it is complete. Pipelined requests are returned one per
    /// call, the bytes after the returned request staying in `buf`.
    ///
    /// Empty requests (an empty or blank inline line, `*0\r\n`, `*-1\r\n`) are
    /// consumed and skipped: they produce no request and need no reply. A
    /// returned request therefore always has at least one argument.
    ///
    /// Arguments shorter than 16 KiB are copied into their own allocation;
    /// longer multibulk arguments share `buf`'s memory without copying.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] when the input violates the protocol or a limit.
    /// The connection must then send the error and close; the parser stays
    /// failed and returns the same error from every later call.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        self.needed = 0;
        let result = self.parse_inner(buf);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
            self.args = Vec::new();
            self.scanned = 0;
        }
        result
    }

    /// Bytes the parser knows it still needs before the current request can
    /// complete, or 0 if unknown.
    ///
    /// Refers to the buffer as the last [`parse`](Self::parse) call left it:
    /// while the payload of a bulk string is arriving it is the rest of that
    /// payload plus its trailing CRLF, so the caller can size its reads and cap
    /// the buffer's growth. It is a lower bound: later elements of the same
    /// request are not counted. Never more than [`Limits::max_bulk_len`] + 2.
    ///
    /// It is what the client *announced*, not what it sent: reserving it up
    /// front would let a client that sends a few `$<max_bulk_len>` headers make
    /// the server allocate that much for each; grow the buffer as the bytes
    /// arrive instead.
    #[must_use]
    pub fn needed(&self) -> usize {
        self.needed
    }

    fn parse_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            match self.state {
                State::Failed(ref e) => return Err(e.clone()),
                State::Idle => match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => self.state = State::MultibulkCount,
                    Some(_) => self.state = State::Inline,
                },
                State::Inline => {
                    let (len, consumed) = match self.find_line(buf, b'\n') {
                        Line::Complete { len, consumed } => (len, consumed),
                        Line::Partial => return Ok(None),
                        Line::TooLong => return Err(ProtocolError::TooBigInlineRequest),
                    };
                    let line = &buf[..len];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let mut args = Vec::new();
                    split_args(line, &mut args, &mut self.scratch)?;
                    buf.advance(consumed);
                    self.state = State::Idle;
                    if !args.is_empty() {
                        return Ok(Some(args));
                    }
                }
                State::MultibulkCount => {
                    let (len, consumed) = match self.find_line(buf, b'\r') {
                        Line::Complete { len, consumed } => (len, consumed),
                        Line::Partial => return Ok(None),
                        Line::TooLong => return Err(ProtocolError::TooBigMultibulkCount),
                    };
                    // buf[0] is the '*' that selected this state.
                    let count =
                        parse_i64(&buf[1..len]).ok_or(ProtocolError::InvalidMultibulkLength)?;
                    if count > 0 {
                        let count = usize::try_from(count)
                            .ok()
                            .filter(|&n| n <= self.limits.max_multibulk_len)
                            .ok_or(ProtocolError::InvalidMultibulkLength)?;
                        if !self.authenticated && count > UNAUTHENTICATED_MAX_MULTIBULK_LEN {
                            return Err(ProtocolError::UnauthenticatedMultibulkLength);
                        }
                        self.args = Vec::with_capacity(count.min(MAX_PREALLOCATED_ARGS));
                        self.state = State::BulkLength { remaining: count };
                    } else {
                        // `*0`, `*-1` and any other non-positive count: an empty
                        // request, skipped.
                        self.state = State::Idle;
                    }
                    buf.advance(consumed);
                }
                State::BulkLength { remaining } => {
                    let (len, consumed) = match self.find_line(buf, b'\r') {
                        Line::Complete { len, consumed } => (len, consumed),
                        Line::Partial => return Ok(None),
                        Line::TooLong => return Err(ProtocolError::TooBigBulkCount),
                    };
                    // A complete line has at least its two-byte terminator in
                    // `buf`, so `buf[0]` exists (it is the '\r' of an empty line).
                    let first = buf[0];
                    if first != b'$' {
                        return Err(ProtocolError::ExpectedDollar(first));
                    }
                    let bulk_len = parse_i64(&buf[1..len])
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|&n| n <= self.limits.max_bulk_len)
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    if !self.authenticated && bulk_len > UNAUTHENTICATED_MAX_BULK_LEN {
                        return Err(ProtocolError::UnauthenticatedBulkLength);
                    }
                    buf.advance(consumed);
                    self.state = State::BulkPayload {
                        remaining,
                        len: bulk_len,
                    };
                }
                State::BulkPayload { remaining, len } => {
                    // The payload is followed by two bytes that Redis skips
                    // without checking them; so does this parser.
                    let total = len.saturating_add(2);
                    if buf.len() < total {
                        self.needed = total - buf.len();
                        return Ok(None);
                    }
                    let arg = if len < COPY_THRESHOLD {
                        let arg = Bytes::copy_from_slice(&buf[..len]);
                        buf.advance(total);
                        arg
                    } else {
                        let arg = buf.split_to(len).freeze();
                        buf.advance(2);
                        arg
                    };
                    self.args.push(arg);
                    if remaining > 1 {
                        self.state = State::BulkLength {
                            remaining: remaining - 1,
                        };
                    } else {
                        self.state = State::Idle;
                        return Ok(Some(std::mem::take(&mut self.args)));
                    }
                }
            }
        }
    }

    /// Looks for the line terminator `term` at the front of `buf`, resuming
    /// where the previous call stopped.
    ///
    /// A `\r`-terminated line (multibulk framing) is complete once one more
    /// byte follows the `\r`; like Redis, that byte is not checked to be `\n`.
    /// A line is too long when more than `max_inline_len` bytes precede its
    /// terminator.
    fn find_line(&mut self, buf: &[u8], term: u8) -> Line {
        let max = self.limits.max_inline_len;
        let window_end = buf.len().min(max.saturating_add(1));
        let from = self.scanned.min(window_end);
        let found = buf[from..window_end].iter().position(|&b| b == term);
        match found {
            Some(offset) => {
                let len = from + offset;
                let consumed = if term == b'\r' { len + 2 } else { len + 1 };
                if buf.len() < consumed {
                    // Resume at the terminator itself next time.
                    self.scanned = len;
                    return Line::Partial;
                }
                self.scanned = 0;
                Line::Complete { len, consumed }
            }
            None if buf.len() > max => Line::TooLong,
            None => {
                self.scanned = buf.len();
                Line::Partial
            }
        }
    }
}

/// Parses an integer the way Redis's `string2ll` does (request lengths, and every integer
/// argument of a command): `0`, or an optional `-` followed by a nonzero digit and more
/// digits, fitting in an `i64`. No sign `+`, no leading zeros, no `-0`, no whitespace.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    // 20 bytes hold "-9223372036854775808"; Redis rejects anything longer.
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut value: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    if negative {
        if value == 1 << 63 {
            Some(i64::MIN)
        } else {
            i64::try_from(value).ok().map(|v| -v)
        }
    } else {
        i64::try_from(value).ok()
    }
}

/// Whitespace between inline arguments: C's `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// Bytes that end an unquoted inline argument. Vertical tab and form feed are
/// skipped between arguments but are part of an argument, as in Redis.
fn ends_unquoted(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline request line into arguments following Redis's
/// `sdssplitargs`, appending them to `out`.
///
/// Arguments are separated by whitespace. Inside double quotes, `\n`, `\r`,
/// `\t`, `\b`, `\a` and `\xHH` (two hex digits) are escapes, and a backslash
/// before any other byte yields that byte. Inside single quotes only `\'` is an
/// escape. A quote may open in the middle of an argument; a closing quote must
/// be followed by whitespace or the end of the line.
fn split_args(
    line: &[u8],
    out: &mut Vec<Bytes>,
    scratch: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Ok(());
        }
        // Fast path: an argument without quotes is copied straight from the line.
        let start = i;
        while i < line.len() && !ends_unquoted(line[i]) && line[i] != b'"' && line[i] != b'\'' {
            i += 1;
        }
        if let Some(b'"' | b'\'') = line.get(i) {
            scratch.clear();
            scratch.extend_from_slice(&line[start..i]);
            i = decode_quoted(line, i, scratch)?;
            out.push(Bytes::copy_from_slice(scratch));
        } else {
            out.push(Bytes::copy_from_slice(&line[start..i]));
            // Skip the separator, if any.
            i = (i + 1).min(line.len());
        }
    }
}

/// Decodes the rest of an argument that reaches a quote at `line[i]`,
/// appending its bytes to `arg`. Returns the index where splitting resumes.
fn decode_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    #[derive(Clone, Copy)]
    enum Mode {
        Unquoted,
        Double,
        Single,
    }
    // A closing quote at `line[i]` ends the argument if followed by whitespace
    // or the end of the line.
    let close = |i: usize| match line.get(i + 1) {
        Some(&b) if !is_space(b) => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(i + 1),
    };
    let mut mode = Mode::Unquoted;
    loop {
        let Some(&b) = line.get(i) else {
            return match mode {
                Mode::Unquoted => Ok(i),
                Mode::Double | Mode::Single => Err(ProtocolError::UnbalancedQuotes),
            };
        };
        match mode {
            Mode::Unquoted => match b {
                b'"' => mode = Mode::Double,
                b'\'' => mode = Mode::Single,
                _ if ends_unquoted(b) => return Ok(i + 1),
                _ => arg.push(b),
            },
            Mode::Double => match b {
                b'\\' => {
                    let hex = match (line.get(i + 1), line.get(i + 2), line.get(i + 3)) {
                        (Some(b'x'), Some(&h), Some(&l)) => hex_value(h).zip(hex_value(l)),
                        _ => None,
                    };
                    if let Some((h, l)) = hex {
                        arg.push((h << 4) | l);
                        i += 3;
                    } else if let Some(&escaped) = line.get(i + 1) {
                        arg.push(match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => b'\x08',
                            b'a' => b'\x07',
                            other => other,
                        });
                        i += 1;
                    } else {
                        // A backslash ending the line: kept, and the quote is
                        // unterminated.
                        arg.push(b);
                    }
                }
                b'"' => return close(i),
                _ => arg.push(b),
            },
            Mode::Single => match b {
                b'\\' if line.get(i + 1) == Some(&b'\'') => {
                    arg.push(b'\'');
                    i += 1;
                }
                b'\'' => return close(i),
                _ => arg.push(b),
            },
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests;
