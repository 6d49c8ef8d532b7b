//! Lambda mode end to end: the real binary against the Lambda Runtime API, served by
//! this test on 127.0.0.1 (next invocation, invocation response, invocation error, init
//! error), with SQS event batches whose events go to LocalStack.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};

/// What the function posted back to the Runtime API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Posted {
    Response { request_id: String, body: Value },
    Error { request_id: String, body: Value },
    InitError { body: Value },
}

/// A Lambda Runtime API: hands out the invocations it is given, in order, and records
/// what the function posts. With nothing to hand out, `next` waits, as in Lambda.
pub(crate) struct RuntimeApi {
    addr: String,
    invoke: mpsc::UnboundedSender<(String, String, u64)>,
    posted: mpsc::UnboundedReceiver<Posted>,
}

impl RuntimeApi {
    pub(crate) async fn start() -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (invoke, pending) = mpsc::unbounded_channel::<(String, String, u64)>();
        let pending = Arc::new(Mutex::new(pending));
        let (post, posted) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (pending, post) = (pending.clone(), post.clone());
                tokio::spawn(async move {
                    // Keep-alive: one request after another on the connection.
                    while let Some(request) = read_http_message(&mut conn).await {
                        let text = String::from_utf8_lossy(&request).into_owned();
                        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                        let line = head.lines().next().unwrap_or("").to_string();
                        let path = line.split(' ').nth(1).unwrap_or("").to_string();
                        let parsed = || serde_json::from_str(body).unwrap_or(Value::Null);
                        let reply = if path == "/2018-06-01/runtime/invocation/next" {
                            let Some((id, payload, budget_ms)) = pending.lock().await.recv().await
                            else {
                                return;
                            };
                            let deadline = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_millis()
                                + u128::from(budget_ms);
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                 lambda-runtime-aws-request-id: {id}\r\n\
                                 lambda-runtime-deadline-ms: {deadline}\r\n\
                                 lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:000000000000:function:forwarder\r\n\
                                 lambda-runtime-trace-id: Root=1-00000000-000000000000000000000000\r\n\
                                 content-length: {}\r\n\r\n{payload}",
                                payload.len()
                            )
                        } else {
                            let posted = if path == "/2018-06-01/runtime/init/error" {
                                Posted::InitError { body: parsed() }
                            } else if let Some(rest) =
                                path.strip_prefix("/2018-06-01/runtime/invocation/")
                            {
                                let (id, kind) = rest.split_once('/').unwrap_or((rest, ""));
                                let request_id = id.to_string();
                                match kind {
                                    "response" => Posted::Response {
                                        request_id,
                                        body: parsed(),
                                    },
                                    "error" => Posted::Error {
                                        request_id,
                                        body: parsed(),
                                    },
                                    other => panic!("unexpected runtime call {other}"),
                                }
                            } else {
                                panic!("unexpected runtime call {line}")
                            };
                            let _ = post.send(posted);
                            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n{\"status\":\"OK\"}".to_string()
                        };
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RuntimeApi {
            addr,
            invoke,
            posted,
        }
    }

    /// One invocation (with a minute to run); what the function posted for it.
    pub(crate) async fn invoke(&mut self, request_id: &str, payload: Value) -> Posted {
        self.invoke_within(request_id, payload, Duration::from_secs(60))
            .await
    }

    /// One invocation whose deadline is `budget` away; what the function posted.
    async fn invoke_within(
        &mut self,
        request_id: &str,
        payload: Value,
        budget: Duration,
    ) -> Posted {
        self.invoke
            .send((
                request_id.to_string(),
                payload.to_string(),
                budget.as_millis() as u64,
            ))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.posted.recv())
            .await
            .expect("the function answered within 60 s")
            .expect("runtime api running")
    }
}

/// The binary in Lambda mode: started as Lambda starts `bootstrap`, with no arguments.
pub(crate) fn function(api: &RuntimeApi, env: &[(&str, String)]) -> Spawned {
    spawn_binary(
        Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
            .envs(aws_env())
            .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
            .env("AWS_LAMBDA_FUNCTION_NAME", "forwarder")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_RETRY_MAX_ELAPSED", "2s")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
    )
}

/// An SQS event-source record as Lambda delivers it.
pub(crate) fn record(id: &str, body: &str, group: Option<&str>) -> Value {
    let mut attributes = json!({
        "ApproximateReceiveCount": "1",
        "SentTimestamp": "1700000000000",
        "SenderId": "AIDAIENQZJOLO23YVJ4VO",
        "ApproximateFirstReceiveTimestamp": "1700000000001"
    });
    if let Some(group) = group {
        attributes["MessageGroupId"] = json!(group);
        attributes["SequenceNumber"] = json!("18849496460467696128");
    }
    json!({
        "messageId": id,
        "receiptHandle": format!("handle-{id}"),
        "body": body,
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": "0",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:source",
        "awsRegion": "us-east-1"
    })
}

pub(crate) fn batch(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

/// The message ids in a partial batch response.
pub(crate) fn failures(posted: &Posted) -> HashSet<String> {
    match posted {
        Posted::Response { body, .. } => body["batchItemFailures"]
            .as_array()
            .unwrap_or_else(|| panic!("no batchItemFailures in {body}"))
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
            .collect(),
        other => panic!("expected a response, got {other:?}"),
    }
}

fn set(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_get_partial_responses_and_events_arrive() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let dest = create_queue(&client, &unique("lambda-dest"), 30).await;
    let statsd = StatsdCapture::start();
    let mut api = RuntimeApi::start().await;
    let mut child = function(
        &api,
        &[
            ("FORWARDER_DEST_QUEUE_URL", dest.clone()),
            ("FORWARDER_STATSD_ADDR", statsd.addr.to_string()),
        ],
    );

    // Valid events and a bad body: only the bad one is reported (no DLQ here).
    let posted = api
        .invoke(
            "req-1",
            batch(vec![
                record("m1", &event(1, 1), None),
                record("m2", &event(2, 1), None),
                record("m3", "not json", None),
            ]),
        )
        .await;
    assert!(matches!(&posted, Posted::Response { request_id, .. } if request_id == "req-1"));
    assert_eq!(failures(&posted), set(&["m3"]));
    // Metrics leave before the invocation returns (the periodic flush is every second).
    let lines = statsd.wait_for(Duration::from_millis(300), |l| {
        l.iter().filter(|l| *l == HTTP_OK).count() >= 2
    });
    assert_eq!(
        lines.iter().filter(|l| *l == HTTP_OK).count(),
        2,
        "{lines:#?}"
    );

    // FIFO: a failure in group a holds back the rest of group a, not group b.
    let posted = api
        .invoke(
            "req-2",
            batch(vec![
                record("a1", &event(3, 1), Some("a")),
                record("a2", "{\"truncated\":", Some("a")),
                record("b1", &event(4, 1), Some("b")),
                record("a3", &event(5, 1), Some("a")),
            ]),
        )
        .await;
    assert_eq!(failures(&posted), set(&["a2", "a3"]));
    // What arrived: every valid event of both batches but a3, held back behind its
    // group's failure and never sent: Lambda's retry brings it back after a2.
    let arrived = drain(&client, &dest, 5, Duration::from_secs(10)).await;
    let ids: HashSet<String> = arrived.iter().map(|b| event_id_of(b)).collect();
    let want: HashSet<String> = [1u128, 2, 3, 4]
        .iter()
        .map(|i| format!("{i:032x}"))
        .collect();
    assert_eq!(ids, want);
    assert!(arrived.contains(&event(1, 1)), "forwarded byte for byte");

    // Not an SQS event at all: an invocation error, and the function goes on.
    let posted = api.invoke("req-3", json!({"Records": 5})).await;
    assert!(
        matches!(&posted, Posted::Error { request_id, .. } if request_id == "req-3"),
        "{posted:?}"
    );
    // A record without a messageId cannot be reported alone: the batch fails.
    let posted = api
        .invoke("req-4", json!({"Records": [{"body": event(9, 1)}]}))
        .await;
    assert!(
        matches!(&posted, Posted::Error { ref body, .. } if body["errorType"] == "InvalidBatch"),
        "{posted:?}"
    );

    // The destination goes away: its events are reported for a retry.
    client.delete_queue().queue_url(&dest).send().await.unwrap();
    let posted = api
        .invoke(
            "req-5",
            batch(vec![
                record("d1", &event(6, 1), None),
                record("d2", &event(7, 1), None),
            ]),
        )
        .await;
    assert_eq!(failures(&posted), set(&["d1", "d2"]));
    assert!(!child.has_exited(), "the function stopped");
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrives_and_what_is_dead_lettered() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let dest = create_queue(&client, &unique("lambda-dest"), 30).await;
    let dlq = create_queue(&client, &unique("lambda-dlq"), 30).await;
    let mut api = RuntimeApi::start().await;
    let child = function(
        &api,
        &[
            ("FORWARDER_DEST_QUEUE_URL", dest.clone()),
            ("FORWARDER_DLQ_URL", dlq.clone()),
        ],
    );
    let posted = api
        .invoke(
            "req-1",
            batch(vec![
                record("m1", &event(11, 1), None),
                record("m2", "[1,2,3]", None),
                record("m3", &event(12, 1), None),
            ]),
        )
        .await;
    // Dead-lettered is settled: nothing for Lambda to retry.
    assert_eq!(failures(&posted), set(&[]));
    let arrived = drain(&client, &dest, 2, Duration::from_secs(10)).await;
    let ids: HashSet<String> = arrived.iter().map(|b| event_id_of(b)).collect();
    assert_eq!(
        ids,
        set(&[&format!("{:032x}", 11), &format!("{:032x}", 12)])
    );
    assert_eq!(
        arrived[0],
        event(11, 1).to_string(),
        "forwarded byte for byte"
    );
    let dead = drain_messages(&client, &dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some("[1,2,3]"));
    assert_eq!(
        attribute(&dead[0], "reason").as_deref(),
        Some("not_an_object")
    );
    assert_eq!(
        attribute(&dead[0], "source_message_id").as_deref(),
        Some("m2")
    );
    drop(child);
}

/// A Lambda whose queue is subscribed to an SNS topic (raw delivery off) gets SNS
/// envelopes: the event inside is forwarded as published, with the envelope's message
/// attributes; the partial batch response counts it settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_envelopes_in_a_batch_are_opened() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let dest = create_queue(&client, &unique("lambda-dest"), 30).await;
    let mut api = RuntimeApi::start().await;
    let child = function(
        &api,
        &[
            ("FORWARDER_DEST_QUEUE_URL", dest.clone()),
            ("FORWARDER_FORWARD_ATTRIBUTES", "all".to_string()),
        ],
    );
    let published = event(31, 1);
    let envelope = json!({
        "Type": "Notification",
        "MessageId": "5d1c…",
        "TopicArn": "arn:aws:sns:us-east-1:000000000000:events",
        "Message": published,
        "Timestamp": "2026-12-04T10:00:00.000Z",
        "SignatureVersion": "1",
        "MessageAttributes": {"tenant": {"Type": "String", "Value": "acme"}}
    });
    let posted = api
        .invoke(
            "req-sns",
            batch(vec![record("s1", &envelope.to_string(), None)]),
        )
        .await;
    assert_eq!(failures(&posted), set(&[]));
    let arrived = drain_messages(&client, &dest, 1, Duration::from_secs(10)).await;
    assert_eq!(arrived.len(), 1);
    assert_eq!(arrived[0].body(), Some(published.as_str()));
    assert_eq!(attribute(&arrived[0], "tenant").as_deref(), Some("acme"));
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_failure_is_reported_as_an_init_error() {
    let mut api = RuntimeApi::start().await;
    let missing = format!(
        "{}/queue/us-east-1/000000000000/{}",
        endpoint(),
        unique("missing")
    );
    let child = function(&api, &[("FORWARDER_DEST_QUEUE_URL", missing)]);
    let posted = tokio::time::timeout(Duration::from_secs(60), api.posted.recv())
        .await
        .unwrap()
        .unwrap();
    let Posted::InitError { body } = posted else {
        panic!("expected an init error, got {posted:?}");
    };
    assert_eq!(body["errorType"], "Runtime.InitError");
    let message = body["errorMessage"].as_str().unwrap();
    assert!(message.contains("FORWARDER_DEST_QUEUE_URL"), "{message}");
    let out = child.finish(Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn lambda_outside_lambda_names_the_missing_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
        .arg("lambda")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env(
            "FORWARDER_DEST_QUEUE_URL",
            "http://127.0.0.1:4566/queue/us-east-1/000000000000/x",
        )
        .output_within(Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: AWS_LAMBDA_RUNTIME_API: is not set"),
        "{stderr}"
    );
}

/// Case 5 of failure isolation: the destination answers slowly and with errors, and the
/// invocation has 6 s. Retries would go on for a minute; the function answers before its
/// deadline instead, with the unsent message in `batchItemFailures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_answers_before_its_deadline() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let dest = create_queue(&client, &unique("lambda-dest"), 30).await;
    let proxy = intercept_proxy(|action, _| match action {
        "SendMessageBatch" => Intercept::Reply {
            delay: Duration::from_millis(700),
            response: sqs_error("503 Service Unavailable", "ServiceUnavailable"),
        },
        _ => Intercept::Pass,
    })
    .await;
    let mut api = RuntimeApi::start().await;
    let child = function(
        &api,
        &[
            ("FORWARDER_DEST_QUEUE_URL", dest.clone()),
            ("AWS_ENDPOINT_URL", proxy.clone()),
            ("FORWARDER_RETRY_MAX_ELAPSED", "60s".into()),
            ("FORWARDER_RETRY_MAX_INTERVAL", "1s".into()),
        ],
    );
    let started = std::time::Instant::now();
    let posted = api
        .invoke_within(
            "slow-1",
            batch(vec![record("m1", &event(1, 1), None)]),
            Duration::from_secs(6),
        )
        .await;
    let took = started.elapsed();
    println!("deadline 6 s: answered after {took:?}");
    assert_eq!(failures(&posted), set(&["m1"]));
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    assert!(took >= Duration::from_secs(1), "gave up early: {took:?}");
    drop(child);
}

/// Inside Lambda, with no backend set, metrics are EMF lines on stdout (CloudWatch turns
/// them into metrics with no agent), written before each invocation answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_lambda_metrics_default_to_emf_on_stdout() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let dest = create_queue(&client, &unique("lambda-emf"), 30).await;
    let mut api = RuntimeApi::start().await;
    let child = function(&api, &[("FORWARDER_DEST_QUEUE_URL", dest.clone())]);
    let posted = api
        .invoke(
            "req-emf",
            batch(vec![
                record("e1", &event(1, 1), None),
                record("e2", &event(2, 1), None),
                record("e3", &event(3, 1), None),
            ]),
        )
        .await;
    assert!(failures(&posted).is_empty(), "{posted:?}");
    child.terminate();
    let out = child.finish(Duration::from_secs(30)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok: u64 = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "sqs-forwarder")
        .filter(|l| l["success"] == "true")
        .filter_map(|l| l["data-forwarding.http_response"].as_u64())
        .sum();
    assert_eq!(ok, 3, "{stdout}");
}

/// Traces over OTLP in Lambda: each invocation's spans are exported before it answers,
/// as the process may be frozen right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_lambda_each_invocation_flushes_its_spans() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let dest = create_queue(&client, &unique("lambda-otlp"), 30).await;
    let (collector, spans, _) = crate::otlp::receiver().await;
    let mut api = RuntimeApi::start().await;
    let child = function(
        &api,
        &[
            ("FORWARDER_DEST_QUEUE_URL", dest.clone()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ],
    );
    let posted = api
        .invoke("req-otlp", batch(vec![record("o1", &event(1, 1), None)]))
        .await;
    assert!(failures(&posted).is_empty(), "{posted:?}");
    // Answered: its spans are already out, with the process still running.
    let got = spans.lock().unwrap().clone();
    assert!(got.iter().any(|s| s.name == "batch"), "{got:#?}");
    assert!(got.iter().any(|s| s.name == "route"), "{got:#?}");
    assert!(got.iter().all(|s| s.service == "sqs-forwarder"), "{got:#?}");
    child.terminate();
    let _ = child.finish(Duration::from_secs(30)).await;
}
