//! Crash: SIGKILL mid-run, then a restart. Every event arrives at least once; duplicates
//! are bounded by what was in flight when the worker died.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::*;

const EVENTS: u128 = 5_000;
const WORKERS: usize = 4;
/// The in-flight bound: what the killed worker can have forwarded and not deleted.
const MAX_IN_FLIGHT: usize = 40;

fn worker(q: &Queues, extra: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"));
    cmd.arg("run")
        .envs(aws_env())
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_WORKERS", WORKERS.to_string())
        .env("FORWARDER_MAX_IN_FLIGHT", MAX_IN_FLIGHT.to_string())
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("RUST_LOG", "warn");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

#[tokio::test]
async fn sigkill_mid_run_then_restart_loses_nothing() {
    // A short visibility timeout, so what the killed worker held comes back soon.
    let q = Queues::create(5).await;
    let bodies: Vec<String> = (1..=EVENTS).map(|i| event(i, 1)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;

    let first = spawn_binary(&mut worker(&q, &[]));
    let deadline = Instant::now() + Duration::from_secs(120);
    while depth(&q.client, &q.dest).await < 1_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first); // SIGKILL: no shutdown, no flush, no delete of what was in flight
    let before = depth(&q.client, &q.dest).await;
    assert!(
        before < EVENTS as usize,
        "killed too late to test anything ({before} forwarded)"
    );

    let out = spawn_binary(&mut worker(&q, &[("FORWARDER_EXIT_WHEN_IDLE", "8")]))
        .finish(Duration::from_secs(240))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let arrived =
        drain_then_more(&q.client, &q.dest, EVENTS as usize, Duration::from_secs(60)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for body in &arrived {
        *seen.entry(event_id_of(body)).or_default() += 1;
    }
    let missing = bodies
        .iter()
        .filter(|b| !seen.contains_key(&event_id_of(b)))
        .count();
    let duplicates = arrived.len() - seen.len();
    println!(
        "crash: {EVENTS} events, killed after {before} forwarded; {} arrived, {duplicates} duplicates, {missing} missing",
        arrived.len()
    );
    assert_eq!(missing, 0, "every event arrives at least once");
    // In flight at the kill (forwarded, not deleted; buffered deletes included): at most
    // the in-flight bound.
    assert!(duplicates <= MAX_IN_FLIGHT, "{duplicates} duplicates");
    assert_eq!(depth(&q.client, &q.source).await, 0);
}
