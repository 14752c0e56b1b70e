//! Hot reload: validate the new file, diff it against the running config, apply it.
//! An invalid file or a change that cannot be made live leaves everything as it was.

use std::path::Path;

use super::Control;
use crate::config::{Config, diff};

/// Reloads from `path`. `Ok(epoch)` once applied; `Err` lists every problem.
pub fn reload(control: &Control, path: &Path) -> Result<u64, Vec<String>> {
    let new = Config::load(path).map_err(|e| e.problems)?;
    let old = control.config();
    let topo = control.topology();
    let d = diff::diff(&old, &new, topo.primary.as_deref())?;
    if d.is_empty() {
        tracing::info!("reload: no change");
        return Ok(topo.epoch);
    }
    tracing::info!(added = ?d.added, removed = ?d.removed, changed = ?d.changed, sections = ?d.sections, "reload");
    control.apply_config(new).map_err(|e| vec![e.to_string()])?;
    Ok(control.topology().epoch)
}
