//! Where events go: the destination queue, through SendMessageBatch.
//!
//! Events are packed into batches of at most ten within SQS's byte limits
//! ([`batch::plan`]); a batch's transiently failed entries are sent again on their own
//! with backoff ([`crate::aws::retry_batch`]); [`sender`] does both, for the destination
//! and for the dead-letter queue ([`dead_letter`]). Every forward runs inside
//! [`track_response_metric`], which counts one `data-forwarding.http_response` per event
//! sent. FIFO destinations get a message group ([`fifo`]) and the event id as
//! deduplication id, and each group goes in order.
//!
//! One failure stays where it belongs: an organization over its rate limit
//! ([`rate_limit`]) has its own events deferred, nobody else's; a destination that is
//! unusable pauses its own route ([`pause`]), not the others.

pub mod batch;
pub mod dead_letter;
pub mod fifo;
pub mod offload;
pub mod pause;
pub mod rate_limit;
pub mod router;
pub mod sender;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;

use crate::aws::AwsError;
use crate::event::Event;
use crate::internal_events::{InternalEvent, OversizedSkipped};
use crate::metrics::{Counter, Metrics};
use crate::outcome::{ErrorClass, Operation};
use crate::retry::RetryPolicy;

pub use dead_letter::{DeadLetter, DeadLetterQueue, Reason};
pub use fifo::GroupTemplate;
pub use offload::{Offloader, PointerFormat};
pub use pause::{Gate, Pauses, RouteGate};
pub use rate_limit::{OrgRateLimiter, RateLimit};
pub use router::Router;
pub use sender::{Attribute, Delivery, Outgoing, SendOutcome, SqsSender};

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
}

impl DeferCause {
    /// The `cause` tag of `forwarder.event.deferred`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferCause::RateLimited => "rate_limited",
            DeferCause::RoutePaused => "route_paused",
            DeferCause::HeldBack => "held_back",
        }
    }
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
}

impl<'e, 'a> From<&'e Event<'a>> for Routed<'e, 'a> {
    /// An event whose source message has no group.
    fn from(event: &'e Event<'a>) -> Self {
        Routed {
            event,
            source_group: None,
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
            metrics,
        }
    }

    /// Counts this route in `pauses`, which the readiness probe reads.
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

    /// Sends with this message group; `fifo`: the destination is a FIFO queue.
    pub fn with_group(mut self, group: Option<GroupTemplate>) -> Self {
        self.fifo = group.is_some();
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
        let mut positions = Vec::with_capacity(events.len());
        // FIFO destinations: per message group, the last message planned and, once one
        // of the group is not going, the delay its followers inherit.
        let mut chains: HashMap<Cow<'_, str>, Chain> = HashMap::new();
        for (i, routed) in events.iter().enumerate() {
            let e = routed.event;
            let group_id = self.group.as_ref().map(|g| g.render(e));
            let chain_key = match (self.fifo, routed.source_group, &group_id) {
                (false, _, _) => None,
                (true, Some(source), _) => Some(Cow::Borrowed(source)),
                (true, None, Some(group)) => Some(Cow::Owned(group.clone())),
                (true, None, None) => None,
            };
            let chain = chain_key.map(|k| chains.entry(k).or_default());
            if let Some(Chain {
                blocked: Some(delay),
                ..
            }) = chain.as_deref()
            {
                outcomes[i] = Some(deferred(DeferCause::HeldBack, *delay));
                continue;
            }
            if let Some(limiter) = &self.rate_limit {
                if let Err(wait) = limiter.check(e.organization_id) {
                    outcomes[i] = Some(deferred(DeferCause::RateLimited, Some(wait)));
                    block(chain, Some(wait));
                    continue;
                }
            }
            let mut message = Outgoing {
                body: e.encoded(),
                attributes: vec![
                    Attribute::string("event_id", e.event_id.as_ref()),
                    Attribute::number("project_id", e.project_id),
                    Attribute::number("organization_id", e.organization_id),
                ],
                dedup_id: self.fifo.then(|| e.event_id.to_string()),
                group_id,
                after: None,
            };
            let size = message.size();
            if size > self.sender.max_message_bytes() {
                let Some(offloader) = &self.offloader else {
                    OversizedSkipped {
                        event_id: &e.event_id,
                        bytes: size,
                    }
                    .emit(&self.metrics);
                    outcomes[i] = Some(Outcome::Failed(AwsError {
                        operation: Operation::Send,
                        class: ErrorClass::Oversized,
                        code: None,
                        message: format!(
                            "event is {size} bytes, over the {}-byte limit, and no S3 bucket is configured",
                            self.sender.max_message_bytes()
                        ),
                    }));
                    block(chain, None);
                    continue;
                };
                match offloader.offload(e, &message.body).await {
                    Ok(pointer) => {
                        message.body = Cow::Owned(pointer.body);
                        message.attributes.extend(pointer.attributes);
                    }
                    Err(err) if err.class.is_route_level() => {
                        // The bucket is unusable: nothing more goes to this route now.
                        self.gate.pause(&err);
                        outcomes[i] = Some(Outcome::Failed(err));
                        let wait = self.gate.retry_in();
                        for o in outcomes.iter_mut().filter(|o| o.is_none()) {
                            *o = Some(deferred(DeferCause::RoutePaused, wait));
                        }
                        return finish(outcomes);
                    }
                    Err(err) => {
                        outcomes[i] = Some(Outcome::Failed(err));
                        block(chain, None);
                        continue;
                    }
                }
            }
            if let Some(c) = chain {
                message.after = c.last;
                c.last = Some(outgoing.len());
            }
            outgoing.push(message);
            positions.push(i);
        }
        let sent = self.sender.send(&outgoing).await;
        for (i, outcome) in positions.into_iter().zip(sent) {
            outcomes[i] = Some(match outcome {
                SendOutcome::Accepted => Outcome::Accepted,
                SendOutcome::Failed(err) => {
                    if err.class.is_route_level() {
                        self.gate.pause(&err);
                    }
                    Outcome::Failed(err)
                }
                SendOutcome::HeldBack => deferred(DeferCause::HeldBack, self.gate.retry_in()),
                SendOutcome::NotSent => deferred(DeferCause::RoutePaused, self.gate.retry_in()),
            });
        }
        finish(outcomes)
    }
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
