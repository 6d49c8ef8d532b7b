//! The per-organization rate limit (`FORWARDER_RATE_LIMIT`): at most N events per window
//! for each organization, as Sentry's data-forwarding base (50 per second).
//!
//! The check never waits: an event over its organization's limit is deferred by itself
//! (its source message hidden until the organization's tokens are back), and every other
//! organization's events go out at once. None is dropped.
//!
//! The limit is a generic cell rate (GCRA): one "theoretical arrival time" per
//! organization, kept in a bounded cache. However many organizations appear, memory
//! stays within [`MAX_ORGANIZATIONS`] entries: the least recently used are evicted
//! (an evicted organization starts again with a full burst, which is all an idle one
//! has anyway), and no call ever scans the map.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use crate::indexer::WriteLimit;
use crate::internal_events::{InternalEvent, RateLimited};
use crate::metrics::Metrics;

/// Organizations whose state is kept at most.
pub const MAX_ORGANIZATIONS: usize = 100_000;

/// `N/DURATION`, e.g. `50/1s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit(pub WriteLimit);

impl std::str::FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let limit = WriteLimit::parse_with_example(s, "50/1s")?;
        if limit.max == 0 || limit.max > u64::from(u32::MAX) {
            return Err(
                "the count must be between 1 and 4294967295; expected N/DURATION, like 50/1s"
                    .into(),
            );
        }
        if limit.window.as_nanos() / u128::from(limit.max) == 0 {
            return Err(format!(
                "{limit} allows more than one event per nanosecond; expected N/DURATION, like 50/1s"
            ));
        }
        Ok(RateLimit(limit))
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Keeps each organization within its rate.
pub struct OrgRateLimiter {
    /// Per organization: its theoretical arrival time, in nanoseconds since `epoch`.
    cells: Cache<u64, Arc<AtomicU64>>,
    /// Nanoseconds between two events at the steady rate (`window / max`).
    interval: u64,
    /// How far ahead of now the arrival time may run: the burst (`max` intervals).
    tolerance: u64,
    /// The clock's zero.
    epoch: Instant,
    /// `forwarder.rate_limited`.
    metrics: Metrics,
}

impl std::fmt::Debug for OrgRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgRateLimiter")
            .field("interval_ns", &self.interval)
            .field("organizations", &self.cells.len())
            .finish()
    }
}

impl OrgRateLimiter {
    /// A limiter for `limit` (refused at start when it rounds to nothing).
    pub fn new(limit: RateLimit, metrics: Metrics) -> Self {
        Self::with_capacity(limit, MAX_ORGANIZATIONS, metrics)
    }

    /// A limiter keeping at most `capacity` organizations.
    pub fn with_capacity(limit: RateLimit, capacity: usize, metrics: Metrics) -> Self {
        let max = limit.0.max.max(1);
        let interval = u64::try_from(limit.0.window.as_nanos() / u128::from(max))
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            cells: Cache::new(capacity.max(1)),
            interval,
            tolerance: interval.saturating_mul(max),
            epoch: Instant::now(),
            metrics,
        }
    }

    /// Takes one token of `org` if it has one; otherwise counts `forwarder.rate_limited`
    /// and says how long until it has one again. Never waits.
    pub fn check(&self, org: u64) -> Result<(), Duration> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let cell = self
            .cells
            .get_or_insert_with(&org, || Ok::<_, Infallible>(Arc::new(AtomicU64::new(0))))
            .unwrap_or_else(|never| match never {});
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            if next - now > self.tolerance {
                let wait = Duration::from_nanos(next - now - self.tolerance);
                RateLimited {
                    organization_id: org,
                    wait,
                }
                .emit(&self.metrics);
                return Err(wait);
            }
            match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Organizations whose state is kept now (at most the capacity).
    pub fn organizations(&self) -> usize {
        self.cells.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: &str) -> OrgRateLimiter {
        OrgRateLimiter::new(limit.parse().unwrap(), Metrics::disabled())
    }

    #[test]
    fn an_organization_over_its_rate_is_told_when_and_others_are_not_held() {
        let l = limiter("4/200ms");
        for _ in 0..4 {
            assert_eq!(l.check(1), Ok(()), "the burst passes at once");
        }
        let wait = l.check(1).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(50),
            "{wait:?}: one interval is 50 ms"
        );
        for _ in 0..4 {
            assert_eq!(l.check(2), Ok(()), "organizations are apart");
        }
        std::thread::sleep(wait + Duration::from_millis(5));
        assert_eq!(l.check(1), Ok(()), "a token is back after the wait");
        assert!(l.check(1).is_err());
    }

    #[test]
    fn state_stays_bounded_however_many_organizations_arrive() {
        let l = OrgRateLimiter::with_capacity("1/1h".parse().unwrap(), 1_000, Metrics::disabled());
        assert_eq!(l.check(7), Ok(()));
        for org in 1_000..51_000 {
            assert_eq!(l.check(org), Ok(()), "a new organization has its burst");
            if org % 100 == 0 {
                // A busy organization keeps its state among the churn.
                assert!(
                    l.check(7).is_err(),
                    "organization 7 lost its state at {org}"
                );
            }
        }
        assert!(l.organizations() <= 1_000, "{}", l.organizations());
    }

    #[test]
    fn limits_that_round_to_nothing_are_refused() {
        assert!("0/1s".parse::<RateLimit>().is_err());
        assert!("50".parse::<RateLimit>().is_err());
        assert!("4000000000/1s".parse::<RateLimit>().is_err());
        assert!("50/1s".parse::<RateLimit>().is_ok());
    }
}
