//! The per-organization write limit: at most `max` new strings per `window`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

/// Longest string the store takes, in characters (Sentry's limit).
pub const MAX_STRING_CHARS: usize = 200;

/// Why a string gets no id before the store is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over [`MAX_STRING_CHARS`] characters.
    TooLong,
    /// A string the store's schema cannot hold: U+0000 (PostgreSQL's text refuses it),
    /// or a lone surrogate escape (see [`crate::event::UNREPRESENTABLE`]).
    InvalidString,
}

impl Refusal {
    /// The `reason` tag of `forwarder.indexer.refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooLong => "too_long",
            Refusal::InvalidString => "invalid_string",
        }
    }
}

/// Whether the store can hold `s`; checked for every string before the store sees it,
/// so one bad string never fails the statement that carries its batch.
pub fn refusal(s: &str) -> Option<Refusal> {
    if s.len() > MAX_STRING_CHARS && s.chars().count() > MAX_STRING_CHARS {
        Some(Refusal::TooLong)
    } else if s.as_bytes().contains(&0) {
        Some(Refusal::InvalidString)
    } else {
        None
    }
}

/// `N/DURATION`, e.g. `1000/10s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimit {
    /// New strings allowed per window.
    pub max: u64,
    /// The window.
    pub window: Duration,
}

impl WriteLimit {
    /// Parses `N/DURATION`; `example` shows the expected form in errors.
    pub fn parse_with_example(s: &str, example: &str) -> Result<Self, String> {
        let expected = format!("expected N/DURATION, like {example}");
        let (max, window) = s.trim().split_once('/').ok_or_else(|| expected.clone())?;
        let max: u64 = max
            .trim()
            .parse()
            .map_err(|_| format!("{max:?} is not a count; {expected}"))?;
        let window = humantime::parse_duration(window.trim())
            .map_err(|e| format!("{window:?}: {e}; {expected}"))?;
        if window.is_zero() {
            return Err(format!("the window must be longer than zero; {expected}"));
        }
        Ok(WriteLimit { max, window })
    }
}

impl std::str::FromStr for WriteLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse_with_example(s, "1000/10s")
    }
}

impl std::fmt::Display for WriteLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.max,
            humantime::format_duration(self.window)
        )
    }
}

/// Organizations whose write window is kept at most: past it the least recently used
/// are evicted (an evicted organization starts a fresh window), so memory stays bounded
/// however many organization ids arrive, and no call scans the map.
pub const MAX_ORGANIZATIONS: usize = 100_000;

/// Counts new strings per organization in fixed windows.
pub struct WriteLimiter {
    /// `None`: no limit.
    limit: Option<WriteLimit>,
    /// Per organization: when its window started, and how many it used.
    windows: Cache<u64, Arc<Mutex<(Instant, u64)>>>,
}

impl std::fmt::Debug for WriteLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLimiter")
            .field("limit", &self.limit)
            .field("organizations", &self.windows.len())
            .finish()
    }
}

impl WriteLimiter {
    /// A limiter; `None` admits everything.
    pub fn new(limit: Option<WriteLimit>) -> Self {
        Self::with_capacity(limit, MAX_ORGANIZATIONS)
    }

    /// A limiter keeping at most `capacity` organizations' windows.
    pub fn with_capacity(limit: Option<WriteLimit>, capacity: usize) -> Self {
        Self {
            limit,
            windows: Cache::new(capacity.max(1)),
        }
    }

    /// How many of `wanted` new strings `org` may create now; they are counted as used.
    pub fn admit(&self, org: u64, wanted: usize) -> usize {
        let Some(limit) = self.limit else {
            return wanted;
        };
        let now = Instant::now();
        let window = self
            .windows
            .get_or_insert_with(&org, || Ok::<_, Infallible>(Arc::new(Mutex::new((now, 0)))))
            .unwrap_or_else(|never| match never {});
        let Ok(mut window) = window.lock() else {
            return 0;
        };
        let (start, used) = &mut *window;
        if now.duration_since(*start) >= limit.window {
            *start = now;
            *used = 0;
        }
        let admitted = (limit.max.saturating_sub(*used)).min(wanted as u64);
        *used += admitted;
        admitted as usize
    }

    /// Organizations whose window is kept now (at most the capacity).
    pub fn organizations(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_the_store_cannot_hold_are_refused() {
        assert_eq!(refusal("production"), None);
        assert_eq!(refusal(&"é".repeat(200)), None, "200 characters, 400 bytes");
        assert_eq!(refusal(&"a".repeat(201)), Some(Refusal::TooLong));
        assert_eq!(refusal("a\0b"), Some(Refusal::InvalidString));
        let marked = format!("{}\"\\ud944\"", crate::event::UNREPRESENTABLE);
        assert_eq!(refusal(&marked), Some(Refusal::InvalidString));
    }

    #[test]
    fn parses() {
        assert_eq!(
            "1000/10s".parse(),
            Ok(WriteLimit {
                max: 1000,
                window: Duration::from_secs(10)
            })
        );
        assert!("1000".parse::<WriteLimit>().is_err());
        assert!("x/10s".parse::<WriteLimit>().is_err());
        assert!("5/0s".parse::<WriteLimit>().is_err());
    }

    #[test]
    fn caps_each_organization_per_window() {
        let l = WriteLimiter::new(Some(WriteLimit {
            max: 10,
            window: Duration::from_millis(200),
        }));
        assert_eq!(l.admit(1, 7), 7);
        assert_eq!(l.admit(1, 7), 3);
        assert_eq!(l.admit(1, 1), 0);
        assert_eq!(
            l.admit(2, 10),
            10,
            "another organization has its own window"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(l.admit(1, 4), 4, "a new window");
        assert_eq!(WriteLimiter::new(None).admit(1, 1_000_000), 1_000_000);
    }

    #[test]
    fn state_stays_bounded_however_many_organizations_arrive() {
        let limit = WriteLimit {
            max: 1,
            window: Duration::from_secs(3600),
        };
        let l = WriteLimiter::with_capacity(Some(limit), 1_000);
        for org in 0..50_000 {
            assert_eq!(l.admit(org, 1), 1);
        }
        assert!(l.organizations() <= 1_000, "{}", l.organizations());
    }
}
