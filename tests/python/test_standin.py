"""milvus-standin behaves as a Milvus 2.6 cluster with CDC (issue 2, "Done when").

Driven by pymilvus 2.6 ``MilvusClient``; raw gRPC stubs only where the exact wire fields
matter. Each test starts its own milvus-lite backends and stand-ins (see conftest.py).
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from pymilvus import MilvusException
from pymilvus.grpc_gen import common_pb2, milvus_pb2, milvus_pb2_grpc

from conftest import TOKENS
from testbed import Standin, count_rows, replicate, star, update, wait_until

DML_TEXT = "code: STREAMING_CODE_REPLICATE_VIOLATION, cause: non-replicate message cannot be received in secondary role"
DDL_TEXT = "cluster is not primary, cannot do any DDL/DCL"
PRIMARY_ROLE_TEXT = "replicate message cannot be received in primary role"
LOGICAL_BITS = 18


def rows(start: int, n: int) -> list:
    return [{"id": i, "vector": [0.1, 0.2, 0.3, float(i % 97)]} for i in range(start, start + n)]


def stub(s: Standin) -> milvus_pb2_grpc.MilvusServiceStub:
    channel = grpc.insecure_channel(s.uri.removeprefix("http://"))
    return milvus_pb2_grpc.MilvusServiceStub(channel)


def insert_ts(client, collection: str, data: list) -> int:
    """Inserts through pymilvus's handler to read ``MutationResult.timestamp``."""
    return client._get_connection().insert_rows(collection, data).timestamp


def stays(pred, duration: float = 0.5, what: str = "condition") -> None:
    """Asserts ``pred`` holds throughout ``duration`` (for "nothing happens" checks)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert pred(), f"{what} stopped holding"
        time.sleep(0.05)


def in_thread(fn, *args, **kwargs):
    """Runs ``fn`` in a thread; returns (thread, result dict with 'value' or 'error')."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def redacted(cfg: dict) -> dict:
    return {
        "clusters": [
            {
                "cluster_id": c["cluster_id"],
                "connection_param": {"uri": c["connection_param"]["uri"], "token": "***" if c["connection_param"]["token"] else ""},
                "pchannels": c["pchannels"],
            }
            for c in cfg["clusters"]
        ],
        "cross_cluster_topology": cfg["cross_cluster_topology"],
    }


# --- Done when 1: pymilvus update_replicate_configuration builds A->B; rows inserted through A appear in B

def test_rows_inserted_through_a_appear_in_b(pair):
    a, b = pair.a, pair.b
    assert a.state()["role"] == "primary"
    st_b = b.state()
    assert st_b["role"] == "secondary" and st_b["source"] == "cluster-a"
    assert st_b["config"] == redacted(pair.config)
    got = b.client().get_replicate_configuration()
    assert [c.connection_param.token for c in got.clusters] == ["***", "***"]

    ca, cb = a.client(), b.client()
    assert ca.get_server_version().startswith("milvus-standin")
    ca.create_collection("books", dimension=4)
    ts = insert_ts(ca, "books", rows(0, 25))
    # MutationResult.timestamp is the WAL time tick: physical ms now, logical bits below.
    assert abs((ts >> LOGICAL_BITS) - time.time() * 1000) < 60_000
    wait_until(lambda: cb.has_collection("books") and count_rows(cb, "books") == 25, what="rows on B")
    hits = cb.query("books", filter="id in [3, 24]", output_fields=["id"])
    assert sorted(h["id"] for h in hits) == [3, 24]
    # B's checkpoint for that pchannel reaches the insert's tick (read-your-writes is measurable).
    wait_until(lambda: any(c["time_tick"] == ts for c in b.state()["checkpoints"]), what="checkpoint at the insert tick")
    counters = a.state()["counters"]
    assert counters["writes_served"] >= 4 and counters["writes_rejected"] == 0
    assert b.state()["counters"]["replicated_applied"] >= 4


# --- Done when 2: an insert and a create_collection on B fail with the exact Milvus errors

def test_writes_on_secondary_fail_with_milvus_errors(pair):
    a, b = pair.a, pair.b
    a.client().create_collection("c1", dimension=4)
    cb = b.client()
    wait_until(lambda: cb.has_collection("c1"), what="collection on B")

    raw = stub(b)
    mr = raw.Insert(milvus_pb2.InsertRequest(collection_name="c1", num_rows=1))
    assert (mr.status.code, mr.status.error_code, mr.status.retriable) == (65535, common_pb2.UnexpectedError, False)
    assert mr.status.reason == DML_TEXT
    st = raw.CreateCollection(milvus_pb2.CreateCollectionRequest(collection_name="c2"))
    assert (st.code, st.error_code, st.reason) == (65535, common_pb2.UnexpectedError, DDL_TEXT)
    st = raw.CreateCredential(milvus_pb2.CreateCredentialRequest(username="u", password="p"))
    assert (st.code, st.reason) == (65535, DDL_TEXT)

    with pytest.raises(MilvusException) as e:
        cb.create_collection("c2", dimension=4)
    assert (e.value.code, e.value.message) == (65535, DDL_TEXT)
    with pytest.raises(MilvusException) as e:
        cb.insert("c1", rows(0, 1), timeout=1)  # pymilvus retries REPLICATE_VIOLATION until its timeout
    assert e.value.code == 65535 and e.value.message.endswith(DML_TEXT)
    assert b.state()["counters"]["writes_rejected"] >= 4
    assert not cb.has_collection("c2")


# --- Done when 3: switchover; B primary with every row of A; the call to B returns only after A's fence

def test_switchover_waits_for_the_fence_and_keeps_every_row(pair):
    a, b = pair.a, pair.b
    ca, cb = a.client(), b.client()
    ca.create_collection("sw", dimension=4)
    ca.insert("sw", rows(0, 20))
    a.control("/fault/replication/pause")
    ca.insert("sw", rows(20, 30))  # logged on A, held back from B

    x = star(b, [a], TOKENS)
    update(a, x)  # the old primary first: demoted at once
    assert a.state()["role"] == "secondary"
    with pytest.raises(MilvusException) as e:
        ca.insert("sw", rows(100, 1), timeout=1)
    assert e.value.message.endswith(DML_TEXT)

    t, out = in_thread(update, b, x, timeout=60)
    wait_until(lambda: b.state()["pending"] == redacted(x), what="B waiting with X pending")
    stays(lambda: t.is_alive() and b.state()["role"] == "secondary", what="B waiting for A's fence")
    assert count_rows(cb, "sw") < 50

    a.control("/fault/replication/resume")
    t.join(timeout=30)
    assert not t.is_alive() and "error" not in out, out
    st = b.state()
    assert st["role"] == "primary" and st["pending"] is None and st["config"] == redacted(x)
    assert count_rows(cb, "sw") == 50  # the fence came after every row of A

    # B takes writes now and replicates them to A, its new secondary.
    cb.insert("sw", rows(50, 5))
    wait_until(lambda: count_rows(ca, "sw") == 55, what="B's rows on A")
    assert a.state()["source"] == "cluster-b"


# --- Done when 4: a second identical config call succeeds

def test_same_configuration_again_succeeds(pair):
    a, b = pair.a, pair.b
    before = a.state()["log_len"]
    update(a, pair.config)
    update(b, pair.config)
    replicate(a, b, tokens=TOKENS)
    assert a.state()["log_len"] == before  # no new fence: nothing changed
    assert a.state()["role"] == "primary" and b.state()["role"] == "secondary"


# --- Done when 5: force_promote works in both shapes and fails with Milvus's texts

@pytest.mark.parametrize("shape", ["empty", "current-cluster-only"])
def test_force_promote_on_a_secondary(pair, shape):
    a, b = pair.a, pair.b
    ca, cb = a.client(), b.client()
    ca.create_collection("fp", dimension=4)
    ca.insert("fp", rows(0, 10))
    wait_until(lambda: cb.has_collection("fp") and count_rows(cb, "fp") == 10, what="rows on B")
    before = {c["pchannel_index"]: c for c in b.state()["checkpoints"]}

    clusters = [] if shape == "empty" else [b.cluster(TOKENS["cluster-b"])]
    cb.update_replicate_configuration(clusters=clusters, cross_cluster_topology=[], force_promote=True)
    st = b.state()
    assert st["role"] == "primary"
    assert [c["cluster_id"] for c in st["config"]["clusters"]] == ["cluster-b"] and st["config"]["cross_cluster_topology"] == []
    salvage = {c["pchannel_index"]: c for c in st["salvage_checkpoints"]}
    assert salvage == before
    info = cb.get_replicate_info("cluster-a", b.pchannels[0])
    assert info["checkpoint"] is None
    assert info["salvage_checkpoint"]["cluster_id"] == "cluster-a"
    assert info["salvage_checkpoint"]["time_tick"] == before[0]["time_tick"]

    cb.insert("fp", rows(100, 1))  # B takes writes
    assert count_rows(cb, "fp") == 11
    # The old source is refused from now on.
    req = milvus_pb2.ReplicateRequest(replicate_message=milvus_pb2.ReplicateMessage(
        source_cluster_id="cluster-a",
        message=common_pb2.ImmutableMessage(
            id=common_pb2.MessageID(id="999", WAL_name=common_pb2.Test),
            properties={"kind": "write", "method": "Insert", "pchannel": a.pchannels[0], "pchannel_index": "0", "time_tick": str(1 << 62)},
        ),
    ))
    with pytest.raises(grpc.RpcError) as e:
        list(stub(b).CreateReplicateStream(iter([req]), metadata=[("cluster-id", "cluster-a")], timeout=10))
    assert PRIMARY_ROLE_TEXT in e.value.details()


def test_force_promote_errors_use_milvus_texts(pair, standin_factory):
    a, b = pair.a, pair.b
    with pytest.raises(MilvusException) as e:
        a.client().update_replicate_configuration(clusters=[], cross_cluster_topology=[], force_promote=True)
    assert e.value.code == 65535
    assert e.value.message.endswith("force promote can only be used on secondary clusters, current cluster is primary")

    c = standin_factory("cluster-c")
    with pytest.raises(MilvusException) as e:
        c.client().update_replicate_configuration(clusters=[], cross_cluster_topology=[], force_promote=True)
    assert e.value.message.endswith("force promote requires existing replicate configuration; current cluster has no configuration")

    with pytest.raises(MilvusException) as e:
        b.client().update_replicate_configuration(force_promote=True, **pair.config)
    assert e.value.message.endswith(
        "force promote requires empty cluster and topology fields; it promotes the cluster to primary automatically")
    assert b.state()["role"] == "secondary"


# --- Done when 6: get_replicate_info checkpoints stop moving while paused and catch up after resume

def test_replicate_info_checkpoints_follow_pause_and_resume(pair):
    a, b = pair.a, pair.b
    ca, cb = a.client(), b.client()
    ca.create_collection("cp", dimension=4)
    ts1 = insert_ts(ca, "cp", rows(0, 5))

    def tick(i: int) -> int:
        cp = cb.get_replicate_info(source_cluster_id="cluster-a", target_pchannel=b.pchannels[i])["checkpoint"]
        assert cp["cluster_id"] == "cluster-a" and cp["pchannel"] == a.pchannels[i]
        return cp["time_tick"]

    i = wait_until(lambda: next((i for i in range(4) if tick(i) == ts1), None) is not None and
                   next(i for i in range(4) if tick(i) == ts1), what="checkpoint at ts1")
    a.control("/fault/replication/pause")
    ts2 = insert_ts(ca, "cp", rows(5, 5))
    assert ts2 > ts1
    stays(lambda: tick(i) == ts1, what="checkpoint frozen while paused")
    assert count_rows(cb, "cp") == 5
    a.control("/fault/replication/resume")
    wait_until(lambda: tick(i) == ts2, what="checkpoint caught up")
    assert count_rows(cb, "cp") == 10
    # The source pchannel name is accepted too (pymilvus documents it so); a primary has no checkpoint.
    assert cb.get_replicate_info("cluster-a", a.pchannels[i])["checkpoint"]["time_tick"] == ts2
    assert ca.get_replicate_info("cluster-a", a.pchannels[i])["checkpoint"] is None
    metrics = a.metrics()
    seconds = f"{(ts2 >> LOGICAL_BITS) / 1000}"
    assert f'milvus_cdc_last_replicated_time_tick{{channel_name="{a.pchannels[i]}",target_channel_name="{b.pchannels[i]}"}} {seconds}' in metrics
    assert f'milvus_wal_last_confirmed_time_tick{{channel_name="{a.pchannels[i]}"}} {seconds}' in metrics


# --- Done when 7: a bad topology is refused with Milvus's text

def test_bad_topologies_are_refused_with_milvus_texts(pair):
    a, b = pair.a, pair.b
    ca = a.client()

    def refused(cfg: dict) -> str:
        with pytest.raises(MilvusException) as e:
            ca.update_replicate_configuration(**cfg)
        assert e.value.code == 65535
        return e.value.message

    both = star(a, [b], TOKENS)
    both["cross_cluster_topology"].append({"source_cluster_id": "cluster-b", "target_cluster_id": "cluster-a"})
    assert refused(both) == "no center node found, star topology must have exactly one center node"

    short = star(a, [b], TOKENS)
    short["clusters"][1]["pchannels"] = b.pchannels[:3]
    assert refused(short) == "cluster 'cluster-b' has 3 pchannels, but expected 4 (same as cluster 'cluster-a')"

    token = star(a, [b], {**TOKENS, "cluster-b": "other:secret"})
    assert refused(token) == "cluster 'cluster-b' connection_param.token cannot be changed"

    moved = star(a, [b], TOKENS)
    moved["clusters"][1]["connection_param"]["uri"] = "http://127.0.0.1:1"
    assert refused(moved) == f"cluster 'cluster-b' connection_param.uri cannot be changed: current={b.uri}, incoming=http://127.0.0.1:1"

    alone = {"clusters": [b.cluster(TOKENS["cluster-b"])], "cross_cluster_topology": []}
    assert refused(alone) == "current Milvus cluster 'cluster-a' must be included in the clusters list"
    assert a.state()["config"] == redacted(pair.config) and a.state()["role"] == "primary"


# --- Done when 8: no replicated row lost or duplicated when the target goes down and up under writes

def test_target_down_and_up_under_writes_loses_and_duplicates_nothing(pair):
    a, b = pair.a, pair.b
    ca, cb = a.client(), b.client()
    ca.create_collection("du", dimension=4)
    stop = threading.Event()
    batches = [0]

    def writer():
        while not stop.is_set():
            ca.insert("du", rows(batches[0] * 5, 5))
            batches[0] += 1

    t, out = in_thread(writer)
    for _ in range(2):
        start = batches[0]
        wait_until(lambda: batches[0] >= start + 5, what="writes before down")
        b.control("/fault/down")
        down_at = batches[0]
        wait_until(lambda: batches[0] >= down_at + 10, what="writes while B is down")
        with pytest.raises(grpc.RpcError):
            stub(b).GetVersion(milvus_pb2.GetVersionRequest(), timeout=1)
        b.control("/fault/up")
    wait_until(lambda: batches[0] >= down_at + 20, what="writes after up")
    stop.set()
    t.join(timeout=30)
    assert "error" not in out, out

    total = batches[0] * 5
    wait_until(lambda: count_rows(cb, "du") == total, timeout=30, what=f"{total} rows on B")
    ids = cb.query("du", filter="id >= 0", output_fields=["id"], limit=16384)
    assert sorted(r["id"] for r in ids) == list(range(total))
    # Every log entry of A was applied on B exactly once (re-sent ones were dropped).
    log_len = a.state()["log_len"]
    wait_until(lambda: b.state()["counters"]["replicated_applied"] >= log_len, what="B applied A's whole log")
    assert b.state()["counters"]["replicated_applied"] == log_len


# --- Done when 9: a stand-in restarted with the same --state-dir comes back with its role and configuration

def test_restart_with_state_dir_keeps_role_configuration_and_position(standin_factory, lite_factory, tmp_path):
    la, lb = lite_factory.many(2)
    a = standin_factory("cluster-a", la, state_dir=tmp_path / "state-a")
    b = standin_factory("cluster-b", lb, state_dir=tmp_path / "state-b")
    cfg = replicate(a, b, tokens=TOKENS)
    ca = a.client()
    ca.create_collection("rs", dimension=4)
    ca.insert("rs", rows(0, 10))
    wait_until(lambda: count_rows(b.client(), "rs") == 10, what="rows on B")
    before_a, before_b = a.state(), b.state()

    b.restart()
    a.restart()
    st_a, st_b = a.state(), b.state()
    assert (st_a["role"], st_b["role"]) == ("primary", "secondary")
    assert st_a["config"] == st_b["config"] == redacted(cfg)
    assert st_a["log_len"] == before_a["log_len"]
    assert st_b["checkpoints"] == before_b["checkpoints"]

    ca = a.client()
    ca.insert("rs", rows(10, 5))
    cb = b.client()
    wait_until(lambda: count_rows(cb, "rs") == 15, what="new rows on B after restarts")
    assert b.state()["counters"]["replicated_applied"] == 1  # only the new insert: resumed, not replayed
    with pytest.raises(MilvusException):
        cb.create_collection("nope", dimension=4)


# --- Beyond the list: rollback, protocol edges and faults the proxy's tests rely on

def test_a_demoted_cluster_does_not_take_its_role_back(pair):
    """As in Milvus: once A has taken a configuration naming B primary, the old configuration sent
    to A again does not undo it (the call waits until A's configuration equals it, and fails at
    its deadline: A stays secondary); B promotes once it has applied A's log up to the fence;
    the way back is a switch back from B."""
    a, b = pair.a, pair.b
    ca = a.client()
    ca.create_collection("rb", dimension=4)
    ca.insert("rb", rows(0, 3))
    a.control("/fault/replication/pause")
    x = star(b, [a], TOKENS)
    update(a, x)
    with pytest.raises(MilvusException) as e:
        update(b, x, timeout=1.5)
    assert "timeout waiting for the fence" in e.value.message
    assert b.state()["role"] == "secondary" and b.state()["pending"] == redacted(x)
    with pytest.raises(MilvusException):
        update(a, pair.config, timeout=1.5)  # no undoing a demotion
    assert a.state()["role"] == "secondary" and b.state()["role"] == "secondary"

    a.control("/fault/replication/resume")
    update(b, x)  # returns once A's fence is applied: B is primary
    assert b.state()["role"] == "primary" and a.state()["role"] == "secondary"
    cb = b.client()
    wait_until(lambda: cb.has_collection("rb") and count_rows(cb, "rb") == 3, what="A's rows on B")
    # The way back: B is told first, then A, which promotes once B's fence arrives.
    update(b, pair.config)
    update(a, pair.config)
    assert a.state()["role"] == "primary" and b.state()["role"] == "secondary"


def test_other_secondary_follows_the_new_primary(standin_factory, lite_factory):
    a, b, c = (standin_factory(f"cluster-{x}", lite) for x, lite in zip("abc", lite_factory.many(3)))
    old = replicate(a, b, c, tokens=TOKENS)
    ca = a.client()
    ca.create_collection("tri", dimension=4)
    ca.insert("tri", rows(0, 10))
    x = star(b, [a, c], TOKENS)
    update(a, x)
    update(b, x)  # returns once A's fence is applied: B is primary
    update(c, x)  # C switches its source to B once it has A's fence
    assert [s.state()["role"] for s in (a, b, c)] == ["secondary", "primary", "secondary"]
    assert a.state()["source"] == c.state()["source"] == "cluster-b"
    cb = b.client()
    assert count_rows(cb, "tri") == 10
    cb.insert("tri", rows(10, 5))
    for s in (a, c):
        cl = s.client()
        wait_until(lambda: count_rows(cl, "tri") == 15, what=f"B's rows on {s.cluster_id}")
    assert old != x


def test_replication_delay_makes_a_lagging_standby(standin_factory, lite_factory):
    la, lb = lite_factory.many(2)
    a = standin_factory("cluster-a", la, replication_delay="1500ms")
    b = standin_factory("cluster-b", lb)
    replicate(a, b)
    ca, cb = a.client(), b.client()
    ca.create_collection("lag", dimension=4)
    wait_until(lambda: cb.has_collection("lag"), timeout=15, what="collection on B")
    started = time.monotonic()
    ca.insert("lag", rows(0, 3))
    assert count_rows(cb, "lag") == 0  # held back for 1.5 s after it was written
    wait_until(lambda: count_rows(cb, "lag") == 3, timeout=15, what="delayed rows on B")
    assert time.monotonic() - started >= 1.4
    assert a.control("/fault/replication/delay", ms=0)["replication_delay_ms"] == 0
    ca.insert("lag", rows(3, 3))
    wait_until(lambda: count_rows(cb, "lag") == 6, timeout=1.0, what="undelayed rows on B")


def test_stream_protocol_and_faults(pair):
    a, b = pair.a, pair.b
    raw = stub(a)
    with pytest.raises(grpc.RpcError) as e:
        list(raw.CreateReplicateStream(iter([]), timeout=5))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details() == "cluster id not found in context"
    with pytest.raises(grpc.RpcError) as e:  # a replicated message at a primary
        list(raw.CreateReplicateStream(iter([milvus_pb2.ReplicateRequest(replicate_message=milvus_pb2.ReplicateMessage(
            source_cluster_id="cluster-b", message=common_pb2.ImmutableMessage(
                id=common_pb2.MessageID(id="1", WAL_name=common_pb2.Test),
                properties={"kind": "write", "method": "Insert", "pchannel_index": "0", "time_tick": "5"})))]),
            metadata=[("cluster-id", "cluster-b")], timeout=5))
    assert PRIMARY_ROLE_TEXT in e.value.details()

    assert raw.CheckHealth(milvus_pb2.CheckHealthRequest()).isHealthy
    a.control("/fault/unhealthy")
    assert not raw.CheckHealth(milvus_pb2.CheckHealthRequest()).isHealthy
    a.control("/fault/healthy")
    assert raw.GetVersion(milvus_pb2.GetVersionRequest()).version.startswith("milvus-standin-")

    ca = a.client()
    a.control("/fault/latency", ms=300)
    started = time.monotonic()
    ca.list_collections()
    assert time.monotonic() - started >= 0.3
    a.control("/fault/latency", ms=0)

    a.control("/fault/freeze")
    t, out = in_thread(ca.list_collections, timeout=20)
    stays(t.is_alive, duration=0.3, what="frozen call waiting")
    a.control("/fault/thaw")
    t.join(timeout=10)
    assert not t.is_alive() and "error" not in out
    st = a.state()
    assert st["faults"]["frozen"] is False and st["counters"]["reads_metadata"] >= 1
