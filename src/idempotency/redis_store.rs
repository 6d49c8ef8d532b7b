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

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::{Claim, Store, StoreError, StoreErrorKind};

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
    /// Parses the URL once, opens connections.
    client: redis::Client,
    /// The open connection, shared by every worker; `None` until the first call and
    /// after a failure, so the next call reconnects.
    connection: Mutex<Option<MultiplexedConnection>>,
    /// Serialises reconnecting: a failing Redis sees one attempt, not one per worker.
    connecting: tokio::sync::Mutex<()>,
    /// The claim script (sent by its SHA, loaded when Redis does not know it).
    claim: redis::Script,
    /// The release script.
    release: redis::Script,
    /// Bound of every call, connecting included (`FORWARDER_IDEMPOTENCY_TIMEOUT`).
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        // RedisError's Display holds no URL: only the kind, code and detail.
        let kind = if err.is_timeout() {
            StoreErrorKind::Timeout
        } else if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
        {
            StoreErrorKind::Connection
        } else {
            StoreErrorKind::Refused
        };
        StoreError::new(kind, err.to_string())
    }
}

impl RedisStore {
    /// A store on `url`, not yet connected: the first call connects. Fails only on a
    /// URL the client cannot use.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Refused,
                format!("invalid URL: {}", e.detail().unwrap_or("unusable")),
            )
        })?;
        Ok(Self {
            client,
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            claim: redis::Script::new(CLAIM),
            release: redis::Script::new(RELEASE),
            timeout,
        })
    }

    /// `f` on the connection, within the timeout; a failure drops the connection.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = match self.connection().await {
            Ok(conn) => self.bounded(f(conn)).await,
            Err(err) => Err(err),
        };
        if result.is_err() {
            if let Ok(mut slot) = self.connection.lock() {
                *slot = None;
            }
        }
        result
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(StoreError::from(err)),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let current = || self.connection.lock().ok().and_then(|c| c.clone());
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let _one = self.connecting.lock().await;
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .bounded(
                self.client
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await?;
        if let Ok(mut slot) = self.connection.lock() {
            *slot = Some(conn.clone());
        }
        Ok(conn)
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
        self.call(|mut conn| async move {
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
    }

    async fn release(&self, keys: &[String], token: &str) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys = &prefixed(keys);
        self.call(|mut conn| async move {
            let mut call = self.release.prepare_invoke();
            call.key(keys).arg(token);
            call.invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await
        .map(|_| ())
    }
}
