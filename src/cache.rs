//! The one bounded cache keyed by SQL text: prepared statements of a shared connection, parameter types
//! behind a transaction pooler.
//!
//! A read-write lock, not a mutex: every request reads it and readers never wait for each other (a mutex
//! held by a thread the OS preempts stalls the other workers for a time slice: milliseconds of tail
//! latency on a busy machine). Bounded because it lives as long as its connection or pool and serves
//! every caller: past its capacity (SQL built with inlined values, say) it starts over, which costs one
//! re-prepare per text still in use. Dropping a `Statement` closes it on the server once no request
//! uses it, so the server side is bounded too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::sync::{read, write};

/// How many SQL texts a cache keeps.
pub(crate) const CAPACITY: usize = 1024;

/// Values by SQL text, at most [`CAPACITY`] of them.
#[derive(Debug)]
pub(crate) struct SqlCache<V> {
    map: RwLock<HashMap<Arc<str>, V>>,
}

impl<V> Default for SqlCache<V> {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
        }
    }
}

impl<V: Clone> SqlCache<V> {
    pub(crate) fn get(&self, sql: &str) -> Option<V> {
        read(&self.map).get(sql).cloned()
    }

    /// Keeps `value` for `sql`, starting over when full.
    pub(crate) fn insert(&self, sql: Arc<str>, value: V) {
        let mut map = write(&self.map);
        if map.len() >= CAPACITY && !map.contains_key(&sql) {
            map.clear();
        }
        map.insert(sql, value);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        read(&self.map).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_over_when_full_and_keeps_a_known_text() {
        let cache = SqlCache::default();
        for n in 0..CAPACITY {
            cache.insert(format!("SELECT {n}").into(), n);
        }
        assert_eq!(cache.len(), CAPACITY);
        // Replacing a known text does not count as a new one.
        cache.insert("SELECT 0".into(), 7);
        assert_eq!(cache.len(), CAPACITY);
        assert_eq!(cache.get("SELECT 0"), Some(7));
        cache.insert("SELECT x".into(), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("SELECT 0"), None);
        assert_eq!(cache.get("SELECT x"), Some(1));
    }
}
