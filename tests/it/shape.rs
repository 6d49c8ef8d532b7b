//! What each destination receives: only the fields it wants (`exclude_fields`,
//! `include_fields`, or the global `FORWARDER_*_FIELDS`), and only the events it wants
//! (`filter`, `FORWARDER_FILTER`), with the real binary on LocalStack.

use std::time::Duration;

use crate::helpers::*;

const ID1: &str = "00000000000000000000000000000001";

/// Project 1's event: spaces and member order as a client might send them.
fn rich_event() -> String {
    format!(
        r#"{{ "event_id": "{ID1}", "project_id": 1, "organization_id": 7,
  "request": {{ "url": "/checkout", "cookies": "session=secret" }},
  "exception": {{"values": [{{"type": "ZeroDivisionError", "stacktrace": {{"frames": [{{"function": "pay", "vars": {{"card": "4111"}}}}, {{"function": "main", "vars": {{}}, "lineno": 3}}]}}}}]}},
  "user": {{"id": "u-1", "ip_address": "10.1.2.3"}}, "level": "error" }}"#
    )
}

fn body(id: u128, project: u64, level: &str, extra: &str) -> String {
    format!(
        r#"{{"event_id":"{id:032x}","project_id":{project},"organization_id":7,"level":"{level}","user":{{"id":"u","ip_address":"10.0.0.9"}}{extra}}}"#
    )
}

#[tokio::test]
async fn each_route_gets_only_its_fields_and_its_events() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("shape");
    let source = create_queue(&client, &format!("{name}-src"), 30).await;
    let [a, b, c, d] = [
        create_queue(&client, &format!("{name}-a"), 30).await,
        create_queue(&client, &format!("{name}-b"), 30).await,
        create_queue(&client, &format!("{name}-c"), 30).await,
        create_queue(&client, &format!("{name}-d"), 30).await,
    ];
    let routes = routes_file(&format!(
        "[default]\nqueue_url = \"{d}\"\n\n\
         [projects.1]\nqueue_url = \"{a}\"\n\
         exclude_fields = [\"request.cookies\", \"exception.values.*.stacktrace.frames.*.vars\"]\n\n\
         [projects.2]\nqueue_url = \"{b}\"\ninclude_fields = [\"level\", \"user.id\"]\n\n\
         [projects.3]\nqueue_url = \"{c}\"\n\
         filter = {{ \"tags.customer\" = [\"acme\", \"globex\"], type = \"error\" }}\n"
    ));
    let p2 = r#"{"event_id":"00000000000000000000000000000002","project_id":2,"organization_id":7,"level":"fatal","user":{"id":"u-2","email":"x@y"},"extra":{"a":1}}"#;
    let tagged = |id: u128, customer: &str, kind: &str| {
        format!(
            r#"{{"event_id":"{id:032x}","project_id":3,"organization_id":7,"type":"{kind}","tags":[["customer","{customer}"]]}}"#
        )
    };
    let bodies = vec![
        rich_event(),
        p2.to_string(),
        tagged(3, "acme", "error"),
        tagged(4, "initech", "error"),
        tagged(5, "globex", "transaction"),
        body(6, 9, "error", ""),
        body(7, 9, "info", ""),
    ];
    send_bodies(&client, &source, &bodies).await;

    let statsd = StatsdCapture::start();
    let env = |cmd: &mut std::process::Command| {
        cmd.env("FORWARDER_SOURCE_QUEUE_URL", &source)
            .env("FORWARDER_ROUTES_FILE", &routes)
            // The global defaults: for the routes without their own (the default here).
            .env("FORWARDER_EXCLUDE_FIELDS", "user.ip_address")
            .env("FORWARDER_FILTER", "level=error|fatal")
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string());
    };
    let mut check = binary(&["check"]);
    env(&mut check);
    let out = run_ok(&mut check);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("fields: exclude request.cookies,exception.values.*.stacktrace.frames.*.vars; filter: level=error|fatal"),
        "{stdout}"
    );
    assert!(stdout.contains("fields: include level,user.id"), "{stdout}");
    assert!(
        stdout.contains("filter: tags.customer=acme|globex,type=error"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fields: exclude user.ip_address; filter: level=error|fatal"),
        "the default route takes the globals: {stdout}"
    );

    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    env(&mut run);
    run_ok(&mut run);

    // Excluded fields: spliced out, every kept byte as it came.
    let got = drain(&client, &a, 1, Duration::from_secs(10)).await;
    let want = format!(
        r#"{{ "event_id": "{ID1}", "project_id": 1, "organization_id": 7,
  "request": {{ "url": "/checkout" }},
  "exception": {{"values": [{{"type": "ZeroDivisionError", "stacktrace": {{"frames": [{{"function": "pay"}}, {{"function": "main", "lineno": 3}}]}}}}]}},
  "user": {{"id": "u-1", "ip_address": "10.1.2.3"}}, "level": "error" }}"#
    );
    assert_eq!(got, [want]);
    // Included fields: only those and the required ones.
    let got = drain(&client, &b, 1, Duration::from_secs(10)).await;
    assert_eq!(
        got,
        [
            r#"{"event_id":"00000000000000000000000000000002","project_id":2,"organization_id":7,"level":"fatal","user":{"id":"u-2"}}"#
        ]
    );
    // Filters: by tag and by field, all entries.
    let got = drain(&client, &c, 3, Duration::from_secs(5)).await;
    assert_eq!(got, [tagged(3, "acme", "error")]);
    let got = drain(&client, &d, 2, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        [format!(
            r#"{{"event_id":"{:032x}","project_id":9,"organization_id":7,"level":"error","user":{{"id":"u"}}}}"#,
            6
        )]
    );
    // The skipped ones are counted and deleted, like an unrouted project's.
    let lines = statsd.lines();
    assert_eq!(
        statsd_sum(&lines, "forwarder.event.skipped", "reason:filtered"),
        3,
        "{lines:#?}"
    );
    assert_eq!(depth(&client, &source).await, 0);
}

#[tokio::test]
async fn a_bad_path_or_filter_fails_at_start_and_check_reports_it() {
    let q = Queues::create(30).await;
    for (var, value, says) in [
        ("FORWARDER_EXCLUDE_FIELDS", "user..ip", "empty segment"),
        ("FORWARDER_EXCLUDE_FIELDS", "event_id", "cannot exclude"),
        ("FORWARDER_FILTER", "level", "expected path=value"),
    ] {
        for command in ["run", "check"] {
            let mut cmd = binary(&[command]);
            cmd.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
                .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
                .env("FORWARDER_INDEXER", "off")
                .env(var, value);
            let out = output_of(&mut cmd, Duration::from_secs(60));
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_ne!(out.status.code(), Some(0), "{command} {var}={value}: {all}");
            let line = all
                .lines()
                .find(|l| l.starts_with("error:"))
                .unwrap_or_else(|| panic!("no error line: {all}"));
            assert!(line.contains(var) && line.contains(says), "{line}");
        }
    }
    // Both settings on one route: refused in the routes file.
    let routes = routes_file(&format!(
        "[default]\nqueue_url = \"{}\"\nexclude_fields = [\"a\"]\ninclude_fields = [\"b\"]\n",
        q.dest
    ));
    let mut cmd = binary(&["run"]);
    cmd.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
        .env("FORWARDER_ROUTES_FILE", &routes)
        .env("FORWARDER_INDEXER", "off");
    let out = output_of(&mut cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("FORWARDER_ROUTES_FILE") && stderr.contains("cannot both be set"),
        "{stderr}"
    );
}
