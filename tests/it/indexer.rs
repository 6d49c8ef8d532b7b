//! The indexer against SQLite and the real PostgreSQL: stable ids, races between
//! processes, limits, the shared range, and the CLI.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use crate::helpers::*;
use sqs_forwarder::indexer::shared::MAX_SHARED_ID;
use sqs_forwarder::indexer::{BulkRequest, FetchType, Indexer, IndexerSettings, Store, WriteLimit};
use sqs_forwarder::metrics::Metrics;
use sqs_forwarder::retry::RetryPolicy;

const BIN: &str = env!("CARGO_BIN_EXE_sqs-forwarder");

async fn indexer(url: &str, write_limit: Option<WriteLimit>) -> Indexer {
    let store = Store::connect(url, 4)
        .await
        .expect("store (is PostgreSQL up?)");
    Indexer::new(
        store,
        &IndexerSettings {
            cache_size: 10_000,
            write_limit,
        },
        RetryPolicy::default(),
        Metrics::disabled(),
    )
}

fn backends() -> Vec<(&'static str, String)> {
    vec![("sqlite", sqlite_url()), ("postgres", postgres_url())]
}

fn request(org: u64, strings: &[String]) -> BulkRequest<'_> {
    [(org, strings.iter().map(String::as_str).collect())]
        .into_iter()
        .collect()
}

#[tokio::test]
async fn ids_are_stable_across_restarts_and_come_from_each_layer() {
    for (name, url) in backends() {
        let org = random_org();
        let strings: Vec<String> = (0..50).map(|i| format!("checkout-{i}")).collect();

        let first = indexer(&url, None).await;
        let created = first.bulk_record(&request(org, &strings)).await.unwrap();
        let ids: HashMap<&str, u64> = created[&org]
            .iter()
            .map(|(s, l)| (*s, l.id.unwrap()))
            .collect();
        assert!(
            created[&org]
                .values()
                .all(|l| l.fetch_type == FetchType::FirstSeen),
            "{name}"
        );
        assert!(
            ids.values().all(|&id| id > MAX_SHARED_ID),
            "{name}: a stored id in the shared range"
        );
        assert_eq!(
            ids.values().collect::<HashSet<_>>().len(),
            50,
            "{name}: ids are distinct"
        );

        let cached = first.bulk_record(&request(org, &strings)).await.unwrap();
        assert!(
            cached[&org]
                .values()
                .all(|l| l.fetch_type == FetchType::Cache),
            "{name}"
        );
        first.store().close().await;

        // A restart: new pool, cold cache. Same ids, read from the store.
        let second = indexer(&url, None).await;
        let read = second.bulk_record(&request(org, &strings)).await.unwrap();
        for (s, lookup) in &read[&org] {
            assert_eq!(lookup.fetch_type, FetchType::Db, "{name}");
            assert_eq!(lookup.id, Some(ids[s]), "{name}: {s} changed id");
        }
        assert_eq!(
            second.resolve(org, "checkout-7").await.unwrap(),
            Some(ids["checkout-7"])
        );
        assert_eq!(
            second
                .reverse_resolve(org, ids["checkout-7"])
                .await
                .unwrap()
                .as_deref(),
            Some("checkout-7")
        );
        // Organizations do not share stored strings.
        assert_eq!(
            second
                .resolve(org.wrapping_add(1), "checkout-7")
                .await
                .unwrap(),
            None
        );
        second.store().close().await;
    }
}

#[tokio::test]
async fn shared_strings_take_the_reserved_range_and_are_never_stored() {
    for (name, url) in backends() {
        let org = random_org();
        let ix = indexer(&url, None).await;
        let strings = vec!["environment".to_string(), "production".to_string()];
        let found = ix.bulk_record(&request(org, &strings)).await.unwrap();
        for s in &strings {
            let l = found[&org][s.as_str()];
            assert_eq!(l.fetch_type, FetchType::Shared, "{name}");
            assert!(l.id.unwrap() <= MAX_SHARED_ID);
        }
        assert_eq!(found[&org]["environment"].id, Some(1));
        let stored = ix
            .store()
            .fetch(&[(org, "environment"), (org, "production")])
            .await
            .unwrap();
        assert!(stored.is_empty(), "{name}: shared strings were stored");
        assert_eq!(
            ix.reverse_resolve(org, 1).await.unwrap().as_deref(),
            Some("environment")
        );
        ix.store().close().await;
    }
}

#[tokio::test]
async fn limits_hold_and_refused_strings_get_no_id() {
    for (name, url) in backends() {
        let org = random_org();
        let limit = WriteLimit {
            max: 5,
            window: Duration::from_secs(60),
        };
        let ix = indexer(&url, Some(limit)).await;
        let strings: Vec<String> = (0..8).map(|i| format!("new-{i}")).collect();
        let found = ix.bulk_record(&request(org, &strings)).await.unwrap();
        let first_seen = found[&org]
            .values()
            .filter(|l| l.fetch_type == FetchType::FirstSeen)
            .count();
        let limited: Vec<_> = found[&org]
            .values()
            .filter(|l| l.fetch_type == FetchType::Limited)
            .collect();
        assert_eq!((first_seen, limited.len()), (5, 3), "{name}");
        assert!(limited.iter().all(|l| l.id.is_none()));

        // Known strings are still answered past the limit; new ones are not.
        let again = ix.bulk_record(&request(org, &strings)).await.unwrap();
        assert_eq!(
            again[&org].values().filter(|l| l.id.is_some()).count(),
            5,
            "{name}"
        );
        // Another organization has its own budget.
        let other = random_org();
        assert!(ix.record(other, "new-0").await.unwrap().is_some(), "{name}");

        // Length is counted in characters, at most 200.
        let unlimited = indexer(&url, None).await;
        let ok = "é".repeat(200);
        let long = "x".repeat(201);
        assert!(
            unlimited.record(org, &ok).await.unwrap().is_some(),
            "{name}: 200 characters"
        );
        let found = unlimited
            .bulk_record(&request(org, std::slice::from_ref(&long)))
            .await
            .unwrap();
        assert_eq!(
            found[&org][long.as_str()].fetch_type,
            FetchType::Limited,
            "{name}"
        );
        assert_eq!(found[&org][long.as_str()].id, None);
        ix.store().close().await;
        unlimited.store().close().await;
    }
}

#[tokio::test]
async fn resolve_reads_only() {
    for (name, url) in backends() {
        let org = random_org();
        let ix = indexer(&url, None).await;
        assert_eq!(ix.resolve(org, "never-seen").await.unwrap(), None, "{name}");
        assert!(
            ix.store()
                .fetch(&[(org, "never-seen")])
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        ix.store().close().await;
    }
}

/// Runs `indexer record` in a process of its own; returns string → id.
fn record_in_process(url: &str, org: u64, strings: &[String]) -> Spawned {
    spawn_with_stdin(
        Command::new(BIN)
            .args(["indexer", "record", "--org", &org.to_string()])
            .env("FORWARDER_INDEXER_DATABASE_URL", url)
            .env("FORWARDER_INDEXER_WRITE_LIMIT", "off")
            .env("FORWARDER_INDEXER_POOL_SIZE", "2"),
        Some(strings.join("\n").into_bytes()),
    )
}

fn ids_of(child: Spawned) -> HashMap<String, u64> {
    let out = child.finish_blocking(Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (s, id) = l.rsplit_once('\t').unwrap();
            (s.to_string(), id.parse().unwrap())
        })
        .collect()
}

#[test]
fn two_processes_racing_on_the_same_new_strings_get_identical_ids() {
    for (name, url) in backends() {
        let org = random_org();
        let strings: Vec<String> = (0..10_000).map(|i| format!("release-{i}")).collect();
        let mut reversed = strings.clone();
        reversed.reverse();
        let a = record_in_process(&url, org, &strings);
        let b = record_in_process(&url, org, &reversed);
        let (a, b) = (ids_of(a), ids_of(b));
        assert_eq!(a.len(), 10_000, "{name}");
        assert_eq!(a, b, "{name}: the two processes disagree");
        assert_eq!(
            a.values().collect::<HashSet<_>>().len(),
            10_000,
            "{name}: ids collide"
        );
    }
}

#[test]
fn indexer_cli_resolves_and_reverses() {
    for (name, url) in backends() {
        let org = random_org().to_string();
        let run = |args: &[&str]| {
            output_of(
                Command::new(BIN)
                    .args(args)
                    .env("FORWARDER_INDEXER_DATABASE_URL", &url),
                Duration::from_secs(30),
            )
        };
        let out = run(&["indexer", "record", "--org", &org, "web@2.0.1"]);
        assert!(out.status.success(), "{name}");
        let id = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .rsplit('\t')
            .next()
            .unwrap()
            .to_string();
        let out = run(&["indexer", "resolve", "--org", &org, "web@2.0.1"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id, "{name}");
        let out = run(&["indexer", "reverse", "--org", &org, &id]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "web@2.0.1",
            "{name}"
        );
        let out = run(&["indexer", "reverse", "--org", &org, "999999999"]);
        assert_eq!(out.status.code(), Some(1), "{name}");
    }
}

#[tokio::test]
async fn lookups_are_counted_by_fetch_type() {
    let statsd = StatsdCapture::start();
    let metrics =
        sqs_forwarder::metrics::sink::udp(&sqs_forwarder::metrics::sink::StatsdSettings {
            addr: statsd.addr,
            prefix: String::new(),
            tags: Vec::new(),
            sample_rate: 1.0,
        })
        .unwrap();
    let store = Store::connect(&sqlite_url(), 2).await.unwrap();
    let limit = WriteLimit {
        max: 3,
        window: Duration::from_secs(60),
    };
    let ix = Indexer::new(
        store,
        &IndexerSettings {
            cache_size: 100,
            write_limit: Some(limit),
        },
        RetryPolicy::default(),
        metrics.clone(),
    );
    let org = random_org();
    let strings: Vec<String> = ["environment", "production", "a", "b", "c", "d"]
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::once("x".repeat(201)))
        .collect();
    let first = ix.bulk_record(&request(org, &strings)).await.unwrap();
    let created: Vec<String> = first[&org]
        .iter()
        .filter(|(_, l)| l.fetch_type == FetchType::FirstSeen)
        .map(|(s, _)| s.to_string())
        .collect();
    ix.bulk_record(&request(org, &created)).await.unwrap();
    metrics.flush(Duration::from_secs(1));
    let want = [
        "forwarder.indexer.lookup:2|c|#fetch_type:shared",
        "forwarder.indexer.lookup:3|c|#fetch_type:first_seen",
        "forwarder.indexer.lookup:2|c|#fetch_type:limited",
        "forwarder.indexer.refused:1|c|#reason:write_limit",
        "forwarder.indexer.refused:1|c|#reason:too_long",
        "forwarder.indexer.lookup:3|c|#fetch_type:cache",
    ];
    let lines = statsd.wait_for(Duration::from_secs(5), |l| {
        want.iter().all(|w| l.iter().any(|x| x == w))
    });
    for w in want {
        assert!(lines.iter().any(|l| l == w), "{w} missing from {lines:#?}");
    }
    assert!(lines
        .iter()
        .any(|l| l.starts_with("forwarder.indexer.store.duration:")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("forwarder.indexer.cache.size:")));
}

#[tokio::test]
async fn a_stale_last_seen_is_refreshed_after_the_read_never_by_it() {
    for (name, url) in backends() {
        let org = random_org();
        let ix = indexer(&url, None).await;
        ix.record(org, "old-release").await.unwrap();
        let org_i = org as i64;
        let two_days_ago = |store: &Store| {
            let store = store.clone();
            async move {
                match store {
                    Store::Postgres(pool) => sqlx::query(
                        "UPDATE indexer_strings SET last_seen = now() - interval '2 days' WHERE organization_id = $1",
                    )
                    .bind(org_i)
                    .execute(&pool)
                    .await
                    .map(drop),
                    Store::Sqlite(pool) => sqlx::query(
                        "UPDATE indexer_strings SET last_seen = last_seen - 172800 WHERE organization_id = ?1",
                    )
                    .bind(org_i)
                    .execute(&pool)
                    .await
                    .map(drop),
                }
                .unwrap()
            }
        };
        two_days_ago(ix.store()).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // A store read never writes.
        let stale = ix.store().fetch(&[(org, "old-release")]).await.unwrap();
        let again = ix.store().fetch(&[(org, "old-release")]).await.unwrap();
        assert!(again[0].last_seen < now - 86_400, "{name}: {stale:?}");
        // A lookup that reads it from the store refreshes it after the fact.
        let cold = indexer(&url, None).await;
        cold.record(org, "old-release").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let fresh = ix.store().fetch(&[(org, "old-release")]).await.unwrap();
            if fresh[0].last_seen >= now - 60 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: last_seen not refreshed: {fresh:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cold.store().close().await;
        ix.store().close().await;
    }
}

#[tokio::test]
async fn a_string_the_store_cannot_hold_gets_no_id_and_fails_nothing_else() {
    for (name, url) in backends() {
        let org = random_org();
        let ix = indexer(&url, None).await;
        let nul = "a\0b".to_string();
        let surrogate = format!("{}\"\\ud944\"", sqs_forwarder::event::UNREPRESENTABLE);
        let strings = vec![
            "good-1".to_string(),
            nul.clone(),
            "good-2".to_string(),
            surrogate.clone(),
        ];
        let found = ix.bulk_record(&request(org, &strings)).await.unwrap();
        for good in ["good-1", "good-2"] {
            assert!(found[&org][good].id.is_some(), "{name}: {good}");
        }
        for bad in [&nul, &surrogate] {
            assert_eq!(found[&org][bad.as_str()].id, None, "{name}");
        }
        assert_eq!(ix.resolve(org, &nul).await.unwrap(), None, "{name}");
        ix.store().close().await;
    }
}

/// A store that refuses every write, as a replica or a primary turned read-only in a
/// failover does: reads still answer (a read never writes), and a new string fails the
/// call with a transient class after retries, so the batch stays in the source.
#[tokio::test]
async fn a_read_only_store_answers_reads_and_fails_writes_transiently() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use std::str::FromStr;
    for (name, url) in backends() {
        let org = random_org();
        let writer = indexer(&url, None).await;
        let known = writer.record(org, "known-release").await.unwrap().unwrap();
        let org_i = org as i64;
        // Make it stale, so a read would once have written.
        match writer.store() {
            Store::Postgres(pool) => sqlx::query(
                "UPDATE indexer_strings SET last_seen = now() - interval '2 days' WHERE organization_id = $1",
            )
            .bind(org_i)
            .execute(pool)
            .await
            .map(drop),
            Store::Sqlite(pool) => sqlx::query(
                "UPDATE indexer_strings SET last_seen = last_seen - 172800 WHERE organization_id = ?1",
            )
            .bind(org_i)
            .execute(pool)
            .await
            .map(drop),
        }
        .unwrap();
        let read_only = match writer.store() {
            Store::Postgres(_) => Store::Postgres(
                PgPoolOptions::new()
                    .connect_with(
                        PgConnectOptions::from_str(&url)
                            .unwrap()
                            .options([("default_transaction_read_only", "on")]),
                    )
                    .await
                    .unwrap(),
            ),
            Store::Sqlite(_) => Store::Sqlite(
                SqlitePoolOptions::new()
                    .connect_with(
                        SqliteConnectOptions::from_str(&url)
                            .unwrap()
                            .read_only(true),
                    )
                    .await
                    .unwrap(),
            ),
        };
        let policy = RetryPolicy {
            initial_interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(50),
            max_elapsed: Duration::from_millis(300),
        };
        let reader = Indexer::new(
            read_only,
            &IndexerSettings {
                cache_size: 100,
                write_limit: None,
            },
            policy,
            Metrics::disabled(),
        );
        let strings = vec!["known-release".to_string()];
        let found = reader.bulk_record(&request(org, &strings)).await.unwrap();
        assert_eq!(found[&org]["known-release"].id, Some(known), "{name}");
        assert_eq!(found[&org]["known-release"].fetch_type, FetchType::Db);

        let started = std::time::Instant::now();
        let new = vec!["never-seen".to_string()];
        let err = reader.bulk_record(&request(org, &new)).await.unwrap_err();
        assert!(err.class().is_retryable(), "{name}: {err}");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{name}: not retried"
        );
        writer.store().close().await;
    }
}

#[test]
fn indexer_record_reports_a_line_that_is_not_utf8_and_records_the_rest() {
    let org = random_org().to_string();
    let out = spawn_with_stdin(
        Command::new(BIN)
            .args(["indexer", "record", "--org", &org])
            .env("FORWARDER_INDEXER_DATABASE_URL", sqlite_url()),
        Some(b"first-string\n\xff\xfe bad\nsecond-string\n".to_vec()),
    )
    .finish_blocking(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "a bad line must not exit 0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: not UTF-8"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("first-string\t"), "{stdout}");
    assert!(stdout.contains("second-string\t"), "{stdout}");
}
