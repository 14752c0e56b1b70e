//! `--state-dir`: where a stand-in keeps what makes it the same cluster after a restart.
//!
//! Two files: `state.json` (role-defining state: configuration, pending configuration,
//! fence progress, checkpoints, salvage checkpoints, drains, floors), replaced atomically
//! (write a temporary file, fsync it, rename it over, fsync the directory), and `log.bin`,
//! the append-only log (see [`super::log`]). Checkpoint-only updates, which happen on every
//! replicated message, skip the fsyncs (the rename is still atomic, and a process crash
//! keeps what was written); configuration changes are durable before the call answers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::ConfigJson;
use super::log::{Loaded, LogFile};

/// A replication checkpoint: the last message of `source` on one of its pchannels that this
/// cluster applied (or, for salvage checkpoints, had applied when it was force-promoted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) source_cluster_id: String,
    /// The source's pchannel name.
    pub(crate) pchannel: String,
    /// Its index; pchannels map by index.
    pub(crate) pchannel_index: usize,
    pub(crate) time_tick: u64,
    pub(crate) message_id: String,
}

/// A former target that still gets this cluster's log up to and including a fence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Drain {
    pub(crate) cluster_id: String,
    pub(crate) uri: String,
    pub(crate) token: String,
    pub(crate) pchannels: Vec<String>,
    /// The last log index to deliver (the fence).
    pub(crate) until: u64,
}

/// The fences received from the current source since its last write: the configuration
/// they carry and the pchannels they arrived on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FenceJson {
    pub(crate) config: ConfigJson,
    pub(crate) pchannels: Vec<usize>,
}

/// The contents of `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Persisted {
    pub(crate) cluster_id: String,
    pub(crate) pchannels: Vec<String>,
    pub(crate) config: Option<ConfigJson>,
    pub(crate) pending: Option<ConfigJson>,
    pub(crate) fence: Option<FenceJson>,
    pub(crate) heard_from_source: bool,
    pub(crate) demoted: bool,
    pub(crate) checkpoints: Vec<Checkpoint>,
    pub(crate) salvage_checkpoints: Vec<Checkpoint>,
    pub(crate) drains: Vec<Drain>,
    /// Per target: the first log index it may be sent (set when this cluster is promoted,
    /// so a new target does not get entries from an earlier time as primary).
    pub(crate) floors: BTreeMap<String, u64>,
}

/// An open state directory.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    pub(crate) log: LogFile,
}

impl Store {
    /// Opens `dir` (creating it), loading `state.json` (if any) and the log.
    pub(crate) fn open(dir: &Path) -> std::io::Result<(Store, Option<Persisted>, Loaded)> {
        std::fs::create_dir_all(dir)?;
        let state = match std::fs::read(dir.join("state.json")) {
            Ok(raw) => Some(serde_json::from_slice::<Persisted>(&raw).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join("state.json").display()),
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let (log, loaded) = LogFile::open(&dir.join("log.bin"))?;
        Ok((Store { dir: dir.to_path_buf(), log }, state, loaded))
    }

    /// Replaces `state.json`; `durable` adds the fsyncs.
    pub(crate) fn save(&self, state: &Persisted, durable: bool) -> std::io::Result<()> {
        let raw = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        let tmp = self.dir.join("state.json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&raw)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, self.dir.join("state.json"))?;
        if durable {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, none, _) = Store::open(dir.path()).expect("open");
        assert!(none.is_none());
        let st = Persisted { cluster_id: "a".into(), heard_from_source: true, ..Persisted::default() };
        store.save(&st, true).expect("save");
        store.save(&st, false).expect("save");
        let (_, back, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(back, Some(st));
    }
}
