//! The idempotency store on Redis (`redis://`, `rediss://`).
//!
//! Each key is `fwd:` and [`super::key`]; its value `d` once done, or
//! `c:{token}:{lease end, ms}` while claimed, the time Redis's own (`TIME`), so the
//! workers' clocks do not matter. Every key written lives the TTL (`PX`), so Redis
//! removes them itself.
//!
//! A claim is one script over the batch's keys (one `EVALSHA`, atomic); a mark is one
//! pipeline of `SET … PX`; a release one script. The keys of one call must live on one
//! node: a Redis primary (with replicas), not a Cluster.

use std::time::Duration;

use super::{Claim, Store, StoreError, StoreErrorKind};
use crate::redis_link::{Failure as LinkFailure, Link, LinkError};

/// Claims each of KEYS. ARGV: token, lease ms, ttl ms. Answers per key: -1 done, -2
/// claimed afresh, -3 taken over, or the ms left of another's lease.
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local claim = 'c:' .. ARGV[1] .. ':' .. (now + tonumber(ARGV[2]))
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == 'd' then
    out[i] = -1
  else
    local holder, till = nil, 0
    if v then
      holder, till = string.match(v, '^c:(.+):(%d+)$')
      till = tonumber(till) or 0
    end
    if v and holder ~= ARGV[1] and till > now then
      out[i] = till - now
    else
      redis.call('SET', key, claim, 'PX', ARGV[3])
      if v and holder ~= ARGV[1] then out[i] = -3 else out[i] = -2 end
    end
  end
end
return out
";

/// Deletes each of KEYS still claimed by ARGV[1].
const RELEASE: &str = r"
local mine = 'c:' .. ARGV[1] .. ':'
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #mine) == mine then redis.call('DEL', key) end
end
return 0
";

/// The prefix of every key.
const PREFIX: &str = "fwd:";

/// Redis as the idempotency store.
pub struct RedisStore {
    /// The connection, each call bounded by `FORWARDER_IDEMPOTENCY_TIMEOUT`.
    link: Link,
    /// The claim script (sent by its SHA, loaded when Redis does not know it).
    claim: redis::Script,
    /// The release script.
    release: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl From<LinkError> for StoreError {
    fn from(err: LinkError) -> Self {
        let kind = match err.failure() {
            LinkFailure::Timeout => StoreErrorKind::Timeout,
            LinkFailure::Connection => StoreErrorKind::Connection,
            LinkFailure::Refused => StoreErrorKind::Refused,
        };
        StoreError::new(kind, err.message())
    }
}

impl RedisStore {
    /// A store on `url`, not yet connected: the first call connects. Fails only on a
    /// URL the client cannot use.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let link = Link::new(url, timeout).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Refused,
                format!("invalid URL: {}", e.detail().unwrap_or("unusable")),
            )
        })?;
        Ok(Self {
            link,
            claim: redis::Script::new(CLAIM),
            release: redis::Script::new(RELEASE),
        })
    }
}

fn prefixed(keys: &[String]) -> Vec<String> {
    keys.iter().map(|k| format!("{PREFIX}{k}")).collect()
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

#[async_trait::async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn claim(
        &self,
        keys: &[String],
        token: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &prefixed(keys);
        let answers: Vec<i64> = self
            .link
            .call(|mut conn| async move {
                let mut call = self.claim.prepare_invoke();
                call.key(keys).arg(token).arg(ms(lease)).arg(ms(ttl));
                call.invoke_async(&mut conn).await
            })
            .await?;
        if answers.len() != keys.len() {
            return Err(StoreError::new(
                StoreErrorKind::Refused,
                format!("{} answers for {} keys", answers.len(), keys.len()),
            ));
        }
        Ok(answers
            .into_iter()
            .map(|a| match a {
                -1 => Claim::Done,
                -3 => Claim::TakenOver,
                left if left > 0 => Claim::Held(Duration::from_millis(left as u64)),
                _ => Claim::New,
            })
            .collect())
    }

    async fn mark(&self, keys: &[String], ttl: Duration) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys = &prefixed(keys);
        self.link
            .call(|mut conn| async move {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg("d")
                        .arg("PX")
                        .arg(ms(ttl))
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            })
            .await
            .map_err(StoreError::from)
    }

    async fn release(&self, keys: &[String], token: &str) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys = &prefixed(keys);
        self.link
            .call(|mut conn| async move {
                let mut call = self.release.prepare_invoke();
                call.key(keys).arg(token);
                call.invoke_async::<i64>(&mut conn).await
            })
            .await
            .map(|_| ())
            .map_err(StoreError::from)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.link
            .call(
                |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
            )
            .await
            .map(|_| ())
            .map_err(StoreError::from)
    }
}
