//! The topology switchyard owns: who is primary, who are standbys, who is fenced, at which epoch.
//!
//! This is the persisted truth (see `state`): at start the persisted topology wins over
//! the config's first-start roles. Routing snapshots are built from it.

use serde::{Deserialize, Serialize};

use crate::config::{Config, Role};

/// The proxy's state, as the admin API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProxyState {
    /// Normal operation.
    #[default]
    Running,
    /// A planned switchover is under way; writes are held.
    Switching,
    /// A force failover is under way; writes are held.
    FailingOver,
    /// Writes are paused by an operator.
    Holding,
    /// No usable primary: writes are refused, reads continue.
    Abnormal,
}

impl ProxyState {
    /// The name the admin API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyState::Running => "RUNNING",
            ProxyState::Switching => "SWITCHING",
            ProxyState::FailingOver => "FAILING_OVER",
            ProxyState::Holding => "HOLDING",
            ProxyState::Abnormal => "ABNORMAL",
        }
    }
}

/// Roles of every cluster at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Increases at every change.
    pub epoch: u64,
    /// The cluster taking writes, if any.
    pub primary: Option<String>,
    /// Clusters replicating from the primary.
    pub standbys: Vec<String>,
    /// Clusters taken out after a force failover; they come back only through readmit.
    pub fenced: Vec<String>,
    /// Standbys that must be rebuilt (they may be ahead of the new primary); no reads.
    pub rebuild: Vec<String>,
}

impl Topology {
    /// The first-start topology from the config's roles.
    pub fn from_config(config: &Config) -> Self {
        let primary = config.clusters.iter().find(|c| c.role == Role::Primary).map(|c| c.id.clone());
        let standbys = config.clusters.iter().filter(|c| c.role == Role::Standby).map(|c| c.id.clone()).collect();
        Self { epoch: 1, primary, standbys, fenced: Vec::new(), rebuild: Vec::new() }
    }

    /// Whether a cluster may serve reads by its role (standby, not fenced, not being rebuilt).
    pub fn is_serving_standby(&self, id: &str) -> bool {
        self.standbys.iter().any(|s| s == id)
            && !self.fenced.iter().any(|s| s == id)
            && !self.rebuild.iter().any(|s| s == id)
    }

    /// Every cluster id named anywhere.
    pub fn members(&self) -> impl Iterator<Item = &String> {
        self.primary.iter().chain(&self.standbys).chain(&self.fenced)
    }

    /// A copy with `target` as primary and the old primary as a standby, at the next epoch.
    pub fn promoted(&self, target: &str) -> Self {
        let mut t = self.clone();
        t.epoch += 1;
        if let Some(old) = t.primary.take()
            && old != target
            && !t.standbys.contains(&old)
            && !t.fenced.contains(&old)
        {
            t.standbys.push(old);
        }
        t.standbys.retain(|s| s != target);
        t.primary = Some(target.to_string());
        t
    }
}
