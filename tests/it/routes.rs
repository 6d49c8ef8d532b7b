//! Per-project routes against LocalStack: each project to its destination, a default,
//! projects without a route skipped, one forwarder per destination, invalid files.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use sqs_forwarder::app::App;
use sqs_forwarder::config::routes;
use sqs_forwarder::metrics::Metrics;

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("routes"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn each_project_goes_to_its_route_and_the_rest_to_the_default() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("t");
    let source = create_queue(&client, &format!("{name}-src"), 30).await;
    let acme = create_fifo_queue(&client, &format!("{name}-acme")).await;
    let shared = create_queue(&client, &format!("{name}-shared"), 30).await;
    let fallback = create_queue(&client, &format!("{name}-default"), 30).await;
    let path = write(
        "routes.toml",
        &format!(
            "[default]\nqueue_url = \"{fallback}\"\n\n\
             [projects.1]\nqueue_url = \"{acme}\"\nmessage_group_id = \"p-{{project_id}}\"\nregion = \"us-east-1\"\n\n\
             [projects.2]\nqueue_url = \"{shared}\"\n\n\
             [projects.3]\nqueue_url = \"{shared}\"\n"
        ),
    );
    let bodies: Vec<String> = [1u64, 2, 3, 4, 1]
        .iter()
        .enumerate()
        .map(|(i, p)| event(i as u128 + 1, *p))
        .collect();
    send_bodies(&client, &source, &bodies).await;

    let mut config = test_config(&source, &fallback, None);
    config.dest_queue_url = None;
    config.routes = Some(routes::load(&path).unwrap());
    let app = App::from_sdk(config, &sdk().await, Metrics::disabled()).unwrap();
    let router = app.router().await.unwrap();
    assert!(
        Arc::ptr_eq(router.route(2).unwrap(), router.route(3).unwrap()),
        "one forwarder per destination"
    );
    assert!(!Arc::ptr_eq(
        router.route(1).unwrap(),
        router.route(2).unwrap()
    ));
    let summary = tokio::time::timeout(Duration::from_secs(60), app.run(std::future::pending()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.totals.forwarded, 5);

    let ids = |bodies: Vec<String>| -> Vec<String> {
        let mut ids: Vec<String> = bodies.iter().map(|b| event_id_of(b)).collect();
        ids.sort();
        ids
    };
    let want = |projects: &[u64]| -> Vec<String> {
        let mut ids: Vec<String> = bodies
            .iter()
            .filter(|b| projects.contains(&sqs_forwarder::event::decode(b).unwrap().project_id))
            .map(|b| event_id_of(b))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(drain(&client, &acme, 3, Duration::from_secs(5)).await),
        want(&[1])
    );
    assert_eq!(
        ids(drain(&client, &shared, 3, Duration::from_secs(5)).await),
        want(&[2, 3])
    );
    assert_eq!(
        ids(drain(&client, &fallback, 2, Duration::from_secs(5)).await),
        want(&[4])
    );
}

#[tokio::test]
async fn without_a_default_unrouted_projects_are_skipped_and_counted() {
    let q = Queues::create(1).await;
    let path = write(
        "routes.json",
        &format!(r#"{{"projects": {{"1": {{"queue_url": "{}"}}}}}}"#, q.dest),
    );
    send_bodies(&q.client, &q.source, &[event(1, 1), event(2, 9)]).await;
    let statsd = StatsdCapture::start();
    let mut config = q.config(Some(statsd.addr));
    config.dest_queue_url = None;
    config.routes = Some(routes::load(&path).unwrap());
    let metrics = sqs_forwarder::metrics::sink::build(&config.metrics).unwrap();
    let app = App::from_sdk(config, &sdk().await, metrics).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), app.run(std::future::pending()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            summary.totals.forwarded,
            summary.totals.skipped,
            summary.totals.deleted
        ),
        (1, 1, 2)
    );
    let arrived = drain(&q.client, &q.dest, 2, Duration::from_secs(3)).await;
    assert_eq!(
        arrived.iter().map(|b| event_id_of(b)).collect::<Vec<_>>(),
        vec![format!("{:032x}", 1)]
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(depth(&q.client, &q.source).await, 0);
    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        l.iter().any(|l| l.contains("skip_unconfigured"))
    });
    assert!(
        lines.contains(&"forwarder.event.skipped:1|c|#reason:skip_unconfigured".to_string()),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn the_binary_takes_a_routes_file_and_refuses_an_invalid_one_at_start() {
    let q = Queues::create(30).await;
    let good = write(
        "routes.json",
        &format!(r#"{{"default": {{"queue_url": "{}"}}}}"#, q.dest),
    );
    let bad = write("routes.toml", "[projects.x]\nqueue_url = 1\n");
    let run = |routes: &std::path::Path, command: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
            .args([command])
            .envs(aws_env())
            .env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_ROUTES_FILE", routes)
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_EXIT_WHEN_IDLE", "1")
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .output_within(Duration::from_secs(120))
    };
    let out = run(&good, "check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains(&format!("route default: reached {}", q.dest)));

    let out = run(&bad, "run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: FORWARDER_ROUTES_FILE: "), "{err}");
}

#[tokio::test]
async fn routes_send_with_a_named_profile_and_with_an_assumed_role() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("t");
    let source = create_queue(&client, &format!("{name}-src"), 30).await;
    let by_profile = create_queue(&client, &format!("{name}-profile"), 30).await;
    let by_role = create_queue(&client, &format!("{name}-role"), 30).await;
    send_bodies(&client, &source, &[event(1, 1), event(2, 2)]).await;
    let dir = std::env::temp_dir().join(unique("aws"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config"), "[profile other]\nregion = us-east-1\n").unwrap();
    std::fs::write(
        dir.join("credentials"),
        "[other]\naws_access_key_id = other\naws_secret_access_key = other-secret\n",
    )
    .unwrap();
    let routes = write(
        "routes.toml",
        &format!(
            "[projects.1]\nqueue_url = \"{by_profile}\"\ncredentials = {{ profile = \"other\" }}\n\n\
             [projects.2]\nqueue_url = \"{by_role}\"\n\
             credentials = {{ role_arn = \"arn:aws:iam::000000000000:role/forwarder\", external_id = \"acme\" }}\n"
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
        .arg("run")
        .envs(aws_env())
        .env("AWS_CONFIG_FILE", dir.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("credentials"))
        .env("FORWARDER_SOURCE_QUEUE_URL", &source)
        .env("FORWARDER_ROUTES_FILE", &routes)
        .env("FORWARDER_INDEXER", "off")
        .env("FORWARDER_EXIT_WHEN_IDLE", "2")
        .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
        .output_within(Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("other-secret"), "a secret reached the log");
    let got = drain(&client, &by_profile, 2, Duration::from_secs(3)).await;
    assert_eq!(
        got.iter().map(|b| event_id_of(b)).collect::<Vec<_>>(),
        vec![format!("{:032x}", 1)]
    );
    let got = drain(&client, &by_role, 2, Duration::from_secs(3)).await;
    assert_eq!(
        got.iter().map(|b| event_id_of(b)).collect::<Vec<_>>(),
        vec![format!("{:032x}", 2)]
    );
}

/// An event of `organization`'s `project`.
fn org_event(id: u128, organization: u64, project: u64) -> String {
    format!(
        r#"{{"event_id":"{id:032x}","project_id":{project},"organization_id":{organization},"message":"boom"}}"#
    )
}

/// Sentry's organization-level forwarder, with the real binary: a project route first,
/// an organization's override (its own queue), a project switched off, an organization
/// that enrolls only what it lists, and the default for the rest. The skipped events
/// are counted with their own reasons and deleted; `check` says which route each
/// listed organization's projects take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organization_routes_with_overrides_and_switched_off_projects() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = unique("t");
    let queue = |what: &'static str| {
        let client = client.clone();
        let name = name.clone();
        async move { create_queue(&client, &format!("{name}-{what}"), 30).await }
    };
    let (source, fallback, p42, org7, org7_p8, org5_p6) = (
        queue("src").await,
        queue("default").await,
        queue("p42").await,
        queue("org7").await,
        queue("org7-p8").await,
        queue("org5-p6").await,
    );
    let path = routes_file(&format!(
        "[default]\nqueue_url = \"{fallback}\"\n\n\
         [projects.42]\nqueue_url = \"{p42}\"\n\n\
         [organizations.7]\nqueue_url = \"{org7}\"\n\n\
         [organizations.7.projects.8]\nqueue_url = \"{org7_p8}\"\n\n\
         [organizations.7.projects.9]\nenabled = false\n\n\
         [organizations.5]\nqueue_url = \"{fallback}\"\nenroll_new_projects = false\n\n\
         [organizations.5.projects.6]\nqueue_url = \"{org5_p6}\"\n"
    ));
    // (organization, project) of each event, and where it must go (None: skipped).
    let cases: [(u64, u64, Option<&str>); 7] = [
        (7, 42, Some(p42.as_str())),
        (7, 8, Some(org7_p8.as_str())),
        (7, 9, None),
        (7, 10, Some(org7.as_str())),
        (5, 6, Some(org5_p6.as_str())),
        (5, 11, None),
        (3, 12, Some(fallback.as_str())),
    ];
    let bodies: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (o, p, _))| org_event(i as u128 + 1, *o, *p))
        .collect();
    send_bodies(&client, &source, &bodies).await;

    let check = run_ok(
        binary(&["check"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &source)
            .env("FORWARDER_ROUTES_FILE", &path)
            .env("FORWARDER_INDEXER", "off"),
    );
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    for line in [
        format!("organization 7 project 8: [organizations.7.projects.8] {org7_p8}"),
        "organization 7 project 9: skipped (skip_project_disabled)".to_string(),
        format!("organization 7, projects not listed: [organizations.7] {org7}"),
        format!("organization 5 project 6: [organizations.5.projects.6] {org5_p6}"),
        "organization 5, projects not listed: skipped (skip_not_enrolled)".to_string(),
        format!("route organization 7 project 8: reached {org7_p8}"),
    ] {
        assert!(said.contains(&line), "{line:?} not in:\n{said}");
    }

    let statsd = StatsdCapture::start();
    run_ok(
        binary(&["run", "--exit-when-idle", "2"])
            .env("FORWARDER_SOURCE_QUEUE_URL", &source)
            .env("FORWARDER_ROUTES_FILE", &path)
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("FORWARDER_INDEXER", "off")
            .env("FORWARDER_STATSD_ADDR", statsd.addr.to_string())
            .env("RUST_LOG", "warn"),
    );
    for queue in [&p42, &org7, &org7_p8, &org5_p6, &fallback] {
        let mut want: Vec<String> = cases
            .iter()
            .enumerate()
            .filter(|(_, (_, _, to))| *to == Some(queue.as_str()))
            .map(|(i, _)| format!("{:032x}", i + 1))
            .collect();
        want.sort();
        let mut got: Vec<String> = drain(&client, queue, want.len(), Duration::from_secs(10))
            .await
            .iter()
            .map(|b| event_id_of(b))
            .collect();
        got.sort();
        assert_eq!(got, want, "at {queue}");
    }
    let lines = statsd.lines();
    for reason in ["skip_project_disabled", "skip_not_enrolled"] {
        assert_eq!(
            statsd_sum(
                &lines,
                "forwarder.event.skipped",
                &format!("reason:{reason}")
            ),
            1,
            "{reason}: {lines:?}"
        );
    }
    assert_eq!(
        depth(&client, &source).await,
        0,
        "skipped events are deleted"
    );
}
