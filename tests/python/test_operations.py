"""Operating switchyard end to end: metrics, hot reload, graceful shutdown, secrets, SDK topology.

Behind the proxy are ``milvus-standin`` clusters over milvus-lite (A primary, B and sometimes C
standbys, replicating from A). Every switchyard and stand-in here runs with ``RUST_LOG=debug``,
cluster tokens ``root:S3cretPassw0rd`` and the admin token ``adm1n-t0ken-xyz``, so the last test
can grep every log of the run for them.

1. ``/metrics`` after a scripted workload with one switchover: every metric of the interface, by
   name, with exact values (requests by kind/cluster/code, histogram counts and buckets, writes
   held by an operator's pause and by the switchover, hold durations, role changes, the routing
   epoch, cluster up with a downed cluster, lag while replication is paused).
2. Hot reload by SIGHUP, ``POST /v1/reload`` and ``switchyard ctl reload``: a standby added
   serves reads with one client and one connection open across it; invalid files, a listener
   address change, the removal of the primary, and cluster changes while a switchover runs are
   refused with every reason, changing nothing.
3. SIGTERM under steady load, while a switchover holds writes, during an operator's pause, and
   with calls stuck on frozen clusters: every call gets an answer (a cluster's or a clear
   ``switchyard:`` error), none hangs or is reset, ``/readyz`` turns 503 at once, and the process
   exits within ``SWITCHYARD_SHUTDOWN_GRACE`` (5s).
4. pymilvus's own global-cluster topology code (2.6, and 3.x from ``.venv-pm3``) reads
   ``GET /global-cluster/topology``; the answer follows a switchover, a failover (fenced and
   to-be-rebuilt clusters left out, never a topology without a primary) and readmits.
5. (last, so it sees every log of the run) no token or password in any log, admin answer,
   error message or ``check-config`` output.

Calls whose count matters go through raw grpcio stubs (``Raw``), which send exactly what the
test sends; pymilvus adds calls of its own (Connect, DescribeCollection...).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import grpc
import pytest
import requests

from switchyard_bed import Raw, Switchyard, pb, rate_limited, switchyard_cli, venv_pm3
from testbed import Standin, bin_dir, replicate, wait_until, stop_all, start_standins

SECRET = "root:S3cretPassw0rd"
ADMIN_TOKEN = "adm1n-t0ken-xyz"
GRACE = 5.0
DIM = 4
COLL = "ops"

pytestmark = pytest.mark.skipif(
    not (bin_dir() / "milvus-standin").exists() or not (bin_dir() / "switchyard").exists(),
    reason=f"switchyard / milvus-standin binaries not built in {bin_dir()} (cargo build --bins)",
)


# --- the bed -----------------------------------------------------------------------------------


class OpsBed:
    """Stand-ins over milvus-lite, A replicating to the others, and one switchyard in front of
    the clusters named by ``in_config`` (default: all)."""

    def __init__(self, tmp: Path, ids=("cluster-a", "cluster-b"), in_config=None, sy_env=None, **sections):
        self.tmp = tmp
        self.procs: list = []
        self.cleanups: list = []  # run first at teardown (stop client threads)
        self.standins: dict[str, Standin] = {}
        self.standins.update(start_standins(tmp, ids, pchannels=4, env={"RUST_LOG": "debug"}, procs=self.procs))
        replicate(self.standins[ids[0]], *[self.standins[c] for c in ids[1:]], tokens={c: SECRET for c in ids})
        in_config = list(in_config or ids)
        clusters = [self.entry(cid, "primary" if cid == ids[0] else "standby") for cid in in_config]
        env = {"RUST_LOG": "debug", "NO_COLOR": "1", "SWITCHYARD_ADMIN_TOKEN": ADMIN_TOKEN,
               "SWITCHYARD_SHUTDOWN_GRACE": f"{GRACE:g}s", **(sy_env or {})}
        admin = {"token": "${SWITCHYARD_ADMIN_TOKEN}", **sections.pop("admin", {})}
        self.sy = Switchyard(tmp, clusters, env=env, admin=admin, **sections)
        self.procs.append(self.sy)
        self.sy.wait_ready()
        self.raw = Raw(self.sy.addr)

    def prime(self) -> None:
        """A write through switchyard (to a collection of its own, made on A directly), applied by
        every standby in the config: until switchyard has seen a standby apply a write it saw
        acknowledged, the standby's lag is unknown and it serves no reads."""
        a = self["cluster-a"]
        make_collection(a, rows=0, name="warm")
        call_ok(self.raw, "Insert", insert_request([1], collection="warm"))
        wait_until(lambda: all(c["serves_reads"] for c in self.admin("GET", "/v1/clusters").json()
                               if c["role"] == "standby"), timeout=20, what="standbys known caught up")

    def entry(self, cid: str, role: str = "standby") -> dict:
        return Switchyard.cluster(cid, self.standins[cid].uri, role, token=SECRET)

    def __getitem__(self, cid: str) -> Standin:
        return self.standins[cid]

    @property
    def admin_url(self) -> str:
        return f"http://{self.sy.admin_addr}"

    def admin(self, method: str, path: str, token: Optional[str] = ADMIN_TOKEN, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, self.admin_url + path, headers=headers, timeout=15, **kw)

    def topology(self) -> dict:
        r = self.admin("GET", "/v1/topology")
        assert r.status_code == 200, r.text
        return r.json()

    def scrape(self) -> "Metrics":
        r = self.admin("GET", "/metrics", token=None)
        assert r.status_code == 200, r.text
        return Metrics(r.text)

    def switchover(self, target: str, timeout: float = 60.0) -> dict:
        r = self.admin("POST", "/v1/switchover", json={"target": target})
        assert r.status_code == 202, r.text
        return self.wait_job(r.json()["job_id"], timeout)

    def wait_job(self, job_id: str, timeout: float = 60.0) -> dict:
        def done():
            j = self.admin("GET", f"/v1/jobs/{job_id}").json()
            return j if j["state"] != "running" else None
        return wait_until(done, timeout=timeout, interval=0.1, what=f"job {job_id}")

    def counters(self) -> dict:
        return {cid: s.state()["counters"] for cid, s in self.standins.items() if s.alive()}

    def stop(self, failed: bool = False) -> None:
        for fn in self.cleanups:
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                print(f"teardown: {e}")
        try:
            self.raw.close()
        except Exception:  # noqa: BLE001
            pass
        stop_all(self.procs, failed, tail=60)


@pytest.fixture
def bed_factory(tmp_path, request):
    made: list[OpsBed] = []

    def make(**kw) -> OpsBed:
        b = OpsBed(tmp_path, **kw)
        made.append(b)
        return b

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for b in made:
        b.stop(failed)


# --- Prometheus text --------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """Samples of one scrape: ``(name, labels) -> value``."""

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict, float]] = []
        self.types: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, typ = line.split()
                self.types[name] = typ
                continue
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            assert m, f"unparseable metrics line: {line!r}"
            labels = dict(_LABEL.findall(m.group(2) or ""))
            self.samples.append((m.group(1), labels, float(m.group(3))))

    def all(self, name: str, **labels) -> list[tuple[dict, float]]:
        return [(l, v) for n, l, v in self.samples if n == name and all(l.get(k) == w for k, w in labels.items())]

    def one(self, name: str, **labels) -> float:
        found = self.all(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples\n{self.text}"
        return found[0][1]

    def get(self, name: str, default: float = 0.0, **labels) -> float:
        """The sum of the matching samples, ``default`` when there is none."""
        found = self.all(name, **labels)
        return sum(v for _, v in found) if found else default

    def requests(self) -> dict:
        return {(l["kind"], l["cluster"], l["code"]): v for l, v in self.all("switchyard_requests_total")}


def delta(after: dict, before: dict) -> dict:
    keys = set(after) | set(before)
    d = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in d.items() if v}


# --- raw calls --------------------------------------------------------------------------------


def kv(k, v):
    _, common_pb2 = pb()
    return common_pb2.KeyValuePair(key=k, value=str(v))


def insert_request(ids: list[int], collection: str = COLL):
    from pymilvus.grpc_gen import milvus_pb2, schema_pb2

    vec = [float(x) for i in ids for x in (i, 0.0, 0.0, 1.0)]
    fields = [
        schema_pb2.FieldData(type=schema_pb2.DataType.Int64, field_name="id",
                             scalars=schema_pb2.ScalarField(long_data=schema_pb2.LongArray(data=ids))),
        schema_pb2.FieldData(type=schema_pb2.DataType.FloatVector, field_name="vec",
                             vectors=schema_pb2.VectorField(dim=DIM, float_vector=schema_pb2.FloatArray(data=vec))),
    ]
    return milvus_pb2.InsertRequest(collection_name=collection, fields_data=fields, num_rows=len(ids))


def search_request(collection: str = COLL, level: str = "Bounded"):
    milvus_pb2, common_pb2 = pb()
    vector = [1.0, 0.0, 0.0, 1.0]
    ph = common_pb2.PlaceholderGroup(placeholders=[common_pb2.PlaceholderValue(
        tag="$0", type=common_pb2.PlaceholderType.FloatVector, values=[struct.pack(f"<{DIM}f", *vector)])])
    return milvus_pb2.SearchRequest(
        collection_name=collection, dsl="", dsl_type=common_pb2.DslType.BoolExprV1,
        placeholder_group=ph.SerializeToString(), nq=1, output_fields=["id"],
        search_params=[kv("anns_field", "vec"), kv("topk", 3), kv("metric_type", "L2"), kv("params", "{}"),
                       kv("round_decimal", -1)],
        consistency_level=common_pb2.ConsistencyLevel.Value(level),
    )


def call_ok(raw: Raw, method: str, req, metadata=(), timeout: float = 15.0):
    """A call that must succeed with an OK status in its body too; returns the response."""
    code, details, resp = raw.call(method, req, metadata=metadata, timeout=timeout, token=SECRET)
    assert code == grpc.StatusCode.OK, (method, code, details)
    st = getattr(resp, "status", None)
    if st is not None and hasattr(st, "code"):
        assert st.code == 0 and st.error_code == 0, (method, st)
    return resp


def insert(raw: Raw, ids: list[int]):
    resp = call_ok(raw, "Insert", insert_request(ids))
    assert resp.insert_cnt == len(ids), resp
    return resp


def search(raw: Raw, **kw):
    return call_ok(raw, "Search", search_request(**kw))


def make_collection(standin: Standin, rows: int = 10, name: str = COLL) -> None:
    """A Bounded collection with ``rows`` rows, made on the cluster directly (not through switchyard)."""
    from pymilvus import DataType, MilvusClient

    c = standin.client(token=SECRET)
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
    ip = MilvusClient.prepare_index_params()
    ip.add_index("vec", index_type="FLAT", metric_type="L2")
    c.create_collection(name, schema=s, index_params=ip, consistency_level="Bounded")
    if rows:
        c.insert(name, [{"id": i, "vec": [float(i), 0.0, 0.0, 1.0]} for i in range(rows)])


def wait_rows(standin: Standin, rows: int, name: str = COLL, timeout: float = 30.0) -> None:
    c = standin.client(token=SECRET)
    wait_until(lambda: c.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == rows,
               timeout=timeout, what=f"{standin.cluster_id} to hold {rows} rows of {name}")


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# --- 1. metrics -------------------------------------------------------------------------------


def test_metrics_after_a_scripted_workload_with_one_switchover(bed_factory):
    bed = bed_factory()
    a, b = bed["cluster-a"], bed["cluster-b"]
    milvus_pb2, common_pb2 = pb()
    make_collection(a, rows=10)
    wait_rows(b, 10)
    bed.prime()
    raw = bed.raw
    epoch0 = bed.topology()["epoch"]
    m0 = bed.scrape()
    r0 = m0.requests()
    hold0 = m0.one("switchyard_hold_duration_seconds_count")
    assert m0.one("switchyard_held_writes") == 0
    assert m0.one("switchyard_routing_epoch") == epoch0
    next_id = iter(range(1000, 10_000))

    # Phase 1: A is the primary, B the standby.
    W1, R1, C1, M1 = 5, 6, 3, 2
    for _ in range(W1):
        insert(raw, [next(next_id), next(next_id)])
    for _ in range(R1):
        search(raw)
    for _ in range(C1):
        call_ok(raw, "GetVersion", milvus_pb2.GetVersionRequest())
    for _ in range(M1):
        call_ok(raw, "DescribeCollection", milvus_pb2.DescribeCollectionRequest(collection_name=COLL))
    call_ok(raw, "Search", search_request(), metadata=[("x-switchyard-cluster", "cluster-a")])  # named read
    code, details, _ = raw.call("Search", search_request(), metadata=[("x-switchyard-cluster", "nope")])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("switchyard:"), (code, details)
    code, details, _ = raw.call("UpdateReplicateConfiguration", milvus_pb2.UpdateReplicateConfigurationRequest())
    assert code == grpc.StatusCode.PERMISSION_DENIED and details.startswith("switchyard:"), (code, details)

    # Writes held during an operator's pause: the gauge counts them, the histogram their waits.
    r = bed.admin("POST", "/v1/writes/pause", json={"timeout": "30s"})
    assert r.status_code == 200 and r.json()["state"] == "HOLDING", r.text
    held = [in_thread(insert, Raw(bed.sy.addr), [next(next_id)]) for _ in range(2)]
    wait_until(lambda: bed.scrape().one("switchyard_held_writes") == 2, timeout=10, what="2 held writes")
    assert bed.topology()["state"] == "HOLDING"
    r = bed.admin("POST", "/v1/writes/resume")
    assert r.status_code == 200, r.text
    for t, out in held:
        t.join(15)
        assert "error" not in out and "value" in out, out
    wait_until(lambda: bed.scrape().one("switchyard_held_writes") == 0, timeout=10, what="no held writes")

    # The switchover, with two writes held while it runs (A's log is paused, so B's promotion
    # waits for A's fence until it resumes).
    a.control("/fault/replication/pause")
    r = bed.admin("POST", "/v1/switchover", json={"target": "cluster-b"})
    assert r.status_code == 202, r.text
    wait_until(lambda: bed.topology()["state"] == "SWITCHING", timeout=10, what="SWITCHING")
    held = [in_thread(insert, Raw(bed.sy.addr), [next(next_id)]) for _ in range(2)]
    wait_until(lambda: bed.scrape().one("switchyard_held_writes") == 2, timeout=10, what="2 writes held by the job")
    assert bed.scrape().one("switchyard_state", state="SWITCHING") == 1
    a.control("/fault/replication/resume")
    job = bed.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded" and job["held_writes"] == 2, job
    for t, out in held:
        t.join(15)
        assert "error" not in out and "value" in out, out
    topo = bed.topology()
    assert topo["primary"] == "cluster-b" and topo["epoch"] == epoch0 + 1, topo

    # Phase 2: B is the primary, A the standby.
    W2, R2, C2, M2 = 4, 5, 2, 1
    before = bed.counters()
    for _ in range(W2):
        insert(raw, [next(next_id)])
    # A serves reads again once switchyard has seen it apply a write of the new primary's.
    wait_until(lambda: clusters_view(bed)["cluster-a"]["serves_reads"], timeout=10, what="cluster-a serving reads")
    for _ in range(R2):
        search(raw)
    for _ in range(C2):
        call_ok(raw, "GetVersion", milvus_pb2.GetVersionRequest())
    for _ in range(M2):
        call_ok(raw, "DescribeCollection", milvus_pb2.DescribeCollectionRequest(collection_name=COLL))
    served = bed.counters()

    expected = {
        ("write", "cluster-a", "OK"): W1 + 2,
        ("read", "cluster-b", "OK"): R1 + M2,
        ("control", "cluster-a", "OK"): C1,
        ("read", "cluster-a", "OK"): M1 + 1 + R2,
        ("read", "switchyard", "INVALID_ARGUMENT"): 1,
        ("control", "switchyard", "PERMISSION_DENIED"): 1,
        ("write", "cluster-b", "OK"): W2 + 2,
        ("control", "cluster-b", "OK"): C2,
    }
    # Outcomes are recorded as the answer's last frame passes: poll briefly.
    wait_until(lambda: delta(bed.scrape().requests(), r0) == expected, timeout=5,
               what=f"requests_total delta == {expected}")
    # The stand-ins agree on where the phase-2 data reads went.
    assert served["cluster-a"]["reads_data"] - before["cluster-a"]["reads_data"] == R2
    assert served["cluster-b"]["reads_data"] - before["cluster-b"]["reads_data"] == 0
    assert served["cluster-b"]["writes_served"] - before["cluster-b"]["writes_served"] == W2

    m = bed.scrape()
    assert m.types.get("switchyard_requests_total") == "counter"
    assert m.types.get("switchyard_request_duration_seconds") == "histogram"
    # Histogram: _count per kind and cluster equals its requests; buckets cumulative, +Inf last.
    req = m.requests()
    for kind in ("write", "read", "control"):
        for cluster in ("cluster-a", "cluster-b"):
            n = sum(v for (k, c, _), v in req.items() if k == kind and c == cluster)
            count = m.get("switchyard_request_duration_seconds_count", kind=kind, cluster=cluster)
            assert count == n, (kind, cluster, count, n)
            if not n:
                continue
            buckets = m.all("switchyard_request_duration_seconds_bucket", kind=kind, cluster=cluster)
            les = [float(l["le"]) for l, _ in buckets]
            values = [v for _, v in buckets]
            assert les == sorted(les) and les[-1] == float("inf"), les
            assert values == sorted(values) and values[-1] == n, values
            assert m.one("switchyard_request_duration_seconds_sum", kind=kind, cluster=cluster) > 0

    assert m.types.get("switchyard_held_writes") == "gauge"
    assert m.one("switchyard_held_writes") == 0
    assert m.types.get("switchyard_hold_duration_seconds") == "histogram"
    assert m.one("switchyard_hold_duration_seconds_count") - hold0 == 2 + 2
    hb = [v for _, v in m.all("switchyard_hold_duration_seconds_bucket")]
    assert hb == sorted(hb) and hb[-1] == m.one("switchyard_hold_duration_seconds_count"), hb

    assert m.types.get("switchyard_role_changes_total") == "counter"
    for kind in ("switchover", "failover", "discovered"):
        for result in ("succeeded", "failed", "rolled_back"):
            want = 1 if (kind, result) == ("switchover", "succeeded") else 0
            assert m.one("switchyard_role_changes_total", kind=kind, result=result) == want, (kind, result)

    assert m.types.get("switchyard_routing_epoch") == "gauge"
    assert m.one("switchyard_routing_epoch") == topo["epoch"] == epoch0 + 1

    assert m.types.get("switchyard_cluster_up") == "gauge"
    assert m.one("switchyard_cluster_up", cluster="cluster-a") == 1
    assert m.one("switchyard_cluster_up", cluster="cluster-b") == 1
    assert m.all("switchyard_cluster_up", cluster="cluster-b")[0][0].get("role", "primary") == "primary"

    # Lag: 0 for the primary; a standby whose replication is paused while writes go on lags.
    assert m.types.get("switchyard_cluster_lag_seconds") == "gauge"
    assert m.one("switchyard_cluster_lag_seconds", cluster="cluster-b") == 0
    wait_until(lambda: bed.scrape().one("switchyard_cluster_lag_seconds", cluster="cluster-a") == 0, timeout=10,
               what="cluster-a caught up")
    b.control("/fault/replication/pause")
    insert(raw, [next(next_id)])
    lagging = wait_until(lambda: (v := bed.scrape().get("switchyard_cluster_lag_seconds", cluster="cluster-a")) >= 0.5
                         and v, timeout=10, what="cluster-a lag to grow")
    assert 0.5 <= lagging < 30
    b.control("/fault/replication/resume")
    wait_until(lambda: bed.scrape().one("switchyard_cluster_lag_seconds", cluster="cluster-a") == 0, timeout=15,
               what="cluster-a lag back to 0")

    # Up: a downed cluster is 0, and 1 again once it is back.
    a.control("/fault/down")
    wait_until(lambda: bed.scrape().one("switchyard_cluster_up", cluster="cluster-a") == 0, timeout=10,
               what="cluster-a down")
    assert bed.scrape().one("switchyard_cluster_up", cluster="cluster-b") == 1
    a.control("/fault/up")
    wait_until(lambda: bed.scrape().one("switchyard_cluster_up", cluster="cluster-a") == 1, timeout=10,
               what="cluster-a up again")


# --- 2. hot reload ----------------------------------------------------------------------------


class Watch:
    """Every connectivity state a grpcio channel goes through once subscribed."""

    def __init__(self, channel):
        self.states: list = []
        self.channel = channel
        channel.subscribe(self.states.append, try_to_connect=False)

    def close(self) -> None:
        # A channel still subscribed can deadlock grpcio when it is garbage-collected.
        self.channel.unsubscribe(self.states.append)

    def stayed_ready(self) -> bool:
        return bool(self.states) and all(s == grpc.ChannelConnectivity.READY for s in self.states)


class Searcher:
    """Searches through one pymilvus client in a loop until stopped; counts answers and errors."""

    def __init__(self, client):
        self.client = client
        self.ok = 0
        self.errors: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                res = self.client.search(COLL, data=[[1.0, 0.0, 0.0, 1.0]], limit=3, consistency_level="Bounded",
                                         timeout=10)
                assert len(res[0]) == 3, res
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(e))
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(20)


def ctl(bed: OpsBed, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWITCHYARD_ADMIN_TOKEN": ADMIN_TOKEN}
    return subprocess.run([str(bin_dir() / "switchyard"), "ctl", "--admin", bed.admin_url, *args],
                          capture_output=True, text=True, timeout=30, env=env)


def clusters_view(bed: OpsBed) -> dict:
    r = bed.admin("GET", "/v1/clusters")
    assert r.status_code == 200, r.text
    return {c["id"]: c for c in r.json()}


def test_reload_adds_a_standby_live_and_refuses_bad_changes(bed_factory):
    from pymilvus import MilvusClient

    bed = bed_factory(ids=("cluster-a", "cluster-b", "cluster-c"), in_config=("cluster-a", "cluster-b"))
    a, c = bed["cluster-a"], bed["cluster-c"]
    sy = bed.sy
    make_collection(a, rows=20)
    # One write through switchyard: written straight to A, the rows above are invisible to it,
    # and a standby serves reads only once switchyard has seen it apply a write it saw
    # acknowledged (unknown lag is unsafe).
    insert(bed.raw, [20])
    for s in (bed["cluster-b"], c):
        wait_rows(s, 21)
    assert set(clusters_view(bed)) == {"cluster-a", "cluster-b"}

    client = MilvusClient(uri=sy.uri, token=SECRET)
    searcher = Searcher(client)
    bed.cleanups += [searcher.finish, client.close]
    pm_watch = Watch(client._handler._channel)
    search(bed.raw)  # the raw connection is up before the reloads
    raw_watch = Watch(bed.raw.channel)
    bed.cleanups[:0] = [pm_watch.close, raw_watch.close]
    wait_until(lambda: searcher.ok >= 3, timeout=15, what="searches through the client")

    def c_reads() -> int:
        return c.state()["counters"]["reads_data"]

    def c_serves(expected: bool) -> None:
        wait_until(lambda: clusters_view(bed).get("cluster-c", {}).get("serves_reads", False) == expected,
                   timeout=15, what=f"cluster-c serves_reads == {expected}")

    def c_takes_reads() -> None:
        start = c_reads()
        wait_until(lambda: c_reads() > start + 2, timeout=15, what="cluster-c to serve reads through switchyard")

    # SIGHUP: cluster-c added.
    epoch0 = bed.topology()["epoch"]
    unserved = c_reads()
    time.sleep(0.3)
    assert c_reads() == unserved  # not in the config: switchyard sends it nothing
    sy.clusters.append(bed.entry("cluster-c"))
    sy.write_config()
    os.kill(sy.pid, signal.SIGHUP)
    wait_until(lambda: "cluster-c" in bed.topology()["standbys"], timeout=10, what="cluster-c in the topology")
    assert bed.topology()["epoch"] == epoch0 + 1
    c_serves(True)
    c_takes_reads()
    assert sy.log_has("SIGHUP: config reloaded")

    # POST /v1/reload: cluster-c removed; it serves nothing more.
    sy.clusters.pop()
    sy.write_config()
    r = bed.admin("POST", "/v1/reload")
    assert r.status_code == 200 and r.json()["epoch"] == epoch0 + 2, r.text
    assert "cluster-c" not in clusters_view(bed)
    time.sleep(0.3)  # reads already routed to cluster-c finish
    still = c_reads()
    for _ in range(10):
        search(bed.raw)
    assert c_reads() == still

    # switchyard ctl reload: cluster-c back.
    sy.clusters.append(bed.entry("cluster-c"))
    sy.write_config()
    p = ctl(bed, "reload")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert json.loads(p.stdout)["epoch"] == epoch0 + 3, p.stdout
    c_serves(True)
    c_takes_reads()

    good = sy.config_text()
    topo, view = bed.topology(), clusters_view(bed)

    def unchanged() -> None:
        assert bed.topology()["epoch"] == topo["epoch"] and bed.topology()["primary"] == "cluster-a"
        now = clusters_view(bed)
        assert set(now) == set(view) and all(now[k]["uri"] == view[k]["uri"] for k in now), now

    # Invalid: a bad duration and a bad uri at once; every error, nothing changed.
    bad = good.replace('interval = "200ms"', 'interval = "fast"').replace(f'uri = "{c.uri}"', 'uri = "not a uri"')
    assert bad != good and "fast" in bad and "not a uri" in bad
    sy.config_path.write_text(bad)
    r = bed.admin("POST", "/v1/reload")
    assert r.status_code == 400, r.text
    errors = r.json()["errors"]
    assert len(errors) == 2, errors
    assert any(e.startswith("health.interval") and "fast" in e for e in errors), errors
    assert any(e.startswith("clusters[2].uri") and "not a uri" in e for e in errors), errors
    unchanged()
    p = ctl(bed, "reload")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "health.interval" in p.stderr and "clusters[2].uri" in p.stderr, p.stderr
    os.kill(sy.pid, signal.SIGHUP)
    wait_until(lambda: sy.log_has("SIGHUP: config not reloaded"), timeout=10, what="SIGHUP refusal in the log")
    unchanged()

    # The listener address cannot change live.
    moved = good.replace('address = "127.0.0.1:0"', 'address = "127.0.0.1:1"', 1)
    assert moved != good
    sy.config_path.write_text(moved)
    r = bed.admin("POST", "/v1/reload")
    assert r.status_code == 400, r.text
    assert any("listener.address cannot change live" in e for e in r.json()["errors"]), r.text
    unchanged()

    # The current primary cannot be removed (cluster-b named primary so the file itself is valid).
    entries = [dict(e) for e in sy.clusters if e["id"] != "cluster-a"]
    entries[0]["role"] = "primary"
    saved = sy.clusters
    sy.clusters = entries
    sy.write_config()
    sy.clusters = saved
    r = bed.admin("POST", "/v1/reload")
    assert r.status_code == 400, r.text
    assert any("cluster-a is the current primary and cannot be removed" in e for e in r.json()["errors"]), r.text
    unchanged()

    # The good file again: nothing to change.
    sy.write_config()
    r = bed.admin("POST", "/v1/reload")
    assert r.status_code == 200 and r.json()["epoch"] == topo["epoch"], r.text

    # While a switchover runs, cluster changes wait: removing its target is refused, and so is
    # adding or removing any other cluster; other settings still change.
    a.control("/fault/replication/pause")  # B's promotion waits for A's fence: the job runs on
    bed.cleanups.append(lambda: a.control("/fault/replication/resume"))
    r = bed.admin("POST", "/v1/switchover", json={"target": "cluster-b"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    wait_until(lambda: bed.topology()["state"] == "SWITCHING", timeout=10, what="SWITCHING")
    for drop in ("cluster-b", "cluster-c"):
        sy.clusters = [e for e in saved if e["id"] != drop]
        sy.write_config()
        sy.clusters = saved
        r = bed.admin("POST", "/v1/reload")
        assert r.status_code == 400, r.text
        assert any("switchover" in e and "running" in e for e in r.json()["errors"]), r.text
    sy.config_path.write_text(good.replace('max_read_lag = "10s"', 'max_read_lag = "20s"') if 'max_read_lag' in good
                              else good + '\n[routing]\nmax_read_lag = "20s"\n')
    r = bed.admin("POST", "/v1/reload")
    assert r.status_code == 200, r.text
    sy.write_config()
    a.control("/fault/replication/resume")
    job = bed.wait_job(job_id)
    assert job["state"] == "succeeded", job
    topo = bed.topology()
    assert topo["primary"] == "cluster-b" and set(topo["standbys"]) == {"cluster-a", "cluster-c"}, topo
    r = bed.admin("POST", "/v1/reload")
    assert r.status_code == 200, r.text

    # One client, one connection, through all of it.
    for _ in range(5):
        search(bed.raw)
    searcher.finish()
    assert searcher.errors == [], searcher.errors[:5]
    assert searcher.ok > 10
    assert pm_watch.stayed_ready(), pm_watch.states
    assert raw_watch.stayed_ready(), raw_watch.states
    client.close()


# --- 3. graceful shutdown ---------------------------------------------------------------------

# What a client sees when its call was never accepted because the listener had closed.
NOT_ACCEPTED = re.compile(r"failed to connect|Connection refused|connections to all backends failing", re.I)
# What it must never see: a call cut off mid-way.
CUT_OFF = re.compile(r"reset|Socket closed|Stream removed|RST_STREAM|Broken pipe|EOF|GOAWAY", re.I)


class Call:
    __slots__ = ("kind", "t0", "t1", "code", "details")

    def __init__(self, kind, t0, t1, code, details):
        self.kind, self.t0, self.t1, self.code, self.details = kind, t0, t1, code, details

    def __repr__(self) -> str:
        return f"Call({self.kind}, {self.t0:.3f}..{self.t1:.3f}, {self.code}, {self.details!r})"


class Load:
    """Client threads, each on its own connection, calling in a loop and recording every call."""

    def __init__(self, addr: str, searchers: int = 2, inserters: int = 2, timeout: float = 20.0):
        self.addr = addr
        self.timeout = timeout
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=("search", i), daemon=True) for i in range(searchers)]
        self.threads += [threading.Thread(target=self._run, args=("insert", i), daemon=True) for i in range(inserters)]
        for t in self.threads:
            t.start()

    def _run(self, kind: str, n: int) -> None:
        raw = Raw(self.addr)
        ids = iter(range(100_000 * (n + 1) + (50_000 if kind == "insert" else 0), 10**9))
        try:
            while not self.stop.is_set():
                req = search_request() if kind == "search" else insert_request([next(ids)])
                t0 = time.monotonic()
                code, details, resp = raw.call("Search" if kind == "search" else "Insert", req, timeout=self.timeout,
                                               token=SECRET)
                t1 = time.monotonic()
                if code == grpc.StatusCode.OK and resp.status.code != 0:
                    code, details = "STATUS", f"{resp.status.code}: {resp.status.reason}"
                with self.lock:
                    self.calls.append(Call(kind, t0, t1, code, details))
                if code != grpc.StatusCode.OK:
                    time.sleep(0.05)
        finally:
            raw.close()

    def ok(self) -> int:
        with self.lock:
            return sum(1 for c in self.calls if c.code == grpc.StatusCode.OK)

    def finish(self, timeout: float = 30.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        hung = [t for t in self.threads if t.is_alive()]
        assert not hung, f"{len(hung)} client threads still waiting for an answer"


def sigterm_and_watch(bed: OpsBed) -> dict:
    """SIGTERM, then poll ``/readyz`` until the admin listener is gone; wait for the exit."""
    popen = bed.sy.proc.popen
    t_sig = time.monotonic()
    popen.send_signal(signal.SIGTERM)
    ready: list[tuple[float, int]] = []
    while popen.poll() is None and time.monotonic() - t_sig < GRACE + 5:
        try:
            r = requests.get(bed.admin_url + "/readyz", timeout=1)
            ready.append((time.monotonic() - t_sig, r.status_code))
        except requests.RequestException:
            break
        time.sleep(0.01)
    code = popen.wait(timeout=GRACE + 10)
    exit_s = time.monotonic() - t_sig
    return {"t_sig": t_sig, "exit_s": exit_s, "code": code, "ready": ready}


def summary(calls: list[Call], t_sig: float) -> str:
    ok = sum(1 for c in calls if c.code == grpc.StatusCode.OK)
    across = sum(1 for c in calls if c.t0 < t_sig < c.t1)
    failed = sorted({f"{c.code}: {c.details[:70]}" for c in calls if c.code != grpc.StatusCode.OK})
    return f"{len(calls)} calls, {ok} ok, {across} in flight at the signal; failures: {failed}"


def assert_readyz_turned(ready: list) -> None:
    codes = [c for _, c in ready]
    assert 503 in codes, f"/readyz never said 503 during shutdown: {ready}"
    first = codes.index(503)
    assert all(c == 503 for c in codes[first:]), ready
    assert all(t < 0.2 for t, c in ready[:first]), f"/readyz still 200 after the signal: {ready}"


def assert_every_call_answered(calls: list[Call], t_sig: float) -> None:
    for c in calls:
        if c.code == grpc.StatusCode.OK:
            continue
        assert c.code != grpc.StatusCode.DEADLINE_EXCEEDED, f"a call hung: {c}"
        assert not CUT_OFF.search(c.details or ""), f"a call was cut off: {c}"
        if c.details.startswith("switchyard:"):
            continue
        # Otherwise it was never accepted: sent once the listener had closed.
        assert NOT_ACCEPTED.search(c.details or ""), f"unexpected failure: {c}"
        assert c.t1 > t_sig, f"failed before the signal: {c}"


def test_sigterm_under_steady_load_answers_every_call_and_exits_within_grace(bed_factory):
    bed = bed_factory()
    a, b = bed["cluster-a"], bed["cluster-b"]
    make_collection(a, rows=10)
    wait_rows(b, 10)
    for s in (a, b):  # every call takes a while, so some are in flight at the signal
        s.control("/fault/latency", ms=250)
    load = Load(bed.sy.addr, searchers=3, inserters=3)
    bed.cleanups.append(load.stop.set)
    wait_until(lambda: load.ok() >= 20, timeout=30, what="steady load")

    out = sigterm_and_watch(bed)
    time.sleep(0.5)  # the clients keep calling a closed endpoint for a moment
    load.finish()
    t_sig = out["t_sig"]
    calls = load.calls
    print(f"\nsteady load: exit {out['exit_s']:.3f}s after SIGTERM, code {out['code']}; /readyz {out['ready'][:3]}..; "
          f"{summary(calls, t_sig)}")

    assert out["code"] == 0, bed.sy.tail()
    assert out["exit_s"] < GRACE, out
    assert_readyz_turned(out["ready"])
    assert_every_call_answered(calls, t_sig)
    # Calls in flight at the signal were finished, not dropped.
    across = [c for c in calls if c.t0 < t_sig < c.t1]
    assert across and all(c.code == grpc.StatusCode.OK for c in across), across
    assert {c.kind for c in across} == {"search", "insert"}, across
    # Everything sent before the signal was answered by a cluster.
    before = [c for c in calls if c.t0 < t_sig - 0.05]
    assert all(c.code == grpc.StatusCode.OK for c in before), [c for c in before if c.code != grpc.StatusCode.OK]
    assert bed.sy.log_has("shutdown: readiness off")


def test_sigterm_during_a_held_switchover_fails_held_writes_clearly_within_grace(bed_factory):
    bed = bed_factory()
    a, b = bed["cluster-a"], bed["cluster-b"]
    make_collection(a, rows=10)
    wait_rows(b, 10)
    # A's log never reaches B, so B's promotion waits for A's fence and the writes stay held.
    a.control("/fault/replication/pause")
    bed.cleanups.append(lambda: a.control("/fault/replication/resume"))
    r = bed.admin("POST", "/v1/switchover", json={"target": "cluster-b"})
    assert r.status_code == 202, r.text
    wait_until(lambda: bed.topology()["state"] == "SWITCHING", timeout=10, what="SWITCHING")

    reads = Load(bed.sy.addr, searchers=2, inserters=0)
    bed.cleanups.append(reads.stop.set)
    writers = [in_thread(lambda: (time.monotonic(), Raw(bed.sy.addr).call(
        "Insert", insert_request([900_000 + i]), timeout=30, token=SECRET), time.monotonic())) for i in range(3)]
    wait_until(lambda: bed.scrape().one("switchyard_held_writes") == 3, timeout=10, what="3 held writes")
    wait_until(lambda: reads.ok() >= 5, timeout=15, what="reads during the hold")
    job = bed.admin("GET", "/v1/jobs").json()[-1]
    assert job["state"] == "running", job

    out = sigterm_and_watch(bed)
    t_sig = out["t_sig"]
    for t, _ in writers:
        t.join(GRACE + 10)
    time.sleep(0.3)
    reads.finish()
    print(f"\nheld switchover: exit {out['exit_s']:.3f}s after SIGTERM, code {out['code']}; "
          f"/readyz {out['ready'][:3]}..; reads: {summary(reads.calls, t_sig)}")

    assert out["exit_s"] < GRACE, out
    assert_readyz_turned(out["ready"])
    for t, res in writers:
        assert not t.is_alive(), "a held write never got an answer"
        assert "error" not in res, res
        _t0, (code, details, resp), t1 = res["value"]
        reason = rate_limited(code, details, resp)  # not sent: safe for the SDK to retry elsewhere
        assert reason.startswith("switchyard: shutting down") and "not sent" in reason, reason
        assert t1 - t_sig < GRACE, (t1 - t_sig)
    assert_every_call_answered(reads.calls, t_sig)
    assert all(c.code == grpc.StatusCode.OK for c in reads.calls if c.t0 < t_sig - 0.05)


def test_sigterm_during_an_operator_pause_sends_the_held_writes_to_the_primary(bed_factory):
    bed = bed_factory()
    a, b = bed["cluster-a"], bed["cluster-b"]
    make_collection(a, rows=10)
    wait_rows(b, 10)
    r = bed.admin("POST", "/v1/writes/pause", json={"timeout": "10m"})
    assert r.status_code == 200, r.text
    before = a.state()["counters"]["writes_served"]
    writers = [in_thread(lambda i=i: Raw(bed.sy.addr).call("Insert", insert_request([800_000 + i]), timeout=30,
                                                            token=SECRET)) for i in range(3)]
    wait_until(lambda: bed.scrape().one("switchyard_held_writes") == 3, timeout=10, what="3 held writes")
    out = sigterm_and_watch(bed)
    for t, _ in writers:
        t.join(GRACE + 10)
    print(f"\noperator pause: exit {out['exit_s']:.3f}s after SIGTERM, code {out['code']}")
    assert out["code"] == 0 and out["exit_s"] < 1.5, out
    for t, res in writers:
        assert not t.is_alive() and "value" in res, res
        code, details, resp = res["value"]
        assert code == grpc.StatusCode.OK and resp.status.code == 0 and resp.insert_cnt == 1, (code, details)
    assert a.state()["counters"]["writes_served"] - before == 3


def test_sigterm_with_calls_stuck_on_frozen_clusters_answers_them_before_the_grace_ends(bed_factory):
    bed = bed_factory()
    a, b = bed["cluster-a"], bed["cluster-b"]
    make_collection(a, rows=10)
    wait_rows(b, 10)
    bed.prime()
    search(bed.raw)
    for s in (a, b):  # both clusters stop answering: a write and a read hang on them
        s.control("/fault/freeze")
        bed.cleanups.append(lambda s=s: s.control("/fault/thaw"))

    def timed(method, req):
        raw = Raw(bed.sy.addr)
        try:
            return raw.call(method, req, timeout=30, token=SECRET) + (time.monotonic(),)
        finally:
            raw.close()

    stuck = [in_thread(timed, "Insert", insert_request([777])), in_thread(timed, "Search", search_request())]
    wait_until(lambda: [c["in_flight"] for c in clusters_view(bed).values()] == [1, 1], timeout=10,
               what="one call in flight on each cluster")
    out = sigterm_and_watch(bed)
    for t, _ in stuck:
        t.join(GRACE + 10)
    print(f"\nfrozen clusters: exit {out['exit_s']:.3f}s after SIGTERM, code {out['code']}; "
          f"answers {[r.get('value', r.get('error')) for _, r in stuck]}")
    assert out["exit_s"] < GRACE, out
    assert_readyz_turned(out["ready"])
    (_, w), (_, r) = stuck
    code, details, _, t1 = w["value"]
    # An Insert that may have been applied: DEADLINE_EXCEEDED, which no SDK resends blindly.
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and details.startswith("switchyard: shutting down"), details
    assert "may have been applied on cluster-a" in details, details
    assert t1 - out["t_sig"] < GRACE
    code, details, resp, t1 = r["value"]
    reason = rate_limited(code, details, resp)
    assert reason.startswith("switchyard: shutting down"), reason
    assert "safe to retry" in reason and "cluster-b" in reason, reason
    assert t1 - out["t_sig"] < GRACE


# --- 4. the SDKs' global-cluster topology -----------------------------------------------------

PM3_PARSE = """
import json, sys
from pymilvus.client import global_topology as g
t = g._parse_topology_response(json.loads(sys.stdin.read())["data"])
import pymilvus
print(json.dumps({"pymilvus": pymilvus.__version__, "version": t.version, "primary": t.primary.cluster_id,
                  "clusters": [[c.cluster_id, c.endpoint, c.capability, c.is_primary] for c in t.clusters]}))
"""


def test_pymilvus_global_topology_reads_the_endpoint_and_follows_a_switchover(bed_factory):
    try:
        from pymilvus.client import global_topology as gt
    except ImportError:
        gt = None
    pm3 = venv_pm3() / "bin" / "python"
    if gt is None and not pm3.exists():
        pytest.skip("neither pymilvus 2.6 (.venv) nor 3.x (.venv-pm3) has pymilvus.client.global_topology")
    bed = bed_factory(ids=("cluster-a", "cluster-b", "cluster-c"))
    url = bed.admin_url
    uris = {cid: s.uri for cid, s in bed.standins.items()}

    def check(primary: str) -> int:
        r = requests.get(url + "/global-cluster/topology", headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
        body = r.json()
        assert body["code"] == 0 and isinstance(body["data"]["version"], str), body
        epoch = bed.topology()["epoch"]
        views = []
        if gt is not None:
            t = gt._parse_topology_response(body["data"])
            # The SDK's own fetch: URL building, Authorization header, code check, parsing.
            fetched = gt.fetch_topology(url, SECRET)
            assert fetched == t, (fetched, t)
            views.append(("2.6", t.version, t.primary.cluster_id,
                          [[c.cluster_id, c.endpoint, c.capability, c.is_primary] for c in t.clusters]))
        if pm3.exists():
            p = subprocess.run([str(pm3), "-c", PM3_PARSE], input=r.text, capture_output=True, text=True, timeout=60)
            if p.returncode == 0:
                v = json.loads(p.stdout)
                views.append((v["pymilvus"], v["version"], v["primary"], v["clusters"]))
            elif "global_topology" not in p.stderr:
                raise AssertionError(p.stderr)
        assert views
        for _, version, prim, clusters in views:
            assert version == epoch, (version, epoch)
            assert prim == primary
            assert sorted(c[0] for c in clusters) == sorted(uris)
            for cid, endpoint, cap, is_primary in clusters:
                assert endpoint == uris[cid]
                assert cap == (3 if cid == primary else 1), clusters
                assert is_primary == (cid == primary)
        return epoch

    v1 = check("cluster-a")

    # The SDK's refresher sees the change: it adopts a topology only when the version grows.
    if gt is not None:
        seen: list = []
        refresher = gt.TopologyRefresher(url, SECRET, gt.fetch_topology(url, SECRET), refresh_interval=0.1,
                                         on_topology_change=seen.append)
        refresher.start()
        bed.cleanups.append(refresher.stop)
    job = bed.switchover("cluster-b")
    assert job["state"] == "succeeded", job
    v2 = check("cluster-b")
    assert v2 > v1
    if gt is not None:
        wait_until(lambda: refresher.get_topology().primary.cluster_id == "cluster-b", timeout=10,
                   what="the pymilvus refresher to adopt the new topology")
        assert seen and seen[-1].version == v2 and seen[-1].primary.endpoint == uris["cluster-b"]
        refresher.stop()

    # A force failover to C: B is fenced, A must be rebuilt; neither is offered to the SDKs.
    # While no cluster can take writes (B fenced, C not yet promoted), the endpoint says so
    # with a non-200 answer the SDK retries, never a topology without a primary (pymilvus
    # raises ValueError on those).
    c = bed["cluster-c"]
    c.control("/fault/latency", ms=400)  # the failover's calls to C take a while
    answers: list = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            r = requests.get(url + "/global-cluster/topology", timeout=10)
            answers.append((r.status_code, r.json()))
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    bed.cleanups.append(stop.set)
    r = bed.admin("POST", "/v1/failover", json={"target": "cluster-c"})
    assert r.status_code == 202, r.text
    job = bed.wait_job(r.json()["job_id"])
    stop.set()
    poller.join(10)
    c.control("/fault/latency", ms=0)
    assert job["state"] == "succeeded", job
    topo = bed.topology()
    assert topo["fenced"] == ["cluster-b"] and topo["rebuild"] == ["cluster-a"], topo
    for status, body in answers:
        if status == 200:
            caps = [cl["capability"] for cl in body["data"]["clusters"]]
            assert caps.count(3) == 1, body
        else:
            assert status == 503 and body["code"] != 0 and body["message"].startswith("switchyard:"), body
    assert any(status != 200 for status, _ in answers), "the failover's window without a primary was not seen"
    body = requests.get(url + "/global-cluster/topology", timeout=10).json()
    assert [(cl["clusterId"], cl["capability"]) for cl in body["data"]["clusters"]] == [("cluster-c", 3)], body
    v3 = int(body["data"]["version"])
    assert v3 > v2 and v3 == topo["epoch"]
    if gt is not None:
        t = gt.fetch_topology(url, SECRET)
        assert t.primary.cluster_id == "cluster-c" and t.version == v3

    # Rebuilt as standbys of C (a stand-in restarted without state stands for a wiped and
    # restored cluster; switchyard refuses to readmit one that still names another primary)
    # and readmitted, they are standbys again (readable).
    for cid in ("cluster-a", "cluster-b"):
        bed[cid].restart()
    replicate(c, bed["cluster-a"], bed["cluster-b"], tokens={cid: SECRET for cid in bed.standins})
    for cid in ("cluster-a", "cluster-b"):
        r = bed.admin("POST", f"/v1/clusters/{cid}/readmit")
        assert r.status_code == 200, r.text
    body = requests.get(url + "/global-cluster/topology", timeout=10).json()
    assert sorted((cl["clusterId"], cl["capability"]) for cl in body["data"]["clusters"]) == [
        ("cluster-a", 1), ("cluster-b", 1), ("cluster-c", 3)], body
    assert int(body["data"]["version"]) == bed.topology()["epoch"] == v3 + 2


# --- 5. no secrets (last: it greps every log of the run) --------------------------------------

B64 = base64.b64encode(SECRET.encode()).decode()
FORBIDDEN = ["S3cretPassw0rd", ADMIN_TOKEN, B64, B64.rstrip("="), base64.b64encode(ADMIN_TOKEN.encode()).decode()]


def leaks(text: str) -> list[str]:
    return [s for s in FORBIDDEN if s in text]


def bad_config(kind: str) -> str:
    """A config file full of secrets with one kind of mistake."""
    listener = '[listener]\naddress = "127.0.0.1:0"\n'
    cluster = {"id": '"a"', "uri": '"http://127.0.0.1:1"', "token": f'"{SECRET}"', "pchannels": "2",
               "role": '"primary"'}
    tail = ""
    if kind == "unterminated":  # a TOML error on the token's own line
        cluster["token"] = f'"{SECRET}'
    elif kind == "misspelt":  # a misspelt key next to a secret value
        cluster["tokn"] = cluster.pop("token")
    elif kind == "wrong type":  # a secret where a number belongs
        listener += f'max_concurrent_streams = "{SECRET}"\n'
    elif kind == "uri credentials":  # credentials in the uri instead of the token
        cluster["uri"] = f'"http://{SECRET}@127.0.0.1:1"'
    elif kind == "semantic":  # several problems at once
        tail = '[health]\ninterval = "soon"\n[switchover]\nhold_window = "-1s"\n'
    admin = f'[admin]\naddress = "127.0.0.1:0"\ntoken = "{ADMIN_TOKEN}"\n'
    return listener + admin + "[[clusters]]\n" + "".join(f"{k} = {v}\n" for k, v in cluster.items()) + tail


BAD_CONFIGS = ["unterminated", "misspelt", "wrong type", "uri credentials", "semantic"]


def test_no_token_or_password_in_logs_answers_or_errors(bed_factory, tmp_path, tmp_path_factory):
    from pymilvus import DataType, MilvusClient

    bed = bed_factory()
    a, b = bed["cluster-a"], bed["cluster-b"]
    seen: dict[str, str] = {}  # what -> text shown to someone

    # Traffic with the secret token, a switchover, a refused switchover, errors.
    client = MilvusClient(uri=bed.sy.uri, token=SECRET)
    bed.cleanups.append(client.close)
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
    ip = MilvusClient.prepare_index_params()
    ip.add_index("vec", index_type="FLAT", metric_type="L2")
    client.create_collection(COLL, schema=s, index_params=ip, consistency_level="Bounded")
    client.insert(COLL, [{"id": i, "vec": [float(i), 0.0, 0.0, 1.0]} for i in range(10)])
    wait_rows(b, 10)
    client.search(COLL, data=[[1.0, 0.0, 0.0, 1.0]], limit=3, consistency_level="Bounded")
    job = bed.switchover("cluster-b")
    assert job["state"] == "succeeded", job
    client.insert(COLL, [{"id": 100, "vec": [1.0, 0.0, 0.0, 1.0]}])
    r = bed.admin("POST", "/v1/switchover", json={"target": "cluster-b"})
    assert r.status_code == 409
    seen["409"] = r.text
    for token in (None, "wrong", SECRET):
        r = bed.admin("GET", "/v1/topology", token=token)
        assert r.status_code == 401
        seen[f"401 {token and 'bad'}"] = r.text
    code, details, _ = bed.raw.call("Search", search_request(), metadata=[("x-switchyard-cluster", "nope")], token=SECRET)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    seen["grpc error"] = details
    code, details, _ = bed.raw.call("UpdateReplicateConfiguration", pb()[0].UpdateReplicateConfigurationRequest(),
                                    token=SECRET)
    seen["grpc refusal"] = details
    a.control("/fault/down")  # a cluster error (its last_error shows in /v1/clusters)
    wait_until(lambda: clusters_view(bed)["cluster-a"]["health"] == "down", timeout=10, what="cluster-a down")
    a.control("/fault/up")

    # Every admin answer.
    for path in ("/v1/topology", "/v1/clusters", "/v1/jobs", f"/v1/jobs/{job['id']}", "/metrics",
                 "/global-cluster/topology", "/readyz", "/livez"):
        r = bed.admin("GET", path)
        assert r.status_code == 200, (path, r.text)
        seen[path] = r.text
    assert "cluster-a" in seen["/v1/clusters"] and "switchyard_requests_total" in seen["/metrics"]
    p = ctl(bed, "status")
    assert p.returncode == 0, p.stderr
    seen["ctl status"] = p.stdout + p.stderr
    p = ctl(bed, "jobs", job["id"])
    seen["ctl jobs"] = p.stdout + p.stderr

    # Bad configs: check-config, POST /v1/reload, ctl reload and SIGHUP all keep secrets out.
    good = bed.sy.config_text()
    for kind in BAD_CONFIGS:
        text = bad_config(kind)
        path = tmp_path / f"bad-{kind.replace(' ', '-')}.toml"
        path.write_text(text)
        p = switchyard_cli("check-config", "--config", str(path))
        assert p.returncode == 1, (kind, p.stdout, p.stderr)
        seen[f"check-config {kind}"] = p.stdout + p.stderr
        print(f"\ncheck-config ({kind}):\n{p.stderr}")
    # A reload whose file has a TOML error on a token line.
    bed.sy.config_path.write_text(good.replace(f'token = "{SECRET}"', f'token = "{SECRET}', 1))
    r = bed.admin("POST", "/v1/reload")
    assert r.status_code == 400, r.text
    seen["reload 400"] = r.text
    p = ctl(bed, "reload")
    assert p.returncode == 1
    seen["ctl reload"] = p.stdout + p.stderr
    os.kill(bed.sy.pid, signal.SIGHUP)
    wait_until(lambda: bed.sy.log_has("SIGHUP: config not reloaded"), timeout=10, what="SIGHUP refusal")
    bed.sy.config_path.write_text(good)
    # The semantic problems are all still reported, with what was wrong.
    sem = seen["check-config semantic"]
    assert "health.interval" in sem and "switchover.hold_window" in sem, sem
    assert "line" in seen["check-config unterminated"] and "column" in seen["check-config unterminated"]
    assert "tokn" in seen["check-config misspelt"]
    assert "clusters[0].uri" in seen["check-config uri credentials"]

    shown = {what: leaks(text) for what, text in seen.items()}
    assert not any(shown.values()), {w: l for w, l in shown.items() if l}

    # Every switchyard and stand-in log of this run (this test's and the earlier ones').
    bed.stop()
    logs = [p for p in Path(tmp_path_factory.getbasetemp()).rglob("*.log")
            if p.name == "switchyard.log" or p.name.startswith("standin-")]
    assert any(p.name == "switchyard.log" for p in logs) and any(p.name.startswith("standin-") for p in logs)
    assert any("DEBUG" in p.read_text(errors="replace") for p in logs if p.name == "switchyard.log")
    found = []
    for p in logs:
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if leaks(line):
                found.append(f"{p}:{n}: {line[:300]}")
    print(f"\n{len(logs)} logs checked ({sum(p.stat().st_size for p in logs) >> 10} KiB)")
    assert not found, "\n".join(found[:20])
