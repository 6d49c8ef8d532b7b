//! The source queue over the SQS API.

use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;

use super::SourceMessage;
use crate::aws::{retry_batch, AwsError, BatchReply, EntryFailure};
use crate::metrics::{Counter, Metrics};
use crate::retry::{retry, RetryPolicy};

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
}

/// Reads queue attributes; used as the healthcheck of every configured queue.
pub async fn queue_info(client: &Client, queue_url: &str) -> Result<QueueInfo, AwsError> {
    let out = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::FifoQueue)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("get_attributes", e))?;
    let attrs = out.attributes();
    let visibility = attrs
        .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let fifo = attrs
        .and_then(|a| a.get(&QueueAttributeName::FifoQueue))
        .is_some_and(|v| v == "true");
    Ok(QueueInfo {
        visibility_timeout: Duration::from_secs(visibility),
        fifo,
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
        Self {
            client,
            queue_url: queue_url.into(),
            batch_size: batch_size.clamp(1, MAX_BATCH),
            wait: wait.min(MAX_WAIT),
            policy,
            metrics,
        }
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Healthcheck: the queue's attributes.
    pub async fn info(&self) -> Result<QueueInfo, AwsError> {
        queue_info(&self.client, &self.queue_url).await
    }

    /// One long poll, retried on transient failures. An empty result means the queue
    /// stayed empty for the whole wait.
    pub async fn receive(&self) -> Result<Vec<SourceMessage>, AwsError> {
        let attempt_timeout = self.wait + RECEIVE_GRACE;
        let messages = retry(&self.policy, "receive", &self.metrics, || async {
            self.client
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(self.batch_size as i32)
                .wait_time_seconds(self.wait.as_secs() as i32)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
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
                .map_err(|e| AwsError::from_sdk("receive", e))
        })
        .await?
        .messages
        .unwrap_or_default();
        let messages: Vec<SourceMessage> = messages.into_iter().filter_map(convert).collect();
        if !messages.is_empty() {
            self.metrics
                .count(Counter::MessagesReceived, messages.len() as u64);
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
            let outcomes = retry_batch(&self.policy, "delete", &self.metrics, entries, |req| {
                let call = self
                    .client
                    .delete_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(req));
                async move {
                    let out = call
                        .send()
                        .await
                        .map_err(|e| AwsError::from_sdk("delete", e))?;
                    Ok(BatchReply {
                        successful: out.successful.into_iter().map(|s| s.id).collect(),
                        failed: out.failed.into_iter().map(EntryFailure::from).collect(),
                    })
                }
            })
            .await;
            let mut deleted = 0;
            for (i, m) in chunk.iter().enumerate() {
                match outcomes.get(&i.to_string()) {
                    Some(Ok(())) => deleted += 1,
                    Some(Err(e)) => failed.push((m.message_id.clone(), e.clone())),
                    None => failed.push((
                        m.message_id.clone(),
                        AwsError {
                            operation: "delete",
                            class: crate::retry::ErrorClass::Local,
                            code: None,
                            message: "receipt handle could not be sent".into(),
                        },
                    )),
                }
            }
            self.metrics.count(Counter::MessagesDeleted, deleted);
        }
        failed
    }

    /// Sets how long messages stay hidden from now (ChangeMessageVisibilityBatch): longer,
    /// so a slow batch is not handed to another consumer; or zero, to hand a batch back at
    /// once. Best effort: one try, failures logged (the messages then reappear when their
    /// current timeout ends).
    pub async fn change_visibility(&self, messages: &[&SourceMessage], timeout: Duration) {
        for chunk in messages.chunks(MAX_BATCH) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&m.receipt_handle)
                        .visibility_timeout(timeout.as_secs().min(43_200) as i32)
                        .build()
                        .ok()
                })
                .collect();
            let result = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            match result {
                Ok(out) if out.failed.is_empty() => {
                    tracing::debug!(messages = chunk.len(), "visibility extended");
                }
                Ok(out) => {
                    for f in out.failed {
                        tracing::warn!(code = %f.code, message = ?f.message, "visibility not extended for a message");
                    }
                }
                Err(e) => {
                    let err = AwsError::from_sdk("change_visibility", e);
                    tracing::warn!(error = %err, "visibility not extended");
                }
            }
        }
    }
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
    match (m.message_id, m.receipt_handle) {
        (Some(message_id), Some(receipt_handle)) => Some(SourceMessage {
            message_id,
            receipt_handle,
            body: m.body.unwrap_or_default(),
            sent_at,
            receive_count,
        }),
        _ => {
            tracing::warn!("received a message without id or receipt handle; skipped");
            None
        }
    }
}
