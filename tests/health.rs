//! The health listener (`FORWARDER_HEALTH_ADDR`) as Kubernetes probes it: live while the
//! queues are still being reached, ready once a receive succeeded, not ready from the
//! moment shutdown begins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn worker(endpoint: &str, q: &Queues, health: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
        .arg("run")
        .envs(aws_env())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_HEALTH_ADDR", health)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "5")
        .env("FORWARDER_REQUEST_TIMEOUT", "1s")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn live_while_starting_not_ready_until_a_receive_succeeds() {
    let q = Queues::create(30).await;
    // An endpoint that accepts connections and never answers: start-up keeps retrying.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    let health = free_addr();
    let mut child = worker(&endpoint, &q, &health);
    assert_eq!(wait_status(&health, "/healthz", 200), Some(200));
    assert_eq!(status(&health, "/readyz"), Some(503));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status(&health, "/readyz"),
        Some(503),
        "ready without a receive"
    );
    assert_eq!(status(&health, "/nope"), Some(404));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn ready_after_the_first_receive_and_not_ready_once_stopping() {
    let q = Queues::create(30).await;
    send_bodies(&q.client, &q.source, &[event(1, 1)]).await;
    let health = free_addr();
    let child = worker(&endpoint(), &q, &health);
    assert_eq!(wait_status(&health, "/readyz", 200), Some(200));
    assert_eq!(
        drain(&q.client, &q.dest, 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );

    // SIGTERM while a 5 s long poll is in flight: the worker lets it end, and is not
    // ready meanwhile, so no traffic or rollout waits on it.
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
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
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
}
