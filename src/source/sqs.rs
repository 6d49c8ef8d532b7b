//! The source queue over the SQS API.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;

use super::SourceMessage;
use crate::aws::{batch_reply, entry_missing, AwsError};
use crate::batching::{BatchWindow, CallFn, Window};
use crate::internal_events::{InternalEvent, MessagesDeleted, MessagesReceived};
use crate::metrics::Metrics;
use crate::outcome::{ErrorClass, Operation};
use crate::retry::{retry, retry_batch, RetryPolicy};

/// SQS's largest long-poll wait.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's largest receive batch.
pub const MAX_BATCH: usize = 10;
/// How much longer than the long-poll wait a receive may take before it is timed out.
const RECEIVE_GRACE: Duration = Duration::from_secs(10);

/// What `GetQueueAttributes` says of a queue; reading it is the healthcheck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// How long a received message stays hidden from other consumers.
    pub visibility_timeout: Duration,
    /// Whether it is a FIFO queue.
    pub fifo: bool,
    /// Its `MaximumMessageSize`, in bytes, if it said.
    pub max_message_bytes: Option<usize>,
    /// Its redrive policy's `maxReceiveCount`: how often a message comes back before it
    /// moves to the dead-letter queue; `None` without a redrive policy.
    pub max_receive_count: Option<u32>,
}

/// Reads queue attributes; used as the healthcheck of every configured queue.
pub async fn queue_info(client: &Client, queue_url: &str) -> Result<QueueInfo, AwsError> {
    let out = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::FifoQueue)
        .attribute_names(QueueAttributeName::MaximumMessageSize)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(Operation::GetAttributes, e))?;
    let attrs = out.attributes();
    let visibility = attrs
        .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let fifo = attrs
        .and_then(|a| a.get(&QueueAttributeName::FifoQueue))
        .is_some_and(|v| v == "true");
    let max_message_bytes = attrs
        .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
        .and_then(|v| v.parse().ok());
    let max_receive_count = attrs
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        .and_then(|p| match &p["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .and_then(|n| u32::try_from(n).ok());
    Ok(QueueInfo {
        visibility_timeout: Duration::from_secs(visibility),
        fifo,
        max_message_bytes,
        max_receive_count,
    })
}

/// A source queue.
#[derive(Debug, Clone)]
pub struct SqsSource {
    /// Shared SQS client (one connection pool for the process).
    client: Client,
    /// The queue consumed.
    queue_url: String,
    /// Messages per receive, 1 to 10.
    batch_size: usize,
    /// Long-poll wait per receive, at most 20 s.
    wait: Duration,
    /// Retry bounds for every call.
    policy: RetryPolicy,
    /// Where retries and deletes are counted.
    metrics: Metrics,
    /// Whether the queue is FIFO: receives then carry a `ReceiveRequestAttemptId`.
    fifo: bool,
    /// The message attribute names each receive asks for (the W3C trace context, and
    /// what `FORWARDER_FORWARD_ATTRIBUTES` names; `All` for all).
    attribute_names: Vec<String>,
    /// The settings of the batching window, for the pollers' pacing.
    window: BatchWindow,
    /// Where every DeleteMessageBatch goes: shared by every clone (every poller), so
    /// deletes of many receives share calls within the window.
    deletes: Arc<Window<DeleteMessageBatchRequestEntry, AwsError>>,
    /// Where every ChangeMessageVisibilityBatch goes (deferrals, heartbeats,
    /// hand-backs), shared the same way.
    visibility: Arc<Window<ChangeMessageVisibilityBatchRequestEntry, AwsError>>,
}

impl SqsSource {
    /// A source for `queue_url`.
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        batch_size: usize,
        wait: Duration,
        policy: RetryPolicy,
        metrics: Metrics,
    ) -> Self {
        let queue_url = queue_url.into();
        let window = BatchWindow::none();
        Self {
            deletes: Arc::new(delete_window(&window, &client, &queue_url)),
            visibility: Arc::new(visibility_window(&window, &client, &queue_url)),
            window,
            client,
            queue_url,
            batch_size: batch_size.clamp(1, MAX_BATCH),
            wait: wait.min(MAX_WAIT),
            policy,
            metrics,
            fifo: false,
            attribute_names: crate::forward::ForwardAttributes::None.receive_names(),
        }
    }

    /// The same source, its deletes and visibility changes shared within `window` by
    /// every clone made after.
    pub fn with_window(mut self, window: &BatchWindow) -> Self {
        self.deletes = Arc::new(delete_window(window, &self.client, &self.queue_url));
        self.visibility = Arc::new(visibility_window(window, &self.client, &self.queue_url));
        self.window = window.clone();
        self
    }

    /// The batching window.
    pub fn window(&self) -> &BatchWindow {
        &self.window
    }

    /// Asks each receive for the attributes `pass` forwards (and the trace context).
    pub fn with_attributes(mut self, pass: &crate::forward::ForwardAttributes) -> Self {
        self.attribute_names = pass.receive_names();
        self
    }

    /// Marks the queue as FIFO (see [`QueueInfo::fifo`]).
    pub fn with_fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The long-poll wait of each receive.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// How many messages the queue holds, about (`ApproximateNumberOfMessages`).
    pub async fn approximate_depth(&self) -> Result<u64, AwsError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(Operation::GetAttributes, e))?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Healthcheck: the queue's attributes.
    pub async fn info(&self) -> Result<QueueInfo, AwsError> {
        queue_info(&self.client, &self.queue_url).await
    }

    /// Messages per receive.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// One long poll, retried on transient failures. An empty result means the queue
    /// stayed empty for the whole wait.
    pub async fn receive(&self) -> Result<Vec<SourceMessage>, AwsError> {
        self.receive_at_most(self.batch_size).await
    }

    /// [`SqsSource::receive`] of at most `max` messages (1 to the batch size).
    pub async fn receive_at_most(&self, max: usize) -> Result<Vec<SourceMessage>, AwsError> {
        let max = max.clamp(1, self.batch_size.max(1));
        let attempt_timeout = self.wait + RECEIVE_GRACE;
        // FIFO: the same id on every retry of this receive, so a receive whose answer
        // was lost returns the same messages instead of hiding them.
        let attempt_id = self
            .fifo
            .then(|| format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)));
        let messages = retry(&self.policy, Operation::Receive, &self.metrics, || async {
            self.client
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(max as i32)
                .wait_time_seconds(self.wait.as_secs() as i32)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
                .set_message_attribute_names(Some(self.attribute_names.clone()))
                .set_receive_request_attempt_id(attempt_id.clone())
                .customize()
                .config_override(
                    aws_sdk_sqs::config::Config::builder().timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .operation_attempt_timeout(attempt_timeout)
                            .build(),
                    ),
                )
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(Operation::Receive, e))
        })
        .await?
        .messages
        .unwrap_or_default();
        let messages: Vec<SourceMessage> = messages.into_iter().filter_map(convert).collect();
        if !messages.is_empty() {
            MessagesReceived(messages.len()).emit(&self.metrics);
        }
        Ok(messages)
    }

    /// Deletes messages (DeleteMessageBatch), retrying entries that fail transiently.
    /// Returns the message ids that could not be deleted, with why: those messages will
    /// be delivered again (a duplicate, never a loss).
    pub async fn delete(&self, messages: &[&SourceMessage]) -> Vec<(String, AwsError)> {
        let mut failed = Vec::new();
        for chunk in messages.chunks(MAX_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&m.receipt_handle)
                        .build()
                        .ok()
                        .map(|e| (i.to_string(), e))
                })
                .collect();
            let outcomes = retry_batch(
                &self.policy,
                Operation::Delete,
                &self.metrics,
                entries,
                |req| self.deletes.submit(req),
                || entry_missing(Operation::Delete),
            )
            .await;
            let mut deleted = 0;
            for (i, m) in chunk.iter().enumerate() {
                match outcomes.get(&i.to_string()) {
                    Some(Ok(())) => deleted += 1,
                    Some(Err(e)) => failed.push((m.message_id.clone(), e.clone())),
                    None => failed.push((
                        m.message_id.clone(),
                        AwsError {
                            operation: Operation::Delete,
                            class: ErrorClass::Local,
                            code: None,
                            message: "receipt handle could not be sent".into(),
                        },
                    )),
                }
            }
            MessagesDeleted(deleted).emit(&self.metrics);
        }
        failed
    }

    /// Sets how long each message stays hidden from now (ChangeMessageVisibilityBatch):
    /// longer, so a slow batch is not handed to another consumer; a deferral (a rate
    /// limit, a paused route); or zero, to hand a batch back at once. Entries that fail
    /// transiently are retried, within `within` (a change that comes too late is
    /// useless: the message is visible again). Returns how many could not be changed;
    /// those reappear when their current timeout ends, which loses nothing.
    pub async fn change_visibility(
        &self,
        messages: &[(&SourceMessage, Duration)],
        within: Duration,
    ) -> usize {
        let policy = RetryPolicy {
            max_elapsed: within,
            max_interval: self.policy.max_interval.min(within),
            ..self.policy.clone()
        };
        let mut failed = 0;
        for chunk in messages.chunks(MAX_BATCH) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (m, timeout))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&m.receipt_handle)
                        .visibility_timeout(visibility_secs(*timeout))
                        .build()
                        .ok()
                        .map(|e| (i.to_string(), e))
                })
                .collect();
            let sent = entries.len();
            let outcomes = retry_batch(
                &policy,
                Operation::ChangeVisibility,
                &self.metrics,
                entries,
                |req| self.visibility.submit(req),
                || entry_missing(Operation::ChangeVisibility),
            )
            .await;
            failed += chunk.len() - sent;
            for (id, outcome) in &outcomes {
                if let Err(err) = outcome {
                    failed += 1;
                    tracing::warn!(entry = %id, error = %err, "visibility not changed for a message; it reappears when its current timeout ends");
                }
            }
        }
        failed
    }
}

/// The batching window of DeleteMessageBatch calls to `queue_url`.
fn delete_window(
    window: &BatchWindow,
    client: &Client,
    queue_url: &str,
) -> Window<DeleteMessageBatchRequestEntry, AwsError> {
    let (client, queue_url) = (client.clone(), queue_url.to_string());
    let call: CallFn<DeleteMessageBatchRequestEntry, AwsError> = Arc::new(move |entries| {
        let call = client
            .delete_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries));
        Box::pin(async move {
            let out = call
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(Operation::Delete, e))?;
            Ok(batch_reply(
                Operation::Delete,
                out.successful.into_iter().map(|s| s.id),
                out.failed,
            ))
        })
    });
    Window::new(window.clone(), MAX_BATCH, usize::MAX, call)
}

/// The batching window of ChangeMessageVisibilityBatch calls to `queue_url`: each entry
/// carries its own timeout, so deferrals, heartbeats and hand-backs share calls.
fn visibility_window(
    window: &BatchWindow,
    client: &Client,
    queue_url: &str,
) -> Window<ChangeMessageVisibilityBatchRequestEntry, AwsError> {
    let (client, queue_url) = (client.clone(), queue_url.to_string());
    let call: CallFn<ChangeMessageVisibilityBatchRequestEntry, AwsError> =
        Arc::new(move |entries| {
            let call = client
                .change_message_visibility_batch()
                .queue_url(&queue_url)
                .set_entries(Some(entries));
            Box::pin(async move {
                let out = call
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(Operation::ChangeVisibility, e))?;
                Ok(batch_reply(
                    Operation::ChangeVisibility,
                    out.successful.into_iter().map(|s| s.id),
                    out.failed,
                ))
            })
        });
    Window::new(window.clone(), MAX_BATCH, usize::MAX, call)
}

/// Seconds for ChangeMessageVisibility: rounded up (a deferral of 200 ms must not be
/// 0, which would show the message at once), at most SQS's 12 hours.
fn visibility_secs(timeout: Duration) -> i32 {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    secs.min(43_200) as i32
}

/// Converts an SDK message; one without id, handle or body cannot be worked on and is
/// skipped (it will reappear after its visibility timeout).
fn convert(m: aws_sdk_sqs::types::Message) -> Option<SourceMessage> {
    let attrs = m.attributes.as_ref();
    let sent_at = attrs
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    let receive_count = attrs
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let group = attrs
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned();
    let trace_header = attrs
        .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
        .cloned();
    let attributes = m
        .message_attributes
        .iter()
        .flatten()
        .filter_map(|(name, value)| crate::aws::Attribute::from_sdk(name, value))
        .collect();
    match (m.message_id, m.receipt_handle) {
        (Some(message_id), Some(receipt_handle)) => Some(SourceMessage {
            message_id,
            receipt_handle,
            body: m.body.unwrap_or_default(),
            sent_at,
            receive_count,
            group,
            trace_header,
            attributes,
        }),
        _ => {
            tracing::warn!("received a message without id or receipt handle; skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_is_rounded_up_to_whole_seconds() {
        assert_eq!(visibility_secs(Duration::ZERO), 0);
        assert_eq!(visibility_secs(Duration::from_millis(200)), 1);
        assert_eq!(visibility_secs(Duration::from_secs(3)), 3);
        assert_eq!(visibility_secs(Duration::from_millis(3001)), 4);
        assert_eq!(visibility_secs(Duration::from_secs(100_000)), 43_200);
    }
}
