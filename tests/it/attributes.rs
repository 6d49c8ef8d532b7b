//! What a source message carries besides its body, across the hop, with the real
//! binary and LocalStack: the X-Ray `AWSTraceHeader` and the W3C trace context always,
//! and the source's own attributes as `FORWARDER_FORWARD_ATTRIBUTES` says, with their
//! types, the forwarder's own winning a clash, and what is past SQS's 10 dropped and
//! counted.

use std::time::Duration;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, MessageSystemAttributeNameForSends,
    MessageSystemAttributeValue,
};

use crate::helpers::*;

const TRACE: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn text(data_type: &str, value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .unwrap()
}

/// Sends `body` with a trace header, the W3C context and `extra` attributes.
async fn send_traced(q: &Queues, body: &str, extra: &[(&str, MessageAttributeValue)]) {
    let mut send = q
        .client
        .send_message()
        .queue_url(&q.source)
        .message_body(body)
        .message_system_attributes(
            MessageSystemAttributeNameForSends::AwsTraceHeader,
            MessageSystemAttributeValue::builder()
                .data_type("String")
                .string_value(TRACE)
                .build()
                .unwrap(),
        )
        .message_attributes("traceparent", text("String", TRACEPARENT))
        .message_attributes("tracestate", text("String", "vendor=value"));
    for (name, value) in extra {
        send = send.message_attributes(*name, value.clone());
    }
    send.send().await.unwrap();
}

fn run(q: &Queues, forward: &str, statsd: &StatsdCapture) {
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_FORWARD_ATTRIBUTES", forward)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
        .env("FORWARDER_INDEXER", "off");
    run_ok(&mut run);
}

fn names(m: &aws_sdk_sqs::types::Message) -> Vec<String> {
    let mut names: Vec<String> = m
        .message_attributes
        .as_ref()
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn trace_header(m: &aws_sdk_sqs::types::Message) -> Option<String> {
    m.attributes
        .as_ref()?
        .get(&MessageSystemAttributeName::AwsTraceHeader)
        .cloned()
}

#[tokio::test]
async fn the_trace_context_always_crosses_the_hop_and_nothing_else_by_default() {
    let q = Queues::create(30).await;
    send_traced(&q, &event(1, 3), &[("tenant", text("String", "acme"))]).await;
    let statsd = StatsdCapture::start();
    run(&q, "none", &statsd);
    let got = drain_messages(&q.client, &q.dest, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(trace_header(&got[0]).as_deref(), Some(TRACE));
    assert_eq!(
        attribute(&got[0], "traceparent").as_deref(),
        Some(TRACEPARENT)
    );
    assert_eq!(
        attribute(&got[0], "tracestate").as_deref(),
        Some("vendor=value")
    );
    assert_eq!(
        names(&got[0]),
        [
            "event_id",
            "organization_id",
            "project_id",
            "traceparent",
            "tracestate"
        ],
        "the source's own attribute stays behind"
    );
}

#[tokio::test]
async fn all_attributes_pass_with_their_types_and_the_overflow_is_counted() {
    let q = Queues::create(30).await;
    let binary = MessageAttributeValue::builder()
        .data_type("Binary")
        .binary_value(Blob::new(vec![0u8, 159, 146, 150]))
        .build()
        .unwrap();
    // Three of the forwarder's + two trace + five here = 10: all fit.
    let fits = vec![
        ("tenant", text("String", "acme")),
        ("ratio", text("Number.float", "1.5")),
        ("blob", binary.clone()),
        ("event_id", text("String", "forged")),
        ("region", text("String", "eu")),
        ("zone", text("String", "a")),
    ];
    send_traced(&q, &event(2, 3), &fits).await;
    let statsd = StatsdCapture::start();
    run(&q, "all", &statsd);
    let got = drain_messages(&q.client, &q.dest, 1, Duration::from_secs(10)).await;
    let m = &got[0];
    assert_eq!(m.message_attributes.as_ref().map(|a| a.len()), Some(10));
    assert_eq!(
        attribute(m, "event_id"),
        Some(format!("{:032x}", 2)),
        "the forwarder's own wins"
    );
    let attrs = m.message_attributes.as_ref().unwrap();
    assert_eq!(attrs["ratio"], text("Number.float", "1.5"));
    assert_eq!(attrs["blob"], binary);
    assert_eq!(trace_header(m).as_deref(), Some(TRACE));
    assert_eq!(
        statsd
            .lines()
            .iter()
            .filter(|l| l.starts_with("forwarder.attributes.dropped"))
            .count(),
        0
    );

    // Two more than fit: dropped, counted, and the event still goes.
    let q = Queues::create(30).await;
    let mut over = fits.clone();
    over.push(("extra1", text("String", "1")));
    over.push(("extra2", text("String", "2")));
    send_traced(&q, &event(3, 3), &over).await;
    let statsd = StatsdCapture::start();
    run(&q, "all", &statsd);
    let got = drain_messages(&q.client, &q.dest, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].message_attributes.as_ref().map(|a| a.len()),
        Some(10)
    );
    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter()
            .any(|l| l.starts_with("forwarder.attributes.dropped"))
    });
    assert!(
        lines
            .iter()
            .any(|l| l == "forwarder.attributes.dropped:2|c"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_list_of_names_passes_only_those() {
    let q = Queues::create(30).await;
    let extra = [
        ("tenant", text("String", "acme")),
        ("secret", text("String", "do not pass")),
    ];
    send_traced(&q, &event(4, 3), &extra).await;
    let statsd = StatsdCapture::start();
    run(&q, "tenant, missing", &statsd);
    let got = drain_messages(&q.client, &q.dest, 1, Duration::from_secs(10)).await;
    assert_eq!(
        names(&got[0]),
        [
            "event_id",
            "organization_id",
            "project_id",
            "tenant",
            "traceparent",
            "tracestate"
        ]
    );
    assert_eq!(attribute(&got[0], "tenant").as_deref(), Some("acme"));
}
