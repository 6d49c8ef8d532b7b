//! Every metrics backend with the real binary on LocalStack
//! (`FORWARDER_METRICS_BACKEND`): `data-forwarding.http_response` exactly once per
//! forwarded event, with the prefix and the global tags, whichever backend.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

const EVENTS: u128 = 7;
const KEY: &str = "dd0123456789abcdefSECRET";

/// A run of the binary over `EVENTS` events with `env`; its output.
async fn run_with(env: &[(&str, String)]) -> std::process::Output {
    let q = Queues::create(30).await;
    let bodies: Vec<String> = (1..=EVENTS).map(|i| event(i, 3)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;
    let mut run = binary(&["run"]);
    run.env("FORWARDER_EXIT_WHEN_IDLE", "2")
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_METRICS_PREFIX", "sqsf")
        .env("FORWARDER_METRICS_TAGS", "env:test")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    run_ok(&mut run)
}

#[tokio::test]
async fn emf_lines_on_stdout_count_every_forwarded_event() {
    let out = run_with(&[("FORWARDER_METRICS_BACKEND", "emf".into())]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "no EMF line");
    let mut ok = 0;
    for l in &lines {
        let directive = &l["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "sqs-forwarder");
        assert!(l["_aws"]["Timestamp"].is_i64());
        let dims = directive["Dimensions"][0].as_array().unwrap();
        assert_eq!(dims[0], "env", "global tags first: {l}");
        assert_eq!(l["env"], "test");
        for m in directive["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            assert!(name.starts_with("sqsf."), "prefixed: {name}");
            assert!(!l[name].is_null(), "{name} has a value");
        }
        if l["success"] == "true" && l["plugin"] == "amazon-sqs" {
            ok += l["sqsf.data-forwarding.http_response"]
                .as_u64()
                .unwrap_or(0);
        }
    }
    assert_eq!(ok, EVENTS as u64, "exactly once per event: {stdout}");
}

#[tokio::test]
async fn log_backend_writes_each_metric_at_debug() {
    let out = run_with(&[
        ("FORWARDER_METRICS_BACKEND", "log".into()),
        ("RUST_LOG", "warn,sqs_forwarder::metrics=debug".into()),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ok = stderr
        .lines()
        .filter(|l| {
            // Field names may be coloured: match the values.
            l.contains("\"sqsf.data-forwarding.http_response\"")
                && l.contains("\"env:test,plugin:amazon-sqs,success:true\"")
        })
        .count();
    assert_eq!(ok, EVENTS as usize, "{stderr}");
}

#[tokio::test]
async fn plain_statsd_has_no_tags_and_dogstatsd_has_them() {
    let statsd = StatsdCapture::start();
    run_with(&[
        ("FORWARDER_METRICS_BACKEND", "statsd".into()),
        ("FORWARDER_STATSD_ADDR", statsd.addr.to_string()),
    ])
    .await;
    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter()
            .filter(|l| *l == "sqsf.data-forwarding.http_response:1|c")
            .count()
            >= EVENTS as usize
    });
    assert!(lines.iter().all(|l| !l.contains("|#")), "{lines:?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| *l == "sqsf.data-forwarding.http_response:1|c")
            .count(),
        EVENTS as usize
    );

    // Unset backend with an address: DogStatsD, as before.
    let statsd = StatsdCapture::start();
    run_with(&[("FORWARDER_STATSD_ADDR", statsd.addr.to_string())]).await;
    let want = "sqsf.data-forwarding.http_response:1|c|#env:test,plugin:amazon-sqs,success:true";
    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter().filter(|l| *l == want).count() >= EVENTS as usize
    });
    assert_eq!(lines.iter().filter(|l| *l == want).count(), EVENTS as usize);
}

/// One request the intake received: its headers (lower-cased) and its body, gunzipped.
#[derive(Debug, Clone)]
struct Posted {
    headers: String,
    body: Value,
}

/// An HTTP intake on a random port; answers 500 to the first `fail` requests and to
/// every request within `fail_for` of the first one, then 202.
async fn intake(fail: usize, fail_for: Duration) -> (String, Arc<Mutex<Vec<Posted>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let posted = Arc::new(Mutex::new(Vec::new()));
    let seen = posted.clone();
    let served = Arc::new(Mutex::new(0usize));
    let first = Arc::new(Mutex::new(None::<std::time::Instant>));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let served = served.clone();
            let first = first.clone();
            tokio::spawn(async move {
                while let Some(message) = read_http_message(&mut stream).await {
                    let end = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let headers = String::from_utf8_lossy(&message[..end]).to_lowercase();
                    let mut json = String::new();
                    flate2::read::GzDecoder::new(&message[end..])
                        .read_to_string(&mut json)
                        .expect("a gzipped body");
                    let n = {
                        let mut s = served.lock().unwrap();
                        *s += 1;
                        *s
                    };
                    let since = first
                        .lock()
                        .unwrap()
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed();
                    let failing = n <= fail || since < fail_for;
                    let status = if failing {
                        "500 Internal Server Error"
                    } else {
                        "202 Accepted"
                    };
                    if !failing {
                        seen.lock().unwrap().push(Posted {
                            headers,
                            body: serde_json::from_str(&json).unwrap(),
                        });
                    }
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\n{{}}");
                    if tokio::io::AsyncWriteExt::write_all(&mut stream, reply.as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, posted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datadog_api_posts_gzipped_series_and_retries_and_never_logs_the_key() {
    let (url, posted) = intake(1, Duration::ZERO).await;
    let out = run_with(&[
        ("FORWARDER_METRICS_BACKEND", "datadog-api".into()),
        ("DD_API_KEY", KEY.into()),
        ("DD_URL", url),
        ("FORWARDER_METRICS_FLUSH_INTERVAL", "1s".into()),
        ("RUST_LOG", "trace".into()),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(KEY), "the key was logged");
    let posted = posted.lock().unwrap().clone();
    assert!(!posted.is_empty(), "nothing posted");
    let mut ok = 0.0;
    for p in &posted {
        assert!(
            p.headers.starts_with("post /api/v2/series "),
            "{}",
            p.headers
        );
        assert!(p.headers.contains("content-encoding: gzip"));
        assert!(p
            .headers
            .contains(&format!("dd-api-key: {}", KEY.to_lowercase())));
        for s in p.body["series"].as_array().unwrap() {
            assert!(s["metric"].as_str().unwrap().starts_with("sqsf."), "{s}");
            let tags: Vec<&str> = s["tags"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(tags.first(), Some(&"env:test"), "{s}");
            if s["metric"] == "sqsf.data-forwarding.http_response" && tags.contains(&"success:true")
            {
                assert_eq!(s["type"], 1, "a count");
                assert!(tags.contains(&"plugin:amazon-sqs"));
                ok += s["points"][0]["value"].as_f64().unwrap();
            }
        }
    }
    // The first post failed (500) and was retried: nothing lost, nothing doubled.
    assert_eq!(ok, EVENTS as f64, "{posted:#?}");
}

#[tokio::test]
async fn a_backend_without_what_it_needs_fails_at_start_naming_the_variable() {
    for (env, var) in [
        (
            vec![("FORWARDER_METRICS_BACKEND", "datadog-api")],
            "DD_API_KEY",
        ),
        (
            vec![("FORWARDER_METRICS_BACKEND", "dogstatsd")],
            "FORWARDER_STATSD_ADDR",
        ),
        (
            vec![("FORWARDER_METRICS_BACKEND", "prometheus")],
            "FORWARDER_METRICS_BACKEND",
        ),
        (
            vec![
                ("FORWARDER_METRICS_BACKEND", "datadog-api"),
                ("DD_API_KEY", KEY),
                ("DD_URL", "ftp://x"),
            ],
            "DD_URL",
        ),
    ] {
        let mut check = binary(&["check"]);
        check
            .env(
                "FORWARDER_SOURCE_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/a",
            )
            .env(
                "FORWARDER_DEST_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/b",
            )
            .envs(env.iter().copied());
        let out = output_of(&mut check, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("error: {var}: "))),
            "{var}: {stderr}"
        );
        assert!(!stderr.contains(KEY));
    }
}

/// What the intake does not accept within the interval's retries is dropped, counted in
/// `forwarder.metrics.dropped` (sent with a later interval) and logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datadog_api_counts_what_it_drops_and_logs_it_once() {
    let (url, posted) = intake(0, Duration::from_millis(2500)).await;
    let out = run_with(&[
        ("FORWARDER_METRICS_BACKEND", "datadog-api".into()),
        ("DD_API_KEY", KEY.into()),
        ("DD_URL", url),
        ("FORWARDER_METRICS_FLUSH_INTERVAL", "1s".into()),
        ("FORWARDER_EXIT_WHEN_IDLE", "5".into()),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("datadog-api metrics not accepted").count(),
        1,
        "{stderr}"
    );
    let dropped: f64 = posted
        .lock()
        .unwrap()
        .iter()
        .flat_map(|p| p.body["series"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["metric"] == "sqsf.forwarder.metrics.dropped")
        .map(|s| {
            assert_eq!(s["tags"], serde_json::json!(["env:test"]), "{s}");
            s["points"][0]["value"].as_f64().unwrap_or(0.0)
        })
        .sum();
    assert!(dropped >= 1.0, "no drop counted");
}

/// `check` says where metrics go, without the key.
#[tokio::test]
async fn check_says_where_metrics_go() {
    let q = Queues::create(30).await;
    let mut check = binary(&["check"]);
    check
        .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_METRICS_BACKEND", "datadog-api")
        .env("DD_API_KEY", KEY)
        .env("DD_SITE", "datadoghq.eu")
        .env("FORWARDER_FORWARD_ATTRIBUTES", "tenant");
    let out = run_ok(&mut check);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok: metrics: datadog-api to https://api.datadoghq.eu every 10s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: forwarded attributes: tenant"),
        "{stdout}"
    );
    assert!(!stdout.contains(KEY) && !String::from_utf8_lossy(&out.stderr).contains(KEY));
}

/// The value of the sample `series` (name and labels, exactly) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

#[tokio::test]
async fn prometheus_beside_dogstatsd_gets_the_same_catalogue_at_metrics() {
    let q = Queues::create(30).await;
    let bodies: Vec<String> = (1..=EVENTS).map(|i| event(i, 3)).collect();
    send_bodies(&q.client, &q.source, &bodies).await;
    let statsd = StatsdCapture::start();
    let health = free_addr();
    let env = |cmd: &mut std::process::Command| {
        cmd.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_METRICS_BACKEND", "dogstatsd,prometheus")
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
            .env("FORWARDER_HEALTH_ADDR", &health)
            .env("FORWARDER_METRICS_PREFIX", "sqsf")
            .env("FORWARDER_METRICS_TAGS", "env:test");
    };
    let mut check = binary(&["check"]);
    env(&mut check);
    let stdout = String::from_utf8_lossy(&run_ok(&mut check).stdout).to_string();
    assert!(
        stdout.contains(&format!(
            "ok: metrics: dogstatsd to {}, prometheus at http://{health}/metrics",
            statsd.addr
        )),
        "{stdout}"
    );
    let mut run = binary(&["run"]);
    env(&mut run);
    let child = spawn_binary(&mut run);
    let want = "sqsf.data-forwarding.http_response:1|c|#env:test,plugin:amazon-sqs,success:true";
    let lines = statsd.wait_for(Duration::from_secs(30), |l| {
        l.iter().filter(|l| *l == want).count() >= EVENTS as usize
    });
    assert_eq!(lines.iter().filter(|l| *l == want).count(), EVENTS as usize);

    let series = "sqsf_data_forwarding_http_response_total{env=\"test\",plugin=\"amazon-sqs\",success=\"true\"}";
    let (head, text) = get(&health, "/metrics", "text/plain").expect("/metrics answers");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(sample(&text, series), Some(EVENTS as f64), "{text}");
    assert!(
        text.contains("# TYPE sqsf_data_forwarding_http_response_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE sqsf_forwarder_event_latency_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("sqsf_forwarder_messages_received_total{env=\"test\"}"),
        "{text}"
    );
    let (head, open) = get(
        &health,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    )
    .expect("/metrics answers");
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert_eq!(sample(&open, series), Some(EVENTS as f64), "{open}");
    assert!(open.ends_with("# EOF\n"), "{open}");
    child.terminate();
    let out = child.finish(Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn prometheus_needs_the_health_listener() {
    let q = Queues::create(30).await;
    let mut run = binary(&["run"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_METRICS_BACKEND", "prometheus");
    let out = output_of(&mut run, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: FORWARDER_METRICS_BACKEND: is prometheus")
            && stderr.contains("FORWARDER_HEALTH_ADDR"),
        "{stderr}"
    );
}
