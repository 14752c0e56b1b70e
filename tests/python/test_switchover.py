"""Planned switchover with held writes, force failover with fencing, and the persisted topology,
end to end: pymilvus clients in front of switchyard, milvus-standin clusters over milvus-lite
behind it.

Where a call went is read from the stand-ins' own counters (``GET /state`` -> ``counters``):
``writes_rejected`` counts client writes that reached a cluster while it was a secondary, so it
must stay 0 through every switchover. What the clusters hold is read directly from each stand-in
with Strong consistency, after replication has caught up.

Figures (longest write pause, added pause at 0 and 200 ms replication delay) are printed; run with
``-s`` to see them. ``test_added_pause_measurement`` also writes them into ``BENCHMARKS.md``.

1. 20 switchovers A->B->A under 4 pymilvus writers: no error, every row exactly once on both.
   Also: a quick switch back under replication delay keeps the new primary's writes.
2. A target slower than ``promote_timeout``: rolled back, held writes land on A.
3. Refusals (lag, health, wrong ``expected_primary``): 409, nothing changed.
4. Two 64 MiB writes held on one connection: reads on it keep answering.
5. Automatic failover under load: promotion time, fencing (nothing reaches A), the loss report,
   readmit refused before the rebuild and accepted after.
6. switchyard SIGKILLed at each step and restarted: consistent, nothing pending, nothing lost.
7. ``switchyard ctl drill``.
8. The pause a switchover adds beyond the promotion, at 0 and 200 ms replication delay.

Module-scoped bed for 1-4, 7, 8 (each test puts A back as primary first); 5 and 6 build their own.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
import requests

from switchyard_bed import Switchyard
from testbed import REPO, MilvusLite, Standin, bin_dir, free_port, replicate, wait_until, stop_all

TOKENS = {"cluster-a": "root:Milvus", "cluster-b": "root:Milvus"}
ADMIN_TOKEN = "swo-admin-token"
A, B = "cluster-a", "cluster-b"
DIM = 4



def quiet_pymilvus() -> None:
    """pymilvus logs every failed call with its traceback (and sets its levels at import); the
    writers here count their errors instead."""
    import pymilvus  # noqa: F401

    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("pymilvus"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

pytestmark = pytest.mark.skipif(
    not (bin_dir() / "milvus-standin").exists() or not (bin_dir() / "switchyard").exists(),
    reason=f"switchyard / milvus-standin binaries not built in {bin_dir()} (cargo build --bins)",
)


# --- the bed ---------------------------------------------------------------------------------


class Bed:
    """Stand-ins A (primary) and B (standby) over their own milvus-lite, replicating A -> B,
    behind one switchyard with an admin token. ``sections`` go to the switchyard config."""

    def __init__(self, tmp: Path, delay: Optional[str] = None, **sections):
        self.tmp = tmp
        self.procs: list = []
        self.standins: dict[str, Standin] = {}
        lites = {}
        threads = [threading.Thread(target=lambda cid=cid: lites.__setitem__(cid, MilvusLite(tmp))) for cid in (A, B)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for cid in (A, B):
            if cid not in lites:
                raise RuntimeError(f"milvus-lite for {cid} did not start")
            self.procs.append(lites[cid])
            s = Standin(cid, lites[cid].uri, pchannels=4, workdir=tmp, replication_delay=delay)
            s.lite = lites[cid]
            self.procs.append(s)
            self.standins[cid] = s
        replicate(self.a, self.b, tokens=TOKENS)
        sections.setdefault("admin", {})["token"] = ADMIN_TOKEN
        clusters = [Switchyard.cluster(cid, s.uri, "primary" if cid == A else "standby", token="root:Milvus")
                    for cid, s in self.standins.items()]
        self.sy = Switchyard(tmp, clusters, **sections)
        self.procs.append(self.sy)
        self.sy.wait_ready()
        self.wait_up(B)

    @property
    def a(self) -> Standin:
        return self.standins[A]

    @property
    def b(self) -> Standin:
        return self.standins[B]

    # admin API
    def api(self, method: str, path: str, body=None, expect: Optional[int] = None):
        r = requests.request(method, f"http://{self.sy.admin_addr}{path}", json=body, timeout=15,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        if expect is not None:
            assert r.status_code == expect, (method, path, r.status_code, r.text)
        return r.status_code, (r.json() if r.content else None)

    def topology(self) -> dict:
        return self.api("GET", "/v1/topology", expect=200)[1]

    def clusters(self) -> dict:
        return {c["id"]: c for c in self.api("GET", "/v1/clusters", expect=200)[1]}

    def job(self, job_id: str) -> dict:
        return self.api("GET", f"/v1/jobs/{job_id}", expect=200)[1]

    def wait_job(self, job_id: str, timeout: float = 60.0, interval: float = 0.02) -> dict:
        return wait_until(lambda: (lambda j: j if j["state"] != "running" else None)(self.job(job_id)),
                          timeout=timeout, interval=interval, what=f"job {job_id} to end")

    def start_switchover(self, target: str, expected: Optional[str] = None) -> str:
        body = {"target": target}
        if expected:
            body["expected_primary"] = expected
        code, r = self.api("POST", "/v1/switchover", body)
        assert code == 202, (code, r)
        return r["job_id"]

    def switchover(self, target: str, expected: Optional[str] = None, timeout: float = 60.0) -> dict:
        return self.wait_job(self.start_switchover(target, expected), timeout=timeout)

    def wait_up(self, cid: str, timeout: float = 15.0) -> None:
        """Until ``cid`` is healthy. (Its lag is known only once switchyard has seen it apply a
        write acknowledged since start: on an idle bed it stays unknown, which a switchover
        accepts when the target's replication answers.)"""
        wait_until(lambda: self.clusters()[cid]["health"] == "up", timeout=timeout, what=f"{cid} up")

    def wait_lag_known(self, cid: str, timeout: float = 15.0) -> None:
        wait_until(lambda: self.clusters()[cid]["lag_ms"] is not None and self.clusters()[cid]["health"] == "up",
                   timeout=timeout, what=f"lag of {cid} known")

    def reconfigure(self, **sections) -> None:
        """Rewrites the config with ``sections`` merged in and reloads it (``POST /v1/reload``)."""
        for name, values in sections.items():
            self.sy.sections.setdefault(name, {}).update(values)
        self.sy.write_config()
        self.api("POST", "/v1/reload", expect=200)

    def snapshot(self) -> dict:
        """What a refused operation must leave unchanged: switchyard's topology and every
        stand-in's role, configuration and pending configuration."""
        t = self.topology()
        st = {cid: s.state() for cid, s in self.standins.items()}
        return {"epoch": t["epoch"], "primary": t["primary"], "standbys": t["standbys"], "fenced": t["fenced"],
                "jobs": len(self.api("GET", "/v1/jobs", expect=200)[1]),
                "standins": {cid: (x["role"], x["config"], x["pending"], x["demoted"]) for cid, x in st.items()}}

    # stand-ins
    def counters(self) -> dict:
        return {cid: s.state()["counters"] for cid, s in self.standins.items()}

    def roles(self) -> dict:
        return {cid: s.state()["role"] for cid, s in self.standins.items()}

    def primary_by_standins(self) -> Optional[str]:
        prim = [cid for cid, r in self.roles().items() if r == "primary"]
        return prim[0] if len(prim) == 1 else None

    def consistent(self) -> bool:
        """Every stand-in's role agrees with switchyard's topology."""
        t = self.topology()
        roles = self.roles()
        return (t["primary"] is not None and roles.get(t["primary"]) == "primary"
                and all(roles[s] == "secondary" for s in t["standbys"]))

    def stop(self, failed: bool = False) -> None:
        stop_all(self.procs, failed)


def delta(after: dict, before: dict) -> dict:
    return {cid: {k: v - before[cid].get(k, 0) for k, v in c.items()} for cid, c in after.items()}


# --- data helpers ----------------------------------------------------------------------------


def make_collection(client, name: str, dim: int = DIM) -> None:
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
    ip = MilvusClient.prepare_index_params()
    ip.add_index("vec", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=s, index_params=ip, consistency_level="Bounded")


def step_ms(job: dict, prefix: str) -> float:
    """The summed duration of a job's steps whose names start with ``prefix``, in ms."""
    return sum(s["duration_ms"] or 0.0 for s in job["steps"] if s["name"].startswith(prefix))


def count(client, name: str) -> int:
    return int(client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"])


def ids_on(client, name: str, lo: int, hi: int) -> list:
    """Every id in ``[lo, hi)`` the cluster holds (duplicates kept), in chunks of 10000."""
    out = []
    step = 10_000
    for start in range(lo, hi, step):
        end = min(hi, start + step)
        rows = client.query(name, filter=f"id >= {start} and id < {end}", output_fields=["id"],
                            consistency_level="Strong", limit=16_384)
        out += [int(r["id"]) for r in rows]
    return out


class Writers:
    """``n`` pymilvus clients inserting batches of rows with unique ids through switchyard. Each
    batch's ids are recorded once it is acknowledged, with its start and end times."""

    STRIDE = 10_000_000

    def __init__(self, uri: str, collection: str, n: int = 4, batch: int = 10, base: int = 0, pace: float = 0.0):
        self.uri, self.collection, self.n, self.batch, self.base, self.pace = uri, collection, n, batch, base, pace
        self.acked: list[tuple[float, float, list]] = []  # (start, end, ids)
        self.errors: list[str] = []
        self.failed_ids: set = set()  # ids of inserts that failed (they may or may not have landed)
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(n)]
        self.next_seq = [0] * n

    def start(self) -> "Writers":
        quiet_pymilvus()
        for t in self.threads:
            t.start()
        return self

    def _run(self, w: int) -> None:
        from pymilvus import MilvusClient

        c = MilvusClient(uri=self.uri, token="root:Milvus")
        try:
            while not self.stop_ev.is_set():
                seq = self.next_seq[w]
                self.next_seq[w] += 1
                ids = [self.base + w * self.STRIDE + seq * self.batch + k for k in range(self.batch)]
                t0 = time.monotonic()
                try:
                    res = c.insert(self.collection, [{"id": x, "vec": [float(x % 97), 0.0, 0.0, 1.0]} for x in ids])
                    t1 = time.monotonic()
                    if res.get("insert_count") != len(ids):
                        raise AssertionError(f"insert_count {res.get('insert_count')} != {len(ids)}")
                    with self.lock:
                        self.acked.append((t0, t1, ids))
                except Exception as e:  # noqa: BLE001 - every error is reported by the test
                    with self.lock:
                        self.errors.append(f"writer {w} at {t0:.3f}: {e}")
                        self.failed_ids.update(ids)
                    time.sleep(0.05)  # switchyard may be down (test 6): do not spin
                if self.pace:
                    time.sleep(self.pace)
        finally:
            c.close()

    def stop(self) -> None:
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=60)

    def acked_ids(self) -> list:
        with self.lock:
            return [x for (_, _, ids) in self.acked for x in ids]

    def ranges(self) -> list:
        """The id ranges ``[lo, hi)`` the writers used."""
        return [(self.base + w * self.STRIDE, self.base + w * self.STRIDE + self.next_seq[w] * self.batch)
                for w in range(self.n)]

    def max_latency_in(self, t_from: float, t_to: float) -> float:
        """The longest acknowledged insert that overlapped ``[t_from, t_to]``, in seconds."""
        with self.lock:
            lat = [t1 - t0 for (t0, t1, _) in self.acked if t1 >= t_from and t0 <= t_to]
        return max(lat, default=0.0)


def check_exactly_once(standin: Standin, name: str, acked: list, ranges: list) -> None:
    """Every acknowledged id is on ``standin`` exactly once, and nothing else is (``ranges``: the
    id ranges the writers used). milvus-lite keeps one row per primary key, so duplicate delivery
    is checked on the stand-ins' counters by the callers."""
    c = standin.client()
    have = [x for lo, hi in ranges for x in ids_on(c, name, lo, hi)]
    dupes = len(have) - len(set(have))
    missing = set(acked) - set(have)
    extra = set(have) - set(acked)
    assert not missing and dupes == 0, f"{standin.cluster_id}: {len(missing)} acked rows missing, {dupes} duplicated"
    assert count(c, name) == len(acked), f"{standin.cluster_id}: count(*) {count(c, name)} != {len(acked)} acked"
    # A write that failed may have been applied; none failed here, so nothing extra either.
    assert not extra, f"{standin.cluster_id}: {len(extra)} rows nobody saw acknowledged"


def wait_count(standin: Standin, name: str, n: int, timeout: float = 60.0) -> None:
    c = standin.client()
    wait_until(lambda: count(c, name) >= n, timeout=timeout, interval=0.2, what=f"{standin.cluster_id} to hold {n} rows")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bed(tmp_path_factory, request):
    """A -> B behind one switchyard, shared by the planned-switchover tests of this module."""
    b = Bed(tmp_path_factory.mktemp("swo"),
            listener={"max_message_size": "512MiB"},
            switchover={"max_lag": "5s", "promote_timeout": "20s", "drain_timeout": "10s", "hold_window": "30s",
                        "max_held_bytes": "300MiB"})
    yield b
    b.stop(failed=request.session.testsfailed > 0)


def ensure_primary(bed: Bed, cid: str) -> None:
    """Puts ``cid`` back as primary (a switchover) if a previous test left the other one."""
    wait_until(lambda: bed.topology()["state"] == "RUNNING" and bed.topology()["job"] is None,
               timeout=30, what="switchyard RUNNING with no job")
    if bed.topology()["primary"] != cid:
        bed.wait_up(cid)
        j = bed.switchover(cid)
        assert j["state"] == "succeeded", j
    bed.wait_up(B if cid == A else A)


# --- 1. twenty switchovers under write load --------------------------------------------------


@pytest.mark.slow
def test_twenty_switchovers_under_write_load(bed):
    """4 writers insert through switchyard while 20 switchovers alternate A->B->A: no writer sees an
    error, every acknowledged row is on both clusters exactly once, no write reached a standby."""
    from pymilvus import MilvusClient

    ensure_primary(bed, A)
    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, "swo20")
    client.close()
    before = bed.counters()
    w = Writers(bed.sy.uri, "swo20", n=4, batch=10).start()
    wait_until(lambda: len(w.acked) >= 20, timeout=30, what="writes flowing")
    jobs = []
    primary = A
    t_start = time.monotonic()
    for i in range(20):
        target = B if primary == A else A
        bed.wait_lag_known(target)
        t0 = time.monotonic()
        j = bed.switchover(target, expected=primary)
        t1 = time.monotonic()
        assert j["state"] == "succeeded", j
        jobs.append((j, t0, t1))
        primary = target
        # Writes keep flowing between switchovers.
        n = len(w.acked)
        wait_until(lambda: len(w.acked) >= n + 8, timeout=30, what="writes after the switchover")
    elapsed = time.monotonic() - t_start
    w.stop()
    assert not w.errors, w.errors[:5]
    acked = w.acked_ids()
    assert len(acked) == len(set(acked))
    t = bed.topology()
    assert t["primary"] == primary == A and t["state"] == "RUNNING", t
    standby = bed.standins[B]
    wait_count(standby, "swo20", len(acked))
    check_exactly_once(bed.standins[primary], "swo20", acked, w.ranges())
    check_exactly_once(standby, "swo20", acked, w.ranges())
    d = delta(bed.counters(), before)
    assert d[A]["writes_rejected"] == 0 and d[B]["writes_rejected"] == 0, d
    assert d[A]["writes_served"] > 0 and d[B]["writes_served"] > 0, d
    # milvus-lite keeps one row per primary key, so a write delivered twice would not show in the
    # rows: the clusters' counters show it. Every acknowledged insert was served exactly once.
    assert d[A]["writes_served"] + d[B]["writes_served"] == len(w.acked), (len(w.acked), d)

    holds = [j["longest_hold_ms"] for j, _, _ in jobs]
    writer = [w.max_latency_in(t0, t1) * 1e3 for _, t0, t1 in jobs]
    held = sum(j["held_writes"] for j, _, _ in jobs)
    promote = [next(s["duration_ms"] for s in j["steps"] if s["name"].startswith("promote")) for j, _, _ in jobs]
    print(f"\n20 switchovers in {elapsed:.1f}s with {len(acked)} rows acknowledged by 4 writers, {held} writes held;"
          f" longest hold (job records) {max(holds):.1f} ms, p50 {statistics.median(holds):.1f} ms;"
          f" longest writer-observed insert during a switchover {max(writer):.1f} ms;"
          f" promote step p50 {statistics.median(promote):.1f} ms, max {max(promote):.1f} ms")


# --- 2. a target that cannot promote in time: roll back --------------------------------------


def test_promotion_timeout_after_the_demotion_rolls_forward(bed):
    """Replication delay 3 s, promote_timeout 1 s. A has demoted when the timeout fires, and
    Milvus cannot undo a demotion, so switchyard does not roll back: the job fails, naming what
    happened and the operator's choices, and the proxy is ABNORMAL (writes answered "not sent",
    which pymilvus retries). B promotes by itself once A's log reaches it; discovery adopts it,
    ABNORMAL clears, and the writes held and retried meanwhile land on B, once each."""
    from pymilvus import MilvusClient

    ensure_primary(bed, A)
    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, "rollfwd")
    wait_count(bed.b, "rollfwd", 0)
    before = bed.counters()
    bed.reconfigure(switchover={"promote_timeout": "1s"})
    bed.a.control("/fault/replication/delay", ms=3000)
    try:
        job_id = bed.start_switchover(B, expected=A)
        wait_until(lambda: any(s["name"].startswith("promote") for s in bed.job(job_id)["steps"]),
                   timeout=10, interval=0.01, what="the promote step")
        # Writes sent now are held by switchyard (A is demoted, B not yet promoted), then
        # answered "not sent" when the job fails, and retried by pymilvus (default settings).
        results: list = []

        def insert(k: int) -> None:
            try:
                results.append(client.insert("rollfwd", [{"id": 1000 + k, "vec": [1.0, 0, 0, float(k)]}]))
            except Exception as e:  # noqa: BLE001
                results.append(e)

        threads = [threading.Thread(target=insert, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        j = bed.wait_job(job_id, timeout=30)
        abnormal = bed.topology()
        for t in threads:
            t.join(timeout=60)
    finally:
        bed.a.control("/fault/replication/delay", ms=0)
        bed.reconfigure(switchover={"promote_timeout": "20s"})
    print(f"job {j['state']}: {j['error']}")
    assert j["state"] == "failed", j
    assert "has demoted" in j["error"] and "does not roll back" in j["error"], j["error"]
    assert f"switchyard ctl failover --to {B}" in j["error"], j["error"]
    assert "roll back" not in [s["name"] for s in j["steps"]], j["steps"]
    assert abnormal["state"] == "ABNORMAL" or abnormal["primary"] == B, abnormal
    # B promoted by itself; switchyard adopted it and left ABNORMAL without anyone's help.
    wait_until(lambda: (lambda t: t["primary"] == B and t["state"] == "RUNNING")(bed.topology()), timeout=30,
               what="B adopted as primary, RUNNING")
    assert bed.roles() == {A: "secondary", B: "primary"}
    assert all(not isinstance(r, Exception) and r["insert_count"] == 1 for r in results), results
    d = delta(bed.counters(), before)
    assert d[A]["writes_served"] == 0, d  # nothing reached the demoted A
    assert d[B]["writes_served"] == 3, d  # each held-then-retried write applied once, on B
    assert sorted(ids_on(bed.b.client(), "rollfwd", 0, 2000)) == [1000, 1001, 1002]
    client.close()


def test_quick_switch_back_under_replication_delay_keeps_the_new_primarys_writes(bed):
    """A -> B, rows written on B, and B -> A at once, all under 300 ms replication delay: the
    switch back waits for B's log to reach A (its promote step lasts about the delay), and
    every row B acknowledged is on A, the primary again."""
    from pymilvus import MilvusClient

    ensure_primary(bed, A)
    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, "quickback")
    wait_count(bed.b, "quickback", 0)
    for s in bed.standins.values():
        s.control("/fault/replication/delay", ms=300)
    try:
        j1 = bed.switchover(B, expected=A)
        client.insert("quickback", [{"id": i, "vec": [float(i), 0, 0, 1]} for i in range(10)])
        j2 = bed.switchover(A, expected=B)
    finally:
        for s in bed.standins.values():
            s.control("/fault/replication/delay", ms=0)
    assert j1["state"] == "succeeded" and j2["state"] == "succeeded", (j1, j2)
    print(f"\npromote steps: A->B {step_ms(j1, 'promote'):.0f} ms, B->A {step_ms(j2, 'promote'):.0f} ms")
    assert step_ms(j2, "promote") >= 250, j2["steps"]
    assert sorted(ids_on(bed.a.client(), "quickback", 0, 100)) == list(range(10))
    wait_count(bed.b, "quickback", 10)
    client.close()


# --- 3. refusals change nothing --------------------------------------------------------------


def refused(bed: Bed, body: dict, reason: str) -> None:
    before = bed.snapshot()
    code, r = bed.api("POST", "/v1/switchover", body)
    assert code == 409, (code, r)
    assert re.search(reason, r["error"]), r
    assert r["code"] == "precondition_failed", r
    assert bed.snapshot() == before
    print(f"\nrefused: {r['error']}")


def test_refused_switchovers_change_nothing(bed):
    """A switchover refused for lag, for health, or for a wrong ``expected_primary`` answers 409
    with the reason and changes nothing: epoch, roles, the stand-ins' configurations, no job."""
    from pymilvus import MilvusClient

    ensure_primary(bed, A)
    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, "refusals")

    # Wrong expected primary.
    refused(bed, {"target": B, "expected_primary": B}, r"expected primary cluster-b but the primary is cluster-a")

    # Lag: replication paused, a write, and B falls behind by more than max_lag.
    bed.reconfigure(switchover={"max_lag": "1s"})
    bed.a.control("/fault/replication/pause")
    try:
        client.insert("refusals", [{"id": 1, "vec": [1.0, 0, 0, 0]}])
        wait_until(lambda: (bed.clusters()[B]["lag_ms"] or 0) > 1500, timeout=10, what="B lagging")
        refused(bed, {"target": B, "expected_primary": A}, r"cluster-b lags .* more than switchover.max_lag")
    finally:
        bed.a.control("/fault/replication/resume")
        bed.reconfigure(switchover={"max_lag": "5s"})
    wait_until(lambda: bed.clusters()[B]["lag_ms"] == 0, timeout=15, what="B caught up")

    # Health: B answers CheckHealth as not healthy.
    bed.b.control("/fault/unhealthy")
    try:
        wait_until(lambda: bed.clusters()[B]["health"] == "down", timeout=10, what="B down")
        refused(bed, {"target": B}, r"cluster-b is not healthy.*not healthy")
    finally:
        bed.b.control("/fault/healthy")
    wait_until(lambda: bed.clusters()[B]["health"] == "up", timeout=10, what="B up")
    client.close()


# --- 4. big held writes do not stall reads on the same connection ----------------------------


def held_writes(bed: Bed) -> int:
    text = requests.get(f"http://{bed.sy.admin_addr}/metrics", timeout=5).text
    m = re.search(r"^switchyard_held_writes (\d+)", text, re.M)
    return int(m.group(1)) if m else -1


def test_big_held_writes_leave_reads_on_the_same_connection_answering(bed):
    """Writes paused, two 64 MiB inserts held (max_held_bytes 300 MiB) from threads sharing ONE
    pymilvus client: reads on that client keep answering while they are held; after resume both
    inserts succeed."""
    from pymilvus import DataType, MilvusClient

    ensure_primary(bed, A)
    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")  # one client, one HTTP/2 connection
    if client.has_collection("big"):
        client.drop_collection("big")
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
    s.add_field("blob", DataType.VARCHAR, max_length=65535)
    ip = MilvusClient.prepare_index_params()
    ip.add_index("vec", index_type="FLAT", metric_type="L2")
    client.create_collection("big", schema=s, index_params=ip, consistency_level="Bounded")
    client.insert("big", [{"id": 0, "vec": [0.0, 0, 0, 1], "blob": "seed"}])
    wait_count(bed.b, "big", 1)

    rows_per_insert, blob = 1025, "x" * 65_535  # 1025 rows x 64 KiB: just over 64 MiB per insert
    bed.api("POST", "/v1/writes/pause", {"timeout": "120s"}, expect=200)
    rss0 = bed.sy.rss_kib()
    results: dict = {}

    def big_insert(k: int) -> None:
        base = 1 + k * rows_per_insert
        t0 = time.monotonic()
        try:
            rows = [{"id": base + i, "vec": [float(i), 0, 0, 1], "blob": blob} for i in range(rows_per_insert)]
            results[k] = (client.insert("big", rows), time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001
            results[k] = (e, time.monotonic() - t0)

    threads = [threading.Thread(target=big_insert, args=(k,)) for k in range(2)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: held_writes(bed) == 2, timeout=60, what="two writes held")
        assert bed.topology()["state"] == "HOLDING"
        # Their bodies are read into switchyard's memory while they wait (128 MiB between them).
        wait_until(lambda: bed.sy.rss_kib() - rss0 > 120 * 1024, timeout=60, what="both bodies buffered")
        rss_held = bed.sy.rss_kib() - rss0
        # Reads on the same client, while both inserts are held (their bodies buffered at switchyard).
        latencies = []
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            assert client.describe_collection("big")["collection_name"] == "big"  # metadata: primary
            res = client.query("big", filter="id == 0", output_fields=["id"])  # Bounded: standby
            assert [r["id"] for r in res] == [0]
            latencies.append(time.monotonic() - t0)
        assert held_writes(bed) == 2 and not results, results
    finally:
        bed.api("POST", "/v1/writes/resume", expect=200)
        for t in threads:
            t.join(timeout=120)
    print(f"\n{len(latencies)} read pairs while 2 x 64 MiB writes were held: max {max(latencies) * 1e3:.0f} ms, "
          f"p50 {statistics.median(latencies) * 1e3:.0f} ms; switchyard RSS +{rss_held // 1024} MiB while held; inserts took {[round(r[1], 1) for r in results.values()]} s")
    assert max(latencies) < 2.0, latencies
    for k, (r, _) in results.items():
        assert not isinstance(r, Exception) and r["insert_count"] == rows_per_insert, (k, r)
    assert count(bed.a.client(), "big") == 1 + 2 * rows_per_insert
    client.drop_collection("big")
    client.close()


# --- 5. automatic failover, fencing and the loss report --------------------------------------


def test_automatic_failover_fences_the_dead_primary_and_reports_the_loss(tmp_path, request):
    """The primary dies under write load: B is promoted within detect_after + 2 s, writes go on
    on B, A (back up) gets no request of any kind until readmitted, and the job's
    ``possible_loss_rows`` equals the rows A acknowledged that B lacks."""
    from pymilvus import MilvusClient

    detect_after = 1.0
    # A 500 ms replication delay leaves some acknowledged rows unreplicated when A dies.
    bed = Bed(tmp_path, delay="500ms",
              failover={"automatic": True, "detect_after": f"{detect_after}s", "min_interval": "10m"},
              health={"interval": "200ms", "timeout": "500ms", "fall": 2, "rise": 2})
    ok = False
    w = None
    try:
        client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
        make_collection(client, "fo")
        client.close()
        wait_count(bed.b, "fo", 0)
        w = Writers(bed.sy.uri, "fo", n=2, batch=10).start()
        wait_until(lambda: len(w.acked) >= 20, timeout=30, what="writes flowing")

        t_down = time.monotonic()
        bed.a.control("/fault/down")
        wait_until(lambda: bed.topology()["primary"] == B, timeout=detect_after + 10, interval=0.02,
                   what="B promoted")
        t_promoted = time.monotonic()
        assert bed.b.state()["role"] == "primary"
        took = t_promoted - t_down
        print(f"\nA down -> B primary in switchyard's topology: {took * 1e3:.0f} ms (detect_after {detect_after}s)")
        assert took <= detect_after + 2.0, took
        t = bed.topology()
        assert t["fenced"] == [A] and A not in t["standbys"], t

        # Writes go on, on B.
        wait_until(lambda: sum(1 for (t0, _, _) in w.acked if t0 > t_promoted) >= 20, timeout=30,
                   what="writes acknowledged after the failover")
        jobs = [j for j in bed.api("GET", "/v1/jobs", expect=200)[1] if j["kind"] == "failover"]
        assert len(jobs) == 1, jobs
        job = bed.wait_job(jobs[0]["id"], timeout=30)
        assert job["state"] == "succeeded", job

        # A comes back up: nothing reaches it (no probe, no read, no write) until readmitted.
        a_before = bed.a.state()["counters"]
        bed.a.control("/fault/up")
        time.sleep(2.0)  # observation window: ten health intervals
        assert bed.a.state()["counters"] == a_before, delta({A: bed.a.state()["counters"]}, {A: a_before})
        assert bed.topology()["fenced"] == [A]
        w.stop()
        errors_before_failover = [e for e in w.errors]

        # Loss: every acknowledged row B lacks was acknowledged by A (B acknowledged the rest).
        acked = w.acked_ids()
        on_b = set(x for lo, hi in w.ranges() for x in ids_on(bed.b.client(), "fo", lo, hi))
        lost = set(acked) - on_b
        after = [x for (t0, _, ids) in w.acked if t0 > t_promoted for x in ids]
        assert not (set(after) - on_b), "rows acknowledged after the failover are missing on B"
        print(f"acknowledged {len(acked)} rows; B lacks {len(lost)}; job possible_loss_rows "
              f"{job.get('possible_loss_rows')}, possible_loss_ms {job.get('possible_loss_ms')}; "
              f"{len(errors_before_failover)} writes failed while A was dead")
        assert job["possible_loss_rows"] == len(lost), (job, len(lost))

        # Readmit is refused while A still names itself primary (not rebuilt): readmitting it as
        # it is would make the clusters disagree.
        code, r = bed.api("POST", f"/v1/clusters/{A}/readmit")
        assert code == 409 and "names cluster-a as primary, not cluster-b" in r["error"], (code, r)
        assert bed.topology()["fenced"] == [A]
        # Readmit, once A is rebuilt as B's standby: switchyard talks to A again.
        replicate(bed.b, bed.a, tokens=TOKENS)
        a_before = bed.a.state()["counters"]
        code, r = bed.api("POST", f"/v1/clusters/{A}/readmit")
        assert code == 200, r
        assert A in r["topology"]["standbys"] and r["topology"]["fenced"] == [], r
        wait_until(lambda: bed.a.state()["counters"]["control"] > a_before["control"], timeout=5,
                   what="probes of A after readmit")
        wait_until(lambda: bed.consistent() and bed.topology()["state"] == "RUNNING", timeout=10,
                   what="topology consistent after readmit")
        ok = True
    finally:
        if w:
            w.stop()
        bed.stop(failed=not ok)


# --- 6. switchyard SIGKILLed at each step of a switchover ------------------------------------


STEPS = ["hold writes", "drain in-flight writes", "demote", "promote", "swap routing and release held writes",
         "persist topology"]


def state_file(bed: Bed) -> dict:
    import json

    return json.loads((bed.sy.dir / "state.json").read_text())


def kill_at_step(bed: Bed, target: str, expected: str, step: str) -> str:
    """Starts a switchover and SIGKILLs switchyard as soon as the job shows ``step``. Returns the
    last step the job had reached when last polled."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    job_id = bed.start_switchover(target, expected=expected)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        j = session.get(f"http://{bed.sy.admin_addr}/v1/jobs/{job_id}", timeout=5).json()
        names = [s["name"] for s in j["steps"]]
        if any(n.startswith(step) for n in names) or j["state"] != "running":
            bed.sy.proc.popen.send_signal(signal.SIGKILL)
            bed.sy.proc.kill()
            return names[-1] if j["state"] == "running" else f"(job ended {j['state']})"
        time.sleep(0.003)
    raise AssertionError(f"job {job_id} never reached step {step!r}")


@pytest.mark.slow
def test_sigkill_at_each_step_leaves_a_consistent_topology(tmp_path, request):
    """switchyard is SIGKILLed at each step of a switchover in turn and restarted with the same
    config and state file: the topology ends consistent with the clusters' own roles, no job is
    left pending, and no acknowledged write is lost."""
    from pymilvus import MilvusClient

    bed = Bed(tmp_path, delay="800ms",
              listener={"address": f"127.0.0.1:{free_port()}"}, admin={"address": f"127.0.0.1:{free_port()}"},
              switchover={"promote_timeout": "20s", "max_lag": "30s"})
    ok = False
    w = None
    try:
        client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
        make_collection(client, "killed")
        client.close()
        wait_count(bed.b, "killed", 0)
        before = bed.counters()
        w = Writers(bed.sy.uri, "killed", n=2, batch=5).start()
        wait_until(lambda: len(w.acked) >= 10, timeout=30, what="writes flowing")
        primary = A
        # (kill at step, wait for the old primary's fence to reach the target before restarting)
        plan = [(s, False) for s in STEPS] + [("promote", True)]
        outcomes = []
        for step, let_promote in plan:
            target = B if primary == A else A
            bed.wait_lag_known(target, timeout=20)
            # Slow client calls on the primary stretch the drain and demote steps.
            bed.standins[primary].control("/fault/latency", ms=300)
            try:
                reached = kill_at_step(bed, target, primary, step)
            finally:
                bed.standins[primary].control("/fault/latency", ms=0)
            if let_promote:
                # The old primary's fence reaches the target before the restart: the target has
                # promoted by itself (the promote call had reached it) or holds the fence.
                wait_until(lambda: bed.standins[target].state()["role"] == "primary"
                           or not bed.standins[primary].state()["drains"], timeout=15,
                           what=f"{primary}'s fence applied by {target}")
            # A slow target keeps the restarted switchyard's recovery going for a while; writes
            # arriving meanwhile must be held, not sent to a primary the job may have demoted.
            bed.standins[target].control("/fault/latency", ms=700)
            try:
                bed.sy.start()
                time.sleep(0.5)
            finally:
                bed.standins[target].control("/fault/latency", ms=0)
            wait_until(lambda: bed.consistent() and bed.topology()["state"] == "RUNNING"
                       and bed.topology()["job"] is None, timeout=30,
                       what=f"a consistent topology after a kill at {step!r}")
            assert state_file(bed)["pending_job"] is None, state_file(bed)
            recovered = [j for j in bed.api("GET", "/v1/jobs", expect=200)[1] if j["kind"] == "recover"]
            new_primary = bed.topology()["primary"]
            outcomes.append((step, reached, ("switched" if new_primary != primary else "rolled back")
                             + (f" ({recovered[0]['steps'][-1]['detail']})" if recovered else " (nothing pending)")))
            primary = new_primary
            n = len(w.acked)
            wait_until(lambda: len(w.acked) >= n + 5, timeout=30, what="writes after the restart")
        w.stop()
        print("\nkill at step -> last step seen -> outcome after restart:")
        for o in outcomes:
            print(f"  {o[0]!r:40} {o[1]!r:45} {o[2]}")
        acked = set(w.acked_ids())
        standby = A if primary == B else B
        for cid in (primary, standby):
            c = bed.standins[cid].client()
            wait_until(lambda: not acked - set(x for lo, hi in w.ranges() for x in ids_on(c, "killed", lo, hi)),
                       timeout=60, interval=0.5, what=f"every acknowledged row on {cid}")
            have = set(x for lo, hi in w.ranges() for x in ids_on(c, "killed", lo, hi))
            assert have - acked <= w.failed_ids, f"{cid} holds rows nobody wrote"
        d = delta(bed.counters(), before)
        print(f"{len(acked)} rows acknowledged, all on both clusters; {len(w.errors)} inserts failed while "
              f"switchyard was down; writes refused by a standby: A {d[A]['writes_rejected']}, B {d[B]['writes_rejected']}")
        # A restarted switchyard holds writes until the job is resolved: none reached a demoted cluster.
        assert d[A]["writes_rejected"] == 0 and d[B]["writes_rejected"] == 0, d
        ok = True
    finally:
        if w:
            w.stop()
        bed.stop(failed=not ok)


# --- 7. the drill from the CLI ---------------------------------------------------------------


def test_ctl_drill_prints_step_timings(bed):
    """``switchyard ctl drill --to cluster-b`` switches over, checks a write and a read on B,
    switches back, prints every step with its duration, and exits 0."""
    ensure_primary(bed, A)
    epoch = bed.topology()["epoch"]
    p = subprocess.run([str(bin_dir() / "switchyard"), "ctl", "--admin", f"http://{bed.sy.admin_addr}",
                        "--token", ADMIN_TOKEN, "drill", "--to", B], capture_output=True, text=True, timeout=120)
    print("\n" + p.stdout)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    out = p.stdout
    assert re.search(r"job drill-\S+ \(drill\) cluster-a -> cluster-b: succeeded", out), out
    for step in (f"switch over to {B}", f"write and read on {B}", f"switch back to {A}"):
        assert re.search(rf"^\s+\d+\.\d ms  {re.escape(step)}", out, re.M), (step, out)
    # The two switchovers' own steps are shown with their timings too.
    assert len(re.findall(r"^\s+\d+\.\d ms  promote cluster-", out, re.M)) == 2, out
    t = bed.topology()
    assert t["primary"] == A and t["state"] == "RUNNING" and t["epoch"] == epoch + 2, t
    assert bed.roles() == {A: "primary", B: "secondary"}


# --- 8. measurement: the pause a switchover adds beyond the clusters' promotion ---------------


def pct(xs: list, p: float) -> float:
    """The p-th percentile (nearest rank) of ``xs``."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def measure_pauses(bed: Bed, delay_ms: int, n: int, collection: str) -> dict:
    """``n`` switchovers alternating under 4 writers with ``delay_ms`` of replication delay.
    Per switchover: promote = the job's promote step (the clusters' own promotion); hold = the
    job's longest_hold_ms; writer = the longest insert a writer saw overlapping the job."""
    from pymilvus import MilvusClient

    ensure_primary(bed, A)
    client = MilvusClient(uri=bed.sy.uri, token="root:Milvus")
    make_collection(client, collection)
    client.close()
    before = bed.counters()
    for s in bed.standins.values():
        s.control("/fault/replication/delay", ms=delay_ms)
    w = Writers(bed.sy.uri, collection, n=4, batch=10).start()
    rows = []
    try:
        wait_until(lambda: len(w.acked) >= 20, timeout=30, what="writes flowing")
        primary = A
        for i in range(n):
            target = B if primary == A else A
            bed.wait_lag_known(target)
            t0 = time.monotonic()
            j = bed.switchover(target, expected=primary, timeout=60)
            t1 = time.monotonic()
            assert j["state"] == "succeeded", j
            primary = target
            k = len(w.acked)
            wait_until(lambda: len(w.acked) >= k + 8, timeout=30, what="writes after the switchover")
            rows.append({
                "promote": step_ms(j, "promote"),
                "hold": j["longest_hold_ms"],
                "writer": w.max_latency_in(t0, t1) * 1e3,
                "held": j["held_writes"],
                "steps": {s["name"].split(" ")[0]: s["duration_ms"]
                          for s in j["steps"]},
            })
        ensure_primary(bed, A)
    finally:
        w.stop()
        for s in bed.standins.values():
            s.control("/fault/replication/delay", ms=0)
    assert not w.errors, w.errors[:5]
    # Measured, and still correct: every acknowledged row is on the final primary, and no write
    # reached a standby.
    assert count(bed.a.client(), collection) == len(w.acked_ids())
    d = delta(bed.counters(), before)
    assert d[A]["writes_rejected"] == 0 and d[B]["writes_rejected"] == 0, d
    base = sorted(t1 - t0 for (t0, t1, _) in w.acked)
    added_hold = [r["hold"] - r["promote"] for r in rows]
    added_writer = [r["writer"] - r["promote"] for r in rows]
    steps = {k: statistics.median(r["steps"].get(k, 0.0) for r in rows) for k in rows[0]["steps"]}
    return {
        "delay_ms": delay_ms, "n": n, "rows": rows,
        "promote_p50": pct([r["promote"] for r in rows], 50), "promote_p99": pct([r["promote"] for r in rows], 99),
        "hold_p50": pct([r["hold"] for r in rows], 50), "hold_p99": pct([r["hold"] for r in rows], 99),
        "added_hold_p50": pct(added_hold, 50), "added_hold_p99": pct(added_hold, 99),
        "writer_p50": pct([r["writer"] for r in rows], 50), "writer_p99": pct([r["writer"] for r in rows], 99),
        "added_writer_p50": pct(added_writer, 50), "added_writer_p99": pct(added_writer, 99),
        "insert_p50": base[len(base) // 2] * 1e3, "insert_p99": pct(base, 99) * 1e3,
        "held_mean": statistics.mean(r["held"] for r in rows), "steps_p50": steps,
    }


def describe_machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        out = ""
    f = {k.strip(): v.strip() for k, v in (l.split(":", 1) for l in out.splitlines() if ":" in l)}
    load = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"
    return (f"{f.get('Model name', platform.processor() or '?')}, {f.get('CPU(s)', os.cpu_count())} CPUs "
            f"({f.get('Thread(s) per core', '?')} thread(s) per core, hypervisor {f.get('Hypervisor vendor', 'none')}), "
            f"Linux {platform.release()}; load average {load}")


def report(results: list, machine: str) -> str:
    head = ("| replication delay | switchovers | promote p50 / p99 ms | longest hold p50 / p99 ms | **added (hold − promote) "
            "p50 / p99 ms** | writer-observed max p50 / p99 ms | writer − promote p50 / p99 ms | every insert "
            "p50 / p99 ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in results:
        lines.append(
            f"| {r['delay_ms']} ms | {r['n']} | {r['promote_p50']:.1f} / {r['promote_p99']:.1f} | "
            f"{r['hold_p50']:.1f} / {r['hold_p99']:.1f} | **{r['added_hold_p50']:.1f} / {r['added_hold_p99']:.1f}** | "
            f"{r['writer_p50']:.1f} / {r['writer_p99']:.1f} | {r['added_writer_p50']:.1f} / {r['added_writer_p99']:.1f} | "
            f"{r['insert_p50']:.1f} / {r['insert_p99']:.1f} |")
    steps = "\n".join(f"- {r['delay_ms']} ms delay: " + ", ".join(f"{k} {v:.1f}" for k, v in r["steps_p50"].items())
                      for r in results)
    return ("\n".join(lines) + "\n\nMedian step durations (ms) of the switchover jobs (writes are held from `hold` "
            "to `swap`; `persist` runs after they are released):\n\n" + steps + "\n")


TARGET_ADDED_P99_MS = 50.0
BENCH_BEGIN = "<!-- switchover-pause: written by tests/python/test_switchover.py::test_added_pause_measurement -->"
BENCH_END = "<!-- /switchover-pause -->"


def write_benchmarks(text: str) -> None:
    """Records the figures in BENCHMARKS.md only when asked (SWITCHYARD_RECORD_BENCHMARKS=1), so a
    test run never leaves the checkout modified."""
    if os.environ.get("SWITCHYARD_RECORD_BENCHMARKS") != "1":
        return
    path = REPO / "BENCHMARKS.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{BENCH_BEGIN}\n{text.rstrip()}\n{BENCH_END}\n"
    if BENCH_BEGIN in old and BENCH_END in old:
        new = old[: old.index(BENCH_BEGIN)] + section + old[old.index(BENCH_END) + len(BENCH_END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + section
    path.write_text(new)


@pytest.mark.slow
def test_added_pause_measurement(bed):
    """The write pause a switchover adds beyond the clusters' own promotion time, at 0 and 200 ms
    replication delay, 20 switchovers each. Target: at most 50 ms added at p99."""
    results = [measure_pauses(bed, d, 20, f"pause{d}") for d in (0, 200)]
    machine = describe_machine()
    table = report(results, machine)
    print("\n" + table)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    write_benchmarks(
        "## Switchover write pause\n\n"
        "How long a planned switchover holds writes beyond what the clusters themselves need to\n"
        "promote: `tests/python/test_switchover.py::test_added_pause_measurement` (debug build,\n"
        "milvus-standin over milvus-lite, 4 pymilvus writers inserting 10-row batches through\n"
        "switchyard, 20 switchovers alternating A→B→A per delay). **promote** is the job's\n"
        "`promote` step: the target applying the old primary's remaining log and promoting (it\n"
        "grows with the replication delay). **longest hold** is the job's `longest_hold_ms`: the\n"
        "longest any write waited at the gate. **added** = longest hold − promote, per switchover.\n"
        "**writer-observed** is the longest insert a writer saw overlapping the job (it includes the\n"
        "insert's own service time, see the last column). Most of what is added is the drain: the\n"
        "held writes wait for the slowest insert already in flight to the old primary.\n"
        "Target: added ≤ 50 ms at p99: "
        + ", ".join(f"{'met' if r['added_hold_p99'] <= TARGET_ADDED_P99_MS else 'missed'} at {r['delay_ms']} ms"
                    for r in results) + ".\n\n"
        f"Run: {time.strftime('%Y-%m-%d')}, commit {sha}. Machine: {machine}.\n\n" + table)
    for r in results:
        met = "met" if r["added_hold_p99"] <= TARGET_ADDED_P99_MS else "MISSED"
        print(f"target: added pause p99 <= {TARGET_ADDED_P99_MS:.0f} ms at {r['delay_ms']} ms delay: {met} "
              f"({r['added_hold_p99']:.1f} ms)")
        # The target is recorded, not asserted: on 2 shared cores a single slow insert in flight
        # (the drain waits for it) moves p99 of 20 samples. This guards against regressions.
        assert r["added_hold_p99"] <= 3 * TARGET_ADDED_P99_MS, (r["delay_ms"], r["added_hold_p99"], r["rows"])
