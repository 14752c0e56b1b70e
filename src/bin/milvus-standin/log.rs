//! The stand-in's WAL: the ordered log of client writes and fences a primary replicates.
//!
//! Each entry has a log index (its `MessageID.id`), a hybrid time tick
//! (`physical_ms << 18 | logical`, strictly increasing) and a pchannel. A write entry holds
//! the client's request message as received (unframed) and the RPC that carried it; a fence
//! entry holds the configuration that demoted this cluster (Milvus's `AlterReplicateConfig`).
//! Entries travel to targets as `common.ImmutableMessage`, and with `--state-dir` the same
//! encoding is appended to `log.bin` as length-prefixed records (a 4-byte big-endian length,
//! then the message). A cancelled (unsent) fence is recorded by a `record=cancel` message.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;

use switchyard::proto::common::{ImmutableMessage, MessageId, ReplicateConfiguration, WalName};

/// Bits of a hybrid time tick below the physical milliseconds.
pub(crate) const LOGICAL_BITS: u32 = 18;
/// The `method` property of a fence.
pub(crate) const FENCE_METHOD: &str = "AlterReplicateConfig";

/// What an entry carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EntryKind {
    /// A client write the backend acknowledged.
    Write {
        /// The RPC name (`Insert`), or the full path for a method outside the table.
        method: String,
        /// The `dbname` metadata the client sent ("" when none).
        dbname: String,
    },
    /// The end of this cluster's time as primary under a configuration.
    Fence {
        /// The configuration that demoted (or re-configured) this cluster.
        config: ReplicateConfiguration,
    },
}

/// One log entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) index: u64,
    pub(crate) tick: u64,
    pub(crate) pchannel: usize,
    pub(crate) kind: EntryKind,
    /// The request message (writes) or the encoded configuration (fences).
    pub(crate) payload: Bytes,
}

impl Entry {
    /// The entry as it is sent to targets and stored.
    pub(crate) fn to_message(&self, pchannels: &[String]) -> ImmutableMessage {
        let mut props = HashMap::new();
        let (kind, method, dbname) = match &self.kind {
            EntryKind::Write { method, dbname } => ("write", method.as_str(), dbname.as_str()),
            EntryKind::Fence { .. } => ("fence", FENCE_METHOD, ""),
        };
        props.insert("kind".to_string(), kind.to_string());
        props.insert("method".to_string(), method.to_string());
        props.insert("dbname".to_string(), dbname.to_string());
        props.insert("pchannel".to_string(), pchannels.get(self.pchannel).cloned().unwrap_or_default());
        props.insert("pchannel_index".to_string(), self.pchannel.to_string());
        props.insert("time_tick".to_string(), self.tick.to_string());
        ImmutableMessage {
            id: Some(MessageId { id: self.index.to_string(), wal_name: WalName::Test as i32 }),
            payload: self.payload.clone(),
            properties: props,
        }
    }

    /// Reads an entry back from its message form.
    pub(crate) fn from_message(msg: &ImmutableMessage) -> Result<Entry, String> {
        let p = |k: &str| msg.properties.get(k).map(String::as_str).unwrap_or("");
        let num =
            |k: &str| p(k).parse::<u64>().map_err(|_| format!("message property {k:?} is not a number: {:?}", p(k)));
        let index = msg
            .id
            .as_ref()
            .and_then(|id| id.id.parse::<u64>().ok())
            .ok_or_else(|| "message has no numeric id".to_string())?;
        let kind = match p("kind") {
            "fence" => EntryKind::Fence {
                config: ReplicateConfiguration::decode(msg.payload.clone())
                    .map_err(|e| format!("fence config: {e}"))?,
            },
            _ => EntryKind::Write { method: p("method").to_string(), dbname: p("dbname").to_string() },
        };
        Ok(Entry {
            index,
            tick: num("time_tick")?,
            pchannel: num("pchannel_index")? as usize,
            kind,
            payload: msg.payload.clone(),
        })
    }
}

/// The next hybrid time tick after `last`.
pub(crate) fn next_tick(last: u64) -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    (ms << LOGICAL_BITS).max(last + 1)
}

/// The physical part of a tick, in seconds.
pub(crate) fn tick_seconds(tick: u64) -> f64 {
    (tick >> LOGICAL_BITS) as f64 / 1000.0
}

/// The physical part of a tick, in milliseconds.
pub(crate) fn tick_ms(tick: u64) -> u64 {
    tick >> LOGICAL_BITS
}

/// The append-only log file of a `--state-dir`.
#[derive(Debug)]
pub(crate) struct LogFile {
    file: File,
}

/// What a log file held.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) entries: Vec<Entry>,
    pub(crate) cancelled: BTreeSet<u64>,
}

impl LogFile {
    /// Opens (or creates) the log, reads every whole record and cuts off a torn last one.
    pub(crate) fn open(path: &Path) -> std::io::Result<(LogFile, Loaded)> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        let mut loaded = Loaded::default();
        let mut pos = 0usize;
        while pos + 4 <= raw.len() {
            let len = u32::from_be_bytes([raw[pos], raw[pos + 1], raw[pos + 2], raw[pos + 3]]) as usize;
            let Some(rec) = raw.get(pos + 4..pos + 4 + len) else { break };
            let msg = ImmutableMessage::decode(rec).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("log record at {pos}: {e}"))
            })?;
            if msg.properties.get("record").map(String::as_str) == Some("cancel") {
                if let Some(i) = msg.properties.get("index").and_then(|i| i.parse().ok()) {
                    loaded.cancelled.insert(i);
                }
            } else {
                let entry = Entry::from_message(&msg).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("log record at {pos}: {e}"))
                })?;
                if entry.index != loaded.entries.len() as u64 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "log record at {pos} has index {} where {} was expected",
                            entry.index,
                            loaded.entries.len()
                        ),
                    ));
                }
                loaded.entries.push(entry);
            }
            pos += 4 + len;
        }
        if pos != raw.len() {
            tracing::warn!(path = %path.display(), kept = pos, dropped = raw.len() - pos, "cutting off a torn log record");
            file.set_len(pos as u64)?;
            file.seek(SeekFrom::End(0))?;
        }
        Ok((LogFile { file }, loaded))
    }

    /// Appends one entry.
    pub(crate) fn append(&mut self, entry: &Entry, pchannels: &[String]) -> std::io::Result<()> {
        self.write_record(&entry.to_message(pchannels))
    }

    /// Records that entry `index` is cancelled. Only logs written by older stand-ins (which
    /// rolled a demotion back, as Milvus does not) hold such records; they are still read.
    #[cfg(test)]
    pub(crate) fn cancel(&mut self, index: u64) -> std::io::Result<()> {
        let mut props = HashMap::new();
        props.insert("record".to_string(), "cancel".to_string());
        props.insert("index".to_string(), index.to_string());
        self.write_record(&ImmutableMessage { id: None, payload: Bytes::new(), properties: props })
    }

    fn write_record(&mut self, msg: &ImmutableMessage) -> std::io::Result<()> {
        let body = msg.encode_to_vec();
        let mut rec = Vec::with_capacity(body.len() + 4);
        rec.extend_from_slice(&(body.len() as u32).to_be_bytes());
        rec.extend_from_slice(&body);
        // One write per record: a crash leaves at most one torn record at the end.
        self.file.write_all(&rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, kind: EntryKind) -> Entry {
        Entry { index, tick: next_tick(index), pchannel: 1, kind, payload: Bytes::from_static(b"\x1a\x01x") }
    }

    #[test]
    fn ticks_strictly_increase() {
        let a = next_tick(0);
        let b = next_tick(a);
        assert!(b > a && tick_ms(a) > 1_600_000_000_000);
        assert_eq!(next_tick(u64::MAX >> 1), (u64::MAX >> 1) + 1);
    }

    #[test]
    fn file_round_trip_and_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.bin");
        let pch = vec!["a-rootcoord-dml_0".to_string(), "a-rootcoord-dml_1".to_string()];
        let w = entry(0, EntryKind::Write { method: "Insert".into(), dbname: "default".into() });
        let f = Entry {
            payload: Bytes::from(crate::config::tests::star("b", &["a", "b"], 2).encode_to_vec()),
            ..entry(1, EntryKind::Fence { config: crate::config::tests::star("b", &["a", "b"], 2) })
        };
        {
            let (mut log, loaded) = LogFile::open(&path).expect("open");
            assert!(loaded.entries.is_empty());
            log.append(&w, &pch).expect("append");
            log.append(&f, &pch).expect("append");
            log.cancel(1).expect("cancel");
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&[0, 0, 0, 9, 1]))
            .expect("tear");
        let (_, loaded) = LogFile::open(&path).expect("reopen");
        assert_eq!(loaded.entries, vec![w, f]);
        assert!(loaded.cancelled.contains(&1));
    }
}
