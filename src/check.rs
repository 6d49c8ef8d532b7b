//! `sqs-forwarder check`: validate the configuration and reach everything it names: the
//! source, every destination route (with its message group checked against its queue's
//! type), the dead-letter queue, the S3 buckets, the indexer's store, and the
//! idempotency store.

use crate::app::App;
use crate::aws;
use crate::config::routes::{RouteKey, Routes, Skip};
use crate::config::{Needs, Settings};
use crate::metrics::Metrics;

/// What `check` found: lines that are fine, and one line per problem.
#[derive(Debug, Default)]
pub struct Report {
    /// What was checked and is fine.
    pub ok: Vec<String>,
    /// Each problem, one line naming its variable.
    pub problems: Vec<String>,
}

/// Checks the settings and reaches what they name; with `send_test_event`, sends one
/// test event to every route as well.
pub async fn check(settings: &Settings, send_test_event: bool) -> Report {
    let mut report = Report::default();
    let Some(app) = build(settings, &mut report).await else {
        return report;
    };
    check_queues(&app, &mut report).await;
    let router = check_routes(&app, &mut report).await;
    check_buckets(&app, &mut report).await;
    check_indexer(&app, &mut report).await;
    check_idempotency(&app, &mut report).await;
    report_settings(&app, &mut report);
    if let Some(router) = router.filter(|_| send_test_event && report.problems.is_empty()) {
        send_test_events(&app, router, &mut report).await;
    }
    report
}

/// The message attribute that marks a test event (`check --send-test-event`), always
/// sent on whatever `FORWARDER_FORWARD_ATTRIBUTES` says.
pub use crate::forward::TEST_EVENT_ATTRIBUTE;

/// One synthetic event per route, through the pipeline as `run` forwards (decode,
/// route, forward; no dead-letter queue: a refused test event is reported, not kept),
/// each with an `event_id` of its own, the tag `sqs_forwarder_test:true` and the
/// message attribute [`TEST_EVENT_ATTRIBUTE`]. A line per route: accepted, and in how
/// long, or why not (a problem).
async fn send_test_events(app: &App, router: crate::forward::Router, report: &mut Report) {
    let pipeline = app.pipeline_on(router);
    let routes = app.config().effective_routes();
    for (key, route) in routes.keyed() {
        let name = key.to_string();
        let Some((organization, project)) = sample(&routes, key) else {
            report.ok.push(format!(
                "route {name}: no test event: no event takes this route (its organization enrolls only the projects it lists, or projects.P comes first)"
            ));
            continue;
        };
        let message = test_event(organization, project);
        let started = std::time::Instant::now();
        let settled = pipeline.process(std::slice::from_ref(&message)).await;
        let took = started.elapsed();
        let line = |what: &str| {
            format!(
                "route {name}: test event {} {what} by {} in {} ms",
                message.message_id,
                route.queue_url,
                took.as_millis()
            )
        };
        match settled.first() {
            Some(crate::pipeline::Settlement::Forwarded) => report.ok.push(line("accepted")),
            Some(crate::pipeline::Settlement::Skipped(why)) => report.ok.push(format!(
                "route {name}: test event not sent: {why} (the route's filter leaves it out)"
            )),
            Some(other) => report.problems.push(format!(
                "route {name}: test event refused by {}: {}",
                route.queue_url,
                describe(other)
            )),
            None => report
                .problems
                .push(format!("route {name}: test event: no outcome")),
        }
    }
}

/// An organization and a project whose events take the route at `key`, if any do: the
/// default gets ids no route names, an organization's route a project it does not list.
fn sample(routes: &Routes, key: RouteKey) -> Option<(u64, u64)> {
    let unlisted_org = (1..).find(|o| !routes.organizations.contains_key(o))?;
    let unlisted_project = |org: Option<u64>| {
        (1..).find(|p| {
            !routes.projects.contains_key(p)
                && org
                    .and_then(|o| routes.organizations.get(&o))
                    .is_none_or(|org| !org.projects.contains_key(p))
        })
    };
    let (organization, project) = match key {
        RouteKey::Default => (unlisted_org, unlisted_project(None)?),
        RouteKey::Project(p) => (unlisted_org, p),
        RouteKey::Organization(o) => (o, unlisted_project(Some(o))?),
        RouteKey::OrganizationProject(o, p) => (o, p),
    };
    (routes.resolve(organization, project).ok()?.0 == key).then_some((organization, project))
}

/// Which route each listed organization's projects take: its listed projects one by
/// one, and those it does not list (`check` prints it, as a reload would route).
fn routing(routes: &Routes) -> Vec<String> {
    let mut lines = Vec::new();
    let mut orgs: Vec<(
        &u64,
        &crate::config::routes::Organization<crate::config::routes::Route>,
    )> = routes.organizations.iter().collect();
    orgs.sort_by_key(|(o, _)| **o);
    for (o, org) in orgs {
        let mut listed: Vec<&u64> = org.projects.keys().collect();
        listed.sort();
        for p in listed {
            lines.push(format!(
                "organization {o} project {p}: {}",
                takes(routes.resolve(*o, *p))
            ));
        }
        let unlisted = (1..)
            .find(|p| !routes.projects.contains_key(p) && !org.projects.contains_key(p))
            .map_or(Err(Skip::Unconfigured), |p| routes.resolve(*o, p));
        lines.push(format!(
            "organization {o}, projects not listed: {}",
            takes(unlisted)
        ));
    }
    lines
}

/// A resolution in words.
fn takes(resolved: Result<(RouteKey, &crate::config::routes::Route), Skip>) -> String {
    match resolved {
        Ok((key, route)) => format!("[{}] {}", key.at(), route.queue_url),
        Err(skip) => format!("skipped ({})", skip.reason()),
    }
}

/// A test event for `organization` and `project`: its own `event_id` (also the message
/// id, to find it).
fn test_event(organization: u64, project: u64) -> crate::source::SourceMessage {
    let id = format!("{:032x}", fastrand::u128(..));
    let body = serde_json::json!({
        "event_id": id,
        "project_id": project,
        "organization_id": organization,
        "level": "info",
        "message": "sqs-forwarder test event (check --send-test-event)",
        "timestamp": chrono::Utc::now().timestamp(),
        "tags": [["sqs_forwarder_test", "true"]],
    });
    crate::source::SourceMessage {
        message_id: id,
        body: body.to_string(),
        sent_at: Some(std::time::SystemTime::now()),
        receive_count: 1,
        attributes: vec![crate::aws::Attribute::string(TEST_EVENT_ATTRIBUTE, "true")],
        ..Default::default()
    }
}

/// What became of a test event that was not accepted.
fn describe(settlement: &crate::pipeline::Settlement) -> String {
    use crate::pipeline::Settlement;
    match settlement {
        Settlement::Failed(failure) => format!("{} ({})", failure.message, failure.class.as_str()),
        Settlement::Deferred(deferral) => format!("deferred ({})", deferral.cause.as_str()),
        Settlement::Invalid(err) => err.to_string(),
        Settlement::DeadLettered(reason) => format!("dead-lettered ({reason:?})"),
        Settlement::Forwarded | Settlement::Skipped(_) => "accepted".into(),
    }
}

/// Where metrics go, and what each message carries along: settings with nothing to
/// reach (an agent or an intake is not asked), said so the operator sees them.
fn report_settings(app: &App, report: &mut Report) {
    let config = app.config();
    let to = config.metrics.describe(config.health_addr);
    report.ok.push(format!("metrics: {to}"));
    let var = |name: &str| std::env::var(name).ok();
    match crate::telemetry::otlp::describe(&var) {
        Ok(traces) => report.ok.push(format!("traces: {traces}")),
        Err(problem) => report.problems.push(problem),
    }
    report.ok.push(format!(
        "forwarded attributes: {} (and the trace context)",
        app.config().forward_attributes
    ));
    report.ok.push(runtime_line());
    report.ok.push(format!(
        "in flight: {}",
        crate::app::describe_bound(&app.in_flight_bound())
    ));
}

/// The runtime's threads (`FORWARDER_THREADS`) beside the cores this process may use.
fn runtime_line() -> String {
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!(
        "runtime: {threads} thread{} (FORWARDER_THREADS), {cores} core{} available",
        if threads == 1 { "" } else { "s" },
        if cores == 1 { "" } else { "s" }
    )
}

/// The settings, validated, and the app they make: `None` after reporting why not.
async fn build(settings: &Settings, report: &mut Report) -> Option<App> {
    let mut config = match settings.validate(Needs::SourceAndDestination, None) {
        Ok(config) => config,
        Err(errors) => {
            report.problems = errors.0.iter().map(ToString::to_string).collect();
            return None;
        }
    };
    report.ok.push("configuration is valid".into());
    // A check answers quickly: transient failures are retried for a few seconds only.
    config.retry.max_elapsed = config
        .retry
        .max_elapsed
        .min(std::time::Duration::from_secs(5));
    let sdk = aws::load_sdk_config(config.request_timeout, config.http_pool).await;
    match App::from_sdk(config, &sdk, Metrics::disabled()) {
        Ok(app) => Some(app),
        Err(err) => {
            report.problems.push(err.to_string());
            None
        }
    }
}

/// The source and the dead-letter queue.
async fn check_queues(app: &App, report: &mut Report) {
    let queues = [
        (
            "FORWARDER_SOURCE_QUEUE_URL",
            app.config().source_queue_url.clone(),
        ),
        ("FORWARDER_DLQ_URL", app.config().dlq_url.clone()),
    ];
    for (var, url) in queues {
        let Some(url) = url else { continue };
        match app.reach(var, &url).await {
            Ok(info) => {
                report.ok.push(format!(
                    "{var}: reached {url} (visibility timeout {}s{})",
                    info.visibility_timeout.as_secs(),
                    if info.fifo { ", FIFO" } else { "" }
                ));
                // The batching window is sized against the source's visibility timeout.
                if var == "FORWARDER_SOURCE_QUEUE_URL" {
                    match app.config().batch_window_for(info.visibility_timeout) {
                        Ok(window) => report.ok.push(format!(
                            "FORWARDER_BATCH_WINDOW: {}",
                            humantime::format_duration(window)
                        )),
                        Err(err) => report.problems.push(err.to_string()),
                    }
                }
            }
            Err(err) => report.problems.push(err.to_string()),
        }
    }
}

/// Every destination route, each message group against its queue's type; the router
/// built for it (the test events go through it), or `None` after reporting why not.
async fn check_routes(app: &App, report: &mut Report) -> Option<crate::forward::Router> {
    let routes = app.config().effective_routes();
    let router = match app.router().await {
        Ok(router) => router,
        Err(err) => {
            report.problems.push(err.to_string());
            return None;
        }
    };
    let config = app.config();
    for (key, route) in routes.keyed() {
        let name = key.to_string();
        let forwarder = router.at(key);
        let limit = forwarder.map(|f| f.limit()).map_or(String::new(), |l| {
            let by = if l.bytes() < l.configured() {
                "the queue's MaximumMessageSize"
            } else {
                "FORWARDER_MAX_MESSAGE_BYTES"
            };
            format!("; message limit: {} bytes ({by})", l.bytes())
        });
        let s3 = route.s3_bucket.as_ref().map_or(String::new(), |bucket| {
            let encryption = route
                .s3_encryption
                .as_ref()
                .unwrap_or(&config.s3_encryption);
            format!("; s3: {bucket}, encryption {}", encryption.describe())
        });
        let fields = route.fields.as_ref().or(config.fields.as_ref());
        let filter = route.filter.as_ref().or(config.filter.as_ref());
        let pack = route.pack.unwrap_or(config.pack);
        let compression = route.pack_compression.unwrap_or(config.pack_compression);
        report.ok.push(format!(
            "route {name}: reached {}{}{limit}{s3}; fields: {}; filter: {}; pack: {}",
            route.queue_url,
            route
                .message_group
                .as_ref()
                .map(|g| format!(" (message group {})", g.as_str()))
                .unwrap_or_default(),
            fields.map_or("all".to_string(), |f| f.describe()),
            filter.map_or("none".to_string(), |f| f.describe()),
            match (pack, compression) {
                (crate::forward::Pack::Off, _) => "off".to_string(),
                (p, crate::forward::PackCompression::None) => p.as_str().to_string(),
                (p, c) => format!("{} ({c} objects)", p.as_str(), c = c.as_str()),
            },
        ));
    }
    if routes.default.is_none() {
        report
            .ok
            .push("no default route: events of other projects are skipped".into());
    }
    report.ok.extend(routing(&routes));
    Some(router)
}

/// Every bucket a route names (HeadBucket).
async fn check_buckets(app: &App, report: &mut Report) {
    let routes = app.config().effective_routes();
    let mut buckets: Vec<&str> = routes
        .keyed()
        .filter_map(|(_, r)| r.s3_bucket.as_deref())
        .collect();
    buckets.sort_unstable();
    buckets.dedup();
    for bucket in buckets {
        match app.offloader(app.sdk(), bucket).check().await {
            Ok(()) => report
                .ok
                .push(format!("FORWARDER_S3_BUCKET: reached {bucket}")),
            Err(err) => report.problems.push(format!(
                "FORWARDER_S3_BUCKET: bucket {bucket} is not reachable: {err}"
            )),
        }
    }
}

/// The indexer's store: opened and migrated; its shared cache, when set: reached.
async fn check_indexer(app: &App, report: &mut Report) {
    let Some(ix) = &app.config().indexer else {
        return;
    };
    match crate::app::connect_indexer(ix, &app.config().retry, &Metrics::disabled()).await {
        Ok(indexer) => {
            report.ok.push(format!(
                "FORWARDER_INDEXER_DATABASE_URL: opened {}",
                ix.database_url
            ));
            if let Some(shared) = indexer.shared_cache() {
                let url = crate::redact::url(&shared.settings().url, &[]);
                match shared.ping().await {
                    Ok(()) => report
                        .ok
                        .push(format!("FORWARDER_INDEXER_CACHE_URL: reached {url}")),
                    Err(err) => report.problems.push(format!(
                        "FORWARDER_INDEXER_CACHE_URL: {url} is not reachable: {err} (the worker would run, asking the store for every lookup)"
                    )),
                }
            }
            indexer.store().close().await;
        }
        Err(err) => report.problems.push(err.to_string()),
    }
}

/// The idempotency store, when set: opened (its table created) and asked once.
async fn check_idempotency(app: &App, report: &mut Report) {
    let Some(config) = &app.config().idempotency else {
        return;
    };
    match crate::app::connect_idempotency(config, &Metrics::disabled()).await {
        Ok(idempotency) => report.ok.push(format!(
            "FORWARDER_IDEMPOTENCY_URL: reached {} ({}, fail-{})",
            config.url,
            idempotency.kind(),
            if config.fail_open { "open" } else { "closed" }
        )),
        Err(err) => report.problems.push(err.to_string()),
    }
}
