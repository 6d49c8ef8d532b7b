//! Destinations as users have them: a queue whose own `MaximumMessageSize` is below
//! `FORWARDER_MAX_MESSAGE_BYTES` (every queue made before SQS raised the limit to
//! 1 MiB has 256 KiB), with and without a bucket for oversized events. The real binary
//! against LocalStack.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;

use crate::helpers::*;

/// 256 KiB: the limit of every queue made before August 2025.
const OLD_LIMIT: usize = 262_144;

/// A destination queue with the old 256 KiB limit.
async fn old_queue(q: &Queues) -> String {
    let url = q
        .client
        .create_queue()
        .queue_name(unique("t-old"))
        .attributes(
            QueueAttributeName::MaximumMessageSize,
            OLD_LIMIT.to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    url
}

/// An event of about 400 KB: over the old queue's limit, under the forwarder's 1 MiB.
fn big_event(id: u128) -> String {
    format!(
        r#"{{"event_id":"{id:032x}","project_id":42,"organization_id":7,"timestamp":"2026-03-04T10:00:00Z","breadcrumbs":"{}"}}"#,
        "x".repeat(400_000)
    )
}

fn run_to(source: &str, dest: &str) -> std::process::Command {
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", source)
        .env("FORWARDER_DEST_QUEUE_URL", dest)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off")
        .env("RUST_LOG", "warn");
    run
}

#[tokio::test]
async fn an_event_over_the_queues_own_limit_is_offloaded_to_the_routes_bucket() {
    let q = Queues::create(30).await;
    let dest = old_queue(&q).await;
    let bucket = unique("bucket").to_lowercase();
    let s3 =
        sqs_forwarder::aws::s3_client(&sdk().await, &sqs_forwarder::metrics::Metrics::disabled());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let body = big_event(1);
    send_bodies(&q.client, &q.source, &[body.clone(), event(2, 42)]).await;

    // `check` says which bound the route has, and why.
    let check = run_ok(
        binary(&["check"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &dest)
            .env("FORWARDER_INDEXER", "off"),
    );
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        said.contains("message limit: 262144 bytes (the queue's MaximumMessageSize)"),
        "{said}"
    );

    run_ok(run_to(&q.source, &dest).env("FORWARDER_S3_BUCKET", &bucket));
    let arrived = drain(&q.client, &dest, 2, Duration::from_secs(10)).await;
    assert_eq!(arrived.len(), 2, "{arrived:?}");
    let pointer = arrived
        .iter()
        .find(|b| b.contains("s3Url"))
        .expect("the big event arrives as a pointer");
    let key = format!("42/2026-03-04/{:032x}", 1);
    assert!(pointer.contains(&key), "{pointer}");
    let stored = s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("the event is stored in the bucket");
    let bytes = stored.body.collect().await.unwrap().into_bytes();
    assert_eq!(bytes.as_ref(), body.as_bytes(), "stored as sent");
    assert!(
        arrived
            .iter()
            .any(|b| !b.contains("s3Url") && event_id_of(b) == format!("{:032x}", 2)),
        "the small event goes as it is"
    );
    assert_eq!(depth(&q.client, &q.source).await, 0);
}

#[tokio::test]
async fn without_a_bucket_an_event_over_the_queues_limit_is_dead_lettered_as_oversized() {
    let q = Queues::create(30).await;
    let dest = old_queue(&q).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    let body = big_event(3);
    send_bodies(&q.client, &q.source, &[body.clone(), event(4, 42)]).await;

    let started = std::time::Instant::now();
    run_ok(run_to(&q.source, &dest).env("FORWARDER_DLQ_URL", &dlq));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a dead-lettered message is gone: the idle run does not wait for it to come back"
    );
    let letters = drain_messages(&q.client, &dlq, 1, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].body.as_deref(), Some(body.as_str()));
    assert_eq!(
        attribute(&letters[0], "reason").as_deref(),
        Some("oversized"),
        "the queue's limit is known: not refused by SQS as message_rejected"
    );
    let arrived = drain(&q.client, &dest, 1, Duration::from_secs(5)).await;
    assert_eq!(
        arrived.iter().map(|b| event_id_of(b)).collect::<Vec<_>>(),
        [format!("{:032x}", 4)],
        "the other event is forwarded"
    );
    assert_eq!(depth(&q.client, &q.source).await, 0);
}

/// The S3 client of the tests.
async fn s3() -> aws_sdk_s3::Client {
    sqs_forwarder::aws::s3_client(&sdk().await, &sqs_forwarder::metrics::Metrics::disabled())
}

async fn new_bucket(s3: &aws_sdk_s3::Client) -> String {
    let bucket = unique("bucket").to_lowercase();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    bucket
}

/// Every object in `bucket`: its key, its server-side encryption and KMS key, as
/// HeadObject reads them back.
async fn encryption_of_each(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
) -> Vec<(String, Option<String>, Option<String>)> {
    let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    let mut out = Vec::new();
    for object in listed.contents() {
        let key = object.key().unwrap_or_default().to_string();
        let head = s3
            .head_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        out.push((
            key,
            head.server_side_encryption()
                .map(|e| e.as_str().to_string()),
            head.ssekms_key_id().map(str::to_string),
        ));
    }
    out
}

/// SSE-KMS with the customer's key on every object: a single oversized event
/// (`FORWARDER_S3_SSE`, `FORWARDER_S3_KMS_KEY_ID`) and a route's packs (`s3_sse`,
/// `s3_kms_key_id` in the routes file), read back with HeadObject.
#[tokio::test]
async fn objects_carry_the_server_side_encryption_asked_for() {
    let q = Queues::create(30).await;
    let s3 = s3().await;
    let (single, packed) = (new_bucket(&s3).await, new_bucket(&s3).await);
    let packed_dest = create_queue(&q.client, &unique("t-packed"), 30).await;
    let routes = routes_file(&format!(
        r#"
[default]
queue_url = "{}"
s3_bucket = "{single}"

[projects.7]
queue_url = "{packed_dest}"
s3_bucket = "{packed}"
s3_offload = "always"
pack = "ndjson"
s3_sse = "aws:kms"
s3_kms_key_id = "alias/packs"
"#,
        q.dest
    ));
    let big = format!(
        r#"{{"event_id":"{:032x}","project_id":42,"organization_id":1,"x":"{}"}}"#,
        1,
        "z".repeat(5000)
    );
    send_bodies(&q.client, &q.source, &[big, event(2, 7), event(3, 7)]).await;
    let with_settings = |command: &mut std::process::Command| {
        command
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_ROUTES_FILE", &routes)
            .env("FORWARDER_MAX_MESSAGE_BYTES", "4096")
            .env("FORWARDER_S3_SSE", "aws:kms")
            .env("FORWARDER_S3_KMS_KEY_ID", "alias/events")
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("FORWARDER_INDEXER", "off");
    };
    let mut check = binary(&["check"]);
    with_settings(&mut check);
    let said = String::from_utf8_lossy(&run_ok(&mut check).stdout).into_owned();
    assert!(
        said.contains(&format!(
            "s3: {single}, encryption SSE-KMS (key alias/events)"
        )) && said.contains(&format!(
            "s3: {packed}, encryption SSE-KMS (key alias/packs)"
        )),
        "{said}"
    );
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    with_settings(&mut run);
    run_ok(&mut run);

    let singles = encryption_of_each(&s3, &single).await;
    assert_eq!(singles.len(), 1, "{singles:?}");
    assert_eq!(singles[0].1.as_deref(), Some("aws:kms"), "{singles:?}");
    assert!(
        singles[0]
            .2
            .as_deref()
            .is_some_and(|k| k.ends_with("alias/events")),
        "{singles:?}"
    );
    let packs = encryption_of_each(&s3, &packed).await;
    assert!(!packs.is_empty());
    for (key, sse, kms) in &packs {
        assert!(key.starts_with("packs/"), "{key}");
        assert_eq!(sse.as_deref(), Some("aws:kms"), "{key}");
        assert!(
            kms.as_deref().is_some_and(|k| k.ends_with("alias/packs")),
            "the route's own key: {kms:?}"
        );
    }
}

/// A KMS key without `aws:kms` is a setting that cannot be meant: refused at start, in
/// one line naming the variable (or the route).
#[test]
fn a_kms_key_without_aws_kms_fails_at_start_naming_its_variable() {
    let out = output_of(
        binary(&["check"])
            .env(
                "FORWARDER_SOURCE_QUEUE_URL",
                "http://127.0.0.1:4566/000000000000/a",
            )
            .env(
                "FORWARDER_DEST_QUEUE_URL",
                "http://127.0.0.1:4566/000000000000/b",
            )
            .env("FORWARDER_S3_KMS_KEY_ID", "alias/events"),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = said
        .lines()
        .find(|l| l.contains("FORWARDER_S3_KMS_KEY_ID"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(line.contains("not aws:kms"), "{line}");

    let routes = routes_file(
        "[default]\nqueue_url = \"http://127.0.0.1:4566/000000000000/b\"\ns3_bucket = \"b\"\ns3_sse = \"AES256\"\ns3_kms_key_id = \"k\"\n",
    );
    let out = output_of(
        binary(&["run"])
            .env(
                "FORWARDER_SOURCE_QUEUE_URL",
                "http://127.0.0.1:4566/000000000000/a",
            )
            .env("FORWARDER_ROUTES_FILE", &routes),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("default.s3_kms_key_id"), "{said}");
}

/// One SNS query-API call to LocalStack (form-encoded); the XML it answers.
fn sns(params: &[(&str, &str)]) -> String {
    use std::io::{Read, Write};
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let body: Vec<String> = params
        .iter()
        .chain(&[("Version", "2010-03-31")])
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let body = body.join("&");
    let host = endpoint().trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&host).unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: AWS4-HMAC-SHA256 Credential=test/20261204/us-east-1/sns/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// The text of the first `<tag>` of an XML answer.
fn xml<'a>(answer: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = answer.find(&open).unwrap() + open.len();
    let end = answer[start..].find(&format!("</{tag}>")).unwrap();
    &answer[start..start + end]
}

/// A source queue subscribed to an SNS topic with raw delivery off (SNS's default): each
/// message is an SNS envelope. The event inside arrives byte for byte as published,
/// with the published message attributes; a notification whose Message is no event is
/// dead-lettered (as received, the envelope) with its own reason.
#[tokio::test]
async fn an_sns_wrapped_source_forwards_the_published_event_byte_for_byte() {
    let q = Queues::create(30).await;
    let dlq = create_queue(&q.client, &unique("t-dlq"), 30).await;
    let topic = sns(&[("Action", "CreateTopic"), ("Name", &unique("t-topic"))]);
    let topic = xml(&topic, "TopicArn").to_string();
    let queue_arn = format!(
        "arn:aws:sqs:us-east-1:000000000000:{}",
        q.source.rsplit('/').next().unwrap()
    );
    sns(&[
        ("Action", "Subscribe"),
        ("TopicArn", &topic),
        ("Protocol", "sqs"),
        ("Endpoint", &queue_arn),
    ]);
    // Escapes, a non-ASCII character and spacing that a re-encoding would change.
    let published = format!(
        "{{\"event_id\":\"{:032x}\", \"project_id\":1,\"organization_id\":2,\"message\":\"caf\\u00e9 \\\"quoted\\\"\\n\",\"x\":\"é\"}}",
        21
    );
    sns(&[
        ("Action", "Publish"),
        ("TopicArn", &topic),
        ("Message", &published),
        ("MessageAttributes.entry.1.Name", "tenant"),
        ("MessageAttributes.entry.1.Value.DataType", "String"),
        ("MessageAttributes.entry.1.Value.StringValue", "acme"),
    ]);
    sns(&[
        ("Action", "Publish"),
        ("TopicArn", &topic),
        ("Message", "not an event"),
    ]);
    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_DLQ_URL", &dlq)
        .env("FORWARDER_FORWARD_ATTRIBUTES", "tenant")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off");
    run_ok(&mut run);

    let arrived = drain_messages(&q.client, &q.dest, 1, Duration::from_secs(10)).await;
    assert_eq!(arrived.len(), 1);
    assert_eq!(
        arrived[0].body.as_deref(),
        Some(published.as_str()),
        "the event as published, not the envelope"
    );
    assert_eq!(attribute(&arrived[0], "tenant").as_deref(), Some("acme"));
    let letters = drain_messages(&q.client, &dlq, 1, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        attribute(&letters[0], "reason").as_deref(),
        Some("invalid_sns_message")
    );
    let original: serde_json::Value =
        serde_json::from_str(letters[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(
        original["Type"], "Notification",
        "the envelope, as received"
    );
    assert_eq!(original["Message"], "not an event");
    assert_eq!(depth(&q.client, &q.source).await, 0);
}

/// `check --send-test-event`: one synthetic event to every route, each reported with
/// whether its destination accepted it and in how long; exit 1 if one refused it. The
/// consumer sees an event with its own `event_id`, the tag `sqs_forwarder_test`, and
/// the message attribute `sqs_forwarder_test = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_sends_a_test_event_to_every_route_and_fails_on_one_that_refuses() {
    let q = Queues::create(30).await;
    let refusing = create_queue(&q.client, &unique("t-refusing"), 30).await;
    let proxy = intercept_proxy(refuse_entries(refusing.clone(), |_| true)).await;
    let routes = routes_file(&format!(
        "[default]\nqueue_url = \"{}\"\n\n[projects.7]\nqueue_url = \"{refusing}\"\n",
        q.dest
    ));
    let check = |send: bool| {
        let mut command = binary(&["check"]);
        command
            .env("AWS_ENDPOINT_URL", &proxy)
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_ROUTES_FILE", &routes)
            .env("FORWARDER_INDEXER", "off");
        if send {
            command.arg("--send-test-event");
        }
        output_of(&mut command, Duration::from_secs(60))
    };
    // A plain check sends nothing.
    assert!(check(false).status.success());
    assert!(drain(&q.client, &q.dest, 1, Duration::from_secs(1))
        .await
        .is_empty());

    let out = check(true);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let accepted = stdout
        .lines()
        .find(|l| l.starts_with("ok: route default: test event "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        accepted.contains(&format!("accepted by {}", q.dest)) && accepted.ends_with(" ms"),
        "{accepted}"
    );
    let refused = stderr
        .lines()
        .find(|l| l.starts_with("error: route project 7: test event refused by"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(refused.contains("message_rejected"), "{refused}");

    let arrived = drain_messages(&q.client, &q.dest, 1, Duration::from_secs(5)).await;
    assert_eq!(arrived.len(), 1);
    assert_eq!(
        attribute(&arrived[0], "sqs_forwarder_test").as_deref(),
        Some("true")
    );
    let body: serde_json::Value = serde_json::from_str(arrived[0].body().unwrap()).unwrap();
    let id = body["event_id"].as_str().unwrap();
    assert!(
        accepted.contains(id),
        "the line names the event: {accepted}"
    );
    assert_eq!(
        body["tags"][0],
        serde_json::json!(["sqs_forwarder_test", "true"])
    );
}

/// A body of about 400 KB that is not an event: dead-lettered as invalid, and over a
/// dead-letter queue of the old 256 KiB limit.
fn big_invalid_body() -> String {
    format!("not an event {}", "x".repeat(400_000))
}

/// A dead-letter queue of 256 KiB, read as each destination's limit is: a message over
/// it goes to FORWARDER_S3_BUCKET and the dead-letter queue gets a pointer to it.
#[tokio::test]
async fn a_message_too_large_for_the_dead_letter_queue_goes_to_the_bucket_behind_a_pointer() {
    let q = Queues::create(30).await;
    let dlq = old_queue(&q).await;
    let bucket = unique("dlq-bucket").to_lowercase();
    let s3 =
        sqs_forwarder::aws::s3_client(&sdk().await, &sqs_forwarder::metrics::Metrics::disabled());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let body = big_invalid_body();
    send_bodies(
        &q.client,
        &q.source,
        &[body.clone(), "small and invalid".into()],
    )
    .await;

    run_ok(
        run_to(&q.source, &q.dest)
            .env("FORWARDER_DLQ_URL", &dlq)
            .env("FORWARDER_S3_BUCKET", &bucket),
    );
    let letters = drain_messages(&q.client, &dlq, 2, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 2, "both dead-lettered");
    let pointer = letters
        .iter()
        .filter_map(|m| m.body.as_deref())
        .find(|b| b.contains("s3Url"))
        .expect("the large one as a pointer");
    let v: serde_json::Value = serde_json::from_str(pointer).unwrap();
    let url = v["s3Url"].as_str().unwrap();
    let key = url.split_once(".amazonaws.com/").unwrap().1;
    assert!(key.starts_with("dead-letters/"), "{key}");
    let stored = s3
        .get_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let bytes = stored.body.collect().await.unwrap().into_bytes();
    assert_eq!(bytes.as_ref(), body.as_bytes(), "stored as received");
    assert!(letters
        .iter()
        .any(|m| m.body.as_deref() == Some("small and invalid")));
    assert_eq!(depth(&q.client, &q.source).await, 0);
}

/// Without a bucket, a message too large for the dead-letter queue is never sent to it
/// (SQS would refuse it every time): it stays in the source, with one line that says
/// why; the rest is dead-lettered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bucket_a_message_too_large_for_the_dead_letter_queue_stays_in_the_source() {
    let q = Queues::create(30).await;
    let dlq = old_queue(&q).await;
    send_bodies(
        &q.client,
        &q.source,
        &[big_invalid_body(), "small and invalid".into()],
    )
    .await;
    let mut run = binary(&["run"]);
    run.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
        .env("FORWARDER_DLQ_URL", &dlq)
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .env("FORWARDER_INDEXER", "off")
        .env("RUST_LOG", "warn");
    let worker = spawn_binary(&mut run);
    let letters = drain_messages(&q.client, &dlq, 1, Duration::from_secs(20)).await;
    assert_eq!(
        letters
            .iter()
            .filter_map(|m| m.body.as_deref())
            .collect::<Vec<_>>(),
        ["small and invalid"]
    );
    worker.terminate();
    let out = worker.finish(Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("dead-letter queue did not accept the message"))
        .collect();
    assert_eq!(said.len(), 1, "one line: {stderr}");
    assert!(
        said[0].contains("over the dead-letter queue's 262144-byte MaximumMessageSize"),
        "it says why: {}",
        said[0]
    );
    assert_eq!(depth(&q.client, &q.source).await, 1, "left in the source");
    assert!(drain(&q.client, &dlq, 1, Duration::from_secs(2))
        .await
        .is_empty());
}
