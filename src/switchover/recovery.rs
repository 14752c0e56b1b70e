//! Restart recovery: finishing or rolling back a switchover or failover that a restart cut
//! short, from the intent persisted before any cluster was told anything.
//!
//! Read top-down: [`recover`] retries [`recover_once`] (writes held meanwhile); a switchover
//! asks the old primary first (it was told first), a failover the target.

use std::time::Duration;

use super::job::{JobLog, JobState};
use super::plan;
use crate::control::discovery;
use crate::control::{ChangeKind, ChangeResult, Control};
use crate::gate::HoldKey;
use crate::proto::common::ReplicateConfiguration;
use crate::state::PendingJob;
use crate::topology::ProxyState;

/// Finishes or rolls back a job left by a previous run: a target that promoted, or an old
/// primary that demoted, means the switchover is finished; otherwise it is rolled back
/// (nothing changed on the clusters yet). Writes stay held under `key` (taken
/// by the caller before the listener served) until it ends; while the clusters cannot be
/// read or told, it retries, and the proxy is `ABNORMAL` with the reason meanwhile.
pub async fn recover(c: &Control, mut log: JobLog, job: PendingJob, key: HoldKey) {
    tracing::warn!(job = %job.id, kind = %job.kind, to = %job.to, "recovering a job cut short by a restart");
    let mut wait = Duration::from_millis(500);
    let mut our_abnormal: Option<String> = None;
    for attempt in 1u32.. {
        log.step(&format!("finish or roll back {} {} (attempt {attempt})", job.kind, job.id));
        match recover_once(c, &job).await {
            Ok((outcome, result)) => {
                log.done(outcome.clone());
                tracing::info!(job = %job.id, "{outcome}");
                if our_abnormal.is_some() && c.state().1 == our_abnormal {
                    c.set_abnormal(None);
                }
                let kind = if job.kind == "failover" { ChangeKind::Failover } else { ChangeKind::Switchover };
                c.count_change(kind, result);
                break;
            }
            Err(why) => {
                let why = format!("job {} cut short by a restart is not resolved yet: {why}", job.id);
                log.done(format!("failed: {why}; retrying in {wait:?}"));
                c.set_abnormal(Some(why.clone()));
                our_abnormal = Some(why);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    log.finish(JobState::Succeeded, None);
    c.set_state(ProxyState::Running);
    c.gate.release(key);
    c.publish();
}

/// One attempt at recovery: what was done, or why it could not be.
///
/// A switchover tells the old primary first and the target only after the old primary took
/// the new configuration, so the old primary's own configuration decides: demoted → finish
/// (roll forward, as the job would have); still primary → nothing changed anywhere, so the
/// job just ends (the target is not needed). Only when the old primary cannot be read is the
/// target asked whether it promoted. A failover (the old primary is fenced, maybe dead) asks
/// the target.
async fn recover_once(c: &Control, job: &PendingJob) -> Result<(String, ChangeResult), String> {
    let target = c.cluster(&job.to).ok_or_else(|| format!("it names unknown cluster {}", job.to))?;
    let t = Duration::from_secs(5);
    if job.kind == "switchover" {
        let from = job.from.clone().ok_or("it names no old primary")?;
        let from_cluster = c.cluster(&from).ok_or_else(|| format!("it names unknown cluster {from}"))?;
        match discovery::read_config(&from_cluster, t).await {
            Ok(cfg) => {
                let cfg = cfg.filter(|cfg| !cfg.clusters.is_empty());
                return match cfg.filter(|cfg| discovery::primary_of(&from, Some(cfg)) == job.to) {
                    Some(demoted) => roll_forward(c, &target, &from, &job.to, &demoted).await,
                    None => {
                        c.record_job(None).map_err(|e| format!("cannot persist the end of the job: {e}"))?;
                        Ok((
                            format!(
                                "{from} had not demoted (nothing was changed on any cluster): rolled back, {from} is primary"
                            ),
                            ChangeResult::RolledBack,
                        ))
                    }
                };
            }
            Err(e) => tracing::warn!(cluster = %from, error = %e, "old primary unreadable; asking the target"),
        }
    }
    let target_cfg = discovery::read_config(&target, t)
        .await
        .map_err(|e| format!("cannot read the replicate configuration of {}: {e}", job.to))?;
    let promoted = target_cfg.as_ref().is_some_and(|cfg| discovery::primary_of(&job.to, Some(cfg)) == job.to);
    if !promoted && job.kind != "failover" {
        return Err(format!(
            "{} cannot be read and {} has not promoted: whether the old primary demoted is unknown",
            job.from.as_deref().unwrap_or("the old primary"),
            job.to
        ));
    }
    let mut how = format!("{} had promoted", job.to);
    if !promoted {
        let current = target_cfg.clone().unwrap_or_default();
        let shape = plan::force_promote(c, &target, &current, Duration::from_secs(30))
            .await
            .map_err(|e| format!("force promote of {} failed: {e}", job.to))?;
        how = format!("{} force-promoted with the {shape}", job.to);
    }
    let mut topo = c.topology();
    if topo.primary.as_deref() != Some(job.to.as_str()) {
        topo = topo.promoted(&job.to);
    }
    if job.kind == "failover" {
        if let Some(a) = job.from.as_deref() {
            topo.standbys.retain(|s| s != a);
        }
        let others: Vec<String> = topo.standbys.iter().filter(|s| !topo.rebuild.contains(s)).cloned().collect();
        topo.rebuild.extend(others);
    }
    c.commit(topo).map_err(|e| format!("cannot persist the recovered topology: {e}"))?;
    Ok((format!("{how}: job finished, {} is primary", job.to), ChangeResult::Succeeded))
}

/// The old primary took the new configuration: Milvus cannot undo that (the target promotes
/// once it has applied the old primary's log up to the demotion), so the switchover is
/// finished rather than rolled back. Nothing acknowledged is lost either way.
async fn roll_forward(
    c: &Control,
    target: &crate::routing::Cluster,
    from: &str,
    to: &str,
    demoted: &ReplicateConfiguration,
) -> Result<(String, ChangeResult), String> {
    let new = plan::recentred(c, demoted, to);
    let deadline = c.config().switchover.promote_timeout;
    plan::send(target, &new, false, deadline)
        .await
        .map_err(|e| format!("{from} had demoted; {to} has not promoted yet: {e}"))?;
    for m in new.clusters.iter().filter(|m| m.cluster_id != from && m.cluster_id != to) {
        if let Some(other) = c.cluster(&m.cluster_id)
            && let Err(e) = plan::send(&other, &new, false, Duration::from_secs(10)).await
        {
            tracing::warn!(cluster = %m.cluster_id, error = %e, "could not repoint a standby");
        }
    }
    let mut topo = c.topology();
    if topo.primary.as_deref() != Some(to) {
        topo = topo.promoted(to);
    }
    c.commit(topo).map_err(|e| format!("cannot persist the recovered topology: {e}"))?;
    Ok((format!("{from} had demoted: switchover finished, {to} promoted and is primary"), ChangeResult::Succeeded))
}
