//! Planned switchover, force failover, and the operations around them.
//!
//! The [`Orchestrator`] checks preconditions, then runs each role change as an asynchronous
//! job with an id and per-step timings ([`job`]). A switchover holds writes at the gate,
//! drains in-flight writes while it persists its intent, sends the re-centred
//! configuration to the old primary, then to the target (whose call returns once it has
//! promoted), then to the other standbys, swaps the routing table and releases the held
//! writes to the new primary, and then persists the topology ([`run`]). A failover fences
//! the old primary first and force-promotes the target ([`failover`]). Before any cluster
//! is told anything, the job is persisted, so a proxy restarted mid-job finishes or rolls
//! it back with writes held meanwhile ([`Orchestrator::recover`]).

pub mod drill;
pub mod failover;
pub mod job;
pub mod plan;
pub mod recovery;
pub mod run;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;

use crate::control::{self, Control};
use crate::gate::HoldKey;
use crate::topology::{ProxyState, Topology};
pub use job::{JobRecord, JobState, Jobs};

/// Why an operation was refused before it started. Nothing was changed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Starts and tracks role changes.
#[derive(Debug)]
pub struct Orchestrator {
    control: Arc<Control>,
    /// Every job.
    pub jobs: Arc<Jobs>,
    pause: AsyncMutex<Option<JoinHandle<()>>>,
    last_failover: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Orchestrator {
    /// An orchestrator over a control side.
    pub fn new(control: Arc<Control>) -> Arc<Self> {
        Arc::new(Self {
            control,
            jobs: Arc::new(Jobs::default()),
            pause: AsyncMutex::new(None),
            last_failover: std::sync::Mutex::new(None),
        })
    }

    /// The control side.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Checks a switchover's preconditions and starts it. Returns the job id.
    pub async fn switchover(self: &Arc<Self>, target: &str, expected_primary: Option<&str>) -> Result<String, Refusal> {
        let plan = run::preconditions(&self.control, target, expected_primary).await?;
        let log = self.jobs.begin("switchover", plan.from.clone(), target).map_err(Refusal)?;
        let id = log.id().to_string();
        let me = self.clone();
        let span = tracing::info_span!("switchover", job = %id, from = ?plan.from, to = %target);
        tokio::spawn(tracing::Instrument::instrument(async move { run::run(&me.control, log, plan).await }, span));
        Ok(id)
    }

    /// Starts a force failover to `target`, or to the healthy standby with the least lag.
    pub async fn failover(self: &Arc<Self>, target: Option<&str>) -> Result<String, Refusal> {
        let plan = failover::plan(&self.control, target)?;
        let log = self.jobs.begin("failover", plan.from.clone(), &plan.target).map_err(Refusal)?;
        let id = log.id().to_string();
        *self.last_failover.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        let me = self.clone();
        let span = tracing::info_span!("failover", job = %id, from = ?plan.from, to = %plan.target);
        tokio::spawn(tracing::Instrument::instrument(async move { failover::run(&me.control, log, plan).await }, span));
        Ok(id)
    }

    /// Starts a drill: switchover to `target`, a write and a read there, switchover back.
    pub async fn drill(self: &Arc<Self>, target: &str) -> Result<String, Refusal> {
        let from = self.control.topology().primary.clone();
        run::preconditions(&self.control, target, from.as_deref()).await?;
        let log = self.jobs.begin("drill", from, target).map_err(Refusal)?;
        let id = log.id().to_string();
        let me = self.clone();
        let target = target.to_string();
        let span = tracing::info_span!("drill", job = %id, to = %target);
        tokio::spawn(tracing::Instrument::instrument(
            async move { drill::drill(&me.control, &me.jobs, log, target).await },
            span,
        ));
        Ok(id)
    }

    /// Takes a fenced or rebuilt cluster back as a standby, once its own replicate
    /// configuration names the current primary as its source (it has been rebuilt).
    pub async fn readmit(&self, id: &str) -> Result<Topology, Refusal> {
        let c = &self.control;
        let Some(cluster) = c.cluster(id) else {
            return Err(Refusal(format!("unknown cluster {id:?}")));
        };
        let t = c.topology();
        if !t.fenced.iter().any(|f| f == id) && !t.rebuild.iter().any(|f| f == id) {
            return Err(Refusal(format!("cluster {id} is neither fenced nor waiting for a rebuild")));
        }
        // An old primary readmitted as it is still names itself primary: discovery would see
        // the clusters disagree, hold writes and then refuse them. Check first.
        if let Some(primary) = t.primary.as_deref() {
            let timeout = c.config().health.timeout.max(Duration::from_secs(2));
            match control::discovery::read_config(&cluster, timeout).await {
                Err(e) => {
                    return Err(Refusal(format!(
                        "cannot read the replicate configuration of {id} to check it was rebuilt: {e}"
                    )));
                }
                Ok(Some(cfg)) => {
                    let names = control::discovery::primary_of(id, Some(&cfg));
                    if names != primary {
                        return Err(Refusal(format!(
                            "{id}'s own replicate configuration names {names} as primary, not {primary}: rebuild \
                             it as a standby of {primary} (replicate {primary} -> {id}) before readmitting it"
                        )));
                    }
                }
                Ok(None) => {} // no CDC support: nothing to check
            }
        }
        let mut t = c.topology();
        t.fenced.retain(|f| f != id);
        t.rebuild.retain(|f| f != id);
        cluster.signals.unfence();
        if !t.standbys.iter().any(|s| s == id) && t.primary.as_deref() != Some(id) {
            t.standbys.push(id.to_string());
        }
        t.epoch += 1;
        c.commit(t.clone()).map_err(|e| Refusal(format!("cannot persist the topology: {e}")))?;
        tracing::info!(cluster = id, "readmitted as a standby");
        Ok(t)
    }

    /// Holds writes for `timeout`, then resumes by itself.
    pub async fn pause_writes(self: &Arc<Self>, timeout: Duration) -> ProxyState {
        let c = self.control.clone();
        c.gate.hold(HoldKey::Pause, format!("writes paused by an operator for {timeout:?}"));
        c.publish();
        let mut slot = self.pause.lock().await;
        if let Some(old) = slot.take() {
            old.abort();
        }
        *slot = Some(tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            tracing::info!("write pause ended by its timeout");
            c.gate.release(HoldKey::Pause);
            c.publish();
        }));
        self.control.routing().load().state
    }

    /// Ends a pause.
    pub async fn resume_writes(&self) -> ProxyState {
        if let Some(t) = self.pause.lock().await.take() {
            t.abort();
        }
        self.control.gate.release(HoldKey::Pause);
        self.control.publish();
        self.control.routing().load().state
    }

    /// Finishes or rolls back a job that a previous run of the proxy left half done.
    ///
    /// Call before the listener serves: when a job is pending, writes are held and the state
    /// is `SWITCHING` (or `FAILING_OVER`) from this call on, so no write reaches a cluster
    /// the job may have demoted and discovery stays out, until the returned task has
    /// finished or rolled the job back. The recovery shows as a job of kind `recover`.
    pub fn recover(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        let job = self.control.pending_job()?;
        let key = if job.kind == "failover" { HoldKey::Failover } else { HoldKey::Switchover };
        self.control.gate.hold(key, format!("recovering {} {} cut short by a restart", job.kind, job.id));
        self.control.set_state(if job.kind == "failover" { ProxyState::FailingOver } else { ProxyState::Switching });
        let log = match self.jobs.begin("recover", job.from.clone(), &job.to) {
            Ok(log) => log,
            Err(e) => {
                // Cannot happen at start (no job runs yet); never leave writes held.
                tracing::error!(error = %e, "cannot register the recovery job");
                self.control.gate.release(key);
                self.control.set_state(ProxyState::Running);
                return None;
            }
        };
        let me = self.clone();
        let span = tracing::info_span!("recover", job = %job.id, kind = %job.kind, to = %job.to);
        Some(tokio::spawn(tracing::Instrument::instrument(
            async move { recovery::recover(&me.control, log, job, key).await },
            span,
        )))
    }

    /// Starts automatic failover (when enabled in the config, checked at every round).
    pub fn spawn_auto_failover(self: &Arc<Self>) -> JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(o) = me.upgrade() else { return };
                let last = *o.last_failover.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(reason) = failover::auto_due(&o.control, last) {
                    tracing::warn!(reason = %reason, "automatic failover");
                    if let Err(e) = o.failover(None).await {
                        tracing::warn!(error = %e, "automatic failover not started");
                    }
                }
            }
        })
    }
}
