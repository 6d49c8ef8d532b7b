//! Internal events: each emits its log line and its counter together, so the two never
//! disagree (as vector's `internal_events`).

use super::{Counter, Metrics};
use crate::aws::AwsError;
use crate::event::DecodeError;
use crate::pipeline::Failure;

/// A message whose body is not a valid event. The worker leaves it in the source queue,
/// where the queue's redrive policy moves it to the queue's dead-letter queue.
pub fn invalid_event(metrics: &Metrics, message_id: &str, receive_count: u32, err: &DecodeError) {
    tracing::warn!(
        message_id,
        receive_count,
        reason = err.reason(),
        error = %err,
        "invalid event: not forwarded"
    );
    metrics.incr(Counter::InvalidEvent {
        reason: err.reason(),
    });
}

/// An event not forwarded (indexing or sending failed for good); the worker leaves its
/// message in the source queue.
pub fn forward_failed(metrics: &Metrics, message_id: &str, event_id: &str, err: &Failure) {
    tracing::error!(
        message_id,
        event_id,
        stage = err.stage,
        class = err.class.as_str(),
        code = err.code.as_deref().unwrap_or(""),
        error = %err,
        "event not forwarded"
    );
    metrics.incr(Counter::ForwardFailed {
        class: err.class.as_str(),
    });
}

/// A forwarded event whose source message could not be deleted: it will be delivered
/// again, so the destination may see it twice.
pub fn delete_failed(message_id: &str, err: &AwsError) {
    tracing::warn!(
        message_id,
        class = err.class.as_str(),
        error = %err,
        "forwarded message not deleted: it will be redelivered (a duplicate)"
    );
}

/// A receive that failed after its retries; the worker pauses and polls again.
pub fn receive_failed(metrics: &Metrics, err: &AwsError) {
    tracing::error!(class = err.class.as_str(), error = %err, "receive failed");
    metrics.incr(Counter::AwsError {
        operation: "receive",
        class: err.class.as_str(),
    });
}

/// The dead-letter queue refused a message: it stays in the source queue.
pub fn dead_letter_failed(message_id: &str, err: &AwsError) {
    tracing::error!(
        message_id,
        class = err.class.as_str(),
        error = %err,
        "dead-letter queue did not accept the message: left in the source queue"
    );
}

/// An event over the size limit with no S3 bucket to offload it to: not forwarded (as
/// Sentry does); dead-lettered if there is a dead-letter queue.
pub fn oversized_skipped(metrics: &Metrics, event_id: &str, bytes: usize) {
    tracing::warn!(
        event_id,
        bytes,
        "event over the size limit and no S3 bucket configured: not forwarded"
    );
    metrics.incr(Counter::EventSkipped {
        reason: "oversized",
    });
}

/// An event whose project has no route, and no default route: skipped, as Sentry skips
/// projects without the plugin configured.
pub fn skipped_unconfigured(metrics: &Metrics, event_id: &str, project_id: u64) {
    tracing::debug!(event_id, project_id, "no route for the project: skipped");
    metrics.incr(Counter::EventSkipped {
        reason: "skip_unconfigured",
    });
}

/// An event not sent now, on purpose: its organization is over its rate limit, its
/// route is paused, or an earlier event of its group did not go. Its message stays in
/// the source queue, hidden for `delay` (or as it is).
pub fn deferred(
    metrics: &Metrics,
    message_id: &str,
    event_id: &str,
    cause: &'static str,
    delay: Option<std::time::Duration>,
) {
    tracing::debug!(
        message_id,
        event_id,
        cause,
        delay_ms = delay.map(|d| d.as_millis() as u64),
        "event deferred: its message stays in the source queue"
    );
    metrics.incr(Counter::EventDeferred { cause });
}
