//! Internal events: every happening the worker both logs and counts is one small struct
//! here, whose [`InternalEvent::emit`] writes its log line and bumps its metric together,
//! so the two can never disagree (vector's `internal_events`).
//!
//! Events take primitives, `&dyn Display` and the typed labels of [`crate::outcome`];
//! nothing here imports the pipeline. The metrics themselves are declared in
//! [`crate::metrics`].

use std::fmt::Display;
use std::time::Duration;

use crate::metrics::{Counter, Gauge, Metrics};
use crate::outcome::{ErrorClass, Operation, Stage};

/// Something that happened, logged and counted as one.
pub trait InternalEvent: Sized {
    /// Writes the log line and bumps the metric.
    fn emit(self, metrics: &Metrics);
}

/// A message whose body is not a valid event. It is dead-lettered, or left in the source
/// queue for its redrive policy.
pub struct InvalidEvent<'a> {
    /// The source message.
    pub message_id: &'a str,
    /// How often it was received (above 1: a redelivery).
    pub receive_count: u32,
    /// The decode reason (`invalid_json`, …).
    pub reason: &'static str,
    /// What is wrong with it.
    pub error: &'a dyn Display,
}

impl InternalEvent for InvalidEvent<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            message_id = self.message_id,
            receive_count = self.receive_count,
            reason = self.reason,
            error = %self.error,
            "invalid event: not forwarded"
        );
        metrics.incr(Counter::InvalidEvent {
            reason: self.reason,
        });
    }
}

/// An event not forwarded: its store lookup or its send ended without acceptance.
pub struct EventFailed<'a> {
    /// The source message.
    pub message_id: &'a str,
    /// The event.
    pub event_id: &'a str,
    /// Where it stopped.
    pub stage: Stage,
    /// What kind of failure.
    pub class: ErrorClass,
    /// The service's code, if any.
    pub code: Option<&'a str>,
    /// The whole failure, for the log.
    pub error: &'a dyn Display,
}

impl InternalEvent for EventFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::error!(
            message_id = self.message_id,
            event_id = self.event_id,
            stage = self.stage.as_str(),
            class = self.class.as_str(),
            code = self.code.unwrap_or(""),
            error = %self.error,
            "event not forwarded"
        );
        metrics.incr(Counter::ForwardFailed { class: self.class });
    }
}

/// An event not sent now, on purpose: its organization is over its rate limit, its
/// route is paused, or an earlier event of its group did not go. Its message stays in
/// the source queue, hidden for `delay` (or as it is).
pub struct EventDeferred<'a> {
    /// The source message.
    pub message_id: &'a str,
    /// The event.
    pub event_id: &'a str,
    /// Why (`rate_limited`, `route_paused`, `held_back`).
    pub cause: &'static str,
    /// How long its message stays hidden; `None`: as it is.
    pub delay: Option<Duration>,
}

impl InternalEvent for EventDeferred<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::debug!(
            message_id = self.message_id,
            event_id = self.event_id,
            cause = self.cause,
            delay_ms = self.delay.map(|d| d.as_millis() as u64),
            "event deferred: its message stays in the source queue"
        );
        metrics.incr(Counter::EventDeferred { cause: self.cause });
    }
}

/// An event over the size limit with no S3 bucket to offload it to: not forwarded (as
/// Sentry does); dead-lettered if there is a dead-letter queue.
pub struct OversizedSkipped<'a> {
    /// The event.
    pub event_id: &'a str,
    /// Its size as SQS counts it.
    pub bytes: usize,
}

impl InternalEvent for OversizedSkipped<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            event_id = self.event_id,
            bytes = self.bytes,
            "event over the size limit and no S3 bucket configured: not forwarded"
        );
        metrics.incr(Counter::EventSkipped {
            reason: "oversized",
        });
    }
}

/// Source message attributes that did not fit in SQS's 10 per message: counted each
/// time, logged once per run (`first`).
pub struct AttributesDropped<'a> {
    /// The attributes' names.
    pub names: &'a [&'a str],
    /// Whether this is the run's first drop: only that one is logged.
    pub first: bool,
}

impl InternalEvent for AttributesDropped<'_> {
    fn emit(self, metrics: &Metrics) {
        if self.first {
            tracing::warn!(
                dropped = ?self.names,
                "source message attributes dropped: a message takes at most 10 attributes \
                 (the forwarder's own and the trace context first); logged once per run, \
                 counted in forwarder.attributes.dropped"
            );
        }
        metrics.count(Counter::AttributesDropped, self.names.len() as u64);
    }
}

/// An event no route takes: its project has no route and there is no default (as Sentry
/// skips projects without the plugin configured), or its organization's route does not
/// enroll it or switches it off. Skipped, counted with its own reason, never sent to the
/// default.
pub struct SkippedUnrouted<'a> {
    /// The event.
    pub event_id: &'a str,
    /// Its organization.
    pub organization_id: u64,
    /// Its project.
    pub project_id: u64,
    /// Why.
    pub skip: crate::outcome::Skip,
}

impl InternalEvent for SkippedUnrouted<'_> {
    fn emit(self, metrics: &Metrics) {
        use crate::outcome::Skip;
        let why = match self.skip {
            Skip::Unconfigured => "no route for the project: skipped",
            Skip::NotEnrolled => "the organization's route does not enroll the project: skipped",
            Skip::ProjectDisabled => "the organization's route switches the project off: skipped",
        };
        tracing::debug!(
            event_id = self.event_id,
            organization_id = self.organization_id,
            project_id = self.project_id,
            "{why}"
        );
        metrics.incr(Counter::EventSkipped {
            reason: self.skip.reason(),
        });
    }
}

/// An event its route's filter does not let through: skipped on purpose, counted, and its
/// source message deleted, as an unrouted project's.
pub struct SkippedFiltered<'a> {
    /// The event.
    pub event_id: &'a str,
    /// Its route's queue.
    pub route: &'a str,
}

impl InternalEvent for SkippedFiltered<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::debug!(
            event_id = self.event_id,
            route = self.route,
            "the route's filter does not match the event: skipped"
        );
        metrics.incr(Counter::EventSkipped { reason: "filtered" });
    }
}

/// A message the dead-letter queue accepted (its source message is deleted next).
pub struct DeadLettered<'a> {
    /// The source message.
    pub message_id: &'a str,
    /// Where it stopped.
    pub stage: Stage,
    /// The reason attribute (a decode reason or an error class).
    pub reason: &'static str,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(
            message_id = self.message_id,
            stage = self.stage.as_str(),
            reason = self.reason,
            "sent to the dead-letter queue"
        );
        metrics.incr(Counter::DeadLettered {
            stage: self.stage,
            reason: self.reason,
        });
    }
}

/// The dead-letter queue refused a message: it stays in the source queue.
pub struct DeadLetterRefused<'a> {
    /// The source message.
    pub message_id: &'a str,
    /// What kind of failure.
    pub class: ErrorClass,
    /// Why.
    pub error: &'a dyn Display,
}

impl InternalEvent for DeadLetterRefused<'_> {
    /// Logged only: the send's own failure is counted where its retries end.
    fn emit(self, _metrics: &Metrics) {
        tracing::error!(
            message_id = self.message_id,
            class = self.class.as_str(),
            error = %self.error,
            "dead-letter queue did not accept the message: left in the source queue"
        );
    }
}

/// A call failed transiently and will be tried again after `wait`.
pub struct RetryScheduled<'a> {
    /// The call.
    pub operation: Operation,
    /// What kind of failure.
    pub class: ErrorClass,
    /// Why.
    pub error: &'a dyn Display,
    /// The wait before the next try.
    pub wait: Duration,
}

impl InternalEvent for RetryScheduled<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            operation = self.operation.as_str(),
            class = self.class.as_str(),
            wait_ms = self.wait.as_millis() as u64,
            error = %self.error,
            "retrying after a transient failure"
        );
        metrics.incr(Counter::Retry {
            operation: self.operation,
            class: self.class,
        });
    }
}

/// A call that failed for good, its retries spent: what depended on it stays for a
/// later try.
pub struct CallFailed<'a> {
    /// The call.
    pub operation: Operation,
    /// What kind of failure.
    pub class: ErrorClass,
    /// Why.
    pub error: &'a dyn Display,
}

impl InternalEvent for CallFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::error!(
            operation = self.operation.as_str(),
            class = self.class.as_str(),
            error = %self.error,
            "call failed after its retries"
        );
        metrics.incr(Counter::AwsError {
            operation: self.operation,
            class: self.class,
        });
    }
}

/// A forwarded event whose source message could not be deleted: it will be delivered
/// again, so the destination may see it twice.
pub struct DeleteFailed<'a> {
    /// The source message.
    pub message_id: &'a str,
    /// What kind of failure.
    pub class: ErrorClass,
    /// Why.
    pub error: &'a dyn Display,
}

impl InternalEvent for DeleteFailed<'_> {
    /// Logged only: the delete's own failure is counted where its retries end.
    fn emit(self, _metrics: &Metrics) {
        tracing::warn!(
            message_id = self.message_id,
            class = self.class.as_str(),
            error = %self.error,
            "forwarded message not deleted: it will be redelivered (a duplicate)"
        );
    }
}

/// Messages received from the source queue.
pub struct MessagesReceived(pub usize);

impl InternalEvent for MessagesReceived {
    fn emit(self, metrics: &Metrics) {
        tracing::trace!(messages = self.0, "received");
        metrics.count(Counter::MessagesReceived, self.0 as u64);
    }
}

/// Source messages deleted after their event was settled.
pub struct MessagesDeleted(pub usize);

impl InternalEvent for MessagesDeleted {
    fn emit(self, metrics: &Metrics) {
        tracing::trace!(messages = self.0, "deleted");
        metrics.count(Counter::MessagesDeleted, self.0 as u64);
    }
}

/// An event over its organization's rate limit.
pub struct RateLimited {
    /// The organization.
    pub organization_id: u64,
    /// How long until it has a token again.
    pub wait: Duration,
}

impl InternalEvent for RateLimited {
    fn emit(self, metrics: &Metrics) {
        tracing::debug!(
            organization_id = self.organization_id,
            wait_ms = self.wait.as_millis() as u64,
            "organization over its rate limit"
        );
        metrics.incr(Counter::RateLimited);
    }
}

/// A route paused: its destination, bucket or credentials are unusable for now.
pub struct RoutePaused<'a> {
    /// The route (its queue's name).
    pub route: &'static str,
    /// What kind of failure paused it.
    pub class: ErrorClass,
    /// The service's code.
    pub code: Option<&'a str>,
    /// Until the next probe.
    pub wait: Duration,
    /// Why.
    pub error: &'a dyn Display,
    /// Whether it was on trial after a probe that passed (paused again).
    pub again: bool,
}

impl InternalEvent for RoutePaused<'_> {
    fn emit(self, metrics: &Metrics) {
        let message = if self.again {
            "route still unusable after its probe passed: paused again"
        } else {
            "route paused: its events stay in the source queue until a probe passes"
        };
        tracing::warn!(
            route = self.route,
            class = self.class.as_str(),
            code = self.code.unwrap_or(""),
            wait_ms = self.wait.as_millis() as u64,
            error = %self.error,
            "{message}"
        );
        metrics.gauge(Gauge::RoutePaused { route: self.route }, 1);
    }
}

/// A paused route accepted an event again.
pub struct RouteResumed {
    /// The route (its queue's name).
    pub route: &'static str,
}

impl InternalEvent for RouteResumed {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(route = self.route, "route resumed");
        metrics.gauge(Gauge::RoutePaused { route: self.route }, 0);
    }
}

/// Strings the indexer looked up in one batch, by where their ids came from, and those it
/// gave no id.
pub struct IndexerLookups<'a> {
    /// `(fetch_type, count)`.
    pub found: &'a [(&'static str, u64)],
    /// `(reason, count)`.
    pub refused: &'a [(&'static str, u64)],
}

impl InternalEvent for IndexerLookups<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::trace!(found = ?self.found, refused = ?self.refused, "indexer lookup");
        for &(reason, n) in self.refused {
            metrics.count(Counter::IndexerRefused { reason }, n);
        }
        for &(fetch_type, n) in self.found {
            metrics.count(Counter::IndexerLookup { fetch_type }, n);
        }
    }
}

/// A call to the indexer's shared cache (Redis) that gave no answer: the lookup went on
/// to the store.
pub struct SharedCacheError<'a> {
    /// The `reason` tag: `timeout`, `connection`, `refused`, `breaker_open`.
    pub reason: &'static str,
    /// What Redis or the client said.
    pub error: &'a dyn Display,
}

impl InternalEvent for SharedCacheError<'_> {
    fn emit(self, metrics: &Metrics) {
        // Per call, so at debug: the breaker's warning says it once.
        tracing::debug!(reason = self.reason, error = %self.error, "indexer shared cache: no answer, asking the store");
        metrics.incr(Counter::IndexerCacheError {
            reason: self.reason,
        });
    }
}

/// The shared cache's breaker opened: Redis failed repeatedly and is not asked until a
/// probe answers.
pub struct SharedCacheAway<'a> {
    /// Until the probe.
    pub cooldown: Duration,
    /// The last failure.
    pub error: &'a dyn Display,
}

impl InternalEvent for SharedCacheAway<'_> {
    fn emit(self, _metrics: &Metrics) {
        tracing::warn!(
            wait_ms = self.cooldown.as_millis() as u64,
            error = %self.error,
            "indexer shared cache unavailable: lookups go to the store until a probe answers"
        );
    }
}

/// The shared cache answered a probe: it is asked again.
pub struct SharedCacheBack;

impl InternalEvent for SharedCacheBack {
    fn emit(self, _metrics: &Metrics) {
        tracing::warn!("indexer shared cache answers again");
    }
}

/// The routes file read again (SIGHUP, or its content changed) and put in force: every
/// batch that starts from now on takes the new routes.
pub struct RoutesReloaded<'a> {
    /// What asked for it: `SIGHUP` or `file changed`.
    pub trigger: &'a str,
    /// The routes file.
    pub file: &'a std::path::Path,
    /// Routes in force now (default, projects, organizations and their projects).
    pub routes: usize,
    /// Of them, destinations not in force before (built and reached).
    pub new: usize,
}

impl InternalEvent for RoutesReloaded<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(
            trigger = self.trigger,
            file = %self.file.display(),
            routes = self.routes,
            new_destinations = self.new,
            "routes reloaded"
        );
        metrics.incr(Counter::ConfigReload { result: "success" });
        metrics.gauge(crate::metrics::Gauge::ConfigLastReloadSuccessful, 1);
    }
}

/// A reload refused: the file could not be read, did not validate, or a new destination
/// could not be reached. The routes in force stay; one line says why.
pub struct RoutesReloadFailed<'a> {
    /// What asked for it.
    pub trigger: &'a str,
    /// The routes file.
    pub file: &'a std::path::Path,
    /// Why, in one line.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for RoutesReloadFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::error!(
            trigger = self.trigger,
            file = %self.file.display(),
            error = %self.error,
            "routes not reloaded: the routes in force are kept"
        );
        metrics.incr(Counter::ConfigReload { result: "failure" });
        metrics.gauge(crate::metrics::Gauge::ConfigLastReloadSuccessful, 0);
    }
}

/// An event the idempotency store says was forwarded to this destination already: not
/// sent again; its source message is deleted.
pub struct SkippedAlreadyForwarded<'a> {
    /// The event.
    pub event_id: &'a str,
    /// Its route's queue.
    pub route: &'a str,
}

impl InternalEvent for SkippedAlreadyForwarded<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(
            event_id = self.event_id,
            route = self.route,
            "forwarded already to this destination: not sent again"
        );
        metrics.incr(Counter::IdempotencyClaim { result: "done" });
        metrics.incr(Counter::EventSkipped {
            reason: "already_forwarded",
        });
    }
}

/// Events claimed in the idempotency store before their send: `new` nobody had
/// claimed, `taken_over` had a claim whose lease ran out (their earlier send may have
/// gone: an ambiguous resend).
pub struct ClaimsTaken<'a> {
    /// Its route's queue.
    pub route: &'a str,
    /// Claimed afresh.
    pub new: u64,
    /// Of them, the events whose claim was taken over.
    pub taken_over: &'a [&'a str],
}

impl InternalEvent for ClaimsTaken<'_> {
    fn emit(self, metrics: &Metrics) {
        if self.new > 0 {
            metrics.count(Counter::IdempotencyClaim { result: "new" }, self.new);
        }
        for event_id in self.taken_over {
            tracing::warn!(
                event_id,
                route = self.route,
                "an earlier claim of this event ran out (its worker died or stalled after \
                 claiming): sent again, and it may arrive twice"
            );
        }
        if !self.taken_over.is_empty() {
            metrics.count(
                Counter::IdempotencyClaim { result: "takeover" },
                self.taken_over.len() as u64,
            );
        }
    }
}

/// An event another worker has claimed, and whose lease runs: deferred until it ends.
pub struct ClaimHeld<'a> {
    /// The event.
    pub event_id: &'a str,
    /// Its route's queue.
    pub route: &'a str,
    /// What is left of the other worker's lease.
    pub left: Duration,
}

impl InternalEvent for ClaimHeld<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::debug!(
            event_id = self.event_id,
            route = self.route,
            left_ms = self.left.as_millis() as u64,
            "claimed by another worker: deferred"
        );
        metrics.incr(Counter::IdempotencyClaim { result: "held" });
    }
}

/// A call to the idempotency store failed (after its retries).
pub struct IdempotencyStoreFailed<'a> {
    /// Claim, mark or release.
    pub operation: Operation,
    /// Its class.
    pub class: ErrorClass,
    /// Events it was for.
    pub events: usize,
    /// Whether they are forwarded anyway (`FORWARDER_IDEMPOTENCY_FAIL_OPEN`).
    pub fail_open: bool,
    /// What the store or the client said (never its URL).
    pub error: &'a dyn Display,
}

impl InternalEvent for IdempotencyStoreFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        let then = match (self.operation, self.fail_open) {
            (Operation::IdempotencyRelease, _) => {
                "their claims run out with their lease, and a later try takes them over"
            }
            (_, true) => "fail-open: forwarded (and deleted) without it, counted as bypassed",
            (Operation::IdempotencyMark, false) => {
                "fail-closed: accepted by the destination, but left in the source: their \
                 claims run out and a later try sends them again"
            }
            (_, false) => "fail-closed: nothing sent, left in the source",
        };
        tracing::warn!(
            operation = self.operation.as_str(),
            class = self.class.as_str(),
            events = self.events,
            error = %self.error,
            "idempotency store failed: {then}"
        );
        metrics.incr(Counter::IdempotencyError {
            operation: self.operation,
            class: self.class,
        });
        if self.fail_open && self.operation != Operation::IdempotencyRelease {
            metrics.count(Counter::IdempotencyBypassed, self.events as u64);
        }
    }
}

/// The idempotency store stopped or started answering: readiness and
/// `forwarder.idempotency.available` follow.
pub struct IdempotencyAvailability {
    /// Whether it answers now.
    pub available: bool,
    /// Whether events go on without it (`FORWARDER_IDEMPOTENCY_FAIL_OPEN`).
    pub fail_open: bool,
}

impl InternalEvent for IdempotencyAvailability {
    fn emit(self, metrics: &Metrics) {
        match (self.available, self.fail_open) {
            (true, _) => tracing::warn!("idempotency store answers again"),
            (false, true) => tracing::warn!(
                "idempotency store unavailable: fail-open, events go on without it (each counted)"
            ),
            (false, false) => tracing::warn!(
                "idempotency store unavailable: not ready; events stay in the source until it answers"
            ),
        }
        metrics.gauge(Gauge::IdempotencyAvailable, u64::from(self.available));
    }
}
