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
    sqs_forwarder::aws::s3_client(&sdk().await)
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
