//! Telemetry set-up for metrics: the backends `FORWARDER_METRICS_BACKEND` picks (one or
//! several, each given every metric), apart from where metrics are used ([`build`]).
//! statsd and DogStatsD go through the sink below; `emf`, `datadog-api`, `log` and
//! `prometheus` through [`super::backend`].
//!
//! A bounded [`QueuingMetricSink`] in front of a [`BufferedUdpMetricSink`]: emitting is a
//! channel push that never blocks (when the queue is full the metric is dropped), a
//! background thread writes UDP packets, and a flusher thread pushes out the buffer at
//! least every second so that a quiet worker's metrics are not held back.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Weak;
use std::time::{Duration, Instant};

use cadence::{BufferedUdpMetricSink, MetricSink, QueuingMetricSink};

use super::{Flush, Metrics};

/// How many metric lines may wait for the UDP thread before new ones are dropped.
const QUEUE_CAPACITY: usize = 64 * 1024;
/// One UDP payload: fits a 1500-byte Ethernet MTU with IP and UDP headers.
const PACKET_BYTES: usize = 1432;
/// How often buffered metrics are sent even if the buffer is not full.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Settings for [`udp`], taken from the configuration.
#[derive(Debug, Clone)]
pub struct StatsdSettings {
    /// Where statsd/DogStatsD listens.
    pub addr: SocketAddr,
    /// Prepended to every metric name, with a dot (`FORWARDER_METRICS_PREFIX`).
    pub prefix: String,
    /// Added to every metric (`FORWARDER_METRICS_TAGS`).
    pub tags: Vec<(String, String)>,
    /// Fraction of sampled metrics sent (`FORWARDER_METRICS_SAMPLE_RATE`).
    pub sample_rate: f64,
}

/// Where metrics go (`FORWARDER_METRICS_BACKEND`), with what every backend shares.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// The backends, each given every metric; none: metrics off.
    pub backends: Vec<MetricsBackend>,
    /// Prepended to every metric name, with a dot (`FORWARDER_METRICS_PREFIX`).
    pub prefix: String,
    /// Added to every metric (`FORWARDER_METRICS_TAGS`).
    pub tags: Vec<(String, String)>,
    /// Fraction of sampled metrics sent, statsd and DogStatsD only
    /// (`FORWARDER_METRICS_SAMPLE_RATE`).
    pub sample_rate: f64,
    /// How often `emf` and `datadog-api` write what they aggregated
    /// (`FORWARDER_METRICS_FLUSH_INTERVAL`).
    pub flush_interval: Duration,
}

/// The backends, as Sentry's metrics API offers them, and the one Lambda needs.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsBackend {
    /// Discards (Sentry's dummy backend).
    Off,
    /// Plain statsd over UDP: no tags (the protocol has none; they are dropped).
    Statsd(SocketAddr),
    /// DogStatsD over UDP, to a local agent: tags as `|#k:v`.
    DogStatsd(SocketAddr),
    /// Datadog's HTTP API, with no agent.
    DatadogApi(super::datadog::DatadogSettings),
    /// CloudWatch Embedded Metric Format lines on stdout.
    Emf,
    /// Each metric as a `tracing` event at debug.
    Log,
    /// A registry scraped at the health listener's `GET /metrics`.
    Prometheus,
}

impl MetricsBackend {
    /// The setting's value, as written.
    pub fn name(&self) -> &'static str {
        match self {
            MetricsBackend::Off => "off",
            MetricsBackend::Statsd(_) => "statsd",
            MetricsBackend::DogStatsd(_) => "dogstatsd",
            MetricsBackend::DatadogApi(_) => "datadog-api",
            MetricsBackend::Emf => "emf",
            MetricsBackend::Log => "log",
            MetricsBackend::Prometheus => "prometheus",
        }
    }
}

impl MetricsSettings {
    /// Where each backend sends, for `check` and the start-up line: `off`, or each
    /// backend as `dogstatsd to 127.0.0.1:8125`, `prometheus at http://…/metrics`, ….
    /// `health` is the health listener, where `prometheus` is scraped.
    pub fn describe(&self, health: Option<SocketAddr>) -> String {
        if self.backends.is_empty() {
            return "off".to_string();
        }
        let every = humantime::format_duration(self.flush_interval);
        self.backends
            .iter()
            .map(|b| match b {
                MetricsBackend::Off => "off".to_string(),
                MetricsBackend::Statsd(addr) | MetricsBackend::DogStatsd(addr) => {
                    format!("{} to {addr}", b.name())
                }
                MetricsBackend::DatadogApi(dd) => {
                    format!("datadog-api to {} every {every}", dd.base_url)
                }
                MetricsBackend::Emf => format!("emf on stdout every {every}"),
                MetricsBackend::Log => "log (debug events)".to_string(),
                MetricsBackend::Prometheus => match health {
                    Some(addr) => format!("prometheus at http://{addr}/metrics"),
                    None => "prometheus (no health listener)".to_string(),
                },
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Metrics off.
    pub fn off() -> Self {
        Self {
            backends: Vec::new(),
            prefix: String::new(),
            tags: Vec::new(),
            sample_rate: 1.0,
            flush_interval: Duration::from_secs(10),
        }
    }

    /// DogStatsD to `addr`, unprefixed, untagged, unsampled.
    pub fn dogstatsd(addr: SocketAddr) -> Self {
        Self {
            backends: vec![MetricsBackend::DogStatsd(addr)],
            ..Self::off()
        }
    }

    fn statsd(&self, addr: SocketAddr) -> StatsdSettings {
        StatsdSettings {
            addr,
            prefix: self.prefix.clone(),
            tags: self.tags.clone(),
            sample_rate: self.sample_rate,
        }
    }
}

/// Builds the metrics `settings` ask for (every backend given each metric), and starts
/// their flushers.
pub fn build(settings: &MetricsSettings) -> io::Result<Metrics> {
    let all = settings
        .backends
        .iter()
        .map(|b| build_one(settings, b))
        .collect::<io::Result<Vec<Metrics>>>()?;
    Ok(match all.len() {
        1 => all.into_iter().next().unwrap_or_default(),
        _ => Metrics::fanout(all),
    })
}

/// One backend's metrics, its flusher started.
fn build_one(settings: &MetricsSettings, backend: &MetricsBackend) -> io::Result<Metrics> {
    use std::sync::Arc;
    let (prefix, tags) = (&settings.prefix, &settings.tags);
    let metrics = match backend {
        MetricsBackend::Off => return Ok(Metrics::disabled()),
        MetricsBackend::Statsd(addr) => return udp_with(&settings.statsd(*addr), true),
        MetricsBackend::DogStatsd(addr) => return udp_with(&settings.statsd(*addr), false),
        MetricsBackend::Log => {
            Metrics::with_backend(Arc::new(super::backend::LogBackend), prefix, tags)
        }
        MetricsBackend::Emf => {
            Metrics::with_backend(Arc::new(super::emf::EmfBackend::stdout()), prefix, tags)
        }
        MetricsBackend::Prometheus => Metrics::scraped(
            Arc::new(super::prometheus::PrometheusBackend::new(prefix)),
            prefix,
            tags,
        ),
        MetricsBackend::DatadogApi(dd) => Metrics::with_backend(
            Arc::new(super::datadog::DatadogBackend::start(
                dd.clone(),
                settings.flush_interval,
            )?),
            prefix,
            tags,
        ),
    };
    if let Some(handle) = metrics.flush_handle() {
        start_flusher(handle, settings.flush_interval);
    }
    Ok(metrics)
}

/// The production sink: queued, buffered UDP.
#[derive(Clone)]
pub struct UdpSink {
    /// The queue in front of the UDP writer; cloning shares it.
    queue: QueuingMetricSink,
    /// Plain statsd: each line without its DogStatsD tags (`|#…`).
    plain: bool,
}

impl MetricSink for UdpSink {
    fn emit(&self, metric: &str) -> io::Result<usize> {
        if self.plain {
            if let Some((bare, _tags)) = metric.split_once("|#") {
                return self.queue.emit(bare);
            }
        }
        self.queue.emit(metric)
    }
    fn flush(&self) -> io::Result<()> {
        self.queue.flush()
    }
}

impl Flush for UdpSink {
    fn flush_within(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.queue.queued() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.queue.flush();
    }
}

/// Builds metrics that go to DogStatsD over UDP, and starts the flusher thread.
pub fn udp(settings: &StatsdSettings) -> io::Result<Metrics> {
    udp_with(settings, false)
}

/// statsd (`plain`: tags dropped) or DogStatsD over UDP, with the flusher thread.
fn udp_with(settings: &StatsdSettings, plain: bool) -> io::Result<Metrics> {
    let bind: SocketAddr = if settings.addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    let buffered = BufferedUdpMetricSink::with_capacity(settings.addr, socket, PACKET_BYTES)
        .map_err(io::Error::other)?;
    let sink = UdpSink {
        queue: QueuingMetricSink::with_capacity(buffered, QUEUE_CAPACITY),
        plain,
    };
    let metrics = Metrics::new(sink, &settings.prefix, &settings.tags, settings.sample_rate);
    if let Some(handle) = metrics.flush_handle() {
        start_flusher(handle, FLUSH_INTERVAL);
    }
    Ok(metrics)
}

/// Flushes every `interval` until the last [`Metrics`] clone is dropped.
fn start_flusher(sink: Weak<dyn Flush>, interval: Duration) {
    std::thread::Builder::new()
        .name("metrics-flush".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            match sink.upgrade() {
                Some(sink) => sink.flush_within(Duration::ZERO),
                None => return,
            }
        })
        .map(drop)
        .unwrap_or_else(|err| tracing::warn!(%err, "metrics flusher thread not started"));
}
