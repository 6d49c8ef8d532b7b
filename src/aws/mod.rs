//! AWS clients and the errors of their calls.
//!
//! Region, credentials and endpoint come from the SDK's own variables (`AWS_REGION`,
//! `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SQS`, …).
//! The SDK's retries are turned off: [`crate::retry`] owns every retry, so none is
//! doubled and every one is counted. TLS (rustls) is the SDK's default transport.

pub mod attribute;
pub mod classify;
pub mod entries;
pub mod fake;
pub mod requests;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response;

use crate::metrics::Metrics;
use crate::outcome::{ErrorClass, Operation};
use crate::retry::{BatchReply, Classified};

pub use attribute::{Attribute, AttributeValue, MAX_ATTRIBUTES};
pub use classify::{classify, classify_entry, classify_sdk, FailureKind};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// S3 calls need a longer attempt bound than SQS sends: a megabyte upload.
pub const S3_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP connection pool of every AWS client (`FORWARDER_HTTP_POOL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpPool {
    /// Idle connections kept per host (`FORWARDER_HTTP_POOL_MAX_IDLE`). The pollers and
    /// senders reuse them; past it, a finished connection is closed.
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept (`FORWARDER_HTTP_POOL_IDLE_TIMEOUT`). Below
    /// the 60 s after which AWS's load balancers close idle connections, so a reused
    /// connection is not one the server just closed.
    pub idle_timeout: Duration,
}

impl Default for HttpPool {
    fn default() -> Self {
        Self {
            max_idle_per_host: 64,
            idle_timeout: Duration::from_secs(50),
        }
    }
}

/// The SDK configuration loader, reading the environment, with SDK retries off.
///
/// `attempt_timeout` bounds one HTTP attempt; long polls override it per call.
pub fn sdk_loader(attempt_timeout: Duration) -> ConfigLoader {
    sdk_loader_with(attempt_timeout, HttpPool::default())
}

/// [`sdk_loader`] with its HTTP connection pool sized and timed by `pool`: the SDK's
/// own HTTPS client (hyper, rustls with aws-lc), built by its connector builder.
pub fn sdk_loader_with(attempt_timeout: Duration, pool: HttpPool) -> ConfigLoader {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .pool_max_idle_per_host(pool.max_idle_per_host)
        .pool_idle_timeout(pool.idle_timeout)
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        )
}

/// Loads the SDK configuration from the environment (see [`sdk_loader_with`]).
pub async fn load_sdk_config(attempt_timeout: Duration, pool: HttpPool) -> SdkConfig {
    sdk_loader_with(attempt_timeout, pool).load().await
}

/// The SQS client for a loaded configuration; every request it sends is counted in
/// `metrics` ([`requests`]).
pub fn sqs_client(sdk: &SdkConfig, metrics: &Metrics) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::config::Builder::from(sdk)
        .interceptor(requests::CountRequests {
            metrics: metrics.clone(),
        })
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// The S3 client for a loaded configuration. Path-style addressing when a custom
/// endpoint is set (LocalStack and other S3-compatible stores), with a longer attempt
/// bound for uploads.
pub fn s3_client(sdk: &SdkConfig, metrics: &Metrics) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .interceptor(requests::CountRequests {
            metrics: metrics.clone(),
        })
        .force_path_style(sdk.endpoint_url().is_some())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(S3_ATTEMPT_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A failed SQS call or batch entry, classified once.
#[derive(Debug, Clone, thiserror::Error)]
#[error("AWS {operation} failed ({}{}): {message}", class.as_str(), code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
pub struct AwsError {
    /// The API call.
    pub operation: Operation,
    /// What kind of failure, hence whether it was retried.
    pub class: ErrorClass,
    /// The service's error code, if the service answered.
    pub code: Option<String>,
    /// Human-readable detail (the SDK's error chain, or the entry's message).
    pub message: String,
}

impl AwsError {
    /// Classifies an SDK error.
    pub fn from_sdk<E>(operation: Operation, err: SdkError<E, Response>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Self {
            operation,
            class: classify_sdk(&err),
            code: err.code().map(str::to_owned),
            message: error_chain(&err),
        }
    }

    /// Classifies one failed entry of a batch reply.
    pub fn from_entry(operation: Operation, failure: &EntryFailure) -> Self {
        Self {
            operation,
            class: classify_entry(&failure.code, failure.sender_fault),
            code: Some(failure.code.clone()),
            message: failure.message.clone(),
        }
    }
}

impl From<&AwsError> for crate::outcome::Failure {
    /// An SQS or S3 call that failed: the forward stage's failure.
    fn from(e: &AwsError) -> Self {
        crate::outcome::Failure {
            stage: crate::outcome::Stage::Forward,
            class: e.class,
            code: e.code.clone(),
            message: e.message.clone(),
        }
    }
}

impl Classified for AwsError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// The error and its sources, as one line of their Display texts. (The SDK's
/// `DisplayErrorContext` appends a Debug dump of the raw response; logs don't want it.)
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

/// One failed entry of a batch call (`BatchResultErrorEntry`).
#[derive(Debug, Clone)]
pub struct EntryFailure {
    /// The entry's id in the request.
    pub id: String,
    /// The service's error code for it.
    pub code: String,
    /// Whether the service blames the request rather than itself.
    pub sender_fault: bool,
    /// The service's message.
    pub message: String,
}

impl From<aws_sdk_sqs::types::BatchResultErrorEntry> for EntryFailure {
    fn from(f: aws_sdk_sqs::types::BatchResultErrorEntry) -> Self {
        Self {
            id: f.id,
            code: f.code,
            sender_fault: f.sender_fault,
            message: f.message.unwrap_or_default(),
        }
    }
}

/// A batch reply of the SDK as the retry layer reads it: ids that succeeded, and each
/// failed entry classified once.
pub fn batch_reply(
    operation: Operation,
    successful: impl IntoIterator<Item = String>,
    failed: impl IntoIterator<Item = aws_sdk_sqs::types::BatchResultErrorEntry>,
) -> BatchReply<AwsError> {
    BatchReply {
        successful: successful.into_iter().collect(),
        failed: failed
            .into_iter()
            .map(|f| {
                let failure = EntryFailure::from(f);
                (
                    failure.id.clone(),
                    AwsError::from_entry(operation, &failure),
                )
            })
            .collect(),
    }
}

/// The failure of an entry a batch reply did not mention: the service's fault, retried.
pub fn entry_missing(operation: Operation) -> AwsError {
    AwsError {
        operation,
        class: ErrorClass::ServerError,
        code: None,
        message: "entry missing from the batch reply".into(),
    }
}
