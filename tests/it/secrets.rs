//! No secret in any log line, error or Debug output: the binary runs at the most verbose
//! log level with a database password, AWS keys, a session token and a routes file that
//! names a profile with its own keys, through a successful run and through failures
//! that print errors. None of the secrets appears in what it writes.

use std::process::{Command, Output};
use std::time::Duration;

use crate::helpers::*;

const DB_PASSWORD: &str = "pw-Zq81xK";
const AWS_SECRET: &str = "aws-secret-Hn27vQ";
const SESSION_TOKEN: &str = "session-token-Tr55mW";
const PROFILE_SECRET: &str = "profile-secret-Lp09aX";
const REDIS_PASSWORD: &str = "redis-pw-Vb63sD";

const SECRETS: [&str; 5] = [
    DB_PASSWORD,
    AWS_SECRET,
    SESSION_TOKEN,
    PROFILE_SECRET,
    REDIS_PASSWORD,
];

fn run(args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sqs-forwarder"))
        .args(args)
        .envs(aws_env())
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .env("RUST_LOG", "trace")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output_within(Duration::from_secs(120))
}

fn assert_no_secret(what: &str, out: &Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.len() > 200,
        "{what}: too little output to check: {text}"
    );
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what}: a secret reached the output:\n{}",
            text.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_or_debug_output() {
    let q = Queues::create(30).await;
    send_bodies(&q.client, &q.source, &[event(1, 1), "not json".into()]).await;

    // The database password, in a URL the worker uses (trust auth ignores it).
    let pg = postgres_url().replacen("postgres@", &format!("postgres:{DB_PASSWORD}@"), 1);
    // A routes file naming a profile whose keys are in a credentials file.
    let dir = std::env::temp_dir().join(unique("secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    let credentials = dir.join("credentials");
    std::fs::write(
        &credentials,
        format!("[other]\naws_access_key_id = other\naws_secret_access_key = {PROFILE_SECRET}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("config"), "[profile other]\nregion = us-east-1\n").unwrap();
    let routes = dir.join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "[projects.1]\nqueue_url = \"{}\"\ncredentials = {{ profile = \"other\" }}\n",
            q.dest
        ),
    )
    .unwrap();
    let env = [
        ("FORWARDER_SOURCE_QUEUE_URL", q.source.clone()),
        ("FORWARDER_ROUTES_FILE", routes.display().to_string()),
        ("FORWARDER_INDEXER_DATABASE_URL", pg.clone()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            credentials.display().to_string(),
        ),
        ("FORWARDER_EXIT_WHEN_IDLE", "2".into()),
        ("FORWARDER_RECEIVE_WAIT_SECONDS", "1".into()),
        // The test Redis has no password: it refuses the AUTH, and the worker logs why
        // (lookups go to the store), still without the password.
        (
            "FORWARDER_INDEXER_CACHE_URL",
            format!("redis://:{REDIS_PASSWORD}@127.0.0.1:6379"),
        ),
    ];

    // A whole run at trace level: start-up configuration, SDK requests, the indexer.
    let out = run(&["run"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        drain(&q.client, &q.dest, 1, std::time::Duration::from_secs(5))
            .await
            .len(),
        1
    );
    assert_no_secret("run", &out);

    // The same as JSON logs.
    let mut json_env = env.to_vec();
    json_env.push(("FORWARDER_LOG_FORMAT", "json".into()));
    assert_no_secret("run, json logs", &run(&["check"], &json_env));

    // Errors: a database that refuses the connection, and a malformed database URL.
    let mut bad_db = env.to_vec();
    bad_db[2].1 = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/test");
    let out = run(&["run"], &bad_db);
    assert!(!out.status.success());
    assert_no_secret("unreachable database", &out);
    bad_db[2].1 = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:notaport/test");
    let out = run(&["run"], &bad_db);
    assert!(!out.status.success());
    assert_no_secret("malformed database URL", &out);

    // An invalid setting next to the secrets: the one-line error names the variable only.
    let mut bad_setting = env.to_vec();
    bad_setting.push(("FORWARDER_WORKERS", "zero".into()));
    let out = run(&["run"], &bad_setting);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FORWARDER_WORKERS"), "{stderr}");
    for secret in SECRETS {
        assert!(!stderr.contains(secret), "{stderr}");
    }
}

#[test]
fn config_debug_and_display_hide_the_database_password() {
    use sqs_forwarder::config::{cli::Cli, Needs};
    let url = format!("postgres://user:{DB_PASSWORD}@db.internal:5432/indexer");
    let cli = Cli::parse_or_one_line([
        "sqs-forwarder",
        "--source-queue-url",
        "http://127.0.0.1:4566/000000000000/a",
        "--dest-queue-url",
        "http://127.0.0.1:4566/000000000000/b",
        "--indexer-database-url",
        url.as_str(),
        "run",
    ])
    .unwrap();
    let config = cli
        .settings
        .validate(Needs::SourceAndDestination, None)
        .unwrap();
    let shown = [
        format!("{cli:?}"),
        format!("{config:?}"),
        format!("{config:#?}"),
        config.to_string(),
    ];
    for shown in &shown {
        assert!(!shown.contains(DB_PASSWORD), "{shown}");
    }
    assert!(
        shown[1].contains("db.internal"),
        "the rest of the URL is kept"
    );
}
