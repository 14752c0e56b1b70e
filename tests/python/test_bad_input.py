"""Bad input at the gRPC endpoint, one case at a time, each with its precise answer.

Every case runs between two checks that the proxy still serves real calls: on a connection
opened before the bad input (other connections are unaffected) and on a fresh one. Behind the
proxy are two ``milvus-standin`` clusters (A primary, B standby) whose counters show what
reached them. The listener's ``max_message_size`` is 1 MiB here.

- HTTP/1.1 -> ``505`` with a ``switchyard:`` text;
- HTTP/2 but not gRPC: a non-gRPC content-type -> ``415``, a GET -> ``405``;
- malformed HTTP/2 after a valid preface -> GOAWAY, connection closed;
- a header list over 16 KiB -> ``431``, nothing forwarded;
- an unknown method -> routed as a write to the primary only, whose UNIMPLEMENTED comes back;
- a 2 MiB message -> RESOURCE_EXHAUSTED from switchyard, nothing forwarded;
- a bad config -> ``check-config`` lists every problem and exits 1; ``run`` exits 2.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess

import grpc
import pytest
import requests

from switchyard_bed import Raw, Switchyard, pb, switchyard_cli
from testbed import MilvusLite, Standin, bin_dir, replicate

LIMIT = 1 << 20
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY, SETTINGS = 0x7, 0x4

pytestmark = pytest.mark.skipif(
    not (bin_dir() / "milvus-standin").exists() or not (bin_dir() / "switchyard").exists(),
    reason=f"switchyard / milvus-standin binaries not built in {bin_dir()} (cargo build --bins)",
)


class Bed:
    def __init__(self, tmp):
        self.procs = []
        self.lites = [MilvusLite(tmp), MilvusLite(tmp)]
        self.procs += self.lites
        self.a = Standin("cluster-a", self.lites[0].uri, workdir=tmp)
        self.b = Standin("cluster-b", self.lites[1].uri, workdir=tmp)
        self.procs += [self.a, self.b]
        replicate(self.a, self.b)
        self.sy = Switchyard(tmp, [Switchyard.cluster("cluster-a", self.a.uri, "primary"),
                                   Switchyard.cluster("cluster-b", self.b.uri)],
                             listener={"max_message_size": "1MiB"})
        self.procs.append(self.sy)
        self.sy.wait_ready()
        self.other = Raw(self.sy.addr)  # a connection that lives through every case

    def counters(self) -> dict:
        return {"cluster-a": self.a.state()["counters"], "cluster-b": self.b.state()["counters"]}

    def metric(self, kind: str, cluster: str, code: str) -> int:
        text = requests.get(f"http://{self.sy.admin_addr}/metrics", timeout=10).text
        m = re.search(rf'^switchyard_requests_total\{{kind="{kind}",cluster="{cluster}",code="{code}"\}} (\d+)$',
                      text, re.M)
        return int(m.group(1)) if m else 0

    def assert_serving(self) -> None:
        """A real call works on the long-lived connection and on a new one."""
        milvus_pb2, _ = pb()
        assert self.sy.alive(), self.sy.tail()
        code, details, resp = self.other.call("ShowCollections", milvus_pb2.ShowCollectionsRequest())
        assert code == grpc.StatusCode.OK and resp.status.code == 0, (code, details)
        fresh = Raw(self.sy.addr)
        code, details, resp = fresh.call("GetVersion", milvus_pb2.GetVersionRequest())
        fresh.close()
        assert code == grpc.StatusCode.OK and resp.version, (code, details)

    def stop(self, failed=False):
        self.other.close()
        for p in reversed(self.procs):
            if failed and getattr(p, "proc", None):
                print(f"\n--- {p!r} ({p.proc.log_path}) ---\n{p.proc.tail(40)}")
            p.stop()


@pytest.fixture(scope="module")
def bed(tmp_path_factory, request):
    b = Bed(tmp_path_factory.mktemp("badinput"))
    yield b
    b.stop(failed=request.session.testsfailed > 0)


@pytest.fixture
def served(bed):
    """Checks the proxy serves before and after the test's bad input."""
    bed.assert_serving()
    yield bed
    bed.assert_serving()


# --- raw sockets ---------------------------------------------------------------------------


def exchange(addr: str, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Sends ``data`` and reads until the server closes; returns (bytes, closed by server)."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                d = s.recv(65536)
            except socket.timeout:
                return out, False
            except ConnectionResetError:
                return out, True
            if not d:
                return out, True
            out += d


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Splits HTTP/2 frames: (type, flags, stream id, payload)."""
    out, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        ftype, flags = data[i + 3], data[i + 4]
        sid = int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF
        out.append((ftype, flags, sid, data[i + 9:i + 9 + length]))
        i += 9 + length
    return out


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def curl_h2(url: str, *args: str) -> tuple[int, str]:
    """``curl --http2-prior-knowledge``: (status, body)."""
    p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code}", *args, url],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    body, _, status = p.stdout.rpartition("\n")
    return int(status), body


needs_curl = pytest.mark.skipif(subprocess.run(["sh", "-c", "curl --version | grep -qi nghttp2"]).returncode != 0,
                                reason="curl with HTTP/2 (nghttp2) support is not installed")

PATH = "/milvus.proto.milvus.MilvusService/GetVersion"


# --- the cases -----------------------------------------------------------------------------


def test_http1_request_gets_505(served):
    data, closed = exchange(served.sy.addr, b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                            b"Content-Type: application/grpc\r\nContent-Length: 0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 505 "), data
    assert body.startswith(b"switchyard: ") and b"HTTP/2" in body, body
    assert closed


@needs_curl
def test_h2_non_grpc_content_type_gets_415(served):
    status, body = curl_h2(f"http://{served.sy.addr}{PATH}", "-H", "content-type: text/plain", "-d", "hello")
    assert status == 415, (status, body)
    assert body.startswith("switchyard: not a gRPC request") and "text/plain" in body, body
    status, body = curl_h2(f"http://{served.sy.addr}/")  # no content-type at all
    assert status == 415 and body.startswith("switchyard: "), (status, body)


@needs_curl
def test_h2_get_gets_405(served):
    status, body = curl_h2(f"http://{served.sy.addr}{PATH}", "-H", "content-type: application/grpc")
    assert status == 405, (status, body)
    assert body.startswith("switchyard: gRPC calls use POST, not GET"), body


@pytest.mark.parametrize("name,payload", [
    # An unknown frame type (ignored, as RFC 9113 says), then bytes that are no frame at all.
    ("garbage", frame(0xFF, 0, 0, b"\x00" * 4) + b"garbage!garbage!garbage!"),
    # SETTINGS whose length is not a multiple of 6: FRAME_SIZE_ERROR.
    ("settings-length", frame(SETTINGS, 0, 0, b"\x00" * 5)),
    # HEADERS on stream 0: PROTOCOL_ERROR.
    ("headers-on-stream-0", frame(SETTINGS, 0, 0, b"") + frame(0x1, 0x5, 0, b"\x82")),
    # DATA on a stream that was never opened (and is even): PROTOCOL_ERROR.
    ("data-on-idle-stream", frame(SETTINGS, 0, 0, b"") + frame(0x0, 0x1, 2, b"hello")),
    # A WINDOW_UPDATE with increment 0 on the connection: PROTOCOL_ERROR.
    ("window-update-0", frame(SETTINGS, 0, 0, b"") + frame(0x8, 0, 0, b"\x00\x00\x00\x00")),
])
def test_malformed_http2_gets_goaway_and_close(served, name, payload):
    data, closed = exchange(served.sy.addr, PREFACE + payload)
    fs = frames(data)
    goaways = [f for f in fs if f[0] == GOAWAY]
    assert goaways, f"{name}: no GOAWAY in {fs}"
    error_code = struct.unpack(">I", goaways[-1][3][4:8])[0]
    assert error_code in (0x1, 0x6), f"{name}: GOAWAY error {error_code:#x}"  # PROTOCOL_ / FRAME_SIZE_ERROR
    assert closed, f"{name}: connection left open"


@needs_curl
def test_oversized_header_list_is_refused(served):
    before = served.counters()
    status, body = curl_h2(f"http://{served.sy.addr}{PATH}", "-H", "content-type: application/grpc",
                           "-H", "te: trailers", "-H", "x-big: " + "x" * (20 << 10), "--data-binary", "@/dev/null")
    assert status == 431, (status, body)
    # Through grpcio too: the call fails and never reaches a cluster.
    milvus_pb2, _ = pb()
    r = Raw(served.sy.addr)
    code, details, _ = r.call("GetVersion", milvus_pb2.GetVersionRequest(), metadata=[("x-big", "y" * (20 << 10))])
    r.close()
    assert code != grpc.StatusCode.OK, details
    after = served.counters()
    for c in after:
        assert after[c]["control"] - before[c]["control"] < 20, (before, after)  # probes only
        assert after[c]["reads_data"] == before[c]["reads_data"], (before, after)


def test_unknown_method_goes_to_the_primary_as_a_write(served):
    r = Raw(served.sy.addr)
    before = {c: served.metric("write", c, "UNIMPLEMENTED") for c in ("cluster-a", "cluster-b")}
    for path in ("/milvus.proto.milvus.MilvusService/NoSuchMethod", "/some.other.Service/Call"):
        call = r.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            call(b"\x0a\x03abc", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED, (path, e.value.code(), e.value.details())
        assert not (e.value.details() or "").startswith("switchyard:"), e.value.details()  # the cluster's own
    r.close()
    after = {c: served.metric("write", c, "UNIMPLEMENTED") for c in ("cluster-a", "cluster-b")}
    assert after["cluster-a"] - before["cluster-a"] == 2, (before, after)
    assert after["cluster-b"] == before["cluster-b"], (before, after)


def big_insert():
    milvus_pb2, _ = pb()
    from pymilvus.grpc_gen import schema_pb2

    n = 1 << 16  # 65536 rows of 8 floats: 2 MiB of vectors
    vec = schema_pb2.FieldData(field_name="vec", type=schema_pb2.DataType.FloatVector,
                               vectors=schema_pb2.VectorField(dim=8, float_vector=schema_pb2.FloatArray(data=[0.5] * (8 * n))))
    return milvus_pb2.InsertRequest(collection_name="big", fields_data=[vec], num_rows=n)


def test_oversized_message_is_resource_exhausted(served):
    milvus_pb2, common_pb2 = pb()
    ins = big_insert()
    n = ins.ByteSize()
    assert n > 2 * LIMIT
    ph = common_pb2.PlaceholderGroup(placeholders=[common_pb2.PlaceholderValue(
        tag="$0", type=common_pb2.PlaceholderType.FloatVector, values=[b"\x00" * (2 << 20)])])
    search = milvus_pb2.SearchRequest(collection_name="big", placeholder_group=ph.SerializeToString(), nq=1)
    before = served.counters()
    r = Raw(served.sy.addr)
    for method, req in [("Insert", ins), ("Search", search)]:
        size = req.ByteSize()
        code, details, _ = r.call(method, req)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, code, details)
        assert details == (f"switchyard: message of {size} bytes exceeds listener.max_message_size "
                           f"({LIMIT} bytes); not sent"), details
    # The same connection still works.
    code, details, _ = r.call("GetVersion", milvus_pb2.GetVersionRequest())
    assert code == grpc.StatusCode.OK, details
    r.close()
    after = served.counters()
    for c in after:
        for k in ("writes_served", "writes_rejected", "reads_data"):
            assert after[c][k] == before[c][k], (c, k, before, after)


BAD_CONFIG = """
[listener]
address = "nowhere"
[routing]
reads = "sometimes"
max_read_lag = "10 parsecs"
[health]
interval = "0s"
[[clusters]]
id = "a"
uri = "ftp://x"
pchannels = 2
[[clusters]]
id = "a"
uri = "http://127.0.0.1:2"
pchannels = 3
"""
BAD_CONFIG_KEYS = ["listener.address", "routing.reads", "routing.max_read_lag", "health.interval",
                   "clusters[0].uri", "used twice", "exactly one cluster", "equal counts"]


def test_bad_config_check_config_lists_every_problem(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BAD_CONFIG)
    p = switchyard_cli("check-config", "--config", str(cfg))
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    out = p.stdout + p.stderr
    problems = [l for l in out.splitlines() if l.strip().startswith("- ")]
    for key in BAD_CONFIG_KEYS:
        assert sum(key in l for l in problems) >= 1, f"{key!r} not reported:\n{out}"
    assert len(problems) >= len(BAD_CONFIG_KEYS), out
    # A missing file is one problem, still exit 1.
    p = switchyard_cli("check-config", "--config", str(tmp_path / "missing.toml"))
    assert p.returncode == 1 and "missing.toml" in p.stderr, (p.returncode, p.stderr)


def test_bad_config_run_exits_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BAD_CONFIG)
    p = switchyard_cli("run", "--config", str(cfg))
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "listening" not in p.stdout
    for key in BAD_CONFIG_KEYS:
        assert key in p.stderr, f"{key!r} not reported:\n{p.stderr}"
