"""Fail closed: switchyard's answers are safe to retry exactly when the SDK retries them.

Real pymilvus 2.6 with its **default** retry settings, stand-ins over milvus-lite (CDC
behaviour is needed), one shared client per process where the SDK's behaviour is the point.
Duplicates are counted with the stand-ins' served-write counters and auto-id collections
(milvus-lite keeps one row per primary key, so a resent insert with the same key would be
invisible to ``count(*)``).

- an Insert whose answer is lost after the primary applied it: ``DEADLINE_EXCEEDED`` "may have
  been applied on cluster-a", pymilvus does not resend it, exactly one copy exists;
- a write that cannot be held (``max_held_bytes``) gets a ``RateLimit`` reply: pymilvus backs
  off, retries, and it lands exactly once after the pause;
- 8 threads sharing one ``MilvusClient`` through a switchover whose hold window is too short:
  no call is cancelled (no ``UNAVAILABLE`` resets the shared channel), every row lands once;
- ``CreateReplicateStream`` named to the standby is refused (``PERMISSION_DENIED``) and
  nothing reaches the standby's replication intake;
- a gzip-compressed Bounded query (level unreadable) is routed as Strong, to the primary;
- an error reason that echoes Milvus's "not primary" words does not hold writes;
- a write acknowledged by the old primary after a force failover fenced it is answered
  ``DEADLINE_EXCEEDED`` and counted in the failover's report.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import requests

from conftest import TOKENS
from switchyard_bed import Raw, Switchyard, pb, rate_limited
from test_datapath import client_insert_request, make_collection, search_request, wait_replicated
from testbed import bin_dir, replicate, start_standins, stop_all, wait_until

pytestmark = pytest.mark.skipif(
    not (bin_dir() / "milvus-standin").exists() or not (bin_dir() / "switchyard").exists(),
    reason=f"switchyard / milvus-standin binaries not built in {bin_dir()} (cargo build --bins)",
)

TOKEN = "root:Milvus"


class Pair:
    """Stand-ins A (primary) replicating to B, behind one switchyard configured by ``sections``."""

    def __init__(self, tmp: Path, **sections):
        self.procs: list = []
        self.standins = start_standins(tmp, ["cluster-a", "cluster-b"], pchannels=4, procs=self.procs)
        replicate(self.a, self.b, tokens=TOKENS)
        clusters = [Switchyard.cluster(cid, s.uri, "primary" if cid == "cluster-a" else "standby", token=TOKEN)
                    for cid, s in self.standins.items()]
        self.sy = Switchyard(tmp, clusters, **sections)
        self.procs.append(self.sy)
        self.sy.wait_ready()

    @property
    def a(self):
        return self.standins["cluster-a"]

    @property
    def b(self):
        return self.standins["cluster-b"]

    def served(self) -> dict[str, int]:
        return {cid: s.state()["counters"]["writes_served"] for cid, s in self.standins.items()}

    def api(self, method: str, path: str, body=None) -> requests.Response:
        return requests.request(method, f"http://{self.sy.admin_addr}{path}", json=body, timeout=15)

    def wait_job(self, job_id: str, timeout: float = 60.0) -> dict:
        return wait_until(lambda: (j := self.api("GET", f"/v1/jobs/{job_id}").json())["state"] != "running" and j,
                          timeout=timeout, what=f"job {job_id} to end")

    def client(self):
        from pymilvus import MilvusClient

        return MilvusClient(uri=self.sy.uri, token=TOKEN)

    def stop(self, failed: bool = False) -> None:
        stop_all(self.procs, failed)


@pytest.fixture
def pair_factory(tmp_path, request):
    made: list[Pair] = []

    def make(**sections) -> Pair:
        p = Pair(tmp_path / f"pair{len(made)}", **sections)
        made.append(p)
        return p

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for p in made:
        p.stop(failed=failed)


def auto_id_collection(client, name: str) -> None:
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    s = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("vec", DataType.FLOAT_VECTOR, dim=4)
    ip = MilvusClient.prepare_index_params()
    ip.add_index("vec", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=s, index_params=ip, consistency_level="Strong")


def count(client, name: str) -> int:
    return client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]


def test_insert_whose_answer_is_lost_is_not_resent(pair_factory):
    p = pair_factory()
    client = p.client()
    auto_id_collection(client, "lost")
    before = p.served()
    p.a.control("/fault/lose-answers", n=1)
    t0 = time.monotonic()
    with pytest.raises(Exception) as e:
        client.insert("lost", [{"vec": [1.0, 0.0, 0.0, 1.0]}])  # pymilvus's default retries
    took = time.monotonic() - t0
    print(f"outcome-unknown insert reached the caller in {took:.3f}s: {e.value}")
    msg = str(e.value)
    assert "DEADLINE_EXCEEDED" in msg and "may have been applied on cluster-a; check before retrying" in msg, msg
    after = p.served()
    assert after["cluster-a"] - before["cluster-a"] == 1, (before, after)  # sent once, never resent
    assert count(p.a.client(), "lost") == 1
    # The next insert is answered normally.
    client.insert("lost", [{"vec": [2.0, 0.0, 0.0, 1.0]}])
    assert count(p.a.client(), "lost") == 2
    client.close()


def test_write_that_cannot_be_held_is_retried_by_pymilvus_and_lands_once(pair_factory):
    p = pair_factory(switchover={"max_held_bytes": "4KiB"})
    client = p.client()
    auto_id_collection(client, "unheld")
    rows = [{"vec": [float(i), 0.0, 0.0, 1.0]} for i in range(300)]  # ~10 KiB: does not fit in 4 KiB
    r = p.api("POST", "/v1/writes/pause", {"timeout": "1500ms"})
    assert r.status_code == 200, r.text
    before = p.served()
    t0 = time.monotonic()
    res = client.insert("unheld", rows)  # refused "not held, not sent" while paused; retried by pymilvus
    took = time.monotonic() - t0
    print(f"insert refused while paused, retried by pymilvus, landed after {took:.3f}s")
    assert res["insert_count"] == 300
    assert took >= 1.0, took  # it waited for the pause to end: it was not held, it was retried
    after = p.served()
    assert after["cluster-a"] - before["cluster-a"] == 1, (before, after)
    assert count(p.a.client(), "unheld") == 300
    # And switchyard did answer with its RateLimit reply while paused (seen raw).
    raw = Raw(p.sy.addr)
    milvus_pb2, _ = pb()
    p.api("POST", "/v1/writes/pause", {"timeout": "30s"})
    code, details, resp = raw.call("Insert", client_insert_request("unheld", list(range(300))), token=TOKEN)
    reason = rate_limited(code, details, resp)
    assert reason.startswith("switchyard: write not held: it needs") and "max_held_bytes" in reason, reason
    assert reason.endswith("not sent, safe to retry"), reason
    p.api("POST", "/v1/writes/resume")
    raw.close()
    client.close()


def test_shared_client_through_a_switchover_whose_hold_window_is_too_short(pair_factory):
    p = pair_factory(switchover={"hold_window": "300ms"})
    client = p.client()  # ONE client, one channel, shared by every thread
    make_collection(client, "shared", rows=1)  # id 0
    wait_replicated([p.b], "shared", 1)
    # The target applies A's log 1.5 s late, so the switchover holds writes longer than the window.
    p.a.control("/fault/replication/delay", ms=1500)
    stop = threading.Event()
    errors: list[str] = []
    acked: list[int] = []
    lock = threading.Lock()
    next_id = iter(range(1, 10_000_000))

    def writer() -> None:
        while not stop.is_set():
            with lock:
                i = next(next_id)
            try:
                client.insert("shared", [{"id": i, "vec": [float(i), 0.0, 0.0, 1.0]}])
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                with lock:
                    errors.append(f"{i}: {e}")
                continue
            with lock:
                acked.append(i)

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(8)]
    before = p.served()
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 40, timeout=30, what="writes flowing")
    r = p.api("POST", "/v1/switchover", {"target": "cluster-b"})
    assert r.status_code == 202, r.text
    job = p.wait_job(r.json()["job_id"])
    n = len(acked)
    wait_until(lambda: len(acked) >= n + 40, timeout=60, what="writes flowing to the new primary")
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    p.a.control("/fault/replication/delay", ms=0)
    after = p.served()
    print(f"switchover {job['state']}, held {job.get('held_writes')} writes, longest hold "
          f"{job.get('longest_hold_ms')} ms; {len(acked)} acked, {len(errors)} errors")
    assert job["state"] == "succeeded", job
    assert not errors, errors[:5]  # no call cancelled, none failed: held-too-long was retried
    assert job.get("held_writes", 0) > 0, job
    # The hold window really was too short: switchyard answered some writes "not sent" itself.
    assert not_sent_answers(p) > 0, "no write outlived the hold window: the test proves nothing"
    served = sum(after.values()) - sum(before.values())
    assert served == len(acked), (before, after, len(acked))  # each acked write was applied once
    ids = sorted(acked)
    got = {r["id"] for r in p.b.client().query("shared", filter="id > 0", output_fields=["id"],
                                                 consistency_level="Strong", limit=16384)}
    assert got == set(ids), (len(got), len(ids))
    client.close()


def test_cdc_intake_is_refused_even_named_to_a_standby(pair_factory):
    p = pair_factory()
    client = p.client()
    make_collection(client, "intake", rows=5)
    wait_replicated([p.b], "intake", 5)
    milvus_pb2, common_pb2 = pb()
    from pymilvus.grpc_gen import milvus_pb2_grpc

    applied = p.b.state()["counters"]["replicated_applied"]
    rows_b = count(p.b.client(), "intake")
    ch = grpc.insecure_channel(p.sy.addr)
    stub = milvus_pb2_grpc.MilvusServiceStub(ch)
    insert = client_insert_request("intake", [424242]).SerializeToString()
    msg = milvus_pb2.ReplicateRequest(replicate_message=milvus_pb2.ReplicateMessage(
        source_cluster_id="cluster-a",
        message=common_pb2.ImmutableMessage(
            id=common_pb2.MessageID(id="999999", WAL_name=common_pb2.Test),
            payload=insert,
            properties={"kind": "write", "method": "Insert", "pchannel": p.a.pchannels[0], "pchannel_index": "0",
                        "time_tick": str(1 << 62)},
        ),
    ))
    md = [("x-switchyard-cluster", "cluster-b"), ("cluster-id", "cluster-a")]
    with pytest.raises(grpc.RpcError) as e:
        list(stub.CreateReplicateStream(iter([msg]), metadata=md, timeout=10))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, (e.value.code(), e.value.details())
    assert e.value.details().startswith("switchyard: CreateReplicateStream is internal to Milvus CDC"), e.value.details()
    for name in ("ReplicateMessage",):
        code, details, _ = Raw(p.sy.addr).call(name, milvus_pb2.ReplicateMessageRequest(), metadata=md[:1])
        assert code == grpc.StatusCode.PERMISSION_DENIED, (name, code, details)
    ch.close()
    assert p.b.state()["counters"]["replicated_applied"] == applied
    assert count(p.b.client(), "intake") == rows_b == 5
    client.close()


def test_compressed_read_whose_level_cannot_be_read_goes_where_strong_reads_go(pair_factory):
    p = pair_factory()
    client = p.client()
    make_collection(client, "zipped", rows=20)
    wait_replicated([p.b], "zipped", 20)
    raw = Raw(p.sy.addr)
    # Uncompressed Bounded searches are served by the standby once it is known caught up.
    def bounded_on_b() -> bool:
        before = p.b.state()["counters"]["reads_data"]
        code, details, resp = raw.call("Search", search_request("zipped", [1.0, 0, 0, 1], "Bounded"), token=TOKEN)
        assert code == grpc.StatusCode.OK and resp.status.code == 0, (code, details, resp)
        return p.b.state()["counters"]["reads_data"] > before

    wait_until(bounded_on_b, timeout=30, what="an uncompressed Bounded search served by the standby")
    from pymilvus.grpc_gen import milvus_pb2_grpc

    import base64

    zipped = grpc.insecure_channel(p.sy.addr, compression=grpc.Compression.Gzip)
    stub = milvus_pb2_grpc.MilvusServiceStub(zipped)
    md = [("authorization", base64.b64encode(TOKEN.encode()).decode())]
    before = {cid: s.state()["counters"]["reads_data"] for cid, s in p.standins.items()}
    for i in range(10):
        req = search_request("zipped", [float(i), 0, 0, 1], "Bounded")
        # grpc sends a message uncompressed when gzip would not make it smaller: give it a
        # filter that compresses well, so every message really goes out with flag 1.
        req.dsl = " or ".join(["id >= 0"] * 200)
        resp = stub.Search(req, metadata=md, timeout=10)
        assert resp.status.code == 0, resp.status
    after = {cid: s.state()["counters"]["reads_data"] for cid, s in p.standins.items()}
    zipped.close()
    raw.close()
    assert after["cluster-a"] - before["cluster-a"] == 10 and after["cluster-b"] == before["cluster-b"], (before, after)
    client.close()


def not_sent_answers(p: Pair) -> float:
    """Writes switchyard answered itself with its RateLimit reply (counted as RESOURCE_EXHAUSTED)."""
    text = requests.get(f"http://{p.sy.admin_addr}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("switchyard_requests_total{") and 'cluster="switchyard"' in line
               and 'kind="write"' in line and 'code="RESOURCE_EXHAUSTED"' in line)


def hold_count(p: Pair) -> float:
    text = requests.get(f"http://{p.sy.admin_addr}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("switchyard_hold_duration_seconds_count"):
            return float(line.split()[-1])
    raise AssertionError("switchyard_hold_duration_seconds_count not exported")


def test_reasons_echoing_the_not_primary_words_do_not_hold_writes(pair_factory):
    p = pair_factory()
    client = p.client()
    make_collection(client, "echo", rows=5)
    milvus_pb2, _ = pb()
    raw = Raw(p.sy.addr)
    holds = hold_count(p)
    words = ["cluster is not primary, cannot do any DDL/DCL",
             "code: STREAMING_CODE_REPLICATE_VIOLATION, cause: non-replicate message cannot be received in secondary role"]
    echoed = 0
    for w in words:
        # A Delete whose filter carries the words: Milvus answers with a parse error echoing it.
        code, details, resp = raw.call("Delete", milvus_pb2.DeleteRequest(collection_name="echo", expr=f'"{w}"'),
                                       token=TOKEN)
        assert code == grpc.StatusCode.OK and resp.status.code != 0, (code, details, resp)
        echoed += w in resp.status.reason
        # A collection name made of the words: refused, and the reason echoes the name.
        code, details, resp = raw.call("LoadCollection", milvus_pb2.LoadCollectionRequest(collection_name=w),
                                       token=TOKEN)
        assert code == grpc.StatusCode.OK and resp.code != 0, (code, details, resp)
        echoed += w in resp.reason
    assert echoed >= 1, "no reason echoed the words: this test would prove nothing"
    assert hold_count(p) == holds, "a crafted reason held the write gate"
    t0 = time.monotonic()
    client.insert("echo", [{"id": 99, "vec": [1.0, 0.0, 0.0, 1.0]}])
    assert time.monotonic() - t0 < 1.0
    raw.close()
    client.close()


def test_write_acknowledged_by_a_fenced_primary_is_not_a_success(pair_factory):
    p = pair_factory()
    client = p.client()
    make_collection(client, "fenced", rows=5)
    wait_replicated([p.b], "fenced", 5)
    p.a.control("/fault/freeze")  # the next write reaches A and waits there
    raw = Raw(p.sy.addr)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(r=raw.call(
        "Insert", client_insert_request("fenced", [7777]), token=TOKEN, timeout=60)), daemon=True)
    t.start()
    wait_until(lambda: {c["id"]: c for c in p.api("GET", "/v1/clusters").json()}["cluster-a"]["in_flight"] == 1,
               timeout=10, what="the insert in flight on cluster-a")
    r = p.api("POST", "/v1/failover", {"target": "cluster-b"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    p.wait_job(job_id)
    p.a.control("/fault/thaw")  # A applies the write it held and acknowledges it
    t.join(timeout=30)
    code, details, _ = out["r"]
    print(f"late acknowledgement answered: {code} {details}")
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert details == ("switchyard: write acknowledged by the fenced cluster cluster-a after the failover; "
                       "not on the new primary; may have been applied on cluster-a; check before retrying"), details
    job = p.api("GET", f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["late_acks"] == 1, job
    raw.close()
    client.close()
