//! A bench-only SQS stand-in: a small in-memory HTTP server speaking the SQS JSON protocol
//! (awsJson1.0) for the calls the forwarder and the bare loop make, each answered
//! `BENCH_STANDIN_LATENCY_MS` late (default 3 ms, as SQS in-region and LocalStack
//! answer): one that answered at once would hide what each parked task costs.
//! LocalStack stays the test double for correctness; this only measures the forwarder's
//! own ceiling, without LocalStack's CPU on the same cores.
//!
//! Calls: CreateQueue, DeleteQueue, GetQueueUrl, GetQueueAttributes, ReceiveMessage
//! (long polls wait for a message up to their wait time), SendMessageBatch, SendMessage,
//! DeleteMessageBatch, ChangeMessageVisibilityBatch. Received messages are in flight
//! until deleted; visibility timeouts are not enforced (the bench deletes everything).
//! A queue whose name ends in `-dst` only counts what it is sent, so a large run does not
//! hold every body.
//!
//! It runs in its own process (`serve`), so that the bench's CPU figures are the
//! client's alone.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use serde_json::{json, Value};

#[derive(Default)]
struct Queue {
    /// Visible messages: (id, body).
    visible: VecDeque<(String, String)>,
    /// Received, not yet deleted: receipt → id.
    in_flight: HashMap<String, String>,
    /// Messages sent to a counting queue.
    counted: u64,
    /// Whether bodies are kept (`false` for `-dst` queues).
    keeps: bool,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    next_id: u64,
}

struct StandIn {
    state: Mutex<State>,
    arrived: tokio::sync::Notify,
    base: String,
    /// How late each call is answered.
    latency: Duration,
}

/// Serves on 127.0.0.1 (an ephemeral port), prints `listening http://ADDR` on stdout,
/// and runs until killed.
pub fn serve() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let base = format!("http://{addr}");
        println!("listening {base}");
        let latency = std::env::var("BENCH_STANDIN_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_millis(3), Duration::from_millis);
        let standin = Arc::new(StandIn {
            state: Mutex::new(State::default()),
            arrived: tokio::sync::Notify::new(),
            base,
            latency,
        });
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let standin = standin.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let standin = standin.clone();
                    async move { Ok::<_, Infallible>(standin.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Starts the stand-in as a child process of this executable (which must call
/// [`serve`] when `BENCH_STANDIN_SERVE` is set). Returns the child and its endpoint.
pub fn spawn() -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("BENCH_STANDIN_SERVE", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("stand-in");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("stand-in address");
    let endpoint = line
        .trim()
        .strip_prefix("listening ")
        .expect("stand-in address")
        .to_string();
    (child, endpoint)
}

fn md5_hex(body: &str) -> String {
    Md5::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn error(code: &str, message: &str) -> (u16, Value) {
    (
        400,
        json!({"__type": format!("com.amazonaws.sqs#{code}"), "message": message}),
    )
}

impl StandIn {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let action = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit('.').next())
            .unwrap_or_default()
            .to_string();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (status, output) = self.call(&action, &input).await;
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amzn-requestid", "standin")
            .body(Full::new(Bytes::from(output.to_string())))
            .unwrap_or_default()
    }

    fn queue_name(url: &Value) -> String {
        url.as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    async fn call(&self, action: &str, input: &Value) -> (u16, Value) {
        if action == "ReceiveMessage" {
            return self.receive(input).await;
        }
        let Ok(mut state) = self.state.lock() else {
            return error("InternalError", "poisoned");
        };
        let name = Self::queue_name(&input["QueueUrl"]);
        match action {
            "CreateQueue" => {
                let name = input["QueueName"].as_str().unwrap_or_default().to_string();
                state.queues.entry(name.clone()).or_insert_with(|| Queue {
                    keeps: !name.ends_with("-dst"),
                    ..Queue::default()
                });
                (
                    200,
                    json!({"QueueUrl": format!("{}/000000000000/{name}", self.base)}),
                )
            }
            "GetQueueUrl" => {
                let name = input["QueueName"].as_str().unwrap_or_default();
                if state.queues.contains_key(name) {
                    (
                        200,
                        json!({"QueueUrl": format!("{}/000000000000/{name}", self.base)}),
                    )
                } else {
                    error("QueueDoesNotExist", "no such queue")
                }
            }
            "DeleteQueue" => {
                state.queues.remove(&name);
                (200, json!({}))
            }
            "GetQueueAttributes" => match state.queues.get(&name) {
                Some(q) => (
                    200,
                    json!({"Attributes": {
                        "QueueArn": format!("arn:aws:sqs:us-east-1:000000000000:{name}"),
                        "VisibilityTimeout": "60",
                        // SQS's default (and largest) since August 2025, or
                        // BENCH_QUEUE_MAX_MESSAGE (a queue made before: 262144).
                        "MaximumMessageSize": std::env::var("BENCH_QUEUE_MAX_MESSAGE")
                            .unwrap_or_else(|_| "1048576".into()),
                        "ApproximateNumberOfMessages": q.visible.len().to_string(),
                        "ApproximateNumberOfMessagesNotVisible": q.in_flight.len().to_string(),
                    }}),
                ),
                None => error("QueueDoesNotExist", "no such queue"),
            },
            "SendMessageBatch" | "SendMessage" => {
                let answer = send(&mut state, &name, action, input);
                drop(state);
                self.arrived.notify_waiters();
                answer
            }
            "DeleteMessageBatch" | "ChangeMessageVisibilityBatch" => {
                settle(&mut state, &name, action, input)
            }
            _ => error("InvalidAction", action),
        }
    }

    /// Up to `MaxNumberOfMessages`, waiting up to `WaitTimeSeconds` for the first.
    async fn receive(&self, input: &Value) -> (u16, Value) {
        let name = Self::queue_name(&input["QueueUrl"]);
        let max = input["MaxNumberOfMessages"]
            .as_u64()
            .unwrap_or(1)
            .clamp(1, 10) as usize;
        let wait = Duration::from_secs(input["WaitTimeSeconds"].as_u64().unwrap_or(0).min(20));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.arrived.notified();
            {
                let Ok(mut state) = self.state.lock() else {
                    return error("InternalError", "poisoned");
                };
                let Some(q) = state.queues.get_mut(&name) else {
                    return error("QueueDoesNotExist", "no such queue");
                };
                if !q.visible.is_empty() {
                    let mut messages = Vec::with_capacity(max);
                    while messages.len() < max {
                        let Some((id, body)) = q.visible.pop_front() else {
                            break;
                        };
                        let receipt = format!("r-{id}");
                        messages.push(json!({
                            "MessageId": id,
                            "ReceiptHandle": receipt,
                            "MD5OfBody": md5_hex(&body),
                            "Body": &body,
                            "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1700000000000"},
                        }));
                        q.in_flight.insert(receipt, id);
                    }
                    return (200, json!({"Messages": messages}));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return (200, json!({}));
            }
        }
    }
}

/// SendMessageBatch (or SendMessage): each entry queued, or counted on a `-dst` queue.
fn send(state: &mut State, name: &str, action: &str, input: &Value) -> (u16, Value) {
    let entries: Vec<Value> = match action {
        "SendMessage" => vec![json!({"Id": "0", "MessageBody": input["MessageBody"]})],
        _ => input["Entries"].as_array().cloned().unwrap_or_default(),
    };
    let Some(q) = state.queues.get_mut(name) else {
        return error("QueueDoesNotExist", "no such queue");
    };
    let mut ok = Vec::with_capacity(entries.len());
    for e in &entries {
        let body = e["MessageBody"].as_str().unwrap_or_default();
        state.next_id += 1;
        let id = format!("{:032x}", state.next_id);
        ok.push(json!({"Id": e["Id"], "MessageId": id, "MD5OfMessageBody": md5_hex(body)}));
        if q.keeps {
            q.visible.push_back((id, body.to_string()));
        } else {
            q.counted += 1;
        }
    }
    if action == "SendMessage" {
        let first = ok.into_iter().next().unwrap_or_default();
        (
            200,
            json!({"MessageId": first["MessageId"], "MD5OfMessageBody": first["MD5OfMessageBody"]}),
        )
    } else {
        (200, json!({"Successful": ok, "Failed": []}))
    }
}

/// DeleteMessageBatch (the messages leave) or ChangeMessageVisibilityBatch (accepted).
fn settle(state: &mut State, name: &str, action: &str, input: &Value) -> (u16, Value) {
    let Some(q) = state.queues.get_mut(name) else {
        return error("QueueDoesNotExist", "no such queue");
    };
    let entries = input["Entries"].as_array().cloned().unwrap_or_default();
    let mut ok = Vec::with_capacity(entries.len());
    for e in &entries {
        if action == "DeleteMessageBatch" {
            q.in_flight
                .remove(e["ReceiptHandle"].as_str().unwrap_or_default());
        }
        ok.push(json!({"Id": e["Id"]}));
    }
    (200, json!({"Successful": ok, "Failed": []}))
}
