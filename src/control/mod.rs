//! The control side: the one owner of the topology, and the only writer of routing tables.
//!
//! [`Control`] holds the persisted topology, the proxy state, the cluster registry, the
//! health handles and the write gate. Every change goes through it: the monitor reports a
//! routing input changed ([`Control::publish`]), discovery adopts roles changed behind
//! switchyard's back ([`discovery`]), a switchover or failover commits a new topology
//! ([`Control::commit`]), a reload swaps clusters. Each builds one complete
//! [`RoutingTable`] and stores it once, and only when it differs from the current one.

pub mod discovery;
pub mod reload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::cdc::CdcFactory;
use crate::config::{Config, StateConfig};
use crate::gate::{GateLimits, WriteGate};
use crate::monitor::{ClusterView, HealthHandle, MonitorSettings};
use crate::routing::{Cluster, RoutingTable, SharedRouting};
use crate::state::{PendingJob, PersistedState, StateError, StateStore};
use crate::topology::{ProxyState, Topology};

/// Kinds of role change, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Planned switchover.
    Switchover = 0,
    /// Force failover.
    Failover = 1,
    /// Roles changed outside switchyard and adopted.
    Discovered = 2,
}

/// Results of a role change, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeResult {
    /// It happened.
    Succeeded = 0,
    /// It failed.
    Failed = 1,
    /// It was undone.
    RolledBack = 2,
}

impl ChangeKind {
    /// Label text.
    pub fn as_str(self) -> &'static str {
        ["switchover", "failover", "discovered"][self as usize]
    }
}

impl ChangeResult {
    /// Label text.
    pub fn as_str(self) -> &'static str {
        ["succeeded", "failed", "rolled_back"][self as usize]
    }
}

#[derive(Debug)]
struct Inner {
    topology: Topology,
    state: ProxyState,
    abnormal: Option<String>,
    pending_job: Option<PendingJob>,
}

/// The control side.
pub struct Control {
    config: ArcSwap<Config>,
    clusters: ArcSwap<Vec<Arc<Cluster>>>,
    routing: SharedRouting,
    // Short sections only, never across an await.
    inner: Mutex<Inner>,
    health: Mutex<HashMap<String, HealthHandle>>,
    monitor_settings: Arc<ArcSwap<MonitorSettings>>,
    /// The write gate.
    pub gate: Arc<WriteGate>,
    store: StateStore,
    role_changes: [[AtomicU64; 3]; 3],
    /// Wakes discovery now (a write was refused as not primary).
    pub rediscover: Notify,
    /// Readiness (`/readyz`); off while shutting down.
    pub ready: AtomicBool,
    /// Serialises [`Control::publish`]: a table is built from the inputs read under it and
    /// stored before the next publisher reads them, so no older table is ever stored last.
    publishing: Mutex<()>,
    /// Makes each cluster's CDC calls (tonic over the pool; fakes in tests).
    cdc: CdcFactory,
    me: Weak<Control>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("topology", &self.topology()).finish_non_exhaustive()
    }
}

/// Why the control side could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A cluster could not be set up.
    #[error("cluster {id}: {reason}")]
    Cluster {
        /// The cluster.
        id: String,
        /// Why.
        reason: String,
    },
    /// The etcd backend is configured but not built into this binary.
    #[error("state.backend = \"etcd\" is not supported by this build; use \"file\"")]
    EtcdUnsupported,
}

impl Control {
    /// Builds the control side: loads the persisted topology (it wins over the config's
    /// roles), builds the clusters and the first routing table. Tasks start in
    /// [`Control::start`].
    pub fn new(config: Config) -> Result<Arc<Self>, ControlError> {
        Self::new_with(config, crate::cdc::tonic_factory())
    }

    /// [`Control::new`] with the clusters' CDC calls made by `cdc` (tests inject fakes).
    pub fn new_with(config: Config, cdc: CdcFactory) -> Result<Arc<Self>, ControlError> {
        let store = match &config.state {
            StateConfig::File { path } => StateStore::new(path.clone()),
            StateConfig::Etcd { .. } => return Err(ControlError::EtcdUnsupported),
        };
        let clusters = build_clusters(&config, &[], &cdc)?;
        let persisted = store.load()?;
        let (topology, pending_job) = match persisted {
            Some(p) => (p.topology, p.pending_job),
            None => {
                let t = Topology::from_config(&config);
                store.save(&PersistedState { topology: t.clone(), pending_job: None })?;
                (t, None)
            }
        };
        let table = RoutingTable::build(
            &topology,
            ProxyState::Running,
            None,
            &clusters,
            Arc::new(config.routing.clone()),
            |_| true,
        );
        let gate = Arc::new(WriteGate::new(gate_limits(&config)));
        let monitor_settings = Arc::new(ArcSwap::from_pointee(MonitorSettings {
            health: config.health.clone(),
            max_read_lag: config.routing.max_read_lag,
        }));
        Ok(Arc::new_cyclic(|me| Control {
            config: ArcSwap::from_pointee(config),
            clusters: ArcSwap::from_pointee(clusters),
            routing: Arc::new(ArcSwap::from_pointee(table)),
            inner: Mutex::new(Inner { topology, state: ProxyState::Running, abnormal: None, pending_job }),
            health: Mutex::new(HashMap::new()),
            monitor_settings,
            gate,
            store,
            role_changes: Default::default(),
            rediscover: Notify::new(),
            ready: AtomicBool::new(true),
            publishing: Mutex::new(()),
            cdc,
            me: me.clone(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the health tasks (one per cluster).
    pub fn start_monitor(&self) {
        let clusters = self.clusters.load_full();
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        for c in clusters.iter() {
            health.entry(c.id.to_string()).or_insert_with(|| self.spawn_health(c.clone()));
        }
    }

    fn spawn_health(&self, cluster: Arc<Cluster>) -> HealthHandle {
        let me = self.me.clone();
        let on_change: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(c) = me.upgrade() {
                c.publish();
            }
        });
        HealthHandle::spawn(cluster, self.routing.clone(), self.monitor_settings.clone(), on_change)
    }

    /// The routing table handle.
    pub fn routing(&self) -> &SharedRouting {
        &self.routing
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Every configured cluster.
    pub fn clusters(&self) -> Arc<Vec<Arc<Cluster>>> {
        self.clusters.load_full()
    }

    /// The configured cluster with this id.
    pub fn cluster(&self, id: &str) -> Option<Arc<Cluster>> {
        self.clusters.load().iter().find(|c| &*c.id == id).cloned()
    }

    /// The current topology.
    pub fn topology(&self) -> Topology {
        self.lock().topology.clone()
    }

    /// The proxy state and, when `ABNORMAL`, why.
    pub fn state(&self) -> (ProxyState, Option<String>) {
        let g = self.lock();
        (g.state, g.abnormal.clone())
    }

    /// The job that was changing roles when the state was last written.
    pub fn pending_job(&self) -> Option<PendingJob> {
        self.lock().pending_job.clone()
    }

    /// What the monitor sees of a cluster.
    pub fn view(&self, id: &str) -> Option<ClusterView> {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).get(id).map(HealthHandle::view)
    }

    /// Test seam: sets what the monitor sees of a cluster, in place of its health task.
    #[cfg(test)]
    pub(crate) fn set_view(&self, id: &str, view: ClusterView) {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), HealthHandle::fixed(view));
        self.publish();
    }

    /// A receiver of a cluster's view changes.
    pub fn watch_view(&self, id: &str) -> Option<tokio::sync::watch::Receiver<ClusterView>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).get(id).map(HealthHandle::subscribe)
    }

    /// Sets the proxy state (jobs set `SWITCHING`/`FAILING_OVER`, then `RUNNING`).
    pub fn set_state(&self, state: ProxyState) {
        self.lock().state = state;
        self.publish();
    }

    /// Enters or leaves `ABNORMAL`. With a reason, writes are refused with it.
    pub fn set_abnormal(&self, reason: Option<String>) {
        {
            let mut g = self.lock();
            if g.abnormal == reason {
                return;
            }
            match &reason {
                Some(r) => tracing::error!(reason = %r, "ABNORMAL: writes refused, reads continue"),
                None => tracing::info!("left ABNORMAL"),
            }
            g.abnormal = reason;
        }
        self.publish();
        self.gate.wake_all();
    }

    /// Persists a pending job (before the clusters are told anything).
    pub fn record_job(&self, job: Option<PendingJob>) -> Result<(), StateError> {
        let mut g = self.lock();
        let st = PersistedState { topology: g.topology.clone(), pending_job: job.clone() };
        self.store.save(&st)?;
        g.pending_job = job;
        Ok(())
    }

    /// Persists a new topology (and clears any pending job), then swaps routing.
    pub fn commit(&self, topology: Topology) -> Result<(), StateError> {
        {
            let mut g = self.lock();
            self.store.save(&PersistedState { topology: topology.clone(), pending_job: None })?;
            tracing::info!(epoch = topology.epoch, primary = ?topology.primary, "topology committed");
            g.topology = topology;
            g.pending_job = None;
        }
        self.publish();
        Ok(())
    }

    /// Sets the topology in memory and swaps routing without writing the state: the job on
    /// disk still names the change, so a restart before [`Control::persist_done`] finishes
    /// it (a switchover releases its held writes this way without waiting for the disk).
    pub fn adopt(&self, topology: Topology) {
        {
            let mut g = self.lock();
            tracing::info!(epoch = topology.epoch, primary = ?topology.primary, "topology adopted (not yet persisted)");
            g.topology = topology;
        }
        self.publish();
    }

    /// Persists the topology in memory and clears the pending job, off the async threads.
    pub async fn persist_done(&self) -> Result<(), StateError> {
        self.off_runtime(|c| {
            let mut g = c.lock();
            c.store.save(&PersistedState { topology: g.topology.clone(), pending_job: None })?;
            tracing::info!(epoch = g.topology.epoch, primary = ?g.topology.primary, "topology committed");
            g.pending_job = None;
            Ok(())
        })
        .await
    }

    /// [`Control::record_job`] off the async threads (the file write and its fsyncs take
    /// milliseconds; a job can do something else meanwhile).
    pub async fn record_job_async(&self, job: Option<PendingJob>) -> Result<(), StateError> {
        self.off_runtime(move |c| c.record_job(job)).await
    }

    async fn off_runtime(
        &self,
        f: impl FnOnce(&Control) -> Result<(), StateError> + Send + 'static,
    ) -> Result<(), StateError> {
        let Some(me) = self.me.upgrade() else { return f(self) };
        let path = self.store.path().to_path_buf();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .unwrap_or_else(|e| Err(StateError::Io { path, source: std::io::Error::other(e.to_string()) }))
    }

    /// Counts a role change.
    pub fn count_change(&self, kind: ChangeKind, result: ChangeResult) {
        self.role_changes[kind as usize][result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Role changes by kind and result.
    pub fn role_changes(&self, kind: ChangeKind, result: ChangeResult) -> u64 {
        self.role_changes[kind as usize][result as usize].load(Ordering::Relaxed)
    }

    /// Rebuilds the routing table from the topology, the proxy state and the monitor's
    /// views, and stores it if anything routing depends on changed.
    ///
    /// Publishers (a job, discovery, a health change, the data path after a refusal) are
    /// serialised, each reading the inputs after the previous one stored its table, so the
    /// table stored last is built from the newest inputs; and a table never replaces one with
    /// a higher epoch.
    pub fn publish(&self) {
        let _one_at_a_time = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let (topology, state, abnormal) = {
            let g = self.lock();
            (g.topology.clone(), g.state, g.abnormal.clone())
        };
        let state = if abnormal.is_some() {
            ProxyState::Abnormal
        } else if state == ProxyState::Running && self.gate.closed_reason().is_some() {
            ProxyState::Holding
        } else {
            state
        };
        let views: HashMap<String, ClusterView> =
            self.health.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, h)| (k.clone(), h.view())).collect();
        let config = self.config.load();
        let clusters = self.clusters.load_full();
        let serving = serving_standbys(&topology, &views, config.routing.min_serving_standbys);
        let table = RoutingTable::build(&topology, state, abnormal, &clusters, Arc::new(config.routing.clone()), |c| {
            serving.iter().any(|s| s == &*c.id)
        });
        let current = self.routing.load();
        if table.epoch < current.epoch {
            tracing::error!(
                current = current.epoch,
                built = table.epoch,
                "a routing table older than the one in force was not stored"
            );
            return;
        }
        if !same_routing(&current, &table) {
            tracing::info!(
                epoch = table.epoch,
                state = ?table.state,
                primary = ?table.primary.as_ref().map(|p| p.id.clone()),
                readable = ?table.readable.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
                "routing table swapped"
            );
            self.routing.store(Arc::new(table));
        }
    }

    /// Re-applies config-derived settings after a reload (the caller validated and diffed).
    pub fn apply_config(&self, config: Config) -> Result<(), ControlError> {
        let old = self.clusters.load_full();
        let clusters = build_clusters(&config, &old, &self.cdc)?;
        self.gate.set_limits(gate_limits(&config));
        self.monitor_settings.store(Arc::new(MonitorSettings {
            health: config.health.clone(),
            max_read_lag: config.routing.max_read_lag,
        }));
        {
            let mut g = self.lock();
            let known: Vec<String> = config.clusters.iter().map(|c| c.id.clone()).collect();
            let mut t = g.topology.clone();
            let before = t.clone();
            t.standbys.retain(|s| known.contains(s));
            t.fenced.retain(|s| known.contains(s));
            t.rebuild.retain(|s| known.contains(s));
            for c in &config.clusters {
                if !t.members().any(|m| m == &c.id) {
                    t.standbys.push(c.id.clone());
                }
            }
            if t != before {
                t.epoch += 1;
                self.store.save(&PersistedState { topology: t.clone(), pending_job: g.pending_job.clone() })?;
                g.topology = t;
            }
        }
        self.clusters.store(Arc::new(clusters.clone()));
        self.config.store(Arc::new(config));
        {
            let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
            health.retain(|id, _| clusters.iter().any(|c| &*c.id == id));
            for c in &clusters {
                let fresh = !old.iter().any(|o| Arc::ptr_eq(o, c));
                if fresh {
                    health.insert(c.id.to_string(), self.spawn_health(c.clone()));
                }
            }
        }
        self.publish();
        Ok(())
    }
}

fn gate_limits(config: &Config) -> GateLimits {
    GateLimits {
        hold_window: config.switchover.hold_window,
        max_requests: config.switchover.max_held_requests,
        max_bytes: config.switchover.max_held_bytes,
    }
}

/// Builds cluster objects, reusing the old one (connections, counters) when its config is
/// unchanged.
fn build_clusters(config: &Config, old: &[Arc<Cluster>], cdc: &CdcFactory) -> Result<Vec<Arc<Cluster>>, ControlError> {
    config
        .clusters
        .iter()
        .map(|cc| match old.iter().find(|o| o.config == *cc) {
            Some(o) => Ok(o.clone()),
            None => Cluster::new_with(cc.clone(), cdc)
                .map_err(|e| ControlError::Cluster { id: cc.id.clone(), reason: e.to_string() }),
        })
        .collect()
}

/// Standbys that serve reads: up and within the lag bound; if fewer than `min` do, the
/// least-lagging up ones whose lag is known are kept too. Unknown is unsafe: a standby not
/// probed yet (just started, or just added by a reload) or whose lag is unknown serves none.
fn serving_standbys(topology: &Topology, views: &HashMap<String, ClusterView>, min: usize) -> Vec<String> {
    let candidates: Vec<(&String, &ClusterView)> = topology
        .standbys
        .iter()
        .filter(|s| topology.is_serving_standby(s))
        .filter_map(|s| views.get(s).map(|v| (s, v)))
        .filter(|(_, v)| v.up)
        .collect();
    let mut serving: Vec<String> = candidates.iter().filter(|(_, v)| v.lag_ok).map(|(s, _)| (*s).clone()).collect();
    if serving.len() < min {
        let mut lagging: Vec<_> = candidates.iter().filter(|(_, v)| !v.lag_ok && v.lag.is_some()).collect();
        lagging.sort_by_key(|(_, v)| v.lag);
        for (s, _) in lagging.into_iter().take(min - serving.len()) {
            serving.push((*s).clone());
        }
    }
    serving
}

fn same_routing(a: &RoutingTable, b: &RoutingTable) -> bool {
    let ids = |v: &[Arc<Cluster>]| v.iter().map(|c| Arc::as_ptr(c) as usize).collect::<Vec<_>>();
    a.epoch == b.epoch
        && a.state == b.state
        && a.abnormal_reason == b.abnormal_reason
        && a.primary.as_ref().map(Arc::as_ptr) == b.primary.as_ref().map(Arc::as_ptr)
        && ids(&a.standbys) == ids(&b.standbys)
        && ids(&a.readable) == ids(&b.readable)
        && ids(&a.clusters) == ids(&b.clusters)
        && a.fenced == b.fenced
        && a.rebuild == b.rebuild
        && *a.policy == *b.policy
}

/// A control side for unit tests: primary `a`, standby `b` (no server behind either), its
/// state file in `dir`.
#[cfg(test)]
pub(crate) fn test_control(dir: &std::path::Path) -> Arc<Control> {
    let toml = format!(
        "[state]\npath = \"{}\"\n\
         [[clusters]]\nid=\"a\"\nuri=\"http://127.0.0.1:1\"\npchannels=1\nrole=\"primary\"\n\
         [[clusters]]\nid=\"b\"\nuri=\"http://127.0.0.1:2\"\npchannels=1\nrole=\"standby\"\n",
        dir.join("state.json").display()
    );
    Control::new(crate::config::Config::from_toml(&toml, dir).unwrap()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::test_control as control;
    use super::*;

    #[test]
    fn concurrent_publishers_never_regress_the_epoch_and_the_last_table_is_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        /// Stops the other threads however the test thread leaves the scope (a failed assert
        /// must fail the test, not hang it).
        struct Stop(Arc<AtomicBool>);
        impl Drop for Stop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        std::thread::scope(|s| {
            let _stop = Stop(stop.clone());
            // Publishers racing one another (a health change, the data path, discovery).
            for _ in 0..4 {
                let (c, stop) = (c.clone(), stop.clone());
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        c.publish();
                    }
                });
            }
            // A watcher: the epoch in force only ever goes up.
            let (cw, stopw) = (c.clone(), stop.clone());
            let watcher = s.spawn(move || {
                let mut last = 0;
                let mut seen = 0;
                while !stopw.load(Ordering::Relaxed) {
                    let e = cw.routing().load().epoch;
                    assert!(e >= last, "epoch went from {last} back to {e}");
                    last = e;
                    seen += 1;
                }
                seen
            });
            // Role changes, each at a new epoch, alternating the primary (adopt: no disk).
            for i in 0..2000u64 {
                let t = c.topology();
                let next = if t.primary.as_deref() == Some("a") { "b" } else { "a" };
                c.adopt(t.promoted(next));
                assert!(c.routing().load().epoch >= i, "after adopt {i}");
            }
            stop.store(true, Ordering::Relaxed);
            assert!(watcher.join().unwrap() > 0);
        });
        c.publish();
        let (t, table) = (c.topology(), c.routing().load_full());
        assert_eq!(table.epoch, t.epoch, "the table in force is built from the newest topology");
        assert_eq!(table.primary.as_ref().map(|p| p.id.to_string()), t.primary, "and names its primary");
    }
}
