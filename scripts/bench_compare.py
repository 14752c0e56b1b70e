#!/usr/bin/env python3
"""Side-by-side gRPC proxy benchmark: direct vs switchyard vs haproxy vs nginx.

Run it through scripts/bench-compare.sh, which builds the binaries first. Standard library only.

One canned Milvus upstream (examples/canned_milvus.rs) serves every target, so the figures
differ only by the proxy in the path. For each target the script starts the proxy (each on
one thread or worker), checks one real gRPC call end to end (grpc-status 0 in the trailers),
warms up, and runs three h2load workloads with real gRPC frames:

  unary     Search, 69-byte request body, 1 connection x 64 streams
  insert8m  Insert, 8 MiB request bodies, 2 connections x 2 streams, >= 1 GiB in total
  latency   Search, 1 connection x 1 stream (one request at a time)

Per target and workload it reports req/s, MiB/s of request bodies, p50/p99 latency (from
h2load's per-request log), the proxy's CPU seconds per 10k requests (utime+stime of the proxy's
processes, every nginx/haproxy worker included), the proxy's peak RSS during the workload, and
failures. A request counts as failed when h2load says so, when its HTTP status is not 2xx, or
when the upstream did not see it (the upstream's request counter must grow by exactly the number
of successful requests).

Environment:
  BENCH_QUICK=1        small run (CI smoke, development)
  BENCH_TARGETS=a,b    subset of direct,switchyard,haproxy,nginx (default: all four)
  BENCH_ROUNDS=N       rounds over all targets (default 3, quick 1); the table shows medians
  BENCH_WORKLOADS=a,b  subset of unary,insert8m,latency (default: all three)
  BENCH_JSON=PATH      also write the results as JSON
  BENCH_KEEP=1         keep the work directory (configs, logs, h2load logs)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ALL_TARGETS = ("direct", "switchyard", "haproxy", "nginx")
SERVICE = "/milvus.proto.milvus.MilvusService/"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# === gRPC request bodies, protobuf encoded by hand ===


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _fv(field_no: int, v: int) -> bytes:
    return _varint(field_no << 3) + _varint(v)


def _fb(field_no: int, b: bytes) -> bytes:
    return _varint((field_no << 3) | 2) + _varint(len(b)) + b


def grpc_frame(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def search_request() -> bytes:
    """A SearchRequest for one dim-8 float vector: 64 bytes, 69 framed."""
    vector = struct.pack("<8f", *[0.125 * i for i in range(8)])
    placeholder = _fb(1, b"$0") + _fv(2, 101) + _fb(3, vector)  # PlaceholderValue, FloatVector
    group = _fb(1, placeholder)  # PlaceholderGroup
    msg = (
        _fb(2, b"default")  # db_name
        + _fb(3, b"bench")  # collection_name
        + _fb(6, group)  # placeholder_group
        + _fv(7, 1)  # dsl_type = BoolExprV1
        + _fv(12, 1)  # nq
    )
    return grpc_frame(msg)


def insert_request(rows: int = 16384, dim: int = 128) -> bytes:
    """An InsertRequest of `rows` dim-128 float vectors: 8 MiB of floats for 16384 rows."""
    floats = struct.pack("<f", 0.5) * (rows * dim)
    float_array = _fb(1, floats)  # FloatArray.data (packed)
    vector_field = _fv(1, dim) + _fb(2, float_array)  # VectorField{dim, float_vector}
    field_data = _fv(1, 101) + _fb(2, b"vector") + _fb(4, vector_field)  # FieldData
    msg = _fb(2, b"default") + _fb(3, b"bench") + _fb(5, field_data) + _fv(7, rows)
    return grpc_frame(msg)


# === processes ===

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Runs in the child after setsid: it gets SIGTERM if this script dies, however it dies.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Procs:
    """Every process this script starts, each in its own process group, all killed on exit."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def spawn(self, cmd: list[str], log_path: str, env: dict | None = None) -> subprocess.Popen:
        log = open(log_path, "wb")
        p = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        log.close()
        self.started.append(p)
        return p

    def stop(self, p: subprocess.Popen, grace: float = 3.0) -> None:
        if p.poll() is None:
            _killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # The group may hold workers (nginx) even after the leader is gone.
        _killpg(p.pid, signal.SIGKILL)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for p in reversed(self.started):
            self.stop(p)
        self.started.clear()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log_path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with code {proc.returncode} before accepting connections", log_path)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"did not accept connections on 127.0.0.1:{port} within {timeout:.0f}s", log_path)


class StartError(Exception):
    def __init__(self, reason: str, log_path: str | None = None) -> None:
        tail = ""
        if log_path and os.path.exists(log_path):
            with open(log_path, errors="replace") as f:
                lines = f.read().splitlines()[-8:]
            tail = "".join(f"\n    | {line}" for line in lines)
        super().__init__(reason + tail)


def descendants(root: int) -> list[int]:
    """root and every process below it (nginx master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_hwm(pids: list[int]) -> bool:
    """Resets VmHWM to the current RSS (clear_refs 5, Linux >= 4.0)."""
    try:
        for pid in pids:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of a process set every 20 ms; keeps the maximum."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak_kib, self._done = pids, 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_kib = max(self.peak_kib, sum(status_kib(p, "VmRSS") for p in self.pids))
            self._done.wait(0.02)

    def finish(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kib


# === targets ===


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen | None = None  # None for direct
    version: str = ""

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc else []


def haproxy_config(port: int, upstream: int) -> str:
    return f"""\
global
    nbthread 1
    maxconn 4096
    # 1 MiB stream windows, like the other proxies; the default 64 KiB throttles 8 MiB inserts.
    tune.h2.initial-window-size 1048576
    tune.h2.max-concurrent-streams 1024
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend fe
    bind 127.0.0.1:{port} proto h2
    default_backend be
backend be
    server canned 127.0.0.1:{upstream} proto h2
"""


def nginx_config(port: int, upstream: int) -> str:
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path tmp_body;  proxy_temp_path tmp_proxy;  fastcgi_temp_path tmp_fastcgi;
    uwsgi_temp_path tmp_uwsgi;       scgi_temp_path tmp_scgi;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    http2_body_preread_size 1m;
    http2_max_concurrent_streams 1024;
    keepalive_requests 100000000;
    upstream canned {{ server 127.0.0.1:{upstream}; keepalive 128; keepalive_requests 100000000; }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://canned;
            grpc_read_timeout 300s;
            grpc_send_timeout 300s;
        }}
    }}
}}
"""


def switchyard_config(port: int, admin: int, upstream: int, state: str) -> str:
    return f"""\
[listener]
address = "127.0.0.1:{port}"

[admin]
address = "127.0.0.1:{admin}"

[state]
path = "{state}"

[[clusters]]
id = "bench"
uri = "http://127.0.0.1:{upstream}"
pchannels = 1
role = "primary"

[routing]
reads = "primary"
"""


def version_of(cmd: list[str]) -> str:
    """The first version number a command prints, e.g. 2.6.12-1+deb12u4."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"\d+\.\d+[\w.+~-]*", r.stdout + r.stderr)
    return m.group(0) if m else "?"


def start_target(name: str, procs: Procs, work: str, bin_dir: str, upstream: int) -> Target:
    if name == "direct":
        return Target(name, upstream)
    port = free_port()
    log = os.path.join(work, f"{name}.log")
    if name == "haproxy":
        cfg = os.path.join(work, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_config(port, upstream))
        proc = procs.spawn(["haproxy", "-db", "-f", cfg], log)
        version = version_of(["haproxy", "-v"])
    elif name == "nginx":
        prefix = os.path.join(work, "nginx")
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write(nginx_config(port, upstream))
        proc = procs.spawn(["nginx", "-p", prefix, "-e", "logs/error.log", "-c", "nginx.conf"], log)
        log = os.path.join(prefix, "logs", "error.log")
        version = version_of(["nginx", "-v"])
    elif name == "switchyard":
        binary = os.path.join(bin_dir, "switchyard")
        if not os.access(binary, os.X_OK):
            raise StartError(f"{binary} not found; build it with cargo build --release")
        cfg = os.path.join(work, "switchyard.toml")
        with open(cfg, "w") as f:
            f.write(switchyard_config(port, free_port(), upstream, os.path.join(work, "state.json")))
        env = dict(os.environ, SWITCHYARD_WORKER_THREADS="1")
        env.setdefault("RUST_LOG", "warn")
        proc = procs.spawn([binary, "run", "--config", cfg], log, env=env)
        version = version_of([binary, "--version"])
    else:
        raise StartError(f"unknown target {name!r}")
    wait_for_port(port, proc, log)
    return Target(name, port, proc, version)


# === h2load ===


@dataclass
class Workload:
    name: str
    method: str
    body_file: str
    body_len: int
    requests: int
    conns: int
    streams: int


@dataclass
class Result:
    target: str
    workload: str
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    seconds: float = 0.0
    req_per_s: float = 0.0
    mib_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_s_per_10k: float | None = None
    peak_rss_mib: float | None = None
    upstream_seen: int = 0
    notes: list[str] = field(default_factory=list)


_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_h2load(out: str) -> dict:
    m = re.search(r"finished in ([\d.]+)(s|ms|us), ([\d.]+) req/s", out)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and r and s):
        raise RuntimeError("cannot parse h2load output:\n" + out)
    return {
        "seconds": float(m.group(1)) * _UNIT[m.group(2)],
        "req_per_s": float(m.group(3)),
        "total": int(r.group(1)),
        "succeeded": int(r.group(4)),
        "failed": int(r.group(5)),
        "errored": int(r.group(6)),
        "timeout": int(r.group(7)),
        "ok_2xx": int(s.group(1)),
    }


def percentile(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return 0.0
    rank = max(1, -(-len(sorted_vals) * q // 100))  # nearest rank
    return float(sorted_vals[int(rank) - 1])


def latencies_us(log_file: str) -> list[int]:
    vals = []
    with open(log_file) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3 and cols[1] == "200":
                vals.append(int(cols[2]))
    vals.sort()
    return vals


def h2load(url: str, wl: Workload, n: int, log_file: str | None, timeout: float) -> dict:
    cmd = ["h2load", "-n", str(n), "-c", str(wl.conns), "-m", str(wl.streams), "-t", "1",
           "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", wl.body_file]
    if log_file:
        cmd += ["--log-file", log_file]
    cmd.append(url + SERVICE + wl.method)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return parse_h2load(r.stdout + r.stderr)


def upstream_requests(upstream: int, method: str) -> int:
    """How many `method` calls the canned upstream has answered (a proxy's probes are apart)."""
    r = subprocess.run(["nghttp", f"http://127.0.0.1:{upstream}/canned/stats"],
                       capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    return json.loads(r.stdout)[method]


def preflight(target: Target, body_file: str) -> None:
    """One Search through the target, checked down to the gRPC status in the trailers."""
    url = f"http://127.0.0.1:{target.port}{SERVICE}Search"
    r = subprocess.run(["nghttp", "-v", "-H", "content-type: application/grpc", "-H", "te: trailers",
                        "-d", body_file, url], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    out = r.stdout.decode(errors="replace")
    if ":status: 200" not in out or "grpc-status: 0" not in out:
        lines = [ln for ln in out.splitlines() if "recv" in ln and ("status" in ln or "grpc" in ln)]
        raise StartError("a Search through it did not end in :status 200 and grpc-status 0: "
                         + ("; ".join(lines) or out[-300:]))


def run_workload(target: Target, wl: Workload, upstream: int, work: str, timeout: float) -> Result:
    res = Result(target.name, wl.name)
    pids = target.pids()
    log_file = os.path.join(work, f"h2load-{target.name}-{wl.name}.log")
    seen_before = upstream_requests(upstream, wl.method)
    hwm_ok = bool(pids) and reset_hwm(pids)
    sampler = RssSampler(pids)
    sampler.start()
    cpu_before = cpu_seconds(pids)
    try:
        out = h2load(f"http://127.0.0.1:{target.port}", wl, wl.requests, log_file, timeout)
    finally:
        cpu_after = cpu_seconds(pids)
        sampled_kib = sampler.finish()
    hwm_kib = sum(status_kib(p, "VmHWM") for p in pids)
    res.upstream_seen = upstream_requests(upstream, wl.method) - seen_before

    res.requests = out["total"]
    res.succeeded = min(out["succeeded"], out["ok_2xx"])
    res.failed = res.requests - res.succeeded
    res.seconds = out["seconds"]
    res.req_per_s = out["req_per_s"]
    res.mib_per_s = res.succeeded * wl.body_len / res.seconds / 2**20 if res.seconds else 0.0
    lat = latencies_us(log_file)
    res.p50_ms = percentile(lat, 50) / 1000
    res.p99_ms = percentile(lat, 99) / 1000
    if pids:
        res.cpu_s_per_10k = (cpu_after - cpu_before) / max(res.succeeded, 1) * 10_000
        res.peak_rss_mib = (hwm_kib if hwm_ok else sampled_kib) / 1024
    if out["errored"] or out["timeout"]:
        res.notes.append(f"h2load: {out['errored']} errored, {out['timeout']} timed out")
    if res.upstream_seen != res.succeeded:
        res.notes.append(f"upstream saw {res.upstream_seen} requests, h2load counted {res.succeeded} successes")
        res.failed = max(res.failed, abs(res.upstream_seen - res.succeeded))
    return res


# === report ===


def machine() -> str:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        model = m.group(1).strip() if m else ""
    except (OSError, subprocess.TimeoutExpired):
        pass
    if not model:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            model = m.group(1).strip() if m else platform.processor()
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"


def fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


@dataclass
class RunInfo:
    quick: bool
    rounds: int
    versions: dict[str, str]
    load_before: str
    load_after: str


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def combine(rounds: list[Result]) -> Result:
    """One row from several rounds: counts add up, rates and latencies are medians, RSS the max."""
    first = rounds[0]
    out = Result(first.target, first.workload)
    for attr in ("requests", "succeeded", "failed", "upstream_seen"):
        setattr(out, attr, sum(getattr(r, attr) for r in rounds))
    out.seconds = sum(r.seconds for r in rounds)
    for attr in ("req_per_s", "mib_per_s", "p50_ms", "p99_ms", "cpu_s_per_10k"):
        vals = [getattr(r, attr) for r in rounds if getattr(r, attr) is not None]
        setattr(out, attr, statistics.median(vals) if vals else None)
    rss = [r.peak_rss_mib for r in rounds if r.peak_rss_mib is not None]
    out.peak_rss_mib = max(rss) if rss else None
    out.notes = [n for r in rounds for n in r.notes]
    return out


def report(results: list[Result], workloads: list[Workload], info: RunInfo, failures: list[str]) -> str:
    lines = []
    lines.append(f"Machine: {machine()}; load average {info.load_before} before, {info.load_after} after  ")
    mode = "quick (BENCH_QUICK=1)" if info.quick else "full"
    lines.append(f"Mode: {mode}, {info.rounds} round(s), medians over rounds (peak RSS: max); "
                 + "; ".join(f"{w.name}: {w.method} × {w.requests:,}, {w.body_len:,} B request body, "
                             f"-c {w.conns} -m {w.streams}" for w in workloads) + "  ")
    versions = [f"{name} {v}" for name, v in info.versions.items() if v]
    versions.append(f"h2load {version_of(['h2load', '--version'])}")
    lines.append("Versions: " + ", ".join(versions) + "  ")
    lines.append("Each proxy runs on 1 thread or worker; the upstream is canned_milvus (1 thread); h2load, proxy "
                 "and upstream share the machine. CPU and RSS are the proxy's own, all its processes included.")
    lines.append("")
    lines.append("| workload | target | req/s | MiB/s | p50 ms | p99 ms | CPU s / 10k req | peak RSS MiB | failed |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for wl in workloads:
        for r in (r for r in results if r.workload == wl.name):
            lines.append(f"| {wl.name} | {r.target} | {fmt(r.req_per_s, 1)} | {fmt(r.mib_per_s, 1)} | "
                         f"{fmt(r.p50_ms, 3)} | {fmt(r.p99_ms, 3)} | {fmt(r.cpu_s_per_10k, 3)} | "
                         f"{fmt(r.peak_rss_mib, 1)} | {r.failed} |")
    by = {(r.target, r.workload): r for r in results}
    if any(r.target == "switchyard" for r in results):
        lines.append("")
        lines.append("| workload | metric | switchyard / direct | switchyard / haproxy | switchyard / nginx |")
        lines.append("|---|---|---:|---:|---:|")
        metrics = [("req/s", "req_per_s"), ("p50", "p50_ms"), ("p99", "p99_ms"),
                   ("CPU / 10k req", "cpu_s_per_10k"), ("peak RSS", "peak_rss_mib")]
        for wl in workloads:
            sy = by.get(("switchyard", wl.name))
            if not sy:
                continue
            for label, attr in metrics:
                cells = []
                for other in ("direct", "haproxy", "nginx"):
                    o = by.get((other, wl.name))
                    cells.append(ratio(getattr(sy, attr), getattr(o, attr) if o else None))
                lines.append(f"| {wl.name} | {label} | " + " | ".join(cells) + " |")
    else:
        lines.append("")
        lines.append("(No switchyard figures in this run, so no switchyard ratios.)")
    notes = [f"- {r.target}/{r.workload}: {n}" for r in results for n in r.notes]
    if notes or failures:
        lines.append("")
        lines.append("Problems:")
        lines.extend(notes)
        lines.extend(f"- {f}" for f in failures)
    return "\n".join(lines)


# === main ===


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, help="directory holding switchyard and examples/canned_milvus")
    args = ap.parse_args()

    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    targets = [t.strip() for t in os.environ.get("BENCH_TARGETS", ",".join(ALL_TARGETS)).split(",") if t.strip()]
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        print(f"bench: unknown targets {unknown}; choose from {','.join(ALL_TARGETS)}", file=sys.stderr)
        return 2
    for tool in ["h2load", "nghttp"] + [t for t in targets if t in ("haproxy", "nginx")]:
        if not shutil.which(tool):
            print(f"bench: {tool} not found (Debian: nghttp2-client, haproxy, nginx)", file=sys.stderr)
            return 2

    work = tempfile.mkdtemp(prefix="switchyard-bench-")
    procs = Procs()
    failures: list[str] = []

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    try:
        search_file = os.path.join(work, "search.bin")
        insert_file = os.path.join(work, "insert.bin")
        search, insert = search_request(), insert_request()
        with open(search_file, "wb") as f:
            f.write(search)
        with open(insert_file, "wb") as f:
            f.write(insert)
        workloads = [
            Workload("unary", "Search", search_file, len(search), 3_000 if quick else 100_000, 1, 64),
            Workload("insert8m", "Insert", insert_file, len(insert), 4 if quick else 128, 2, 2),
            Workload("latency", "Search", search_file, len(search), 500 if quick else 20_000, 1, 1),
        ]
        only = [w.strip() for w in os.environ.get("BENCH_WORKLOADS", "").split(",") if w.strip()]
        if only:
            workloads = [w for w in workloads if w.name in only]
        warmup = Workload("warmup", "Search", search_file, len(search), 300 if quick else 5_000, 1, 16)
        timeout = 300.0 if quick else 900.0

        canned_log = os.path.join(work, "canned_milvus.log")
        canned_bin = os.path.join(args.bin_dir, "examples", "canned_milvus")
        canned = procs.spawn([canned_bin, "--listen", "127.0.0.1:0"], canned_log)
        upstream = 0
        deadline = time.monotonic() + 20
        while not upstream and time.monotonic() < deadline:
            with open(canned_log) as f:
                m = re.search(r"canned-milvus listening on 127\.0\.0\.1:(\d+)", f.read())
            if m:
                upstream = int(m.group(1))
            elif canned.poll() is not None:
                break
            else:
                time.sleep(0.02)
        if not upstream:
            raise StartError("canned_milvus did not start", canned_log)
        print(f"bench: canned upstream on 127.0.0.1:{upstream}; work dir {work}", file=sys.stderr)

        rounds = int(os.environ.get("BENCH_ROUNDS", "1" if quick else "3"))
        versions: dict[str, str] = {}
        raw: list[Result] = []
        dead: set[str] = set()
        load_before = loadavg()
        for round_no in range(1, rounds + 1):
            # Rounds interleave the targets, so a burst of load from elsewhere on the machine
            # hits one round of each rather than all of one target.
            for name in (n for n in targets if n not in dead):
                try:
                    t = start_target(name, procs, work, args.bin_dir, upstream)
                    preflight(t, search_file)
                except (StartError, OSError, subprocess.SubprocessError) as e:
                    failures.append(f"{name}: not measured: {e}")
                    print(f"bench: {name}: not measured: {e}", file=sys.stderr)
                    if procs.started and procs.started[-1] is not canned:
                        procs.stop(procs.started.pop())
                    dead.add(name)
                    continue
                versions[name] = t.version
                h2load(f"http://127.0.0.1:{t.port}", warmup, warmup.requests, None, timeout)
                for wl in workloads:
                    print(f"bench: round {round_no}/{rounds} {name} {wl.name} ({wl.requests} requests)...",
                          file=sys.stderr)
                    r = run_workload(t, wl, upstream, work, timeout)
                    r.notes = [f"round {round_no}: {n}" for n in r.notes]
                    raw.append(r)
                    print(f"bench:   {fmt(r.req_per_s, 1)} req/s, p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms, "
                          f"{r.failed} failed", file=sys.stderr)
                if t.proc:
                    procs.stop(t.proc)
                    procs.started.remove(t.proc)
        groups = [[r for r in raw if (r.target, r.workload) == (name, wl.name)] for wl in workloads for name in targets]
        results = [combine(g) for g in groups if g]
        header = RunInfo(quick, rounds, versions, load_before, loadavg())
        print(report(results, workloads, header, failures))
        if os.environ.get("BENCH_JSON"):
            with open(os.environ["BENCH_JSON"], "w") as f:
                json.dump({"machine": machine(), "quick": quick, "rounds": rounds, "failures": failures,
                           "loadavg": [header.load_before, header.load_after],
                           "results": [r.__dict__ for r in results],
                           "raw": [r.__dict__ for r in raw]}, f, indent=2)
        bad = failures or any(r.failed for r in results)
        return 1 if bad else 0
    finally:
        procs.stop_all()
        if os.environ.get("BENCH_KEEP", "") in ("", "0"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"bench: kept {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
