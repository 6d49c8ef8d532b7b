//! Routes changed without a restart (SIGHUP, or the file's content), with the real binary
//! on LocalStack: a ConfigMap-style symlink swapped under load, a broken file that keeps
//! the routes in force and shows in the metrics, SIGHUP, and SIGHUP without a file.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Points `link` at `target` at once, as Kubernetes swaps a ConfigMap's `..data` link:
/// a new link renamed over the old one.
fn swap_link(link: &Path, target: &Path) {
    let tmp = link.with_extension("swap");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename over the link");
}

/// Waits until the statsd lines hold a counter of `forwarder.config.reload` with
/// `result` at `at_least`, at most 20 s (the content is compared every 5 s).
async fn reloads(statsd: &StatsdCapture, result: &str, at_least: u64) -> Vec<String> {
    let started = Instant::now();
    loop {
        let lines = statsd.lines();
        let n = statsd_sum(
            &lines,
            "forwarder.config.reload",
            &format!("result:{result}"),
        );
        if n >= at_least {
            return lines;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{n} reloads with result {result}, {at_least} expected: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last value of a gauge in the statsd lines.
fn last_gauge(lines: &[String], name: &str) -> Option<String> {
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with(&format!("{name}:")) && l.contains("|g"))
        .and_then(|l| l.split(':').nth(1)?.split('|').next().map(str::to_string))
}

/// Sends events `ids` to `queue`, one SendMessage each.
async fn send_ids(client: &aws_sdk_sqs::Client, queue: &str, ids: std::ops::Range<u128>) {
    let bodies: Vec<String> = ids.map(|i| event(i, 1)).collect();
    send_bodies(client, queue, &bodies).await;
}

/// How often each event id arrived at `queue`, waiting until `want` did (30 s at most).
async fn arrived(client: &aws_sdk_sqs::Client, queue: &str, want: usize) -> HashMap<u128, usize> {
    arrived_within(client, queue, want, Duration::from_secs(30)).await
}

/// [`arrived`], waiting at most `bound` (fewer than `want` may come).
async fn arrived_within(
    client: &aws_sdk_sqs::Client,
    queue: &str,
    want: usize,
    bound: Duration,
) -> HashMap<u128, usize> {
    let mut seen = HashMap::new();
    for body in drain(client, queue, want, bound).await {
        let id = u128::from_str_radix(&event_id_of(&body), 16).expect("hex id");
        *seen.entry(id).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_symlink_reroutes_a_broken_file_keeps_the_routes_and_sighup_reloads() {
    let q = Queues::create(30).await;
    let (first, second, third) = (
        q.dest.clone(),
        create_queue(&q.client, &unique("t-second"), 30).await,
        create_queue(&q.client, &unique("t-third"), 30).await,
    );
    let dir = std::env::temp_dir().join(unique("reload"));
    std::fs::create_dir_all(&dir).unwrap();
    let version = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let v1 = version("v1.toml", format!("[default]\nqueue_url = \"{first}\"\n"));
    let v2 = version("v2.toml", format!("[default]\nqueue_url = \"{second}\"\n"));
    let broken = version("broken.toml", "[default]\nqueue = \"nowhere\"\n".into());
    let v3 = version("v3.toml", format!("[default]\nqueue_url = \"{third}\"\n"));
    let link = dir.join("routes.toml");
    swap_link(&link, &v1);

    let statsd = StatsdCapture::start();
    let mut run = binary(&["run"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_ROUTES_FILE", &link)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
        .env("RUST_LOG", "info");
    let mut worker = spawn_binary(&mut run);

    // Up on the first file.
    send_ids(&q.client, &q.source, 1..41).await;
    let mut at_first = arrived(&q.client, &first, 40).await;
    assert_eq!(at_first.len(), 40, "the first routes");
    // Under load: events go on being sent while the link is swapped.
    let sending = tokio::spawn({
        let (client, source) = (q.client.clone(), q.source.clone());
        async move {
            for start in (41..81).step_by(5) {
                send_ids(&client, &source, start..start + 5).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    swap_link(&link, &v2);
    sending.await.unwrap();
    let lines = reloads(&statsd, "success", 1).await;
    assert_eq!(
        last_gauge(&lines, "forwarder.config.last_reload_successful").as_deref(),
        Some("1")
    );
    // Sent once the new routes are in force: they go where the new file says.
    send_ids(&q.client, &q.source, 81..101).await;
    // Those sent meanwhile went to either, each once: what reached the first by now.
    let before = arrived_within(&q.client, &first, 40, Duration::from_secs(5)).await;
    let at_second = arrived(&q.client, &second, 60 - before.len()).await;
    for id in 81..101 {
        assert_eq!(at_second.get(&id), Some(&1), "event {id} after the swap");
    }
    for (id, n) in before.into_iter().chain(at_second) {
        *at_first.entry(id).or_default() += n;
    }
    let lost: Vec<u128> = (1..101).filter(|id| !at_first.contains_key(id)).collect();
    let twice: Vec<(&u128, &usize)> = at_first.iter().filter(|(_, n)| **n > 1).collect();
    assert!(lost.is_empty(), "lost across the swap: {lost:?}");
    assert!(
        twice.is_empty(),
        "forwarded twice across the swap: {twice:?}"
    );

    // A broken file: the routes in force stay, the failure shows in the metrics.
    swap_link(&link, &broken);
    let lines = reloads(&statsd, "failure", 1).await;
    assert_eq!(
        last_gauge(&lines, "forwarder.config.last_reload_successful").as_deref(),
        Some("0")
    );
    assert!(
        !worker.has_exited(),
        "a broken file does not stop the worker"
    );
    send_ids(&q.client, &q.source, 101..111).await;
    assert_eq!(
        arrived(&q.client, &second, 10).await.len(),
        10,
        "still the last good routes"
    );

    // Fixed: in force again; then SIGHUP reloads the same file once more.
    swap_link(&link, &v3);
    reloads(&statsd, "success", 2).await;
    worker.signal("HUP");
    reloads(&statsd, "success", 3).await;
    assert!(!worker.has_exited(), "SIGHUP does not stop the worker");
    send_ids(&q.client, &q.source, 111..121).await;
    assert_eq!(
        arrived(&q.client, &third, 10).await.len(),
        10,
        "after SIGHUP it forwards"
    );

    worker.terminate();
    let out = worker.finish(Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let failure: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("routes not reloaded"))
        .collect();
    assert_eq!(failure.len(), 1, "one line per failed reload: {stderr}");
    assert!(
        failure[0].contains("unknown field `queue`"),
        "it says why: {}",
        failure[0]
    );
    assert!(
        stderr.contains("trigger=\"SIGHUP\"") || stderr.contains("trigger=SIGHUP"),
        "{stderr}"
    );
}

/// Without a routes file, SIGHUP is logged and ignored: the worker goes on forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_routes_file_is_ignored() {
    let q = Queues::create(30).await;
    let mut run = binary(&["run"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off")
        .env("RUST_LOG", "info");
    let mut worker = spawn_binary(&mut run);
    send_ids(&q.client, &q.source, 1..11).await;
    assert_eq!(arrived(&q.client, &q.dest, 10).await.len(), 10);
    worker.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!worker.has_exited(), "SIGHUP does not stop the worker");
    send_ids(&q.client, &q.source, 11..21).await;
    assert_eq!(
        arrived(&q.client, &q.dest, 10).await.len(),
        10,
        "it goes on forwarding"
    );
    worker.terminate();
    let out = worker.finish(Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("SIGHUP: no routes file"), "{stderr}");
}
