//! Sending messages to one queue with SendMessageBatch: batches within SQS's limits,
//! only transiently failed entries sent again. The destination and the dead-letter
//! queue both send through it.
//!
//! Order: a message may name the one it must follow ([`Outgoing::after`]). It is sent
//! only once that one was accepted, and never in the same call, so a failed message is
//! never overtaken by a later one of its group: if it is not accepted, the later ones
//! are not sent at all ([`SendOutcome::HeldBack`]). Sending stops at the first error
//! that makes the queue unusable ([`ErrorClass::is_route_level`]): what is left is
//! [`SendOutcome::NotSent`].

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_sqs::types::{
    MessageSystemAttributeNameForSends, MessageSystemAttributeValue, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;

use super::batch;
pub use crate::aws::Attribute;
use crate::aws::{batch_reply, entry_missing, AwsError};
use crate::batching::{BatchWindow, ByteBound, CallFn, Window};
use crate::metrics::{Distribution, Metrics, Timer};
use crate::outcome::{ErrorClass, Operation};
use crate::retry::{retry_batch_rebuilt, RetryPolicy};

/// A queue's bound on each message and each batch, in bytes: the smaller of
/// `FORWARDER_MAX_MESSAGE_BYTES` and the queue's own `MaximumMessageSize` (256 KiB on
/// every queue made before SQS raised its limit to 1 MiB, unless its owner changed it),
/// read at start and again every minute. The offload decision, the packer's budget and
/// the batch byte budget all read it.
#[derive(Debug, Clone)]
pub struct MessageLimit {
    /// `FORWARDER_MAX_MESSAGE_BYTES`: never exceeded, whatever the queue allows.
    configured: usize,
    /// The bound in force, shared with the send window and the packer.
    bound: ByteBound,
}

impl MessageLimit {
    /// `configured` bytes until the queue's own limit is known.
    pub fn new(configured: usize) -> Self {
        Self {
            configured,
            bound: ByteBound::new(configured),
        }
    }

    /// The bound in force.
    pub fn bytes(&self) -> usize {
        self.bound.get()
    }

    /// `FORWARDER_MAX_MESSAGE_BYTES`.
    pub fn configured(&self) -> usize {
        self.configured
    }

    /// The shared bound, for a window that must follow it.
    pub fn bound(&self) -> ByteBound {
        self.bound.clone()
    }

    /// Follows the queue's `MaximumMessageSize` (`None`: unknown, the setting alone);
    /// the bound before and after.
    pub fn follow_queue(&self, queue_max: Option<usize>) -> (usize, usize) {
        let new = queue_max.map_or(self.configured, |q| q.min(self.configured));
        (self.bound.set(new), new)
    }
}

/// The result of sending one message: accepted by the queue, or why not.
pub type Delivery = Result<(), AwsError>;

/// What became of one message given to [`SqsSender::send`].
#[derive(Debug, Clone)]
pub enum SendOutcome {
    /// The queue accepted it.
    Accepted,
    /// It was sent and not accepted (after retries, if transient).
    Failed(AwsError),
    /// Not sent: the message it must follow was not accepted.
    HeldBack,
    /// Not sent: an earlier call found the queue unusable.
    NotSent,
}

/// A pack's call answers with each line's outcome; a failed one is classed as its error.
impl crate::retry::Classified for SendOutcome {
    fn class(&self) -> ErrorClass {
        match self {
            SendOutcome::Failed(err) => err.class,
            SendOutcome::Accepted | SendOutcome::HeldBack | SendOutcome::NotSent => {
                ErrorClass::Local
            }
        }
    }
}

impl SendOutcome {
    /// As a [`Delivery`], for callers that only care whether it was accepted.
    pub fn delivery(self) -> Delivery {
        match self {
            SendOutcome::Accepted => Ok(()),
            SendOutcome::Failed(err) => Err(err),
            SendOutcome::HeldBack => Err(local("held back behind an earlier message of its group")),
            SendOutcome::NotSent => Err(local("not sent: the queue is unusable for now")),
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
    /// The message group: order on a FIFO queue, the tenant on a standard (fair) queue.
    pub group_id: Option<String>,
    /// The source message's X-Ray trace header (`AWSTraceHeader`), sent on as the same
    /// message system attribute so the trace continues across the hop.
    pub trace_header: Option<String>,
    /// FIFO queues: the deduplication id; a resend with the same id within SQS's
    /// five-minute window is not delivered twice.
    pub dedup_id: Option<String>,
    /// The index (in the same [`SqsSender::send`] call) of the message this one must
    /// follow: the previous one of its message group on a FIFO queue.
    pub after: Option<usize>,
}

impl Outgoing<'_> {
    /// Size as SQS counts it: body, and each attribute's name, type and value, in bytes.
    pub fn size(&self) -> usize {
        self.body.len() + self.attributes.iter().map(Attribute::size).sum::<usize>()
    }
}

/// Bodies a send may move into the entries of their first call instead of copying them,
/// and how to make one again for a retry. A caller that owns its messages' bodies (the
/// forwarder, whose bodies are encoded for the destination) gives them here: a 1 MiB
/// event is then held once less while it waits for its call and while the call is made
/// (docs/PERFORMANCE.md, "Large events").
pub struct OwnedBodies<'f> {
    /// Per message: its body until its first call takes it; `None` for a message whose
    /// body was not given (its own body is copied, as by [`SqsSender::send`]).
    bodies: Vec<Mutex<Option<String>>>,
    /// Per message: the length of the body given (0: not given), for the call plan.
    lens: Vec<usize>,
    /// Makes message `i`'s body again, for a retry of its entry.
    again: &'f (dyn Fn(usize) -> Option<String> + Sync),
}

impl<'f> OwnedBodies<'f> {
    /// Moves the owned body of each message that `give` picks out of `messages` (a
    /// borrowed body stays: it is copied into its entry, as before); `again(i)` makes
    /// message `i`'s body again, the same text.
    pub fn take(
        messages: &mut [Outgoing<'_>],
        give: impl Fn(usize) -> bool,
        again: &'f (dyn Fn(usize) -> Option<String> + Sync),
    ) -> Self {
        let mut bodies = Vec::with_capacity(messages.len());
        let mut lens = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter_mut().enumerate() {
            let body = match &mut m.body {
                Cow::Owned(body) if give(i) => Some(std::mem::take(body)),
                _ => None,
            };
            lens.push(body.as_ref().map_or(0, String::len));
            bodies.push(Mutex::new(body));
        }
        Self {
            bodies,
            lens,
            again,
        }
    }

    /// Whether message `i`'s body was given.
    fn given(&self, i: usize) -> bool {
        self.lens.get(i).is_some_and(|&len| len > 0)
    }

    fn len(&self, i: usize) -> usize {
        self.lens.get(i).copied().unwrap_or(0)
    }

    /// Message `i`'s body, for its first call: once.
    fn first(&self, i: usize) -> Option<String> {
        self.bodies.get(i)?.lock().ok()?.take()
    }

    /// Message `i`'s body made again, for a retry.
    fn again(&self, i: usize) -> Option<String> {
        (self.again)(i)
    }
}

/// Sends to one queue.
#[derive(Debug, Clone)]
pub struct SqsSender {
    /// Shared SQS client.
    client: Client,
    /// Where every SendMessageBatch goes: shared by every clone of this sender (every
    /// poller), so their entries share calls within `FORWARDER_BATCH_WINDOW`.
    window: Arc<Window<SendMessageBatchRequestEntry, AwsError>>,
    /// The queue.
    queue_url: String,
    /// Bound on each message and each batch, in bytes: `FORWARDER_MAX_MESSAGE_BYTES`, or
    /// the queue's own `MaximumMessageSize` when smaller. Shared by every clone.
    limit: MessageLimit,
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
        let queue_url = queue_url.into();
        let limit = MessageLimit::new(max_message_bytes);
        let window = Arc::new(send_window(
            BatchWindow::none(),
            &client,
            &queue_url,
            limit.bound(),
            &metrics,
        ));
        Self {
            client,
            window,
            queue_url,
            limit,
            policy,
            metrics,
        }
    }

    /// The same sender, its calls shared within `window` by every clone made after.
    pub fn with_window(mut self, window: &BatchWindow) -> Self {
        self.window = Arc::new(send_window(
            window.clone(),
            &self.client,
            &self.queue_url,
            self.limit.bound(),
            &self.metrics,
        ));
        self
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The bound on a message, in bytes, as it is now.
    pub fn max_message_bytes(&self) -> usize {
        self.limit.bytes()
    }

    /// The bound on a message (the setting and the queue's own limit).
    pub fn limit(&self) -> &MessageLimit {
        &self.limit
    }

    /// Reads the queue's `MaximumMessageSize` again (one try); a failure keeps the
    /// bound as it was.
    pub async fn refresh_limit(&self) {
        let read = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize)
            .send()
            .await;
        match read {
            Ok(out) => {
                let max = out
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize)
                    })
                    .and_then(|v| v.parse().ok());
                self.follow_queue_limit(max);
            }
            Err(err) => tracing::debug!(
                queue = %self.queue_url,
                error = %AwsError::from_sdk(Operation::GetAttributes, err),
                "MaximumMessageSize not read again"
            ),
        }
    }

    /// Takes the queue's `MaximumMessageSize` as read (`None`: not given, the setting
    /// alone bounds); logs a change.
    pub fn follow_queue_limit(&self, queue_max: Option<usize>) {
        let (old, new) = self.limit.follow_queue(queue_max);
        if old != new {
            tracing::info!(
                queue = %self.queue_url,
                old_bytes = old,
                new_bytes = new,
                "the destination's message size limit changed"
            );
        }
    }

    /// Whether the queue is usable again: GetQueueAttributes, one try (the probe of a
    /// paused route).
    pub async fn probe(&self) -> Result<(), AwsError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::from_sdk(Operation::GetAttributes, e))
    }

    /// Sends messages; one outcome per message, in order. Each round takes the messages
    /// whose predecessor is accepted (see the module): its first call goes alone, the
    /// rest of its calls together.
    pub async fn send(&self, messages: &[Outgoing<'_>]) -> Vec<SendOutcome> {
        self.send_with(messages, None).await
    }

    /// [`SqsSender::send`] of messages whose bodies were moved into `owned`: each goes
    /// into its first call's entry without a copy (see [`OwnedBodies`]).
    pub async fn send_owned(
        &self,
        messages: &[Outgoing<'_>],
        owned: &OwnedBodies<'_>,
    ) -> Vec<SendOutcome> {
        self.send_with(messages, Some(owned)).await
    }

    async fn send_with(
        &self,
        messages: &[Outgoing<'_>],
        owned: Option<&OwnedBodies<'_>>,
    ) -> Vec<SendOutcome> {
        let sizes: Vec<usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| m.size() + owned.map_or(0, |o| o.len(i)))
            .collect();
        let mut outcomes: Vec<Option<SendOutcome>> = vec![None; messages.len()];
        loop {
            // This round: every message not settled whose predecessor is accepted. One
            // whose predecessor failed or was held is held in turn (in order, so a
            // chain is held back whole).
            let mut ready = Vec::new();
            for i in 0..messages.len() {
                if outcomes[i].is_some() {
                    continue;
                }
                match messages[i]
                    .after
                    .map(|j| outcomes.get(j).cloned().flatten())
                {
                    None | Some(Some(SendOutcome::Accepted)) => ready.push(i),
                    Some(None) => {} // its predecessor goes first, in an earlier call
                    Some(Some(_)) => outcomes[i] = Some(SendOutcome::HeldBack),
                }
            }
            if ready.is_empty() {
                break;
            }
            let round: Vec<usize> = ready.iter().map(|&i| sizes[i]).collect();
            let max_bytes = self.limit.bytes();
            let plan = batch::plan(&round, max_bytes);
            for &k in &plan.oversized {
                let i = ready[k];
                outcomes[i] = Some(SendOutcome::Failed(too_long(format!(
                    "message is {} bytes, over the {}-byte limit",
                    sizes[i], max_bytes
                ))));
            }
            // The first call alone: a queue found unusable stops the round there. Then
            // the rest at once: each call of large events is full by bytes and goes at
            // once, so a batch of 500 KB events is as slow as one call, not five.
            let calls: Vec<Vec<usize>> = plan
                .batches
                .into_iter()
                .map(|batch| batch.into_iter().map(|k| ready[k]).collect())
                .collect();
            let Some((first, rest)) = calls.split_first() else {
                continue;
            };
            let mut unusable = self.record(
                &mut outcomes,
                first,
                self.send_batch(messages, owned, first).await,
            );
            if !unusable && !rest.is_empty() {
                let sent = futures_util::future::join_all(
                    rest.iter()
                        .map(|indices| self.send_batch(messages, owned, indices)),
                )
                .await;
                for (indices, sent) in rest.iter().zip(sent) {
                    unusable |= self.record(&mut outcomes, indices, sent);
                }
            }
            if unusable {
                return outcomes
                    .into_iter()
                    .map(|o| o.unwrap_or(SendOutcome::NotSent))
                    .collect();
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(SendOutcome::HeldBack))
            .collect()
    }

    /// Records one call's deliveries as the outcomes of the messages at `indices`;
    /// whether one found the queue unusable.
    fn record(
        &self,
        outcomes: &mut [Option<SendOutcome>],
        indices: &[usize],
        sent: Vec<Delivery>,
    ) -> bool {
        let unusable = sent
            .iter()
            .any(|d| matches!(d, Err(e) if e.class.is_route_level()));
        for (&i, delivery) in indices.iter().zip(sent) {
            outcomes[i] = Some(match delivery {
                Ok(()) => SendOutcome::Accepted,
                Err(err) => SendOutcome::Failed(err),
            });
        }
        unusable
    }

    /// One batch of at most ten messages, retried entry by entry.
    async fn send_batch(
        &self,
        messages: &[Outgoing<'_>],
        owned: Option<&OwnedBodies<'_>>,
        indices: &[usize],
    ) -> Vec<Delivery> {
        let mut entries = Vec::with_capacity(indices.len());
        let mut unbuilt = Vec::new();
        for (n, &i) in indices.iter().enumerate() {
            let id = n.to_string();
            let body = match owned {
                Some(o) if o.given(i) => match o.first(i) {
                    Some(body) => Some(body),
                    None => {
                        unbuilt.push((id, "its body was already sent".to_string()));
                        continue;
                    }
                },
                _ => None,
            };
            match entry(&id, &messages[i], body) {
                Ok(entry) => entries.push((id, entry)),
                Err(e) => unbuilt.push((id, e)),
            }
        }
        // A retry builds its entries again from the messages (a body given in `owned`
        // made again): a 1 MiB body is held once more while a call is made, not once
        // more for the whole send.
        let again = |id: &str| {
            let i = *indices.get(id.parse::<usize>().ok()?)?;
            let body = match owned {
                Some(o) if o.given(i) => Some(o.again(i)?),
                _ => None,
            };
            entry(id, &messages[i], body).ok()
        };
        // Each attempt's accepted entries are told of as it answers (the idempotency
        // store marks them then), not when the batch's retries end.
        let call = |req: Vec<SendMessageBatchRequestEntry>| {
            let events: Vec<(String, String)> = if super::reporting() {
                req.iter()
                    .filter_map(|e| {
                        let id = e.message_attributes()?.get("event_id")?.string_value()?;
                        Some((e.id().to_string(), id.to_string()))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let answer = self.window.submit(req);
            async move {
                let answer = answer.await;
                if let Ok(reply) = &answer {
                    let accepted = events
                        .into_iter()
                        .filter(|(entry, _)| reply.successful.contains(entry))
                        .map(|(_, event)| event)
                        .collect();
                    super::report_accepted(accepted);
                }
                answer
            }
        };
        let outcomes = retry_batch_rebuilt(
            &self.policy,
            Operation::Send,
            &self.metrics,
            entries,
            again,
            call,
            || entry_missing(Operation::Send),
        )
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

/// The batching window of SendMessageBatch calls to `queue_url`: each call timed, its
/// entries counted (`forwarder.send_batch.entries`).
fn send_window(
    window: BatchWindow,
    client: &Client,
    queue_url: &str,
    max_bytes: ByteBound,
    metrics: &Metrics,
) -> Window<SendMessageBatchRequestEntry, AwsError> {
    let (client, queue_url, metrics) = (client.clone(), queue_url.to_string(), metrics.clone());
    let call: CallFn<SendMessageBatchRequestEntry, AwsError> = Arc::new(move |entries| {
        metrics.distribution(Distribution::SendBatchEntries, entries.len() as u64);
        let call = client
            .send_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries));
        let metrics = metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let out = call.send().await;
            metrics.timing(Timer::BatchSend, started.elapsed());
            let out = out.map_err(|e| AwsError::from_sdk(Operation::Send, e))?;
            Ok(batch_reply(
                Operation::Send,
                out.successful.into_iter().map(|s| s.id),
                out.failed,
            ))
        })
    });
    Window::new(window, batch::MAX_ENTRIES, max_bytes, call)
}

/// The entry of `m`, its body `body` when given (moved in), else a copy of `m.body`.
fn entry(
    id: &str,
    m: &Outgoing<'_>,
    body: Option<String>,
) -> Result<SendMessageBatchRequestEntry, String> {
    let body = body.unwrap_or_else(|| m.body.to_string());
    let mut builder = SendMessageBatchRequestEntry::builder()
        .id(id)
        .message_body(body)
        .set_message_group_id(m.group_id.clone())
        .set_message_deduplication_id(m.dedup_id.clone());
    for a in &m.attributes {
        builder = builder.message_attributes(a.name.as_ref(), a.to_sdk()?);
    }
    if let Some(header) = &m.trace_header {
        let value = MessageSystemAttributeValue::builder()
            .data_type("String")
            .string_value(header)
            .build()
            .map_err(|e| e.to_string())?;
        builder = builder
            .message_system_attributes(MessageSystemAttributeNameForSends::AwsTraceHeader, value);
    }
    builder.build().map_err(|e| e.to_string())
}

/// A message over the queue's size limit, not sent: SQS would refuse it every time
/// (`MessageTooLong`, as SQS names it).
pub(super) fn too_long(message: String) -> AwsError {
    AwsError {
        operation: Operation::Send,
        class: ErrorClass::MessageRejected,
        code: Some("MessageTooLong".into()),
        message,
    }
}

/// A send that failed here, not at SQS.
pub(super) fn local(message: &str) -> AwsError {
    AwsError {
        operation: Operation::Send,
        class: ErrorClass::Local,
        code: None,
        message: message.to_string(),
    }
}
