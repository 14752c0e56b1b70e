//! Hot reload: validate the new file, diff it against the running config, apply it.
//! An invalid file or a change that cannot be made live leaves everything as it was.
//!
//! While a switchover or failover runs, clusters cannot be added, removed or changed: the job
//! holds its own view of the clusters and would commit a topology naming a cluster the
//! reload took away (a primary switchyard no longer knows, so no writes anywhere). Other
//! settings still change.

use std::path::Path;

use super::Control;
use crate::config::{Config, diff};
use crate::topology::ProxyState;

/// Reloads from `path`. `Ok(epoch)` once applied; `Err` lists every problem.
pub fn reload(control: &Control, path: &Path) -> Result<u64, Vec<String>> {
    let new = Config::load(path).map_err(|e| e.problems)?;
    let old = control.config();
    let topo = control.topology();
    let mut problems = Vec::new();
    let d = diff::diff(&old, &new, topo.primary.as_deref()).unwrap_or_else(|mut refused| {
        problems.append(&mut refused);
        diff::ConfigDiff::default()
    });
    if old.clusters != new.clusters {
        let job = match control.state().0 {
            ProxyState::Switching => Some("switchover"),
            ProxyState::FailingOver => Some("failover"),
            _ => None,
        };
        if let Some(job) = job {
            problems.push(format!(
                "a {job} is running; clusters cannot be added, removed or changed until it ends (reload again then)"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if d.is_empty() {
        tracing::info!("reload: no change");
        return Ok(topo.epoch);
    }
    tracing::info!(added = ?d.added, removed = ?d.removed, changed = ?d.changed, sections = ?d.sections, "reload");
    control.apply_config(new).map_err(|e| vec![e.to_string()])?;
    Ok(control.topology().epoch)
}
