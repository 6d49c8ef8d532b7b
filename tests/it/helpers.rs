//! Test harness: real LocalStack queues with random names per test, a UDP socket that
//! captures statsd lines, and helpers to run the worker in-process or as the binary.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use sqs_forwarder::config::Config;
use sqs_forwarder::metrics::sink::MetricsSettings;

/// LocalStack's edge endpoint (`make test` starts it).
pub fn endpoint() -> String {
    std::env::var("FORWARDER_TEST_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// The in-process worker's logs, when `TEST_LOG` is set (as zero-to-production does):
/// quiet by default, `TEST_LOG=1 cargo nextest run …` shows them (`RUST_LOG` filters).
pub fn test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = sqs_forwarder::telemetry::init(&sqs_forwarder::telemetry::LogSetup::from_env(
            None, false,
        ));
    }
}

/// SDK configuration for LocalStack, with SDK retries off as in production.
pub async fn sdk() -> SdkConfig {
    sdk_at(&endpoint()).await
}

/// SDK configuration for another endpoint (a proxy in front of LocalStack).
pub async fn sdk_at(endpoint: &str) -> SdkConfig {
    test_log();
    sqs_forwarder::aws::sdk_loader(Duration::from_secs(30))
        .endpoint_url(endpoint)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await
}

/// The app for a configuration, on LocalStack, with metrics to the configured statsd
/// and the indexer's store opened if the configuration has one.
pub async fn app(config: Config) -> sqs_forwarder::app::App {
    let metrics = sqs_forwarder::metrics::sink::build(&config.metrics).expect("statsd socket");
    sqs_forwarder::app::App::connect(config, &sdk().await, metrics)
        .await
        .expect("app")
}

/// The environment the binary needs to reach LocalStack.
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// A random name, so tests never share queues.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// A source and a destination queue, made for one test.
pub struct Queues {
    /// A client on LocalStack.
    pub client: Client,
    /// The queue the worker consumes.
    pub source: String,
    /// The queue the worker forwards to.
    pub dest: String,
}

impl Queues {
    /// Two new queues; the source hides received messages for `visibility` seconds.
    pub async fn create(visibility: u32) -> Queues {
        let client = Client::new(&sdk().await);
        let name = unique("t");
        let source = create_queue(&client, &format!("{name}-src"), visibility).await;
        let dest = create_queue(&client, &format!("{name}-dst"), 30).await;
        Queues {
            client,
            source,
            dest,
        }
    }

    /// A worker configuration for these queues.
    pub fn config(&self, statsd: Option<SocketAddr>) -> Config {
        test_config(&self.source, &self.dest, statsd)
    }
}

/// Creates a FIFO queue (content-based deduplication off) and returns its URL.
pub async fn create_fifo_queue(client: &Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(format!("{name}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .expect("create FIFO queue in LocalStack")
        .queue_url
        .expect("queue url")
}

/// Receives (and deletes) whole messages, attributes included; every receive waits at
/// most one second.
pub async fn drain_messages(
    client: &Client,
    queue: &str,
    want: usize,
    timeout: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    while messages.len() < want && Instant::now() < deadline {
        let out = client
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive from LocalStack");
        let received = out.messages.unwrap_or_default();
        if received.is_empty() {
            continue;
        }
        let entries = received
            .iter()
            .enumerate()
            .map(|(i, m)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                    .build()
                    .expect("entry")
            })
            .collect();
        client
            .delete_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("delete");
        messages.extend(received);
    }
    messages
}

/// A message attribute's value.
pub fn attribute(m: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    m.message_attributes
        .as_ref()?
        .get(name)?
        .string_value
        .clone()
}

/// Creates a queue and returns its URL.
pub async fn create_queue(client: &Client, name: &str, visibility: u32) -> String {
    client
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility.to_string(),
        )
        .send()
        .await
        .expect("create queue in LocalStack (is it running? `make localstack`)")
        .queue_url
        .expect("queue url")
}

/// A configuration as `run` would build it, with short waits for tests.
pub fn test_config(source: &str, dest: &str, statsd: Option<SocketAddr>) -> Config {
    Config {
        source_queue_url: Some(source.to_string()),
        dest_queue_url: Some(dest.to_string()),
        metrics: statsd.map_or_else(MetricsSettings::off, MetricsSettings::dogstatsd),
        ..Config::for_test()
    }
}

/// The PostgreSQL the indexer tests use (`make test` sets it; the machine's default).
pub fn postgres_url() -> String {
    std::env::var("FORWARDER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh SQLite file URL in a temporary directory.
pub fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(unique("ix"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!("sqlite:{}", dir.join("indexer.sqlite3").display())
}

/// A random organization id, so tests sharing a PostgreSQL never share strings.
pub fn random_org() -> u64 {
    fastrand::u64(1..i64::MAX as u64)
}

/// A valid event with a given id.
pub fn event(id: u128, project: u64) -> String {
    format!(
        r#"{{"event_id":"{id:032x}","project_id":{project},"organization_id":7,"platform":"python","message":"boom #{id}","tags":[["environment","production"],["level","error"]],"extra":{{"n":{id}}}}}"#
    )
}

/// Sends bodies to a FIFO queue in order, all in the message group `src`, ten per call.
pub async fn send_in_group(client: &Client, queue: &str, bodies: &[String]) {
    send_entries(client, queue, bodies, Some("src")).await;
}

/// Sends bodies to a queue, ten per call.
pub async fn send_bodies(client: &Client, queue: &str, bodies: &[String]) {
    send_entries(client, queue, bodies, None).await;
}

/// Sends bodies ten per call, in order; with `group`, all in that message group with
/// deduplication ids (a FIFO queue). Every entry must be accepted.
async fn send_entries(client: &Client, queue: &str, bodies: &[String], group: Option<&str>) {
    for (n, chunk) in bodies.chunks(10).enumerate() {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b)
                    .set_message_group_id(group.map(str::to_string))
                    .set_message_deduplication_id(group.map(|_| format!("{n}-{i}")))
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = client
            .send_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send to LocalStack");
        assert!(out.failed.is_empty(), "{:?}", out.failed);
    }
}

/// Receives (and deletes) until `want` messages arrived or `timeout` passed; every
/// receive waits at most one second. Returns the bodies.
/// How long a drain goes on once what was expected arrived, to see a duplicate: a second
/// copy sent with the rest is there by then. Drains that asked for one more than could
/// come waited out their whole deadline (about 190 s of `make test`).
pub const SETTLE: Duration = Duration::from_secs(2);

/// `want` messages within `timeout` (deleted as they come), then any more that come
/// within [`SETTLE`] of the last: what arrived, duplicates included.
pub async fn drain_messages_then_more(
    client: &Client,
    queue: &str,
    want: usize,
    timeout: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut got = drain_messages(client, queue, want, timeout).await;
    loop {
        let more = drain_messages(client, queue, 1, SETTLE).await;
        if more.is_empty() {
            return got;
        }
        got.extend(more);
    }
}

/// [`drain_messages_then_more`], the bodies.
pub async fn drain_then_more(
    client: &Client,
    queue: &str,
    want: usize,
    timeout: Duration,
) -> Vec<String> {
    drain_messages_then_more(client, queue, want, timeout)
        .await
        .into_iter()
        .map(|m| m.body.unwrap_or_default())
        .collect()
}

pub async fn drain(client: &Client, queue: &str, want: usize, timeout: Duration) -> Vec<String> {
    drain_messages(client, queue, want, timeout)
        .await
        .into_iter()
        .map(|m| m.body.unwrap_or_default())
        .collect()
}

/// Visible plus in-flight messages of a queue.
pub async fn depth(client: &Client, queue: &str) -> usize {
    let out = client
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("attributes");
    let attrs: HashMap<QueueAttributeName, String> = out.attributes.unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| {
        attrs
            .get(a)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// The sum of a statsd counter's lines (`name:N|c|#tags`) whose tags contain `tag`.
pub fn statsd_sum(lines: &[String], name: &str, tag: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l.starts_with(&format!("{name}:")) && l.contains(tag))
        .filter_map(|l| l.split(':').nth(1)?.split('|').next()?.parse::<u64>().ok())
        .sum()
}

/// The event id of a forwarded body.
pub fn event_id_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("forwarded body is JSON");
    v["event_id"].as_str().expect("event_id").to_string()
}

/// A statsd server on a random local UDP port that keeps every line it receives.
pub struct StatsdCapture {
    /// Where to send metrics.
    pub addr: SocketAddr,
    /// Every line received so far.
    lines: Arc<Mutex<Vec<String>>>,
}

impl StatsdCapture {
    /// Starts listening.
    pub fn start() -> StatsdCapture {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::downgrade(&lines);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let Some(lines) = sink.upgrade() else { return };
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut lines = lines.lock().expect("lock");
                    lines.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
                }
            }
        });
        StatsdCapture { addr, lines }
    }

    /// Lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    /// How many received lines equal `line` exactly.
    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    /// Waits until `pred` holds for the lines, or `timeout`; returns the lines.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if pred(&lines) || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The exact line Sentry's plugin emits for one forwarded event.
pub const HTTP_OK: &str = "data-forwarding.http_response:1|c|#plugin:amazon-sqs,success:true";
/// The exact line for one event that failed.
pub const HTTP_FAILED: &str = "data-forwarding.http_response:1|c|#plugin:amazon-sqs,success:false";

/// Reads one HTTP/1.1 message (headers, then a Content-Length body); `None` once the
/// peer closes. For the in-test servers and proxies.
pub async fn read_http_message(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = tokio::io::AsyncReadExt::read(stream, &mut chunk)
            .await
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let headers = String::from_utf8_lossy(&buf[..header_end]).to_lowercase();
    let length: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = tokio::io::AsyncReadExt::read(stream, &mut chunk)
            .await
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// The binary as a child process that a test owns: killed when dropped, so a test that
/// fails or times out leaves no process behind. Its output is read as it comes, so a
/// chatty child never blocks on a full pipe.
pub struct Spawned {
    /// The child; `None` once it was waited for.
    child: Option<std::process::Child>,
    /// Readers of stdout and stderr.
    readers: Vec<std::thread::JoinHandle<Vec<u8>>>,
}

/// Starts `command` with stdout and stderr captured (see [`Spawned`]).
pub fn spawn_binary(command: &mut std::process::Command) -> Spawned {
    spawn_with_stdin(command, None)
}

/// Runs `command` to its end, at most `deadline` (killed past it), and returns what
/// it printed. Blocks the thread: for commands that need nothing else of the test.
pub fn output_of(command: &mut std::process::Command, deadline: Duration) -> std::process::Output {
    spawn_binary(command).finish_blocking(deadline)
}

/// A routes file with `text`, in a new directory; its path.
pub fn routes_file(text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("routes"));
    std::fs::create_dir_all(&dir).expect("routes dir");
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).expect("routes file");
    path
}

/// The binary `run` until the source is idle 2 s, on a routes file, indexer off;
/// asserts it succeeded.
pub fn run_routes(source: &str, routes: &std::path::Path) -> std::process::Output {
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", source)
        .env("FORWARDER_ROUTES_FILE", routes)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off");
    run_ok(&mut run)
}

/// Runs `command` to its end (at most two minutes) and asserts it succeeded, showing
/// its stderr if not; returns what it printed.
pub fn run_ok(command: &mut std::process::Command) -> std::process::Output {
    let out = output_of(command, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// As [`spawn_binary`], with `stdin` written to the child's standard input (then
/// closed); `None`: no input.
pub fn spawn_with_stdin(command: &mut std::process::Command, stdin: Option<Vec<u8>>) -> Spawned {
    use std::io::{Read, Write};
    let mut child = command
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the binary");
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("stdout")),
        Box::new(child.stderr.take().expect("stderr")),
    ];
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let readers = pipes
        .into_iter()
        .map(|mut pipe| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            })
        })
        .collect();
    Spawned {
        child: Some(child),
        readers,
    }
}

/// The binary with LocalStack's environment, ready for `.env(…)` and [`spawn_binary`].
pub fn binary(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"));
    command.args(args).envs(aws_env());
    command
}

impl Spawned {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`HUP`, `TERM`), as `kill -NAME` does.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "SIG{name} not delivered");
    }

    /// Whether the child has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// [`Spawned::finish`], blocking the thread (no async runtime needed).
    pub fn finish_blocking(mut self, deadline: Duration) -> std::process::Output {
        let started = Instant::now();
        let mut child = self.child.take().expect("not waited for yet");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                break Some(status);
            }
            if started.elapsed() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.collect(status, deadline)
    }

    /// Waits for the child to exit, at most `deadline`; past it, the child is killed and
    /// the test fails with what it printed.
    pub async fn finish(mut self, deadline: Duration) -> std::process::Output {
        let started = Instant::now();
        let mut child = self.child.take().expect("not waited for yet");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                break Some(status);
            }
            if started.elapsed() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.collect(status, deadline)
    }

    /// The output once the child has ended; `None`: it was killed at its deadline.
    fn collect(
        &mut self,
        status: Option<std::process::ExitStatus>,
        deadline: Duration,
    ) -> std::process::Output {
        let mut outputs = std::mem::take(&mut self.readers)
            .into_iter()
            .map(|r| r.join().unwrap_or_default());
        let stdout = outputs.next().unwrap_or_default();
        let stderr = outputs.next().unwrap_or_default();
        let Some(status) = status else {
            panic!(
                "the binary ran past its {deadline:?} deadline and was killed; it printed:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        };
        std::process::Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free port on 127.0.0.1.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// The status of `GET path`, or `None` if nothing listens.
pub fn status(addr: &str, path: &str) -> Option<u16> {
    let (head, _) = get(addr, path, "*/*")?;
    head.split(' ').nth(1)?.parse().ok()
}

/// `GET path` with `accept`: the response's head (lower-cased) and body, or `None` if
/// nothing listens.
pub fn get(addr: &str, path: &str, accept: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\naccept: {accept}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((head.to_lowercase(), body.to_string()))
}

/// Polls until `GET path` answers `want`, or 20 s.
pub fn wait_status(addr: &str, path: &str, want: u16) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = status(addr, path);
        if got == Some(want) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What [`intercept_proxy`] does with one request to LocalStack.
pub enum Intercept {
    /// Forward it as it is.
    Pass,
    /// Answer it without forwarding, after `delay`.
    Reply {
        /// How long to hold the answer.
        delay: Duration,
        /// The whole HTTP response.
        response: Vec<u8>,
    },
    /// Forward a SendMessageBatch with these entries removed, and answer them as failed
    /// with `code` (as SQS fails single entries): `(entry id, code)`.
    FailEntries(Vec<(String, String)>),
    /// Close the connection without an answer.
    Drop,
    /// Forward it after `delay`: a slow answer.
    Delay(Duration),
    /// Forward it at once, and hold the answer for `delay`: the request took effect,
    /// and the client learns of it late (or never, if it dies meanwhile).
    Answered(Duration),
    /// Forward it after `delay`, unless its client closed the connection meanwhile (a
    /// request that dies with its sender, as on a network that drops it).
    DelayUnlessGone(Duration),
}

/// A decision for [`intercept_proxy`]: the SendMessageBatch entries to `queue` whose
/// body `refused` picks fail with `InvalidMessageContents`, as SQS refuses a message on
/// its own account (characters it does not take); every other request passes.
pub fn refuse_entries(
    queue: String,
    refused: impl Fn(&str) -> bool + Send + Sync + 'static,
) -> impl Fn(&str, &serde_json::Value) -> Intercept + Send + Sync + 'static {
    move |action, body| {
        if action != "SendMessageBatch" || body["QueueUrl"].as_str() != Some(queue.as_str()) {
            return Intercept::Pass;
        }
        let failed: Vec<(String, String)> = body["Entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["MessageBody"].as_str().is_some_and(&refused))
            .map(|e| {
                let id = e["Id"].as_str().unwrap_or_default().to_string();
                (id, "InvalidMessageContents".to_string())
            })
            .collect();
        if failed.is_empty() {
            Intercept::Pass
        } else {
            Intercept::FailEntries(failed)
        }
    }
}

/// An SQS error response of the JSON protocol.
pub fn sqs_error(status: &str, code: &str) -> Vec<u8> {
    let body = format!(r#"{{"__type":"com.amazonaws.sqs#{code}","message":"injected"}}"#);
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.0\r\nx-amzn-query-error: {code};Sender\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A proxy to LocalStack on 127.0.0.1 that lets `decide` see each SQS request (its
/// `X-Amz-Target` action, e.g. `SendMessageBatch`, and its JSON body) and pass, answer
/// or rewrite it. Each request goes upstream on a connection of its own.
pub async fn intercept_proxy<F>(decide: F) -> String
where
    F: Fn(&str, &serde_json::Value) -> Intercept + Send + Sync + 'static,
{
    use tokio::io::AsyncWriteExt;
    let decide = Arc::new(decide);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstream = endpoint().trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (decide, upstream) = (decide.clone(), upstream.clone());
            tokio::spawn(async move {
                while let Some(request) = read_http_message(&mut inbound).await {
                    let (head, body) = split_http(&request);
                    let action = header(&head, "x-amz-target")
                        .and_then(|t| t.rsplit('.').next().map(str::to_string))
                        .unwrap_or_default();
                    let json: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    let mut hold_answer = Duration::ZERO;
                    let (request, failed) = match decide(&action, &json) {
                        Intercept::Pass => (request, Vec::new()),
                        Intercept::Answered(delay) => {
                            hold_answer = delay;
                            (request, Vec::new())
                        }
                        Intercept::Drop => return,
                        Intercept::Delay(delay) => {
                            tokio::time::sleep(delay).await;
                            (request, Vec::new())
                        }
                        Intercept::DelayUnlessGone(delay) => {
                            tokio::time::sleep(delay).await;
                            // The client waits for its answer and sends nothing more:
                            // an end of stream or an error says it is gone.
                            let mut probe = [0u8; 1];
                            match inbound.try_read(&mut probe) {
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                _ => return,
                            }
                            (request, Vec::new())
                        }
                        Intercept::Reply { delay, response } => {
                            tokio::time::sleep(delay).await;
                            if inbound.write_all(&response).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Intercept::FailEntries(failed) => {
                            let mut json = json.clone();
                            if let Some(entries) = json["Entries"].as_array_mut() {
                                entries.retain(|e| {
                                    !failed.iter().any(|(id, _)| e["Id"].as_str() == Some(id))
                                });
                            }
                            (with_body(&head, &json.to_string()), failed)
                        }
                    };
                    let forwarded = json["Entries"].as_array().is_none_or(|e| !e.is_empty());
                    let mut reply: serde_json::Value =
                        serde_json::json!({"Successful": [], "Failed": []});
                    let mut response = Vec::new();
                    if forwarded {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await
                        else {
                            return;
                        };
                        if outbound.write_all(&request).await.is_err() {
                            return;
                        }
                        let Some(answer) = read_http_message(&mut outbound).await else {
                            return;
                        };
                        response = answer;
                        if !failed.is_empty() {
                            let (_, body) = split_http(&response);
                            reply = serde_json::from_slice(&body).unwrap_or(reply);
                        }
                    }
                    if !failed.is_empty() {
                        let list = reply["Failed"].as_array().cloned().unwrap_or_default();
                        let mut list = list;
                        for (id, code) in &failed {
                            list.push(serde_json::json!({
                                "Id": id, "Code": code, "SenderFault": false, "Message": "injected"
                            }));
                        }
                        reply["Failed"] = serde_json::Value::Array(list);
                        if reply.get("Successful").is_none() {
                            reply["Successful"] = serde_json::json!([]);
                        }
                        let body = reply.to_string();
                        response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes();
                    }
                    tokio::time::sleep(hold_answer).await;
                    if inbound.write_all(&response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Head and body of an HTTP message.
fn split_http(message: &[u8]) -> (String, Vec<u8>) {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |p| p + 4);
    (
        String::from_utf8_lossy(&message[..end]).into_owned(),
        message[end..].to_vec(),
    )
}

/// A header's value; `name` in lower case.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim().to_lowercase() == name).then(|| value.trim().to_string())
    })
}

/// The request with a new body and its content-length.
fn with_body(head: &str, body: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in head.trim_end().lines() {
        if line.to_lowercase().starts_with("content-length:") {
            out.push_str(&format!("content-length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// `Command::output` with a deadline, and the child killed if the test ends first.
pub trait OutputWithin {
    /// Runs to the end, at most `deadline` (see [`output_of`]).
    fn output_within(&mut self, deadline: Duration) -> std::process::Output;
}

impl OutputWithin for std::process::Command {
    fn output_within(&mut self, deadline: Duration) -> std::process::Output {
        output_of(self, deadline)
    }
}

/// The switch of a [`tcp_proxy`].
pub struct Switch {
    /// Down: new connections are dropped.
    down: std::sync::atomic::AtomicBool,
    /// Bumped when going down: every open connection closes.
    epoch: tokio::sync::watch::Sender<u64>,
    /// Connections dropped because the proxy was down.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Connections accepted, up or down.
    pub accepted: std::sync::atomic::AtomicU64,
}

impl Switch {
    /// Down closes every open connection and drops every new one; up lets them through.
    pub fn set_down(&self, down: bool) {
        use std::sync::atomic::Ordering;
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.epoch.send_modify(|e| *e += 1);
        }
    }
}

/// A TCP proxy on 127.0.0.1 to `upstream` (`host:port`: LocalStack, PostgreSQL) that
/// holds each new connection for `hold` first, and can be switched down. Returns its
/// address and its switch.
pub async fn tcp_proxy(hold: Duration, upstream: String) -> (String, Arc<Switch>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let switch = Arc::new(Switch {
        down: AtomicBool::new(false),
        epoch: tokio::sync::watch::channel(0).0,
        dropped: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
    });
    let s = switch.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::Relaxed);
            if s.down.load(Ordering::SeqCst) {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                drop(inbound);
                continue;
            }
            let mut epoch = s.epoch.subscribe();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = epoch.changed() => {} // down: both ends close
                }
            });
        }
    });
    (addr.to_string(), switch)
}
