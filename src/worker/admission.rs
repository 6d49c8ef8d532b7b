//! Admission: what the pool may receive, and what it holds. One ledger, taken before
//! every receive and paid back as batches settle.
//!
//! Three things bound a pool:
//!
//! - **Events held** (`FORWARDER_MAX_IN_FLIGHT`, or the adaptive bound under it,
//!   [`crate::concurrency::Adaptive`]): a receive takes room for as many events as it
//!   asks for; they go back once the batch is settled (deleted).
//! - **Bytes held** (`FORWARDER_MAX_IN_FLIGHT_BYTES`, the budget): what received
//!   batches hold, from their receive until their events are forwarded, each message at
//!   what it costs ([`cost`]: its body twice, itself and its encoding, and
//!   [`PER_MESSAGE`] for the rest of it), plus what each receive in flight is expected
//!   to bring. A receive is expected to bring, per message,
//!   the largest body the source has sent lately, rounded up to a power of two
//!   ([`Ledger::estimate`]; the source's `MaximumMessageSize` until one was seen). A
//!   batch larger than expected is held at its real size, and the next receives wait
//!   until it has been paid back: the budget is overdrawn once, never twice.
//! - **Receives in flight** ([`Ledger::max_receives`]): however small the events lately,
//!   each receive may answer 10 × `MaximumMessageSize` (SQS has no cap on a response's
//!   bytes), so at most `receive room / (10 × MaximumMessageSize)` are in flight, the
//!   receive room being [`RECEIVE_ROOM_QUARTERS`] quarters of the budget. The worst case is
//!   therefore `budget + receives × 10 × MaximumMessageSize`: a burst of events of the
//!   largest size right after a long flow of small ones (and, for a moment, the SDK's
//!   read of each response beside its parse).
//! - **Bodies in work** ([`Held::turn`]): decoding, encoding and sending copy a body two
//!   or three times over, so received batches are worked on while their bodies fit the
//!   budget together (or one alone); a batch of an overdraft waits its turn, holding
//!   only its received bodies, its visibility extended as ever.
//!
//! Counting a message not yet received at the source's largest size (as before) made a
//! 1 MiB source receive 24 messages at once from a 24 MiB budget, whatever the events
//! weighed: a third of a bare loop's rate with 40 ms calls. Counting it at what the
//! source sends lets small events flow, and the receive cap keeps the worst case
//! bounded.
//!
//! This module knows nothing of SQS: a receive is a count, a batch is its body sizes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit};
// tokio's clock: tests on a paused one drive the estimate's periods too.
use tokio::time::Instant;

use crate::concurrency::Adaptive;

/// The receive room, in quarters of the budget: how many bytes the receives in flight
/// may bring at their worst (each 10 × `MaximumMessageSize`), beside the budget itself.
/// With the default budget of 40 MiB: 70 MiB, so 7 receives in flight from a 1 MiB
/// source and 28 from a 256 KiB one. Each such response is read whole by the SDK and
/// then parsed (about twice its size for a moment): 3,000 events of 8 KB then 160 of
/// 1 MB at 32 workers peaked at 190.4 MiB with 8 receives in flight, against a bound of
/// 192 MiB; 7 leave room.
pub const RECEIVE_ROOM_QUARTERS: usize = 7;

/// What a message held costs beside its body: its decoded event, its batch entry and
/// attributes, its share of the tasks and calls waiting for it. Measured with 300
/// routes, where every event waits a window for its call: about 53 KB of RSS per 8 KB
/// event held (1,536 events: 79 MiB over the idle process).
pub const PER_MESSAGE: usize = 32 * 1024;

/// What holding a message of `body` bytes costs: the body and its encoding, which live
/// together while its event waits for its call, and [`PER_MESSAGE`].
pub fn cost(body: usize) -> usize {
    body.saturating_mul(2).saturating_add(PER_MESSAGE)
}

/// The smallest a message is expected to be: below it, the estimate gains nothing but
/// receives of many tiny messages are still counted at something.
pub const MIN_ESTIMATE: usize = 4 * 1024;

/// How long a body size seen counts towards the estimate: between one and two of
/// these, so a flow of small events after large ones is counted small again within a
/// minute.
pub const SEEN_PERIOD: Duration = Duration::from_secs(30);

/// The bytes side of admission: bodies held and receives in flight. Shared by every
/// poller.
#[derive(Debug)]
pub struct Ledger {
    /// `FORWARDER_MAX_IN_FLIGHT_BYTES`: bodies held plus receives expected, at most.
    budget: usize,
    /// What the receives in flight may bring at their worst, at most.
    receive_room: usize,
    /// Messages a receive asks for at most (SQS's 10): its worst case is this many of
    /// the source's largest.
    batch: usize,
    /// What is held and expected now.
    state: Mutex<State>,
    /// Woken whenever room comes back.
    freed: Notify,
}

#[derive(Debug)]
struct State {
    /// Body bytes of received batches not yet paid back.
    held: usize,
    /// What the receives in flight are expected to bring.
    expected: usize,
    /// Receives in flight.
    receives: usize,
    /// Body bytes of batches being worked on ([`Held::turn`]).
    working: usize,
    /// The source's `MaximumMessageSize`.
    source_max: usize,
    /// The largest body seen in this period and the one before; `None` before the first
    /// receive that brought anything.
    seen: Option<Seen>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Largest in the current period.
    current: usize,
    /// Largest in the period before.
    previous: usize,
    /// When the current period began.
    since: Instant,
}

impl Ledger {
    /// A ledger of `budget` bytes (at least one) for receives of up to `batch` messages
    /// from a source whose largest message is `source_max` bytes.
    pub fn new(budget: usize, batch: usize, source_max: usize) -> Self {
        let budget = budget.max(1);
        Self {
            budget,
            receive_room: budget.saturating_mul(RECEIVE_ROOM_QUARTERS) / 4,
            batch: batch.max(1),
            state: Mutex::new(State {
                held: 0,
                expected: 0,
                receives: 0,
                working: 0,
                source_max: source_max.max(1),
                seen: None,
            }),
            freed: Notify::new(),
        }
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Follows a change of the source's `MaximumMessageSize`.
    pub fn follow_source_max(&self, bytes: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.source_max = bytes.max(1);
        }
        self.freed.notify_waiters();
    }

    /// The source's `MaximumMessageSize`, as last followed.
    pub fn source_max(&self) -> usize {
        self.state.lock().map_or(1, |s| s.source_max)
    }

    /// What one message not yet received is expected to bring: the largest body seen
    /// lately, rounded up to a power of two, within [`MIN_ESTIMATE`] and the source's
    /// largest (which it is until a body was seen); never more than the budget.
    pub fn estimate(&self) -> usize {
        self.state
            .lock()
            .map_or(self.budget, |mut s| s.estimate(Instant::now()))
            .min(self.budget)
    }

    /// How many receives may be in flight at once: each may bring 10 × the source's
    /// largest, and together they fit the receive room (at least one).
    pub fn max_receives(&self) -> usize {
        self.state
            .lock()
            .map_or(1, |s| self.receives_for(s.source_max))
    }

    fn receives_for(&self, source_max: usize) -> usize {
        (self.receive_room / self.batch.saturating_mul(source_max).max(1)).max(1)
    }

    /// The most body bytes the pool may hold at once, at the worst: the budget, plus
    /// every receive in flight bringing 10 × the source's largest.
    pub fn worst_case(&self) -> usize {
        let source_max = self.source_max();
        self.budget.saturating_add(
            self.max_receives()
                .saturating_mul(self.batch)
                .saturating_mul(source_max),
        )
    }

    /// Room for one receive of up to `max` messages: it waits until a receive may be in
    /// flight and the budget has room for `max` messages at the estimate (or for as
    /// many as the whole budget holds at it; at least one). A receive asking for fewer
    /// than it might would cost a call for a sliver (SQS bills each). With nothing
    /// held, a receive always goes.
    pub async fn reserve(self: &Arc<Self>, max: usize) -> Reservation {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(reservation) = self.try_reserve(max) {
                return reservation;
            }
            freed.await;
        }
    }

    fn try_reserve(self: &Arc<Self>, max: usize) -> Option<Reservation> {
        let mut s = self.state.lock().ok()?;
        let each = cost(s.estimate(Instant::now())).clamp(1, self.budget);
        let n = max.min(self.budget / each).max(1);
        let expect = n.saturating_mul(each);
        let in_use = s.held.saturating_add(s.expected);
        let fits = in_use.saturating_add(expect) <= self.budget || in_use == 0;
        if s.receives >= self.receives_for(s.source_max) || !fits {
            return None;
        }
        s.receives += 1;
        s.expected += expect;
        Some(Reservation {
            ledger: self.clone(),
            messages: n,
            expect,
            settled: false,
        })
    }

    fn give_back(&self, held: usize, expected: usize, receive: bool) {
        self.give_back_working(held, 0, expected, receive);
    }

    fn give_back_working(&self, held: usize, working: usize, expected: usize, receive: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.held = s.held.saturating_sub(held);
            s.working = s.working.saturating_sub(working);
            s.expected = s.expected.saturating_sub(expected);
            if receive {
                s.receives = s.receives.saturating_sub(1);
            }
        }
        self.freed.notify_waiters();
    }

    /// Bodies held, and what the receives in flight are expected to bring, now.
    pub fn in_use(&self) -> (usize, usize) {
        self.state.lock().map_or((0, 0), |s| (s.held, s.expected))
    }
}

impl State {
    fn estimate(&mut self, now: Instant) -> usize {
        let Some(seen) = &mut self.seen else {
            return self.source_max;
        };
        seen.roll(now);
        let largest = seen.current.max(seen.previous);
        largest
            .max(MIN_ESTIMATE)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .min(self.source_max)
    }

    fn saw(&mut self, largest: usize, now: Instant) {
        match &mut self.seen {
            Some(seen) => {
                seen.roll(now);
                seen.current = seen.current.max(largest);
            }
            None => {
                self.seen = Some(Seen {
                    current: largest,
                    previous: 0,
                    since: now,
                })
            }
        }
    }
}

impl Seen {
    /// Starts a new period once the current one is over; one empty of messages keeps
    /// what was seen before (a pause says nothing of the next events' size).
    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.since) < SEEN_PERIOD {
            return;
        }
        if self.current > 0 {
            self.previous = self.current;
            self.current = 0;
        }
        self.since = now;
    }
}

/// Room for one receive in flight, given back when dropped unless the receive came
/// back ([`Reservation::received`]).
#[derive(Debug)]
pub struct Reservation {
    ledger: Arc<Ledger>,
    /// How many messages the receive may ask for.
    messages: usize,
    /// What it is expected to bring.
    expect: usize,
    /// Whether it was turned into what the batch holds.
    settled: bool,
}

impl Reservation {
    /// How many messages the receive may ask for.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// The receive came back with bodies of `sizes`: they are held at their real size
    /// (even past the budget, which later receives then wait out) until the returned
    /// [`Held`] is dropped; an empty receive holds nothing.
    pub fn received(mut self, sizes: impl IntoIterator<Item = usize>) -> Option<Held> {
        self.settled = true;
        let (mut total, mut largest, mut count) = (0usize, 0usize, 0usize);
        for size in sizes {
            total = total.saturating_add(cost(size));
            largest = largest.max(size);
            count += 1;
        }
        let ledger = self.ledger.clone();
        if let Ok(mut s) = ledger.state.lock() {
            s.expected = s.expected.saturating_sub(self.expect);
            s.receives = s.receives.saturating_sub(1);
            if count > 0 {
                s.saw(largest, Instant::now());
                s.held = s.held.saturating_add(total);
            }
        }
        ledger.freed.notify_waiters();
        (count > 0).then(|| Held {
            ledger,
            bytes: total,
            working: false,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger.give_back(0, self.expect, true);
        }
    }
}

/// Body bytes a received batch holds, paid back when dropped.
#[derive(Debug)]
pub struct Held {
    ledger: Arc<Ledger>,
    bytes: usize,
    /// Whether its turn to be worked on came ([`Held::turn`]).
    working: bool,
}

impl Held {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Waits until the batch may be worked on: while the bodies being worked on and its
    /// own fit the budget, or nothing else is being worked on. Only an overdraft waits:
    /// what was received within the budget always fits.
    pub async fn turn(&mut self) {
        if self.working {
            return;
        }
        loop {
            let freed = self.ledger.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Ok(mut s) = self.ledger.state.lock() {
                if s.working == 0 || s.working.saturating_add(self.bytes) <= self.ledger.budget {
                    s.working += self.bytes;
                    self.working = true;
                    return;
                }
            }
            freed.await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let working = if self.working { self.bytes } else { 0 };
        self.ledger.give_back_working(self.bytes, working, 0, false);
    }
}

/// Both sides of admission for one pool: the events' count bound and the bytes' ledger,
/// each optional.
#[derive(Debug, Default)]
pub struct Admission {
    /// Events held at once; `None`: workers × batch size bounds it.
    events: Option<Arc<Adaptive>>,
    /// Body bytes held and receives in flight; `None`: no byte bound.
    bytes: Option<Arc<Ledger>>,
}

/// Room taken for one receive.
#[derive(Debug)]
pub struct Ticket {
    /// How many messages the receive may ask for.
    pub messages: usize,
    /// Room for that many events, held until the batch is settled.
    pub events: Option<OwnedSemaphorePermit>,
    /// Room for its bytes, until it comes back.
    pub bytes: Option<Reservation>,
}

impl Admission {
    /// The same admission, counting events against `bound`.
    pub fn with_events(mut self, bound: Arc<Adaptive>) -> Self {
        self.events = Some(bound);
        self
    }

    /// The same admission, with a byte ledger.
    pub fn with_bytes(mut self, ledger: Ledger) -> Self {
        self.bytes = Some(Arc::new(ledger));
        self
    }

    /// The count bound, if any.
    pub fn events(&self) -> Option<&Arc<Adaptive>> {
        self.events.as_ref()
    }

    /// The byte ledger, if any.
    pub fn bytes(&self) -> Option<&Arc<Ledger>> {
        self.bytes.as_ref()
    }

    /// Room for a receive of up to `batch` messages: events first (never more than the
    /// bound's floor, so a bound under the batch size still admits), then bytes.
    pub async fn admit(&self, batch: usize) -> Ticket {
        let mut messages = batch.max(1);
        let events = match &self.events {
            Some(bound) => {
                let want = messages.min(bound.floor());
                match bound.admit(want).await {
                    Ok(permit) => {
                        messages = want;
                        Some(permit)
                    }
                    // Closed: never done; fall back to no bound rather than stop.
                    Err(_) => None,
                }
            }
            None => None,
        };
        let bytes = match &self.bytes {
            Some(ledger) => {
                let reservation = ledger.reserve(messages).await;
                messages = reservation.messages();
                Some(reservation)
            }
            None => None,
        };
        // Room for the events the bytes do not let be asked for goes back at once.
        let events = events.map(|mut permit| {
            if permit.num_permits() > messages {
                drop(permit.split(permit.num_permits() - messages));
            }
            permit
        });
        Ticket {
            messages,
            events,
            bytes,
        }
    }

    /// The start-up line's words for what bounds memory.
    pub fn describe_bytes(&self) -> Option<String> {
        let ledger = self.bytes.as_ref()?;
        let mib = |b: usize| b as f64 / f64::from(1u32 << 20);
        let source_max = ledger.source_max();
        Some(format!(
            "messages held and expected <= {:.0} MiB (FORWARDER_MAX_IN_FLIGHT_BYTES, each message at twice its body + 32 KiB); \
             receives in flight <= {} ({} x {} x {:.2} MiB <= {:.0} MiB); worst case {:.0} + {} x {} x {:.2} = {:.0} MiB",
            mib(ledger.budget),
            ledger.max_receives(),
            ledger.max_receives(),
            ledger.batch,
            mib(source_max),
            mib(ledger.receive_room),
            mib(ledger.budget),
            ledger.max_receives(),
            ledger.batch,
            mib(source_max),
            mib(ledger.worst_case()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn ledger(budget: usize, source_max: usize) -> Arc<Ledger> {
        Arc::new(Ledger::new(budget, 10, source_max))
    }

    /// Whether `f` completes within 5 s of a paused clock.
    async fn ready<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_secs(5), f).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn before_any_body_is_seen_a_message_counts_at_the_sources_largest() {
        let l = ledger(3 * cost(MIB), MIB);
        let r = ready(l.reserve(10)).await.expect("room");
        assert_eq!(r.messages(), 3, "three messages of 1 MiB fit");
        assert!(
            ready(l.reserve(10)).await.is_none(),
            "no room left: it waits"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn small_bodies_seen_let_full_receives_go_from_a_1_mib_source() {
        // The default budget, a 1 MiB source: 40 messages at once if counted at 1 MiB,
        // receives of 8 KiB events up to the receive cap.
        let l = ledger(40 * MIB, MIB);
        let first = ready(l.reserve(10)).await.expect("room");
        let held = first.received([8_000; 10]);
        assert_eq!(l.estimate(), 8 * 1024, "8,000 bytes round up to 8 KiB");
        let mut receives = Vec::new();
        while let Some(r) = ready(l.reserve(10)).await {
            assert_eq!(r.messages(), 10, "a full receive each");
            receives.push(r);
        }
        assert_eq!(
            receives.len(),
            l.max_receives(),
            "the receive cap binds, not bytes"
        );
        assert_eq!(l.max_receives(), 7, "70 MiB of room, 10 MiB each at worst");
        assert!(held.is_some());
        // One receive back: the next may go.
        drop(receives.pop());
        assert!(ready(l.reserve(10)).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_larger_than_expected_overdraws_once_and_the_next_receives_wait() {
        let l = ledger(10 * MIB, MIB);
        ready(l.reserve(10)).await.unwrap().received([4_000; 10]);
        // Expected 10 x 4 KiB; ten of 1 MiB came: held at their real size.
        let r = ready(l.reserve(10)).await.unwrap();
        let held = r.received([MIB; 10]).expect("held");
        assert_eq!(held.bytes(), 10 * cost(MIB));
        assert!(
            ready(l.reserve(10)).await.is_none(),
            "overdrawn: receives wait"
        );
        drop(held);
        let next = ready(l.reserve(10)).await.expect("paid back: room again");
        assert_eq!(next.messages(), 4, "counted at 1 MiB now: 4 in 10 MiB");
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_falls_back_to_small_events_within_two_periods() {
        let l = ledger(24 * MIB, MIB);
        ready(l.reserve(10)).await.unwrap().received([900_000]);
        assert_eq!(l.estimate(), MIB);
        tokio::time::advance(SEEN_PERIOD).await;
        ready(l.reserve(10)).await.unwrap().received([2_000; 10]);
        assert_eq!(l.estimate(), MIB, "the period before still counts");
        tokio::time::advance(SEEN_PERIOD).await;
        ready(l.reserve(10)).await.unwrap().received([2_000; 10]);
        assert_eq!(l.estimate(), MIN_ESTIMATE, "2,000 bytes count at the floor");
        // A quiet period keeps what was seen last.
        tokio::time::advance(SEEN_PERIOD * 3).await;
        assert_eq!(l.estimate(), MIN_ESTIMATE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdraft_is_worked_on_as_the_budget_allows() {
        // 16 MiB: room for two receives in flight from a 1 MiB source, and for 7
        // messages of 1 MiB.
        let l = ledger(16 * MIB, MIB);
        ready(l.reserve(10)).await.unwrap().received([4_000; 10]);
        // Two receives expected small both come back with ten events of 1 MiB.
        let (a, b) = (
            ready(l.reserve(10)).await.unwrap(),
            ready(l.reserve(10)).await.unwrap(),
        );
        let mut a = a.received([MIB; 10]).unwrap();
        let mut b = b.received([MIB; 10]).unwrap();
        assert!(
            ready(a.turn()).await.is_some(),
            "nothing else in work: it goes"
        );
        assert!(
            ready(b.turn()).await.is_none(),
            "10 MiB of bodies in work already: it waits"
        );
        drop(a);
        assert!(
            ready(b.turn()).await.is_some(),
            "its turn once the first is done"
        );
        // Within the budget, batches are worked on together.
        drop(b);
        let c = ready(l.reserve(2)).await.unwrap().received([MIB; 2]);
        let d = ready(l.reserve(2)).await.unwrap().received([MIB; 2]);
        let (mut c, mut d) = (c.unwrap(), d.unwrap());
        assert!(ready(c.turn()).await.is_some());
        assert!(
            ready(d.turn()).await.is_some(),
            "4 MiB of bodies fit the budget together"
        );
        let e = ready(l.reserve(3)).await.unwrap().received([MIB; 3]);
        assert!(
            ready(e.unwrap().turn()).await.is_some(),
            "7 MiB of bodies still fit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn empty_and_dropped_receives_give_everything_back() {
        let l = ledger(MIB, MIB);
        let r = ready(l.reserve(10)).await.unwrap();
        assert_eq!(l.in_use(), (0, MIB));
        assert!(r.received([]).is_none(), "an empty receive holds nothing");
        assert_eq!(l.in_use(), (0, 0));
        let r = ready(l.reserve(10)).await.unwrap();
        drop(r);
        assert_eq!(l.in_use(), (0, 0));
        assert!(ready(l.reserve(10)).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_larger_than_the_budget_is_received_alone() {
        let l = ledger(64 * 1024, MIB);
        let r = ready(l.reserve(10)).await.unwrap();
        assert_eq!(r.messages(), 1);
        let held = r.received([MIB]);
        assert!(ready(l.reserve(10)).await.is_none());
        drop(held);
        assert!(
            ready(l.reserve(10)).await.is_some(),
            "nothing held: it goes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_receive_cap_follows_the_sources_largest() {
        let l = ledger(40 * MIB, MIB);
        assert_eq!(l.max_receives(), 7);
        assert_eq!(l.worst_case(), 40 * MIB + 7 * 10 * MIB);
        l.follow_source_max(256 * 1024);
        assert_eq!(l.max_receives(), 28);
        let tiny = ledger(1 << 20, MIB);
        assert_eq!(tiny.max_receives(), 1, "at least one");
    }

    #[tokio::test(start_paused = true)]
    async fn admission_takes_events_then_bytes() {
        let admission = Admission::default()
            .with_events(Arc::new(Adaptive::fixed(15)))
            .with_bytes(Ledger::new(MIB, 10, MIB));
        let t = ready(admission.admit(10)).await.unwrap();
        assert_eq!(
            t.messages, 1,
            "one message of 1 MiB fits before any is seen"
        );
        assert_eq!(
            t.events.as_ref().map(|p| p.num_permits()),
            Some(1),
            "the events' room follows what may be asked for"
        );
        let none = Admission::default();
        let t = ready(none.admit(10)).await.unwrap();
        assert_eq!(
            (t.messages, t.events.is_none(), t.bytes.is_none()),
            (10, true, true)
        );
    }
}
