//! The indexer's shared cache tier against the real Redis (127.0.0.1:6379, or
//! `FORWARDER_TEST_REDIS_URL`) and the real PostgreSQL: Sentry's key format and TTL,
//! a cold process served by what another stored, and Redis failing in every way without
//! failing or holding up an event.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use redis::AsyncCommands;

use crate::helpers::*;
use sqs_forwarder::indexer::{
    BulkRequest, FetchType, Indexer, IndexerSettings, SharedCache, SharedCacheSettings, Store,
};
use sqs_forwarder::metrics::Metrics;
use sqs_forwarder::retry::RetryPolicy;

/// The test Redis.
fn redis_url() -> String {
    std::env::var("FORWARDER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn redis_addr() -> String {
    redis_url()
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_string()
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis (is it up on 127.0.0.1:6379?)")
}

/// Sentry's key, computed here on its own: `:{version}:indexer:org:str:{md5("{org}:{s}")}`.
fn sentry_key(org: u64, s: &str) -> String {
    let digest = Md5::digest(format!("{org}:{s}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!(":1:indexer:org:str:{hex}")
}

fn settings(url: String, timeout: Duration) -> SharedCacheSettings {
    SharedCacheSettings {
        url,
        version: 1,
        ttl: Duration::from_secs(7200),
        timeout,
    }
}

async fn indexer(shared: Option<SharedCacheSettings>, metrics: Metrics) -> Indexer {
    let store = Store::connect(&postgres_url(), 4)
        .await
        .expect("store (is PostgreSQL up?)");
    let ix = Indexer::new(
        store,
        &IndexerSettings {
            cache_size: 10_000,
            write_limit: None,
        },
        RetryPolicy::default(),
        metrics.clone(),
    );
    match shared {
        Some(s) => ix.with_shared_cache(SharedCache::new(s, metrics).unwrap()),
        None => ix,
    }
}

fn request(org: u64, strings: &[String]) -> BulkRequest<'_> {
    [(org, strings.iter().map(String::as_str).collect())]
        .into_iter()
        .collect()
}

/// Waits until Redis holds every key (the write-back runs in the background).
async fn wait_for_keys(conn: &mut redis::aio::MultiplexedConnection, keys: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<Option<String>> = conn.mget(keys).await.unwrap();
        if found.iter().all(Option::is_some) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ids were not written back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn statsd_metrics(statsd: &StatsdCapture) -> Metrics {
    sqs_forwarder::metrics::sink::udp(&sqs_forwarder::metrics::sink::StatsdSettings {
        addr: statsd.addr,
        prefix: String::new(),
        tags: Vec::new(),
        sample_rate: 1.0,
    })
    .unwrap()
}

/// The sum of a counter's values over the captured lines that carry `tag`.
#[tokio::test]
async fn a_cold_indexer_finds_in_redis_what_another_stored_under_sentrys_keys() {
    let org = random_org();
    let strings: Vec<String> = (0..6).map(|i| format!("checkout-{i}")).collect();
    let mut conn = redis().await;

    let first = indexer(
        Some(settings(redis_url(), Duration::from_millis(200))),
        Metrics::disabled(),
    )
    .await;
    let created = first.bulk_record(&request(org, &strings)).await.unwrap();
    let ids: HashMap<&str, u64> = created[&org]
        .iter()
        .map(|(s, l)| (*s, l.id.unwrap()))
        .collect();
    assert!(created[&org]
        .values()
        .all(|l| l.fetch_type == FetchType::FirstSeen));

    // Sentry's key, the id in decimal, Sentry's TTL with up to a quarter more.
    let keys: Vec<String> = strings.iter().map(|s| sentry_key(org, s)).collect();
    wait_for_keys(&mut conn, &keys).await;
    for s in &strings {
        let key = sentry_key(org, s);
        let value: String = conn.get(&key).await.unwrap();
        assert_eq!(value, ids[s.as_str()].to_string(), "{key}");
        let ttl: i64 = conn.ttl(&key).await.unwrap();
        assert!((7100..=9000).contains(&ttl), "{key}: TTL {ttl}");
    }

    // A second process, cold: every id from Redis, none from the store.
    let statsd = StatsdCapture::start();
    let second = indexer(
        Some(settings(redis_url(), Duration::from_millis(200))),
        statsd_metrics(&statsd),
    )
    .await;
    let read = second.bulk_record(&request(org, &strings)).await.unwrap();
    for (s, lookup) in &read[&org] {
        assert_eq!(lookup.fetch_type, FetchType::SharedCache, "{s}");
        assert_eq!(lookup.id, Some(ids[s]), "{s} changed id");
    }
    // Then from its own cache.
    let again = second.bulk_record(&request(org, &strings)).await.unwrap();
    assert!(again[&org]
        .values()
        .all(|l| l.fetch_type == FetchType::Cache));
    // resolve() reads Redis too, and never creates.
    let third = indexer(
        Some(settings(redis_url(), Duration::from_millis(200))),
        Metrics::disabled(),
    )
    .await;
    assert_eq!(
        third.resolve(org, "checkout-3").await.unwrap(),
        Some(ids["checkout-3"])
    );

    let lines = statsd.wait_for(Duration::from_secs(2), |l| {
        statsd_sum(l, "forwarder.indexer.lookup", "fetch_type:cache") >= 6
    });
    assert_eq!(
        statsd_sum(
            &lines,
            "forwarder.indexer.lookup",
            "fetch_type:shared_cache"
        ),
        6,
        "{lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("forwarder.indexer.store.duration:"))
            .count(),
        0,
        "the cold process asked the store: {lines:#?}"
    );
    for ix in [first, second, third] {
        ix.store().close().await;
    }
}

#[tokio::test]
async fn a_version_bump_starts_a_new_key_space() {
    let org = random_org();
    let strings = vec!["bumped".to_string()];
    let v1 = indexer(
        Some(settings(redis_url(), Duration::from_millis(200))),
        Metrics::disabled(),
    )
    .await;
    v1.bulk_record(&request(org, &strings)).await.unwrap();
    let mut conn = redis().await;
    wait_for_keys(&mut conn, &[sentry_key(org, "bumped")]).await;

    let v2 = indexer(
        Some(SharedCacheSettings {
            version: 2,
            ..settings(redis_url(), Duration::from_millis(200))
        }),
        Metrics::disabled(),
    )
    .await;
    let read = v2.bulk_record(&request(org, &strings)).await.unwrap();
    assert_eq!(read[&org]["bumped"].fetch_type, FetchType::Db);
    let v2_key = sentry_key(org, "bumped").replacen(":1:", ":2:", 1);
    wait_for_keys(&mut conn, &[v2_key]).await;
    v1.store().close().await;
    v2.store().close().await;
}

/// Redis unreachable (connections dropped) and Redis silent (connections accepted, never
/// answered): every lookup still gets its id from the store, waits at most about the
/// timeout, and the failures are counted; after three in a row the breaker stops asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_or_silent_fails_nothing_and_costs_at_most_the_timeout() {
    let org = random_org();
    let strings: Vec<String> = (0..6).map(|i| format!("outage-{i}")).collect();
    let plain = indexer(None, Metrics::disabled()).await;
    let want = plain.bulk_record(&request(org, &strings)).await.unwrap();
    let want: HashMap<&str, Option<u64>> = want[&org].iter().map(|(s, l)| (*s, l.id)).collect();

    // Silent: the proxy holds every connection for a minute before it goes upstream.
    let (silent, _) = tcp_proxy(Duration::from_secs(60), redis_addr()).await;
    // Down: the proxy drops every connection.
    let (down, switch) = tcp_proxy(Duration::ZERO, redis_addr()).await;
    switch.set_down(true);
    // TLS to a plain-text server: the handshake never completes.
    let cases = [
        ("silent", format!("redis://{silent}")),
        ("down", format!("redis://{down}")),
        ("tls to plain text", format!("rediss://{}", redis_addr())),
    ];
    for (name, url) in cases {
        let statsd = StatsdCapture::start();
        let timeout = Duration::from_millis(50);
        let ix = indexer(Some(settings(url, timeout)), statsd_metrics(&statsd)).await;
        let mut slowest = Duration::ZERO;
        for round in 0..5 {
            // A new organization each round, so each round misses the in-process cache.
            let org_round = org + round * 1_000_003;
            let started = Instant::now();
            let got = ix.bulk_record(&request(org_round, &strings)).await.unwrap();
            slowest = slowest.max(started.elapsed());
            assert!(
                got[&org_round].values().all(|l| l.id.is_some()),
                "{name}: a lookup failed with Redis away"
            );
            if round == 0 {
                let ids: HashMap<&str, Option<u64>> =
                    got[&org_round].iter().map(|(s, l)| (*s, l.id)).collect();
                assert_eq!(ids, want, "{name}: ids differ from the store's");
            }
        }
        // The timeout plus a store round trip; never Redis's 60 s hold.
        assert!(
            slowest < Duration::from_secs(2),
            "{name}: a lookup took {slowest:?}"
        );
        let lines = statsd.wait_for(Duration::from_secs(2), |l| {
            statsd_sum(l, "forwarder.indexer.cache.error", "reason:breaker_open") > 0
        });
        let failed = statsd_sum(&lines, "forwarder.indexer.cache.error", "reason:timeout")
            + statsd_sum(&lines, "forwarder.indexer.cache.error", "reason:connection");
        assert!(failed >= 3, "{name}: failures not counted: {lines:#?}");
        assert!(
            statsd_sum(
                &lines,
                "forwarder.indexer.cache.error",
                "reason:breaker_open"
            ) > 0,
            "{name}: the breaker never opened: {lines:#?}"
        );
        println!("{name}: slowest lookup {slowest:?}, {failed} failed calls");
        ix.store().close().await;
    }
    plain.store().close().await;
}

fn worker(
    q: &Queues,
    statsd: &StatsdCapture,
    cache_url: &str,
    workers: &str,
    idle: &str,
) -> Spawned {
    spawn_binary(
        binary(&["run"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_WORKERS", workers)
            // No batching window: a poller settles one batch at a time, so with one
            // poller each string is looked up once.
            .env("FORWARDER_BATCH_WINDOW", "0")
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("FORWARDER_EXIT_WHEN_IDLE", idle)
            .env("FORWARDER_INDEXER", "on")
            .env("FORWARDER_INDEXER_DATABASE_URL", postgres_url())
            .env("FORWARDER_INDEXER_CACHE_URL", cache_url)
            .env("RUST_LOG", "warn"),
    )
}

fn tagged_events(org: u64, from: u128, n: u128, tags: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            let tags: Vec<String> = (0..tags)
                .map(|t| format!(r#"["k{t}","v{}"]"#, i % 5))
                .collect();
            format!(
                r#"{{"event_id":"{i:032x}","project_id":1,"organization_id":{org},"tags":[{}]}}"#,
                tags.join(",")
            )
        })
        .collect()
}

/// One worker process (one poller) until the source is idle; its statsd lines.
async fn run_until_idle(q: &Queues) -> Vec<String> {
    let statsd = StatsdCapture::start();
    let out = worker(q, &statsd, &redis_url(), "1", "2")
        .finish(Duration::from_secs(60))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    statsd.lines()
}

/// Two worker processes, one after the other, on one PostgreSQL and one Redis: the
/// second starts cold and gets every string the first created from Redis, asking the
/// store for none of them. One poller each, so each string is looked up once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cold_worker_reads_the_first_ones_strings_from_redis_not_the_store() {
    let org = random_org();
    // 6 keys with 5 values each: 11 distinct strings.
    let q = Queues::create(10).await;
    let first_events = tagged_events(org, 1, 30, 6);
    send_bodies(&q.client, &q.source, &first_events).await;
    let lines = run_until_idle(&q).await;
    assert_eq!(
        statsd_sum(&lines, "forwarder.indexer.lookup", "fetch_type:first_seen"),
        11,
        "{lines:#?}"
    );
    let mut conn = redis().await;
    let strings: Vec<String> = (0..6)
        .map(|t| format!("k{t}"))
        .chain((0..5).map(|v| format!("v{v}")))
        .collect();
    let keys: Vec<String> = strings.iter().map(|s| sentry_key(org, s)).collect();
    wait_for_keys(&mut conn, &keys).await;

    let second_events = tagged_events(org, 1000, 30, 6);
    send_bodies(&q.client, &q.source, &second_events).await;
    let lines = run_until_idle(&q).await;
    assert_eq!(
        statsd_sum(
            &lines,
            "forwarder.indexer.lookup",
            "fetch_type:shared_cache"
        ),
        11,
        "{lines:#?}"
    );
    for none in ["fetch_type:db", "fetch_type:first_seen"] {
        assert_eq!(
            statsd_sum(&lines, "forwarder.indexer.lookup", none),
            0,
            "{none}: {lines:#?}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("forwarder.indexer.store.duration:")),
        "the second worker asked the store: {lines:#?}"
    );
    let arrived = drain(&q.client, &q.dest, 60, Duration::from_secs(5)).await;
    let ids: HashSet<String> = arrived.iter().map(|b| event_id_of(b)).collect();
    assert_eq!(ids.len(), 60);
    // Both workers gave every event the same ids for the same strings.
    let tag_ids: HashSet<String> = arrived
        .iter()
        .filter(|b| b.contains(r#""v1""#))
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["tag_ids"].to_string()
        })
        .collect();
    assert_eq!(tag_ids.len(), 1, "{tag_ids:?}");
}

/// Sends `n` events for a new organization (strings no cache knows) and waits until
/// every event sent so far arrived. Returns the organization.
async fn round(q: &Queues, child: &mut Spawned, sent: &mut Vec<String>, org: u64, n: u128) -> u64 {
    let round_org = org + sent.len() as u64;
    let bodies = tagged_events(round_org, 1 + sent.len() as u128, n, 6);
    send_bodies(&q.client, &q.source, &bodies).await;
    sent.extend(bodies);
    let deadline = Instant::now() + Duration::from_secs(60);
    while depth(&q.client, &q.dest).await < sent.len() {
        assert!(!child.has_exited(), "the worker exited");
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    round_org
}

/// Redis goes away in the middle of a run (a proxy in front of it drops every
/// connection) while new strings keep coming, then comes back: every event arrives, with
/// its tag ids, the failures are counted, and Redis is written to again once back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_loses_nothing() {
    let org = random_org();
    let q = Queues::create(10).await;
    let (proxy, switch) = tcp_proxy(Duration::ZERO, redis_addr()).await;
    let statsd = StatsdCapture::start();
    let mut child = worker(&q, &statsd, &format!("redis://{proxy}"), "2", "10");
    let mut conn = redis().await;
    let mut sent = Vec::new();
    round(&q, &mut child, &mut sent, org, 100).await;
    switch.set_down(true);
    round(&q, &mut child, &mut sent, org, 100).await;
    switch.set_down(false);
    // Back: once the breaker's probe finds Redis, ids go to it again.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let round_org = round(&q, &mut child, &mut sent, org, 10).await;
        let found: Option<String> = conn.get(sentry_key(round_org, "k0")).await.unwrap();
        if found.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis was never written to again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = child.finish(Duration::from_secs(120)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let arrived = drain_then_more(&q.client, &q.dest, sent.len(), Duration::from_secs(5)).await;
    let ids: HashSet<String> = arrived.iter().map(|b| event_id_of(b)).collect();
    assert_eq!(ids.len(), sent.len(), "events lost");
    for body in &arrived {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let pairs = v["tag_ids"].as_array().expect("tag_ids on every event");
        assert_eq!(pairs.len(), 6, "{body}");
    }
    let lines = statsd.lines();
    assert!(
        statsd_sum(&lines, "forwarder.indexer.cache.error", "reason:") > 0,
        "Redis's absence was not counted: {lines:#?}"
    );
}
