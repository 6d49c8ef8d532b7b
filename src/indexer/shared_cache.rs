//! The shared cache tier: Redis, between the in-process cache and the store, as Sentry's
//! indexer puts its shared Django cache before the database.
//!
//! A process that starts cold (a new pod, a Lambda cold start) finds in Redis the ids
//! every other process already looked up, instead of asking the store for each.
//!
//! - Keys are Sentry's: `:{version}:indexer:org:str:{md5 hex of "{org}:{string}"}` (the
//!   Django cache's `:{version}:` prefix, with no key prefix), the value the id in
//!   decimal. Operators inspect and flush it as they would Sentry's.
//! - Each key lives `ttl` plus up to a quarter more (Sentry's jitter), so keys written
//!   together do not expire together. An id never changes, so a cached id is never
//!   wrong; an eviction only costs a store read.
//! - One `MGET` per batch for every miss; one pipelined `SET … EX` per batch for every
//!   id the store gave, written in the background.
//! - Redis is optional at run time. Each call has a short timeout; a [`Breaker`] stops
//!   asking a Redis that keeps failing and probes it again later. A failure is counted
//!   (`forwarder.indexer.cache.error`) and the lookup goes on to the store: it never
//!   fails an event, and delays it by at most the timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use redis::aio::MultiplexedConnection;

use crate::redis_link::{Failure as LinkFailure, Link, LinkError};

use crate::internal_events::{InternalEvent, SharedCacheAway, SharedCacheBack, SharedCacheError};
use crate::metrics::Metrics;

/// Settings of the shared tier.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedCacheSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS (the system's
    /// root certificates) (`FORWARDER_INDEXER_CACHE_URL`). Never shown: it may hold a
    /// password.
    pub url: String,
    /// The key's version prefix (`FORWARDER_INDEXER_CACHE_VERSION`): bump it to drop
    /// every key at once, as Sentry's cache version does.
    pub version: u32,
    /// How long a key lives, before jitter (`FORWARDER_INDEXER_CACHE_TTL`, Sentry's 2 h).
    pub ttl: Duration,
    /// Bound of every Redis call, connecting included (`FORWARDER_INDEXER_CACHE_TIMEOUT`):
    /// the most a lookup waits for Redis before asking the store.
    pub timeout: Duration,
}

impl std::fmt::Debug for SharedCacheSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCacheSettings")
            .field("url", &crate::redact::url(&self.url, &[]))
            .field("version", &self.version)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why a Redis call gave no answer; the `reason` tag of `forwarder.indexer.cache.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheErrorKind {
    /// No answer within the timeout.
    Timeout,
    /// Connecting failed, or the connection broke.
    Connection,
    /// Redis answered with an error (out of memory, a read-only replica, …).
    Refused,
    /// Not asked: the breaker is open after repeated failures.
    BreakerOpen,
}

impl CacheErrorKind {
    /// The `reason` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheErrorKind::Timeout => "timeout",
            CacheErrorKind::Connection => "connection",
            CacheErrorKind::Refused => "refused",
            CacheErrorKind::BreakerOpen => "breaker_open",
        }
    }
}

/// A Redis call that failed, with what it said (never the URL).
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared cache {}: {message}", kind.as_str())]
pub struct CacheError {
    /// What kind of failure.
    pub kind: CacheErrorKind,
    /// Redis's or the client's words.
    pub message: String,
}

impl CacheError {
    fn new(kind: CacheErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<LinkError> for CacheError {
    fn from(err: LinkError) -> Self {
        let kind = match err.failure() {
            LinkFailure::Timeout => CacheErrorKind::Timeout,
            LinkFailure::Connection => CacheErrorKind::Connection,
            LinkFailure::Refused => CacheErrorKind::Refused,
        };
        CacheError::new(kind, err.message())
    }
}

/// Stops asking a Redis that keeps failing.
///
/// Closed: every call goes. After [`Breaker::THRESHOLD`] failures in a row it opens for
/// a cool-down (1 s, doubling to 30 s while probes keep failing). When the cool-down
/// ends, one call goes as a probe; its success closes the breaker, its failure opens it
/// again.
#[derive(Debug)]
pub struct Breaker {
    /// The state, behind a lock held for a few instructions.
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    /// Failures in a row.
    failures: u32,
    /// Open until then.
    open_until: Option<Instant>,
    /// The next cool-down.
    cooldown: Duration,
    /// A probe is out: others wait for its answer (as if open).
    probing: bool,
}

/// What a failure did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    /// Still closed (or already open).
    No,
    /// It opened now, for this long.
    Opened(Duration),
}

impl Breaker {
    /// Failures in a row that open it.
    pub const THRESHOLD: u32 = 3;
    /// The first cool-down.
    pub const FIRST_COOLDOWN: Duration = Duration::from_secs(1);
    /// The longest cool-down.
    pub const MAX_COOLDOWN: Duration = Duration::from_secs(30);

    /// A closed breaker.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(BreakerState {
                cooldown: Self::FIRST_COOLDOWN,
                ..BreakerState::default()
            }),
        }
    }

    /// Whether a call may go now. When it may go as the probe of an open breaker, it is
    /// the only one until [`Breaker::success`] or [`Breaker::failure`].
    pub fn allow(&self, now: Instant) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        match s.open_until {
            None => true,
            Some(_) if s.probing => false,
            Some(until) if now < until => false,
            Some(_) => {
                s.probing = true;
                true
            }
        }
    }

    /// A call answered. Returns whether this closed an open breaker.
    pub fn success(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let was_open = s.open_until.is_some();
        *s = BreakerState {
            cooldown: Self::FIRST_COOLDOWN,
            ..BreakerState::default()
        };
        was_open
    }

    /// A call failed.
    pub fn failure(&self, now: Instant) -> Tripped {
        let Ok(mut s) = self.state.lock() else {
            return Tripped::No;
        };
        s.failures = s.failures.saturating_add(1);
        if s.probing || (s.open_until.is_none() && s.failures >= Self::THRESHOLD) {
            let cooldown = s.cooldown;
            let first = s.open_until.is_none();
            s.open_until = Some(now + cooldown);
            s.probing = false;
            s.cooldown = (cooldown * 2).min(Self::MAX_COOLDOWN);
            return if first {
                Tripped::Opened(cooldown)
            } else {
                Tripped::No
            };
        }
        Tripped::No
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

/// The Redis key of `string` in organization `org`, under cache version `version`.
pub fn key(version: u32, org: u64, string: &str) -> String {
    let mut hasher = Md5::new();
    hasher.update(org.to_string().as_bytes());
    hasher.update(b":");
    hasher.update(string.as_bytes());
    let digest = hasher.finalize();
    let mut key = String::with_capacity(24 + 32);
    key.push(':');
    key.push_str(&version.to_string());
    key.push_str(":indexer:org:str:");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in digest.iter() {
        key.push(HEX[usize::from(byte >> 4)] as char);
        key.push(HEX[usize::from(byte & 0xf)] as char);
    }
    key
}

/// A key's time to live: `ttl` plus up to a quarter more, as Sentry's `randomized_ttl`.
/// The jitter comes from the key's own hash, so it needs no random source and spreads
/// keys written together evenly.
pub fn ttl_of(key: &str, ttl: Duration) -> u64 {
    let base = ttl.as_secs().max(1);
    let spread = base / 4;
    if spread == 0 {
        return base;
    }
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    base + hash % (spread + 1)
}

/// The shared cache: a Redis link, and the breaker.
pub struct SharedCache {
    /// The connection, each call bounded by the timeout.
    link: Link,
    /// Stops asking a Redis that keeps failing.
    breaker: Breaker,
    /// Version, TTL and timeout.
    settings: SharedCacheSettings,
    /// `forwarder.indexer.cache.error`.
    metrics: Metrics,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SharedCache {
    /// A shared cache on `settings.url`, not yet connected: the first call connects.
    /// Fails only on a URL the client cannot use.
    pub fn new(settings: SharedCacheSettings, metrics: Metrics) -> Result<Arc<Self>, CacheError> {
        let link = Link::new(settings.url.as_str(), settings.timeout).map_err(|e| {
            CacheError::new(
                CacheErrorKind::Refused,
                format!("invalid URL: {}", e.detail().unwrap_or("unusable")),
            )
        })?;
        Ok(Arc::new(Self {
            link,
            breaker: Breaker::new(),
            settings,
            metrics,
        }))
    }

    /// The settings.
    pub fn settings(&self) -> &SharedCacheSettings {
        &self.settings
    }

    /// `PING`, bypassing the breaker: for `check` and the start-up warning.
    pub async fn ping(&self) -> Result<(), CacheError> {
        self.link
            .call(
                |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
            )
            .await
            .map(|_| ())
            .map_err(CacheError::from)
    }

    /// The ids of `keys` (from [`key`]), `None` for a key Redis does not hold. `Err` when
    /// Redis gave no answer: the caller treats every key as a miss.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<u64>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self
            .call(
                |mut conn| async move { redis::cmd("MGET").arg(keys).query_async(&mut conn).await },
            )
            .await?;
        // A value that is not an id (written by something else) is a miss.
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
            .collect())
    }

    /// Writes `entries` (key, id), each with its TTL, in one pipeline.
    pub async fn set_many(&self, entries: &[(String, u64)]) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = self.settings.ttl;
        self.call(|mut conn| async move {
            let mut pipe = redis::pipe();
            for (key, id) in entries {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(*id)
                    .arg("EX")
                    .arg(ttl_of(key, ttl))
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    /// Writes `entries` in the background: the batch that found them does not wait.
    pub fn set_many_later(self: &Arc<Self>, entries: Vec<(String, u64)>) {
        if entries.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache = self.clone();
        runtime.spawn(async move {
            // Failures are counted and logged inside.
            let _ = cache.set_many(&entries).await;
        });
    }

    /// One call through the breaker, bounded by the timeout; failures counted.
    async fn call<'a, T, F, Fut>(&self, f: F) -> Result<T, CacheError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + 'a,
    {
        if !self.breaker.allow(Instant::now()) {
            let err = CacheError::new(CacheErrorKind::BreakerOpen, "not asked");
            SharedCacheError {
                reason: err.kind.as_str(),
                error: &err,
            }
            .emit(&self.metrics);
            return Err(err);
        }
        let result = self.link.call(f).await.map_err(CacheError::from);
        match &result {
            Ok(_) => {
                if self.breaker.success() {
                    SharedCacheBack.emit(&self.metrics);
                }
            }
            Err(err) => {
                SharedCacheError {
                    reason: err.kind.as_str(),
                    error: err,
                }
                .emit(&self.metrics);
                if let Tripped::Opened(cooldown) = self.breaker.failure(Instant::now()) {
                    SharedCacheAway {
                        cooldown,
                        error: err,
                    }
                    .emit(&self.metrics);
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sentrys() {
        // md5("1:release") computed independently (Python: hashlib.md5(b"1:release")).
        let k = key(1, 1, "release");
        assert!(k.starts_with(":1:indexer:org:str:"), "{k}");
        assert_eq!(k.len(), ":1:indexer:org:str:".len() + 32);
        assert_eq!(k, format!(":1:indexer:org:str:{}", md5_hex("1:release")));
        assert_ne!(key(1, 1, "release"), key(1, 2, "release"));
        assert_ne!(key(1, 1, "release"), key(2, 1, "release"));
    }

    fn md5_hex(s: &str) -> String {
        Md5::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn ttls_spread_over_a_quarter_more() {
        let ttl = Duration::from_secs(7200);
        let ttls: Vec<u64> = (0..1000)
            .map(|i| ttl_of(&key(1, 1, &format!("s{i}")), ttl))
            .collect();
        assert!(ttls.iter().all(|&t| (7200..=9000).contains(&t)));
        let distinct: std::collections::HashSet<_> = ttls.iter().collect();
        assert!(distinct.len() > 500, "{}", distinct.len());
        assert_eq!(ttl_of("k", Duration::from_secs(2)), 2);
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_probes_once() {
        let b = Breaker::new();
        let t0 = Instant::now();
        assert!(b.allow(t0));
        assert_eq!(b.failure(t0), Tripped::No);
        assert_eq!(b.failure(t0), Tripped::No);
        assert_eq!(b.failure(t0), Tripped::Opened(Breaker::FIRST_COOLDOWN));
        assert!(!b.allow(t0 + Duration::from_millis(500)));
        // Cool-down over: one probe, the others wait.
        let later = t0 + Duration::from_millis(1001);
        assert!(b.allow(later));
        assert!(!b.allow(later));
        // The probe fails: open again, for longer.
        assert_eq!(b.failure(later), Tripped::No);
        assert!(!b.allow(later + Duration::from_millis(1500)));
        let probe = later + Duration::from_millis(2001);
        assert!(b.allow(probe));
        assert!(b.success(), "a successful probe closes it");
        assert!(b.allow(probe));
        assert!(!b.success(), "already closed");
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new();
        let t0 = Instant::now();
        b.failure(t0);
        b.failure(t0);
        b.success();
        assert_eq!(b.failure(t0), Tripped::No);
        assert!(b.allow(t0));
    }

    #[test]
    fn settings_never_show_the_password() {
        let s = SharedCacheSettings {
            url: "redis://user:hunter2@cache:6379/0".into(),
            version: 1,
            ttl: Duration::from_secs(7200),
            timeout: Duration::from_millis(50),
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("cache:6379"), "{shown}");
    }
}
