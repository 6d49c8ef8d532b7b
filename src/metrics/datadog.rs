//! `datadog-api`: series posted to Datadog's metrics intake over HTTPS with an API key,
//! with no agent (Sentry's `DatadogMetricsBackend`).
//!
//! Metrics are aggregated per flush interval ([`Aggregator`]) and posted as one gzipped
//! `POST /api/v2/series` from a thread of their own, so the pipeline never waits on it:
//!
//! - counters: `count` series, the interval's sum;
//! - gauges: `gauge` series, the last value;
//! - timers: as the DogStatsD agent reports histograms, gauges `NAME.avg`, `NAME.max`,
//!   `NAME.median`, `NAME.95percentile` and the count `NAME.count`, in milliseconds.
//!
//! A post that fails transiently (a connection error, 429, 5xx) is retried with backoff
//! within the flush interval; what still does not go (or is refused: a bad key) is
//! dropped, counted in `forwarder.metrics.dropped` (sent with the next interval) and
//! logged once. The API key is never logged: [`ApiKey`]'s Debug is redacted.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};

use super::backend::{Aggregate, Aggregator, Backend, Key, Sample, Value};
use super::Flush;

/// Datadog's API key (`DD_API_KEY`): never in Debug, Display or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into().trim().to_string())
    }

    /// Whether it is empty.
    pub fn is_blank(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Where series go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatadogSettings {
    /// The intake's base URL: `DD_URL`, else `https://api.{DD_SITE}` (`datadoghq.com`).
    pub base_url: String,
    /// `DD_API_KEY`.
    pub api_key: ApiKey,
    /// The name (prefixed) of the counter of dropped series.
    pub dropped_metric: String,
    /// The global tags, on that counter too.
    pub tags: Vec<(String, String)>,
}

/// Aggregates, and posts each interval from its own thread.
pub struct DatadogBackend {
    /// The interval so far; shared with the posting thread.
    aggregator: Arc<Aggregator>,
    /// Asks the posting thread for a flush; the sender answers when it is done.
    flushes: mpsc::Sender<mpsc::Sender<()>>,
}

impl DatadogBackend {
    /// Starts the posting thread.
    pub fn start(settings: DatadogSettings, interval: Duration) -> std::io::Result<Self> {
        let aggregator = Arc::new(Aggregator::default());
        let (tx, rx) = mpsc::channel::<mpsc::Sender<()>>();
        let poster = Poster {
            client: client()?,
            settings,
            aggregator: aggregator.clone(),
            retry_within: interval.min(Duration::from_secs(10)),
            logged: AtomicBool::new(false),
        };
        std::thread::Builder::new()
            .name("metrics-datadog".into())
            .spawn(move || poster.run(rx))?;
        Ok(Self {
            aggregator,
            flushes: tx,
        })
    }
}

impl Backend for DatadogBackend {
    fn record(&self, sample: &Sample<'_>) {
        self.aggregator.add(sample);
    }
}

impl Flush for DatadogBackend {
    fn flush_within(&self, timeout: Duration) {
        let (done, wait) = mpsc::channel();
        if self.flushes.send(done).is_ok() && !timeout.is_zero() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

/// The posting thread's state.
struct Poster {
    /// The HTTP client, built at start.
    client: Client,
    /// Where series go.
    settings: DatadogSettings,
    /// The intervals to post, shared with the backend that fills them.
    aggregator: Arc<Aggregator>,
    /// How long a post is retried.
    retry_within: Duration,
    /// Whether a drop was logged already (once per run).
    logged: AtomicBool,
}

impl Poster {
    fn run(self, flushes: mpsc::Receiver<mpsc::Sender<()>>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(err) => {
                tracing::warn!(%err, "datadog-api metrics: no runtime; metrics are dropped");
                return;
            }
        };
        // Each request answers once its interval is posted (or dropped).
        while let Ok(done) = flushes.recv() {
            let taken = self.aggregator.take();
            if !taken.is_empty() {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let body = series(&taken, now);
                let count = body["series"].as_array().map_or(0, Vec::len);
                if let Err(why) = runtime.block_on(self.post(&body)) {
                    self.dropped(count, &why);
                }
            }
            let _ = done.send(());
        }
    }

    async fn post(&self, body: &Json) -> Result<(), String> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let gzipped = bytes::Bytes::from(gz.finish().map_err(|e| e.to_string())?);
        let url = format!(
            "{}/api/v2/series",
            self.settings.base_url.trim_end_matches('/')
        );
        let policy = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(200),
            max_elapsed_time: Some(self.retry_within),
            ..Default::default()
        };
        backoff::future::retry(policy, || async {
            let request = http::Request::post(&url)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .header("dd-api-key", &self.settings.api_key.0)
                .body(http_body_util::Full::new(gzipped.clone()))
                .map_err(|e| backoff::Error::permanent(e.to_string()))?;
            let response =
                tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
                    .await
                    .map_err(|_| backoff::Error::transient("timed out".to_string()))?
                    .map_err(|e| backoff::Error::transient(format!("{e}")))?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else if status.as_u16() == 429 || status.is_server_error() {
                Err(backoff::Error::transient(format!("HTTP {status}")))
            } else {
                Err(backoff::Error::permanent(format!("HTTP {status}")))
            }
        })
        .await
    }

    /// Counts the series that did not go (sent with the next interval) and logs once.
    fn dropped(&self, count: usize, why: &str) {
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                series = count,
                error = why,
                "datadog-api metrics not accepted; dropped and counted in forwarder.metrics.dropped (logged once per run)"
            );
        }
        let tags: Vec<(&str, &str)> = self
            .settings
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.aggregator.add(&Sample {
            name: &self.settings.dropped_metric,
            tags: &tags,
            value: Value::Count(count as u64),
        });
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// HTTPS with the system's roots (plain HTTP too, for a `DD_URL` proxy or a test). A
/// system without roots fails at start: no post could succeed.
fn client() -> std::io::Result<Client> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| std::io::Error::other(format!("datadog-api: no TLS root certificates: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// The v2 series body of an interval.
pub fn series(taken: &BTreeMap<Key, Aggregate>, timestamp: u64) -> Json {
    let mut out = Vec::new();
    for ((name, tags), aggregate) in taken {
        let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        let mut one = |metric: String, kind: u8, value: f64| {
            out.push(json!({
                "metric": metric,
                "type": kind,
                "points": [{"timestamp": timestamp, "value": value}],
                "tags": tags,
            }));
        };
        match aggregate {
            Aggregate::Count(n) => one(name.clone(), COUNT, *n as f64),
            Aggregate::Gauge(v) => one(name.clone(), GAUGE, *v as f64),
            Aggregate::Millis(values) | Aggregate::Samples(values) => {
                let mut sorted = values.clone();
                sorted.sort_by(f64::total_cmp);
                let n = sorted.len();
                let at = |q: f64| sorted[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
                one(format!("{name}.count"), COUNT, n as f64);
                one(
                    format!("{name}.avg"),
                    GAUGE,
                    sorted.iter().sum::<f64>() / n as f64,
                );
                one(format!("{name}.max"), GAUGE, sorted[n - 1]);
                one(format!("{name}.median"), GAUGE, at(0.5));
                one(format!("{name}.95percentile"), GAUGE, at(0.95));
            }
        }
    }
    json!({ "series": out })
}

/// Datadog's series types.
const COUNT: u8 = 1;
const GAUGE: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_counts_gauges_and_timer_summaries() {
        let a = Aggregator::default();
        let tags = [("plugin", "amazon-sqs"), ("success", "true")];
        for _ in 0..4 {
            a.add(&Sample {
                name: "data-forwarding.http_response",
                tags: &tags,
                value: Value::Count(1),
            });
        }
        for ms in [1.0, 2.0, 3.0, 10.0] {
            a.add(&Sample {
                name: "t",
                tags: &[],
                value: Value::Millis(ms),
            });
        }
        let body = series(&a.take(), 1_700_000_000);
        let by_name = |n: &str| {
            body["series"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["metric"] == n)
                .cloned()
                .unwrap_or_else(|| panic!("{n} missing: {body}"))
        };
        let http = by_name("data-forwarding.http_response");
        assert_eq!(http["type"], 1);
        assert_eq!(http["points"][0]["value"], 4.0);
        assert_eq!(http["tags"], json!(["plugin:amazon-sqs", "success:true"]));
        assert_eq!(by_name("t.count")["points"][0]["value"], 4.0);
        assert_eq!(by_name("t.avg")["points"][0]["value"], 4.0);
        assert_eq!(by_name("t.max")["points"][0]["value"], 10.0);
        assert_eq!(by_name("t.median")["points"][0]["value"], 2.0);
        assert_eq!(by_name("t.95percentile")["type"], 3);
    }

    #[test]
    fn the_key_never_shows() {
        let s = DatadogSettings {
            base_url: "https://api.datadoghq.com".into(),
            api_key: ApiKey::new("0123secret"),
            dropped_metric: "forwarder.metrics.dropped".into(),
            tags: Vec::new(),
        };
        assert!(!format!("{s:?}").contains("secret"));
    }
}
