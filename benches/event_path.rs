//! The per-event CPU path: decode, index on a hot cache, encode with `tag_ids`, for
//! Sentry-like events of 1 KiB, 8 KiB and 200 KiB. Each group also times the three
//! steps alone. The indexer works on batches of 10 events, as the pipeline does; the
//! figures are per event (criterion's throughput is set to 10 elements).
//!
//! Run: `cargo bench --bench event_path`. Target: at most 5 µs for a typical (8 KiB) event.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// criterion's macros generate functions without docs.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sqs_forwarder::event::{decode, Event};
use sqs_forwarder::indexer::{Indexer, IndexerSettings, Store};
use sqs_forwarder::metrics::Metrics;
use sqs_forwarder::pipeline::index_events;
use sqs_forwarder::retry::RetryPolicy;

const BATCH: usize = 10;

/// A Sentry-like error event of about `size` bytes: 12 tags, contexts, an SDK block,
/// breadcrumbs, and an exception whose stack trace grows to the size.
fn sentry_event(n: usize, size: usize) -> String {
    let tags = [
        ("environment", "production".to_string()),
        ("level", "error".to_string()),
        ("release", "backend@24.11.0".to_string()),
        ("server_name", format!("web-{}", n % 8)),
        (
            "transaction",
            "/api/0/projects/{org}/{project}/events/".to_string(),
        ),
        ("browser", "Chrome 131".to_string()),
        ("browser.name", "Chrome".to_string()),
        ("os", "Linux".to_string()),
        ("os.name", "Linux".to_string()),
        ("runtime", "CPython 3.12.7".to_string()),
        ("url", "https://example.com/checkout/confirm".to_string()),
        ("user", format!("id:{}", n % 100)),
    ];
    let tags: Vec<String> = tags
        .iter()
        .map(|(k, v)| format!("[\"{k}\",\"{v}\"]"))
        .collect();
    let head = format!(
        r#"{{"event_id":"{n:032x}","project_id":42,"organization_id":7,"platform":"python","timestamp":"2026-11-22T10:00:00.123Z","level":"error","logger":"django.request","transaction":"/api/0/checkout/","server_name":"web-3","release":"backend@24.11.0","environment":"production","message":"ZeroDivisionError: division by zero","tags":[{}],"contexts":{{"os":{{"name":"Linux","version":"6.1"}},"runtime":{{"name":"CPython","version":"3.12.7"}},"trace":{{"trace_id":"4c79f60c11214eb38604f4ae0781bfb2","span_id":"fa90fdead5f74053","op":"http.server"}}}},"sdk":{{"name":"sentry.python.django","version":"2.19.0","integrations":["django","logging","stdlib","threading"]}},"user":{{"id":"{}","ip_address":"10.0.0.1"}},"request":{{"method":"POST","url":"https://example.com/api/0/checkout/","headers":{{"Content-Type":"application/json","User-Agent":"Mozilla/5.0 (X11; Linux x86_64)"}}}},"breadcrumbs":{{"values":[{{"timestamp":1763805599.1,"category":"query","message":"SELECT \"orders\".\"id\" FROM \"orders\" WHERE \"orders\".\"user_id\" = %s"}}]}},"exception":{{"values":[{{"type":"ZeroDivisionError","value":"division by zero","stacktrace":{{"frames":["#,
        tags.join(","),
        n % 100
    );
    let mut body = head;
    let mut i = 0;
    loop {
        let frame = format!(
            r#"{{"filename":"app/views/checkout_{i}.py","function":"confirm_order_{i}","module":"app.views.checkout","lineno":{},"colno":13,"in_app":true,"context_line":"    total = amount / quantity  # frame {i}","pre_context":["def confirm_order(request):","    amount = request.data[\"amount\"]"],"post_context":["    return Response(total)"],"vars":{{"amount":"100","quantity":"0"}}}}"#,
            100 + i
        );
        if body.len() + frame.len() + 8 > size && i > 0 {
            break;
        }
        if i > 0 {
            body.push(',');
        }
        body.push_str(&frame);
        i += 1;
    }
    body.push_str("]}}]}}");
    body
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("event-path-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("bench.sqlite3").display());
    let indexer = rt.block_on(async {
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
    });
    let metrics = Metrics::disabled();

    for (label, size) in [("1KiB", 1024), ("8KiB", 8 * 1024), ("200KiB", 200 * 1024)] {
        let bodies: Vec<String> = (0..BATCH).map(|n| sentry_event(n, size)).collect();
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
        group.bench_function(BenchmarkId::from_parameter("index_hot"), |b| {
            b.to_async(&rt).iter_batched(
                || decoded.clone(),
                |mut events| async {
                    index_events(&indexer, &metrics, &mut events).await.unwrap();
                    events
                },
                criterion::BatchSize::SmallInput,
            )
        });
        let mut indexed = decoded.clone();
        rt.block_on(index_events(&indexer, &metrics, &mut indexed))
            .unwrap();
        group.bench_function(BenchmarkId::from_parameter("encode"), |b| {
            b.iter(|| indexed.iter().map(|e| e.encoded().len()).sum::<usize>())
        });
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
criterion_main!(benches);
