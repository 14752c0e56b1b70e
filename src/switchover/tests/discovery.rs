//! Role discovery racing a job: while a job runs (`SWITCHING`) or its intent is persisted, a
//! discovery round changes nothing, whatever the clusters say.

use std::time::Duration;

use super::bed;
use crate::cdc::Cdc;
use crate::control::discovery::{round, views};
use crate::control::{ChangeKind, ChangeResult};
use crate::gate::HoldKey;
use crate::switchover::JobState;
use crate::topology::ProxyState;

fn agree_on(p: &str) -> Vec<(String, String)> {
    ["a", "b", "c"].iter().map(|id| (id.to_string(), p.to_string())).collect()
}

#[tokio::test(start_paused = true)]
async fn discovery_during_a_switchover_changes_nothing() {
    let bed = bed(&["a", "b", "c"]);
    let a = bed.net.get("a");
    a.stall();
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    bed.until("a demoted", || a.primary() == "b").await;
    assert_eq!(bed.control.state().0, ProxyState::Switching);
    let intent = bed.control.pending_job().expect("the job's intent");

    // What the clusters say now (a names b, b and c still name a), then views as if read an
    // instant later with every cluster agreeing on b: neither moves discovery.
    let seen = views(&bed.control).await;
    assert!(seen.contains(&("a".to_string(), "b".to_string())), "{seen:?}");
    assert!(seen.contains(&("b".to_string(), "a".to_string())), "{seen:?}");
    let mut since = None;
    round(&bed.control, &seen, &mut since);
    round(&bed.control, &agree_on("b"), &mut since);
    assert_eq!(since, None, "no disagreement timer");
    assert!(!bed.control.gate.is_held_by(HoldKey::Discovery));
    assert_eq!(bed.control.state(), (ProxyState::Switching, None), "not ABNORMAL");
    assert_eq!(bed.control.topology().primary.as_deref(), Some("a"), "not adopted");
    assert_eq!(bed.routed_primary().as_deref(), Some("a"));
    assert_eq!(bed.control.pending_job(), Some(intent.clone()), "intent kept");
    assert_eq!(bed.persisted().pending_job, Some(intent), "intent kept on disk");
    assert_eq!(bed.control.role_changes(ChangeKind::Discovered, ChangeResult::Succeeded), 0);

    a.deliver();
    let job = bed.finished(&id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(bed.routed_primary().as_deref(), Some("b"));
    assert_eq!(
        bed.control.role_changes(ChangeKind::Discovered, ChangeResult::Succeeded),
        0,
        "the job's, not discovery's"
    );
}

/// A persisted intent with the proxy `RUNNING` (a restart before recovery began, or a job that
/// ended with the clusters in an unknown state): discovery adopts nothing and keeps the intent,
/// which recovery needs.
#[tokio::test(start_paused = true)]
async fn discovery_with_an_intent_persisted_adopts_nothing() {
    let bed = bed(&["a", "b", "c"]);
    let intent = crate::state::PendingJob {
        id: "j".into(),
        kind: "switchover".into(),
        from: Some("a".into()),
        to: "b".into(),
        old_config: None,
        new_config: None,
    };
    bed.control.record_job(Some(intent.clone())).expect("intent persisted");
    bed.net.get("a").update_config(&bed.config_on("b"), false, Duration::from_secs(1)).await.expect("a demotes");
    let seen = views(&bed.control).await;
    assert_eq!(seen, agree_on("b"), "every cluster names b");
    round(&bed.control, &seen, &mut None);

    assert_eq!(bed.control.state(), (ProxyState::Running, None));
    assert_eq!(bed.control.topology().primary.as_deref(), Some("a"), "not adopted");
    assert_eq!(bed.persisted_primary().as_deref(), Some("a"));
    assert_eq!(bed.control.pending_job(), Some(intent.clone()), "intent kept");
    assert_eq!(bed.persisted().pending_job, Some(intent), "intent kept on disk");
    assert_eq!(bed.control.role_changes(ChangeKind::Discovered, ChangeResult::Succeeded), 0);
}
