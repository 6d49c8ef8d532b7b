//! Effectively once (`FORWARDER_IDEMPOTENCY_URL`), with the real binary against the real
//! Redis and PostgreSQL: a worker killed at each step of the protocol, a refused entry,
//! one event on two workers at once, and the store frozen. And the store contract on
//! both stores.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;
use sqs_forwarder::idempotency::{contract, pg_store::PgStore, redis_store::RedisStore};

/// The machine's Redis.
fn redis_url() -> String {
    std::env::var("FORWARDER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A worker forwarding `q` through the proxy at `endpoint`, with the store at `store`.
fn worker(q: &Queues, endpoint: &str, store: &str, statsd: &StatsdCapture) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"));
    cmd.arg("run")
        .envs(aws_env())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_IDEMPOTENCY_URL", store)
        .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_WORKERS", "2")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_RETRY_MAX_ELAPSED", "2s")
        .env("RUST_LOG", "warn");
    cmd
}

/// Waits until `done` holds, or `timeout`.
async fn until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// How many times each event arrived.
fn copies(arrived: &[String]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for body in arrived {
        *seen.entry(event_id_of(body)).or_default() += 1;
    }
    seen
}

/// A proxy holding the first request of `action` to `queue` as `hold` says, while
/// `holding` is on; the others pass. Counts what it held.
async fn holding_proxy(
    action: &'static str,
    queue: String,
    hold: fn() -> Intercept,
) -> (String, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let holding = Arc::new(AtomicBool::new(true));
    let held = Arc::new(AtomicUsize::new(0));
    let (on, n) = (holding.clone(), held.clone());
    let proxy = intercept_proxy(move |a, body| {
        if a == action
            && body["QueueUrl"].as_str() == Some(queue.as_str())
            && on.load(Ordering::SeqCst)
        {
            n.fetch_add(1, Ordering::SeqCst);
            return hold();
        }
        Intercept::Pass
    })
    .await;
    (proxy, holding, held)
}

/// Never answered, never forwarded: the worker dies waiting.
fn swallowed() -> Intercept {
    Intercept::Reply {
        delay: Duration::from_secs(600),
        response: Vec::new(),
    }
}

/// Forwarded, its answer held: the request took effect, the worker never hears it.
fn answer_lost() -> Intercept {
    Intercept::Answered(Duration::from_secs(600))
}

/// Kills a worker at the step `action` holds (SendMessageBatch swallowed: after the
/// claim; answered late: after the send; DeleteMessageBatch swallowed: after the mark),
/// then runs a second worker to the end. What arrived, and the second's metrics.
async fn killed_at(
    store: &str,
    action: &'static str,
    hold: fn() -> Intercept,
) -> (Vec<String>, Vec<String>, Queues) {
    let q = Queues::create(3).await;
    let queue = if action == "SendMessageBatch" {
        q.dest.clone()
    } else {
        q.source.clone()
    };
    send_bodies(&q.client, &q.source, &[event(1, 1)]).await;
    let (proxy, holding, held) = holding_proxy(action, queue, hold).await;

    let statsd = StatsdCapture::start();
    let first = spawn_binary(&mut worker(&q, &proxy, store, &statsd));
    assert!(
        until(Duration::from_secs(60), || held.load(Ordering::SeqCst) > 0).await,
        "the worker reached {action}"
    );
    if action == "SendMessageBatch" && matches!(hold(), Intercept::Answered(_)) {
        // The send took effect: the event is at the destination, not yet marked.
        let deadline = Instant::now() + Duration::from_secs(10);
        while depth(&q.client, &q.dest).await < 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(first); // SIGKILL
    holding.store(false, Ordering::SeqCst);

    let statsd = StatsdCapture::start();
    let out = spawn_binary(worker(&q, &proxy, store, &statsd).env("FORWARDER_EXIT_WHEN_IDLE", "8"))
        .finish(Duration::from_secs(90))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arrived = drain_then_more(&q.client, &q.dest, 1, Duration::from_secs(20)).await;
    assert_eq!(depth(&q.client, &q.source).await, 0, "the source is empty");
    (arrived, statsd.lines(), q)
}

fn claims(lines: &[String], result: &str) -> u64 {
    statsd_sum(
        lines,
        "forwarder.idempotency.claim",
        &format!("result:{result}"),
    )
}

#[tokio::test]
async fn a_worker_killed_after_its_claim_sends_the_event_once() {
    let (arrived, lines, _) = killed_at(&redis_url(), "SendMessageBatch", swallowed).await;
    assert_eq!(arrived.len(), 1, "{arrived:?}");
    // The second worker waited out the dead one's lease, then took it over.
    assert_eq!(claims(&lines, "takeover"), 1, "{lines:?}");
}

#[tokio::test]
async fn a_worker_killed_after_the_send_and_before_the_mark_sends_at_most_once_more_counted() {
    let (arrived, lines, _) = killed_at(&postgres_url(), "SendMessageBatch", answer_lost).await;
    assert!(
        (1..=2).contains(&arrived.len()),
        "at most once more: {}",
        arrived.len()
    );
    assert_eq!(
        claims(&lines, "takeover"),
        1,
        "the resend is counted: {lines:?}"
    );
}

#[tokio::test]
async fn a_worker_killed_after_the_mark_and_before_the_delete_does_not_send_again() {
    for store in [redis_url(), postgres_url()] {
        let (arrived, lines, _) = killed_at(&store, "DeleteMessageBatch", swallowed).await;
        assert_eq!(arrived.len(), 1, "{store}: {arrived:?}");
        assert_eq!(claims(&lines, "done"), 1, "{store}: {lines:?}");
        assert_eq!(
            statsd_sum(
                &lines,
                "forwarder.event.skipped",
                "reason:already_forwarded"
            ),
            1,
            "{store}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_entry_gives_its_claim_back() {
    let q = Queues::create(2).await;
    send_bodies(&q.client, &q.source, &[event(1, 1)]).await;
    let refused = Arc::new(AtomicBool::new(true));
    let once = refused.clone();
    let proxy = intercept_proxy(move |action, body| {
        if action == "SendMessageBatch" && once.swap(false, Ordering::SeqCst) {
            let id = body["Entries"][0]["Id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            return Intercept::FailEntries(vec![(id, "InvalidMessageContents".into())]);
        }
        Intercept::Pass
    })
    .await;
    let statsd = StatsdCapture::start();
    let out = spawn_binary(
        worker(&q, &proxy, &redis_url(), &statsd).env("FORWARDER_EXIT_WHEN_IDLE", "6"),
    )
    .finish(Duration::from_secs(60))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !refused.load(Ordering::SeqCst),
        "the first send was refused"
    );
    let arrived = drain_then_more(&q.client, &q.dest, 1, Duration::from_secs(20)).await;
    assert_eq!(arrived.len(), 1);
    let lines = statsd.lines();
    // Claimed afresh when it came back: no lease waited out, no takeover.
    assert_eq!(claims(&lines, "new"), 2, "{lines:?}");
    assert_eq!(
        claims(&lines, "takeover") + claims(&lines, "held"),
        0,
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_same_events_on_two_workers_at_once_are_sent_once() {
    for store in [redis_url(), postgres_url()] {
        let q = Queues::create(4).await;
        let events: Vec<String> = (1..=40).map(|i| event(i, 1)).collect();
        // Every event twice, the copies apart.
        let mut bodies = events.clone();
        bodies.extend(events.iter().rev().cloned());
        send_bodies(&q.client, &q.source, &bodies).await;
        // Slow sends, so the two workers' claims overlap.
        let proxy = intercept_proxy(|action, _| match action {
            "SendMessageBatch" => Intercept::Delay(Duration::from_millis(300)),
            _ => Intercept::Pass,
        })
        .await;
        let statsd = StatsdCapture::start();
        let workers: Vec<Spawned> = (0..2)
            .map(|_| {
                spawn_binary(
                    worker(&q, &proxy, &store, &statsd).env("FORWARDER_EXIT_WHEN_IDLE", "8"),
                )
            })
            .collect();
        for w in workers {
            let out = w.finish(Duration::from_secs(120)).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let arrived = drain_then_more(&q.client, &q.dest, 40, Duration::from_secs(30)).await;
        let seen = copies(&arrived);
        assert_eq!(seen.len(), 40, "{store}: every event arrived");
        assert_eq!(arrived.len(), 40, "{store}: none twice");
        assert_eq!(
            depth(&q.client, &q.source).await,
            0,
            "{store}: the source is empty"
        );
        let lines = statsd.lines();
        assert_eq!(
            claims(&lines, "done"),
            40,
            "{store}: each second copy skipped: {lines:?}"
        );
    }
}

/// A Redis of the test's own, to freeze (SIGSTOP) without touching the machine's.
pub struct OwnRedis {
    /// Its URL.
    pub url: String,
    child: std::process::Child,
}

impl OwnRedis {
    /// Starts one on a free port; waits until it answers.
    pub async fn start() -> OwnRedis {
        let port = free_addr().rsplit(':').next().unwrap_or("0").to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).expect("url");
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.get_multiplexed_async_connection().await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        OwnRedis { url, child }
    }

    /// SIGSTOP (`true`): connections stay open and nothing answers; SIGCONT (`false`).
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_frozen_store_loses_nothing_sends_nothing_meanwhile_and_forwarding_resumes() {
    let redis = OwnRedis::start().await;
    let q = Queues::create(30).await;
    const N: usize = 600;
    let bodies: Vec<String> = (1..=N as u128).map(|i| event(i, 1)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;
    let statsd = StatsdCapture::start();
    let health = free_addr();
    let proxy = intercept_proxy(|action, _| match action {
        "SendMessageBatch" => Intercept::Delay(Duration::from_millis(20)),
        _ => Intercept::Pass,
    })
    .await;
    let run = spawn_binary(
        worker(&q, &proxy, &redis.url, &statsd)
            .env("FORWARDER_HEALTH_ADDR", &health)
            .env("FORWARDER_EXIT_WHEN_IDLE", "8"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while depth(&q.client, &q.dest).await < N / 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(wait_status(&health, "/readyz", 200), Some(200));

    redis.freeze(true);
    // What was claimed before the freeze may still go; after that, nothing.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let at_freeze = depth(&q.client, &q.dest).await;
    assert_eq!(
        wait_status(&health, "/readyz", 503),
        Some(503),
        "not ready while frozen"
    );
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let later = depth(&q.client, &q.dest).await;
    redis.freeze(false);
    assert_eq!(later, at_freeze, "nothing sent while the store was frozen");
    assert!(at_freeze < N, "froze too late to test anything");
    assert_eq!(
        wait_status(&health, "/readyz", 200),
        Some(200),
        "ready again"
    );

    let out = run.finish(Duration::from_secs(120)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arrived = drain_then_more(&q.client, &q.dest, N, Duration::from_secs(60)).await;
    let seen = copies(&arrived);
    assert_eq!(seen.len(), N, "nothing lost");
    assert_eq!(arrived.len(), N, "nothing twice");
    let lines = statsd.lines();
    assert!(
        lines.contains(&"forwarder.idempotency.available:0|g".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"forwarder.idempotency.available:1|g".to_string()),
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_store_contract_holds_on_redis_and_postgres() {
    let timeout = Duration::from_secs(2);
    let redis = RedisStore::new(&redis_url(), timeout).expect("redis URL");
    let checked = contract::check(&redis, &unique("contract")).await;
    assert_eq!(checked, Ok(()), "redis");
    let pg = PgStore::connect(&postgres_url(), timeout)
        .await
        .expect("PostgreSQL (is it up on 127.0.0.1:5432?)");
    let checked = contract::check(&pg, &unique("contract")).await;
    assert_eq!(checked, Ok(()), "postgres");
}

#[test]
fn check_reaches_the_store_and_names_the_variable_when_it_cannot() {
    let run = |url: &str| {
        binary(&["check"])
            .env(
                "FORWARDER_SOURCE_QUEUE_URL",
                "http://localhost:4566/000000000000/none",
            )
            .env(
                "FORWARDER_DEST_QUEUE_URL",
                "http://localhost:4566/000000000000/none",
            )
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_IDEMPOTENCY_URL", url)
            .output_within(Duration::from_secs(60))
    };
    let out = run(&redis_url());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("FORWARDER_IDEMPOTENCY_URL: reached"),
        "{text}"
    );
    let out = run("redis://:hunter2@127.0.0.1:1");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.lines()
            .any(|l| l.contains("FORWARDER_IDEMPOTENCY_URL: redis://:***@127.0.0.1:1")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

/// The soak of issue 46, run by hand (`cargo nextest run --run-ignored only -E
/// 'test(soak)'`): `SOAK_EVENTS` (20,000) through two worker processes, every
/// SendMessageBatch and DeleteMessageBatch held 30 ms by a proxy, one of them SIGKILLed
/// (and started again) every 2 to 5 s while the source holds events. `SOAK_STORE`:
/// `none` (at least once), `redis` (a Redis of its own) or `postgres`; `SOAK_FREEZE=on`
/// freezes that Redis for 5 s a third of the way. Prints what arrived; fails on a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes, run by hand for the figures in docs/guides/effectively-once.md"]
async fn soak() {
    let events: u128 = std::env::var("SOAK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let store_kind = std::env::var("SOAK_STORE").unwrap_or_else(|_| "redis".into());
    let freeze = std::env::var("SOAK_FREEZE").is_ok_and(|v| v == "on");
    let own = OwnRedis::start().await;
    let store = match store_kind.as_str() {
        "none" => None,
        "redis" => Some(own.url.clone()),
        "postgres" => Some(postgres_url()),
        other => panic!("SOAK_STORE={other}: none, redis or postgres"),
    };
    let q = Queues::create(10).await;
    let bodies: Vec<String> = (1..=events).map(|i| event(i, 1)).collect();
    for chunk in bodies.chunks(1_000) {
        send_bodies(&q.client, &q.source, chunk).await;
    }
    // SOAK_WIRE=drops: a request whose sender died is not delivered (else it is, as on
    // a network that already carries it).
    // SOAK_DELETE_MS: how long deletes are held (30): the window the store closes.
    let drops = std::env::var("SOAK_WIRE").is_ok_and(|v| v == "drops");
    let delete_ms: u64 = std::env::var("SOAK_DELETE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let proxy = intercept_proxy(move |action, _| {
        let hold = match action {
            "SendMessageBatch" => Duration::from_millis(30),
            "DeleteMessageBatch" => Duration::from_millis(delete_ms),
            _ => return Intercept::Pass,
        };
        match drops {
            true => Intercept::DelayUnlessGone(hold),
            false => Intercept::Delay(hold),
        }
    })
    .await;
    let statsd = StatsdCapture::start();
    let start = |statsd: &StatsdCapture| {
        let mut cmd = worker(&q, &proxy, store.as_deref().unwrap_or(""), statsd);
        // The pollers at their default (`SOAK_POLLERS` to change).
        cmd.env_remove("FORWARDER_WORKERS")
            .env("FORWARDER_RETRY_MAX_ELAPSED", "30s");
        if let Ok(n) = std::env::var("SOAK_POLLERS") {
            cmd.env("FORWARDER_WORKERS", n);
        }
        if store.is_none() {
            cmd.env_remove("FORWARDER_IDEMPOTENCY_URL");
        }
        spawn_binary(&mut cmd)
    };
    let mut workers = [start(&statsd), start(&statsd)];
    let started = Instant::now();
    let mut kills = 0;
    let mut froze = false;
    loop {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(2_000..=5_000))).await;
        let left = depth(&q.client, &q.source).await;
        if left == 0 {
            break;
        }
        if freeze && !froze && left < (events as usize) * 2 / 3 {
            froze = true;
            own.freeze(true);
            tokio::time::sleep(Duration::from_secs(5)).await;
            own.freeze(false);
            println!("soak: Redis frozen 5 s with {left} events in the source");
            continue;
        }
        let which = fastrand::usize(0..2);
        workers[which] = start(&statsd); // the old one is dropped: SIGKILL
        kills += 1;
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the soak ran 15 minutes"
        );
    }
    for w in &workers {
        w.terminate();
    }
    for w in workers {
        let _ = w.finish(Duration::from_secs(60)).await;
    }
    let took = started.elapsed();
    let arrived = drain_then_more(
        &q.client,
        &q.dest,
        events as usize,
        Duration::from_secs(300),
    )
    .await;
    let seen = copies(&arrived);
    let missing = bodies
        .iter()
        .filter(|b| !seen.contains_key(&event_id_of(b)))
        .count();
    let duplicates = arrived.len() - seen.len();
    let lines = statsd.lines();
    // How long a send is in flight: a kill then leaves about rate x this many events
    // sent and not marked, which no store can tell from those not sent.
    let sends: Vec<f64> = lines
        .iter()
        .filter(|l| l.starts_with("forwarder.send_batch.duration:"))
        .filter_map(|l| l.split(':').nth(1)?.split('|').next()?.parse().ok())
        .collect();
    let send_ms = sends.iter().sum::<f64>() / sends.len().max(1) as f64;
    let per_process = events as f64 / took.as_secs_f64() / 2.0;
    println!(
        "soak: store={store_kind} freeze={froze} events={events} kills={kills} took={:.1}s \
         arrived={} duplicates={duplicates} ({:.1} a kill) missing={missing} takeovers={} \
         done_skips={} held={} store_errors={} send_ms={send_ms:.1} \
         in_flight_a_kill={:.1}",
        took.as_secs_f64(),
        arrived.len(),
        duplicates as f64 / kills.max(1) as f64,
        claims(&lines, "takeover"),
        claims(&lines, "done"),
        claims(&lines, "held"),
        statsd_sum(&lines, "forwarder.idempotency.error", "operation:"),
        per_process * send_ms / 1e3,
    );
    assert_eq!(missing, 0, "nothing lost");
}

/// `replay` twice through a packed route, a FIFO route and a route that stores every
/// event in S3: the second replay forwards nothing, and says each event went already.
#[tokio::test]
async fn replay_twice_through_packed_fifo_and_s3_routes_forwards_each_event_once() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let plain = create_queue(&client, &unique("eo-plain"), 30).await;
    let packed = create_queue(&client, &unique("eo-packed"), 30).await;
    let fifo = create_fifo_queue(&client, &unique("eo-fifo")).await;
    let offloaded = create_queue(&client, &unique("eo-s3"), 30).await;
    let bucket = unique("eo-bucket").to_lowercase();
    sqs_forwarder::aws::s3_client(&sdk().await, &sqs_forwarder::metrics::Metrics::disabled())
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let routes = routes_file(&format!(
        "[default]\nqueue_url = \"{plain}\"\n\n\
         [projects.2]\nqueue_url = \"{packed}\"\npack = \"ndjson\"\n\n\
         [projects.3]\nqueue_url = \"{fifo}\"\nmessage_group_id = \"p-{{project_id}}\"\n\n\
         [projects.4]\nqueue_url = \"{offloaded}\"\ns3_bucket = \"{bucket}\"\ns3_offload = \"always\"\n"
    ));
    let dir = std::env::temp_dir().join(unique("eo-replay"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.ndjson");
    let lines: String = (1..=40u128)
        .map(|i| format!("{}\n", event(i, 1 + (i as u64 % 4))))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let replay = || {
        binary(&["replay", file.to_str().unwrap()])
            .env("FORWARDER_ROUTES_FILE", &routes)
            .env("FORWARDER_IDEMPOTENCY_URL", postgres_url())
            .env("FORWARDER_INDEXER", "off")
            .env("RUST_LOG", "warn")
            .output_within(Duration::from_secs(60))
    };
    let first = replay();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = replay();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let summary = String::from_utf8_lossy(&second.stdout);
    assert!(summary.contains("0 forwarded"), "{summary}");
    assert!(summary.contains("40 skipped"), "{summary}");

    let mut events = 0;
    for queue in [&plain, &fifo, &offloaded] {
        events += drain_then_more(&client, queue, 10, Duration::from_secs(20))
            .await
            .len();
    }
    let packs = drain_then_more(&client, &packed, 1, Duration::from_secs(20)).await;
    let in_packs: usize = packs.iter().map(|p| p.lines().count()).sum();
    assert_eq!(
        events + in_packs,
        40,
        "each event once: {events} + {in_packs} packed"
    );
}

/// A queue's ARN.
async fn queue_arn(client: &aws_sdk_sqs::Client, url: &str) -> String {
    use aws_sdk_sqs::types::QueueAttributeName;
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap()
}

/// Lambda: the same SQS batch invoked twice (Lambda retries a batch whose response was
/// lost): the second invocation sends nothing and reports nothing to retry. The keys'
/// TTL is sized from the source queue the batch names (visibility x maxReceiveCount).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_a_batch_invoked_again_is_not_forwarded_again() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let dest = create_queue(&client, &unique("eo-lambda"), 30).await;
    // The source: 600 s hidden, 10 receives before its dead-letter queue: 6,000 s.
    let dlq = create_queue(&client, &unique("eo-lambda-dlq"), 30).await;
    let dlq_arn = queue_arn(&client, &dlq).await;
    let source_name = unique("eo-lambda-src");
    let source = client
        .create_queue()
        .queue_name(&source_name)
        .attributes(QueueAttributeName::VisibilityTimeout, "600")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"10"}}"#),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let source_arn = queue_arn(&client, &source).await;

    let statsd = StatsdCapture::start();
    let mut api = crate::lambda::RuntimeApi::start().await;
    let function = crate::lambda::function(
        &api,
        &[
            ("FORWARDER_DEST_QUEUE_URL", dest.clone()),
            ("FORWARDER_IDEMPOTENCY_URL", redis_url()),
            ("FORWARDER_STATSD_ADDR", statsd.addr.to_string()),
            ("RUST_LOG", "info".into()),
        ],
    );
    let batch = crate::lambda::batch(
        (1..=5u128)
            .map(|i| {
                let mut record = crate::lambda::record(
                    &format!("m{i}"),
                    &event(fastrand::u128(..) | i, 1),
                    None,
                );
                record["eventSourceARN"] = serde_json::json!(source_arn);
                record
            })
            .collect(),
    );
    let first = api.invoke("req-1", batch.clone()).await;
    assert!(crate::lambda::failures(&first).is_empty());
    let again = api.invoke("req-2", batch).await;
    assert!(
        crate::lambda::failures(&again).is_empty(),
        "done: deleted, not retried"
    );
    let arrived = drain_then_more(&client, &dest, 5, Duration::from_secs(20)).await;
    assert_eq!(arrived.len(), 5, "each event once");
    let lines = statsd.wait_for(Duration::from_secs(2), |l| {
        statsd_sum(l, "forwarder.event.skipped", "reason:already_forwarded") >= 5
    });
    assert_eq!(
        statsd_sum(
            &lines,
            "forwarder.event.skipped",
            "reason:already_forwarded"
        ),
        5,
        "{lines:?}"
    );
    function.terminate();
    let out = function.finish(Duration::from_secs(10)).await;
    let log = String::from_utf8_lossy(&out.stderr);
    let sized = log
        .lines()
        .find(|l| l.contains("idempotency keys sized from the source queue"))
        .unwrap_or_else(|| panic!("no sizing line in {log}"));
    assert!(sized.contains("ttl=1h 40m"), "{sized}");
}
