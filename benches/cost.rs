//! What users pay: SQS requests per event, with and without the batching window, at a
//! trickle, a steady medium rate and full load, into 1 route and into 20 (Sentry's
//! per-project forwarding), against LocalStack with the release binary.
//!
//! Every request the forwarder sends is counted by its own clients
//! (`forwarder.sqs.requests{operation}`, read here from statsd), retries and start-up
//! healthchecks included. Billed requests count each 64 KiB of a call's payload as one
//! more request (SQS's pricing), from the events' size and each call's entries. Dollars
//! are at SQS's list price for standard queues ($0.40 per million requests, past the
//! free tier). Added latency: `forwarder.event.latency` (source `SentTimestamp` to the
//! destination's acceptance), p50 and p99.
//!
//! `cargo bench --bench cost` (needs `make localstack`); `BENCH_COST_SECONDS` (20) is each
//! paced load's length. Under `cargo test --benches` it runs one short trickle, as a
//! smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(missing_docs)]

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;

/// SQS standard queues, per million requests.
const DOLLARS_PER_MILLION: f64 = 0.40;
/// The size of each event (a typical Sentry error event is a few KiB).
const EVENT_BYTES: usize = 2048;

fn event(n: usize, project: usize) -> String {
    let head = format!(
        r#"{{"event_id":"{n:032x}","project_id":{project},"organization_id":7,"level":"error","message":"boom","tags":[["environment","production"]],"pad":""#
    );
    let pad = EVENT_BYTES.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

async fn client() -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:4566")
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .load()
        .await;
    Client::new(&config)
}

async fn create_queue(client: &Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("LocalStack is not running: start it with `make localstack`")
        .queue_url
        .unwrap()
}

/// Statsd lines received on a local UDP port.
struct Statsd {
    addr: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Statsd {
    fn start() -> Statsd {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                keep.lock()
                    .unwrap()
                    .extend(text.lines().map(str::to_string));
            }
        });
        Statsd { addr, lines }
    }
}

fn value(line: &str) -> Option<u64> {
    line.split(':').nth(1)?.split('|').next()?.parse().ok()
}

/// One load: how events come, and how many routes they spread over.
#[derive(Clone, Copy)]
struct Load {
    name: &'static str,
    /// Events per second; `None`: all queued before the forwarder starts (full load).
    rate: Option<u64>,
    routes: usize,
}

/// What one run cost.
struct Row {
    events: usize,
    requests: u64,
    billed: u64,
    p50: u64,
    p99: u64,
}

async fn run(client: &Client, load: Load, window: &str, seconds: u64) -> Row {
    let name = format!("cost-{:08x}", fastrand::u32(..));
    let source = create_queue(client, &format!("{name}-src")).await;
    let mut routes = String::new();
    for p in 1..=load.routes {
        let q = create_queue(client, &format!("{name}-p{p}")).await;
        routes.push_str(&format!("[projects.{p}]\nqueue_url = \"{q}\"\n\n"));
    }
    let routes_path = std::env::temp_dir().join(format!("{name}.toml"));
    std::fs::write(&routes_path, routes).unwrap();
    let events = match load.rate {
        Some(rate) => (rate * seconds) as usize,
        None => 2_000,
    };
    let bodies: Vec<String> = (0..events)
        .map(|i| event(i + 1, i % load.routes + 1))
        .collect();
    if load.rate.is_none() {
        send(client, &source, &bodies).await;
    }
    let statsd = Statsd::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
        .args(["run", "--exit-when-idle", "3"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("FORWARDER_SOURCE_QUEUE_URL", &source)
        .env("FORWARDER_ROUTES_FILE", &routes_path)
        .env("FORWARDER_BATCH_WINDOW", window)
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_STATSD_ADDR", &statsd.addr)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(rate) = load.rate {
        // Paced in sends of up to 10, each tenth of a second.
        let per_tick = (rate / 10).max(1) as usize;
        let started = Instant::now();
        for (k, chunk) in bodies.chunks(per_tick).enumerate() {
            tokio::time::sleep_until((started + Duration::from_millis(100 * k as u64)).into())
                .await;
            send(client, &source, chunk).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = statsd.lines.lock().unwrap().clone();
    let by = |name: &str| -> Vec<u64> {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("{name}:")))
            .filter_map(|l| value(l))
            .collect()
    };
    let mut ops: HashMap<String, u64> = HashMap::new();
    for l in lines
        .iter()
        .filter(|l| l.starts_with("forwarder.sqs.requests:"))
    {
        let op = l.rsplit("operation:").next().unwrap_or("?").to_string();
        *ops.entry(op).or_default() += value(l).unwrap_or(0);
    }
    let requests: u64 = ops.values().sum();
    // Billed: a SendMessageBatch of k events carries k × the event size; a receive of
    // the same events too (on average, events / receives each); the rest fit in 64 KiB.
    let chunks = |bytes: usize| bytes.div_ceil(64 * 1024).max(1) as u64;
    let sends: u64 = by("forwarder.send_batch.entries")
        .iter()
        .map(|&k| chunks(k as usize * EVENT_BYTES))
        .sum();
    let receives = ops.get("ReceiveMessage").copied().unwrap_or(0);
    let per_receive = events / receives.max(1) as usize;
    let billed = requests - ops.get("SendMessageBatch").copied().unwrap_or(0) + sends - receives
        + receives * chunks(per_receive * EVENT_BYTES);
    let mut latency = by("forwarder.event.latency");
    latency.sort_unstable();
    let at = |q: f64| {
        latency
            .get(((latency.len() as f64 * q).ceil() as usize).clamp(1, latency.len().max(1)) - 1)
            .copied()
            .unwrap_or(0)
    };
    Row {
        events,
        requests,
        billed,
        p50: at(0.5),
        p99: at(0.99),
    }
}

async fn send(client: &Client, queue: &str, bodies: &[String]) {
    for chunk in bodies.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b)
                    .build()
                    .unwrap()
            })
            .collect();
        client
            .send_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let seconds: u64 = std::env::var("BENCH_COST_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 3 } else { 20 });
    let loads: Vec<Load> = if smoke {
        vec![Load {
            name: "trickle",
            rate: Some(20),
            routes: 1,
        }]
    } else {
        [("trickle", Some(20)), ("medium", Some(200)), ("full", None)]
            .into_iter()
            .flat_map(|(name, rate)| [1, 20].map(|routes| Load { name, rate, routes }))
            .collect()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client().await;
        println!("| load | routes | window | events | requests/event | billed/event | $ per million events | latency p50 | p99 |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for load in loads {
            for window in ["0", "1s"] {
                let r = run(&client, load, window, seconds).await;
                let per = r.requests as f64 / r.events as f64;
                let billed = r.billed as f64 / r.events as f64;
                println!(
                    "| {} | {} | {} | {} | {per:.3} | {billed:.3} | ${:.3} | {} ms | {} ms |",
                    load.name,
                    load.routes,
                    window,
                    r.events,
                    billed * DOLLARS_PER_MILLION,
                    r.p50,
                    r.p99
                );
                assert!(r.requests > 0, "no request counted");
            }
        }
    });
}
