//! Every metric this worker emits, as typed values, and the one place that emits them.
//!
//! As in getsentry/relay, a metric is a variant of an enum ([`Counter`], [`Timer`],
//! [`Gauge`]); its name and tags are fixed here and documented on the variant, so a
//! dashboard author reads this file and nothing else. Code elsewhere calls
//! [`Metrics::incr`], [`Metrics::timing`] or [`Metrics::gauge`] and never spells a name.
//!
//! Metrics leave through the backend `FORWARDER_METRICS_BACKEND` picks ([`sink::build`]):
//! cadence to statsd/DogStatsD over UDP, whose sink queues and buffers; or
//! [`backend`]'s EMF, Datadog API and log backends, which aggregate or log. Either way,
//! emitting never blocks the pipeline. What logs and counts
//! together goes through [`crate::internal_events`]. This module imports nothing of
//! the pipeline: only the typed labels of [`crate::outcome`].

pub mod backend;
pub mod datadog;
pub mod emf;
pub mod prometheus;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use cadence::prelude::*;
use cadence::{MetricBuilder, MetricSink, StatsdClient};

use crate::outcome::{ErrorClass, Operation, Stage};

/// The `plugin` tag of `data-forwarding.http_response`, as Sentry's Amazon SQS plugin sets it.
pub const PLUGIN: &str = "amazon-sqs";

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `data-forwarding.http_response`: exactly one per forwarded event, counted by
    /// [`crate::forward::track_response_metric`] once the event's send has ended
    /// (after retries). Never sampled.
    ///
    /// Tags: `plugin` (always `amazon-sqs`), `success` (`true` if the destination
    /// accepted the event, `false` if the send failed or errored).
    HttpResponse {
        /// The `success` tag.
        success: bool,
    },
    /// `forwarder.event.invalid`: a message whose body is not a valid event. The message
    /// is not deleted; the queue's redrive policy takes it to its dead-letter queue.
    ///
    /// Tags: `reason`, one of [`crate::event::DecodeError::reason`].
    InvalidEvent {
        /// The `reason` tag.
        reason: &'static str,
    },
    /// `forwarder.event.failed`: an event whose forward failed for good (permanent error
    /// or retries exhausted); its message is left in the source queue.
    ///
    /// Tags: `class`, the [`ErrorClass`] of the failure.
    ForwardFailed {
        /// The `class` tag.
        class: ErrorClass,
    },
    /// `forwarder.event.skipped`: an event not forwarded on purpose, as Sentry skips it.
    ///
    /// Tags: `reason` (`oversized`: over the size limit with no S3 bucket;
    /// `skip_unconfigured`: the project has no route; `skip_not_enrolled`: its
    /// organization's route does not enroll projects it does not list;
    /// `skip_project_disabled`: its organization's route switches it off (`enabled =
    /// false`); `filtered`: its route's filter does not let it through).
    EventSkipped {
        /// The `reason` tag.
        reason: &'static str,
    },
    /// `forwarder.retry`: one retry of a call, before its backoff sleep.
    ///
    /// Tags: `operation` (an [`Operation`]: `receive`, `send`, `delete`,
    /// `change_visibility`, `get_attributes`, `s3_put`, `indexer_fetch`, …), `class`
    /// (`throttled`, `server_error`, `timeout`, `connection`).
    Retry {
        /// The `operation` tag.
        operation: Operation,
        /// The `class` tag.
        class: ErrorClass,
    },
    /// `forwarder.rate_limited`: an event over its organization's rate limit, deferred.
    RateLimited,
    /// `forwarder.event.deferred`: an event not sent now, on purpose; its source message
    /// stays in the queue, hidden until it can go.
    ///
    /// Tags: `cause` (`rate_limited`: its organization is over `FORWARDER_RATE_LIMIT`;
    /// `route_paused`: its destination is unusable for now; `held_back`: an earlier
    /// event of its FIFO group was not accepted).
    EventDeferred {
        /// The `cause` tag.
        cause: &'static str,
    },
    /// `forwarder.messages.received`: messages received from the source queue.
    MessagesReceived,
    /// `forwarder.messages.deleted`: source messages deleted after their event was accepted.
    MessagesDeleted,
    /// `forwarder.dead_letter`: a message sent to the dead-letter queue (then deleted
    /// from the source).
    ///
    /// Tags: `stage` (a [`Stage`]: `decode`, `forward`), `reason` (a decode reason or an
    /// error class).
    DeadLettered {
        /// The `stage` tag.
        stage: Stage,
        /// The `reason` tag.
        reason: &'static str,
    },
    /// `forwarder.indexer.lookup`: strings looked up by the indexer, by where the id came
    /// from.
    ///
    /// Tags: `fetch_type` (`shared`, `cache`, `shared_cache`, `db`, `first_seen`,
    /// `limited`).
    IndexerLookup {
        /// The `fetch_type` tag.
        fetch_type: &'static str,
    },
    /// `forwarder.indexer.refused`: strings given no id.
    ///
    /// Tags: `reason` (`write_limit`, `too_long`, `invalid_string`, `empty_key`).
    IndexerRefused {
        /// The `reason` tag.
        reason: &'static str,
    },
    /// `forwarder.indexer.cache.error`: a call to the indexer's shared cache (Redis) that
    /// gave no answer; the lookup went on to the store.
    ///
    /// Tags: `reason` (`timeout`, `connection`, `refused`: Redis answered an error,
    /// `breaker_open`: not asked, Redis failed repeatedly).
    IndexerCacheError {
        /// The `reason` tag.
        reason: &'static str,
    },
    /// `forwarder.attributes.dropped`: source message attributes not forwarded because
    /// the message already had SQS's 10 (`FORWARDER_FORWARD_ATTRIBUTES`). Counted by
    /// the attribute; logged once per run.
    AttributesDropped,
    /// `forwarder.metrics.dropped`: `datadog-api` series that were not accepted (after
    /// retries within the flush interval) and were dropped; counted by the backend
    /// itself and sent with the next interval. Logged once per run.
    MetricsDropped,
    /// `forwarder.sqs.requests`: every SQS and S3 request sent, retries included: what
    /// AWS bills (counted by the clients themselves, [`crate::aws::requests`]).
    ///
    /// Tags: `operation`, the API's name (`ReceiveMessage`, `SendMessageBatch`,
    /// `DeleteMessageBatch`, `ChangeMessageVisibilityBatch`, `GetQueueAttributes`,
    /// `PutObject`, `HeadBucket`, …).
    SqsRequests {
        /// The `operation` tag.
        operation: &'static str,
    },
    /// `forwarder.config.reload`: a reload of the routes file (SIGHUP, or its content
    /// changed): put in force, or refused with the routes in force kept.
    ///
    /// Tags: `result` (`success`, `failure`).
    ConfigReload {
        /// The `result` tag.
        result: &'static str,
    },
    /// `forwarder.idempotency.claim`: an event's claim in the idempotency store before
    /// its send, by what the store answered.
    ///
    /// Tags: `result` (`new`: nobody had claimed it; `takeover`: an earlier claim's lease
    /// had run out, so the event may have gone before (an ambiguous resend, sent again);
    /// `done`: forwarded already to this destination, skipped; `held`: a live claim of
    /// another worker, deferred).
    IdempotencyClaim {
        /// The `result` tag.
        result: &'static str,
    },
    /// `forwarder.idempotency.error`: a call to the idempotency store that failed (after
    /// retries). Fail-closed (the default), its events stay in the source.
    ///
    /// Tags: `operation` (`idempotency_claim`, `idempotency_mark`,
    /// `idempotency_release`), `class` (`timeout`, `connection`, `server_error`).
    IdempotencyError {
        /// The `operation` tag.
        operation: Operation,
        /// The `class` tag.
        class: ErrorClass,
    },
    /// `forwarder.idempotency.bypassed`: an event forwarded (or deleted) without the
    /// store's answer, because the store failed and `FORWARDER_IDEMPOTENCY_FAIL_OPEN`
    /// is on.
    IdempotencyBypassed,
    /// `forwarder.sqs.error`: a call that failed for good (after retries).
    ///
    /// Tags: `operation` (as for `forwarder.retry`), `class`.
    AwsError {
        /// The `operation` tag.
        operation: Operation,
        /// The `class` tag.
        class: ErrorClass,
    },
}

impl Counter {
    /// The metric's name, without the prefix.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Counter::HttpResponse { .. } => "data-forwarding.http_response",
            Counter::InvalidEvent { .. } => "forwarder.event.invalid",
            Counter::ForwardFailed { .. } => "forwarder.event.failed",
            Counter::EventSkipped { .. } => "forwarder.event.skipped",
            Counter::EventDeferred { .. } => "forwarder.event.deferred",
            Counter::Retry { .. } => "forwarder.retry",
            Counter::MessagesReceived => "forwarder.messages.received",
            Counter::RateLimited => "forwarder.rate_limited",
            Counter::MessagesDeleted => "forwarder.messages.deleted",
            Counter::AwsError { .. } => "forwarder.sqs.error",
            Counter::ConfigReload { .. } => "forwarder.config.reload",
            Counter::SqsRequests { .. } => "forwarder.sqs.requests",
            Counter::AttributesDropped => "forwarder.attributes.dropped",
            Counter::MetricsDropped => "forwarder.metrics.dropped",
            Counter::IndexerLookup { .. } => "forwarder.indexer.lookup",
            Counter::DeadLettered { .. } => "forwarder.dead_letter",
            Counter::IndexerRefused { .. } => "forwarder.indexer.refused",
            Counter::IndexerCacheError { .. } => "forwarder.indexer.cache.error",
            Counter::IdempotencyClaim { .. } => "forwarder.idempotency.claim",
            Counter::IdempotencyError { .. } => "forwarder.idempotency.error",
            Counter::IdempotencyBypassed => "forwarder.idempotency.bypassed",
        }
    }

    fn tags(&self) -> Vec<(&'static str, &'static str)> {
        match *self {
            Counter::HttpResponse { success } => vec![
                ("plugin", PLUGIN),
                ("success", if success { "true" } else { "false" }),
            ],
            Counter::InvalidEvent { reason }
            | Counter::IndexerRefused { reason }
            | Counter::IndexerCacheError { reason }
            | Counter::EventSkipped { reason } => {
                vec![("reason", reason)]
            }
            Counter::IndexerLookup { fetch_type } => vec![("fetch_type", fetch_type)],
            Counter::SqsRequests { operation } => vec![("operation", operation)],
            Counter::ConfigReload { result } | Counter::IdempotencyClaim { result } => {
                vec![("result", result)]
            }
            Counter::EventDeferred { cause } => vec![("cause", cause)],
            Counter::DeadLettered { stage, reason } => {
                vec![("stage", stage.as_str()), ("reason", reason)]
            }
            Counter::ForwardFailed { class } => vec![("class", class.as_str())],
            Counter::Retry { operation, class }
            | Counter::AwsError { operation, class }
            | Counter::IdempotencyError { operation, class } => {
                vec![("operation", operation.as_str()), ("class", class.as_str())]
            }
            Counter::MessagesReceived
            | Counter::MessagesDeleted
            | Counter::RateLimited
            | Counter::AttributesDropped
            | Counter::MetricsDropped
            | Counter::IdempotencyBypassed => Vec::new(),
        }
    }

    /// Counters users alert on (or bill by) are never sampled.
    fn sampled(&self) -> bool {
        !matches!(
            self,
            Counter::HttpResponse { .. }
                | Counter::SqsRequests { .. }
                | Counter::ConfigReload { .. }
                | Counter::IdempotencyClaim { .. }
                | Counter::IdempotencyError { .. }
                | Counter::IdempotencyBypassed
        )
    }
}

/// Timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// `forwarder.send_batch.duration`: one SendMessageBatch call, retries excluded.
    BatchSend,
    /// `forwarder.indexer.store.duration`: one store query of the indexer.
    IndexerStore,
    /// `forwarder.event.latency`: from the source message's `SentTimestamp` to the
    /// destination's acceptance of its event.
    EndToEnd,
}

impl Timer {
    fn name(&self) -> &'static str {
        match self {
            Timer::BatchSend => "forwarder.send_batch.duration",
            Timer::EndToEnd => "forwarder.event.latency",
            Timer::IndexerStore => "forwarder.indexer.store.duration",
        }
    }
}

/// Distributions of counts (statsd histograms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// `forwarder.send_batch.entries`: entries in one SendMessageBatch call (1 to 10):
    /// how well the batching window fills calls.
    SendBatchEntries,
    /// `forwarder.pack.events`: events in one packed message (`pack = "ndjson"`): how
    /// many writes packing saves.
    PackEvents,
}

impl Distribution {
    fn name(&self) -> &'static str {
        match self {
            Distribution::SendBatchEntries => "forwarder.send_batch.entries",
            Distribution::PackEvents => "forwarder.pack.events",
        }
    }
}

/// The histogram buckets of a timer (in seconds) or a distribution, by its name without
/// the prefix: what the `prometheus` backend gives each. A name not in the catalogue
/// gets the timers' default.
pub(crate) fn buckets(name: &str) -> &'static [f64] {
    /// One SQS or S3 call, retries apart.
    const CALL: &[f64] = &[
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    /// From the source's `SentTimestamp` to the destination: the batching window, retries
    /// and deferrals (rate limits, paused routes) included.
    const LATENCY: &[f64] = &[
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    ];
    /// One indexer store query.
    const STORE: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ];
    /// Entries of one batch call: 1 to 10.
    const ENTRIES: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
    /// Events of one pack.
    const EVENTS: &[f64] = &[
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
    ];
    match name {
        n if n == Timer::EndToEnd.name() => LATENCY,
        n if n == Timer::IndexerStore.name() => STORE,
        n if n == Distribution::SendBatchEntries.name() => ENTRIES,
        n if n == Distribution::PackEvents.name() => EVENTS,
        _ => CALL,
    }
}

/// Gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// `forwarder.events.in_flight`: events received and not yet settled, over all workers.
    InFlight,
    /// `forwarder.events.in_flight.limit`: the bound on them (`FORWARDER_MAX_IN_FLIGHT`),
    /// set with each batch: in-flight against it says whether the pool is saturated.
    InFlightLimit,
    /// `forwarder.indexer.cache.size`: entries in the indexer's in-process cache.
    IndexerCacheSize,
    /// `forwarder.route.paused`: 1 while a route is paused (its destination, bucket or
    /// credentials unusable), 0 otherwise; set at start and on every change.
    ///
    /// Tags: `route`, the destination queue's name.
    RoutePaused {
        /// The `route` tag.
        route: &'static str,
    },
    /// `forwarder.config.last_reload_successful`: 1 when the last reload of the routes
    /// file was put in force (and at start), 0 when it was refused (as Prometheus's
    /// `prometheus_config_last_reload_successful`).
    ConfigLastReloadSuccessful,
    /// `forwarder.idempotency.available`: 1 while the idempotency store answers, 0 from
    /// its first failure to its next answer (fail-closed, nothing is forwarded
    /// meanwhile); set on every change.
    IdempotencyAvailable,
}

impl Gauge {
    fn name(&self) -> &'static str {
        match self {
            Gauge::InFlight => "forwarder.events.in_flight",
            Gauge::InFlightLimit => "forwarder.events.in_flight.limit",
            Gauge::IndexerCacheSize => "forwarder.indexer.cache.size",
            Gauge::RoutePaused { .. } => "forwarder.route.paused",
            Gauge::ConfigLastReloadSuccessful => "forwarder.config.last_reload_successful",
            Gauge::IdempotencyAvailable => "forwarder.idempotency.available",
        }
    }

    fn tags(&self) -> Vec<(&'static str, &'static str)> {
        match *self {
            Gauge::RoutePaused { route } => vec![("route", route)],
            Gauge::InFlight
            | Gauge::InFlightLimit
            | Gauge::IndexerCacheSize
            | Gauge::ConfigLastReloadSuccessful
            | Gauge::IdempotencyAvailable => Vec::new(),
        }
    }
}

/// A cheap, cloneable handle to the metrics client. Disabled, it does nothing.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Every backend each metric goes to (`FORWARDER_METRICS_BACKEND` may name several);
    /// `None` when metrics are off.
    inner: Option<Arc<[Arc<Inner>]>>,
}

/// One backend.
struct Inner {
    /// Where metrics go.
    out: Output,
    /// What is behind `out`, kept to flush it and to wait for its queue at shutdown.
    sink: Arc<dyn Flush>,
    /// Fraction of sampled metrics sent (`FORWARDER_METRICS_SAMPLE_RATE`; statsd only:
    /// the other backends aggregate, so nothing needs sampling).
    sample_rate: f64,
    /// What a scraper reads, for a backend that is scraped (`prometheus`): served at
    /// `GET /metrics` by the health listener.
    exporter: Option<prometheus::Exporter>,
}

/// The two ways out: cadence's statsd client, or another backend.
enum Output {
    /// statsd/DogStatsD: prefix and global tags are applied by the cadence client.
    Statsd(StatsdClient),
    /// `emf`, `datadog-api`, `log`, `prometheus`: prefix and global tags applied here.
    Backend {
        /// The backend.
        backend: Arc<dyn backend::Backend>,
        /// Prepended to every name, with a dot.
        prefix: String,
        /// Added to every metric, first.
        tags: Vec<(String, String)>,
    },
}

/// What shutdown needs from a sink: push out what is buffered.
pub trait Flush: Send + Sync {
    /// Sends everything queued or buffered; waits at most `timeout` for a queue to drain.
    fn flush_within(&self, timeout: Duration);
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("backends", &self.outputs().len())
            .finish()
    }
}

impl Metrics {
    /// Metrics off.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Metrics through any cadence sink: the UDP sink in production, `SpyMetricSink` in tests.
    pub fn new<S>(sink: S, prefix: &str, global_tags: &[(String, String)], sample_rate: f64) -> Self
    where
        S: MetricSink + Flush + Clone + Send + Sync + std::panic::RefUnwindSafe + 'static,
    {
        let flusher: Arc<dyn Flush> = Arc::new(sink.clone());
        let mut builder = StatsdClient::builder(prefix, sink).with_error_handler(|_err| {
            // A full queue or an unreachable statsd must never disturb forwarding.
        });
        for (k, v) in global_tags {
            builder = builder.with_tag(k.as_str(), v.as_str());
        }
        Self::one(Inner {
            out: Output::Statsd(builder.build()),
            sink: flusher,
            sample_rate,
            exporter: None,
        })
    }

    /// Metrics through another backend (EMF, Datadog's API, logs, Prometheus), with the
    /// same catalogue, prefix and global tags.
    pub fn with_backend(
        backend: Arc<dyn backend::Backend>,
        prefix: &str,
        global_tags: &[(String, String)],
    ) -> Self {
        Self::one(Self::backend_inner(backend, prefix, global_tags, None))
    }

    /// Metrics through the `prometheus` backend, whose exposition
    /// [`exporter`](Self::exporter) then gives.
    pub fn scraped(
        backend: Arc<prometheus::PrometheusBackend>,
        prefix: &str,
        global_tags: &[(String, String)],
    ) -> Self {
        let exporter = backend.exporter();
        Self::one(Self::backend_inner(
            backend,
            prefix,
            global_tags,
            Some(exporter),
        ))
    }

    fn backend_inner(
        backend: Arc<dyn backend::Backend>,
        prefix: &str,
        global_tags: &[(String, String)],
        exporter: Option<prometheus::Exporter>,
    ) -> Inner {
        Inner {
            sink: backend.clone(),
            out: Output::Backend {
                backend,
                prefix: prefix.to_string(),
                tags: global_tags.to_vec(),
            },
            sample_rate: 1.0,
            exporter,
        }
    }

    fn one(inner: Inner) -> Self {
        Self {
            inner: Some(Arc::from(vec![Arc::new(inner)])),
        }
    }

    /// Every metric to each of `all` (`FORWARDER_METRICS_BACKEND=dogstatsd,prometheus`).
    pub fn fanout(all: Vec<Metrics>) -> Self {
        let outs: Vec<Arc<Inner>> = all
            .iter()
            .flat_map(|m| m.outputs().iter().cloned())
            .collect();
        Self {
            inner: (!outs.is_empty()).then(|| Arc::from(outs)),
        }
    }

    fn outputs(&self) -> &[Arc<Inner>] {
        self.inner.as_deref().unwrap_or(&[])
    }

    /// The Prometheus exposition of the `prometheus` backend, if it is one of them: what
    /// `GET /metrics` serves.
    pub fn exporter(&self) -> Option<prometheus::Exporter> {
        self.outputs()
            .iter()
            .find_map(|inner| inner.exporter.clone())
    }

    /// Counts one.
    pub fn incr(&self, counter: Counter) {
        self.count(counter, 1);
    }

    /// Counts `n`.
    pub fn count(&self, counter: Counter, n: u64) {
        for inner in self.outputs() {
            match &inner.out {
                Output::Statsd(client) => {
                    if counter.sampled() && !inner.keep() {
                        continue;
                    }
                    let builder = client.count_with_tags(counter.name(), n);
                    send(inner.rate_if(counter.sampled(), builder), &counter.tags());
                }
                Output::Backend { .. } => {
                    inner.record(counter.name(), &counter.tags(), backend::Value::Count(n))
                }
            }
        }
    }

    /// Records a duration in milliseconds.
    pub fn timing(&self, timer: Timer, duration: Duration) {
        for inner in self.outputs() {
            match &inner.out {
                Output::Statsd(client) => {
                    if !inner.keep() {
                        continue;
                    }
                    let builder = client.time_with_tags(timer.name(), duration);
                    send(inner.rate_if(true, builder), &[]);
                }
                Output::Backend { .. } => inner.record(
                    timer.name(),
                    &[],
                    backend::Value::Millis(duration.as_secs_f64() * 1000.0),
                ),
            }
        }
    }

    /// Records one value of a distribution.
    pub fn distribution(&self, distribution: Distribution, value: u64) {
        for inner in self.outputs() {
            match &inner.out {
                Output::Statsd(client) => {
                    if !inner.keep() {
                        continue;
                    }
                    let builder = client.histogram_with_tags(distribution.name(), value);
                    send(inner.rate_if(true, builder), &[]);
                }
                Output::Backend { .. } => inner.record(
                    distribution.name(),
                    &[],
                    backend::Value::Sample(value as f64),
                ),
            }
        }
    }

    /// Sets a gauge. Gauges are never sampled: a dropped value would leave a stale one.
    pub fn gauge(&self, gauge: Gauge, value: u64) {
        for inner in self.outputs() {
            match &inner.out {
                Output::Statsd(client) => {
                    send(client.gauge_with_tags(gauge.name(), value), &gauge.tags())
                }
                Output::Backend { .. } => {
                    inner.record(gauge.name(), &gauge.tags(), backend::Value::Gauge(value))
                }
            }
        }
    }

    /// The sink's flush, for a flusher that must stop when the metrics are dropped.
    pub(crate) fn flush_handle(&self) -> Option<std::sync::Weak<dyn Flush>> {
        self.outputs()
            .first()
            .map(|inner| Arc::downgrade(&inner.sink))
    }

    /// Sends what is queued or buffered. Called every second by the sink's flusher and
    /// once at shutdown.
    pub fn flush(&self, timeout: Duration) {
        for inner in self.outputs() {
            inner.sink.flush_within(timeout);
        }
    }
}

impl Inner {
    /// To a backend: the name with the prefix, the global tags then the metric's own.
    fn record(&self, name: &str, tags: &[(&str, &str)], value: backend::Value) {
        let Output::Backend {
            backend,
            prefix,
            tags: global,
        } = &self.out
        else {
            return;
        };
        let full;
        let name = if prefix.is_empty() {
            name
        } else {
            let dot = if prefix.ends_with('.') { "" } else { "." };
            full = format!("{prefix}{dot}{name}");
            full.as_str()
        };
        let all: Vec<(&str, &str)> = global
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(tags.iter().copied())
            .collect();
        backend.record(&backend::Sample {
            name,
            tags: &all,
            value,
        });
    }

    /// Whether a sampled metric is sent this time.
    fn keep(&self) -> bool {
        self.sample_rate >= 1.0 || fastrand::f64() < self.sample_rate
    }

    fn rate_if<'a, T: cadence::Metric + From<String>>(
        &self,
        sampled: bool,
        builder: MetricBuilder<'a, 'a, T>,
    ) -> MetricBuilder<'a, 'a, T> {
        if sampled && self.sample_rate < 1.0 {
            builder.with_sampling_rate(self.sample_rate)
        } else {
            builder
        }
    }
}

fn send<'a, T: cadence::Metric + From<String>>(
    mut builder: MetricBuilder<'a, 'a, T>,
    tags: &[(&'a str, &'a str)],
) {
    for (k, v) in tags {
        builder = builder.with_tag(k, v);
    }
    builder.send();
}

/// Exact statsd lines in unit tests, through cadence's `SpyMetricSink`.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use cadence::{MetricSink, SpyMetricSink};

    use super::{Flush, Metrics};

    /// A spy sink that also satisfies [`Flush`].
    #[derive(Clone)]
    struct Spy(Arc<SpyMetricSink>);
    impl MetricSink for Spy {
        fn emit(&self, metric: &str) -> std::io::Result<usize> {
            self.0.emit(metric)
        }
    }
    impl Flush for Spy {
        fn flush_within(&self, _timeout: Duration) {}
    }

    /// What a spied [`Metrics`] emitted.
    pub(crate) struct Spied(crossbeam_channel::Receiver<Vec<u8>>);

    impl Spied {
        /// The lines emitted since the last call.
        pub(crate) fn lines(&self) -> Vec<String> {
            self.0
                .try_iter()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect()
        }
    }

    /// Metrics whose every line is captured, with a prefix, global tags and a rate.
    pub(crate) fn spy_with(prefix: &str, tags: &[(String, String)], rate: f64) -> (Spied, Metrics) {
        let (rx, sink) = SpyMetricSink::new();
        (
            Spied(rx),
            Metrics::new(Spy(Arc::new(sink)), prefix, tags, rate),
        )
    }

    /// Metrics whose every line is captured, unprefixed.
    pub(crate) fn spy() -> (Spied, Metrics) {
        spy_with("", &[], 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{spy_with, Spied};
    use super::*;

    fn spy(prefix: &str, tags: &[(String, String)], rate: f64) -> (Spied, Metrics) {
        spy_with(prefix, tags, rate)
    }

    fn lines(rx: &Spied) -> Vec<String> {
        rx.lines()
    }

    #[test]
    fn http_response_line_is_sentrys() {
        let (rx, m) = spy("", &[], 1.0);
        m.incr(Counter::HttpResponse { success: true });
        m.incr(Counter::HttpResponse { success: false });
        assert_eq!(
            lines(&rx),
            [
                "data-forwarding.http_response:1|c|#plugin:amazon-sqs,success:true",
                "data-forwarding.http_response:1|c|#plugin:amazon-sqs,success:false",
            ]
        );
    }

    #[test]
    fn prefix_and_global_tags_apply() {
        let tags = vec![("env".to_string(), "prod".to_string())];
        let (rx, m) = spy("sentry", &tags, 1.0);
        m.incr(Counter::InvalidEvent {
            reason: "invalid_json",
        });
        m.gauge(Gauge::InFlight, 7);
        let got = lines(&rx);
        assert_eq!(got.len(), 2);
        assert!(
            got[0].starts_with("sentry.forwarder.event.invalid:1|c|#"),
            "{got:?}"
        );
        assert!(got[0].contains("reason:invalid_json"), "{got:?}");
        assert!(got[0].contains("env:prod"), "{got:?}");
        assert!(
            got[1].starts_with("sentry.forwarder.events.in_flight:7|g"),
            "{got:?}"
        );
    }

    #[test]
    fn http_response_is_never_sampled() {
        let (rx, m) = spy("", &[], 0.0001);
        for _ in 0..200 {
            m.incr(Counter::HttpResponse { success: true });
            m.incr(Counter::MessagesReceived);
        }
        let got = lines(&rx);
        let http = got
            .iter()
            .filter(|l| l.starts_with("data-forwarding"))
            .count();
        assert_eq!(http, 200);
        assert!(
            got.len() < 210,
            "sampled counters were not sampled: {}",
            got.len()
        );
        assert!(got
            .iter()
            .filter(|l| l.starts_with("data-forwarding"))
            .all(|l| !l.contains("|@")));
    }

    #[test]
    fn sampled_lines_carry_their_rate() {
        let (rx, m) = spy("", &[], 0.5);
        for _ in 0..100 {
            m.incr(Counter::MessagesReceived);
        }
        let got = lines(&rx);
        assert!(!got.is_empty() && got.len() < 100, "{}", got.len());
        assert!(got
            .iter()
            .all(|l| l == "forwarder.messages.received:1|c|@0.5"));
    }

    #[test]
    fn disabled_metrics_do_nothing() {
        let m = Metrics::disabled();
        m.incr(Counter::MessagesDeleted);
        m.flush(Duration::from_millis(1));
    }
}
