//! The per-event CPU path: decode, index on a hot cache, encode with `tag_ids`, for
//! Sentry-like events of 1 KiB, 8 KiB and 200 KiB. Each group also times the three
//! steps alone. The indexer works on batches of 10 events, as the pipeline does; the
//! figures are per event (criterion's throughput is set to 10 elements).
//!
//! Run: `cargo bench --bench event_path`. Target: at most 5 µs for a typical (8 KiB) event.
//! A last group times the hot index alone for 6 tags (target: 1 µs).
//!
//! Instruction counts: see [`count`] (`BENCH_COUNT=…`, under callgrind).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// criterion's macros generate functions without docs.
#![allow(missing_docs)]

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use sqs_forwarder::event::fields::FieldRules;
use sqs_forwarder::event::{decode, Event};
use sqs_forwarder::indexer::{Indexer, IndexerSettings, Store};
use sqs_forwarder::metrics::Metrics;
use sqs_forwarder::pipeline::index_events;
use sqs_forwarder::retry::RetryPolicy;

const BATCH: usize = 10;

#[path = "support/sentry_event.rs"]
mod sentry_event;
use sentry_event::sentry_event;

/// An indexer on a new SQLite file, with a cache large enough for every string.
fn indexer(rt: &tokio::runtime::Runtime) -> Indexer {
    let dir = std::env::temp_dir().join(format!("event-path-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("bench.sqlite3").display());
    rt.block_on(async {
        let store = Store::connect(&url, 2).await.unwrap();
        Indexer::new(
            store,
            &IndexerSettings {
                cache_size: 100_000,
                write_limit: None,
            },
            RetryPolicy::default(),
            Metrics::disabled(),
        )
    })
}

/// The indexer stage alone on a hot cache, for a batch of decoded events.
fn index_hot(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    indexer: &Indexer,
    decoded: &[Event<'_>],
) {
    let metrics = Metrics::disabled();
    group.bench_function(BenchmarkId::from_parameter("index_hot"), |b| {
        b.to_async(rt).iter_batched(
            || decoded.to_vec(),
            |mut events| async {
                index_events(indexer, &metrics, &mut events).await.unwrap();
                events
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let indexer = indexer(&rt);
    let metrics = Metrics::disabled();

    for (label, size) in [("1KiB", 1024), ("8KiB", 8 * 1024), ("200KiB", 200 * 1024)] {
        let bodies: Vec<String> = (0..BATCH).map(|n| sentry_event(n, size, 12)).collect();
        // Warm the cache: every tag string of these events gets its id once.
        rt.block_on(async {
            let mut events: Vec<Event<'_>> = bodies.iter().map(|b| decode(b).unwrap()).collect();
            index_events(&indexer, &metrics, &mut events).await.unwrap();
            let out = events[0].encoded();
            assert!(out.contains("\"tag_ids\":[["), "the encoder ran");
        });

        let mut group = c.benchmark_group(format!("event/{label}"));
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::from_parameter("decode"), |b| {
            b.iter(|| {
                bodies
                    .iter()
                    .map(|body| decode(body).unwrap().tags.len())
                    .sum::<usize>()
            })
        });
        let decoded: Vec<Event<'_>> = bodies.iter().map(|b| decode(b).unwrap()).collect();
        index_hot(&mut group, &rt, &indexer, &decoded);
        let mut indexed = decoded.clone();
        rt.block_on(index_events(&indexer, &metrics, &mut indexed))
            .unwrap();
        group.bench_function(BenchmarkId::from_parameter("encode"), |b| {
            b.iter(|| indexed.iter().map(|e| e.encoded().len()).sum::<usize>())
        });
        // The field splice (a route's exclude_fields / include_fields), with tag_ids.
        let exclude = FieldRules::new(
            &[
                "user.ip_address".into(),
                "request.headers".into(),
                "exception.values.*.stacktrace.frames.*.vars".into(),
            ],
            &[],
        )
        .unwrap();
        let include =
            FieldRules::new(&[], &["level".into(), "exception".into(), "user.id".into()]).unwrap();
        for (name, rules) in [("splice_exclude", &exclude), ("splice_include", &include)] {
            assert!(indexed[0].encoded_with(rules.as_ref()).len() < indexed[0].encoded().len());
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    indexed
                        .iter()
                        .map(|e| e.encoded_with(rules.as_ref()).len())
                        .sum::<usize>()
                })
            });
        }
        group.bench_function(BenchmarkId::from_parameter("all"), |b| {
            b.to_async(&rt).iter(|| async {
                let mut events: Vec<Event<'_>> =
                    bodies.iter().map(|body| decode(body).unwrap()).collect();
                index_events(&indexer, &metrics, &mut events).await.unwrap();
                events.iter().map(|e| e.encoded().len()).sum::<usize>()
            })
        });
        group.finish();
        println!(
            "event/{label}: {} bytes each, {} tags",
            bodies[0].len(),
            decoded[0].tags.len()
        );
    }
    // The hot index target is for 6 tags (12 strings), on a typical event.
    let six: Vec<String> = (0..BATCH).map(|n| sentry_event(n, 8 * 1024, 6)).collect();
    let decoded: Vec<Event<'_>> = six.iter().map(|b| decode(b).unwrap()).collect();
    rt.block_on(index_events(&indexer, &metrics, &mut decoded.clone()))
        .unwrap();
    let mut group = c.benchmark_group("event/8KiB-6-tags");
    group.throughput(Throughput::Elements(BATCH as u64));
    index_hot(&mut group, &rt, &indexer, &decoded);
    group.finish();
    rt.block_on(indexer.store().close());
}

/// Instruction counts: `BENCH_COUNT=decode|index|encode|all BENCH_SIZE=1KiB|8KiB|200KiB
/// BENCH_ITERS=N` runs one step N times over a batch of 10 events and exits, for
/// `valgrind --tool=callgrind`. Two runs with different N give the marginal
/// instructions per event: (I(2N) − I(N)) / (10 N).
fn count(step: &str) {
    let size = match std::env::var("BENCH_SIZE").as_deref() {
        Ok("1KiB") => 1024,
        Ok("200KiB") => 200 * 1024,
        _ => 8 * 1024,
    };
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let tags: usize = std::env::var("BENCH_TAGS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let indexer = indexer(&rt);
    let metrics = Metrics::disabled();
    let bodies: Vec<String> = (0..BATCH).map(|n| sentry_event(n, size, tags)).collect();
    let mut warm: Vec<Event<'_>> = bodies.iter().map(|b| decode(b).unwrap()).collect();
    rt.block_on(index_events(&indexer, &metrics, &mut warm))
        .unwrap();
    let mut total = 0usize;
    for _ in 0..iters {
        total += match step {
            "decode" => bodies.iter().map(|b| decode(b).unwrap().tags.len()).sum(),
            "index" => {
                let mut events = warm.clone();
                rt.block_on(index_events(&indexer, &metrics, &mut events))
                    .unwrap();
                events.len()
            }
            "encode" => warm.iter().map(|e| e.encoded().len()).sum(),
            _ => {
                let mut events: Vec<Event<'_>> =
                    bodies.iter().map(|b| decode(b).unwrap()).collect();
                rt.block_on(index_events(&indexer, &metrics, &mut events))
                    .unwrap();
                events.iter().map(|e| e.encoded().len()).sum()
            }
        };
    }
    println!("{step} {size} x{iters}: {total}");
    rt.block_on(indexer.store().close());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(std::time::Duration::from_secs(3))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
fn main() {
    if let Ok(step) = std::env::var("BENCH_COUNT") {
        count(&step);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
