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
//!
//! # Lag: what a checkpoint does and does not say
//!
//! Milvus 2.6 CDC does not replicate WAL time ticks. The source's replicate stream client
//! (milvus `internal/cdc/replication/replicatestream/replicate_stream_client_impl.go`) returns
//! `ErrReplicateIgnored` for every message whose type `IsSelfControlled()` (TimeTick,
//! CreateSegment, Flush: `pkg/streaming/util/message/specialized_message.go`), and the
//! secondary's replicate interceptor (`internal/streamingnode/server/wal/interceptors/
//! replicate/replicates/impl.go`) ignores self-controlled messages and moves its checkpoint
//! (`PushForwardCheckpoint`) only on replicated data, DDL and transaction-commit messages. So
//! the checkpoint `GetReplicateInfo` reports per pchannel (`internal/proxy/impl.go` →
//! `GetReplicateCheckpoint`) is the tick of the last message replicated on that pchannel: on
//! an idle primary it stays there, and on an idle pchannel it is as old as the pchannel's
//! last write. A standby's lag cannot be read from its checkpoints alone.
//!
//! So lag is measured against writes the primary acknowledged ([`writes`]): the data path
//! records each acknowledged DML write with its collection; this monitor resolves each
//! written collection's pchannels with `DescribeCollection` on the primary
//! (`physical_channel_names`, cached [`writes::RESOLVE_TTL`]), pairs the primary's `i`-th
//! configured pchannel with the standby's `i`-th (the replicate configuration pairs them by
//! index), reads the standby's checkpoint on each pchannel, and computes each pchannel's lag
//! ([`lag`]); the standby's lag is the worst pchannel's. The newest checkpoint over pchannels
//! is never used: it hides one stuck pchannel (Milvus #53382, #52727).
//!
//! Unknown is unsafe: `lag_ok` starts false (a new, restarted or reloaded-in standby serves
//! no Bounded reads until a probe shows it caught up), and it is false whenever the lag is
//! unknown. A standby out of rotation comes back only within half the bound and with proof
//! ([`lag::proven`]): on each pchannel owed a write, one write switchyard saw acknowledged is
//! applied, so it is missing nothing older that switchyard never saw (writes before a
//! restart). The lag is unknown when: no write acknowledged since switchyard started, `GetReplicateInfo` failing, or no
//! checkpoint on a pchannel owed a write. Bounded reads then go to the primary (the
//! `Standbys` read target falls back to it). Read-your-writes ([`applied`]) asks, per
//! collection, for the checkpoint on each of the collection's pchannels (every pchannel while
//! they are unknown), never a checkpoint folded over pchannels.

pub mod lag;
pub mod probe;
pub mod writes;

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
    /// Lowest checkpoint over the standby's pchannels (`None` when any is unknown); shown only.
    pub checkpoint: Option<u64>,
    /// Replication lag (standbys), `None` when it cannot be known.
    pub lag: Option<Duration>,
    /// Within `max_read_lag`, with hysteresis. False until a probe has shown it (an unknown
    /// lag is unsafe).
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
        let (tx, view) = watch::channel(ClusterView::default());
        let span = tracing::info_span!("health", cluster = %cluster.id);
        let task = tokio::spawn(run(cluster, routing, settings, tx, on_change).instrument(span));
        Self { view, task }
    }

    /// A handle whose view is `view`, with no task behind it (tests).
    #[cfg(test)]
    pub(crate) fn fixed(view: ClusterView) -> Self {
        let (_, rx) = watch::channel(view);
        Self { view: rx, task: tokio::spawn(async {}) }
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
    /// On a healthy standby: the primary asked about and the checkpoints read from it.
    checkpoint: Option<CheckpointRead>,
}

/// A standby's checkpoints per pchannel: the primary they were asked about, and the answer.
type CheckpointRead = (Arc<str>, Result<Vec<Option<u64>>, String>);

/// Collections whose pchannels one probe asks the primary about, at most.
const RESOLVES_PER_PROBE: usize = 16;

/// Probes once: health, then, on a healthy standby, the pchannels of collections written on
/// the primary that are not known yet, and the standby's checkpoints from the primary.
async fn probe_once(cluster: Arc<Cluster>, routing: SharedRouting, timeout: Duration) -> ProbeOutcome {
    let health = probe::health(&cluster, timeout).await;
    let mut checkpoint = None;
    if health.is_ok() {
        let table = routing.load_full();
        let is_standby = table.standbys.iter().any(|c| Arc::ptr_eq(c, &cluster));
        if let (true, Some(p)) = (is_standby, table.primary.clone()) {
            let keys = p.signals.ledger.to_resolve(RESOLVES_PER_PROBE);
            let asks = keys.iter().map(|k| probe::collection_pchannels(&p, k, timeout));
            for (k, r) in keys.iter().zip(futures_util::future::join_all(asks).await) {
                p.signals.ledger.resolved(k, r);
            }
            checkpoint = Some((p.id.clone(), probe::checkpoints(&cluster, &p.id, timeout).await));
        }
    }
    ProbeOutcome { health, passive: false, checkpoint }
}

/// Read-your-writes: whether `standby` has applied a write acknowledged by `primary` at
/// `tick` on collection `key`, by its checkpoint on each of the collection's pchannels
/// (on every pchannel while they are not known). Conservative: a checkpoint folded over
/// pchannels (the newest) would pass while the collection's own pchannel is behind.
pub fn applied(primary: &Cluster, standby: &Cluster, key: &writes::CollectionKey, tick: u64) -> bool {
    let cps = standby.signals.applied();
    let on = |i: usize| cps.get(i).copied().flatten().is_some_and(|c| c >= tick);
    match primary.signals.ledger.pchannels_of(key) {
        Some(p) => p.iter().all(|i| on(*i)),
        None => !primary.config.pchannels.is_empty() && (0..primary.config.pchannels.len()).all(on),
    }
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
    (view.checkpoint, view.lag, view.lag_ok) = (None, None, false);
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
            Some((asked, Ok(cps))) if asked == p.id => {
                let lowest = cps.iter().copied().collect::<Option<Vec<u64>>>().and_then(|v| v.into_iter().min());
                view.checkpoint = lowest;
                cluster.signals.checkpoint.store(lowest.unwrap_or(0), Relaxed);
                cluster.signals.set_applied(cps.clone().into());
                let owed = p.signals.ledger.owed(p.config.pchannels.len());
                let l = lag::standby_lag(owed.as_ref(), &cps, writes::now_us());
                // Back in (or in for the first time) only with proof it misses nothing older.
                let proven = view.lag_ok || lag::proven(owed.as_ref(), &cps);
                view.lag_ok = proven && lag::within_bound(view.lag_ok, l, s.max_read_lag);
                view.lag = l;
                prune(&p, &table.standbys);
            }
            Some((_, Err(e))) => {
                tracing::debug!(error = %e, "no checkpoint");
                forget_checkpoints(cluster, &mut view);
            }
            // Probed under another topology (or not probed): the next probe will tell.
            _ => {}
        },
        _ => {
            forget_checkpoints(cluster, &mut view);
            if table.primary.as_ref().is_some_and(|p| Arc::ptr_eq(p, cluster)) {
                view.lag = Some(Duration::ZERO);
            }
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

/// Unknown checkpoints: unknown lag, out of the lag bound.
fn forget_checkpoints(cluster: &Cluster, view: &mut ClusterView) {
    view.checkpoint = None;
    cluster.signals.checkpoint.store(0, std::sync::atomic::Ordering::Relaxed);
    cluster.signals.set_applied(Arc::from(Vec::new()));
    view.lag = None;
    view.lag_ok = false;
}

/// Drops from the primary's ledger what every standby has applied (per pchannel, the lowest
/// checkpoint over the standbys; a standby with unknown checkpoints holds everything).
fn prune(primary: &Cluster, standbys: &[Arc<Cluster>]) {
    let n = primary.config.pchannels.len();
    let mut floor = vec![u64::MAX; n];
    for sb in standbys {
        let cps = sb.signals.applied();
        for (i, f) in floor.iter_mut().enumerate() {
            *f = (*f).min(cps.get(i).copied().flatten().unwrap_or(0));
        }
    }
    if standbys.is_empty() {
        floor.iter_mut().for_each(|f| *f = 0);
    }
    primary.signals.ledger.prune(&floor);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, Role};
    use crate::topology::{ProxyState, Topology};

    fn node(id: &str, role: Role) -> Arc<Cluster> {
        Cluster::new(ClusterConfig {
            id: id.into(),
            uri: "http://127.0.0.1:1".into(),
            token: None,
            pchannels: vec![format!("{id}-rootcoord-dml_0"), format!("{id}-rootcoord-dml_1")],
            role,
            metrics_uri: None,
            tls_ca: None,
            tls_server_name: None,
        })
        .unwrap()
    }

    fn fixture() -> (Arc<Cluster>, SharedRouting, MonitorSettings) {
        let cluster = node("b", Role::Standby);
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
        let (tx, rx) = watch::channel(ClusterView::default());
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

    /// A standby `b` of primary `a`, in a routing table, and a feeder of probe outcomes.
    fn replicated() -> (Arc<Cluster>, Arc<Cluster>, SharedRouting, MonitorSettings) {
        let (_, _, s) = fixture();
        let (a, b) = (node("a", Role::Primary), node("b", Role::Standby));
        let cfg = crate::config::Config::from_toml(
            "[[clusters]]\nid=\"a\"\nuri=\"http://h:1\"\npchannels=2\nrole=\"primary\"\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let topo = Topology {
            epoch: 1,
            primary: Some("a".into()),
            standbys: vec!["b".into()],
            fenced: vec![],
            rebuild: vec![],
        };
        let table = crate::routing::RoutingTable::build(
            &topo,
            ProxyState::Running,
            None,
            &[a.clone(), b.clone()],
            Arc::new(cfg.routing.clone()),
            |_| true,
        );
        (a, b, Arc::new(ArcSwap::from_pointee(table)), s)
    }

    fn with_checkpoints(cps: Result<Vec<Option<u64>>, String>) -> ProbeOutcome {
        ProbeOutcome { health: Ok(()), passive: false, checkpoint: Some(("a".into(), cps)) }
    }

    fn write(a: &Cluster, collection: &str, pchannel: usize, tick: u64) {
        a.signals.write_acked(tick);
        a.signals.collection_write_acked("default", collection, tick);
        a.signals
            .ledger
            .resolved(&("default".into(), collection.into()), writes::Resolution::Pchannels(vec![pchannel]));
    }

    #[test]
    fn unknown_lag_is_not_zero() {
        let (a, b, routing, s) = replicated();
        let (tx, rx) = watch::channel(ClusterView::default());
        let on_change: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {});
        let mut counts = (0, 0);
        let mut feed = |cps| {
            apply(&b, &routing, &s, &tx, &on_change, &mut counts, with_checkpoints(cps));
            let v = rx.borrow().clone();
            (v.lag, v.lag_ok)
        };
        // Before its first probe a standby is not within the bound.
        assert!(!ClusterView::default().lag_ok);
        // No write acknowledged since start: unknown, not zero.
        assert_eq!(feed(Ok(vec![Some(5), Some(5)])), (None, false));
        write(&a, "c0", 0, 1000);
        // GetReplicateInfo failing: unknown.
        assert_eq!(feed(Err("down".into())), (None, false));
        // No checkpoint on the pchannel owed the write: unknown.
        assert_eq!(feed(Ok(vec![None, Some(5)])), (None, false));
        // Caught up on it; the other pchannel (never written) may be anywhere: lag 0, serves.
        assert_eq!(feed(Ok(vec![Some(1000), None])), (Some(Duration::ZERO), true));
        // Read-your-writes follows the collection's own pchannel.
        assert!(applied(&a, &b, &("default".into(), "c0".into()), 1000));
        assert!(!applied(&a, &b, &("default".into(), "c1".into()), 1000));
    }

    #[test]
    fn idle_stays_zero_and_a_stuck_pchannel_leaves_then_returns() {
        let (a, b, routing, mut s) = replicated();
        // Real time (the ledger's clock is switchyard's monotonic clock): a short bound.
        s.max_read_lag = Duration::from_millis(200);
        let max = s.max_read_lag;
        let (tx, rx) = watch::channel(ClusterView::default());
        let changes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = changes.clone();
        let on_change: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let mut counts = (0, 0);
        let mut feed = |cps: Vec<Option<u64>>| {
            apply(&b, &routing, &s, &tx, &on_change, &mut counts, with_checkpoints(Ok(cps)));
            let v = rx.borrow().clone();
            (v.lag, v.lag_ok)
        };
        write(&a, "c0", 0, 100);
        write(&a, "c1", 1, 200);
        assert_eq!(feed(vec![Some(100), Some(200)]), (Some(Duration::ZERO), true));
        // Idle primary: the checkpoints do not move, the lag stays 0.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(feed(vec![Some(100), Some(200)]), (Some(Duration::ZERO), true));
        // Writes continue on both; pchannel 1 is stuck at 200.
        write(&a, "c1", 1, 300);
        let mut tick = 300;
        let start = std::time::Instant::now();
        loop {
            tick += 1;
            write(&a, "c0", 0, tick);
            let (lag, ok) = feed(vec![Some(tick), Some(200)]);
            let lag = lag.unwrap();
            assert!(lag <= start.elapsed() + Duration::from_millis(5));
            if !ok {
                assert!(lag > max, "left at {lag:?}");
                break;
            }
            assert!(lag <= max);
            std::thread::sleep(Duration::from_millis(20));
            assert!(start.elapsed() < max + Duration::from_secs(2), "never left");
        }
        // Hysteresis: back only once below half the bound (here: caught up, 0).
        assert_eq!(feed(vec![Some(tick), Some(300)]), (Some(Duration::ZERO), true));
        assert_eq!(changes.load(std::sync::atomic::Ordering::Relaxed), 3);
    }
}
