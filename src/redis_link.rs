//! One Redis connection shared by every worker of the process, each call bounded by a
//! timeout (connecting included), dropped after a failure so the next call reconnects:
//! what the indexer's shared cache and the idempotency store both need of Redis.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// Why a call through the link gave no answer.
#[derive(Debug)]
pub enum LinkError {
    /// Redis or the client said why (its Display holds no URL).
    Redis(redis::RedisError),
    /// No answer within the timeout.
    Timeout(Duration),
}

/// What kind of failure a [`LinkError`] is, for each user's error and metric tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// Connecting failed, or the connection broke.
    Connection,
    /// Redis answered with an error (out of memory, a read-only replica, …).
    Refused,
}

impl LinkError {
    /// Its kind, decided here once for every user of the link.
    pub fn failure(&self) -> Failure {
        match self {
            LinkError::Timeout(_) => Failure::Timeout,
            LinkError::Redis(err) if err.is_timeout() => Failure::Timeout,
            LinkError::Redis(err)
                if err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_unrecoverable_error() =>
            {
                Failure::Connection
            }
            LinkError::Redis(_) => Failure::Refused,
        }
    }

    /// What Redis or the client said (never the URL).
    pub fn message(&self) -> String {
        match self {
            LinkError::Redis(err) => err.to_string(),
            LinkError::Timeout(timeout) => format!("no answer within {timeout:?}"),
        }
    }
}

/// A client, its open connection, and the bound of every call.
pub struct Link {
    /// Parses the URL once, opens connections.
    client: redis::Client,
    /// The open connection, multiplexed across every worker; `None` until the first
    /// call, and again after a failure so the next call reconnects.
    connection: Mutex<Option<MultiplexedConnection>>,
    /// Serialises reconnecting, so a failing Redis sees one attempt, not one per worker.
    connecting: tokio::sync::Mutex<()>,
    /// Bound of every call, connecting included.
    timeout: Duration,
}

impl Link {
    /// A link to `url`, not yet connected: the first call connects. Fails only on a URL
    /// the client cannot use.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            timeout,
        })
    }

    /// `f` on the connection, within the timeout; a failure drops the connection.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, LinkError>
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

    /// `fut` within the timeout.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LinkError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(LinkError::Redis(err)),
            Err(_) => Err(LinkError::Timeout(self.timeout)),
        }
    }

    /// The open connection, or a new one (within the timeout).
    async fn connection(&self) -> Result<MultiplexedConnection, LinkError> {
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
