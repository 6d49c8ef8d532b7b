//! Large events as SQS takes them since 2025 (up to 1 MiB), with the real binary on
//! LocalStack: each arrives once, in one SendMessageBatch of its own (a call full by
//! bytes goes at once, never twice), and a destination slower than half the source's
//! visibility timeout still gets each event once (every held message is kept hidden
//! from its receive to its delete).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;

use crate::helpers::*;

/// SQS's largest message since August 2025.
const ONE_MIB: usize = 1 << 20;

/// A queue that takes messages of up to 1 MiB, hiding received ones for `visibility`
/// seconds.
async fn big_queue(q: &Queues, name: &str, visibility: u32) -> String {
    q.client
        .create_queue()
        .queue_name(unique(name))
        .attributes(QueueAttributeName::MaximumMessageSize, ONE_MIB.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility.to_string(),
        )
        .send()
        .await
        .expect("create a 1 MiB queue in LocalStack")
        .queue_url
        .expect("queue url")
}

/// An event of `size` bytes (long breadcrumbs, as Sentry's largest events have).
fn sized_event(id: u128, size: usize) -> String {
    let head = format!(
        r#"{{"event_id":"{id:032x}","project_id":42,"organization_id":7,"platform":"python","breadcrumbs":""#
    );
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// Sends each body in a SendMessage of its own (ten of them would pass a batch's 1 MiB),
/// eight at a time.
async fn send_each(client: &aws_sdk_sqs::Client, queue: &str, bodies: Vec<String>) {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in bodies.chunks(bodies.len().div_ceil(8).max(1)) {
        let (client, queue, chunk) = (client.clone(), queue.to_string(), chunk.to_vec());
        tasks.spawn(async move {
            for body in chunk {
                client
                    .send_message()
                    .queue_url(&queue)
                    .message_body(body)
                    .send()
                    .await
                    .expect("send a large event to LocalStack");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("sender task");
    }
}

/// Every body that arrived, by event id, with how often it came.
async fn arrivals(
    client: &aws_sdk_sqs::Client,
    queue: &str,
    want: usize,
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for body in drain_then_more(client, queue, want, Duration::from_secs(60)).await {
        *seen.entry(event_id_of(&body)).or_default() += 1;
    }
    seen
}

/// 60 events of about 900 KB, the default window and 4 workers: each arrives once, each
/// in a call of its own (60 SendMessageBatch: none waited for a window, none was sent
/// twice), and the source is empty after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_900_kb_each_arrive_once_in_a_call_of_their_own() {
    let q = Queues::create(30).await;
    let source = big_queue(&q, "t-big-src", 30).await;
    let dest = big_queue(&q, "t-big-dst", 30).await;
    let events = 60u128;
    send_each(
        &q.client,
        &source,
        (1..=events).map(|i| sized_event(i, 900_000)).collect(),
    )
    .await;

    let statsd = StatsdCapture::start();
    let started = Instant::now();
    let mut run = binary(&["run", "--exit-when-idle", "3"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &source)
        .env("FORWARDER_DEST_QUEUE_URL", &dest)
        .env("FORWARDER_WORKERS", "4")
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
        .env("RUST_LOG", "warn");
    let out = run_ok(&mut run);
    let took = started.elapsed();

    let seen = arrivals(&q.client, &dest, events as usize).await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "forwarded more than once: {twice:?}");
    assert_eq!(seen.len(), events as usize, "every event arrives");
    assert_eq!(depth(&q.client, &source).await, 0, "the source is empty");
    let lines = statsd.lines();
    let sends = statsd_sum(
        &lines,
        "forwarder.sqs.requests",
        "operation:SendMessageBatch",
    );
    println!(
        "60 x 900 KB: {took:?} with the binary's exit after 3 s idle; {sends} SendMessageBatch; {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sends, events as u64, "one call per event, none sent twice");
}

/// The issue's slow destination: every SendMessageBatch held 5 s, a source visibility
/// timeout of 8 s, 60 events of about 500 KB and 8 workers. Each batch outlives half its
/// visibility timeout, so it lives on its extensions: each event arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_slower_than_half_the_visibility_timeout_gets_each_event_once() {
    let q = Queues::create(30).await;
    let source = big_queue(&q, "t-slow-src", 8).await;
    let dest = big_queue(&q, "t-slow-dst", 30).await;
    let events = 60u128;
    send_each(
        &q.client,
        &source,
        (1..=events).map(|i| sized_event(i, 500_000)).collect(),
    )
    .await;
    let slow = intercept_proxy(|action, _| {
        if action == "SendMessageBatch" {
            Intercept::Delay(Duration::from_secs(5))
        } else {
            Intercept::Pass
        }
    })
    .await;

    let statsd = StatsdCapture::start();
    let mut run = binary(&["run", "--exit-when-idle", "3"]);
    run.env("AWS_ENDPOINT_URL", &slow)
        .env("FORWARDER_SOURCE_QUEUE_URL", &source)
        .env("FORWARDER_DEST_QUEUE_URL", &dest)
        .env("FORWARDER_WORKERS", "8")
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
        .env("RUST_LOG", "warn");
    let out = output_of(&mut run, Duration::from_secs(170));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let seen = arrivals(&q.client, &dest, events as usize).await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "forwarded more than once: {twice:?}");
    assert_eq!(seen.len(), events as usize, "every event arrives");
    let lines = statsd.lines();
    let extended = statsd_sum(
        &lines,
        "forwarder.sqs.requests",
        "operation:ChangeMessageVisibilityBatch",
    );
    assert!(extended > 0, "the batches lived on their extensions");
}
