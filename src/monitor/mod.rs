//! The cluster monitor: one health task per cluster, publishing what it sees on a `watch`.
//!
//! Each [`HealthHandle`] owns its task; dropping the handle (a cluster removed by a
//! reload) stops it. A task starts a probe of its cluster every `health.interval`, whether
//! or not earlier probes have answered (each has `health.timeout`), and turns the cluster up
//! or down only after `rise`/`fall` consecutive results, taken in the order the probes
//! started: a hung cluster is down within `fall × interval + timeout`. The data path counts
//! transport failures on real traffic and wakes the task early, so a dead cluster leaves
//! the read rotation before its next probe (passive ejection). On standbys the task also
//! reads the replication checkpoints and computes the lag ([`lag`]). A fenced cluster is
//! not probed at all (it shows as down) until it is readmitted.
//!
//! A task calls its `on_change` hook only when something routing depends on changed (up or
//! down, in or out of the lag bound), so routing snapshots are rebuilt only then.

pub mod lag;
pub mod probe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::HealthConfig;
use crate::routing::{Cluster, SharedRouting};

/// What the monitor knows about one cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// Passed `rise` probes since it last failed `fall` (or never probed yet: false).
    pub up: bool,
    /// At least one probe has completed.
    pub probed: bool,
    /// The last probe error, if the last probe failed.
    pub last_error: Option<String>,
    /// Since when the cluster is down (for automatic failover).
    pub down_since: Option<Instant>,
    /// Newest source timestamp applied (standbys; `None` when unknown).
    pub checkpoint: Option<u64>,
    /// Replication lag (standbys), `None` when it cannot be known.
    pub lag: Option<Duration>,
    /// Within `max_read_lag`, with hysteresis (unknown lag counts as within: an unknown
    /// lag must not shun a cluster).
    pub lag_ok: bool,
}

/// Settings a health task reads at every round (hot-reloadable).
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// `[health]`.
    pub health: HealthConfig,
    /// `routing.max_read_lag`.
    pub max_read_lag: Duration,
}

/// Owns one cluster's health task.
#[derive(Debug)]
pub struct HealthHandle {
    view: watch::Receiver<ClusterView>,
    task: JoinHandle<()>,
}

impl Drop for HealthHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthHandle {
    /// Starts probing `cluster`. `on_change` runs when a routing input changes.
    pub fn spawn(
        cluster: Arc<Cluster>,
        routing: SharedRouting,
        settings: Arc<ArcSwap<MonitorSettings>>,
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let (tx, view) = watch::channel(ClusterView { lag_ok: true, ..ClusterView::default() });
        let span = tracing::info_span!("health", cluster = %cluster.id);
        let task = tokio::spawn(run(cluster, routing, settings, tx, on_change).instrument(span));
        Self { view, task }
    }

    /// The latest view.
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// A receiver to wait on changes.
    pub fn subscribe(&self) -> watch::Receiver<ClusterView> {
        self.view.clone()
    }
}

/// What one probe found.
#[derive(Debug)]
struct ProbeOutcome {
    /// `CheckHealth` (or passive ejection), `Err` with a short reason.
    health: Result<(), String>,
    /// Counts as `fall` failures at once (transport failures on client traffic).
    passive: bool,
    /// On a healthy standby: the primary asked about and the checkpoint read from it.
    checkpoint: Option<CheckpointRead>,
}

/// A standby's checkpoint: the primary it was asked about, and its answer.
type CheckpointRead = (Arc<str>, Result<Option<u64>, String>);

/// Probes once: health, then, on a healthy standby, its checkpoint from the primary.
async fn probe_once(cluster: Arc<Cluster>, routing: SharedRouting, timeout: Duration) -> ProbeOutcome {
    let health = probe::health(&cluster, timeout).await;
    let mut checkpoint = None;
    if health.is_ok() {
        let table = routing.load_full();
        let is_standby = table.standbys.iter().any(|c| Arc::ptr_eq(c, &cluster));
        if let (true, Some(p)) = (is_standby, table.primary.clone()) {
            checkpoint = Some((p.id.clone(), probe::checkpoint(&cluster, &p.id, timeout).await));
        }
    }
    ProbeOutcome { health, passive: false, checkpoint }
}

/// Probes in flight at most (each ends within its timeouts, so this only bounds kicks).
const MAX_PROBES_IN_FLIGHT: usize = 8;

/// The health task. A probe starts every `interval` whether or not the previous ones have
/// answered, and results are taken in the order probes started: a hung cluster is seen down
/// `fall` probes after it hung, within `fall × interval + timeout`, not `fall` timeouts
/// (plus the checkpoint reads) later.
async fn run(
    cluster: Arc<Cluster>,
    routing: SharedRouting,
    settings: Arc<ArcSwap<MonitorSettings>>,
    tx: watch::Sender<ClusterView>,
    on_change: Arc<dyn Fn() + Send + Sync>,
) {
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering::Relaxed;

    let mut counts = (0u32, 0u32);
    let mut probes = futures_util::stream::FuturesOrdered::new();
    let mut next = tokio::time::Instant::now();
    loop {
        let s = settings.load_full();
        tokio::select! {
            Some(outcome) = probes.next(), if !probes.is_empty() => {
                apply(&cluster, &routing, &s, &tx, &on_change, &mut counts, outcome);
                continue;
            }
            _ = tokio::time::sleep_until(next) => {}
            _ = cluster.signals.kick.notified() => {}
        }
        next = tokio::time::Instant::now() + s.health.interval;
        if routing.load().is_fenced(&cluster.id) {
            // A fenced cluster gets nothing from switchyard, probes included, until it is
            // readmitted; then it must pass `rise` probes again before it serves.
            probes.clear();
            cluster.signals.passive_failures.store(0, Relaxed);
            counts = (0, s.health.fall);
            mark_fenced(&tx, &on_change);
            continue;
        }
        let passive = cluster.signals.passive_failures.load(Relaxed);
        if passive >= s.health.fall {
            cluster.signals.passive_failures.store(0, Relaxed);
            let health = Err(format!("{passive} consecutive transport failures on client traffic"));
            let outcome = ProbeOutcome { health, passive: true, checkpoint: None };
            apply(&cluster, &routing, &s, &tx, &on_change, &mut counts, outcome);
            // Probes started before the failures on client traffic must not count toward `rise`.
            probes.clear();
        } else if probes.len() < MAX_PROBES_IN_FLIGHT {
            probes.push_back(probe_once(cluster.clone(), routing.clone(), s.health.timeout));
        }
    }
}

/// Folds one probe's outcome into the view, and tells the control side when a routing input
/// changed. `counts` is (consecutive successes, consecutive failures).
/// Shows a fenced cluster as down and unprobed.
fn mark_fenced(tx: &watch::Sender<ClusterView>, on_change: &Arc<dyn Fn() + Send + Sync>) {
    let mut view = tx.borrow().clone();
    let was_up = view.up;
    view.up = false;
    view.down_since.get_or_insert_with(Instant::now);
    view.last_error = Some("fenced: not probed until readmitted".into());
    (view.checkpoint, view.lag, view.lag_ok) = (None, None, true);
    tx.send_replace(view);
    if was_up {
        on_change();
    }
}

fn apply(
    cluster: &Arc<Cluster>,
    routing: &SharedRouting,
    s: &MonitorSettings,
    tx: &watch::Sender<ClusterView>,
    on_change: &Arc<dyn Fn() + Send + Sync>,
    counts: &mut (u32, u32),
    outcome: ProbeOutcome,
) {
    use std::sync::atomic::Ordering::Relaxed;

    let (oks, fails) = counts;
    let first = !tx.borrow().probed;
    let mut view = tx.borrow().clone();
    view.probed = true;
    match &outcome.health {
        Ok(()) => {
            *oks += 1;
            *fails = 0;
            view.last_error = None;
            if !view.up && (*oks >= s.health.rise || first) {
                view.up = true;
                view.down_since = None;
                tracing::info!("cluster up");
            }
        }
        Err(e) => {
            *fails += 1;
            *oks = 0;
            view.last_error = Some(e.clone());
            if outcome.passive {
                *fails = (*fails).max(s.health.fall);
            }
            if view.up && *fails >= s.health.fall || first {
                if view.up {
                    tracing::warn!(error = %e, "cluster down");
                }
                view.up = false;
                view.down_since.get_or_insert_with(Instant::now);
            }
        }
    }

    let table = routing.load_full();
    let primary = table.primary.clone();
    let is_standby = table.standbys.iter().any(|c| Arc::ptr_eq(c, cluster));
    match (is_standby, primary) {
        (true, Some(p)) if view.up => match outcome.checkpoint {
            Some((asked, Ok(cp))) if asked == p.id => {
                view.checkpoint = cp;
                cluster.signals.checkpoint.store(cp.unwrap_or(0), Relaxed);
                let l = lag::lag(p.signals.last_write(), cp);
                view.lag_ok = lag::within_bound(view.lag_ok, l, s.max_read_lag);
                view.lag = Some(l);
            }
            Some((_, Err(e))) => {
                tracing::debug!(error = %e, "no checkpoint");
                view.checkpoint = None;
                cluster.signals.checkpoint.store(0, Relaxed);
                view.lag = None;
                view.lag_ok = true;
            }
            // Probed under another topology (or not probed): the next probe will tell.
            _ => {}
        },
        _ => {
            view.checkpoint = None;
            view.lag = if table.primary.as_ref().is_some_and(|p| Arc::ptr_eq(p, cluster)) {
                Some(Duration::ZERO)
            } else {
                None
            };
            view.lag_ok = true;
        }
    }

    let routing_changed = {
        let old = tx.borrow();
        old.up != view.up || old.lag_ok != view.lag_ok
    };
    tx.send_replace(view);
    if routing_changed {
        on_change();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, Role};
    use crate::topology::{ProxyState, Topology};

    fn fixture() -> (Arc<Cluster>, SharedRouting, MonitorSettings) {
        let cluster = Cluster::new(ClusterConfig {
            id: "b".into(),
            uri: "http://127.0.0.1:1".into(),
            token: None,
            pchannels: vec!["b-rootcoord-dml_0".into()],
            role: Role::Standby,
            metrics_uri: None,
            tls_ca: None,
            tls_server_name: None,
        })
        .unwrap();
        let cfg = crate::config::Config::from_toml(
            "[[clusters]]\nid=\"a\"\nuri=\"http://h:1\"\npchannels=1\nrole=\"primary\"\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let topo = Topology { epoch: 1, primary: None, standbys: vec![], fenced: vec![], rebuild: vec![] };
        let table = crate::routing::RoutingTable::build(
            &topo,
            ProxyState::Running,
            None,
            &[],
            Arc::new(cfg.routing.clone()),
            |_| true,
        );
        let health = HealthConfig {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
        };
        (
            cluster,
            Arc::new(ArcSwap::from_pointee(table)),
            MonitorSettings { health, max_read_lag: cfg.routing.max_read_lag },
        )
    }

    fn outcome(ok: bool, passive: bool) -> ProbeOutcome {
        ProbeOutcome { health: if ok { Ok(()) } else { Err("no".into()) }, passive, checkpoint: None }
    }

    #[test]
    fn fall_rise_and_passive_ejection() {
        let (cluster, routing, s) = fixture();
        let (tx, rx) = watch::channel(ClusterView { lag_ok: true, ..ClusterView::default() });
        let changes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = changes.clone();
        let on_change: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let mut counts = (0, 0);
        let mut feed = |ok: bool, passive: bool| {
            apply(&cluster, &routing, &s, &tx, &on_change, &mut counts, outcome(ok, passive));
            rx.borrow().up
        };
        // The first result decides at once.
        assert!(feed(true, false));
        // Down only at the `fall`-th consecutive failure.
        assert!(feed(false, false));
        assert!(feed(false, false));
        assert!(!feed(false, false));
        // Up only at the `rise`-th consecutive success.
        assert!(!feed(true, false));
        assert!(feed(true, false));
        // Failures on client traffic take it down at once.
        assert!(!feed(false, true));
        assert_eq!(changes.load(std::sync::atomic::Ordering::Relaxed), 4);
    }
}
