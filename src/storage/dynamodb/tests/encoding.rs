//! URLs and encodings, without a table.

use super::*;
use crate::storage::record;
use crate::storage::testkit::conformance::vid;

#[test]
fn urls_parse_into_options() {
    let o = DynamoDbOptions::from_url(
        "dynamodb://aft?endpoint=http://127.0.0.1:8000&region=us-east-1&create_table=true",
    )
    .expect("parse");
    assert_eq!(o.table, "aft");
    assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:8000"));
    assert_eq!(o.region.as_deref(), Some("us-east-1"));
    assert!(o.create_table);
    assert!(matches!(o.credentials, CredentialSource::Static { .. }));

    let o = DynamoDbOptions::from_url("dynamodb://my-table.v2").expect("parse");
    assert_eq!(o.credentials, CredentialSource::Chain);
    assert_eq!((o.region, o.endpoint, o.create_table), (None, None, false));

    let o = DynamoDbOptions::from_url(
        "dynamodb://t_1?endpoint=http%3A%2F%2Flocalhost%3A9&credentials=chain&max_attempts=3&timeout_ms=250",
    )
    .expect("parse");
    assert_eq!(o.endpoint.as_deref(), Some("http://localhost:9"));
    assert_eq!(o.credentials, CredentialSource::Chain);
    assert_eq!(o.max_attempts, 3);
    assert_eq!(o.attempt_timeout, Duration::from_millis(250));

    for bad in [
        "redis://x",
        "dynamodb://",
        "dynamodb://ab",
        "dynamodb://a b c",
        "dynamodb://aft?nope=1",
        "dynamodb://aft?create_table=maybe",
        "dynamodb://aft?credentials=magic",
        "dynamodb://aft?max_attempts=0",
        "dynamodb://aft?timeout_ms=x",
        "dynamodb://aft?region=",
        "dynamodb://aft?endpoint=%zz",
    ] {
        assert!(DynamoDbOptions::from_url(bad).is_err(), "{bad}");
    }
    let debug = format!(
        "{:?}",
        CredentialSource::Static {
            access_key_id: "AKIA".into(),
            secret_access_key: "hunter2".into()
        }
    );
    assert!(
        debug.contains("AKIA") && !debug.contains("hunter2"),
        "{debug}"
    );
}

#[test]
fn encodings_round_trip() {
    // Records are the shared codec's; what the backend relies on is that the part of a
    // record in its head, when its chunks are gone, yields the idempotency key if the key
    // fits in it, and is refused (not misread) if it does not.
    for (key, body) in [
        (None, &b""[..]),
        (Some(&b""[..]), b"x"),
        (Some(b"k\0"), b"body"),
    ] {
        let commit = CommitRecord {
            id: vid(1, 1),
            idempotency_key: key.map(Bytes::copy_from_slice),
            body: Bytes::copy_from_slice(body),
        };
        let encoded = record::encode(BACKEND, &commit).expect("encode");
        assert_eq!(record::split(&encoded), Ok((key, body)));
        if let Some(key) = key.filter(|k| !k.is_empty()) {
            let head = 6 + key.len();
            assert_eq!(record::split(&encoded[..head]), Ok((Some(key), &b""[..])));
            assert!(record::split(&encoded[..head - 1]).is_err());
        }
    }
    assert!(record::split(&[9, 0]).is_err());
    assert!(record::split(&[1, 7]).is_err());

    let plan = MarkerPlan {
        record_chunks: 3,
        versions: vec![(b"".to_vec(), 0), (vec![0xff; 70_000], 2)],
    };
    let encoded = encode_marker(&plan).expect("encode");
    assert_eq!(decode_marker(&encoded).expect("decode"), plan);
    assert!(decode_marker(&encoded[..encoded.len() - 1]).is_err());
    assert!(decode_marker(&[encoded.as_slice(), &[0]].concat()).is_err());

    assert_eq!(chunks_needed(0, 10), 0);
    assert_eq!(chunks_needed(10, 10), 0);
    assert_eq!(chunks_needed(11, 10), 1);
    assert_eq!(chunks_needed(30, 10), 2);
    let (head, chunks) = split_payload(b"v".to_vec(), b"s".to_vec(), &[7; 25], 10, vec![]);
    assert_eq!(chunks.len(), 2);
    assert_eq!(get_num(&head, CHUNKS).expect("n"), Some(2));
    assert_eq!(get_bin(&chunks[1], VALUE).expect("v"), &[7; 5]);

    let token = request_token("g", vid(u64::MAX, u128::MAX), None);
    assert!(token.len() <= 36 && token.starts_with("aftg-"), "{token}");
    assert_ne!(
        token,
        request_token("g", vid(u64::MAX, u128::MAX - 1), None)
    );
    assert_ne!(version_pk(&[1; 1025]), version_pk(&[1; 1026]));
    assert_eq!(version_pk(&[1; 1025]).len(), 33);
    assert_eq!(version_pk(b"ab"), b"vab");
}
