//! Route pause: a destination that answers an error making it unusable (a missing
//! queue or bucket, denied access, an unusable KMS key: [`ErrorClass::is_route_level`])
//! stops being sent to. Its events stay in the source queue, deferred until the next
//! probe; other routes keep flowing. The route is probed with backoff (GetQueueAttributes,
//! or HeadBucket for a bucket) by the next batch that reaches it once the wait is over,
//! and forwarding resumes by itself: a successful probe lets a send through, and the
//! first accepted event ends the pause. A send that fails again pauses the route again,
//! with a longer wait.
//!
//! The gauge `forwarder.route.paused{route}` is 1 while a route is paused, and
//! [`Pauses`] tells the readiness probe when every route is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::aws::AwsError;
use crate::internal_events::{InternalEvent, RoutePaused, RouteResumed};
use crate::metrics::{Gauge, Metrics};
use crate::outcome::ErrorClass;
use crate::retry::{RetryPolicy, Schedule};

/// How many routes exist and how many are paused, for `/readyz`.
#[derive(Debug, Default)]
pub struct Pauses {
    /// Routes built.
    routes: AtomicUsize,
    /// Routes paused now.
    paused: AtomicUsize,
}

impl Pauses {
    /// Whether there are routes and every one is paused: nothing can be forwarded.
    pub fn all_paused(&self) -> bool {
        let routes = self.routes.load(Ordering::SeqCst);
        routes > 0 && self.paused.load(Ordering::SeqCst) >= routes
    }
}

/// What a batch may do with a route now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Send.
    Open,
    /// The route is paused and its probe is due: this caller probes it, then reports
    /// with [`RouteGate::probed`].
    Probe,
    /// The route is paused: defer the events this long (until the next probe).
    Closed(Duration),
}

/// Why and since when a route is paused.
#[derive(Debug)]
struct Paused {
    /// The error class that paused it: decides the probe.
    class: ErrorClass,
    /// Waits between probes; it keeps growing until an event is accepted again.
    schedule: Schedule,
    /// When the next probe is due.
    next_probe: Instant,
    /// A probe is running.
    probing: bool,
    /// The last probe passed: sends go through until one is accepted (the pause ends)
    /// or fails again (the route pauses, with a longer wait).
    trial: bool,
}

/// The pause state of one route.
#[derive(Debug)]
pub struct RouteGate {
    /// The route's name in logs and in the gauge's `route` tag (the queue's name).
    route: &'static str,
    /// `None`: open.
    state: Mutex<Option<Paused>>,
    /// The waits between probes: from the retry policy's initial to its largest interval.
    policy: RetryPolicy,
    /// Shared with the readiness probe.
    pauses: Arc<Pauses>,
    /// Where the gauge goes.
    metrics: Metrics,
}

impl RouteGate {
    /// An open gate for the route to `queue_url`, counted in `pauses`.
    pub fn new(
        queue_url: &str,
        policy: RetryPolicy,
        pauses: Arc<Pauses>,
        metrics: Metrics,
    ) -> Self {
        pauses.routes.fetch_add(1, Ordering::SeqCst);
        let name = queue_url
            .rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or(queue_url);
        // One name per route, built once at start: leaking it gives the metric tag the
        // 'static lifetime every other tag has.
        let route: &'static str = Box::leak(name.to_string().into_boxed_str());
        metrics.gauge(Gauge::RoutePaused { route }, 0);
        Self {
            route,
            state: Mutex::new(None),
            policy,
            pauses,
            metrics,
        }
    }

    /// The route's name.
    pub fn route(&self) -> &'static str {
        self.route
    }

    /// What a batch may do now.
    pub fn check(&self) -> Gate {
        let Ok(mut state) = self.state.lock() else {
            return Gate::Open;
        };
        let Some(paused) = state.as_mut() else {
            return Gate::Open;
        };
        if paused.trial {
            return Gate::Open;
        }
        let now = Instant::now();
        if now >= paused.next_probe && !paused.probing {
            paused.probing = true;
            return Gate::Probe;
        }
        Gate::Closed(paused.next_probe.saturating_duration_since(now))
    }

    /// The error class the route paused on, if paused (decides what to probe).
    pub fn paused_on(&self) -> Option<ErrorClass> {
        self.state.lock().ok()?.as_ref().map(|p| p.class)
    }

    /// How long until the next probe, if paused.
    pub fn retry_in(&self) -> Option<Duration> {
        let state = self.state.lock().ok()?;
        state
            .as_ref()
            .map(|p| p.next_probe.saturating_duration_since(Instant::now()))
    }

    /// A send ended with an error that makes the route unusable: pause it (or, if it
    /// was on trial after a probe, pause it again with a longer wait).
    pub fn pause(&self, err: &AwsError) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match state.as_mut() {
            Some(paused) if paused.trial => {
                paused.trial = false;
                paused.class = err.class;
                let wait = next_wait(&mut paused.schedule, &self.policy);
                paused.next_probe = Instant::now() + wait;
                self.paused_event(err, wait, true);
            }
            Some(_) => {}
            None => {
                let mut schedule = self.policy.endless();
                let wait = next_wait(&mut schedule, &self.policy);
                *state = Some(Paused {
                    class: err.class,
                    schedule,
                    next_probe: Instant::now() + wait,
                    probing: false,
                    trial: false,
                });
                self.pauses.paused.fetch_add(1, Ordering::SeqCst);
                self.paused_event(err, wait, false);
            }
        }
    }

    /// The probe a [`Gate::Probe`] asked for ended.
    pub fn probed(&self, result: Result<(), AwsError>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let Some(paused) = state.as_mut() else {
            return;
        };
        paused.probing = false;
        match result {
            Ok(()) => {
                paused.trial = true;
                tracing::info!(route = self.route, "route probe passed: sending again");
            }
            Err(err) => {
                let wait = next_wait(&mut paused.schedule, &self.policy);
                paused.next_probe = Instant::now() + wait;
                tracing::warn!(route = self.route, class = err.class.as_str(), code = err.code.as_deref().unwrap_or(""), wait_ms = wait.as_millis() as u64, error = %err, "route probe failed: still paused");
            }
        }
    }

    /// An event was accepted: the pause, if any, is over.
    pub fn accepted(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.take().is_some() {
            self.pauses.paused.fetch_sub(1, Ordering::SeqCst);
            RouteResumed { route: self.route }.emit(&self.metrics);
        }
    }

    fn paused_event(&self, err: &AwsError, wait: Duration, again: bool) {
        RoutePaused {
            route: self.route,
            class: err.class,
            code: err.code.as_deref(),
            wait,
            error: err,
            again,
        }
        .emit(&self.metrics);
    }
}

fn next_wait(schedule: &mut Schedule, policy: &RetryPolicy) -> Duration {
    schedule.next_delay().unwrap_or(policy.max_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(pauses: &Arc<Pauses>) -> RouteGate {
        let policy = RetryPolicy {
            initial_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(40),
            max_elapsed: Duration::from_secs(1),
        };
        RouteGate::new(
            "http://127.0.0.1:4566/000000000000/events",
            policy,
            pauses.clone(),
            Metrics::disabled(),
        )
    }

    fn missing() -> AwsError {
        AwsError {
            operation: crate::outcome::Operation::Send,
            class: ErrorClass::QueueNotFound,
            code: Some("QueueDoesNotExist".into()),
            message: "gone".into(),
        }
    }

    #[test]
    fn a_paused_route_is_probed_after_its_wait_and_resumes_on_acceptance() {
        let pauses = Arc::new(Pauses::default());
        let g = gate(&pauses);
        let other = gate(&pauses);
        assert_eq!(g.route(), "events");
        assert_eq!(g.check(), Gate::Open);
        g.pause(&missing());
        assert!(matches!(g.check(), Gate::Closed(_)));
        assert!(!pauses.all_paused(), "one of two routes is paused");
        assert_eq!(other.check(), Gate::Open, "routes are apart");
        std::thread::sleep(Duration::from_millis(45));
        assert_eq!(g.check(), Gate::Probe);
        assert!(matches!(g.check(), Gate::Closed(_)), "one probe at a time");
        g.probed(Err(missing()));
        assert!(matches!(g.check(), Gate::Closed(_)));
        std::thread::sleep(Duration::from_millis(65));
        assert_eq!(g.check(), Gate::Probe);
        g.probed(Ok(()));
        assert_eq!(g.check(), Gate::Open, "on trial after the probe");
        assert_eq!(g.paused_on(), Some(ErrorClass::QueueNotFound));
        g.accepted();
        assert_eq!(g.paused_on(), None);
        assert_eq!(g.check(), Gate::Open);
    }

    #[test]
    fn a_trial_that_fails_pauses_again_and_every_route_paused_is_reported() {
        let pauses = Arc::new(Pauses::default());
        let g = gate(&pauses);
        g.pause(&missing());
        assert!(pauses.all_paused());
        std::thread::sleep(Duration::from_millis(45));
        assert_eq!(g.check(), Gate::Probe);
        g.probed(Ok(()));
        g.pause(&missing());
        assert!(matches!(g.check(), Gate::Closed(_)));
        assert!(pauses.all_paused());
        g.accepted();
        assert!(!pauses.all_paused());
    }
}
