//! AWS clients and the errors of their calls.
//!
//! Region, credentials and endpoint come from the SDK's own variables (`AWS_REGION`,
//! `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SQS`, …).
//! The SDK's retries are turned off: [`crate::retry`] owns every retry, so none is
//! doubled and every one is counted. TLS (rustls) is the SDK's default transport.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response;

use crate::metrics::{Counter, Metrics};
use crate::retry::{classify_entry, classify_sdk, note_retry, Classified, ErrorClass, RetryPolicy};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The SDK configuration loader, reading the environment, with SDK retries off.
///
/// `attempt_timeout` bounds one HTTP attempt; long polls override it per call.
pub fn sdk_loader(attempt_timeout: Duration) -> ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        )
}

/// Loads the SDK configuration from the environment (see [`sdk_loader`]).
pub async fn load_sdk_config(attempt_timeout: Duration) -> SdkConfig {
    sdk_loader(attempt_timeout).load().await
}

/// The SQS client for a loaded configuration.
pub fn sqs_client(sdk: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(sdk)
}

/// The S3 client for a loaded configuration. Path-style addressing when a custom
/// endpoint is set (LocalStack and other S3-compatible stores), with a longer attempt
/// bound for uploads.
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(crate::forward::offload::S3_ATTEMPT_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A failed SQS call or batch entry, classified once.
#[derive(Debug, Clone, thiserror::Error)]
#[error("AWS {operation} failed ({}{}): {message}", class.as_str(), code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
pub struct AwsError {
    /// The API call: `receive`, `send`, `delete`, `change_visibility`, `get_attributes`.
    pub operation: &'static str,
    /// What kind of failure, hence whether it was retried.
    pub class: ErrorClass,
    /// The service's error code, if the service answered.
    pub code: Option<String>,
    /// Human-readable detail (the SDK's error chain, or the entry's message).
    pub message: String,
}

impl AwsError {
    /// Classifies an SDK error.
    pub fn from_sdk<E>(operation: &'static str, err: SdkError<E, Response>) -> Self
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
    pub fn from_entry(operation: &'static str, failure: &EntryFailure) -> Self {
        Self {
            operation,
            class: classify_entry(&failure.code, failure.sender_fault),
            code: Some(failure.code.clone()),
            message: failure.message.clone(),
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

/// What a batch call answered: ids that succeeded, entries that failed.
#[derive(Debug, Default)]
pub struct BatchReply {
    /// Ids of the entries that succeeded.
    pub successful: Vec<String>,
    /// Entries that failed, with why.
    pub failed: Vec<EntryFailure>,
}

/// Runs a batch call until every entry has succeeded or failed for good, sending again
/// only the entries that failed transiently, within `policy`'s time bound.
///
/// `entries` are keyed by their batch id. The result has one outcome per id.
pub async fn retry_batch<T, F, Fut>(
    policy: &RetryPolicy,
    operation: &'static str,
    metrics: &Metrics,
    entries: Vec<(String, T)>,
    mut call: F,
) -> HashMap<String, Result<(), AwsError>>
where
    T: Clone,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<BatchReply, AwsError>>,
{
    let mut outcomes = HashMap::with_capacity(entries.len());
    let mut pending = entries;
    let mut schedule = policy.schedule();
    while !pending.is_empty() {
        let request = pending.iter().map(|(_, entry)| entry.clone()).collect();
        let mut transient: HashMap<String, AwsError> = HashMap::new();
        match call(request).await {
            Ok(reply) => {
                for id in reply.successful {
                    outcomes.insert(id, Ok(()));
                }
                for failure in &reply.failed {
                    let err = AwsError::from_entry(operation, failure);
                    if err.class.is_retryable() {
                        transient.insert(failure.id.clone(), err);
                    } else {
                        outcomes.insert(failure.id.clone(), Err(err));
                    }
                }
            }
            Err(err) if err.class.is_retryable() => {
                for (id, _) in &pending {
                    transient.insert(id.clone(), err.clone());
                }
            }
            Err(err) => {
                for (id, _) in &pending {
                    outcomes.insert(id.clone(), Err(err.clone()));
                }
            }
        }
        // Entries the reply did not mention are settled as failures of the service.
        pending.retain(|(id, _)| !outcomes.contains_key(id));
        for (id, _) in &pending {
            transient.entry(id.clone()).or_insert_with(|| AwsError {
                operation,
                class: ErrorClass::ServerError,
                code: None,
                message: "entry missing from the batch reply".into(),
            });
        }
        let Some(first) = transient.values().next().cloned() else {
            break;
        };
        match schedule.next_delay() {
            Some(wait) => {
                note_retry(metrics, operation, first.class, &first, wait);
                tokio::time::sleep(wait).await;
            }
            None => {
                metrics.incr(Counter::AwsError {
                    operation,
                    class: first.class.as_str(),
                });
                outcomes.extend(transient.into_iter().map(|(id, e)| (id, Err(e))));
                break;
            }
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn failure(id: &str, code: &str, sender_fault: bool) -> EntryFailure {
        EntryFailure {
            id: id.into(),
            code: code.into(),
            sender_fault,
            message: "m".into(),
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            max_elapsed: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn only_transiently_failed_entries_are_sent_again() {
        let calls = std::sync::Mutex::new(Vec::new());
        let entries = vec![("0".to_string(), 0), ("1".into(), 1), ("2".into(), 2)];
        let out = retry_batch(
            &fast(),
            "send",
            &Metrics::disabled(),
            entries,
            |req: Vec<i32>| {
                let n = {
                    let mut c = calls.lock().unwrap();
                    c.push(req.clone());
                    c.len()
                };
                async move {
                    Ok(match n {
                        1 => BatchReply {
                            successful: vec!["0".into()],
                            failed: vec![
                                failure("1", "InternalError", false),
                                failure("2", "InvalidMessageContents", true),
                            ],
                        },
                        _ => BatchReply {
                            successful: vec!["1".into()],
                            failed: vec![],
                        },
                    })
                }
            },
        )
        .await;
        assert_eq!(*calls.lock().unwrap(), vec![vec![0, 1, 2], vec![1]]);
        assert!(out["0"].is_ok() && out["1"].is_ok());
        assert_eq!(
            out["2"].as_ref().err().map(|e| e.class),
            Some(ErrorClass::MessageRejected)
        );
    }

    #[tokio::test]
    async fn whole_call_errors_fail_every_entry_after_the_bound() {
        let calls = AtomicUsize::new(0);
        let entries = vec![("0".to_string(), ()), ("1".into(), ())];
        let out = retry_batch(&fast(), "send", &Metrics::disabled(), entries, |_req| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<BatchReply, _>(AwsError {
                    operation: "send",
                    class: ErrorClass::Throttled,
                    code: Some("Throttling".into()),
                    message: "slow down".into(),
                })
            }
        })
        .await;
        assert!(calls.load(Ordering::SeqCst) > 1);
        assert_eq!(out.len(), 2);
        assert!(out
            .values()
            .all(|r| matches!(r, Err(e) if e.class == ErrorClass::Throttled)));
    }

    #[tokio::test]
    async fn permanent_call_errors_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let out = retry_batch(
            &fast(),
            "send",
            &Metrics::disabled(),
            vec![("0".to_string(), ())],
            |_req| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<BatchReply, _>(AwsError {
                        operation: "send",
                        class: ErrorClass::QueueNotFound,
                        code: Some("QueueDoesNotExist".into()),
                        message: "no queue".into(),
                    })
                }
            },
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(out["0"].is_err());
    }
}
