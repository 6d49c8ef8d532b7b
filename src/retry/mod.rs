//! The one retry layer: how long to wait between tries ([`RetryPolicy`], [`Schedule`]),
//! a call retried ([`retry`]), and a batch call whose failed entries alone are sent
//! again ([`retry_batch`]). It knows nothing of AWS: whether an error is worth another
//! try is the error's own [`Classified::class`] (decided for AWS in
//! [`crate::aws::classify()`]).
//!
//! The SDK's own retries are off (see [`crate::aws`]); everything is retried here, so a
//! call is never retried twice over and every retry is counted.
//!
//! The `backoff` crate supplies the exponential schedule with jitter. It is flagged
//! unmaintained (RUSTSEC-2025-0012), so nothing outside this module names it: swapping
//! it touches this file only.

mod batch;

use std::future::Future;
use std::time::Duration;

// tokio's clock: a test on a paused one drives the deadline too.
use tokio::time::Instant;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;

pub use batch::{retry_batch, retry_batch_rebuilt, BatchReply};

use crate::internal_events::{InternalEvent, RetryScheduled};
use crate::metrics::Metrics;
use crate::outcome::{ErrorClass, Operation};

/// Bounds of the exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Wait before the first retry (`FORWARDER_RETRY_INITIAL_INTERVAL`).
    pub initial_interval: Duration,
    /// Longest single wait (`FORWARDER_RETRY_MAX_INTERVAL`).
    pub max_interval: Duration,
    /// Give up once this much time has passed since the first try
    /// (`FORWARDER_RETRY_MAX_ELAPSED`); the message is then left to the queue.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A fresh schedule, started now.
    pub fn schedule(&self) -> Schedule {
        Schedule::new(self.backoff())
    }

    /// A schedule with no time bound, for a loop that must outlast any outage (the
    /// receive loop): the waits grow to `max_interval` and stay there.
    pub fn endless(&self) -> Schedule {
        let mut backoff = self.backoff();
        backoff.max_elapsed_time = None;
        Schedule::new(backoff)
    }

    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoff {
            current_interval: self.initial_interval,
            initial_interval: self.initial_interval,
            randomization_factor: 0.5,
            multiplier: 2.0,
            max_interval: self.max_interval,
            max_elapsed_time: Some(self.max_elapsed),
            ..ExponentialBackoff::default()
        }
    }
}

/// The waits of one retried operation: exponential, jittered, bounded in total time.
#[derive(Debug)]
pub struct Schedule {
    /// The exponential waits and their time bound.
    backoff: ExponentialBackoff,
    /// The task's deadline when the schedule started (see [`within_deadline`]).
    deadline: Option<Instant>,
}

impl Schedule {
    fn new(backoff: ExponentialBackoff) -> Self {
        Self {
            backoff,
            deadline: DEADLINE.try_with(|d| *d).ok(),
        }
    }

    /// The wait before the next try, or `None` once the time bound is spent (or the
    /// wait would end past the task's deadline).
    pub fn next_delay(&mut self) -> Option<Duration> {
        let wait = self.backoff.next_backoff()?;
        match self.deadline {
            Some(deadline) if Instant::now() + wait >= deadline => None,
            _ => Some(wait),
        }
    }
}

/// An error that knows whether it is worth trying again.
pub trait Classified {
    /// Its class; [`ErrorClass::is_retryable`] decides.
    fn class(&self) -> ErrorClass;
}

/// Runs `op` until it succeeds, fails permanently, or `policy`'s time bound (or the
/// task's [`within_deadline`]) is spent.
///
/// Each retry is logged and counted as `forwarder.retry{operation, class}`.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    operation: Operation,
    metrics: &Metrics,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Classified + std::fmt::Display,
{
    let mut schedule = policy.schedule();
    loop {
        let err = match op().await {
            Ok(value) => return Ok(value),
            Err(err) if !err.class().is_retryable() => return Err(err),
            Err(err) => err,
        };
        match schedule.next_delay() {
            Some(wait) => {
                RetryScheduled {
                    operation,
                    class: err.class(),
                    error: &err,
                    wait,
                }
                .emit(metrics);
                tokio::time::sleep(wait).await;
            }
            None => return Err(err),
        }
    }
}

tokio::task_local! {
    /// When every retry of the current task must be over: a Lambda invocation's
    /// deadline, less a margin. Unset: only the policies bound the retries.
    static DEADLINE: Instant;
}

/// Runs `work` with every retry inside it bounded by `deadline` as well as by its
/// policy: a wait that would end past it is not waited, and the failure is returned.
pub async fn within_deadline<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct E(ErrorClass);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0.as_str())
        }
    }
    impl Classified for E {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
            max_elapsed: Duration::from_millis(200),
        }
    }

    #[test]
    fn an_endless_schedule_grows_to_the_cap_and_never_ends() {
        let policy = RetryPolicy {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(2),
            max_elapsed: Duration::from_millis(1),
        };
        let mut bounded = policy.schedule();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(bounded.next_delay(), None, "the bounded schedule ends");
        let mut endless = policy.endless();
        std::thread::sleep(Duration::from_millis(5));
        let waits: Vec<Duration> = (0..20).map(|_| endless.next_delay().unwrap()).collect();
        assert!(waits[0] <= Duration::from_millis(150), "{waits:?}");
        // Jitter is ±50% around an interval capped at 2 s.
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(3)),
            "{waits:?}"
        );
        assert!(
            waits[10..].iter().all(|w| *w >= Duration::from_secs(1)),
            "{waits:?}"
        );
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicUsize::new(0);
        let out: Result<u32, E> = retry(&fast(), Operation::Send, &Metrics::disabled(), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(E(ErrorClass::Throttled))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(out.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let out: Result<u32, E> = retry(&fast(), Operation::Send, &Metrics::disabled(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(E(ErrorClass::Rejected))
        })
        .await;
        assert!(matches!(out, Err(E(ErrorClass::Rejected))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retries_stop_at_the_time_bound() {
        let started = std::time::Instant::now();
        let out: Result<u32, E> = retry(&fast(), Operation::Send, &Metrics::disabled(), || async {
            Err(E(ErrorClass::ServerError))
        })
        .await;
        assert!(matches!(out, Err(E(ErrorClass::ServerError))));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// On tokio's paused clock: the waits take exactly their time, so the bound holds to
    /// the millisecond, whatever else the machine does.
    #[tokio::test(start_paused = true)]
    async fn retries_end_at_the_tasks_deadline() {
        let slow = RetryPolicy {
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(60),
        };
        let started = Instant::now();
        let out: Result<u32, E> = within_deadline(
            Instant::now() + Duration::from_millis(400),
            retry(&slow, Operation::Send, &Metrics::disabled(), || async {
                Err(E(ErrorClass::Throttled))
            }),
        )
        .await;
        assert!(matches!(out, Err(E(ErrorClass::Throttled))));
        assert!(
            started.elapsed() < Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn schedule_grows_and_ends() {
        let policy = RetryPolicy {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
            max_elapsed: Duration::from_millis(0),
        };
        let mut s = policy.schedule();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(s.next_delay(), None);

        let mut s = RetryPolicy::default().schedule();
        let first = s.next_delay().unwrap_or_default();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
        let later: Vec<Duration> = (0..10).filter_map(|_| s.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_secs(15)));
        assert!(later.last().copied().unwrap_or_default() > first);
    }
}
