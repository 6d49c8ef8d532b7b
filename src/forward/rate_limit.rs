//! The per-organization rate limit (`FORWARDER_RATE_LIMIT`): at most N events per window
//! for each organization, as Sentry's data-forwarding base (50 per second). Events over
//! the limit wait for their turn; none is dropped.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota};

use crate::indexer::WriteLimit;
use crate::metrics::{Counter, Metrics};

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
        Ok(RateLimit(limit))
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Keeps each organization within its rate.
#[derive(Debug)]
pub struct OrgRateLimiter {
    /// One generic cell rate per organization: `max` at once, then one every
    /// `window / max`.
    limiter: DefaultKeyedRateLimiter<u64>,
    /// `forwarder.rate_limited`.
    metrics: Metrics,
}

impl OrgRateLimiter {
    /// A limiter for `limit`.
    pub fn new(limit: RateLimit, metrics: Metrics) -> Option<Self> {
        let max = NonZeroU32::new(u32::try_from(limit.0.max).ok()?)?;
        let quota = Quota::with_period(limit.0.window / max.get())?.allow_burst(max);
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            metrics,
        })
    }

    /// Waits until `org` may send one more event.
    pub async fn until_ready(&self, org: u64) {
        if self.limiter.check_key(&org).is_ok() {
            return;
        }
        self.metrics.incr(Counter::RateLimited);
        self.limiter.until_key_ready(&org).await;
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn an_organization_over_its_rate_waits_and_others_do_not() {
        let limit: RateLimit = "4/200ms".parse().unwrap();
        let l = OrgRateLimiter::new(limit, Metrics::disabled()).unwrap();
        let started = Instant::now();
        for _ in 0..4 {
            l.until_ready(1).await;
        }
        assert!(
            started.elapsed() < Duration::from_millis(40),
            "the burst passes at once"
        );
        for _ in 0..4 {
            l.until_ready(2).await;
        }
        assert!(
            started.elapsed() < Duration::from_millis(40),
            "organizations are apart"
        );
        for _ in 0..4 {
            l.until_ready(1).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "over the rate it waits"
        );
        assert!("0/1s".parse::<RateLimit>().is_err());
        assert!("50".parse::<RateLimit>().is_err());
    }
}
