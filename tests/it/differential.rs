//! Differential test: the same commands sent to a real redis-server and to aft must get
//! byte-identical replies. Redis is the specification; this catches any drift in replies,
//! error messages and edge cases of the commands aft implements.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{RedisServer, TestServer};

/// A raw connection that sends commands and reads back exactly one reply's bytes.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn call(&mut self, args: &[Vec<u8>]) -> Vec<u8> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&req).await.expect("write");
        loop {
            if let Some(n) = reply_len(&self.buf) {
                return self.buf.drain(..n).collect();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("reply within 5 s")
                .expect("read");
            assert!(n > 0, "connection closed while waiting for a reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Length of the complete RESP reply at the start of `b`, if it is all there.
fn reply_len(b: &[u8]) -> Option<usize> {
    let line_end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[1..line_end]).ok()?;
    let after = line_end + 2;
    match b.first()? {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' => Some(after),
        b'$' | b'=' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (b.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'%' => {
            let n: i64 = line.parse().ok()?;
            let items = if b[0] == b'%' { n * 2 } else { n };
            let mut pos = after;
            for _ in 0..items.max(0) {
                pos += reply_len(&b[pos..])?;
            }
            Some(pos)
        }
        _ => None,
    }
}

fn words(line: &str) -> Vec<Vec<u8>> {
    line.split(' ').map(|w| w.as_bytes().to_vec()).collect()
}

/// Scripts of commands; each script starts from an empty database. A line that starts with
/// `! ` is sent to both servers without comparing the replies (`HELLO`, whose reply holds the
/// connection's id, switching the protocol for the lines after it).
const SCRIPTS: &[&[&str]] = &[
    &[
        "SET k v PXAT 1",
        "GET k",
        "EXISTS k",
        "SET k v EXAT 1",
        "TTL k",
        "SET k1 v EX 100",
        "SET k1 w KEEPTTL",
        "TTL k1",
        "SET k1 w",
        "TTL k1",
        "SET k1 v EX 100",
        "APPEND k1 x",
        "TTL k1",
        "INCR k1",
        "SET c 5 EX 100",
        "INCR c",
        "TTL c",
        "GETSET c 1",
        "TTL c",
        "SET '' empty-key",
        "GET ''",
        "MSET a/b 1 a:b 2",
        "MGET a/b a:b",
    ],
    &[
        "SET k v",
        "GET k",
        "SET k w NX",
        "SET k w XX",
        "SET k x XX GET",
        "SET k y NX GET",
        "SET n v NX GET",
        "GET n",
        "SET k v EX 0",
        "SET k v EX -5",
        "SET k v PX abc",
        "SET k v EX 10 PX 10",
        "SET k v KEEPTTL EX 10",
        "SET k v NX XX",
        "SET k v GET GET",
        "SET k v EXAT 99999999999",
        "SET k v XX KEEPTTL",
        "SET k v foo",
        "SET k",
        "GET",
        "GET a b",
    ],
    &[
        "SETNX a 1",
        "SETNX a 2",
        "SETEX b 100 v",
        "SETEX b 0 v",
        "SETEX b x v",
        "PSETEX c 100000 v",
        "PSETEX c -1 v",
        "GETSET a 3",
        "GETSET none 1",
        "GETDEL a",
        "GETDEL a",
        "GETEX b",
        "GETEX b PERSIST",
        "TTL b",
        "GETEX b EX 0",
        "GETEX b EX 10 PX 10",
        "GETEX b FOO",
        "GETEX missing EX 10",
    ],
    &[
        "MSET a 1 b 2 c 3",
        "MGET a b c d",
        "MSET a",
        "MSET a 1 b",
        "MSETNX a 9 z 9",
        "MSETNX y 1 z 2",
        "MGET y z",
        "MSETNX q",
    ],
    &[
        "APPEND s Hello",
        "APPEND s ' World'",
        "STRLEN s",
        "STRLEN nope",
        "GETRANGE s 0 3",
        "GETRANGE s -3 -1",
        "GETRANGE s 5 2",
        "GETRANGE s -1 -5",
        "GETRANGE s 0 10000",
        "GETRANGE s -10000 2",
        "GETRANGE nope 0 -1",
        "GETRANGE s a 1",
        "SUBSTR s 1 2",
        "SETRANGE s 0 J",
        "GET s",
        "SETRANGE s 20 !",
        "GET s",
        "SETRANGE empty 0 ''",
        "SETRANGE empty2 3 ''",
        "EXISTS empty2",
        "SETRANGE s -1 x",
        "SETRANGE s 536870912 x",
        "SETRANGE s x y",
    ],
    &[
        "INCR n",
        "INCR n",
        "DECR n",
        "INCRBY n 100",
        "DECRBY n 50",
        "INCRBY n abc",
        "INCRBY n 1.5",
        "DECRBY n -9223372036854775808",
        "SET big 9223372036854775806",
        "INCR big",
        "INCR big",
        "SET small -9223372036854775808",
        "DECR small",
        "SET s hello",
        "INCR s",
        "SET sp ' 1'",
        "INCR sp",
        "SET lead 01",
        "INCR lead",
        "SET f 10.5",
        "INCRBYFLOAT f 0.1",
        "INCRBYFLOAT f -5",
        "INCRBYFLOAT f abc",
        "INCRBYFLOAT s 1",
        "INCRBYFLOAT nf 3.0",
        "INCRBYFLOAT nf 1.25",
        "SET fi 1",
        "INCRBYFLOAT fi inf",
        "INCRBYFLOAT fi -1",
        "INCRBYFLOAT f2 17179869184",
        "INCRBYFLOAT f2 1.5",
        "INCR n extra",
    ],
    &[
        "SET a 1",
        "SET b 2",
        "EXISTS a b c a",
        "TYPE a",
        "TYPE nothing",
        "DEL a c",
        "DEL a",
        "UNLINK b",
        "EXISTS a b",
        "SET e v",
        "TTL e",
        "PTTL e",
        "TTL none",
        "PTTL none",
        "EXPIRE e 100",
        "TTL e",
        "EXPIRE e 50 GT",
        "EXPIRE e 500 GT",
        "EXPIRE e 5000 LT",
        "EXPIRE e 50 LT",
        "TTL e",
        "EXPIRE e 10 NX",
        "PERSIST e",
        "PERSIST e",
        "EXPIRE e 10 XX",
        "EXPIRE e 10 GT",
        "EXPIRE e 10 LT",
        "TTL e",
        "EXPIRE e 10 NX XX",
        "EXPIRE e 10 GT LT",
        "EXPIRE e 10 BAD",
        "EXPIRE e abc",
        "EXPIRE none 10",
        "EXPIRE e 9223372036854775807",
        "PEXPIRE e 9223372036854775807",
        "EXPIREAT e 1",
        "EXISTS e",
        "SET e v",
        "EXPIRETIME e",
        "PEXPIRETIME e",
        "EXPIRETIME none",
        "PEXPIREAT e 99999999999999",
        "PEXPIRETIME e",
        "EXPIRETIME e",
        "EXPIRE e -1",
        "GET e",
        "SET x 1",
        "DBSIZE",
        "FLUSHALL",
        "DBSIZE",
        "FLUSHDB",
        "FLUSHALL BAD",
        "RANDOMKEY",
        "KEYS *",
    ],
    &[
        "MULTI",
        "SET a 1",
        "INCR a",
        "SET s str",
        "INCR s",
        "SET a b c",
        "GET a",
        "PING",
        "ECHO hi",
        "EXEC",
        "MULTI",
        "EXEC",
        "MULTI",
        "MULTI",
        "SET a 5",
        "GETX a",
        "EXEC",
        "GET a",
        "MULTI",
        "SET a 6",
        "GET",
        "EXEC",
        "MULTI",
        "SET a 7",
        "DISCARD",
        "GET a",
        "EXEC",
        "DISCARD",
        "MULTI",
        "WATCH a",
        "EXEC",
        "WATCH a",
        "SET a 8",
        "MULTI",
        "GET a",
        "EXEC",
        "WATCH a",
        "UNWATCH",
        "SET a 9",
        "MULTI",
        "GET a",
        "EXEC",
        "WATCH nokey",
        "MULTI",
        "SET other 1",
        "EXEC",
        "WATCH a",
        "MULTI",
        "SET a 10",
        "EXEC",
        "GET a",
    ],
    &[
        "PING",
        "PING hello",
        "PING a b",
        "ECHO",
        "ECHO x",
        "SELECT 0",
        "SELECT x",
        "SELECT 0 1",
        "CLIENT SETNAME myname",
        "CLIENT GETNAME",
        "CLIENT SETNAME 'bad name'",
        "CLIENT SETNAME",
        "CLIENT FOO",
        "CLIENT",
        "NOSUCHCMD",
        "NOSUCHCMD a b c",
        "nosuch 'x'",
        "AUTH pass",
        "HELLO 4",
        "HELLO abc",
        "HELLO 2 BADOPT",
        "FUNCTION FLUSH",
        // (CONFIG GET appendonly describes the backend's durability: tests/it/ops.rs.)
        "CONFIG GET save",
        "CONFIG",
        "CONFIG GET",
        "WATCH",
        "MULTI x",
        "EXEC x",
        "MULTI",
        "SET a 1",
        "EXEC x",
        "EXEC",
        "GET a",
    ],
    // Connection and server commands queued in MULTI run only if EXEC commits.
    &[
        "WATCH w",
        "SET w 1",
        "MULTI",
        "CLIENT SETNAME inmulti",
        "SET x 1",
        "EXEC",
        "CLIENT GETNAME",
        "GET x",
        "MULTI",
        "CLIENT SETNAME committed",
        "ECHO e",
        "EXEC",
        "CLIENT GETNAME",
        "MULTI",
        "SAVE",
        "SET x 2",
        "EXEC",
        "GET x",
        "MULTI",
        "SHUTDOWN NOSAVE",
        "EXEC",
        "PING",
    ],
    &[
        "MSET k1 ohmytext k2 mynewtext",
        "LCS k1 k2",
        "LCS k1 k2 LEN",
        "LCS k1 k2 IDX",
        "LCS k1 k2 IDX WITHMATCHLEN",
        "LCS k1 k2 IDX MINMATCHLEN 4",
        "LCS k1 k2 IDX MINMATCHLEN 4 WITHMATCHLEN",
        "LCS k1 k2 idx minmatchlen -3",
        "LCS k1 k2 IDX MINMATCHLEN 100",
        "LCS k1 k2 LEN IDX",
        "LCS k1 k2 IDX LEN",
        "LCS k1 k2 NOPE",
        "LCS k1 k2 MINMATCHLEN",
        "LCS k1 k2 MINMATCHLEN x",
        "LCS k1 k2 LEN MINMATCHLEN x",
        "LCS k1 nope",
        "LCS nope nope IDX",
        "LCS nope nope LEN",
        "LCS k1 k1 IDX WITHMATCHLEN",
        "LCS k1",
        "MSET a abcabcabcabc b cbacbacba",
        "LCS a b",
        "LCS a b IDX WITHMATCHLEN",
        "LCS b a IDX WITHMATCHLEN",
        "MSET x GAC y AGCAT",
        "LCS x y",
        "LCS x y IDX WITHMATCHLEN",
        "! HELLO 3",
        "LCS k1 k2 IDX WITHMATCHLEN",
        "LCS x y IDX",
        "LCS x y LEN",
        "! HELLO 2",
    ],
];

#[tokio::test]
async fn replies_match_a_real_redis_server() {
    let redis = RedisServer::start();
    let aft = TestServer::start().await;
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for script in SCRIPTS {
        let mut r = Raw::connect(&format!("127.0.0.1:{}", redis.port)).await;
        let mut a = Raw::connect(&aft.addr.to_string()).await;
        r.call(&words("FLUSHALL")).await;
        a.call(&words("FLUSHALL")).await;
        for line in *script {
            if let Some(line) = line.strip_prefix("! ") {
                r.call(&words(line)).await;
                a.call(&words(line)).await;
                continue;
            }
            let args = words(line);
            let want = r.call(&args).await;
            let got = a.call(&args).await;
            compared += 1;
            if want != got {
                mismatches.push(format!(
                    "{line}\n   redis: {:?}\n   aft:   {:?}",
                    String::from_utf8_lossy(&want),
                    String::from_utf8_lossy(&got)
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {compared} replies differ from Redis:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(compared > 250, "only {compared} replies compared");
}
