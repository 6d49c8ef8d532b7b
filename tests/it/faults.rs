//! Throttling, server errors, slow answers and connection resets, injected by an HTTP
//! proxy on 127.0.0.1 between the worker and LocalStack. Every event still arrives, and
//! the retries show in the metrics.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;

/// What the proxy did, by kind.
#[derive(Default)]
struct Counts {
    forwarded: AtomicU64,
    throttled: AtomicU64,
    server_error: AtomicU64,
    /// Connections closed with no answer.
    reset: AtomicU64,
    slow: AtomicU64,
}

/// Starts the proxy: after start-up, one fault of each kind for sure, then faults
/// drawn at random (10% throttled, 10% 503, 5% dropped connections, 5% 1.5 s slow).
async fn faulty_proxy(counts: Arc<Counts>) -> String {
    let seen = AtomicU64::new(0);
    intercept_proxy(move |_, _| {
        let roll = match seen.fetch_add(1, Ordering::Relaxed) {
            4 => 0,
            6 => 10,
            8 => 20,
            _ => fastrand::u32(0..100),
        };
        let reply = |status: &str, code: &str| Intercept::Reply {
            delay: Duration::ZERO,
            response: sqs_error(status, code),
        };
        match roll {
            0..=9 => {
                counts.throttled.fetch_add(1, Ordering::Relaxed);
                reply("400 Bad Request", "RequestThrottled")
            }
            10..=19 => {
                counts.server_error.fetch_add(1, Ordering::Relaxed);
                reply("503 Service Unavailable", "ServiceUnavailable")
            }
            20..=24 => {
                counts.reset.fetch_add(1, Ordering::Relaxed);
                Intercept::Drop
            }
            25..=29 => {
                counts.slow.fetch_add(1, Ordering::Relaxed);
                counts.forwarded.fetch_add(1, Ordering::Relaxed);
                Intercept::Delay(Duration::from_millis(1500))
            }
            _ => {
                counts.forwarded.fetch_add(1, Ordering::Relaxed);
                Intercept::Pass
            }
        }
    })
    .await
}

// Multi-threaded: the proxy must run while this thread waits for the worker process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_are_retried_and_every_event_arrives() {
    let q = Queues::create(30).await;
    let bodies: Vec<String> = (1..=200).map(|i| event(i, 1)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;
    let counts = Arc::new(Counts::default());
    let proxy = faulty_proxy(counts.clone()).await;
    let statsd = StatsdCapture::start();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
        .arg("run")
        .envs(aws_env())
        .env("AWS_ENDPOINT_URL", &proxy)
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
        .env("FORWARDER_RETRY_INITIAL_INTERVAL", "20ms")
        .env("FORWARDER_RETRY_MAX_INTERVAL", "500ms")
        .env("FORWARDER_REQUEST_TIMEOUT", "1s")
        .env("FORWARDER_EXIT_WHEN_IDLE", "3")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("RUST_LOG", "error")
        .output_within(Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Faults on deletes mean redeliveries: at least once, possibly more.
    let mut arrived = drain(&q.client, &q.dest, 400, Duration::from_secs(5)).await;
    if depth(&q.client, &q.source).await > 0 {
        // Anything not yet deleted is still in the source: nothing is lost.
        arrived.extend(drain(&q.client, &q.source, 400, Duration::from_secs(40)).await);
    }
    let ids: HashSet<String> = arrived.iter().map(|b| event_id_of(b)).collect();
    let want: HashSet<String> = bodies.iter().map(|b| event_id_of(b)).collect();
    assert!(
        want.is_subset(&ids),
        "{} of 200 events missing",
        want.difference(&ids).count()
    );

    let (t, e, r, s) = (
        counts.throttled.load(Ordering::Relaxed),
        counts.server_error.load(Ordering::Relaxed),
        counts.reset.load(Ordering::Relaxed),
        counts.slow.load(Ordering::Relaxed),
    );
    println!(
        "faults injected: {t} throttled, {e} server errors, {r} dropped connections, {s} slow"
    );
    assert!(
        t > 0 && e > 0 && r > 0,
        "the proxy injected too little to test anything"
    );
    let lines = statsd.wait_for(Duration::from_secs(3), |l| {
        l.iter().any(|l| l.contains("class:throttled"))
    });
    for class in ["throttled", "server_error", "connection"] {
        assert!(
            lines.iter().any(|l| l.starts_with("forwarder.retry:") && l.contains(&format!("class:{class}"))),
            "no retry counted for {class}: {lines:#?}"
        );
    }
}
