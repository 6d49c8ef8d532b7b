//! The indexer: tag keys and values interned per organization into stable integer ids,
//! as Sentry's metrics string indexer (`sentry_metrics/indexer`).
//!
//! Layers, outermost first; each answers what it can and passes the rest on:
//!
//! 1. [`shared`]: common strings with ids fixed in code, never stored.
//! 2. [`cache`]: a bounded in-process cache; ids never change, so it is never stale.
//! 3. [`store`] read: one bulk query per batch for every miss.
//! 4. [`store`] create: insert-or-ignore what is still missing, then read back, within
//!    the per-organization write limit ([`limits`]).
//!
//! A string refused (over 200 characters, or past the write limit) gets no id
//! (`None`); it never stops its event from being forwarded.

pub mod cache;
pub mod limits;
pub mod shared;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::metrics::{Counter, Gauge, Metrics, Timer};
use crate::retry::{retry, RetryPolicy};

pub use limits::{WriteLimit, MAX_STRING_CHARS};
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

/// `{organization: {string: lookup}}`.
pub type BulkResult<'a> = HashMap<u64, HashMap<&'a str, Lookup>>;

/// Why the indexer could not answer.
#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    /// The store failed (after retries, if transient).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IndexerError {
    /// The failure class, for logs and metrics.
    pub fn class(&self) -> crate::retry::ErrorClass {
        match self {
            IndexerError::Store(e) => e.class,
        }
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
        }
    }

    /// The store, for closing it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Ids for every string of every organization, creating those never seen.
    pub async fn bulk_record<'a>(
        &self,
        request: &HashMap<u64, HashSet<&'a str>>,
    ) -> Result<BulkResult<'a>, IndexerError> {
        let mut result: BulkResult<'a> = HashMap::with_capacity(request.len());
        let mut counts: HashMap<FetchType, u64> = HashMap::new();
        let mut refused_long = 0u64;
        let mut misses: Vec<(u64, &'a str)> = Vec::new();
        for (&org, strings) in request {
            let found = result.entry(org).or_default();
            for &s in strings {
                let lookup = if let Some(id) = shared::id_of(s) {
                    Some(Lookup {
                        id: Some(id),
                        fetch_type: FetchType::Shared,
                    })
                } else if s.chars().count() > MAX_STRING_CHARS {
                    refused_long += 1;
                    Some(Lookup {
                        id: None,
                        fetch_type: FetchType::Limited,
                    })
                } else {
                    self.cache.get(org, s).map(|id| Lookup {
                        id: Some(id),
                        fetch_type: FetchType::Cache,
                    })
                };
                match lookup {
                    Some(l) => {
                        *counts.entry(l.fetch_type).or_default() += 1;
                        found.insert(s, l);
                    }
                    None => misses.push((org, s)),
                }
            }
        }

        if !misses.is_empty() {
            let rows = self
                .timed(|| self.store.fetch(&misses), "indexer_fetch")
                .await?;
            self.fill(&misses, &rows, FetchType::Db, &mut result, &mut counts);
            misses.retain(|(org, s)| !result.get(org).is_some_and(|m| m.contains_key(s)));
        }

        if !misses.is_empty() {
            let mut per_org: HashMap<u64, usize> = HashMap::new();
            for (org, _) in &misses {
                *per_org.entry(*org).or_default() += 1;
            }
            let mut admitted_per_org: HashMap<u64, usize> = per_org
                .iter()
                .map(|(&org, &n)| (org, self.limiter.admit(org, n)))
                .collect();
            let mut admitted = Vec::with_capacity(misses.len());
            let mut refused_limit = 0u64;
            for (org, s) in misses {
                let left = admitted_per_org.entry(org).or_default();
                if *left > 0 {
                    *left -= 1;
                    admitted.push((org, s));
                } else {
                    refused_limit += 1;
                    *counts.entry(FetchType::Limited).or_default() += 1;
                    result.entry(org).or_default().insert(
                        s,
                        Lookup {
                            id: None,
                            fetch_type: FetchType::Limited,
                        },
                    );
                }
            }
            if refused_limit > 0 {
                self.metrics.count(
                    Counter::IndexerRefused {
                        reason: "write_limit",
                    },
                    refused_limit,
                );
            }
            let rows = self
                .timed(|| self.store.create(&admitted), "indexer_create")
                .await?;
            self.fill(
                &admitted,
                &rows,
                FetchType::FirstSeen,
                &mut result,
                &mut counts,
            );
            for (org, s) in admitted {
                let found = result.entry(org).or_default();
                if !found.contains_key(s) {
                    // The store refused it (a constraint); it gets no id, like a limit.
                    tracing::warn!(org, string = s, "indexer store gave no id");
                    *counts.entry(FetchType::Limited).or_default() += 1;
                    found.insert(
                        s,
                        Lookup {
                            id: None,
                            fetch_type: FetchType::Limited,
                        },
                    );
                }
            }
        }

        if refused_long > 0 {
            self.metrics
                .count(Counter::IndexerRefused { reason: "too_long" }, refused_long);
        }
        for (fetch_type, n) in counts {
            self.metrics.count(
                Counter::IndexerLookup {
                    fetch_type: fetch_type.as_str(),
                },
                n,
            );
        }
        self.metrics
            .gauge(Gauge::IndexerCacheSize, self.cache.len() as u64);
        Ok(result)
    }

    /// The id of one string, created if never seen.
    pub async fn record(&self, org: u64, s: &str) -> Result<Option<u64>, IndexerError> {
        let request = HashMap::from([(org, HashSet::from([s]))]);
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
        let key = [(org, s)];
        let rows = self
            .timed(|| self.store.fetch(&key), "indexer_fetch")
            .await?;
        Ok(rows.first().map(|r| {
            self.cache.insert(org, s, r.id);
            r.id
        }))
    }

    /// The string an id stands for.
    pub async fn reverse_resolve(&self, org: u64, id: u64) -> Result<Option<String>, IndexerError> {
        if id <= shared::MAX_SHARED_ID {
            return Ok(shared::string_of(id).map(str::to_string));
        }
        let found = retry(&self.policy, "indexer_reverse", &self.metrics, || {
            self.store.reverse(org, id)
        })
        .await?;
        Ok(found)
    }

    /// A store call with retries, timed as `forwarder.indexer.store.duration`.
    async fn timed<F, Fut>(
        &self,
        call: F,
        operation: &'static str,
    ) -> Result<Vec<store::Row3>, IndexerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<store::Row3>, StoreError>>,
    {
        let started = Instant::now();
        let rows = retry(&self.policy, operation, &self.metrics, || async {
            let attempt = Instant::now();
            let rows = call().await;
            self.metrics.timing(Timer::IndexerStore, attempt.elapsed());
            rows
        })
        .await;
        if let Err(err) = &rows {
            tracing::error!(operation, error = %err, elapsed = ?started.elapsed(), "indexer store unavailable");
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
        counts: &mut HashMap<FetchType, u64>,
    ) {
        let ids: HashMap<(u64, &str), u64> = rows
            .iter()
            .map(|r| ((r.org, r.string.as_str()), r.id))
            .collect();
        for &(org, s) in keys {
            if let Some(&id) = ids.get(&(org, s)) {
                self.cache.insert(org, s, id);
                *counts.entry(fetch_type).or_default() += 1;
                result.entry(org).or_default().insert(
                    s,
                    Lookup {
                        id: Some(id),
                        fetch_type,
                    },
                );
            }
        }
    }
}
