//! The idempotency store on PostgreSQL (`postgres://`).
//!
//! One table, created at connect if missing:
//!
//! ```sql
//! forwarder_idempotency (key text primary key, token text, lease_until timestamptz,
//!                        expires_at timestamptz)
//! ```
//!
//! `token` is the claim's, `NULL` once done; times are the server's (`clock_timestamp()`),
//! so the workers' clocks do not matter. A claim, a mark and a release are one
//! statement each over the batch's keys (arrays), rows locked in key order so two
//! batches never deadlock. Expired rows are deleted in bulk, 10,000 at a time, about
//! once a minute per process ([`Store::sweep`]).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

use super::{Claim, Store, StoreError, StoreErrorKind};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS forwarder_idempotency (
    key text PRIMARY KEY,
    token text,
    lease_until timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
)";
const SCHEMA_INDEX: &str = "CREATE INDEX IF NOT EXISTS forwarder_idempotency_expires_at
    ON forwarder_idempotency (expires_at)";

/// `prev` is each key's row before the statement (its snapshot); `up` the rows it
/// claimed. Claimed: taken over if `prev` was another's live-until-expiry claim, new
/// otherwise. Not claimed: done if `prev` was a mark, else held for what is left of
/// its lease.
const CLAIM: &str = "
WITH k AS (SELECT DISTINCT unnest($1::text[]) AS key),
prev AS (
    SELECT t.key, t.token, t.lease_until, t.expires_at
    FROM forwarder_idempotency t JOIN k USING (key)
),
up AS (
    INSERT INTO forwarder_idempotency AS t (key, token, lease_until, expires_at)
    SELECT key, $2, clock_timestamp() + $3 * interval '1 millisecond',
           clock_timestamp() + $4 * interval '1 millisecond'
    FROM k ORDER BY key
    ON CONFLICT (key) DO UPDATE
        SET token = excluded.token, lease_until = excluded.lease_until,
            expires_at = excluded.expires_at
        WHERE t.expires_at < clock_timestamp()
           OR (t.token IS NOT NULL AND (t.lease_until < clock_timestamp() OR t.token = $2))
    RETURNING t.key
)
SELECT k.key,
       up.key IS NOT NULL AS claimed,
       prev.key IS NOT NULL AND prev.expires_at >= clock_timestamp()
           AND prev.token IS NOT NULL AND prev.token <> $2 AS was_claimed,
       prev.key IS NOT NULL AND prev.token IS NULL
           AND prev.expires_at >= clock_timestamp() AS done,
       GREATEST(1, CEIL(EXTRACT(EPOCH FROM (prev.lease_until - clock_timestamp())) * 1000))::bigint
           AS left_ms
FROM k LEFT JOIN prev USING (key) LEFT JOIN up USING (key)";

const MARK: &str = "
INSERT INTO forwarder_idempotency (key, token, lease_until, expires_at)
SELECT key, NULL, clock_timestamp(), clock_timestamp() + $2 * interval '1 millisecond'
FROM (SELECT DISTINCT unnest($1::text[]) AS key) k ORDER BY key
ON CONFLICT (key) DO UPDATE SET token = NULL, expires_at = excluded.expires_at";

const RELEASE: &str =
    "DELETE FROM forwarder_idempotency WHERE key = ANY($1::text[]) AND token = $2";

const SWEEP: &str = "
DELETE FROM forwarder_idempotency WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM forwarder_idempotency WHERE expires_at < clock_timestamp() LIMIT 10000))";

/// PostgreSQL as the idempotency store.
pub struct PgStore {
    /// The pool, its connections shared by every worker.
    pool: PgPool,
    /// Bound of every statement, acquiring a connection included.
    timeout: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        let kind = match &err {
            sqlx::Error::PoolTimedOut => StoreErrorKind::Timeout,
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreErrorKind::Connection,
            _ => StoreErrorKind::Refused,
        };
        // sqlx's errors name no password: only the server's message or the I/O error.
        StoreError::new(kind, err.to_string())
    }
}

impl PgStore {
    /// Connects (lazily: the pool opens connections when asked) and creates the table
    /// if missing. Fails on a URL that is not one, or a server that does not answer.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::new(StoreErrorKind::Refused, format!("invalid URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        let store = Self { pool, timeout };
        store
            .bounded(sqlx::query(SCHEMA).execute(&store.pool))
            .await?;
        store
            .bounded(sqlx::query(SCHEMA_INDEX).execute(&store.pool))
            .await?;
        Ok(store)
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
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
}

fn ms(d: Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
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
        let rows = self
            .bounded(
                sqlx::query(CLAIM)
                    .bind(keys)
                    .bind(token)
                    .bind(ms(lease))
                    .bind(ms(ttl))
                    .fetch_all(&self.pool),
            )
            .await?;
        let mut answers = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let key: String = row.try_get("key")?;
            let claim = if row.try_get::<bool, _>("claimed")? {
                match row.try_get::<bool, _>("was_claimed")? {
                    true => Claim::TakenOver,
                    false => Claim::New,
                }
            } else if row.try_get::<bool, _>("done")? {
                Claim::Done
            } else {
                // Held: by a live claim, or by one inserted by a concurrent statement
                // (no row before it): then the whole lease is left.
                let left: Option<i64> = row.try_get("left_ms")?;
                Claim::Held(Duration::from_millis(left.unwrap_or(1).max(1) as u64))
            };
            answers.insert(key, claim);
        }
        keys.iter()
            .map(|k| {
                answers
                    .get(k)
                    .copied()
                    .ok_or_else(|| StoreError::new(StoreErrorKind::Refused, "no answer for a key"))
            })
            .collect()
    }

    async fn mark(&self, keys: &[String], ttl: Duration) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.bounded(
            sqlx::query(MARK)
                .bind(keys)
                .bind(ms(ttl))
                .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn release(&self, keys: &[String], token: &str) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.bounded(
            sqlx::query(RELEASE)
                .bind(keys)
                .bind(token)
                .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(
            sqlx::query("SELECT 1 FROM forwarder_idempotency LIMIT 1").fetch_optional(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn sweep(&self) -> Result<u64, StoreError> {
        self.bounded(sqlx::query(SWEEP).execute(&self.pool))
            .await
            .map(|r| r.rows_affected())
    }
}
