//! The protocol's states on an in-memory store, on tokio's paused clock.

use super::memory::MemoryStore;
use super::*;
use crate::metrics::testing::{spy, Spied};

const DEST: &str = "https://sqs.us-east-1.amazonaws.com/1/dest";

fn quick() -> RetryPolicy {
    RetryPolicy {
        initial_interval: Duration::from_millis(10),
        max_interval: Duration::from_millis(50),
        max_elapsed: Duration::from_millis(200),
    }
}

fn protocol(fail_open: bool) -> (Arc<MemoryStore>, Idempotency, Spied) {
    let store = Arc::new(MemoryStore::default());
    let (idem, spied) = worker_on(&store, fail_open);
    (store, idem, spied)
}

/// Another worker's protocol over the same store (a lease of 30 s).
fn worker_on(store: &Arc<MemoryStore>, fail_open: bool) -> (Idempotency, Spied) {
    let (spied, metrics) = spy();
    let idem = Idempotency::new(
        store.clone(),
        None,
        Some(Duration::from_secs(30)),
        fail_open,
        metrics,
    )
    .with_retry(quick());
    (idem, spied)
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| l.as_str() == line).count()
}

#[tokio::test(start_paused = true)]
async fn the_store_contract_holds_for_the_fake() {
    let checked = contract::check(&MemoryStore::default(), "contract").await;
    assert_eq!(checked, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn an_event_accepted_and_marked_is_never_sent_again() {
    let (store, idem, spied) = protocol(false);
    let claims = idem.claim(DEST, &["e1", "e2"]).await;
    assert_eq!(claims.decisions, [Decision::Send, Decision::Send]);
    let unmarked = idem
        .settle(&claims, &[Some(Sent::Accepted), Some(Sent::Accepted)])
        .await;
    assert_eq!(unmarked, None);
    assert_eq!(store.calls.load(Ordering::SeqCst), 2, "one claim, one mark");

    let again = idem.claim(DEST, &["e1", "e2"]).await;
    assert_eq!(again.decisions, [Decision::Done, Decision::Done]);
    let lines = spied.lines();
    assert_eq!(
        count(&lines, "forwarder.idempotency.claim:2|c|#result:new"),
        1,
        "{lines:?}"
    );
    assert_eq!(
        count(&lines, "forwarder.idempotency.claim:1|c|#result:done"),
        2,
        "{lines:?}"
    );
    assert_eq!(
        count(
            &lines,
            "forwarder.event.skipped:1|c|#reason:already_forwarded"
        ),
        2,
        "{lines:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_key_is_per_destination() {
    let (_, idem, _) = protocol(false);
    let claims = idem.claim(DEST, &["e1"]).await;
    idem.settle(&claims, &[Some(Sent::Accepted)]).await;
    let other = idem
        .claim("https://sqs.us-east-1.amazonaws.com/1/other", &["e1"])
        .await;
    assert_eq!(
        other.decisions,
        [Decision::Send],
        "another route still gets it"
    );
    assert_ne!(
        key(DEST, "e1"),
        key("https://sqs.us-east-1.amazonaws.com/1/other", "e1")
    );
    assert_eq!(key(DEST, "e1").len(), 16 + 1 + 2);
}

#[tokio::test(start_paused = true)]
async fn a_live_claim_of_another_worker_is_left_alone_until_its_lease_ends() {
    let (store, first, _) = protocol(false);
    let (second, spied) = worker_on(&store, false);
    let claims = first.claim(DEST, &["e1"]).await;
    assert_eq!(claims.decisions, [Decision::Send]);

    // The first worker died after its claim: the second waits out its lease.
    tokio::time::advance(Duration::from_secs(10)).await;
    let held = second.claim(DEST, &["e1"]).await;
    assert_eq!(held.decisions, [Decision::Held(Duration::from_secs(20))]);
    tokio::time::advance(Duration::from_secs(21)).await;
    let taken = second.claim(DEST, &["e1"]).await;
    assert_eq!(
        taken.decisions,
        [Decision::Send],
        "taken over once the lease ran out"
    );
    let lines = spied.lines();
    assert_eq!(
        count(&lines, "forwarder.idempotency.claim:1|c|#result:held"),
        1,
        "{lines:?}"
    );
    assert_eq!(
        count(&lines, "forwarder.idempotency.claim:1|c|#result:takeover"),
        1,
        "{lines:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_entry_gives_its_claim_back_and_a_lost_answer_keeps_it() {
    let (store, idem, _) = protocol(false);
    let (other, _) = worker_on(&store, false);
    let claims = idem.claim(DEST, &["refused", "lost", "never"]).await;
    idem.settle(
        &claims,
        &[
            Some(Sent::NotTaken),
            Some(Sent::Unknown),
            Some(Sent::NotTaken),
        ],
    )
    .await;
    let next = other.claim(DEST, &["refused", "lost", "never"]).await;
    assert_eq!(
        next.decisions[0],
        Decision::Send,
        "given back: claimed afresh at once"
    );
    assert!(
        matches!(next.decisions[1], Decision::Held(_)),
        "kept: {:?}",
        next.decisions
    );
    assert_eq!(next.decisions[2], Decision::Send);
}

#[tokio::test(start_paused = true)]
async fn the_second_copy_of_an_event_in_one_batch_waits_for_the_first() {
    let (store, idem, _) = protocol(false);
    let claims = idem.claim(DEST, &["e1", "e1", "e2"]).await;
    assert_eq!(
        claims.decisions,
        [
            Decision::Send,
            Decision::Held(DUPLICATE_DELAY),
            Decision::Send
        ]
    );
    idem.settle(&claims, &[Some(Sent::Accepted), None, Some(Sent::Accepted)])
        .await;
    assert_eq!(store.calls.load(Ordering::SeqCst), 2);
    assert_eq!(idem.claim(DEST, &["e1"]).await.decisions, [Decision::Done]);
}

#[tokio::test(start_paused = true)]
async fn a_store_down_fails_closed_and_forwarding_resumes_when_it_answers() {
    let (store, idem, spied) = protocol(false);
    store.down.store(true, Ordering::SeqCst);
    let claims = idem.claim(DEST, &["e1", "e2"]).await;
    assert!(
        claims
            .decisions
            .iter()
            .all(|d| matches!(d, Decision::Unavailable(f) if f.stage == Stage::Idempotency)),
        "{:?}",
        claims.decisions
    );
    assert!(!idem.is_available(), "not ready");
    assert!(store.calls.load(Ordering::SeqCst) > 1, "retried");
    let lines = spied.lines();
    assert!(
        lines.contains(&"forwarder.idempotency.available:0|g".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(
            &"forwarder.idempotency.error:1|c|#operation:idempotency_claim,class:connection"
                .to_string()
        ),
        "{lines:?}"
    );

    store.down.store(false, Ordering::SeqCst);
    let claims = idem.claim(DEST, &["e1", "e2"]).await;
    assert_eq!(claims.decisions, [Decision::Send, Decision::Send]);
    assert!(idem.is_available());
    assert!(spied
        .lines()
        .contains(&"forwarder.idempotency.available:1|g".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_mark_that_fails_keeps_the_accepted_in_the_source_unless_fail_open() {
    let (store, idem, _) = protocol(false);
    let claims = idem.claim(DEST, &["e1"]).await;
    store.down.store(true, Ordering::SeqCst);
    let unmarked = idem.settle(&claims, &[Some(Sent::Accepted)]).await;
    assert!(matches!(unmarked, Some(f) if f.stage == Stage::Idempotency));

    let (store, idem, spied) = protocol(true);
    let claims = idem.claim(DEST, &["e1"]).await;
    store.down.store(true, Ordering::SeqCst);
    assert_eq!(idem.settle(&claims, &[Some(Sent::Accepted)]).await, None);
    let claims = idem.claim(DEST, &["e2", "e3"]).await;
    assert_eq!(
        claims.decisions,
        [Decision::Send, Decision::Send],
        "fail-open sends"
    );
    assert!(idem.is_available(), "fail-open stays ready");
    let lines = spied.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("forwarder.idempotency.bypassed"))
            .count(),
        2,
        "{lines:?}"
    );
    assert!(
        lines.contains(&"forwarder.idempotency.bypassed:2|c".to_string()),
        "{lines:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_ttl_and_the_lease_follow_the_source_unless_set() {
    let store = Arc::new(MemoryStore::default());
    let idem = Idempotency::new(store.clone(), None, None, false, Metrics::disabled());
    assert_eq!(idem.lease(), DEFAULT_LEASE);
    assert_eq!(idem.ttl(), MIN_TTL);
    assert_eq!(
        idem.size_for_source(Duration::from_secs(600), Some(10)),
        None
    );
    assert_eq!(
        idem.lease(),
        Duration::from_secs(599),
        "the visibility, less a second"
    );
    assert_eq!(
        idem.ttl(),
        Duration::from_secs(6_000),
        "visibility x maxReceiveCount"
    );
    idem.size_for_source(Duration::from_secs(30), Some(5));
    assert_eq!(idem.ttl(), MIN_TTL, "at least an hour");

    let set = Idempotency::new(
        store,
        Some(Duration::from_secs(1_800)),
        Some(Duration::from_secs(5)),
        false,
        Metrics::disabled(),
    );
    let warning = set.size_for_source(Duration::from_secs(600), Some(10));
    assert!(warning.is_some_and(|w| w.starts_with("FORWARDER_IDEMPOTENCY_TTL")));
    assert_eq!(
        set.ttl(),
        Duration::from_secs(1_800),
        "the user's setting stays"
    );
    assert_eq!(set.lease(), Duration::from_secs(5));
}
