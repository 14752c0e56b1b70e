//! The gate's limits during a switchover: `max_held_requests` and `hold_window` end a hold
//! with an answer that says the write was not sent.

use std::time::Duration;

use super::bed_with;
use crate::error::{Answer, MILVUS_RATE_LIMIT, ProxyError};
use crate::method::by_name;
use crate::switchover::JobState;

#[tokio::test(start_paused = true)]
async fn a_full_gate_refuses_and_a_long_hold_times_out_during_a_switchover() {
    let bed = bed_with(&["a", "b"], "max_held_requests = 1\nhold_window = \"2s\"\n");
    let a = bed.net.get("a");
    a.stall(); // b promotes only when the test delivers a's log
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let first = bed.try_held_write().await;

    // max_held_requests reached: the next write is refused at once, not held.
    let full = bed.control.gate.reserve().expect_err("the gate is full");
    let text = "write not held: max_held_requests (1) reached; not sent, safe to retry";
    assert!(matches!(&full, ProxyError::GateFull(_)), "{full:?}");
    assert_eq!(full.to_string(), text);
    match full.answer(by_name("Insert")) {
        Answer::Reply { status, .. } => {
            assert_eq!(status.code, MILVUS_RATE_LIMIT, "the SDK backs off and retries");
            assert_eq!(status.reason, format!("switchyard: {text}"));
        }
        other => panic!("expected a RateLimit reply, got {other:?}"),
    }

    // hold_window passes before b promotes: the held write fails, not sent.
    let e = first.await.expect("write task").expect_err("held too long");
    let running = bed.orch.jobs.get(&id).expect("the job");
    assert_eq!(running.state, JobState::Running, "before the switchover ends (promote_timeout is 5s)");
    match &e {
        ProxyError::HeldTooLong { held, during } => {
            assert_eq!(*held, Duration::from_secs(2));
            assert_eq!(during, "switchover to b");
        }
        other => panic!("expected HeldTooLong, got {other:?}"),
    }
    assert_eq!(e.to_string(), "write held 2s during switchover to b; not sent, safe to retry");
    assert_eq!(bed.control.gate.held(), (0, 0), "its place in the gate is given back");
    assert!(bed.control.gate.closed_reason().is_some(), "the switchover still holds writes");

    // The next write is held again, and released to b when the switchover ends.
    let second = bed.held_write().await;
    a.deliver();
    let job = bed.finished(&id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(second.await.expect("write task").as_deref(), Some("b"));
    assert_eq!(job.held_writes, 2, "the refused write was never held");
    assert_eq!(bed.control.gate.held(), (0, 0));
}
