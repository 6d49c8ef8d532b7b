//! The indexer's store: SQLite (embedded default) or PostgreSQL (shared by many workers).
//!
//! Both answer the same three questions in one statement each, however many strings a
//! batch holds: which of these have ids ([`Store::fetch`]), give these ids
//! ([`Store::create`]: insert-or-ignore on the unique (organization_id, string), then
//! read back, so two workers racing on a new string get the same id), and which string
//! has this id ([`Store::reverse`]). The schema is migrated at connect.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::outcome::{ErrorClass, Operation};
use crate::retry::RetryPolicy;

/// A store error, classified for the retry layer.
#[derive(Debug, thiserror::Error)]
#[error("indexer store {operation} failed ({}): {source}", class.as_str())]
pub struct StoreError {
    /// The statement: connect, migrate, fetch, create, reverse, touch.
    pub operation: Operation,
    /// Whether it is worth retrying.
    pub class: ErrorClass,
    /// The driver's error.
    #[source]
    pub source: sqlx::Error,
}

impl StoreError {
    fn new(operation: Operation, source: sqlx::Error) -> Self {
        Self {
            operation,
            class: class_of(&source),
            source,
        }
    }

    /// Whether the store refused the statement because of the data it carried (a
    /// string it cannot hold), rather than for a reason of its own.
    pub fn is_data_error(&self) -> bool {
        self.class == ErrorClass::Rejected
    }

    /// SQLite's "busy" or "locked": another connection holds the file.
    fn is_sqlite_busy(&self) -> bool {
        matches!(&self.source, sqlx::Error::Database(db)
            if matches!(db.code().and_then(|c| c.parse::<u32>().ok()).map(|n| n & 0xff), Some(5) | Some(6)))
    }
}

impl crate::retry::Classified for StoreError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// The class of a driver error. Only a refusal of the data itself (PostgreSQL's data
/// exceptions and integrity violations; SQLite's constraint, size and type errors) is
/// the string's fault: [`ErrorClass::Rejected`]. Everything else is the store's (a
/// restart, a failover to a read-only primary, a missing privilege, a lock timeout, a
/// full disk, a read-only file) and transient: retried with backoff, and past the bound
/// the batch stays in the source queue. None is ever the event's fault.
fn class_of(err: &sqlx::Error) -> ErrorClass {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
            ErrorClass::Connection
        }
        sqlx::Error::PoolTimedOut => ErrorClass::Timeout,
        // A malformed URL or option: found at connect, never fixed by a retry.
        sqlx::Error::Configuration(_) => ErrorClass::Local,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let data = match code.as_ref() {
                // PostgreSQL: data exception (22: bad encoding, too long), integrity
                // constraint violation (23: a CHECK).
                c if c.starts_with("22") || c.starts_with("23") => true,
                // SQLite: TOOBIG (18), CONSTRAINT (19), MISMATCH (20), RANGE (25).
                c => matches!(
                    c.parse::<u32>().map(|n| n & 0xff),
                    Ok(18) | Ok(19) | Ok(20) | Ok(25)
                ),
            };
            if data {
                ErrorClass::Rejected
            } else {
                ErrorClass::ServerError
            }
        }
        _ => ErrorClass::ServerError,
    }
}

/// `last_seen` is refreshed when a read finds it older than this (Sentry: a day).
pub const LAST_SEEN_RESOLUTION_SECS: i64 = 24 * 3600;

impl Row3 {
    /// Whether its `last_seen` is older than [`LAST_SEEN_RESOLUTION_SECS`].
    pub fn is_stale(&self) -> bool {
        self.last_seen < unix_now() - LAST_SEEN_RESOLUTION_SECS
    }
}

/// One stored string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row3 {
    /// The organization.
    pub org: u64,
    /// The string.
    pub string: String,
    /// Its id.
    pub id: u64,
    /// When it was last seen, unix seconds.
    pub last_seen: i64,
}

/// A connection pool to the store.
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded default: a file (or memory, for tests).
    Sqlite(SqlitePool),
    /// Shared by many workers.
    Postgres(PgPool),
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Connects (`sqlite:PATH`, `sqlite::memory:`, or `postgres://…`) and migrates.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // PostgreSQL's migrator holds an advisory lock: concurrent starts are safe.
            return Self::connect_once(url, pool_size).await;
        }
        // Several processes may open a new SQLite file at once. Switching it to WAL can
        // answer "locked" at once, and SQLite migrations take no lock across processes,
        // so one may see the other's half-made schema. Both settle once the first is
        // done: retry, within a bound.
        let mut schedule = RetryPolicy {
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(15),
        }
        .schedule();
        loop {
            match Self::connect_once(url, pool_size).await {
                Err(err)
                    if err.operation == Operation::StoreMigrate
                        || err.is_sqlite_busy()
                        || matches!(err.class, ErrorClass::Connection | ErrorClass::Timeout) =>
                {
                    match schedule.next_delay() {
                        Some(wait) => {
                            tracing::debug!(error = %err, ?wait, "SQLite store busy at start; retrying");
                            tokio::time::sleep(wait).await;
                        }
                        None => return Err(err),
                    }
                }
                result => return result,
            }
        }
    }

    async fn connect_once(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        let connect = |e| StoreError::new(Operation::StoreConnect, e);
        let migrate =
            |e: sqlx::migrate::MigrateError| StoreError::new(Operation::StoreMigrate, e.into());
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(connect)?;
            let pool = PgPoolOptions::new()
                .max_connections(pool_size)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .map_err(connect)?;
            POSTGRES_MIGRATIONS.run(&pool).await.map_err(migrate)?;
            Ok(Store::Postgres(pool))
        } else {
            let memory = url.contains(":memory:");
            let options = SqliteConnectOptions::from_str(url).map_err(connect)?;
            if let Some(dir) = options.get_filename().parent().filter(|_| !memory) {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| connect(e.into()))?;
                }
            }
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                // One in-memory database lives in one connection.
                .max_connections(if memory { 1 } else { pool_size })
                .min_connections(if memory { 1 } else { 0 })
                .idle_timeout(if memory {
                    None
                } else {
                    Some(Duration::from_secs(600))
                })
                .max_lifetime(if memory {
                    None
                } else {
                    Some(Duration::from_secs(1800))
                })
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .map_err(connect)?;
            SQLITE_MIGRATIONS.run(&pool).await.map_err(migrate)?;
            Ok(Store::Sqlite(pool))
        }
    }

    /// The ids of those strings that are stored.
    pub async fn fetch(&self, keys: &[(u64, &str)]) -> Result<Vec<Row3>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e| StoreError::new(Operation::IndexerFetch, e);
        let rows = match self {
            Store::Postgres(pool) => {
                let (orgs, strings) = columns(keys);
                let rows = sqlx::query(
                    "SELECT s.organization_id, s.string, s.id, \
                            EXTRACT(EPOCH FROM s.last_seen)::bigint \
                     FROM indexer_strings s \
                     JOIN UNNEST($1::bigint[], $2::text[]) AS k(org, string) \
                       ON s.organization_id = k.org AND s.string = k.string",
                )
                .bind(orgs)
                .bind(strings)
                .fetch_all(pool)
                .await
                .map_err(err)?;
                rows.iter().map(row).collect::<Result<Vec<_>, _>>()
            }
            Store::Sqlite(pool) => {
                let rows = sqlx::query(
                    "SELECT s.organization_id, s.string, s.id, s.last_seen FROM indexer_strings s \
                     JOIN json_each(?1) k \
                       ON s.organization_id = json_extract(k.value, '$[0]') \
                      AND s.string = json_extract(k.value, '$[1]')",
                )
                .bind(json_keys(keys))
                .fetch_all(pool)
                .await
                .map_err(err)?;
                rows.iter().map(row).collect::<Result<Vec<_>, _>>()
            }
        }
        .map_err(err)?;
        Ok(rows)
    }

    /// Sets `last_seen` to now for these ids, in one statement. Never called on the
    /// way of an event: the indexer calls it after the fact, best effort (see
    /// [`super::Indexer`]), so a read never writes.
    pub async fn touch(&self, ids: &[u64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = unix_now();
        let stale: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let err = |e| StoreError::new(Operation::IndexerTouch, e);
        match self {
            Store::Postgres(pool) => {
                sqlx::query("UPDATE indexer_strings SET last_seen = now() WHERE id = ANY($1)")
                    .bind(&stale)
                    .execute(pool)
                    .await
                    .map_err(err)?;
            }
            Store::Sqlite(pool) => {
                sqlx::query(
                    "UPDATE indexer_strings SET last_seen = ?2 \
                     WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(serde_json::to_string(&stale).unwrap_or_else(|_| "[]".into()))
                .bind(now)
                .execute(pool)
                .await
                .map_err(err)?;
            }
        }
        Ok(())
    }

    /// Gives ids to strings: inserts those missing (ignoring any a concurrent writer
    /// inserted first), then reads every one back.
    pub async fn create(&self, keys: &[(u64, &str)]) -> Result<Vec<Row3>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e| StoreError::new(Operation::IndexerCreate, e);
        match self {
            Store::Postgres(pool) => {
                let (orgs, strings) = columns(keys);
                sqlx::query(
                    "INSERT INTO indexer_strings (organization_id, string) \
                     SELECT org, string FROM UNNEST($1::bigint[], $2::text[]) AS k(org, string) \
                     ORDER BY org, string \
                     ON CONFLICT (organization_id, string) DO NOTHING",
                )
                .bind(orgs)
                .bind(strings)
                .execute(pool)
                .await
                .map_err(err)?;
            }
            Store::Sqlite(pool) => {
                sqlx::query(
                    "INSERT OR IGNORE INTO indexer_strings \
                       (organization_id, string, date_added, last_seen) \
                     SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?2, ?2 \
                     FROM json_each(?1)",
                )
                .bind(json_keys(keys))
                .bind(unix_now())
                .execute(pool)
                .await
                .map_err(err)?;
            }
        }
        self.fetch(keys).await
    }

    /// The string with this id in this organization.
    pub async fn reverse(&self, org: u64, id: u64) -> Result<Option<String>, StoreError> {
        let err = |e| StoreError::new(Operation::IndexerReverse, e);
        let (Ok(org), Ok(id)) = (i64::try_from(org), i64::try_from(id)) else {
            return Ok(None);
        };
        let sql_pg = "SELECT string FROM indexer_strings WHERE organization_id = $1 AND id = $2";
        let sql_lite = "SELECT string FROM indexer_strings WHERE organization_id = ?1 AND id = ?2";
        let found = match self {
            Store::Postgres(pool) => {
                sqlx::query_scalar(sql_pg)
                    .bind(org)
                    .bind(id)
                    .fetch_optional(pool)
                    .await
            }
            Store::Sqlite(pool) => {
                sqlx::query_scalar(sql_lite)
                    .bind(org)
                    .bind(id)
                    .fetch_optional(pool)
                    .await
            }
        };
        found.map_err(err)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::Sqlite(pool) => pool.close().await,
        }
    }
}

fn columns<'a>(keys: &[(u64, &'a str)]) -> (Vec<i64>, Vec<&'a str>) {
    // Organization ids above i64::MAX are refused by the event decoder.
    keys.iter()
        .map(|(org, s)| (i64::try_from(*org).unwrap_or(i64::MAX), *s))
        .unzip()
}

fn json_keys(keys: &[(u64, &str)]) -> String {
    let pairs: Vec<(u64, &str)> = keys.to_vec();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

fn row<R: Row>(r: &R) -> Result<Row3, sqlx::Error>
where
    for<'c> i64: sqlx::Decode<'c, R::Database> + sqlx::Type<R::Database>,
    for<'c> String: sqlx::Decode<'c, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let org: i64 = r.try_get(0)?;
    let string: String = r.try_get(1)?;
    let id: i64 = r.try_get(2)?;
    let last_seen: i64 = r.try_get(3)?;
    Ok(Row3 {
        org: org as u64,
        string,
        id: id as u64,
        last_seen,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
