//! Force failover: fence the old primary, force-promote a standby, report what may be lost.

use std::time::{Duration, Instant};

use super::Refusal;
use super::job::{JobLog, JobState};
use super::plan;
use crate::control::discovery;
use crate::control::{ChangeKind, ChangeResult, Control};
use crate::gate::HoldKey;
use crate::state::PendingJob;
use crate::topology::ProxyState;

/// A checked failover.
#[derive(Debug, Clone)]
pub struct FailoverPlan {
    /// The failed primary.
    pub from: Option<String>,
    /// The standby to promote.
    pub target: String,
    /// The target's lag when the failover started.
    pub lag: Option<Duration>,
}

/// Picks and checks the target: the named standby, or the healthy one with the least lag.
pub fn plan(c: &Control, target: Option<&str>) -> Result<FailoverPlan, Refusal> {
    let topo = c.topology();
    let candidates: Vec<(String, Option<Duration>)> = topo
        .standbys
        .iter()
        .filter(|s| topo.is_serving_standby(s))
        .filter_map(|s| c.view(s).filter(|v| v.up).map(|v| (s.clone(), v.lag)))
        .collect();
    let chosen = match target {
        Some(t) => {
            if topo.primary.as_deref() == Some(t) {
                return Err(Refusal(format!("{t} is already the primary")));
            }
            if !topo.is_serving_standby(t) {
                return Err(Refusal(format!(
                    "{t} is not a serving standby (unknown, fenced or waiting for a rebuild)"
                )));
            }
            candidates.iter().find(|(id, _)| id == t).cloned().ok_or_else(|| Refusal(format!("{t} is not healthy")))?
        }
        None => candidates
            .iter()
            .min_by_key(|(_, lag)| lag.unwrap_or(Duration::MAX))
            .cloned()
            .ok_or_else(|| Refusal("no healthy standby to promote".into()))?,
    };
    Ok(FailoverPlan { from: topo.primary.clone(), target: chosen.0, lag: chosen.1 })
}

/// Runs a failover to its end.
pub async fn run(c: &Control, mut log: JobLog, plan: FailoverPlan) {
    let held_before = c.gate.held_total.load(std::sync::atomic::Ordering::Relaxed);
    c.gate.longest_hold_us.store(0, std::sync::atomic::Ordering::Relaxed);
    let target = plan.target.clone();
    let Some(b) = c.cluster(&target) else {
        log.finish(JobState::Failed, Some(format!("{target} is no longer configured")));
        return;
    };

    // Decided: from here on, an answer of the old primary to a write that was already on its
    // way is not a success for the client (the promoted cluster will not have it).
    if let Some(a) = plan.from.as_deref().and_then(|a| c.cluster(a)) {
        let report = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        a.signals.fence(report.clone());
        log.edit(|j| j.late_acks = Some(report));
    }
    log.step("hold writes");
    c.gate.hold(HoldKey::Failover, format!("failover to {target}"));
    c.set_state(ProxyState::FailingOver);
    log.done("");

    if let Some(a) = plan.from.clone() {
        log.step(&format!("fence {a}"));
        let mut t = c.topology();
        if !t.fenced.contains(&a) {
            t.fenced.push(a.clone());
        }
        t.epoch += 1;
        let pending = PendingJob {
            id: log.id().to_string(),
            kind: "failover".into(),
            from: Some(a.clone()),
            to: target.clone(),
            old_config: None,
            new_config: None,
        };
        if let Err(e) = c.commit(t).and_then(|()| c.record_job(Some(pending))) {
            return fail(c, &mut log, held_before, format!("cannot persist the fence of {a}: {e}"));
        }
        log.done(format!("{a} gets no reads and no writes until readmitted"));
    }
    log.edit(|j| j.possible_loss_ms = plan.lag.map(|l| l.as_millis() as u64));

    log.step(&format!("force-promote {target}"));
    let current = discovery::read_config(&b, Duration::from_secs(5)).await.ok().flatten().unwrap_or_default();
    let started = Instant::now();
    match plan::force_promote(c, &b, &current, c.config().switchover.promote_timeout).await {
        Ok(shape) => log.done(format!("promoted with the {shape} in {:?}", started.elapsed())),
        Err(e) => return fail(c, &mut log, held_before, format!("force promote of {target} failed: {e}")),
    }

    if let Some(a) = plan.from.as_deref() {
        log.step("measure possible data loss");
        let (salvage, answered) = salvage_tick(&b, a).await;
        // Counted only when the target answered: with no position read, the loss is unknown.
        let rows = c.cluster(a).filter(|_| answered).map(|ca| ca.signals.rows_after(salvage.unwrap_or(0)));
        log.edit(|j| j.possible_loss_rows = rows);
        log.done(format!(
            "{target} had applied {a}'s log up to timestamp {}; {} rows acknowledged by {a} after that",
            salvage.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into()),
            rows.map(|r| r.to_string()).unwrap_or_else(|| "unknown".into())
        ));
    }

    log.step("persist topology and swap routing");
    let mut t = c.topology().promoted(&target);
    if let Some(a) = plan.from.as_deref() {
        t.standbys.retain(|s| s != a);
    }
    let others: Vec<String> = t.standbys.iter().filter(|s| !t.rebuild.contains(s)).cloned().collect();
    t.rebuild.extend(others.iter().cloned());
    let epoch = t.epoch;
    if let Err(e) = c.commit(t) {
        return fail(c, &mut log, held_before, format!("{target} promoted but the topology was not persisted: {e}"));
    }
    log.done(format!(
        "epoch {epoch}, primary {target}; to rebuild: {}",
        if others.is_empty() { "none".to_string() } else { others.join(", ") }
    ));

    log.step("release held writes");
    c.set_state(ProxyState::Running);
    c.gate.release(HoldKey::Failover);
    c.publish();
    let held = c.gate.held_total.load(std::sync::atomic::Ordering::Relaxed) - held_before;
    super::run::settle(c).await;
    log.done(format!("{held} held writes released to {target}"));
    log.edit(|j| {
        j.held_writes = held;
        j.longest_hold_ms = c.gate.longest_hold_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e3;
    });
    c.count_change(ChangeKind::Failover, ChangeResult::Succeeded);
    log.finish(JobState::Succeeded, None);
}

fn fail(c: &Control, log: &mut JobLog, held_before: u64, why: String) {
    c.set_state(ProxyState::Running);
    c.set_abnormal(Some(why.clone()));
    c.gate.release(HoldKey::Failover);
    let held = c.gate.held_total.load(std::sync::atomic::Ordering::Relaxed) - held_before;
    log.edit(|j| j.held_writes = held);
    c.count_change(ChangeKind::Failover, ChangeResult::Failed);
    log.finish(JobState::Failed, Some(why));
}

/// The newest timestamp of the old primary's log the promoted cluster had applied
/// (its salvage checkpoint, else its last checkpoint), over its pchannels, and whether any
/// pchannel answered (no checkpoint on an answering pchannel: nothing applied there yet).
async fn salvage_tick(b: &crate::routing::Cluster, source: &str) -> (Option<u64>, bool) {
    let mut best = None;
    let mut answered = false;
    for pch in &b.config.pchannels {
        if let Ok(r) = b.cdc.replicate_info(source, pch, Duration::from_secs(2)).await {
            answered = true;
            let t = r.salvage_checkpoint.or(r.checkpoint).map(|cp| cp.time_tick);
            best = best.max(t);
        }
    }
    (best, answered)
}

/// Whether an automatic failover should start now, and why.
pub fn auto_due(c: &Control, last: Option<Instant>) -> Option<String> {
    let cfg = c.config();
    if !cfg.failover.automatic {
        return None;
    }
    let (state, abnormal) = c.state();
    if state != ProxyState::Running || abnormal.as_deref().is_some_and(|r| r.starts_with("clusters disagree")) {
        return None;
    }
    if last.is_some_and(|t| t.elapsed() < cfg.failover.min_interval) {
        return None;
    }
    let topo = c.topology();
    let primary = topo.primary.clone()?;
    let view = c.view(&primary)?;
    let down_for = view.down_since.filter(|_| !view.up)?.elapsed();
    if down_for < cfg.failover.detect_after {
        return None;
    }
    let any_standby = topo.standbys.iter().any(|s| topo.is_serving_standby(s) && c.view(s).is_some_and(|v| v.up));
    any_standby.then(|| format!("{primary} failed every probe for {down_for:?}"))
}
