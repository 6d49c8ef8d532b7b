//! The health listener (`FORWARDER_HEALTH_ADDR`) as Kubernetes probes it: live while the
//! queues are still being reached, ready once a receive succeeded, not ready from the
//! moment shutdown begins.

use std::time::{Duration, Instant};

use crate::helpers::*;

fn worker(endpoint: &str, q: &Queues, health: &str) -> Spawned {
    worker_with(endpoint, q, health, "1s")
}

/// A worker whose HTTP attempts time out after `request_timeout`.
fn worker_with(endpoint: &str, q: &Queues, health: &str, request_timeout: &str) -> Spawned {
    spawn_binary(
        binary(&["run"])
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_HEALTH_ADDR", health)
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "5")
            .env("FORWARDER_REQUEST_TIMEOUT", request_timeout)
            .env("RUST_LOG", "warn"),
    )
}

#[tokio::test]
async fn live_while_starting_not_ready_until_a_receive_succeeds() {
    let q = Queues::create(30).await;
    // An endpoint that accepts connections and never answers: start-up keeps retrying.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    let health = free_addr();
    let child = worker(&endpoint, &q, &health);
    assert_eq!(wait_status(&health, "/healthz", 200), Some(200));
    assert_eq!(status(&health, "/readyz"), Some(503));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status(&health, "/readyz"),
        Some(503),
        "ready without a receive"
    );
    assert_eq!(status(&health, "/nope"), Some(404));
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_the_first_receive_and_not_ready_once_stopping() {
    let q = Queues::create(30).await;
    // Every send takes 3 s: a batch is still in work when SIGTERM comes, so the worker
    // is seen draining (a long poll alone no longer holds it: it is cancelled).
    let proxy = intercept_proxy(|action, _| match action {
        "SendMessageBatch" => Intercept::Delay(Duration::from_secs(3)),
        _ => Intercept::Pass,
    })
    .await;
    send_bodies(&q.client, &q.source, &[event(1, 1)]).await;
    let health = free_addr();
    // Sends are slow, not failed: no attempt times out (a retried send would arrive twice).
    let child = worker_with(&proxy, &q, &health, "10s");
    assert_eq!(wait_status(&health, "/readyz", 200), Some(200));
    assert_eq!(
        drain(&q.client, &q.dest, 1, Duration::from_secs(15))
            .await
            .len(),
        1
    );

    // SIGTERM while a batch is in work: the worker finishes it, and is not ready
    // meanwhile, so no traffic or rollout waits on it.
    send_bodies(&q.client, &q.source, &[event(2, 1)]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.terminate();
    let mut seen = None;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        seen = status(&health, "/readyz");
        if seen == Some(503) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen, Some(503), "still ready while shutting down");
    assert_eq!(
        status(&health, "/healthz"),
        Some(200),
        "alive while draining"
    );
    let out = child.finish(Duration::from_secs(30)).await;
    assert!(out.status.success());
    assert_eq!(
        drain(&q.client, &q.dest, 1, Duration::from_secs(10))
            .await
            .len(),
        1,
        "the batch in work at SIGTERM was finished"
    );
}

/// A client that connects and sends nothing is disconnected after the read timeout,
/// and idle connections past the cap do not keep the probes from answering.
#[tokio::test]
async fn idle_connections_are_closed_and_capped() {
    use std::io::Read;
    let q = Queues::create(30).await;
    let health = free_addr();
    let _child = worker(&endpoint(), &q, &health);
    assert_eq!(wait_status(&health, "/healthz", 200), Some(200));
    let idle: Vec<std::net::TcpStream> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(&health).ok())
        .collect();
    assert_eq!(
        wait_status(&health, "/healthz", 200),
        Some(200),
        "probes answer, at the latest once idle connections time out"
    );
    let mut one = std::net::TcpStream::connect(&health).unwrap();
    one.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = one.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server closes a silent connection");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "closed after {:?}",
        started.elapsed()
    );
    drop(idle);
}
