"""examples/canned_milvus.rs answers real gRPC clients with messages they decode.

The canned upstream is what scripts/bench-compare.sh measures proxies against; these tests make
sure its answers are what a Milvus SDK would accept, so benchmark figures are for real gRPC.
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")
milvus_pb2 = pytest.importorskip("pymilvus.grpc_gen.milvus_pb2")
milvus_pb2_grpc = pytest.importorskip("pymilvus.grpc_gen.milvus_pb2_grpc")
schema_pb2 = pytest.importorskip("pymilvus.grpc_gen.schema_pb2")
common_pb2 = pytest.importorskip("pymilvus.grpc_gen.common_pb2")

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("SWITCHYARD_BIN_DIR", REPO / "target" / "debug"))
CANNED = BIN_DIR / "examples" / "canned_milvus"


@pytest.fixture(scope="module")
def canned():
    if not CANNED.exists():
        pytest.skip(f"{CANNED} is not built (cargo build --examples)")
    proc = subprocess.Popen(
        [str(CANNED), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        line = proc.stdout.readline()
        m = re.match(r"canned-milvus listening on (127\.0\.0\.1:\d+)$", line.strip())
        assert m, f"unexpected first line: {line!r}"
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def stub(canned):
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(canned, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield milvus_pb2_grpc.MilvusServiceStub(channel)


def test_search_answers_a_decodable_261_byte_frame(stub):
    resp, call = stub.Search.with_call(
        milvus_pb2.SearchRequest(db_name="default", collection_name="bench", nq=1), timeout=10
    )
    assert call.code() == grpc.StatusCode.OK
    assert resp.status.error_code == 0 and resp.status.code == 0
    assert resp.results.top_k == 10
    assert len(resp.results.ids.int_id.data) == 10
    assert len(resp.results.scores) == 10
    assert resp.ByteSize() + 5 == 261


def test_insert_of_8_mib_answers_mutation_result(stub):
    dim, rows = 128, 16384
    field = schema_pb2.FieldData(
        type=schema_pb2.DataType.FloatVector,
        field_name="vector",
        vectors=schema_pb2.VectorField(dim=dim, float_vector=schema_pb2.FloatArray(data=[0.5] * (dim * rows))),
    )
    req = milvus_pb2.InsertRequest(db_name="default", collection_name="bench", fields_data=[field], num_rows=rows)
    assert req.ByteSize() >= 8 << 20
    t0 = time.monotonic()
    resp = stub.Insert(req, timeout=30)
    assert time.monotonic() - t0 < 10
    assert resp.status.error_code == 0
    assert resp.insert_cnt == 1


def test_other_methods_answer_ok(stub):
    resp, call = stub.GetVersion.with_call(milvus_pb2.GetVersionRequest(), timeout=10)
    assert call.code() == grpc.StatusCode.OK
    assert resp.status.error_code == 0


def test_check_health_says_healthy(stub):
    """A proxy probing its upstream (switchyard does) must keep it in service."""
    resp = stub.CheckHealth(milvus_pb2.CheckHealthRequest(), timeout=10)
    assert resp.status.error_code == 0
    assert resp.isHealthy


def test_stats_count_calls_by_method(canned, stub):
    def stats():
        out = subprocess.run(["nghttp", f"http://{canned}/canned/stats"], capture_output=True, text=True, timeout=10)
        return json.loads(out.stdout)

    if not shutil.which("nghttp"):
        pytest.skip("nghttp (Debian nghttp2-client) is not installed")
    before = stats()
    stub.Search(milvus_pb2.SearchRequest(), timeout=10)
    stub.Search(milvus_pb2.SearchRequest(), timeout=10)
    stub.CheckHealth(milvus_pb2.CheckHealthRequest(), timeout=10)
    after = stats()
    assert after["Search"] - before["Search"] == 2
    assert after["Insert"] == before["Insert"]
    assert after["other"] - before["other"] == 1
    assert after["requests"] - before["requests"] == 3
    assert after["request_bytes"] > before["request_bytes"]


def test_bench_request_bodies_decode_as_milvus_messages():
    """The hand-encoded request bodies in scripts/bench_compare.py are valid Milvus requests."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_compare", REPO / "scripts" / "bench_compare.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)

    search = bench.search_request()
    assert len(search) == 69 and search[0] == 0 and int.from_bytes(search[1:5], "big") == 64
    req = milvus_pb2.SearchRequest.FromString(search[5:])
    assert (req.db_name, req.collection_name, req.nq) == ("default", "bench", 1)
    group = common_pb2.PlaceholderGroup.FromString(req.placeholder_group)
    assert group.placeholders[0].type == common_pb2.PlaceholderType.FloatVector
    assert len(group.placeholders[0].values[0]) == 8 * 4

    insert = bench.insert_request(rows=4, dim=8)
    ins = milvus_pb2.InsertRequest.FromString(insert[5:])
    assert ins.num_rows == 4
    assert list(ins.fields_data[0].vectors.float_vector.data) == [0.5] * 32
    assert len(bench.insert_request()) >= 8 << 20
