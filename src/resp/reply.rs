//! Reply values and their RESP2 / RESP3 wire encoding.
//!
//! A [`Reply`] is built by command handlers and turned into bytes by
//! [`Reply::encode`] for the protocol version the connection negotiated with
//! `HELLO`. Encoding never allocates besides growing the output buffer, which
//! it does at most once per top-level call: the exact encoded size is computed
//! first ([`Reply::encoded_len`]) and reserved up front.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Wire protocol version negotiated by `HELLO`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Protocol {
    /// RESP2, the protocol every connection starts with.
    #[default]
    Resp2,
    /// RESP3, selected with `HELLO 3`.
    Resp3,
}

/// A reply to one command, independent of the protocol version.
///
/// RESP3-only types ([`Reply::Map`], [`Reply::Set`], [`Reply::Double`],
/// [`Reply::Verbatim`], the RESP3 null) are downgraded to their RESP2
/// equivalents by [`Reply::encode`] when the connection speaks RESP2, the
/// same way Redis does.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A simple string from a static message: `+OK\r\n`.
    ///
    /// CR and LF are replaced with spaces when encoding.
    Status(&'static str),
    /// A simple string built at run time: `+<text>\r\n`.
    ///
    /// CR and LF are replaced with spaces when encoding, so the reply can never
    /// break framing whatever the content.
    StatusOwned(Bytes),
    /// An error: the whole message after the `-`, starting with the error code,
    /// e.g. `"ERR syntax error"`, `"WRONGTYPE ..."`, `"EXECABORT ..."`.
    ///
    /// CR and LF are replaced with spaces when encoding, as Redis does.
    Error(Cow<'static, str>),
    /// An error whose message holds raw bytes a client sent (which may not be UTF-8), as in
    /// Redis's unknown-command reply. Encoded like [`Reply::Error`].
    ErrorBytes(Bytes),
    /// An integer: `:<n>\r\n`.
    Integer(i64),
    /// A binary-safe bulk string: `$<len>\r\n<data>\r\n`.
    Bulk(Bytes),
    /// A missing value: RESP2 null bulk `$-1\r\n`, RESP3 null `_\r\n`.
    Nil,
    /// A missing array (an aborted `EXEC`): RESP2 `*-1\r\n`, RESP3 null `_\r\n`.
    NilArray,
    /// An array of replies: `*<n>\r\n` followed by each element.
    Array(Vec<Reply>),
    /// A map: RESP3 `%<n>\r\n` followed by key, value, key, value...;
    /// RESP2 a flat array of `2n` elements.
    Map(Vec<(Reply, Reply)>),
    /// A set: RESP3 `~<n>\r\n` followed by each element; RESP2 an array.
    Set(Vec<Reply>),
    /// A floating point number: RESP3 `,<text>\r\n`; RESP2 a bulk string of the
    /// same text.
    ///
    /// Finite values are written in the shortest form that parses back to the
    /// same value, never with an exponent (`1.5`, `3`, `0.0001`); infinities
    /// as `inf` / `-inf` and NaN as `nan`.
    Double(f64),
    /// A verbatim text string: RESP3 `=<len+4>\r\ntxt:<data>\r\n`; RESP2 a plain
    /// bulk string of `<data>`.
    Verbatim(Bytes),
}

impl Reply {
    /// The `+OK` status reply.
    #[inline]
    #[must_use]
    pub fn ok() -> Self {
        Reply::Status("OK")
    }

    /// An error reply. `msg` is the whole message after the `-`, including the
    /// error code, e.g. `Reply::error("ERR syntax error")`.
    #[inline]
    #[must_use]
    pub fn error(msg: impl Into<Cow<'static, str>>) -> Self {
        Reply::Error(msg.into())
    }

    /// A bulk string holding a copy of `data`.
    #[inline]
    #[must_use]
    pub fn bulk_from(data: &[u8]) -> Self {
        Reply::Bulk(Bytes::copy_from_slice(data))
    }

    /// Whether this is an error reply ([`Reply::Error`]). Only the top level is
    /// inspected: an array containing errors is not itself an error.
    #[inline]
    #[must_use]
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_) | Reply::ErrorBytes(_))
    }

    /// Appends the encoding of this reply for `proto` to `out`.
    ///
    /// Reserves the exact encoded size once, then writes without further
    /// allocation; nested aggregates are written in place.
    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        out.reserve(self.encoded_len(proto));
        self.write(proto, out);
    }

    /// The exact number of bytes [`Reply::encode`] appends for `proto`.
    ///
    /// Useful to reserve room for several replies at once. Walks nested
    /// aggregates, so it costs a traversal of the reply.
    #[must_use]
    pub fn encoded_len(&self, proto: Protocol) -> usize {
        match self {
            Reply::Status(s) => line_len(s.len()),
            Reply::StatusOwned(s) => line_len(s.len()),
            Reply::Error(msg) => line_len(msg.len()),
            Reply::ErrorBytes(msg) => line_len(msg.len()),
            Reply::Integer(n) => line_len(i64_len(*n)),
            Reply::Bulk(data) => bulk_len(data.len()),
            Reply::Nil | Reply::NilArray => match proto {
                Protocol::Resp2 => 5,
                Protocol::Resp3 => 3,
            },
            Reply::Array(items) | Reply::Set(items) => {
                header_len(items.len()) + items.iter().map(|r| r.encoded_len(proto)).sum::<usize>()
            }
            Reply::Map(pairs) => {
                let count = match proto {
                    Protocol::Resp2 => pairs.len().saturating_mul(2),
                    Protocol::Resp3 => pairs.len(),
                };
                header_len(count)
                    + pairs
                        .iter()
                        .map(|(k, v)| k.encoded_len(proto) + v.encoded_len(proto))
                        .sum::<usize>()
            }
            Reply::Double(d) => {
                let text = DoubleText::new(*d);
                match proto {
                    Protocol::Resp2 => bulk_len(text.as_bytes().len()),
                    Protocol::Resp3 => line_len(text.as_bytes().len()),
                }
            }
            Reply::Verbatim(data) => match proto {
                Protocol::Resp2 => bulk_len(data.len()),
                Protocol::Resp3 => bulk_len(data.len() + VERBATIM_PREFIX.len()),
            },
        }
    }

    /// Writes the encoding without reserving; `encode` reserved already.
    fn write(&self, proto: Protocol, out: &mut BytesMut) {
        match self {
            Reply::Status(s) => write_line(out, b'+', s.as_bytes()),
            Reply::StatusOwned(s) => write_line(out, b'+', s),
            Reply::Error(msg) => write_line(out, b'-', msg.as_bytes()),
            Reply::ErrorBytes(msg) => write_line(out, b'-', msg),
            Reply::Integer(n) => {
                out.put_u8(b':');
                out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
                out.extend_from_slice(CRLF);
            }
            Reply::Bulk(data) => write_bulk(out, data),
            Reply::Nil => out.extend_from_slice(match proto {
                Protocol::Resp2 => b"$-1\r\n",
                Protocol::Resp3 => b"_\r\n",
            }),
            Reply::NilArray => out.extend_from_slice(match proto {
                Protocol::Resp2 => b"*-1\r\n",
                Protocol::Resp3 => b"_\r\n",
            }),
            Reply::Array(items) => {
                write_header(out, b'*', items.len());
                for item in items {
                    item.write(proto, out);
                }
            }
            Reply::Set(items) => {
                let tag = match proto {
                    Protocol::Resp2 => b'*',
                    Protocol::Resp3 => b'~',
                };
                write_header(out, tag, items.len());
                for item in items {
                    item.write(proto, out);
                }
            }
            Reply::Map(pairs) => {
                match proto {
                    Protocol::Resp2 => write_header(out, b'*', pairs.len().saturating_mul(2)),
                    Protocol::Resp3 => write_header(out, b'%', pairs.len()),
                }
                for (key, value) in pairs {
                    key.write(proto, out);
                    value.write(proto, out);
                }
            }
            Reply::Double(d) => {
                let text = DoubleText::new(*d);
                match proto {
                    Protocol::Resp2 => write_bulk(out, text.as_bytes()),
                    Protocol::Resp3 => {
                        out.put_u8(b',');
                        out.extend_from_slice(text.as_bytes());
                        out.extend_from_slice(CRLF);
                    }
                }
            }
            Reply::Verbatim(data) => match proto {
                Protocol::Resp2 => write_bulk(out, data),
                Protocol::Resp3 => {
                    write_header(out, b'=', data.len() + VERBATIM_PREFIX.len());
                    out.extend_from_slice(VERBATIM_PREFIX);
                    out.extend_from_slice(data);
                    out.extend_from_slice(CRLF);
                }
            },
        }
    }
}

/// Appends an array header `*<len>\r\n` to `out` (identical in RESP2 and
/// RESP3).
///
/// Used to stream an aggregate reply element by element, e.g. the reply to
/// `EXEC`: write the header, then [`Reply::encode`] each element.
pub fn encode_array_header(len: usize, out: &mut BytesMut) {
    out.reserve(header_len(len));
    write_header(out, b'*', len);
}

const CRLF: &[u8] = b"\r\n";

/// Format prefix of the verbatim strings this server produces.
const VERBATIM_PREFIX: &[u8] = b"txt:";

/// Size of `<tag><payload>\r\n`.
#[inline]
fn line_len(payload: usize) -> usize {
    1 + payload + 2
}

/// Size of `<tag><len>\r\n`.
#[inline]
fn header_len(len: usize) -> usize {
    line_len(usize_len(len))
}

/// Size of `$<len>\r\n<data>\r\n`.
#[inline]
fn bulk_len(len: usize) -> usize {
    header_len(len) + len + 2
}

/// Number of decimal digits of `n`.
#[inline]
fn usize_len(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Number of bytes of the decimal form of `n`, sign included.
#[inline]
fn i64_len(n: i64) -> usize {
    let digits = n
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d as usize + 1);
    digits + usize::from(n < 0)
}

/// Writes `<tag><len>\r\n`.
#[inline]
fn write_header(out: &mut BytesMut, tag: u8, len: usize) {
    out.put_u8(tag);
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(CRLF);
}

/// Writes `$<len>\r\n<data>\r\n`.
#[inline]
fn write_bulk(out: &mut BytesMut, data: &[u8]) {
    write_header(out, b'$', data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(CRLF);
}

/// Writes `<tag><text>\r\n`, replacing every CR and LF in `text` with a space
/// so the line cannot break the framing.
fn write_line(out: &mut BytesMut, tag: u8, text: &[u8]) {
    out.put_u8(tag);
    let mut rest = text;
    while let Some(pos) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        out.extend_from_slice(&rest[..pos]);
        out.put_u8(b' ');
        rest = &rest[pos + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(CRLF);
}

/// The text of a double, formatted on the stack.
///
/// Rust's `Display` for `f64` writes the shortest digits that round-trip and
/// never uses an exponent; the longest possible output is 327 bytes
/// (`-0.` followed by 324 digits, for subnormals), so the buffer always fits.
struct DoubleText {
    buf: [u8; DoubleText::CAPACITY],
    len: usize,
}

impl DoubleText {
    const CAPACITY: usize = 512;

    fn new(d: f64) -> Self {
        let mut text = DoubleText {
            buf: [0; Self::CAPACITY],
            len: 0,
        };
        if d.is_nan() {
            text.push(b"nan");
        } else if d.is_infinite() {
            text.push(if d > 0.0 { b"inf" } else { b"-inf" });
        } else {
            // Cannot fail: the buffer holds any f64's `Display` output. Should
            // that ever change, the text is cut short rather than panicking.
            let _ = fmt::write(&mut text, format_args!("{d}"));
        }
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends as much of `bytes` as fits; reports whether all of it did.
    fn push(&mut self, bytes: &[u8]) -> bool {
        let room = Self::CAPACITY - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        n == bytes.len()
    }
}

impl fmt::Write for DoubleText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.push(s.as_bytes()) {
            Ok(())
        } else {
            Err(fmt::Error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(reply: &Reply, proto: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.encode(proto, &mut out);
        assert_eq!(
            out.len(),
            reply.encoded_len(proto),
            "encoded_len disagrees with encode for {reply:?} / {proto:?}"
        );
        out.to_vec()
    }

    /// Asserts the RESP2 and RESP3 encodings of `reply`.
    fn check(reply: Reply, resp2: &[u8], resp3: &[u8]) {
        assert_eq!(
            enc(&reply, Protocol::Resp2),
            resp2,
            "RESP2 {:?}: got {:?}",
            reply,
            String::from_utf8_lossy(&enc(&reply, Protocol::Resp2))
        );
        assert_eq!(
            enc(&reply, Protocol::Resp3),
            resp3,
            "RESP3 {:?}: got {:?}",
            reply,
            String::from_utf8_lossy(&enc(&reply, Protocol::Resp3))
        );
    }

    fn bulk(s: &str) -> Reply {
        Reply::bulk_from(s.as_bytes())
    }

    #[test]
    fn protocol_defaults_to_resp2() {
        assert_eq!(Protocol::default(), Protocol::Resp2);
    }

    #[test]
    fn status() {
        check(Reply::ok(), b"+OK\r\n", b"+OK\r\n");
        check(Reply::Status("QUEUED"), b"+QUEUED\r\n", b"+QUEUED\r\n");
        check(Reply::Status(""), b"+\r\n", b"+\r\n");
        check(Reply::Status("a\r\nb"), b"+a  b\r\n", b"+a  b\r\n");
    }

    #[test]
    fn status_owned_sanitizes_cr_lf() {
        check(
            Reply::StatusOwned(Bytes::from_static(b"PONG")),
            b"+PONG\r\n",
            b"+PONG\r\n",
        );
        check(
            Reply::StatusOwned(Bytes::from_static(b"a\rb\nc\r\n")),
            b"+a b c  \r\n",
            b"+a b c  \r\n",
        );
        check(
            Reply::StatusOwned(Bytes::from_static(b"\xff\x00")),
            b"+\xff\x00\r\n",
            b"+\xff\x00\r\n",
        );
    }

    #[test]
    fn error() {
        check(
            Reply::error("ERR syntax error"),
            b"-ERR syntax error\r\n",
            b"-ERR syntax error\r\n",
        );
        check(
            Reply::error(String::from("WRONGTYPE Operation against a key")),
            b"-WRONGTYPE Operation against a key\r\n",
            b"-WRONGTYPE Operation against a key\r\n",
        );
        check(
            Reply::error("EXECABORT Transaction discarded because of previous errors."),
            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        );
    }

    #[test]
    fn error_sanitizes_cr_lf() {
        check(
            Reply::error("ERR bad\r\ninjected\rline\n"),
            b"-ERR bad  injected line \r\n",
            b"-ERR bad  injected line \r\n",
        );
        check(Reply::error("\n"), b"- \r\n", b"- \r\n");
    }

    #[test]
    fn is_error() {
        assert!(Reply::error("ERR x").is_error());
        assert!(!Reply::ok().is_error());
        assert!(!Reply::Nil.is_error());
        assert!(!Reply::Array(vec![Reply::error("ERR x")]).is_error());
    }

    #[test]
    fn integer() {
        check(Reply::Integer(0), b":0\r\n", b":0\r\n");
        check(Reply::Integer(42), b":42\r\n", b":42\r\n");
        check(Reply::Integer(-7), b":-7\r\n", b":-7\r\n");
        check(Reply::Integer(10), b":10\r\n", b":10\r\n");
        check(Reply::Integer(-10), b":-10\r\n", b":-10\r\n");
        check(
            Reply::Integer(i64::MAX),
            b":9223372036854775807\r\n",
            b":9223372036854775807\r\n",
        );
        check(
            Reply::Integer(i64::MIN),
            b":-9223372036854775808\r\n",
            b":-9223372036854775808\r\n",
        );
    }

    #[test]
    fn bulk_strings() {
        check(bulk("foo"), b"$3\r\nfoo\r\n", b"$3\r\nfoo\r\n");
        check(bulk(""), b"$0\r\n\r\n", b"$0\r\n\r\n");
        check(
            Reply::Bulk(Bytes::from_static(b"a\r\nb\x00\xff")),
            b"$6\r\na\r\nb\x00\xff\r\n",
            b"$6\r\na\r\nb\x00\xff\r\n",
        );
        let big = vec![b'x'; 1234];
        let mut expected = b"$1234\r\n".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"\r\n");
        check(Reply::bulk_from(&big), &expected, &expected);
    }

    #[test]
    fn bulk_from_copies() {
        let src = [1u8, 2, 3];
        assert_eq!(
            Reply::bulk_from(&src),
            Reply::Bulk(Bytes::from_static(&[1, 2, 3]))
        );
    }

    #[test]
    fn nils() {
        check(Reply::Nil, b"$-1\r\n", b"_\r\n");
        check(Reply::NilArray, b"*-1\r\n", b"_\r\n");
    }

    #[test]
    fn arrays() {
        check(Reply::Array(vec![]), b"*0\r\n", b"*0\r\n");
        check(
            Reply::Array(vec![bulk("a"), Reply::Integer(1), Reply::Nil]),
            b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n",
            b"*3\r\n$1\r\na\r\n:1\r\n_\r\n",
        );
        check(
            Reply::Array(vec![
                Reply::Array(vec![bulk("x"), Reply::Array(vec![])]),
                Reply::NilArray,
                Reply::error("ERR e"),
                Reply::ok(),
            ]),
            b"*4\r\n*2\r\n$1\r\nx\r\n*0\r\n*-1\r\n-ERR e\r\n+OK\r\n",
            b"*4\r\n*2\r\n$1\r\nx\r\n*0\r\n_\r\n-ERR e\r\n+OK\r\n",
        );
    }

    #[test]
    fn array_with_ten_or_more_elements() {
        let items: Vec<Reply> = (0..12).map(Reply::Integer).collect();
        let mut expected = b"*12\r\n".to_vec();
        for i in 0..12 {
            expected.extend_from_slice(format!(":{i}\r\n").as_bytes());
        }
        check(Reply::Array(items), &expected, &expected);
    }

    #[test]
    fn maps() {
        check(Reply::Map(vec![]), b"*0\r\n", b"%0\r\n");
        check(
            Reply::Map(vec![
                (bulk("k1"), Reply::Integer(1)),
                (bulk("k2"), Reply::Double(1.5)),
            ]),
            b"*4\r\n$2\r\nk1\r\n:1\r\n$2\r\nk2\r\n$3\r\n1.5\r\n",
            b"%2\r\n$2\r\nk1\r\n:1\r\n$2\r\nk2\r\n,1.5\r\n",
        );
        // A map nested in an array, holding an array and a map.
        check(
            Reply::Array(vec![Reply::Map(vec![
                (bulk("list"), Reply::Array(vec![bulk("a")])),
                (
                    bulk("inner"),
                    Reply::Map(vec![(Reply::Status("s"), Reply::Nil)]),
                ),
                (bulk("empty"), Reply::Map(vec![])),
            ])]),
            b"*1\r\n*6\r\n$4\r\nlist\r\n*1\r\n$1\r\na\r\n$5\r\ninner\r\n*2\r\n+s\r\n$-1\r\n$5\r\nempty\r\n*0\r\n",
            b"*1\r\n%3\r\n$4\r\nlist\r\n*1\r\n$1\r\na\r\n$5\r\ninner\r\n%1\r\n+s\r\n_\r\n$5\r\nempty\r\n%0\r\n",
        );
    }

    #[test]
    fn sets() {
        check(Reply::Set(vec![]), b"*0\r\n", b"~0\r\n");
        check(
            Reply::Set(vec![bulk("a"), bulk("b")]),
            b"*2\r\n$1\r\na\r\n$1\r\nb\r\n",
            b"~2\r\n$1\r\na\r\n$1\r\nb\r\n",
        );
        check(
            Reply::Set(vec![Reply::Set(vec![]), Reply::Nil]),
            b"*2\r\n*0\r\n$-1\r\n",
            b"~2\r\n~0\r\n_\r\n",
        );
    }

    #[test]
    fn doubles() {
        check(Reply::Double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n");
        check(Reply::Double(3.0), b"$1\r\n3\r\n", b",3\r\n");
        check(Reply::Double(-2.25), b"$5\r\n-2.25\r\n", b",-2.25\r\n");
        check(Reply::Double(0.1), b"$3\r\n0.1\r\n", b",0.1\r\n");
        check(Reply::Double(0.0), b"$1\r\n0\r\n", b",0\r\n");
        check(Reply::Double(-0.0), b"$2\r\n-0\r\n", b",-0\r\n");
        check(
            Reply::Double(1e21),
            b"$22\r\n1000000000000000000000\r\n",
            b",1000000000000000000000\r\n",
        );
        check(Reply::Double(1e-5), b"$7\r\n0.00001\r\n", b",0.00001\r\n");
        check(Reply::Double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n");
        check(
            Reply::Double(f64::NEG_INFINITY),
            b"$4\r\n-inf\r\n",
            b",-inf\r\n",
        );
        check(Reply::Double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n");
    }

    #[test]
    fn doubles_match_display_at_the_extremes() {
        let extremes = [
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::EPSILON,
            5e-324,
            -5e-324,
            2.225_073_858_507_201e-308,
            -2.225_073_858_507_201e-308,
            1.234_567_890_123_456_7e300,
        ];
        for d in extremes {
            let text = format!("{d}");
            assert!(!text.contains('e'), "{text}");
            let mut resp3 = b",".to_vec();
            resp3.extend_from_slice(text.as_bytes());
            resp3.extend_from_slice(b"\r\n");
            let mut resp2 = format!("${}\r\n", text.len()).into_bytes();
            resp2.extend_from_slice(text.as_bytes());
            resp2.extend_from_slice(b"\r\n");
            check(Reply::Double(d), &resp2, &resp3);
            assert_eq!(text.parse::<f64>().ok(), Some(d));
        }
        // A spread of bit patterns, all finite ones must match `Display`.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = f64::from_bits(x);
            if d.is_finite() {
                assert_eq!(DoubleText::new(d).as_bytes(), format!("{d}").as_bytes());
            }
        }
    }

    #[test]
    fn verbatim() {
        check(
            Reply::Verbatim(Bytes::from_static(b"hello")),
            b"$5\r\nhello\r\n",
            b"=9\r\ntxt:hello\r\n",
        );
        check(
            Reply::Verbatim(Bytes::new()),
            b"$0\r\n\r\n",
            b"=4\r\ntxt:\r\n",
        );
        check(
            Reply::Verbatim(Bytes::from_static(b"# Server\r\nredis_version:7.0.0\r\n")),
            b"$31\r\n# Server\r\nredis_version:7.0.0\r\n\r\n",
            b"=35\r\ntxt:# Server\r\nredis_version:7.0.0\r\n\r\n",
        );
    }

    #[test]
    fn array_header() {
        let mut out = BytesMut::new();
        encode_array_header(0, &mut out);
        encode_array_header(3, &mut out);
        encode_array_header(1000, &mut out);
        assert_eq!(&out[..], b"*0\r\n*3\r\n*1000\r\n");
    }

    #[test]
    fn streamed_exec_reply_matches_array() {
        let items = vec![Reply::ok(), Reply::Integer(2), Reply::error("ERR x")];
        for proto in [Protocol::Resp2, Protocol::Resp3] {
            let mut streamed = BytesMut::new();
            encode_array_header(items.len(), &mut streamed);
            for item in &items {
                item.encode(proto, &mut streamed);
            }
            assert_eq!(streamed.to_vec(), enc(&Reply::Array(items.clone()), proto));
        }
    }

    #[test]
    fn encode_appends_and_reserves_once() {
        let reply = Reply::Array((0..100).map(|i| Reply::Integer(i * 1000)).collect());
        let mut out = BytesMut::from(&b"prefix"[..]);
        reply.encode(Protocol::Resp3, &mut out);
        assert!(out.starts_with(b"prefix*100\r\n:0\r\n:1000\r\n"));
        assert_eq!(out.len(), 6 + reply.encoded_len(Protocol::Resp3));

        // With the capacity reserved up front, encoding must not move the buffer.
        let mut out = BytesMut::new();
        out.reserve(reply.encoded_len(Protocol::Resp2));
        let before = out.as_ptr();
        reply.encode(Protocol::Resp2, &mut out);
        assert_eq!(out.as_ptr(), before);
    }

    #[test]
    fn digit_counts() {
        for n in [0usize, 1, 9, 10, 99, 100, 12345, usize::MAX] {
            assert_eq!(usize_len(n), n.to_string().len(), "{n}");
        }
        for n in [0i64, 1, -1, 9, -9, 10, -10, i64::MAX, i64::MIN] {
            assert_eq!(i64_len(n), n.to_string().len(), "{n}");
        }
    }
}
