//! How many events the pool may hold at once: a bound that follows what the queues
//! answer, in the spirit of Vector's adaptive request concurrency and Netflix's
//! concurrency limits (the gradient of response times), with events as its unit.
//!
//! Receiving ahead (a poller receives again while its batches are being settled) pays
//! while the calls' response times stay flat: the answers come no later for the extra
//! batches, so more go through. Once they grow, the queue (or this process's own CPU)
//! is the limit: batches held beyond it only wait, and cost memory and CPU to wait (on
//! LocalStack, 400 events in flight took 10 % more CPU per event than 80 for the same
//! events per second). So [`Adaptive`] starts at one batch per poller and, once per
//! response time (at least [`MIN_INTERVAL`]), compares the average response time of the
//! calls since the last look with the lowest such average lately (the queue's answer
//! without waiting; it drifts up [`DRIFT`] a second, so a slower network is learnt):
//!
//! - at most [`TOLERANCE`] times it, and receives had to wait for room: one batch more;
//! - above it: down in proportion (`TOLERANCE × lowest / average`, at most halving);
//! - a call throttled or failed on the service's side: a tenth off;
//!
//! never going under the floor nor over `FORWARDER_MAX_IN_FLIGHT`. The response times
//! come from every batch call ([`crate::batching`]: sends, deletes, visibility changes),
//! never from a receive, whose long poll says nothing of the queue's load.
//!
//! This module knows nothing of AWS: a call is a duration and whether it was refused
//! for load.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
// tokio's clock: a test on a paused one drives the controller too.
use tokio::time::Instant;

/// How much slower than the lowest recent average the calls may answer before the
/// bound falls: what SQS's own jitter stays within (Netflix's `rttTolerance` is 1.5).
pub const TOLERANCE: f64 = 2.0;

/// How much the lowest recent average rises a second, so a network that became slower
/// for good is learnt (twice as slow within 20 seconds).
pub const DRIFT: f64 = 0.05;

/// What is kept of the bound when a call is refused for load (Vector's
/// `decrease_ratio`).
const REFUSED: f64 = 0.9;

/// What is kept of the bound at least when the calls answer slower.
const MIN_KEPT: f64 = 0.5;

/// The shortest and the longest time between two looks.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// The room for events in flight: a semaphore whose size follows the response times.
#[derive(Debug)]
pub struct Adaptive {
    /// One permit per event held; its size is the bound (less what is still owed).
    permits: Arc<Semaphore>,
    /// The bound never goes under this (one batch per poller).
    floor: usize,
    /// Nor over this (`FORWARDER_MAX_IN_FLIGHT`).
    max: usize,
    /// What it grows by at a time (a batch).
    step: usize,
    /// The controller's state.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The bound now.
    limit: usize,
    /// Permits still to take away: the bound fell while they were in use.
    owed: usize,
    /// Whether a receive waited for room since the last look.
    reached: bool,
    /// Whether a call was refused for load since the last look.
    refused: bool,
    /// Response times since the last look: their sum in seconds, and count.
    sum: f64,
    count: u32,
    /// The lowest average lately, in seconds (drifting up).
    lowest: Option<f64>,
    /// When the last look was taken.
    last: Instant,
    /// When the next look may be taken.
    next: Instant,
}

impl Adaptive {
    /// A bound that starts at `floor` and moves between it and `max`, growing `step`
    /// at a time (each at least 1; a floor over `max` is `max`).
    pub fn new(floor: usize, max: usize, step: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        let floor = floor.clamp(1, max);
        Self {
            permits: Arc::new(Semaphore::new(floor)),
            floor,
            max,
            step: step.max(1),
            state: Mutex::new(State {
                limit: floor,
                owed: 0,
                reached: false,
                refused: false,
                sum: 0.0,
                count: 0,
                lowest: None,
                last: Instant::now(),
                next: Instant::now(),
            }),
        }
    }

    /// A bound that stays at `max`.
    pub fn fixed(max: usize) -> Self {
        Self::new(max, max, 1)
    }

    /// Whether the bound moves at all.
    pub fn adapts(&self) -> bool {
        self.floor < self.max
    }

    /// The bound now.
    pub fn limit(&self) -> usize {
        self.state.lock().map_or(self.max, |s| s.limit)
    }

    /// Its largest value.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Its smallest value: the most one receive may ask room for.
    pub fn floor(&self) -> usize {
        self.floor
    }

    /// Room for `want` events (at most the floor, so it always fits), held until the
    /// permit is dropped; waits while the bound is reached.
    pub async fn admit(&self, want: usize) -> Result<OwnedSemaphorePermit, AcquireError> {
        let want = want.clamp(1, self.floor);
        if self.permits.available_permits() < want {
            if let Ok(mut state) = self.state.lock() {
                state.reached = true;
            }
        }
        // `want` is at most the floor, itself within the semaphore's permit range.
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        self.permits.clone().acquire_many_owned(want).await
    }

    /// A batch call answered after `rtt`; `refused` if it was throttled or failed on
    /// the service's side. Once per response time the bound moves (see the module).
    pub fn observe(&self, rtt: Duration, refused: bool) {
        self.observe_at(Instant::now(), rtt, refused);
    }

    /// [`Adaptive::observe`], at `now`.
    fn observe_at(&self, now: Instant, rtt: Duration, refused: bool) {
        if !self.adapts() {
            return;
        }
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.pay(&self.permits);
        s.sum += rtt.as_secs_f64();
        s.count += 1;
        s.refused |= refused;
        if now < s.next {
            return;
        }
        let average = s.sum / f64::from(s.count);
        let since = now.saturating_duration_since(s.last).as_secs_f64();
        let lowest = s
            .lowest
            .map_or(average, |l| (l * (1.0 + DRIFT * since)).min(average));
        s.lowest = Some(lowest);
        s.last = now;
        if s.refused {
            let to = ((s.limit as f64 * REFUSED) as usize).max(self.floor);
            s.shrink(to, &self.permits, "a call was refused for load");
        } else if average > lowest * TOLERANCE {
            let kept = (TOLERANCE * lowest / average).max(MIN_KEPT);
            let to = ((s.limit as f64 * kept) as usize).max(self.floor);
            s.shrink(to, &self.permits, "the calls answer slower");
        } else if s.reached && s.limit < self.max {
            let to = (s.limit + self.step).min(self.max);
            s.grow(to, &self.permits);
        }
        s.next = now + Duration::from_secs_f64(average).clamp(MIN_INTERVAL, MAX_INTERVAL);
        s.sum = 0.0;
        s.count = 0;
        s.reached = false;
        s.refused = false;
    }
}

impl State {
    /// Takes away what is owed, as far as permits are free.
    fn pay(&mut self, permits: &Semaphore) {
        if self.owed > 0 {
            self.owed -= permits.forget_permits(self.owed);
        }
    }

    fn shrink(&mut self, to: usize, permits: &Semaphore, why: &'static str) {
        if to >= self.limit {
            return;
        }
        self.owed += self.limit - to;
        self.limit = to;
        self.pay(permits);
        tracing::debug!(limit = to, why, "in-flight bound lowered");
    }

    fn grow(&mut self, to: usize, permits: &Semaphore) {
        if to <= self.limit {
            return;
        }
        let mut by = to - self.limit;
        self.limit = to;
        // What is still owed is simply not taken.
        let forgiven = by.min(self.owed);
        self.owed -= forgiven;
        by -= forgiven;
        permits.add_permits(by);
        tracing::debug!(limit = to, "in-flight bound raised");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A controller on a clock of its own.
    struct Clocked {
        a: Adaptive,
        now: Instant,
    }

    impl Clocked {
        fn new(a: Adaptive) -> Self {
            Self {
                a,
                now: Instant::now(),
            }
        }

        /// `n` looks, each after a call of `rtt` (and a wait for room when `busy`),
        /// 20 ms apart.
        fn run(&mut self, n: usize, rtt: Duration, busy: bool, refused: bool) {
            for _ in 0..n {
                if busy {
                    if let Ok(mut s) = self.a.state.lock() {
                        s.reached = true;
                    }
                }
                self.now += 20 * MS;
                self.a.observe_at(self.now, rtt, refused);
            }
        }

        fn free(&self) -> usize {
            self.a.permits.available_permits()
        }
    }

    #[test]
    fn grows_a_batch_at_a_time_while_calls_answer_as_fast_and_room_is_short() {
        let mut c = Clocked::new(Adaptive::new(80, 400, 10));
        assert_eq!(c.a.limit(), 80);
        c.run(5, 3 * MS, true, false);
        assert_eq!(c.a.limit(), 130);
        c.run(100, 3 * MS, true, false);
        assert_eq!(c.a.limit(), 400, "never over the maximum");
        assert_eq!(c.free(), 400);
    }

    #[test]
    fn does_not_grow_when_nobody_waits_for_room_nor_between_two_adjustments() {
        let mut c = Clocked::new(Adaptive::new(80, 400, 10));
        c.run(50, 3 * MS, false, false);
        assert_eq!(c.a.limit(), 80);
        // Calls within one interval count toward one look.
        if let Ok(mut s) = c.a.state.lock() {
            s.reached = true;
        }
        for _ in 0..10 {
            c.a.observe_at(c.now, 3 * MS, false);
        }
        assert_eq!(c.a.limit(), 80);
    }

    #[test]
    fn falls_in_proportion_when_calls_slow_down_and_to_the_floor_when_refused() {
        let mut c = Clocked::new(Adaptive::new(80, 400, 10));
        c.run(40, 3 * MS, true, false);
        let high = c.a.limit();
        assert_eq!(high, 400);
        // Within the tolerance: no fall.
        c.run(1, 5 * MS, true, false);
        assert_eq!(c.a.limit(), 400);
        // The queue is saturated: four times slower, half is kept (2 × 3 / 12).
        c.run(1, 12 * MS, true, false);
        assert_eq!(c.a.limit(), 200);
        // Two and a half times slower: four fifths kept.
        c.run(1, 7500 * MS / 1000, true, false);
        assert_eq!(c.a.limit(), 160);
        // Throttled calls, as fast as ever: down to the floor and no lower.
        c.run(60, 3 * MS, true, true);
        assert_eq!(c.a.limit(), 80);
        assert_eq!(c.free(), 80);
    }

    #[tokio::test]
    async fn permits_in_use_when_the_bound_falls_are_taken_as_they_come_back() {
        let mut c = Clocked::new(Adaptive::new(10, 40, 10));
        c.run(10, MS, true, false);
        assert_eq!(c.a.limit(), 40);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(c.a.admit(10).await.unwrap());
        }
        assert_eq!(c.free(), 0);
        c.run(1, MS, true, true);
        assert_eq!(c.a.limit(), 36);
        drop(held);
        assert_eq!(c.free(), 40, "owed, not yet taken");
        // Taken at the next call: 36 free, not 40.
        c.a.observe_at(c.now, MS, false);
        assert_eq!(c.free(), 36);
        // And a rise first forgives what is owed.
        let c2 = Clocked::new(Adaptive::new(10, 40, 10));
        let mut c2 = c2;
        c2.run(10, MS, true, false);
        let held = c2.a.admit(10).await.unwrap();
        let _all: Vec<_> = futures_util::future::join_all((0..3).map(|_| c2.a.admit(10))).await;
        c2.run(1, MS, true, true);
        assert_eq!(c2.a.limit(), 36);
        c2.run(1, MS, true, false);
        assert_eq!(c2.a.limit(), 40);
        drop(held);
        assert_eq!(c2.free(), 10);
    }

    #[tokio::test]
    async fn a_fixed_bound_never_moves_and_always_admits_a_receive() {
        let mut c = Clocked::new(Adaptive::fixed(400));
        assert!(!c.a.adapts());
        c.run(20, MS, true, true);
        assert_eq!(c.a.limit(), 400);
        // A receive never asks for more than the floor, so it is always admitted.
        let small = Adaptive::new(3, 3, 1);
        assert!(small.admit(10).await.is_ok());
    }
}
