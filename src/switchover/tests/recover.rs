//! Restart recovery: a proxy that stopped mid-job finds the job's intent in its state file
//! and, with writes held meanwhile, finishes the job or rolls it back
//! ([`Orchestrator::recover`](crate::switchover::Orchestrator::recover)).

use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Bed, bed};
use crate::cdc::Cdc;
use crate::control::{ChangeKind, ChangeResult};
use crate::state::{ConfigRecord, PendingJob};
use crate::switchover::{JobRecord, JobState};
use crate::topology::ProxyState;

impl Bed {
    /// Persists the intent a job writes before it tells any cluster anything.
    fn persist_intent(&self, kind: &str, from: &str, to: &str) -> PendingJob {
        let job = PendingJob {
            id: format!("{kind}-cut-short"),
            kind: kind.into(),
            from: Some(from.into()),
            to: to.into(),
            old_config: Some(ConfigRecord::from_config(&self.config_on(from))),
            new_config: Some(ConfigRecord::from_config(&self.config_on(to))),
        };
        self.control.record_job(Some(job.clone())).expect("intent persisted");
        job
    }

    /// `from` takes the configuration centred on `to`, as the job's first call makes it do.
    async fn demote(&self, from: &str, to: &str) {
        let cfg = self.config_on(to);
        self.net.get(from).update_config(&cfg, false, Duration::from_secs(1)).await.expect("demoted");
    }

    /// Restarts the proxy and starts recovery, as `app` does before the listener serves.
    fn restart_and_recover(&mut self) -> JoinHandle<()> {
        self.restart();
        self.orch.recover().expect("a job to recover")
    }

    /// The recovery job's record.
    fn recovery(&self) -> JobRecord {
        let jobs = self.orch.jobs.all();
        jobs.into_iter().find(|j| j.kind == "recover").expect("a recovery job")
    }

    /// Every write released, nothing pending in memory or on disk, the proxy running.
    fn settled(&self) {
        assert_eq!(self.control.gate.closed_reason(), None, "writes released");
        assert_eq!(self.control.state(), (ProxyState::Running, None));
        assert_eq!(self.control.routing().load().state, ProxyState::Running);
        assert_eq!(self.control.pending_job(), None, "intent cleared in memory");
        assert_eq!(self.persisted().pending_job, None, "intent cleared on disk");
    }
}

#[tokio::test(start_paused = true)]
async fn restart_before_the_old_primary_was_told_rolls_back_without_calling_the_target() {
    let mut bed = bed(&["a", "b", "c"]);
    let job = bed.persist_intent("switchover", "a", "b");
    bed.restart();
    assert_eq!(bed.control.pending_job(), Some(job), "the new proxy reads the intent");
    bed.net.get("a").set_delay(Duration::from_millis(100)); // room to hold a write meanwhile
    let task = bed.orch.recover().expect("a job to recover");
    assert_eq!(bed.control.state().0, ProxyState::Switching);
    assert!(
        bed.control.gate.closed_reason().is_some_and(|r| r.contains("switchover-cut-short cut short by a restart")),
        "{:?}",
        bed.control.gate.closed_reason()
    );
    let write = bed.held_write().await;
    task.await.expect("recovery task");

    let rec = bed.recovery();
    assert_eq!(rec.state, JobState::Succeeded, "{rec:#?}");
    assert!(rec.steps.iter().any(|s| s.detail.contains("a had not demoted")), "{rec:#?}");
    assert_eq!(write.await.expect("write task").as_deref(), Some("a"), "the held write goes to a");
    assert!(bed.net.get("b").calls().is_empty(), "b never called: {:?}", bed.net.get("b").calls());
    assert!(bed.net.get("c").calls().is_empty(), "c never called: {:?}", bed.net.get("c").calls());
    assert_eq!(bed.net.get("a").calls(), vec!["Read ".to_string()], "a only read");
    for c in ["a", "b", "c"] {
        assert_eq!(bed.net.get(c).primary(), "a", "{c}'s own configuration");
    }
    assert_eq!(bed.control.topology().primary.as_deref(), Some("a"));
    assert_eq!(bed.persisted_primary().as_deref(), Some("a"));
    assert_eq!(bed.routed_primary().as_deref(), Some("a"));
    assert_eq!(bed.control.role_changes(ChangeKind::Switchover, ChangeResult::RolledBack), 1);
    bed.settled();
}

#[tokio::test(start_paused = true)]
async fn restart_after_the_target_promoted_finishes_the_switchover() {
    let mut bed = bed(&["a", "b", "c"]);
    bed.persist_intent("switchover", "a", "b");
    bed.demote("a", "b").await; // a's CDC ships it at once: b and c take it, b promotes
    assert_eq!(bed.net.get("b").primary(), "b");
    let task = bed.restart_and_recover();
    assert_eq!(bed.control.state().0, ProxyState::Switching);
    assert_eq!(bed.routed_primary().as_deref(), Some("a"), "the persisted topology, until recovered");
    task.await.expect("recovery task");

    let rec = bed.recovery();
    assert_eq!(rec.state, JobState::Succeeded, "{rec:#?}");
    assert!(rec.steps.iter().any(|s| s.detail.contains("a had demoted: switchover finished")), "{rec:#?}");
    for c in ["a", "b", "c"] {
        assert_eq!(bed.net.get(c).primary(), "b", "{c}'s own configuration");
    }
    let t = bed.control.topology();
    assert_eq!(t.primary.as_deref(), Some("b"));
    assert!(t.standbys.contains(&"a".to_string()), "{t:?}");
    assert_eq!(bed.persisted_primary().as_deref(), Some("b"));
    assert_eq!(bed.routed_primary().as_deref(), Some("b"));
    assert_eq!(bed.control.role_changes(ChangeKind::Switchover, ChangeResult::Succeeded), 1);
    bed.settled();
}

#[tokio::test(start_paused = true)]
async fn restart_after_the_demotion_waits_for_the_target_then_finishes() {
    let mut bed = bed(&["a", "b", "c"]);
    bed.persist_intent("switchover", "a", "b");
    let a = bed.net.get("a");
    a.stall(); // a's demotion does not reach b and c yet
    bed.demote("a", "b").await;
    let task = bed.restart_and_recover();
    let write = bed.held_write().await;
    let b = bed.net.get("b");
    bed.until("b asked to promote", || b.calls().iter().any(|c| c == "Update centre b force false")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!task.is_finished() && !write.is_finished(), "held while b has not promoted");
    assert_eq!(bed.control.state().0, ProxyState::Switching);
    assert_eq!(bed.routed_primary().as_deref(), Some("a"));
    assert!(bed.control.pending_job().is_some());

    a.deliver(); // a's remaining log reaches b: b promotes
    task.await.expect("recovery task");
    let rec = bed.recovery();
    assert_eq!(rec.state, JobState::Succeeded, "{rec:#?}");
    assert_eq!(write.await.expect("write task").as_deref(), Some("b"), "the held write goes to b");
    for c in ["a", "b", "c"] {
        assert_eq!(bed.net.get(c).primary(), "b", "{c}'s own configuration");
    }
    assert_eq!(bed.persisted_primary().as_deref(), Some("b"));
    assert_eq!(bed.routed_primary().as_deref(), Some("b"));
    bed.settled();
}

/// The target does not promote within promote_timeout after the restart: recovery keeps writes
/// held, says why (ABNORMAL) and retries; once the target promotes it finishes and clears it.
#[tokio::test(start_paused = true)]
async fn restart_recovery_retries_while_the_target_has_not_promoted() {
    let mut bed = bed(&["a", "b"]);
    bed.persist_intent("switchover", "a", "b");
    let a = bed.net.get("a");
    a.stall();
    bed.demote("a", "b").await;
    let task = bed.restart_and_recover();
    bed.until("ABNORMAL with the reason", || bed.control.state().1.is_some()).await;
    let why = bed.control.state().1.unwrap_or_default();
    assert!(
        why.starts_with("job switchover-cut-short cut short by a restart is not resolved yet: a had demoted"),
        "{why}"
    );
    assert!(bed.control.gate.closed_reason().is_some(), "writes still held");
    assert_eq!(bed.control.routing().load().state, ProxyState::Abnormal);

    a.deliver();
    task.await.expect("recovery task");
    assert_eq!(bed.routed_primary().as_deref(), Some("b"));
    bed.settled();
}

#[tokio::test(start_paused = true)]
async fn restart_mid_failover_force_promotes_the_target() {
    let mut bed = bed(&["a", "b", "c"]);
    // As the failover does: a fenced and the intent persisted, then the proxy stops.
    let mut t = bed.control.topology();
    t.fenced.push("a".into());
    t.epoch += 1;
    bed.control.commit(t).expect("fence persisted");
    bed.persist_intent("failover", "a", "b");
    bed.net.get("a").unreachable_for(Duration::from_secs(3600));
    bed.net.get("b").set_delay(Duration::from_millis(100)); // room to hold a write meanwhile
    let task = bed.restart_and_recover();
    assert_eq!(bed.control.state().0, ProxyState::FailingOver);
    let write = bed.held_write().await;
    task.await.expect("recovery task");

    let rec = bed.recovery();
    assert_eq!(rec.state, JobState::Succeeded, "{rec:#?}");
    assert!(rec.steps.iter().any(|s| s.detail.contains("b force-promoted with the empty configuration")), "{rec:#?}");
    assert!(bed.net.get("b").calls().iter().any(|c| c.ends_with("force true")), "{:?}", bed.net.get("b").calls());
    assert!(bed.net.get("a").calls().is_empty(), "the fenced a is not asked: {:?}", bed.net.get("a").calls());
    assert_eq!(bed.net.get("b").primary(), "b");
    assert_eq!(write.await.expect("write task").as_deref(), Some("b"));
    let t = bed.control.topology();
    assert_eq!(t.primary.as_deref(), Some("b"));
    assert_eq!(t.fenced, vec!["a".to_string()]);
    assert_eq!(t.rebuild, vec!["c".to_string()], "c may be ahead of b");
    assert_eq!(bed.persisted().topology, t);
    assert_eq!(bed.control.role_changes(ChangeKind::Failover, ChangeResult::Succeeded), 1);
    bed.settled();
}

/// A failover whose force promote failed keeps its intent (the decision stands): the restarted
/// proxy finishes it once the target accepts.
#[tokio::test(start_paused = true)]
async fn restart_after_a_failed_failover_finishes_it() {
    let mut bed = bed(&["a", "b"]);
    bed.net.get("a").unreachable_for(Duration::from_secs(3600));
    bed.net.get("b").fail_next(
        crate::cdc::fake::Op::Update,
        crate::cdc::CdcError::Milvus { code: 65535, reason: "broadcast failed".into() },
    );
    let id = bed.orch.failover(Some("b")).await.expect("plan holds");
    let job = bed.finished(&id).await;
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    assert_eq!(bed.persisted().pending_job.map(|j| j.kind).as_deref(), Some("failover"));

    let task = bed.restart_and_recover();
    task.await.expect("recovery task");
    assert_eq!(bed.net.get("b").primary(), "b");
    assert_eq!(bed.persisted_primary().as_deref(), Some("b"));
    assert_eq!(bed.routed_primary().as_deref(), Some("b"));
    bed.settled();
}
