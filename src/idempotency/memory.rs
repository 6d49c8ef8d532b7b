//! A [`Store`] in memory, on tokio's clock, for the unit tests of the protocol and of
//! the pipeline around it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, Store, StoreError, StoreErrorKind};

/// One key's state.
#[derive(Debug, Clone)]
struct Entry {
    /// The claim's token; `None` once done.
    token: Option<String>,
    lease_until: Instant,
    expires: Instant,
}

/// A [`Store`] in memory, on tokio's clock; `down` makes every call fail, and `calls`
/// counts them (one per batch and step).
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    /// Each key's state.
    entries: Mutex<HashMap<String, Entry>>,
    /// Every call fails while on.
    pub(crate) down: AtomicBool,
    /// Calls made.
    pub(crate) calls: AtomicUsize,
}

impl MemoryStore {
    fn up(&self) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.down.load(Ordering::SeqCst) {
            true => Err(StoreError::new(StoreErrorKind::Connection, "down")),
            false => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn claim(
        &self,
        keys: &[String],
        token: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        self.up()?;
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap();
        Ok(keys
            .iter()
            .map(|key| {
                let before = entries.get(key).filter(|e| e.expires > now).cloned();
                let claim = match &before {
                    Some(Entry { token: None, .. }) => return Claim::Done,
                    Some(Entry {
                        token: Some(t),
                        lease_until,
                        ..
                    }) if t != token && *lease_until > now => {
                        return Claim::Held(*lease_until - now)
                    }
                    Some(Entry { token: Some(t), .. }) if t != token => Claim::TakenOver,
                    _ => Claim::New,
                };
                entries.insert(
                    key.clone(),
                    Entry {
                        token: Some(token.into()),
                        lease_until: now + lease,
                        expires: now + ttl,
                    },
                );
                claim
            })
            .collect())
    }

    async fn mark(&self, keys: &[String], ttl: Duration) -> Result<(), StoreError> {
        self.up()?;
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap();
        for key in keys {
            entries.insert(
                key.clone(),
                Entry {
                    token: None,
                    lease_until: now,
                    expires: now + ttl,
                },
            );
        }
        Ok(())
    }

    async fn release(&self, keys: &[String], token: &str) -> Result<(), StoreError> {
        self.up()?;
        let mut entries = self.entries.lock().unwrap();
        for key in keys {
            if entries
                .get(key)
                .is_some_and(|e| e.token.as_deref() == Some(token))
            {
                entries.remove(key);
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.up()
    }
}

impl MemoryStore {
    /// Whether `key` is marked done now.
    pub(crate) fn is_done(&self, key: &str) -> bool {
        self.entries
            .lock()
            .map(|e| e.get(key).is_some_and(|e| e.token.is_none()))
            .unwrap_or(false)
    }
}
