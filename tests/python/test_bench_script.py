"""scripts/bench-compare.sh runs end to end (BENCH_QUICK=1) and every target answers.

switchyard is not among the targets yet; add it to TARGETS once `switchyard run` proxies.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("SWITCHYARD_BIN_DIR", REPO / "target" / "debug"))
TARGETS = ["direct", "haproxy", "nginx"]
WORKLOADS = ["unary", "insert8m", "latency"]


def test_quick_bench_measures_every_target(tmp_path):
    missing = [tool for tool in ("h2load", "nghttp", "haproxy", "nginx") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (Debian nghttp2-client, haproxy, nginx; .ci/run installs them)")
    if not (BIN_DIR / "examples" / "canned_milvus").exists():
        pytest.skip(f"{BIN_DIR}/examples/canned_milvus is not built (cargo build --examples)")

    out_json = tmp_path / "bench.json"
    env = dict(
        os.environ,
        BENCH_QUICK="1",
        BENCH_TARGETS=",".join(TARGETS),
        BENCH_BIN_DIR=str(BIN_DIR),
        BENCH_JSON=str(out_json),
    )
    proc = subprocess.run(
        [str(REPO / "scripts" / "bench-compare.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"bench-compare.sh exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"

    report = json.loads(out_json.read_text())
    assert report["failures"] == []
    got = {(r["target"], r["workload"]): r for r in report["results"]}
    assert set(got) == {(t, w) for t in TARGETS for w in WORKLOADS}
    for (target, workload), r in got.items():
        assert r["req_per_s"] > 0, (target, workload)
        assert r["failed"] == 0 and r["succeeded"] == r["requests"] > 0, (target, workload, r)
        assert r["upstream_seen"] == r["succeeded"], (target, workload, r)
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"], (target, workload, r)
        if target != "direct":
            assert r["cpu_s_per_10k"] is not None and r["peak_rss_mib"] > 0, (target, workload, r)

    # The markdown table is printed for BENCHMARKS.md.
    assert "| workload | target | req/s |" in proc.stdout
    for target in TARGETS:
        assert f"| unary | {target} |" in proc.stdout

    # Every process the script started is gone: the proxies' command lines name its work dir.
    work = re.search(r"work dir (\S+)", proc.stderr)
    assert work, proc.stderr
    leftover = subprocess.run(["pgrep", "-af", work.group(1)], capture_output=True, text=True)
    assert leftover.returncode == 1, f"still running: {leftover.stdout}"
    assert not os.path.exists(work.group(1)), "the work dir is removed unless BENCH_KEEP=1"
