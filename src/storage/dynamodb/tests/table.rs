//! Connecting: missing tables, other schemas, table creation with TTL, the format item.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};

use super::*;
use crate::storage::testkit::conformance::{self, get_one, vid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_and_wrong_schema_are_clear_errors() {
    let emulator = Emulator::start().await;
    let mut options = emulator.options("nope");
    options.create_table = false;
    let error = DynamoDbStorage::connect(options)
        .await
        .expect_err("no table");
    assert!(
        matches!(&error, StorageError::Io(m) if m.message().contains("does not exist") && m.message().contains("create_table=true")),
        "{error}"
    );
    assert_eq!(error.backend(), Some(BACKEND));
    assert!(
        error.to_string().contains("dynamodb: table nope"),
        "{error}"
    );
    // A table with another key schema.
    let client = sdk_client(&emulator.options("other"))
        .await
        .expect("client");
    client
        .create_table()
        .table_name("other")
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .expect("schema"),
        )
        .send()
        .await
        .expect("create other");
    let error = DynamoDbStorage::connect(emulator.options("other"))
        .await
        .expect_err("wrong schema");
    assert!(
        matches!(&error, StorageError::Io(m) if m.message().contains("partition key pk (binary)")),
        "{error}"
    );
    // An unreachable endpoint: retried, then unavailable.
    let mut options = emulator.options("aft");
    options.endpoint = Some(format!(
        "http://127.0.0.1:{}",
        crate::storage::testkit::redis_server::free_port()
    ));
    let error = DynamoDbStorage::connect(options)
        .await
        .expect_err("unreachable");
    assert!(matches!(error, StorageError::Unavailable(_)), "{error}");
    assert_eq!(error.backend(), Some(BACKEND));
    assert!(
        std::error::Error::source(&error).is_some(),
        "the SDK's error is kept: {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_enables_ttl_and_reopening_checks_the_format() {
    let emulator = Emulator::start().await;
    let first = DynamoDbStorage::connect(emulator.options("ttl1"))
        .await
        .expect("create");
    let client = sdk_client(&emulator.options("ttl1")).await.expect("client");
    let ttl = client
        .describe_time_to_live()
        .table_name("ttl1")
        .send()
        .await
        .expect("describe ttl");
    let description = ttl.time_to_live_description().expect("ttl description");
    assert_eq!(description.attribute_name(), Some(EXPIRES));
    conformance::commit_ok(&first, batch(vid(1, 1), Some(b"i"), &[(b"k", b"v")])).await;
    first.close().await.expect("close");
    // Without create_table: the existing table is used as it is.
    let mut options = emulator.options("ttl1");
    options.create_table = false;
    let second = DynamoDbStorage::connect(options).await.expect("reopen");
    assert_eq!(
        get_one(&second, b"k", vid(1, 1)).await,
        Some(Bytes::from_static(b"v"))
    );
    // The idempotency entry carries a TTL beyond the retention.
    let entry = second
        .get_item(key_item(idempotency_pk(b"i"), SINGLE_SK.to_vec()))
        .await
        .expect("get")
        .expect("entry");
    let expires = get_num(&entry, EXPIRES).expect("number").expect("exp");
    assert!(expires > now_ms() / 1000 + 3000, "{expires}");
    // A table holding another layout version is refused.
    let mut format = key_item(FORMAT_PK.to_vec(), SINGLE_SK.to_vec());
    format.insert(FORMAT.into(), num(99));
    second
        .write_one(put_action("ttl1", format).expect("action"))
        .await
        .map_err(|f| second.failed(f, false))
        .expect("overwrite format");
    let error = DynamoDbStorage::connect(emulator.options("ttl1"))
        .await
        .expect_err("format");
    assert!(
        matches!(&error, StorageError::Io(m) if m.message().contains("layout version")),
        "{error}"
    );
}
