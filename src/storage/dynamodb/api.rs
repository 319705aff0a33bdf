//! The requests the backend sends, behind the [`Api`] trait (tests wrap it to inject faults),
//! their implementation on the AWS SDK, how an SDK error is classified for the retry loop, and
//! the SDK client itself.

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{KeysAndAttributes, TransactWriteItem, WriteRequest};
use aws_sdk_dynamodb::Client;

use super::layout::{bin, Item, PK, SK};
use super::options::{CredentialSource, DynamoDbOptions};
use super::BACKEND;
use crate::storage::{BoxFuture, Failure, StorageError};

/// A `Query` page and the key to continue from.
pub(super) type Page = (Vec<Item>, Option<Item>);

/// A `BatchGetItem` answer: the items found and the keys left unprocessed.
pub(super) type Fetched = (Vec<Item>, Vec<Item>);

/// The SDK's error behind a failed attempt, kept as the source of the [`StorageError`].
pub(super) type Cause = Arc<dyn Error + Send + Sync>;

/// Why one attempt of a request failed.
#[derive(Clone, Debug)]
pub(super) enum CallError {
    /// Worth another attempt. `throttled`: refused by throttling (nothing applied);
    /// `conflict`: a transaction conflict (nothing applied); `ambiguous`: the request may have
    /// been applied (timeout, lost connection, 5xx after sending).
    Retry {
        message: String,
        throttled: bool,
        conflict: bool,
        ambiguous: bool,
        cause: Option<Cause>,
    },
    /// A single-item write's condition failed; the current item, if DynamoDB returned it.
    ConditionFailed(Option<Item>),
    /// `TransactWriteItems` was cancelled: one reason per action, in order.
    Canceled(Vec<Reason>),
    /// Not worth retrying: validation error, missing table, refused credentials…
    Fatal {
        message: String,
        cause: Option<Cause>,
    },
}

impl CallError {
    /// A failure not worth retrying, with no error behind it.
    pub(super) fn fatal(message: impl Into<String>) -> Self {
        CallError::Fatal {
            message: message.into(),
            cause: None,
        }
    }
}

/// A failure of this backend: `message`, caused by `cause` if there is one.
pub(super) fn failure(message: impl Into<String>, cause: Option<Cause>) -> Failure {
    let failure = Failure::new(BACKEND, message);
    match cause {
        Some(cause) => failure.because(cause),
        None => failure,
    }
}

/// One action's cancellation reason.
#[derive(Clone, Debug)]
pub(super) struct Reason {
    /// DynamoDB's code: `None`, `ConditionalCheckFailed`, `TransactionConflict`, …
    pub(super) code: String,
    /// The item, when the action asked for it on a failed condition.
    pub(super) item: Option<Item>,
}

impl Reason {
    /// Whether the action's condition failed.
    pub(super) fn condition_failed(&self) -> bool {
        self.code == "ConditionalCheckFailed"
    }
}

/// A query of one partition, in sort-key order.
#[derive(Clone, Debug)]
pub(super) struct QueryRequest {
    /// The partition.
    pub(super) pk: Vec<u8>,
    /// Only sort keys greater than this one.
    pub(super) after: Option<Vec<u8>>,
    /// Only sort keys at least this one.
    pub(super) from: Option<Vec<u8>>,
    /// Attributes to return (`None`: all).
    pub(super) projection: Option<&'static [&'static str]>,
    /// Items in the page at most.
    pub(super) limit: i32,
    /// Where the previous page ended (`None`: the first page).
    pub(super) start: Option<Item>,
}

/// The DynamoDB requests the backend uses, on its one table.
pub(super) trait Api: Send + Sync + 'static {
    /// `BatchWriteItem`; returns the unprocessed requests.
    fn batch_write(
        &self,
        requests: Vec<WriteRequest>,
    ) -> BoxFuture<'_, Result<Vec<WriteRequest>, CallError>>;

    /// Consistent `BatchGetItem`; returns the items found and the unprocessed keys.
    fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: Option<&'static [&'static str]>,
    ) -> BoxFuture<'_, Result<Fetched, CallError>>;

    /// `TransactWriteItems` with a client request token.
    fn transact_write(
        &self,
        items: Vec<TransactWriteItem>,
        token: String,
    ) -> BoxFuture<'_, Result<(), CallError>>;

    /// Consistent `Query`; returns a page and the key to continue from.
    fn query(&self, request: QueryRequest) -> BoxFuture<'_, Result<Page, CallError>>;

    /// Consistent `GetItem`.
    fn get(&self, key: Item) -> BoxFuture<'_, Result<Option<Item>, CallError>>;

    /// `PutItem`, `UpdateItem` or `DeleteItem`, described as a transaction action (whose
    /// condition, if any, fails with [`CallError::ConditionFailed`]).
    fn write(&self, write: TransactWriteItem) -> BoxFuture<'_, Result<(), CallError>>;
}

/// [`Api`] on the AWS SDK.
pub(super) struct SdkApi {
    pub(super) client: Client,
    pub(super) table: String,
}

impl Api for SdkApi {
    fn batch_write(
        &self,
        requests: Vec<WriteRequest>,
    ) -> BoxFuture<'_, Result<Vec<WriteRequest>, CallError>> {
        Box::pin(async move {
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| classify("BatchWriteItem", e))?;
            Ok(output
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default())
        })
    }

    fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: Option<&'static [&'static str]>,
    ) -> BoxFuture<'_, Result<Fetched, CallError>> {
        Box::pin(async move {
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true);
            if let Some(names) = projection {
                let (expression, names) = projection_expression(names);
                request = request
                    .projection_expression(expression)
                    .set_expression_attribute_names(Some(names));
            }
            let request = request.build().map_err(|e| CallError::Fatal {
                message: e.to_string(),
                cause: Some(Arc::new(e)),
            })?;
            let output = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| classify("BatchGetItem", e))?;
            let found = output
                .responses
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            let unprocessed = output
                .unprocessed_keys
                .and_then(|mut m| m.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
            Ok((found, unprocessed))
        })
    }

    fn transact_write(
        &self,
        items: Vec<TransactWriteItem>,
        token: String,
    ) -> BoxFuture<'_, Result<(), CallError>> {
        Box::pin(async move {
            use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(token)
                .send()
                .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) => match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                        Err(CallError::Canceled(
                            c.cancellation_reasons()
                                .iter()
                                .map(|r| Reason {
                                    code: r.code().unwrap_or("None").to_owned(),
                                    item: r.item().cloned(),
                                })
                                .collect(),
                        ))
                    }
                    _ => Err(classify("TransactWriteItems", e)),
                },
            }
        })
    }

    fn query(&self, request: QueryRequest) -> BoxFuture<'_, Result<Page, CallError>> {
        Box::pin(async move {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .limit(request.limit)
                .set_exclusive_start_key(request.start)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", bin(request.pk));
            let mut condition = "#pk = :pk".to_owned();
            if let Some(after) = request.after {
                condition.push_str(" AND #sk > :sk");
                query = query
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":sk", bin(after));
            } else if let Some(from) = request.from {
                condition.push_str(" AND #sk >= :sk");
                query = query
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":sk", bin(from));
            }
            if let Some(names) = request.projection {
                let (expression, aliases) = projection_expression(names);
                for (alias, name) in aliases {
                    query = query.expression_attribute_names(alias, name);
                }
                query = query.projection_expression(expression);
            }
            let output = query
                .key_condition_expression(condition)
                .send()
                .await
                .map_err(|e| classify("Query", e))?;
            Ok((output.items.unwrap_or_default(), output.last_evaluated_key))
        })
    }

    fn get(&self, key: Item) -> BoxFuture<'_, Result<Option<Item>, CallError>> {
        Box::pin(async move {
            let output = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| classify("GetItem", e))?;
            Ok(output.item)
        })
    }

    fn write(&self, write: TransactWriteItem) -> BoxFuture<'_, Result<(), CallError>> {
        Box::pin(async move {
            use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
            use aws_sdk_dynamodb::operation::put_item::PutItemError;
            use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
            let old = Some(aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld);
            if let Some(put) = write.put {
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(put.item))
                    .set_condition_expression(put.condition_expression)
                    .set_expression_attribute_names(put.expression_attribute_names)
                    .set_expression_attribute_values(put.expression_attribute_values)
                    .set_return_values_on_condition_check_failure(old)
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(PutItemError::ConditionalCheckFailedException(c)) => {
                            CallError::ConditionFailed(c.item().cloned())
                        }
                        _ => classify("PutItem", e),
                    })?;
            } else if let Some(update) = write.update {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(update.key))
                    .update_expression(update.update_expression)
                    .set_condition_expression(update.condition_expression)
                    .set_expression_attribute_names(update.expression_attribute_names)
                    .set_expression_attribute_values(update.expression_attribute_values)
                    .set_return_values_on_condition_check_failure(old)
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                            CallError::ConditionFailed(c.item().cloned())
                        }
                        _ => classify("UpdateItem", e),
                    })?;
            } else if let Some(delete) = write.delete {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(delete.key))
                    .set_condition_expression(delete.condition_expression)
                    .set_expression_attribute_names(delete.expression_attribute_names)
                    .set_expression_attribute_values(delete.expression_attribute_values)
                    .set_return_values_on_condition_check_failure(old)
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(DeleteItemError::ConditionalCheckFailedException(c)) => {
                            CallError::ConditionFailed(c.item().cloned())
                        }
                        _ => classify("DeleteItem", e),
                    })?;
            } else {
                return Err(CallError::fatal("empty write"));
            }
            Ok(())
        })
    }
}

/// A projection of `names` (aliased, as some are reserved words) and its aliases.
fn projection_expression(names: &[&str]) -> (String, HashMap<String, String>) {
    let mut expression = String::new();
    let mut map = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            expression.push_str(", ");
        }
        let alias = format!("#p{i}");
        expression.push_str(&alias);
        map.insert(alias, (*name).to_owned());
    }
    (expression, map)
}

/// Maps an SDK error to what the retry loop needs to know; the error itself becomes the
/// cause.
pub(super) fn classify<E>(operation: &str, error: SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    // `(throttled, conflict, ambiguous)` of a retryable failure, `None` if fatal; and the
    // service's own words, when it answered.
    let ambiguous = Some((false, false, true));
    let (verdict, said) = match &error {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => (ambiguous, None),
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
            (ambiguous, None)
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            // The SDK's context would add the whole raw response.
            let said = format!(
                "{operation}: {code}: {} (HTTP {status})",
                service.err().message().unwrap_or("no message")
            );
            let verdict = match code {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded" => Some((true, false, false)),
                "TransactionConflictException" | "TransactionInProgressException" => {
                    Some((false, true, false))
                }
                "InternalServerError" | "ServiceUnavailable" => ambiguous,
                _ if status >= 500 => ambiguous,
                _ => None,
            };
            (verdict, Some(said))
        }
        // Construction failures, other dispatch failures, and what later SDKs add.
        _ => (None, None),
    };
    let message = said.unwrap_or_else(|| format!("{operation}: {}", DisplayErrorContext(&error)));
    let cause: Option<Cause> = Some(Arc::new(error));
    match verdict {
        Some((throttled, conflict, ambiguous)) => CallError::Retry {
            message,
            throttled,
            conflict,
            ambiguous,
            cause,
        },
        None => CallError::Fatal { message, cause },
    }
}

/// The SDK client the backend uses for `options`: TLS with rustls, the SDK's retries off (the
/// backend retries and counts), per-attempt timeouts, the chosen credentials and endpoint.
/// Public for tools and benchmarks that talk to the same table.
pub async fn sdk_client(options: &DynamoDbOptions) -> Result<Client, StorageError> {
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
    use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3).min(options.attempt_timeout))
        .operation_attempt_timeout(options.attempt_timeout)
        .build();
    // Our own loop retries (and counts); the SDK's would hide throttling from it.
    let retries = RetryConfig::disabled();
    match &options.credentials {
        CredentialSource::Static {
            access_key_id,
            secret_access_key,
        } => {
            let region = options
                .region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
                .unwrap_or_else(|| "us-east-1".to_owned());
            let mut config = aws_sdk_dynamodb::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(region))
                .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                    access_key_id,
                    secret_access_key,
                    None,
                    None,
                    "aft-static",
                ))
                .http_client(http)
                .timeout_config(timeouts)
                .retry_config(retries);
            if let Some(endpoint) = &options.endpoint {
                config = config.endpoint_url(endpoint);
            }
            Ok(Client::from_conf(config.build()))
        }
        CredentialSource::Chain => {
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http)
                .timeout_config(timeouts)
                .retry_config(retries);
            if let Some(region) = &options.region {
                loader = loader.region(Region::new(region.clone()));
            }
            if let Some(endpoint) = &options.endpoint {
                loader = loader.endpoint_url(endpoint);
            }
            let shared = loader.load().await;
            if shared.region().is_none() {
                return Err(StorageError::Io(Failure::new(
                    BACKEND,
                    "no AWS region: add region=… to the backend URL or set AWS_REGION",
                )));
            }
            Ok(Client::new(&shared))
        }
    }
}
