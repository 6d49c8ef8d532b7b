//! Oversized events against LocalStack's S3: stored and pointed to (both pointer
//! formats), the same key on a retry, no bucket, and a bucket that does not exist.

use std::time::Duration;

use crate::helpers::*;
use sqs_forwarder::app::App;
use sqs_forwarder::config::Config;
use sqs_forwarder::forward::PointerFormat;
use sqs_forwarder::metrics::Metrics;

const LIMIT: usize = 4096;

fn big_event(id: u128) -> String {
    format!(
        r#"{{"event_id":"{id:032x}","project_id":42,"organization_id":7,"timestamp":"2026-03-04T23:59:59-01:00","breadcrumbs":"{}"}}"#,
        "x".repeat(3 * LIMIT)
    )
}

async fn s3() -> aws_sdk_s3::Client {
    sqs_forwarder::aws::s3_client(&sdk().await, &sqs_forwarder::metrics::Metrics::disabled())
}

async fn bucket() -> String {
    let name = unique("bucket").to_lowercase();
    s3().await
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .unwrap();
    name
}

async fn object(bucket: &str, key: &str) -> Option<String> {
    let out = s3()
        .await
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .ok()?;
    let bytes = out.body.collect().await.ok()?.into_bytes();
    Some(String::from_utf8(bytes.to_vec()).unwrap())
}

fn config(q: &Queues, bucket: Option<&str>, format: PointerFormat) -> Config {
    let mut c = q.config(None);
    c.max_message_bytes = LIMIT;
    c.s3_bucket = bucket.map(str::to_string);
    c.s3_pointer_format = format;
    c
}

async fn run(config: Config) -> (App, sqs_forwarder::worker::RunSummary) {
    let app = App::from_sdk(config, &sdk().await, Metrics::disabled()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), app.run(std::future::pending()))
        .await
        .unwrap()
        .unwrap();
    (app, summary)
}

#[tokio::test]
async fn an_oversized_event_is_stored_in_s3_and_a_sentry_pointer_sent() {
    let q = Queues::create(30).await;
    let bucket = bucket().await;
    let body = big_event(1);
    send_bodies(&q.client, &q.source, &[body.clone(), event(2, 1)]).await;
    let (_, summary) = run(config(&q, Some(&bucket), PointerFormat::Sentry)).await;
    assert_eq!(summary.totals.forwarded, 2);

    let key = format!("42/2026-03-05/{:032x}", 1);
    assert_eq!(
        object(&bucket, &key).await.as_deref(),
        Some(body.as_str()),
        "stored as sent"
    );
    let got = drain_messages(&q.client, &q.dest, 2, Duration::from_secs(5)).await;
    let pointer = got
        .iter()
        .find(|m| attribute(m, "event_id") == Some(format!("{:032x}", 1)))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(pointer.body.as_deref().unwrap()).unwrap();
    assert_eq!(v["eventID"], format!("{:032x}", 1));
    assert_eq!(
        v["s3Url"],
        format!("https://{bucket}.s3.us-east-1.amazonaws.com/{key}")
    );
}

#[tokio::test]
async fn the_extended_client_pointer_is_understood_by_its_consumers() {
    let q = Queues::create(30).await;
    let bucket = bucket().await;
    let body = big_event(3);
    send_bodies(&q.client, &q.source, std::slice::from_ref(&body)).await;
    run(config(&q, Some(&bucket), PointerFormat::Extended)).await;
    let got = drain_messages(&q.client, &q.dest, 1, Duration::from_secs(5)).await;
    let v: serde_json::Value = serde_json::from_str(got[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(v[0], "software.amazon.payloadoffloading.PayloadS3Pointer");
    assert_eq!(v[1]["s3BucketName"], bucket);
    let key = v[1]["s3Key"].as_str().unwrap();
    assert_eq!(object(&bucket, key).await.as_deref(), Some(body.as_str()));
    assert_eq!(
        attribute(&got[0], "ExtendedPayloadSize"),
        Some(body.len().to_string())
    );
}

#[tokio::test]
async fn a_resent_event_overwrites_its_key_and_leaves_no_orphan() {
    let q = Queues::create(30).await;
    let bucket = bucket().await;
    let (app, _) = run(config(&q, Some(&bucket), PointerFormat::Sentry)).await;
    let body = big_event(4);
    let event = sqs_forwarder::event::decode(&body).unwrap();
    let router = app.router().await.unwrap();
    for _ in 0..3 {
        assert!(router
            .default_route()
            .unwrap()
            .forward(&[(&event).into()])
            .await[0]
            .is_accepted());
    }
    let listed = s3()
        .await
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.contents().len(),
        1,
        "one object per event, however often sent"
    );
}

#[tokio::test]
async fn without_a_bucket_an_oversized_event_is_skipped_and_dead_lettered() {
    let q = Queues::create(1).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    let body = big_event(5);
    send_bodies(&q.client, &q.source, std::slice::from_ref(&body)).await;
    let mut c = config(&q, None, PointerFormat::Sentry);
    c.dlq_url = Some(dlq.clone());
    let (_, summary) = run(c).await;
    assert_eq!(
        (summary.totals.forwarded, summary.totals.dead_lettered),
        (0, 1)
    );
    let letters = drain_messages(&q.client, &dlq, 1, Duration::from_secs(5)).await;
    assert_eq!(
        letters[0].body.as_deref(),
        Some(body.as_str()),
        "the DLQ takes what fits SQS"
    );
    assert_eq!(
        attribute(&letters[0], "reason").as_deref(),
        Some("oversized")
    );
    assert!(drain(&q.client, &q.dest, 1, Duration::from_secs(2))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_bucket_that_does_not_exist_pauses_the_route_until_it_exists() {
    let q = Queues::create(1).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    send_bodies(&q.client, &q.source, &[big_event(6)]).await;
    let name = unique("late-bucket").to_lowercase();
    let mut c = config(&q, Some(&name), PointerFormat::Sentry);
    c.dlq_url = Some(dlq.clone());
    let app = App::from_sdk(c, &sdk().await, Metrics::disabled()).unwrap();
    let worker = app.worker().await.unwrap();
    let mut totals = sqs_forwarder::worker::BatchOutcome::default();
    let started = std::time::Instant::now();
    while totals.received == 0 && started.elapsed() < Duration::from_secs(10) {
        totals += worker.run_once().await.unwrap();
    }
    assert_eq!(
        (totals.deferred, totals.dead_lettered, totals.deleted),
        (1, 0, 0),
        "{totals:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "NoSuchBucket was retried"
    );
    assert!(drain(&q.client, &dlq, 1, Duration::from_secs(1))
        .await
        .is_empty());

    // The bucket appears: the route's probe (HeadBucket) passes and the event goes.
    s3().await
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while totals.forwarded == 0 && started.elapsed() < Duration::from_secs(30) {
        totals += worker.run_once().await.unwrap();
    }
    assert_eq!(totals.forwarded, 1, "{totals:?}");
    let got = drain(&q.client, &q.dest, 1, Duration::from_secs(5)).await;
    assert!(got[0].contains(&name), "{got:?}");
}

/// The binary with `FORWARDER_S3_OFFLOAD=always`: every event, small or not, is stored
/// in S3 as it would have been sent (with its `tag_ids`) and only the pointer goes.
#[tokio::test]
async fn always_mode_stores_every_event_and_sends_only_pointers() {
    let q = Queues::create(30).await;
    let bucket = bucket().await;
    let bodies: Vec<String> = (1..=6).map(|i| event(100 + i, 42)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_S3_BUCKET", &bucket)
        .env("FORWARDER_S3_OFFLOAD", "always")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env(
            "FORWARDER_DATA_DIR",
            std::env::temp_dir().join(unique("data")),
        );
    run_ok(&mut run);
    let got = drain_messages(&q.client, &q.dest, 6, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 6);
    for m in &got {
        let v: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        let id = v["eventID"].as_str().expect("a Sentry pointer").to_string();
        assert_eq!(attribute(m, "event_id").as_deref(), Some(id.as_str()));
        let url = v["s3Url"].as_str().unwrap();
        let key = url.split_once(".amazonaws.com/").unwrap().1;
        assert!(key.starts_with("42/") && key.ends_with(&id), "{key}");
        let stored = object(&bucket, key).await.expect("the object is there");
        let sent = bodies.iter().find(|b| event_id_of(b) == id).unwrap();
        let stored_v: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert!(stored_v["tag_ids"].is_array(), "stored with its tag ids");
        assert!(
            stored.starts_with(sent.trim_end_matches('}')),
            "the original body, then tag_ids"
        );
    }
}

/// Per route: one project's route stores everything, another's with the same bucket
/// only what is oversized; `always` with no bucket at all is refused at start.
#[tokio::test]
async fn always_mode_per_route_and_refused_without_a_bucket() {
    let q = Queues::create(30).await;
    let bucket = bucket().await;
    let routes = routes_file(&format!(
            "[default]\nqueue_url = \"{dest}\"\ns3_bucket = \"{bucket}\"\n\n\
             [projects.7]\nqueue_url = \"{dest}\"\ns3_bucket = \"{bucket}\"\ns3_offload = \"always\"\n",
            dest = q.dest
        ));
    let bodies = vec![event(201, 7), event(202, 8)];
    send_bodies(&q.client, &q.source, &bodies).await;
    run_routes(&q.source, &routes);
    let got = drain_messages(&q.client, &q.dest, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let body_of = |id: u128| {
        got.iter()
            .find(|m| attribute(m, "event_id") == Some(format!("{id:032x}")))
            .and_then(|m| m.body.clone())
            .unwrap()
    };
    assert!(body_of(201).contains("s3Url"), "project 7: a pointer");
    assert_eq!(body_of(202), bodies[1], "project 8: the event itself");

    let mut refused = binary(&["run"]);
    refused
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_S3_OFFLOAD", "always");
    let out = output_of(&mut refused, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l
                .contains("FORWARDER_S3_OFFLOAD: is always, but FORWARDER_S3_BUCKET is not set")),
        "{stderr}"
    );
}
