//! Routing: one immutable snapshot of who serves what, behind one `ArcSwap`.
//!
//! A request loads the current [`RoutingTable`] once (`load_full`) and keeps that `Arc` to
//! its end, so it is routed by one version of the table, never a mix. Only the control
//! side (monitor, switchover, reload) builds new tables, and it stores each one whole.
//! [`policy`] turns a call's kind and consistency level into a target cluster.

pub mod cluster;
pub mod policy;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use cluster::{Cluster, InFlight, KindLabel};

use crate::config::RoutingConfig;
use crate::topology::{ProxyState, Topology};

/// One version of the routing state.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// Increases at every role change.
    pub epoch: u64,
    /// Proxy state.
    pub state: ProxyState,
    /// Why the state is `ABNORMAL`, when it is.
    pub abnormal_reason: Option<String>,
    /// The primary, if one is usable.
    pub primary: Option<Arc<Cluster>>,
    /// Standbys by role (fenced and rebuilding ones excluded).
    pub standbys: Vec<Arc<Cluster>>,
    /// Standbys serving data reads now: healthy and within `max_read_lag`.
    pub readable: Vec<Arc<Cluster>>,
    /// Fenced cluster ids.
    pub fenced: Vec<Arc<str>>,
    /// Standbys waiting for a rebuild.
    pub rebuild: Vec<Arc<str>>,
    /// Every configured cluster.
    pub clusters: Vec<Arc<Cluster>>,
    /// The routing settings this table was built with.
    pub policy: Arc<RoutingConfig>,
}

/// The shared, atomically swapped routing table.
pub type SharedRouting = Arc<ArcSwap<RoutingTable>>;

impl RoutingTable {
    /// Builds a table from a topology and the configured clusters. `serves_reads` says
    /// whether a standby is healthy and close enough to serve reads.
    pub fn build(
        topology: &Topology,
        state: ProxyState,
        abnormal_reason: Option<String>,
        clusters: &[Arc<Cluster>],
        policy: Arc<RoutingConfig>,
        serves_reads: impl Fn(&Cluster) -> bool,
    ) -> Self {
        let find = |id: &str| clusters.iter().find(|c| &*c.id == id).cloned();
        let primary = topology.primary.as_deref().filter(|p| !topology.fenced.iter().any(|f| f == p)).and_then(find);
        let standbys: Vec<_> =
            topology.standbys.iter().filter(|s| topology.is_serving_standby(s)).filter_map(|s| find(s)).collect();
        let readable = standbys.iter().filter(|c| serves_reads(c)).cloned().collect();
        Self {
            epoch: topology.epoch,
            state,
            abnormal_reason,
            primary,
            standbys,
            readable,
            fenced: topology.fenced.iter().map(|s| Arc::from(s.as_str())).collect(),
            rebuild: topology.rebuild.iter().map(|s| Arc::from(s.as_str())).collect(),
            clusters: clusters.to_vec(),
            policy,
        }
    }

    /// The configured cluster with this id.
    pub fn cluster(&self, id: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| &*c.id == id)
    }

    /// Whether the cluster is fenced.
    pub fn is_fenced(&self, id: &str) -> bool {
        self.fenced.iter().any(|f| &**f == id)
    }
}
