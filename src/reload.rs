//! Routes changed without a restart, as Vector (SIGHUP, `--watch-config`) and Prometheus
//! (SIGHUP, `--config.auto-reload`) reload theirs.
//!
//! While `run` runs, [`watch`] reads the routes file (`FORWARDER_ROUTES_FILE`) again on
//! SIGHUP, and whenever its content changes: it compares the content every
//! [`CHECK_INTERVAL`], not the file's time, so a Kubernetes ConfigMap, which swaps a
//! symlink, is seen. A new file is parsed and validated as at start, and every
//! destination not in force before is built and reached ([`Routers::router_for`]; the
//! app's, given to [`watch`], so this module imports nothing above it) before the
//! new routes take over; routes it keeps keep their forwarders (clients, batching
//! windows, pause states). Then the [`SharedRouter`] is swapped: every batch that starts
//! from then on takes the new routes, and each batch in work finishes on the routes it
//! started with, so nothing is lost or forwarded twice across the swap.
//!
//! A file that fails leaves the routes in force; the failure is one log line saying why,
//! `forwarder.config.reload{result:failure}`, and `forwarder.config.last_reload_successful`
//! at 0 (1 after a success, and at start). Without a routes file SIGHUP is logged and
//! ignored: it never stops the worker. Lambda mode reads the file once per cold start.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::batching::BatchWindow;
use crate::config::routes::Routes;
use crate::config::{Config, ConfigError};
use crate::forward::{Router, SharedRouter};
use crate::internal_events::{InternalEvent, RoutesReloadFailed, RoutesReloaded};
use crate::metrics::{Gauge, Metrics};

/// How often the routes file's content is compared with the one in force.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What a reload needs of the running worker: the configuration in force, and a router
/// built for another one (its new destinations reached, the routes it keeps keeping
/// their forwarders). The app is one (`App`); it hands itself to [`watch`].
pub trait Routers {
    /// Why a router could not be built.
    type Error: std::fmt::Display + From<ConfigError>;
    /// The configuration in force.
    fn config(&self) -> &Config;
    /// A router for `config`'s routes, its sends shared within `window`.
    fn router_for(
        &self,
        config: &Config,
        window: &BatchWindow,
    ) -> impl Future<Output = Result<Router, Self::Error>>;
}

/// SIGHUP, taken from its default action (which ends the process) as soon as `run`
/// starts; `None` where no handler could be installed (logged).
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(%err, "SIGHUP handler not installed: the routes file is still read again when it changes");
            None
        }
    }
}

/// Reloads `app`'s routes file into `routing` on SIGHUP (`hangups`) and when its content
/// changes, its new destinations' sends shared within `window`, until `stop`.
pub async fn watch<A: Routers>(
    app: &A,
    routing: SharedRouter,
    window: BatchWindow,
    mut hangups: Option<tokio::signal::unix::Signal>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let file = app.config().routes_file.clone();
    metrics.gauge(Gauge::ConfigLastReloadSuccessful, 1);
    // The routes in force (as the file was read at start, which may be before this
    // task: a change made meanwhile is still seen), and the last content looked at.
    let mut in_force = app.config().routes.clone();
    let mut seen: Option<Result<String, String>> = None;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = next_hangup(&mut hangups) => "SIGHUP",
            _ = tick.tick(), if file.is_some() => "file changed",
        };
        let Some(path) = file.as_deref() else {
            tracing::info!("SIGHUP: no routes file (FORWARDER_ROUTES_FILE) to read again; ignored");
            continue;
        };
        let content = read(path);
        let changed = seen.as_ref() != Some(&content);
        // A content looked at already (failed, or in force) is not tried again until it
        // changes, but for SIGHUP.
        seen = Some(content.clone());
        if trigger == "file changed" && !changed {
            continue;
        }
        let reloaded = match content {
            Ok(text) => match crate::config::routes::parse(path, &text) {
                // The routes in force already (a broken file put back as it was): nothing
                // to reload, unless asked; the file is good again.
                Ok(routes) if trigger != "SIGHUP" && in_force.as_ref() == Some(&routes) => {
                    metrics.gauge(Gauge::ConfigLastReloadSuccessful, 1);
                    continue;
                }
                Ok(routes) => reload(app, &routing, &window, routes).await,
                Err(err) => Err(A::Error::from(err)),
            },
            Err(err) => Err(A::Error::from(ConfigError {
                var: "FORWARDER_ROUTES_FILE",
                problem: format!("{}: cannot be read: {err}", path.display()),
            })),
        };
        match reloaded {
            Ok((routes, count, new)) => {
                in_force = Some(routes);
                RoutesReloaded {
                    trigger,
                    file: path,
                    routes: count,
                    new,
                }
                .emit(&metrics)
            }
            Err(err) => RoutesReloadFailed {
                trigger,
                file: path,
                error: &err,
            }
            .emit(&metrics),
        }
    }
}

/// The next SIGHUP; never, without a handler.
async fn next_hangup(hangups: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// The file's content, or why it cannot be read (compared as text, so a file that
/// stays unreadable is reported once).
fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// `routes` in force: validated, its new destinations reached, then swapped in; the
/// routes, how many there are, and how many destinations were new.
async fn reload<A: Routers>(
    app: &A,
    routing: &SharedRouter,
    window: &BatchWindow,
    routes: Routes,
) -> Result<(Routes, usize, usize), A::Error> {
    let config = app.config().with_routes(routes.clone())?;
    let router = app.router_for(&config, window).await?;
    let count = config.effective_routes().keyed().count();
    let kept = {
        let old = routing.current();
        let old = old.forwarders();
        router
            .forwarders()
            .iter()
            .filter(|f| old.iter().any(|o| std::sync::Arc::ptr_eq(o, f)))
            .count()
    };
    let new = router.forwarders().len().saturating_sub(kept);
    routing.replace(router);
    Ok((routes, count, new))
}
