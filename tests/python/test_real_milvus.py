"""switchyard in front of a real Milvus 2.3.5 with authentication and TLS.

One Milvus (PyPI ``milvus==2.3.5``, ``--authorization-enabled``, ``--tls-mode 1``) serves the
whole module; it is started from a fresh data dir on a free port base and stopped with SIGINT.
switchyard reaches it over ``https://`` with the test CA (``tls_ca``, ``tls_server_name``):

- the pymilvus workload (less what 2.3 lacks) passes through a plaintext listener with pymilvus
  2.6, and through a TLS listener with pymilvus 3.0 (``https://``, ``server_pem_path``);
- a wrong password reaches the client as Milvus's own UNAUTHENTICATED, untouched;
- TLS to the upstream is verified: with another CA, switchyard refuses to talk to it;
- a plaintext client cannot use the TLS listener.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from switchyard_bed import Raw, RealMilvus, Switchyard, make_certs, pb, rate_limited, venv_embd, venv_pm3
from testbed import bin_dir

HERE = Path(__file__).resolve().parent
TOKEN = "root:Milvus"

pytestmark = [
    pytest.mark.skipif(not (venv_embd() / "bin" / "milvus-server").exists(),
                       reason=f"{venv_embd()}/bin/milvus-server missing: create the milvus==2.3.5 venv (.ci/run does)"),
    pytest.mark.skipif(not (bin_dir() / "switchyard").exists(), reason=f"switchyard not built in {bin_dir()}"),
]


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> dict:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def milvus(tmp_path_factory, tls):
    m = RealMilvus(tmp_path_factory.mktemp("milvus"), "--authorization-enabled", "true", "--tls-mode", "1",
                   "--server-pem-path", tls["server"], "--server-key-path", tls["server_key"],
                   "--ca-pem-path", tls["ca"])
    yield m
    m.stop()


def upstream(milvus: RealMilvus, tls: dict, ca: str | None = None) -> list[dict]:
    return [Switchyard.cluster("cluster-a", f"https://{milvus.addr}", "primary", token=TOKEN,
                               tls_ca=ca or tls["ca"], tls_server_name="localhost")]


@pytest.fixture(scope="module")
def sy_plain(tmp_path_factory, milvus, tls):
    """A plaintext listener, TLS to Milvus."""
    sy = Switchyard(tmp_path_factory.mktemp("sy_plain"), upstream(milvus, tls))
    yield sy
    sy.stop()


@pytest.fixture(scope="module")
def sy_tls(tmp_path_factory, milvus, tls):
    """A TLS listener (the test CA's localhost certificate), TLS to Milvus."""
    sy = Switchyard(tmp_path_factory.mktemp("sy_tls"), upstream(milvus, tls),
                    listener={"tls_cert": tls["server"], "tls_key": tls["server_key"]})
    yield sy
    sy.stop()


def run_workload(python: Path, uri: str, name: str, *extra: str) -> dict:
    p = subprocess.run([str(python), str(HERE / "workload.py"), "--uri", uri, "--name", name, "--legacy",
                        "--token", TOKEN, "--deadline", "60", *extra], capture_output=True, text=True, timeout=300)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    summary = json.loads(lines[-1]) if lines else {}
    assert p.returncode == 0 and summary.get("ok"), f"workload failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return summary


def test_workload_pymilvus26_plain_listener_tls_upstream(sy_plain):
    summary = run_workload(Path(sys.executable), sy_plain.uri, "real26")
    assert summary["pymilvus"].startswith("2.6"), summary


def test_workload_pymilvus30_tls_listener(sy_tls, tls):
    python = venv_pm3() / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} missing: create the pymilvus 3.0 venv (.ci/run does)")
    assert sy_tls.uri.startswith("https://")
    summary = run_workload(python, sy_tls.uri, "real30", "--ca", tls["ca"], "--server-name", "localhost")
    assert summary["pymilvus"].startswith("3.0"), summary


def test_wrong_password_is_milvus_own_unauthenticated(milvus, sy_plain, tls):
    milvus_pb2, _ = pb()
    direct = Raw(milvus.addr, ca=tls["ca"])
    through = Raw(sy_plain.addr)
    cases = [
        ("ShowCollections", milvus_pb2.ShowCollectionsRequest()),          # a metadata read
        ("HasCollection", milvus_pb2.HasCollectionRequest(collection_name="x")),
        ("DropCollection", milvus_pb2.DropCollectionRequest(collection_name="x")),  # a write
    ]
    for method, req in cases:
        for token in ("root:wrong", "nobody:Milvus"):
            want = direct.call(method, req, token=token)
            got = through.call(method, req, token=token)
            assert want[0] == grpc.StatusCode.UNAUTHENTICATED, (method, want[:2])
            assert got[:2] == want[:2], (method, token, got[:2], want[:2])
            assert not got[1].startswith("switchyard:"), got[1]
        # No credentials at all: Milvus's own answer too.
        assert through.call(method, req)[:2] == direct.call(method, req)[:2]
    # And the right password works through switchyard.
    code, details, resp = through.call("ShowCollections", milvus_pb2.ShowCollectionsRequest(), token=TOKEN)
    assert code == grpc.StatusCode.OK and resp.status.error_code == 0, (code, details, resp)
    direct.close()
    through.close()


def test_tls_listener_refuses_plaintext_and_serves_pymilvus_https(sy_tls, tls):
    from pymilvus import MilvusClient

    c = MilvusClient(uri=sy_tls.uri, token=TOKEN, server_pem_path=tls["ca"], server_name="localhost")
    assert c.get_server_version().startswith("v2.3.5")
    assert isinstance(c.list_collections(), list)
    c.close()
    milvus_pb2, _ = pb()
    plain = Raw(sy_tls.addr)
    code, details, _ = plain.call("GetVersion", milvus_pb2.GetVersionRequest(), token=TOKEN, timeout=5)
    plain.close()
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)


def test_upstream_tls_is_verified(tmp_path, milvus, tls):
    """With a CA that did not sign Milvus's certificate, switchyard does not talk to it."""
    other = make_certs(tmp_path / "other")
    sy = Switchyard(tmp_path, upstream(milvus, tls, ca=other["ca"]))
    try:
        milvus_pb2, _ = pb()
        r = Raw(sy.addr)
        code, details, resp = r.call("ShowCollections", milvus_pb2.ShowCollectionsRequest(), token=TOKEN)
        r.close()
        reason = rate_limited(code, details, resp)  # never sent: safe to retry
        assert reason.startswith("switchyard:") and "cluster-a" in reason, reason
        assert "certificate" in reason.lower() or "tls" in reason.lower(), reason
    finally:
        sy.stop()
