//! The worker pool: N pollers that receive, process and delete, until shutdown.
//!
//! [`Worker::run_once`] is one step (receive one batch, settle it) that tests call
//! directly; [`run`] drives `workers` of them and takes its shutdown signal as an
//! argument, so a test can stop it as SIGTERM does.
//!
//! With a batching window ([`crate::batching`]), a poller does not wait for its batch
//! to be settled before it receives again: its batches are settled on their own tasks,
//! so the events of many receives meet in the window and fill calls. Admission
//! ([`admission`]: events, body bytes and receives in flight, all taken before the
//! receive) is then what holds the pollers back. After a receive that came back short, a poller waits the window before the next one (the
//! pollers in turn), so a trickle shares receives too; at full load receives come back
//! full and nothing waits.
//! At shutdown the window is closed (what it buffers goes at once), batches get the
//! shutdown bound to settle, and what is still unsettled then is handed back.
//!
//! A received message is held from its receive to its delete; its visibility is
//! extended on a clock that starts at the receive ([`Worker::handle_since`]), whatever
//! it waits for (the window, a retry, a paused route). Nothing waits between the receive
//! and that clock: the room for a batch, in events and in bytes, is taken before the
//! receive asks for it ([`admission`], the one owner of what may be received and what
//! is held).

pub mod admission;

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
// tokio's clock, so tests of the timing logic run on a paused one.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::aws::AwsError;
use crate::concurrency::Adaptive;
use crate::forward::{Deferral, DEFAULT_MAX_MESSAGE_BYTES};
use crate::health::Health;
use crate::internal_events::{CallFailed, DeleteFailed, InternalEvent};
use crate::metrics::{Gauge, Metrics};
use crate::outcome::Operation;
use crate::pipeline::{Pipeline, Settlement};
use crate::retry::{RetryPolicy, Schedule};
use crate::source::{SourceMessage, SqsSource};
use admission::{Admission, Held, Ledger, Reservation, Ticket};

/// How often the source queue's visibility timeout is read again.
pub const VISIBILITY_REFRESH: Duration = Duration::from_secs(60);

/// An empty receive is followed by at least this much waiting in all: a short poll
/// (wait 0) pauses the rest, so an empty queue is not polled in a busy loop.
const SHORT_POLL_PAUSE: Duration = Duration::from_secs(1);

/// How long a stopping poller may take to hand a received batch back.
const RETURN_BOUND: Duration = Duration::from_secs(5);

/// How long a stopping poller lets a receive in progress end before it cancels it: a
/// receive that has messages to return does so within milliseconds; one still open
/// past this is a long poll on an idle queue.
const RECEIVE_GRACE: Duration = Duration::from_millis(500);

/// The longest poll of a pool that exits when idle (`--exit-when-idle`); a poll no
/// longer than this is let end at a stop rather than dropped ([`Poller::grace`]).
pub const IDLE_RECEIVE_WAIT: Duration = Duration::from_secs(1);

/// What became of one received batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Messages received.
    pub received: usize,
    /// Events accepted by the destination.
    pub forwarded: usize,
    /// Messages whose body is not a valid event (left in the queue).
    pub invalid: usize,
    /// Events that could not be forwarded (left in the queue, or dead-lettered).
    pub failed: usize,
    /// Messages sent to the dead-letter queue (then deleted from the source).
    pub dead_lettered: usize,
    /// Events skipped because their project has no route (deleted from the source).
    pub skipped: usize,
    /// Events deferred on purpose (rate limit, paused route, held behind their group):
    /// left in the source, hidden until they can go.
    pub deferred: usize,
    /// Source messages deleted.
    pub deleted: usize,
    /// Events left in the source for a later try (failed and not dead-lettered, or
    /// deferred): they come back after their visibility timeout or delay.
    pub later: usize,
}

impl std::ops::AddAssign for BatchOutcome {
    fn add_assign(&mut self, o: Self) {
        self.received += o.received;
        self.forwarded += o.forwarded;
        self.invalid += o.invalid;
        self.failed += o.failed;
        self.dead_lettered += o.dead_lettered;
        self.skipped += o.skipped;
        self.deferred += o.deferred;
        self.deleted += o.deleted;
        self.later += o.later;
    }
}

/// One poller's parts. Cheap to share between the pool's tasks.
#[derive(Debug)]
pub struct Worker {
    /// The queue consumed.
    source: SqsSource,
    /// Decode and forward.
    pipeline: Pipeline,
    /// The source queue's visibility timeout, in seconds: a batch still in work after
    /// half of it has its visibility extended, so no other consumer receives it
    /// meanwhile. Read again every [`VISIBILITY_REFRESH`], so a change to the queue is
    /// followed without a restart.
    visibility_timeout: AtomicU64,
    /// When the visibility timeout was last read.
    visibility_read_at: Mutex<Instant>,
    /// Events in flight over the whole pool, for the `in_flight` gauge.
    in_flight: Arc<AtomicU64>,
    /// Pollers waiting for room (in events or bytes) to receive.
    waiting_for_room: AtomicU64,
    /// When a batch last settled while pollers waited for its room: an idle run counts
    /// from then too, so the instant between that batch's end and their receive is not
    /// taken for an idle source.
    freed_for_waiting: Mutex<Instant>,
    /// What may be received and what is held: events (`FORWARDER_MAX_IN_FLIGHT`, or
    /// the adaptive bound under it), body bytes (`FORWARDER_MAX_IN_FLIGHT_BYTES`) and
    /// receives in flight, all taken before a receive ([`admission`]).
    admission: Admission,
    /// The largest message the source holds (its `MaximumMessageSize`, read with its
    /// visibility timeout; SQS's largest, [`DEFAULT_MAX_MESSAGE_BYTES`], until known):
    /// what bounds a receive's worst case, kept for a byte ledger made later.
    source_max_message: AtomicUsize,
    /// Cancelled once the shutdown bound has passed: every batch still in work stops
    /// and hands its messages back to the source queue at once.
    abandon: CancellationToken,
    /// Taken by a poller for its pause after a short receive: at a trickle the pollers
    /// pause one after the other, so each receive gathers a window's worth of messages
    /// instead of all of them receiving a few at the same moment.
    pacer: tokio::sync::Mutex<()>,
    /// Where the gauge goes.
    metrics: Metrics,
}

impl Worker {
    /// A worker; `visibility_timeout` is the source queue's (see [`SqsSource::info`]).
    pub fn new(
        source: SqsSource,
        pipeline: Pipeline,
        visibility_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            source,
            pipeline,
            visibility_timeout: AtomicU64::new(visibility_timeout.as_secs()),
            visibility_read_at: Mutex::new(Instant::now()),
            in_flight: Arc::new(AtomicU64::new(0)),
            waiting_for_room: AtomicU64::new(0),
            freed_for_waiting: Mutex::new(Instant::now()),
            admission: Admission::default(),
            source_max_message: AtomicUsize::new(DEFAULT_MAX_MESSAGE_BYTES),
            abandon: CancellationToken::new(),
            pacer: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// The same worker, holding at most `max` body bytes at once over every poller.
    pub fn with_max_in_flight_bytes(mut self, max: usize) -> Self {
        let ledger = Ledger::new(
            max,
            self.source.batch_size().max(1),
            self.source_max_message.load(Ordering::Relaxed),
        );
        self.admission = std::mem::take(&mut self.admission).with_bytes(ledger);
        self
    }

    /// The same worker, counting each message not yet received at `bytes` (the source
    /// queue's `MaximumMessageSize`; `None`: it did not say, SQS's largest).
    pub fn with_source_max_message(self, bytes: Option<usize>) -> Self {
        self.follow_source_max_message(bytes);
        self
    }

    fn follow_source_max_message(&self, bytes: Option<usize>) {
        let bytes = bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES).max(1);
        let old = self.source_max_message.swap(bytes, Ordering::Relaxed);
        if let Some(ledger) = self.admission.bytes() {
            ledger.follow_source_max(bytes);
        }
        if old != bytes {
            tracing::debug!(
                old_bytes = old,
                new_bytes = bytes,
                "the source queue's message size limit"
            );
        }
    }

    /// What may be received and what is held.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Whether batches are settled on their own tasks (a batching window is open).
    fn pipelined(&self) -> bool {
        self.source.window().is_open()
    }

    /// The same worker, holding at most `max` events at once over every poller.
    pub fn with_max_in_flight(self, max: usize) -> Self {
        self.with_in_flight(Arc::new(Adaptive::fixed(max)))
    }

    /// The same worker, holding at most what `bound` allows at once over every poller
    /// (the bound the batching windows tell each call's response time to).
    pub fn with_in_flight(mut self, bound: Arc<Adaptive>) -> Self {
        self.admission = std::mem::take(&mut self.admission).with_events(bound);
        self
    }

    /// Room for one receive ([`Admission::admit`]): how many messages it may ask for,
    /// and the room held for them.
    pub async fn admit(&self) -> Ticket {
        self.admission.admit(self.source.batch_size().max(1)).await
    }

    /// A receive of `ticket` came back with `messages`: their bodies are held at their
    /// real size until the returned room is dropped (none for an empty receive or
    /// without a byte bound).
    pub fn received(
        &self,
        ticket: Option<Reservation>,
        messages: &[SourceMessage],
    ) -> Option<Held> {
        ticket?.received(messages.iter().map(|m| m.body.len()))
    }

    /// The source queue's visibility timeout, as last read.
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout.load(Ordering::Relaxed))
    }

    /// Reads the source queue's visibility timeout again if it was read over
    /// [`VISIBILITY_REFRESH`] ago, and each destination's message size limit
    /// ([`crate::forward::Router::refresh_limits`]); one try, a failure keeps the last value.
    pub async fn refresh_queues(&self) {
        self.pipeline.refresh_limits().await;
        {
            let Ok(mut read_at) = self.visibility_read_at.try_lock() else {
                return;
            };
            if read_at.elapsed() < VISIBILITY_REFRESH {
                return;
            }
            *read_at = Instant::now();
        }
        match self.source.info().await {
            Ok(info) => {
                self.follow_source_max_message(info.max_message_bytes);
                let old = self
                    .visibility_timeout
                    .swap(info.visibility_timeout.as_secs(), Ordering::Relaxed);
                if old != info.visibility_timeout.as_secs() {
                    tracing::info!(
                        old_secs = old,
                        new_secs = info.visibility_timeout.as_secs(),
                        "the source queue's visibility timeout changed"
                    );
                }
            }
            Err(err) => tracing::debug!(error = %err, "visibility timeout not read again"),
        }
    }

    /// The source queue.
    pub fn source(&self) -> &SqsSource {
        &self.source
    }

    /// Decode and forward: its routes in force are what a reload swaps.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// One step: receive a batch (long poll) and settle it.
    pub async fn run_once(&self) -> Result<BatchOutcome, AwsError> {
        let ticket = self.admit().await;
        let messages = self.source.receive_at_most(ticket.messages).await?;
        let received_at = Instant::now();
        let _events = ticket.events;
        let bytes = self.received(ticket.bytes, &messages);
        Ok(self.handle_since(messages, received_at, bytes).await)
    }

    /// Settles a batch received just now: see [`Worker::handle_since`].
    pub async fn handle(&self, messages: Vec<SourceMessage>) -> BatchOutcome {
        self.handle_since(messages, Instant::now(), None).await
    }

    /// Settles a batch received at `received_at`: forward, then delete what was
    /// forwarded. Every half visibility timeout from the receive until it is settled,
    /// the batch's visibility is extended. `bytes`, the batch's room under the byte
    /// budget, goes back with the bodies once its events are forwarded, before the
    /// delete (which may wait for its window): the budget bounds what is held, not how
    /// long a delete takes.
    pub async fn handle_since(
        &self,
        messages: Vec<SourceMessage>,
        received_at: Instant,
        bytes: Option<Held>,
    ) -> BatchOutcome {
        if messages.is_empty() {
            return BatchOutcome::default();
        }
        let n = messages.len() as u64;
        let now = self.in_flight.fetch_add(n, Ordering::SeqCst) + n;
        self.metrics.gauge(Gauge::InFlight, now);
        if let Some(bound) = self.admission.events() {
            self.metrics
                .gauge(Gauge::InFlightLimit, bound.limit() as u64);
        }

        // What the heartbeat and a hand-back need of each message: not its body.
        let handles: Vec<SourceMessage> = messages
            .iter()
            .map(|m| SourceMessage {
                message_id: m.message_id.clone(),
                receipt_handle: m.receipt_handle.clone(),
                ..SourceMessage::default()
            })
            .collect();
        let work = self.settle(messages, bytes);
        let outcome = tokio::select! {
            outcome = work => outcome,
            never = self.keep_invisible(&handles, received_at) => match never {},
            _ = self.abandon.cancelled() => self.hand_back(&handles).await,
        };

        if self.waiting_for_room.load(Ordering::SeqCst) > 0 {
            if let Ok(mut freed) = self.freed_for_waiting.lock() {
                *freed = Instant::now();
            }
        }
        let now = self
            .in_flight
            .fetch_sub(n, Ordering::SeqCst)
            .saturating_sub(n);
        self.metrics.gauge(Gauge::InFlight, now);
        outcome
    }

    /// Hands a batch back (visibility 0): the shutdown bound passed before it was
    /// settled. What it forwarded meanwhile may come again: a duplicate, never a loss.
    async fn hand_back(&self, messages: &[SourceMessage]) -> BatchOutcome {
        let all: Vec<(&SourceMessage, Duration)> =
            messages.iter().map(|m| (m, Duration::ZERO)).collect();
        let failed = self.source.change_visibility(&all, RETURN_BOUND).await;
        tracing::info!(
            messages = messages.len(),
            not_handed_back = failed,
            "shutdown bound passed: an unsettled batch handed back to the source queue"
        );
        BatchOutcome {
            received: messages.len(),
            ..BatchOutcome::default()
        }
    }

    async fn settle(
        &self,
        mut messages: Vec<SourceMessage>,
        mut bytes: Option<Held>,
    ) -> BatchOutcome {
        // A batch of an overdraft (larger than its receive expected) waits for its
        // bodies to fit beside those in work.
        if let Some(held) = &mut bytes {
            held.turn().await;
        }
        let settlements = self.pipeline.process(&messages).await;
        // Forwarded or not, the bodies are done with: their room goes back now.
        for m in &mut messages {
            m.body = String::new();
        }
        drop(bytes);
        let mut outcome = BatchOutcome {
            received: messages.len(),
            ..BatchOutcome::default()
        };
        let mut done = Vec::with_capacity(messages.len());
        let mut hide = Vec::new();
        for (message, settlement) in messages.iter().zip(&settlements) {
            let is = |yes: bool| usize::from(yes);
            outcome.forwarded += is(matches!(settlement, Settlement::Forwarded));
            outcome.invalid += is(settlement.is_invalid());
            outcome.failed += is(settlement.is_failed());
            outcome.dead_lettered += is(matches!(settlement, Settlement::DeadLettered(_)));
            outcome.skipped += is(matches!(settlement, Settlement::Skipped(_)));
            outcome.deferred += is(matches!(settlement, Settlement::Deferred(_)));
            outcome.later += is(matches!(
                settlement,
                Settlement::Failed(_) | Settlement::Deferred(_)
            ));
            if settlement.is_done() {
                done.push(message);
            }
            if let Settlement::Deferred(Deferral {
                delay: Some(delay), ..
            }) = settlement
            {
                hide.push((message, *delay));
            }
        }
        if !hide.is_empty() {
            // Best effort within the retry bound: a message not hidden again only comes
            // back sooner, and is deferred again.
            self.source
                .change_visibility(&hide, self.visibility_timeout() / 2)
                .await;
        }
        let not_deleted = self.source.delete(&done).await;
        for (message_id, err) in &not_deleted {
            DeleteFailed {
                message_id,
                class: err.class,
                error: err,
            }
            .emit(&self.metrics);
        }
        outcome.deleted = done.len() - not_deleted.len();
        outcome
    }

    /// Extends the batch's visibility every half visibility timeout, counted from its
    /// receive (`since`); never returns. Each extension retries failed entries within
    /// the half that remains.
    async fn keep_invisible(
        &self,
        messages: &[SourceMessage],
        since: Instant,
    ) -> std::convert::Infallible {
        let mut last = since;
        loop {
            let timeout = self.visibility_timeout();
            let half = (timeout / 2).max(Duration::from_millis(500));
            tokio::time::sleep_until(last + half).await;
            last = Instant::now();
            tracing::debug!(
                messages = messages.len(),
                "batch still in work; extending visibility"
            );
            let extend_to = timeout.max(Duration::from_secs(1));
            let all: Vec<(&SourceMessage, Duration)> =
                messages.iter().map(|m| (m, extend_to)).collect();
            self.source.change_visibility(&all, half).await;
        }
    }
}

/// Totals of a [`run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Sum over every batch.
    pub totals: BatchOutcome,
    /// Whether in-flight batches were abandoned at the shutdown bound (their messages
    /// were handed back to the source queue, or reappear after their visibility
    /// timeout if even that failed).
    pub abandoned: bool,
}

/// How a pool is run.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Concurrent pollers.
    pub workers: usize,
    /// Stop once the source has been empty this long.
    pub exit_when_idle: Option<Duration>,
    /// How long in-flight batches may take to finish once stopping.
    pub shutdown_timeout: Duration,
    /// Waits between failed receives: exponential from the initial to the largest
    /// interval, with jitter, and never giving up. An outage of the source is waited out
    /// without spinning, and polling resumes once a receive succeeds.
    pub receive_backoff: RetryPolicy,
    /// What the readiness probe reports: ready after the first successful receive, not
    /// ready once stopping.
    pub health: Health,
}

/// Runs `options.workers` pollers until `shutdown` completes or the source stays idle.
///
/// On shutdown, polling stops at once, the batching window sends what it holds, and
/// batches in work get `shutdown_timeout` to finish; what is not finished by then is
/// handed back, never deleted, so it reappears at once.
pub async fn run(
    worker: Arc<Worker>,
    options: PoolOptions,
    shutdown: impl Future<Output = ()>,
) -> RunSummary {
    let stop = CancellationToken::new();
    let last_activity = Arc::new(Mutex::new(Instant::now()));
    let mut tasks = JoinSet::new();
    for id in 0..options.workers.max(1) {
        tasks.spawn(poll(Poller::new(
            id,
            worker.clone(),
            options.clone(),
            stop.clone(),
            last_activity.clone(),
        )));
    }
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested: finishing in-flight batches"),
        idle = idle_for(options.exit_when_idle, &last_activity, &worker) => {
            tracing::info!(idle = ?idle, "source idle: stopping");
        }
    }
    stop.cancel();
    // What the batching window holds goes now, and nothing waits in it again.
    worker.source.window().close();
    options.health.stopping();

    let mut summary = RunSummary::default();
    let drained = tokio::time::timeout(options.shutdown_timeout, async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(totals) => summary.totals += totals,
                Err(err) => tracing::error!(%err, "a worker task ended abnormally"),
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            timeout = ?options.shutdown_timeout,
            "in-flight batches did not finish in time: handing their messages back to the source queue"
        );
        // Every batch still in work hands its messages back, within the hand-back's
        // own bound; then what is left is stopped.
        worker.abandon.cancel();
        let _ = tokio::time::timeout(RETURN_BOUND + Duration::from_secs(1), async {
            while let Some(joined) = tasks.join_next().await {
                if let Ok(totals) = joined {
                    summary.totals += totals;
                }
            }
        })
        .await;
        tasks.abort_all();
        summary.abandoned = true;
    }
    summary
}

/// Completes once the pool has had nothing to do for `limit` (no batch received, none in
/// work, none left for a later try still to come back), with how long that was; never
/// without a limit. It watches the clock, not the receives: a long poll in progress is
/// cancelled by the stop, so `--exit-when-idle N` exits N seconds after the last
/// message, not N plus a long poll.
async fn idle_for(
    limit: Option<Duration>,
    last_activity: &Mutex<Instant>,
    worker: &Worker,
) -> Duration {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    // While batches are in work, look again this often.
    const BUSY_RECHECK: Duration = Duration::from_millis(200);
    loop {
        let active = last_activity
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| Instant::now());
        let freed = worker.freed_for_waiting.lock().map_or(active, |t| *t);
        let idle = Instant::now().saturating_duration_since(active.max(freed));
        let busy = worker.in_flight.load(Ordering::SeqCst) > 0;
        if idle >= limit && !busy {
            return idle;
        }
        let wait = limit.saturating_sub(idle).max(BUSY_RECHECK);
        tokio::time::sleep(wait).await;
    }
}

async fn poll(mut poller: Poller) -> BatchOutcome {
    while !poller.stop.is_cancelled() {
        let Some(received) = poller.receive().await else {
            break;
        };
        let next = match received {
            Ok(admitted) if admitted.messages.is_empty() => poller.idle().await,
            Ok(admitted) => poller.settle(admitted).await,
            Err(err) => poller.failed(&err).await,
        };
        if next == Next::Stop {
            break;
        }
    }
    // Batches still settling (the window is closed at shutdown, so they end soon).
    while let Some(joined) = poller.settling.join_next().await {
        poller.collect(joined);
    }
    poller.totals
}

/// A poller counted as waiting for room while this lives.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn on(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A received batch and the room it holds under `FORWARDER_MAX_IN_FLIGHT`, given back
/// when it is dropped (after the batch is settled).
struct Admitted {
    /// The messages.
    messages: Vec<SourceMessage>,
    /// When they were received: their visibility timeout runs from then.
    received_at: Instant,
    /// How many the receive asked for: fewer came back, the queue is about drained.
    asked: usize,
    /// The permits; `None` without a bound.
    _room: Option<OwnedSemaphorePermit>,
    /// The bodies' bytes held; `None` without a byte bound.
    _bytes: Option<Held>,
}

/// Whether a poller goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Receive again.
    Poll,
    /// Stop polling.
    Stop,
}

/// One poller of the pool, between two receives.
struct Poller {
    /// Its number, for logs.
    id: usize,
    /// The parts every poller shares.
    worker: Arc<Worker>,
    /// How the pool runs.
    options: PoolOptions,
    /// Cancelled when the pool stops.
    stop: CancellationToken,
    /// When a batch last came or a receive last failed, over the whole pool, or when
    /// messages left for a later try are back (a time to come): an `exit_when_idle` run
    /// ends only once this is old enough.
    last_activity: Arc<Mutex<Instant>>,
    /// Waits after consecutive failed receives; reset by the first one that succeeds.
    failing: Option<Schedule>,
    /// What this poller settled.
    totals: BatchOutcome,
    /// Its batches being settled on their own tasks (with a batching window).
    settling: JoinSet<BatchOutcome>,
}

impl Poller {
    fn new(
        id: usize,
        worker: Arc<Worker>,
        options: PoolOptions,
        stop: CancellationToken,
        last_activity: Arc<Mutex<Instant>>,
    ) -> Self {
        Self {
            id,
            worker,
            options,
            stop,
            last_activity,
            failing: None,
            totals: BatchOutcome::default(),
            settling: JoinSet::new(),
        }
    }

    /// One receive; `None` when the pool stopped meanwhile. A receive in progress at the
    /// stop gets [`Poller::grace`] to end, and what it got is handed back at once; one
    /// still open after it is dropped.
    async fn receive(&mut self) -> Option<Result<Admitted, AwsError>> {
        let Ticket {
            messages: max,
            events: room,
            bytes,
        } = {
            let _waiting = Waiting::on(&self.worker.waiting_for_room);
            tokio::select! {
                ticket = self.worker.admit() => ticket,
                _ = self.stop.cancelled() => return None,
            }
        };
        let receive = self.worker.source.receive_at_most(max);
        tokio::pin!(receive);
        let received = tokio::select! {
            biased;
            received = &mut receive => received,
            _ = self.stop.cancelled() => {
                if let Ok(Ok(messages)) = tokio::time::timeout(self.grace(), receive).await {
                    if !messages.is_empty() {
                        let all: Vec<(&SourceMessage, Duration)> =
                            messages.iter().map(|m| (m, Duration::ZERO)).collect();
                        self.worker.source.change_visibility(&all, RETURN_BOUND).await;
                        tracing::info!(worker = self.id, messages = all.len(), "stopping: returned a received batch to the queue");
                    }
                }
                return None;
            }
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(err) => return Some(Err(err)),
        };
        let received_at = Instant::now();
        self.options.health.received();
        self.failing = None;
        let bytes = self.worker.received(bytes, &messages);
        Some(Ok(Admitted {
            messages,
            received_at,
            asked: max,
            _room: room,
            _bytes: bytes,
        }))
    }

    /// How long a receive in progress at the stop may still take. A short poll (at most
    /// [`IDLE_RECEIVE_WAIT`], as `--exit-when-idle` polls) is let end: nothing is left
    /// open at SQS to take what is sent after the exit. A long poll gets
    /// [`RECEIVE_GRACE`] (a busy queue answers within milliseconds), then is dropped
    /// rather than waited out (up to `FORWARDER_RECEIVE_WAIT_SECONDS`), so an idle
    /// worker exits at once; SQS may still hand that dropped poll a message sent in the
    /// rest of its wait, which then reappears one visibility timeout later.
    fn grace(&self) -> Duration {
        let wait = self.worker.source.wait();
        if wait <= IDLE_RECEIVE_WAIT {
            wait + RECEIVE_GRACE
        } else {
            RECEIVE_GRACE
        }
    }

    /// An empty receive: after a short poll (`FORWARDER_RECEIVE_WAIT_SECONDS=0`), pause
    /// as a long poll would have waited instead of spinning. (Whether the source has
    /// been idle long enough to stop is [`idle_for`]'s to say, for the whole pool.)
    async fn idle(&mut self) -> Next {
        let short = SHORT_POLL_PAUSE.saturating_sub(self.worker.source.wait());
        self.pause(short).await
    }

    /// A batch: settle it. With a batching window, on its own task, and after a short
    /// receive the next one waits the window; without, here, before the next receive.
    async fn settle(&mut self, admitted: Admitted) -> Next {
        self.worker.refresh_queues().await;
        self.touch();
        let short = admitted.messages.len() < admitted.asked;
        let worker = self.worker.clone();
        let last_activity = self.last_activity.clone();
        self.settling.spawn(async move {
            // The room is held until the batch is settled.
            let Admitted {
                messages,
                received_at,
                _room: room,
                _bytes: bytes,
                ..
            } = admitted;
            let outcome = worker.handle_since(messages, received_at, bytes).await;
            drop(room);
            // Messages left for a later try (failed, deferred) are hidden, not gone: the
            // source is not idle before they are back. A dead-lettered one is gone. A
            // batch settled in full leaves the idle clock where its receive set it (the
            // pool is busy while it is in work): `--exit-when-idle N` counts from the
            // last message received, not from its delete's batching window.
            if outcome.later > 0 {
                if let Ok(mut t) = last_activity.lock() {
                    *t = (*t).max(Instant::now() + worker.visibility_timeout());
                }
            }
            outcome
        });
        if !self.worker.pipelined() {
            while let Some(joined) = self.settling.join_next().await {
                self.collect(joined);
            }
            return Next::Poll;
        }
        while let Some(joined) = self.settling.try_join_next() {
            self.collect(joined);
        }
        if short {
            let worker = self.worker.clone();
            let _turn = tokio::select! {
                turn = worker.pacer.lock() => turn,
                _ = self.stop.cancelled() => return Next::Stop,
            };
            return self.pause(self.worker.source.window().duration()).await;
        }
        Next::Poll
    }

    /// A settled batch's outcome, into the totals.
    fn collect(&mut self, joined: Result<BatchOutcome, tokio::task::JoinError>) {
        match joined {
            Ok(outcome) => {
                tracing::debug!(worker = self.id, ?outcome, "batch settled");
                self.totals += outcome;
            }
            Err(err) => tracing::error!(worker = self.id, %err, "a batch's task ended abnormally"),
        }
    }

    /// A receive that failed past its retries: count it, and wait with a backoff that
    /// grows without end. A failed receive says nothing about the queue being empty, so
    /// it counts as activity: an outage never ends an `exit_when_idle` run.
    async fn failed(&mut self, err: &AwsError) -> Next {
        CallFailed {
            operation: Operation::Receive,
            class: err.class,
            error: err,
        }
        .emit(&self.worker.metrics);
        self.touch();
        let backoff = &self.options.receive_backoff;
        let wait = self
            .failing
            .get_or_insert_with(|| backoff.endless())
            .next_delay()
            .unwrap_or(backoff.max_interval);
        self.pause(wait).await
    }

    /// Waits `wait`, or less if the pool stops.
    async fn pause(&self, wait: Duration) -> Next {
        if wait.is_zero() {
            return Next::Poll;
        }
        tokio::select! {
            _ = self.stop.cancelled() => Next::Stop,
            _ = tokio::time::sleep(wait) => Next::Poll,
        }
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_activity.lock() {
            *t = (*t).max(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake;
    use crate::forward::{Forwarder, OrgRateLimiter, Router};
    use crate::health::Health;

    /// A source queue in-process: one receive hands out `bodies`, later ones nothing;
    /// deletes and visibility changes are recorded as `(receipt handle, seconds)`.
    #[derive(Default, Clone)]
    struct Source {
        deleted: Arc<Mutex<Vec<String>>>,
        hidden: Arc<Mutex<Vec<(String, i64)>>>,
    }

    fn source(bodies: Vec<String>) -> (aws_sdk_sqs::Client, Source) {
        let seen = Source::default();
        let s = seen.clone();
        let handed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = fake::sqs_client(move |req| {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            let entries = body["Entries"].as_array().cloned().unwrap_or_default();
            let ids: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| serde_json::json!({"Id": e["Id"]}))
                .collect();
            match req.action.as_str() {
                "ReceiveMessage" if !handed.swap(true, Ordering::SeqCst) => {
                    let messages: Vec<serde_json::Value> = bodies
                        .iter()
                        .enumerate()
                        .map(|(i, b)| {
                            serde_json::json!({
                                "MessageId": format!("m{i}"), "ReceiptHandle": format!("h{i}"),
                                "Body": b, "MD5OfBody": "0",
                                "Attributes": {"ApproximateReceiveCount": "1"}
                            })
                        })
                        .collect();
                    fake::ok(serde_json::json!({ "Messages": messages }).to_string())
                }
                "ReceiveMessage" => fake::ok("{}"),
                "DeleteMessageBatch" => {
                    for e in &entries {
                        s.deleted
                            .lock()
                            .unwrap()
                            .push(e["ReceiptHandle"].as_str().unwrap_or_default().into());
                    }
                    fake::ok(serde_json::json!({"Successful": ids, "Failed": []}).to_string())
                }
                "ChangeMessageVisibilityBatch" => {
                    for e in &entries {
                        s.hidden.lock().unwrap().push((
                            e["ReceiptHandle"].as_str().unwrap_or_default().into(),
                            e["VisibilityTimeout"].as_i64().unwrap_or(-1),
                        ));
                    }
                    fake::ok(serde_json::json!({"Successful": ids, "Failed": []}).to_string())
                }
                "SendMessageBatch" => {
                    let ok: Vec<serde_json::Value> = entries
                        .iter()
                        .map(|e| serde_json::json!({"Id": e["Id"], "MessageId": "d", "MD5OfMessageBody": "0"}))
                        .collect();
                    fake::ok(serde_json::json!({"Successful": ok, "Failed": []}).to_string())
                }
                other => fake::error(400, &format!("Unexpected{other}")),
            }
        });
        (client, seen)
    }

    /// A worker on the fake source queue (batches of 10, no wait), forwarding with
    /// `forwarder`.
    fn worker(client: aws_sdk_sqs::Client, forwarder: Forwarder, metrics: Metrics) -> Worker {
        let pipeline = Pipeline::new(Router::single(forwarder), None, metrics.clone());
        let source = SqsSource::new(
            client,
            "https://sqs.fake/0/src",
            10,
            Duration::ZERO,
            fast(),
            metrics.clone(),
        );
        Worker::new(source, pipeline, Duration::from_secs(30), metrics)
    }

    /// A forwarder to the fake destination queue.
    fn forwarder(client: &aws_sdk_sqs::Client, metrics: &Metrics) -> Forwarder {
        Forwarder::new(
            client.clone(),
            "https://sqs.fake/0/dest",
            256 * 1024,
            fast(),
            metrics.clone(),
        )
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
            max_elapsed: Duration::from_millis(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_deletes_what_went_hides_what_was_deferred_and_keeps_the_rest() {
        let event = |n: u32, org: u64| {
            format!(r#"{{"event_id":"{n:032x}","project_id":1,"organization_id":{org}}}"#)
        };
        let (client, seen) = source(vec![
            event(1, 7),
            event(2, 7),
            "not json".into(),
            event(4, 8),
        ]);
        let metrics = Metrics::disabled();
        let limiter = OrgRateLimiter::new("1/1h".parse().unwrap(), metrics.clone());
        let forwarder = forwarder(&client, &metrics).with_rate_limit(Some(Arc::new(limiter)));
        let worker = worker(client, forwarder, metrics);

        let outcome = worker.run_once().await.unwrap();
        assert_eq!(
            (
                outcome.received,
                outcome.forwarded,
                outcome.deferred,
                outcome.invalid,
                outcome.deleted
            ),
            (4, 2, 1, 1, 2),
            "{outcome:?}"
        );
        let mut deleted = seen.deleted.lock().unwrap().clone();
        deleted.sort();
        assert_eq!(deleted, ["h0", "h3"], "only what went is deleted");
        let hidden = seen.hidden.lock().unwrap().clone();
        assert_eq!(hidden.len(), 1, "{hidden:?}");
        assert_eq!(hidden[0].0, "h1", "the rate-limited one is hidden");
        assert!(
            hidden[0].1 >= 1,
            "until its organization's token is back: {hidden:?}"
        );
        assert_eq!(worker.run_once().await.unwrap(), BatchOutcome::default());
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_bound_limits_each_receive_and_holds_the_room_until_settled() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let a = asked.clone();
        let client = fake::sqs_client(move |req| {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            if req.action == "ReceiveMessage" {
                a.lock()
                    .unwrap()
                    .push(body["MaxNumberOfMessages"].as_i64().unwrap_or(-1));
            }
            fake::ok("{}")
        });
        let metrics = Metrics::disabled();
        let forwarder = forwarder(&client, &metrics);
        let worker = worker(client, forwarder, metrics).with_max_in_flight(3);

        worker.run_once().await.unwrap();
        assert_eq!(
            *asked.lock().unwrap(),
            [3],
            "a receive asks only for the room left"
        );

        let held = worker.admit().await;
        assert_eq!(held.messages, 3);
        let waiting = tokio::time::timeout(Duration::from_millis(50), worker.admit()).await;
        assert!(
            waiting.is_err(),
            "a second batch waits while the first holds the room"
        );
        drop(held);
        let room = tokio::time::timeout(Duration::from_secs(1), worker.admit())
            .await
            .unwrap();
        assert_eq!(
            room.messages, 3,
            "room comes back when the batch is settled"
        );
    }

    /// Every call of a fake: `(action, queue, entries)`.
    type Recorded = Arc<Mutex<Vec<(String, String, usize)>>>;

    /// A source queue in-process that hands out `batches` receives of `per` messages
    /// each (events of projects 1 and 2 in turn), then nothing; every call recorded as
    /// `(action, queue, entries)`.
    fn busy_source(batches: usize, per: usize) -> (aws_sdk_sqs::Client, Recorded) {
        busy_source_after(batches, per, |_| Duration::ZERO)
    }

    /// [`busy_source`], each answer `delay(action)` late.
    fn busy_source_after(
        batches: usize,
        per: usize,
        delay: impl Fn(&str) -> Duration + Send + Sync + 'static,
    ) -> (aws_sdk_sqs::Client, Recorded) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let handed = Arc::new(AtomicU64::new(0));
        let answer = move |req: fake::FakeRequest| {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            let entries = body["Entries"].as_array().cloned().unwrap_or_default();
            let queue = body["QueueUrl"].as_str().unwrap_or_default().to_string();
            seen.lock()
                .unwrap()
                .push((req.action.clone(), queue, entries.len()));
            let ids: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| serde_json::json!({"Id": e["Id"], "MessageId": "d", "MD5OfMessageBody": "0"}))
                .collect();
            match req.action.as_str() {
                "ReceiveMessage" => {
                    let b = handed.fetch_add(1, Ordering::SeqCst) as usize;
                    if b >= batches {
                        return fake::ok("{}");
                    }
                    let messages: Vec<serde_json::Value> = (0..per)
                        .map(|i| {
                            let n = b * per + i;
                            serde_json::json!({
                                "MessageId": format!("m{n}"), "ReceiptHandle": format!("h{n}"),
                                "Body": format!(r#"{{"event_id":"{n:032x}","project_id":{},"organization_id":1}}"#, n % 2 + 1),
                                "MD5OfBody": "0", "Attributes": {"ApproximateReceiveCount": "1"}
                            })
                        })
                        .collect();
                    fake::ok(serde_json::json!({ "Messages": messages }).to_string())
                }
                _ => fake::ok(serde_json::json!({"Successful": ids, "Failed": []}).to_string()),
            }
        };
        let client = fake::sqs_client_on(fake::delayed_client_fn(delay, answer));
        (client, calls)
    }

    /// Two routes (projects 1 and 2), and a pool of `workers` pollers, every call
    /// shared within `window`.
    fn windowed_worker(client: &aws_sdk_sqs::Client, window: Duration) -> Arc<Worker> {
        bounded_worker(client, window, Arc::new(Adaptive::fixed(100)))
    }

    /// [`windowed_worker`] with `bound` as its in-flight bound, told each call's time.
    fn bounded_worker(
        client: &aws_sdk_sqs::Client,
        window: Duration,
        bound: Arc<Adaptive>,
    ) -> Arc<Worker> {
        let metrics = Metrics::disabled();
        let window = crate::batching::BatchWindow::new(window).observed_by(bound.clone());
        let route = |queue: &str| {
            Arc::new(
                Forwarder::new(client.clone(), queue, 256 * 1024, fast(), metrics.clone())
                    .with_window(&window),
            )
        };
        let projects = [
            (1, route("https://sqs.fake/0/one")),
            (2, route("https://sqs.fake/0/two")),
        ]
        .into_iter()
        .collect();
        let pipeline = Pipeline::new(Router::new(None, projects), None, metrics.clone());
        // Receives of 5: full when the fake hands out 5, so no poller pauses.
        let source = SqsSource::new(
            client.clone(),
            "https://sqs.fake/0/src",
            5,
            Duration::ZERO,
            fast(),
            metrics.clone(),
        )
        .with_window(&window);
        Arc::new(
            Worker::new(source, pipeline, Duration::from_secs(30), metrics)
                .with_in_flight(bound)
                .with_max_in_flight_bytes(8 << 20)
                .with_source_max_message(Some(256 * 1024)),
        )
    }

    fn pool(workers: usize, shutdown: Duration) -> PoolOptions {
        PoolOptions {
            workers,
            exit_when_idle: Some(Duration::from_millis(600)),
            shutdown_timeout: shutdown,
            receive_backoff: fast(),
            health: Health::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn receives_of_every_poller_share_each_routes_sends_and_the_deletes() {
        // 6 full receives of 5 events, 2 or 3 to each route: without a window, 12
        // sends of 2 or 3 entries and 6 deletes of 5.
        let (client, calls) = busy_source(6, 5);
        let worker = windowed_worker(&client, Duration::from_millis(300));
        let summary = tokio::time::timeout(
            Duration::from_secs(10),
            run(
                worker,
                pool(3, Duration::from_secs(5)),
                std::future::pending(),
            ),
        )
        .await
        .expect("stops when idle");
        assert_eq!(summary.totals.forwarded, 30, "{summary:?}");
        assert_eq!(summary.totals.deleted, 30, "{summary:?}");
        let calls = calls.lock().unwrap();
        let of = |action: &str, queue: &str| -> Vec<usize> {
            calls
                .iter()
                .filter(|(a, q, _)| a == action && q.ends_with(queue))
                .map(|(_, _, n)| *n)
                .collect()
        };
        let (one, two) = (
            of("SendMessageBatch", "/one"),
            of("SendMessageBatch", "/two"),
        );
        assert_eq!(
            one.iter().sum::<usize>(),
            15,
            "route one gets only its events"
        );
        assert_eq!(
            two.iter().sum::<usize>(),
            15,
            "route two gets only its events"
        );
        assert!(
            one.len() <= 3 && two.len() <= 3,
            "sends shared across receives: {one:?} {two:?}"
        );
        assert!(one.iter().chain(&two).all(|n| *n <= 10));
        let deletes = of("DeleteMessageBatch", "/src");
        assert_eq!(deletes.iter().sum::<usize>(), 30);
        assert!(
            deletes.len() <= 4,
            "deletes shared across receives: {deletes:?}"
        );
    }

    /// The in-flight bound of a pool of 4 pollers (receives of 5) on 300 batches, on
    /// average while they go through, each send and delete `service` long, one at a
    /// time when `saturated` (each waits for the calls before it, as at a saturated
    /// queue).
    async fn average_bound(service: Duration, saturated: bool) -> f64 {
        let free_at = Arc::new(Mutex::new(Instant::now()));
        let delay = move |action: &str| {
            if action == "ReceiveMessage" {
                return Duration::ZERO;
            }
            if !saturated {
                return service;
            }
            let now = Instant::now();
            let mut free = free_at.lock().unwrap();
            *free = (*free).max(now) + service;
            *free - now
        };
        let (client, _) = busy_source_after(300, 5, delay);
        let bound = Arc::new(Adaptive::new(20, 200, 5));
        let worker = bounded_worker(&client, Duration::from_millis(20), bound.clone());
        let mut samples = Vec::new();
        let watch = async {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                samples.push(bound.limit());
            }
        };
        let summary = tokio::select! {
            summary = run(worker, pool(4, Duration::from_secs(5)), std::future::pending()) => summary,
            never = watch => never,
        };
        assert_eq!(summary.totals.forwarded, 1500, "{summary:?}");
        samples.iter().sum::<usize>() as f64 / samples.len().max(1) as f64
    }

    /// On tokio's paused clock: the calls take exactly their service time, whatever else
    /// the machine does (on the real clock two busy loops beside it failed it 2 runs in 3).
    #[tokio::test(start_paused = true)]
    async fn the_in_flight_bound_grows_while_calls_answer_as_fast_and_not_at_a_saturated_queue() {
        let fast = average_bound(Duration::from_millis(2), false).await;
        let saturated = average_bound(Duration::from_millis(2), true).await;
        assert!(
            fast >= 60.0,
            "flat response times: the bound grows ({fast})"
        );
        assert!(
            saturated < fast / 2.0,
            "a saturated queue keeps it low ({saturated} against {fast})"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_and_deletes_what_the_window_holds_at_once() {
        let (client, calls) = busy_source(1, 3);
        // A window far longer than the test: only the shutdown can send its batch.
        let worker = windowed_worker(&client, Duration::from_secs(600));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let calls_seen = calls.clone();
        tokio::spawn(async move {
            // Once the batch is in (received, waiting in the window), SIGTERM.
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if calls_seen
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(a, _, _)| a == "ReceiveMessage")
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = stop.send(());
                    return;
                }
            }
        });
        let started = Instant::now();
        let summary = tokio::time::timeout(
            Duration::from_secs(10),
            run(worker, pool(1, Duration::from_secs(5)), async {
                let _ = stopped.await;
            }),
        )
        .await
        .expect("the shutdown does not wait for the window");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!summary.abandoned, "{summary:?}");
        assert_eq!(
            (summary.totals.forwarded, summary.totals.deleted),
            (3, 3),
            "{summary:?}"
        );
        let calls = calls.lock().unwrap();
        let sent: usize = calls
            .iter()
            .filter(|(a, _, _)| a == "SendMessageBatch")
            .map(|(_, _, n)| n)
            .sum();
        assert_eq!(sent, 3);
    }

    /// A batch's byte room goes back once its events are forwarded, not after its delete,
    /// which waits for the window (here 60 s): the next receive need not wait for it.
    #[tokio::test(start_paused = true)]
    async fn the_byte_room_goes_back_before_the_delete_waits_its_window() {
        let (client, seen) = source(vec![
            r#"{"event_id":"00000000000000000000000000000001","project_id":1,"organization_id":1}"#
                .into(),
        ]);
        let metrics = Metrics::disabled();
        let forwarder = forwarder(&client, &metrics);
        let window = crate::batching::BatchWindow::new(Duration::from_secs(60));
        let source = SqsSource::new(
            client,
            "https://sqs.fake/0/src",
            10,
            Duration::ZERO,
            fast(),
            metrics.clone(),
        )
        .with_window(&window);
        let worker = Arc::new(
            Worker::new(
                source,
                Pipeline::new(Router::single(forwarder), None, metrics.clone()),
                Duration::from_secs(300),
                metrics,
            )
            .with_max_in_flight_bytes(1 << 20)
            .with_source_max_message(Some(1 << 20)),
        );
        let ticket = worker.admit().await;
        assert_eq!(ticket.messages, 1, "room for one message of 1 MiB");
        let messages = worker.source().receive_at_most(1).await.unwrap();
        let room = worker.received(ticket.bytes, &messages);
        let handling = tokio::spawn({
            let worker = worker.clone();
            async move { worker.handle_since(messages, Instant::now(), room).await }
        });
        let ledger = worker.admission().bytes().unwrap().clone();
        assert!(ledger.in_use().0 > 0, "the body is held");
        tokio::time::timeout(Duration::from_secs(5), async {
            while ledger.in_use().0 > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the room came back once the event was forwarded");
        assert!(
            !handling.is_finished(),
            "the delete still waits for its window"
        );
        assert!(seen.deleted.lock().unwrap().is_empty());
        window.close();
        assert_eq!(handling.await.unwrap().deleted, 1);
    }

    /// The state of one message in [`holding_source`]: when it shows again (`None`:
    /// never received), whether it is deleted, and how often it was received.
    #[derive(Debug, Default, Clone)]
    struct Held {
        visible_at: Option<Instant>,
        deleted: bool,
        receives: usize,
    }

    /// What [`holding_source`] saw: each message's state, the body bytes received and
    /// not yet answered as sent at most (`outstanding`, the sends' answers due `pending`),
    /// and each visibility change or delete that came after its message had shown again
    /// (a message another consumer could have had).
    #[derive(Default)]
    struct Holding {
        messages: Vec<Held>,
        outstanding: usize,
        pending: Vec<Instant>,
        most_outstanding: usize,
        late: Vec<String>,
        sent: Vec<String>,
    }

    /// A source queue in-process as SQS keeps visibility: `count` events of `size`
    /// bytes each, a receive hides what it hands out for `visibility`, a message that
    /// shows again is handed out again; the destination answers each send `send_delay`
    /// late.
    fn holding_source(
        count: usize,
        size: usize,
        visibility: Duration,
        send_delay: Duration,
    ) -> (aws_sdk_sqs::Client, Arc<Mutex<Holding>>) {
        let state = Arc::new(Mutex::new(Holding {
            messages: vec![Held::default(); count],
            ..Holding::default()
        }));
        let seen = state.clone();
        let body = move |n: usize| {
            let head =
                format!(r#"{{"event_id":"{n:032x}","project_id":1,"organization_id":1,"pad":""#);
            format!(
                "{head}{}\"}}",
                "x".repeat(size.saturating_sub(head.len() + 2))
            )
        };
        let answer = move |req: fake::FakeRequest| {
            let now = Instant::now();
            let v: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            let entries = v["Entries"].as_array().cloned().unwrap_or_default();
            let mut s = seen.lock().unwrap();
            // Sends answered by now no longer hold their bodies.
            let answered = s.pending.iter().filter(|at| **at <= now).count();
            s.pending.retain(|at| *at > now);
            s.outstanding -= answered * size;
            let handle = |e: &serde_json::Value| -> usize {
                e["ReceiptHandle"]
                    .as_str()
                    .and_then(|h| h.parse().ok())
                    .unwrap_or(usize::MAX)
            };
            let ids: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| serde_json::json!({"Id": e["Id"], "MessageId": "d", "MD5OfMessageBody": "0"}))
                .collect();
            let ok = serde_json::json!({"Successful": ids, "Failed": []}).to_string();
            match req.action.as_str() {
                "ReceiveMessage" => {
                    let max = v["MaxNumberOfMessages"].as_u64().unwrap_or(1) as usize;
                    let mut out = Vec::new();
                    for n in 0..count {
                        if out.len() == max {
                            break;
                        }
                        let m = &mut s.messages[n];
                        if m.deleted || m.visible_at.is_some_and(|at| at > now) {
                            continue;
                        }
                        m.visible_at = Some(now + visibility);
                        m.receives += 1;
                        out.push(serde_json::json!({
                            "MessageId": format!("m{n}"), "ReceiptHandle": n.to_string(),
                            "Body": body(n), "MD5OfBody": "0",
                            "Attributes": {"ApproximateReceiveCount": "1"}
                        }));
                    }
                    s.outstanding += out.len() * size;
                    s.most_outstanding = s.most_outstanding.max(s.outstanding);
                    fake::ok(serde_json::json!({ "Messages": out }).to_string())
                }
                "ChangeMessageVisibilityBatch" | "DeleteMessageBatch" => {
                    for e in &entries {
                        let n = handle(e);
                        let Some(m) = s.messages.get(n).cloned() else {
                            continue;
                        };
                        if m.visible_at.is_none_or(|at| at <= now) {
                            s.late
                                .push(format!("{} of m{n} at {:?}", req.action, now.elapsed()));
                        }
                        if req.action == "DeleteMessageBatch" {
                            s.messages[n].deleted = true;
                        } else {
                            let secs = e["VisibilityTimeout"].as_u64().unwrap_or(0);
                            s.messages[n].visible_at = Some(now + Duration::from_secs(secs));
                        }
                    }
                    fake::ok(ok)
                }
                "SendMessageBatch" => {
                    for e in &entries {
                        let body: serde_json::Value =
                            serde_json::from_str(e["MessageBody"].as_str().unwrap_or_default())
                                .unwrap_or_default();
                        s.sent
                            .push(body["event_id"].as_str().unwrap_or_default().into());
                        s.pending.push(now + send_delay);
                    }
                    fake::ok(ok)
                }
                other => fake::error(400, &format!("Unexpected{other}")),
            }
        };
        let delay = move |action: &str| {
            if action == "SendMessageBatch" {
                send_delay
            } else {
                Duration::ZERO
            }
        };
        (
            fake::sqs_client_on(fake::delayed_client_fn(delay, answer)),
            state,
        )
    }

    /// The issue's case on a clock the test drives: a destination whose every send takes
    /// 5 s, a source visibility timeout of 8 s, 60 events of 500 KB, 8 MiB of room and
    /// 16 pollers (more than that room lets receive at once: they wait for room, and the
    /// idle exit still comes). Every message stays hidden from its receive to its delete (no extension or
    /// delete comes after it showed again), so each event goes once; the body bytes held
    /// never pass the budget.
    #[tokio::test(start_paused = true)]
    async fn large_events_at_a_slow_destination_stay_hidden_from_receive_to_delete() {
        let size = 500_000;
        let visibility = Duration::from_secs(8);
        let (client, state) = holding_source(60, size, visibility, Duration::from_secs(5));
        let metrics = Metrics::disabled();
        let window = crate::batching::BatchWindow::new(Duration::from_secs(1));
        let forwarder = Forwarder::new(
            client.clone(),
            "https://sqs.fake/0/dest",
            1 << 20,
            fast(),
            metrics.clone(),
        )
        .with_window(&window);
        let pipeline = Pipeline::new(Router::single(forwarder), None, metrics.clone());
        let source = SqsSource::new(
            client,
            "https://sqs.fake/0/src",
            10,
            Duration::ZERO,
            fast(),
            metrics.clone(),
        )
        .with_window(&window);
        let budget = 8 << 20;
        let worker = Arc::new(
            Worker::new(source, pipeline, visibility, metrics)
                .with_max_in_flight(400)
                .with_max_in_flight_bytes(budget)
                .with_source_max_message(Some(1 << 20)),
        );
        let summary = tokio::time::timeout(
            Duration::from_secs(600),
            run(
                worker,
                pool(16, Duration::from_secs(30)),
                std::future::pending(),
            ),
        )
        .await
        .expect("the pool ends once the source is idle");
        let s = state.lock().unwrap();
        assert!(
            s.late.is_empty(),
            "held past their visibility: {:?}",
            s.late
        );
        let redelivered: Vec<usize> = (0..60).filter(|&n| s.messages[n].receives != 1).collect();
        assert!(redelivered.is_empty(), "received again: {redelivered:?}");
        let mut sent = s.sent.clone();
        sent.sort();
        sent.dedup();
        assert_eq!((s.sent.len(), sent.len()), (60, 60), "each event sent once");
        assert_eq!(summary.totals.deleted, 60, "{summary:?}");
        assert!(
            s.most_outstanding <= budget,
            "{} bytes held against a budget of {budget}",
            s.most_outstanding
        );
    }

    /// A batch that waited before its handling began (here 6 s of a 10 s visibility
    /// timeout) is extended on the clock of its receive: at 5 s from it, at once, not
    /// 5 s into its handling.
    #[tokio::test(start_paused = true)]
    async fn visibility_is_extended_on_the_clock_of_the_receive() {
        let (client, state) =
            holding_source(3, 1_000, Duration::from_secs(10), Duration::from_secs(20));
        let metrics = Metrics::disabled();
        let forwarder = forwarder(&client, &metrics);
        let worker = Worker::new(
            SqsSource::new(
                client,
                "https://sqs.fake/0/src",
                10,
                Duration::ZERO,
                fast(),
                metrics.clone(),
            ),
            Pipeline::new(Router::single(forwarder), None, metrics.clone()),
            Duration::from_secs(10),
            metrics,
        );
        let messages = worker.source().receive().await.unwrap();
        let received_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let outcome = worker.handle_since(messages, received_at, None).await;
        assert_eq!(outcome.deleted, 3, "{outcome:?}");
        let s = state.lock().unwrap();
        assert!(
            s.late.is_empty(),
            "held past their visibility: {:?}",
            s.late
        );
        assert!(s.messages.iter().all(|m| m.receives == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_unsettled_at_the_shutdown_bound_is_handed_back() {
        let hidden = Arc::new(Mutex::new(Vec::new()));
        let h = hidden.clone();
        let handed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = fake::sqs_client(move |req| {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            let entries = body["Entries"].as_array().cloned().unwrap_or_default();
            match req.action.as_str() {
                "ReceiveMessage" if !handed.swap(true, Ordering::SeqCst) => {
                    let messages: Vec<serde_json::Value> = (0..3)
                        .map(|n| {
                            serde_json::json!({
                                "MessageId": format!("m{n}"), "ReceiptHandle": format!("h{n}"),
                                "Body": format!(r#"{{"event_id":"{n:032x}","project_id":1,"organization_id":1}}"#),
                                "MD5OfBody": "0", "Attributes": {"ApproximateReceiveCount": "1"}
                            })
                        })
                        .collect();
                    fake::ok(serde_json::json!({ "Messages": messages }).to_string())
                }
                "ReceiveMessage" => fake::ok("{}"),
                // The destination keeps failing transiently: the batch retries for a minute.
                "SendMessageBatch" => fake::error(503, "ServiceUnavailable"),
                "ChangeMessageVisibilityBatch" => {
                    let ids: Vec<serde_json::Value> = entries
                        .iter()
                        .map(|e| {
                            h.lock().unwrap().push((
                                e["ReceiptHandle"].as_str().unwrap_or_default().to_string(),
                                e["VisibilityTimeout"].as_i64().unwrap_or(-1),
                            ));
                            serde_json::json!({"Id": e["Id"]})
                        })
                        .collect();
                    fake::ok(serde_json::json!({"Successful": ids, "Failed": []}).to_string())
                }
                _ => fake::ok(r#"{"Successful": [], "Failed": []}"#),
            }
        });
        let metrics = Metrics::disabled();
        let slow = RetryPolicy {
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(60),
        };
        let forwarder = Forwarder::new(
            client.clone(),
            "https://sqs.fake/0/dest",
            256 * 1024,
            slow,
            metrics.clone(),
        );
        let worker = Arc::new(worker(client, forwarder, metrics));
        let started = Instant::now();
        let summary = tokio::time::timeout(
            Duration::from_secs(10),
            run(
                worker,
                PoolOptions {
                    exit_when_idle: None,
                    ..pool(1, Duration::from_millis(300))
                },
                tokio::time::sleep(Duration::from_millis(200)),
            ),
        )
        .await
        .expect("the shutdown bound holds");
        assert!(summary.abandoned, "{summary:?}");
        assert_eq!(summary.totals.deleted, 0, "nothing unsent is deleted");
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut hidden = hidden.lock().unwrap().clone();
        hidden.sort();
        assert_eq!(
            hidden,
            [
                ("h0".to_string(), 0),
                ("h1".to_string(), 0),
                ("h2".to_string(), 0)
            ],
            "handed back at once, not left hidden for the visibility timeout"
        );
    }

    /// A worker on a source whose every receive is a long poll that returns nothing
    /// after `wait`, as an idle queue does; counts the receives.
    fn long_polling(wait: Duration) -> (Arc<Worker>, Arc<AtomicU64>) {
        let receives = Arc::new(AtomicU64::new(0));
        let r = receives.clone();
        let client = fake::sqs_client_on(fake::delayed_client_fn(
            move |action| {
                if action == "ReceiveMessage" {
                    wait
                } else {
                    Duration::ZERO
                }
            },
            move |req| {
                if req.action == "ReceiveMessage" {
                    r.fetch_add(1, Ordering::SeqCst);
                }
                fake::ok("{}")
            },
        ));
        let metrics = Metrics::disabled();
        let forwarder = forwarder(&client, &metrics);
        (Arc::new(worker(client, forwarder, metrics)), receives)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_cancels_the_long_poll_in_progress() {
        let (worker, receives) = long_polling(Duration::from_secs(20));
        let started = Instant::now();
        let summary = tokio::time::timeout(
            Duration::from_secs(10),
            run(
                worker,
                PoolOptions {
                    exit_when_idle: None,
                    ..pool(4, Duration::from_secs(30))
                },
                tokio::time::sleep(Duration::from_millis(200)),
            ),
        )
        .await
        .expect("the stop does not wait out a 20 s long poll");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stopped after {:?}",
            started.elapsed()
        );
        assert!(!summary.abandoned, "{summary:?}");
        assert_eq!(
            receives.load(Ordering::SeqCst),
            4,
            "each poller had one open"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pool_exits_on_time_whatever_the_long_poll() {
        let (worker, _) = long_polling(Duration::from_secs(20));
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            run(
                worker,
                PoolOptions {
                    exit_when_idle: Some(Duration::from_millis(500)),
                    ..pool(2, Duration::from_secs(30))
                },
                std::future::pending(),
            ),
        )
        .await
        .expect("exits when idle, not after the long poll");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
            "exited after {took:?}"
        );
    }
}
