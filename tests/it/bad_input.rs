//! The bad-input corpus: malformed and hostile message bodies through the real binary,
//! LocalStack and a dead-letter queue. Each invalid body reaches the DLQ unchanged with
//! its reason in the log, in a metric tag and in a message attribute; each hostile but
//! valid body is forwarded unchanged (but for `tag_ids`); nothing panics or stalls.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::helpers::*;

const ID: &str = "0123456789abcdef0123456789abcdef";

/// Invalid bodies and the reason each must be dead-lettered with.
fn invalid() -> Vec<(String, &'static str)> {
    let head = |id: &str| format!(r#""event_id":"{id}","project_id":1,"organization_id":1"#);
    let ok = head(ID);
    let deep = "[".repeat(300) + &"]".repeat(300);
    vec![
        (" ".into(), "invalid_json"),
        ("{".into(), "invalid_json"),
        ("}".into(), "invalid_json"),
        (format!("{{{ok}"), "invalid_json"),
        (format!("{{{ok},"), "invalid_json"),
        (format!("{{{ok}}} trailing"), "invalid_json"),
        (format!("{{{ok}}}{{{ok}}}"), "invalid_json"),
        (format!("\u{feff}{{{ok}}}"), "invalid_json"),
        (format!("{{{ok},\"event_id\":\"{ID}\"}}"), "invalid_json"),
        ("{'event_id': 'single quotes'}".into(), "invalid_json"),
        (format!("{{{ok},\"x\":NaN}}"), "invalid_json"),
        ("null".into(), "not_an_object"),
        ("true".into(), "not_an_object"),
        ("42".into(), "not_an_object"),
        ("\"a string\"".into(), "not_an_object"),
        ("[]".into(), "not_an_object"),
        (format!("[{{{ok}}}]"), "not_an_object"),
        ("{}".into(), "missing_event_id"),
        (
            r#"{"event_id":null,"project_id":1,"organization_id":1}"#.into(),
            "missing_event_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","organization_id":1}}"#),
            "missing_project_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","project_id":1}}"#),
            "missing_organization_id",
        ),
        (format!("{{{}}}", head("")), "invalid_event_id"),
        (format!("{{{}}}", head(&ID[..31])), "invalid_event_id"),
        (
            format!("{{{}}}", head(&format!("{ID}0"))),
            "invalid_event_id",
        ),
        (
            format!("{{{}}}", head("0123456789abcdef0123456789abcdeg")),
            "invalid_event_id",
        ),
        (
            format!("{{{}}}", head("01234567-89ab-cdef-0123-456789abcdef")),
            "invalid_event_id",
        ),
        (
            format!("{{{}}}", head(&"a".repeat(100_000))),
            "invalid_event_id",
        ),
        (
            r#"{"event_id":12345,"project_id":1,"organization_id":1}"#.into(),
            "invalid_event_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","project_id":"1","organization_id":1}}"#),
            "invalid_project_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","project_id":-1,"organization_id":1}}"#),
            "invalid_project_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","project_id":0,"organization_id":1}}"#),
            "invalid_project_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","project_id":1.5,"organization_id":1}}"#),
            "invalid_project_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","project_id":1e400,"organization_id":1}}"#),
            "invalid_project_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","project_id":true,"organization_id":1}}"#),
            "invalid_project_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","project_id":{deep},"organization_id":1}}"#),
            "invalid_project_id",
        ),
        (
            format!(
                r#"{{"event_id":"{ID}","project_id":1,"organization_id":18446744073709551616}}"#
            ),
            "invalid_organization_id",
        ),
        (
            format!(
                r#"{{"event_id":"{ID}","project_id":1,"organization_id":9223372036854775808}}"#
            ),
            "invalid_organization_id",
        ),
        (
            format!(r#"{{"event_id":"{ID}","project_id":1,"organization_id":{{}}}}"#),
            "invalid_organization_id",
        ),
        (format!("{{{ok},\"tags\":\"env:prod\"}}"), "invalid_tags"),
        (format!("{{{ok},\"tags\":7}}"), "invalid_tags"),
        (format!("{{{ok},\"tags\":[[\"a\"]]}}"), "invalid_tags"),
        (
            format!("{{{ok},\"tags\":[[\"a\",\"b\",\"c\"]]}}"),
            "invalid_tags",
        ),
        (format!("{{{ok},\"tags\":[[1,2]]}}"), "invalid_tags"),
        (format!("{{{ok},\"tags\":[[\"a\",null]]}}"), "invalid_tags"),
        (format!("{{{ok},\"tags\":{{\"a\":1}}}}"), "invalid_tags"),
        (
            format!("{{{ok},\"tags\":{{\"a\":{{\"b\":\"c\"}}}}}}"),
            "invalid_tags",
        ),
        (format!("{{{ok},\"tags\":{deep}}}"), "invalid_tags"),
        (
            format!("{{{ok},\"tags\":[[\"\\ud800\",1]]}}"),
            "invalid_tags",
        ),
    ]
}

/// Hostile but valid bodies: forwarded unchanged (`tag_ids` appended).
fn hostile_valid() -> Vec<String> {
    let head = |n: u32| format!(r#""event_id":"{n:032x}","project_id":1,"organization_id":1"#);
    vec![
        format!(
            r#"{{{},"message":"caf\u00e9 ☕ 🚀 \u0000\u001f\"quoted\"","tags":{{"emoji 🚀":"ü"}}}}"#,
            head(1)
        ),
        format!(
            r#"{{{},"extra":{}}}"#,
            head(2),
            "[".repeat(2000) + &"]".repeat(2000)
        ),
        format!(
            r#"{{{},"tags":[["release","{}"]]}}"#,
            head(3),
            "v".repeat(5000)
        ),
        format!(r#"{{{},"tags":[["","empty key"],["k",""]]}}"#, head(4)),
        format!(r#"{{{},"tags":[["k","{}"]]}}"#, head(5), "x".repeat(200)),
        format!(r#"{{{},"tags":[],"x":1e308,"y":-0.0}}"#, head(6)),
        format!(r#"{{{},"tags":{{}},"x":1,"x":2}}"#, head(7)),
        format!("  \n{{{}}}\n  ", head(8)),
        format!(
            r#"{{{},"event_id_extra":"{}","tags":null}}"#,
            head(9),
            "a".repeat(50_000)
        ),
        format!(r#"{{"tags":[["level","error"]],{}}}"#, head(10)),
        // JSON allows a lone surrogate escape; the tag gets no id, the event goes.
        format!(
            r#"{{{},"tags":[["\ud800","lone surrogate"],["k","a\u0000b"]]}}"#,
            head(11)
        ),
    ]
}

#[tokio::test]
async fn every_bad_body_is_dead_lettered_with_its_reason_and_hostile_ones_pass() {
    let q = Queues::create(30).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    let invalid = invalid();
    let valid = hostile_valid();
    assert!(invalid.len() + valid.len() >= 40);
    let bodies: Vec<String> = invalid
        .iter()
        .map(|(b, _)| b.clone())
        .chain(valid.clone())
        .collect();
    send_bodies(&q.client, &q.source, &bodies).await;

    let statsd = StatsdCapture::start();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
        .arg("run")
        .envs(aws_env())
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_DLQ_URL", &dlq)
        .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
        .env("FORWARDER_INDEXER_DATABASE_URL", sqlite_url())
        .env("FORWARDER_EXIT_WHEN_IDLE", "2")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .output_within(Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the worker stalled"
    );

    // The DLQ has every invalid body, byte for byte, with its reason.
    let letters =
        drain_messages_then_more(&q.client, &dlq, invalid.len(), Duration::from_secs(10)).await;
    let got: HashMap<String, String> = letters
        .iter()
        .map(|m| (m.body.clone().unwrap(), attribute(m, "reason").unwrap()))
        .collect();
    assert_eq!(
        letters.len(),
        invalid.len(),
        "each invalid body dead-lettered once"
    );
    let mismatches: Vec<String> = invalid
        .iter()
        .filter(|(body, reason)| got.get(body).map(String::as_str) != Some(*reason))
        .map(|(body, reason)| {
            let shown: String = body.chars().take(60).collect();
            format!("{shown}: want {reason}, got {:?}", got.get(body))
        })
        .collect();
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    for (_, reason) in &invalid {
        assert!(
            log.contains(&format!("\"reason\":\"{reason}\"")),
            "{reason} not logged"
        );
    }

    // The hostile but valid ones arrive unchanged but for the appended tag_ids.
    let arrived = drain_then_more(&q.client, &q.dest, valid.len(), Duration::from_secs(10)).await;
    assert_eq!(arrived.len(), valid.len());
    for body in &valid {
        let trimmed = body.trim_end();
        let prefix = &trimmed[..trimmed.len() - 1];
        assert!(
            arrived
                .iter()
                .any(|a| a.starts_with(prefix) && a[prefix.len()..].starts_with(",\"tag_ids\":")),
            "not forwarded unchanged: {}",
            body.chars().take(80).collect::<String>()
        );
    }
    assert_eq!(depth(&q.client, &q.source).await, 0, "nothing left behind");

    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter()
            .filter(|l| l.starts_with("forwarder.event.invalid:"))
            .count()
            >= invalid.len()
    });
    let mut counted: HashMap<&str, usize> = HashMap::new();
    for (_, reason) in &invalid {
        *counted.entry(reason).or_default() += 1;
    }
    for (reason, n) in counted {
        let line = format!("forwarder.event.invalid:1|c|#reason:{reason}");
        assert_eq!(lines.iter().filter(|l| **l == line).count(), n, "{line}");
    }
}
