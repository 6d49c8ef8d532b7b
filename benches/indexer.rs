//! `bulk_record` on the hot path (everything cached) and the cold path (everything new),
//! for SQLite and PostgreSQL. A batch is 10 events of 6 tags: 120 strings, 66 distinct
//! and not shared, in one organization.
//!
//! And a cold process (empty in-process cache) looking up strings the fleet already
//! knows: from the store alone, or from a warm shared cache (Redis) first.
//!
//! Run: `cargo bench --bench indexer` (PostgreSQL from FORWARDER_TEST_POSTGRES_URL, Redis
//! from FORWARDER_TEST_REDIS_URL, default redis://127.0.0.1:6379).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// criterion's macros generate functions without docs.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::sync::Arc;
use std::time::Duration;

use sqs_forwarder::indexer::{
    BulkRequest, FetchType, Indexer, IndexerSettings, SharedCache, SharedCacheSettings, Store,
};
use sqs_forwarder::metrics::Metrics;
use sqs_forwarder::retry::RetryPolicy;

fn backends() -> Vec<(&'static str, String)> {
    let dir = std::env::temp_dir().join(format!("ix-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    vec![
        (
            "sqlite",
            format!("sqlite:{}", dir.join("bench.sqlite3").display()),
        ),
        (
            "postgres",
            std::env::var("FORWARDER_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        ),
    ]
}

/// The strings of one batch: per event, 6 tags; keys repeat across events, values vary.
fn batch(seed: u64) -> Vec<String> {
    let mut out = Vec::new();
    for event in 0..10 {
        for tag in 0..6 {
            out.push(format!("bench-key-{tag}"));
            out.push(format!("bench-value-{seed}-{event}-{tag}"));
        }
    }
    out
}

fn request(org: u64, strings: &[String]) -> BulkRequest<'_> {
    [(org, strings.iter().map(String::as_str).collect())]
        .into_iter()
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (name, url) in backends() {
        let indexer = rt.block_on(async {
            let store = Store::connect(&url, 4).await.unwrap();
            Indexer::new(
                store,
                &IndexerSettings {
                    cache_size: 1_000_000,
                    write_limit: None,
                },
                RetryPolicy::default(),
                Metrics::disabled(),
            )
        });
        let org = fastrand::u64(1..i64::MAX as u64);

        let hot = batch(0);
        rt.block_on(indexer.bulk_record(&request(org, &hot)))
            .unwrap();
        c.bench_function(&format!("bulk_record/hot/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { indexer.bulk_record(&request(org, &hot)).await.unwrap() })
        });

        let seed = AtomicU64::new(1);
        let ix = &indexer;
        c.bench_function(&format!("bulk_record/cold/{name}"), |b| {
            b.to_async(&rt).iter_batched(
                || batch(seed.fetch_add(1, Ordering::Relaxed)),
                |strings| async move {
                    let found = ix.bulk_record(&request(org, &strings)).await.unwrap();
                    assert_eq!(found[&org].len(), 66);
                },
                BatchSize::SmallInput,
            )
        });
        cold_process(c, &rt, name, &indexer, org);
        rt.block_on(indexer.store().close());
    }
}

/// A new process's first batch of strings the fleet knows: the store alone, against a
/// warm Redis first. Each iteration builds a new indexer (untimed): a cold in-process
/// cache on the same store pool and the same Redis connection.
fn cold_process(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    warm: &Indexer,
    org: u64,
) {
    let redis_url = std::env::var("FORWARDER_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let shared = SharedCache::new(
        SharedCacheSettings {
            url: redis_url,
            version: 1,
            ttl: Duration::from_secs(7200),
            timeout: Duration::from_millis(200),
        },
        Metrics::disabled(),
    )
    .unwrap();
    let known = batch(0);
    let settings = IndexerSettings {
        cache_size: 1_000,
        write_limit: None,
    };
    let fresh = |shared: Option<Arc<SharedCache>>| {
        let ix = Indexer::new(
            warm.store().clone(),
            &settings,
            RetryPolicy::default(),
            Metrics::disabled(),
        );
        match shared {
            Some(s) => ix.with_shared_cache(s),
            None => ix,
        }
    };
    // Warm Redis: a process that read the strings from the store wrote them back.
    rt.block_on(async {
        let ix = fresh(Some(shared.clone()));
        ix.bulk_record(&request(org, &known)).await.unwrap();
        for _ in 0..100 {
            let probe = fresh(Some(shared.clone()));
            let found = probe.bulk_record(&request(org, &known)).await.unwrap();
            if found[&org]
                .values()
                .all(|l| l.fetch_type == FetchType::SharedCache)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("Redis did not warm up (is it up?)");
    });
    for (tier, shared) in [("store", None), ("warm_redis", Some(shared))] {
        c.bench_function(&format!("bulk_record/cold_process/{tier}/{name}"), |b| {
            b.to_async(rt).iter_batched(
                || fresh(shared.clone()),
                |ix| {
                    let known = &known;
                    async move {
                        let found = ix.bulk_record(&request(org, known)).await.unwrap();
                        assert_eq!(found[&org].len(), 66);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(std::time::Duration::from_secs(4))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
