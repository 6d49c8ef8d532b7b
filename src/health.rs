//! The health listener for Kubernetes probes (`FORWARDER_HEALTH_ADDR`).
//!
//! - `GET /healthz` (liveness): 200 while the process serves requests.
//! - `GET /readyz` (readiness): 200 once a receive from the source queue has succeeded,
//!   503 before that, while every route is paused, while the idempotency store does not
//!   answer (fail-closed), and from the moment shutdown begins.
//!   A pod that cannot reach its queue (credentials, network) never turns ready, so a
//!   rollout stops there.
//! - `GET /metrics`, with the `prometheus` metrics backend: the metrics, in the
//!   Prometheus text format, or OpenMetrics when the scraper's `Accept` asks for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::forward::Pauses;

/// Connections served at once at most.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request's headers.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open.
const CONNECTION_BOUND: Duration = Duration::from_secs(30);

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

/// The worker's state as the probes see it; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Starting, ready or stopping.
    state: Arc<AtomicU8>,
    /// The routes' pauses: while every route is paused, nothing can be forwarded, so
    /// the pod is not ready (and a rollout stops there).
    pauses: Option<Arc<Pauses>>,
    /// What `/metrics` serves (the `prometheus` backend); `None`: 404.
    exporter: Option<crate::metrics::prometheus::Exporter>,
    /// The idempotency store: while it does not answer (fail-closed), nothing is
    /// forwarded, so the pod is not ready.
    idempotency: Option<Arc<crate::idempotency::Idempotency>>,
}

impl Health {
    /// Serves `exporter` at `/metrics`.
    pub fn with_exporter(mut self, exporter: Option<crate::metrics::prometheus::Exporter>) -> Self {
        self.exporter = exporter;
        self
    }

    /// Not ready while every route in `pauses` is paused.
    pub fn with_pauses(mut self, pauses: Arc<Pauses>) -> Self {
        self.pauses = Some(pauses);
        self
    }

    /// Not ready while `idempotency`'s store does not answer (fail-closed).
    pub fn with_idempotency(
        mut self,
        idempotency: Option<Arc<crate::idempotency::Idempotency>>,
    ) -> Self {
        self.idempotency = idempotency;
        self
    }

    /// A receive succeeded: ready, unless already stopping.
    pub fn received(&self) {
        let _ = self
            .state
            .compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Shutdown began: not ready from now on.
    pub fn stopping(&self) {
        self.state.store(STOPPING, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::SeqCst) == READY
            && !self.pauses.as_ref().is_some_and(|p| p.all_paused())
            && self.idempotency.as_ref().is_none_or(|i| i.is_available())
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("FORWARDER_HEALTH_ADDR: cannot listen on {addr}: {source}")]
pub struct HealthError {
    /// The address asked for.
    addr: SocketAddr,
    /// Why.
    source: std::io::Error,
}

/// Binds `addr` and serves the probes until `stop` is cancelled. Returns the bound
/// address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    stop: CancellationToken,
) -> Result<SocketAddr, HealthError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HealthError { addr, source })?;
    if health.exporter.is_some() {
        tracing::info!(%bound, "health listener: /healthz, /readyz, /metrics");
    } else {
        tracing::info!(%bound, "health listener: /healthz, /readyz");
    }
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(%err, "health listener: accept failed");
                        continue;
                    }
                },
            };
            // A probe is one small request: past the cap, a connection is closed at
            // once, and none is kept longer than the bound, so a slow or hostile
            // client cannot pile up tasks.
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let health = health.clone();
                    async move { Ok::<_, Infallible>(answer(&health, &req)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_BOUND, connection).await;
                drop(permit);
            });
        }
    });
    Ok(bound)
}

fn answer(health: &Health, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let (&Method::GET | &Method::HEAD, "/metrics", Some(exporter)) =
        (req.method(), req.uri().path(), &health.exporter)
    {
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let (content_type, body) = exporter.render(
            crate::metrics::prometheus::Exporter::wants_openmetrics(accept),
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        return response;
    }
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if health.is_ready() => {
            (StatusCode::OK, "ready\n")
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_a_receive_and_never_again_once_stopping() {
        let health = Health::default();
        assert!(!health.is_ready());
        health.received();
        assert!(health.is_ready());
        health.stopping();
        assert!(!health.is_ready());
        health.received();
        assert!(!health.is_ready(), "a late receive does not undo stopping");
    }
}
