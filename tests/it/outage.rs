//! Outages: in the middle of a run, SQS (LocalStack) and then the PostgreSQL indexer
//! store become unreachable for 20 s. A TCP proxy on 127.0.0.1 stands between the
//! worker and the service; "down" closes every open connection and drops every new one.
//! The worker keeps running, backs off without spinning, resumes, and loses nothing.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::helpers::*;

const OUTAGE: Duration = Duration::from_secs(20);
const EVENTS: u128 = 600;

fn worker(q: &Queues, statsd: &StatsdCapture, env: &[(&str, String)]) -> Spawned {
    spawn_binary(
        binary(&["run"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_WORKERS", "4")
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("FORWARDER_RETRY_MAX_INTERVAL", "2s")
            .env("FORWARDER_RETRY_MAX_ELAPSED", "5s")
            .env("FORWARDER_REQUEST_TIMEOUT", "2s")
            .env("FORWARDER_EXIT_WHEN_IDLE", "6")
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
    )
}

/// Waits until `n` events reached the destination, so the outage hits a busy worker.
async fn wait_for_progress(q: &Queues, child: &mut Spawned, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while depth(&q.client, &q.dest).await < n {
        assert!(!child.has_exited(), "the worker exited before the outage");
        assert!(Instant::now() < deadline, "the worker made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Holds the outage for [`OUTAGE`] and checks the worker lives through it.
async fn outage(switch: &Switch, child: &mut Spawned) {
    switch.set_down(true);
    tokio::time::sleep(OUTAGE).await;
    assert!(!child.has_exited(), "the worker exited during the outage");
    switch.set_down(false);
}

/// Every event arrived at least once (what was not deleted is still in the source).
async fn assert_nothing_lost(q: &Queues, bodies: &[String]) -> Vec<String> {
    let arrived = drain_then_more(&q.client, &q.dest, bodies.len(), Duration::from_secs(5)).await;
    let left = drain(&q.client, &q.source, bodies.len(), Duration::from_secs(3)).await;
    let ids: HashSet<String> = arrived.iter().map(|b| event_id_of(b)).collect();
    let missing: Vec<&String> = bodies
        .iter()
        .filter(|b| !ids.contains(&event_id_of(b)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events did not arrive ({} still in the source)",
        missing.len(),
        bodies.len(),
        left.len()
    );
    println!(
        "{} events, {} forwarded ({} duplicates)",
        bodies.len(),
        arrived.len(),
        arrived.len() - ids.len()
    );
    arrived
}

// Multi-threaded: the proxy must run while the test waits on the worker process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_unreachable_for_20s_is_waited_out_and_nothing_is_lost() {
    let q = Queues::create(10).await;
    let bodies: Vec<String> = (1..=EVENTS).map(|i| event(i, 1)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;
    let (proxy, switch) = tcp_proxy(
        Duration::ZERO,
        endpoint().trim_start_matches("http://").into(),
    )
    .await;
    let statsd = StatsdCapture::start();
    let mut child = worker(
        &q,
        &statsd,
        &[
            ("AWS_ENDPOINT_URL", format!("http://{proxy}")),
            ("FORWARDER_INDEXER", "off".into()),
            ("FORWARDER_RATE_LIMIT", "100/1s".into()),
        ],
    );

    wait_for_progress(&q, &mut child, 100).await;
    outage(&switch, &mut child).await;
    let dropped = switch.dropped.load(Ordering::Relaxed);
    let out = child.finish(Duration::from_secs(180)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_lost(&q, &bodies).await;

    // Backing off, not spinning: 4 pollers plus their batches' sends, deletes and
    // visibility heartbeats, each waiting up to 2 s between tries.
    println!(
        "connections tried during the {OUTAGE:?} outage: {dropped} ({:.1}/s)",
        dropped as f64 / OUTAGE.as_secs_f64()
    );
    assert!(dropped > 0, "nothing tried to connect during the outage");
    assert!(
        dropped < 20 * OUTAGE.as_secs(),
        "{dropped} connection attempts in {OUTAGE:?}: the worker is spinning"
    );
    let lines = statsd.wait_for(Duration::from_secs(3), |l| {
        l.iter()
            .any(|l| l.starts_with("forwarder.sqs.error:") && l.contains("class:connection"))
    });
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("forwarder.sqs.error:") && l.contains("class:connection")),
        "the failed receives are not counted: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_gone_for_20s_is_waited_out_and_nothing_is_lost() {
    let q = Queues::create(10).await;
    let org = random_org();
    let bodies: Vec<String> = (1..=EVENTS)
        .map(|i| {
            format!(
                r#"{{"event_id":"{i:032x}","project_id":1,"organization_id":{org},"tags":[["release","r{}"],["user","u{i}"]]}}"#,
                i % 7
            )
        })
        .collect();
    send_bodies(&q.client, &q.source, &bodies).await;

    // The worker reaches PostgreSQL through the proxy, under its own application name.
    let pg = postgres_url();
    let pg_addr = pg
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_string();
    let (proxy, switch) = tcp_proxy(Duration::ZERO, pg_addr.clone()).await;
    let app_name = unique("outage");
    let via_proxy = format!(
        "{}?application_name={app_name}",
        pg.replacen(&pg_addr, &proxy, 1)
    );
    let statsd = StatsdCapture::start();
    let mut child = worker(
        &q,
        &statsd,
        &[
            ("FORWARDER_INDEXER", "on".into()),
            ("FORWARDER_INDEXER_DATABASE_URL", via_proxy),
            ("FORWARDER_RATE_LIMIT", "100/1s".into()),
        ],
    );

    wait_for_progress(&q, &mut child, 100).await;
    // The server ends the worker's sessions, and for 20 s no new one gets through.
    let admin = sqlx::PgPool::connect(&pg).await.unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app_name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(
        !terminated.is_empty(),
        "the worker has no session to terminate"
    );
    outage(&switch, &mut child).await;
    let out = child.finish(Duration::from_secs(180)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let arrived = assert_nothing_lost(&q, &bodies).await;
    // Nothing went out without its tag ids: events wait for the store, never skip it.
    for body in &arrived {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let ids = v["tag_ids"].as_array().expect("tag_ids on every event");
        assert!(
            ids.iter().all(|pair| pair[0].is_u64() && pair[1].is_u64()),
            "{body}"
        );
    }
    println!(
        "sessions terminated: {}; connections dropped during the outage: {}",
        terminated.len(),
        switch.dropped.load(Ordering::Relaxed)
    );
}
