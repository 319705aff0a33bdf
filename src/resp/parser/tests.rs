use super::*;

fn authed(limits: Limits) -> RequestParser {
    let mut p = RequestParser::new(limits);
    p.set_authenticated(true);
    p
}

fn parser() -> RequestParser {
    authed(Limits::default())
}

fn args(list: &[&[u8]]) -> Vec<Bytes> {
    list.iter().map(|a| Bytes::copy_from_slice(a)).collect()
}

/// Parses every request in `input` given at once; returns the requests and
/// the unconsumed rest.
fn parse_all(
    p: &mut RequestParser,
    input: &[u8],
) -> (Vec<Vec<Bytes>>, Result<(), ProtocolError>, Vec<u8>) {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    loop {
        match p.parse(&mut buf) {
            Ok(Some(req)) => out.push(req),
            Ok(None) => return (out, Ok(()), buf.to_vec()),
            Err(e) => return (out, Err(e), buf.to_vec()),
        }
    }
}

/// Parses `input` delivered in chunks of `chunk` bytes.
fn parse_chunked(
    p: &mut RequestParser,
    input: &[u8],
    chunk: usize,
) -> (Vec<Vec<Bytes>>, Result<(), ProtocolError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match p.parse(&mut buf) {
                Ok(Some(req)) => out.push(req),
                Ok(None) => break,
                Err(e) => return (out, Err(e)),
            }
        }
    }
    (out, Ok(()))
}

fn one(input: &[u8]) -> Vec<Bytes> {
    let (reqs, res, rest) = parse_all(&mut parser(), input);
    assert_eq!(res, Ok(()), "input {:?}", String::from_utf8_lossy(input));
    assert_eq!(reqs.len(), 1, "input {:?}", String::from_utf8_lossy(input));
    assert!(rest.is_empty());
    reqs.into_iter().next().unwrap_or_default()
}

fn err_of(p: &mut RequestParser, input: &[u8]) -> ProtocolError {
    match parse_all(p, input).1 {
        Err(e) => e,
        Ok(()) => panic!("no error for {:?}", String::from_utf8_lossy(input)),
    }
}

fn err(input: &[u8]) -> String {
    err_of(&mut parser(), input).to_string()
}

// ---- multibulk ----

#[test]
fn single_multibulk() {
    assert_eq!(
        one(b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"),
        args(&[b"SET", b"key", b"value"])
    );
    assert_eq!(one(b"*1\r\n$4\r\nPING\r\n"), args(&[b"PING"]));
    assert_eq!(one(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"), args(&[b"GET", b""]));
}

#[test]
fn pipelined_requests_come_one_per_call() {
    let mut p = parser();
    let mut buf = BytesMut::from(
        &b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING\r\n*2\r\n$3\r\nGET"[..],
    );
    assert_eq!(p.parse(&mut buf), Ok(Some(args(&[b"PING"]))));
    assert_eq!(
        &buf[..],
        b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING\r\n*2\r\n$3\r\nGET"
    );
    assert_eq!(p.parse(&mut buf), Ok(Some(args(&[b"ECHO", b"hi"]))));
    assert_eq!(&buf[..], b"PING\r\n*2\r\n$3\r\nGET");
    assert_eq!(p.parse(&mut buf), Ok(Some(args(&[b"PING"]))));
    assert_eq!(p.parse(&mut buf), Ok(None));
    // The complete lines and payloads of the partial request are consumed.
    assert_eq!(&buf[..], b"GET");
    buf.extend_from_slice(b"\r\n$1\r\nk\r\n");
    assert_eq!(p.parse(&mut buf), Ok(Some(args(&[b"GET", b"k"]))));
    assert!(buf.is_empty());
    assert_eq!(p.parse(&mut buf), Ok(None));
}

#[test]
fn binary_args_and_embedded_crlf() {
    let input = b"*4\r\n$4\r\n\x00\xff\xfe\x80\r\n$4\r\n\r\n\r\n\r\n$2\r\n$3\r\n$3\r\n*1\n\r\n";
    assert_eq!(
        one(input),
        args(&[b"\x00\xff\xfe\x80", b"\r\n\r\n", b"$3", b"*1\n"])
    );
}

#[test]
fn every_split_point_gives_the_same_requests() {
    let inputs: &[&[u8]] = &[
        b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n",
        b"*2\r\n$4\r\n\x00\r\n\xff\r\n$0\r\n\r\n*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n",
        b"PING\r\nSET a \"b c\\x41\"\n\r\n  \r\n*1\r\n$1\r\nx\r\nECHO 'it\\'s'\r\n",
        b"*12\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n$1\r\ne\r\n$1\r\nf\r\n\
          $1\r\ng\r\n$1\r\nh\r\n$1\r\ni\r\n$1\r\nj\r\n$1\r\nk\r\n$10\r\n0123456789\r\n",
    ];
    for input in inputs {
        let (expected, res, rest) = parse_all(&mut parser(), input);
        assert_eq!(res, Ok(()));
        assert!(rest.is_empty());
        assert!(!expected.is_empty());
        for chunk in 1..=input.len() {
            let (got, res) = parse_chunked(&mut parser(), input, chunk);
            assert_eq!(res, Ok(()));
            assert_eq!(got, expected, "chunk size {chunk}");
        }
        // Split in two at every position.
        for at in 0..=input.len() {
            let mut p = parser();
            let mut buf = BytesMut::from(&input[..at]);
            let mut got = Vec::new();
            while let Ok(Some(req)) = p.parse(&mut buf) {
                got.push(req);
            }
            buf.extend_from_slice(&input[at..]);
            while let Some(req) = p.parse(&mut buf).ok().flatten() {
                got.push(req);
            }
            assert_eq!(got, expected, "split at {at}");
        }
    }
}

#[test]
fn errors_are_the_same_at_every_split_point() {
    let inputs: &[&[u8]] = &[
        b"*1\r\n$4\r\nPING\r\n*x\r\n",
        b"*2\r\n$1\r\na\r\n:1\r\n",
        b"*1\r\n$-1\r\n",
        b"SET a \"b\r\n",
    ];
    for input in inputs {
        let (expected, expected_err, _) = parse_all(&mut parser(), input);
        assert!(expected_err.is_err());
        for chunk in 1..=input.len() {
            let (got, res) = parse_chunked(&mut parser(), input, chunk);
            assert_eq!(got, expected, "chunk {chunk}");
            assert_eq!(res, expected_err, "chunk {chunk}");
        }
    }
}

#[test]
fn large_bulk_in_chunks_reports_needed() {
    const LEN: usize = 1024 * 1024;
    let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let mut input = format!("*2\r\n$3\r\nSET\r\n${LEN}\r\n").into_bytes();
    let header_len = input.len();
    input.extend_from_slice(&payload);
    input.extend_from_slice(b"\r\n");

    let mut p = parser();
    let mut buf = BytesMut::new();
    // The header alone: the length is known, nothing of the payload yet.
    buf.extend_from_slice(&input[..header_len]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert!(buf.is_empty());
    assert_eq!(p.needed(), LEN + 2);

    buf.reserve(p.needed());
    let capacity = buf.capacity();
    let start = buf.as_ptr();
    let mut fed = header_len;
    for chunk in input[header_len..].chunks(64 * 1024 + 7) {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        match p.parse(&mut buf) {
            Ok(None) => assert_eq!(p.needed(), input.len() - fed),
            Ok(Some(req)) => {
                assert_eq!(fed, input.len());
                assert_eq!(req.len(), 2);
                assert_eq!(&req[0][..], b"SET");
                assert_eq!(&req[1][..], &payload[..]);
                // Reserved once: the buffer never moved, and the large
                // argument was split off it without copying.
                assert_eq!(buf.capacity() + LEN + 2, capacity);
                assert_eq!(req[1].as_ptr(), start);
                assert_eq!(p.needed(), 0);
                assert!(buf.is_empty());
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("request never completed");
}

#[test]
fn needed_is_zero_while_reading_lines() {
    let mut p = parser();
    let mut buf = BytesMut::from(&b"*2\r\n$3"[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.needed(), 0);
    buf.extend_from_slice(b"\r\nab");
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.needed(), 3);
    buf.extend_from_slice(b"c\r");
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.needed(), 1);
    buf.extend_from_slice(b"\n$1");
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.needed(), 0);
    let mut p = parser();
    let mut buf = BytesMut::from(&b"PIN"[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.needed(), 0);
}

#[test]
fn small_args_are_copied_large_ones_shared() {
    let big = vec![b'v'; COPY_THRESHOLD];
    let small = vec![b's'; COPY_THRESHOLD - 1];
    let mut input = format!("*2\r\n${}\r\n", small.len()).into_bytes();
    input.extend_from_slice(&small);
    input.extend_from_slice(format!("\r\n${}\r\n", big.len()).as_bytes());
    input.extend_from_slice(&big);
    input.extend_from_slice(b"\r\n");
    let mut buf = BytesMut::from(&input[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let req = parser().parse(&mut buf).ok().flatten().unwrap_or_default();
    assert_eq!(req.len(), 2);
    assert_eq!(&req[0][..], &small[..]);
    assert_eq!(&req[1][..], &big[..]);
    assert!(
        !range.contains(&(req[0].as_ptr() as usize)),
        "small arg must be copied"
    );
    assert!(
        range.contains(&(req[1].as_ptr() as usize)),
        "large arg must not be copied"
    );
}

#[test]
fn args_vec_preallocation_is_bounded() {
    let mut p = parser();
    let mut buf = BytesMut::from(&b"*1000000\r\n"[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.args.capacity(), MAX_PREALLOCATED_ARGS);
    let mut p = parser();
    let mut buf = BytesMut::from(&b"*3\r\n"[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.args.capacity(), 3);
}

#[test]
fn many_elements() {
    let n = 3000;
    let mut input = format!("*{n}\r\n").into_bytes();
    for i in 0..n {
        let s = i.to_string();
        input.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes());
    }
    let req = one(&input);
    assert_eq!(req.len(), n);
    assert_eq!(&req[2999][..], b"2999");
}

#[test]
fn bytes_after_payload_are_skipped_unchecked() {
    // Like Redis: the two bytes after a payload are not checked.
    assert_eq!(one(b"*2\r\n$1\r\naXY$1\r\nbZZ"), args(&[b"a", b"b"]));
    // And the byte after a count line's '\r' is not checked either.
    assert_eq!(one(b"*1\rX$1\rYa\r\n"), args(&[b"a"]));
}

#[test]
fn payload_waits_for_its_two_trailing_bytes() {
    let mut p = parser();
    let mut buf = BytesMut::from(&b"*1\r\n$3\r\nabc"[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.needed(), 2);
    buf.extend_from_slice(b"\r");
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.needed(), 1);
    buf.extend_from_slice(b"\n");
    assert_eq!(p.parse(&mut buf), Ok(Some(args(&[b"abc"]))));
}

// ---- empty requests ----

#[test]
fn empty_requests_are_skipped() {
    let (reqs, res, rest) = parse_all(
        &mut parser(),
        b"*0\r\n*-1\r\n*-42\r\n\r\n\n   \t \r\n*1\r\n$4\r\nPING\r\n\n",
    );
    assert_eq!(res, Ok(()));
    assert_eq!(reqs, vec![args(&[b"PING"])]);
    assert!(rest.is_empty());

    let mut p = parser();
    for input in [
        &b"*0\r\n"[..],
        b"*-1\r\n",
        b"\r\n",
        b"\n",
        b"  \t\x0b\x0c \r\n",
    ] {
        let mut buf = BytesMut::from(input);
        assert_eq!(p.parse(&mut buf), Ok(None), "{input:?}");
        assert!(buf.is_empty(), "{input:?}");
    }
}

// ---- inline ----

#[test]
fn inline_basic() {
    assert_eq!(one(b"PING\r\n"), args(&[b"PING"]));
    assert_eq!(one(b"PING\n"), args(&[b"PING"]));
    assert_eq!(one(b"SET key value\r\n"), args(&[b"SET", b"key", b"value"]));
    assert_eq!(
        one(b"  SET \t key   value  \r\n"),
        args(&[b"SET", b"key", b"value"])
    );
    // A '\r' inside the line separates arguments.
    assert_eq!(one(b"a\rb\r\n"), args(&[b"a", b"b"]));
    // Only the '\r' right before the '\n' is stripped.
    assert_eq!(one(b"a\r\r\n"), args(&[b"a"]));
    // Vertical tab and form feed separate only where whitespace is skipped.
    assert_eq!(one(b"\x0ba\x0cb \x0c c\n"), args(&[b"a\x0cb", b"c"]));
    // Non-UTF-8 bytes and NUL are ordinary bytes.
    assert_eq!(one(b"\xff\x00 \xc3\n"), args(&[b"\xff\x00", b"\xc3"]));
    // A leading '$' or ':' is just an inline command.
    assert_eq!(one(b"$3\r\n"), args(&[b"$3"]));
}

#[test]
fn inline_pipelined() {
    let (reqs, res, rest) = parse_all(&mut parser(), b"PING\r\nECHO a\nGET k\r\nINC");
    assert_eq!(res, Ok(()));
    assert_eq!(
        reqs,
        vec![
            args(&[b"PING"]),
            args(&[b"ECHO", b"a"]),
            args(&[b"GET", b"k"])
        ]
    );
    assert_eq!(rest, b"INC");
}

#[test]
fn inline_double_quotes() {
    assert_eq!(one(b"SET \"a b\" c\r\n"), args(&[b"SET", b"a b", b"c"]));
    assert_eq!(one(b"ECHO \"\"\r\n"), args(&[b"ECHO", b""]));
    assert_eq!(
        one(b"ECHO \"\\n\\r\\t\\b\\a\\\\\\\"\"\r\n"),
        args(&[b"ECHO", b"\n\r\t\x08\x07\\\""])
    );
    // Unknown escapes yield the escaped byte.
    assert_eq!(one(b"ECHO \"\\z\\'\"\n"), args(&[b"ECHO", b"z'"]));
    // Single quotes inside double quotes are plain.
    assert_eq!(one(b"ECHO \"it's\"\n"), args(&[b"ECHO", b"it's"]));
    // A quote may open in the middle of an argument.
    assert_eq!(one(b"ECHO ab\"c d\"\n"), args(&[b"ECHO", b"abc d"]));
    // Closing quote followed by whitespace of any kind, or the end.
    assert_eq!(one(b"ECHO \"a\"\tb\n"), args(&[b"ECHO", b"a", b"b"]));
    assert_eq!(one(b"ECHO \"a\"\x0bb\n"), args(&[b"ECHO", b"a", b"b"]));
    assert_eq!(one(b"ECHO \"a\"\r\n"), args(&[b"ECHO", b"a"]));
    assert_eq!(one(b"ECHO \"a\"\n"), args(&[b"ECHO", b"a"]));
}

#[test]
fn inline_hex_escapes() {
    assert_eq!(
        one(b"ECHO \"\\x41\\x6a\\x6A\\x00\\xff\\xFF\"\n"),
        args(&[b"ECHO", b"Ajj\x00\xff\xff"])
    );
    // Not followed by two hex digits: `\x` is just an escaped 'x'.
    assert_eq!(one(b"ECHO \"\\xZ1\\x4\"\n"), args(&[b"ECHO", b"xZ1x4"]));
    assert_eq!(one(b"ECHO \"\\X41\"\n"), args(&[b"ECHO", b"X41"]));
    // Outside quotes there are no escapes.
    assert_eq!(one(b"ECHO \\x41\n"), args(&[b"ECHO", b"\\x41"]));
}

#[test]
fn inline_single_quotes() {
    assert_eq!(one(b"ECHO 'a b'\n"), args(&[b"ECHO", b"a b"]));
    assert_eq!(one(b"ECHO 'it\\'s'\n"), args(&[b"ECHO", b"it's"]));
    // No other escapes inside single quotes.
    assert_eq!(
        one(b"ECHO '\\n\\x41\\\"'\n"),
        args(&[b"ECHO", b"\\n\\x41\\\""])
    );
    assert_eq!(one(b"ECHO 'a\\b'\n"), args(&[b"ECHO", b"a\\b"]));
    assert_eq!(one(b"ECHO '\"'\n"), args(&[b"ECHO", b"\""]));
    assert_eq!(one(b"ECHO ''\n"), args(&[b"ECHO", b""]));
    assert_eq!(one(b"ECHO x'y'\n"), args(&[b"ECHO", b"xy"]));
}

#[test]
fn inline_unbalanced_quotes() {
    const MSG: &str = "ERR Protocol error: unbalanced quotes in request";
    for input in [
        &b"ECHO \"abc\r\n"[..],
        b"ECHO 'abc\r\n",
        b"ECHO \"a\"b\r\n",
        b"ECHO 'a'b\r\n",
        b"ECHO \"a\"\"b\"\n",
        b"ECHO \"abc\\\"\n",
        b"ECHO \"abc\\\n",
        b"ECHO 'abc\\'\n",
        // `\\'` is a backslash then an escaped quote: still open.
        b"ECHO 'a\\\\'\n",
        b"\"\n",
        b"'\n",
        b"ECHO \"a\"\x00\n",
    ] {
        assert_eq!(err(input), MSG, "{:?}", String::from_utf8_lossy(input));
    }
}

/// A literal transcription of Redis's `sdssplitargs`, reading past the end
/// of the line as the C string's NUL terminator.
fn reference_splitargs(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let at = |k: usize| line.get(k).copied().unwrap_or(0);
    let isspace = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r');
    let hex = |c: u8| c.is_ascii_hexdigit();
    let val = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    let mut p = 0;
    let mut out = Vec::new();
    loop {
        while at(p) != 0 && isspace(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Some(out);
        }
        let (mut inq, mut insq, mut done) = (false, false, false);
        let mut current = Vec::new();
        while !done {
            if inq {
                if at(p) == b'\\' && at(p + 1) == b'x' && hex(at(p + 2)) && hex(at(p + 3)) {
                    current.push(val(at(p + 2)) * 16 + val(at(p + 3)));
                    p += 3;
                } else if at(p) == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    current.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        c => c,
                    });
                } else if at(p) == b'"' {
                    if at(p + 1) != 0 && !isspace(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if at(p) == 0 {
                    return None;
                } else {
                    current.push(at(p));
                }
            } else if insq {
                if at(p) == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    current.push(b'\'');
                } else if at(p) == b'\'' {
                    if at(p + 1) != 0 && !isspace(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if at(p) == 0 {
                    return None;
                } else {
                    current.push(at(p));
                }
            } else {
                match at(p) {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    c => current.push(c),
                }
            }
            if at(p) != 0 {
                p += 1;
            }
        }
        out.push(current);
    }
}

#[test]
fn inline_splitting_matches_redis_sdssplitargs() {
    let mut rng = XorShift::seeded(0xd1b5_4a32_d192_ed03);
    // No NUL and no '\n': neither can appear in a line Redis splits.
    let alphabet = b" \t\r\x0b\x0c\"'\\xXaF09nrtbz\xff";
    let mut scratch = Vec::new();
    for _ in 0..100_000 {
        let len = rng.below(24);
        let line: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let mut got = Vec::new();
        let got = split_args(&line, &mut got, &mut scratch)
            .ok()
            .map(|()| got.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
        assert_eq!(
            got,
            reference_splitargs(&line),
            "{:?}",
            String::from_utf8_lossy(&line)
        );
    }
}

#[test]
fn inline_scratch_is_reset_between_args() {
    assert_eq!(
        one(b"\"long argument\" \"x\" a'b'\n"),
        args(&[b"long argument", b"x", b"ab"])
    );
}

#[test]
fn inline_long_line_is_scanned_once() {
    let mut p = parser();
    let mut buf = BytesMut::from(&b"ECHO "[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.scanned, 5);
    buf.extend_from_slice(&[b'a'; 1000]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.scanned, 1005);
    buf.extend_from_slice(b"\r\n");
    let req = p.parse(&mut buf).ok().flatten().unwrap_or_default();
    assert_eq!(req.len(), 2);
    assert_eq!(req[1].len(), 1000);
    assert_eq!(p.scanned, 0);
}

// ---- errors ----

#[test]
fn invalid_multibulk_length() {
    const MSG: &str = "ERR Protocol error: invalid multibulk length";
    for input in [
        &b"*x\r\n"[..],
        b"*\r\n",
        b"*1x\r\n",
        b"* 1\r\n",
        b"*+1\r\n",
        b"*01\r\n",
        b"*-0\r\n",
        b"*-\r\n",
        b"*1.0\r\n",
        b"*99999999999999999999\r\n",
        b"*9223372036854775808\r\n",
        b"*1048577\r\n",
    ] {
        assert_eq!(err(input), MSG, "{:?}", String::from_utf8_lossy(input));
    }
    assert_eq!(one(b"*1\r\n$1\r\na\r\n"), args(&[b"a"]));
    let (reqs, res, _) = parse_all(&mut parser(), b"*1048576\r\n");
    assert!(reqs.is_empty());
    assert_eq!(res, Ok(()));
    // Large negative counts are empty requests, like `*-1`.
    let (reqs, res, rest) = parse_all(&mut parser(), b"*-9223372036854775808\r\n");
    assert_eq!((reqs.len(), res, rest.len()), (0, Ok(()), 0));
}

#[test]
fn expected_dollar() {
    assert_eq!(
        err(b"*1\r\n:1\r\n"),
        "ERR Protocol error: expected '$', got ':'"
    );
    assert_eq!(
        err(b"*2\r\n$1\r\na\r\n*1\r\n"),
        "ERR Protocol error: expected '$', got '*'"
    );
    // An empty line: Redis shows the '\r' as a space.
    assert_eq!(
        err(b"*1\r\n\r\n"),
        "ERR Protocol error: expected '$', got ' '"
    );
    assert_eq!(
        err(b"*1\r\n\nfoo\r\n"),
        "ERR Protocol error: expected '$', got ' '"
    );
    assert_eq!(
        err(b"*1\r\n\x00\r\n"),
        "ERR Protocol error: expected '$', got '\0'"
    );
    assert_eq!(
        err_of(&mut parser(), b"*1\r\n\xff\r\n"),
        ProtocolError::ExpectedDollar(0xff)
    );
    // The check waits for the whole line, like Redis.
    let mut p = parser();
    let mut buf = BytesMut::from(&b"*1\r\nfoo"[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
}

#[test]
fn invalid_bulk_length() {
    const MSG: &str = "ERR Protocol error: invalid bulk length";
    for input in [
        &b"*1\r\n$x\r\n"[..],
        b"*1\r\n$\r\n",
        b"*1\r\n$-1\r\n",
        b"*1\r\n$-5\r\n",
        b"*1\r\n$-0\r\n",
        b"*1\r\n$03\r\n",
        b"*1\r\n$+3\r\n",
        b"*1\r\n$3 \r\n",
        b"*1\r\n$ 3\r\n",
        b"*1\r\n$9223372036854775808\r\n",
        b"*1\r\n$536870913\r\n",
        b"*1\r\n$9223372036854775807\r\n",
    ] {
        assert_eq!(err(input), MSG, "{:?}", String::from_utf8_lossy(input));
    }
    // Exactly the limit is accepted (the payload is awaited).
    let mut p = parser();
    let mut buf = BytesMut::from(&b"*1\r\n$536870912\r\n"[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.needed(), 536_870_912 + 2);
    // The declared size is not allocated up front.
    assert!(buf.capacity() < 1024);
}

#[test]
fn too_big_count_strings() {
    let limits = Limits::default();
    // Exactly max_inline_len bytes before the terminator is still fine.
    let mut line = b"*".to_vec();
    line.extend(std::iter::repeat_n(b'1', limits.max_inline_len - 1));
    let mut p = parser();
    let mut buf = BytesMut::from(&line[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    buf.extend_from_slice(b"1");
    assert_eq!(
        p.parse(&mut buf).map_err(|e| e.to_string()),
        Err("ERR Protocol error: too big mbulk count string".to_string())
    );

    let mut input = b"*1\r\n$".to_vec();
    input.extend(std::iter::repeat_n(b'1', limits.max_inline_len));
    assert_eq!(err(&input), "ERR Protocol error: too big bulk count string");
    input.truncate(input.len() - 1);
    let (_, res, _) = parse_all(&mut parser(), &input);
    assert_eq!(res, Ok(()));

    // The terminator arriving with the overlong line does not help.
    let mut input = b"*1".to_vec();
    input.extend(std::iter::repeat_n(b'0', limits.max_inline_len));
    input.extend_from_slice(b"\r\n");
    assert_eq!(
        err(&input),
        "ERR Protocol error: too big mbulk count string"
    );
}

#[test]
fn too_big_inline_request() {
    const MSG: &str = "ERR Protocol error: too big inline request";
    let max = Limits::default().max_inline_len;
    let mut p = parser();
    let mut buf = BytesMut::from(&vec![b'a'; max][..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    buf.extend_from_slice(b"\n");
    let req = p.parse(&mut buf).ok().flatten().unwrap_or_default();
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].len(), max);

    let mut p = parser();
    let mut buf = BytesMut::from(&vec![b'a'; max + 1][..]);
    assert_eq!(
        p.parse(&mut buf).map_err(|e| e.to_string()),
        Err(MSG.to_string())
    );

    let mut line = vec![b'a'; max + 1];
    line.push(b'\n');
    assert_eq!(err(&line), MSG);
}

#[test]
fn error_is_sticky() {
    let mut p = parser();
    let mut buf = BytesMut::from(&b"*x\r\n*1\r\n$4\r\nPING\r\n"[..]);
    assert_eq!(
        p.parse(&mut buf),
        Err(ProtocolError::InvalidMultibulkLength)
    );
    assert_eq!(
        p.parse(&mut buf),
        Err(ProtocolError::InvalidMultibulkLength)
    );
    let mut fresh = BytesMut::from(&b"PING\r\n"[..]);
    assert_eq!(
        p.parse(&mut fresh),
        Err(ProtocolError::InvalidMultibulkLength)
    );
    assert_eq!(p.needed(), 0);
}

#[test]
fn error_messages() {
    let cases = [
        (ProtocolError::TooBigInlineRequest, "too big inline request"),
        (
            ProtocolError::UnbalancedQuotes,
            "unbalanced quotes in request",
        ),
        (
            ProtocolError::TooBigMultibulkCount,
            "too big mbulk count string",
        ),
        (
            ProtocolError::InvalidMultibulkLength,
            "invalid multibulk length",
        ),
        (
            ProtocolError::UnauthenticatedMultibulkLength,
            "unauthenticated multibulk length",
        ),
        (ProtocolError::TooBigBulkCount, "too big bulk count string"),
        (ProtocolError::ExpectedDollar(b'x'), "expected '$', got 'x'"),
        (
            ProtocolError::ExpectedDollar(b'\r'),
            "expected '$', got ' '",
        ),
        (
            ProtocolError::ExpectedDollar(b'\n'),
            "expected '$', got ' '",
        ),
        (ProtocolError::InvalidBulkLength, "invalid bulk length"),
        (
            ProtocolError::UnauthenticatedBulkLength,
            "unauthenticated bulk length",
        ),
    ];
    for (e, msg) in cases {
        assert_eq!(e.to_string(), format!("ERR Protocol error: {msg}"));
    }
    for b in 0..=255u8 {
        let msg = ProtocolError::ExpectedDollar(b).to_string();
        assert!(!msg.contains(['\r', '\n']), "{msg:?}");
    }
}

// ---- authentication ----

#[test]
fn unauthenticated_limits() {
    let mut p = RequestParser::new(Limits::default());
    let mut ten = b"*10\r\n".to_vec();
    for _ in 0..10 {
        ten.extend_from_slice(b"$1\r\nx\r\n");
    }
    let (reqs, res, _) = parse_all(&mut p, &ten);
    assert_eq!((reqs.len(), res), (1, Ok(())));

    assert_eq!(
        err_of(&mut RequestParser::new(Limits::default()), b"*11\r\n").to_string(),
        "ERR Protocol error: unauthenticated multibulk length"
    );
    // The general limit is checked first.
    assert_eq!(
        err_of(&mut RequestParser::new(Limits::default()), b"*1048577\r\n"),
        ProtocolError::InvalidMultibulkLength
    );

    let mut ok = b"*1\r\n$16384\r\n".to_vec();
    ok.extend(std::iter::repeat_n(b'v', 16384));
    ok.extend_from_slice(b"\r\n");
    let (reqs, res, _) = parse_all(&mut RequestParser::new(Limits::default()), &ok);
    assert_eq!((reqs.len(), res), (1, Ok(())));

    assert_eq!(
        err_of(
            &mut RequestParser::new(Limits::default()),
            b"*1\r\n$16385\r\n"
        )
        .to_string(),
        "ERR Protocol error: unauthenticated bulk length"
    );
    assert_eq!(
        err_of(
            &mut RequestParser::new(Limits::default()),
            b"*1\r\n$536870913\r\n"
        ),
        ProtocolError::InvalidBulkLength
    );
    // Inline requests are bounded by their line length only.
    let (reqs, res, _) = parse_all(
        &mut RequestParser::new(Limits::default()),
        b"a b c d e f g h i j k l\n",
    );
    assert_eq!((reqs[0].len(), res), (12, Ok(())));
}

#[test]
fn authentication_lifts_the_limits() {
    let mut p = RequestParser::new(Limits::default());
    let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*11\r\n"[..]);
    assert_eq!(p.parse(&mut buf), Ok(Some(args(&[b"AUTH", b"pw"]))));
    p.set_authenticated(true);
    assert_eq!(p.parse(&mut buf), Ok(None));
    buf.extend_from_slice(b"$20000\r\n");
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.needed(), 20002);

    p.set_authenticated(false);
    let mut buf = BytesMut::from(&b"*1\r\n$1\r\nx\r\n"[..]);
    let mut q = RequestParser::new(Limits::default());
    assert_eq!(q.parse(&mut buf), Ok(Some(args(&[b"x"]))));
    let mut buf = BytesMut::from(&b"*11\r\n"[..]);
    assert_eq!(
        q.parse(&mut buf),
        Err(ProtocolError::UnauthenticatedMultibulkLength)
    );
}

// ---- small limits ----

#[test]
fn small_limits() {
    let limits = Limits {
        max_bulk_len: 5,
        max_multibulk_len: 3,
        max_inline_len: 8,
    };
    let mut p = authed(limits);
    let (reqs, res, _) = parse_all(
        &mut p,
        b"*3\r\n$5\r\nabcde\r\n$0\r\n\r\n$1\r\nx\r\n12345678\n",
    );
    assert_eq!(res, Ok(()));
    assert_eq!(
        reqs,
        vec![args(&[b"abcde", b"", b"x"]), args(&[b"12345678"])]
    );

    assert_eq!(
        err_of(&mut authed(limits), b"*4\r\n"),
        ProtocolError::InvalidMultibulkLength
    );
    assert_eq!(
        err_of(&mut authed(limits), b"*1\r\n$6\r\n"),
        ProtocolError::InvalidBulkLength
    );
    assert_eq!(
        err_of(&mut authed(limits), b"123456789"),
        ProtocolError::TooBigInlineRequest
    );
    // "12345678\r" is 9 bytes before the '\n': too long, as in Redis.
    assert_eq!(
        err_of(&mut authed(limits), b"12345678\r\n"),
        ProtocolError::TooBigInlineRequest
    );
    assert_eq!(
        err_of(&mut authed(limits), b"*00000001"),
        ProtocolError::TooBigMultibulkCount
    );
    assert_eq!(
        err_of(&mut authed(limits), b"*1\r\n$00000001"),
        ProtocolError::TooBigBulkCount
    );
    // Waits while within the limit.
    let (reqs, res, rest) = parse_all(&mut authed(limits), b"*1\r\n$0000000");
    assert_eq!((reqs.len(), res, rest.len()), (0, Ok(()), 8));

    let tiny = Limits {
        max_bulk_len: 0,
        max_multibulk_len: 1,
        max_inline_len: 2,
    };
    assert_eq!(
        parse_all(&mut authed(tiny), b"*1\r\n$0\r\n\r\n").0,
        vec![args(&[b""])]
    );
    assert_eq!(
        err_of(&mut authed(tiny), b"*10\r\n"),
        ProtocolError::TooBigMultibulkCount
    );
}

#[test]
fn redis_integer_rules() {
    for (s, v) in [
        (&b"0"[..], Some(0)),
        (b"1", Some(1)),
        (b"-1", Some(-1)),
        (b"10", Some(10)),
        (b"9223372036854775807", Some(i64::MAX)),
        (b"-9223372036854775808", Some(i64::MIN)),
        (b"9223372036854775808", None),
        (b"-9223372036854775809", None),
        (b"18446744073709551616", None),
        (b"00", None),
        (b"01", None),
        (b"-0", None),
        (b"-", None),
        (b"", None),
        (b"+1", None),
        (b" 1", None),
        (b"1 ", None),
        (b"1a", None),
        (b"0x10", None),
        (b"123456789012345678901", None),
    ] {
        assert_eq!(parse_i64(s), v, "{:?}", String::from_utf8_lossy(s));
    }
}

// ---- robustness ----

/// Seeded random choices for the robustness tests.
struct XorShift(rand::rngs::SmallRng);

impl XorShift {
    fn seeded(seed: u64) -> Self {
        XorShift(rand::SeedableRng::seed_from_u64(seed))
    }

    fn next(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        rand::Rng::gen_range(&mut self.0, 0..n)
    }
}

/// Runs `input` through a parser in random chunks, checking invariants.
fn feed_randomly(rng: &mut XorShift, limits: Limits, authenticated: bool, input: &[u8]) {
    let mut p = RequestParser::new(limits);
    p.set_authenticated(authenticated);
    let mut buf = BytesMut::new();
    let mut pos = 0;
    while pos < input.len() {
        let n = 1 + rng.below(16);
        let end = (pos + n).min(input.len());
        buf.extend_from_slice(&input[pos..end]);
        pos = end;
        loop {
            let before = buf.len();
            match p.parse(&mut buf) {
                Ok(Some(req)) => {
                    assert!(!req.is_empty());
                    assert!(buf.len() < before);
                    for arg in &req {
                        assert!(arg.len() <= limits.max_bulk_len.max(limits.max_inline_len));
                    }
                }
                Ok(None) => {
                    assert!(p.needed() <= limits.max_bulk_len + 2);
                    break;
                }
                Err(e) => {
                    assert!(!e.to_string().contains(['\r', '\n']));
                    assert_eq!(p.parse(&mut buf), Err(e));
                    return;
                }
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift::seeded(0x2545_f491_4f6c_dd1d);
    let alphabet = b"*$\r\n-0123456789 \t\"'\\xaA\x00\xff";
    let limits = Limits {
        max_bulk_len: 64,
        max_multibulk_len: 16,
        max_inline_len: 48,
    };
    for round in 0..20_000 {
        let len = rng.below(200);
        let biased = round % 2 == 0;
        let input: Vec<u8> = (0..len)
            .map(|_| {
                if biased {
                    alphabet[rng.below(alphabet.len())]
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        let authenticated = round % 3 != 0;
        feed_randomly(&mut rng, limits, authenticated, &input);
        feed_randomly(&mut rng, Limits::default(), authenticated, &input);
    }
}

#[test]
fn mutated_requests_never_panic() {
    let mut rng = XorShift::seeded(0x9e37_79b9_7f4a_7c15);
    let seeds: &[&[u8]] = &[
        b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*1\r\n$4\r\nPING\r\n",
        b"SET \"a\\x41 b\" 'c\\'d' e\r\nPING\r\n",
        b"*2\r\n$0\r\n\r\n$2\r\n\r\n\r\n*0\r\n*-1\r\n",
    ];
    let limits = Limits {
        max_bulk_len: 32,
        max_multibulk_len: 8,
        max_inline_len: 40,
    };
    for _ in 0..20_000 {
        let mut input = seeds[rng.below(seeds.len())].to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(input.len() + 1);
            match rng.below(3) {
                0 if at < input.len() => input[at] = rng.next() as u8,
                1 if at < input.len() => {
                    input.remove(at);
                }
                _ => input.insert(at, b"*$\r\n-9\"'\\"[rng.below(9)]),
            }
        }
        feed_randomly(&mut rng, limits, true, &input);
        feed_randomly(&mut rng, Limits::default(), false, &input);
    }
}
