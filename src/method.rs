//! The Milvus method table: every RPC of `milvus.proto.milvus.MilvusService`, and what it does.
//!
//! switchyard routes a call by its `:path` alone. This table maps each of the 149 RPCs of
//! milvus-proto's `2.6` branch and `master` to a [`Kind`]: a write (DML, DDL or DCL), a read
//! (data or metadata), a cluster-local control call, or a streaming call. Lookup is a binary
//! search over a sorted static slice: no allocation, no hashing, no locks.
//!
//! A path that is not in the table (a newer Milvus, another service) is treated as a write by
//! the router, so it can only ever reach the primary.
//!
//! The classes follow `../shared/reference/milvus-protocol.md` §1. `tests/python/test_conformance.py`
//! (which reads this table through `examples/method_table.rs`) fails if pymilvus's descriptors
//! name a method this table lacks or disagree on the reply shape or streaming, if a name of
//! milvus-proto master is missing, or if a row's class differs from the test's own list.

/// What a call does, as far as routing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Changes data or schema; only the primary may take it.
    Write(WriteClass),
    /// Reads; standbys may serve it.
    Read(ReadClass),
    /// Cluster-local control: health, metrics, replication, timestamps, `Connect`.
    Control,
    /// A streaming RPC (`CreateReplicateStream`, `DumpMessages`): cluster-local, never balanced.
    Streaming,
}

/// The three kinds of writes Milvus distinguishes, each with its own error on a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteClass {
    /// Data: insert, upsert, delete, import, flush.
    Dml,
    /// Schema, collections, indexes, partitions, aliases, databases, loading.
    Ddl,
    /// Users, roles, privileges, row-level security.
    Dcl,
}

/// Reads split by what they touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadClass {
    /// Search, HybridSearch, Query and the like: spread over the standbys.
    Data,
    /// Describe/Has/List/Show/Get…State: cheap, and must see a collection created a moment ago.
    Metadata,
}

/// The shape of an RPC's response message, which a stand-in needs to build a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The response is a bare `common.Status`.
    Status,
    /// The response is a message whose field 1 is a `common.Status` (named `status` everywhere
    /// except master's `AlterCollectionSchemaResponse`, where it is `alter_status`: the same
    /// bytes on the wire).
    Wrapped,
    /// Anything else (no status field at 1).
    Other,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// The RPC name, as in `/milvus.proto.milvus.MilvusService/<name>`.
    pub name: &'static str,
    /// What the call does.
    pub kind: Kind,
    /// The shape of its response.
    pub reply: Reply,
}

/// The gRPC path prefix of every MilvusService method.
pub const SERVICE_PREFIX: &str = "/milvus.proto.milvus.MilvusService/";

impl Kind {
    /// Whether only a primary may take this call.
    pub fn is_write(self) -> bool {
        matches!(self, Kind::Write(_))
    }

    /// A short, fixed label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Write(_) => "write",
            Kind::Read(_) => "read",
            Kind::Control | Kind::Streaming => "control",
        }
    }
}

impl Method {
    /// Whether a repeat of this write changes nothing, or fails harmlessly (it already
    /// exists, it is already gone): then a write whose answer was lost may be retried by
    /// the SDK. `false` for reads and control calls (they are not writes), and for every
    /// write not listed in [`IDEMPOTENT_WRITES`].
    pub fn idempotent(&self) -> bool {
        self.kind.is_write() && IDEMPOTENT_WRITES.binary_search(&self.name).is_ok()
    }

    /// Whether the call belongs to Milvus CDC's traffic between clusters (a cluster's
    /// replication intake, or its WAL): never proxied, whatever `x-switchyard-cluster` says.
    pub fn is_cdc_internal(&self) -> bool {
        CDC_INTERNAL.contains(&self.name)
    }
}

/// The RPCs Milvus CDC uses between clusters: `CreateReplicateStream` (2.6 CDC writes a
/// primary's WAL into a standby through it), `ReplicateMessage` (the 2.4/2.5 CDC intake, which
/// writes raw messages into a cluster) and `DumpMessages` (reads a WAL, master).
pub const CDC_INTERNAL: &[&str] = &["CreateReplicateStream", "DumpMessages", "ReplicateMessage"];

/// Writes whose repeat is harmless, sorted. Every other write is treated as not idempotent:
/// a repeat may apply it twice (`Insert`, `Import`, `TruncateCollection`, jobs that start a
/// second copy), so an outcome-unknown answer for it is never one the SDKs retry.
/// `tests` checks that every write row of the table has a decision here or in
/// [`NOT_IDEMPOTENT_WRITES`].
pub const IDEMPOTENT_WRITES: &[&str] = &[
    "AddCollectionField", // a repeat: "field already exists"
    "AddCollectionFunction",
    "AddCollectionStructField", // master; a repeat: "field already exists"
    "AddFileResource",
    "AddUserTags",
    "AlterAlias",
    "AlterCollection", // sets properties to the same values
    "AlterCollectionField",
    "AlterCollectionFunction",
    "AlterDatabase",
    "AlterIndex",
    "AlterRole",
    "CreateAlias",      // a repeat: "alias already exists"
    "CreateCollection", // a repeat: already exists (or the same schema, accepted)
    "CreateCredential",
    "CreateDatabase",
    "CreateIndex",
    "CreateNamespace",
    "CreatePartition",
    "CreatePrivilegeGroup",
    "CreateRole",
    "CreateRowPolicy",
    "CreateSnapshot",
    "Delete", // deleting the same keys again deletes nothing more
    "DeleteCredential",
    "DeleteRLSPrincipalTags",
    "DeleteUserTags",
    "DropAlias", // a repeat: not found, or a no-op
    "DropCollection",
    "DropCollectionFunction",
    "DropDatabase",
    "DropIndex",
    "DropNamespace",
    "DropPartition",
    "DropPrivilegeGroup",
    "DropRole",
    "DropRowPolicy",
    "DropSnapshot",
    "Flush",
    "FlushAll",
    "LoadCollection",
    "LoadPartitions",
    "OperatePrivilege", // grant/revoke: the same state after a repeat
    "OperatePrivilegeGroup",
    "OperatePrivilegeV2",
    "OperateUserRole",
    "Prewarm",
    "ReleaseCollection",
    "ReleasePartitions",
    "RemoveFileResource",
    "RenameCollection", // a repeat: the old name no longer exists
    "RestoreRBAC",
    "SetRLSPrincipalTags",
    "UpdateCredential",
    "UpdateRowPolicy",
    "Upsert", // the same rows by primary key
];

/// Writes a repeat of which may apply twice, sorted (the complement of
/// [`IDEMPOTENT_WRITES`] among the table's writes, listed so each has a decision).
pub const NOT_IDEMPOTENT_WRITES: &[&str] = &[
    "AlterCollectionSchema",     // master: schema evolution steps, not known to be repeatable
    "BatchUpdateManifest",       // master: manifest edits
    "ExportSnapshot",            // starts a second export job
    "Import",                    // imports the files twice
    "Insert",                    // the rows twice (auto-id), or a second version
    "PinSnapshotData",           // a second pin
    "RefreshExternalCollection", // a second refresh job
    "RestoreExternalSnapshot",   // a second restore job
    "RestoreSnapshot",           // a second restore job
    "TruncateCollection",        // would also remove rows written in between
    "UnpinSnapshotData",         // drops a second pin
];

/// Finds the method for a gRPC `:path`. `None` for anything outside MilvusService's table.
pub fn lookup(path: &str) -> Option<&'static Method> {
    let name = path.strip_prefix(SERVICE_PREFIX)?;
    by_name(name)
}

/// Finds a method by its bare RPC name.
pub fn by_name(name: &str) -> Option<&'static Method> {
    METHODS.binary_search_by(|m| m.name.cmp(name)).ok().map(|i| &METHODS[i])
}

/// Every method, sorted by name.
pub fn all() -> &'static [Method] {
    METHODS
}

const fn m(name: &'static str, kind: Kind, reply: Reply) -> Method {
    Method { name, kind, reply }
}

use Kind::{Control as CTL, Streaming as STREAM};
use Reply::{Other as OTHER, Status as ST, Wrapped as WR};
const DML: Kind = Kind::Write(WriteClass::Dml);
const DDL: Kind = Kind::Write(WriteClass::Ddl);
const DCL: Kind = Kind::Write(WriteClass::Dcl);
const DATA: Kind = Kind::Read(ReadClass::Data);
const META: Kind = Kind::Read(ReadClass::Metadata);

/// The table, sorted by name (a unit test checks the order). Rows marked `master` exist only
/// on milvus-proto's master branch (the 3.0 line).
static METHODS: &[Method] = &[
    m("AddCollectionField", DDL, ST),
    m("AddCollectionFunction", DDL, ST),
    m("AddCollectionStructField", DDL, ST), // master
    m("AddFileResource", DDL, ST),
    m("AddUserTags", DCL, ST),
    m("AllocTimestamp", CTL, WR),
    m("AlterAlias", DDL, ST),
    m("AlterCollection", DDL, ST),
    m("AlterCollectionField", DDL, ST),
    m("AlterCollectionFunction", DDL, ST),
    m("AlterCollectionSchema", DDL, WR), // master
    m("AlterDatabase", DDL, ST),
    m("AlterIndex", DDL, ST),
    m("AlterRole", DCL, ST),
    m("BackupRBAC", META, WR),
    m("BatchDescribeCollection", META, WR),
    m("BatchUpdateManifest", DDL, ST), // master
    m("CalcDistance", DATA, WR),
    m("CheckHealth", CTL, WR),
    m("ComputePhraseMatchSlop", DATA, WR), // master
    m("Connect", CTL, WR),
    m("CreateAlias", DDL, ST),
    m("CreateCollection", DDL, ST),
    m("CreateCredential", DCL, ST),
    m("CreateDatabase", DDL, ST),
    m("CreateIndex", DDL, ST),
    m("CreateNamespace", DDL, WR), // master
    m("CreatePartition", DDL, ST),
    m("CreatePrivilegeGroup", DCL, ST),
    m("CreateReplicateStream", STREAM, OTHER),
    m("CreateResourceGroup", CTL, ST),
    m("CreateRole", DCL, ST),
    m("CreateRowPolicy", DCL, ST),
    m("CreateSnapshot", DDL, ST), // master
    m("Delete", DML, WR),
    m("DeleteCredential", DCL, ST),
    m("DeleteRLSPrincipalTags", DCL, ST), // master
    m("DeleteUserTags", DCL, ST),
    m("DescribeAlias", META, WR),
    m("DescribeCollection", META, WR),
    m("DescribeDatabase", META, WR),
    m("DescribeIndex", META, WR),
    m("DescribeNamespace", META, WR),   // master
    m("DescribePrewarmTask", META, WR), // master
    m("DescribeResourceGroup", META, WR),
    m("DescribeSegmentIndexData", META, WR),
    m("DescribeSnapshot", META, WR), // master
    m("DropAlias", DDL, ST),
    m("DropCollection", DDL, ST),
    m("DropCollectionFunction", DDL, ST),
    m("DropDatabase", DDL, ST),
    m("DropIndex", DDL, ST),
    m("DropNamespace", DDL, WR), // master
    m("DropPartition", DDL, ST),
    m("DropPrivilegeGroup", DCL, ST),
    m("DropResourceGroup", CTL, ST),
    m("DropRole", DCL, ST),
    m("DropRowPolicy", DCL, ST),
    m("DropSnapshot", DDL, ST), // master
    m("Dummy", CTL, OTHER),
    m("DumpMessages", STREAM, OTHER),
    m("ExportSnapshot", DDL, WR), // master
    m("Flush", DML, WR),
    m("FlushAll", DML, WR),
    m("GetCollectionStatistics", META, WR),
    m("GetCompactionState", META, WR),
    m("GetCompactionStateWithPlans", META, WR),
    m("GetComponentStates", CTL, OTHER),
    m("GetExportSnapshotState", META, WR), // master
    m("GetFlushAllState", META, WR),
    m("GetFlushState", META, WR),
    m("GetImportState", META, WR),
    m("GetIndexBuildProgress", META, WR),
    m("GetIndexState", META, WR),
    m("GetIndexStatistics", META, WR),
    m("GetLoadState", META, WR),
    m("GetLoadingProgress", META, WR),
    m("GetMetrics", CTL, WR),
    m("GetNamespaceStats", META, WR), // master
    m("GetPartitionStatistics", META, WR),
    m("GetPersistentSegmentInfo", META, WR),
    m("GetQuerySegmentInfo", META, WR),
    m("GetRLSPrincipalTags", META, WR),                  // master
    m("GetRefreshExternalCollectionProgress", META, WR), // master
    m("GetReplicas", META, WR),
    m("GetReplicateConfiguration", CTL, WR),
    m("GetReplicateInfo", CTL, OTHER),
    m("GetRestoreSnapshotState", META, WR), // master
    m("GetUserTags", META, WR),
    m("GetVersion", CTL, WR),
    m("HasCollection", META, WR),
    m("HasNamespace", META, WR), // master
    m("HasPartition", META, WR),
    m("HybridSearch", DATA, WR),
    m("Import", DML, WR),
    m("Insert", DML, WR),
    m("ListAliases", META, WR),
    m("ListCredUsers", META, WR),
    m("ListDatabases", META, WR),
    m("ListFileResources", META, WR),
    m("ListImportTasks", META, WR),
    m("ListIndexedSegment", META, WR),
    m("ListNamespaces", META, WR), // master
    m("ListPrivilegeGroups", META, WR),
    m("ListRLSPrincipals", META, WR),                 // master
    m("ListRefreshExternalCollectionJobs", META, WR), // master
    m("ListResourceGroups", META, WR),
    m("ListRestoreSnapshotJobs", META, WR), // master
    m("ListRowPolicies", META, WR),
    m("ListSnapshots", META, WR), // master
    m("ListUsersWithTag", META, WR),
    m("LoadBalance", CTL, ST),
    m("LoadCollection", DDL, ST),
    m("LoadPartitions", DDL, ST),
    m("ManualCompaction", CTL, WR),
    m("OperatePrivilege", DCL, ST),
    m("OperatePrivilegeGroup", DCL, ST),
    m("OperatePrivilegeV2", DCL, ST),
    m("OperateUserRole", DCL, ST),
    m("PinSnapshotData", DDL, WR), // master
    m("Prewarm", DDL, WR),         // master
    m("Query", DATA, WR),
    m("RefreshExternalCollection", DDL, WR), // master
    m("RegisterLink", CTL, OTHER),
    m("ReleaseCollection", DDL, ST),
    m("ReleasePartitions", DDL, ST),
    m("RemoveFileResource", DDL, ST),
    m("RenameCollection", DDL, ST),
    m("ReplicateMessage", CTL, WR),
    m("RestoreExternalSnapshot", DDL, WR), // master
    m("RestoreRBAC", DCL, ST),
    m("RestoreSnapshot", DDL, WR), // master
    m("RunAnalyzer", DATA, WR),
    m("Search", DATA, WR),
    m("SelectGrant", META, WR),
    m("SelectRole", META, WR),
    m("SelectUser", META, WR),
    m("SetRLSPrincipalTags", DCL, ST), // master
    m("ShowCollections", META, WR),
    m("ShowPartitions", META, WR),
    m("TransferNode", CTL, ST),
    m("TransferReplica", CTL, ST),
    m("TruncateCollection", DDL, WR),
    m("UnpinSnapshotData", DDL, ST), // master
    m("UpdateCredential", DCL, ST),
    m("UpdateReplicateConfiguration", CTL, ST),
    m("UpdateResourceGroups", CTL, ST),
    m("UpdateRowPolicy", DCL, ST), // master
    m("Upsert", DML, WR),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in METHODS.windows(2) {
            assert!(pair[0].name < pair[1].name, "{} !< {}", pair[0].name, pair[1].name);
        }
    }

    #[test]
    fn table_has_every_rpc_of_2_6_and_master() {
        assert_eq!(METHODS.len(), 149);
    }

    #[test]
    fn lookup_by_path() {
        let insert = lookup("/milvus.proto.milvus.MilvusService/Insert").map(|m| m.kind);
        assert_eq!(insert, Some(Kind::Write(WriteClass::Dml)));
        let search = lookup("/milvus.proto.milvus.MilvusService/Search").map(|m| m.kind);
        assert_eq!(search, Some(Kind::Read(ReadClass::Data)));
        assert_eq!(lookup("/milvus.proto.milvus.MilvusService/NoSuch"), None);
        assert_eq!(lookup("/milvus.proto.milvus.ProxyService/RegisterLink"), None);
        assert_eq!(lookup("/Search"), None);
    }

    #[test]
    fn every_class_is_present() {
        let has = |k: Kind| METHODS.iter().any(|m| m.kind == k);
        for k in [DML, DDL, DCL, DATA, META, CTL, STREAM] {
            assert!(has(k), "{k:?} missing");
        }
    }

    #[test]
    fn every_write_has_an_idempotency_decision() {
        for list in [IDEMPOTENT_WRITES, NOT_IDEMPOTENT_WRITES, CDC_INTERNAL] {
            for pair in list.windows(2) {
                assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
            }
        }
        for m in METHODS.iter().filter(|m| m.kind.is_write()) {
            let yes = IDEMPOTENT_WRITES.contains(&m.name);
            let no = NOT_IDEMPOTENT_WRITES.contains(&m.name);
            assert!(yes ^ no, "{}: idempotent {yes}, not idempotent {no}", m.name);
            assert_eq!(m.idempotent(), yes);
        }
        for name in IDEMPOTENT_WRITES.iter().chain(NOT_IDEMPOTENT_WRITES) {
            assert!(by_name(name).is_some_and(|m| m.kind.is_write()), "{name} is not a write row");
        }
        assert!(!by_name("Insert").unwrap().idempotent());
        assert!(by_name("Upsert").unwrap().idempotent());
        assert!(!by_name("Search").unwrap().idempotent());
    }

    #[test]
    fn cdc_internal_rows_exist() {
        for name in CDC_INTERNAL {
            assert!(by_name(name).is_some_and(Method::is_cdc_internal), "{name}");
        }
        assert!(!by_name("GetReplicateInfo").unwrap().is_cdc_internal());
    }
}
