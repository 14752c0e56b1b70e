//! Consistency-aware read routing state: each collection's default level, and each client
//! connection's recent writes (read-your-writes).
//!
//! A read that asks for the collection's default level (`use_default_consistency`) is
//! routed by that level, learnt from `DescribeCollection` on the primary and cached for
//! `routing.level_cache_ttl`, so a level changed outside switchyard is seen within it. Any
//! DDL that passes through empties the cache (cheaper and safer than parsing which
//! collection each DDL touches).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::common::ConsistencyLevel;

/// Levels cached at most; past it the cache starts over.
const MAX_CACHED_LEVELS: usize = 16 * 1024;

/// `(database, collection)`.
pub type CollectionKey = (String, String);

/// Cached default consistency levels.
#[derive(Debug, Default)]
pub struct LevelCache {
    // Short sections only.
    levels: Mutex<HashMap<CollectionKey, (ConsistencyLevel, Instant)>>,
}

impl LevelCache {
    /// The cached level, if learnt less than `ttl` ago.
    pub fn get(&self, key: &CollectionKey, ttl: Duration) -> Option<ConsistencyLevel> {
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        match levels.get(key) {
            Some((level, at)) if at.elapsed() < ttl => Some(*level),
            Some(_) => {
                levels.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a level.
    pub fn put(&self, key: CollectionKey, level: ConsistencyLevel) {
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a client naming endless collections cannot grow it without limit.
        if levels.len() >= MAX_CACHED_LEVELS {
            levels.clear();
        }
        levels.insert(key, (level, Instant::now()));
    }

    /// Forgets everything (a DDL passed).
    pub fn clear(&self) {
        self.levels.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// One connection's recent writes: collection → (primary timestamp, when).
#[derive(Debug, Default)]
pub struct RecentWrites {
    // Short sections only.
    writes: Mutex<HashMap<CollectionKey, (u64, Instant)>>,
}

impl RecentWrites {
    /// Records a write acknowledged at `tick`.
    pub fn note(&self, key: CollectionKey, tick: u64) {
        let mut w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let e = w.entry(key).or_insert((0, Instant::now()));
        e.0 = e.0.max(tick);
        e.1 = Instant::now();
    }

    /// The timestamp a standby must have applied before it may serve this connection's
    /// reads of `key`, if a write within `window` requires one.
    pub fn required(&self, key: &CollectionKey, window: Duration) -> Option<u64> {
        let mut w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        match w.get(key) {
            Some((tick, at)) if at.elapsed() <= window => Some(*tick),
            Some(_) => {
                w.remove(key);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_expire_after_the_ttl() {
        let cache = LevelCache::default();
        let key = ("default".to_string(), "books".to_string());
        cache.put(key.clone(), ConsistencyLevel::Bounded);
        assert_eq!(cache.get(&key, Duration::from_secs(30)), Some(ConsistencyLevel::Bounded));
        assert_eq!(cache.get(&key, Duration::ZERO), None, "expired entries are not served");
        assert_eq!(cache.get(&key, Duration::from_secs(30)), None, "and are forgotten");
    }
}
