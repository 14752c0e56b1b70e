"""Conformance of switchyard's hand-written protos and method table with Milvus.

Two things are checked here, both against sources switchyard does not control:

* **Proto conformance.** `proto/*.proto` is a hand-written *subset* of milvus-proto. Every
  message, field (name, number, type, label, map-ness, oneof) and enum value we declare must
  exist identically in the compiled descriptors that pymilvus ships
  (`pymilvus.grpc_gen.common_pb2` for `milvus.proto.common`, `milvus_pb2` for
  `milvus.proto.milvus`). Fields we omit are fine; anything we declare that differs or does
  not exist fails, naming `message.field`.

* **Method table.** `src/method.rs` (printed by `examples/method_table.rs`) must list every RPC
  of `MilvusService` - the 117 of milvus-proto `2.6` that pymilvus knows and the 32 more of
  `master` - with the reply shape of the descriptors, the streaming flag of the descriptors,
  and the routing class this file derives independently from
  `shared/reference/milvus-protocol.md` §1 (see `EXPECTED` below). Editing one row of the
  table by hand makes this test fail.

Requirements: pytest and pymilvus 2.6.x (which brings protobuf). A `protoc` is needed to
compile our protos; it is looked up as `$PROTOC`, `protoc` on `$PATH`, `grpc_tools.protoc`
(pip `grpcio-tools`, optional), or the `protoc-bin-vendored` copy in the cargo registry that
`build.rs` already uses. The method table comes from `$METHOD_TABLE_BIN`, else
`$SWITCHYARD_BIN_DIR/method_table`, else `<target>/debug/examples/method_table` when it is
newer than its sources, else `cargo run -q --example method_table`.
"""

from __future__ import annotations

import functools
import glob
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from google.protobuf import descriptor_pb2

from pymilvus.grpc_gen import common_pb2, milvus_pb2

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"

STATUS = ".milvus.proto.common.Status"
MUTATION_RESULT = ".milvus.proto.milvus.MutationResult"
SERVICE = "MilvusService"

# ---------------------------------------------------------------------------------------
# Expected method table.
#
# Every RPC of `service MilvusService` in milvus-io/milvus-proto `proto/milvus.proto`,
# branch `master` at 9810b924186fcb778799ea5f1165b81b4e47217a (2026-08-07, 149 RPCs), in
# proto order. The 117 RPCs not marked `M` are exactly those of branch `2.6` at
# a76db6514428a5eae8b258b317aa2c4f4e5a70ae (= pymilvus 2.6.17's descriptors); `M` marks the
# 32 that exist on master only.
#
# class: routing class, derived from shared/reference/milvus-protocol.md §1:
#   DML/DDL/DCL -> dml/ddl/dcl; "write" (Flush, FlushAll) -> dml (WAL data messages);
#   "DDL/DML" (TruncateCollection) and "ADM/DDL" (Add/RemoveFileResource) -> ddl;
#   R -> read-data for calls that compute over data (Search, HybridSearch, Query,
#   CalcDistance, RunAnalyzer, ComputePhraseMatchSlop), read-metadata for everything else;
#   CTL and ADM (cluster-local admin, incl. GetMetrics) -> control;
#   the two streaming RPCs -> streaming.
#   Master-only RPCs are not classified in §1; they follow the same rules by what they do
#   (create/alter/drop/load/restore/pin -> ddl or dcl, get/list/describe/has -> read-metadata).
# reply: shape of the response as read from the proto (checked against pymilvus's
#   descriptors for the 117 it knows): `status` = bare common.Status; `wrapped` = message
#   whose field 1 is a singular common.Status outside any oneof; `other` = anything else.
# ---------------------------------------------------------------------------------------
M = "master"
EXPECTED: list[tuple[str, str, str] | tuple[str, str, str, str]] = [
    ("CreateCollection", "ddl", "status"),
    ("DropCollection", "ddl", "status"),
    ("HasCollection", "read-metadata", "wrapped"),
    ("LoadCollection", "ddl", "status"),
    ("ReleaseCollection", "ddl", "status"),
    ("DescribeCollection", "read-metadata", "wrapped"),
    ("BatchDescribeCollection", "read-metadata", "wrapped"),
    ("GetCollectionStatistics", "read-metadata", "wrapped"),
    ("ShowCollections", "read-metadata", "wrapped"),
    ("AlterCollection", "ddl", "status"),
    ("AlterCollectionField", "ddl", "status"),
    ("AddCollectionFunction", "ddl", "status"),
    ("AlterCollectionFunction", "ddl", "status"),
    ("DropCollectionFunction", "ddl", "status"),
    ("TruncateCollection", "ddl", "wrapped"),  # §1: "DDL/DML, removes data"
    ("CreatePartition", "ddl", "status"),
    ("DropPartition", "ddl", "status"),
    ("HasPartition", "read-metadata", "wrapped"),
    ("LoadPartitions", "ddl", "status"),
    ("Prewarm", "ddl", "wrapped", M),  # PrivilegeLoad; may load a namespace partition
    ("DescribePrewarmTask", "read-metadata", "wrapped", M),
    ("ReleasePartitions", "ddl", "status"),
    ("GetPartitionStatistics", "read-metadata", "wrapped"),
    ("ShowPartitions", "read-metadata", "wrapped"),
    ("CreateNamespace", "ddl", "wrapped", M),
    ("DescribeNamespace", "read-metadata", "wrapped", M),
    ("ListNamespaces", "read-metadata", "wrapped", M),
    ("DropNamespace", "ddl", "wrapped", M),
    ("HasNamespace", "read-metadata", "wrapped", M),
    ("GetNamespaceStats", "read-metadata", "wrapped", M),
    ("GetLoadingProgress", "read-metadata", "wrapped"),
    ("GetLoadState", "read-metadata", "wrapped"),
    ("CreateAlias", "ddl", "status"),
    ("DropAlias", "ddl", "status"),
    ("AlterAlias", "ddl", "status"),
    ("DescribeAlias", "read-metadata", "wrapped"),
    ("ListAliases", "read-metadata", "wrapped"),
    ("CreateIndex", "ddl", "status"),
    ("AlterIndex", "ddl", "status"),
    ("DescribeIndex", "read-metadata", "wrapped"),
    ("GetIndexStatistics", "read-metadata", "wrapped"),
    ("GetIndexState", "read-metadata", "wrapped"),
    ("GetIndexBuildProgress", "read-metadata", "wrapped"),
    ("DropIndex", "ddl", "status"),
    ("Insert", "dml", "wrapped"),
    ("Delete", "dml", "wrapped"),
    ("Upsert", "dml", "wrapped"),
    ("Search", "read-data", "wrapped"),
    ("HybridSearch", "read-data", "wrapped"),
    ("Flush", "dml", "wrapped"),  # §1: "write", ManualFlush is a WAL message
    ("Query", "read-data", "wrapped"),
    ("CalcDistance", "read-data", "wrapped"),
    ("FlushAll", "dml", "wrapped"),  # §1: "write", MsgType FlushAll broadcast
    ("AddCollectionField", "ddl", "status"),
    ("AddCollectionStructField", "ddl", "status", M),
    ("GetFlushState", "read-metadata", "wrapped"),
    ("GetFlushAllState", "read-metadata", "wrapped"),
    ("GetPersistentSegmentInfo", "read-metadata", "wrapped"),
    ("GetQuerySegmentInfo", "read-metadata", "wrapped"),
    ("GetReplicas", "read-metadata", "wrapped"),
    ("Dummy", "control", "other"),
    ("RegisterLink", "control", "other"),  # status is field 2
    ("GetMetrics", "control", "wrapped"),  # §1: ADM (read), cluster-local
    ("GetComponentStates", "control", "other"),  # status is field 3
    ("LoadBalance", "control", "status"),  # ADM
    ("GetCompactionState", "read-metadata", "wrapped"),
    ("ManualCompaction", "control", "wrapped"),  # ADM
    ("GetCompactionStateWithPlans", "read-metadata", "wrapped"),
    ("Import", "dml", "wrapped"),
    ("GetImportState", "read-metadata", "wrapped"),
    ("ListImportTasks", "read-metadata", "wrapped"),
    ("CreateCredential", "dcl", "status"),
    ("UpdateCredential", "dcl", "status"),
    ("DeleteCredential", "dcl", "status"),
    ("ListCredUsers", "read-metadata", "wrapped"),
    ("CreateRole", "dcl", "status"),
    ("AlterRole", "dcl", "status"),
    ("DropRole", "dcl", "status"),
    ("OperateUserRole", "dcl", "status"),
    ("SelectRole", "read-metadata", "wrapped"),
    ("SelectUser", "read-metadata", "wrapped"),
    ("OperatePrivilege", "dcl", "status"),
    ("OperatePrivilegeV2", "dcl", "status"),
    ("SelectGrant", "read-metadata", "wrapped"),
    ("GetVersion", "control", "wrapped"),
    ("CheckHealth", "control", "wrapped"),
    ("CreateResourceGroup", "control", "status"),  # ADM
    ("DropResourceGroup", "control", "status"),  # ADM
    ("UpdateResourceGroups", "control", "status"),  # ADM
    ("TransferNode", "control", "status"),  # ADM
    ("TransferReplica", "control", "status"),  # ADM
    ("ListResourceGroups", "read-metadata", "wrapped"),
    ("DescribeResourceGroup", "read-metadata", "wrapped"),
    ("RenameCollection", "ddl", "status"),
    ("ListIndexedSegment", "read-metadata", "wrapped"),
    ("DescribeSegmentIndexData", "read-metadata", "wrapped"),
    ("Connect", "control", "wrapped"),
    ("AllocTimestamp", "control", "wrapped"),
    ("CreateDatabase", "ddl", "status"),
    ("DropDatabase", "ddl", "status"),
    ("ListDatabases", "read-metadata", "wrapped"),
    ("AlterDatabase", "ddl", "status"),
    ("DescribeDatabase", "read-metadata", "wrapped"),
    ("ReplicateMessage", "control", "wrapped"),
    ("BackupRBAC", "read-metadata", "wrapped"),
    ("RestoreRBAC", "dcl", "status"),
    ("CreatePrivilegeGroup", "dcl", "status"),
    ("DropPrivilegeGroup", "dcl", "status"),
    ("ListPrivilegeGroups", "read-metadata", "wrapped"),
    ("OperatePrivilegeGroup", "dcl", "status"),
    ("RunAnalyzer", "read-data", "wrapped"),
    ("AddFileResource", "ddl", "status"),  # §1: ADM/DDL
    ("RemoveFileResource", "ddl", "status"),  # §1: ADM/DDL
    ("ListFileResources", "read-metadata", "wrapped"),
    ("AddUserTags", "dcl", "status"),
    ("DeleteUserTags", "dcl", "status"),
    ("GetUserTags", "read-metadata", "wrapped"),
    ("ListUsersWithTag", "read-metadata", "wrapped"),
    ("CreateRowPolicy", "dcl", "status"),
    ("DropRowPolicy", "dcl", "status"),
    ("ListRowPolicies", "read-metadata", "wrapped"),
    ("UpdateRowPolicy", "dcl", "status", M),
    ("SetRLSPrincipalTags", "dcl", "status", M),
    ("GetRLSPrincipalTags", "read-metadata", "wrapped", M),
    ("ListRLSPrincipals", "read-metadata", "wrapped", M),
    ("DeleteRLSPrincipalTags", "dcl", "status", M),
    ("UpdateReplicateConfiguration", "control", "status"),
    ("GetReplicateConfiguration", "control", "wrapped"),
    ("GetReplicateInfo", "control", "other"),  # no status field at all
    ("CreateReplicateStream", "streaming", "other"),  # bidirectional stream
    ("DumpMessages", "streaming", "other"),  # server stream; status=1 sits in a oneof
    ("ComputePhraseMatchSlop", "read-data", "wrapped", M),  # like RunAnalyzer
    ("CreateSnapshot", "ddl", "status", M),
    ("DropSnapshot", "ddl", "status", M),
    ("ListSnapshots", "read-metadata", "wrapped", M),
    ("DescribeSnapshot", "read-metadata", "wrapped", M),
    ("RestoreSnapshot", "ddl", "wrapped", M),
    ("RestoreExternalSnapshot", "ddl", "wrapped", M),
    ("ExportSnapshot", "ddl", "wrapped", M),
    ("GetExportSnapshotState", "read-metadata", "wrapped", M),
    ("GetRestoreSnapshotState", "read-metadata", "wrapped", M),
    ("ListRestoreSnapshotJobs", "read-metadata", "wrapped", M),
    ("PinSnapshotData", "ddl", "wrapped", M),
    ("UnpinSnapshotData", "ddl", "status", M),
    # AlterCollectionSchemaResponse is `common.Status alter_status = 1`: on the wire the
    # same shape as `status = 1`, which is all a stand-in needs to build a rejection.
    ("AlterCollectionSchema", "ddl", "wrapped", M),
    # §1: "manifest-backfill DDL" (its request carries PrivilegeInsert).
    ("BatchUpdateManifest", "ddl", "status", M),
    ("RefreshExternalCollection", "ddl", "wrapped", M),
    ("GetRefreshExternalCollectionProgress", "read-metadata", "wrapped", M),
    ("ListRefreshExternalCollectionJobs", "read-metadata", "wrapped", M),
]

EXPECTED_BY_NAME = {row[0]: row for row in EXPECTED}
MASTER_ONLY = {row[0] for row in EXPECTED if len(row) == 4}
KINDS = {"dml", "ddl", "dcl", "read-data", "read-metadata", "control", "streaming"}
REPLIES = {"status", "wrapped", "other"}


def test_expected_list_is_well_formed():
    names = [row[0] for row in EXPECTED]
    assert len(names) == 149
    assert len(set(names)) == 149, "duplicate names in EXPECTED"
    assert len(MASTER_ONLY) == 32
    for row in EXPECTED:
        assert row[1] in KINDS and row[2] in REPLIES, row


# ---------------------------------------------------------------------------------------
# Compiling our protos
# ---------------------------------------------------------------------------------------


def _find_protoc() -> list[str] | None:
    env = os.environ.get("PROTOC")
    if env:
        return [env]
    found = shutil.which("protoc")
    if found:
        return [found]
    try:
        import grpc_tools  # noqa: F401

        return [sys.executable, "-m", "grpc_tools.protoc"]
    except ImportError:
        pass
    # The copy of protoc that build.rs uses (crate protoc-bin-vendored), for this platform.
    machine = platform.machine().lower()
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch_64", "arm64": "aarch_64"}
    osname = {"linux": "linux", "darwin": "macos"}.get(sys.platform)
    if osname is None or machine not in arch:
        return None
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    crate = f"protoc-bin-vendored-{osname}-{arch[machine]}-*"
    pattern = str(cargo_home / "registry" / "src" / "*" / crate / "bin" / "protoc")
    vendored = sorted(p for p in glob.glob(pattern) if os.access(p, os.X_OK))
    return [vendored[-1]] if vendored else None


def _protoc_include_dirs(protoc: list[str]) -> list[str]:
    # Our protos import nothing from google/, but be generous for a future import.
    dirs = []
    if protoc[-1] == "grpc_tools.protoc":
        import grpc_tools

        dirs.append(str(Path(grpc_tools.__file__).parent / "_proto"))
    for d in ("/usr/include", "/usr/local/include"):
        if Path(d, "google/protobuf/descriptor.proto").exists():
            dirs.append(d)
    return dirs


@functools.lru_cache(maxsize=None)
def ours() -> descriptor_pb2.FileDescriptorSet:
    protoc = _find_protoc()
    if protoc is None:
        pytest.fail(
            "no protoc found: set $PROTOC, install protoc, `pip install grpcio-tools`, "
            "or run `cargo build` once (fetches protoc-bin-vendored)"
        )
    files = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("*.proto"))
    assert files, f"no .proto files in {PROTO_DIR}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ours.pb"
        cmd = [*protoc, f"-I{PROTO_DIR}"]
        cmd += [f"-I{d}" for d in _protoc_include_dirs(protoc)]
        cmd += ["--include_imports", f"--descriptor_set_out={out}", *files]
        res = subprocess.run(cmd, cwd=PROTO_DIR, capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"protoc failed on proto/*.proto:\n{res.stderr}")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
    return fds


@functools.lru_cache(maxsize=None)
def theirs() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """pymilvus's compiled descriptors of the two packages our protos mirror, by package."""
    out = {}
    for module in (common_pb2, milvus_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fdp)
        out[fdp.package] = fdp
    return out


@functools.lru_cache(maxsize=None)
def their_messages() -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message milvus.proto can reach (responses also live in feder, rg, ...)."""
    files, todo, seen = [], [milvus_pb2.DESCRIPTOR], set()
    while todo:
        fd = todo.pop()
        if fd.name in seen:
            continue
        seen.add(fd.name)
        fdp = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(fdp)
        files.append(fdp)
        todo.extend(fd.dependencies)
    return _index(files)[0]


# ---------------------------------------------------------------------------------------
# Flattening descriptors: full name -> message / enum
# ---------------------------------------------------------------------------------------


def _index(files) -> tuple[dict, dict]:
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}

    def walk(prefix, msg_list, enum_list):
        for e in enum_list:
            enums[f"{prefix}.{e.name}"] = e
        for m in msg_list:
            name = f"{prefix}.{m.name}"
            messages[name] = m
            walk(name, m.nested_type, m.enum_type)

    for f in files:
        walk("." + f.package, f.message_type, f.enum_type)
    return messages, enums


_SCALARS = {
    v: k[len("TYPE_") :].lower()
    for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def _type_of(field, messages) -> str:
    """A field's type as text: `string`, `enum .pkg.E`, `message .pkg.M`, `map<K, V>`."""
    t = field.type
    if t == descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
        entry = messages.get(field.type_name)
        if entry is not None and entry.options.map_entry:
            key, value = sorted(entry.field, key=lambda f: f.number)
            return f"map<{_type_of(key, messages)}, {_type_of(value, messages)}>"
        return f"message {field.type_name}"
    if t == descriptor_pb2.FieldDescriptorProto.TYPE_ENUM:
        return f"enum {field.type_name}"
    return _SCALARS[t]


def _label_of(field, messages) -> str:
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        entry = messages.get(field.type_name) if field.type_name else None
        return "map" if entry is not None and entry.options.map_entry else "repeated"
    if field.proto3_optional:
        return "optional"
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED:
        return "required"
    return "singular"


def _oneof_of(field, msg) -> str | None:
    """The real (non-synthetic) oneof a field belongs to, if any."""
    if not field.HasField("oneof_index") or field.proto3_optional:
        return None
    return msg.oneof_decl[field.oneof_index].name


def _describe(field, msg, messages) -> dict:
    return {
        "number": field.number,
        "type": _type_of(field, messages),
        "label": _label_of(field, messages),
        "oneof": _oneof_of(field, msg),
    }


def _short(full_name: str) -> str:
    return full_name.lstrip(".")


# ---------------------------------------------------------------------------------------
# Proto conformance
# ---------------------------------------------------------------------------------------


def test_our_protos_use_only_pymilvus_packages():
    for f in ours().file:
        assert f.package in theirs(), (
            f"proto/{f.name}: package {f.package} is not one of pymilvus's "
            f"{sorted(theirs())}"
        )
        assert not f.service, f"proto/{f.name} declares a service; the table checks methods"


def _proto_problems() -> list[str]:
    our_msgs, our_enums = _index(ours().file)
    their_msgs, their_enums = _index(theirs().values())
    problems = []

    for name, msg in sorted(our_msgs.items()):
        if msg.options.map_entry:
            continue  # compared through the map field that uses it
        other = their_msgs.get(name)
        if other is None:
            problems.append(f"{_short(name)}: message does not exist in pymilvus")
            continue
        their_fields = {f.name: f for f in other.field}
        their_numbers = {f.number: f.name for f in other.field}
        for field in msg.field:
            where = f"{_short(name)}.{field.name}"
            theirs_f = their_fields.get(field.name)
            if theirs_f is None:
                hint = their_numbers.get(field.number)
                hint = f" (number {field.number} is `{hint}` there)" if hint else ""
                problems.append(f"{where}: no such field in pymilvus{hint}")
                continue
            mine = _describe(field, msg, our_msgs)
            want = _describe(theirs_f, other, their_msgs)
            for key in ("number", "type", "label", "oneof"):
                if mine[key] != want[key]:
                    problems.append(
                        f"{where}: {key} is {mine[key]!r} in proto/, "
                        f"pymilvus has {want[key]!r}"
                    )
        their_oneofs = {o.name for o in other.oneof_decl}
        for field in msg.field:
            oneof = _oneof_of(field, msg)
            if oneof is not None and oneof not in their_oneofs:
                problems.append(f"{_short(name)}.{oneof}: no such oneof in pymilvus")

    for name, enum in sorted(our_enums.items()):
        other = their_enums.get(name)
        if other is None:
            problems.append(f"{_short(name)}: enum does not exist in pymilvus")
            continue
        their_values = {v.name: v.number for v in other.value}
        for value in enum.value:
            where = f"{_short(name)}.{value.name}"
            if value.name not in their_values:
                problems.append(f"{where}: no such enum value in pymilvus")
            elif their_values[value.name] != value.number:
                problems.append(
                    f"{where}: number is {value.number} in proto/, "
                    f"pymilvus has {their_values[value.name]}"
                )
    return problems


def test_protos_match_pymilvus_descriptors():
    problems = _proto_problems()
    assert not problems, (
        f"{len(problems)} difference(s) between proto/*.proto and pymilvus "
        f"{_pymilvus_version()}'s descriptors:\n  " + "\n  ".join(problems)
    )


def test_protos_declare_something():
    our_msgs, our_enums = _index(ours().file)
    # Guards against a silently empty compile making the check above vacuous.
    assert ".milvus.proto.common.Status" in our_msgs
    assert ".milvus.proto.milvus.MutationResult" in our_msgs
    assert ".milvus.proto.common.ConsistencyLevel" in our_enums


def _pymilvus_version() -> str:
    import pymilvus

    return getattr(pymilvus, "__version__", "?")


# ---------------------------------------------------------------------------------------
# The method table, from the Rust side
# ---------------------------------------------------------------------------------------


def _target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def _sources_mtime() -> float:
    paths = [REPO / "Cargo.toml", REPO / "Cargo.lock", REPO / "build.rs"]
    paths += list((REPO / "src").rglob("*.rs")) + list((REPO / "examples").glob("*.rs"))
    paths += list(PROTO_DIR.glob("*.proto"))
    return max(p.stat().st_mtime for p in paths if p.exists())


def _method_table_command() -> list[str]:
    explicit = os.environ.get("METHOD_TABLE_BIN")
    if explicit:
        return [explicit]
    bin_dir = os.environ.get("SWITCHYARD_BIN_DIR")
    if bin_dir and (Path(bin_dir) / "method_table").exists():
        return [str(Path(bin_dir) / "method_table")]
    built = _target_dir() / "debug" / "examples" / "method_table"
    if built.exists() and built.stat().st_mtime >= _sources_mtime():
        return [str(built)]
    # Missing or older than src/: let cargo (re)build it rather than test a stale table.
    return ["cargo", "run", "-q", "--example", "method_table"]


@functools.lru_cache(maxsize=None)
def table() -> dict[str, tuple[str, str]]:
    cmd = _method_table_command()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` failed ({res.returncode}):\n{res.stderr}")
    rows: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(res.stdout.splitlines(), 1):
        parts = line.split("\t")
        assert len(parts) == 3, f"method_table line {n} is not name\\tkind\\treply: {line!r}"
        name, kind, reply = parts
        assert name not in rows, f"method_table lists {name} twice"
        assert kind in KINDS, f"{name}: unknown kind {kind!r}"
        assert reply in REPLIES, f"{name}: unknown reply {reply!r}"
        rows[name] = (kind, reply)
    return rows


def _service() -> descriptor_pb2.ServiceDescriptorProto:
    (svc,) = [s for s in theirs()["milvus.proto.milvus"].service if s.name == SERVICE]
    return svc


def _reply_shape(output_type: str) -> str:
    if output_type == STATUS:
        return "status"
    msg = their_messages()[output_type]
    for f in msg.field:
        if (
            f.number == 1
            and f.type_name == STATUS
            and f.label != descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            and _oneof_of(f, msg) is None
        ):
            return "wrapped"
    return "other"


def _our_client_service() -> list[tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.ServiceDescriptorProto]]:
    """The service subset that src/cdc's generated client stubs are built from (proto/service/)."""
    protoc = _find_protoc()
    if protoc is None:
        pytest.fail("no protoc found (see ours())")
    files = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "service").glob("*.proto"))
    assert files, f"no .proto files in {PROTO_DIR / 'service'}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "service.pb"
        cmd = [*protoc, f"-I{PROTO_DIR}", *(f"-I{d}" for d in _protoc_include_dirs(protoc))]
        cmd += [f"--descriptor_set_out={out}", *files]
        res = subprocess.run(cmd, cwd=PROTO_DIR, capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"protoc failed on proto/service/*.proto:\n{res.stderr}")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
    return [(f, s) for f in fds.file for s in f.service]


def test_client_stub_service_matches_pymilvus():
    services = _our_client_service()
    assert services, "proto/service/ declares no service"
    theirs_by_name = {m.name: m for m in _service().method}
    for f, svc in services:
        assert (f.package, svc.name) == ("milvus.proto.milvus", SERVICE), f"proto/{f.name}: {f.package}.{svc.name}"
        assert svc.method, f"proto/{f.name}: {svc.name} declares no method"
        for m in svc.method:
            t = theirs_by_name.get(m.name)
            assert t is not None, f"{m.name}: not a method of pymilvus's {SERVICE}"
            mine = (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            want = (t.input_type, t.output_type, t.client_streaming, t.server_streaming)
            assert mine == want, f"{m.name}: {mine} in proto/service/, pymilvus has {want}"


def test_table_has_149_rows():
    assert len(table()) == 149, f"method table has {len(table())} rows, expected 149"


def test_table_names_are_milvus_proto_master():
    names = set(table())
    missing = sorted(set(EXPECTED_BY_NAME) - names)
    extra = sorted(names - set(EXPECTED_BY_NAME))
    assert not missing, f"RPCs of milvus-proto master missing from src/method.rs: {missing}"
    assert not extra, f"rows in src/method.rs that milvus-proto master lacks: {extra}"


def test_every_pymilvus_method_is_in_table_with_its_reply_shape():
    rows = table()
    problems = []
    for method in _service().method:
        name = method.name
        if name not in rows:
            problems.append(f"{name}: in pymilvus's {SERVICE}, missing from src/method.rs")
            continue
        want = _reply_shape(method.output_type)
        kind, reply = rows[name]
        if reply != want:
            problems.append(
                f"{name}: reply is {reply!r} in src/method.rs, but it returns "
                f"{_short(method.output_type)} ({want!r})"
            )
        if name in EXPECTED_BY_NAME and EXPECTED_BY_NAME[name][2] != want:
            problems.append(f"{name}: EXPECTED in this test says {EXPECTED_BY_NAME[name][2]!r}, "
                            f"pymilvus says {want!r}")
        if name in MASTER_ONLY:
            problems.append(f"{name}: marked master-only in EXPECTED but pymilvus has it")
    assert not problems, "\n".join(problems)


def test_pymilvus_knows_exactly_the_non_master_rpcs():
    theirs_names = {m.name for m in _service().method}
    assert theirs_names == set(EXPECTED_BY_NAME) - MASTER_ONLY, (
        f"pymilvus {_pymilvus_version()} has {len(theirs_names)} methods; "
        f"not in EXPECTED: {sorted(theirs_names - set(EXPECTED_BY_NAME))}; "
        f"unexpectedly absent: {sorted(set(EXPECTED_BY_NAME) - MASTER_ONLY - theirs_names)}"
    )


def test_streaming_matches_descriptors():
    rows = table()
    streaming_desc = {
        m.name for m in _service().method if m.client_streaming or m.server_streaming
    }
    streaming_table = {name for name, (kind, _) in rows.items() if kind == "streaming"}
    assert streaming_desc == {"CreateReplicateStream", "DumpMessages"}
    assert streaming_table == streaming_desc, (
        f"streaming in descriptors: {sorted(streaming_desc)}, "
        f"`streaming` in src/method.rs: {sorted(streaming_table)}"
    )


def test_mutation_result_rpcs_are_dml():
    rows = table()
    mutating = [m.name for m in _service().method if m.output_type == MUTATION_RESULT]
    assert sorted(mutating) == ["Delete", "Insert", "Upsert"]
    wrong = {name: rows[name][0] for name in mutating if rows[name][0] != "dml"}
    assert not wrong, f"RPCs returning MutationResult must be dml: {wrong}"


def test_table_matches_expected_classification_and_reply():
    rows = table()
    problems = []
    for name, kind, reply, *_ in EXPECTED:
        if name not in rows:
            continue  # reported by test_table_names_are_milvus_proto_master
        got_kind, got_reply = rows[name]
        if got_kind != kind:
            problems.append(f"{name}: kind is {got_kind!r} in src/method.rs, expected {kind!r}")
        if got_reply != reply:
            problems.append(
                f"{name}: reply is {got_reply!r} in src/method.rs, expected {reply!r}"
            )
    assert not problems, "\n".join(problems)
