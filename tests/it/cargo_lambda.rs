//! Lambda mode under cargo-lambda's own emulator, as the book's deployment guide (docs/guides/deployment.md, "Testing locally") tells
//! users to run it: `cargo lambda watch --only-lambda-apis`, the real binary started
//! against it, and `cargo lambda invoke --data-file deploy/lambda/sqs-event.json`.
//!
//! The emulator sends `Lambda-Runtime-Deadline-Ms: 600000` (its timeout, not a time since
//! the epoch): the forwarder must take it for no deadline, not for one in 1970.
//!
//! cargo-lambda comes from PyPI through `tools/install.sh` (`make test` runs it);
//! `FORWARDER_TEST_CARGO_LAMBDA` names the executable.

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::*;
use serde_json::Value;

/// The example event of the deployment guide: 3 valid events and 2 invalid bodies.
fn example_event() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/lambda/sqs-event.json")
}

/// The `cargo-lambda` executable, or `None` (with why) where it is not installed. In CI
/// it must be: `make test` installs it.
fn cargo_lambda() -> Option<PathBuf> {
    let path = std::env::var_os("FORWARDER_TEST_CARGO_LAMBDA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/.venv/bin/cargo-lambda")
        });
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "cargo-lambda is not installed at {} (`./tools/install.sh` installs it)",
        path.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipped: {why}");
    None
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
fn wait_for_port(port: u16, within: Duration) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < within,
            "nothing listened on {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo lambda invoke` of the example event; the function's response as JSON.
fn invoke(cargo_lambda: &Path, port: u16) -> Value {
    let out = output_of(
        Command::new(cargo_lambda)
            .args(["lambda", "invoke", "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &port.to_string()])
            .args(["--output-format", "json", "--data-file"])
            .arg(example_event()),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo lambda invoke: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("cargo lambda invoke printed no JSON ({e}): {stdout}"))
}

/// The message ids in a partial batch response.
fn failures(response: &Value) -> HashSet<String> {
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_local_test_with_cargo_lambda_forwards_and_reports_the_bad_bodies() {
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let dest = create_queue(&client, &unique("cargo-lambda-dest"), 30).await;
    let data = std::env::temp_dir().join(unique("cargo-lambda-data"));
    let port = free_port();

    // The emulator reads the package's Cargo.toml, so it runs in the project directory.
    let emulator = spawn_binary(
        Command::new(&cargo_lambda)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["lambda", "watch", "--only-lambda-apis"])
            .args(["--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &port.to_string()]),
    );
    wait_for_port(port, Duration::from_secs(60));
    // The variables `cargo lambda watch --only-lambda-apis` tells its user to set.
    let mut function = spawn_binary(
        Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
            .envs(aws_env())
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "4096")
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("FORWARDER_DEST_QUEUE_URL", &dest)
            .env("FORWARDER_DATA_DIR", &data)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR"),
    );

    // The example holds 3 valid events and 2 invalid bodies: only the 2 are reported.
    let invalid: HashSet<String> = [
        "0e0c7a5e-0000-4000-8000-000000000002",
        "0e0c7a5e-0000-4000-8000-000000000004",
    ]
    .map(String::from)
    .into();
    let first = invoke(&cargo_lambda, port);
    assert_eq!(failures(&first), invalid, "{first}");
    // The second invocation goes to the same, warm process.
    let second = invoke(&cargo_lambda, port);
    assert_eq!(failures(&second), invalid, "{second}");
    assert!(!function.has_exited(), "the function stopped");

    let arrived = drain(&client, &dest, 6, Duration::from_secs(20)).await;
    assert_eq!(arrived.len(), 6, "{arrived:#?}");
    let mut tag_ids_by_event = std::collections::HashMap::new();
    for body in &arrived {
        let event: Value = serde_json::from_str(body).unwrap();
        let tag_ids = event["tag_ids"].clone();
        assert!(
            tag_ids.as_array().is_some_and(|ids| !ids.is_empty()),
            "no tag_ids in {body}"
        );
        let id = event["event_id"].as_str().unwrap().to_string();
        let before = tag_ids_by_event.insert(id, tag_ids.clone());
        // Both invocations give the same ids: one indexer, warm.
        assert!(before.is_none_or(|b| b == tag_ids), "{body}");
    }
    let ids: HashSet<&String> = tag_ids_by_event.keys().collect();
    let want: Vec<String> = (1..=3).map(|n| format!("c0ffee{n:026x}")).collect();
    assert_eq!(ids, want.iter().collect());

    function.terminate();
    let out = function.finish(Duration::from_secs(30)).await;
    drop(emulator);
    let _ = std::fs::remove_dir_all(&data);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The emulator's deadline is no deadline: warned about once per process, named.
    let warnings = stderr
        .matches("Lambda-Runtime-Deadline-Ms: 600000 is not a deadline")
        .count();
    assert_eq!(warnings, 1, "{stderr}");
    assert!(!stderr.contains("deadline is near"), "{stderr}");
    // A pipe is not a terminal: no colour escapes.
    assert!(!out.stderr.contains(&0x1b), "escape bytes in: {stderr}");
}
