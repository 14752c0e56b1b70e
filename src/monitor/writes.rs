//! The primary's acknowledged writes, per collection, until every standby has applied them.
//!
//! Milvus CDC does not replicate idle time (see [`super`]), so a standby's lag is known only
//! relative to writes the primary acknowledged. The data path records each acknowledged DML
//! write here ([`WriteLedger::pending`] for every write, then
//! [`WriteLedger::collection`] when it knows the collection); the monitor resolves each
//! collection's pchannels with `DescribeCollection` ([`WriteLedger::to_resolve`],
//! [`WriteLedger::resolved`]) and prunes what every standby has applied
//! ([`WriteLedger::prune`]).
//!
//! Per collection the ledger keeps [`Marks`]: acknowledged writes `(tick, seen at)` in the
//! order switchyard saw them, writes seen within [`BUCKET_US`] of each other merged (newest
//! tick, earliest time) and at most [`MAX_MARKS`] (the two oldest merged). A merge only makes
//! a write look older and applied later than it is: the lag it gives is never too small.
//!
//! Fail closed, everywhere:
//! - a write whose collection is not known yet (between the two data-path calls, or never for
//!   a write the data path could not read) counts on every pchannel;
//! - a collection whose pchannels `DescribeCollection` has not told (not asked yet, or the
//!   call failed) counts on every pchannel until it resolves;
//! - over [`MAX_COLLECTIONS`] collections with unapplied writes, a write to a new one counts
//!   as unattributed (every pchannel) until the ledger shrinks;
//! - writes pruned (applied by every standby then configured) leave their newest tick per
//!   pchannel in `settled`, so a standby added later is still measured against them.
//!
//! A collection the primary says does not exist is dropped (its writes can never be
//! applied by anyone). A dropped and re-created collection keeps its old pchannels for up
//! to [`RESOLVE_TTL`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `(database, collection)`.
pub type CollectionKey = (String, String);

/// Collections with unapplied writes kept at most.
pub const MAX_COLLECTIONS: usize = 4096;
/// Marks kept per collection at most.
pub const MAX_MARKS: usize = 64;
/// Writes seen within this many microseconds of each other share one mark.
pub const BUCKET_US: u64 = 50_000;
/// Writes awaiting their collection kept at most (then folded into the unattributed marks).
const MAX_PENDING: usize = 4096;
/// A collection's pchannels are asked again after this long.
pub const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// One acknowledged write (or a merged run of them): the primary's hybrid timestamp, and when
/// switchyard saw the acknowledgement, in microseconds since [`crate::routing::cluster::origin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The primary's tick (newest of a merged run).
    pub tick: u64,
    /// When switchyard saw it (earliest of a merged run).
    pub at_us: u64,
}

/// Acknowledged writes in the order seen, bounded (see the module doc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Marks(VecDeque<Mark>);

impl Marks {
    /// Adds a write.
    pub fn push(&mut self, tick: u64, at_us: u64) {
        if let Some(last) = self.0.back_mut()
            && at_us.saturating_sub(last.at_us) < BUCKET_US
        {
            last.tick = last.tick.max(tick);
            return;
        }
        if self.0.len() >= MAX_MARKS
            && let Some(a) = self.0.pop_front()
            && let Some(b) = self.0.front_mut()
        {
            b.tick = b.tick.max(a.tick);
            b.at_us = a.at_us.min(b.at_us);
        }
        self.0.push_back(Mark { tick, at_us });
    }

    /// The oldest write (in the order seen) not applied by a checkpoint at `applied`.
    pub fn oldest_after(&self, applied: u64) -> Option<Mark> {
        self.0.iter().find(|m| m.tick > applied).copied()
    }

    /// Whether a checkpoint at `applied` covers any of these writes.
    pub fn applied_any(&self, applied: u64) -> bool {
        self.0.iter().any(|m| m.tick <= applied)
    }

    /// Drops what a checkpoint at `applied` covers; returns the newest dropped.
    pub fn prune(&mut self, applied: u64) -> Option<Mark> {
        let mut newest: Option<Mark> = None;
        self.0.retain(|m| {
            let keep = m.tick > applied;
            if !keep && newest.is_none_or(|n| m.tick > n.tick) {
                newest = Some(*m);
            }
            keep
        });
        newest
    }

    /// Whether no write is kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where a collection's writes go on the primary.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Not known yet (or `DescribeCollection` failed): every pchannel.
    Unresolved,
    /// Indices into the primary's configured `pchannels`.
    Pchannels(Arc<[usize]>),
}

/// What `DescribeCollection` said about a collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Its pchannels, as indices into the primary's configured `pchannels`.
    Pchannels(Vec<usize>),
    /// The primary says it does not exist.
    Missing,
    /// The call failed (or named a pchannel not configured): stays on every pchannel.
    Failed,
}

#[derive(Debug)]
struct Written {
    marks: Marks,
    route: Route,
    resolved_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Any write acknowledged since start.
    any: bool,
    collections: HashMap<CollectionKey, Written>,
    /// Writes whose collection the data path has not named yet, in the order seen.
    pending: VecDeque<(u64, u64)>,
    /// Writes never attributed (unknown collection, or over the cap): every pchannel.
    unattributed: Marks,
    /// Per primary pchannel index: the newest pruned write.
    settled: Vec<Option<Mark>>,
}

/// What the lag of one standby is computed from: per primary pchannel index, the writes
/// that must be applied there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Owed {
    /// Per primary pchannel index: the oldest-first marks of every collection on it.
    pub per_pchannel: Vec<Vec<Marks>>,
    /// Per primary pchannel index: the newest write already applied everywhere.
    pub settled: Vec<Option<Mark>>,
}

/// The primary's acknowledged writes not yet applied by every standby.
#[derive(Debug, Default)]
pub struct WriteLedger {
    // Short sections only: the data path takes this lock once per acknowledged write.
    inner: Mutex<Inner>,
}

impl WriteLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an acknowledged write whose collection is not named yet (every pchannel).
    pub fn pending(&self, tick: u64, at_us: u64) {
        let mut g = self.lock();
        g.any = true;
        if g.pending.len() >= MAX_PENDING
            && let Some((t, a)) = g.pending.pop_front()
        {
            g.unattributed.push(t, a);
        }
        g.pending.push_back((tick, at_us));
    }

    /// Names the collection of a write recorded with [`Self::pending`].
    pub fn collection(&self, db: &str, collection: &str, tick: u64) {
        let mut g = self.lock();
        g.any = true;
        let at_us = match g.pending.iter().rposition(|(t, _)| *t == tick) {
            Some(i) => g.pending.remove(i).map(|(_, a)| a).unwrap_or_else(now_us),
            None => now_us(),
        };
        let key = (db.to_string(), collection.to_string());
        if !g.collections.contains_key(&key) && g.collections.len() >= MAX_COLLECTIONS {
            g.collections.retain(|_, w| !w.marks.is_empty());
        }
        if !g.collections.contains_key(&key) && g.collections.len() >= MAX_COLLECTIONS {
            g.unattributed.push(tick, at_us);
            return;
        }
        let w = g.collections.entry(key).or_insert_with(|| Written {
            marks: Marks::default(),
            route: Route::Unresolved,
            resolved_at: None,
        });
        w.marks.push(tick, at_us);
    }

    /// Whether any write was acknowledged since start.
    pub fn any(&self) -> bool {
        self.lock().any
    }

    /// Collections whose pchannels are unknown or older than [`RESOLVE_TTL`], at most `max`.
    pub fn to_resolve(&self, max: usize) -> Vec<CollectionKey> {
        let g = self.lock();
        g.collections
            .iter()
            .filter(|(_, w)| !w.marks.is_empty() && w.resolved_at.is_none_or(|t| t.elapsed() >= RESOLVE_TTL))
            .map(|(k, _)| k.clone())
            .take(max)
            .collect()
    }

    /// Records what `DescribeCollection` said.
    pub fn resolved(&self, key: &CollectionKey, r: Resolution) {
        let mut g = self.lock();
        match r {
            Resolution::Missing => {
                g.collections.remove(key);
            }
            Resolution::Failed => {
                // Keeps a known route (a transient failure does not unlearn it); an unknown one
                // stays on every pchannel and is asked again at the next probe.
                if let Some(w) = g.collections.get_mut(key).filter(|w| w.route != Route::Unresolved) {
                    w.resolved_at = Some(Instant::now());
                }
            }
            Resolution::Pchannels(p) if !p.is_empty() => {
                if let Some(w) = g.collections.get_mut(key) {
                    w.route = Route::Pchannels(p.into());
                    w.resolved_at = Some(Instant::now());
                }
            }
            Resolution::Pchannels(_) => {}
        }
    }

    /// The pchannels (primary indices) of a collection, `None` when not known.
    pub fn pchannels_of(&self, key: &CollectionKey) -> Option<Arc<[usize]>> {
        match self.lock().collections.get(key).map(|w| &w.route) {
            Some(Route::Pchannels(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// What must be applied on each of `n` primary pchannels; `None` when no write was
    /// acknowledged since start (the lag cannot be known).
    pub fn owed(&self, n: usize) -> Option<Owed> {
        let g = self.lock();
        if !g.any {
            return None;
        }
        let mut per_pchannel = vec![Vec::new(); n];
        let mut everywhere = g.unattributed.clone();
        for (t, a) in &g.pending {
            everywhere.push(*t, *a);
        }
        for w in g.collections.values().filter(|w| !w.marks.is_empty()) {
            match &w.route {
                Route::Pchannels(p) if p.iter().all(|i| *i < n) => {
                    for i in p.iter() {
                        per_pchannel[*i].push(w.marks.clone());
                    }
                }
                _ => per_pchannel.iter_mut().for_each(|v| v.push(w.marks.clone())),
            }
        }
        if !everywhere.is_empty() {
            per_pchannel.iter_mut().for_each(|v| v.push(everywhere.clone()));
        }
        let mut settled = g.settled.clone();
        settled.resize(n, None);
        Some(Owed { per_pchannel, settled })
    }

    /// Drops writes applied on every standby: `floor[i]` is the lowest checkpoint over the
    /// standbys on primary pchannel `i` (0 where one is unknown).
    pub fn prune(&self, floor: &[u64]) {
        let mut g = self.lock();
        let Inner { collections, pending, unattributed, settled, .. } = &mut *g;
        let lowest = floor.iter().copied().min().unwrap_or(0);
        if settled.len() < floor.len() {
            settled.resize(floor.len(), None);
        }
        collections.retain(|_, w| {
            let Route::Pchannels(p) = &w.route else { return true };
            let Some(applied) = p.iter().map(|i| floor.get(*i).copied().unwrap_or(0)).min() else { return true };
            if let Some(m) = w.marks.prune(applied) {
                for i in p.iter() {
                    if let Some(s) = settled.get_mut(*i)
                        && s.is_none_or(|s| m.tick > s.tick)
                    {
                        *s = Some(m);
                    }
                }
            }
            // An applied collection keeps its route while it is fresh, so its next write is
            // placed at once rather than on every pchannel until asked again.
            !w.marks.is_empty() || w.resolved_at.is_some_and(|t| t.elapsed() < RESOLVE_TTL)
        });
        // Writes on every pchannel are applied once every pchannel has passed them.
        unattributed.prune(lowest);
        pending.retain(|(t, _)| *t > lowest);
    }
}

/// Now, in microseconds since the process-wide origin.
pub fn now_us() -> u64 {
    crate::routing::cluster::origin().elapsed().as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> CollectionKey {
        ("default".into(), c.into())
    }

    #[test]
    fn marks_merge_within_a_bucket_and_stay_bounded() {
        let mut m = Marks::default();
        m.push(10, 0);
        m.push(12, BUCKET_US - 1);
        assert_eq!(m.0.len(), 1);
        assert_eq!(m.0[0], Mark { tick: 12, at_us: 0 });
        for i in 1..(MAX_MARKS as u64 * 2) {
            m.push(12 + i, i * BUCKET_US);
        }
        assert_eq!(m.0.len(), MAX_MARKS);
        // The oldest run keeps the earliest time: the lag it gives is never too small.
        assert_eq!(m.0[0].at_us, 0);
        assert_eq!(m.oldest_after(11).map(|m| m.at_us), Some(0));
        assert_eq!(m.prune(u64::MAX).map(|m| m.tick), Some(12 + MAX_MARKS as u64 * 2 - 1));
        assert!(m.is_empty());
    }

    #[test]
    fn unknown_collection_counts_everywhere_until_named_and_resolved() {
        let l = WriteLedger::default();
        assert_eq!(l.owed(2), None);
        l.pending(100, 0);
        let o = l.owed(2).unwrap();
        assert!(o.per_pchannel.iter().all(|v| v.len() == 1));
        l.collection("default", "a", 100);
        // Named but not resolved: still every pchannel.
        let o = l.owed(2).unwrap();
        assert!(o.per_pchannel.iter().all(|v| v.len() == 1));
        assert_eq!(l.to_resolve(10), vec![key("a")]);
        l.resolved(&key("a"), Resolution::Failed);
        assert!(l.owed(2).unwrap().per_pchannel.iter().all(|v| v.len() == 1));
        l.resolved(&key("a"), Resolution::Pchannels(vec![1]));
        let o = l.owed(2).unwrap();
        assert!(o.per_pchannel[0].is_empty());
        assert_eq!(o.per_pchannel[1].len(), 1);
        assert!(l.to_resolve(10).is_empty());
        assert_eq!(l.pchannels_of(&key("a")).as_deref(), Some(&[1usize][..]));
    }

    #[test]
    fn prune_settles_and_missing_collections_go() {
        let l = WriteLedger::default();
        l.pending(100, 0);
        l.collection("default", "a", 100);
        l.resolved(&key("a"), Resolution::Pchannels(vec![0]));
        l.pending(200, 0);
        l.collection("default", "b", 200);
        l.resolved(&key("b"), Resolution::Missing);
        l.prune(&[150, 0]);
        let o = l.owed(2).unwrap();
        assert!(o.per_pchannel.iter().all(Vec::is_empty));
        assert_eq!(o.settled[0].map(|m| m.tick), Some(100));
        assert_eq!(o.settled[1], None);
        // Still "some write seen": the lag is known (zero) from now on.
        assert!(l.any());
    }

    #[test]
    fn over_the_cap_a_new_collection_counts_everywhere() {
        let l = WriteLedger::default();
        for i in 0..MAX_COLLECTIONS {
            l.pending(i as u64 + 1, 0);
            l.collection("default", &format!("c{i}"), i as u64 + 1);
        }
        l.pending(1_000_000, 0);
        l.collection("default", "one-too-many", 1_000_000);
        assert!(l.pchannels_of(&key("one-too-many")).is_none());
        assert!(!l.lock().unattributed.is_empty());
    }
}
