//! Forwarding features against LocalStack: message attributes, the dead-letter queue,
//! FIFO destinations.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::*;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use sqs_forwarder::app::App;
use sqs_forwarder::forward::{Outcome, Routed};

async fn run_until_idle(app: &App) -> sqs_forwarder::worker::RunSummary {
    tokio::time::timeout(Duration::from_secs(60), app.run(std::future::pending()))
        .await
        .expect("stops when idle")
        .unwrap()
}

#[tokio::test]
async fn forwarded_messages_carry_event_project_and_organization_attributes() {
    let q = Queues::create(30).await;
    send_bodies(&q.client, &q.source, &[event(0xabc, 17)]).await;
    run_until_idle(&app(q.config(None)).await).await;
    let got = drain_messages(&q.client, &q.dest, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        attribute(&got[0], "event_id").as_deref(),
        Some(format!("{:032x}", 0xabc).as_str())
    );
    assert_eq!(attribute(&got[0], "project_id").as_deref(), Some("17"));
    assert_eq!(attribute(&got[0], "organization_id").as_deref(), Some("7"));
    let types = got[0].message_attributes.as_ref().unwrap();
    assert_eq!(types["project_id"].data_type, "Number");
}

#[tokio::test]
async fn what_can_never_be_forwarded_goes_to_the_dlq_with_why_and_leaves_the_source() {
    let q = Queues::create(1).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    let invalid = vec![
        "{oops".to_string(),
        r#"{"event_id":"x","project_id":1,"organization_id":1}"#.to_string(),
    ];
    let valid = vec![event(1, 1), event(2, 1)];
    send_bodies(
        &q.client,
        &q.source,
        &[invalid.clone(), valid.clone()].concat(),
    )
    .await;
    let statsd = StatsdCapture::start();
    let mut config = q.config(Some(statsd.addr));
    config.dlq_url = Some(dlq.clone());
    let summary = run_until_idle(&app(config).await).await;
    assert_eq!(summary.totals.forwarded, 2);
    assert_eq!(summary.totals.dead_lettered, 2);
    assert_eq!(summary.totals.deleted, 4);

    let letters = drain_messages(&q.client, &dlq, 3, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 2);
    let bodies: HashSet<String> = letters.iter().map(|m| m.body.clone().unwrap()).collect();
    assert_eq!(
        bodies,
        invalid.iter().cloned().collect(),
        "original bodies, unchanged"
    );
    let reasons: HashSet<String> = letters
        .iter()
        .map(|m| attribute(m, "reason").unwrap())
        .collect();
    assert_eq!(
        reasons,
        HashSet::from(["invalid_json".to_string(), "invalid_event_id".to_string()])
    );
    assert!(letters
        .iter()
        .all(|m| attribute(m, "stage").as_deref() == Some("decode")));
    assert!(letters
        .iter()
        .all(|m| attribute(m, "source_message_id").is_some()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        depth(&q.client, &q.source).await,
        0,
        "dead-lettered messages are deleted"
    );
    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter()
            .filter(|l| l.starts_with("forwarder.dead_letter:"))
            .count()
            >= 2
    });
    assert!(
        lines.contains(&"forwarder.dead_letter:1|c|#stage:decode,reason:invalid_json".to_string()),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_message_the_destination_refuses_is_dead_lettered_with_its_code() {
    let q = Queues::create(1).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    // The destination refuses event 5 on its own account, as SQS refuses a message with
    // characters it does not take. (A queue's own size limit no longer makes SQS refuse
    // anything: the forwarder reads it, see `destinations`.)
    let bad = format!("{:032x}", 5);
    let proxy = intercept_proxy(refuse_entries(q.dest.clone(), {
        let bad = bad.clone();
        move |body| body.contains(&bad)
    }))
    .await;
    let big = event(5, 1);
    send_bodies(&q.client, &q.source, &[big.clone(), event(6, 1)]).await;
    let mut config = q.config(None);
    config.dlq_url = Some(dlq.clone());
    let app = App::connect(
        config,
        &sdk_at(&proxy).await,
        sqs_forwarder::metrics::Metrics::disabled(),
    )
    .await
    .unwrap();
    let worker = app.worker().await.unwrap();
    let mut totals = sqs_forwarder::worker::BatchOutcome::default();
    for _ in 0..10 {
        totals += worker.run_once().await.unwrap();
        if totals.received >= 2 {
            break;
        }
    }
    assert_eq!(
        (totals.forwarded, totals.dead_lettered, totals.deleted),
        (1, 1, 2),
        "{totals:?}"
    );
    let letters = drain_messages(&q.client, &dlq, 1, Duration::from_secs(5)).await;
    assert_eq!(letters[0].body.as_deref(), Some(big.as_str()));
    assert_eq!(
        attribute(&letters[0], "reason").as_deref(),
        Some("message_rejected")
    );
    assert_eq!(attribute(&letters[0], "stage").as_deref(), Some("forward"));
    assert!(attribute(&letters[0], "error_code").is_some());
}

#[tokio::test]
async fn a_missing_destination_dead_letters_nothing_and_keeps_its_events() {
    let q = Queues::create(1).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    send_bodies(&q.client, &q.source, &[event(5, 1)]).await;
    let mut config = q.config(None);
    config.dlq_url = Some(dlq.clone());
    let app = app(config).await;
    let worker = app.worker().await.unwrap();
    q.client
        .delete_queue()
        .queue_url(&q.dest)
        .send()
        .await
        .unwrap();
    let mut totals = sqs_forwarder::worker::BatchOutcome::default();
    for _ in 0..10 {
        totals += worker.run_once().await.unwrap();
        if totals.received >= 1 {
            break;
        }
    }
    assert_eq!(
        (totals.deferred, totals.dead_lettered, totals.deleted),
        (1, 0, 0),
        "{totals:?}"
    );
    assert!(drain_messages(&q.client, &dlq, 1, Duration::from_secs(2))
        .await
        .is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(depth(&q.client, &q.source).await, 1, "kept in the source");
}

#[tokio::test]
async fn fifo_destination_gets_groups_keeps_order_and_deduplicates_resends() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("t");
    let source = create_fifo_queue(&client, &format!("{name}-src")).await;
    let dest = create_fifo_queue(&client, &format!("{name}-dst")).await;
    // 30 events of two projects, in order, through a FIFO source.
    let bodies: Vec<String> = (0..30).map(|i| event(i, 1 + (i as u64 % 2))).collect();
    send_in_group(&client, &source, &bodies).await;
    let mut config = test_config(&source, &dest, None);
    config.message_group = Some("project-{project_id}".parse().unwrap());
    let app = app(config).await;
    run_until_idle(&app).await;
    // The same events forwarded again (a retry after a lost reply) are deduplicated.
    let events: Vec<_> = bodies
        .iter()
        .map(|b| sqs_forwarder::event::decode(b).unwrap())
        .collect();
    let router = app.router().await.unwrap();
    let first_five: Vec<Routed<'_, '_>> = events[..5].iter().map(Routed::from).collect();
    let resent = router.default_route().unwrap().forward(&first_five).await;
    assert!(resent.iter().all(Outcome::is_accepted), "{resent:?}");

    let got = drain_messages(&client, &dest, 36, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 30, "each event once, the resend deduplicated");
    for project in [1u64, 2] {
        let group = format!("project-{project}");
        let in_group: Vec<String> = got
            .iter()
            .filter(|m| {
                m.attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .map(String::as_str)
                    == Some(group.as_str())
            })
            .map(|m| event_id_of(m.body.as_deref().unwrap()))
            .collect();
        let want: Vec<String> = bodies
            .iter()
            .filter(|b| sqs_forwarder::event::decode(b).unwrap().project_id == project)
            .map(|b| event_id_of(b))
            .collect();
        assert_eq!(in_group, want, "{group}: order kept");
        assert!(got.iter().all(|m| {
            m.attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageDeduplicationId))
                .is_some()
        }));
    }
}

#[tokio::test]
async fn a_fifo_destination_needs_a_message_group_at_start() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("t");
    let source = create_queue(&client, &format!("{name}-src"), 30).await;
    let fifo = create_fifo_queue(&client, &format!("{name}-dst")).await;
    let standard = create_queue(&client, &format!("{name}-std"), 30).await;

    let err = app(test_config(&source, &fifo, None))
        .await
        .worker()
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("FORWARDER_MESSAGE_GROUP_ID: is not set"),
        "{err}"
    );

    // A standard queue may have a group (a fair queue's tenant): accepted.
    let mut config = test_config(&source, &standard, None);
    config.message_group = Some("g".parse().unwrap());
    assert!(app(config).await.worker().await.is_ok());

    // `check` reports it too, as one line, and fails.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
        .arg("check")
        .envs(aws_env())
        .env("FORWARDER_SOURCE_QUEUE_URL", &source)
        .env("FORWARDER_DEST_QUEUE_URL", &fifo)
        .env("FORWARDER_INDEXER", "off")
        .output_within(Duration::from_secs(120));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error: FORWARDER_MESSAGE_GROUP_ID: is not set")),
        "{stderr}"
    );
}

#[tokio::test]
async fn events_over_an_organizations_rate_wait_and_all_arrive() {
    let q = Queues::create(30).await;
    let bodies: Vec<String> = (1..=15).map(|i| event(i, 1)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;
    let statsd = StatsdCapture::start();
    let mut config = q.config(Some(statsd.addr));
    config.rate_limit = Some("5/1s".parse().unwrap());
    let app = app(config).await;
    let worker = app.worker().await.unwrap();
    let started = std::time::Instant::now();
    let mut totals = sqs_forwarder::worker::BatchOutcome::default();
    while totals.forwarded < 15 && started.elapsed() < Duration::from_secs(30) {
        totals += worker.run_once().await.unwrap();
    }
    // A burst of 5, then one every 200 ms: the last of 15 waits about 2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(totals.forwarded, 15, "none dropped");
    assert_eq!(
        drain(&q.client, &q.dest, 16, Duration::from_secs(5))
            .await
            .len(),
        15
    );
    app.metrics().flush(Duration::from_secs(1));
    let lines = statsd.wait_for(Duration::from_secs(3), |l| {
        l.iter().any(|l| l.starts_with("forwarder.rate_limited"))
    });
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("forwarder.rate_limited:1|c")),
        "{lines:#?}"
    );
}
