//! Raw sockets: exact reply bytes, inline commands, pipelining, framing across reads,
//! protocol errors and how they affect (only) the offending connection.
//!
//! Expected bytes are Redis 7.0.15's replies to the same input.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aft::config::Config;
use aft::storage::memory::MemoryStorage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::harness::{Process, TestServer};

/// Longest wait for a reply that should come.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes shown with escapes, for readable assertion messages.
fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

async fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write");
}

/// Reads exactly `want.len()` bytes and asserts they are `want`.
async fn expect(stream: &mut TcpStream, want: &[u8]) {
    let got = read_n(stream, want.len()).await;
    assert_eq!(show(&got), show(want));
}

/// Reads `n` bytes; fails with what arrived if they do not come in time or the peer closes.
async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(n);
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let want = (n - got.len()).min(buf.len());
        match timeout(left, stream.read(&mut buf[..want])).await {
            Err(_) => panic!("timed out after {} of {n} bytes: {}", got.len(), show(&got)),
            Ok(Err(e)) => panic!("read failed after {}: {e}", show(&got)),
            Ok(Ok(0)) => panic!("connection closed after {}", show(&got)),
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
        }
    }
    got
}

async fn roundtrip(stream: &mut TcpStream, request: &[u8], want: &[u8]) {
    send(stream, request).await;
    expect(stream, want).await;
}

/// Asserts the server closes the connection without sending anything more.
async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    match timeout(REPLY_TIMEOUT, stream.read(&mut buf)).await {
        Err(_) => panic!("connection still open"),
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => panic!("unexpected bytes before close: {}", show(&buf[..n])),
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// A RESP array of bulk strings.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Waits until the server counts `n` connected clients (it noticed a disconnect).
async fn wait_for_clients(stream: &mut TcpStream, n: usize) {
    let want = format!("connected_clients:{n}\r\n");
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        send(stream, b"INFO clients\r\n").await;
        let info = read_bulk(stream).await;
        if String::from_utf8_lossy(&info).contains(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still not {want}: {}",
            show(&info)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads up to and including the next CR LF.
async fn read_line(stream: &mut TcpStream) -> Vec<u8> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.extend(read_n(stream, 1).await);
    }
    line
}

/// Reads one RESP2 bulk string reply and returns its payload.
async fn read_bulk(stream: &mut TcpStream) -> Vec<u8> {
    let header = read_line(stream).await;
    assert_eq!(header[0], b'$', "not a bulk reply: {}", show(&header));
    let len: usize = std::str::from_utf8(&header[1..header.len() - 2])
        .unwrap()
        .parse()
        .unwrap();
    let mut body = read_n(stream, len + 2).await;
    assert!(body.ends_with(b"\r\n"));
    body.truncate(len);
    body
}

#[tokio::test]
async fn inline_commands_get_exact_replies() {
    let server = TestServer::start().await;
    let mut c = connect(&server).await;
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n").await;
    roundtrip(&mut c, b"ping\n", b"+PONG\r\n").await;
    roundtrip(&mut c, b"SET k \"a b\"\r\n", b"+OK\r\n").await;
    roundtrip(&mut c, b"GET k\r\n", b"$3\r\na b\r\n").await;
    // Empty and blank lines get no reply: the next reply is the PING's.
    roundtrip(&mut c, b"\r\n\n   \r\n\t\r\nPING\r\n", b"+PONG\r\n").await;
    // Quoting rules of sdssplitargs: hex escapes, escapes in single quotes, tabs.
    roundtrip(&mut c, b"SET h \"\\x41\\x00B\\n\"\r\n", b"+OK\r\n").await;
    roundtrip(&mut c, b"GET h\r\n", b"$4\r\nA\0B\n\r\n").await;
    roundtrip(&mut c, b"ECHO 'it\\'s'\r\n", b"$4\r\nit's\r\n").await;
    roundtrip(&mut c, b"ECHO\t\"\"\r\n", b"$0\r\n\r\n").await;
    roundtrip(
        &mut c,
        b"  MGET   k\tnope  \r\n",
        b"*2\r\n$3\r\na b\r\n$-1\r\n",
    )
    .await;
    // A request that is not a RESP array is taken as an inline command, even `$3`.
    roundtrip(
        &mut c,
        b"$3\r\n",
        b"-ERR unknown command '$3', with args beginning with: \r\n",
    )
    .await;
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n").await;
}

#[tokio::test]
async fn resp_and_inline_requests_pipelined_in_one_write() {
    let server = TestServer::start().await;
    let mut c = connect(&server).await;
    let mut batch = Vec::new();
    batch.extend(resp(&[b"SET", b"a", b"1"]));
    batch.extend_from_slice(b"INCR a\r\n");
    batch.extend(resp(&[b"GET", b"a"]));
    batch.extend_from_slice(b"\r\n");
    batch.extend_from_slice(b"ECHO \"x y\"\r\n");
    batch.extend(resp(&[b"PING"]));
    batch.extend_from_slice(b"*0\r\n*-1\r\n");
    batch.extend(resp(&[b"MULTI"]));
    batch.extend_from_slice(b"INCRBY a 10\r\n");
    batch.extend(resp(&[b"GET", b"a"]));
    batch.extend_from_slice(b"EXEC\r\n");
    batch.extend(resp(&[b"DEL", b"a"]));
    batch.extend_from_slice(b"GET a\n");
    roundtrip(
        &mut c,
        &batch,
        b"+OK\r\n:2\r\n$1\r\n2\r\n$3\r\nx y\r\n+PONG\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:12\r\n$2\r\n12\r\n:1\r\n$-1\r\n",
    )
    .await;
    // Nothing more was sent: the next reply is exactly the next request's.
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n").await;
}

#[tokio::test]
async fn a_request_split_across_many_small_writes() {
    let server = TestServer::start().await;
    let mut c = connect(&server).await;
    // One byte per write, a value holding CR LF and NUL.
    let request = resp(&[b"SET", b"split", b"a\r\nb\0c"]);
    for byte in &request {
        send(&mut c, std::slice::from_ref(byte)).await;
        c.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    expect(&mut c, b"+OK\r\n").await;
    // An inline request in odd pieces, cut between CR and LF.
    for piece in [&b"GE"[..], b"T s", b"pli", b"t\r", b"\n"] {
        send(&mut c, piece).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    expect(&mut c, b"$6\r\na\r\nb\0c\r\n").await;
    // A 200 KB value in 1000-byte writes, cut in the middle of the length line.
    let value = vec![b'v'; 200_000];
    let request = resp(&[b"SET", b"big", &value]);
    for chunk in request.chunks(1000) {
        send(&mut c, chunk).await;
        tokio::task::yield_now().await;
    }
    expect(&mut c, b"+OK\r\n").await;
    roundtrip(&mut c, b"STRLEN big\r\n", b":200000\r\n").await;
    // Two requests whose boundary falls inside one write.
    let mut two = resp(&[b"INCR", b"n"]);
    two.extend(resp(&[b"INCR", b"n"]));
    let (first, second) = two.split_at(two.len() / 2 + 3);
    send(&mut c, first).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    send(&mut c, second).await;
    expect(&mut c, b":1\r\n:2\r\n").await;
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n").await;
}

#[tokio::test]
async fn unknown_command_and_arity_errors_are_exact() {
    let server = TestServer::start().await;
    let mut c = connect(&server).await;
    roundtrip(
        &mut c,
        &resp(&[b"FOO", b"a"]),
        b"-ERR unknown command 'FOO', with args beginning with: 'a' \r\n",
    )
    .await;
    roundtrip(
        &mut c,
        b"foo a b\r\n",
        b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n",
    )
    .await;
    roundtrip(
        &mut c,
        b"FOO\r\n",
        b"-ERR unknown command 'FOO', with args beginning with: \r\n",
    )
    .await;
    roundtrip(
        &mut c,
        &resp(&[b"FOO", b""]),
        b"-ERR unknown command 'FOO', with args beginning with: '' \r\n",
    )
    .await;
    // CR and LF inside an argument become spaces in the error line.
    roundtrip(
        &mut c,
        &resp(&[b"FOO", b"a\r\nb"]),
        b"-ERR unknown command 'FOO', with args beginning with: 'a  b' \r\n",
    )
    .await;
    // The argument list stops at 128 characters.
    let long = vec![b'x'; 150];
    let mut want = b"-ERR unknown command 'FOO', with args beginning with: '".to_vec();
    want.extend_from_slice(&long[..128]);
    want.extend_from_slice(b"' \r\n");
    roundtrip(&mut c, &resp(&[b"FOO", &long, b"more"]), &want).await;
    roundtrip(
        &mut c,
        b"GET\r\n",
        b"-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    roundtrip(
        &mut c,
        &resp(&[b"get"]),
        b"-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    roundtrip(
        &mut c,
        &resp(&[b"GET", b"a", b"b"]),
        b"-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    roundtrip(
        &mut c,
        b"MSET a 1 b\r\n",
        b"-ERR wrong number of arguments for 'mset' command\r\n",
    )
    .await;
    // Queue-time errors abort the transaction; nothing of it runs.
    roundtrip(
        &mut c,
        b"MULTI\r\nGET\r\nSET a 1\r\nNOPE\r\nEXEC\r\nGET a\r\n",
        b"+OK\r\n-ERR wrong number of arguments for 'get' command\r\n+QUEUED\r\n-ERR unknown command 'NOPE', with args beginning with: \r\n-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n",
    )
    .await;
    // Errors never close the connection.
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n").await;
}

/// Redis copies the arguments into the error message byte for byte.
#[tokio::test]
async fn unknown_command_error_echoes_non_utf8_arguments_raw() {
    let server = TestServer::start().await;
    let mut c = connect(&server).await;
    roundtrip(
        &mut c,
        &resp(&[b"FOO", b"\xff\xfe"]),
        b"-ERR unknown command 'FOO', with args beginning with: '\xff\xfe' \r\n",
    )
    .await;
}

/// Sends `bad` on a fresh connection and expects exactly `error` and a close; a connection
/// opened before (in the middle of a MULTI) and one opened after keep working.
async fn protocol_error_closes_only_its_connection(server: &TestServer, bad: &[u8], error: &[u8]) {
    let mut bystander = connect(server).await;
    roundtrip(
        &mut bystander,
        b"SET kept 1\r\nMULTI\r\nINCR kept\r\n",
        b"+OK\r\n+OK\r\n+QUEUED\r\n",
    )
    .await;
    let mut offender = connect(server).await;
    roundtrip(&mut offender, b"PING\r\n", b"+PONG\r\n").await;
    roundtrip(&mut offender, bad, error).await;
    expect_closed(&mut offender).await;
    roundtrip(&mut bystander, b"EXEC\r\n", b"*1\r\n:2\r\n").await;
    roundtrip(&mut bystander, b"GET kept\r\n", b"$1\r\n2\r\n").await;
    let mut newcomer = connect(server).await;
    roundtrip(&mut newcomer, b"GET kept\r\n", b"$1\r\n2\r\n").await;
    // Whatever followed the bad bytes was not run.
    roundtrip(&mut newcomer, b"EXISTS after\r\n", b":0\r\n").await;
}

#[tokio::test]
async fn invalid_multibulk_length_closes_the_connection() {
    let server = TestServer::start().await;
    protocol_error_closes_only_its_connection(
        &server,
        b"*abc\r\nSET after 1\r\n",
        b"-ERR Protocol error: invalid multibulk length\r\n",
    )
    .await;
}

#[tokio::test]
async fn expected_dollar_error_closes_the_connection() {
    let server = TestServer::start().await;
    protocol_error_closes_only_its_connection(
        &server,
        b"*1\r\n+x\r\nSET after 1\r\n",
        b"-ERR Protocol error: expected '$', got '+'\r\n",
    )
    .await;
    // A CR where '$' should be is shown as a space.
    protocol_error_closes_only_its_connection(
        &server,
        b"*1\r\n\r\n",
        b"-ERR Protocol error: expected '$', got ' '\r\n",
    )
    .await;
}

/// A bulk of exactly `limit` bytes is accepted; a longer declared length (or a negative or
/// non-numeric one) is a protocol error that closes only that connection.
async fn bulk_length_limit(limit: usize) {
    let server = TestServer::with_config(Config {
        max_bulk_len: limit,
        ..Config::default()
    })
    .await;
    let mut c = connect(&server).await;
    let value = vec![b'z'; limit];
    roundtrip(&mut c, &resp(&[b"SET", b"max", &value]), b"+OK\r\n").await;
    roundtrip(
        &mut c,
        b"STRLEN max\r\n",
        format!(":{limit}\r\n").as_bytes(),
    )
    .await;
    // One byte over: rejected as soon as the length line arrives.
    let over = format!("*3\r\n$3\r\nSET\r\n$5\r\nafter\r\n${}\r\n", limit + 1);
    protocol_error_closes_only_its_connection(
        &server,
        over.as_bytes(),
        b"-ERR Protocol error: invalid bulk length\r\n",
    )
    .await;
    protocol_error_closes_only_its_connection(
        &server,
        b"*3\r\n$3\r\nSET\r\n$5\r\nafter\r\n$-1\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    )
    .await;
    protocol_error_closes_only_its_connection(
        &server,
        b"*2\r\n$3\r\nGET\r\n$x\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    )
    .await;
    // The first connection was not affected.
    roundtrip(
        &mut c,
        b"STRLEN max\r\n",
        format!(":{limit}\r\n").as_bytes(),
    )
    .await;
}

#[tokio::test]
async fn bulk_length_over_a_small_configured_limit() {
    bulk_length_limit(1024).await;
}

#[tokio::test]
async fn bulk_length_over_a_configured_limit_above_the_read_size() {
    bulk_length_limit(100_000).await;
}

#[tokio::test]
async fn unbalanced_quotes_close_the_connection() {
    let server = TestServer::start().await;
    for bad in [
        &b"SET after \"abc\r\n"[..],
        b"SET after 'abc\r\n",
        b"SET after \"a\"b\r\n",
        b"SET after 'a'b\r\n",
    ] {
        protocol_error_closes_only_its_connection(
            &server,
            bad,
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        )
        .await;
    }
}

/// Redis's HELLO reply for `proto`, `id_line` being the client's `:<id>\r\n`.
fn hello_reply(proto: u8, id_line: &[u8]) -> Vec<u8> {
    let mut out = if proto == 3 {
        b"%7\r\n".to_vec()
    } else {
        b"*14\r\n".to_vec()
    };
    out.extend_from_slice(b"$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n");
    out.extend_from_slice(format!("$5\r\nproto\r\n:{proto}\r\n$2\r\nid\r\n").as_bytes());
    out.extend_from_slice(id_line);
    out.extend_from_slice(HELLO_SUFFIX);
    out
}

/// The HELLO reply after the client id.
const HELLO_SUFFIX: &[u8] =
    b"$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";

#[tokio::test]
async fn hello_3_map_and_resp3_nulls() {
    let server = TestServer::start().await;
    let mut c = connect(&server).await;
    send(&mut c, b"CLIENT ID\r\n").await;
    let id_line = read_line(&mut c).await;
    assert_eq!(id_line[0], b':', "{}", show(&id_line));
    roundtrip(&mut c, b"HELLO 3\r\n", &hello_reply(3, &id_line)).await;
    roundtrip(&mut c, b"GET nope\r\n", b"_\r\n").await;
    roundtrip(&mut c, b"SET a 1\r\n", b"+OK\r\n").await;
    roundtrip(&mut c, b"MGET a nope\r\n", b"*2\r\n$1\r\n1\r\n_\r\n").await;
    roundtrip(&mut c, b"SET x y GET\r\n", b"_\r\n").await;
    roundtrip(&mut c, b"CLIENT GETNAME\r\n", b"_\r\n").await;
    roundtrip(
        &mut c,
        b"CONFIG GET save\r\n",
        b"%1\r\n$4\r\nsave\r\n$0\r\n\r\n",
    )
    .await;
    roundtrip(&mut c, b"CONFIG GET nosuchparam\r\n", b"%0\r\n").await;
    roundtrip(
        &mut c,
        b"MULTI\r\nGET nope\r\nINCR a\r\nEXEC\r\n",
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n_\r\n:2\r\n",
    )
    .await;
    // INFO is a verbatim string in RESP3.
    roundtrip(
        &mut c,
        b"INFO keyspace\r\n",
        b"=48\r\ntxt:# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n\r\n",
    )
    .await;
    // An EXEC aborted by WATCH is the RESP3 null.
    let mut other = connect(&server).await;
    roundtrip(&mut c, b"WATCH a\r\n", b"+OK\r\n").await;
    roundtrip(&mut other, b"SET a 5\r\n", b"+OK\r\n").await;
    roundtrip(
        &mut c,
        b"MULTI\r\nINCR a\r\nEXEC\r\n",
        b"+OK\r\n+QUEUED\r\n_\r\n",
    )
    .await;
    roundtrip(&mut c, b"GET a\r\n", b"$1\r\n5\r\n").await;
    // The other connection still speaks RESP2.
    roundtrip(&mut other, b"GET nope\r\n", b"$-1\r\n").await;
    // HELLO 2 switches back: the same fields as a flat array.
    roundtrip(&mut c, b"HELLO 2\r\n", &hello_reply(2, &id_line)).await;
    roundtrip(&mut c, b"GET nope\r\n", b"$-1\r\n").await;
    roundtrip(
        &mut c,
        b"HELLO 4\r\n",
        b"-NOPROTO unsupported protocol version\r\n",
    )
    .await;
}

#[tokio::test]
async fn requirepass_over_the_wire() {
    let server = TestServer::with_config(Config {
        requirepass: Some("pw".into()),
        ..Config::default()
    })
    .await;
    let mut c = connect(&server).await;
    roundtrip(
        &mut c,
        b"GET k\r\nAUTH nope\r\nAUTH default nope\r\n",
        b"-NOAUTH Authentication required.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    roundtrip(&mut c, b"AUTH pw\r\nGET k\r\n", b"+OK\r\n$-1\r\n").await;
    // Before authentication requests are limited to 10 elements and 16 KiB bulks.
    let mut big = b"*11\r\n$3\r\nDEL\r\n".to_vec();
    for _ in 0..10 {
        big.extend_from_slice(b"$1\r\nk\r\n");
    }
    let mut c = connect(&server).await;
    roundtrip(
        &mut c,
        &big,
        b"-ERR Protocol error: unauthenticated multibulk length\r\n",
    )
    .await;
    expect_closed(&mut c).await;
    let mut c = connect(&server).await;
    roundtrip(
        &mut c,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$16385\r\n",
        b"-ERR Protocol error: unauthenticated bulk length\r\n",
    )
    .await;
    expect_closed(&mut c).await;
    // After AUTH the same request is fine.
    let mut c = connect(&server).await;
    roundtrip(&mut c, b"AUTH pw\r\n", b"+OK\r\n").await;
    roundtrip(&mut c, &big, b":0\r\n").await;
}

#[tokio::test]
async fn hello_before_auth_error_is_exact() {
    let server = TestServer::with_config(Config {
        requirepass: Some("pw".into()),
        ..Config::default()
    })
    .await;
    let mut c = connect(&server).await;
    roundtrip(
        &mut c,
        b"HELLO 3\r\n",
        b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n",
    )
    .await;
    // With AUTH in HELLO: authenticated and switched to RESP3 at once.
    send(&mut c, b"HELLO 3 AUTH default pw\r\nGET k\r\n").await;
    let prefix_len = hello_reply(3, b"").len() - HELLO_SUFFIX.len();
    let prefix = read_n(&mut c, prefix_len).await;
    let id_line = read_line(&mut c).await;
    let mut got = prefix;
    got.extend_from_slice(&id_line);
    got.extend(read_n(&mut c, HELLO_SUFFIX.len()).await);
    assert_eq!(show(&got), show(&hello_reply(3, &id_line)));
    expect(&mut c, b"_\r\n").await;
}

#[tokio::test]
async fn quit_replies_ok_and_closes() {
    let server = TestServer::start().await;
    let mut c = connect(&server).await;
    roundtrip(&mut c, b"QUIT\r\nSET after 1\r\n", b"+OK\r\n").await;
    expect_closed(&mut c).await;
    // QUIT inside MULTI: the queued commands never run.
    let mut c = connect(&server).await;
    roundtrip(
        &mut c,
        b"MULTI\r\nSET queued 1\r\nQUIT\r\n",
        b"+OK\r\n+QUEUED\r\n+OK\r\n",
    )
    .await;
    expect_closed(&mut c).await;
    let mut c = connect(&server).await;
    roundtrip(
        &mut c,
        b"EXISTS after queued\r\n*1\r\n$4\r\nQUIT\r\n",
        b":0\r\n+OK\r\n",
    )
    .await;
    expect_closed(&mut c).await;
}

#[tokio::test]
async fn disconnect_in_the_middle_of_multi_leaves_nothing_visible() {
    let server = TestServer::start().await;
    let mut observer = connect(&server).await;
    roundtrip(&mut observer, b"SET y 10\r\n", b"+OK\r\n").await;
    {
        let mut c = connect(&server).await;
        roundtrip(
            &mut c,
            b"MULTI\r\nSET x 1\r\nINCR y\r\nDEL y\r\n",
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n",
        )
        .await;
        // Half of the EXEC, then the client is gone.
        send(&mut c, b"*1\r\n$4\r\nEX").await;
    }
    {
        let mut c = connect(&server).await;
        roundtrip(&mut c, b"MULTI\r\nSET z 1\r\n", b"+OK\r\n+QUEUED\r\n").await;
    }
    wait_for_clients(&mut observer, 1).await;
    roundtrip(
        &mut observer,
        b"MGET x y z\r\nDBSIZE\r\n",
        b"*3\r\n$-1\r\n$2\r\n10\r\n$-1\r\n:1\r\n",
    )
    .await;
}

#[tokio::test]
async fn half_a_request_then_disconnect_does_not_disturb_others() {
    let server = TestServer::start().await;
    let mut other = connect(&server).await;
    roundtrip(&mut other, b"SET k before\r\nMULTI\r\n", b"+OK\r\n+OK\r\n").await;
    for half in [
        &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc"[..],
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000000\r\nabc",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk",
        b"*300",
        b"SET k \"inline",
    ] {
        let mut c = connect(&server).await;
        send(&mut c, half).await;
        roundtrip(&mut other, b"GET k\r\n", b"+QUEUED\r\n").await;
        drop(c);
    }
    let mut observer = connect(&server).await;
    wait_for_clients(&mut observer, 2).await;
    roundtrip(
        &mut other,
        b"EXEC\r\n",
        b"*5\r\n$6\r\nbefore\r\n$6\r\nbefore\r\n$6\r\nbefore\r\n$6\r\nbefore\r\n$6\r\nbefore\r\n",
    )
    .await;
    let mut c = connect(&server).await;
    roundtrip(&mut c, b"GET k\r\n", b"$6\r\nbefore\r\n").await;
}

#[tokio::test]
async fn two_hundred_pipelined_requests_in_one_write() {
    let server = TestServer::start().await;
    let mut c = connect(&server).await;
    let mut batch = Vec::new();
    let mut want = Vec::new();
    for i in 1..=200 {
        if i % 2 == 0 {
            batch.extend_from_slice(b"INCR counter\r\n");
        } else {
            batch.extend(resp(&[b"INCR", b"counter"]));
        }
        want.extend_from_slice(format!(":{i}\r\n").as_bytes());
    }
    roundtrip(&mut c, &batch, &want).await;

    // Replies bigger than the write buffer threshold: 200 GETs of a 2 KB value.
    let value = vec![b'q'; 2000];
    roundtrip(&mut c, &resp(&[b"SET", b"v", &value]), b"+OK\r\n").await;
    let batch = b"GET v\r\n".repeat(200);
    let mut one = b"$2000\r\n".to_vec();
    one.extend_from_slice(&value);
    one.extend_from_slice(b"\r\n");
    let got = read_after(&mut c, &batch, one.len() * 200).await;
    let replies = got.chunks(one.len()).filter(|r| *r == &one[..]).count();
    assert_eq!(replies, 200);
    roundtrip(&mut c, b"GET counter\r\n", b"$3\r\n200\r\n").await;
}

async fn read_after(stream: &mut TcpStream, request: &[u8], n: usize) -> Vec<u8> {
    send(stream, request).await;
    read_n(stream, n).await
}

/// Resident and mapped (virtual) size of process `pid`, in bytes, from `/proc/<pid>/status`.
#[cfg(target_os = "linux")]
fn memory_of(pid: u32) -> (u64, u64) {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).expect("read /proc/<pid>/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb << 10)
            .unwrap_or_else(|| panic!("no {name} in {path}"))
    };
    (field("VmRSS:"), field("VmSize:"))
}

/// Eight clients each announce a 512 MiB value (the largest allowed) and send a few bytes of
/// it: the server's memory follows the bytes received, not the lengths announced, and it goes
/// on serving. Runs the real binary, so that nothing else in the process moves the figures.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn announced_bulk_lengths_reserve_no_memory_before_the_bytes_arrive() {
    const CLIENTS: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || Process::spawn(&dir, &[])
    })
    .await
    .expect("spawn aft");
    let pid = server.child.id();
    let connect = || async {
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
    };
    let mut ping = connect().await;
    roundtrip(&mut ping, b"PING\r\n", b"+PONG\r\n").await;
    let (rss_before, mapped_before) = memory_of(pid);

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = connect().await;
        send(
            &mut c,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\nthe first bytes",
        )
        .await;
        clients.push(c);
    }
    // Time for the server to read every header; then it must still answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    roundtrip(&mut ping, b"PING\r\n", b"+PONG\r\n").await;
    let (rss, mapped) = memory_of(pid);
    let rss_growth = rss.saturating_sub(rss_before);
    let mapped_growth = mapped.saturating_sub(mapped_before);
    println!(
        "after {CLIENTS} announced 512 MiB values: resident +{rss_growth} B, \
         mapped +{mapped_growth} B"
    );
    // Reserving what was announced would map 8 x 512 MiB (4 GiB): an address-space limit, or
    // strict overcommit, aborts the process long before the bytes come.
    assert!(
        mapped_growth < 256 << 20,
        "mapped memory grew by {} MiB",
        mapped_growth >> 20
    );
    assert!(
        rss_growth < 256 << 20,
        "resident memory grew by {} MiB",
        rss_growth >> 20
    );
    drop(clients);
    roundtrip(&mut ping, b"PING\r\n", b"+PONG\r\n").await;
}

/// A 64 MiB value sent in 4 KiB writes arrives whole, and quickly: the read buffer grows with
/// the bytes, geometrically, not by copying the whole value for every read. Over the memory
/// backend whatever `AFT_TEST_BACKEND` says: this is about the wire.
#[tokio::test]
async fn a_64_mib_value_sent_in_small_pieces_round_trips() {
    const LEN: usize = 64 << 20;
    let storage = Arc::new(MemoryStorage::new());
    let server = TestServer::with_storage(storage, Config::default()).await;
    let mut c = connect(&server).await;
    let value: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let request = resp(&[b"SET", b"big", &value]);
    let start = Instant::now();
    for piece in request.chunks(4096) {
        send(&mut c, piece).await;
    }
    expect(&mut c, b"+OK\r\n").await;
    let elapsed = start.elapsed();
    println!("64 MiB SET in 4 KiB writes took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    roundtrip(&mut c, b"STRLEN big\r\n", format!(":{LEN}\r\n").as_bytes()).await;
    send(&mut c, b"GET big\r\n").await;
    assert!(read_bulk(&mut c).await == value, "GET returned other bytes");
}
