//! The cluster monitor: one health task per cluster, publishing what it sees on a `watch`.
//!
//! Each [`HealthHandle`] owns its task; dropping the handle (a cluster removed by a
//! reload) stops it. A task probes its cluster every `health.interval` with a timeout and
//! turns it up or down only after `rise`/`fall` consecutive results. The data path counts
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

async fn run(
    cluster: Arc<Cluster>,
    routing: SharedRouting,
    settings: Arc<ArcSwap<MonitorSettings>>,
    tx: watch::Sender<ClusterView>,
    on_change: Arc<dyn Fn() + Send + Sync>,
) {
    let (mut oks, mut fails) = (0u32, 0u32);
    loop {
        let s = settings.load_full();
        if routing.load().is_fenced(&cluster.id) {
            // A fenced cluster gets nothing from switchyard, probes included, until it is
            // readmitted; then it must pass `rise` probes again before it serves.
            let mut view = tx.borrow().clone();
            let was_up = view.up;
            (oks, fails) = (0, s.health.fall);
            view.up = false;
            view.down_since.get_or_insert_with(Instant::now);
            view.last_error = Some("fenced: not probed until readmitted".into());
            (view.checkpoint, view.lag, view.lag_ok) = (None, None, true);
            tx.send_replace(view);
            if was_up {
                on_change();
            }
            tokio::select! {
                _ = tokio::time::sleep(s.health.interval) => {}
                _ = cluster.signals.kick.notified() => {}
            }
            continue;
        }
        let passive = cluster.signals.passive_failures.load(std::sync::atomic::Ordering::Relaxed);
        let result = if passive >= s.health.fall {
            Err(format!("{passive} consecutive transport failures on client traffic"))
        } else {
            probe::health(&cluster, s.health.timeout).await
        };
        let mut view = tx.borrow().clone();
        view.probed = true;
        match &result {
            Ok(()) => {
                oks += 1;
                fails = 0;
                view.last_error = None;
                if !view.up && (oks >= s.health.rise || !tx.borrow().probed) {
                    view.up = true;
                    view.down_since = None;
                    tracing::info!("cluster up");
                }
            }
            Err(e) => {
                fails += 1;
                oks = 0;
                view.last_error = Some(e.clone());
                if passive >= s.health.fall {
                    fails = fails.max(s.health.fall);
                    cluster.signals.passive_failures.store(0, std::sync::atomic::Ordering::Relaxed);
                }
                if view.up && fails >= s.health.fall || !tx.borrow().probed {
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
        let is_standby = table.standbys.iter().any(|c| Arc::ptr_eq(c, &cluster));
        match (is_standby, primary) {
            (true, Some(p)) if view.up => match probe::checkpoint(&cluster, &p.id, s.health.timeout).await {
                Ok(cp) => {
                    view.checkpoint = cp;
                    cluster.signals.checkpoint.store(cp.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
                    let l = lag::lag(p.signals.last_write(), cp);
                    view.lag_ok = lag::within_bound(view.lag_ok, l, s.max_read_lag);
                    view.lag = Some(l);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no checkpoint");
                    view.checkpoint = None;
                    cluster.signals.checkpoint.store(0, std::sync::atomic::Ordering::Relaxed);
                    view.lag = None;
                    view.lag_ok = true;
                }
            },
            _ => {
                view.checkpoint = None;
                view.lag = if table.primary.as_ref().is_some_and(|p| Arc::ptr_eq(p, &cluster)) {
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

        tokio::select! {
            _ = tokio::time::sleep(s.health.interval) => {}
            _ = cluster.signals.kick.notified() => {}
        }
    }
}
