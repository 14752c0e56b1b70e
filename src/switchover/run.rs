//! The planned switchover, step by step, and recovery of one cut short by a restart.
//!
//! # Rolling back, and when Milvus cannot
//!
//! The old primary A is told first, then the target B. What Milvus does with a configuration
//! decides what switchyard may do when B does not promote in time:
//! - Before A accepted the new configuration, nothing has changed: the old configuration sent
//!   again is "the same configuration" and succeeds at once on any role
//!   (`errReplicateConfigurationSame` in `internal/streamingcoord/server/service/assignment.go`),
//!   so the switchover is rolled back and held writes go to A.
//! - Once A has accepted it, A is secondary. Milvus has no rule to undo that: a non-force
//!   configuration sent to a secondary fails its broadcast with `ErrNotPrimary`
//!   (`internal/streamingcoord/server/broadcaster/broadcaster.go`) and the call only waits
//!   until the cluster's configuration equals the one sent (`waitUntilPrimaryChangeOrConfigurationSame`
//!   in `assignment.go`), which for A happens only when a new primary sends it. B, for its
//!   part, promotes by itself once it has applied A's log up to A's switchover message
//!   (the fence), whatever switchyard does. So after A demoted the switchover is rolled
//!   *forward*: switchyard waits for B up to `promote_timeout`; if B still has not promoted,
//!   the job fails and the proxy is `ABNORMAL` with the operator's choices spelled out (wait for
//!   B, whose promotion discovery then adopts and which clears `ABNORMAL` by itself; or force a
//!   failover to B, which loses what A had not yet replicated and reports it). Writes are
//!   refused as "not sent" meanwhile: there is no primary to send them to.
//! - A call to A that failed may still have demoted A (Milvus keeps broadcasting a registered
//!   change in the background, `broadcaster/broadcast_manager.go`): the job reads A's own
//!   configuration to decide which of the two cases it is in, and if A demotes later anyway,
//!   discovery sees B promote and adopts it.

use std::time::Duration;

// tokio's clock (the same as std's unless paused): deadlines below hold under paused time.
use tokio::time::Instant;

use super::Refusal;
use super::job::{JobLog, JobState};
use super::plan::{self, SendConfigError};
use crate::control::discovery;
use crate::control::{ChangeKind, ChangeResult, Control};
use crate::gate::HoldKey;
use crate::proto::common::ReplicateConfiguration;
use crate::state::{ConfigRecord, PendingJob};
use crate::topology::ProxyState;

/// A checked switchover.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The primary now.
    pub from: Option<String>,
    /// The new primary.
    pub target: String,
    /// The configuration in force (tokens restored).
    pub old: ReplicateConfiguration,
    /// The configuration centred on the target.
    pub new: ReplicateConfiguration,
}

/// Checks every precondition; each refusal names its reason and changes nothing.
pub async fn preconditions(c: &Control, target: &str, expected: Option<&str>) -> Result<Plan, Refusal> {
    let refuse = |s: String| Err(Refusal(s));
    let table = c.routing().load_full();
    if table.state != ProxyState::Running {
        return refuse(format!("state is {}, not RUNNING", table.state.as_str()));
    }
    let topo = c.topology();
    let Some(from) = topo.primary.clone() else { return refuse("there is no primary to switch over from".into()) };
    if let Some(e) = expected
        && e != from
    {
        return refuse(format!("expected primary {e} but the primary is {from}"));
    }
    if target == from {
        return refuse(format!("{target} is already the primary"));
    }
    if c.cluster(target).is_none() {
        return refuse(format!("unknown cluster {target:?}"));
    }
    if !topo.is_serving_standby(target) {
        return refuse(format!("{target} is not a serving standby (fenced or waiting for a rebuild)"));
    }
    let view = c.view(target).unwrap_or_default();
    if !view.up {
        return refuse(format!(
            "{target} is not healthy{}",
            view.last_error.map(|e| format!(": {e}")).unwrap_or_default()
        ));
    }
    let max_lag = c.config().switchover.max_lag;
    match view.lag {
        // Lag is measured against writes switchyard saw acknowledged; with none seen since
        // start (an idle primary, a restart) it is unknown even when replication is fine. A
        // switchover is safe either way (the target promotes only once it has applied the old
        // primary's whole log, else the job rolls back at promote_timeout), lag only bounds
        // the pause; so unknown lag is accepted when the target answers for its replication
        // from the primary on every pchannel (a pchannel with nothing replicated yet has no
        // checkpoint, which is normal), and refused when it cannot.
        None => {
            let timeout = c.config().health.timeout.max(Duration::from_secs(2));
            let target_cluster = c.cluster(target).ok_or_else(|| Refusal(format!("unknown cluster {target:?}")))?;
            if let Err(e) = crate::monitor::probe::checkpoints(&target_cluster, &from, timeout).await {
                return refuse(format!(
                    "the replication lag of {target} is unknown and its replication cannot be read: {e}"
                ));
            }
        }
        Some(l) if l > max_lag => {
            return refuse(format!("{target} lags {l:?} behind {from}, more than switchover.max_lag ({max_lag:?})"));
        }
        Some(_) => {}
    }
    let views = discovery::views(c).await;
    if let Some((id, p)) = views.iter().find(|(_, p)| *p != from) {
        return refuse(format!(
            "the clusters' own configuration disagrees with the routing table: {id} says {p} is primary"
        ));
    }
    let from_cluster = c.cluster(&from).ok_or_else(|| Refusal(format!("unknown cluster {from:?}")))?;
    let current = discovery::read_config(&from_cluster, c.config().health.timeout.max(Duration::from_secs(2)))
        .await
        .map_err(|e| Refusal(format!("cannot read the replicate configuration of {from}: {e}")))?
        .filter(|cfg| !cfg.clusters.is_empty())
        .ok_or_else(|| Refusal(format!("replication is not configured on {from}")))?;
    if !current.clusters.iter().any(|m| m.cluster_id == target) {
        return refuse(format!("{target} is not in the replicate configuration of {from}"));
    }
    Ok(Plan {
        from: Some(from.clone()),
        target: target.to_string(),
        old: plan::recentred(c, &current, &from),
        new: plan::recentred(c, &current, target),
    })
}

/// Runs a checked switchover to its end.
pub async fn run(c: &Control, mut log: JobLog, plan: Plan) {
    let started = Instant::now();
    let held_before = c.gate.held_total.load(std::sync::atomic::Ordering::Relaxed);
    c.gate.longest_hold_us.store(0, std::sync::atomic::Ordering::Relaxed);
    let cfg = c.config();
    let from = plan.from.clone().unwrap_or_default();
    let target = plan.target.clone();
    let (Some(a), Some(b)) = (c.cluster(&from), c.cluster(&target)) else {
        log.finish(JobState::Failed, Some("a cluster of the plan is no longer configured".into()));
        return;
    };

    log.step("hold writes");
    c.gate.hold(HoldKey::Switchover, format!("switchover to {target}"));
    c.set_state(ProxyState::Switching);
    log.done(format!("new writes are held; {} writes in flight", c.gate.writes_in_flight()));

    // The intent is persisted while in-flight writes drain: both must be done before any
    // cluster is told anything, and neither needs the other.
    log.step(&format!("drain in-flight writes to {from} and persist intent"));
    let pending = PendingJob {
        id: log.id().to_string(),
        kind: "switchover".into(),
        from: plan.from.clone(),
        to: target.clone(),
        old_config: Some(ConfigRecord::from_config(&plan.old)),
        new_config: Some(ConfigRecord::from_config(&plan.new)),
    };
    let (drained, persisted) =
        tokio::join!(c.gate.drain(cfg.switchover.drain_timeout), c.record_job_async(Some(pending)));
    if let Err(e) = persisted {
        return abandon(c, &mut log, held_before, &format!("cannot persist the job: {e}"));
    }
    if !drained {
        let reason = format!(
            "{} writes still in flight to {from} after drain_timeout ({:?})",
            c.gate.writes_in_flight(),
            cfg.switchover.drain_timeout
        );
        let _ = c.record_job_async(None).await;
        return abandon(c, &mut log, held_before, &reason);
    }
    log.done("no write in flight; intent persisted");

    log.step(&format!("demote {from}"));
    let deadline = cfg.switchover.promote_timeout;
    match plan::send(&a, &plan.new, false, deadline).await {
        Ok(()) => log.done(format!("{from} rejects writes from now on")),
        Err(SendConfigError::Refused { reason, .. }) => {
            let _ = c.record_job(None);
            return abandon(c, &mut log, held_before, &format!("{from} refused the new configuration: {reason}"));
        }
        Err(e) => {
            // Failed, but it may have been applied: A's own configuration tells.
            match read_config_within(&a, Duration::from_secs(10)).await {
                Ok(Some(now)) if discovery::primary_of(&from, Some(&now)) == target => {
                    log.done(format!("{from} answered {e}, but it has taken the new configuration: it rejects writes"));
                }
                Ok(_) => return roll_back(c, &mut log, &plan, held_before, &e.to_string()).await,
                Err(read) => {
                    let why = format!(
                        "telling {from} failed ({e}) and its configuration cannot be read ({read}): whether it \
                         demoted is unknown"
                    );
                    // Discovery decides once the clusters agree (it adopts the target if A
                    // demoted in the background, else keeps A); a kept intent would stop it.
                    let _ = c.record_job(None);
                    return fail_unknown(c, &mut log, held_before, &why);
                }
            }
        }
    }

    log.step(&format!("promote {target}"));
    let left = deadline.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
    if let Err(e) = plan::send(&b, &plan.new, false, left).await {
        // A has demoted: Milvus cannot undo that (see the module doc), so no roll back.
        let why = format!(
            "switchover to {target}: {from} has demoted, and {target} did not finish promotion within \
             promote_timeout ({deadline:?}): {e}. Milvus cannot undo a demotion, so switchyard does not roll back: \
             {target} promotes by itself once it has applied {from}'s log up to the switchover (check the CDC from \
             {from} to {target}); switchyard adopts it then and resumes writes. To stop waiting instead: \
             `switchyard ctl failover --to {target}` (force promote; what {from} had not replicated is lost and \
             reported)"
        );
        let _ = c.record_job(None);
        return fail_unknown(c, &mut log, held_before, &why);
    }
    log.done(format!("{target} applied {from}'s remaining log and promoted"));

    let others: Vec<String> =
        plan.new.clusters.iter().map(|m| m.cluster_id.clone()).filter(|id| *id != from && *id != target).collect();
    if !others.is_empty() {
        log.step("repoint other standbys");
        let mut notes = Vec::new();
        for id in &others {
            if let Some(cl) = c.cluster(id) {
                match plan::send(&cl, &plan.new, false, Duration::from_secs(10)).await {
                    Ok(()) => notes.push(format!("{id}: ok")),
                    Err(e) => notes.push(format!("{id}: {e}")),
                }
            }
        }
        log.done(notes.join("; "));
    }

    // Routing swaps and the held writes go before the topology is written: the intent on
    // disk names this switchover, so a restart in between finishes it (the target has
    // promoted) with writes held, and the pause does not wait for the disk.
    log.step("swap routing and release held writes");
    let topo = c.topology().promoted(&target);
    let epoch = topo.epoch;
    c.adopt(topo);
    c.set_state(ProxyState::Running);
    c.gate.release(HoldKey::Switchover);
    c.publish();
    let held = c.gate.held_total.load(std::sync::atomic::Ordering::Relaxed) - held_before;
    log.done(format!("epoch {epoch}, primary {target}; {held} held writes released to {target}"));

    log.step("persist topology");
    if let Err(e) = c.persist_done().await {
        // The clusters have switched and writes flow to the target, but nothing more can be
        // recorded: fail closed (a restart finishes the job from the intent on disk).
        c.set_abnormal(Some(format!("switchover to {target} done on the clusters but not persisted: {e}")));
        record_holds(c, &log, held_before);
        c.count_change(ChangeKind::Switchover, ChangeResult::Failed);
        log.finish(JobState::Failed, Some(format!("cannot persist the topology: {e}")));
        return;
    }
    settle(c).await;
    log.done(format!("epoch {epoch} written"));
    record_holds(c, &log, held_before);
    c.count_change(ChangeKind::Switchover, ChangeResult::Succeeded);
    log.finish(JobState::Succeeded, None);
}

/// Waits (briefly) until the released writes have left the gate, so their hold times are
/// in the record.
pub(super) async fn settle(c: &Control) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while c.gate.held().0 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn record_holds(c: &Control, log: &JobLog, held_before: u64) {
    let held = c.gate.held_total.load(std::sync::atomic::Ordering::Relaxed) - held_before;
    let longest = c.gate.longest_hold_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e3;
    log.edit(|j| {
        j.held_writes = held;
        j.longest_hold_ms = longest;
    });
}

/// Gives up before any cluster changed: release the held writes to the old primary.
fn abandon(c: &Control, log: &mut JobLog, held_before: u64, reason: &str) {
    tracing::warn!(reason, "switchover abandoned before any change");
    c.set_state(ProxyState::Running);
    c.gate.release(HoldKey::Switchover);
    c.publish();
    record_holds(c, log, held_before);
    c.count_change(ChangeKind::Switchover, ChangeResult::RolledBack);
    log.finish(JobState::RolledBack, Some(reason.to_string()));
}

/// Reads a cluster's replicate configuration, retrying for up to `within` while it cannot be
/// read (a cluster that just failed a call is often back a moment later).
async fn read_config_within(
    cluster: &crate::routing::Cluster,
    within: Duration,
) -> Result<Option<ReplicateConfiguration>, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match discovery::read_config(cluster, left.clamp(Duration::from_millis(100), Duration::from_secs(2))).await {
            Ok(cfg) => return Ok(cfg),
            Err(e) if tokio::time::Instant::now() + pause >= deadline => return Err(e.to_string()),
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Ends a job with the proxy `ABNORMAL` for `why`: no primary to send writes to, held writes
/// released (answered "not sent"). Discovery clears it once every reachable cluster agrees
/// on one primary and no job intent is left.
fn fail_unknown(c: &Control, log: &mut JobLog, held_before: u64, why: &str) {
    tracing::error!(reason = why, "switchover failed; ABNORMAL");
    c.set_state(ProxyState::Running);
    c.set_abnormal(Some(why.to_string()));
    c.gate.release(HoldKey::Switchover);
    c.publish();
    record_holds(c, log, held_before);
    c.count_change(ChangeKind::Switchover, ChangeResult::Failed);
    log.finish(JobState::Failed, Some(why.to_string()));
}

/// Undoes a switchover that the old primary never took: the old configuration to the target
/// (harmless: it still has it; clears nothing pending since it was never told), and a check
/// that every cluster names the old primary.
async fn roll_back(c: &Control, log: &mut JobLog, plan: &Plan, held_before: u64, reason: &str) {
    log.done(reason.to_string());
    log.step("roll back");
    let outcome = restore(c, plan.from.as_deref().unwrap_or_default(), &plan.target, &plan.old).await;
    match outcome {
        Ok(()) => {
            let _ = c.record_job(None);
            log.done(format!("{} is primary again", plan.from.as_deref().unwrap_or("?")));
            abandon(c, log, held_before, reason);
        }
        Err(e) => {
            let why =
                format!("switchover to {} failed ({reason}) and the roll back did not confirm ({e})", plan.target);
            // The clusters' state is not known: no intent is left for a restart to act on, so
            // discovery adopts whatever primary every reachable cluster agrees on and clears
            // ABNORMAL then.
            let _ = c.record_job(None);
            fail_unknown(c, log, held_before, &why);
        }
    }
}

/// Sends `old` to `target` then `from` (each still holds it: "the same configuration"
/// succeeds at once), and checks every cluster names `from` again.
async fn restore(c: &Control, from: &str, target: &str, old: &ReplicateConfiguration) -> Result<(), String> {
    let t = Duration::from_secs(10);
    if let Some(b) = c.cluster(target) {
        plan::send(&b, old, false, t).await.map_err(|e| e.to_string())?;
    }
    if let Some(a) = c.cluster(from) {
        plan::send(&a, old, false, t).await.map_err(|e| e.to_string())?;
    }
    let views = discovery::views(c).await;
    match views.iter().find(|(_, p)| p != from) {
        None => Ok(()),
        Some((id, p)) => Err(format!("{id} still says {p} is primary")),
    }
}
