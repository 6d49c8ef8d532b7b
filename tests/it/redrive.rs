//! `sqs-forwarder redrive` with the real binary on LocalStack: dead letters for a cause
//! an operator can fix (events over a lowered `FORWARDER_MAX_MESSAGE_BYTES`, no
//! bucket), a dry run that changes nothing, the fix, a redrive by reason that delivers
//! each event exactly once, and one that fails again and stays with its new attributes.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::*;

const LIMIT: usize = 4096;

fn big_event(id: u128) -> String {
    format!(
        r#"{{"event_id":"{id:032x}","project_id":3,"organization_id":7,"extra":"{}"}}"#,
        "x".repeat(2 * LIMIT)
    )
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every visible message of the DLQ, by `reason`; each is handed back at once.
async fn dead_letters(q: &Queues, dlq: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let out = q
        .client
        .receive_message()
        .queue_url(dlq)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .visibility_timeout(0)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    out.messages.unwrap_or_default()
}

#[tokio::test]
async fn dead_letters_go_back_once_the_cause_is_fixed_and_exactly_once() {
    let q = Queues::create(30).await;
    let dlq = create_queue(&q.client, &unique("dlq"), 30).await;
    let small: Vec<String> = (1..=3).map(|i| event(i, 3)).collect();
    let big: Vec<String> = (11..=12).map(big_event).collect();
    let mut bodies = small.clone();
    bodies.extend(big.iter().cloned());
    bodies.push("not json".to_string());
    send_bodies(&q.client, &q.source, &bodies).await;

    // 1. The cause: a limit lowered below the big events, and no bucket.
    let data = std::env::temp_dir().join(unique("data"));
    let worker = |cmd: &mut std::process::Command| {
        cmd.env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_DLQ_URL", &dlq)
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("FORWARDER_DATA_DIR", &data);
    };
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    worker(&mut run);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_MAX_MESSAGE_BYTES", LIMIT.to_string());
    let out = output_of(&mut run, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(depth(&q.client, &dlq).await, 3, "2 oversized, 1 invalid");

    // 2. A dry run counts by reason and stage, needs no destination, changes nothing.
    let mut dry = binary(&["redrive", "--dry-run"]);
    dry.env("FORWARDER_DLQ_URL", &dlq);
    let out = output_of(&mut dry, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("reason=oversized stage=forward: 2\n"),
        "{text}"
    );
    assert!(
        text.contains("reason=invalid_json stage=decode: 1\n"),
        "{text}"
    );
    assert!(
        text.contains("dry run: 3 dead letters would be redriven"),
        "{text}"
    );
    assert_eq!(
        dead_letters(&q, &dlq).await.len(),
        3,
        "all visible again at once"
    );

    // 3. The fix (the default limit), then a redrive of that reason only.
    let mut fixed = binary(&["redrive", "--reason", "oversized"]);
    worker(&mut fixed);
    let out = output_of(&mut fixed, Duration::from_secs(120));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("reason=oversized stage=forward: 2 redriven, 0 dead-lettered again, 0 left"),
        "{text}"
    );
    assert!(text.contains("1 not matching"), "{text}");

    // Every valid event arrived exactly once; the DLQ holds only what still cannot go.
    let arrived = drain(&q.client, &q.dest, 6, Duration::from_secs(10)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for body in &arrived {
        *counts.entry(event_id_of(body)).or_default() += 1;
    }
    let want: HashMap<String, usize> = small
        .iter()
        .chain(&big)
        .map(|b| (event_id_of(b), 1))
        .collect();
    assert_eq!(counts, want);
    let arrived_big = arrived
        .iter()
        .find(|b| event_id_of(b) == format!("{:032x}", 11))
        .unwrap();
    assert!(
        !arrived_big.contains("\"reason\""),
        "the event itself, not the dead letter"
    );
    let left = dead_letters(&q, &dlq).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body.as_deref(), Some("not json"));
    let original_source_id = attribute(&left[0], "source_message_id");
    assert!(original_source_id.is_some());

    // 4. What fails again stays, with its attributes renewed; the exit says so.
    let mut again = binary(&["redrive", "--reason", "invalid_json"]);
    worker(&mut again);
    let out = output_of(&mut again, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "reason=invalid_json stage=decode: 0 redriven, 1 dead-lettered again, 0 left"
        ),
        "{text}"
    );
    let left = dead_letters(&q, &dlq).await;
    assert_eq!(left.len(), 1, "replaced, not doubled");
    assert_ne!(left[0].message_id, None);
    assert_eq!(
        attribute(&left[0], "reason").as_deref(),
        Some("invalid_json")
    );
    assert_eq!(attribute(&left[0], "source_message_id"), original_source_id);
    assert_eq!(depth(&q.client, &q.dest).await, 0, "nothing more arrived");
}

#[tokio::test]
async fn redrive_without_a_dead_letter_queue_names_the_variable() {
    let out = output_of(
        &mut binary(&["redrive", "--dry-run"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: FORWARDER_DLQ_URL: is not set"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_fifo_dead_letter_queue_is_refused_at_start() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let dlq = create_fifo_queue(&client, &unique("dlq")).await;
    let mut dry = binary(&["redrive", "--dry-run"]);
    dry.env("FORWARDER_DLQ_URL", &dlq);
    let out = output_of(&mut dry, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .lines()
            .any(|l| l.starts_with("error: FORWARDER_DLQ_URL: is a FIFO queue")),
        "{}",
        stderr(&out)
    );
}
