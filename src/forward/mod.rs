//! Where events go: the destination queue, through SendMessageBatch.
//!
//! Events are packed into batches of at most ten within SQS's byte limits
//! ([`batch::plan`]); a batch's transiently failed entries are sent again on their own
//! with backoff ([`crate::retry::retry_batch`]); [`sender`] does both, for the destination
//! and for the dead-letter queue ([`dead_letter`]). Every forward runs inside
//! [`track_response_metric`], which counts one `data-forwarding.http_response` per event
//! sent. FIFO destinations get a message group ([`fifo`]) and the event id as
//! deduplication id, and each group goes in order.
//!
//! A route may pack many events into one message, one per line ([`pack`]).
//!
//! One failure stays where it belongs: an organization over its rate limit
//! ([`rate_limit`]) has its own events deferred, nobody else's; a destination that is
//! unusable pauses its own route ([`pause`]), not the others.

mod attributes;
mod batch;
mod dead_letter;
mod fifo;
mod offload;
mod pack;
mod pack_object;
mod pause;
mod rate_limit;
mod router;
mod sender;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;

use crate::aws::AwsError;
use crate::event::fields::{FieldRules, Filter};
use crate::event::Event;
use crate::internal_events::{InternalEvent, OversizedSkipped};
use crate::metrics::{Counter, Metrics};
use crate::outcome::{ErrorClass, Operation};
use crate::retry::RetryPolicy;

pub use attributes::{ForwardAttributes, TEST_EVENT_ATTRIBUTE, TRACE_CONTEXT};
pub use batch::MAX_ENTRIES;
pub use dead_letter::{DeadLetter, DeadLetterQueue, Reason};
pub use fifo::GroupTemplate;
pub use offload::{OffloadMode, Offloader, PointerFormat, S3Encryption};
pub use pack::{Pack, Packer};
pub use pack_object::PackCompression;
pub use pause::{Gate, Pauses, RouteGate};
pub use rate_limit::{OrgRateLimiter, RateLimit};
pub use router::{Router, SharedRouter};
pub use sender::{
    Attribute, Delivery, MessageLimit, Outgoing, OwnedBodies, SendOutcome, SqsSender,
};

/// SQS's message size limit (1 MiB), the default of `FORWARDER_MAX_MESSAGE_BYTES`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why an event was not sent now, on purpose. Its message stays in the source queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferCause {
    /// Its organization is over `FORWARDER_RATE_LIMIT`.
    RateLimited,
    /// Its route is paused (see [`pause`]).
    RoutePaused,
    /// An earlier event of its message group was not accepted: sending this one would
    /// reorder the group.
    HeldBack,
    /// Another worker holds its idempotency claim, whose lease runs
    /// ([`crate::idempotency`]).
    ClaimHeld,
    /// The idempotency store gave no answer for it (fail-closed).
    StoreUnavailable,
}

impl DeferCause {
    /// The `cause` tag of `forwarder.event.deferred`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferCause::RateLimited => "rate_limited",
            DeferCause::RoutePaused => "route_paused",
            DeferCause::HeldBack => "held_back",
            DeferCause::ClaimHeld => "claim_held",
            DeferCause::StoreUnavailable => "idempotency_unavailable",
        }
    }
}

/// Told the event ids a destination accepted, call by call, the moment each call answers
/// (before the retries of the rest of its batch, before the batch's other calls): the
/// idempotency store marks them then ([`crate::idempotency`]).
pub type AcceptedHook = Arc<dyn Fn(Vec<String>) + Send + Sync>;

tokio::task_local! {
    /// The hook of the sends made within [`reporting_accepted`].
    static ACCEPTED: AcceptedHook;
}

/// Runs `sends`, telling `hook` the event ids of every call's accepted entries as each
/// call answers (entries that carry the `event_id` attribute: a packed message is told
/// of by its batch's end).
pub async fn reporting_accepted<F: Future>(hook: AcceptedHook, sends: F) -> F::Output {
    ACCEPTED.scope(hook, sends).await
}

/// Whether a hook listens (else nothing is gathered for it).
fn reporting() -> bool {
    ACCEPTED.try_with(|_| ()).is_ok()
}

/// Tells the hook, if one listens, of `event_ids` accepted.
fn report_accepted(event_ids: Vec<String>) {
    if event_ids.is_empty() {
        return;
    }
    let _ = ACCEPTED.try_with(|hook| hook(event_ids));
}

/// An event deferred: why, and how long its source message should stay hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferral {
    /// Why.
    pub cause: DeferCause,
    /// Hide the message this long (its organization's tokens are back, or the route's
    /// probe is due); `None`: leave its visibility as it is.
    pub delay: Option<Duration>,
}

/// What became of one event given to [`Forwarder::forward`].
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The destination accepted it.
    Accepted,
    /// Sent (or tried) and not accepted.
    Failed(AwsError),
    /// Not sent now, on purpose.
    Deferred(Deferral),
}

impl Outcome {
    /// Whether the destination accepted the event.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted)
    }
}

/// An event to forward, and the message group of its source message (a FIFO source):
/// to a FIFO destination, events of one group go in their order.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'e, 'a> {
    /// The event.
    pub event: &'e Event<'a>,
    /// `MessageGroupId` of its source message, if any.
    pub source_group: Option<&'e str>,
    /// `AWSTraceHeader` of its source message, sent on as the same system attribute.
    pub trace_header: Option<&'e str>,
    /// Its source message's attributes (those the receive asked for).
    pub attributes: &'e [Attribute],
}

impl<'e, 'a> From<&'e Event<'a>> for Routed<'e, 'a> {
    /// An event whose source message has no group.
    fn from(event: &'e Event<'a>) -> Self {
        Routed {
            event,
            source_group: None,
            trace_header: None,
            attributes: &[],
        }
    }
}

/// Counts exactly one `data-forwarding.http_response` per event whose send ended,
/// tagged `success:true` if the destination accepted it and `success:false` otherwise,
/// as Sentry's Amazon SQS plugin does around each forward. A deferred event was not
/// sent, so it is not counted (it will be when it is).
pub async fn track_response_metric<F>(metrics: &Metrics, send: F) -> Vec<Outcome>
where
    F: Future<Output = Vec<Outcome>>,
{
    let outcomes = send.await;
    for outcome in &outcomes {
        match outcome {
            Outcome::Accepted => metrics.incr(Counter::HttpResponse { success: true }),
            Outcome::Failed(_) => metrics.incr(Counter::HttpResponse { success: false }),
            Outcome::Deferred(_) => {}
        }
    }
    outcomes
}

/// Sends events to the destination queue.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Sends to the destination.
    sender: SqsSender,
    /// The message group of each event (`FORWARDER_MESSAGE_GROUP_ID`); `None`: none.
    /// On a standard destination it is the fair-queue tenant.
    group: Option<GroupTemplate>,
    /// Whether the destination is a FIFO queue: events of one group are then sent in
    /// order, a later one never before an earlier one was accepted.
    fifo: bool,
    /// Where events over the size limit go (`FORWARDER_S3_BUCKET`); `None`: they are
    /// not forwarded (and dead-lettered, if there is a dead-letter queue).
    offloader: Option<Offloader>,
    /// Keeps each organization within `FORWARDER_RATE_LIMIT`; shared by every worker.
    rate_limit: Option<Arc<OrgRateLimiter>>,
    /// The route's pause state: shared by every worker (clones share it).
    gate: Arc<RouteGate>,
    /// Retry bounds, also the waits between probes of a paused route.
    policy: RetryPolicy,
    /// Which source message attributes go on (`FORWARDER_FORWARD_ATTRIBUTES`).
    pass_attributes: ForwardAttributes,
    /// The fields this destination receives (`exclude_fields` / `include_fields`);
    /// `None`: the whole event.
    fields: Option<FieldRules>,
    /// The events this destination receives (`filter`); `None`: every one.
    filter: Option<Filter>,
    /// Packs many events into each message (`pack = "ndjson"`); `None`: one per message.
    packer: Option<Packer>,
    /// Where `data-forwarding.http_response` is counted.
    metrics: Metrics,
}

impl Forwarder {
    /// A forwarder to the standard queue `queue_url`.
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        max_message_bytes: usize,
        policy: RetryPolicy,
        metrics: Metrics,
    ) -> Self {
        let queue_url = queue_url.into();
        let gate = RouteGate::new(
            &queue_url,
            policy.clone(),
            Arc::new(Pauses::default()),
            metrics.clone(),
        );
        Self {
            sender: SqsSender::new(
                client,
                queue_url,
                max_message_bytes,
                policy.clone(),
                metrics.clone(),
            ),
            group: None,
            fifo: false,
            offloader: None,
            rate_limit: None,
            gate: Arc::new(gate),
            policy,
            pass_attributes: ForwardAttributes::None,
            fields: None,
            filter: None,
            packer: None,
            metrics,
        }
    }

    /// Packs the events into messages of many lines (`pack`), within `window`, each
    /// pack's S3 object compressed as `compression` says. Given after the group and the
    /// offloader, which the packs follow.
    pub fn with_pack(
        mut self,
        pack: Pack,
        compression: PackCompression,
        window: &crate::batching::BatchWindow,
    ) -> Self {
        self.packer = match pack {
            Pack::Off => None,
            Pack::Ndjson => Some(Packer::new(
                &self.sender,
                self.offloader.clone(),
                compression,
                self.fifo,
                window,
                self.metrics.clone(),
            )),
        };
        self
    }

    /// Whether events are packed many to a message.
    pub fn packs(&self) -> bool {
        self.packer.is_some()
    }

    /// Sends only the fields `fields` leaves, and only the events `filter` lets through.
    pub fn with_shape(mut self, fields: Option<FieldRules>, filter: Option<Filter>) -> Self {
        self.fields = fields;
        self.filter = filter;
        self
    }

    /// The events this destination receives; `None`: every one.
    pub fn filter(&self) -> Option<&Filter> {
        self.filter.as_ref()
    }

    /// The fields this destination receives; `None`: the whole event.
    pub fn fields(&self) -> Option<&FieldRules> {
        self.fields.as_ref()
    }

    /// Shares each SendMessageBatch with the other callers' events within `window`.
    pub fn with_window(mut self, window: &crate::batching::BatchWindow) -> Self {
        self.sender = self.sender.with_window(window);
        self
    }

    /// Sends on the source message attributes `pass` lets through.
    pub fn with_forward_attributes(mut self, pass: ForwardAttributes) -> Self {
        self.pass_attributes = pass;
        self
    }

    /// Shares `pauses`' state with every forwarder of the worker.
    pub fn with_pauses(mut self, pauses: Arc<Pauses>) -> Self {
        self.gate = Arc::new(RouteGate::new(
            self.sender.queue_url(),
            self.policy.clone(),
            pauses,
            self.metrics.clone(),
        ));
        self
    }

    /// Holds each organization to a rate: events over it are deferred.
    pub fn with_rate_limit(mut self, limiter: Option<Arc<OrgRateLimiter>>) -> Self {
        self.rate_limit = limiter;
        self
    }

    /// Stores events over the size limit in S3 and sends pointers instead.
    pub fn with_offloader(mut self, offloader: Option<Offloader>) -> Self {
        self.offloader = offloader;
        self
    }

    /// Sends with this message group. `fifo`: the destination is a FIFO queue, where the
    /// group orders its events and the event id deduplicates them; on a standard queue
    /// (a fair queue) the group only tells SQS the tenant, with no order and no
    /// deduplication id.
    pub fn with_group(mut self, group: Option<GroupTemplate>, fifo: bool) -> Self {
        self.fifo = fifo && group.is_some();
        self.group = group;
        self
    }

    /// The destination queue's URL.
    pub fn queue_url(&self) -> &str {
        self.sender.queue_url()
    }

    /// The route's pause state.
    pub fn gate(&self) -> &RouteGate {
        &self.gate
    }

    /// The route's bound on a message: the setting, or the queue's own limit if smaller.
    pub fn limit(&self) -> &MessageLimit {
        self.sender.limit()
    }

    /// Bounds messages by the queue's own `MaximumMessageSize` as well (`None`: not
    /// known; the setting alone bounds).
    pub fn with_queue_limit(self, queue_max: Option<usize>) -> Self {
        self.sender.follow_queue_limit(queue_max);
        self
    }

    /// Reads the queue's `MaximumMessageSize` again (one try).
    pub async fn refresh_limit(&self) {
        self.sender.refresh_limit().await;
    }

    /// Forwards events; returns one outcome per event, in order.
    ///
    /// Each message carries the attributes `event_id`, `project_id` and
    /// `organization_id`. To a FIFO queue, its deduplication id is the event id, so a
    /// resent event is not delivered twice within SQS's deduplication window, and the
    /// events of one group go in order: once one is not accepted, the later ones of its
    /// group are deferred, not sent. A paused route defers everything until its probe.
    pub async fn forward(&self, events: &[Routed<'_, '_>]) -> Vec<Outcome> {
        let paused = |wait: Duration| {
            vec![
                Outcome::Deferred(Deferral {
                    cause: DeferCause::RoutePaused,
                    delay: Some(wait),
                });
                events.len()
            ]
        };
        match self.gate.check() {
            Gate::Open => {}
            Gate::Closed(wait) => return paused(wait),
            Gate::Probe => {
                let probe = self.probe().await;
                let passed = probe.is_ok();
                self.gate.probed(probe);
                if !passed {
                    return paused(self.gate.retry_in().unwrap_or(self.policy.max_interval));
                }
            }
        }
        let outcomes = track_response_metric(&self.metrics, self.send_events(events)).await;
        if outcomes.iter().any(|o| matches!(o, Outcome::Accepted)) {
            self.gate.accepted();
        }
        outcomes
    }

    /// Probes a paused route: its bucket if a bucket paused it, else its queue.
    async fn probe(&self) -> Result<(), AwsError> {
        match (self.gate.paused_on(), &self.offloader) {
            (Some(ErrorClass::BucketInvalid), Some(offloader)) => offloader.check().await,
            _ => self.sender.probe().await,
        }
    }

    async fn send_events(&self, events: &[Routed<'_, '_>]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut outgoing = Vec::with_capacity(events.len());
        // Per message in `outgoing`: whether its body is its event's encoding (not a
        // pointer to S3), which a retry can make again.
        let mut encoded = Vec::with_capacity(events.len());
        let mut lines = Vec::new();
        let mut positions = Vec::with_capacity(events.len());
        // FIFO destinations: per message group, the last message planned and, once one
        // of the group is not going, the delay its followers inherit.
        let mut chains: HashMap<Cow<'_, str>, Chain> = HashMap::new();
        for (i, routed) in events.iter().enumerate() {
            let group_id = self.group.as_ref().map(|g| g.render(routed.event));
            let chain = self
                .chain_key(routed, group_id.as_deref())
                .map(|k| chains.entry(k).or_default());
            if let Some(Chain {
                blocked: Some(delay),
                ..
            }) = chain.as_deref()
            {
                outcomes[i] = Some(deferred(DeferCause::HeldBack, *delay));
                continue;
            }
            match self.prepare(routed, group_id).await {
                Prepared::Ready { message, .. } if self.packer.is_some() => {
                    // Its pack keeps its group's order.
                    lines.push(pack::Line::new(&routed.event.event_id, owned(message)));
                    positions.push(i);
                }
                Prepared::Ready {
                    mut message,
                    pointer,
                } => {
                    if let Some(c) = chain {
                        message.after = c.last;
                        c.last = Some(outgoing.len());
                    }
                    encoded.push(!pointer);
                    outgoing.push(message);
                    positions.push(i);
                }
                Prepared::Not(outcome, delay) => {
                    outcomes[i] = Some(outcome);
                    block(chain, delay);
                }
                Prepared::RouteUnusable(outcome) => {
                    // Nothing more goes to this route now, built or not.
                    outcomes[i] = Some(outcome);
                    let wait = self.gate.retry_in();
                    for o in outcomes.iter_mut().filter(|o| o.is_none()) {
                        *o = Some(deferred(DeferCause::RoutePaused, wait));
                    }
                    return finish(outcomes);
                }
            }
        }
        let sent = match &self.packer {
            Some(packer) => packer.send(lines).await,
            None => {
                // The encoded bodies go into their entries without a copy; a retry
                // encodes its event again.
                let again = |k: usize| {
                    let i = *positions.get(k)?;
                    Some(
                        events[i]
                            .event
                            .encoded_with(self.fields.as_ref())
                            .into_owned(),
                    )
                };
                let given = |k: usize| encoded.get(k).copied().unwrap_or(false);
                let owned = OwnedBodies::take(&mut outgoing, given, &again);
                self.sender.send_owned(&outgoing, &owned).await
            }
        };
        for (i, outcome) in positions.into_iter().zip(sent) {
            outcomes[i] = Some(self.outcome_of(outcome));
        }
        finish(outcomes)
    }

    /// The group an event keeps its order in, on a FIFO destination: its source
    /// message's group, else its destination group. `None`: order does not matter.
    fn chain_key<'e>(
        &self,
        routed: &Routed<'e, '_>,
        group_id: Option<&str>,
    ) -> Option<Cow<'e, str>> {
        match (self.fifo, routed.source_group, group_id) {
            (false, _, _) => None,
            (true, Some(source), _) => Some(Cow::Borrowed(source)),
            (true, None, Some(group)) => Some(Cow::Owned(group.to_string())),
            (true, None, None) => None,
        }
    }

    /// The message of one event, within its organization's rate and the size limit (its
    /// body stored in S3 if over it), or why it does not go now.
    async fn prepare<'a>(&self, routed: &Routed<'_, 'a>, group_id: Option<String>) -> Prepared<'a> {
        let e = routed.event;
        if let Some(limiter) = &self.rate_limit {
            if let Err(wait) = limiter.check(e.organization_id) {
                return Prepared::Not(deferred(DeferCause::RateLimited, Some(wait)), Some(wait));
            }
        }
        let mut message = Outgoing {
            body: e.encoded_with(self.fields.as_ref()),
            attributes: vec![
                Attribute::string("event_id", e.event_id.as_ref()),
                Attribute::number("project_id", e.project_id),
                Attribute::number("organization_id", e.organization_id),
            ],
            dedup_id: self.fifo.then(|| e.event_id.to_string()),
            group_id,
            trace_header: routed.trace_header.map(str::to_string),
            after: None,
        };
        // A pointer may bring its own attribute: room is kept for it.
        let room = crate::aws::MAX_ATTRIBUTES
            - self
                .offloader
                .as_ref()
                .map_or(0, Offloader::pointer_attributes);
        self.pass_attributes.extend(
            &mut message.attributes,
            routed.attributes,
            room,
            &self.metrics,
        );
        let size = message.size();
        let always = self.offloader.as_ref().is_some_and(Offloader::always);
        if always && self.packer.is_some() {
            // Its pack is stored whole, whatever its size.
            return Prepared::Ready {
                message,
                pointer: false,
            };
        }
        if size <= self.sender.max_message_bytes() && !always {
            return Prepared::Ready {
                message,
                pointer: false,
            };
        }
        let Some(offloader) = &self.offloader else {
            OversizedSkipped {
                event_id: &e.event_id,
                bytes: size,
            }
            .emit(&self.metrics);
            let err = AwsError {
                operation: Operation::Send,
                class: ErrorClass::Oversized,
                code: None,
                message: format!(
                    "event is {size} bytes, over the {}-byte limit, and no S3 bucket is configured",
                    self.sender.max_message_bytes()
                ),
            };
            return Prepared::Not(Outcome::Failed(err), None);
        };
        match offloader.offload(e, &message.body).await {
            Ok(pointer) => {
                message.body = Cow::Owned(pointer.body);
                message.attributes.extend(pointer.attributes);
                Prepared::Ready {
                    message,
                    pointer: true,
                }
            }
            Err(err) if err.class.is_route_level() => {
                self.gate.pause(&err);
                Prepared::RouteUnusable(Outcome::Failed(err))
            }
            Err(err) => Prepared::Not(Outcome::Failed(err), None),
        }
    }

    /// What became of a message the sender was given; an error that makes the route
    /// unusable pauses it.
    fn outcome_of(&self, sent: SendOutcome) -> Outcome {
        match sent {
            SendOutcome::Accepted => Outcome::Accepted,
            SendOutcome::Failed(err) => {
                if err.class.is_route_level() {
                    self.gate.pause(&err);
                }
                Outcome::Failed(err)
            }
            SendOutcome::HeldBack => deferred(DeferCause::HeldBack, self.gate.retry_in()),
            SendOutcome::NotSent => deferred(DeferCause::RoutePaused, self.gate.retry_in()),
        }
    }
}

/// One event, made ready to send or not.
enum Prepared<'a> {
    /// Its message: the event encoded for the destination, or (`pointer`) a pointer to
    /// it, stored in S3.
    Ready {
        /// The message.
        message: Outgoing<'a>,
        /// Whether its body is a pointer rather than the event.
        pointer: bool,
    },
    /// It does not go now: its outcome, and the delay the rest of its group inherits.
    Not(Outcome, Option<Duration>),
    /// Its failure makes the route unusable: nothing more goes to it now.
    RouteUnusable(Outcome),
}

/// Marks a message group as not going on: its later events are held back with `delay`.
fn block(chain: Option<&mut Chain>, delay: Option<Duration>) {
    if let Some(c) = chain {
        c.blocked = Some(delay);
    }
}

/// One message group's state within a [`Forwarder::send_events`] call.
#[derive(Debug, Default)]
struct Chain {
    /// The index (among the messages to send) of the group's last message planned.
    last: Option<usize>,
    /// Set once a message of the group is not going: the delay its followers get.
    blocked: Option<Option<Duration>>,
}

/// A message that owns its body, to wait in its pack's window.
fn owned(message: Outgoing<'_>) -> Outgoing<'static> {
    Outgoing {
        body: Cow::Owned(message.body.into_owned()),
        attributes: message.attributes,
        group_id: message.group_id,
        trace_header: message.trace_header,
        dedup_id: message.dedup_id,
        after: None,
    }
}

fn deferred(cause: DeferCause, delay: Option<Duration>) -> Outcome {
    Outcome::Deferred(Deferral { cause, delay })
}

fn finish(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Outcome::Failed(AwsError {
                    operation: Operation::Send,
                    class: ErrorClass::Local,
                    code: None,
                    message: "no outcome for the event".into(),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// What a fake destination saw: the bodies it accepted, in order, and the entries
    /// of each SendMessageBatch call.
    #[derive(Default, Clone)]
    struct Seen {
        accepted: Arc<Mutex<Vec<String>>>,
        calls: Arc<Mutex<Vec<Vec<String>>>>,
    }

    /// A destination queue in-process: every entry accepted, unless `refuse(body)` names
    /// an error code for it (the service's own fault for `InternalError`, the sender's
    /// otherwise); while `missing` is set, every call answers `NonExistentQueue`.
    fn destination(
        refuse: impl Fn(&str) -> Option<&'static str> + Send + Sync + 'static,
        missing: Arc<AtomicBool>,
    ) -> (aws_sdk_sqs::Client, Seen) {
        let seen = Seen::default();
        let s = seen.clone();
        let client = fake::sqs_client(move |req| {
            if missing.load(Ordering::SeqCst) {
                return fake::error(400, "AWS.SimpleQueueService.NonExistentQueue");
            }
            if req.action != "SendMessageBatch" {
                return fake::ok(r#"{"Attributes":{"QueueArn":"arn:aws:sqs:us-east-1:0:q"}}"#);
            }
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            let entries = body["Entries"].as_array().cloned().unwrap_or_default();
            let mut successful = Vec::new();
            let mut failed = Vec::new();
            let mut call = Vec::new();
            for e in &entries {
                let id = e["Id"].as_str().unwrap_or_default();
                let message = e["MessageBody"].as_str().unwrap_or_default();
                call.push(message.to_string());
                match refuse(message) {
                    Some(code) => failed.push(serde_json::json!({
                        "Id": id, "Code": code, "SenderFault": code != "InternalError",
                        "Message": "refused"
                    })),
                    None => {
                        s.accepted.lock().unwrap().push(message.to_string());
                        successful.push(serde_json::json!({
                            "Id": id, "MessageId": format!("m-{id}"), "MD5OfMessageBody": "0"
                        }));
                    }
                }
            }
            s.calls.lock().unwrap().push(call);
            fake::ok(serde_json::json!({"Successful": successful, "Failed": failed}).to_string())
        });
        (client, seen)
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
            max_elapsed: Duration::from_millis(50),
        }
    }

    fn body(n: u32, org: u64) -> String {
        format!(r#"{{"event_id":"{n:032x}","project_id":1,"organization_id":{org}}}"#)
    }

    fn forwarder(client: aws_sdk_sqs::Client) -> Forwarder {
        Forwarder::new(
            client,
            "https://sqs.fake/0/q",
            256 * 1024,
            fast(),
            Metrics::disabled(),
        )
    }

    /// On tokio's paused clock: a batch of large events planned into several calls
    /// sends them together, each full by bytes, so it takes one call's time (each held
    /// 5 s here), not one per call.
    #[tokio::test(start_paused = true)]
    async fn a_batch_of_large_events_sends_its_calls_together() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = calls.clone();
        let client = fake::sqs_client_on(fake::delayed_client_fn(
            |_| Duration::from_secs(5),
            move |req| {
                let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
                let entries = body["Entries"].as_array().cloned().unwrap_or_default();
                c.lock().unwrap().push(entries.len());
                let ok: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| serde_json::json!({"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "0"}))
                    .collect();
                fake::ok(serde_json::json!({"Successful": ok, "Failed": []}).to_string())
            },
        ));
        let window = crate::batching::BatchWindow::new(Duration::from_secs(1));
        let f = Forwarder::new(
            client,
            "https://sqs.fake/0/q",
            1 << 20,
            fast(),
            Metrics::disabled(),
        )
        .with_window(&window);
        let big = |n: u32| {
            format!(
                r#"{{"event_id":"{n:032x}","project_id":1,"organization_id":1,"pad":"{}"}}"#,
                "x".repeat(500_000)
            )
        };
        let bodies: Vec<String> = (1..=8).map(big).collect();
        let started = tokio::time::Instant::now();
        let out = forward(&f, &bodies).await;
        assert!(out.iter().all(Outcome::is_accepted), "{out:?}");
        assert_eq!(
            *calls.lock().unwrap(),
            [2, 2, 2, 2],
            "two of 500 KB per call"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_millis(10_100),
            "the first call, then the other three together, none waiting for the window: {took:?}"
        );
    }

    /// An encoded body (here with `tag_ids`) goes into its entry without a copy, and a
    /// retry encodes its event again: the body sent again is the same text.
    #[tokio::test]
    async fn a_retried_entry_carries_its_encoded_body_again() {
        let refused = Arc::new(AtomicBool::new(false));
        let r = refused.clone();
        let (client, seen) = destination(
            move |body| {
                (body.contains(r#""n":2"#) && !r.swap(true, Ordering::SeqCst))
                    .then_some("InternalError")
            },
            Arc::new(AtomicBool::new(false)),
        );
        let f = forwarder(client);
        let bodies: Vec<String> = (1..=3)
            .map(|n| {
                format!(
                    r#"{{"event_id":"{n:032x}","project_id":1,"organization_id":1,"n":{n},"tags":[["k","v{n}"]]}}"#
                )
            })
            .collect();
        let mut events: Vec<Event<'_>> = bodies
            .iter()
            .map(|b| crate::event::decode(b).unwrap())
            .collect();
        for (n, e) in events.iter_mut().enumerate() {
            e.tag_ids = Some(vec![[Some(7), Some(100 + n as u64)]]);
        }
        let encoded: Vec<String> = events.iter().map(|e| e.encoded().into_owned()).collect();
        assert!(
            encoded[1].ends_with(r#""tag_ids":[[7,101]]}"#),
            "{}",
            encoded[1]
        );
        let routed: Vec<Routed<'_, '_>> = events.iter().map(Routed::from).collect();
        let out = f.forward(&routed).await;
        assert!(out.iter().all(Outcome::is_accepted), "{out:?}");
        assert_eq!(
            *seen.calls.lock().unwrap(),
            vec![encoded.clone(), vec![encoded[1].clone()]],
            "the second event's entry refused once, then sent again whole"
        );
        let mut accepted = seen.accepted.lock().unwrap().clone();
        accepted.sort();
        assert_eq!(accepted, encoded);
    }

    async fn forward(f: &Forwarder, bodies: &[String]) -> Vec<Outcome> {
        let events: Vec<Event<'_>> = bodies
            .iter()
            .map(|b| crate::event::decode(b).unwrap())
            .collect();
        let routed: Vec<Routed<'_, '_>> = events.iter().map(Routed::from).collect();
        f.forward(&routed).await
    }

    fn class(o: &Outcome) -> Option<ErrorClass> {
        match o {
            Outcome::Failed(e) => Some(e.class),
            _ => None,
        }
    }

    fn cause(o: &Outcome) -> Option<DeferCause> {
        match o {
            Outcome::Deferred(d) => Some(d.cause),
            _ => None,
        }
    }

    /// FIFO order under the batching window: two callers' events of one group meet in
    /// the window, yet an event still goes only once the previous one of its group was
    /// accepted, never in the same call, and once one fails its followers are held.
    #[tokio::test]
    async fn a_group_keeps_its_order_when_callers_share_calls() {
        let (client, seen) = destination(
            |b| {
                b.contains(&format!("{:032x}", 3))
                    .then_some("InvalidMessageContents")
            },
            Arc::default(),
        );
        let window = crate::batching::BatchWindow::new(Duration::from_millis(40));
        let f = forwarder(client)
            .with_group(Some("g-{organization_id}".parse().unwrap()), true)
            .with_window(&window);
        // Caller a: group 1 (events 1, 2) and group 2 (3, 4, 5); caller b: group 3 (6, 7).
        let a: Vec<String> = [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
            .iter()
            .map(|&(n, org)| body(n, org))
            .collect();
        let b: Vec<String> = [(6, 3), (7, 3)]
            .iter()
            .map(|&(n, org)| body(n, org))
            .collect();
        let (out_a, out_b) = tokio::join!(forward(&f, &a), forward(&f, &b));
        assert!(out_a[0].is_accepted() && out_a[1].is_accepted());
        assert_eq!(class(&out_a[2]), Some(ErrorClass::MessageRejected));
        assert_eq!(cause(&out_a[3]), Some(DeferCause::HeldBack));
        assert_eq!(cause(&out_a[4]), Some(DeferCause::HeldBack));
        assert!(out_b.iter().all(Outcome::is_accepted));
        let calls = seen.calls.lock().unwrap().clone();
        let id = |n: u32| format!("{n:032x}");
        let call_of = |n: u32| {
            calls
                .iter()
                .position(|c| c.iter().any(|m| m.contains(&id(n))))
        };
        // The callers' first events share a call; each group goes one call at a time.
        assert_eq!(call_of(1), call_of(6), "{calls:?}");
        assert!(
            call_of(1) < call_of(2) && call_of(6) < call_of(7),
            "{calls:?}"
        );
        assert_eq!(call_of(4), None, "held back behind its group's failure");
        assert_eq!(call_of(5), None);
    }

    fn packed(client: aws_sdk_sqs::Client, fifo: bool) -> Forwarder {
        let f = forwarder(client);
        let f = if fifo {
            f.with_group(Some("g-{organization_id}".parse().unwrap()), true)
        } else {
            f
        };
        f.with_pack(
            Pack::Ndjson,
            PackCompression::None,
            &crate::batching::BatchWindow::none(),
        )
    }

    /// A packed route: one message for the batch, one event per line, each as it
    /// would have gone alone; the `events` attribute counts them.
    #[tokio::test]
    async fn a_packed_route_sends_one_message_of_many_lines() {
        let attributes = Arc::new(Mutex::new(Vec::new()));
        let seen_attributes = attributes.clone();
        let seen = Seen::default();
        let s = seen.clone();
        let client = fake::sqs_client(move |req| {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            for e in body["Entries"].as_array().into_iter().flatten() {
                seen_attributes
                    .lock()
                    .unwrap()
                    .push(e["MessageAttributes"].clone());
                s.accepted
                    .lock()
                    .unwrap()
                    .push(e["MessageBody"].as_str().unwrap_or_default().to_string());
            }
            let ok: Vec<_> = body["Entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| serde_json::json!({"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "0"}))
                .collect();
            fake::ok(serde_json::json!({"Successful": ok, "Failed": []}).to_string())
        });
        let bodies: Vec<String> = (1..=5).map(|n| body(n, n as u64)).collect();
        let out = forward(&packed(client, false), &bodies).await;
        assert!(out.iter().all(Outcome::is_accepted), "{out:?}");
        let accepted = seen.accepted.lock().unwrap().clone();
        assert_eq!(accepted.len(), 1, "one message: {accepted:?}");
        assert_eq!(accepted[0], bodies.join("\n") + "\n");
        let attributes = attributes.lock().unwrap();
        assert_eq!(attributes[0]["events"]["StringValue"], "5");
        assert_eq!(attributes[0]["events"]["DataType"], "Number");
    }

    /// Within the batching window, the lines of several callers (pollers) share one
    /// packed message.
    #[tokio::test]
    async fn callers_share_a_pack_within_the_window() {
        let (client, seen) = destination(|_| None, Arc::default());
        let window = crate::batching::BatchWindow::new(Duration::from_millis(40));
        let f = forwarder(client).with_window(&window).with_pack(
            Pack::Ndjson,
            PackCompression::None,
            &window,
        );
        let a: Vec<String> = (1..=3).map(|n| body(n, 1)).collect();
        let b: Vec<String> = (4..=5).map(|n| body(n, 2)).collect();
        let (out_a, out_b) = tokio::join!(forward(&f, &a), forward(&f, &b));
        assert!(out_a.iter().chain(&out_b).all(Outcome::is_accepted));
        let calls = seen.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].len(), 1, "one message");
        assert_eq!(calls[0][0].lines().count(), 5);
    }

    /// FIFO: a pack whose S3 object could not be stored fails its events, and the later
    /// packs of its group are held back, never sent ahead of it.
    #[tokio::test]
    async fn a_fifo_pack_not_stored_holds_back_the_rest_of_its_group() {
        let sends = Arc::new(Mutex::new(0));
        let counted = sends.clone();
        let sqs = fake::sqs_client(move |req| {
            if req.action == "SendMessageBatch" {
                *counted.lock().unwrap() += 1;
            }
            fake::ok(r#"{"Successful":[],"Failed":[]}"#)
        });
        let first = format!("{:032x}", 1);
        let s3_config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "a", "b", None, None, "t",
            ))
            .force_path_style(true)
            .http_client(fake::client_fn(move |req| {
                let status = if req.body.contains(&first) { 500 } else { 200 };
                http::Response::builder()
                    .status(status)
                    .body(
                        "<Error><Code>InternalError</Code><Message>x</Message></Error>".to_string(),
                    )
                    .map_err(|e| e.to_string())
            }))
            .build();
        let offloader = Offloader::new(
            aws_sdk_s3::Client::from_conf(s3_config),
            "b",
            "us-east-1",
            PointerFormat::Sentry,
            fast(),
            Metrics::disabled(),
        )
        .with_mode(OffloadMode::Always);
        // Room for three lines per pack: events 1-3, then 4-5.
        let f = Forwarder::new(
            sqs,
            "https://sqs.fake/0/q.fifo",
            400,
            fast(),
            Metrics::disabled(),
        )
        .with_group(Some("all".parse().unwrap()), true)
        .with_offloader(Some(offloader))
        .with_pack(
            Pack::Ndjson,
            PackCompression::None,
            &crate::batching::BatchWindow::none(),
        );
        let bodies: Vec<String> = (1..=5).map(|n| body(n, 1)).collect();
        let out = forward(&f, &bodies).await;
        for o in &out[..3] {
            assert_eq!(class(o), Some(ErrorClass::ServerError), "{out:?}");
        }
        for o in &out[3..] {
            assert_eq!(cause(o), Some(DeferCause::HeldBack), "{out:?}");
        }
        assert_eq!(*sends.lock().unwrap(), 0, "nothing of the group went");
    }

    /// A packed message refused as a message: its events go again one per message, so
    /// only the bad one fails.
    #[tokio::test]
    async fn a_rejected_pack_falls_back_to_single_messages() {
        let bad = format!("{:032x}", 3);
        let (client, seen) = destination(
            move |b| b.contains(&bad).then_some("InvalidMessageContents"),
            Arc::default(),
        );
        let bodies: Vec<String> = (1..=4).map(|n| body(n, 1)).collect();
        let out = forward(&packed(client, false), &bodies).await;
        assert!(
            out[0].is_accepted() && out[1].is_accepted() && out[3].is_accepted(),
            "{out:?}"
        );
        assert_eq!(class(&out[2]), Some(ErrorClass::MessageRejected));
        let calls = seen.calls.lock().unwrap().clone();
        assert_eq!(
            calls.len(),
            2,
            "the pack, then its events one per message: {calls:?}"
        );
        assert_eq!(calls[0].len(), 1);
        assert_eq!(calls[1].len(), 4);
        let accepted = seen.accepted.lock().unwrap().clone();
        assert_eq!(
            accepted,
            vec![bodies[0].clone(), bodies[1].clone(), bodies[3].clone()]
        );
    }

    /// FIFO: a pack per message group, in order, its deduplication id from its events.
    #[tokio::test]
    async fn fifo_packs_hold_one_group_each_with_a_dedup_id_from_their_events() {
        let entries = Arc::new(Mutex::new(Vec::new()));
        let e2 = entries.clone();
        let client = fake::sqs_client(move |req| {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            let list = body["Entries"].as_array().cloned().unwrap_or_default();
            e2.lock().unwrap().extend(list.iter().cloned());
            let ok: Vec<_> = list
                .iter()
                .map(|e| serde_json::json!({"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "0"}))
                .collect();
            fake::ok(serde_json::json!({"Successful": ok, "Failed": []}).to_string())
        });
        let bodies: Vec<String> = [(1, 1), (2, 2), (3, 1), (4, 2), (5, 1)]
            .iter()
            .map(|&(n, org)| body(n, org))
            .collect();
        let out = forward(&packed(client, true), &bodies).await;
        assert!(out.iter().all(Outcome::is_accepted), "{out:?}");
        let entries = entries.lock().unwrap();
        assert_eq!(entries.len(), 2, "{entries:?}");
        let g1 = entries
            .iter()
            .find(|e| e["MessageGroupId"] == "g-1")
            .unwrap();
        assert_eq!(
            g1["MessageBody"],
            format!("{}\n{}\n{}\n", bodies[0], bodies[2], bodies[4])
        );
        let ids = [1u32, 3, 5].map(|n| format!("{n:032x}"));
        assert_eq!(
            g1["MessageDeduplicationId"],
            pack_object::pack_id(ids.iter().map(String::as_str))
        );
    }

    #[tokio::test]
    async fn a_refused_entry_fails_alone_and_its_batch_mates_are_accepted() {
        let (client, seen) = destination(
            |b| {
                b.contains(&format!("{:032x}", 2))
                    .then_some("InvalidMessageContents")
            },
            Arc::default(),
        );
        let bodies: Vec<String> = (1..=3).map(|n| body(n, 1)).collect();
        let out = forward(&forwarder(client), &bodies).await;
        assert!(out[0].is_accepted() && out[2].is_accepted(), "{out:?}");
        assert_eq!(class(&out[1]), Some(ErrorClass::MessageRejected));
        assert_eq!(
            seen.calls.lock().unwrap().len(),
            1,
            "one call for the batch"
        );
    }

    #[tokio::test]
    async fn on_a_fifo_destination_a_failed_event_holds_back_the_rest_of_its_group() {
        let second = format!("{:032x}", 2);
        let (client, seen) = destination(
            move |b| b.contains(&second).then_some("InternalError"),
            Arc::default(),
        );
        let f = forwarder(client).with_group(Some("all".parse().unwrap()), true);
        let bodies: Vec<String> = (1..=3).map(|n| body(n, 1)).collect();
        let out = forward(&f, &bodies).await;
        assert!(out[0].is_accepted(), "{out:?}");
        assert_eq!(
            class(&out[1]),
            Some(ErrorClass::ServerError),
            "retried, then failed"
        );
        assert_eq!(cause(&out[2]), Some(DeferCause::HeldBack));
        let calls = seen.calls.lock().unwrap();
        assert!(
            calls.iter().all(|c| c.len() == 1),
            "one event of the group per call"
        );
        assert!(
            !calls
                .iter()
                .flatten()
                .any(|b| b.contains(&format!("{:032x}", 3))),
            "the third was never sent"
        );
        assert_eq!(*seen.accepted.lock().unwrap(), vec![bodies[0].clone()]);
    }

    #[tokio::test]
    async fn an_organization_over_its_rate_is_deferred_and_nobody_else() {
        let (client, _) = destination(|_| None, Arc::default());
        let limiter = OrgRateLimiter::new("1/1h".parse().unwrap(), Metrics::disabled());
        let f = forwarder(client).with_rate_limit(Some(Arc::new(limiter)));
        let bodies = vec![body(1, 7), body(2, 7), body(3, 8)];
        let out = forward(&f, &bodies).await;
        assert!(out[0].is_accepted() && out[2].is_accepted(), "{out:?}");
        assert_eq!(cause(&out[1]), Some(DeferCause::RateLimited));
        match &out[1] {
            Outcome::Deferred(d) => assert!(d.delay.is_some_and(|d| d > Duration::ZERO)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_queue_pauses_the_route_until_its_probe_passes() {
        let missing = Arc::new(AtomicBool::new(true));
        let (client, seen) = destination(|_| None, missing.clone());
        let f = forwarder(client);
        let bodies = vec![body(1, 1), body(2, 1)];
        let out = forward(&f, &bodies).await;
        assert!(
            out.iter()
                .all(|o| class(o) == Some(ErrorClass::QueueNotFound)),
            "{out:?}"
        );
        assert_eq!(f.gate().paused_on(), Some(ErrorClass::QueueNotFound));
        // Paused: deferred without a call, until the probe is due.
        let out = forward(&f, &bodies).await;
        assert!(
            out.iter()
                .all(|o| cause(o) == Some(DeferCause::RoutePaused)),
            "{out:?}"
        );
        // The queue is back: the next probe passes and the events go.
        missing.store(false, Ordering::SeqCst);
        let started = std::time::Instant::now();
        loop {
            let out = forward(&f, &bodies).await;
            if out.iter().all(Outcome::is_accepted) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(2), "{out:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(f.gate().paused_on(), None, "resumed");
        assert_eq!(seen.accepted.lock().unwrap().len(), 2);
    }

    /// The queue's own `MaximumMessageSize`, read again, bounds the route below the
    /// setting: an event over it is oversized (not sent, so not refused by SQS), and the
    /// batch byte budget follows it (two events that fit one call of the setting's
    /// bound go in two).
    #[tokio::test]
    async fn the_queues_own_limit_bounds_messages_and_batches() {
        let calls: Arc<Mutex<Vec<usize>>> = Arc::default();
        let c = calls.clone();
        let client = fake::sqs_client(move |req| {
            if req.action == "GetQueueAttributes" {
                return fake::ok(r#"{"Attributes":{"MaximumMessageSize":"600"}}"#);
            }
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            let entries = body["Entries"].as_array().cloned().unwrap_or_default();
            c.lock().unwrap().push(entries.len());
            let ok: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| serde_json::json!({"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "0"}))
                .collect();
            fake::ok(serde_json::json!({"Successful": ok, "Failed": []}).to_string())
        });
        let f = Forwarder::new(
            client,
            "https://sqs.fake/0/q",
            4096,
            fast(),
            Metrics::disabled(),
        );
        let sized = |n: u32, bytes: usize| {
            format!(
                r#"{{"event_id":"{n:032x}","project_id":1,"organization_id":1,"x":"{}"}}"#,
                "a".repeat(bytes)
            )
        };
        let (small, big) = ([sized(1, 300), sized(2, 300)], [sized(3, 1000)]);
        // The setting alone: both small events in one call, the big one sent.
        assert!(forward(&f, &small)
            .await
            .iter()
            .all(|o| matches!(o, Outcome::Accepted)));
        assert!(forward(&f, &big)
            .await
            .iter()
            .all(|o| matches!(o, Outcome::Accepted)));
        assert_eq!(*calls.lock().unwrap(), [2, 1]);

        f.refresh_limit().await;
        assert_eq!((f.limit().bytes(), f.limit().configured()), (600, 4096));
        calls.lock().unwrap().clear();
        assert!(forward(&f, &small)
            .await
            .iter()
            .all(|o| matches!(o, Outcome::Accepted)));
        assert_eq!(*calls.lock().unwrap(), [1, 1], "one call each now");
        let out = forward(&f, &big).await;
        assert_eq!(class(&out[0]), Some(ErrorClass::Oversized), "{out:?}");
        assert_eq!(calls.lock().unwrap().len(), 2, "the big one is not sent");

        // A queue limit above the setting leaves the setting's.
        f.sender.follow_queue_limit(Some(1 << 20));
        assert_eq!(f.limit().bytes(), 4096);
    }
}
