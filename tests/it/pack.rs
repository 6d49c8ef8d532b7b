//! Packed routes (`pack = "ndjson"`) with the real binary on LocalStack: many events per
//! message, one per line; FIFO order within each group and deduplication of a resent
//! pack; one gzip NDJSON object per pack in S3; a rejected pack sent again one event per
//! message, only the bad one dead-lettered.

use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use md5::{Digest, Md5};

use crate::helpers::*;

/// The event ids of a packed message's lines; each line must be an event.
fn lines_of(body: &str) -> Vec<String> {
    assert!(body.ends_with('\n'), "every line ends: {body:?}");
    body.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a line is one event");
            v["event_id"].as_str().expect("event_id").to_string()
        })
        .collect()
}

fn events_attribute(m: &aws_sdk_sqs::types::Message) -> usize {
    attribute(m, "events")
        .and_then(|v| v.parse().ok())
        .expect("the events attribute")
}

#[tokio::test]
async fn a_packed_route_carries_many_events_per_message_and_an_unpacked_one_does_not() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("pack");
    let source = create_queue(&client, &format!("{name}-src"), 30).await;
    let packed = create_queue(&client, &format!("{name}-packed"), 30).await;
    let single = create_queue(&client, &format!("{name}-single"), 30).await;
    let routes = routes_file(&format!(
        "[default]\nqueue_url = \"{packed}\"\npack = \"ndjson\"\n\n\
         [projects.2]\nqueue_url = \"{single}\"\n"
    ));
    let bodies: Vec<String> = (1..=50u128)
        .map(|i| event(i, if i % 5 == 0 { 2 } else { 1 }))
        .collect();
    send_bodies(&client, &source, &bodies).await;
    let statsd = StatsdCapture::start();
    let env = |cmd: &mut std::process::Command| {
        cmd.env("FORWARDER_SOURCE_QUEUE_URL", &source)
            .env("FORWARDER_ROUTES_FILE", &routes)
            .env("FORWARDER_BATCH_WINDOW", "1s")
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("FORWARDER_INDEXER_DATABASE_URL", sqlite_url())
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string());
    };
    let mut check = binary(&["check"]);
    env(&mut check);
    let stdout = String::from_utf8_lossy(&run_ok(&mut check).stdout).to_string();
    assert!(stdout.contains("route default: reached"), "{stdout}");
    assert!(stdout.contains("; pack: ndjson"), "{stdout}");
    assert!(stdout.contains("; pack: off"), "{stdout}");
    let mut run = binary(&["run", "--exit-when-idle", "3"]);
    env(&mut run);
    run_ok(&mut run);

    let got = drain_messages(&client, &packed, 40, Duration::from_secs(5)).await;
    let mut ids = Vec::new();
    for m in &got {
        let body = m.body.as_deref().unwrap();
        let lines = lines_of(body);
        assert_eq!(events_attribute(m), lines.len(), "{body}");
        for l in body.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(
                v["tag_ids"].as_array().map(Vec::len),
                Some(2),
                "each line has its tag_ids: {l}"
            );
        }
        ids.extend(lines);
    }
    let want: HashSet<String> = bodies
        .iter()
        .filter(|b| !b.contains("\"project_id\":2"))
        .map(|b| event_id_of(b))
        .collect();
    assert_eq!(ids.len(), 40, "each event once");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), want);
    // Two pollers, a 1 s window: the 40 events share a few messages, not 40.
    assert!(got.len() <= 5, "{} messages for 40 events", got.len());
    let alone = drain_messages(&client, &single, 11, Duration::from_secs(3)).await;
    assert_eq!(alone.len(), 10, "the unpacked route: one event per message");
    assert!(alone.iter().all(|m| attribute(m, "events").is_none()));

    let lines = statsd.lines();
    assert_eq!(
        statsd_sum(&lines, "data-forwarding.http_response", "success:true"),
        50,
        "one per event, packed or not: {lines:#?}"
    );
    let packs: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("forwarder.pack.events:"))
        .collect();
    assert_eq!(packs.len(), got.len(), "{packs:?}");
    assert_eq!(depth(&client, &source).await, 0);
}

fn system(m: &aws_sdk_sqs::types::Message, name: MessageSystemAttributeName) -> Option<String> {
    m.attributes.as_ref().and_then(|a| a.get(&name)).cloned()
}

fn pack_id(ids: &[String]) -> String {
    let mut h = Md5::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The binary from a FIFO `source` to a FIFO `dest`, packed, a group per project, with a
/// small message limit: a batch's group spills over several packs, which must still go
/// in order.
fn run_fifo_packed(source: &str, dest: &str) {
    let mut run = binary(&["run", "--exit-when-idle", "3"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", source)
        .env("FORWARDER_DEST_QUEUE_URL", dest)
        .env("FORWARDER_MESSAGE_GROUP_ID", "project-{project_id}")
        .env("FORWARDER_PACK", "ndjson")
        .env("FORWARDER_MAX_MESSAGE_BYTES", "1024")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off");
    run_ok(&mut run);
}

#[tokio::test]
async fn fifo_packs_keep_each_groups_order_and_a_resent_pack_is_deduplicated() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("packfifo");
    let source = create_fifo_queue(&client, &format!("{name}-src")).await;
    let dest = create_fifo_queue(&client, &format!("{name}-dst")).await;
    let bodies: Vec<String> = (1..=40u128).map(|i| event(i, 1 + (i as u64 % 2))).collect();
    send_in_group(&client, &source, &bodies).await;
    run_fifo_packed(&source, &dest);

    let got = drain_messages(&client, &dest, 40, Duration::from_secs(5)).await;
    let mut first_pack = None;
    for project in [1u64, 2] {
        let group = format!("project-{project}");
        let mine: Vec<&aws_sdk_sqs::types::Message> = got
            .iter()
            .filter(|m| {
                system(m, MessageSystemAttributeName::MessageGroupId).as_deref()
                    == Some(group.as_str())
            })
            .collect();
        assert!(mine.len() > 1, "{group}: the limit splits packs");
        let mut order = Vec::new();
        for m in &mine {
            let lines = lines_of(m.body.as_deref().unwrap());
            assert!(m.body.as_deref().unwrap().len() <= 1024);
            assert_eq!(
                system(m, MessageSystemAttributeName::MessageDeduplicationId),
                Some(pack_id(&lines)),
                "the dedup id follows the pack's events"
            );
            first_pack.get_or_insert_with(|| lines.clone());
            order.extend(lines);
        }
        let want: Vec<String> = bodies
            .iter()
            .filter(|b| b.contains(&format!("\"project_id\":{project},")))
            .map(|b| event_id_of(b))
            .collect();
        assert_eq!(order, want, "{group}: order kept across packs");
    }

    // The same pack sent again (a lost reply, a redelivered batch): deduplicated.
    let first = first_pack.unwrap();
    let again: Vec<String> = bodies
        .iter()
        .filter(|b| first.contains(&event_id_of(b)))
        .cloned()
        .collect();
    let resend = create_fifo_queue(&client, &format!("{name}-again")).await;
    send_in_group(&client, &resend, &again).await;
    run_fifo_packed(&resend, &dest);
    assert_eq!(depth(&client, &resend).await, 0, "accepted");
    let dup = drain_messages(&client, &dest, 1, Duration::from_secs(2)).await;
    assert!(dup.is_empty(), "deduplicated: {dup:?}");
}

#[tokio::test]
async fn with_s3_offload_always_each_pack_is_one_gzip_ndjson_object() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let s3 =
        sqs_forwarder::aws::s3_client(&sdk().await, &sqs_forwarder::metrics::Metrics::disabled());
    let name = unique("packs3");
    let source = create_queue(&client, &format!("{name}-src"), 30).await;
    let dest = create_queue(&client, &format!("{name}-dst"), 30).await;
    let bucket = unique("packs").to_lowercase();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let routes = routes_file(&format!(
        "[default]\nqueue_url = \"{dest}\"\ns3_bucket = \"{bucket}\"\ns3_offload = \"always\"\n\
         pack = \"ndjson\"\npack_compression = \"gzip\"\nexclude_fields = [\"extra\"]\n"
    ));
    let bodies: Vec<String> = (1..=30u128).map(|i| event(i, 3)).collect();
    send_bodies(&client, &source, &bodies).await;
    let mut run = binary(&["run", "--exit-when-idle", "3"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &source)
        .env("FORWARDER_ROUTES_FILE", &routes)
        .env("FORWARDER_BATCH_WINDOW", "1s")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off");
    run_ok(&mut run);

    let got = drain_messages(&client, &dest, 30, Duration::from_secs(5)).await;
    assert!(!got.is_empty() && got.len() <= 5, "{} pointers", got.len());
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let mut ids = Vec::new();
    let mut keys = HashSet::new();
    for m in &got {
        let pointer: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        let url = pointer["s3Url"].as_str().expect("a pointer");
        let key = url.split(".amazonaws.com/").nth(1).unwrap().to_string();
        assert!(key.starts_with(&format!("packs/{today}/")), "{key}");
        assert!(key.ends_with(".ndjson.gz"), "{key}");
        assert!(keys.insert(key.clone()), "each pack its own object");
        let object = s3
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(object.content_type(), Some("application/x-ndjson"));
        assert_eq!(object.content_encoding(), Some("gzip"));
        let gz = object.body.collect().await.unwrap().into_bytes();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .expect("gzip");
        let lines = lines_of(&text);
        assert_eq!(pointer["events"], lines.len());
        assert_eq!(events_attribute(m), lines.len());
        assert!(!text.contains("\"extra\""), "fields excluded: {text}");
        ids.extend(lines);
    }
    let want: Vec<String> = bodies.iter().map(|b| event_id_of(b)).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, want, "each event once");

    // The packing guide's boto3 consumer (docs/guides/fields-filters-packing.md), on the same pointers, reads the same events.
    let replay = create_queue(&client, &format!("{name}-readme"), 30).await;
    let pointers: Vec<String> = got.iter().map(|m| m.body.clone().unwrap()).collect();
    send_bodies(&client, &replay, &pointers).await;
    match readme_consumer(&replay) {
        Ok(printed) => {
            let mut read: Vec<String> = printed
                .lines()
                .map(|l| l.split(' ').next().unwrap_or_default().to_string())
                .collect();
            read.sort();
            assert_eq!(read, want, "the packing guide's consumer: {printed}");
        }
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("skipped the packing guide's consumer: {why}");
        }
    }
}

/// Runs the packing guide's Python consumer (boto3, from tools/.venv: `make test-tools`) on
/// `queue` until it is empty; what it printed, or why it could not run.
fn readme_consumer(queue: &str) -> Result<String, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("tools/.venv/bin/python");
    if !python.exists() {
        return Err(format!(
            "{} is not installed (make test-tools)",
            python.display()
        ));
    }
    let readme = std::fs::read_to_string(root.join("docs/guides/fields-filters-packing.md"))
        .map_err(|e| e.to_string())?;
    let start = readme
        .find("```python\nimport gzip, json, boto3")
        .ok_or("the packing guide has no consumer example")?;
    let code = &readme[start + "```python\n".len()..];
    let code = &code[..code.find("```").ok_or("unclosed example")?];
    let driver = format!(
        "{code}\nimport sys\nfor _ in range(10):\n    consume(sys.argv[1])\n    \
         left = sqs.get_queue_attributes(QueueUrl=sys.argv[1], AttributeNames=['ApproximateNumberOfMessages'])\n    \
         if left['Attributes']['ApproximateNumberOfMessages'] == '0':\n        break\n"
    );
    let out = std::process::Command::new(python)
        .args(["-c", &driver, queue])
        .envs(aws_env())
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the consumer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn a_rejected_pack_is_sent_again_one_event_per_message_and_only_the_bad_one_dead_lettered() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("packbad");
    // A short visibility: the worker waits that long after a failure before calling
    // the source idle.
    let source = create_queue(&client, &format!("{name}-src"), 6).await;
    let dest = create_queue(&client, &format!("{name}-dst"), 30).await;
    let dlq = create_queue(&client, &format!("{name}-dlq"), 30).await;
    let bodies: Vec<String> = (1..=6u128).map(|i| event(i, 1)).collect();
    send_bodies(&client, &source, &bodies).await;
    let bad = format!("{:032x}", 4);
    let rejected_pack = Arc::new(AtomicBool::new(false));
    // The destination refuses any message holding event 4, as SQS refuses a message
    // with characters it does not take; the dead-letter queue takes it.
    let proxy = intercept_proxy(refuse_entries(dest.clone(), {
        let (bad, rejected_pack) = (bad.clone(), rejected_pack.clone());
        move |body| {
            let refused = body.contains(&bad);
            if refused && body.lines().count() > 1 {
                rejected_pack.store(true, Ordering::SeqCst);
            }
            refused
        }
    }))
    .await;
    let mut run = binary(&["run", "--exit-when-idle", "3"]);
    run.env("AWS_ENDPOINT_URL", &proxy)
        .env("FORWARDER_SOURCE_QUEUE_URL", &source)
        .env("FORWARDER_DEST_QUEUE_URL", &dest)
        .env("FORWARDER_DLQ_URL", &dlq)
        .env("FORWARDER_PACK", "ndjson")
        .env("FORWARDER_WORKERS", "1")
        .env("FORWARDER_BATCH_WINDOW", "1s")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off");
    let out = spawn_binary(&mut run).finish(Duration::from_secs(60)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rejected_pack.load(Ordering::SeqCst), "the pack was refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("packed message rejected: its events are sent again one per message"),
        "{stderr}"
    );

    let got = drain_messages(&client, &dest, 6, Duration::from_secs(3)).await;
    let mut arrived: Vec<String> = got
        .iter()
        .flat_map(|m| {
            let body = m.body.as_deref().unwrap();
            body.lines().map(event_id_of).collect::<Vec<_>>()
        })
        .collect();
    arrived.sort();
    let good: Vec<String> = bodies
        .iter()
        .map(|b| event_id_of(b))
        .filter(|id| *id != bad)
        .collect();
    assert_eq!(arrived, good, "every other event arrived, once");
    let dead = drain(&client, &dlq, 2, Duration::from_secs(3)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains(&bad), "only the bad one: {dead:?}");
    assert_eq!(depth(&client, &source).await, 0);
}

#[tokio::test]
async fn gzip_without_a_packed_s3_route_fails_at_start_naming_the_route() {
    let q = Queues::create(30).await;
    let routes = routes_file(&format!(
        "[default]\nqueue_url = \"{}\"\npack = \"ndjson\"\npack_compression = \"gzip\"\n",
        q.dest
    ));
    for command in ["run", "check"] {
        let mut cmd = binary(&[command]);
        cmd.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_ROUTES_FILE", &routes)
            .env("FORWARDER_INDEXER", "off");
        let out = output_of(&mut cmd, Duration::from_secs(60));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(0), "{command}: {all}");
        let errors: Vec<&str> = all.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{all}");
        assert!(
            errors[0].contains("FORWARDER_ROUTES_FILE")
                && errors[0].contains("default.pack_compression is gzip")
                && errors[0].contains("s3_offload = always"),
            "{command}: {}",
            errors[0]
        );
    }
}
