//! What users pay: SQS requests per event with the batching window, counted by the
//! forwarder itself (`forwarder.sqs.requests{operation}`, every request its clients
//! send), with the real binary on LocalStack.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// The sum of a counter's lines whose tags contain `tag`.
/// The values of a timer, in milliseconds.
fn timings(lines: &[String], name: &str) -> Vec<u64> {
    let mut v: Vec<u64> = lines
        .iter()
        .filter(|l| l.starts_with(&format!("{name}:")))
        .filter_map(|l| l.split(':').nth(1)?.split('|').next()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

fn p99(sorted: &[u64]) -> u64 {
    sorted[((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A trickle of 20 events/s for 20 s into one route, with a 1 s window: every event
/// arrives, at no more than 0.5 requests per event (10x fewer than without a window),
/// within 3 s at the 99th percentile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_shares_calls_within_the_window() {
    let q = Queues::create(30).await;
    let statsd = StatsdCapture::start();
    let worker = spawn_binary(
        binary(&["run"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_BATCH_WINDOW", "1s")
            .env("FORWARDER_EXIT_WHEN_IDLE", "3")
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
            .env("RUST_LOG", "warn"),
    );
    // 20 a second, one SendMessage each, on the test's own client.
    let events = 400u128;
    let started = Instant::now();
    for i in 1..=events {
        let due = started + Duration::from_millis(50 * (i as u64 - 1));
        tokio::time::sleep_until(due.into()).await;
        q.client
            .send_message()
            .queue_url(&q.source)
            .message_body(event(i, 1))
            .send()
            .await
            .unwrap();
    }
    let out = worker.finish(Duration::from_secs(60)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arrived = drain(&q.client, &q.dest, events as usize, Duration::from_secs(20)).await;
    let ids: HashSet<String> = arrived.iter().map(|b| event_id_of(b)).collect();
    assert_eq!(ids.len(), events as usize, "every event arrives");

    let lines = statsd.lines();
    let requests = statsd_sum(&lines, "forwarder.sqs.requests", "operation:");
    let per_event = requests as f64 / events as f64;
    let by_op: HashMap<&str, u64> = [
        "ReceiveMessage",
        "SendMessageBatch",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
        "GetQueueAttributes",
    ]
    .into_iter()
    .map(|op| {
        (
            op,
            statsd_sum(&lines, "forwarder.sqs.requests", &format!("operation:{op}")),
        )
    })
    .collect();
    let latency = timings(&lines, "forwarder.event.latency");
    println!(
        "trickle: {requests} requests for {events} events = {per_event:.3}/event {by_op:?}; latency p50 {} ms p99 {} ms",
        latency[latency.len() / 2],
        p99(&latency)
    );
    assert!(
        per_event <= 0.5,
        "{per_event:.3} requests per event: {by_op:?}"
    );
    assert_eq!(latency.len(), events as usize, "one latency per event");
    assert!(p99(&latency) <= 3_000, "p99 {} ms", p99(&latency));
}

/// Sentry's per-project forwarding: 2,000 events of 20 projects, each routed to its own
/// queue. A received batch of 10 spreads over about 8 routes; with the window the
/// events of many receives meet per route, so calls fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_routes_fill_their_calls_across_receives() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("b20");
    let source = create_queue(&client, &format!("{name}-src"), 30).await;
    let mut routes = String::new();
    let mut queues = Vec::new();
    for project in 1..=20u64 {
        let queue = create_queue(&client, &format!("{name}-p{project}"), 30).await;
        routes.push_str(&format!(
            "[projects.{project}]\nqueue_url = \"{queue}\"\n\n"
        ));
        queues.push((project, queue));
    }
    let path = routes_file(&routes);
    let events = 2_000u128;
    // Interleaved, as many projects' events are in a real source queue.
    let bodies: Vec<String> = (0..events)
        .map(|i| event(i + 1, (i % 20) as u64 + 1))
        .collect();
    send_bodies(&client, &source, &bodies).await;

    let statsd = StatsdCapture::start();
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &source)
        .env("FORWARDER_ROUTES_FILE", &path)
        .env("FORWARDER_BATCH_WINDOW", "1s")
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
        .env("RUST_LOG", "warn");
    run_ok(&mut run);

    for (project, queue) in &queues {
        let arrived = drain(&client, queue, 100, Duration::from_secs(20)).await;
        assert_eq!(arrived.len(), 100, "project {project}");
        for body in &arrived {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["project_id"], *project, "at its own project's queue");
        }
    }
    let lines = statsd.lines();
    let sends = statsd_sum(
        &lines,
        "forwarder.sqs.requests",
        "operation:SendMessageBatch",
    );
    let per_event = sends as f64 / events as f64;
    let entries = timings(&lines, "forwarder.send_batch.entries");
    println!(
        "20 routes: {sends} SendMessageBatch for {events} events = {per_event:.3}/event; {} requests in all; entries per call p50 {}",
        statsd_sum(&lines, "forwarder.sqs.requests", "operation:"),
        entries[entries.len() / 2]
    );
    assert_eq!(entries.len() as u64, sends, "one entries value per call");
    assert!(
        per_event <= 0.15,
        "{per_event:.3} SendMessageBatch per event"
    );
}

/// A window over a third of the source's visibility timeout is refused at start, in
/// one line naming the variable.
#[tokio::test]
async fn a_window_over_a_third_of_the_visibility_timeout_is_refused() {
    let q = Queues::create(6).await;
    let mut run = binary(&["run", "--exit-when-idle", "1"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_BATCH_WINDOW", "3s")
        .env("FORWARDER_INDEXER", "off");
    let out = output_of(&mut run, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("error: FORWARDER_BATCH_WINDOW: 3s is over a third of the source queue's visibility timeout (6s)"),
        "{stderr}"
    );
    // `check` says the same.
    let mut check = binary(&["check"]);
    check
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_BATCH_WINDOW", "3s")
        .env("FORWARDER_INDEXER", "off");
    let out = output_of(&mut check, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error: FORWARDER_BATCH_WINDOW: 3s is over a third")),
        "{stderr}"
    );
    // The default adapts instead: at most a third (2 s here), and the worker runs.
    let mut run = binary(&["run", "--exit-when-idle", "1"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_INDEXER", "off");
    run_ok(&mut run);
}
