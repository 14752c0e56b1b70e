//! The drill over fake clusters. Its scratch-database write and read go through the unary
//! gRPC client to a real Milvus, not through the CDC seam, so a drill cannot succeed here:
//! its success is covered end to end (`tests/python/test_switchover.py`, `ctl drill`). What the fakes
//! can show is that a drill switches back after a failed check, and stops when a switchover fails.

use std::time::Duration;

use super::bed;
use crate::cdc::CdcError;
use crate::cdc::fake::Op;
use crate::switchover::JobState;
use crate::topology::ProxyState;

/// Nothing listens at b's address, so the scratch write fails: the drill still switches back
/// to a and fails naming the check.
#[tokio::test(start_paused = true)]
async fn drill_switches_back_when_the_scratch_write_fails() {
    let bed = bed(&["a", "b", "c"]);
    let id = bed.orch.drill("b").await.expect("preconditions hold");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let why = job.error.clone().unwrap_or_default();
    assert!(why.starts_with("b failed the write/read check: CreateDatabase: "), "{why}");
    let names: Vec<&str> = job.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["switch over to b", "write and read on b", "switch back to a"]);
    assert!(job.steps[2].detail.starts_with("job "), "{job:#?}");
    let subs: Vec<_> = bed.orch.jobs.all().into_iter().filter(|j| j.kind == "switchover").collect();
    assert_eq!(subs.len(), 2, "there and back");
    assert!(subs.iter().all(|j| j.state == JobState::Succeeded), "{subs:#?}");
    for c in ["a", "b", "c"] {
        assert_eq!(bed.net.get(c).primary(), "a", "{c}'s own configuration");
    }
    assert_eq!(bed.control.topology().primary.as_deref(), Some("a"));
    assert_eq!(bed.persisted_primary().as_deref(), Some("a"));
    assert_eq!(bed.routed_primary().as_deref(), Some("a"));
    assert_eq!(bed.control.gate.closed_reason(), None);
}

#[tokio::test(start_paused = true)]
async fn drill_stops_when_its_first_switchover_rolls_back() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").fail_next(Op::Update, CdcError::Milvus { code: 1100, reason: "invalid parameter".into() });
    let id = bed.orch.drill("b").await.expect("preconditions hold");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let why = job.error.clone().unwrap_or_default();
    assert!(why.starts_with("switchover "), "{why}");
    assert!(why.ends_with(" ended RolledBack: a refused the new configuration: invalid parameter"), "{why}");
    assert_eq!(job.steps.len(), 1, "no write, no switch back: {job:#?}");
    assert!(!bed.net.get("b").calls().iter().any(|c| c.starts_with("Update")), "b never told");
    assert_eq!(bed.routed_primary().as_deref(), Some("a"));
    assert_eq!(bed.control.state(), (ProxyState::Running, None));
    assert_eq!(bed.control.gate.closed_reason(), None);
}

/// A drill whose first switchover is refused at its preconditions (a cannot be read) changes
/// nothing and holds no write.
#[tokio::test(start_paused = true)]
async fn drill_stops_when_its_first_switchover_is_refused() {
    let bed = bed(&["a", "b"]);
    let id = bed.orch.drill("b").await.expect("preconditions hold");
    bed.net.get("a").unreachable_for(Duration::from_secs(60));
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    assert_eq!(
        job.error.as_deref(),
        Some("switchover refused: cannot read the replicate configuration of a: transport: a: connection refused")
    );
    assert!(bed.orch.jobs.all().iter().all(|j| j.kind != "switchover"), "no switchover started");
    assert_eq!(bed.control.gate.held_total.load(std::sync::atomic::Ordering::Relaxed), 0, "no write held");
    assert_eq!(bed.routed_primary().as_deref(), Some("a"));
}
