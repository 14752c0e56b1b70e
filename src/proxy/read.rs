//! The routing fields of the three data reads whose consistency level decides where they go.
//!
//! Only `Search`, `HybridSearch` and `Query` are decoded, and only their routing fields
//! (prost skips the rest, vectors included, without copying them).

use bytes::Bytes;
use prost::Message;

use crate::proto::common::ConsistencyLevel;
use crate::proto::milvus::{HybridSearchRequest, QueryRequest, SearchRequest};

/// What a read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFields {
    /// Database (empty: the `dbname` header or `default`).
    pub db_name: String,
    /// Collection.
    pub collection: String,
    /// The level the request names.
    pub level: ConsistencyLevel,
    /// The request asks for the collection's own default level.
    pub use_default: bool,
}

/// Whether a method's requests carry a consistency level worth decoding.
pub fn has_level(method: &str) -> bool {
    matches!(method, "Search" | "HybridSearch" | "Query")
}

/// Decodes the routing fields of a `Search`, `HybridSearch` or `Query` message.
pub fn decode(method: &str, msg: Bytes) -> Option<ReadFields> {
    // A level this table does not know is routed as Strong: unknown is unsafe.
    let level = |v: i32| ConsistencyLevel::try_from(v).unwrap_or(ConsistencyLevel::Strong);
    match method {
        "Search" => SearchRequest::decode(msg).ok().map(|r| ReadFields {
            level: level(r.consistency_level),
            use_default: r.use_default_consistency,
            db_name: r.db_name,
            collection: r.collection_name,
        }),
        "HybridSearch" => HybridSearchRequest::decode(msg).ok().map(|r| ReadFields {
            level: level(r.consistency_level),
            use_default: r.use_default_consistency,
            db_name: r.db_name,
            collection: r.collection_name,
        }),
        "Query" => QueryRequest::decode(msg).ok().map(|r| ReadFields {
            level: level(r.consistency_level),
            use_default: r.use_default_consistency,
            db_name: r.db_name,
            collection: r.collection_name,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_level_and_collection() {
        let req = SearchRequest {
            collection_name: "books".into(),
            consistency_level: ConsistencyLevel::Strong as i32,
            ..Default::default()
        };
        let got = decode("Search", Bytes::from(req.encode_to_vec())).unwrap();
        assert_eq!(got.collection, "books");
        assert_eq!(got.level, ConsistencyLevel::Strong);
        assert!(!got.use_default);
    }
}
