"""pytest fixtures over the test bed (see testbed.py).

- ``lite_factory`` / ``lite``: milvus-lite servers, stopped at teardown; ``lite_factory.many(n)``
  starts ``n`` in parallel.
- ``standin_factory``: ``make(cluster_id, backend=None, **Standin kwargs)``; each stand-in gets
  its own milvus-lite unless ``backend`` is given. Stopped at teardown; on a failed test the
  tail of every stand-in log is printed.
- ``pair``: stand-ins A (``cluster-a``) and B (``cluster-b``), 4 pchannels each, with
  replication A -> B configured through pymilvus (tokens set, so redaction shows).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testbed import MilvusLite, Standin, kill_all, replicate  # noqa: E402

TOKENS = {"cluster-a": "root:Milvus", "cluster-b": "root:Milvus", "cluster-c": "root:Milvus"}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def lite_factory(tmp_path):
    made = []

    def make() -> MilvusLite:
        lite = MilvusLite(tmp_path, start=False)
        made.append(lite)
        return lite.start()

    def many(n: int) -> list:
        """``n`` servers, started in parallel (each takes about a second)."""
        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(lambda _: make(), range(n)))

    make.many = many
    yield make
    for lite in made:
        lite.stop()


@pytest.fixture
def lite(lite_factory) -> MilvusLite:
    return lite_factory()


@pytest.fixture
def standin_factory(request, tmp_path, lite_factory):
    made = []

    def make(cluster_id: str, backend: MilvusLite = None, **kwargs) -> Standin:
        backend = backend or lite_factory()
        kwargs.setdefault("workdir", tmp_path)
        s = Standin(cluster_id, backend.uri, **kwargs)
        s.lite = backend
        made.append(s)
        return s

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for s in made:
        s.stop()
        if failed and s.proc:
            print(f"\n--- {s.cluster_id} log ({s.proc.log_path}) ---\n{s.proc.tail(60)}")


@dataclass
class Pair:
    a: Standin
    b: Standin
    config: dict


@pytest.fixture
def pair(standin_factory, lite_factory) -> Pair:
    la, lb = lite_factory.many(2)
    a = standin_factory("cluster-a", la)
    b = standin_factory("cluster-b", lb)
    cfg = replicate(a, b, tokens=TOKENS)
    return Pair(a, b, cfg)


def pytest_sessionfinish(session, exitstatus):
    kill_all()


# The proxy's own fixtures (switchyard_bed.py): ``switchyard_factory``.
from switchyard_bed import switchyard_factory  # noqa: E402,F401
