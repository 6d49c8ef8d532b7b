//! The per-organization write limit: at most `max` new strings per `window`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest string the store takes, in characters (Sentry's limit).
pub const MAX_STRING_CHARS: usize = 200;

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

/// Counts new strings per organization in fixed windows.
#[derive(Debug)]
pub struct WriteLimiter {
    /// `None`: no limit.
    limit: Option<WriteLimit>,
    /// Per organization: when its window started, and how many it used.
    windows: Mutex<HashMap<u64, (Instant, u64)>>,
}

impl WriteLimiter {
    /// A limiter; `None` admits everything.
    pub fn new(limit: Option<WriteLimit>) -> Self {
        Self {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// How many of `wanted` new strings `org` may create now; they are counted as used.
    pub fn admit(&self, org: u64, wanted: usize) -> usize {
        let Some(limit) = self.limit else {
            return wanted;
        };
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return 0;
        };
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < limit.window);
        }
        let (start, used) = windows.entry(org).or_insert((now, 0));
        if now.duration_since(*start) >= limit.window {
            *start = now;
            *used = 0;
        }
        let admitted = (limit.max.saturating_sub(*used)).min(wanted as u64);
        *used += admitted;
        admitted as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
