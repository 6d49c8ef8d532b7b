//! The worker against the real LocalStack: delivery, deletion, invalid messages,
//! metric lines, failures, and visibility extension.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use sqs_forwarder::app::App;
use sqs_forwarder::forward::{Forwarder, Router};
use sqs_forwarder::metrics::Metrics;
use sqs_forwarder::pipeline::Pipeline;
use sqs_forwarder::worker::Worker;

#[tokio::test]
async fn forwards_every_event_once_and_deletes_the_source() {
    let q = Queues::create(30).await;
    let statsd = StatsdCapture::start();
    let bodies: Vec<String> = (1..=35).map(|i| event(i, 1)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;

    let app = app(q.config(Some(statsd.addr))).await;
    let summary = tokio::time::timeout(Duration::from_secs(60), app.run(std::future::pending()))
        .await
        .expect("run stops by itself once idle")
        .unwrap();
    assert_eq!(summary.totals.received, 35);
    assert_eq!(summary.totals.forwarded, 35);
    assert_eq!(summary.totals.deleted, 35);
    assert!(!summary.abandoned);

    let arrived = drain(&q.client, &q.dest, 36, Duration::from_secs(5)).await;
    assert_eq!(arrived.len(), 35, "each event arrives once");
    let sent: HashSet<&String> = bodies.iter().collect();
    let got: HashSet<&String> = arrived.iter().collect();
    assert_eq!(sent, got, "bodies arrive byte for byte");
    assert_eq!(
        depth(&q.client, &q.source).await,
        0,
        "source messages deleted"
    );

    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter().filter(|l| *l == HTTP_OK).count() >= 35
    });
    assert_eq!(statsd.count(HTTP_OK), 35, "{lines:#?}");
    assert_eq!(statsd.count(HTTP_FAILED), 0);
    assert!(lines
        .iter()
        .any(|l| l.starts_with("forwarder.send_batch.duration:") && l.ends_with("|ms")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("forwarder.event.latency:")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("forwarder.events.in_flight:")));
}

#[tokio::test]
async fn invalid_messages_are_counted_and_left_in_the_queue() {
    let q = Queues::create(1).await;
    let statsd = StatsdCapture::start();
    let invalid = vec![
        "not json".to_string(),
        r#"{"event_id":"abc","project_id":1,"organization_id":1}"#.to_string(),
        "[1,2,3]".to_string(),
    ];
    let valid = vec![event(1, 1), event(2, 1)];
    send_bodies(
        &q.client,
        &q.source,
        &[invalid.clone(), valid.clone()].concat(),
    )
    .await;

    let app = app(q.config(Some(statsd.addr))).await;
    let worker = app.worker().await.unwrap();
    let mut totals = sqs_forwarder::worker::BatchOutcome::default();
    for _ in 0..10 {
        totals += worker.run_once().await.unwrap();
        if totals.forwarded + totals.invalid >= 5 {
            break;
        }
    }
    assert_eq!(
        (totals.forwarded, totals.invalid, totals.deleted),
        (2, 3, 2)
    );

    // The invalid ones come back after their visibility timeout, unchanged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left = drain(&q.client, &q.source, 3, Duration::from_secs(10)).await;
    assert_eq!(
        left.iter().collect::<HashSet<_>>(),
        invalid.iter().collect::<HashSet<_>>()
    );
    let arrived = drain(&q.client, &q.dest, 2, Duration::from_secs(5)).await;
    assert_eq!(arrived.len(), 2);

    app.metrics().flush(Duration::from_secs(1));
    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter()
            .filter(|l| l.starts_with("forwarder.event.invalid"))
            .count()
            >= 3
    });
    for reason in ["invalid_json", "invalid_event_id", "not_an_object"] {
        assert!(
            lines.contains(&format!("forwarder.event.invalid:1|c|#reason:{reason}")),
            "{reason}: {lines:#?}"
        );
    }
    assert_eq!(statsd.count(HTTP_OK), 2);
}

#[tokio::test]
async fn a_missing_destination_pauses_its_route_without_retrying_and_keeps_messages() {
    let q = Queues::create(1).await;
    let statsd = StatsdCapture::start();
    send_bodies(&q.client, &q.source, &[event(1, 1), event(2, 1)]).await;
    let app = app(q.config(Some(statsd.addr))).await;
    let worker = app.worker().await.unwrap();
    q.client
        .delete_queue()
        .queue_url(&q.dest)
        .send()
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let mut totals = sqs_forwarder::worker::BatchOutcome::default();
    for _ in 0..10 {
        totals += worker.run_once().await.unwrap();
        if totals.deferred >= 2 {
            break;
        }
    }
    // The route pauses: both events stay in the source, deferred until its probe.
    assert_eq!(
        (
            totals.deferred,
            totals.failed,
            totals.forwarded,
            totals.deleted
        ),
        (2, 0, 0, 0)
    );
    // QueueDoesNotExist is not retried: no backoff (the policy allows up to 5 s).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        depth(&q.client, &q.source).await,
        2,
        "messages kept for a later try"
    );

    app.metrics().flush(Duration::from_secs(1));
    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter().filter(|l| *l == HTTP_FAILED).count() >= 2
    });
    assert_eq!(statsd.count(HTTP_FAILED), 2, "{lines:#?}");
    assert_eq!(statsd.count(HTTP_OK), 0);
    assert!(lines.contains(&"forwarder.event.failed:1|c|#class:queue_not_found".to_string()));
    assert!(
        !lines.iter().any(|l| l.starts_with("forwarder.retry")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_stays_invisible_until_settled() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Visibility timeout 2 s; forwarding takes about 5 s through a slow proxy. The first
    // visibility extension fails (503): it is retried within the time that remains.
    let q = Queues::create(2).await;
    send_bodies(&q.client, &q.source, &[event(9, 1)]).await;
    let failed = Arc::new(AtomicBool::new(false));
    let flaky = intercept_proxy({
        let failed = failed.clone();
        move |action, _| {
            if action == "ChangeMessageVisibilityBatch" && !failed.swap(true, Ordering::SeqCst) {
                Intercept::Reply {
                    delay: Duration::ZERO,
                    response: sqs_error("503 Service Unavailable", "ServiceUnavailable"),
                }
            } else {
                Intercept::Pass
            }
        }
    })
    .await;
    let app = App::from_sdk(q.config(None), &sdk_at(&flaky).await, Metrics::disabled()).unwrap();
    let source_worker = app.worker().await.unwrap();

    let upstream = endpoint().trim_start_matches("http://").to_string();
    let (slow, _switch) = tcp_proxy(Duration::from_secs(5), upstream).await;
    let slow = aws_sdk_sqs::Client::new(&sdk_at(&format!("http://{slow}")).await);
    let forwarder = Forwarder::new(
        slow,
        &q.dest,
        1024 * 1024,
        app.config().retry.clone(),
        Metrics::disabled(),
    );
    let worker = Arc::new(Worker::new(
        source_worker.source().clone(),
        Pipeline::new(Router::single(forwarder), None, Metrics::disabled()),
        Duration::from_secs(2),
        Metrics::disabled(),
    ));

    let messages = worker.source().receive().await.unwrap();
    assert_eq!(messages.len(), 1);
    let handling = tokio::spawn({
        let worker = worker.clone();
        async move { worker.handle(messages).await }
    });
    // Another consumer polls for 4 s, past the 2 s visibility timeout: it must get nothing.
    let stolen = drain(&q.client, &q.source, 1, Duration::from_secs(4)).await;
    assert!(
        stolen.is_empty(),
        "the message was handed to another consumer"
    );
    let outcome = handling.await.unwrap();
    assert_eq!((outcome.forwarded, outcome.deleted), (1, 1));
    assert!(failed.load(Ordering::SeqCst), "the fault was injected");
    assert_eq!(
        drain(&q.client, &q.dest, 2, Duration::from_secs(3))
            .await
            .len(),
        1
    );
}

async fn app_with_indexer(config: sqs_forwarder::config::Config, url: &str) -> App {
    let mut config = config;
    config.indexer = Some(sqs_forwarder::config::IndexerConfig {
        database_url: sqs_forwarder::config::SecretUrl::new(url),
        pool_size: 2,
        settings: sqs_forwarder::indexer::IndexerSettings {
            cache_size: 1000,
            write_limit: None,
        },
        shared_cache: None,
    });
    app(config).await
}

#[tokio::test]
async fn forwarded_events_carry_tag_ids_and_are_otherwise_unchanged() {
    let q = Queues::create(30).await;
    let org = random_org();
    let bodies = vec![
        format!(
            r#"{{"event_id":"{:032x}","project_id":1,"organization_id":{org},"tags":[["environment","production"],["customer","acme-1"],["","orphan"]],"extra":{{"k":[1,2]}}}}"#,
            1
        ),
        format!(
            r#"{{"event_id":"{:032x}","project_id":1,"organization_id":{org},"tags":{{"customer":"acme-1","region":"eu"}}}}"#,
            2
        ),
        format!(
            r#"{{"event_id":"{:032x}","project_id":1,"organization_id":{org}}}"#,
            3
        ),
    ];
    send_bodies(&q.client, &q.source, &bodies).await;
    let app = app_with_indexer(q.config(None), &postgres_url()).await;
    let summary = tokio::time::timeout(Duration::from_secs(60), app.run(std::future::pending()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.totals.forwarded, 3);

    let arrived = drain(&q.client, &q.dest, 4, Duration::from_secs(5)).await;
    assert_eq!(arrived.len(), 3);
    let indexer = app.indexer().cloned().unwrap();
    for original in &bodies {
        let id = event_id_of(original);
        let got = arrived.iter().find(|b| event_id_of(b) == id).unwrap();
        let event: serde_json::Value = serde_json::from_str(got).unwrap();
        let tag_ids = event["tag_ids"].as_array().unwrap().clone();
        // The body is the original with one field added at the end.
        let prefix = &original[..original.len() - 1];
        assert!(got.starts_with(prefix), "{got}");
        assert!(got[prefix.len()..].starts_with(",\"tag_ids\":"), "{got}");
        // Each id maps back to its tag, in order; the empty key has none.
        let tags = sqs_forwarder::event::decode(original).unwrap().tags;
        assert_eq!(tag_ids.len(), tags.len());
        for ((k, v), ids) in tags.iter().zip(&tag_ids) {
            for (s, id) in [(k, &ids[0]), (v, &ids[1])] {
                if s.is_empty() {
                    assert!(id.is_null(), "{got}");
                    continue;
                }
                let back = indexer
                    .reverse_resolve(org, id.as_u64().unwrap())
                    .await
                    .unwrap();
                assert_eq!(back.as_deref(), Some(s.as_ref()), "{got}");
            }
        }
    }
    // The same string gets the same id across events.
    let customer_ids: HashSet<u64> = arrived
        .iter()
        .filter_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            let tags = sqs_forwarder::event::decode(b).unwrap().tags;
            let i = tags.iter().position(|(k, _)| k == "customer")?;
            v["tag_ids"][i][1].as_u64()
        })
        .collect();
    assert_eq!(customer_ids.len(), 1);
}

#[tokio::test]
async fn an_unreachable_store_keeps_the_batch_in_the_queue() {
    let q = Queues::create(1).await;
    let bodies: Vec<String> = (1..=2)
        .map(|i| format!(r#"{{"event_id":"{i:032x}","project_id":1,"organization_id":9,"tags":{{"customer":"c-{i}"}}}}"#))
        .collect();
    send_bodies(&q.client, &q.source, &bodies).await;
    let app = app_with_indexer(q.config(None), &sqlite_url()).await;
    let worker = app.worker().await.unwrap();
    // The store goes away: every query fails until the retry bound (5 s in tests).
    app.indexer().unwrap().store().close().await;

    let mut totals = sqs_forwarder::worker::BatchOutcome::default();
    for _ in 0..10 {
        totals += worker.run_once().await.unwrap();
        if totals.received >= 2 {
            break;
        }
    }
    assert_eq!((totals.failed, totals.forwarded, totals.deleted), (2, 0, 0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(depth(&q.client, &q.source).await, 2, "kept for a later try");
    assert!(drain(&q.client, &q.dest, 1, Duration::from_secs(2))
        .await
        .is_empty());
}

/// `FORWARDER_RECEIVE_WAIT_SECONDS=0` (short polls) on an empty queue: the poller
/// pauses between receives instead of spinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_polls_on_an_empty_queue_do_not_spin() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let q = Queues::create(30).await;
    let receives = Arc::new(AtomicUsize::new(0));
    let proxy = intercept_proxy({
        let receives = receives.clone();
        move |action, _| {
            if action == "ReceiveMessage" {
                receives.fetch_add(1, Ordering::SeqCst);
            }
            Intercept::Pass
        }
    })
    .await;
    let mut config = q.config(None);
    config.receive_wait = Duration::ZERO;
    config.workers = 1;
    config.exit_when_idle = Some(Duration::from_secs(3));
    let app = sqs_forwarder::app::App::from_sdk(config, &sdk_at(&proxy).await, Metrics::disabled())
        .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), app.run(std::future::pending()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.totals.received, 0);
    let n = receives.load(Ordering::SeqCst);
    assert!((2..=8).contains(&n), "{n} receives in about 3 s");
}
