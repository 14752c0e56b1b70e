//! Switchover and failover end to end, in process: the real [`Control`], gate, state file
//! and jobs, over in-memory Milvus clusters ([`FakeNet`]) and with paused time, so a job
//! that waits seconds for Milvus runs in milliseconds. The monitor is replaced by fixed
//! views ([`Control::set_view`]).
//!
//! This file holds the bed and the main paths; the other files go step by step:
//! [`steps`] (each switchover and failover step failing or timing out), [`recover`] (a restart
//! mid-job), [`discovery`] (discovery racing a job), [`hold`] (the gate's limits during a
//! switchover) and [`drill`].

mod discovery;
mod drill;
mod hold;
mod recover;
mod steps;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{JobRecord, JobState, Orchestrator};
use crate::cdc::CdcError;
use crate::cdc::fake::{FakeNet, ForceShape, Op, star};
use crate::config::Config;
use crate::control::Control;
use crate::error::ProxyError;
use crate::monitor::ClusterView;
use crate::proto::common::ReplicateConfiguration;
use crate::state::{PersistedState, StateStore};
use crate::topology::ProxyState;

const TOKEN: &str = "root:Milvus";

struct Bed {
    dir: tempfile::TempDir,
    /// The config file's text, for a restart.
    toml: String,
    ids: Vec<String>,
    net: Arc<FakeNet>,
    control: Arc<Control>,
    orch: Arc<Orchestrator>,
}

/// Clusters `ids`, the first primary, replicating with Milvus CDC; every one up and caught up.
fn bed(ids: &[&str]) -> Bed {
    bed_with(ids, "")
}

/// [`bed`] with more `[switchover]` settings (`key = value` lines).
fn bed_with(ids: &[&str], switchover: &str) -> Bed {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut toml = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n[state]\npath = {:?}\n\
         [switchover]\npromote_timeout = \"5s\"\ndrain_timeout = \"1s\"\n{switchover}",
        dir.path().join("state.json").display().to_string()
    );
    for (i, id) in ids.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        toml += &format!(
            "[[clusters]]\nid = \"{id}\"\nuri = \"{}\"\ntoken = \"{TOKEN}\"\npchannels = 2\nrole = \"{role}\"\n",
            uri(i)
        );
    }
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let net = FakeNet::new();
    for id in &ids {
        net.add(id, Some(star_on(&ids, &ids[0])));
    }
    let (control, orch) = start(&toml, dir.path(), &net, &ids);
    Bed { dir, toml, ids, net, control, orch }
}

fn uri(i: usize) -> String {
    format!("http://127.0.0.1:{}", 1 + i)
}

/// The star over `ids` centred on `centre`, as Milvus holds it.
fn star_on(ids: &[String], centre: &str) -> ReplicateConfiguration {
    let uris: Vec<String> = (0..ids.len()).map(uri).collect();
    let members: Vec<(&str, &str, Option<&str>)> =
        ids.iter().zip(&uris).map(|(id, uri)| (id.as_str(), uri.as_str(), Some(TOKEN))).collect();
    star(&members, centre, 2)
}

/// A proxy's control side over `net`, with every cluster seen up and caught up.
fn start(toml: &str, dir: &Path, net: &Arc<FakeNet>, ids: &[String]) -> (Arc<Control>, Arc<Orchestrator>) {
    let config = Config::from_toml(toml, dir).expect("config");
    let control = Control::new_with(config, net.factory()).expect("control");
    let up = ClusterView {
        up: true,
        probed: true,
        lag: Some(Duration::from_millis(5)),
        lag_ok: true,
        ..ClusterView::default()
    };
    for id in ids {
        control.set_view(id, up.clone());
    }
    let orch = Orchestrator::new(control.clone());
    (control, orch)
}

impl Bed {
    async fn finished(&self, id: &str) -> JobRecord {
        for _ in 0..100_000 {
            if let Some(r) = self.orch.jobs.get(id).filter(|r| r.state != JobState::Running) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} did not finish");
    }

    async fn until(&self, what: &str, cond: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never: {what}");
    }

    /// A write as the proxy holds one: it waits at the closed gate, then is routed to the
    /// primary of the routing table in force when it is released.
    async fn held_write(&self) -> tokio::task::JoinHandle<Option<String>> {
        let task = self.try_held_write().await;
        tokio::spawn(async move { task.await.expect("write task").expect("released, not refused") })
    }

    /// [`Bed::held_write`], which may also be refused by the gate.
    async fn try_held_write(&self) -> tokio::task::JoinHandle<Result<Option<String>, ProxyError>> {
        let c = self.control.clone();
        self.until("writes held", || c.gate.closed_reason().is_some()).await;
        let before = self.control.gate.held().0;
        let c = self.control.clone();
        let task = tokio::spawn(async move {
            let held = c.gate.reserve()?;
            c.gate.wait_open(&held).await?;
            Ok(c.routing().load().primary.as_ref().map(|p| p.id.to_string()))
        });
        self.until("the write is held", || self.control.gate.held().0 == before + 1).await;
        task
    }

    /// The proxy restarted: a new control side and orchestrator on the same state file and
    /// clusters. The old ones are dropped, as a crash drops them (no job of theirs may run).
    fn restart(&mut self) {
        let (control, orch) = start(&self.toml, self.dir.path(), &self.net, &self.ids);
        self.control = control;
        self.orch = orch;
    }

    /// The configuration centred on `centre` that a job sends.
    fn config_on(&self, centre: &str) -> ReplicateConfiguration {
        star_on(&self.ids, centre)
    }

    fn persisted(&self) -> PersistedState {
        StateStore::new(self.dir.path().join("state.json")).load().expect("state file").expect("state")
    }

    fn persisted_primary(&self) -> Option<String> {
        self.persisted().topology.primary
    }

    fn routed_primary(&self) -> Option<String> {
        self.control.routing().load().primary.as_ref().map(|p| p.id.to_string())
    }
}

#[tokio::test(start_paused = true)]
async fn switchover_succeeds() {
    let bed = bed(&["a", "b", "c"]);
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    for c in ["a", "b", "c"] {
        assert_eq!(bed.net.get(c).primary(), "b", "{c}'s own configuration");
    }
    assert_eq!(bed.control.topology().primary.as_deref(), Some("b"));
    assert_eq!(bed.routed_primary().as_deref(), Some("b"));
    assert_eq!(bed.control.state(), (ProxyState::Running, None));
    assert_eq!(bed.control.pending_job(), None);
    assert_eq!(bed.persisted_primary().as_deref(), Some("b"));
    // The documented order: the old primary first, then the target.
    assert!(bed.net.get("a").calls().iter().any(|c| c == "Update centre b force false"));
    assert!(bed.net.get("b").calls().iter().any(|c| c == "Update centre b force false"));
}

#[tokio::test(start_paused = true)]
async fn switchover_rolls_back_when_the_old_primary_never_takes_its_demotion() {
    let bed = bed(&["a", "b", "c"]);
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    // From now on a is unreachable for longer than promote_timeout (5 s): every demotion
    // attempt fails unsent, and a is back in time for the roll back.
    bed.net.get("a").unreachable_for(Duration::from_secs(6));
    let write = bed.held_write().await;
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::RolledBack, "{job:#?}");
    assert!(job.error.as_deref().is_some_and(|e| e.contains("a gave no answer within 5s")), "{job:#?}");
    assert_eq!(write.await.expect("write task").as_deref(), Some("a"), "the held write goes to a");
    assert_eq!(job.held_writes, 1);
    for c in ["a", "b", "c"] {
        assert_eq!(bed.net.get(c).primary(), "a", "{c}'s own configuration");
    }
    assert_eq!(bed.control.topology().primary.as_deref(), Some("a"));
    assert_eq!(bed.routed_primary().as_deref(), Some("a"));
    assert_eq!(bed.control.state(), (ProxyState::Running, None));
    assert_eq!(bed.control.gate.closed_reason(), None);
    assert_eq!(bed.control.pending_job(), None);
}

/// The old primary demoted and the target does not promote within promote_timeout (its CDC
/// backlog has not arrived): Milvus cannot undo a demotion, so there is no roll back. The job
/// fails, the proxy is ABNORMAL with the operator's choices, writes are refused (not held), and
/// the intent is cleared. When the target's promotion arrives, discovery adopts it and the
/// proxy leaves ABNORMAL by itself.
#[tokio::test(start_paused = true)]
async fn switchover_promote_timeout_after_demotion_rolls_forward() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").stall();
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let error = job.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("switchover to b: a has demoted, and b did not finish promotion within promote_timeout"),
        "{error}"
    );
    assert!(error.contains("switchyard does not roll back"), "{error}");
    assert!(error.contains("`switchyard ctl failover --to b`"), "{error}");
    assert!(!job.steps.iter().any(|s| s.name == "roll back"), "{job:#?}");
    assert_eq!(bed.net.get("a").primary(), "b", "a demoted");
    assert_eq!(bed.net.get("b").primary(), "a", "b has not promoted yet");
    let (state, abnormal) = bed.control.state();
    assert_eq!(state, ProxyState::Running);
    assert_eq!(abnormal.as_deref(), Some(error.as_str()));
    assert_eq!(bed.control.routing().load().state, ProxyState::Abnormal);
    assert_eq!(bed.control.gate.closed_reason(), None, "writes are refused, not held");
    assert_eq!(bed.control.pending_job(), None, "nothing left to recover: discovery may adopt b");

    // a's log reaches b, which promotes by itself; the next discovery round adopts it.
    bed.net.get("a").deliver();
    bed.until("b promoted", || bed.net.get("b").primary() == "b").await;
    let views = crate::control::discovery::views(&bed.control).await;
    crate::control::discovery::round(&bed.control, &views, &mut None);
    assert_eq!(bed.control.topology().primary.as_deref(), Some("b"));
    assert_eq!(bed.control.state(), (ProxyState::Running, None), "ABNORMAL cleared by agreement");
    assert_eq!(bed.routed_primary().as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn held_write_is_released_to_the_new_primary() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").stall();
    let id = bed.orch.switchover("b", Some("a")).await.expect("preconditions hold");
    let write = bed.held_write().await;
    let a = bed.net.get("a");
    bed.until("a demoted", || a.primary() == "b").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!write.is_finished(), "held while b has not promoted");
    assert_eq!(bed.routed_primary().as_deref(), Some("a"));

    a.deliver(); // a's remaining log, demotion included, reaches b: b promotes
    let job = bed.finished(&id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(write.await.expect("write task").as_deref(), Some("b"));
    assert_eq!(job.held_writes, 1);
}

#[tokio::test(start_paused = true)]
async fn failover_succeeds() {
    let bed = bed(&["a", "b", "c"]);
    bed.net.get("a").unreachable_for(Duration::from_secs(3600));
    bed.net.get("b").set_checkpoints(None, Some(100));
    let a = bed.control.cluster("a").expect("a");
    a.signals.rows_acked(90, 1);
    a.signals.rows_acked(110, 7);
    let id = bed.orch.failover(Some("b")).await.expect("plan holds");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert!(job.steps.iter().any(|s| s.detail.starts_with("promoted with the empty configuration")), "{job:#?}");
    assert_eq!(job.possible_loss_rows, Some(7), "rows acknowledged by a after b's salvage checkpoint");
    assert_eq!(bed.net.get("b").primary(), "b");
    let t = bed.control.topology();
    assert_eq!(t.primary.as_deref(), Some("b"));
    assert_eq!(t.fenced, vec!["a".to_string()]);
    assert_eq!(t.rebuild, vec!["c".to_string()]);
    assert_eq!(bed.routed_primary().as_deref(), Some("b"));
    assert_eq!(bed.control.state(), (ProxyState::Running, None));
    assert_eq!(bed.persisted_primary().as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn failover_retries_with_the_single_cluster_shape() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").unreachable_for(Duration::from_secs(3600));
    bed.net.get("b").set_force_shape(ForceShape::SingleCluster);
    let id = bed.orch.failover(Some("b")).await.expect("plan holds");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert!(job.steps.iter().any(|s| s.detail.starts_with("promoted with the single-cluster configuration")));
    assert_eq!(bed.net.get("b").primary(), "b");
}

#[tokio::test(start_paused = true)]
async fn failover_with_force_promote_refused_is_abnormal() {
    let bed = bed(&["a", "b"]);
    bed.net.get("a").unreachable_for(Duration::from_secs(3600));
    bed.net.get("b").fail_next(Op::Update, CdcError::Milvus { code: 65535, reason: "broadcast failed".into() });
    let id = bed.orch.failover(Some("b")).await.expect("plan holds");
    let job = bed.finished(&id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let why = "force promote of b failed: b refused: broadcast failed";
    assert_eq!(job.error.as_deref(), Some(why));
    assert_eq!(bed.control.state(), (ProxyState::Running, Some(why.to_string())));
    assert_eq!(bed.control.routing().load().state, ProxyState::Abnormal);
    assert_eq!(bed.control.gate.closed_reason(), None, "writes are refused, not held");
    assert_eq!(bed.net.get("b").primary(), "a", "b did not promote");
    assert_eq!(bed.control.topology().fenced, vec!["a".to_string()], "a stays fenced");
    assert_eq!(bed.routed_primary(), None);
}
