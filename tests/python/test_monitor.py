"""The cluster monitor and consistency-aware reads, end to end (issue 3).

Clusters are ``milvus-standin`` processes over milvus-lite: A replicates to B and C. Each test
starts its own switchyard in front of them with the settings it exercises; the stand-ins count
what they serve (``GET /state`` -> ``counters``), which is how a test sees where a call went,
and switchyard's admin API (``GET /v1/clusters``) is how it sees what the monitor measured.

1. lag: under 1 s with an idle primary for 30 s; grows with real time while replication is
   paused and writes flow; back under 1 s after resume;
2. a standby past ``max_read_lag`` stops serving Bounded reads and serves again once caught
   up; Strong reads, named or by the collection's default level, never go to a standby, not
   even when the primary is down (they fail instead);
3. an unhealthy, frozen or dead standby leaves the read rotation within
   ``fall x interval + timeout``, and reads continue on the others;
4. roles changed behind switchyard's back are adopted, writes during the change land on the new
   primary with no client error; clusters that disagree get writes refused with a clear
   ``switchyard:`` error while reads continue;
5. read-your-writes: with it on, a client sees its own row every time through a lagging
   standby; with it off, it misses some (the test can fail);
6. ``switchyard ctl status`` and ``GET /v1/clusters`` show role, health, lag, in-flight and
   counters; the admin API answers 401 to a wrong or missing token.

Collections are created with ``consistency_level="Bounded"`` unless a test says otherwise; the
stand-in keeps each collection's level and reports it in ``DescribeCollection`` as Milvus does,
which is how switchyard routes a read that names no level.
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests

from switchyard_bed import Raw, Switchyard, pb, rate_limited
from testbed import Standin, bin_dir, replicate, star, update, wait_until, start_standins, stop_all

TOKEN = "root:Milvus"
TOKENS = {"cluster-a": TOKEN, "cluster-b": TOKEN, "cluster-c": TOKEN}
DIM = 4

pytestmark = pytest.mark.skipif(
    not (bin_dir() / "milvus-standin").exists() or not (bin_dir() / "switchyard").exists(),
    reason=f"switchyard / milvus-standin binaries not built in {bin_dir()} (cargo build --bins)",
)


# --- the bed ------------------------------------------------------------------------------


class Bed:
    """Stand-ins A (primary) and standbys over their own milvus-lite, A replicating to all."""

    def __init__(self, tmp: Path, ids=("cluster-a", "cluster-b", "cluster-c")):
        self.tmp = tmp
        self.procs: list = []
        self.standins: dict[str, Standin] = {}
        self.standins.update(start_standins(tmp, ids, pchannels=4, procs=self.procs))
        replicate(self.a, *[self.standins[c] for c in ids[1:]], tokens=TOKENS)
        self.switchyards: list[Switchyard] = []

    a = property(lambda self: self.standins["cluster-a"])
    b = property(lambda self: self.standins["cluster-b"])
    c = property(lambda self: self.standins["cluster-c"])

    def switchyard(self, **sections) -> Switchyard:
        """A switchyard in front of these stand-ins (A primary), ready (every cluster probed)."""
        clusters = [Switchyard.cluster(cid, s.uri, "primary" if cid == "cluster-a" else "standby", token=TOKEN)
                    for cid, s in self.standins.items()]
        sy = Switchyard(self.tmp, clusters, **sections)
        self.switchyards.append(sy)
        sy.wait_ready()
        return sy

    def stop_switchyards(self, failed: bool = False) -> None:
        for sy in self.switchyards:
            if failed and sy.proc:
                print(f"\n--- switchyard log ({sy.proc.log_path}) ---\n{sy.tail(80)}")
            sy.stop()
        self.switchyards.clear()

    def counters(self) -> dict[str, dict]:
        return {cid: s.state()["counters"] for cid, s in self.standins.items() if s.alive()}

    def stop(self, failed: bool = False) -> None:
        self.stop_switchyards(failed)
        stop_all(self.procs, failed)


@pytest.fixture(scope="module")
def trio(tmp_path_factory, request):
    """A replicating to B and C; shared by the tests that leave roles alone."""
    bed = Bed(tmp_path_factory.mktemp("monitor"))
    yield bed
    bed.stop(failed=request.session.testsfailed > 0)


@pytest.fixture
def bed(trio, request):
    """The shared trio, with this test's switchyards stopped and faults cleared at teardown."""
    yield trio
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    trio.stop_switchyards(failed)
    for s in trio.standins.values():
        if s.alive():
            for path in ("/fault/replication/resume", "/fault/healthy", "/fault/thaw", "/fault/up"):
                s.control(path)
            s.control("/fault/replication/delay", ms=0)
            s.control("/fault/latency", ms=0)


# --- helpers ------------------------------------------------------------------------------


def admin(sy: Switchyard, path: str, token: str | None = None, method: str = "GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"http://{sy.admin_addr}{path}", headers=headers, timeout=5)


def clusters(sy: Switchyard, token: str | None = None) -> dict[str, dict]:
    r = admin(sy, "/v1/clusters", token)
    r.raise_for_status()
    return {c["id"]: c for c in r.json()}


def topology(sy: Switchyard, token: str | None = None) -> dict:
    r = admin(sy, "/v1/topology", token)
    r.raise_for_status()
    return r.json()


def delta(after: dict, before: dict) -> dict:
    return {cid: {k: v - before[cid].get(k, 0) for k, v in c.items()} for cid, c in after.items() if cid in before}


def vec(i: int) -> list[float]:
    return [float(i), 1.0, 0.0, 1.0]


def make_collection(client, name: str, rows: int = 20, level: str = "Bounded") -> None:
    """A collection through ``client``, indexed and loaded, with ``rows`` rows (ids 0..rows-1)."""
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
    ip = MilvusClient.prepare_index_params()
    ip.add_index("vec", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=s, index_params=ip, consistency_level=level)
    if rows:
        client.insert(name, [{"id": i, "vec": vec(i)} for i in range(rows)])


def wait_replicated(standins, name: str, rows: int, timeout: float = 30.0) -> None:
    """Polls each standby directly until it answers ``count(*) == rows``."""
    for s in standins:
        c = s.client()
        wait_until(lambda: c.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == rows,
                   timeout=timeout, what=f"{s.cluster_id} to hold {rows} rows of {name}")


def search_request(collection: str, vector: list[float], level: str | None = "Bounded", topk: int = 3):
    """A raw ``SearchRequest`` as pymilvus builds it; ``level=None`` asks for the default level."""
    milvus_pb2, common_pb2 = pb()
    kv = lambda k, v: common_pb2.KeyValuePair(key=k, value=str(v))  # noqa: E731
    ph = common_pb2.PlaceholderGroup(placeholders=[common_pb2.PlaceholderValue(
        tag="$0", type=common_pb2.PlaceholderType.FloatVector, values=[struct.pack(f"<{len(vector)}f", *vector)])])
    req = milvus_pb2.SearchRequest(
        collection_name=collection, dsl="", dsl_type=common_pb2.DslType.BoolExprV1,
        placeholder_group=ph.SerializeToString(), nq=1, output_fields=["id"],
        search_params=[kv("anns_field", "vec"), kv("topk", topk), kv("metric_type", "L2"), kv("params", "{}"),
                       kv("round_decimal", -1)])
    if level is None:
        req.use_default_consistency = True
    else:
        req.consistency_level = common_pb2.ConsistencyLevel.Value(level)
    return req


class Writer:
    """Inserts one row at a time through switchyard in a thread, remembering what was acked."""

    def __init__(self, uri: str, collection: str, start_id: int, every: float = 0.05):
        from pymilvus import MilvusClient

        self.client = MilvusClient(uri=uri, token=TOKEN)
        self.collection, self.next_id, self.every = collection, start_id, every
        self.acked: list[int] = []
        self.errors: list[BaseException] = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self.stop_ev.is_set():
            i = self.next_id
            try:
                # No pymilvus retries: an error switchyard lets through must show here.
                self.client.insert(self.collection, [{"id": i, "vec": vec(i)}], retry_times=0)
                self.acked.append(i)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.errors.append(e)
            self.next_id += 1
            self.stop_ev.wait(self.every)

    def stop(self) -> None:
        self.stop_ev.set()
        self.thread.join(timeout=60)
        self.client.close()

    def wait_acks(self, n: int, timeout: float = 10.0) -> None:
        have = len(self.acked)
        wait_until(lambda: len(self.acked) >= have + n, timeout=timeout, what=f"{n} more acked writes")


# --- 1. lag ----------------------------------------------------------------------------------


def sample_lag(sy: Switchyard, ids, duration: float, every: float = 0.2) -> list[tuple[float, dict]]:
    """``(seconds since start, {id: lag_ms})`` every ``every`` seconds for ``duration``."""
    out, t0 = [], time.monotonic()
    while (t := time.monotonic() - t0) < duration:
        cs = clusters(sy)
        out.append((t, {i: cs[i]["lag_ms"] for i in ids}))
        time.sleep(every)
    return out


def test_lag_idle_paused_and_resumed(bed):
    sy = bed.switchyard()
    from pymilvus import MilvusClient

    client = MilvusClient(uri=sy.uri, token=TOKEN)
    make_collection(client, "lag", rows=20)
    standbys = ("cluster-b", "cluster-c")

    # Idle primary: after a few writes, every sample over 30 s is under 1 s.
    for i in range(100, 110):
        client.insert("lag", [{"id": i, "vec": vec(i)}])
    # The lag is unknown (null) until a probe has measured it against an acknowledged write
    # (issue 9: unknown lag is not zero); from then on it must stay known and small.
    wait_until(lambda: all(clusters(sy)[i]["lag_ms"] is not None for i in standbys), timeout=5,
               what="lag measured after the first writes")
    samples = sample_lag(sy, standbys, 30.0)
    assert all(v is not None for _, l in samples for v in l.values()), samples
    worst = max(v for _, l in samples for v in l.values())
    print(f"idle: {len(samples)} samples over 30 s, worst lag {worst} ms")
    assert worst < 1000, samples

    # Paused replication with writes flowing: lag follows real time, within 2 s.
    with Writer(sy.uri, "lag", 1000, every=0.1) as w:
        w.wait_acks(5)
        bed.a.control("/fault/replication/pause")
        paused_at = time.monotonic()
        during = []
        while (el := time.monotonic() - paused_at) < 5.0:
            cs = clusters(sy)
            during.append((el, {i: cs[i]["lag_ms"] for i in standbys}))
            time.sleep(0.25)
        print("paused: " + ", ".join(f"{t:.1f}s:{l['cluster-b']}/{l['cluster-c']}" for t, l in during))
        for el, lags in during:
            for cid, lag in lags.items():
                assert lag is not None and abs(lag / 1000 - el) <= 2.0, (cid, el, lag, during)
        last_el, last = during[-1]
        assert all(3000 <= v <= 7000 for v in last.values()), (last_el, last)

        bed.a.control("/fault/replication/resume")
        resumed_at = time.monotonic()
        wait_until(lambda: all(c["lag_ms"] is not None and c["lag_ms"] < 1000
                               for cid, c in clusters(sy).items() if cid in standbys),
                   timeout=10, what="lag back under 1 s")
        print(f"lag under 1 s {time.monotonic() - resumed_at:.2f} s after resume")
        # And it stays there while writes keep flowing.
        after = sample_lag(sy, standbys, 2.0)
        assert all(v is not None and v < 1000 for _, l in after for v in l.values()), after
    assert not w.errors, w.errors[:3]
    client.drop_collection("lag")
    client.close()


# --- 2. bounded reads and the lag bound; strong reads ----------------------------------------


class Reader:
    """Sends raw searches through switchyard in a thread, counting outcomes."""

    def __init__(self, addr: str, collection: str, level: str | None = "Bounded", deadline: float = 10.0,
                 every: float = 0.0):
        self.raw = Raw(addr)
        self.collection, self.level, self.deadline, self.every = collection, level, deadline, every
        self.lock = threading.Lock()
        self.log: list[tuple[float, float, bool, str]] = []  # (started, ended, ok, detail)
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Reader":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        i = 0
        while not self.stop_ev.is_set():
            i += 1
            started = time.monotonic()
            code, details, resp = self.raw.call("Search", search_request(self.collection, vec(i % 20), self.level),
                                                token=TOKEN, timeout=self.deadline)
            ok = code == grpc.StatusCode.OK and resp.status.code == 0
            with self.lock:
                self.log.append((started, time.monotonic(), ok,
                                 "" if ok else f"{code} {details} {resp and resp.status.reason}"))
            if self.every:
                self.stop_ev.wait(self.every)

    def ok_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for s, _, ok, _ in self.log if ok and s >= t)

    def failures(self) -> list:
        with self.lock:
            return [(s, e, d) for s, e, ok, d in self.log if not ok]

    def stop(self) -> None:
        self.stop_ev.set()
        self.thread.join(timeout=60)
        self.raw.close()


def serving(sy: Switchyard) -> dict[str, bool]:
    return {cid: c["serves_reads"] for cid, c in clusters(sy).items()}


def wait_serving(sy: Switchyard, ids, timeout: float = 10.0) -> None:
    """Waits until switchyard has seen ``ids`` caught up (a probe after the data reached them):
    a standby serves no Bounded read before (issue 9: unknown lag is not zero)."""
    wait_until(lambda: all(serving(sy)[i] for i in ids), timeout=timeout, what=f"{ids} serving reads")


def test_lagging_standby_leaves_bounded_reads_and_strong_reads_stay_on_primary(bed):
    sy = bed.switchyard(routing={"max_read_lag": "2s"})
    from pymilvus import MilvusClient

    client = MilvusClient(uri=sy.uri, token=TOKEN)
    make_collection(client, "bounded", rows=20)
    wait_replicated([bed.b, bed.c], "bounded", 20)
    standbys = ("cluster-b", "cluster-c")
    wait_serving(sy, standbys)
    raw = Raw(sy.addr)

    def searches(n: int, level: str | None, collection: str = "bounded") -> dict:
        before = bed.counters()
        for i in range(n):
            code, details, resp = raw.call("Search", search_request(collection, vec(i), level), token=TOKEN)
            assert code == grpc.StatusCode.OK and resp.status.code == 0, (level, code, details, resp)
        return delta(bed.counters(), before)

    # Caught up: Bounded reads go to the standbys, Strong reads never do.
    d = searches(20, "Bounded")
    assert d["cluster-a"]["reads_data"] == 0 and d["cluster-b"]["reads_data"] + d["cluster-c"]["reads_data"] == 20, d
    d = searches(20, "Strong")
    assert d["cluster-a"]["reads_data"] == 20 and d["cluster-b"]["reads_data"] == d["cluster-c"]["reads_data"] == 0, d

    # A collection whose default level is Strong: a pymilvus search naming no level goes to the
    # primary (switchyard learns the level from DescribeCollection on the primary, once). The
    # same search of a collection whose default is Bounded goes to a standby.
    make_collection(client, "strong_default", rows=5, level="Strong")
    wait_replicated([bed.b, bed.c], "strong_default", 5)
    for name, primary_reads in (("strong_default", 10), ("bounded", 0)):
        before = bed.counters()
        for i in range(10):
            hits = client.search(name, data=[vec(i % 5)], limit=1, output_fields=["id"])
            assert hits[0][0]["id"] == i % 5, hits
        d = delta(bed.counters(), before)
        standby_reads = d["cluster-b"]["reads_data"] + d["cluster-c"]["reads_data"]
        assert (d["cluster-a"]["reads_data"], standby_reads) == (primary_reads, 10 - primary_reads), (name, d)
        # The level's DescribeCollection once, then cached (not one per search); the monitor
        # may add one, resolving a collection just written to its pchannels.
        assert 1 <= d["cluster-a"]["reads_metadata"] <= 3, (name, d)
    # The Strong collection read with an explicit Bounded level goes to a standby: the level routes.
    d = searches(10, "Bounded", "strong_default")
    assert d["cluster-a"]["reads_data"] == 0, d

    # Paused replication with writes flowing: once lag passes 2 s the standbys stop serving
    # Bounded reads, which go to the primary; after resume they serve again.
    with Writer(sy.uri, "bounded", 1000, every=0.1) as w, Reader(sy.addr, "bounded", every=0.02) as r:
        w.wait_acks(3)
        wait_until(lambda: r.ok_since(time.monotonic() - 1) > 5, timeout=10, what="reads flowing")
        bed.a.control("/fault/replication/pause")
        paused_at = time.monotonic()
        wait_until(lambda: not any(serving(sy)[c] for c in standbys), timeout=10,
                   what="standbys out of the read rotation")
        out_after = time.monotonic() - paused_at
        lags = {c: v["lag_ms"] for c, v in clusters(sy).items()}
        print(f"standbys out {out_after:.2f} s after pause (lags {lags})")
        # Not before the lag can have reached 2 s (the last replicated write predates the pause by
        # up to one writer period), and within a probe interval or so after.
        assert 1.7 <= out_after <= 3.0, out_after
        assert all(lags[c] > 2000 for c in standbys), lags
        # From now on, no Bounded read reaches a standby.
        quiet_from = bed.counters()
        t = time.monotonic()
        wait_until(lambda: r.ok_since(t) >= 30, timeout=10, what="30 reads while lagging")
        d = delta(bed.counters(), quiet_from)
        assert d["cluster-b"]["reads_data"] == d["cluster-c"]["reads_data"] == 0, d
        assert d["cluster-a"]["reads_data"] >= 30, d
        # Strong reads too stay on the primary.
        d = searches(10, "Strong")
        assert d["cluster-a"]["reads_data"] >= 10 and d["cluster-b"]["reads_data"] == d["cluster-c"]["reads_data"] == 0

        bed.a.control("/fault/replication/resume")
        resumed_at = time.monotonic()
        wait_until(lambda: all(serving(sy)[c] for c in standbys), timeout=10, what="standbys serving again")
        print(f"standbys back {time.monotonic() - resumed_at:.2f} s after resume")
        back = bed.counters()
        t = time.monotonic()
        wait_until(lambda: r.ok_since(t) >= 30, timeout=10, what="30 reads after catching up")
        d = delta(bed.counters(), back)
        assert d["cluster-b"]["reads_data"] > 0 and d["cluster-c"]["reads_data"] > 0, d
    assert not w.errors and not r.failures(), (w.errors[:3], r.failures()[:3])
    d = searches(20, "Strong")
    assert d["cluster-b"]["reads_data"] == d["cluster-c"]["reads_data"] == 0, d

    # Not even when the primary cannot be reached: a Strong read fails rather than being
    # answered from a standby that may be behind. Bounded reads go on on the standbys.
    bed.a.control("/fault/down")
    try:
        before = bed.counters()
        for i in range(5):
            code, details, resp = raw.call("Search", search_request("bounded", vec(i), "Strong"), token=TOKEN)
            reason = rate_limited(code, details, resp)  # not sent: the SDK may retry it
            assert reason.startswith("switchyard:") and "cluster-a" in reason, reason
        d = delta(bed.counters(), before)
        assert d["cluster-b"]["reads_data"] == d["cluster-c"]["reads_data"] == 0, d
        for i in range(5):
            code, details, resp = raw.call("Search", search_request("bounded", vec(i), "Bounded"), token=TOKEN)
            assert code == grpc.StatusCode.OK and resp.status.code == 0, (code, details, resp)
    finally:
        bed.a.control("/fault/up")
    raw.close()
    client.drop_collection("bounded")
    client.drop_collection("strong_default")
    client.close()


# --- 3. unhealthy, frozen, dead standbys -----------------------------------------------------

HEALTH = {"interval": "200ms", "timeout": "500ms", "fall": 3, "rise": 2}
# fall x interval + one timeout.
EJECT_WITHIN = 3 * 0.2 + 0.5
# What measuring adds: the fault call's answer, the admin poll every 20 ms and its round trip,
# on a shared 2-core machine.
POLL_SLACK = 0.25


@pytest.mark.parametrize("fault,undo", [("unhealthy", "healthy"), ("freeze", "thaw"), ("down", "up")])
def test_faulty_standby_leaves_read_rotation(bed, fault, undo):
    sy = bed.switchyard(health=HEALTH)
    from pymilvus import MilvusClient

    client = MilvusClient(uri=sy.uri, token=TOKEN)
    name = f"fault_{fault}"
    make_collection(client, name, rows=20)
    wait_replicated([bed.b, bed.c], name, 20)
    n_threads = 4
    readers = [Reader(sy.addr, name, deadline=2.0) for _ in range(n_threads)]
    for r in readers:
        r.thread.start()
    try:
        wait_until(lambda: sum(r.ok_since(0) for r in readers) >= 40, timeout=15, what="reads flowing")
        assert bed.b.state()["counters"]["reads_data"] > 0
        bed.b.control(f"/fault/{fault}")
        at = time.monotonic()
        wait_until(lambda: not serving(sy)["cluster-b"], timeout=10, interval=0.02, what="B out of the rotation")
        took = time.monotonic() - at
        # Out of the rotation as soon as its lag cannot be read (unknown is unsafe), which may
        # be before `fall` failed probes mark it down; down it must be within the same bound.
        wait_until(lambda: clusters(sy)["cluster-b"]["health"] == "down",
                   timeout=max(0.05, EJECT_WITHIN + POLL_SLACK - (time.monotonic() - at)), interval=0.02,
                   what="B marked down")
        cs = clusters(sy)
        print(f"{fault}: B out of the read rotation after {took:.2f} s ({cs['cluster-b']['last_error']})")
        assert cs["cluster-b"]["health"] == "down" and cs["cluster-c"]["serves_reads"], cs
        assert took <= EJECT_WITHIN + POLL_SLACK, f"B left the rotation {took:.2f} s after {fault}, over {EJECT_WITHIN} s"
        # Reads go on, on C.
        out_at = time.monotonic()
        c_before = bed.c.state()["counters"]["reads_data"]
        wait_until(lambda: sum(r.ok_since(out_at) for r in readers) >= 100, timeout=20, what="100 reads after")
        assert bed.c.state()["counters"]["reads_data"] - c_before >= 100
    finally:
        for r in readers:
            r.stop()
    failures = [f for r in readers for f in r.failures()]
    print(f"{fault}: {sum(len(r.log) for r in readers)} reads, failures: {failures}")
    # Only reads already on B (sent before it left the rotation) may fail: at most one per
    # client thread, since each waits for its read before the next.
    assert len(failures) <= n_threads, failures
    assert all(started < at + took for started, _, _ in failures), (at, took, failures)
    if fault == "unhealthy":
        assert not failures, failures  # B still answers; nothing was cut
    bed.b.control(f"/fault/{undo}")
    wait_until(lambda: serving(sy)["cluster-b"], timeout=10, what="B back in the rotation")
    # Back, B serves again, and nothing is left counted in flight (reads abandoned on a frozen
    # B ended with their clients' deadlines).
    before = bed.counters()
    raw = Raw(sy.addr)
    for i in range(20):
        code, details, resp = raw.call("Search", search_request(name, vec(i)), token=TOKEN, timeout=5)
        assert code == grpc.StatusCode.OK and resp.status.code == 0, (code, details, resp)
    raw.close()
    d = delta(bed.counters(), before)
    assert d["cluster-b"]["reads_data"] > 0 and d["cluster-b"]["reads_data"] + d["cluster-c"]["reads_data"] == 20, d
    wait_until(lambda: all(c["in_flight"] == 0 for c in clusters(sy).values()), timeout=5, what="nothing in flight")
    client.drop_collection(name)
    client.close()


# --- 4. roles changed behind switchyard's back -------------------------------------------------


@pytest.fixture
def pair_bed(tmp_path, request):
    """A replicating to B, on their own (this test changes roles)."""
    bed = Bed(tmp_path, ids=("cluster-a", "cluster-b"))
    yield bed
    bed.stop(failed=getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed)


def ids_on(standin: Standin, collection: str, ids: list[int]) -> set[int]:
    c = standin.client()
    got: set[int] = set()
    for k in range(0, len(ids), 500):
        chunk = ids[k:k + 500]
        got |= {r["id"] for r in c.query(collection, filter=f"id in {chunk}", output_fields=["id"])}
    return got


def test_roles_changed_outside_are_adopted_and_disagreement_refuses_writes(pair_bed):
    bed = pair_bed
    sy = bed.switchyard(switchover={"hold_window": "3s"})
    from pymilvus import MilvusClient, MilvusException

    client = MilvusClient(uri=sy.uri, token=TOKEN)
    make_collection(client, "roles", rows=10)
    wait_replicated([bed.b], "roles", 10)

    # A then B, B at the centre, while three writers (own connections) run through switchyard.
    writers = [Writer(sy.uri, "roles", 1000 + 100_000 * k, every=0.01) for k in range(3)]
    for w in writers:
        w.thread.start()
    try:
        for w in writers:
            w.wait_acks(10)
        cfg = star(bed.b, [bed.a], TOKENS)
        update(bed.a, cfg)
        update(bed.b, cfg)
        changed = time.monotonic()
        wait_until(lambda: topology(sy)["primary"] == "cluster-b", timeout=10, what="B adopted as primary")
        print(f"adopted {time.monotonic() - changed:.2f} s after B promoted (writers running)")
        for w in writers:
            w.wait_acks(10)
    finally:
        for w in writers:
            w.stop()
    errors = [e for w in writers for e in w.errors]
    assert not errors, errors[:3]
    assert bed.b.state()["role"] == "primary"
    acked = [i for w in writers for i in w.acked]
    missing = set(acked) - ids_on(bed.b, "roles", acked)
    print(f"{len(acked)} writes acked across the change; missing on B: {sorted(missing)}")
    assert not missing, sorted(missing)
    # Some writes reached A after it demoted, were refused unapplied, and were resent to B.
    refused = bed.a.state()["counters"]["writes_rejected"]
    print(f"writes A refused as not primary (resent to B by switchyard): {refused}")
    assert refused > 0 and bed.b.state()["counters"]["writes_served"] > 0

    # A is now a standby of B: its lag is measured against B, and it serves Bounded reads.
    wait_until(lambda: (lambda a: a["role"] == "standby" and a["health"] == "up" and a["lag_ms"] is not None
                        and a["lag_ms"] < 1000 and a["serves_reads"])(clusters(sy)["cluster-a"]),
               timeout=5, what="A a caught-up standby serving reads")
    raw = Raw(sy.addr)
    before = bed.counters()
    for i in range(5):
        code, details, resp = raw.call("Search", search_request("roles", vec(i), "Bounded"), token=TOKEN)
        assert code == grpc.StatusCode.OK and resp.status.code == 0, (code, details, resp)
    d = delta(bed.counters(), before)
    assert d["cluster-a"]["reads_data"] == 5 and d["cluster-b"]["reads_data"] == 0, d

    # Back to A with no traffic: adopted by periodic discovery, within one period (2 s).
    cfg = star(bed.a, [bed.b], TOKENS)
    update(bed.b, cfg)
    update(bed.a, cfg)
    changed = time.monotonic()
    wait_until(lambda: topology(sy)["primary"] == "cluster-a", timeout=10, what="A adopted as primary")
    took = time.monotonic() - changed
    print(f"adopted {took:.2f} s after A promoted (no traffic)")
    assert took <= 2.0 + 0.3, took  # one discovery period, plus its calls and the poll

    # Clusters disagree: B promoted alone by force while A still thinks it is primary. Writes
    # are held briefly (a change in progress looks like this), then refused with the reason;
    # reads go on throughout.
    with Writer(sy.uri, "roles", 5000, every=0.05) as w, Reader(sy.addr, "roles", every=0.02) as r:
        w.wait_acks(3)
        update(bed.b, {"clusters": [], "cross_cluster_topology": []}, force_promote=True)
        forced = time.monotonic()
        assert bed.a.state()["role"] == "primary" and bed.b.state()["role"] == "primary"
        wait_until(lambda: topology(sy)["state"] == "ABNORMAL", timeout=15, what="ABNORMAL")
        print(f"ABNORMAL {time.monotonic() - forced:.2f} s after the force promote (hold_window 3s)")
        wait_until(lambda: len(w.errors) >= 3, timeout=10, what="writes refused")
        reads_ok = r.ok_since(forced)
    topo = topology(sy)
    print(f"disagreement: {topo}; writer: {len(w.errors)} refused, first: {w.errors[0]}")
    assert "disagree" in topo["reason"] and "cluster-a says cluster-a" in topo["reason"], topo
    assert "cluster-b says cluster-b" in topo["reason"], topo
    for e in w.errors:
        msg = str(e)
        assert "switchyard:" in msg and "disagree" in msg and "cluster-b says cluster-b" in msg, msg
    assert not r.failures() and reads_ok > 20, (reads_ok, r.failures()[:3])
    before = bed.counters()
    with pytest.raises(MilvusException) as e:
        client.insert("roles", [{"id": 99999, "vec": vec(1)}], retry_times=0)
    assert "switchyard:" in str(e.value) and "disagree" in str(e.value), e.value
    from test_datapath import client_insert_request

    code, details, resp = raw.call("Insert", client_insert_request("roles", [99998]), token=TOKEN)
    reason = rate_limited(code, details, resp)
    assert reason.startswith("switchyard:") and "disagree" in reason and "not sent" in reason, reason
    # Reads continue.
    for i in range(10):
        code, details, resp = raw.call("Search", search_request("roles", vec(i), "Bounded"), token=TOKEN)
        assert code == grpc.StatusCode.OK and resp.status.code == 0, (code, details, resp)
    assert len(client.query("roles", filter="id < 10", output_fields=["id"], consistency_level="Bounded")) == 10
    d = delta(bed.counters(), before)
    assert d["cluster-a"]["writes_served"] == 0 and d["cluster-b"]["writes_served"] == 0, d
    raw.close()
    client.close()


# --- 5. read-your-writes ---------------------------------------------------------------------


def own_row_trials(client, bed: Bed, name: str, trials: int = 200) -> tuple[int, int, dict]:
    """Inserts a row and at once queries and searches it at the collection's default level
    (Bounded: no level named), ``trials`` times on ``client``'s one connection. Returns (queries
    that missed it, searches that missed it, data reads served by each cluster)."""
    make_collection(client, name, rows=0)
    before = bed.counters()
    q_miss = s_miss = 0
    for i in range(trials):
        client.insert(name, [{"id": i, "vec": vec(i)}])
        got = client.query(name, filter=f"id == {i}", output_fields=["id"])
        q_miss += not any(r["id"] == i for r in got)
        hits = client.search(name, data=[vec(i)], limit=1, output_fields=["id"])
        s_miss += not (hits and hits[0] and hits[0][0]["id"] == i)
    d = delta(bed.counters(), before)
    return q_miss, s_miss, {cid: v["reads_data"] for cid, v in d.items()}


def test_read_your_writes(bed):
    from pymilvus import MilvusClient

    bed.a.control("/fault/replication/delay", ms=200)
    on = bed.switchyard(routing={"read_your_writes": "5s"})
    client = MilvusClient(uri=on.uri, token=TOKEN)
    q_miss, s_miss, served = own_row_trials(client, bed, "ryw_on")
    print(f"read_your_writes = 5s: {q_miss} queries and {s_miss} searches of 200 missed; reads served {served}")
    assert q_miss == 0 and s_miss == 0, (q_miss, s_miss)
    # Within the window, once the standbys have applied the last write (switchyard has seen
    # their checkpoints reach it: lag 0), its reads go to them again.
    wait_until(lambda: all(c["lag_ms"] == 0 for c in clusters(on).values()), timeout=4, what="standbys caught up")
    before = bed.counters()
    for _ in range(10):
        assert client.query("ryw_on", filter="id == 199", output_fields=["id"])
    d = delta(bed.counters(), before)
    assert d["cluster-a"]["reads_data"] == 0 and d["cluster-b"]["reads_data"] + d["cluster-c"]["reads_data"] == 10, d
    client.drop_collection("ryw_on")
    client.close()

    off = bed.switchyard()
    client = MilvusClient(uri=off.uri, token=TOKEN)
    # A switchyard that has seen no write yet does not know the standbys' lag and sends every
    # read to the primary (unknown is unsafe): let it see one caught up first.
    make_collection(client, "ryw_warm", rows=1)
    wait_until(lambda: all(serving(off)[c] for c in ("cluster-b", "cluster-c")), timeout=10,
               what="standbys known caught up")
    q_miss, s_miss, served = own_row_trials(client, bed, "ryw_off")
    print(f"read_your_writes off: {q_miss} queries and {s_miss} searches of 200 missed; reads served {served}")
    assert q_miss + s_miss > 0, "with read-your-writes off no read missed: the trials cannot tell"
    assert served["cluster-a"] == 0, served
    client.drop_collection("ryw_off")
    client.drop_collection("ryw_warm")
    client.close()


# --- 6. status and the admin token -------------------------------------------------------------

ADMIN_TOKEN = "monitor-test-token"


def ctl(sy: Switchyard, *args: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess:
    argv = [str(bin_dir() / "switchyard"), "ctl", "--admin", f"http://{sy.admin_addr}"]
    if token is not None:
        argv += ["--token", token]
    env = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_ADMIN_TOKEN"}
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=30, env=env)


def status_rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("CLUSTER"))
    return {l.split()[0]: l.split() for l in lines[head + 1:] if l.strip()}


def test_status_shows_role_health_lag_in_flight_and_counters(bed):
    # Health timeout above the injected latency: slow answers, not a down cluster.
    sy = bed.switchyard(admin={"token": ADMIN_TOKEN}, health={"timeout": "3s"})
    from pymilvus import MilvusClient

    client = MilvusClient(uri=sy.uri, token=TOKEN)
    make_collection(client, "status", rows=10)
    for i in range(10, 15):
        client.insert("status", [{"id": i, "vec": vec(i)}])
    wait_replicated([bed.b, bed.c], "status", 15)
    wait_until(lambda: all(clusters(sy, ADMIN_TOKEN)[c]["serves_reads"] for c in ("cluster-b", "cluster-c")),
               timeout=10, what="standbys known caught up")
    for i in range(6):
        client.search("status", data=[vec(i)], limit=1, consistency_level="Bounded")

    # Reads held in flight on the standbys by an injected 2 s latency.
    for s in (bed.b, bed.c):
        s.control("/fault/latency", ms=2000)
    def slow_read() -> None:
        raw = Raw(sy.addr)
        raw.call("Search", search_request("status", vec(1)), token=TOKEN, timeout=10)
        raw.close()

    slow = [threading.Thread(target=slow_read) for _ in range(4)]
    for t in slow:
        t.start()
    try:
        cs = wait_until(lambda: (lambda cs: cs if sum(cs[c]["in_flight"] for c in ("cluster-b", "cluster-c")) == 4
                                 else None)(clusters(sy, ADMIN_TOKEN)), timeout=5, what="4 reads in flight")
        p = ctl(sy, "status")
    finally:
        for t in slow:
            t.join(timeout=15)
        for s in (bed.b, bed.c):
            s.control("/fault/latency", ms=0)
    print(p.stdout)
    assert p.returncode == 0, p.stderr

    # GET /v1/clusters: role, health, lag, in flight, counters.
    a, b, c = cs["cluster-a"], cs["cluster-b"], cs["cluster-c"]
    assert (a["role"], b["role"], c["role"]) == ("primary", "standby", "standby"), cs
    assert all(x["health"] == "up" for x in (a, b, c)), cs
    assert a["lag_ms"] == 0 and all(x["lag_ms"] is not None and x["lag_ms"] < 1000 for x in (b, c)), cs
    assert a["in_flight"] == 0 and b["in_flight"] + c["in_flight"] == 4, cs
    assert a["writes_total"] >= 6 and b["writes_total"] == c["writes_total"] == 0, cs  # DDL + 6 inserts
    assert b["reads_total"] + c["reads_total"] >= 6, cs
    assert a["serves_reads"] is False and b["serves_reads"] and c["serves_reads"], cs

    # ctl status: the same facts, as a table.
    assert "state RUNNING" in p.stdout and "primary cluster-a" in p.stdout, p.stdout
    rows = status_rows(p.stdout)
    # Columns line up under their headings (every line of the table is as long as the header).
    table = p.stdout[p.stdout.index("CLUSTER"):].splitlines()
    assert all(len(l) == len(table[0]) for l in table), table
    assert set(rows) == {"cluster-a", "cluster-b", "cluster-c"}, rows
    # CLUSTER ROLE HEALTH LAG IN-FLIGHT READS WRITES
    assert rows["cluster-a"][1:4] == ["primary", "up", "0ms"], rows
    for cid in ("cluster-b", "cluster-c"):
        role, health, lag = rows[cid][1:4]
        assert (role, health) == ("standby", "up") and lag.endswith("ms") and int(lag[:-2]) < 1000, rows
    assert int(rows["cluster-b"][4]) + int(rows["cluster-c"][4]) == 4, rows
    assert int(rows["cluster-a"][6]) == a["writes_total"], rows
    assert int(rows["cluster-b"][5]) + int(rows["cluster-c"][5]) >= 6, rows
    after = clusters(sy, ADMIN_TOKEN)
    assert all(x["in_flight"] == 0 for x in after.values()), after

    # The same health and lag in the Prometheus gauges (no token needed on loopback).
    metrics = admin(sy, "/metrics").text
    for cid, role in (("cluster-a", "primary"), ("cluster-b", "standby"), ("cluster-c", "standby")):
        assert f'switchyard_cluster_up{{cluster="{cid}",role="{role}"}} 1' in metrics, metrics
    lag_lines = [l for l in metrics.splitlines() if l.startswith("switchyard_cluster_lag_seconds{")]
    assert {l.split('"')[1] for l in lag_lines} >= {"cluster-b", "cluster-c"}, lag_lines
    assert all(float(l.split()[-1]) < 1.0 for l in lag_lines), lag_lines

    # The token: missing or wrong is 401 on every admin endpoint that needs it.
    for path, method in [("/v1/clusters", "GET"), ("/v1/topology", "GET"), ("/v1/jobs", "GET"),
                         ("/v1/writes/resume", "POST")]:
        for tok in (None, "wrong", ADMIN_TOKEN + "x"):
            r = admin(sy, path, tok, method)
            assert r.status_code == 401, (path, tok, r.status_code, r.text)
            assert r.json()["code"] == "unauthorized", r.text
    assert admin(sy, "/v1/clusters", ADMIN_TOKEN).status_code == 200
    for tok in (None, "wrong"):
        p = ctl(sy, "status", token=tok)
        assert p.returncode == 1 and "token" in p.stderr, (tok, p.returncode, p.stdout, p.stderr)
    client.drop_collection("status")
    client.close()
