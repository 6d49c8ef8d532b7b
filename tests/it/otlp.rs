//! Traces over OTLP/HTTP with the real binary on LocalStack: an OTLP receiver in the
//! test decodes the protobuf the exporter posts. The `batch` and `route` spans arrive,
//! the batch continues the source message's `traceparent`, the service name is
//! `OTEL_SERVICE_NAME`'s, and `OTEL_TRACES_SAMPLER=always_off` sends nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use crate::helpers::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// One span as received: its resource's service name, name, trace id, span id, parent.
#[derive(Debug, Clone)]
pub struct Got {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on a local port: each `POST /v1/traces` decoded, its spans
/// kept, answered 200 with an empty protobuf reply.
pub async fn receiver() -> (String, Arc<Mutex<Vec<Got>>>, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (keep, seen) = (spans.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (keep, seen) = (keep.clone(), seen.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                while let Some(message) = read_http_message(&mut stream).await {
                    let end = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&message[..end]).to_lowercase();
                    seen.lock().unwrap().push(head.clone());
                    if let Ok(request) = ExportTraceServiceRequest::decode(&message[end..]) {
                        for rs in request.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .and_then(|a| a.value.as_ref())
                                .and_then(|v| match &v.value {
                                    Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    keep.lock().unwrap().push(Got {
                                        service: service.clone(),
                                        name: span.name,
                                        trace_id: hex(&span.trace_id),
                                        span_id: hex(&span.span_id),
                                        parent: hex(&span.parent_span_id),
                                    });
                                }
                            }
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, spans, heads)
}

/// Three events in a queue, the first two with a W3C trace context.
async fn traced_queue(q: &Queues) {
    let entries = (1..=3u128)
        .map(|i| {
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(event(i, 3));
            if i < 3 {
                let span = if i == 1 {
                    PARENT.to_string()
                } else {
                    format!("{:016x}", i)
                };
                e = e.message_attributes(
                    "traceparent",
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(format!("00-{TRACE_ID}-{span}-01"))
                        .build()
                        .unwrap(),
                );
            }
            e.build().unwrap()
        })
        .collect();
    q.client
        .send_message_batch()
        .queue_url(&q.source)
        .set_entries(Some(entries))
        .send()
        .await
        .unwrap();
}

fn run(q: &Queues, endpoint: &str, extra: &[(&str, &str)]) -> std::process::Output {
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_WORKERS", "1")
        .env("FORWARDER_BATCH_WINDOW", "0")
        .env("FORWARDER_INDEXER", "off")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}"))
        .envs(extra.iter().copied());
    run_ok(&mut run)
}

#[tokio::test]
async fn batch_and_route_spans_go_over_otlp_and_continue_the_source_trace() {
    let (addr, spans, heads) = receiver().await;
    let q = Queues::create(30).await;
    traced_queue(&q).await;
    let mut check = binary(&["check"]);
    check
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_INDEXER", "off")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
        .env("OTEL_SERVICE_NAME", "forwarder-under-test");
    let stdout = String::from_utf8_lossy(&run_ok(&mut check).stdout).to_string();
    assert!(
        stdout.contains(&format!(
            "ok: traces: OTLP/HTTP to http://{addr}/v1/traces, service forwarder-under-test, sampler parentbased_always_on"
        )),
        "{stdout}"
    );
    run(&q, &addr, &[("OTEL_SERVICE_NAME", "forwarder-under-test")]);
    assert_eq!(
        drain(&q.client, &q.dest, 3, Duration::from_secs(5))
            .await
            .len(),
        3
    );

    let got = spans.lock().unwrap().clone();
    let head = heads.lock().unwrap().first().cloned().unwrap_or_default();
    assert!(head.starts_with("post /v1/traces"), "{head}");
    assert!(
        head.contains("content-type: application/x-protobuf"),
        "{head}"
    );
    let batch = got
        .iter()
        .find(|s| s.name == "batch")
        .unwrap_or_else(|| panic!("no batch span: {got:#?}"));
    assert_eq!(
        batch.trace_id, TRACE_ID,
        "the source's trace goes on: {got:#?}"
    );
    assert_eq!(batch.parent, PARENT, "its parent is the producer's span");
    assert_eq!(batch.service, "forwarder-under-test");
    let route = got
        .iter()
        .find(|s| s.name == "route")
        .unwrap_or_else(|| panic!("no route span: {got:#?}"));
    assert_eq!(route.trace_id, TRACE_ID);
    assert_eq!(
        route.parent, batch.span_id,
        "the route span is the batch's child"
    );
    assert!(
        got.iter().all(|s| s.name == "batch" || s.name == "route"),
        "only the worker's own spans: {got:#?}"
    );

    // The sampler is honoured: always_off exports nothing.
    let (off, none, _) = receiver().await;
    let q = Queues::create(30).await;
    traced_queue(&q).await;
    run(&q, &off, &[("OTEL_TRACES_SAMPLER", "always_off")]);
    assert!(
        none.lock().unwrap().is_empty(),
        "{:?}",
        none.lock().unwrap()
    );
}

#[tokio::test]
async fn a_bad_otel_setting_fails_at_start_naming_it() {
    let q = Queues::create(30).await;
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
    ] {
        for command in ["run", "check"] {
            let mut cmd = binary(&[command]);
            cmd.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
                .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
                .env(var, value);
            let out = output_of(&mut cmd, Duration::from_secs(30));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} {var}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with(&format!("error: {var}: ")), "{stderr}");
        }
    }
}
