//! Effectively once: an optional store (Redis or PostgreSQL) of the events forwarded to
//! each destination, so that a worker killed mid-batch, a send whose answer was lost, or
//! a message SQS delivers twice forwards nothing twice (`FORWARDER_IDEMPOTENCY_URL`).
//!
//! # The protocol, per event and destination
//!
//! The key is the destination and the event's `event_id` ([`key`]); a packed message
//! carries several events, each with its own key, claimed and marked together.
//!
//! 1. **Claim** before the send, for a lease as long as the source message stays
//!    hidden (the source's visibility timeout; in Lambda the invocation's time left).
//!    The store answers per key ([`Claim`]): `New`, sent; `Done`, forwarded already:
//!    not sent, the message is deleted; `Held`, another worker's lease runs: left
//!    alone, the message deferred until the lease ends; `TakenOver`, an earlier
//!    claim's lease ran out (its worker died or stalled): sent, and counted as an
//!    ambiguous resend.
//! 2. **Send.**
//! 3. **Settle** the moment the destination answers, before anything else of the
//!    batch: the accepted are **marked** done; the refused (and those never sent: rate
//!    limited, paused) **give their claim back**; those whose answer was lost (a
//!    timeout, a cut connection, a server error) **keep it**, so that only a takeover
//!    after the lease sends them again.
//! 4. **Delete** from the source only after the mark.
//!
//! One round trip per batch and step: a script or a pipeline for Redis, one statement
//! for PostgreSQL; never one per event.
//!
//! # What still gets through twice
//!
//! - A worker killed (or a network cut) between the destination's accept and the mark:
//!   the mark's round trip is the one window no store can close. Its claim runs out,
//!   and the next try takes it over and sends again (counted, `result:takeover`).
//! - A send whose answer was lost, if SQS did take it: kept claimed, then taken over.
//! - A retried send within one try (the retry layer sends the entries whose answer was
//!   lost again; SQS may have taken the first).
//! - A key that expired (`FORWARDER_IDEMPOTENCY_TTL`) or was evicted from Redis.
//!
//! # The store down
//!
//! Fail-closed by default: the events it cannot answer for are neither sent nor
//! deleted; their messages come back after a short deferral, readiness turns 503 and
//! `forwarder.idempotency.available` 0 until it answers again. Fail-open
//! (`FORWARDER_IDEMPOTENCY_FAIL_OPEN`) forwards and deletes without it, counting each
//! event (`forwarder.idempotency.bypassed`).

#[doc(hidden)]
pub mod contract;
pub mod pg_store;
pub mod redis_store;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::internal_events::{
    ClaimHeld, ClaimsTaken, IdempotencyAvailability, IdempotencyStoreFailed, InternalEvent,
    SkippedAlreadyForwarded,
};
use crate::metrics::Metrics;
use crate::outcome::{ErrorClass, Failure, Operation, Stage};
use crate::retry::{retry, Classified, RetryPolicy};

/// The shortest default time a key lives: an hour.
pub const MIN_TTL: Duration = Duration::from_secs(3600);
/// The lease where the source's visibility timeout is not known: SQS's default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// How long an event whose store gave no answer stays hidden before it is tried again.
pub const UNAVAILABLE_DELAY: Duration = Duration::from_secs(5);
/// How long the second copy of an event in one batch waits: the first's fate decides.
pub const DUPLICATE_DELAY: Duration = Duration::from_secs(1);
/// What the lease leaves for the time between a receive and its batch's claim.
const CLAIM_AFTER_RECEIVE: Duration = Duration::from_secs(1);
/// How often expired keys are removed, where the store does not expire them itself.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The key of `event_id` forwarded to `destination`: the first 8 bytes of the MD5 of
/// the destination's URL in hex, then the event id (`1f0c…:9b2e…`). 49 bytes for a
/// Sentry event id, whatever the length of the URL.
pub fn key(destination: &str, event_id: &str) -> String {
    let digest = Md5::digest(destination.as_bytes());
    let mut key = String::with_capacity(17 + event_id.len());
    for b in &digest[..8] {
        key.push_str(&format!("{b:02x}"));
    }
    key.push(':');
    key.push_str(event_id);
    key
}

/// What the store answered for one key's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had claimed it (or its key expired): claimed now.
    New,
    /// A claim whose lease had run out: claimed now; the event may have gone before.
    TakenOver,
    /// Forwarded already.
    Done,
    /// Another claim's lease runs this much longer.
    Held(Duration),
}

/// Why the store gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Not within the timeout.
    Timeout,
    /// Connecting failed, or the connection broke.
    Connection,
    /// The store answered with an error.
    Refused,
}

/// A store call that failed, with what it said (never the URL).
#[derive(Debug, Clone, thiserror::Error)]
#[error("idempotency store {}: {message}", self.class().as_str())]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// The store's or the client's words.
    pub message: String,
}

impl StoreError {
    /// An error of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl Classified for StoreError {
    fn class(&self) -> ErrorClass {
        match self.kind {
            StoreErrorKind::Timeout => ErrorClass::Timeout,
            StoreErrorKind::Connection => ErrorClass::Connection,
            StoreErrorKind::Refused => ErrorClass::ServerError,
        }
    }
}

/// A store of claims and marks. Every method takes a whole batch's keys and is one
/// round trip.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// `redis` or `postgres`, for logs.
    fn kind(&self) -> &'static str;

    /// Claims each key for `lease` under `token`, unless it is done or another token's
    /// lease runs; a key `token` holds already is claimed again (a retried call).
    /// Every key written lives `ttl`.
    async fn claim(
        &self,
        keys: &[String],
        token: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Vec<Claim>, StoreError>;

    /// Marks each key done, to live `ttl` from now.
    async fn mark(&self, keys: &[String], ttl: Duration) -> Result<(), StoreError>;

    /// Removes the claims `token` still holds on `keys` (not marks, not others').
    async fn release(&self, keys: &[String], token: &str) -> Result<(), StoreError>;

    /// Whether the store answers (and, for PostgreSQL, holds the table).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Removes expired keys, in bulk; returns how many. Stores that expire keys
    /// themselves (Redis) do nothing.
    async fn sweep(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// Opens the store `url` names: `redis://` or `rediss://`, `postgres://` or
/// `postgresql://` (its table created if missing). Each call is bounded by `timeout`.
pub async fn open(url: &str, timeout: Duration) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(Arc::new(redis_store::RedisStore::new(url, timeout)?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(pg_store::PgStore::connect(url, timeout).await?))
    } else {
        Err(StoreError::new(
            StoreErrorKind::Refused,
            "the URL is neither redis://, rediss:// nor postgres://",
        ))
    }
}

/// What the pipeline does with one event of a route's batch, after its claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send it (claimed; or the store failed and fail-open is on).
    Send,
    /// Forwarded already: do not send; its message may be deleted.
    Done,
    /// Another claim runs this much longer (or an earlier copy in the batch decides):
    /// defer it.
    Held(Duration),
    /// The store gave no answer (fail-closed): neither send nor delete; try again after
    /// [`UNAVAILABLE_DELAY`].
    Unavailable(Failure),
}

/// What became of one sent event, as the store's settle needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The destination accepted it: mark it.
    Accepted,
    /// Refused, or never sent (deferred, paused): give its claim back.
    NotTaken,
    /// No answer (timeout, cut connection, server error): keep the claim.
    Unknown,
}

/// The claims of one route's batch, to settle after the send.
#[derive(Debug)]
pub struct Claims {
    /// Each event's key, in the batch's order.
    keys: Vec<String>,
    /// The token they were claimed under.
    token: String,
    /// What to do with each event.
    pub decisions: Vec<Decision>,
}

/// The protocol over a [`Store`]: claims, marks, releases; availability; counts.
pub struct Idempotency {
    /// Where claims and marks live.
    store: Arc<dyn Store>,
    /// Forward without the store's answer when it fails (`FORWARDER_IDEMPOTENCY_FAIL_OPEN`).
    fail_open: bool,
    /// How long a key lives, in ms (`FORWARDER_IDEMPOTENCY_TTL`, or sized from the
    /// source at start: [`Idempotency::size_for_source`]).
    ttl_ms: AtomicU64,
    /// How long a claim holds, in ms: the source's visibility timeout.
    lease_ms: AtomicU64,
    /// Whether the TTL was set by the user (then the source does not size it).
    ttl_set: bool,
    /// Whether the lease was set by the user.
    lease_set: bool,
    /// Retries of each store call, bounded so a batch waits seconds, not minutes.
    retry: RetryPolicy,
    /// Whether the last store call answered: readiness and the gauge.
    available: AtomicBool,
    /// The process's part of every token: two processes never share one.
    process: u64,
    /// The batch's part of every token.
    batches: AtomicU64,
    /// When expired keys were last swept.
    swept: Mutex<Instant>,
    /// Counts and gauges.
    metrics: Metrics,
}

impl fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("store", &self.store.kind())
            .field("fail_open", &self.fail_open)
            .field("ttl", &self.ttl())
            .field("lease", &self.lease())
            .finish_non_exhaustive()
    }
}

/// The retries of a store call: a frozen or restarting store is waited out for ten
/// seconds, within which a batch's heartbeat keeps its messages hidden.
fn store_retry() -> RetryPolicy {
    RetryPolicy {
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_secs(1),
        max_elapsed: Duration::from_secs(10),
    }
}

impl Idempotency {
    /// The protocol over `store`. `ttl` and `lease`: the user's settings; unset, an hour
    /// and [`DEFAULT_LEASE`] until [`Idempotency::size_for_source`].
    pub fn new(
        store: Arc<dyn Store>,
        ttl: Option<Duration>,
        lease: Option<Duration>,
        fail_open: bool,
        metrics: Metrics,
    ) -> Self {
        let ms = |d: Duration| d.as_millis() as u64;
        Self {
            store,
            fail_open,
            ttl_ms: AtomicU64::new(ms(ttl.unwrap_or(MIN_TTL))),
            lease_ms: AtomicU64::new(ms(lease.unwrap_or(DEFAULT_LEASE))),
            ttl_set: ttl.is_some(),
            lease_set: lease.is_some(),
            retry: store_retry(),
            available: AtomicBool::new(true),
            process: fastrand::u64(..),
            batches: AtomicU64::new(0),
            swept: Mutex::new(Instant::now()),
            metrics,
        }
    }

    /// The same, its store calls retried on `retry` (tests).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sizes what the user did not set from the source queue: the lease is its
    /// visibility timeout (less a second: the claim comes a moment after the receive); the TTL at least the visibility timeout times its redrive's
    /// `maxReceiveCount` (how long a message can keep coming back), and at least an
    /// hour. Returns a warning when a TTL set by the user is shorter than that.
    pub fn size_for_source(
        &self,
        visibility: Duration,
        max_receive_count: Option<u32>,
    ) -> Option<String> {
        if !self.lease_set {
            // Claimed a moment after the receive: the lease ends when the message
            // shows again, so a worker that died leaves a claim the redelivery takes
            // over at once, not one that holds it back a moment more.
            let lease = visibility
                .saturating_sub(CLAIM_AFTER_RECEIVE)
                .max(Duration::from_secs(1));
            self.lease_ms
                .store(lease.as_millis() as u64, Ordering::Relaxed);
        }
        let needed = MIN_TTL.max(visibility * max_receive_count.unwrap_or(1));
        if !self.ttl_set {
            self.ttl_ms
                .store(needed.as_millis() as u64, Ordering::Relaxed);
            return None;
        }
        (self.ttl() < needed).then(|| {
            format!(
                "FORWARDER_IDEMPOTENCY_TTL ({}) is shorter than the source's visibility timeout \
                 times its maxReceiveCount ({}): a message redelivered after its key expired \
                 is forwarded again",
                humantime::format_duration(self.ttl()),
                humantime::format_duration(needed)
            )
        })
    }

    /// The lease of claims from now on (Lambda: the invocation's time left).
    pub fn set_lease(&self, lease: Duration) {
        if !self.lease_set {
            self.lease_ms
                .store(lease.as_millis().max(1) as u64, Ordering::Relaxed);
        }
    }

    /// How long a key lives.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// How long a claim holds.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::Relaxed))
    }

    /// `redis` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Whether the store answered its last call (fail-open: always, since forwarding
    /// goes on without it). Readiness follows.
    pub fn is_available(&self) -> bool {
        self.fail_open || self.available.load(Ordering::Relaxed)
    }

    /// Asks the store once (`check`, start-up).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Claims the events `event_ids` bound for `destination`, in one round trip.
    pub async fn claim(&self, destination: &str, event_ids: &[&str]) -> Claims {
        let keys: Vec<String> = event_ids.iter().map(|id| key(destination, id)).collect();
        let token = format!(
            "{:016x}{:x}",
            self.process,
            self.batches.fetch_add(1, Ordering::Relaxed)
        );
        // The first copy of a key in the batch is asked for; a later copy waits for it.
        let mut first = std::collections::HashMap::with_capacity(keys.len());
        let mut unique: Vec<String> = Vec::with_capacity(keys.len());
        let mut copy_of: Vec<Option<usize>> = Vec::with_capacity(keys.len());
        for k in &keys {
            match first.get(k.as_str()) {
                Some(_) => copy_of.push(None),
                None => {
                    first.insert(k.as_str(), unique.len());
                    copy_of.push(Some(unique.len()));
                    unique.push(k.clone());
                }
            }
        }
        let (lease, ttl) = (self.lease(), self.ttl());
        let answered = retry(
            &self.retry,
            Operation::IdempotencyClaim,
            &self.metrics,
            || async { self.noted(self.store.claim(&unique, &token, lease, ttl).await) },
        )
        .await;
        let decisions = match answered {
            Ok(claims) => {
                let mut new = 0;
                let mut taken_over = Vec::new();
                let decisions = copy_of
                    .iter()
                    .zip(event_ids)
                    .map(|(at, &event_id)| match at.and_then(|i| claims.get(i)) {
                        None => Decision::Held(DUPLICATE_DELAY),
                        Some(Claim::New) => {
                            new += 1;
                            Decision::Send
                        }
                        Some(Claim::TakenOver) => {
                            taken_over.push(event_id);
                            Decision::Send
                        }
                        Some(Claim::Done) => {
                            SkippedAlreadyForwarded {
                                event_id,
                                route: destination,
                            }
                            .emit(&self.metrics);
                            Decision::Done
                        }
                        Some(Claim::Held(left)) => {
                            ClaimHeld {
                                event_id,
                                route: destination,
                                left: *left,
                            }
                            .emit(&self.metrics);
                            Decision::Held(*left)
                        }
                    })
                    .collect();
                ClaimsTaken {
                    route: destination,
                    new,
                    taken_over: &taken_over,
                }
                .emit(&self.metrics);
                decisions
            }
            Err(err) => {
                self.failed(Operation::IdempotencyClaim, &err, keys.len());
                let failure = failure(&err);
                keys.iter()
                    .map(|_| match self.fail_open {
                        true => Decision::Send,
                        false => Decision::Unavailable(failure.clone()),
                    })
                    .collect()
            }
        };
        self.sweep_now_and_then();
        Claims {
            keys,
            token,
            decisions,
        }
    }

    /// Marks `event_ids` forwarded to `destination` the moment a call of their batch
    /// answered (its other calls, or its retries, may still be going). `false` when the
    /// store did not take it: the batch's settle marks them again.
    pub async fn mark_accepted(&self, destination: &str, event_ids: &[String]) -> bool {
        let mut keys: Vec<String> = event_ids.iter().map(|id| key(destination, id)).collect();
        keys.sort_unstable();
        keys.dedup();
        let ttl = self.ttl();
        retry(
            &self.retry,
            Operation::IdempotencyMark,
            &self.metrics,
            || async { self.noted(self.store.mark(&keys, ttl).await) },
        )
        .await
        .is_ok()
    }

    /// Settles a route's batch the moment its send ended: marks the accepted, gives
    /// back the claims of what was not taken, keeps those whose answer was lost. `sent`
    /// has one entry per event of `claims`: `None` for those not sent (not
    /// [`Decision::Send`]). Returns the failure of the mark, if it failed and
    /// fail-closed: the accepted events must then stay in the source.
    pub async fn settle(&self, claims: &Claims, sent: &[Option<Sent>]) -> Option<Failure> {
        let pick = |want: Sent| -> Vec<String> {
            let mut keys: Vec<String> = claims
                .keys
                .iter()
                .zip(sent)
                .filter(|(_, s)| **s == Some(want))
                .map(|(k, _)| k.clone())
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let (accepted, not_taken) = (pick(Sent::Accepted), pick(Sent::NotTaken));
        let ttl = self.ttl();
        let mark = async {
            if accepted.is_empty() {
                return None;
            }
            let marked = retry(
                &self.retry,
                Operation::IdempotencyMark,
                &self.metrics,
                || async { self.noted(self.store.mark(&accepted, ttl).await) },
            )
            .await;
            match marked {
                Ok(()) => None,
                Err(err) => {
                    self.failed(Operation::IdempotencyMark, &err, accepted.len());
                    (!self.fail_open).then(|| failure(&err))
                }
            }
        };
        let release = async {
            if not_taken.is_empty() {
                return;
            }
            let released = retry(
                &self.retry,
                Operation::IdempotencyRelease,
                &self.metrics,
                || async { self.noted(self.store.release(&not_taken, &claims.token).await) },
            )
            .await;
            if let Err(err) = released {
                self.failed(Operation::IdempotencyRelease, &err, not_taken.len());
            }
        };
        futures_util::future::join(mark, release).await.0
    }

    /// Availability follows every attempt: the first failure turns readiness off at
    /// once (a frozen store is seen within its timeout), the next answer back on.
    fn noted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let available = result.is_ok();
        if self.available.swap(available, Ordering::Relaxed) != available {
            IdempotencyAvailability {
                available,
                fail_open: self.fail_open,
            }
            .emit(&self.metrics);
        }
        result
    }

    /// A call that failed for good, after its retries.
    fn failed(&self, operation: Operation, err: &StoreError, events: usize) {
        IdempotencyStoreFailed {
            operation,
            class: err.class(),
            events,
            fail_open: self.fail_open,
            error: err,
        }
        .emit(&self.metrics);
    }

    /// Removes expired keys in the background, at most once a minute per process.
    fn sweep_now_and_then(&self) {
        let due = match self.swept.lock() {
            Ok(mut last) if last.elapsed() >= SWEEP_EVERY => {
                *last = Instant::now();
                true
            }
            _ => false,
        };
        if !due {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        runtime.spawn(async move {
            match store.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "idempotency store: expired keys removed"),
                Err(err) => tracing::warn!(error = %err, "idempotency store: expired keys not removed; tried again in a minute"),
            }
        });
    }
}

/// The failure of events the store could not answer for.
fn failure(err: &StoreError) -> Failure {
    Failure {
        stage: Stage::Idempotency,
        class: err.class(),
        code: None,
        message: err.message.clone(),
    }
}

#[cfg(test)]
pub(crate) mod memory;
#[cfg(test)]
mod tests;
