//! The in-process cache: bounded, concurrent, and never stale, because an id never
//! changes once assigned. Lookups borrow the string: no allocation on a hit.

use std::hash::{Hash, Hasher};

use quick_cache::sync::Cache;
use quick_cache::Equivalent;

/// An owned key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    org: u64,
    string: Box<str>,
}

/// A borrowed key, hashing exactly as [`Key`].
struct KeyRef<'a> {
    org: u64,
    string: &'a str,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        KeyRef {
            org: self.org,
            string: &self.string,
        }
        .hash(h)
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.org.hash(h);
        self.string.hash(h);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.org == key.org && self.string == &*key.string
    }
}

/// `(organization, string) → id`, holding at most a fixed number of entries.
pub struct IdCache {
    /// The entries.
    inner: Cache<Key, u64>,
}

impl std::fmt::Debug for IdCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdCache").field("len", &self.len()).finish()
    }
}

impl IdCache {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Cache::new(capacity.max(1)),
        }
    }

    /// The cached id, if any.
    pub fn get(&self, org: u64, string: &str) -> Option<u64> {
        self.inner.get(&KeyRef { org, string })
    }

    /// Remembers an id.
    pub fn insert(&self, org: u64, string: &str, id: u64) {
        self.inner.insert(
            Key {
                org,
                string: string.into(),
            },
            id,
        );
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_by_borrowed_key_and_stays_bounded() {
        let c = IdCache::new(100);
        c.insert(1, "a", 70000);
        assert_eq!(c.get(1, "a"), Some(70000));
        assert_eq!(c.get(2, "a"), None, "per organization");
        for i in 0..1000 {
            c.insert(1, &format!("s{i}"), 70001 + i);
        }
        assert!(c.len() <= 110, "{}", c.len());
    }
}
