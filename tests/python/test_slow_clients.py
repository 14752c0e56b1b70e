"""Hostile and slow clients cost only themselves.

- Four streams ask for 5 MiB+ Strong answers and never read them (their HTTP/2 stream window is
  0): another client's Insert and Strong Query through switchyard, to the same primary, each
  finish within 1 s.
- An Insert whose body stops after its first 300 KiB does not block a planned switchover (the
  drain waits only for writes a cluster could have applied); the stalled call is answered "not
  sent" after ``listener.body_timeout`` and nothing was applied anywhere.
"""

from __future__ import annotations

import base64
import time

import pytest

from h2raw import H2Raw, grpc_frame, unframe
from switchyard_bed import pb
from test_datapath import client_insert_request, make_collection, wait_replicated
from test_retry_safety import TOKEN, Pair, pair_factory  # noqa: F401 - the fixture
from testbed import bin_dir, wait_until

pytestmark = pytest.mark.skipif(
    not (bin_dir() / "milvus-standin").exists() or not (bin_dir() / "switchyard").exists(),
    reason=f"switchyard / milvus-standin binaries not built in {bin_dir()} (cargo build --bins)",
)

AUTH = (("authorization", base64.b64encode(TOKEN.encode()).decode()),)


def in_flight(p: Pair, cluster: str) -> int:
    return {c["id"]: c for c in p.api("GET", "/v1/clusters").json()}[cluster]["in_flight"]


def big_collection(client, name: str, rows: int, text: int) -> None:
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("vec", DataType.FLOAT_VECTOR, dim=4)
    s.add_field("text", DataType.VARCHAR, max_length=text + 16)
    ip = MilvusClient.prepare_index_params()
    ip.add_index("vec", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=s, index_params=ip, consistency_level="Strong")
    for start in range(0, rows, 500):
        client.insert(name, [{"id": i, "vec": [float(i), 0.0, 0.0, 1.0], "text": f"{i:08d}" + "x" * text}
                             for i in range(start, min(rows, start + 500))])


# (stalled streams, text bytes per row, least answer size): the figures (4 streams of 5 MiB+),
# and the shape measured to stall every call to the primary before (8 unread 3 MB answers).
@pytest.mark.parametrize("stalled,text,least", [(4, 1000, 5 << 20), (8, 500, 3_000_000)], ids=["4x5MiB", "8x3MB"])
def test_clients_that_stop_reading_stall_only_themselves(pair_factory, stalled, text, least):
    p = pair_factory()
    client = p.client()
    big_collection(client, "big", rows=6000, text=text)
    milvus_pb2, common_pb2 = pb()
    query = milvus_pb2.QueryRequest(
        collection_name="big", expr="id >= 0", output_fields=["text"],
        query_params=[common_pb2.KeyValuePair(key="limit", value="6000")],
        consistency_level=common_pb2.ConsistencyLevel.Strong).SerializeToString()
    # Sanity: the answer really is over 5 MiB (read by a client that reads).
    reader = H2Raw(p.sy.addr)
    _, body, trailers = reader.answer(reader.call("Query", query, AUTH), timeout=30)
    reader.close()
    assert trailers.get("grpc-status") == "0" and len(body) > least, (trailers, len(body))

    reads_before = p.a.state()["counters"]["reads_data"]
    stuck = H2Raw(p.sy.addr, stream_window=0)  # never grants window, never reads again
    for _ in range(stalled):
        stuck.call("Query", query, AUTH)
    wait_until(lambda: p.a.state()["counters"]["reads_data"] - reads_before >= stalled and in_flight(p, "cluster-a") >= stalled,
               timeout=20, what=f"the {stalled} stalled queries answered by cluster-a and held in switchyard")
    try:
        other = p.client()
        timings = []
        for i in range(3):
            t0 = time.monotonic()
            other.insert("big", [{"id": 100_000 + i, "vec": [1.0, 0.0, 0.0, 1.0], "text": "y"}], timeout=10)
            t1 = time.monotonic()
            rows = other.query("big", filter=f"id == {100_000 + i}", output_fields=["id"],
                               consistency_level="Strong", timeout=10)
            t2 = time.monotonic()
            assert [r["id"] for r in rows] == [100_000 + i]
            timings.append((t1 - t0, t2 - t1))
        print(f"with {stalled} stalled readers of {len(body) / 2**20:.1f} MiB answers: insert/strong-query seconds {timings}; "
              f"switchyard RSS {p.sy.rss_kib() / 1024:.1f} MiB")
        assert all(a < 1.0 and b < 1.0 for a, b in timings), timings
        assert in_flight(p, "cluster-a") >= stalled, "the stalled readers were cut, not merely isolated"
        other.close()
    finally:
        stuck.close()
    wait_until(lambda: in_flight(p, "cluster-a") == 0, timeout=10, what="the stalled calls to end with their connection")
    client.close()


def test_half_sent_write_does_not_block_a_switchover(pair_factory):
    p = pair_factory(listener={"body_timeout": "3s"})
    client = p.client()
    make_collection(client, "half", rows=5)
    wait_replicated([p.b], "half", 5)
    msg = client_insert_request("half", list(range(1000, 1000 + 40_000))).SerializeToString()
    framed = grpc_frame(msg)
    assert len(framed) > 600 << 10
    served = {cid: s.state()["counters"]["writes_served"] for cid, s in p.standins.items()}
    h = H2Raw(p.sy.addr)
    sid = h.start("Insert", AUTH)
    h.send(sid, framed[: 300 << 10])  # ...and nothing more
    wait_until(lambda: in_flight(p, "cluster-a") == 1, timeout=10, what="the half-sent insert streaming to cluster-a")

    t0 = time.monotonic()
    r = p.api("POST", "/v1/switchover", {"target": "cluster-b"})
    assert r.status_code == 202, r.text
    job = p.wait_job(r.json()["job_id"], timeout=60)
    print(f"switchover with a half-sent insert: {job['state']} in {time.monotonic() - t0:.3f}s; "
          f"steps {[(s['name'], s.get('detail')) for s in job['steps']]}")
    assert job["state"] == "succeeded", job

    headers, body, trailers = h.answer(sid, timeout=15)
    h.close()
    milvus_pb2, _ = pb()
    res = milvus_pb2.MutationResult.FromString(unframe(body))
    print(f"half-sent insert answered: {headers.get(':status')} {trailers} {res.status.code} {res.status.reason}")
    assert trailers.get("grpc-status") == "0" and (res.status.code, res.status.error_code) == (8, 49), (trailers, res)
    assert res.status.reason.startswith("switchyard: request body stalled for 3s (listener.body_timeout)"), res.status
    assert res.status.reason.endswith("not sent, safe to retry"), res.status
    after = {cid: s.state()["counters"]["writes_served"] for cid, s in p.standins.items()}
    assert after == served, (served, after)  # applied nowhere
    client.close()
