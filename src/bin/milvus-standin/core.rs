//! The stand-in's shared state: one cluster's role, configuration, log and checkpoints.
//!
//! Everything role-defining lives in one [`State`] behind a std mutex, held only for short
//! sections without awaits (log appends and `state.json` writes happen inside, so what is
//! persisted is always in the order it happened). A `watch` counter is bumped after every
//! change; replicators wait on it for new log entries and blocked
//! `UpdateReplicateConfiguration` calls wait on it for their fence. Four async locks order
//! the slow paths:
//! - `write_gate`: client writes hold it shared from the role check to the log append; a
//!   demotion takes it exclusively, so no write lands in the log after the fence.
//! - `pch_locks`: one per pchannel, held from the backend call to the log append, so the log
//!   order of a pchannel is the order its backend applied the writes.
//! - `apply_lock`: replicated messages are applied one at a time, across streams (milvus-lite
//!   collections are not safe for concurrent writes), and promotions wait for the one in flight.
//! - `config_lock`: configuration changes are made one at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tokio::sync::watch;

use super::config::{ConfigJson, Role, role_of};
use super::faults::{Counters, Faults};
use super::log::{Entry, EntryKind, Loaded, next_tick};
use super::persist::{Checkpoint, Drain, FenceJson, Persisted, Store};
use super::replicator::ReplicatorHandle;
use switchyard::proto::common::ReplicateConfiguration;
use switchyard::upstream::Upstream;

/// Fences received from the current source since its last write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FenceProgress {
    pub(crate) config: ReplicateConfiguration,
    pub(crate) pchannels: BTreeSet<usize>,
}

/// The role-defining state.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) me: String,
    pub(crate) pchannels: Vec<String>,
    pub(crate) config: Option<ReplicateConfiguration>,
    /// A configuration requested here that waits for the current source's fence.
    pub(crate) pending: Option<ReplicateConfiguration>,
    pub(crate) fence: Option<FenceProgress>,
    /// Whether any replicated message came from the current source under this configuration.
    pub(crate) heard_from_source: bool,
    /// Whether this cluster became secondary by being demoted (it was the primary).
    pub(crate) demoted: bool,
    pub(crate) checkpoints: BTreeMap<(String, usize), Checkpoint>,
    pub(crate) salvage: BTreeMap<(String, usize), Checkpoint>,
    pub(crate) drains: Vec<Drain>,
    pub(crate) floors: BTreeMap<String, u64>,
    pub(crate) log: Vec<Entry>,
    pub(crate) cancelled: BTreeSet<u64>,
    /// Per replicator target: the next log index it will fetch (in memory only).
    pub(crate) fetched: HashMap<String, u64>,
    pub(crate) last_tick: u64,
    /// The last tick written to each pchannel.
    pub(crate) pch_ticks: Vec<u64>,
    store: Option<Store>,
}

impl State {
    /// This cluster's role now.
    pub(crate) fn role(&self) -> Role {
        role_of(self.config.as_ref(), &self.me)
    }

    pub(crate) fn is_primary(&self) -> bool {
        self.role() == Role::Primary
    }

    /// Appends a client write; returns its time tick.
    pub(crate) fn append_write(
        &mut self,
        method: String,
        dbname: String,
        pchannel: usize,
        payload: Bytes,
    ) -> std::io::Result<u64> {
        self.append(pchannel, EntryKind::Write { method, dbname }, payload)
    }

    /// Appends a fence carrying `config` on every pchannel; returns the last fence's index.
    pub(crate) fn append_fences(&mut self, config: &ReplicateConfiguration) -> std::io::Result<u64> {
        let payload = Bytes::from(config.encode_to_vec());
        for p in 0..self.pchannels.len() {
            self.append(p, EntryKind::Fence { config: config.clone() }, payload.clone())?;
        }
        Ok(self.log.len() as u64 - 1)
    }

    fn append(&mut self, pchannel: usize, kind: EntryKind, payload: Bytes) -> std::io::Result<u64> {
        let tick = next_tick(self.last_tick);
        let entry = Entry { index: self.log.len() as u64, tick, pchannel, kind, payload };
        if let Some(store) = self.store.as_mut() {
            store.log.append(&entry, &self.pchannels)?;
        }
        self.last_tick = tick;
        if let Some(t) = self.pch_ticks.get_mut(pchannel) {
            *t = tick;
        }
        self.log.push(entry);
        Ok(tick)
    }

    /// The first log index whose tick is above `tick`.
    pub(crate) fn first_after(&self, tick: u64) -> u64 {
        self.log.partition_point(|e| e.tick <= tick) as u64
    }

    /// Writes `state.json` (when there is a state dir); `durable` adds fsyncs.
    pub(crate) fn save(&self, durable: bool) -> std::io::Result<()> {
        match &self.store {
            Some(store) => store.save(&self.persisted(), durable),
            None => Ok(()),
        }
    }

    /// Like [`State::save`], logging instead of failing (for paths that cannot undo a change).
    pub(crate) fn save_or_log(&self, durable: bool) {
        if let Err(e) = self.save(durable) {
            tracing::error!(error = %e, "cannot write state.json");
        }
    }

    fn persisted(&self) -> Persisted {
        Persisted {
            cluster_id: self.me.clone(),
            pchannels: self.pchannels.clone(),
            config: self.config.as_ref().map(ConfigJson::from),
            pending: self.pending.as_ref().map(ConfigJson::from),
            fence: self.fence.as_ref().map(|f| FenceJson {
                config: ConfigJson::from(&f.config),
                pchannels: f.pchannels.iter().copied().collect(),
            }),
            heard_from_source: self.heard_from_source,
            demoted: self.demoted,
            checkpoints: self.checkpoints.values().cloned().collect(),
            salvage_checkpoints: self.salvage.values().cloned().collect(),
            drains: self.drains.clone(),
            floors: self.floors.clone(),
        }
    }
}

/// Everything a stand-in shares between its tasks.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) id: String,
    pub(crate) pchannels: Vec<String>,
    pub(crate) backend: Arc<Upstream>,
    /// Credentials for the stand-in's own calls to its backend (replicated writes).
    pub(crate) backend_token: Option<String>,
    state: std::sync::Mutex<State>,
    changed: watch::Sender<u64>,
    pub(crate) write_gate: tokio::sync::RwLock<()>,
    pub(crate) pch_locks: Vec<tokio::sync::Mutex<()>>,
    pub(crate) apply_lock: tokio::sync::Mutex<()>,
    pub(crate) config_lock: tokio::sync::Mutex<()>,
    pub(crate) faults: Faults,
    pub(crate) counters: Counters,
    pub(crate) replicators: std::sync::Mutex<HashMap<String, ReplicatorHandle>>,
    /// Per (target, pchannel index): the target pchannel and the last confirmed tick.
    pub(crate) cdc: std::sync::Mutex<BTreeMap<(String, usize), (String, u64)>>,
    /// Each collection's default consistency level, as Milvus keeps it from
    /// `CreateCollection` (milvus-lite does not; see [`super::levels`]).
    pub(crate) levels: super::levels::Levels,
}

/// What [`Core::new`] needs.
#[derive(Debug)]
pub(crate) struct CoreParts {
    pub(crate) id: String,
    pub(crate) pchannels: usize,
    pub(crate) backend: Arc<Upstream>,
    pub(crate) backend_token: Option<String>,
    pub(crate) faults: Faults,
    pub(crate) store: Option<(Store, Option<Persisted>, Loaded)>,
}

impl Core {
    /// Builds the state, from the state dir's contents when there are any.
    pub(crate) fn new(parts: CoreParts) -> Result<Arc<Core>, String> {
        let pchannels: Vec<String> = (0..parts.pchannels).map(|i| format!("{}-rootcoord-dml_{i}", parts.id)).collect();
        let (store, persisted, loaded) = match parts.store {
            Some((s, p, l)) => (Some(s), p, l),
            None => (None, None, Loaded::default()),
        };
        let p = persisted.unwrap_or_default();
        if !p.cluster_id.is_empty() && (p.cluster_id != parts.id || p.pchannels != pchannels) {
            return Err(format!(
                "the state dir belongs to cluster '{}' with {} pchannels, not '{}' with {}",
                p.cluster_id,
                p.pchannels.len(),
                parts.id,
                pchannels.len()
            ));
        }
        let mut pch_ticks = vec![0; pchannels.len()];
        for e in &loaded.entries {
            if let Some(t) = pch_ticks.get_mut(e.pchannel) {
                *t = e.tick;
            }
        }
        let key = |c: &Checkpoint| ((c.source_cluster_id.clone(), c.pchannel_index), c.clone());
        let state = State {
            me: parts.id.clone(),
            pchannels: pchannels.clone(),
            config: p.config.as_ref().map(ReplicateConfiguration::from),
            pending: p.pending.as_ref().map(ReplicateConfiguration::from),
            fence: p.fence.as_ref().map(|f| FenceProgress {
                config: ReplicateConfiguration::from(&f.config),
                pchannels: f.pchannels.iter().copied().collect(),
            }),
            heard_from_source: p.heard_from_source,
            demoted: p.demoted,
            checkpoints: p.checkpoints.iter().map(key).collect(),
            salvage: p.salvage_checkpoints.iter().map(key).collect(),
            drains: p.drains,
            floors: p.floors,
            last_tick: loaded.entries.last().map(|e| e.tick).unwrap_or(0),
            log: loaded.entries,
            cancelled: loaded.cancelled,
            fetched: HashMap::new(),
            pch_ticks,
            store,
        };
        state.save(true).map_err(|e| format!("cannot write state.json: {e}"))?;
        Ok(Arc::new(Core {
            id: parts.id,
            pch_locks: pchannels.iter().map(|_| tokio::sync::Mutex::new(())).collect(),
            pchannels,
            backend: parts.backend,
            backend_token: parts.backend_token,
            state: std::sync::Mutex::new(state),
            changed: watch::channel(0).0,
            write_gate: tokio::sync::RwLock::new(()),
            apply_lock: tokio::sync::Mutex::new(()),
            config_lock: tokio::sync::Mutex::new(()),
            faults: parts.faults,
            counters: Counters::default(),
            replicators: std::sync::Mutex::new(HashMap::new()),
            cdc: std::sync::Mutex::new(BTreeMap::new()),
            levels: Default::default(),
        }))
    }

    /// Reads the state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&lock(&self.state))
    }

    /// Changes the state, then wakes everyone waiting for a change.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let out = f(&mut lock(&self.state));
        self.changed.send_modify(|v| *v += 1);
        out
    }

    /// Changes the state without waking anyone (for bookkeeping nobody waits on).
    pub(crate) fn modify<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// A receiver woken after every [`Core::update`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// This cluster's role now.
    pub(crate) fn role(&self) -> Role {
        self.read(State::role)
    }

    /// The pchannel a write to `collection` goes to (FNV-1a of the name, mod N).
    pub(crate) fn pchannel_for(&self, collection: &str) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in collection.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h % self.pchannels.len().max(1) as u64) as usize
    }
}

/// Locks a std mutex, recovering from poisoning (the state stays consistent: every section
/// finishes its change or makes none).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
