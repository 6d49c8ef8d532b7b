//! sqs-forwarder: forwards Sentry-style events from a source SQS queue to a destination
//! queue, at least once, with retries and statsd metrics.
//!
//! # The flow
//!
//! ```text
//! source queue ──► worker pool ──► decode ──► indexer ──► forward ──► destination queue
//!  (source)         (worker)       (event)    (indexer)   (forward)
//!                                                 every send inside track_response_metric:
//!                                                 data-forwarding.http_response{plugin, success}
//! ```
//!
//! A message is deleted from the source only after the destination accepted its event.
//! Anything else (an invalid body, a send that failed for good or ran out of retries)
//! stays in the source queue, whose redrive policy is the last resort.
//!
//! # The layout, in the order of the flow
//!
//! - [`config`]: every setting, as a flag and an environment variable, validated at start.
//! - [`app`]: start-up: clients, metrics, and the healthcheck of each queue.
//! - [`idempotency`]: effectively once: each event claimed in a store (Redis or
//!   PostgreSQL) before its send to a destination and marked done after, so a kill or a
//!   redelivery forwards nothing twice (`FORWARDER_IDEMPOTENCY_URL`).
//! - `source` (internal): where events come from: long-polling the source queue, deleting,
//!   extending visibility; or a Lambda SQS batch, as the same messages; SNS envelopes
//!   opened (`source::envelope`).
//! - [`worker`]: the pool of pollers; [`worker::Worker::run_once`] is one step and
//!   [`worker::run`] takes its shutdown signal as an argument. [`worker::admission`]
//!   owns what may be received and what is held (events, bytes, receives in flight).
//! - [`pipeline`]: decode, index, forward, settling each message; shared by `run`,
//!   `replay` and Lambda mode.
//! - [`lambda`]: Lambda mode: one SQS batch per invocation, a partial batch response.
//! - `health` (internal): the liveness and readiness listener for Kubernetes probes,
//!   and `/metrics` for Prometheus.
//! - [`event`]: the event, its decoder, the encoder that adds `tag_ids`, and what each
//!   destination receives of it ([`event::fields`]: the field splice and the filters).
//! - [`indexer`]: tag strings interned per organization into stable ids (shared strings,
//!   cache, store, limits).
//! - [`forward`]: where events go: batching within SQS limits, FIFO order, the rate
//!   limit, route pauses, packing many events per message, the dead-letter queue, and
//!   `track_response_metric`.
//! - [`aws`]: SDK clients (SDK retries off), their errors, and the one decision of what
//!   kind of failure an AWS error is ([`aws::classify()`]).
//! - [`batching`]: the batching window: entries bound for one queue, from every poller,
//!   share batch calls for at most `FORWARDER_BATCH_WINDOW` (sends, deletes, visibility);
//!   each call's response time goes to [`concurrency`], the in-flight bound that
//!   follows them.
//! - [`retry`]: the one retry layer, knowing nothing of AWS: the backoff schedule, a
//!   call retried, a batch retried entry by entry.
//! - [`outcome`]: typed outcomes (stage, operation, error class, failure), the leaf
//!   that every layer maps its errors to, once.
//! - `internal_events` (internal): each happening logged and counted together.
//! - [`metrics`]: every metric as a typed value, and its backends (statsd and
//!   DogStatsD, Datadog's API, EMF, log, Prometheus), one or several at once.
//! - [`telemetry`]: logging set-up, and traces over OTLP ([`telemetry::otlp`]).
//! - [`allocator`]: the allocator's settings (large buffers back to the system on free).
//! - `redact` (internal): secrets out of URLs, for every output.
//! - `redis_link` (internal): one Redis connection per process, each call bounded: the
//!   indexer's shared cache and the idempotency store use it.
//! - [`reload`]: the routes file read again on SIGHUP and when its content changes,
//!   swapped in whole once its new destinations are reached.
//! - [`check`], [`replay`], [`redrive`]: the other commands.
//!
//! Modules marked internal are private to the crate; the rest is what the binary, the
//! benches, the fuzz targets and the integration tests use.
//!
//! Dependencies point one way, top to bottom: the commands (`check`, `replay`,
//! `redrive`, `lambda`) → `app` → `reload` → `config` → `worker` → `health` →
//! `pipeline` → `idempotency` → `source` → `forward` → `event` → `indexer` → `aws` → `batching` →
//! `concurrency` → `retry` → `internal_events` → `metrics` → `telemetry` → `outcome`.
//! Where a lower module needs something of a higher one, it takes it as an argument
//! ([`reload::Routers`]: the app's way to build routers). `tools/imports.py` (in `make
//! lint`) fails on a loop between files or on more than two upward imports; the one
//! left is the [`forward::Router`]'s use of `config::routes` (its precedence).

// Module docs link to private modules: they are the tour for maintainers
// (`cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub mod allocator;
pub mod app;
pub mod aws;
pub mod batching;
pub mod check;
pub mod concurrency;
pub mod config;
pub mod event;
pub mod forward;
pub(crate) mod health;
pub mod idempotency;
pub mod indexer;
pub(crate) mod internal_events;
pub mod lambda;
pub mod metrics;
pub mod outcome;
pub mod pipeline;
pub(crate) mod redact;
pub(crate) mod redis_link;
pub mod redrive;
pub mod reload;
pub mod replay;
pub mod retry;
pub(crate) mod source;
pub mod telemetry;
pub mod worker;
