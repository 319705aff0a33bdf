//! The table itself: its key schema checked (or the table created, on-demand, with TTL on
//! `exp`) when the backend connects, and the format item holding the layout version.

use std::time::Duration;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;

use super::api::{self, classify, CallError};
use super::layout::{
    build_failed, get_num, key_item, num, put_new_action, EXPIRES, FORMAT, FORMAT_PK, LOG_SHARDS,
    PK, SINGLE_SK, SK,
};
use super::options::DynamoDbOptions;
use super::retry::CallFailure;
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{Failure, StorageError};

/// Layout version stored in the format item, checked on open.
const FORMAT_VERSION: u64 = 1;

impl DynamoDbStorage {
    /// Writes the format item (with `log_shards`, clamped to 1 to
    /// [`MAX_LOG_SHARDS`](super::MAX_LOG_SHARDS)), or checks the one there; returns the
    /// number of shards of the table's commit log (one for a table written before shards
    /// existed).
    pub(super) async fn check_format(&self, log_shards: usize) -> Result<usize, StorageError> {
        let log_shards = log_shards.clamp(1, super::MAX_LOG_SHARDS);
        let key = key_item(FORMAT_PK.to_vec(), SINGLE_SK.to_vec());
        let mut item = key.clone();
        item.insert(FORMAT.into(), num(FORMAT_VERSION));
        item.insert(LOG_SHARDS.into(), num(log_shards as u64));
        let action = put_new_action(&self.table, item)?;
        let existing = match self
            .retrying("PutItem", || self.api.write(action.clone()))
            .await
        {
            Ok(()) => return Ok(log_shards),
            Err(CallFailure {
                last: CallError::ConditionFailed(Some(item)),
                ..
            }) => Some(item),
            Err(CallFailure {
                last: CallError::ConditionFailed(None),
                ..
            }) => self.get_item(key).await?,
            Err(f) => return Err(self.failed(f, false)),
        };
        let found = existing
            .as_ref()
            .map(|i| get_num(i, FORMAT))
            .transpose()?
            .flatten();
        match found {
            Some(FORMAT_VERSION) => {
                let shards = existing
                    .as_ref()
                    .map(|i| get_num(i, LOG_SHARDS))
                    .transpose()?
                    .flatten()
                    .unwrap_or(1);
                usize::try_from(shards)
                    .ok()
                    .filter(|n| (1..=super::MAX_LOG_SHARDS).contains(n))
                    .ok_or_else(|| {
                        StorageError::Corrupt(Failure::new(
                            BACKEND,
                            format!("table {} says its log has {shards} shards", self.table),
                        ))
                    })
            }
            other => Err(StorageError::Io(Failure::new(
                BACKEND,
                format!(
                    "table {} holds aft layout version {other:?}; this build reads version \
                     {FORMAT_VERSION}",
                    self.table
                ),
            ))),
        }
    }
}

/// Checks the table's key schema; creates the table (and enables TTL) if it is missing and
/// `create_table` is set.
pub(super) async fn ensure_table(
    client: &Client,
    options: &DynamoDbOptions,
) -> Result<(), StorageError> {
    use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
    let table = &options.table;
    let described = client.describe_table().table_name(table).send().await;
    let description = match described {
        Ok(output) => output.table,
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(DescribeTableError::ResourceNotFoundException(_))
            ) =>
        {
            if !options.create_table {
                return Err(StorageError::Io(Failure::new(
                    BACKEND,
                    format!(
                        "table {table} does not exist (create it, see the README, or add \
                         create_table=true to the backend URL)"
                    ),
                )));
            }
            create_table(client, table).await?;
            return Ok(());
        }
        Err(e) => return Err(setup_error(&format!("DescribeTable {table}"), e)),
    };
    let Some(description) = description else {
        return Err(StorageError::Io(Failure::new(
            BACKEND,
            format!("DescribeTable {table} returned no table"),
        )));
    };
    let schema_ok = {
        let keys = description.key_schema();
        let attrs = description.attribute_definitions();
        let has_key = |name: &str, kind: KeyType| {
            keys.iter()
                .any(|k| k.attribute_name() == name && *k.key_type() == kind)
        };
        let is_binary = |name: &str| {
            attrs.iter().any(|a| {
                a.attribute_name() == name && *a.attribute_type() == ScalarAttributeType::B
            })
        };
        keys.len() == 2
            && has_key(PK, KeyType::Hash)
            && has_key(SK, KeyType::Range)
            && is_binary(PK)
            && is_binary(SK)
    };
    if !schema_ok {
        return Err(StorageError::Io(Failure::new(
            BACKEND,
            format!(
                "table {table} must have partition key pk (binary) and sort key sk (binary); \
                 see the README"
            ),
        )));
    }
    if description.table_status() == Some(&TableStatus::Creating) {
        wait_active(client, table).await?;
    }
    if options.create_table {
        enable_ttl(client, table).await?;
    }
    Ok(())
}

/// Creates the table (on-demand billing), waits until it is active, and enables TTL.
async fn create_table(client: &Client, table: &str) -> Result<(), StorageError> {
    use aws_sdk_dynamodb::operation::create_table::CreateTableError;
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(PK)
                .attribute_type(ScalarAttributeType::B)
                .build()
                .map_err(build_failed)?,
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(SK)
                .attribute_type(ScalarAttributeType::B)
                .build()
                .map_err(build_failed)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(PK)
                .key_type(KeyType::Hash)
                .build()
                .map_err(build_failed)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(SK)
                .key_type(KeyType::Range)
                .build()
                .map_err(build_failed)?,
        )
        .send()
        .await;
    match created {
        Ok(_) => {}
        // Created meanwhile by another node.
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(CreateTableError::ResourceInUseException(_))
            ) => {}
        Err(e) => return Err(setup_error(&format!("CreateTable {table}"), e)),
    }
    wait_active(client, table).await?;
    enable_ttl(client, table).await
}

/// Waits (up to five minutes) until the table is `ACTIVE`.
async fn wait_active(client: &Client, table: &str) -> Result<(), StorageError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let output = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| setup_error(&format!("DescribeTable {table}"), e))?;
        if output.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StorageError::Unavailable(Failure::new(
                BACKEND,
                format!("table {table} did not become ACTIVE within 5 minutes"),
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Enables TTL on `exp`, unless it is on already.
async fn enable_ttl(client: &Client, table: &str) -> Result<(), StorageError> {
    let status = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| setup_error(&format!("DescribeTimeToLive {table}"), e))?;
    let current = status
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status());
    if matches!(
        current,
        Some(TimeToLiveStatus::Enabled) | Some(TimeToLiveStatus::Enabling)
    ) {
        return Ok(());
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(EXPIRES)
        .build()
        .map_err(build_failed)?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| setup_error(&format!("UpdateTimeToLive {table}"), e))?;
    Ok(())
}

/// The [`StorageError`] of a set-up request (not retried: connecting fails fast).
fn setup_error<E>(what: &str, error: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match classify(what, error) {
        CallError::Retry { message, cause, .. } => {
            StorageError::Unavailable(api::failure(message, cause))
        }
        CallError::Fatal { message, cause } => StorageError::Io(api::failure(message, cause)),
        other => StorageError::Io(Failure::new(BACKEND, format!("{what}: {other:?}"))),
    }
}
