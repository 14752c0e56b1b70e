//! Collection consistency levels, kept the way Milvus keeps them.
//!
//! Milvus stores the `consistency_level` a collection is created with and reports it in
//! `DescribeCollection` (field 11); clients that name no level are served at it. milvus-lite
//! ignores it and always reports Strong (0). The stand-in remembers the level of every
//! `CreateCollection` it applies (client writes on a primary, replicated ones on a secondary)
//! and puts it into `DescribeCollection` answers. Known limit: the levels are kept in memory,
//! so a restarted stand-in reports milvus-lite's value for collections created before.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::wire;

/// `(database, collection)` → level.
#[derive(Debug, Default)]
pub(crate) struct Levels(Mutex<HashMap<(String, String), u64>>);

fn db_of(payload: &[u8], dbname: &str) -> String {
    wire::string_field(payload, 2)
        .filter(|d| !d.is_empty())
        .or_else(|| (!dbname.is_empty()).then(|| dbname.to_string()))
        .unwrap_or_else(|| "default".to_string())
}

impl Levels {
    /// Learns from an applied write: `CreateCollection` (level in field 6) or `DropCollection`.
    pub(crate) fn learn(&self, method: &str, dbname: &str, payload: &[u8]) {
        let Some(coll) = wire::string_field(payload, 3) else { return };
        let key = (db_of(payload, dbname), coll);
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match method.rsplit('/').next().unwrap_or(method) {
            "CreateCollection" => {
                m.insert(key, wire::varint_field(payload, 6).unwrap_or(0));
            }
            "DropCollection" => {
                m.remove(&key);
            }
            _ => {}
        }
    }

    /// Puts the remembered level into a `DescribeCollection` answer (field 11).
    pub(crate) fn patch_describe(&self, request: &[u8], dbname: &str, answer: &[u8]) -> Option<Bytes> {
        let coll = wire::string_field(request, 3)?;
        let level = *self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&(db_of(request, dbname), coll))?;
        wire::set_varint_field(answer, 11, level)
    }
}
