//! Where events go: the destination queue, through SendMessageBatch.
//!
//! Events are packed into batches of at most ten within SQS's byte limits
//! ([`batch::plan`]); a batch's transiently failed entries are sent again on their own
//! with backoff ([`crate::aws::retry_batch`]); [`sender`] does both, for the destination
//! and for the dead-letter queue ([`dead_letter`]). Every forward runs inside
//! [`track_response_metric`], which counts one `data-forwarding.http_response` per event.
//! FIFO destinations get a message group ([`fifo`]) and the event id as deduplication id.

pub mod batch;
pub mod dead_letter;
pub mod fifo;
pub mod offload;
pub mod rate_limit;
pub mod router;
pub mod sender;

use std::borrow::Cow;
use std::future::Future;

use aws_sdk_sqs::Client;

use crate::aws::AwsError;
use crate::event::Event;
use crate::metrics::{events as metrics_events, Counter, Metrics};
use crate::retry::{ErrorClass, RetryPolicy};

pub use dead_letter::{DeadLetter, DeadLetterQueue, Reason};
pub use fifo::GroupTemplate;
pub use offload::{Offloader, PointerFormat};
pub use rate_limit::{OrgRateLimiter, RateLimit};
pub use router::Router;
pub use sender::{Attribute, Delivery, Outgoing, SqsSender};

/// SQS's message size limit (1 MiB), the default of `FORWARDER_MAX_MESSAGE_BYTES`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

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

/// Sends events to the destination queue.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Sends to the destination.
    sender: SqsSender,
    /// FIFO destinations: the message group of each event. `None` for a standard queue.
    group: Option<GroupTemplate>,
    /// Where events over the size limit go (`FORWARDER_S3_BUCKET`); `None`: they are
    /// not forwarded (and dead-lettered, if there is a dead-letter queue).
    offloader: Option<Offloader>,
    /// Keeps each organization within `FORWARDER_RATE_LIMIT`; shared by every worker.
    rate_limit: Option<std::sync::Arc<OrgRateLimiter>>,
    /// Where `data-forwarding.http_response` is counted.
    metrics: Metrics,
}

impl Forwarder {
    /// A forwarder to `queue_url`; `group` for a FIFO destination.
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        max_message_bytes: usize,
        policy: RetryPolicy,
        metrics: Metrics,
    ) -> Self {
        Self {
            sender: SqsSender::new(
                client,
                queue_url,
                max_message_bytes,
                policy,
                metrics.clone(),
            ),
            group: None,
            offloader: None,
            rate_limit: None,
            metrics,
        }
    }

    /// Holds each organization to a rate: events over it wait.
    pub fn with_rate_limit(mut self, limiter: Option<std::sync::Arc<OrgRateLimiter>>) -> Self {
        self.rate_limit = limiter;
        self
    }

    /// Stores events over the size limit in S3 and sends pointers instead.
    pub fn with_offloader(mut self, offloader: Option<Offloader>) -> Self {
        self.offloader = offloader;
        self
    }

    /// Sends to a FIFO destination with this message group.
    pub fn with_group(mut self, group: Option<GroupTemplate>) -> Self {
        self.group = group;
        self
    }

    /// The destination queue's URL.
    pub fn queue_url(&self) -> &str {
        self.sender.queue_url()
    }

    /// Forwards events; returns one delivery per event, in order.
    ///
    /// Each message carries the attributes `event_id`, `project_id` and
    /// `organization_id`. To a FIFO queue, its deduplication id is the event id, so a
    /// resent event is not delivered twice within SQS's deduplication window.
    pub async fn forward(&self, events: &[&Event<'_>]) -> Vec<Delivery> {
        track_response_metric(&self.metrics, self.send_events(events)).await
    }

    async fn send_events(&self, events: &[&Event<'_>]) -> Vec<Delivery> {
        let mut deliveries: Vec<Option<Delivery>> = vec![None; events.len()];
        let mut outgoing = Vec::with_capacity(events.len());
        let mut positions = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            if let Some(limiter) = &self.rate_limit {
                limiter.until_ready(e.organization_id).await;
            }
            let mut message = Outgoing {
                body: e.encoded(),
                attributes: vec![
                    Attribute::string("event_id", e.event_id.as_ref()),
                    Attribute::number("project_id", e.project_id),
                    Attribute::number("organization_id", e.organization_id),
                ],
                group_id: self.group.as_ref().map(|g| g.render(e)),
                dedup_id: self.group.as_ref().map(|_| e.event_id.to_string()),
            };
            let size = message.size();
            if size > self.sender.max_message_bytes() {
                let Some(offloader) = &self.offloader else {
                    metrics_events::oversized_skipped(&self.metrics, &e.event_id, size);
                    deliveries[i] = Some(Err(AwsError {
                        operation: "send",
                        class: ErrorClass::Oversized,
                        code: None,
                        message: format!(
                            "event is {size} bytes, over the {}-byte limit, and no S3 bucket is configured",
                            self.sender.max_message_bytes()
                        ),
                    }));
                    continue;
                };
                match offloader.offload(e, &message.body).await {
                    Ok(pointer) => {
                        message.body = Cow::Owned(pointer.body);
                        message.attributes.extend(pointer.attributes);
                    }
                    Err(err) => {
                        deliveries[i] = Some(Err(err));
                        continue;
                    }
                }
            }
            outgoing.push(message);
            positions.push(i);
        }
        let sent = self.sender.send(&outgoing).await;
        for (i, delivery) in positions.into_iter().zip(sent) {
            deliveries[i] = Some(delivery);
        }
        deliveries
            .into_iter()
            .map(|d| {
                d.unwrap_or_else(|| {
                    Err(AwsError {
                        operation: "send",
                        class: ErrorClass::Local,
                        code: None,
                        message: "no outcome for the event".into(),
                    })
                })
            })
            .collect()
    }
}
