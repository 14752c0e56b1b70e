//! The persisted topology: written atomically at every change, read at start.
//!
//! The file backend writes to a temporary file, fsyncs it, renames it over the old one and
//! fsyncs the directory, so a crash leaves either the old or the new state, never a torn
//! one. The record also carries the job in progress, so a proxy restarted mid-switchover
//! can finish or roll it back instead of acting on a stale topology.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::proto::common::ReplicateConfiguration;
use crate::topology::Topology;

/// A role-changing job that was under way when the state was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingJob {
    /// Job id.
    pub id: String,
    /// `switchover` or `failover`.
    pub kind: String,
    /// The primary before the job.
    pub from: Option<String>,
    /// The intended primary.
    pub to: String,
    /// The replicate configuration in force before the job, as JSON-able clusters and edges.
    pub old_config: Option<ConfigRecord>,
    /// The configuration the job sends.
    pub new_config: Option<ConfigRecord>,
}

/// A replicate configuration in a form that can be persisted (tokens are NOT stored; they
/// come from the proxy's config when the record is turned back into a request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// Cluster ids, in order.
    pub clusters: Vec<String>,
    /// `(source, target)` edges.
    pub edges: Vec<(String, String)>,
}

impl ConfigRecord {
    /// Records a configuration without its secrets.
    pub fn from_config(c: &ReplicateConfiguration) -> Self {
        Self {
            clusters: c.clusters.iter().map(|m| m.cluster_id.clone()).collect(),
            edges: c
                .cross_cluster_topology
                .iter()
                .map(|e| (e.source_cluster_id.clone(), e.target_cluster_id.clone()))
                .collect(),
        }
    }
}

/// Everything persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    /// The topology.
    pub topology: Topology,
    /// A job that had started changing roles and had not finished.
    #[serde(default)]
    pub pending_job: Option<PendingJob>,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// File trouble.
    #[error("state file {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("state file {path} is corrupt: {reason}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The file state backend.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    /// A store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the persisted state; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<PersistedState>, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Corrupt { path: self.path.clone(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path: self.path.clone(), source }),
        }
    }

    /// Writes the state atomically (write, fsync, rename, fsync the directory).
    pub fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let io = |source| StateError::Io { path: self.path.clone(), source };
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| io(std::io::Error::other(e)))?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("sub/state.json"));
        assert!(store.load().unwrap().is_none());
        let st = PersistedState {
            topology: Topology {
                epoch: 7,
                primary: Some("b".into()),
                standbys: vec!["a".into()],
                fenced: vec![],
                rebuild: vec![],
            },
            pending_job: None,
        };
        store.save(&st).unwrap();
        assert_eq!(store.load().unwrap(), Some(st));
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, b"{not json").unwrap();
        assert!(matches!(StateStore::new(&p).load(), Err(StateError::Corrupt { .. })));
    }
}
