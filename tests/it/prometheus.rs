//! A real Prometheus (Debian's package, `tools/install-prometheus.sh`) scrapes the real
//! binary's `/metrics` while it forwards on LocalStack, with the alert rules of
//! `deploy/kubernetes/monitoring` loaded. Then, through Prometheus's HTTP API: the
//! forwarded count is `data_forwarding_http_response_total{success="true"}`, every
//! dashboard panel's query (`deploy/grafana/sqs-forwarder.json`) runs and returns data,
//! and every alert expression parses and evaluates.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

const EVENTS: u128 = 20;

/// The `prometheus` executable, or why there is none. In CI it must be there.
fn prometheus() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FORWARDER_TEST_PROMETHEUS") {
        return Ok(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "prometheus is not installed (tools/install-prometheus.sh: Debian's prometheus package)"
                .to_string()
        })
}

/// `GET path` over HTTP/1.0 (so the body is not chunked); the body, if 200.
fn get_body(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query: Prometheus's whole answer (`status`, `data`, or `error`).
fn query(prom: &str, promql: &str) -> Value {
    let body = get_body(prom, &format!("/api/v1/query?query={}", encode(promql)))
        .unwrap_or_else(|| format!(r#"{{"status":"error","error":"no answer to {promql}"}}"#));
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// The first sample's value of a query, if it has one.
fn scalar(prom: &str, promql: &str) -> Option<f64> {
    let answer = query(prom, promql);
    answer["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

/// Waits until `ok`, at most `bound`.
fn wait_until(bound: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    ok()
}

/// The PrometheusRule's spec as a rule file (JSON, which Prometheus reads as YAML),
/// through the tools' Python (PyYAML); or why it could not be made.
fn rule_file(root: &Path, to: &Path) -> Result<(), String> {
    let python = root.join("tools/.venv/bin/python");
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, json, yaml; r = yaml.safe_load(open(sys.argv[1])); json.dump(r['spec'], open(sys.argv[2], 'w'))",
        ])
        .arg(root.join("deploy/kubernetes/monitoring/prometheusrule.yaml"))
        .arg(to)
        .output()
        .map_err(|e| format!("{}: {e} (make test-tools)", python.display()))?;
    out.status
        .success()
        .then_some(())
        .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_worker_and_every_panel_and_alert_runs() {
    let prometheus = match prometheus() {
        Ok(p) => p,
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("skipped: {why}");
            return;
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(unique("prometheus"));
    std::fs::create_dir_all(&dir).unwrap();
    rule_file(root, &dir.join("rules.json")).unwrap();

    let q = Queues::create(30).await;
    let dlq = create_queue(&q.client, &unique("prom-dlq"), 30).await;
    let health = free_addr();
    let prom = free_addr();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [rules.json]\n\
             scrape_configs:\n  - job_name: sqs-forwarder\n    static_configs:\n      - targets: ['{health}']\n"
        ),
    )
    .unwrap();
    let mut server = std::process::Command::new(&prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("start prometheus");
    let stop = scopeguard(move || {
        let _ = server.kill();
        let _ = server.wait();
    });

    let mut run = binary(&["run"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_DLQ_URL", &dlq)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER_DATABASE_URL", sqlite_url())
        .env("FORWARDER_MAX_MESSAGE_BYTES", "4096")
        .env("FORWARDER_METRICS_BACKEND", "prometheus")
        .env("FORWARDER_HEALTH_ADDR", &health);
    let worker = spawn_binary(&mut run);
    assert!(
        wait_until(Duration::from_secs(60), || {
            scalar(&prom, "up{job=\"sqs-forwarder\"}") == Some(1.0)
        }),
        "Prometheus never scraped the worker: {}",
        std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
    );

    // Events while it is scraped: 20 to forward, one too large (failed, dead-lettered).
    let mut bodies: Vec<String> = (1..=EVENTS).map(|i| event(i, 3)).collect();
    bodies.push(format!(
        r#"{{"event_id":"{:032x}","project_id":3,"organization_id":7,"pad":"{}"}}"#,
        999,
        "x".repeat(8192)
    ));
    send_bodies(&q.client, &q.source, &bodies).await;
    let forwarded = r#"sum(data_forwarding_http_response_total{success="true"})"#;
    assert!(
        wait_until(Duration::from_secs(60), || {
            scalar(&prom, forwarded) == Some(EVENTS as f64)
                && scalar(&prom, "sum(forwarder_dead_letter_total)") == Some(1.0)
        }),
        "forwarded per Prometheus: {:?}",
        query(&prom, forwarded)
    );
    let arrived =
        drain_then_more(&q.client, &q.dest, EVENTS as usize, Duration::from_secs(10)).await;
    assert_eq!(
        arrived.len(),
        EVENTS as usize,
        "what arrived is what Prometheus counts"
    );
    // A few more scrapes, so rates over the window see the increase.
    std::thread::sleep(Duration::from_secs(3));

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/sqs-forwarder.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "every panel the issue names");
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            let answer = query(&prom, &expr);
            assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
            let result = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(!result.is_empty(), "{title}: {expr} returned no data");
        }
    }

    // Every alert rule loaded and evaluated without error; none firing on a healthy run
    // but the dead letter's.
    let mut rules = Vec::new();
    let alerts =
        std::fs::read_to_string(root.join("deploy/kubernetes/monitoring/prometheusrule.yaml"))
            .unwrap()
            .lines()
            .filter(|l| l.trim_start().starts_with("- alert:"))
            .count();
    let evaluated = wait_until(Duration::from_secs(30), || {
        let body = get_body(&prom, "/api/v1/rules").unwrap_or_default();
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        rules = answer["data"]["groups"][0]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        rules.len() == alerts
            && rules
                .iter()
                .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z")
    });
    assert!(evaluated, "{rules:#?}");
    for rule in &rules {
        let expr = rule["query"].as_str().unwrap();
        assert_eq!(query(&prom, expr)["status"], "success", "{expr}");
        let firing = rule["state"] != "inactive";
        let name = rule["name"].as_str().unwrap();
        assert_eq!(firing, name == "SqsForwarderDeadLetters", "{name}: {rule}");
    }

    worker.terminate();
    let out = worker.finish(Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(stop);
}

/// Runs `f` when dropped: the Prometheus server is stopped even if an assertion fails.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
