//! Telemetry set-up for metrics: the backends `FORWARDER_METRICS_BACKEND` picks (one or
//! several, each given every metric), apart from where metrics are used ([`build`]).
//! statsd and DogStatsD go through the sink below; `emf`, `datadog-api`, `log` and
//! `prometheus` through [`super::backend`].
//!
//! statsd and DogStatsD: [`UdpSink`] joins lines into packets in memory (a bounded
//! queue: when it is full the metric is dropped), and one writer thread sends them on
//! its own clock, every 50 ms under traffic and at least every second, so emitting
//! never wakes a thread and a quiet worker's metrics are not held back.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cadence::MetricSink;

use super::{Flush, Metrics};

/// How many bytes of metric lines may wait for the writer before new ones are dropped.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// One UDP payload: fits a 1500-byte Ethernet MTU with IP and UDP headers.
const PACKET_BYTES: usize = 1432;
/// How often buffered metrics are sent even if the buffer is not full (at the latest,
/// when there is no traffic).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the writer sends while there is traffic: 20 wake-ups a second, whatever
/// the load, instead of one per metric.
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

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

/// The production sink: metric lines joined into UDP packets in memory, sent by one
/// writer thread on its own clock. Emitting is a short lock and a copy: it never waits
/// on the network and never wakes a thread (a queue whose reader sleeps until each
/// line arrives costs a context switch per metric, several per event), and past
/// [`QUEUE_BYTES`] waiting a line is dropped.
#[derive(Clone)]
pub struct UdpSink {
    /// The packets and the socket, shared by every clone and the writer thread.
    shared: Arc<Shared>,
    /// Plain statsd: each line without its DogStatsD tags (`|#…`).
    plain: bool,
}

/// What the emitters and the writer share.
struct Shared {
    /// Lines waiting, joined into packets.
    packets: Mutex<Packets>,
    /// Where packets go from.
    socket: UdpSocket,
    /// statsd or the DogStatsD agent.
    addr: SocketAddr,
}

/// Lines waiting to be sent.
#[derive(Default)]
struct Packets {
    /// Full packets, oldest first.
    full: Vec<Vec<u8>>,
    /// The packet being filled: lines joined by `\n`, at most [`PACKET_BYTES`].
    current: Vec<u8>,
    /// Bytes in `full` and `current`.
    bytes: usize,
}

impl Shared {
    /// Appends `line`, unless the queue is full.
    fn push(&self, line: &str) -> io::Result<usize> {
        let Ok(mut p) = self.packets.lock() else {
            return Err(io::Error::other("metrics queue poisoned"));
        };
        if p.bytes + line.len() > QUEUE_BYTES {
            return Err(io::Error::other("metrics queue full: line dropped"));
        }
        if !p.current.is_empty() && p.current.len() + 1 + line.len() > PACKET_BYTES {
            let full = std::mem::replace(&mut p.current, Vec::with_capacity(PACKET_BYTES));
            p.full.push(full);
        }
        if !p.current.is_empty() {
            p.current.push(b'\n');
            p.bytes += 1;
        }
        p.current.extend_from_slice(line.as_bytes());
        p.bytes += line.len();
        Ok(line.len())
    }

    /// Sends everything waiting; whether there was anything.
    fn send_all(&self) -> bool {
        let packets = {
            let Ok(mut p) = self.packets.lock() else {
                return false;
            };
            let mut all = std::mem::take(&mut p.full);
            if !p.current.is_empty() {
                all.push(std::mem::take(&mut p.current));
            }
            p.bytes = 0;
            all
        };
        for packet in &packets {
            // A lost packet is a lost sample, never a failure of forwarding.
            let _ = self.socket.send_to(packet, self.addr);
        }
        !packets.is_empty()
    }
}

impl MetricSink for UdpSink {
    fn emit(&self, metric: &str) -> io::Result<usize> {
        if self.plain {
            if let Some((bare, _tags)) = metric.split_once("|#") {
                return self.shared.push(bare);
            }
        }
        self.shared.push(metric)
    }
    fn flush(&self) -> io::Result<()> {
        self.shared.send_all();
        Ok(())
    }
}

impl Flush for UdpSink {
    fn flush_within(&self, _timeout: Duration) {
        self.shared.send_all();
    }
}

/// Builds metrics that go to DogStatsD over UDP, and starts the writer thread.
pub fn udp(settings: &StatsdSettings) -> io::Result<Metrics> {
    udp_with(settings, false)
}

/// statsd (`plain`: tags dropped) or DogStatsD over UDP, with the writer thread.
fn udp_with(settings: &StatsdSettings, plain: bool) -> io::Result<Metrics> {
    let bind: SocketAddr = if settings.addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        packets: Mutex::new(Packets::default()),
        socket,
        addr: settings.addr,
    });
    start_writer(Arc::downgrade(&shared));
    let sink = UdpSink { shared, plain };
    Ok(Metrics::new(
        sink,
        &settings.prefix,
        &settings.tags,
        settings.sample_rate,
    ))
}

/// Sends what waits every [`WRITE_INTERVAL`] while there is traffic, backing off to
/// [`FLUSH_INTERVAL`] while there is none, until the last sink is dropped.
fn start_writer(shared: Weak<Shared>) {
    std::thread::Builder::new()
        .name("metrics-udp".into())
        .spawn(move || {
            let mut wait = WRITE_INTERVAL;
            loop {
                std::thread::sleep(wait);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                wait = if shared.send_all() {
                    WRITE_INTERVAL
                } else {
                    (wait * 2).min(FLUSH_INTERVAL)
                };
            }
        })
        .map(drop)
        .unwrap_or_else(|err| tracing::warn!(%err, "metrics writer thread not started"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counter;

    /// Lines join into packets of at most [`PACKET_BYTES`], every line once, in order;
    /// the writer sends them on its own (nothing is asked of it per metric).
    #[test]
    fn lines_are_joined_into_packets_that_the_writer_sends() {
        let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
        agent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let metrics = udp(&StatsdSettings {
            addr: agent.local_addr().unwrap(),
            prefix: "p".into(),
            tags: vec![("env".into(), "test".into())],
            sample_rate: 1.0,
        })
        .unwrap();
        for _ in 0..100 {
            metrics.incr(Counter::HttpResponse { success: true });
        }
        let mut lines = Vec::new();
        let mut buf = [0u8; 65536];
        while lines.len() < 100 {
            let n = agent
                .recv(&mut buf)
                .expect("the writer sends without a flush");
            assert!(n <= PACKET_BYTES, "{n} bytes");
            let packet = std::str::from_utf8(&buf[..n]).unwrap();
            lines.extend(packet.split('\n').map(str::to_string));
        }
        assert_eq!(lines.len(), 100);
        assert!(
            lines.iter().all(|l| l
                == "p.data-forwarding.http_response:1|c|#env:test,plugin:amazon-sqs,success:true"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_full_queue_drops_lines_instead_of_growing() {
        let shared = Shared {
            packets: Mutex::new(Packets::default()),
            socket: UdpSocket::bind("127.0.0.1:0").unwrap(),
            addr: "127.0.0.1:9".parse().unwrap(),
        };
        let line = "x".repeat(1000);
        let kept = (0..5000).filter(|_| shared.push(&line).is_ok()).count();
        assert!(kept < 5000 && kept * 1000 <= QUEUE_BYTES, "{kept}");
        assert!(shared.send_all());
        assert!(shared.push(&line).is_ok(), "room again once sent");
    }
}
