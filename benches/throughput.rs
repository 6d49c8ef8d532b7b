//! Throughput against LocalStack, beside its ceiling.
//!
//! For each worker count, two fresh queue pairs get the same N events. The ceiling is a
//! bare loop of W tasks doing receive (10) → SendMessageBatch → DeleteMessageBatch with
//! no processing. The forwarder is W tasks calling `Worker::run_once` (receive, decode,
//! index on SQLite, forward, delete: the worker's real step) with default settings.
//! Both stop when all N events are forwarded. Every SQS call goes through a counting
//! HTTP client, which gives the calls per event. Finally the release binary forwards N
//! events once more as a child process, for its peak RSS.
//!
//! `cargo bench --bench throughput` (needs `make localstack`): N=5000 (BENCH_EVENTS),
//! workers 1, 2, 4, 8, 16 (BENCH_WORKERS), and writes docs/throughput.svg.
//! Under `cargo test` it runs once with 200 events and 4 workers, as a smoke test.
//!
//! `BENCH_PROXY_LATENCY_MS=40`: LocalStack behind a proxy that holds each call 40 ms
//! (`support/delay_proxy.rs`), a network. `BENCH_QUEUE_MAX_MESSAGE=262144`: queues of
//! 256 KiB (SQS's limit before August 2025; the default is 1 MiB, its limit since).
//!
//! `BENCH_SQS=standin`: against the in-memory SQS stand-in (`support/sqs_standin.rs`, in
//! its own process) instead of LocalStack. `BENCH_EVENT_BYTES`: the event size (8192).
//! `BENCH_MAX_IN_FLIGHT`: `FORWARDER_MAX_IN_FLIGHT` of the binary whose RSS is read.
//! `BENCH_ONLY=ceiling|forwarder|pool|none`: one loop only (or none), to profile it. Each
//! loop's CPU per event is this process's user + system time over the loop, and its
//! context switches per event those of this process's threads (each a task that parked
//! and was woken: what a network costs beyond the work). The third loop, `pool`, is the
//! worker pool as `sqs-forwarder run` runs it (pipelined pollers, the batching window).
//! The stand-in answers each call `BENCH_STANDIN_LATENCY_MS` (default 3) late, as SQS
//! in-region does, so a parked task and its wake-up cost there as on a network.
//!
//! Packing: the worker pool as `run` runs it (pipelined pollers, the default 1 s batching
//! window), once with an unpacked route and once with `pack = "ndjson"`, on N fresh
//! events each (`BENCH_PACK_WORKERS`, default the largest worker count;
//! `BENCH_PACK_IN_FLIGHT`, default 400, the in-flight bound): events/s up to
//! the source's last delete, and SQS requests per event. `BENCH_PACK=off` skips it.
//!
//! Processes: the release binary (`sqs-forwarder run`) beside the bare loop in a process
//! of its own (this bench again, with `BENCH_BARE_LOOP`), on N Sentry-like events each,
//! with the most workers, under `perf stat` (CPU and context switches of every thread);
//! each also runs on an empty source, which is taken off. `BENCH_PROCESSES=off` skips it;
//! it is skipped where `perf stat` does not work. `BENCH_BINARY_ENV="K=V …"` sets
//! variables for the binary alone; `BENCH_PERF_RECORD=DIR` records both with call stacks
//! (`perf record`) into DIR. The two run in `BENCH_ROUNDS` rounds (default 3),
//! alternating which goes first, and the median of the rounds' ratios is the verdict.
//! `BENCH_BARE_WIRE=forwarder` has the bare loop's calls carry what the binary's carry
//! (the system attributes its receive asks for, three message attributes per entry): on
//! LocalStack, whose Python spends on each attribute, the rates then compare like for like.
//!
//! Many routes and bursts (full runs, or `BENCH_SHAPES=on`): the release binary at its
//! defaults over 1, 20, 100 and 300 organization routes (`BENCH_ROUTES`), with the
//! window and without, events/s, requests per event and peak RSS; and peak RSS of
//! 160 × 1 MB at 16 and 64 workers, and of 3,000 × 8 KB then 160 × 1 MB at 32.
//! `BENCH_PROCESS_WORKERS=8,16,32`: the processes section once per worker count.
//! `BENCH_IDEMPOTENCY=off,redis,postgres`: the processes section once per idempotency
//! store (the machine's Redis, `FORWARDER_TEST_POSTGRES_URL`): CPU and SQS requests per
//! event with the store beside without.
//!
//! Metrics backends: the worker step once more per backend (none, DogStatsD to a local
//! socket, Prometheus's registry), events/s and CPU µs/event in the same run.
//! `BENCH_METRICS=off` skips it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// criterion's macros generate functions without docs.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use sqs_forwarder::config::Config;
use sqs_forwarder::metrics::Metrics;
use sqs_forwarder::retry::RetryPolicy;

#[path = "support/delay_proxy.rs"]
mod delay_proxy;
#[path = "support/sentry_event.rs"]
mod sentry_event;
#[path = "support/sqs_standin.rs"]
mod sqs_standin;
use sentry_event::sentry_event;

/// The binary's allocator (`src/main.rs`), so the loops run as `sqs-forwarder run` does;
/// with `--features dhat-heap`, dhat's, which counts every allocation (slower: its CPU
/// figures are not comparable, its allocations per event are what it is for).
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

/// Allocations so far (with `--features dhat-heap`; else 0).
fn allocations() -> u64 {
    #[cfg(feature = "dhat-heap")]
    {
        dhat::HeapStats::get().total_blocks
    }
    #[cfg(not(feature = "dhat-heap"))]
    {
        0
    }
}

/// Where SQS is: the stand-in's address when `BENCH_SQS=standin`, else LocalStack.
static ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn endpoint() -> String {
    ENDPOINT.get().cloned().unwrap_or_else(|| {
        std::env::var("FORWARDER_TEST_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
    })
}

/// This process's user + system CPU time so far (from /proc/self/stat, in clock ticks of
/// 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// Context switches of this process so far, voluntary and involuntary, summed over its
/// live threads (`/proc/self/task/*/status`; a thread that ended meanwhile is not
/// counted, and the runtime's workers and the SQLite thread live throughout). Each is a
/// task that parked and was woken: what a network costs beyond the work itself.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// What a loop cost this process, per event: CPU µs (user + system) and context
/// switches.
#[derive(Debug, Clone, Copy)]
struct Cost {
    cpu_us: f64,
    switches: f64,
    /// Allocations per event (`--features dhat-heap`; else 0).
    allocations: f64,
}

/// `f`'s result and what this process spent on it, per event.
async fn with_cpu<T>(n: usize, f: impl std::future::Future<Output = T>) -> (T, Cost) {
    let (cpu, switches, allocated) = (cpu_time(), context_switches(), allocations());
    let out = f.await;
    let spent = cpu_time().saturating_sub(cpu);
    let switched = context_switches().saturating_sub(switches);
    let cost = Cost {
        cpu_us: spent.as_secs_f64() * 1e6 / n as f64,
        switches: switched as f64 / n as f64,
        allocations: allocations().saturating_sub(allocated) as f64 / n as f64,
    };
    (out, cost)
}

/// The size of each event's body (`BENCH_EVENT_BYTES`, default 8192: Sentry's typical
/// error event). The padding sits in a field the forwarder never reads.
fn event_bytes() -> usize {
    std::env::var("BENCH_EVENT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8192)
}

/// SQS calls by operation.
#[derive(Debug, Default)]
struct Calls {
    receive: AtomicU64,
    send: AtomicU64,
    delete: AtomicU64,
    other: AtomicU64,
}

impl Calls {
    fn take(&self) -> [u64; 4] {
        [
            self.receive.swap(0, Ordering::Relaxed),
            self.send.swap(0, Ordering::Relaxed),
            self.delete.swap(0, Ordering::Relaxed),
            self.other.swap(0, Ordering::Relaxed),
        ]
    }
}

/// The SDK's own HTTPS client, counting each request by its `X-Amz-Target`.
#[derive(Debug, Clone)]
struct Counting {
    inner: SharedHttpClient,
    calls: Arc<Calls>,
}

#[derive(Debug)]
struct CountingConnector {
    inner: SharedHttpConnector,
    calls: Arc<Calls>,
}

impl HttpClient for Counting {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(CountingConnector {
            inner: self.inner.http_connector(settings, components),
            calls: self.calls.clone(),
        })
    }
}

impl HttpConnector for CountingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request.headers().get("x-amz-target").unwrap_or("");
        let counter = match target.rsplit('.').next() {
            Some("ReceiveMessage") => &self.calls.receive,
            Some("SendMessageBatch") => &self.calls.send,
            Some("DeleteMessageBatch") => &self.calls.delete,
            _ => &self.calls.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}

async fn sdk(calls: Arc<Calls>) -> aws_config::SdkConfig {
    let inner = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .build_https();
    sqs_forwarder::aws::sdk_loader(Duration::from_secs(30))
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .http_client(Counting { inner, calls })
        .load()
        .await
}

fn event(n: usize) -> String {
    let head = format!(
        r#"{{"event_id":"{n:032x}","project_id":42,"organization_id":7,"platform":"python","level":"error","message":"ZeroDivisionError: division by zero","tags":[["environment","production"],["level","error"],["release","backend@24.11.0"],["server_name","web-{}"],["user","id:{}"]],"extra":{{"n":{n},"pad":""#,
        n % 8,
        n % 100
    );
    let pad = event_bytes().saturating_sub(head.len() + 3);
    let mut body = head;
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(r#""}}"#);
    body
}

/// SQS's largest message and batch payload since August 2025: every queue of the bench
/// takes events of up to 1 MiB (`BENCH_EVENT_BYTES`).
const SQS_MAX_BYTES: usize = 1 << 20;

async fn create_queue(client: &Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "60",
        )
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            queue_max_bytes().to_string(),
        )
        .send()
        .await
        .expect("LocalStack is not running: start it with `make localstack`")
        .queue_url
        .unwrap()
}

/// The queues' `MaximumMessageSize`: SQS's default for new queues (1 MiB), or
/// `BENCH_QUEUE_MAX_MESSAGE` (262144: a queue made before August 2025).
fn queue_max_bytes() -> usize {
    std::env::var("BENCH_QUEUE_MAX_MESSAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SQS_MAX_BYTES)
}

/// `entries` with their sizes, in calls of at most 10 entries and [`SQS_MAX_BYTES`]
/// (as SQS takes them: ten 8 KB events in one call, one 900 KB event per call).
fn by_bytes<T>(entries: impl IntoIterator<Item = (T, usize)>) -> Vec<Vec<T>> {
    let mut calls: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for (entry, size) in entries {
        match calls.last_mut() {
            Some(call) if call.len() < 10 && bytes + size <= SQS_MAX_BYTES => {
                call.push(entry);
                bytes += size;
            }
            _ => {
                calls.push(vec![entry]);
                bytes = size;
            }
        }
    }
    calls
}

/// Fills a queue with `n` events, 16 batches at a time.
async fn fill(client: &Client, queue: &str, n: usize) {
    fill_with(client, queue, n, event).await
}

/// Fills a queue with the `n` bodies `body` makes, 16 batches at a time.
async fn fill_with(client: &Client, queue: &str, n: usize, body: fn(usize) -> String) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, queue, next) = (client.clone(), queue.to_string(), next.clone());
        tasks.spawn(async move {
            loop {
                let start = next.fetch_add(10, Ordering::SeqCst);
                if start >= n {
                    return;
                }
                let entries = (start..(start + 10).min(n)).map(|i| {
                    let body = body(i);
                    let size = body.len();
                    let entry = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .unwrap();
                    (entry, size)
                });
                for entries in by_bytes(entries) {
                    client
                        .send_message_batch()
                        .queue_url(&queue)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .unwrap();
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The ceiling: receive → send → delete, nothing else. Events per second.
///
/// `BENCH_BARE_WIRE=forwarder`: the same calls carry what the forwarder's carry (the
/// system attributes its receive asks for, its three message attributes on each sent
/// entry), so what the wire costs (the SDK's, and LocalStack's) is on both sides.
async fn ceiling(client: &Client, source: &str, dest: &str, n: usize, workers: usize) -> f64 {
    let like_forwarder = std::env::var("BENCH_BARE_WIRE").as_deref() == Ok("forwarder");
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(std::sync::OnceLock::new());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (client, source, dest, done, finished) = (
            client.clone(),
            source.to_string(),
            dest.to_string(),
            done.clone(),
            finished.clone(),
        );
        tasks.spawn(async move {
            while done.load(Ordering::SeqCst) < n {
                let mut receive = client
                    .receive_message()
                    .queue_url(&source)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1);
                if like_forwarder {
                    // As `SqsSource::receive_at_most` asks (the source module is the
                    // crate's own).
                    use aws_sdk_sqs::types::MessageSystemAttributeName as S;
                    receive = receive
                        .set_message_system_attribute_names(Some(vec![
                            S::SentTimestamp,
                            S::ApproximateReceiveCount,
                            S::MessageGroupId,
                            S::AwsTraceHeader,
                        ]))
                        .set_message_attribute_names(Some(
                            sqs_forwarder::forward::ForwardAttributes::None.receive_names(),
                        ));
                }
                let received = receive.send().await.unwrap();
                let messages = received.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                let entries = messages.iter().enumerate().map(|(i, m)| {
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(m.body().unwrap_or_default());
                    if like_forwarder {
                        // The forwarder's own three attributes, of their shape.
                        use sqs_forwarder::aws::Attribute;
                        let id = m.message_id().unwrap_or_default().replace('-', "");
                        for a in [
                            Attribute::string("event_id", id),
                            Attribute::number("project_id", 4505),
                            Attribute::number("organization_id", 17),
                        ] {
                            entry = entry.message_attributes(a.name.as_ref(), a.to_sdk().unwrap());
                        }
                    }
                    // Room for the attributes beside the body.
                    let size = m.body().map_or(0, str::len) + 200;
                    (entry.build().unwrap(), size)
                });
                // Large events: a call per SQS's batch limit, all at once.
                let sends = by_bytes(entries).into_iter().map(|entries| {
                    client
                        .send_message_batch()
                        .queue_url(&dest)
                        .set_entries(Some(entries))
                        .send()
                });
                for sent in futures_util::future::join_all(sends).await {
                    sent.unwrap();
                }
                let deletes = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                            .unwrap()
                    })
                    .collect();
                client
                    .delete_message_batch()
                    .queue_url(&source)
                    .set_entries(Some(deletes))
                    .send()
                    .await
                    .unwrap();
                if done.fetch_add(messages.len(), Ordering::SeqCst) + messages.len() >= n {
                    let _ = finished.set(Instant::now());
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    rate(n, started, &finished)
}

/// Events per second up to the moment the last event was forwarded (not counting the
/// tail of long polls still waiting on an empty queue).
fn rate(n: usize, started: Instant, finished: &std::sync::OnceLock<Instant>) -> f64 {
    let end = finished.get().copied().unwrap_or_else(Instant::now);
    n as f64 / (end - started).as_secs_f64()
}

fn config(source: &str, dest: &str, data_dir: &std::path::Path, workers: usize) -> Config {
    let settings = sqs_forwarder::config::cli::Cli::parse_or_one_line([
        "sqs-forwarder".to_string(),
        "--source-queue-url".into(),
        source.into(),
        "--dest-queue-url".into(),
        dest.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--workers".into(),
        workers.to_string(),
        // The same concurrency as the ceiling: every worker with a full batch.
        "--max-in-flight".into(),
        (workers * 10).to_string(),
        "--receive-wait-seconds".into(),
        "1".into(),
        "run".into(),
    ])
    .unwrap()
    .settings;
    let mut config = settings
        .validate(sqs_forwarder::config::Needs::SourceAndDestination, None)
        .unwrap();
    config.retry = RetryPolicy::default();
    config
}

/// The forwarder's worker, built as `sqs-forwarder run` builds it (clients, healthchecks,
/// the SQLite indexer): start-up, kept out of the measured loop.
async fn forwarder_worker(
    sdk: &aws_config::SdkConfig,
    source: &str,
    dest: &str,
    workers: usize,
    metrics: Metrics,
) -> Arc<sqs_forwarder::worker::Worker> {
    let dir = std::env::temp_dir().join(format!(
        "throughput-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let app = sqs_forwarder::app::App::connect(config(source, dest, &dir, workers), sdk, metrics)
        .await
        .unwrap();
    Arc::new(app.worker().await.unwrap())
}

/// The forwarder's worker step in `workers` tasks. Events per second.
async fn forwarder(worker: Arc<sqs_forwarder::worker::Worker>, n: usize, workers: usize) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(std::sync::OnceLock::new());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (worker, done, finished) = (worker.clone(), done.clone(), finished.clone());
        tasks.spawn(async move {
            while done.load(Ordering::SeqCst) < n {
                let outcome = worker.run_once().await.unwrap();
                assert_eq!(outcome.forwarded, outcome.received, "{outcome:?}");
                let k = outcome.forwarded;
                if done.fetch_add(k, Ordering::SeqCst) + k >= n && k > 0 {
                    let _ = finished.set(Instant::now());
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    rate(n, started, &finished)
}

/// The release binary on `n` events, as a child; its peak RSS in KiB.
async fn binary_rss(client: &Client, n: usize, workers: usize) -> Option<u64> {
    let n = n.min(2000);
    let tag = format!("tp-rss-{:08x}", fastrand::u32(..));
    let source = create_queue(client, &format!("{tag}-src")).await;
    let dest = create_queue(client, &format!("{tag}-dst")).await;
    fill(client, &source, n).await;
    let mut child = run_command(&source, workers)
        .env("FORWARDER_DEST_QUEUE_URL", &dest)
        .envs(
            std::env::var("BENCH_MAX_IN_FLIGHT")
                .ok()
                .map(|max| ("FORWARDER_MAX_IN_FLIGHT", max)),
        )
        .env("FORWARDER_EXIT_WHEN_IDLE", "2")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("RUST_LOG", "warn")
        .spawn()
        .ok()?;
    let (peak, status) = until_exit(&mut child).await;
    assert!(status.success());
    peak
}

/// `sqs-forwarder run` (the release build) on `source` with `w` workers, its data in a
/// directory of its own, against the bench's SQS: what every run of the binary shares.
fn run_command(source: &str, w: usize) -> std::process::Command {
    let dir = std::env::temp_dir().join(format!("tp-bin-{:08x}", fastrand::u32(..)));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"));
    command
        .arg("run")
        .env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("FORWARDER_SOURCE_QUEUE_URL", source)
        .env("FORWARDER_DATA_DIR", dir)
        .env("FORWARDER_WORKERS", w.to_string());
    command
}

/// Waits for `child` to exit: its peak resident set in KiB (VmHWM, which only grows:
/// its last reading before the exit is the peak), and how it exited.
async fn until_exit(child: &mut std::process::Child) -> (Option<u64>, std::process::ExitStatus) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            peak = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .or(peak);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return (peak, status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one run of the release binary gave: see [`binary_run`].
struct BinaryRun {
    /// From its start to its exit, less the idle exit's wait.
    secs: f64,
    /// Its peak resident set (VmHWM), in MiB.
    peak_mib: f64,
    /// Its SQS calls, by its own `forwarder.sqs.requests`: receive, send, delete, other.
    calls: [u64; 4],
    /// Events found in the destinations, and how many of them distinct.
    arrived: usize,
    distinct: usize,
}

/// How many routes [`routed_event`] spreads its events over.
static ROUTES: AtomicUsize = AtomicUsize::new(1);

/// A Sentry-like event of about 8 KB of organization `1 + n % ROUTES`.
fn routed_event(n: usize) -> String {
    let routes = ROUTES.load(Ordering::Relaxed).max(1);
    sentry_event(n, 8192, 5).replacen(
        "\"organization_id\":7",
        &format!("\"organization_id\":{}", 1 + n % routes),
        1,
    )
}

/// A Sentry-like event of about 1 MB, numbered after the small ones.
fn large_event(n: usize) -> String {
    sentry_event(1_000_000 + n, 1_000_000, 5)
}

/// `sqs-forwarder run` (release build, `w` workers, defaults but `env`) on `source`
/// until idle for 3 s, to `dests` (one: `FORWARDER_DEST_QUEUE_URL`; more: organization
/// routes `1..` in a routes file); then every destination drained. `n` events were sent.
async fn binary_run(
    client: &Client,
    source: &str,
    dests: &[String],
    w: usize,
    env: &[(&str, &str)],
    n: usize,
) -> BinaryRun {
    let (agent, requests) = requests_agent();
    let mut command = run_command(source, w);
    command
        .env("FORWARDER_EXIT_WHEN_IDLE", "3")
        .env("FORWARDER_STATSD_ADDR", agent.to_string())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied());
    if let [dest] = dests {
        command.env("FORWARDER_DEST_QUEUE_URL", dest);
    } else {
        let file = std::env::temp_dir().join(format!("tp-routes-{:08x}.toml", fastrand::u32(..)));
        let routes: String = dests
            .iter()
            .enumerate()
            .map(|(i, d)| format!("[organizations.{}]\nqueue_url = \"{d}\"\n\n", i + 1))
            .collect();
        std::fs::write(&file, routes).unwrap();
        command.env("FORWARDER_ROUTES_FILE", file);
    }
    requests.take();
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    let (peak_kib, status) = until_exit(&mut child).await;
    assert!(status.success(), "the binary failed: {status}");
    let secs = started.elapsed().as_secs_f64() - 3.0;
    // The binary's last packet leaves at its exit; let the agent read it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = requests.take();
    let mut ids = Vec::new();
    for dest in dests {
        loop {
            let got = client
                .receive_message()
                .queue_url(dest)
                .max_number_of_messages(10)
                .visibility_timeout(600)
                .send()
                .await
                .unwrap();
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                let body = m.body.unwrap_or_default();
                let id = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["event_id"].as_str().map(str::to_string))
                    .unwrap_or_default();
                ids.push(id);
            }
        }
        let _ = client.delete_queue().queue_url(dest).send().await;
    }
    let _ = client.delete_queue().queue_url(source).send().await;
    let arrived = ids.len();
    ids.sort();
    ids.dedup();
    assert!(arrived >= n, "{arrived} of {n} events arrived");
    BinaryRun {
        secs,
        peak_mib: peak_kib.unwrap_or(0) as f64 / 1024.0,
        calls,
        arrived,
        distinct: ids.len(),
    }
}

/// Events spread evenly over N organization routes (`BENCH_ROUTES`, default 1, 20, 100,
/// 300), each a destination queue of its own, 8 workers (`BENCH_ROUTE_WORKERS`),
/// `BENCH_ROUTE_EVENTS` (6,000) events of 8 KB: the binary at its defaults, then with
/// `FORWARDER_BATCH_WINDOW=0`. The window lowers requests, never the rate.
async fn many_routes(client: &Client) {
    let list = |var: &str, default: &str| -> Vec<usize> {
        std::env::var(var)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    let n = list("BENCH_ROUTE_EVENTS", "6000")[0];
    let w = list("BENCH_ROUTE_WORKERS", "8")[0];
    println!("many routes ({n} events of 8 KB over N organization routes, {w} workers, the release binary, rate from start to exit less the idle wait): routes | window | events/s | requests/event (receive, send, delete, other) | total | peak RSS | arrived, distinct");
    for routes in list("BENCH_ROUTES", "1,20,100,300") {
        for window in ["1s (default)", "0"] {
            let tag = format!("tp-routes-{:08x}", fastrand::u32(..));
            let source = create_queue(client, &format!("{tag}-src")).await;
            let mut dests = Vec::new();
            for r in 0..routes {
                dests.push(create_queue(client, &format!("{tag}-d{r}")).await);
            }
            ROUTES.store(routes, Ordering::Relaxed);
            fill_with(client, &source, n, routed_event).await;
            let env: &[(&str, &str)] = if window == "0" {
                &[("FORWARDER_BATCH_WINDOW", "0")]
            } else {
                &[]
            };
            let run = binary_run(client, &source, &dests, w, env, n).await;
            let per = |k: u64| k as f64 / n as f64;
            println!(
                "{routes:>6} | {window:>12} | {:>6.0} | {:.3}, {:.3}, {:.3}, {:.3} | {:.3} | {:.1} MiB | {}, {}",
                n as f64 / run.secs,
                per(run.calls[0]),
                per(run.calls[1]),
                per(run.calls[2]),
                per(run.calls[3]),
                per(run.calls.iter().sum()),
                run.peak_mib,
                run.arrived,
                run.distinct
            );
        }
    }
}

/// Peak RSS of the release binary at its defaults where memory is most at stake:
/// 160 events of 1 MB at 16 and 64 workers; 3,000 of 8 KB then 160 of 1 MB at 32
/// workers (every receive in flight expected small when the large ones come).
async fn bursts(client: &Client) {
    println!("bursts (the release binary at its defaults, 1 MiB queues): run | workers | peak RSS | seconds | arrived, distinct");
    for (small, w) in [(0, 16), (0, 64), (3000, 32)] {
        let tag = format!("tp-burst-{:08x}", fastrand::u32(..));
        let source = create_queue(client, &format!("{tag}-src")).await;
        let dest = create_queue(client, &format!("{tag}-dst")).await;
        ROUTES.store(1, Ordering::Relaxed);
        fill_with(client, &source, small, routed_event).await;
        fill_with(client, &source, 160, large_event).await;
        let run = binary_run(client, &source, &[dest], w, &[], small + 160).await;
        let name = if small > 0 {
            format!("{small} x 8 KB, then 160 x 1 MB")
        } else {
            "160 x 1 MB".to_string()
        };
        println!(
            "{name:>28} | {w:>3} | {:.1} MiB | {:.1} | {}, {}",
            run.peak_mib, run.secs, run.arrived, run.distinct
        );
    }
}

/// What one process cost under `perf stat` (every thread, those that ended too).
#[derive(Debug, Clone, Default)]
struct ProcessCost {
    /// CPU time, user + system, in ms (`task-clock`).
    cpu_ms: f64,
    /// Context switches, voluntary and involuntary, of all its threads.
    switches: f64,
    /// Page faults (each a page the kernel zeroed, or a huge page).
    faults: f64,
    /// Events per second from its first receive to its source's last delete (watched
    /// from outside, every 50 ms); 0 on an empty source.
    rate: f64,
    /// SQS calls: receive, send, delete, other.
    calls: [u64; 4],
    /// The readings of `BENCH_PERF_EXTRA`'s events, in its order.
    extra: Vec<f64>,
    /// CPU time LocalStack spent meanwhile, in ms (None on the stand-in, or where its
    /// pid is not known): what serving this process's calls cost the server.
    server_ms: Option<f64>,
}

/// LocalStack's CPU time so far (user + system, every thread), in ms, from
/// `localstack/localstack.pid` (written by `localstack/start.sh`); None if not found.
fn server_cpu_ms() -> Option<f64> {
    if std::env::var("BENCH_SQS").as_deref() == Ok("standin") {
        return None;
    }
    let pidfile = concat!(env!("CARGO_MANIFEST_DIR"), "/localstack/localstack.pid");
    let pid = std::fs::read_to_string(pidfile).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok()?;
    // Fields after the command's closing parenthesis: utime and stime are the 12th and
    // 13th (14th and 15th of the whole line).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let per_second = *TICK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    });
    Some(ticks * 1e3 / per_second)
}

/// More events for `perf stat` to count (`BENCH_PERF_EXTRA`, comma-separated, such as
/// `syscalls:sys_enter_connect`), each printed per event.
fn perf_extra() -> Vec<String> {
    std::env::var("BENCH_PERF_EXTRA")
        .unwrap_or_default()
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `perf stat` can count a process here (it may be missing, or forbidden by
/// `perf_event_paranoid`).
fn perf_works() -> bool {
    std::process::Command::new("perf")
        .args(["stat", "-x,", "-e", "task-clock,context-switches", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `perf stat -x,`'s reading of `event` in `report`.
fn perf_value(report: &str, event: &str) -> f64 {
    report
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            // The name, or the name and a modifier (`task-clock:u`).
            let name = *fields.get(2)?;
            let named = name == event
                || name
                    .rsplit_once(':')
                    .is_some_and(|(head, m)| head == event && m.len() <= 2);
            named.then(|| fields[0].parse().ok())?
        })
        .next()
        .unwrap_or(f64::NAN)
}

/// Runs `program` under `perf stat` until it exits, watching `source` (which holds
/// `n` events) drain meanwhile.
///
/// `BENCH_PERF_RECORD=DIR` also records each process with call stacks
/// (`perf record --call-graph dwarf`) into `DIR/LABEL.data`, to compare where the two
/// spend; the recording adds its own CPU to the figures, so read them from a run without.
async fn under_perf(
    label: &str,
    program: std::process::Command,
    source: &str,
    n: usize,
) -> ProcessCost {
    let report = std::env::temp_dir().join(format!("perf-{:08x}.csv", fastrand::u32(..)));
    let mut perf = std::process::Command::new("perf");
    let mut events = "task-clock,context-switches,page-faults".to_string();
    for extra in perf_extra() {
        events = format!("{events},{extra}");
    }
    perf.args(["stat", "-x,", "-e", &events, "-o"])
        .arg(&report)
        .arg("--");
    if let Ok(dir) = std::env::var("BENCH_PERF_RECORD") {
        let data = std::path::Path::new(&dir).join(format!("{label}.data"));
        perf.args([
            "perf",
            "record",
            "-q",
            "--call-graph",
            "dwarf,16384",
            "-F",
            "1000",
            "-o",
        ])
        .arg(data)
        .arg("--");
    }
    perf.arg(program.get_program())
        .args(program.get_args())
        .envs(
            program
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let watcher = Client::from_conf(aws_sdk_sqs::config::Builder::from(&sdk_plain().await).build());
    let server_before = server_cpu_ms();
    let mut child = KillOnDrop(perf.spawn().expect("perf stat could not start"));
    // Read as it comes, so a chatty process never blocks on a full pipe.
    let stdout = child.0.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut said);
            said
        })
    });
    let mut last_full = Instant::now();
    let mut emptied = None;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if emptied.is_none() && n > 0 {
            use aws_sdk_sqs::types::QueueAttributeName as A;
            let asked = Instant::now();
            let attrs = watcher
                .get_queue_attributes()
                .queue_url(source)
                .attribute_names(A::ApproximateNumberOfMessages)
                .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .unwrap();
            let count = |name: &A| {
                attrs
                    .attributes()
                    .and_then(|a| a.get(name)?.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            let (visible, hidden) = (
                count(&A::ApproximateNumberOfMessages),
                count(&A::ApproximateNumberOfMessagesNotVisible),
            );
            if visible >= n {
                last_full = asked;
            } else if visible + hidden == 0 {
                emptied = Some(asked);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let server_ms = server_cpu_ms()
        .zip(server_before)
        .map(|(after, before)| after - before);
    assert!(status.success(), "the measured process failed: {status}");
    let said = stdout
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_file(&report);
    ProcessCost {
        cpu_ms: perf_value(&text, "task-clock"),
        switches: perf_value(&text, "context-switches"),
        faults: perf_value(&text, "page-faults"),
        extra: perf_extra().iter().map(|e| perf_value(&text, e)).collect(),
        rate: emptied.map_or(0.0, |end| n as f64 / (end - last_full).as_secs_f64()),
        calls: said_calls(&said),
        server_ms,
    }
}

/// The calls a bare loop's process said it made (`calls: R S D O`); zeros if none.
fn said_calls(said: &str) -> [u64; 4] {
    let mut calls = [0; 4];
    let counts = said.lines().find_map(|l| l.strip_prefix("calls: "));
    for (slot, n) in calls
        .iter_mut()
        .zip(counts.unwrap_or_default().split_whitespace())
    {
        *slot = n.parse().unwrap_or(0);
    }
    calls
}

/// A DogStatsD agent for the binary: counts its own `forwarder.sqs.requests` by
/// operation (receive, send, delete, other), as an agent would.
fn requests_agent() -> (std::net::SocketAddr, Arc<Calls>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let calls = Arc::new(Calls::default());
    let counted = calls.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                let Some(rest) = line.strip_prefix("forwarder.sqs.requests:") else {
                    continue;
                };
                let value: u64 = rest
                    .split('|')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let counter = match rest
                    .split("operation:")
                    .nth(1)
                    .and_then(|o| o.split(',').next())
                {
                    Some("ReceiveMessage") => &counted.receive,
                    Some("SendMessageBatch") => &counted.send,
                    Some("DeleteMessageBatch") => &counted.delete,
                    _ => &counted.other,
                };
                counter.fetch_add(value, Ordering::Relaxed);
            }
        }
    });
    (addr, calls)
}

/// The bare loop as a process of its own (this bench, run again with
/// `BENCH_BARE_LOOP`): receive → send → delete on `w` tasks until `n` events went.
fn bare_loop_process(source: &str, dest: &str, n: usize, w: usize) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .env("BENCH_BARE_LOOP", format!("{source} {dest} {n} {w}"))
        .env("FORWARDER_TEST_ENDPOINT", endpoint());
    command
}

/// The bare loop's process: what `BENCH_BARE_LOOP` asks (`SOURCE DEST N WORKERS`).
fn serve_bare_loop(spec: &str) {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let [source, dest, n, w] = parts[..] else {
        panic!("BENCH_BARE_LOOP is SOURCE DEST N WORKERS, not {spec:?}");
    };
    let (n, w) = (n.parse().unwrap(), w.parse().unwrap());
    // Built as `#[tokio::main]` builds the binary's runtime.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let calls = Arc::new(Calls::default());
        let client = Client::new(&sdk(calls.clone()).await);
        if n > 0 {
            ceiling(&client, source, dest, n, w).await;
        }
        let [r, s, d, o] = calls.take();
        println!("calls: {r} {s} {d} {o}");
    });
}

/// The idempotency store of the processes section's binary (`BENCH_IDEMPOTENCY`).
static IDEMPOTENCY_URL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// `sqs-forwarder run` as users start it (release build, `w` workers, the SQLite
/// indexer, DogStatsD to `agent`, every other setting its default), until idle for 2 s.
fn binary_process(
    source: &str,
    dest: &str,
    w: usize,
    agent: std::net::SocketAddr,
) -> std::process::Command {
    let mut command = run_command(source, w);
    command
        .env("FORWARDER_DEST_QUEUE_URL", dest)
        .env("FORWARDER_EXIT_WHEN_IDLE", "2")
        // DogStatsD, as `run` is mostly deployed: its own count of its SQS calls.
        .env("FORWARDER_STATSD_ADDR", agent.to_string())
        // `BENCH_BINARY_ENV="K=V K=V"`: settings for the binary alone, to compare
        // (`TOKIO_WORKER_THREADS=1`, `MIMALLOC_…`, `FORWARDER_…`).
        .envs(
            std::env::var("BENCH_BINARY_ENV")
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|kv| kv.split_once('=')),
        );
    if let Some(url) = IDEMPOTENCY_URL.lock().ok().and_then(|u| u.clone()) {
        command.env("FORWARDER_IDEMPOTENCY_URL", url);
    }
    command
}

/// How many rounds the processes section runs (`BENCH_ROUNDS`, 1 to 20; default 3, or
/// 1 for the smoke test).
fn rounds(full: bool) -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 3 } else { 1 })
        .clamp(1, 20)
}

/// The middle of `values` (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// The real binary beside a bare loop, each in a process of its own, as issue 30
/// measured them: `n` Sentry-like events of `BENCH_EVENT_BYTES` (5 tags, a stack trace)
/// through each, `w` pollers, `perf stat` counting each process whole. Each process also
/// runs once on an empty source, and that run (start-up, the idle tail) is taken off, so
/// what is left is what the events cost.
///
/// On a machine shared with LocalStack either process moves ±15 % from one run to the
/// next, so the two run in `BENCH_ROUNDS` rounds, alternating which goes first, each
/// round on fresh queues; the verdict is the median of the rounds' ratios.
async fn processes(client: &Client, n: usize, w: usize, rounds: usize) {
    let tag = format!("tp-proc-{:08x}", fastrand::u32(..));
    let body: fn(usize) -> String = |i| sentry_event(i, event_bytes(), 5);
    let empty = create_queue(client, &format!("{tag}-empty-src")).await;
    let empty_dst = create_queue(client, &format!("{tag}-empty-dst")).await;
    let bare_idle = under_perf(
        "bare-empty",
        bare_loop_process(&empty, &empty_dst, 0, w),
        &empty,
        0,
    )
    .await;
    let (agent, requests) = requests_agent();
    let bin_idle = under_perf(
        "binary-empty",
        binary_process(&empty, &empty_dst, w, agent),
        &empty,
        0,
    )
    .await;
    println!(
        "processes ({w} pollers, {n} events of {} bytes, perf stat; empty-source run taken off): round | process | events/s | CPU ms: run, empty | CPU µs/event | switches: run, empty | switches/event | page faults/event | calls/event (receive, send, delete, other)",
        body(0).len()
    );
    let per_event = |full: &ProcessCost, idle: &ProcessCost| {
        (
            (full.cpu_ms - idle.cpu_ms) * 1e3 / n as f64,
            (full.switches - idle.switches) / n as f64,
            (full.faults - idle.faults) / n as f64,
        )
    };
    let (mut cpu_ratios, mut rate_ratios, mut bin_switches) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let mut queues = Vec::new();
        for name in ["bare-src", "bare-dst", "bin-src", "bin-dst"] {
            queues.push(create_queue(client, &format!("{tag}-{round}-{name}")).await);
        }
        fill_with(client, &queues[0], n, body).await;
        fill_with(client, &queues[2], n, body).await;
        // The agent's counts of earlier runs have arrived by now (sent every 50 ms to 1 s).
        requests.take();
        let (bare_label, bin_label) = (format!("bare-{round}"), format!("binary-{round}"));
        let run_bare = || {
            under_perf(
                &bare_label,
                bare_loop_process(&queues[0], &queues[1], n, w),
                &queues[0],
                n,
            )
        };
        let run_bin = || {
            under_perf(
                &bin_label,
                binary_process(&queues[2], &queues[3], w, agent),
                &queues[2],
                n,
            )
        };
        // Alternate which goes first, so a drift of the machine falls on both.
        let (bare, mut bin) = if round % 2 == 1 {
            let bare = run_bare().await;
            (bare, run_bin().await)
        } else {
            let bin = run_bin().await;
            (run_bare().await, bin)
        };
        // The binary's last packet leaves at its exit; let the agent read it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        bin.calls = requests.take();
        let (bare_us, bare_sw, bare_pf) = per_event(&bare, &bare_idle);
        let (bin_us, bin_sw, bin_pf) = per_event(&bin, &bin_idle);
        for (name, full, idle, us, sw, pf) in [
            ("bare loop", &bare, &bare_idle, bare_us, bare_sw, bare_pf),
            ("sqs-forwarder run", &bin, &bin_idle, bin_us, bin_sw, bin_pf),
        ] {
            println!(
                "{round:>5} | {name:>17} | {:>6.0} | {:>7.1}, {:>6.1} | {us:>6.1} | {:>6.0}, {:>5.0} | {sw:.2} | {pf:.2} | {}",
                full.rate,
                full.cpu_ms,
                idle.cpu_ms,
                full.switches,
                idle.switches,
                full.calls.map(|c| format!("{:.3}", c as f64 / n as f64)).join(", ")
            );
        }
        for (k, event) in perf_extra().iter().enumerate() {
            let per =
                |full: &ProcessCost, idle: &ProcessCost| (full.extra[k] - idle.extra[k]) / n as f64;
            println!(
                "{round:>5} | {event} per event: bare loop {:.3}, sqs-forwarder run {:.3}",
                per(&bare, &bare_idle),
                per(&bin, &bin_idle)
            );
        }
        if let (Some(bare_server), Some(bin_server)) = (bare.server_ms, bin.server_ms) {
            println!(
                "{round:>5} | LocalStack's CPU µs/event serving it: bare loop {:.1}, sqs-forwarder run {:.1}",
                bare_server * 1e3 / n as f64,
                bin_server * 1e3 / n as f64
            );
        }
        println!(
            "{round:>5} | binary / bare loop: CPU {:.2}x, events/s {:.2}",
            bin_us / bare_us,
            bin.rate / bare.rate
        );
        cpu_ratios.push(bin_us / bare_us);
        rate_ratios.push(bin.rate / bare.rate);
        bin_switches.push(bin_sw);
        for q in &queues {
            let _ = client.delete_queue().queue_url(q).send().await;
        }
    }
    println!(
        "binary / bare loop, median of {} rounds: CPU {:.2}x, events/s {:.2}, the binary's switches/event {:.2}",
        cpu_ratios.len(),
        median(cpu_ratios),
        median(rate_ratios),
        median(bin_switches)
    );
    for q in [&empty, &empty_dst] {
        let _ = client.delete_queue().queue_url(q).send().await;
    }
}

/// The stand-in's process, stopped with the bench.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A line plot of events/s against workers, forwarder and ceiling, as SVG.
fn svg(rows: &[(usize, f64, f64)]) -> String {
    let (w, h, pad) = (640.0, 400.0, 60.0);
    let max = rows.iter().map(|r| r.1.max(r.2)).fold(1.0, f64::max) * 1.1;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (rows.len().max(2) - 1) as f64;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / max;
    let line = |pick: fn(&(usize, f64, f64)) -> f64| {
        rows.iter()
            .enumerate()
            .map(|(i, r)| format!("{:.1},{:.1}", x(i), y(pick(r))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">events/s by worker count ({}, batches of 10)</text>
<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>
<polyline fill="none" stroke="#999" stroke-width="2" stroke-dasharray="6 4" points="{}"/>
<polyline fill="none" stroke="#1f77b4" stroke-width="2.5" points="{}"/>
<text x="{}" y="{}" fill="#999">ceiling: receive → send → delete</text>
<text x="{}" y="{}" fill="#1f77b4">sqs-forwarder</text>
<text x="{}" y="{}" text-anchor="middle">workers</text>
"##,
        w / 2.0,
        if ENDPOINT.get().is_some() {
            "in-memory SQS stand-in"
        } else {
            "LocalStack"
        },
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        line(|r| r.2),
        line(|r| r.1),
        pad + 10.0,
        pad + 14.0,
        pad + 10.0,
        pad + 30.0,
        w / 2.0,
        h - 15.0,
    );
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#1f77b4\"/>\n",
            x(i),
            h - pad + 18.0,
            r.0,
            x(i),
            y(r.1)
        ));
    }
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>\n",
            pad - 6.0,
            y(v) + 4.0,
            v
        ));
    }
    out.push_str("</svg>\n");
    out
}

/// One worker count: the three loops on fresh queues, one printed row. Returns
/// (workers, forwarder ev/s, ceiling ev/s).
///
/// The loops: the ceiling (bare receive → send → delete), the worker step
/// (`Worker::run_once` in `w` tasks, no batching window), and the worker pool as
/// `sqs-forwarder run` runs it (pipelined pollers, the default batching window and
/// in-flight bound). Each with its CPU and context switches per event.
async fn row(
    sdk: &aws_config::SdkConfig,
    client: &Client,
    calls: &Calls,
    n: usize,
    w: usize,
) -> (usize, f64, f64) {
    let tag = format!("tp-{:08x}", fastrand::u32(..));
    let queues = [
        create_queue(client, &format!("{tag}-c-src")).await,
        create_queue(client, &format!("{tag}-c-dst")).await,
        create_queue(client, &format!("{tag}-f-src")).await,
        create_queue(client, &format!("{tag}-f-dst")).await,
    ];
    fill(client, &queues[0], n).await;
    fill(client, &queues[2], n).await;
    calls.take();
    // BENCH_ONLY=ceiling|forwarder|pool runs one loop (for a profiler), `none` none
    // (the set-up alone, to subtract); a loop not run shows 1.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let runs = |name: &str| only.is_empty() || only == name;
    let skipped = Cost {
        cpu_us: 1.0,
        switches: 1.0,
        allocations: 1.0,
    };
    let (bare, bare_cost) = if runs("ceiling") {
        with_cpu(n, ceiling(client, &queues[0], &queues[1], n, w)).await
    } else {
        (1.0, skipped)
    };
    let bare_calls = calls.take();
    let (ours, our_cost) = if runs("forwarder") {
        let worker = forwarder_worker(sdk, &queues[2], &queues[3], w, Metrics::disabled()).await;
        with_cpu(n, forwarder(worker, n, w)).await
    } else {
        (1.0, skipped)
    };
    let our_calls = calls.take();
    let (pooled, pool_calls, pool_cost) = if runs("pool") {
        // With DogStatsD, as `run` sends by default.
        let metrics = local_dogstatsd();
        pool(
            sdk,
            client,
            calls,
            n,
            w,
            sqs_forwarder::forward::Pack::Off,
            metrics,
        )
        .await
    } else {
        (1.0, [0; 4], skipped)
    };
    let per = |c: [u64; 4]| {
        format!(
            "{:.3}, {:.3}, {:.3}",
            c[0] as f64 / n as f64,
            c[1] as f64 / n as f64,
            c[2] as f64 / n as f64
        )
    };
    println!(
        "{w:>7} | {bare:>7.0} | {ours:>7.0} | {pooled:>7.0} | {:>6.1} | {:>6.1} | {:>6.1} | {:.2}x {:.2}x | {:.2} | {:.2} | {:.2} | {} | {} (+{} start-up calls) | {}",
        bare_cost.cpu_us,
        our_cost.cpu_us,
        pool_cost.cpu_us,
        our_cost.cpu_us / bare_cost.cpu_us,
        pool_cost.cpu_us / bare_cost.cpu_us,
        bare_cost.switches,
        our_cost.switches,
        pool_cost.switches,
        per(bare_calls),
        per(our_calls),
        our_calls[3],
        per(pool_calls),
    );
    if cfg!(feature = "dhat-heap") {
        println!(
            "allocations/event: ceiling {:.0} | step {:.0} | pool {:.0}",
            bare_cost.allocations, our_cost.allocations, pool_cost.allocations
        );
    }
    for q in &queues {
        let _ = client.delete_queue().queue_url(q).send().await;
    }
    (w, ours, bare)
}

/// The worker pool of `sqs-forwarder run` on `n` fresh events with `w` pollers, packed
/// or not, stopped once the source is empty. Events/s up to then, and the calls.
async fn pool(
    sdk: &aws_config::SdkConfig,
    client: &Client,
    calls: &Calls,
    n: usize,
    w: usize,
    pack: sqs_forwarder::forward::Pack,
    metrics: Metrics,
) -> (f64, [u64; 4], Cost) {
    let tag = format!("tp-pack-{:08x}", fastrand::u32(..));
    let source = create_queue(client, &format!("{tag}-src")).await;
    let dest = create_queue(client, &format!("{tag}-dst")).await;
    fill(client, &source, n).await;
    let dir = std::env::temp_dir().join(&tag);
    let mut config = config(&source, &dest, &dir, w);
    config.pack = pack;
    // The default bound, or BENCH_PACK_IN_FLIGHT.
    config.max_in_flight = std::env::var("BENCH_PACK_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    config.batch_window = None;
    let app = sqs_forwarder::app::App::connect(config, sdk, metrics)
        .await
        .unwrap();
    // Watched with a client of its own, not counted.
    let watcher = Client::from_conf(aws_sdk_sqs::config::Builder::from(&sdk_plain().await).build());
    let finished = Arc::new(std::sync::OnceLock::new());
    calls.take();
    let started = Instant::now();
    let done = {
        let finished = finished.clone();
        async move {
            loop {
                // Its own calls cost the measured process a little: 10 a second.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let attrs = watcher
                    .get_queue_attributes()
                    .queue_url(&source)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                    .send()
                    .await
                    .unwrap();
                use aws_sdk_sqs::types::QueueAttributeName as A;
                let left: u64 = [
                    A::ApproximateNumberOfMessages,
                    A::ApproximateNumberOfMessagesNotVisible,
                ]
                .iter()
                .filter_map(|name| attrs.attributes()?.get(name)?.parse::<u64>().ok())
                .sum();
                if left == 0 {
                    let _ = finished.set(Instant::now());
                    return;
                }
            }
        }
    };
    let (summary, cost) = with_cpu(n, app.run(done)).await;
    let summary = summary.unwrap();
    assert_eq!(summary.totals.forwarded, n, "{summary:?}");
    (rate(n, started, &finished), calls.take(), cost)
}

/// DogStatsD to a local UDP socket that drops what it gets, as `run`'s default
/// backend sends to an agent.
fn local_dogstatsd() -> Metrics {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while sink.recv(&mut buf).is_ok() {}
    });
    sqs_forwarder::metrics::sink::udp(&sqs_forwarder::metrics::sink::StatsdSettings {
        addr,
        prefix: String::new(),
        tags: vec![("env".into(), "bench".into())],
        sample_rate: 1.0,
    })
    .unwrap()
}

/// The metrics backends compared on the worker step: none, DogStatsD (to a local UDP
/// socket that drops what it gets) and Prometheus (its registry, as scraped).
fn backends() -> Vec<(&'static str, Metrics)> {
    let dogstatsd = local_dogstatsd();
    let prometheus = Metrics::with_backend(
        Arc::new(sqs_forwarder::metrics::prometheus::PrometheusBackend::new(
            "",
        )),
        "",
        &[("env".into(), "bench".into())],
    );
    vec![
        ("off", Metrics::disabled()),
        ("dogstatsd", dogstatsd),
        ("prometheus", prometheus),
    ]
}

/// The worker step on `n` fresh events with `w` tasks and `metrics`: events/s and CPU
/// µs/event.
async fn with_metrics(
    sdk: &aws_config::SdkConfig,
    client: &Client,
    n: usize,
    w: usize,
    metrics: Metrics,
) -> (f64, Cost) {
    let tag = format!("tp-m-{:08x}", fastrand::u32(..));
    let source = create_queue(client, &format!("{tag}-src")).await;
    let dest = create_queue(client, &format!("{tag}-dst")).await;
    fill(client, &source, n).await;
    let worker = forwarder_worker(sdk, &source, &dest, w, metrics).await;
    let out = with_cpu(n, forwarder(worker, n, w)).await;
    for q in [&source, &dest] {
        let _ = client.delete_queue().queue_url(q).send().await;
    }
    out
}

/// An SDK configuration for LocalStack (or the stand-in) whose calls are not counted.
async fn sdk_plain() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .load()
        .await
}

fn main() {
    // The binary's allocator settings, so the in-process loops allocate as it does.
    #[cfg(not(feature = "dhat-heap"))]
    let _ = sqs_forwarder::allocator::tune();
    if std::env::var_os("BENCH_STANDIN_SERVE").is_some() {
        sqs_standin::serve();
        return;
    }
    if let Ok(spec) = std::env::var("BENCH_BARE_LOOP") {
        serve_bare_loop(&spec);
        return;
    }
    // BENCH_SQS=standin: the in-memory stand-in, in its own process, instead of LocalStack.
    let _standin = (std::env::var("BENCH_SQS").as_deref() == Ok("standin")).then(|| {
        let (child, endpoint) = sqs_standin::spawn();
        let _ = ENDPOINT.set(endpoint);
        KillOnDrop(child)
    });
    // BENCH_PROXY_LATENCY_MS: LocalStack behind a proxy that holds each call that long.
    if let Some(ms) = std::env::var("BENCH_PROXY_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        if ENDPOINT.get().is_none() {
            let target = endpoint()
                .trim_start_matches("http://")
                .parse()
                .expect("the endpoint is host:port");
            let proxy = delay_proxy::spawn(target, Duration::from_millis(ms));
            let _ = ENDPOINT.set(format!("http://{proxy}"));
        }
    }
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 5000 } else { 200 });
    let workers: Vec<usize> = std::env::var("BENCH_WORKERS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| if full { vec![1, 2, 4, 8, 16] } else { vec![4] });
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::builder().testing().build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let calls = Arc::new(Calls::default());
        let sdk = sdk(calls.clone()).await;
        let client = Client::new(&sdk);
        let sqs = if ENDPOINT.get().is_some() { "the stand-in" } else { "LocalStack" };
        println!(
            "{n} events of {} bytes per run, batches of 10, {sqs} at {}",
            event(0).len(),
            endpoint()
        );
        println!("workers | events/s: ceiling | step | pool | CPU µs/event: ceiling | step | pool | step, pool / ceiling | context switches/event: ceiling | step | pool | calls/event (receive, send, delete): ceiling | step | pool");
        let mut rows = Vec::new();
        for &w in &workers {
            rows.push(row(&sdk, &client, &calls, n, w).await);
        }
        if std::env::var("BENCH_PACK").as_deref() != Ok("off") {
            let w: usize = std::env::var("BENCH_PACK_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| workers.iter().copied().max().unwrap_or(4));
            println!("packing ({w} workers, the worker pool, batching window 1 s): route | events/s | requests/event (receive, send, delete) | requests/event");
            for pack in [sqs_forwarder::forward::Pack::Off, sqs_forwarder::forward::Pack::Ndjson] {
                let (ev, c, _) = pool(&sdk, &client, &calls, n, w, pack, Metrics::disabled()).await;
                let per = |k: u64| k as f64 / n as f64;
                println!(
                    "{:>6} | {ev:>9.0} | {:.3}, {:.3}, {:.3} | {:.3}",
                    pack.as_str(),
                    per(c[0]),
                    per(c[1]),
                    per(c[2]),
                    per(c[0] + c[1] + c[2] + c[3])
                );
            }
        }
        if std::env::var("BENCH_METRICS").as_deref() != Ok("off") {
            let w = workers.iter().copied().max().unwrap_or(4);
            println!("metrics backends ({w} workers, the worker step, same run): backend | events/s | CPU µs/event");
            for (name, metrics) in backends() {
                let (ev, cost) = with_metrics(&sdk, &client, n, w, metrics).await;
                println!("{name:>10} | {ev:>9.0} | {:>6.1}", cost.cpu_us);
            }
        }
        if std::env::var("BENCH_PROCESSES").as_deref() != Ok("off") {
            // BENCH_PROCESS_WORKERS=8,16,32: a section per worker count (default: the
            // largest of BENCH_WORKERS).
            let process_workers: Vec<usize> = std::env::var("BENCH_PROCESS_WORKERS")
                .ok()
                .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![workers.iter().copied().max().unwrap_or(4)]);
            // BENCH_IDEMPOTENCY=off,redis,postgres: the section once per idempotency
            // store (off: none), the binary's rows beside each other.
            let stores: Vec<String> = std::env::var("BENCH_IDEMPOTENCY")
                .ok()
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_else(|| vec!["off".into()]);
            if perf_works() {
                for w in process_workers {
                    for store in &stores {
                        let url = match store.as_str() {
                            "redis" => Some("redis://127.0.0.1:6379".to_string()),
                            "postgres" => Some(
                                std::env::var("FORWARDER_TEST_POSTGRES_URL").unwrap_or_else(
                                    |_| "postgres://postgres@127.0.0.1:5432/test".into(),
                                ),
                            ),
                            _ => None,
                        };
                        println!("idempotency store: {store}");
                        if let Ok(mut slot) = IDEMPOTENCY_URL.lock() {
                            *slot = url;
                        }
                        processes(&client, n, w, rounds(full)).await;
                    }
                }
            } else {
                println!("processes: skipped (`perf stat` does not work here)");
            }
        }
        // Many routes and the burst: full runs only (or BENCH_SHAPES=on), off with
        // BENCH_SHAPES=off.
        let shapes = std::env::var("BENCH_SHAPES").ok();
        if shapes.as_deref() == Some("on") || (full && shapes.as_deref() != Some("off")) {
            many_routes(&client).await;
            bursts(&client).await;
        }
        let rss_workers: usize = std::env::var("BENCH_RSS_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if full { 16 } else { 4 });
        if let Some(kib) = binary_rss(&client, n, rss_workers).await {
            println!(
                "peak RSS of `sqs-forwarder run` ({rss_workers} workers, {} events of {} bytes, indexer on SQLite): {:.1} MiB",
                n.min(2000),
                event(0).len(),
                kib as f64 / 1024.0
            );
        }
        if full && rows.len() > 1 {
            let name = match std::env::var("BENCH_PLOT") {
                Ok(name) => name,
                Err(_) if ENDPOINT.get().is_some() => "throughput-standin.svg".into(),
                Err(_) => "throughput.svg".into(),
            };
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, svg(&rows)).unwrap();
            println!("plot: {}", path.display());
        }
    });
}
