//! `prometheus`: the catalogue kept in a [`prometheus_client`] registry, scraped at the
//! health listener's `GET /metrics` ([`crate::health`]), in the Prometheus text format,
//! or OpenMetrics when the scraper asks for it.
//!
//! Names follow Prometheus's conventions: the dotted name (with `FORWARDER_METRICS_PREFIX`)
//! in snake_case, counters ending in `_total`, timers as histograms in seconds
//! (`_seconds`, with the buckets [`super::buckets`] gives each), tags (global ones first)
//! as labels: `data-forwarding.http_response{plugin,success}` is
//! `data_forwarding_http_response_total{plugin="amazon-sqs",success="true"}`.
//!
//! Recording is an atomic update under a read lock; a metric's family is registered the
//! first time it is seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::backend::{Backend, Sample, Value};
use super::Flush;

/// A metric's labels: its tags, keys made Prometheus-safe.
type Labels = Vec<(String, String)>;

/// The buckets of one histogram family.
#[derive(Debug, Clone, Copy)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// One family, by the kind of its first sample.
#[derive(Clone)]
enum Kind {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge>),
    Histogram(Family<Labels, Histogram, Buckets>),
}

/// What the backend and its exporter share.
struct State {
    /// What is encoded at each scrape.
    registry: Mutex<Registry>,
    /// Each family by its catalogue name (with the prefix).
    families: RwLock<HashMap<String, Kind>>,
    /// `FORWARDER_METRICS_PREFIX` with its dot: taken off a name to find its buckets.
    prefix: String,
}

/// The `prometheus` backend.
pub struct PrometheusBackend {
    /// Shared with the exporter.
    state: Arc<State>,
}

/// What `GET /metrics` serves: the registry, encoded at each scrape.
#[derive(Clone)]
pub struct Exporter {
    /// Shared with the backend.
    state: Arc<State>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

/// The content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl PrometheusBackend {
    /// An empty registry; `prefix` is `FORWARDER_METRICS_PREFIX`.
    pub fn new(prefix: &str) -> Self {
        let prefix = if prefix.is_empty() || prefix.ends_with('.') {
            prefix.to_string()
        } else {
            format!("{prefix}.")
        };
        Self {
            state: Arc::new(State {
                registry: Mutex::new(Registry::default()),
                families: RwLock::new(HashMap::new()),
                prefix,
            }),
        }
    }

    /// The family of `name`, registered with the kind of `value` if it is new.
    fn family(&self, name: &str, value: &Value) -> Option<Kind> {
        if let Some(kind) = self.state.families.read().ok()?.get(name) {
            return Some(kind.clone());
        }
        let mut families = self.state.families.write().ok()?;
        if let Some(kind) = families.get(name) {
            return Some(kind.clone());
        }
        let metric = snake(name);
        let help = format!("sqs-forwarder's {name}");
        let unprefixed = name.strip_prefix(&self.state.prefix).unwrap_or(name);
        let mut registry = self.state.registry.lock().ok()?;
        let kind = match value {
            Value::Count(_) => {
                let family = Family::<Labels, Counter>::default();
                registry.register(metric, help, family.clone());
                Kind::Counter(family)
            }
            Value::Gauge(_) => {
                let family = Family::<Labels, Gauge>::default();
                registry.register(metric, help, family.clone());
                Kind::Gauge(family)
            }
            Value::Millis(_) => {
                let family = Family::new_with_constructor(Buckets(super::buckets(unprefixed)));
                registry.register_with_unit(metric, help, Unit::Seconds, family.clone());
                Kind::Histogram(family)
            }
            Value::Sample(_) => {
                let family = Family::new_with_constructor(Buckets(super::buckets(unprefixed)));
                registry.register(metric, help, family.clone());
                Kind::Histogram(family)
            }
        };
        families.insert(name.to_string(), kind.clone());
        Some(kind)
    }
}

impl Backend for PrometheusBackend {
    fn record(&self, s: &Sample<'_>) {
        let Some(kind) = self.family(s.name, &s.value) else {
            return;
        };
        let labels: Labels = s
            .tags
            .iter()
            .map(|(k, v)| (snake(k), (*v).to_string()))
            .collect();
        match (kind, s.value) {
            (Kind::Counter(f), Value::Count(n)) => {
                f.get_or_create(&labels).inc_by(n);
            }
            (Kind::Gauge(f), Value::Gauge(v)) => {
                f.get_or_create(&labels)
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
            (Kind::Histogram(f), Value::Millis(ms)) => {
                f.get_or_create(&labels).observe(ms / 1000.0)
            }
            (Kind::Histogram(f), Value::Sample(v)) => f.get_or_create(&labels).observe(v),
            // A name seen first with another kind: not the catalogue's, not recorded.
            _ => {}
        }
    }
}

impl PrometheusBackend {
    /// What a scraper reads: the registry this backend records into.
    pub fn exporter(&self) -> Exporter {
        Exporter {
            state: self.state.clone(),
        }
    }
}

impl Flush for PrometheusBackend {
    /// Nothing to push: the scraper pulls.
    fn flush_within(&self, _timeout: Duration) {}
}

impl Exporter {
    /// The exposition: OpenMetrics if `openmetrics` (the scraper's `Accept` asks for
    /// it), else the Prometheus text format; with its content type.
    pub fn render(&self, openmetrics: bool) -> (&'static str, String) {
        let mut text = String::new();
        if let Ok(registry) = self.state.registry.lock() {
            // Writing into a String does not fail.
            let _ = encode(&mut text, &registry);
        }
        if openmetrics {
            (OPENMETRICS, text)
        } else {
            (TEXT, prometheus_text(&text))
        }
    }

    /// Whether an `Accept` header asks for OpenMetrics.
    pub fn wants_openmetrics(accept: Option<&str>) -> bool {
        accept.is_some_and(|a| a.contains("application/openmetrics-text"))
    }
}

/// OpenMetrics text as the Prometheus text format (0.0.4) has it: no `# EOF` nor
/// `# UNIT` lines, and a counter's `# HELP` and `# TYPE` name its samples' `_total`.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let name = rest.split(' ').next().unwrap_or_default();
                if counters.contains(&name) {
                    out.push_str(&format!("{p}{name}_total{}", &rest[name.len()..]));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A name or label made Prometheus-safe: every character but letters, digits and `_`
/// (the dots and dashes of the catalogue) becomes `_`; a leading digit gets a `_`.
fn snake(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Counter as C, Distribution, Gauge as G, Metrics, Timer};

    fn metrics(prefix: &str, tags: &[(String, String)]) -> (Metrics, Exporter) {
        let m = Metrics::scraped(Arc::new(PrometheusBackend::new(prefix)), prefix, tags);
        let exporter = m.exporter().expect("the prometheus backend is scraped");
        (m, exporter)
    }

    #[test]
    fn the_catalogue_follows_prometheus_conventions() {
        let (m, exporter) = metrics("", &[]);
        m.incr(C::HttpResponse { success: true });
        m.incr(C::HttpResponse { success: true });
        m.incr(C::HttpResponse { success: false });
        m.timing(Timer::EndToEnd, Duration::from_millis(250));
        m.gauge(G::InFlight, 7);
        m.distribution(Distribution::SendBatchEntries, 10);
        let (kind, text) = exporter.render(false);
        assert_eq!(kind, TEXT);
        for line in [
            "# TYPE data_forwarding_http_response_total counter",
            "data_forwarding_http_response_total{plugin=\"amazon-sqs\",success=\"true\"} 2",
            "data_forwarding_http_response_total{plugin=\"amazon-sqs\",success=\"false\"} 1",
            "# TYPE forwarder_event_latency_seconds histogram",
            "forwarder_event_latency_seconds_sum 0.25",
            "forwarder_event_latency_seconds_count 1",
            "forwarder_event_latency_seconds_bucket{le=\"0.25\"} 1",
            "forwarder_event_latency_seconds_bucket{le=\"0.1\"} 0",
            "forwarder_events_in_flight 7",
            "forwarder_send_batch_entries_bucket{le=\"10.0\"} 1",
            "forwarder_send_batch_entries_bucket{le=\"9.0\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        let (kind, open) = exporter.render(true);
        assert_eq!(kind, OPENMETRICS);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(
            open.contains("# TYPE data_forwarding_http_response counter"),
            "{open}"
        );
        assert!(
            open.contains("# UNIT forwarder_event_latency_seconds seconds"),
            "{open}"
        );
    }

    #[test]
    fn the_prefix_and_global_tags_apply() {
        let (m, exporter) = metrics("sentry.sqs", &[("region-name".into(), "eu".into())]);
        m.incr(C::MessagesReceived);
        m.timing(Timer::EndToEnd, Duration::from_secs(2));
        let (_, text) = exporter.render(false);
        assert!(
            text.contains("sentry_sqs_forwarder_messages_received_total{region_name=\"eu\"} 1"),
            "{text}"
        );
        // The prefix does not hide a timer's own buckets.
        assert!(
            text.contains("sentry_sqs_forwarder_event_latency_seconds_bucket{le=\"2.5\",region_name=\"eu\"} 1")
                || text.contains("sentry_sqs_forwarder_event_latency_seconds_bucket{region_name=\"eu\",le=\"2.5\"} 1"),
            "{text}"
        );
    }
}
