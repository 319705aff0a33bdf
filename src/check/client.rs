//! A minimal RESP2 client over a tokio `TcpStream`, made for a checker: every reply is
//! parsed defensively (a server may send garbage or hang up at any byte), and every failure
//! is an error value, never a panic.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest status or error line accepted, in bytes.
const MAX_LINE: usize = 64 * 1024;
/// Largest bulk string accepted, in bytes.
const MAX_BULK: usize = 512 << 20;
/// Most elements accepted in one array.
const MAX_ARRAY: usize = 1 << 20;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 8;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`: a status line such as `OK` or `QUEUED`.
    Status(Bytes),
    /// `-...`: an error line, e.g. `ERR unknown command`.
    Error(Bytes),
    /// `:n`: an integer.
    Integer(i64),
    /// `$n`: a bulk string, or nil (`$-1`).
    Bulk(Option<Bytes>),
    /// `*n`: an array, or the nil array (`*-1`).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// True for the status `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Status(s) if s.as_ref() == b"OK")
    }

    /// True for a status line equal to `word`.
    pub fn is_status(&self, word: &str) -> bool {
        matches!(self, Reply::Status(s) if s.as_ref() == word.as_bytes())
    }

    /// The text of an error reply.
    pub fn error_text(&self) -> Option<String> {
        match self {
            Reply::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
            _ => None,
        }
    }

    /// A short, printable rendering (for messages).
    pub fn describe(&self) -> String {
        fn clip(b: &[u8]) -> String {
            let s = String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned();
            if b.len() > 120 {
                format!("{s}…")
            } else {
                s
            }
        }
        match self {
            Reply::Status(s) => format!("+{}", clip(s)),
            Reply::Error(e) => format!("-{}", clip(e)),
            Reply::Integer(n) => format!(":{n}"),
            Reply::Bulk(None) => "(nil)".to_string(),
            Reply::Bulk(Some(b)) => format!("{:?}", clip(b)),
            Reply::Array(None) => "(nil array)".to_string(),
            Reply::Array(Some(items)) => format!("array of {}", items.len()),
        }
    }
}

/// Why a request got no usable reply. Every variant means the connection is no longer
/// usable (its replies may be out of step) and should be dropped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// No (complete) reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The server sent something that is not RESP2.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// One connection to a RESP server.
pub struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    timeout: Duration,
}

impl Connection {
    /// Connects to `addr` (`host:port`); `timeout` bounds the connect and every later reply.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: BytesMut::with_capacity(4096),
            timeout,
        })
    }

    /// Sends several commands in one write (a pipeline); read their replies with
    /// [`Connection::read_reply`], one each, in order.
    pub async fn send(&mut self, commands: &[Vec<&[u8]>]) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(64 * commands.len());
        for args in commands {
            encode(&mut out, args);
        }
        tokio::time::timeout(self.timeout, self.stream.write_all(&out))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Sends one command and reads its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, ClientError> {
        self.send(&[args.to_vec()]).await?;
        self.read_reply().await
    }

    /// Reads the next reply.
    pub async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.advance(used);
                return Ok(reply);
            }
            self.buf.reserve(4096);
            let n = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| ClientError::Timeout(self.timeout))??;
            if n == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

/// Appends `args` as a RESP array of bulk strings.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one complete reply at the start of `buf`: `Ok(None)` if more bytes are needed,
/// else the reply and how many bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ClientError> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, ClientError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((line, after)) = line_at(buf, pos + 1)? else {
        return Ok(None);
    };
    let reply = match kind {
        b'+' => (Reply::Status(Bytes::copy_from_slice(line)), after),
        b'-' => (Reply::Error(Bytes::copy_from_slice(line)), after),
        b':' => (Reply::Integer(number(line)?), after),
        b'$' => {
            let n = number(line)?;
            if n < 0 {
                return if n == -1 {
                    Ok(Some((Reply::Bulk(None), after)))
                } else {
                    Err(ClientError::Protocol(format!("bulk length {n}")))
                };
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_BULK)
                .ok_or_else(|| ClientError::Protocol(format!("bulk length {n} too large")))?;
            let end = after + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ClientError::Protocol(
                    "bulk string not followed by CRLF".to_string(),
                ));
            }
            (
                Reply::Bulk(Some(Bytes::copy_from_slice(&buf[after..end]))),
                end + 2,
            )
        }
        b'*' => {
            let n = number(line)?;
            if n < 0 {
                return if n == -1 {
                    Ok(Some((Reply::Array(None), after)))
                } else {
                    Err(ClientError::Protocol(format!("array length {n}")))
                };
            }
            if depth >= MAX_DEPTH {
                return Err(ClientError::Protocol(
                    "arrays nested too deeply".to_string(),
                ));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_ARRAY)
                .ok_or_else(|| ClientError::Protocol(format!("array length {n} too large")))?;
            let mut items = Vec::with_capacity(n.min(1024));
            let mut at = after;
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some((item, next)) => {
                        items.push(item);
                        at = next;
                    }
                    None => return Ok(None),
                }
            }
            (Reply::Array(Some(items)), at)
        }
        other => {
            return Err(ClientError::Protocol(format!(
                "unexpected reply type byte 0x{other:02x}"
            )))
        }
    };
    Ok(Some(reply))
}

/// The line starting at `pos` (without its CRLF) and the position after the CRLF.
fn line_at(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, ClientError> {
    let rest = buf.get(pos..).unwrap_or_default();
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], pos + i + 2))),
        None if rest.len() > MAX_LINE => {
            Err(ClientError::Protocol("reply line too long".to_string()))
        }
        None => Ok(None),
    }
}

fn number(line: &[u8]) -> Result<i64, ClientError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ClientError::Protocol(format!(
                "bad number {:?}",
                String::from_utf8_lossy(&line[..line.len().min(40)])
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Result<Option<(Reply, usize)>, ClientError> {
        parse(input)
    }

    #[test]
    fn parses_every_resp2_type() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        assert_eq!(one(b"+OK\r\n").unwrap(), Some((Reply::Status(b("OK")), 5)));
        assert_eq!(
            one(b"-ERR x\r\n").unwrap(),
            Some((Reply::Error(b("ERR x")), 8))
        );
        assert_eq!(one(b":-7\r\n").unwrap(), Some((Reply::Integer(-7), 5)));
        assert_eq!(one(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        assert_eq!(
            one(b"$3\r\na\r\n\r\n").unwrap(),
            Some((Reply::Bulk(Some(b("a\r\n"))), 9))
        );
        assert_eq!(one(b"*-1\r\n").unwrap(), Some((Reply::Array(None), 5)));
        assert_eq!(
            one(b"*2\r\n+OK\r\n$-1\r\nextra").unwrap(),
            Some((
                Reply::Array(Some(vec![Reply::Status(b("OK")), Reply::Bulk(None)])),
                14
            ))
        );
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        for partial in [
            &b""[..],
            b"+OK",
            b"+OK\r",
            b"$5\r\nab",
            b"$5\r\nabcde\r",
            b"*2\r\n+OK\r\n",
            b"*1\r\n*1\r\n",
        ] {
            assert!(one(partial).unwrap().is_none(), "{partial:?}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"?what\r\n"[..],
            b":12x\r\n",
            b"$-2\r\n",
            b"$abc\r\n",
            b"$3\r\nabcXY",
            b"*-5\r\n",
            b"$99999999999999999999\r\n",
            b"*99999999999\r\n",
            b"%1\r\n",
        ] {
            assert!(one(bad).is_err(), "{bad:?}");
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(one(deep.as_bytes()).is_err());
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(one(&long).is_err());
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }
}
