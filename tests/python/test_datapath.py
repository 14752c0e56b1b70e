"""The data path end to end: real SDKs in front of switchyard, milvus-standin clusters behind it.

Clusters are ``milvus-standin`` processes over milvus-lite, replicating A -> B (and A -> C), so
every read a standby serves holds only what replication carried from A. The stand-ins count
what they serve (``GET /state`` -> ``counters``), which is how each test sees where switchyard
sent a call:

- the full pymilvus workload (``workload.py``, under pymilvus 2.6 and 3.0): writes on A only,
  data reads on B only, and B's answers hold the rows written through A;
- two standbys share the data reads within 20% of each other;
- a standby SIGKILLed under load fails only the reads in flight on it;
- ``x-switchyard-cluster`` routes reads and control calls, never writes, and an unknown name
  is NOT_FOUND;
- a client's ``UpdateReplicateConfiguration`` is refused with PERMISSION_DENIED, which pymilvus does not retry.

Reads name ``Bounded`` consistency: milvus-lite, and so the stand-in, reports every collection's
default level as Strong, which switchyard (rightly) sends to the primary.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from switchyard_bed import Raw, Switchyard, pb, rate_limited, venv_pm3
from testbed import Standin, bin_dir, replicate, wait_until, start_standins, stop_all

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "workload.py"
TOKENS = {"cluster-a": "root:Milvus", "cluster-b": "root:Milvus", "cluster-c": "root:Milvus"}

pytestmark = pytest.mark.skipif(
    not (bin_dir() / "milvus-standin").exists() or not (bin_dir() / "switchyard").exists(),
    reason=f"switchyard / milvus-standin binaries not built in {bin_dir()} (cargo build --bins)",
)


class Bed:
    """Stand-ins A (primary), B and C (standbys) over their own milvus-lite, and a switchyard."""

    def __init__(self, tmp: Path, standbys: int = 2):
        self.tmp = tmp
        self.procs: list = []
        ids = ["cluster-a", "cluster-b", "cluster-c"][: 1 + standbys]
        self.standins: dict[str, Standin] = {}
        self.standins.update(start_standins(tmp, ids, pchannels=4, procs=self.procs))
        replicate(self.a, *[self.standins[c] for c in ids[1:]], tokens=TOKENS)
        clusters = [Switchyard.cluster(cid, s.uri, "primary" if cid == "cluster-a" else "standby", token="root:Milvus")
                    for cid, s in self.standins.items()]
        self.sy = Switchyard(tmp, clusters)
        self.procs.append(self.sy)
        self.sy.wait_ready()
        self.prime()

    def prime(self) -> None:
        """One write through switchyard, applied by every standby: until switchyard has seen a
        standby apply a write it saw acknowledged, that standby's lag is unknown and it serves no
        reads (unknown is unsafe), and these tests are about where reads go once it is known."""
        import requests
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.sy.uri, token="root:Milvus")
        make_collection(client, "warm", rows=1)
        client.close()
        standbys = [c for c in self.standins if c != "cluster-a"]

        def serving() -> bool:
            view = requests.get(f"http://{self.sy.admin_addr}/v1/clusters", timeout=5).json()
            return all(c["serves_reads"] for c in view if c["id"] in standbys)

        wait_until(serving, timeout=20, what="standbys known caught up")

    @property
    def a(self) -> Standin:
        return self.standins["cluster-a"]

    @property
    def b(self) -> Standin:
        return self.standins["cluster-b"]

    @property
    def c(self) -> Standin:
        return self.standins["cluster-c"]

    def counters(self) -> dict[str, dict]:
        return {cid: s.state()["counters"] for cid, s in self.standins.items() if s.alive()}

    def stop(self, failed: bool = False) -> None:
        stop_all(self.procs, failed)


def delta(after: dict, before: dict) -> dict:
    return {cid: {k: v - before[cid].get(k, 0) for k, v in c.items()} for cid, c in after.items() if cid in before}


@pytest.fixture(scope="module")
def bed(tmp_path_factory, request):
    """A replicating to B, behind one switchyard (shared by the tests of this module)."""
    b = Bed(tmp_path_factory.mktemp("datapath"), standbys=1)
    yield b
    b.stop(failed=request.session.testsfailed > 0)


@pytest.fixture(scope="module")
def trio(tmp_path_factory, request):
    """A replicating to B and C, behind one switchyard."""
    b = Bed(tmp_path_factory.mktemp("datapath3"), standbys=2)
    yield b
    b.stop(failed=request.session.testsfailed > 0)


def kv(k, v):
    _, common_pb2 = pb()
    return common_pb2.KeyValuePair(key=k, value=str(v))


def search_request(collection: str, vector: list[float], level: str = "Bounded", topk: int = 3):
    """A raw ``SearchRequest`` as pymilvus builds it (one FloatVector query)."""
    milvus_pb2, common_pb2 = pb()
    ph = common_pb2.PlaceholderGroup(placeholders=[common_pb2.PlaceholderValue(
        tag="$0", type=common_pb2.PlaceholderType.FloatVector, values=[struct.pack(f"<{len(vector)}f", *vector)])])
    return milvus_pb2.SearchRequest(
        collection_name=collection, dsl="", dsl_type=common_pb2.DslType.BoolExprV1,
        placeholder_group=ph.SerializeToString(), nq=1, output_fields=["id"],
        search_params=[kv("anns_field", "vec"), kv("topk", topk), kv("metric_type", "L2"), kv("params", "{}"),
                       kv("round_decimal", -1)],
        consistency_level=common_pb2.ConsistencyLevel.Value(level),
    )


def make_collection(client, name: str, rows: int = 50) -> None:
    """A collection with ``rows`` rows through ``client`` (the proxy), indexed and loaded."""
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("vec", DataType.FLOAT_VECTOR, dim=4)
    ip = MilvusClient.prepare_index_params()
    ip.add_index("vec", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=s, index_params=ip, consistency_level="Bounded")
    client.insert(name, [{"id": i, "vec": [float(i), 0.0, 0.0, 1.0]} for i in range(rows)])


def wait_replicated(standins, name: str, rows: int, timeout: float = 30.0) -> None:
    """Polls each standby directly until it answers ``count(*) == rows`` for the collection."""
    for s in standins:
        client = s.client()
        wait_until(lambda: client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == rows,
                   timeout=timeout, what=f"{s.cluster_id} to hold {rows} rows of {name}")


def run_workload(python: Path, uri: str, name: str) -> dict:
    p = subprocess.run([str(python), str(WORKLOAD), "--uri", uri, "--name", name, "--read-level", "Bounded",
                        "--token", "root:Milvus"], capture_output=True, text=True, timeout=180)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    summary = json.loads(lines[-1]) if lines else {}
    assert p.returncode == 0 and summary.get("ok"), f"workload failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return summary


@pytest.mark.parametrize("sdk", ["pymilvus-2.6", "pymilvus-3.0"])
def test_workload_writes_to_primary_and_reads_from_standby(bed, sdk):
    python = Path(sys.executable) if sdk == "pymilvus-2.6" else venv_pm3() / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} missing: create the pymilvus 3.0 venv (.ci/run does)")
    before = bed.counters()
    summary = run_workload(python, bed.sy.uri, f"wl_{sdk.replace('-', '_').replace('.', '')}")
    assert summary["pymilvus"].startswith(sdk.split("-")[1]), summary
    d = delta(bed.counters(), before)
    a, standbys = d["cluster-a"], [d["cluster-b"]]
    calls = summary["calls"]
    # Every write was served by A, none refused; no standby served or refused a client write.
    assert a["writes_served"] >= calls["write"], (calls, d)
    assert a["writes_rejected"] == 0, d
    for s in standbys:
        assert s["writes_served"] == 0 and s["writes_rejected"] == 0, d
        assert s["replicated_applied"] > 0, d
    # Every data read was served by a standby, and they answered with A's rows (the workload
    # asserts every answer).
    assert a["reads_data"] == 0, d
    assert d["cluster-b"]["reads_data"] >= calls["data_read"], (calls, d)


def test_standby_answers_hold_rows_written_through_primary(bed):
    from pymilvus import MilvusClient

    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, "carried", rows=30)
    before = bed.counters()
    # Through switchyard: the answer comes from a standby and holds all 30 rows once replicated.
    wait_until(lambda: len(client.query("carried", filter="id >= 0", output_fields=["id"],
                                        consistency_level="Bounded", limit=100)) == 30,
               timeout=30, what="30 rows through switchyard")
    d = delta(bed.counters(), before)
    assert d["cluster-a"]["reads_data"] == 0 and d["cluster-b"]["reads_data"] > 0, d
    # And the standby itself holds them.
    wait_replicated([bed.b], "carried", 30)
    client.drop_collection("carried")
    client.close()


def test_default_consistency_reads_follow_the_collection_level(bed):
    """A read without a level is routed by the level the primary's DescribeCollection reports:
    Strong (and Session) to the primary, Bounded and Eventually to a standby."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, "deflevel", rows=10)
    wait_replicated([bed.b], "deflevel", 10)
    level = bed.a.client().describe_collection("deflevel")["consistency_level"]
    before = bed.counters()
    res = client.query("deflevel", filter="id >= 0", output_fields=["id"])  # no consistency_level
    assert len(res) == 10, res
    d = delta(bed.counters(), before)
    # milvus-lite (so the stand-in) reports 0 (Strong) whatever the collection was created with.
    served_by = "cluster-a" if level in (0, 1) else "cluster-b"
    other = "cluster-b" if served_by == "cluster-a" else "cluster-a"
    assert d[served_by]["reads_data"] == 1 and d[other]["reads_data"] == 0, (level, d)
    client.drop_collection("deflevel")
    client.close()


def test_two_standbys_share_reads_within_20_percent(trio):
    bed = trio
    from pymilvus import MilvusClient

    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, "shared", rows=50)
    wait_replicated([bed.b, bed.c], "shared", 50)
    raw = [Raw(bed.sy.addr) for _ in range(4)]
    total, per_thread = 2000, 250
    errors: list = []

    def worker(k: int) -> None:
        r = raw[k % len(raw)]
        for i in range(per_thread):
            code, details, resp = r.call("Search", search_request("shared", [float(i % 50), 0, 0, 1]))
            if code != grpc.StatusCode.OK or resp.status.code != 0:
                errors.append((code, details, resp and resp.status.reason))

    before = bed.counters()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(total // per_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d = delta(bed.counters(), before)
    for r in raw:
        r.close()
    assert not errors, errors[:5]
    b, c = d["cluster-b"]["reads_data"], d["cluster-c"]["reads_data"]
    assert d["cluster-a"]["reads_data"] == 0, d
    assert b + c == total, d
    print(f"reads served: B {b}, C {c}")
    assert abs(b - c) <= 0.2 * max(b, c), f"B served {b}, C served {c}: not within 20%"
    client.drop_collection("shared")
    client.close()


def test_named_cluster_routes_reads_and_control_but_not_writes(bed):
    from pymilvus import MilvusClient

    milvus_pb2, common_pb2 = pb()
    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, "named", rows=10)
    wait_replicated([bed.b], "named", 10)
    raw = Raw(bed.sy.addr)
    tok = "root:Milvus"

    # A data read named to the primary goes there (Bounded would otherwise go to a standby).
    before = bed.counters()
    for _ in range(5):
        code, _, resp = raw.call("Search", search_request("named", [1, 0, 0, 1]), token=tok,
                                 metadata=[("x-switchyard-cluster", "cluster-a")])
        assert code == grpc.StatusCode.OK and resp.status.code == 0, (code, resp)
    d = delta(bed.counters(), before)
    assert d["cluster-a"]["reads_data"] == 5 and d["cluster-b"]["reads_data"] == 0, d

    # A Strong read (the primary's by default) named to a standby goes to that standby.
    before = bed.counters()
    code, _, resp = raw.call("Search", search_request("named", [1, 0, 0, 1], level="Strong"), token=tok,
                             metadata=[("x-switchyard-cluster", "cluster-b")])
    assert code == grpc.StatusCode.OK and resp.status.code == 0, (code, resp)
    d = delta(bed.counters(), before)
    assert d["cluster-b"]["reads_data"] == 1 and d["cluster-a"]["reads_data"] == 0, d

    # A metadata read (the primary's by default) named to B goes to B.
    before = bed.counters()
    code, _, resp = raw.call("ShowCollections", milvus_pb2.ShowCollectionsRequest(), token=tok,
                             metadata=[("x-switchyard-cluster", "cluster-b")])
    assert code == grpc.StatusCode.OK and "named" in resp.collection_names, (code, resp)
    d = delta(bed.counters(), before)
    assert d["cluster-b"]["reads_metadata"] == 1 and d["cluster-a"]["reads_metadata"] == 0, d

    # A control call named to B is answered by B: GetReplicateInfo shows B's checkpoint for A's
    # pchannel, which only a secondary has.
    req = milvus_pb2.GetReplicateInfoRequest(source_cluster_id="cluster-a", target_pchannel="cluster-b-rootcoord-dml_0")
    code, details, resp = raw.call("GetReplicateInfo", req, token=tok, metadata=[("x-switchyard-cluster", "cluster-b")])
    assert code == grpc.StatusCode.OK and resp.HasField("checkpoint"), (code, details, resp)
    assert resp.checkpoint.cluster_id == "cluster-a", resp
    # Without the header the same call goes to the primary, which has no checkpoint.
    code, details, resp = raw.call("GetReplicateInfo", req, token=tok)
    assert not (code == grpc.StatusCode.OK and resp.HasField("checkpoint")), (code, details, resp)
    # Many control calls named to B all land on B.
    before = bed.counters()
    for _ in range(40):
        code, _, _ = raw.call("GetVersion", milvus_pb2.GetVersionRequest(), token=tok,
                              metadata=[("x-switchyard-cluster", "cluster-b")])
        assert code == grpc.StatusCode.OK
    d = delta(bed.counters(), before)
    assert d["cluster-b"]["control"] >= 40 and d["cluster-a"]["control"] < 40, d

    # A write named to a standby still goes to the primary.
    before = bed.counters()
    ins = client_insert_request("named", [100, 101])
    code, details, resp = raw.call("Insert", ins, token=tok, metadata=[("x-switchyard-cluster", "cluster-b")])
    assert code == grpc.StatusCode.OK and resp.status.code == 0, (code, details, resp)
    d = delta(bed.counters(), before)
    assert d["cluster-a"]["writes_served"] == 1, d
    assert d["cluster-b"]["writes_served"] == 0 and d["cluster-b"]["writes_rejected"] == 0, d

    # An unknown name: INVALID_ARGUMENT from switchyard itself (not retried by the SDKs),
    # nothing sent anywhere.
    before = bed.counters()
    for method, req in [("Search", search_request("named", [1, 0, 0, 1])),
                        ("GetVersion", milvus_pb2.GetVersionRequest()),
                        ("ShowCollections", milvus_pb2.ShowCollectionsRequest())]:
        code, details, _ = raw.call(method, req, token=tok, metadata=[("x-switchyard-cluster", "cluster-zz")])
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert details.startswith("switchyard:") and "cluster-zz" in details, details
    d = delta(bed.counters(), before)
    assert all(d[c]["reads_data"] == 0 and d[c]["reads_metadata"] == 0 for c in d), d
    raw.close()
    client.drop_collection("named")
    client.close()


def client_insert_request(collection: str, ids: list[int]):
    """A raw ``InsertRequest`` for the 4-dim collection of ``make_collection``."""
    milvus_pb2, _ = pb()
    from pymilvus.grpc_gen import schema_pb2

    ids_field = schema_pb2.FieldData(field_name="id", type=schema_pb2.DataType.Int64,
                                     scalars=schema_pb2.ScalarField(long_data=schema_pb2.LongArray(data=ids)))
    flat = [float(x) for i in ids for x in (i, 0, 0, 1)]
    vec_field = schema_pb2.FieldData(field_name="vec", type=schema_pb2.DataType.FloatVector,
                                     vectors=schema_pb2.VectorField(dim=4, float_vector=schema_pb2.FloatArray(data=flat)))
    return milvus_pb2.InsertRequest(collection_name=collection, fields_data=[ids_field, vec_field], num_rows=len(ids))


def test_client_update_replicate_configuration_is_refused(bed):
    milvus_pb2, common_pb2 = pb()
    raw = Raw(bed.sy.addr)
    cfg = common_pb2.ReplicateConfiguration(clusters=[common_pb2.MilvusCluster(
        cluster_id="cluster-b", connection_param=common_pb2.ConnectionParam(uri=bed.b.uri, token="root:Milvus"),
        pchannels=[f"cluster-b-rootcoord-dml_{i}" for i in range(4)])])
    before = bed.counters()
    code, details, _ = raw.call("UpdateReplicateConfiguration",
                                milvus_pb2.UpdateReplicateConfigurationRequest(replicate_configuration=cfg),
                                token="root:Milvus")
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
    assert details.startswith("switchyard:") and "admin API" in details, details
    d = delta(bed.counters(), before)
    # Nothing changed: A is still the primary of the star, B its secondary.
    assert bed.a.state()["role"] == "primary" and bed.b.state()["role"] != "primary"
    assert all(v["writes_served"] == 0 for v in d.values()), d
    # Through pymilvus too, with its default retries: PERMISSION_DENIED is one of the codes it
    # does not retry, so the refusal reaches the caller at once (v1's FAILED_PRECONDITION was
    # retried 75 times, about 3.5 minutes).
    from pymilvus import MilvusClient

    c = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    t0 = time.monotonic()
    with pytest.raises(Exception) as e:
        c.update_replicate_configuration(clusters=[bed.b.cluster("root:Milvus")], cross_cluster_topology=[])
    took = time.monotonic() - t0
    print(f"refusal reached the pymilvus caller in {took:.3f}s")
    assert "admin API" in str(e.value) and took < 5, (took, e.value)
    c.close()
    raw.close()


def test_standby_killed_mid_load_fails_only_in_flight_reads(tmp_path):
    bed = Bed(tmp_path)
    try:
        _killed_mid_load(bed)
    except BaseException:
        bed.stop(failed=True)
        raise
    bed.stop()


def _killed_mid_load(bed: Bed) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, "killed", rows=50)
    wait_replicated([bed.b, bed.c], "killed", 50)
    client.close()
    n_threads, after_kill_ok = 6, 300
    lock = threading.Lock()
    log: list[tuple[float, bool, str]] = []  # (finished at, ok, detail)
    stop = threading.Event()
    killed_at: list[float] = []

    def worker() -> None:
        r = Raw(bed.sy.addr)
        i = 0
        while not stop.is_set():
            i += 1
            code, details, resp = r.call("Search", search_request("killed", [float(i % 50), 0, 0, 1]), timeout=10)
            ok = code == grpc.StatusCode.OK and resp.status.code == 0
            with lock:
                log.append((time.monotonic(), ok,
                            "" if ok else f"{code} {details} {resp and resp.status.code} {resp and resp.status.reason}"))
        r.close()

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(1 for _, ok, _ in log if ok) >= 200, timeout=30, what="200 reads before the kill")
        assert bed.c.state()["counters"]["reads_data"] > 0  # C was serving
        killed_at.append(time.monotonic())  # before: reads in flight fail while the kill is delivered
        bed.c.kill()

        def enough_after() -> bool:
            with lock:
                after = [ok for at, ok, _ in log if at > killed_at[0]]
            # N consecutive successes at the end of the log.
            tail = 0
            for ok in reversed(after):
                if not ok:
                    break
                tail += 1
            return tail >= after_kill_ok

        wait_until(enough_after, timeout=30, what=f"{after_kill_ok} consecutive reads after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    failures = [(at - killed_at[0], d) for at, ok, d in log if not ok]
    print(f"{len(log)} reads, {len(failures)} failed after the kill: {failures}")
    # Only reads in flight on C when it died may fail: at most one per client thread.
    assert all(at > 0 for at, _ in failures), failures
    assert len(failures) <= n_threads, f"{len(failures)} reads failed after the kill: {failures[:8]}"
    for _, d in failures:  # switchyard's own RateLimit reply, naming the dead cluster, saying a retry is safe
        assert d.startswith("StatusCode.OK  8 switchyard: cluster cluster-c") and "safe to retry" in d, failures
    # The reads after the kill went to B.
    assert bed.b.state()["counters"]["reads_data"] > 0
