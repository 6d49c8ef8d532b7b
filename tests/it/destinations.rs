//! Destinations as users have them: a queue whose own `MaximumMessageSize` is below
//! `FORWARDER_MAX_MESSAGE_BYTES` (every queue made before SQS raised the limit to
//! 1 MiB has 256 KiB), with and without a bucket for oversized events. The real binary
//! against LocalStack.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;

use crate::helpers::*;

/// 256 KiB: the limit of every queue made before August 2025.
const OLD_LIMIT: usize = 262_144;

/// A destination queue with the old 256 KiB limit.
async fn old_queue(q: &Queues) -> String {
    let url = q
        .client
        .create_queue()
        .queue_name(unique("t-old"))
        .attributes(
            QueueAttributeName::MaximumMessageSize,
            OLD_LIMIT.to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    url
}

/// An event of about 400 KB: over the old queue's limit, under the forwarder's 1 MiB.
fn big_event(id: u128) -> String {
    format!(
        r#"{{"event_id":"{id:032x}","project_id":42,"organization_id":7,"timestamp":"2026-03-04T10:00:00Z","breadcrumbs":"{}"}}"#,
        "x".repeat(400_000)
    )
}

fn run_to(source: &str, dest: &str) -> std::process::Command {
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", source)
        .env("FORWARDER_DEST_QUEUE_URL", dest)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off")
        .env("RUST_LOG", "warn");
    run
}

#[tokio::test]
async fn an_event_over_the_queues_own_limit_is_offloaded_to_the_routes_bucket() {
    let q = Queues::create(30).await;
    let dest = old_queue(&q).await;
    let bucket = unique("bucket").to_lowercase();
    let s3 =
        sqs_forwarder::aws::s3_client(&sdk().await, &sqs_forwarder::metrics::Metrics::disabled());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let body = big_event(1);
    send_bodies(&q.client, &q.source, &[body.clone(), event(2, 42)]).await;

    // `check` says which bound the route has, and why.
    let check = run_ok(
        binary(&["check"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &dest)
            .env("FORWARDER_INDEXER", "off"),
    );
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        said.contains("message limit: 262144 bytes (the queue's MaximumMessageSize)"),
        "{said}"
    );

    run_ok(run_to(&q.source, &dest).env("FORWARDER_S3_BUCKET", &bucket));
    let arrived = drain(&q.client, &dest, 2, Duration::from_secs(10)).await;
    assert_eq!(arrived.len(), 2, "{arrived:?}");
    let pointer = arrived
        .iter()
        .find(|b| b.contains("s3Url"))
        .expect("the big event arrives as a pointer");
    let key = format!("42/2026-03-04/{:032x}", 1);
    assert!(pointer.contains(&key), "{pointer}");
    let stored = s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("the event is stored in the bucket");
    let bytes = stored.body.collect().await.unwrap().into_bytes();
    assert_eq!(bytes.as_ref(), body.as_bytes(), "stored as sent");
    assert!(
        arrived
            .iter()
            .any(|b| !b.contains("s3Url") && event_id_of(b) == format!("{:032x}", 2)),
        "the small event goes as it is"
    );
    assert_eq!(depth(&q.client, &q.source).await, 0);
}

#[tokio::test]
async fn without_a_bucket_an_event_over_the_queues_limit_is_dead_lettered_as_oversized() {
    let q = Queues::create(30).await;
    let dest = old_queue(&q).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    let body = big_event(3);
    send_bodies(&q.client, &q.source, &[body.clone(), event(4, 42)]).await;

    let started = std::time::Instant::now();
    run_ok(run_to(&q.source, &dest).env("FORWARDER_DLQ_URL", &dlq));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a dead-lettered message is gone: the idle run does not wait for it to come back"
    );
    let letters = drain_messages(&q.client, &dlq, 1, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].body.as_deref(), Some(body.as_str()));
    assert_eq!(
        attribute(&letters[0], "reason").as_deref(),
        Some("oversized"),
        "the queue's limit is known: not refused by SQS as message_rejected"
    );
    let arrived = drain(&q.client, &dest, 1, Duration::from_secs(5)).await;
    assert_eq!(
        arrived.iter().map(|b| event_id_of(b)).collect::<Vec<_>>(),
        [format!("{:032x}", 4)],
        "the other event is forwarded"
    );
    assert_eq!(depth(&q.client, &q.source).await, 0);
}
