//! Lambda mode: the same pipeline as `run`, driven by SQS event-source batches.
//!
//! Clients, routes and the indexer are built once per cold start ([`serve`]). Each
//! invocation decodes, indexes and forwards its batch ([`handle`]), flushes metrics, and
//! answers with the messages to retry (`batchItemFailures`); the function's event source
//! mapping needs `ReportBatchItemFailures`. Lambda deletes the rest.
//!
//! A start-up failure (configuration, an unreachable destination) is reported to the
//! Runtime API's `/init/error`, so Lambda shows it instead of a timeout.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};

use crate::metrics::Metrics;
use crate::outcome::{ErrorClass, Failure, Stage};
use crate::pipeline::{Pipeline, Settlement};
use crate::retry::within_deadline;
use crate::source::lambda_batch::{batch_response, records, RecordError};

/// Environment variables the Lambda runtime sets; without them this is not a Lambda.
pub const RUNTIME_VARS: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// How long an invocation may wait for its metrics to leave.
const METRICS_FLUSH: Duration = Duration::from_millis(500);

/// Why Lambda mode cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// Not inside a Lambda runtime.
    #[error("{0}: is not set; `lambda` runs inside AWS Lambda (or a Runtime API emulator)")]
    NotInLambda(&'static str),
    /// The runtime loop ended with an error.
    #[error("Lambda runtime: {0}")]
    Runtime(String),
}

/// Checks the runtime's variables are set, naming the first missing one.
pub fn check_environment() -> Result<(), LambdaError> {
    match RUNTIME_VARS.iter().find(|v| std::env::var_os(v).is_none()) {
        Some(var) => Err(LambdaError::NotInLambda(var)),
        None => Ok(()),
    }
}

/// Serves invocations until the runtime stops.
pub async fn serve(pipeline: Pipeline, metrics: Metrics) -> Result<(), LambdaError> {
    let pipeline = &pipeline;
    let metrics = &metrics;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = remaining(event.context.deadline).map(|left| Instant::now() + left);
        handle(pipeline, metrics, event.payload, deadline)
            .await
            .map_err(|e| lambda_runtime::Diagnostic {
                error_type: "InvalidBatch".into(),
                error_message: e.to_string(),
            })
    }))
    .await
    .map_err(|e| LambdaError::Runtime(e.to_string()))
}

/// How much of the invocation's time is kept back: every retry ends this long before the
/// deadline, so the partial response still reaches Lambda.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// The time left until a deadline in milliseconds since the epoch (the Runtime API's
/// `Lambda-Runtime-Deadline-Ms`); `None` if it is unknown.
fn remaining(deadline_ms: u64) -> Option<Duration> {
    if deadline_ms == 0 {
        return None;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(Duration::from_millis(deadline_ms).saturating_sub(now))
}

/// One invocation: the batch's partial response. Only a batch that cannot be answered
/// per message (a record without `messageId`) fails as a whole, so Lambda retries it all.
///
/// With a `deadline`, every retry ends [`DEADLINE_MARGIN`] before it, and should a
/// call still be in flight by then, the work stops half a margin before it: whatever is
/// not settled by then is in `batchItemFailures`, and Lambda retries it.
pub async fn handle(
    pipeline: &Pipeline,
    metrics: &Metrics,
    event: SqsEvent,
    deadline: Option<Instant>,
) -> Result<SqsBatchResponse, RecordError> {
    let messages = records(event)?;
    let work = pipeline.process(&messages);
    let settlements = match deadline {
        None => work.await,
        Some(deadline) => {
            let retries_end = deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline);
            let stop = deadline
                .checked_sub(DEADLINE_MARGIN / 2)
                .unwrap_or(deadline);
            match tokio::time::timeout_at(stop.into(), within_deadline(retries_end, work)).await {
                Ok(settlements) => settlements,
                Err(_) => {
                    tracing::warn!(
                        messages = messages.len(),
                        "the invocation's deadline is near: the batch is reported unsettled"
                    );
                    let failure = Failure {
                        stage: Stage::Forward,
                        class: ErrorClass::Timeout,
                        code: None,
                        message: "the invocation's deadline came first".into(),
                    };
                    vec![Settlement::Failed(failure); messages.len()]
                }
            }
        }
    };
    let response = batch_response(&messages, &settlements);
    tracing::info!(
        messages = messages.len(),
        failures = response.batch_item_failures.len(),
        "batch settled"
    );
    metrics.flush(METRICS_FLUSH);
    Ok(response)
}

/// Tells the Runtime API that initialization failed (`/init/error`), so the function
/// reports the reason rather than a timeout. Best effort: the process exits anyway.
pub async fn report_init_error(message: &str) {
    let client = lambda_runtime_api_client::PooledClient::builder().build();
    let body = serde_json::json!({
        "errorType": "Runtime.InitError",
        "errorMessage": message,
    })
    .to_string();
    let request = lambda_runtime_api_client::build_request()
        .method(http::Method::POST)
        .uri("/2018-06-01/runtime/init/error")
        .header("lambda-runtime-function-error-type", "Runtime.InitError")
        .body(lambda_runtime_api_client::body::Body::from(body));
    if let Ok(request) = request {
        if let Err(err) = client.call(request).await {
            tracing::error!(%err, "could not report the init error to the Runtime API");
        }
    }
}
