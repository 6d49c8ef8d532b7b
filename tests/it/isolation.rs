//! Failure isolation, end to end with the real binary, LocalStack and PostgreSQL: one
//! bad string, one noisy organization or one broken destination never harms anybody
//! else's events (RELIABILITY.md, "Failure isolation").

use std::time::Duration;

use crate::helpers::*;

/// A valid event of `org` with these tags (JSON text of the `tags` list).
fn event_of(id: u128, org: u64, tags: &str) -> String {
    format!(
        r#"{{"event_id":"{id:032x}","project_id":1,"organization_id":{org},"message":"m{id}","tags":{tags}}}"#
    )
}

/// The event id and `tag_ids` of a forwarded body (read leniently: a lone surrogate
/// escape in a field not read is valid JSON text).
fn ids_of(body: &str) -> (String, Vec<[Option<u64>; 2]>) {
    #[derive(serde::Deserialize)]
    struct Forwarded {
        event_id: String,
        tag_ids: Vec<[Option<u64>; 2]>,
    }
    let f: Forwarded = serde_json::from_str(body).expect("forwarded body is JSON");
    (f.event_id, f.tag_ids)
}

/// The sum of a counter's values over the captured lines.
fn total(lines: &[String], metric: &str) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(metric))
        .filter_map(|rest| rest.split('|').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// Case 1: one batch of ten with PostgreSQL as the store. Tag strings PostgreSQL cannot
/// hold (U+0000, and a lone surrogate escape) get no id; every event is forwarded, none
/// is dead-lettered, none stays behind.
#[tokio::test]
async fn a_string_the_store_cannot_hold_fails_nothing_else() {
    let q = Queues::create(30).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    let org = random_org();
    let bodies: Vec<String> = (0..10u128)
        .map(|i| match i {
            3 => event_of(i, org, r#"[["release","a\u0000b"]]"#),
            6 => event_of(i, org, r#"[["release","\ud944"]]"#),
            _ => event_of(i, org, &format!(r#"[["release","r{i}"]]"#)),
        })
        .collect();
    send_bodies(&q.client, &q.source, &bodies).await;

    let statsd = StatsdCapture::start();
    let out = spawn_binary(
        binary(&["run"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_DLQ_URL", &dlq)
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
            .env("FORWARDER_INDEXER_DATABASE_URL", postgres_url())
            .env("FORWARDER_WORKERS", "1")
            .env("FORWARDER_EXIT_WHEN_IDLE", "2")
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("RUST_LOG", "warn"),
    )
    .finish(Duration::from_secs(60))
    .await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("a\u{0}b"), "a tag's text was logged: {log}");

    let arrived = drain_then_more(&q.client, &q.dest, 10, Duration::from_secs(10)).await;
    assert_eq!(arrived.len(), 10, "every event forwarded");
    for body in &arrived {
        let (id, ids) = ids_of(body);
        assert!(ids[0][0].is_some(), "the key has an id: {body}");
        let bad = id.ends_with('3') || id.ends_with('6');
        assert_eq!(ids[0][1].is_none(), bad, "{body}");
    }
    assert!(drain(&q.client, &dlq, 1, Duration::from_secs(1))
        .await
        .is_empty());
    assert_eq!(depth(&q.client, &q.source).await, 0, "nothing left behind");

    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        total(l, "forwarder.indexer.refused:") >= 2
    });
    let refused: u64 = lines
        .iter()
        .filter(|l| l.ends_with("|c|#reason:invalid_string"))
        .filter_map(|l| l.strip_prefix("forwarder.indexer.refused:"))
        .filter_map(|rest| rest.split('|').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(refused, 2, "{lines:#?}");
}

/// Case 2: one organization far over `FORWARDER_RATE_LIMIT` among nine others. The
/// others' events go out at once; the noisy one's are deferred (hidden in the source
/// until its tokens are back) and all arrive later; none is dropped or dead-lettered.
#[tokio::test]
async fn an_organization_over_its_rate_limit_holds_back_nobody_else() {
    let q = Queues::create(30).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    let noisy = random_org();
    let quiet: Vec<u64> = (0..9).map(|_| random_org()).collect();
    // Each batch of ten: the noisy organization's events first, then the others'.
    let mut bodies = Vec::new();
    let mut id = 0u128;
    for round in 0..4 {
        for _ in 0..7 {
            id += 1;
            bodies.push(event_of(id, noisy, "[]"));
        }
        for org in quiet.iter().skip(round * 3).take(3) {
            id += 1;
            bodies.push(event_of(id, *org, "[]"));
        }
    }
    let noisy_count = 28;
    let quiet_count = bodies.len() - noisy_count;
    send_bodies(&q.client, &q.source, &bodies).await;

    let statsd = StatsdCapture::start();
    let started = std::time::Instant::now();
    let worker = spawn_binary(
        binary(&["run"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_DLQ_URL", &dlq)
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_RATE_LIMIT", "4/2s")
            .env("FORWARDER_WORKERS", "2")
            .env("FORWARDER_EXIT_WHEN_IDLE", "6")
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("RUST_LOG", "warn"),
    );

    // Receive as they arrive, noting when.
    let mut arrived: Vec<(String, Duration)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while arrived.len() < bodies.len() && std::time::Instant::now() < deadline {
        for body in drain(&q.client, &q.dest, 1, Duration::from_secs(1)).await {
            arrived.push((body, started.elapsed()));
        }
    }
    let out = worker.finish(Duration::from_secs(60)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let org_of = |body: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["organization_id"].as_u64().unwrap()
    };
    let (noisy_arrived, quiet_arrived): (Vec<_>, Vec<_>) =
        arrived.iter().partition(|(b, _)| org_of(b) == noisy);
    assert_eq!(
        quiet_arrived.len(),
        quiet_count,
        "every other event arrived"
    );
    assert_eq!(
        noisy_arrived.len(),
        noisy_count,
        "none of the noisy one's is lost"
    );
    let quiet_last = quiet_arrived.iter().map(|(_, t)| *t).max().unwrap();
    let noisy_last = noisy_arrived.iter().map(|(_, t)| *t).max().unwrap();
    println!(
        "rate limit: {quiet_count} events of 9 organizations all arrived by {quiet_last:?}; \
         {noisy_count} of the noisy one by {noisy_last:?}"
    );
    // 28 events at 4 per 2 s take about 12 s; the others must not wait for them.
    assert!(
        quiet_last < Duration::from_secs(6),
        "the others waited: last at {quiet_last:?}"
    );
    assert!(
        noisy_last >= Duration::from_secs(8),
        "the limit was not held: last at {noisy_last:?}"
    );
    assert!(drain(&q.client, &dlq, 1, Duration::from_secs(1))
        .await
        .is_empty());
    assert_eq!(depth(&q.client, &q.source).await, 0, "nothing left behind");
    let lines = statsd.wait_for(Duration::from_secs(3), |l| {
        l.iter()
            .any(|l| l == "forwarder.event.deferred:1|c|#cause:rate_limited")
    });
    assert!(
        lines
            .iter()
            .any(|l| l == "forwarder.event.deferred:1|c|#cause:rate_limited"),
        "{lines:#?}"
    );
}

/// Case 3: the destination queue is deleted while the worker runs, then created again.
/// Meanwhile nothing is dead-lettered, every event stays in the source, the route's
/// gauge says paused and `/readyz` answers 503. Once the queue is back, the same
/// process resumes by itself and forwards everything.
#[tokio::test]
async fn a_missing_destination_pauses_its_route_and_resumes_in_the_same_process() {
    let q = Queues::create(30).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    let dest_name = q.dest.rsplit('/').next().unwrap().to_string();
    let statsd = StatsdCapture::start();
    let health = free_addr();
    let worker = spawn_binary(
        binary(&["run"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_DLQ_URL", &dlq)
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
            .env("FORWARDER_HEALTH_ADDR", &health)
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_RETRY_MAX_INTERVAL", "1s")
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("RUST_LOG", "warn"),
    );
    assert_eq!(wait_status(&health, "/readyz", 200), Some(200));
    q.client
        .delete_queue()
        .queue_url(&q.dest)
        .send()
        .await
        .unwrap();
    // A queue being deleted may still take messages for a moment (SQS: up to 60 s): the
    // events go once it is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while q
        .client
        .get_queue_attributes()
        .queue_url(&q.dest)
        .send()
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the destination is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bodies: Vec<String> = (0..40u128).map(|i| event(i + 1, 1)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;

    let gauge = format!("forwarder.route.paused:1|g|#route:{dest_name}");
    let lines = statsd.wait_for(Duration::from_secs(20), |l| l.contains(&gauge));
    assert!(lines.contains(&gauge), "{lines:#?}");
    assert_eq!(
        wait_status(&health, "/readyz", 503),
        Some(503),
        "not ready while every route is paused"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        drain(&q.client, &dlq, 1, Duration::from_secs(1))
            .await
            .is_empty(),
        "an unusable route dead-letters nothing"
    );
    assert_eq!(
        depth(&q.client, &q.source).await,
        40,
        "all kept in the source"
    );

    create_queue(&q.client, &dest_name, 30).await;
    let arrived = drain_then_more(&q.client, &q.dest, 40, Duration::from_secs(60)).await;
    let mut ids: Vec<String> = arrived.iter().map(|b| event_id_of(b)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        40,
        "every event arrived after the queue came back"
    );
    assert_eq!(wait_status(&health, "/readyz", 200), Some(200));
    let resumed = format!("forwarder.route.paused:0|g|#route:{dest_name}");
    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter()
            .rev()
            .find(|l| l.starts_with("forwarder.route.paused"))
            == Some(&resumed)
    });
    assert_eq!(
        lines
            .iter()
            .rev()
            .find(|l| l.starts_with("forwarder.route.paused")),
        Some(&resumed)
    );
    assert!(lines
        .iter()
        .any(|l| l == "forwarder.event.failed:1|c|#class:queue_not_found"));
    assert!(
        lines.iter().any(|l| l == HTTP_FAILED),
        "Sentry's counter kept"
    );
    assert!(drain(&q.client, &dlq, 1, Duration::from_secs(1))
        .await
        .is_empty());
    drop(worker);
}

/// Case 4: a FIFO source holds one group of ten events; SQS fails the second one's
/// SendMessageBatch entry once (through a proxy, as SQS fails a single entry). The
/// destination must still receive 1..10 in order: the later events of the group are
/// never sent before the second one was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_entry_is_never_overtaken_by_a_later_one_of_its_group() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("t");
    let source = create_fifo_queue(&client, &format!("{name}-src")).await;
    let dest = create_fifo_queue(&client, &format!("{name}-dst")).await;
    let bodies: Vec<String> = (1..=10u128).map(|i| event(i, 1)).collect();
    let entries = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(b)
                .message_group_id("one")
                .message_deduplication_id(i.to_string())
                .build()
                .unwrap()
        })
        .collect();
    client
        .send_message_batch()
        .queue_url(&source)
        .set_entries(Some(entries))
        .send()
        .await
        .unwrap();

    let second = format!("{:032x}", 2);
    let failed_once = Arc::new(AtomicBool::new(false));
    let attempt_ids = Arc::new(AtomicBool::new(false));
    let proxy = intercept_proxy({
        let (failed_once, attempt_ids) = (failed_once.clone(), attempt_ids.clone());
        move |action, body| {
            if action == "ReceiveMessage" && body["ReceiveRequestAttemptId"].is_string() {
                attempt_ids.store(true, Ordering::SeqCst);
            }
            if action != "SendMessageBatch" || failed_once.load(Ordering::SeqCst) {
                return Intercept::Pass;
            }
            let hit = body["Entries"].as_array().and_then(|entries| {
                entries.iter().find(|e| {
                    e["MessageBody"]
                        .as_str()
                        .is_some_and(|b| b.contains(&second))
                })
            });
            match hit {
                Some(entry) => {
                    failed_once.store(true, Ordering::SeqCst);
                    let id = entry["Id"].as_str().unwrap_or_default().to_string();
                    Intercept::FailEntries(vec![(id, "InternalError".into())])
                }
                None => Intercept::Pass,
            }
        }
    })
    .await;

    let out = spawn_binary(
        binary(&["run"])
            .env("AWS_ENDPOINT_URL", &proxy)
            .env("FORWARDER_SOURCE_QUEUE_URL", &source)
            .env("FORWARDER_DEST_QUEUE_URL", &dest)
            .env("FORWARDER_MESSAGE_GROUP_ID", "all")
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_WORKERS", "1")
            .env("FORWARDER_EXIT_WHEN_IDLE", "3")
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("RUST_LOG", "warn"),
    )
    .finish(Duration::from_secs(60))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(failed_once.load(Ordering::SeqCst), "the fault was injected");
    assert!(
        attempt_ids.load(Ordering::SeqCst),
        "FIFO receives carry a ReceiveRequestAttemptId"
    );

    let arrived = drain_messages_then_more(&client, &dest, 10, Duration::from_secs(10)).await;
    let order: Vec<String> = arrived
        .iter()
        .map(|m| event_id_of(m.body.as_deref().unwrap()))
        .collect();
    let want: Vec<String> = (1..=10u128).map(|i| format!("{i:032x}")).collect();
    assert_eq!(order, want, "the group's order at the destination");
}
