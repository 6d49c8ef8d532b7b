//! Where events go: the destination queue, through SendMessageBatch.
//!
//! Events are packed into batches of at most ten within SQS's byte limits
//! ([`batch::plan`]); a batch's transiently failed entries are sent again on their own
//! with backoff ([`crate::aws::retry_batch`]). Every forward runs inside
//! [`track_response_metric`], which counts one `data-forwarding.http_response` per event.

pub mod batch;

use std::future::Future;
use std::time::Instant;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;

use crate::aws::{retry_batch, BatchReply, EntryFailure, SqsError};
use crate::event::Event;
use crate::metrics::{Counter, Metrics, Timer};
use crate::retry::{ErrorClass, RetryPolicy};

/// SQS's message size limit (1 MiB), the default of `FORWARDER_MAX_MESSAGE_BYTES`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The result of forwarding one event: accepted by the destination, or why not.
pub type Delivery = Result<(), SqsError>;

/// Counts exactly one `data-forwarding.http_response` per event forwarded by `send`,
/// tagged `success:true` if the destination accepted it and `success:false` otherwise,
/// as Sentry's Amazon SQS plugin does around each forward.
pub async fn track_response_metric<F>(metrics: &Metrics, send: F) -> Vec<Delivery>
where
    F: Future<Output = Vec<Delivery>>,
{
    let deliveries = send.await;
    for delivery in &deliveries {
        metrics.incr(Counter::HttpResponse {
            success: delivery.is_ok(),
        });
    }
    deliveries
}

/// Sends events to one destination queue.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Shared SQS client.
    client: Client,
    /// The destination queue.
    queue_url: String,
    /// Bound on each message and each batch, in bytes (`FORWARDER_MAX_MESSAGE_BYTES`).
    max_message_bytes: usize,
    /// Retry bounds for sends.
    policy: RetryPolicy,
    /// Where sends are timed and counted.
    metrics: Metrics,
}

impl Forwarder {
    /// A forwarder to `queue_url`.
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

    /// The destination queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Forwards events; returns one delivery per event, in order.
    pub async fn forward(&self, events: &[Event<'_>]) -> Vec<Delivery> {
        track_response_metric(&self.metrics, self.send_all(events)).await
    }

    async fn send_all(&self, events: &[Event<'_>]) -> Vec<Delivery> {
        let bodies: Vec<std::borrow::Cow<'_, str>> = events.iter().map(Event::encoded).collect();
        let sizes: Vec<usize> = bodies.iter().map(|b| b.len()).collect();
        let plan = batch::plan(&sizes, self.max_message_bytes);
        let mut deliveries: Vec<Option<Delivery>> = vec![None; events.len()];
        for &i in &plan.oversized {
            deliveries[i] = Some(Err(SqsError {
                operation: "send",
                class: ErrorClass::MessageRejected,
                code: Some("MessageTooLong".into()),
                message: format!(
                    "event is {} bytes, over the {}-byte limit",
                    sizes[i], self.max_message_bytes
                ),
            }));
        }
        for indices in plan.batches {
            let outcomes = self.send_batch(&bodies, &indices).await;
            for (i, outcome) in indices.into_iter().zip(outcomes) {
                deliveries[i] = Some(outcome);
            }
        }
        deliveries
            .into_iter()
            .map(|d| {
                d.unwrap_or_else(|| {
                    Err(SqsError {
                        operation: "send",
                        class: ErrorClass::Local,
                        code: None,
                        message: "event was not planned into a batch".into(),
                    })
                })
            })
            .collect()
    }

    /// One batch of at most ten events, retried entry by entry.
    async fn send_batch(
        &self,
        bodies: &[std::borrow::Cow<'_, str>],
        indices: &[usize],
    ) -> Vec<Delivery> {
        let mut entries = Vec::with_capacity(indices.len());
        let mut unbuilt = Vec::new();
        for (n, &i) in indices.iter().enumerate() {
            let id = n.to_string();
            match SendMessageBatchRequestEntry::builder()
                .id(&id)
                .message_body(bodies[i].as_ref())
                .build()
            {
                Ok(entry) => entries.push((id, entry)),
                Err(e) => unbuilt.push((id, e.to_string())),
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
                let out = out.map_err(|e| SqsError::from_sdk("send", e))?;
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
                    None => Err(SqsError {
                        operation: "send",
                        class: ErrorClass::Local,
                        code: None,
                        message: unbuilt
                            .iter()
                            .find(|(u, _)| *u == id)
                            .map(|(_, e)| e.clone())
                            .unwrap_or_else(|| "no outcome for the entry".into()),
                    }),
                }
            })
            .collect()
    }
}
