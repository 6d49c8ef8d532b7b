//! Sending messages to one queue with SendMessageBatch: batches within SQS's limits,
//! only transiently failed entries sent again. The destination and the dead-letter
//! queue both send through it.

use std::borrow::Cow;
use std::time::Instant;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;

use super::batch;
use crate::aws::{retry_batch, AwsError, BatchReply, EntryFailure};
use crate::metrics::{Metrics, Timer};
use crate::retry::{ErrorClass, RetryPolicy};

/// The result of sending one message: accepted by the queue, or why not.
pub type Delivery = Result<(), AwsError>;

/// A message attribute: name, SQS data type (`String` or `Number`), value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The attribute's name.
    pub name: &'static str,
    /// `String` or `Number`.
    pub data_type: &'static str,
    /// Its value, as text.
    pub value: String,
}

impl Attribute {
    /// A `String` attribute.
    pub fn string(name: &'static str, value: impl Into<String>) -> Self {
        Self {
            name,
            data_type: "String",
            value: value.into(),
        }
    }

    /// A `Number` attribute.
    pub fn number(name: &'static str, value: u64) -> Self {
        Self {
            name,
            data_type: "Number",
            value: value.to_string(),
        }
    }
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// The message body.
    pub body: Cow<'a, str>,
    /// Message attributes.
    pub attributes: Vec<Attribute>,
    /// FIFO queues: the message group.
    pub group_id: Option<String>,
    /// FIFO queues: the deduplication id; a resend with the same id within SQS's
    /// five-minute window is not delivered twice.
    pub dedup_id: Option<String>,
}

impl Outgoing<'_> {
    /// Size as SQS counts it: body, and each attribute's name, type and value, in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|a| a.name.len() + a.data_type.len() + a.value.len())
                .sum::<usize>()
    }
}

/// Sends to one queue.
#[derive(Debug, Clone)]
pub struct SqsSender {
    /// Shared SQS client.
    client: Client,
    /// The queue.
    queue_url: String,
    /// Bound on each message and each batch, in bytes (`FORWARDER_MAX_MESSAGE_BYTES`).
    max_message_bytes: usize,
    /// Retry bounds.
    policy: RetryPolicy,
    /// Where sends are timed and retries counted.
    metrics: Metrics,
}

impl SqsSender {
    /// A sender to `queue_url`.
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        max_message_bytes: usize,
        policy: RetryPolicy,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            max_message_bytes,
            policy,
            metrics,
        }
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The bound on a message, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Sends messages; one delivery per message, in order. Order is kept across
    /// batches, which are sent one after the other.
    pub async fn send(&self, messages: &[Outgoing<'_>]) -> Vec<Delivery> {
        let sizes: Vec<usize> = messages.iter().map(Outgoing::size).collect();
        let plan = batch::plan(&sizes, self.max_message_bytes);
        let mut deliveries: Vec<Option<Delivery>> = vec![None; messages.len()];
        for &i in &plan.oversized {
            deliveries[i] = Some(Err(AwsError {
                operation: "send",
                class: ErrorClass::MessageRejected,
                code: Some("MessageTooLong".into()),
                message: format!(
                    "message is {} bytes, over the {}-byte limit",
                    sizes[i], self.max_message_bytes
                ),
            }));
        }
        for indices in plan.batches {
            let outcomes = self.send_batch(messages, &indices).await;
            for (i, outcome) in indices.into_iter().zip(outcomes) {
                deliveries[i] = Some(outcome);
            }
        }
        deliveries
            .into_iter()
            .map(|d| d.unwrap_or_else(|| Err(local("message was not planned into a batch"))))
            .collect()
    }

    /// One batch of at most ten messages, retried entry by entry.
    async fn send_batch(&self, messages: &[Outgoing<'_>], indices: &[usize]) -> Vec<Delivery> {
        let mut entries = Vec::with_capacity(indices.len());
        let mut unbuilt = Vec::new();
        for (n, &i) in indices.iter().enumerate() {
            let id = n.to_string();
            match entry(&id, &messages[i]) {
                Ok(entry) => entries.push((id, entry)),
                Err(e) => unbuilt.push((id, e)),
            }
        }
        let outcomes = retry_batch(&self.policy, "send", &self.metrics, entries, |req| {
            let call = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(req));
            let metrics = self.metrics.clone();
            async move {
                let started = Instant::now();
                let out = call.send().await;
                metrics.timing(Timer::BatchSend, started.elapsed());
                let out = out.map_err(|e| AwsError::from_sdk("send", e))?;
                Ok(BatchReply {
                    successful: out.successful.into_iter().map(|s| s.id).collect(),
                    failed: out.failed.into_iter().map(EntryFailure::from).collect(),
                })
            }
        })
        .await;
        (0..indices.len())
            .map(|n| {
                let id = n.to_string();
                match outcomes.get(&id) {
                    Some(outcome) => outcome.clone(),
                    None => Err(local(
                        unbuilt
                            .iter()
                            .find(|(u, _)| *u == id)
                            .map_or("no outcome for the entry", |(_, e)| e.as_str()),
                    )),
                }
            })
            .collect()
    }
}

fn entry(id: &str, m: &Outgoing<'_>) -> Result<SendMessageBatchRequestEntry, String> {
    let mut builder = SendMessageBatchRequestEntry::builder()
        .id(id)
        .message_body(m.body.as_ref())
        .set_message_group_id(m.group_id.clone())
        .set_message_deduplication_id(m.dedup_id.clone());
    for a in &m.attributes {
        let value = MessageAttributeValue::builder()
            .data_type(a.data_type)
            .string_value(&a.value)
            .build()
            .map_err(|e| e.to_string())?;
        builder = builder.message_attributes(a.name, value);
    }
    builder.build().map_err(|e| e.to_string())
}

fn local(message: &str) -> AwsError {
    AwsError {
        operation: "send",
        class: ErrorClass::Local,
        code: None,
        message: message.to_string(),
    }
}
