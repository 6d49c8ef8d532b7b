//! Telemetry set-up for metrics: the statsd sink, apart from where metrics are used.
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

/// The production sink: queued, buffered UDP.
#[derive(Clone)]
pub struct UdpSink {
    /// The queue in front of the UDP writer; cloning shares it.
    queue: QueuingMetricSink,
}

impl MetricSink for UdpSink {
    fn emit(&self, metric: &str) -> io::Result<usize> {
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

/// Builds metrics that go to statsd over UDP, and starts the flusher thread.
pub fn udp(settings: &StatsdSettings) -> io::Result<Metrics> {
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
    };
    let metrics = Metrics::new(sink, &settings.prefix, &settings.tags, settings.sample_rate);
    if let Some(handle) = metrics.flush_handle() {
        start_flusher(handle);
    }
    Ok(metrics)
}

/// Flushes every [`FLUSH_INTERVAL`] until the last [`Metrics`] clone is dropped.
fn start_flusher(sink: Weak<dyn Flush>) {
    std::thread::Builder::new()
        .name("metrics-flush".into())
        .spawn(move || loop {
            std::thread::sleep(FLUSH_INTERVAL);
            match sink.upgrade() {
                Some(sink) => sink.flush_within(Duration::ZERO),
                None => return,
            }
        })
        .map(drop)
        .unwrap_or_else(|err| tracing::warn!(%err, "metrics flusher thread not started"));
}
