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

/// Serves invocations until the runtime stops. `sqs` reads the source queue the first
/// batch comes from, to size the idempotency store's TTL from it, as `run` does.
pub async fn serve(
    pipeline: Pipeline,
    metrics: Metrics,
    sqs: aws_sdk_sqs::Client,
) -> Result<(), LambdaError> {
    let pipeline = &pipeline;
    let metrics = &metrics;
    let sized = &tokio::sync::OnceCell::new();
    let sqs = &sqs;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        if let Some(idempotency) = pipeline.idempotency() {
            let arn = event
                .payload
                .records
                .first()
                .and_then(|r| r.event_source_arn.clone());
            sized
                .get_or_init(|| size_from_source(idempotency, sqs, arn))
                .await;
        }
        let deadline = deadline_of(event.context.deadline);
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

/// Sizes the idempotency store's TTL from the source queue the batches come from (its
/// visibility timeout times its `maxReceiveCount`, at least an hour), once per cold
/// start; the default stays if the queue cannot be read (warned).
async fn size_from_source(
    idempotency: &crate::idempotency::Idempotency,
    sqs: &aws_sdk_sqs::Client,
    arn: Option<String>,
) {
    // arn:aws:sqs:{region}:{account}:{name}
    let Some((account, name)) = arn.as_deref().and_then(|arn| {
        let mut parts = arn.rsplitn(3, ':');
        let name = parts.next()?;
        let account = parts.next()?;
        Some((account.to_string(), name.to_string()))
    }) else {
        return;
    };
    let url = sqs
        .get_queue_url()
        .queue_name(&name)
        .queue_owner_aws_account_id(&account)
        .send()
        .await
        .ok()
        .and_then(|out| out.queue_url);
    let info = match url {
        Some(url) => crate::source::queue_info(sqs, &url).await.ok(),
        None => None,
    };
    match info {
        Some(info) => {
            // The lease is the invocation's time left; only the TTL comes from here.
            let lease = idempotency.lease();
            if let Some(warning) =
                idempotency.size_for_source(info.visibility_timeout, info.max_receive_count)
            {
                tracing::warn!("{warning}");
            }
            idempotency.set_lease(lease);
            tracing::info!(
                ttl = %humantime::format_duration(idempotency.ttl()),
                source = %name,
                "idempotency keys sized from the source queue"
            );
        }
        None => tracing::warn!(
            source = %name,
            ttl = %humantime::format_duration(idempotency.ttl()),
            "the source queue could not be read (sqs:GetQueueUrl, sqs:GetQueueAttributes): \
             idempotency keys keep the default TTL"
        ),
    }
}

/// How much of the invocation's time is kept back: every retry ends this long before the
/// deadline, so the partial response still reaches Lambda.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Lambda's longest function timeout: no real deadline is further away than this.
pub const LONGEST_INVOCATION: Duration = Duration::from_secs(15 * 60);

/// What an invocation's `Lambda-Runtime-Deadline-Ms` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// No header (0): the batch runs with no deadline bound.
    Absent,
    /// A real deadline, this far away.
    In(Duration),
    /// A value that cannot be a deadline: already passed when the invocation arrived (an
    /// emulator's timeout as a duration, `600000`, or its start time), or further away
    /// than Lambda's longest timeout. Handled as [`Deadline::Absent`], with a warning.
    NotADeadline(&'static str),
}

impl Deadline {
    /// Reads the header's value, in milliseconds since the epoch, against `now` (the
    /// time since the epoch when the invocation arrived).
    pub fn read(deadline_ms: u64, now: Duration) -> Deadline {
        if deadline_ms == 0 {
            return Deadline::Absent;
        }
        let deadline = Duration::from_millis(deadline_ms);
        match deadline.checked_sub(now) {
            None | Some(Duration::ZERO) => Deadline::NotADeadline("it has already passed"),
            Some(left) if left > LONGEST_INVOCATION => {
                Deadline::NotADeadline("it is more than 15 minutes away, Lambda's longest timeout")
            }
            Some(left) => Deadline::In(left),
        }
    }

    /// The time left, if this is a deadline at all.
    pub fn left(self) -> Option<Duration> {
        match self {
            Deadline::In(left) => Some(left),
            Deadline::Absent | Deadline::NotADeadline(_) => None,
        }
    }
}

/// The invocation's deadline as an instant, from the Runtime API's header; `None` (no
/// bound) when there is none or it cannot be one, which is warned about once per process
/// (local emulators send such values on every invocation).
fn deadline_of(deadline_ms: u64) -> Option<Instant> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let deadline = Deadline::read(deadline_ms, now);
    if let Deadline::NotADeadline(why) = deadline {
        WARNED.call_once(|| {
            tracing::warn!(
                "Lambda-Runtime-Deadline-Ms: {deadline_ms} is not a deadline ({why}; a local \
                 emulator's value?): batches are handled with no deadline bound"
            );
        });
    }
    deadline.left().map(|left| Instant::now() + left)
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
    // A warm instance lives for hours: its destinations' size limits are read again
    // every minute, as in `run`.
    pipeline.refresh_limits().await;
    // A claim holds while the batch's messages stay hidden: at least the invocation's
    // time (the source's visibility timeout is at least the function's timeout).
    if let (Some(idempotency), Some(deadline)) = (pipeline.idempotency(), deadline) {
        idempotency.set_lease(deadline.saturating_duration_since(Instant::now()));
    }
    let work = pipeline.process(&messages);
    let settlements = match deadline {
        None => work.await,
        Some(deadline) => {
            let retries_end = deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline);
            let stop = deadline
                .checked_sub(DEADLINE_MARGIN / 2)
                .unwrap_or(deadline);
            match tokio::time::timeout_at(stop.into(), within_deadline(retries_end.into(), work))
                .await
            {
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
    let response = batch_response(&messages, settlements.iter().map(Settlement::is_done));
    tracing::info!(
        messages = messages.len(),
        failures = response.batch_item_failures.len(),
        "batch settled"
    );
    metrics.flush(METRICS_FLUSH);
    crate::telemetry::otlp::flush().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01, in milliseconds since the epoch.
    const NOW_MS: u64 = 1_796_112_000_000;

    fn read(deadline_ms: u64) -> Deadline {
        Deadline::read(deadline_ms, Duration::from_millis(NOW_MS))
    }

    #[test]
    fn a_real_deadline_is_the_time_left() {
        assert_eq!(read(NOW_MS + 3_000), Deadline::In(Duration::from_secs(3)));
        // Lambda's longest timeout is still a deadline.
        assert_eq!(read(NOW_MS + 900_000), Deadline::In(LONGEST_INVOCATION));
        assert_eq!(read(NOW_MS + 1), Deadline::In(Duration::from_millis(1)));
    }

    #[test]
    fn zero_is_no_deadline() {
        assert_eq!(read(0), Deadline::Absent);
        assert_eq!(read(0).left(), None);
    }

    #[test]
    fn a_deadline_already_passed_is_not_one() {
        // cargo lambda watch: its timeout as a duration, a deadline in 1970.
        assert!(matches!(read(600_000), Deadline::NotADeadline(why) if why.contains("passed")));
        // An emulator that sends the invocation's start time.
        assert!(matches!(read(NOW_MS), Deadline::NotADeadline(_)));
        assert!(matches!(read(NOW_MS - 1), Deadline::NotADeadline(_)));
        assert_eq!(read(600_000).left(), None);
    }

    #[test]
    fn an_absurdly_distant_deadline_is_not_one() {
        assert!(matches!(
            read(NOW_MS + 900_001),
            Deadline::NotADeadline(why) if why.contains("15 minutes")
        ));
        assert!(matches!(read(u64::MAX), Deadline::NotADeadline(_)));
    }
}
