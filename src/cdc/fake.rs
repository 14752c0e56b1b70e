//! In-memory Milvus clusters with CDC, for in-process tests of the control side.
//!
//! A [`FakeNet`] holds one [`FakeCdc`] per cluster id. Each models the rules of Milvus 2.6
//! that switchyard depends on (`milvus-protocol.md` §4):
//! - the role follows the configuration: no configuration, or the centre of the star, is
//!   primary;
//! - an identical configuration is accepted at once, on any role ("configuration same");
//! - a primary applies a new configuration at once; when it names another centre, it is
//!   demoted and its CDC ships that configuration to its old targets. The shipment
//!   "arrives" at once, or only when the test says so ([`FakeCdc::stall`] /
//!   [`FakeCdc::deliver`]);
//! - an arriving configuration is applied (the target promotes when it is the new centre);
//! - a standby asked for a configuration waits until it holds it (the old primary's fence
//!   arrived), bounded by the call's timeout;
//! - `force_promote` needs an empty configuration (or, in [`ForceShape::SingleCluster`],
//!   exactly the current cluster), a standby, and an existing configuration; it leaves the
//!   cluster alone at the centre.
//!
//! Faults: a cluster can be unreachable for a while (requests not sent), and the next call
//! of an operation can fail with a given error; calls can be slowed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Cdc, CdcError, CdcFactory, CdcFuture, ReplicateInfo};
use crate::config::ClusterConfig;
use crate::grpc::{Code, GrpcStatus};
use crate::proto::common::{
    ConnectionParam, CrossClusterTopology, MilvusCluster, ReplicateCheckpoint, ReplicateConfiguration,
};
use crate::upstream::Upstream;

/// An operation of [`Cdc`], for fault injection and the call log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GetReplicateConfiguration`.
    Read,
    /// `UpdateReplicateConfiguration`.
    Update,
    /// `GetReplicateInfo`.
    Info,
}

/// Which force-promote shape the cluster accepts (both shipped in 2.6 patches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForceShape {
    /// Empty clusters and topology.
    #[default]
    Empty,
    /// Exactly the current cluster.
    SingleCluster,
}

/// The clusters of one test.
#[derive(Debug, Default)]
pub struct FakeNet {
    clusters: Mutex<HashMap<String, Arc<FakeCdc>>>,
}

impl FakeNet {
    /// An empty net.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a cluster with `config` in force (`None`: no configuration, a lone primary).
    pub fn add(self: &Arc<Self>, id: &str, config: Option<ReplicateConfiguration>) -> Arc<FakeCdc> {
        let c = Arc::new(FakeCdc {
            id: id.to_string(),
            net: Arc::downgrade(self),
            state: Mutex::new(State { config, supported: true, ..State::default() }),
            changed: Notify::new(),
        });
        lock(&self.clusters).insert(id.to_string(), c.clone());
        c
    }

    /// The cluster with this id.
    pub fn get(&self, id: &str) -> Arc<FakeCdc> {
        lock(&self.clusters).get(id).cloned().unwrap_or_else(|| panic!("no fake cluster {id}"))
    }

    /// A factory handing each configured cluster its fake (by id).
    pub fn factory(self: &Arc<Self>) -> CdcFactory {
        let net = self.clone();
        Arc::new(move |config: &ClusterConfig, _: &Arc<Upstream>| -> Arc<dyn Cdc> { net.get(&config.id) })
    }
}

/// One fake cluster.
#[derive(Debug)]
pub struct FakeCdc {
    id: String,
    net: Weak<FakeNet>,
    // Short sections only, never across an await.
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    config: Option<ReplicateConfiguration>,
    supported: bool,
    force_shape: ForceShape,
    /// Replication out of this cluster is stalled: shipments wait here.
    stalled: bool,
    outbox: Vec<(String, ReplicateConfiguration)>,
    down_until: Option<Instant>,
    faults: VecDeque<(Op, CdcError)>,
    delay: Duration,
    checkpoint: Option<u64>,
    salvage: Option<u64>,
    calls: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn refused(reason: &str) -> CdcError {
    CdcError::Milvus { code: 65535, reason: reason.to_string() }
}

impl FakeCdc {
    /// The configuration in force.
    pub fn config(&self) -> Option<ReplicateConfiguration> {
        lock(&self.state).config.clone()
    }

    /// The primary this cluster's own configuration names.
    pub fn primary(&self) -> String {
        crate::control::discovery::primary_of(&self.id, self.config().as_ref())
    }

    /// Calls received so far (`op` and a short description).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// Calls are refused (not sent) until `d` from now.
    pub fn unreachable_for(&self, d: Duration) {
        lock(&self.state).down_until = Some(Instant::now() + d);
    }

    /// The next call of `op` fails with `error`.
    pub fn fail_next(&self, op: Op, error: CdcError) {
        lock(&self.state).faults.push_back((op, error));
    }

    /// Every call takes `d` first.
    pub fn set_delay(&self, d: Duration) {
        lock(&self.state).delay = d;
    }

    /// Which force-promote shape this cluster accepts.
    pub fn set_force_shape(&self, shape: ForceShape) {
        lock(&self.state).force_shape = shape;
    }

    /// `GetReplicateInfo` answers: the checkpoint and salvage checkpoint time ticks.
    pub fn set_checkpoints(&self, checkpoint: Option<u64>, salvage: Option<u64>) {
        let mut st = lock(&self.state);
        st.checkpoint = checkpoint;
        st.salvage = salvage;
    }

    /// Holds back what this cluster's CDC ships (a demotion does not reach its targets).
    pub fn stall(&self) {
        lock(&self.state).stalled = true;
    }

    /// Delivers what was held back, and ships at once from now on.
    pub fn deliver(&self) {
        let out = {
            let mut st = lock(&self.state);
            st.stalled = false;
            std::mem::take(&mut st.outbox)
        };
        self.ship(out);
    }

    fn ship(&self, shipments: Vec<(String, ReplicateConfiguration)>) {
        let Some(net) = self.net.upgrade() else { return };
        for (to, cfg) in shipments {
            net.get(&to).arrive(cfg);
        }
    }

    /// The replicated `AlterReplicateConfig` is appended here: the configuration applies.
    fn arrive(&self, cfg: ReplicateConfiguration) {
        lock(&self.state).config = Some(cfg);
        self.changed.notify_waiters();
    }

    /// Logs the call, then fails it if the cluster is down or a fault is queued, then waits
    /// the delay (bounded by `timeout`).
    async fn enter(&self, op: Op, what: String, timeout: Duration) -> Result<(), CdcError> {
        let delay = {
            let mut st = lock(&self.state);
            st.calls.push(format!("{op:?} {what}"));
            if st.down_until.is_some_and(|t| Instant::now() < t) {
                return Err(CdcError::Transport { message: format!("{}: connection refused", self.id), sent: false });
            }
            if let Some(i) = st.faults.iter().position(|(o, _)| *o == op) {
                let (_, e) = st.faults.remove(i).expect("position is in range");
                return Err(e);
            }
            if !st.supported {
                return Err(CdcError::Grpc(GrpcStatus::new(Code::Unimplemented, "unknown method")));
            }
            st.delay
        };
        if delay >= timeout {
            tokio::time::sleep(timeout).await;
            return Err(CdcError::Timeout(timeout));
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn update_now(&self, cfg: &ReplicateConfiguration, force: bool) -> Result<bool, CdcError> {
        let mut st = lock(&self.state);
        let current = st.config.clone();
        let primary = crate::control::discovery::primary_of(&self.id, current.as_ref()) == self.id;
        if force {
            let shape_ok = match st.force_shape {
                ForceShape::Empty => cfg.clusters.is_empty() && cfg.cross_cluster_topology.is_empty(),
                ForceShape::SingleCluster => {
                    cfg.clusters.len() == 1
                        && cfg.clusters[0].cluster_id == self.id
                        && cfg.cross_cluster_topology.is_empty()
                }
            };
            if !shape_ok {
                return Err(refused(match st.force_shape {
                    ForceShape::Empty => {
                        "code: STREAMING_CODE_INVAILD_ARGUMENT, cause: force promote requires empty cluster and \
                         topology fields; it promotes the cluster to primary automatically"
                    }
                    ForceShape::SingleCluster => "force promote requires exactly one cluster (current cluster only)",
                }));
            }
            if primary {
                return Err(refused(
                    "force promote can only be used on secondary clusters, current cluster is primary",
                ));
            }
            let Some(current) = current else {
                return Err(refused(
                    "force promote requires existing replicate configuration; current cluster has no configuration",
                ));
            };
            let me = current.clusters.into_iter().filter(|m| m.cluster_id == self.id).collect();
            st.config = Some(ReplicateConfiguration { clusters: me, cross_cluster_topology: Vec::new() });
            drop(st);
            self.changed.notify_waiters();
            return Ok(true);
        }
        if current.as_ref() == Some(cfg) {
            return Ok(true); // configuration same
        }
        validate(&self.id, cfg).map_err(|r| refused(&r))?;
        if !primary {
            return Ok(false); // not primary: wait until the configuration arrives
        }
        let centre = crate::control::discovery::primary_of(&self.id, Some(cfg));
        st.config = Some(cfg.clone());
        if centre != self.id {
            // Demoted: the AlterReplicateConfig goes down this cluster's CDC to its old
            // targets (everything written before it arrives first).
            let targets: Vec<String> = current
                .iter()
                .flat_map(|c| &c.cross_cluster_topology)
                .filter(|e| e.source_cluster_id == self.id)
                .map(|e| e.target_cluster_id.clone())
                .collect();
            let shipments: Vec<_> = targets.into_iter().map(|t| (t, cfg.clone())).collect();
            if st.stalled {
                st.outbox.extend(shipments);
            } else {
                drop(st);
                self.ship(shipments);
            }
        }
        Ok(true)
    }
}

/// The validator rules a switchover can trip (`config_validator.go`).
fn validate(me: &str, cfg: &ReplicateConfiguration) -> Result<(), String> {
    if cfg.clusters.is_empty() {
        return Err("clusters list cannot be empty".into());
    }
    if !cfg.clusters.iter().any(|c| c.cluster_id == me) {
        return Err(format!("current Milvus cluster '{me}' must be included in the clusters list"));
    }
    let edges = &cfg.cross_cluster_topology;
    let centres: Vec<&String> = edges
        .iter()
        .map(|e| &e.source_cluster_id)
        .filter(|s| !edges.iter().any(|e| &e.target_cluster_id == *s))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !edges.is_empty() && centres.len() != 1 {
        return Err("no center node found, star topology must have exactly one center node".into());
    }
    Ok(())
}

impl Cdc for FakeCdc {
    fn read_config(&self, timeout: Duration) -> CdcFuture<'_, Option<ReplicateConfiguration>> {
        Box::pin(async move {
            if !lock(&self.state).supported {
                return Ok(None);
            }
            self.enter(Op::Read, String::new(), timeout).await?;
            Ok(Some(self.config().unwrap_or_default()))
        })
    }

    fn update_config<'a>(
        &'a self,
        config: &'a ReplicateConfiguration,
        force_promote: bool,
        timeout: Duration,
    ) -> CdcFuture<'a, ()> {
        Box::pin(async move {
            let what =
                format!("centre {} force {force_promote}", crate::control::discovery::primary_of("-", Some(config)));
            let start = Instant::now();
            self.enter(Op::Update, what, timeout).await?;
            let deadline = start + timeout;
            loop {
                let changed = self.changed.notified();
                if self.update_now(config, force_promote)? {
                    return Ok(());
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return Err(CdcError::Timeout(timeout));
                }
            }
        })
    }

    fn replicate_info<'a>(
        &'a self,
        source: &'a str,
        target_pchannel: &'a str,
        timeout: Duration,
    ) -> CdcFuture<'a, ReplicateInfo> {
        Box::pin(async move {
            self.enter(Op::Info, format!("{source} {target_pchannel}"), timeout).await?;
            let st = lock(&self.state);
            let cp = |t: u64| ReplicateCheckpoint {
                cluster_id: source.to_string(),
                pchannel: target_pchannel.to_string(),
                time_tick: t,
                ..Default::default()
            };
            Ok(ReplicateInfo { checkpoint: st.checkpoint.map(cp), salvage_checkpoint: st.salvage.map(cp) })
        })
    }
}

/// A star configuration over `ids` (in order) centred on `centre`, as Milvus holds it:
/// each cluster with its uri, token and `pchannels` pchannels.
pub fn star(ids: &[(&str, &str, Option<&str>)], centre: &str, pchannels: usize) -> ReplicateConfiguration {
    let clusters = ids
        .iter()
        .map(|(id, uri, token)| MilvusCluster {
            cluster_id: id.to_string(),
            connection_param: Some(ConnectionParam {
                uri: uri.to_string(),
                token: token.unwrap_or_default().to_string(),
            }),
            pchannels: (0..pchannels).map(|i| format!("{id}-rootcoord-dml_{i}")).collect(),
        })
        .collect();
    let edges = ids
        .iter()
        .filter(|(id, _, _)| *id != centre)
        .map(|(id, _, _)| CrossClusterTopology {
            source_cluster_id: centre.to_string(),
            target_cluster_id: id.to_string(),
        })
        .collect();
    ReplicateConfiguration { clusters, cross_cluster_topology: edges }
}
