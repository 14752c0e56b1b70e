//! Each step of a switchover and of a failover failing or timing out, and what is left:
//! the job's state and error, the clusters' roles, the topology in memory and on disk, the
//! routing table, the gate, and which clusters were called.

use std::time::Duration;

use super::{Bed, bed};
use crate::cdc::CdcError;
use crate::cdc::fake::Op;
use crate::control::discovery::{round, views};
use crate::switchover::JobState;
use crate::topology::ProxyState;

fn refused(reason: &str) -> CdcError {
    CdcError::Milvus { code: 1100, reason: reason.into() }
}

impl Bed {
    /// From now on the state file cannot be written (its path is a directory: this holds even
    /// for root).
    fn break_state_file(&self) {
        let path = self.dir.path().join("state.json");
        std::fs::remove_file(&path).expect("state file");
        std::fs::create_dir_all(path.join("in-the-way")).expect("a directory in its place");
    }

    fn updates_to(&self, id: &str) -> Vec<String> {
        self.net.get(id).calls().into_iter().filter(|c| c.starts_with("Update")).collect()
    }

    /// Writes flowing, nothing pending, the proxy running with `primary` and no reason.
    fn back_to(&self, primary: &str) {
        assert_eq!(self.control.state(), (ProxyState::Running, None));
        assert_eq!(self.control.gate.closed_reason(), None);
        assert_eq!(self.control.pending_job(), None);
        assert_eq!(self.control.topology().primary.as_deref(), Some(primary));
        assert_eq!(self.routed_primary().as_deref(), Some(primary));
    }
}

// === switchover ===

#[tokio::test(start_paused = true)]
async fn switchover_persist_intent_error_abandons_before_any_cluster_is_told() {
    let bed = bed(&["a", "b"]);
    bed.break_state_file();
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::RolledBack, "{job:#?}");
    assert!(job.error.as_deref().is_some_and(|e| e.starts_with("cannot persist the job: state file")), "{job:#?}");
    assert!(bed.updates_to("a").is_empty() && bed.updates_to("b").is_empty(), "no cluster told anything");
    bed.back_to("a");
}

#[tokio::test(start_paused = true)]
async fn switchover_drain_timeout_abandons_before_any_cluster_is_told() {
    let bed = bed(&["a", "b"]);
    let in_flight = bed.control.gate.write_started(); // a write to a that never ends
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let write = bed.held_write().await;
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::RolledBack, "{job:#?}");
    assert_eq!(job.error.as_deref(), Some("1 writes still in flight to a after drain_timeout (1s)"));
    assert_eq!(write.await.expect("write task").as_deref(), Some("a"));
    assert!(bed.updates_to("a").is_empty() && bed.updates_to("b").is_empty(), "no cluster told anything");
    assert_eq!(bed.persisted().pending_job, None, "the intent written meanwhile is cleared");
    bed.back_to("a");
    drop(in_flight);
}

#[tokio::test(start_paused = true)]
async fn switchover_demotion_refused_rolls_back_without_calling_the_target() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").fail_next(Op::Update, refused("invalid parameter"));
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::RolledBack, "{job:#?}");
    assert_eq!(job.error.as_deref(), Some("a refused the new configuration: invalid parameter"));
    assert_eq!(bed.updates_to("a").len(), 1, "one attempt: a refusal is not retried");
    assert!(bed.updates_to("b").is_empty(), "b never told");
    assert_eq!(bed.net.get("b").primary(), "a");
    assert_eq!(bed.persisted().pending_job, None);
    bed.back_to("a");
}

#[tokio::test(start_paused = true)]
async fn switchover_demotion_retried_after_a_transient_error_succeeds() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").fail_next(Op::Update, CdcError::Transport { message: "reset".into(), sent: true });
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(bed.updates_to("a").len(), 2, "retried once");
    assert_eq!(bed.persisted_primary().as_deref(), Some("b"));
    bed.back_to("b");
}

/// The demotion gets no answer and a's configuration cannot be read afterwards: whether a
/// demoted is unknown. The job fails ABNORMAL with writes refused; once a answers again and
/// every cluster agrees (here on a: it never demoted), discovery clears ABNORMAL by itself.
#[tokio::test(start_paused = true)]
async fn switchover_demotion_unknown_is_abnormal_until_the_clusters_agree() {
    let bed = bed(&["a", "b"]);
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    bed.net.get("a").unreachable_for(Duration::from_secs(30));
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let why = job.error.clone().unwrap_or_default();
    assert!(why.starts_with("telling a failed (a gave no answer within 5s"), "{why}");
    assert!(why.ends_with("whether it demoted is unknown"), "{why}");
    assert_eq!(bed.control.state(), (ProxyState::Running, Some(why.clone())));
    assert_eq!(bed.control.routing().load().state, ProxyState::Abnormal);
    assert_eq!(bed.control.gate.closed_reason(), None, "writes are refused, not held");
    assert!(bed.updates_to("b").is_empty(), "b never told");
    assert_eq!(bed.control.pending_job(), None, "nothing left to recover: discovery decides");

    tokio::time::sleep(Duration::from_secs(30)).await; // a answers again, still primary
    let seen = views(&bed.control).await;
    round(&bed.control, &seen, &mut None);
    bed.back_to("a");
}

/// b refuses the promotion call although a's log already promoted it: the job fails ABNORMAL
/// (there is no roll back once a demoted), and discovery adopts b since every cluster names it.
#[tokio::test(start_paused = true)]
async fn switchover_promotion_refused_after_demotion_is_adopted_by_discovery() {
    let bed = bed(&["a", "b"]);
    bed.net.get("b").fail_next(Op::Update, refused("broadcast failed"));
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let why = job.error.clone().unwrap_or_default();
    assert!(why.starts_with("switchover to b: a has demoted"), "{why}");
    assert!(why.contains("b refused: broadcast failed"), "{why}");
    assert_eq!(bed.control.state().1.as_deref(), Some(why.as_str()));
    assert_eq!(bed.control.gate.closed_reason(), None, "writes are refused, not held");
    assert_eq!(bed.control.topology().primary.as_deref(), Some("a"), "not swapped by the job");
    assert_eq!(bed.control.pending_job(), None);

    let seen = views(&bed.control).await;
    round(&bed.control, &seen, &mut None);
    bed.back_to("b");
    assert_eq!(bed.persisted_primary().as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn switchover_repoint_error_on_another_standby_is_noted_and_succeeds() {
    let bed = bed(&["a", "b", "c"]);
    bed.net.get("c").fail_next(Op::Update, refused("boom"));
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let step = job.steps.iter().find(|s| s.name == "repoint other standbys").expect("the step");
    assert_eq!(step.detail, "c: c refused: boom");
    assert_eq!(bed.net.get("c").primary(), "b", "c took b's configuration from a's log anyway");
    bed.back_to("b");
}

// === failover ===

#[tokio::test(start_paused = true)]
async fn failover_fence_persist_error_is_abnormal_and_the_target_is_not_promoted() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").unreachable_for(Duration::from_secs(3600));
    bed.break_state_file();
    let id = bed.orch.failover(Some("b")).await.expect("plan holds");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let why = job.error.clone().unwrap_or_default();
    assert!(why.starts_with("cannot persist the fence of a: state file"), "{why}");
    assert_eq!(bed.control.state(), (ProxyState::Running, Some(why)));
    assert_eq!(bed.control.gate.closed_reason(), None);
    assert!(bed.updates_to("b").is_empty(), "b not promoted");
    assert_eq!(bed.net.get("b").primary(), "a");
}

#[tokio::test(start_paused = true)]
async fn failover_force_promote_timeout_is_abnormal() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").unreachable_for(Duration::from_secs(3600));
    bed.net.get("b").set_delay(Duration::from_secs(6)); // beyond promote_timeout (5s)
    let id = bed.orch.failover(Some("b")).await.expect("plan holds");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let why = "force promote of b failed: b gave no answer within 5s: timed out after 5s";
    assert_eq!(job.error.as_deref(), Some(why));
    assert_eq!(bed.control.state(), (ProxyState::Running, Some(why.to_string())));
    assert_eq!(bed.control.routing().load().state, ProxyState::Abnormal);
    assert_eq!(bed.control.gate.closed_reason(), None, "writes are refused, not held");
    assert_eq!(bed.routed_primary(), None);
    assert_eq!(bed.control.topology().fenced, vec!["a".to_string()]);
    assert_eq!(bed.persisted().topology.fenced, vec!["a".to_string()]);
    assert_eq!(bed.persisted().pending_job.map(|j| j.to).as_deref(), Some("b"), "the decision stands");
}

#[tokio::test(start_paused = true)]
async fn failover_force_promote_unreachable_is_abnormal() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").unreachable_for(Duration::from_secs(3600));
    bed.net.get("b").unreachable_for(Duration::from_secs(3600));
    let id = bed.orch.failover(Some("b")).await.expect("plan holds");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let why = "force promote of b failed: b gave no answer within 5s: transport: b: connection refused";
    assert_eq!(job.error.as_deref(), Some(why));
    assert!(bed.updates_to("b").len() > 1, "retried until promote_timeout");
    assert_eq!(bed.control.state().1.as_deref(), Some(why));
    assert_eq!(bed.routed_primary(), None);
}

#[tokio::test(start_paused = true)]
async fn failover_with_the_salvage_checkpoint_unreadable_reports_the_loss_unknown() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").unreachable_for(Duration::from_secs(3600));
    let b = bed.net.get("b");
    b.set_checkpoints(None, Some(100));
    for _ in 0..2 {
        b.fail_next(Op::Info, CdcError::Transport { message: "reset".into(), sent: true }); // each pchannel
    }
    bed.control.cluster("a").expect("a").signals.rows_acked(110, 7);
    let id = bed.orch.failover(Some("b")).await.expect("plan holds");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(job.possible_loss_rows, None, "unknown, not a count");
    let step = job.steps.iter().find(|s| s.name == "measure possible data loss").expect("the step");
    assert_eq!(step.detail, "b had applied a's log up to timestamp unknown; unknown rows acknowledged by a after that");
    assert_eq!(bed.net.get("b").primary(), "b");
    bed.back_to("b");
}
