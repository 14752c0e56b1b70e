//! Role discovery: read every reachable cluster's own replicate configuration and notice
//! when roles were changed outside switchyard.
//!
//! Runs every [`PERIOD`] and at once when woken (a write refused as not primary). When every
//! reachable cluster names the same primary and it differs from the topology, that primary
//! is adopted at a new epoch. When they disagree, writes are held for a moment (a change in
//! progress looks like this), then refused with a reason (`ABNORMAL`) if the disagreement
//! lasts; reads continue throughout. Fenced and rebuilding clusters are not asked: they are
//! known to be stale. Clusters without CDC support (no `GetReplicateConfiguration`) are
//! ignored. Discovery pauses while a switchover or failover job runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ChangeKind, ChangeResult, Control};
use crate::cdc::CdcError;
use crate::gate::HoldKey;
use crate::proto::common::ReplicateConfiguration;
use crate::routing::Cluster;
use crate::topology::ProxyState;

/// How often roles are read when nothing is happening.
pub const PERIOD: Duration = Duration::from_secs(2);
/// How often while clusters disagree.
const FAST: Duration = Duration::from_millis(100);

/// The primary a cluster's own configuration implies: the star's centre, or itself when it
/// has no configuration.
pub fn primary_of(cluster_id: &str, cfg: Option<&ReplicateConfiguration>) -> String {
    let Some(cfg) = cfg.filter(|c| !c.clusters.is_empty()) else { return cluster_id.to_string() };
    let edges = &cfg.cross_cluster_topology;
    if edges.is_empty() {
        return cfg.clusters.first().map(|c| c.cluster_id.clone()).unwrap_or_else(|| cluster_id.to_string());
    }
    edges
        .iter()
        .map(|e| &e.source_cluster_id)
        .find(|s| !edges.iter().any(|e| &e.target_cluster_id == *s))
        .cloned()
        .unwrap_or_else(|| cluster_id.to_string())
}

/// Reads a cluster's replicate configuration. `Ok(None)`: no CDC support.
pub async fn read_config(cluster: &Cluster, timeout: Duration) -> Result<Option<ReplicateConfiguration>, CdcError> {
    cluster.cdc.read_config(timeout).await
}

/// Each reachable, non-fenced cluster's idea of the primary.
pub async fn views(control: &Control) -> Vec<(String, String)> {
    let topo = control.topology();
    let timeout = control.config().health.timeout;
    let asked: Vec<Arc<Cluster>> = control
        .clusters()
        .iter()
        .filter(|c| !topo.fenced.iter().any(|f| f == &*c.id) && !topo.rebuild.iter().any(|f| f == &*c.id))
        .filter(|c| control.view(&c.id).is_none_or(|v| v.up || !v.probed))
        .cloned()
        .collect();
    let calls = asked.iter().map(|c| async move { (c.id.to_string(), read_config(c, timeout).await) });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|(id, r)| match r {
            Ok(Some(cfg)) => Some((id.clone(), primary_of(&id, Some(&cfg)))),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(cluster = %id, error = %e, "replicate configuration unreadable");
                None
            }
        })
        .collect()
}

/// Runs discovery until the control side is dropped.
pub async fn run(control: std::sync::Weak<Control>) {
    let mut disagree_since: Option<Instant> = None;
    loop {
        let Some(c) = control.upgrade() else { return };
        let busy = matches!(c.state().0, ProxyState::Switching | ProxyState::FailingOver);
        let period = if busy {
            PERIOD
        } else {
            let seen = views(&c).await;
            round(&c, &seen, &mut disagree_since);
            if disagree_since.is_some() || c.gate.is_held_by(HoldKey::Discovery) { FAST } else { PERIOD }
        };
        let wake = async {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = c.rediscover.notified() => {}
            }
        };
        wake.await;
    }
}

/// One decision over the clusters' views.
pub fn round(c: &Control, seen: &[(String, String)], disagree_since: &mut Option<Instant>) {
    // Decided now, not when the views were asked for: a job may have started meanwhile, and a
    // job (running, or cut short and being recovered) owns the topology until its intent is
    // cleared. Adopting here would also erase that intent (a commit ends any job).
    if matches!(c.state().0, ProxyState::Switching | ProxyState::FailingOver) || c.pending_job().is_some() {
        return;
    }
    let topo = c.topology();
    let mut primaries: Vec<&String> = seen.iter().map(|(_, p)| p).collect();
    primaries.sort();
    primaries.dedup();
    match primaries.as_slice() {
        [] => {
            // Nobody answered with a configuration: nothing to learn. A hold set after a
            // refused write is lifted so the write fails or goes on by itself.
            c.gate.release(HoldKey::Discovery);
        }
        [p] => {
            *disagree_since = None;
            let p = (*p).clone();
            if topo.primary.as_deref() != Some(p.as_str()) && c.cluster(&p).is_some() {
                tracing::warn!(from = ?topo.primary, to = %p, "roles changed outside switchyard; adopting");
                let t = topo.promoted(&p);
                match c.commit(t) {
                    Ok(()) => c.count_change(ChangeKind::Discovered, ChangeResult::Succeeded),
                    Err(e) => {
                        c.count_change(ChangeKind::Discovered, ChangeResult::Failed);
                        c.set_abnormal(Some(format!("adopting {p} as primary failed: {e}")));
                        return;
                    }
                }
            }
            // ABNORMAL ends by itself once every reachable cluster agrees on one primary that
            // is not fenced, no job runs and no job intent is persisted (checked above: a
            // restart's recovery, or a job that failed with the clusters in an unknown state,
            // keeps it until resolved), whatever set it.
            let fenced = c.topology().fenced.contains(&p);
            if let Some(reason) = c.state().1
                && !fenced
            {
                tracing::info!(primary = %p, was = %reason, "every reachable cluster agrees on the primary; ABNORMAL cleared");
                c.set_abnormal(None);
            }
            c.gate.release(HoldKey::Discovery);
            c.publish();
        }
        _ => {
            let detail = seen.iter().map(|(id, p)| format!("{id} says {p}")).collect::<Vec<_>>().join(", ");
            let since = *disagree_since.get_or_insert_with(Instant::now);
            let window = c.config().switchover.hold_window.min(Duration::from_secs(10));
            if since.elapsed() < window {
                // Named like the ABNORMAL reason: a write held here may time out just before
                // the disagreement is declared, and its error must say the same thing.
                c.gate.hold(
                    HoldKey::Discovery,
                    format!("a disagreement about the primary ({detail}) while roles change outside switchyard"),
                );
                c.publish();
            } else {
                c.set_abnormal(Some(format!("clusters disagree about the primary: {detail}")));
                c.gate.release(HoldKey::Discovery);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::{CrossClusterTopology, MilvusCluster};

    fn cfg(clusters: &[&str], edges: &[(&str, &str)]) -> ReplicateConfiguration {
        ReplicateConfiguration {
            clusters: clusters
                .iter()
                .map(|c| MilvusCluster { cluster_id: c.to_string(), ..Default::default() })
                .collect(),
            cross_cluster_topology: edges
                .iter()
                .map(|(s, t)| CrossClusterTopology {
                    source_cluster_id: s.to_string(),
                    target_cluster_id: t.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn centre_of_the_star_is_primary() {
        assert_eq!(primary_of("b", Some(&cfg(&["a", "b", "c"], &[("a", "b"), ("a", "c")]))), "a");
        assert_eq!(primary_of("b", None), "b");
        assert_eq!(primary_of("b", Some(&cfg(&["b"], &[]))), "b");
    }

    use crate::control::test_control as control;

    fn agree_on_b() -> Vec<(String, String)> {
        vec![("a".into(), "b".into()), ("b".into(), "b".into())]
    }

    #[tokio::test]
    async fn abnormal_clears_itself_when_every_cluster_agrees_and_no_job_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path());
        c.set_abnormal(Some("switchover to b: a has demoted, and b did not finish promotion".into()));
        round(&c, &agree_on_b(), &mut None);
        assert_eq!(c.state().1, None, "cleared");
        assert_eq!(c.topology().primary.as_deref(), Some("b"), "the agreed primary adopted");
    }

    #[tokio::test]
    async fn abnormal_stays_while_a_job_intent_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path());
        let job = crate::state::PendingJob {
            id: "j".into(),
            kind: "switchover".into(),
            from: Some("a".into()),
            to: "b".into(),
            old_config: None,
            new_config: None,
        };
        c.record_job(Some(job)).unwrap();
        c.set_abnormal(Some("recovering".into()));
        round(&c, &agree_on_b(), &mut None);
        assert!(c.state().1.is_some(), "a persisted intent keeps ABNORMAL until recovery resolves it");
    }

    #[tokio::test]
    async fn abnormal_stays_when_the_agreed_primary_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path());
        let mut t = c.topology();
        t.fenced.push("a".into());
        t.epoch += 1;
        c.commit(t).unwrap();
        c.set_abnormal(Some("force promote of b failed".into()));
        // Only b answers, and it still names the fenced a.
        round(&c, &[("b".into(), "a".into())], &mut None);
        assert!(c.state().1.is_some(), "never back to a fenced primary by agreement alone");
    }
}
