//! What every [`Store`] must answer, as one sequence of calls: run on the in-memory fake
//! of the unit tests, and on Redis and PostgreSQL by the integration tests. Sleeps
//! past short leases and TTLs (milliseconds), so it runs on real time or on tokio's
//! paused clock alike.

use std::time::Duration;

use super::{Claim, Store, StoreError};

/// `Err(step)` unless `ok`.
fn ensure(ok: bool, step: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(step())
    }
}

fn answered<T>(step: &str, result: Result<T, StoreError>) -> Result<T, String> {
    result.map_err(|e| format!("{step}: no answer: {e}"))
}

/// Runs the contract on `store`, with keys under `prefix` (unique per run). Says which
/// step answered wrong.
pub async fn check(store: &dyn Store, prefix: &str) -> Result<(), String> {
    let k = |name: &str| vec![format!("{prefix}:{name}")];
    let (a, b, c, e) = (k("a"), k("b"), k("c"), k("e"));
    let lease = Duration::from_millis(300);
    let ttl = Duration::from_secs(60);
    let claim = |keys: Vec<String>, token: &'static str| async move {
        answered("claim", store.claim(&keys, token, lease, ttl).await)
    };

    let got = claim([a.clone(), b.clone()].concat(), "t1").await?;
    ensure(got == [Claim::New, Claim::New], || {
        format!("fresh keys are claimed: {got:?}")
    })?;
    let got = claim(a.clone(), "t2").await?;
    ensure(
        matches!(got[..], [Claim::Held(left)] if left > Duration::ZERO && left <= lease),
        || format!("another's live claim is held, for what is left of its lease: {got:?}"),
    )?;
    let got = claim(a.clone(), "t1").await?;
    ensure(got == [Claim::New], || {
        format!("the same token claims again (a retried call): {got:?}")
    })?;

    answered("mark", store.mark(&a, ttl).await)?;
    let got = claim(a.clone(), "t3").await?;
    ensure(got == [Claim::Done], || format!("marked: done: {got:?}"))?;

    answered("release", store.release(&b, "t2").await)?;
    let got = claim(b.clone(), "t3").await?;
    ensure(matches!(got[..], [Claim::Held(_)]), || {
        format!("a release by another token leaves the claim: {got:?}")
    })?;
    answered(
        "release",
        store.release(&[b.clone(), a.clone()].concat(), "t1").await,
    )?;
    let got = claim(b.clone(), "t3").await?;
    ensure(got == [Claim::New], || {
        format!("released: claimed afresh: {got:?}")
    })?;
    let got = claim(a.clone(), "t3").await?;
    ensure(got == [Claim::Done], || {
        format!("a release leaves marks: {got:?}")
    })?;

    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let got = claim([b.clone(), c.clone()].concat(), "t4").await?;
    ensure(got == [Claim::TakenOver, Claim::New], || {
        format!("a claim past its lease is taken over: {got:?}")
    })?;

    answered("mark", store.mark(&e, Duration::from_millis(300)).await)?;
    let got = claim(e.clone(), "t5").await?;
    ensure(got == [Claim::Done], || format!("marked: done: {got:?}"))?;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    answered("sweep", store.sweep().await)?;
    let got = claim(e.clone(), "t6").await?;
    ensure(got == [Claim::New], || {
        format!("an expired mark is forgotten: {got:?}")
    })?;
    answered("ping", store.ping().await)
}
