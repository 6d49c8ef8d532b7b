//! The indexer: tag keys and values interned per organization into stable integer ids,
//! as Sentry's metrics string indexer (`sentry_metrics/indexer`).
//!
//! Layers, outermost first; each answers what it can and passes the rest on:
//!
//! 1. [`shared`]: common strings with ids fixed in code, never stored.
//! 2. [`cache`]: a bounded in-process cache; ids never change, so it is never stale.
//! 3. [`shared_cache`] (when `FORWARDER_INDEXER_CACHE_URL` is set): Redis, shared by
//!    every process, one `MGET` per batch for every miss; what the store gives is
//!    written back in one pipeline. Optional at run time: it fails over to the store.
//! 4. [`store`] read: one bulk query per batch for every miss.
//! 5. [`store`] create: insert-or-ignore what is still missing, then read back, within
//!    the per-organization write limit ([`limits`]).
//!
//! A string refused (over 200 characters, one the store cannot hold such as U+0000, or
//! past the write limit) gets no id (`None`); it never stops its event, or any other,
//! from being forwarded. An error of the store itself is transient: retried, and past
//! the bound the batch stays in the source queue, never dead-lettered. A read never
//! writes: stale `last_seen` values are refreshed after the fact, best effort.

mod cache;
pub mod limits;
pub mod shared;
pub mod shared_cache;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::internal_events::{IndexerLookups, InternalEvent};
use crate::metrics::{Gauge, Metrics, Timer};
use crate::outcome::Operation;
use crate::retry::{retry, RetryPolicy};

pub use limits::{WriteLimit, MAX_STRING_CHARS};
pub use shared_cache::{SharedCache, SharedCacheSettings};
pub use store::{Store, StoreError};

use cache::IdCache;
use limits::WriteLimiter;

/// Where an id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchType {
    /// The shared table.
    Shared,
    /// The in-process cache.
    Cache,
    /// The shared cache (Redis).
    SharedCache,
    /// A store read.
    Db,
    /// Created now.
    FirstSeen,
    /// Refused by a limit: no id.
    Limited,
}

impl FetchType {
    /// Label for the `fetch_type` metric tag.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchType::Shared => "shared",
            FetchType::Cache => "cache",
            FetchType::SharedCache => "shared_cache",
            FetchType::Db => "db",
            FetchType::FirstSeen => "first_seen",
            FetchType::Limited => "limited",
        }
    }
}

/// The id of one string, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// The id; `None` when refused by a limit.
    pub id: Option<u64>,
    /// Where it came from.
    pub fetch_type: FetchType,
}

impl Lookup {
    /// No id: refused by a limit or by what the store can hold.
    const NONE: Lookup = Lookup {
        id: None,
        fetch_type: FetchType::Limited,
    };

    fn found(id: u64, fetch_type: FetchType) -> Lookup {
        Lookup {
            id: Some(id),
            fetch_type,
        }
    }
}

/// The hasher of the per-batch maps: foldhash, seeded per process. These maps are built
/// and probed about a hundred times per event, and SipHash (std's default) made that
/// the larger part of the indexer's time on a hot cache (see docs/PERFORMANCE.md).
pub type BatchHasher = foldhash::fast::RandomState;

/// A map keyed as the per-batch maps are.
pub type BatchMap<K, V> = HashMap<K, V, BatchHasher>;

/// A set hashed as the per-batch maps are.
pub type BatchSet<T> = HashSet<T, BatchHasher>;

/// `{organization: {strings}}`: what [`Indexer::bulk_record`] is asked for.
pub type BulkRequest<'a> = BatchMap<u64, BatchSet<&'a str>>;

/// `{organization: {string: lookup}}`.
pub type BulkResult<'a> = BatchMap<u64, BatchMap<&'a str, Lookup>>;

/// Why the indexer could not answer.
#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    /// The store failed (after retries, if transient).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IndexerError {
    /// The failure class, for logs and metrics.
    pub fn class(&self) -> crate::outcome::ErrorClass {
        match self {
            IndexerError::Store(e) => e.class,
        }
    }
}

impl From<&IndexerError> for crate::outcome::Failure {
    /// The store failing: the index stage's failure.
    fn from(e: &IndexerError) -> Self {
        crate::outcome::Failure {
            stage: crate::outcome::Stage::Index,
            class: e.class(),
            code: None,
            message: e.to_string(),
        }
    }
}

/// The two store statements of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreOp {
    /// Which of these strings have ids.
    Fetch,
    /// Give these strings ids.
    Create,
}

impl StoreOp {
    /// The operation, for logs and the `operation` tag of `forwarder.retry`.
    fn operation(self) -> Operation {
        match self {
            StoreOp::Fetch => Operation::IndexerFetch,
            StoreOp::Create => Operation::IndexerCreate,
        }
    }
}

/// What one lookup counted, emitted once at its end.
#[derive(Debug, Default)]
struct Tally {
    /// `forwarder.indexer.lookup{fetch_type}`.
    lookups: HashMap<FetchType, u64>,
    /// `forwarder.indexer.refused{reason}`.
    refused: HashMap<&'static str, u64>,
}

impl Tally {
    fn lookup(&mut self, fetch_type: FetchType, n: u64) {
        *self.lookups.entry(fetch_type).or_default() += n;
    }

    fn refused(&mut self, reason: &'static str, n: u64) {
        *self.refused.entry(reason).or_default() += n;
    }

    fn emit(self, metrics: &Metrics) {
        let found: Vec<(&'static str, u64)> = self
            .lookups
            .into_iter()
            .map(|(fetch_type, n)| (fetch_type.as_str(), n))
            .collect();
        let refused: Vec<(&'static str, u64)> = self.refused.into_iter().collect();
        IndexerLookups {
            found: &found,
            refused: &refused,
        }
        .emit(metrics);
    }
}

/// Ids read whose `last_seen` is over a day old, refreshed after the fact in one
/// statement: a read never writes, so reads work on a replica or for a role without
/// UPDATE, and a failed refresh fails no event (the ids stay stale and are noted again
/// at their next read).
#[derive(Debug, Default)]
struct Touches {
    /// Ids waiting for their refresh; at most [`Touches::MAX_PENDING`].
    pending: Mutex<HashSet<u64>>,
    /// A refresh is running: at most one at a time.
    running: Arc<AtomicBool>,
    /// A refresh failed once already: later failures log at debug, not warn.
    warned: Arc<AtomicBool>,
}

impl Touches {
    /// Ids kept waiting at most; more are dropped (they are noted again when read).
    const MAX_PENDING: usize = 10_000;

    fn note(&self, ids: impl Iterator<Item = u64>) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        for id in ids {
            if pending.len() >= Self::MAX_PENDING {
                break;
            }
            pending.insert(id);
        }
    }

    /// Starts a refresh of what is pending, unless one runs or nothing is pending.
    fn flush(&self, store: &Store) {
        let ids: Vec<u64> = {
            let Ok(mut pending) = self.pending.lock() else {
                return;
            };
            if pending.is_empty()
                || self
                    .running
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return;
            }
            pending.drain().collect()
        };
        let (store, running, warned) = (store.clone(), self.running.clone(), self.warned.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            running.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(async move {
            match store.touch(&ids).await {
                Ok(()) => tracing::debug!(ids = ids.len(), "indexer: last_seen refreshed"),
                Err(err) if !warned.swap(true, Ordering::Relaxed) => {
                    tracing::warn!(error = %err, ids = ids.len(), "indexer: last_seen not refreshed (best effort; events are unaffected)");
                }
                Err(err) => tracing::debug!(error = %err, "indexer: last_seen not refreshed"),
            }
            running.store(false, Ordering::Release);
        });
    }
}

/// Settings of the indexer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexerSettings {
    /// Most entries kept in the in-process cache (`FORWARDER_INDEXER_CACHE_SIZE`).
    pub cache_size: usize,
    /// New strings allowed per organization and window (`FORWARDER_INDEXER_WRITE_LIMIT`).
    pub write_limit: Option<WriteLimit>,
}

/// The string indexer.
#[derive(Debug)]
pub struct Indexer {
    /// Where ids are kept for good.
    store: Store,
    /// Recently used ids.
    cache: IdCache,
    /// The per-organization write limit.
    limiter: WriteLimiter,
    /// Retry bounds for store calls: a batch waits for its ids up to this bound.
    policy: RetryPolicy,
    /// Lookup counts, cache size, store latency.
    metrics: Metrics,
    /// Stale `last_seen` values, refreshed after the fact.
    touches: Touches,
    /// The shared tier (Redis), when configured: asked before the store.
    shared_cache: Option<Arc<SharedCache>>,
}

impl Indexer {
    /// An indexer on a connected store.
    pub fn new(
        store: Store,
        settings: &IndexerSettings,
        policy: RetryPolicy,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            cache: IdCache::new(settings.cache_size),
            limiter: WriteLimiter::new(settings.write_limit),
            policy,
            metrics,
            touches: Touches::default(),
            shared_cache: None,
        }
    }

    /// The same indexer, asking `cache` (Redis) before the store.
    pub fn with_shared_cache(mut self, cache: Arc<SharedCache>) -> Self {
        self.shared_cache = Some(cache);
        self
    }

    /// The shared tier, when configured.
    pub fn shared_cache(&self) -> Option<&Arc<SharedCache>> {
        self.shared_cache.as_ref()
    }

    /// The store, for closing it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Ids for every string of every organization, creating those never seen.
    ///
    /// A string the store cannot hold gets no id and fails nothing else. An error of the
    /// store itself fails the whole call once its retries are spent: the caller keeps
    /// the batch for a later try.
    pub async fn bulk_record<'a>(
        &self,
        request: &BulkRequest<'a>,
    ) -> Result<BulkResult<'a>, IndexerError> {
        let mut tally = Tally::default();
        let (mut result, misses) = self.look_up_known(request, &mut tally);
        let misses = self
            .read_shared_cache(misses, &mut result, &mut tally)
            .await;
        // Only ids the store gave go back to Redis: a batch answered by the caches
        // writes nothing, and is not even scanned for it.
        let asked_store = !misses.is_empty();
        let misses = self.read_store(misses, &mut result, &mut tally).await?;
        self.create(misses, &mut result, &mut tally).await?;
        if asked_store {
            self.write_back(&result);
        }
        tally.emit(&self.metrics);
        self.metrics
            .gauge(Gauge::IndexerCacheSize, self.cache.len() as u64);
        Ok(result)
    }

    /// Steps 1 and 2: shared strings and the cache, and strings refused before the
    /// store. Returns what is found and what is left to ask the store.
    fn look_up_known<'a>(
        &self,
        request: &BulkRequest<'a>,
        tally: &mut Tally,
    ) -> (BulkResult<'a>, Vec<(u64, &'a str)>) {
        let mut result: BulkResult<'a> =
            BatchMap::with_capacity_and_hasher(request.len(), BatchHasher::default());
        let mut misses = Vec::new();
        for (&org, strings) in request {
            let found = result.entry(org).or_insert_with(|| {
                BatchMap::with_capacity_and_hasher(strings.len(), BatchHasher::default())
            });
            for &s in strings {
                let lookup = if let Some(id) = shared::id_of(s) {
                    Lookup::found(id, FetchType::Shared)
                } else if let Some(refusal) = limits::refusal(s) {
                    tally.refused(refusal.as_str(), 1);
                    Lookup::NONE
                } else if let Some(id) = self.cache.get(org, s) {
                    Lookup::found(id, FetchType::Cache)
                } else {
                    misses.push((org, s));
                    continue;
                };
                tally.lookup(lookup.fetch_type, 1);
                found.insert(s, lookup);
            }
        }
        (result, misses)
    }

    /// Step 3: one `MGET` to the shared cache for every miss, when there is one. Returns
    /// what is still missing; everything, when Redis gives no answer.
    async fn read_shared_cache<'a>(
        &self,
        misses: Vec<(u64, &'a str)>,
        result: &mut BulkResult<'a>,
        tally: &mut Tally,
    ) -> Vec<(u64, &'a str)> {
        let Some(shared) = &self.shared_cache else {
            return misses;
        };
        if misses.is_empty() {
            return misses;
        }
        let version = shared.settings().version;
        let keys: Vec<String> = misses
            .iter()
            .map(|&(org, s)| shared_cache::key(version, org, s))
            .collect();
        let Ok(ids) = shared.get_many(&keys).await else {
            return misses;
        };
        let mut left = Vec::new();
        for (&(org, s), id) in misses.iter().zip(ids) {
            match id {
                Some(id) => {
                    self.cache.insert(org, s, id);
                    tally.lookup(FetchType::SharedCache, 1);
                    result
                        .entry(org)
                        .or_default()
                        .insert(s, Lookup::found(id, FetchType::SharedCache));
                }
                None => left.push((org, s)),
            }
        }
        left
    }

    /// Every id the store gave (read or created) goes to the shared cache, in one
    /// pipeline, in the background.
    fn write_back(&self, result: &BulkResult<'_>) {
        let Some(shared) = &self.shared_cache else {
            return;
        };
        let version = shared.settings().version;
        let entries: Vec<(String, u64)> = result
            .iter()
            .flat_map(|(&org, found)| {
                found.iter().filter_map(move |(s, lookup)| match lookup {
                    Lookup {
                        id: Some(id),
                        fetch_type: FetchType::Db | FetchType::FirstSeen,
                    } => Some((shared_cache::key(version, org, s), *id)),
                    _ => None,
                })
            })
            .collect();
        shared.set_many_later(entries);
    }

    /// Step 4: one store read for every miss. Returns what is still missing. Stale
    /// `last_seen` values are refreshed later ([`Touches`]): a read never writes.
    async fn read_store<'a>(
        &self,
        misses: Vec<(u64, &'a str)>,
        result: &mut BulkResult<'a>,
        tally: &mut Tally,
    ) -> Result<Vec<(u64, &'a str)>, IndexerError> {
        if misses.is_empty() {
            return Ok(misses);
        }
        let rows = self
            .store_call(StoreOp::Fetch, &misses, result, tally)
            .await?;
        self.touches
            .note(rows.iter().filter(|r| r.is_stale()).map(|r| r.id));
        self.touches.flush(&self.store);
        self.fill(&misses, &rows, FetchType::Db, result, tally);
        Ok(misses
            .into_iter()
            .filter(|(org, s)| !result.get(org).is_some_and(|m| m.contains_key(s)))
            .collect())
    }

    /// Step 5: create what is still missing, within each organization's write limit.
    async fn create<'a>(
        &self,
        misses: Vec<(u64, &'a str)>,
        result: &mut BulkResult<'a>,
        tally: &mut Tally,
    ) -> Result<(), IndexerError> {
        if misses.is_empty() {
            return Ok(());
        }
        let mut per_org: HashMap<u64, usize> = HashMap::new();
        for (org, _) in &misses {
            *per_org.entry(*org).or_default() += 1;
        }
        let mut admitted_per_org: HashMap<u64, usize> = per_org
            .iter()
            .map(|(&org, &n)| (org, self.limiter.admit(org, n)))
            .collect();
        let mut admitted = Vec::with_capacity(misses.len());
        for (org, s) in misses {
            let left = admitted_per_org.entry(org).or_default();
            if *left > 0 {
                *left -= 1;
                admitted.push((org, s));
            } else {
                tally.refused("write_limit", 1);
                tally.lookup(FetchType::Limited, 1);
                result.entry(org).or_default().insert(s, Lookup::NONE);
            }
        }
        let rows = self
            .store_call(StoreOp::Create, &admitted, result, tally)
            .await?;
        self.fill(&admitted, &rows, FetchType::FirstSeen, result, tally);
        for (org, s) in admitted {
            let found = result.entry(org).or_default();
            if !found.contains_key(s) {
                // The store gave it no id (a constraint); it gets none, like a limit.
                tracing::warn!(
                    org,
                    chars = s.chars().count(),
                    "indexer store gave no id to a string"
                );
                tally.lookup(FetchType::Limited, 1);
                found.insert(s, Lookup::NONE);
            }
        }
        Ok(())
    }

    /// One store statement for all `keys`, retried. Should the store refuse the
    /// statement for its data (a string it cannot hold that [`limits::refusal`] let
    /// through), each key is tried alone: those refused alone get no id
    /// (`invalid_string`), the rest are answered. So one string never fails its batch.
    async fn store_call<'a>(
        &self,
        op: StoreOp,
        keys: &[(u64, &'a str)],
        result: &mut BulkResult<'a>,
        tally: &mut Tally,
    ) -> Result<Vec<store::Row3>, IndexerError> {
        match self.timed(op, keys).await {
            Err(IndexerError::Store(err)) if err.is_data_error() && keys.len() > 1 => {
                tracing::warn!(operation = op.operation().as_str(), error = %err, "the store refused a batch for its data; trying each string alone");
                let mut rows = Vec::with_capacity(keys.len());
                for key in keys {
                    match self.timed(op, std::slice::from_ref(key)).await {
                        Ok(found) => rows.extend(found),
                        Err(IndexerError::Store(err)) if err.is_data_error() => {
                            tracing::warn!(org = key.0, chars = key.1.chars().count(), error = %err, "the store cannot hold a string: no id");
                            tally.refused(limits::Refusal::InvalidString.as_str(), 1);
                            tally.lookup(FetchType::Limited, 1);
                            result.entry(key.0).or_default().insert(key.1, Lookup::NONE);
                        }
                        Err(err) => return Err(err),
                    }
                }
                Ok(rows)
            }
            Err(IndexerError::Store(err)) if err.is_data_error() => {
                let (org, s) = keys[0];
                tracing::warn!(org, chars = s.chars().count(), error = %err, "the store cannot hold a string: no id");
                tally.refused(limits::Refusal::InvalidString.as_str(), 1);
                tally.lookup(FetchType::Limited, 1);
                result.entry(org).or_default().insert(s, Lookup::NONE);
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// The id of one string, created if never seen.
    pub async fn record(&self, org: u64, s: &str) -> Result<Option<u64>, IndexerError> {
        let request: BulkRequest<'_> = [(org, [s].into_iter().collect())].into_iter().collect();
        let result = self.bulk_record(&request).await?;
        Ok(result.get(&org).and_then(|m| m.get(s)).and_then(|l| l.id))
    }

    /// The id of a string if it has one; never creates.
    pub async fn resolve(&self, org: u64, s: &str) -> Result<Option<u64>, IndexerError> {
        if let Some(id) = shared::id_of(s) {
            return Ok(Some(id));
        }
        if let Some(id) = self.cache.get(org, s) {
            return Ok(Some(id));
        }
        if limits::refusal(s).is_some() {
            return Ok(None);
        }
        if let Some(shared) = &self.shared_cache {
            let key = shared_cache::key(shared.settings().version, org, s);
            if let Ok(ids) = shared.get_many(std::slice::from_ref(&key)).await {
                if let Some(&Some(id)) = ids.first() {
                    self.cache.insert(org, s, id);
                    return Ok(Some(id));
                }
            }
        }
        let rows = self.timed(StoreOp::Fetch, &[(org, s)]).await?;
        Ok(rows.first().map(|r| {
            self.cache.insert(org, s, r.id);
            if let Some(shared) = &self.shared_cache {
                let key = shared_cache::key(shared.settings().version, org, s);
                shared.set_many_later(vec![(key, r.id)]);
            }
            r.id
        }))
    }

    /// The string an id stands for.
    pub async fn reverse_resolve(&self, org: u64, id: u64) -> Result<Option<String>, IndexerError> {
        if id <= shared::MAX_SHARED_ID {
            return Ok(shared::string_of(id).map(str::to_string));
        }
        let found = retry(
            &self.policy,
            Operation::IndexerReverse,
            &self.metrics,
            || self.store.reverse(org, id),
        )
        .await?;
        Ok(found)
    }

    /// A store call with retries, timed as `forwarder.indexer.store.duration`.
    async fn timed(
        &self,
        op: StoreOp,
        keys: &[(u64, &str)],
    ) -> Result<Vec<store::Row3>, IndexerError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let rows = retry(&self.policy, op.operation(), &self.metrics, || async {
            let attempt = Instant::now();
            let rows = match op {
                StoreOp::Fetch => self.store.fetch(keys).await,
                StoreOp::Create => self.store.create(keys).await,
            };
            self.metrics.timing(Timer::IndexerStore, attempt.elapsed());
            rows
        })
        .await;
        if let Err(err) = &rows {
            if !err.is_data_error() {
                tracing::error!(operation = op.operation().as_str(), error = %err, elapsed = ?started.elapsed(), "indexer store unavailable");
            }
        }
        Ok(rows?)
    }

    /// Records the ids `rows` give for `keys` into the result and the cache.
    fn fill<'a>(
        &self,
        keys: &[(u64, &'a str)],
        rows: &[store::Row3],
        fetch_type: FetchType,
        result: &mut BulkResult<'a>,
        tally: &mut Tally,
    ) {
        let ids: BatchMap<(u64, &str), u64> = rows
            .iter()
            .map(|r| ((r.org, r.string.as_str()), r.id))
            .collect();
        for &(org, s) in keys {
            if let Some(&id) = ids.get(&(org, s)) {
                self.cache.insert(org, s, id);
                tally.lookup(fetch_type, 1);
                result
                    .entry(org)
                    .or_default()
                    .insert(s, Lookup::found(id, fetch_type));
            }
        }
    }
}
