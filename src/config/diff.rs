//! What a reload changes, and whether it may change it live.
//!
//! Clusters may be added, removed or changed, and routing, switchover, failover and health
//! settings change live. The listener address and its TLS identity cannot (the socket is
//! bound and the identity loaded once), the admin address and the state backend neither,
//! and the current primary cannot be removed by a reload.

use super::Config;

/// The changes a reload makes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigDiff {
    /// Cluster ids added.
    pub added: Vec<String>,
    /// Cluster ids removed.
    pub removed: Vec<String>,
    /// Cluster ids whose settings changed.
    pub changed: Vec<String>,
    /// Other sections that changed.
    pub sections: Vec<&'static str>,
}

impl ConfigDiff {
    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty() && self.sections.is_empty()
    }
}

/// Diffs two valid configs; `Err` lists every change that cannot be made live.
pub fn diff(old: &Config, new: &Config, primary: Option<&str>) -> Result<ConfigDiff, Vec<String>> {
    let mut refused = Vec::new();
    if old.listener.address != new.listener.address {
        refused.push(format!(
            "listener.address cannot change live ({} -> {}); restart switchyard",
            old.listener.address, new.listener.address
        ));
    }
    if old.listener.tls != new.listener.tls {
        refused
            .push("listener TLS identity (tls_cert, tls_key, client_ca) cannot change live; restart switchyard".into());
    }
    if old.admin.address != new.admin.address {
        refused.push(format!("admin.address cannot change live ({} -> {})", old.admin.address, new.admin.address));
    }
    if old.state != new.state {
        refused.push("[state] cannot change live".into());
    }
    let mut d = ConfigDiff::default();
    for c in &new.clusters {
        match old.cluster(&c.id) {
            None => d.added.push(c.id.clone()),
            Some(o) if o != c => d.changed.push(c.id.clone()),
            Some(_) => {}
        }
    }
    for c in &old.clusters {
        if new.cluster(&c.id).is_none() {
            if Some(c.id.as_str()) == primary {
                refused.push(format!("cluster {} is the current primary and cannot be removed by a reload", c.id));
            }
            d.removed.push(c.id.clone());
        }
    }
    if old.routing != new.routing {
        d.sections.push("routing");
    }
    if old.switchover != new.switchover {
        d.sections.push("switchover");
    }
    if old.failover != new.failover {
        d.sections.push("failover");
    }
    if old.health != new.health {
        d.sections.push("health");
    }
    if old.admin.token != new.admin.token {
        d.sections.push("admin.token");
    }
    if old.listener.max_message_size != new.listener.max_message_size {
        refused.push("listener.max_message_size cannot change live".into());
    }
    if refused.is_empty() { Ok(d) } else { Err(refused) }
}
