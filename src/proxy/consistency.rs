//! Consistency-aware read routing state: each collection's default level, and each client
//! connection's recent writes (read-your-writes).
//!
//! A read that asks for the collection's default level (`use_default_consistency`) is
//! routed by that level, learnt once from `DescribeCollection` on the primary and cached.
//! Any DDL that passes through empties the cache (cheaper and safer than parsing which
//! collection each DDL touches).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::common::ConsistencyLevel;

/// `(database, collection)`.
pub type CollectionKey = (String, String);

/// Cached default consistency levels.
#[derive(Debug, Default)]
pub struct LevelCache {
    // Short sections only.
    levels: Mutex<HashMap<CollectionKey, ConsistencyLevel>>,
}

impl LevelCache {
    /// The cached level.
    pub fn get(&self, key: &CollectionKey) -> Option<ConsistencyLevel> {
        self.levels.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied()
    }

    /// Remembers a level.
    pub fn put(&self, key: CollectionKey, level: ConsistencyLevel) {
        self.levels.lock().unwrap_or_else(|p| p.into_inner()).insert(key, level);
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
