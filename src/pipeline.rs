//! The core shared by `run`, `replay` and Lambda: decode a batch of messages, index the
//! tags of its events (one `bulk_record` for the whole batch), forward the valid events,
//! and settle each message.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::Instrument;

use crate::event::{decode, DecodeError, Event};
use crate::forward::{
    DeadLetter, DeadLetterQueue, DeferCause, Deferral, Forwarder, Outcome, Reason, Routed, Router,
    SharedRouter,
};
use crate::idempotency::{Decision, Idempotency, Sent};
use crate::indexer::{BulkRequest, Indexer, IndexerError};
use crate::internal_events::{
    DeadLetterRefused, EventDeferred, EventFailed, InternalEvent, InvalidEvent, SkippedFiltered,
    SkippedUnrouted,
};
use crate::metrics::{Counter, Metrics, Timer};
use crate::outcome::{ErrorClass, Stage};
use crate::source::envelope::{self, Opened, SourceEnvelope};
use crate::source::SourceMessage;

pub use crate::outcome::Failure;

/// Ids as one span field, `a,b,c`, written only if the span is recorded.
struct Ids<I>(I);

impl<'a, I: Iterator<Item = &'a str> + Clone> std::fmt::Display for Ids<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, id) in self.0.clone().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            f.write_str(id)?;
        }
        Ok(())
    }
}

/// What became of one message.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// The destination accepted its event: the message may be deleted.
    Forwarded,
    /// The body is not a valid event; the message must not be deleted silently.
    Invalid(DecodeError),
    /// The event was not forwarded; the message stays for a later try.
    Failed(Failure),
    /// It can never be forwarded, and the dead-letter queue accepted it: the message may
    /// be deleted.
    DeadLettered(Reason),
    /// Not to be forwarded: no route takes it (the reason: `skip_unconfigured`,
    /// `skip_not_enrolled`, `skip_project_disabled`), or its route's filter leaves it out
    /// (`filtered`). Counted; the message may be deleted.
    Skipped(&'static str),
    /// Not sent now, on purpose (its organization over its rate limit, its route
    /// paused, an earlier event of its group not accepted): the message stays, hidden
    /// for the deferral's delay.
    Deferred(Deferral),
}

impl Settlement {
    /// Whether the body was not a valid event (dead-lettered or not).
    pub fn is_invalid(&self) -> bool {
        match self {
            Settlement::Invalid(_) => true,
            Settlement::DeadLettered(reason) => reason.stage == Stage::Decode,
            _ => false,
        }
    }

    /// Whether a valid event could not be forwarded (dead-lettered or not).
    pub fn is_failed(&self) -> bool {
        match self {
            Settlement::Failed(_) => true,
            Settlement::DeadLettered(reason) => reason.stage != Stage::Decode,
            _ => false,
        }
    }

    /// Whether the message is settled for good (forwarded or dead-lettered) and may be
    /// deleted from the source.
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Settlement::Forwarded | Settlement::DeadLettered(_) | Settlement::Skipped(_)
        )
    }

    /// Why the message would be dead-lettered: an invalid body, or a failure of the
    /// message itself. Nothing else is: not transient failures whose retries ran out,
    /// not an unusable destination, not the indexer's store. A later try may succeed.
    /// Why the message would be dead-lettered: it can never be forwarded as it is (an
    /// invalid body, a message-level failure); `None` for anything else.
    pub fn dead_letter_reason(&self) -> Option<Reason> {
        match self {
            Settlement::Invalid(err) => Some(Reason {
                stage: Stage::Decode,
                reason: err.reason(),
                error_code: None,
                detail: err.to_string(),
            }),
            Settlement::Failed(f) if f.class.is_message_level() => Some(Reason {
                stage: f.stage,
                reason: f.class.as_str(),
                error_code: f.code.clone(),
                detail: f.message.clone(),
            }),
            _ => None,
        }
    }
}

/// The events of a batch on their way, and the index of each one's message.
#[derive(Debug, Default)]
struct Decoded<'m> {
    /// The index of each event's message in the batch.
    at: Vec<usize>,
    /// The events, in the batch's order.
    events: Vec<Event<'m>>,
}

impl Decoded<'_> {
    /// Keeps the events for which `keep(message index, event)` holds.
    fn retain(&mut self, mut keep: impl FnMut(usize, &Event<'_>) -> bool) {
        let mut k = 0;
        let mut n = 0;
        while k < self.events.len() {
            if keep(self.at[k], &self.events[k]) {
                self.at.swap(n, k);
                self.events.swap(n, k);
                n += 1;
            }
            k += 1;
        }
        self.at.truncate(n);
        self.events.truncate(n);
    }
}

/// What became of one event of a route's batch.
#[derive(Debug, Clone)]
enum Step {
    /// Sent (or tried): the forwarder's outcome.
    Sent(Outcome),
    /// The idempotency store says it went already: not sent.
    AlreadyForwarded,
    /// Not sent, after its claim (held by another, the store silent, or behind one of
    /// those in its group).
    NotSent(Deferral),
    /// Accepted, and the store did not take its mark (fail-closed): it stays.
    Unmarked(Failure),
}

/// A route's batch, sent.
struct RouteSent {
    /// Each event's step, in the batch's order.
    outcomes: Vec<Step>,
    /// When the send ended: the end of each accepted event's latency.
    accepted_at: SystemTime,
}

/// Decode, index, forward.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The forwarder of each project: the routes in force, swapped by a reload.
    router: SharedRouter,
    /// Interns tag strings; `None` when the stage is off.
    indexer: Option<Arc<Indexer>>,
    /// Takes what can never be forwarded (`FORWARDER_DLQ_URL`); `None`: such messages
    /// stay in the source queue for its redrive policy.
    dead_letter: Option<DeadLetterQueue>,
    /// Where outcomes are counted.
    metrics: Metrics,
    /// Whether bodies may be SNS envelopes, opened before decoding
    /// (`FORWARDER_SOURCE_ENVELOPE`).
    envelope: SourceEnvelope,
    /// Which events went already (`FORWARDER_IDEMPOTENCY_URL`); `None`: off, at least
    /// once.
    idempotency: Option<Arc<Idempotency>>,
}

impl Pipeline {
    /// A pipeline forwarding through `router`, indexing with `indexer` if given.
    pub fn new(router: Router, indexer: Option<Arc<Indexer>>, metrics: Metrics) -> Self {
        Self {
            router: SharedRouter::new(router),
            indexer,
            dead_letter: None,
            metrics,
            envelope: SourceEnvelope::default(),
            idempotency: None,
        }
    }

    /// Claims each event in `idempotency` before its send, and marks it after.
    pub fn with_idempotency(mut self, idempotency: Option<Arc<Idempotency>>) -> Self {
        self.idempotency = idempotency;
        self
    }

    /// The idempotency store, when on.
    pub fn idempotency(&self) -> Option<&Arc<Idempotency>> {
        self.idempotency.as_ref()
    }

    /// Opens the source's bodies as `envelope` says (an SNS Notification's event).
    pub fn with_envelope(mut self, envelope: SourceEnvelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// Sends what can never be forwarded to this dead-letter queue.
    pub fn with_dead_letter(mut self, dead_letter: Option<DeadLetterQueue>) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// The router in force now.
    pub fn router(&self) -> Arc<Router> {
        self.router.current()
    }

    /// Reads every destination's `MaximumMessageSize` again, and the dead-letter
    /// queue's, if that was done over a minute ago.
    pub async fn refresh_limits(&self) {
        let router = self.router();
        match &self.dead_letter {
            Some(dlq) => {
                futures_util::future::join(router.refresh_limits(), dlq.refresh_limit()).await;
            }
            None => router.refresh_limits().await,
        }
    }

    /// The routes in force, which a reload swaps ([`crate::reload`]).
    pub fn routing(&self) -> &SharedRouter {
        &self.router
    }

    /// Processes a batch; returns one settlement per message, in order.
    ///
    /// The steps: decode; dead-letter the invalid bodies; hold back what follows a
    /// message that stays, in its group; index; route and forward; dead-letter what
    /// failed for good on its own account.
    pub async fn process(&self, messages: &[SourceMessage]) -> Vec<Settlement> {
        // Every log line of the batch (retries, failures, dead letters) is inside it.
        let span = tracing::info_span!(
            "batch",
            messages = messages.len(),
            message_ids = %Ids(messages.iter().map(|m| m.message_id.as_str())),
        );
        // One trace through the hop: the batch continues its first message's trace
        // (the others' are its links), when traces are exported.
        crate::telemetry::otlp::continue_trace(
            &span,
            messages
                .iter()
                .filter_map(|m| Some((m.attribute("traceparent")?, m.attribute("tracestate")))),
        );
        self.process_batch(messages).instrument(span).await
    }

    async fn process_batch(&self, messages: &[SourceMessage]) -> Vec<Settlement> {
        let mut settlements: Vec<Option<Settlement>> = vec![None; messages.len()];
        // The events as sent (out of their SNS envelopes); the dead-letter queue gets
        // the messages as received.
        let opened = envelope::open(messages, self.envelope);
        let mut events = self.decode(&opened, &mut settlements);
        let invalid = |s: &Settlement| matches!(s, Settlement::Invalid(_));
        let failed = |s: &Settlement| matches!(s, Settlement::Failed(_));
        self.dead_letter(messages, &mut settlements, invalid).await;
        hold_back_groups(messages, &mut settlements, &mut events, &self.metrics);
        self.index(&opened.messages, &mut events, &mut settlements)
            .await;
        self.forward(&opened.messages, events, &mut settlements)
            .await;
        self.dead_letter(messages, &mut settlements, failed).await;
        settlements
            .into_iter()
            .map(|s| {
                s.unwrap_or_else(|| {
                    Settlement::Failed(Failure {
                        stage: Stage::Forward,
                        class: ErrorClass::Local,
                        code: None,
                        message: "no outcome for the message".into(),
                    })
                })
            })
            .collect()
    }

    /// Step 1: decode each body (its envelope opened); an invalid one is logged,
    /// counted and settled.
    fn decode<'m>(
        &self,
        opened: &'m Opened<'_>,
        settlements: &mut [Option<Settlement>],
    ) -> Decoded<'m> {
        let messages: &'m [SourceMessage] = &opened.messages;
        let mut events = Decoded {
            at: Vec::with_capacity(messages.len()),
            events: Vec::with_capacity(messages.len()),
        };
        let mut refused = opened.refused.iter().peekable();
        for (i, message) in messages.iter().enumerate() {
            let decoded = match refused.next_if(|(at, _)| *at == i) {
                Some((_, err)) => Err(err.clone()),
                None => decode(&message.body).map_err(|err| {
                    if opened.wrapped[i] {
                        DecodeError::InvalidSnsMessage(Box::new(err))
                    } else {
                        err
                    }
                }),
            };
            match decoded {
                Ok(event) => {
                    events.at.push(i);
                    events.events.push(event);
                }
                Err(err) => {
                    InvalidEvent {
                        message_id: &message.message_id,
                        receive_count: message.receive_count,
                        reason: err.reason(),
                        error: &err,
                    }
                    .emit(&self.metrics);
                    settlements[i] = Some(Settlement::Invalid(err));
                }
            }
        }
        events
    }

    /// Step 3: one `bulk_record` for every tag of every event. The store failing (after
    /// its retries) fails every event of the batch, which stays in the source; a string
    /// it cannot hold only loses its own id.
    async fn index(
        &self,
        messages: &[SourceMessage],
        events: &mut Decoded<'_>,
        settlements: &mut [Option<Settlement>],
    ) {
        let Some(indexer) = &self.indexer else {
            return;
        };
        if events.events.is_empty() {
            return;
        }
        if let Err(err) = index_events(indexer, &self.metrics, &mut events.events).await {
            let failure = Failure::from(&err);
            for (i, event) in std::mem::take(&mut events.at)
                .into_iter()
                .zip(std::mem::take(&mut events.events))
            {
                failed(&messages[i], &event, &failure).emit(&self.metrics);
                settlements[i] = Some(Settlement::Failed(failure.clone()));
            }
        }
    }

    /// Step 4: each event to its route's forwarder, every route at once, in the order of
    /// the batch within each. With an idempotency store, each route's events are
    /// claimed before the send and settled (marked, given back) the moment it ends.
    async fn forward(
        &self,
        messages: &[SourceMessage],
        events: Decoded<'_>,
        settlements: &mut [Option<Settlement>],
    ) {
        // The routes in force when the batch started, to its end.
        let router = self.router.current();
        let routes = self.by_route(&router, &events, settlements);
        // Every route at once: one waiting in its batching window (or slow, or retrying)
        // holds back no other route's events.
        let sends = routes.iter().map(|(forwarder, members)| {
            let batch: Vec<Routed<'_, '_>> = members
                .iter()
                .map(|&k| Routed {
                    event: &events.events[k],
                    source_group: messages[events.at[k]].group.as_deref(),
                    trace_header: messages[events.at[k]].trace_header.as_deref(),
                    attributes: &messages[events.at[k]].attributes,
                })
                .collect();
            let span = tracing::info_span!(
                "route",
                route = %forwarder.queue_url(),
                event_ids = %Ids(batch.iter().map(|r| r.event.event_id.as_ref())),
            );
            self.forward_route(forwarder, batch).instrument(span)
        });
        let results = futures_util::future::join_all(sends).await;
        for ((forwarder, members), sent) in routes.iter().zip(results) {
            for (&k, outcome) in members.iter().zip(sent.outcomes) {
                let i = events.at[k];
                let settlement = match outcome {
                    Step::Sent(outcome) => self.sent(
                        &messages[i],
                        &events.events[k],
                        forwarder,
                        outcome,
                        sent.accepted_at,
                    ),
                    Step::AlreadyForwarded => Settlement::Skipped("already_forwarded"),
                    // Accepted, but the store did not take its mark (fail-closed): it
                    // stays, and its claim runs out before it is tried again.
                    Step::Unmarked(failure) => {
                        failed(&messages[i], &events.events[k], &failure).emit(&self.metrics);
                        Settlement::Failed(failure)
                    }
                    Step::NotSent(deferral) => self.sent(
                        &messages[i],
                        &events.events[k],
                        forwarder,
                        Outcome::Deferred(deferral),
                        sent.accepted_at,
                    ),
                };
                settlements[i] = Some(settlement);
            }
        }
    }

    /// One route's events: claimed (with a store), sent, settled in the store.
    async fn forward_route(&self, forwarder: &Forwarder, batch: Vec<Routed<'_, '_>>) -> RouteSent {
        let Some(idempotency) = &self.idempotency else {
            let outcomes = forwarder.forward(&batch).await;
            return RouteSent {
                outcomes: outcomes.into_iter().map(Step::Sent).collect(),
                accepted_at: SystemTime::now(),
            };
        };
        let ids: Vec<&str> = batch.iter().map(|r| r.event.event_id.as_ref()).collect();
        let claims = idempotency.claim(forwarder.queue_url(), &ids).await;
        let mut steps: Vec<Option<Step>> = vec![None; batch.len()];
        // What is not sent now holds back the later events of its source group.
        let mut stuck: Vec<(&str, Deferral)> = Vec::new();
        let mut go = Vec::with_capacity(batch.len());
        for (j, (routed, decision)) in batch.iter().zip(&claims.decisions).enumerate() {
            let deferral = match decision {
                Decision::Send => None,
                Decision::Done => {
                    steps[j] = Some(Step::AlreadyForwarded);
                    continue;
                }
                Decision::Held(left) => Some(Deferral {
                    cause: DeferCause::ClaimHeld,
                    delay: Some(*left),
                }),
                Decision::Unavailable(_) => Some(Deferral {
                    cause: DeferCause::StoreUnavailable,
                    delay: Some(crate::idempotency::UNAVAILABLE_DELAY),
                }),
            };
            let behind = routed
                .source_group
                .and_then(|g| stuck.iter().find(|(s, _)| *s == g).map(|(_, d)| *d));
            match deferral.or(behind) {
                Some(deferral) => {
                    if let Some(group) = routed.source_group {
                        stuck.push((group, deferral));
                    }
                    steps[j] = Some(Step::NotSent(deferral));
                }
                None => go.push(j),
            }
        }
        let to_send: Vec<Routed<'_, '_>> = go.iter().map(|&j| batch[j]).collect();
        // Each call's accepted events are marked the moment it answers, while the rest of
        // the batch (its other calls, its retries) goes on.
        let destination = forwarder.queue_url();
        let (accepted, mut calls) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
        let hook: crate::forward::AcceptedHook = Arc::new(move |ids| {
            let _ = accepted.send(ids);
        });
        let send = async move {
            if to_send.is_empty() {
                return Vec::new();
            }
            crate::forward::reporting_accepted(hook, forwarder.forward(&to_send)).await
        };
        let mark = async {
            let mut marked: std::collections::HashSet<String> = std::collections::HashSet::new();
            while let Some(ids) = calls.recv().await {
                if idempotency.mark_accepted(destination, &ids).await {
                    marked.extend(ids);
                }
            }
            marked
        };
        let (outcomes, marked) = futures_util::future::join(send, mark).await;
        let accepted_at = SystemTime::now();
        // What no call told of (a packed message's events, a mark the store did not
        // take) is marked now, before anything else of the batch.
        let mut sent = vec![None; batch.len()];
        for (&j, outcome) in go.iter().zip(&outcomes) {
            sent[j] = match outcome {
                Outcome::Accepted if marked.contains(batch[j].event.event_id.as_ref()) => None,
                Outcome::Accepted => Some(Sent::Accepted),
                Outcome::Failed(err) if err.class.may_have_arrived() => Some(Sent::Unknown),
                Outcome::Failed(_) | Outcome::Deferred(_) => Some(Sent::NotTaken),
            };
        }
        for (j, step) in steps.iter().enumerate() {
            if matches!(step, Some(Step::NotSent(_))) && claims.decisions[j] == Decision::Send {
                sent[j] = Some(Sent::NotTaken);
            }
        }
        let unmarked = idempotency.settle(&claims, &sent).await;
        for (&j, outcome) in go.iter().zip(outcomes) {
            steps[j] = Some(match (&unmarked, sent[j]) {
                (Some(failure), Some(Sent::Accepted)) => Step::Unmarked(failure.clone()),
                _ => Step::Sent(outcome),
            });
        }
        RouteSent {
            outcomes: steps
                .into_iter()
                .map(|s| {
                    s.unwrap_or(Step::NotSent(Deferral {
                        cause: DeferCause::StoreUnavailable,
                        delay: Some(crate::idempotency::UNAVAILABLE_DELAY),
                    }))
                })
                .collect(),
            accepted_at,
        }
    }

    /// Which route each decoded event goes to (its index among `events`), the routes in
    /// the order of their first event; an event its route's filter leaves out, or whose
    /// project has no route, is settled as skipped here.
    fn by_route(
        &self,
        router: &Router,
        events: &Decoded<'_>,
        settlements: &mut [Option<Settlement>],
    ) -> Vec<(Arc<Forwarder>, Vec<usize>)> {
        let mut routes: Vec<(Arc<Forwarder>, Vec<usize>)> = Vec::new();
        for (k, (i, event)) in events.at.iter().zip(&events.events).enumerate() {
            let route = router.resolve(event.organization_id, event.project_id);
            if let Some(forwarder) = route
                .ok()
                .filter(|f| f.filter().is_some_and(|f| !f.matches(event)))
            {
                SkippedFiltered {
                    event_id: &event.event_id,
                    route: forwarder.queue_url(),
                }
                .emit(&self.metrics);
                settlements[*i] = Some(Settlement::Skipped("filtered"));
                continue;
            }
            match route {
                Ok(forwarder) => match routes.iter_mut().find(|(f, _)| Arc::ptr_eq(f, forwarder)) {
                    Some((_, members)) => members.push(k),
                    None => routes.push((forwarder.clone(), vec![k])),
                },
                Err(skip) => {
                    SkippedUnrouted {
                        event_id: &event.event_id,
                        organization_id: event.organization_id,
                        project_id: event.project_id,
                        skip,
                    }
                    .emit(&self.metrics);
                    settlements[*i] = Some(Settlement::Skipped(skip.reason()));
                }
            }
        }
        routes
    }

    /// What one event's send through `forwarder` makes of its message: forwarded (its
    /// end-to-end latency timed to `accepted_at`), failed (deferred instead when the
    /// failure paused the route), or deferred.
    fn sent(
        &self,
        message: &SourceMessage,
        event: &Event<'_>,
        forwarder: &Forwarder,
        outcome: Outcome,
        accepted_at: SystemTime,
    ) -> Settlement {
        match outcome {
            Outcome::Accepted => {
                if let Some(latency) = message
                    .sent_at
                    .and_then(|sent| accepted_at.duration_since(sent).ok())
                {
                    self.metrics.timing(Timer::EndToEnd, latency);
                }
                Settlement::Forwarded
            }
            Outcome::Failed(err) => {
                let failure = Failure::from(&err);
                failed(message, event, &failure).emit(&self.metrics);
                if err.class.is_route_level() {
                    // The route paused on it: kept, and back with the probe.
                    Settlement::Deferred(Deferral {
                        cause: DeferCause::RoutePaused,
                        delay: forwarder.gate().retry_in(),
                    })
                } else {
                    Settlement::Failed(failure)
                }
            }
            Outcome::Deferred(deferral) => {
                EventDeferred {
                    message_id: &message.message_id,
                    event_id: &event.event_id,
                    cause: deferral.cause.as_str(),
                    delay: deferral.delay,
                }
                .emit(&self.metrics);
                Settlement::Deferred(deferral)
            }
        }
    }

    /// Sends the messages that can never be forwarded to the DLQ, with their original
    /// bodies: those whose settlement `which` selects. Those it accepts become
    /// [`Settlement::DeadLettered`]; those it refuses stay in the source.
    async fn dead_letter(
        &self,
        messages: &[SourceMessage],
        settlements: &mut [Option<Settlement>],
        which: fn(&Settlement) -> bool,
    ) {
        let Some(dlq) = &self.dead_letter else {
            return;
        };
        let (positions, letters): (Vec<usize>, Vec<DeadLetter<'_>>) = settlements
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref().filter(|s| which(s))?;
                let reason = s.dead_letter_reason()?;
                Some((
                    i,
                    DeadLetter {
                        body: &messages[i].body,
                        source_message_id: &messages[i].message_id,
                        reason,
                    },
                ))
            })
            .unzip();
        if letters.is_empty() {
            return;
        }
        let deliveries = dlq.send(&letters).await;
        for ((i, letter), delivery) in positions.into_iter().zip(letters).zip(deliveries) {
            match delivery {
                Ok(()) => settlements[i] = Some(Settlement::DeadLettered(letter.reason)),
                Err(err) => DeadLetterRefused {
                    message_id: &messages[i].message_id,
                    class: err.class,
                    error: &err,
                }
                .emit(&self.metrics),
            }
        }
    }
}

/// Step 2, for sources with message groups (FIFO, fair queues): a message that stays
/// in the source (invalid, and not dead-lettered) holds back the later events of its
/// group, which stay too and come back after it, in their order.
fn hold_back_groups(
    messages: &[SourceMessage],
    settlements: &mut [Option<Settlement>],
    events: &mut Decoded<'_>,
    metrics: &Metrics,
) {
    let stuck = messages
        .iter()
        .zip(settlements.iter())
        .any(|(m, s)| m.group.is_some() && matches!(s, Some(s) if !s.is_done()));
    if !stuck {
        return;
    }
    events.retain(|i, event| {
        let message = &messages[i];
        let behind = message.group.as_deref().is_some_and(|g| {
            messages[..i]
                .iter()
                .zip(settlements.iter())
                .any(|(m, s)| m.group.as_deref() == Some(g) && matches!(s, Some(s) if !s.is_done()))
        });
        if behind {
            EventDeferred {
                message_id: &message.message_id,
                event_id: &event.event_id,
                cause: DeferCause::HeldBack.as_str(),
                delay: None,
            }
            .emit(metrics);
            settlements[i] = Some(Settlement::Deferred(Deferral {
                cause: DeferCause::HeldBack,
                delay: None,
            }));
        }
        !behind
    });
}

/// The indexer stage for a batch: one `bulk_record` for every tag string of every
/// event, then each event's `tag_ids` in tag order. Public for the per-event benchmark.
pub async fn index_events(
    indexer: &Indexer,
    metrics: &Metrics,
    events: &mut [Event<'_>],
) -> Result<(), IndexerError> {
    let ids: Vec<Vec<[Option<u64>; 2]>> = {
        let mut request = BulkRequest::default();
        let mut empty_keys = 0u64;
        for event in events.iter() {
            let strings = request.entry(event.organization_id).or_default();
            for (key, value) in &event.tags {
                if key.is_empty() {
                    empty_keys += 1;
                } else {
                    strings.insert(key);
                }
                strings.insert(value);
            }
        }
        if empty_keys > 0 {
            metrics.count(
                Counter::IndexerRefused {
                    reason: "empty_key",
                },
                empty_keys,
            );
        }
        let found = indexer.bulk_record(&request).await?;
        events
            .iter()
            .map(|event| {
                let org = found.get(&event.organization_id);
                let id = |s: &str| org.and_then(|m| m.get(s)).and_then(|l| l.id);
                event
                    .tags
                    .iter()
                    .map(|(k, v)| [if k.is_empty() { None } else { id(k) }, id(v)])
                    .collect()
            })
            .collect()
    };
    for (event, ids) in events.iter_mut().zip(ids) {
        event.tag_ids = Some(ids);
    }
    Ok(())
}

/// The internal event of an event that did not go.
fn failed<'a>(
    message: &'a SourceMessage,
    event: &'a Event<'_>,
    failure: &'a Failure,
) -> EventFailed<'a> {
    EventFailed {
        message_id: &message.message_id,
        event_id: &event.event_id,
        stage: failure.stage,
        class: failure.class,
        code: failure.code.as_deref(),
        error: failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake;
    use crate::forward::{DeadLetterQueue, Forwarder, SqsSender};
    use crate::retry::RetryPolicy;
    use std::sync::Mutex;
    use std::time::Duration;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
            max_elapsed: Duration::from_millis(30),
        }
    }

    /// A queue in-process that accepts every entry (recording bodies), or answers
    /// every call with `error` if given.
    fn queue(error: Option<&'static str>) -> (aws_sdk_sqs::Client, Arc<Mutex<Vec<String>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let client =
            fake::sqs_client(move |req| {
                if let Some(code) = error {
                    return fake::error(400, code);
                }
                let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
                let entries = body["Entries"].as_array().cloned().unwrap_or_default();
                let ok: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| {
                    g.lock().unwrap().push(e["MessageBody"].as_str().unwrap_or_default().into());
                    serde_json::json!({"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "0"})
                })
                .collect();
                fake::ok(serde_json::json!({"Successful": ok, "Failed": []}).to_string())
            });
        (client, got)
    }

    fn pipeline(dest: aws_sdk_sqs::Client, dlq: Option<aws_sdk_sqs::Client>) -> Pipeline {
        let metrics = Metrics::disabled();
        let forwarder = Forwarder::new(
            dest,
            "https://sqs.fake/0/dest",
            256 * 1024,
            fast(),
            metrics.clone(),
        );
        let dlq = dlq.map(|c| {
            let sender = SqsSender::new(
                c,
                "https://sqs.fake/0/dlq",
                256 * 1024,
                fast(),
                metrics.clone(),
            );
            DeadLetterQueue::new(sender, false, metrics.clone())
        });
        Pipeline::new(Router::single(forwarder), None, metrics).with_dead_letter(dlq)
    }

    fn message(id: &str, body: &str, group: Option<&str>) -> SourceMessage {
        SourceMessage {
            message_id: id.into(),
            receipt_handle: format!("h-{id}"),
            body: body.into(),
            sent_at: None,
            receive_count: 1,
            group: group.map(str::to_string),
            ..Default::default()
        }
    }

    fn event(n: u32) -> String {
        format!(r#"{{"event_id":"{n:032x}","project_id":1,"organization_id":1}}"#)
    }

    #[tokio::test]
    async fn an_invalid_body_is_dead_lettered_and_the_rest_forwarded() {
        let (dest, forwarded) = queue(None);
        let (dlq, letters) = queue(None);
        let messages = [
            message("a", &event(1), None),
            message("b", "not json", None),
        ];
        let out = pipeline(dest, Some(dlq)).process(&messages).await;
        assert!(matches!(out[0], Settlement::Forwarded), "{out:?}");
        assert!(matches!(&out[1], Settlement::DeadLettered(r) if r.reason == "invalid_json"));
        assert_eq!(*letters.lock().unwrap(), ["not json"]);
        assert_eq!(forwarded.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_dead_letter_queue_that_refuses_leaves_the_message_in_the_source() {
        let (dest, _) = queue(None);
        let (dlq, _) = queue(Some("AWS.SimpleQueueService.NonExistentQueue"));
        let messages = [message("b", "not json", None)];
        let out = pipeline(dest, Some(dlq)).process(&messages).await;
        assert!(matches!(out[0], Settlement::Invalid(_)), "{out:?}");
        assert!(!out[0].is_done(), "not deleted");
    }

    #[tokio::test]
    async fn an_unusable_destination_defers_its_events_and_dead_letters_nothing() {
        let (dest, _) = queue(Some("AccessDenied"));
        let (dlq, letters) = queue(None);
        let messages = [message("a", &event(1), None), message("b", &event(2), None)];
        let out = pipeline(dest, Some(dlq)).process(&messages).await;
        for s in &out {
            assert!(
                matches!(s, Settlement::Deferred(d) if d.cause == DeferCause::RoutePaused && d.delay.is_some()),
                "{out:?}"
            );
        }
        assert!(letters.lock().unwrap().is_empty());
    }

    thread_local! {
        /// Where this thread's log lines go while [`logged`] runs.
        static CAPTURE: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
    }

    /// Writes to this thread's [`CAPTURE`], if one is on; else nowhere.
    struct ThreadWriter;
    impl std::io::Write for ThreadWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            CAPTURE.with(|c| {
                if let Some(buf) = c.borrow_mut().as_mut() {
                    buf.extend_from_slice(b);
                }
            });
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Log lines written on this thread while `f` runs (a current-thread test), with
    /// their spans. One global subscriber: a scoped one can miss callsites whose interest
    /// another test thread cached first.
    async fn logged<F: std::future::Future>(f: F) -> (F::Output, String) {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .try_init();
        });
        CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
        let out = f.await;
        let bytes = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
        (out, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn failures_log_inside_the_batch_and_route_spans_with_their_ids() {
        let (dest, _) = queue(Some("AccessDenied"));
        let messages = [message("m-a", &event(1), None), message("m-b", "{", None)];
        let (_, logs) = logged(pipeline(dest, None).process(&messages)).await;
        let batch = "batch{messages=2 message_ids=m-a,m-b}";
        let route = format!(
            "route{{route=https://sqs.fake/0/dest event_ids={:032x}}}",
            1
        );
        // The invalid body is logged in the batch's span; the refused send in the route's.
        assert!(
            logs.lines()
                .any(|l| l.contains(batch) && l.contains("m-b") && !l.contains("route{")),
            "{logs}"
        );
        assert!(
            logs.lines()
                .any(|l| l.contains(&format!("{batch}:{route}")) && l.contains("AccessDenied")),
            "{logs}"
        );
    }

    /// A pipeline over `dest` with an idempotency store in memory.
    fn idempotent(
        dest: aws_sdk_sqs::Client,
    ) -> (Pipeline, Arc<crate::idempotency::memory::MemoryStore>) {
        idempotent_on(
            dest,
            Arc::new(crate::idempotency::memory::MemoryStore::default()),
        )
    }

    /// A pipeline over `dest` with `store` as its idempotency store.
    fn idempotent_on(
        dest: aws_sdk_sqs::Client,
        store: Arc<crate::idempotency::memory::MemoryStore>,
    ) -> (Pipeline, Arc<crate::idempotency::memory::MemoryStore>) {
        let idempotency = crate::idempotency::Idempotency::new(
            store.clone(),
            None,
            None,
            false,
            Metrics::disabled(),
        )
        .with_retry(fast());
        let pipeline = pipeline(dest, None).with_idempotency(Some(Arc::new(idempotency)));
        (pipeline, store)
    }

    /// Event `n`'s claim at the test destination, by another worker: what the store says.
    async fn claim_elsewhere(
        store: &crate::idempotency::memory::MemoryStore,
        n: u32,
    ) -> crate::idempotency::Claim {
        let key = crate::idempotency::key("https://sqs.fake/0/dest", &format!("{n:032x}"));
        let answer = crate::idempotency::Store::claim(
            store,
            &[key],
            "another",
            Duration::from_secs(30),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        answer[0]
    }

    #[tokio::test]
    async fn with_a_store_an_event_forwarded_already_is_skipped_and_its_message_deleted() {
        let (dest, forwarded) = queue(None);
        let (pipeline, store) = idempotent(dest);
        let first = [message("a", &event(1), None), message("b", &event(2), None)];
        let out = pipeline.process(&first).await;
        assert!(
            out.iter().all(|s| matches!(s, Settlement::Forwarded)),
            "{out:?}"
        );
        assert_eq!(
            store.calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one claim and one mark for the batch"
        );
        // The same events again (a kill before the delete, a redelivery, a replay).
        let again = [
            message("a2", &event(1), None),
            message("c", &event(3), None),
        ];
        let out = pipeline.process(&again).await;
        assert!(
            matches!(out[0], Settlement::Skipped("already_forwarded")),
            "{out:?}"
        );
        assert!(out[0].is_done(), "deleted from the source");
        assert!(matches!(out[1], Settlement::Forwarded));
        assert_eq!(forwarded.lock().unwrap().len(), 3, "event 1 went once");
    }

    #[tokio::test]
    async fn with_a_store_an_accepted_event_is_marked_before_the_retries_of_its_batch_end() {
        let store = Arc::new(crate::idempotency::memory::MemoryStore::default());
        let first_key = crate::idempotency::key("https://sqs.fake/0/dest", &format!("{:032x}", 1));
        let marked_before_retry = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dest = {
            let (store, seen, calls) = (store.clone(), marked_before_retry.clone(), calls.clone());
            fake::sqs_client(move |req| {
                let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
                let entries = body["Entries"].as_array().cloned().unwrap_or_default();
                let ok = |e: &serde_json::Value| serde_json::json!({"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "0"});
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    // The first event goes; the second is throttled and retried.
                    let failed = serde_json::json!([{
                        "Id": entries[1]["Id"], "Code": "RequestThrottled",
                        "SenderFault": false, "Message": "slow down"
                    }]);
                    return fake::ok(
                        serde_json::json!({"Successful": [ok(&entries[0])], "Failed": failed})
                            .to_string(),
                    );
                }
                seen.store(
                    store.is_done(&first_key),
                    std::sync::atomic::Ordering::SeqCst,
                );
                let all: Vec<serde_json::Value> = entries.iter().map(ok).collect();
                fake::ok(serde_json::json!({"Successful": all, "Failed": []}).to_string())
            })
        };
        let (pipeline, _) = idempotent_on(dest, store);
        let out = pipeline
            .process(&[message("a", &event(1), None), message("b", &event(2), None)])
            .await;
        assert!(
            out.iter().all(|s| matches!(s, Settlement::Forwarded)),
            "{out:?}"
        );
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one retry"
        );
        assert!(
            marked_before_retry.load(std::sync::atomic::Ordering::SeqCst),
            "the first event was marked when its call answered, before the retry"
        );
    }

    #[tokio::test]
    async fn with_a_store_down_nothing_is_sent_or_deleted() {
        let (dest, forwarded) = queue(None);
        let (pipeline, store) = idempotent(dest);
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let out = pipeline
            .process(&[message("a", &event(1), None), message("b", &event(2), None)])
            .await;
        for s in &out {
            assert!(
                matches!(s, Settlement::Deferred(d) if d.cause == DeferCause::StoreUnavailable),
                "{out:?}"
            );
            assert!(!s.is_done());
        }
        assert!(forwarded.lock().unwrap().is_empty());
        assert_eq!(
            pipeline.idempotency().map(|i| i.is_available()),
            Some(false)
        );
    }

    #[tokio::test]
    async fn with_a_store_a_claim_held_elsewhere_defers_its_event_and_the_rest_of_its_group() {
        let (dest, forwarded) = queue(None);
        let (pipeline, store) = idempotent(dest);
        // Another worker holds event 1's claim.
        assert_eq!(
            claim_elsewhere(&store, 1).await,
            crate::idempotency::Claim::New
        );
        let out = pipeline
            .process(&[
                message("a1", &event(1), Some("a")),
                message("a2", &event(2), Some("a")),
                message("b1", &event(3), Some("b")),
            ])
            .await;
        assert!(
            matches!(&out[0], Settlement::Deferred(d) if d.cause == DeferCause::ClaimHeld && d.delay.is_some()),
            "{out:?}"
        );
        assert!(
            matches!(&out[1], Settlement::Deferred(d) if d.cause == DeferCause::ClaimHeld),
            "behind it in its group: {out:?}"
        );
        assert!(
            matches!(out[2], Settlement::Forwarded),
            "another group goes"
        );
        assert_eq!(forwarded.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn with_a_store_a_refused_event_gives_its_claim_back() {
        let (dest, _) = queue(Some("InvalidMessageContents"));
        let (pipeline, store) = idempotent(dest);
        let out = pipeline.process(&[message("a", &event(1), None)]).await;
        assert!(matches!(out[0], Settlement::Failed(_)), "{out:?}");
        assert_eq!(
            claim_elsewhere(&store, 1).await,
            crate::idempotency::Claim::New,
            "released, not held"
        );
    }

    #[tokio::test]
    async fn in_a_source_group_a_message_that_stays_holds_back_the_later_ones() {
        let (dest, forwarded) = queue(None);
        let messages = [
            message("a1", &event(1), Some("a")),
            message("a2", "not json", Some("a")),
            message("b1", &event(3), Some("b")),
            message("a3", &event(4), Some("a")),
        ];
        // No DLQ: the invalid one stays, so a3 must not overtake it.
        let out = pipeline(dest, None).process(&messages).await;
        assert!(matches!(out[0], Settlement::Forwarded));
        assert!(matches!(out[1], Settlement::Invalid(_)));
        assert!(matches!(out[2], Settlement::Forwarded), "other groups go");
        assert!(
            matches!(&out[3], Settlement::Deferred(d) if d.cause == DeferCause::HeldBack),
            "{out:?}"
        );
        assert_eq!(forwarded.lock().unwrap().len(), 2);
    }
}
