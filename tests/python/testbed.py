"""Test bed for switchyard: milvus-lite backends and milvus-standin clusters on ephemeral ports.

Importable by every Python test of the project:

    from testbed import MilvusLite, Standin, replicate, wait_until

- ``MilvusLite(tmpdir)`` starts ``milvus-lite server`` from the venv on a free port and waits for
  its "listening" line (with a deadline); ``.uri``, ``.stop()``, ``.kill()``.
- ``Standin(cluster_id, backend_uri, pchannels=4, state_dir=None, replication_delay=None)``
  starts ``target/debug/milvus-standin`` (directory overridable with ``SWITCHYARD_BIN_DIR``),
  reads the real ports from its stdout line, and offers ``.uri``, ``.control(path, method)``,
  ``.state()``, ``.metrics()``, ``.client()``, ``.stop()``, ``.kill()``, ``.restart()``.
- ``replicate(a, b, ...)`` sends the star configuration "a replicates to b..." with pymilvus
  ``update_replicate_configuration``, to the primary first, then to each secondary.
- ``wait_until(pred, timeout)`` polls with a deadline; tests never sleep to synchronise.

The venv is ``<repo>/.venv`` unless ``SWITCHYARD_VENV`` names another. Every process started
here is registered and killed at interpreter exit even if a test fails; the pytest fixtures in
``conftest.py`` also stop them at teardown.
"""

from __future__ import annotations

import atexit
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


def venv_dir() -> Path:
    """The Python venv holding pymilvus and milvus-lite."""
    return Path(os.environ.get("SWITCHYARD_VENV", REPO / ".venv"))


def bin_dir() -> Path:
    """Where the switchyard binaries are (``target/debug`` unless ``SWITCHYARD_BIN_DIR``)."""
    return Path(os.environ.get("SWITCHYARD_BIN_DIR", REPO / "target" / "debug"))


def free_port() -> int:
    """A TCP port that was free a moment ago (bound to 127.0.0.1:0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Polls ``pred`` until it returns something truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


# --- process registry --------------------------------------------------------------------

_LIVE: "set[subprocess.Popen]" = set()
_LOCK = threading.Lock()


def _register(p: subprocess.Popen) -> None:
    with _LOCK:
        _LIVE.add(p)


def _unregister(p: subprocess.Popen) -> None:
    with _LOCK:
        _LIVE.discard(p)


@atexit.register
def kill_all() -> None:
    """Kills every process this module started that is still running."""
    with _LOCK:
        procs = list(_LIVE)
        _LIVE.clear()
    for p in procs:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


class _Proc:
    """A child process whose stdout lines are collected by a thread; stderr goes to a log file."""

    def __init__(self, argv: list, log_path: Path, env: Optional[dict] = None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, env=full_env, start_new_session=True)
        _register(self.popen)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self._log.write(b"[stdout] " + raw)
            self._log.flush()
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, pred: Callable[[str], bool], timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise TimeoutError(f"{self.argv[0]} printed no ready line within {timeout}s; log: {self.log_path}\n{self.tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                code = self.popen.wait(timeout=5)
                raise RuntimeError(f"{self.argv[0]} exited with {code} before it was ready; log: {self.log_path}\n{self.tail()}")
            if pred(line):
                return line

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self._done()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=5)
        self._done()

    def _done(self) -> None:
        _unregister(self.popen)
        if self.popen.stdout:
            self.popen.stdout.close()
        self._log.close()


# --- milvus-lite ---------------------------------------------------------------------------

class MilvusLite:
    """A ``milvus-lite server`` on 127.0.0.1 with its own data dir under ``tmpdir``."""

    _count = 0
    _count_lock = threading.Lock()

    def __init__(self, tmpdir, name: Optional[str] = None, start: bool = True):
        with MilvusLite._count_lock:
            MilvusLite._count += 1
            n = MilvusLite._count
        self.name = name or f"lite{n}"
        self.dir = Path(tmpdir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port: Optional[int] = None
        self.proc: Optional[_Proc] = None
        if start:
            self.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MilvusLite":
        exe = venv_dir() / "bin" / "milvus-lite"
        last: Optional[BaseException] = None
        for _ in range(3):  # a free port can be taken between free_port() and bind
            port = self.port or free_port()
            argv = [str(exe), "server", "--data-dir", str(self.dir / "data"), "--host", "127.0.0.1", "--port", str(port)]
            proc = _Proc(argv, self.dir / "milvus-lite.log")
            try:
                proc.wait_line(lambda l: "listening on" in l)
            except (RuntimeError, TimeoutError) as e:
                proc.kill()
                last = e
                self.port = None
                continue
            self.port, self.proc = port, proc
            wait_until(self._accepts, timeout=START_TIMEOUT, what=f"milvus-lite on {port}")
            return self
        raise RuntimeError(f"milvus-lite did not start: {last}")

    def _accepts(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()


# --- milvus-standin ------------------------------------------------------------------------

class Standin:
    """A ``milvus-standin`` process for one cluster, on ephemeral ports."""

    def __init__(
        self,
        cluster_id: str,
        backend_uri: str,
        pchannels: int = 4,
        state_dir=None,
        replication_delay: Optional[str] = None,
        workdir=None,
        env: Optional[dict] = None,
        extra_args: Iterable[str] = (),
        start: bool = True,
    ):
        self.cluster_id = cluster_id
        self.backend_uri = backend_uri
        self.n_pchannels = pchannels
        self.state_dir = Path(state_dir) if state_dir else None
        self.replication_delay = replication_delay
        self.workdir = Path(workdir) if workdir else (self.state_dir.parent if self.state_dir else Path(tempfile.mkdtemp(prefix="standin-")))
        self.env = {"RUST_LOG": "info", "NO_COLOR": "1", **(env or {})}
        self.extra_args = list(extra_args)
        self.grpc_port: Optional[int] = None
        self.control_port: Optional[int] = None
        self.proc: Optional[_Proc] = None
        self._clients: list = []
        if start:
            self.start()

    # addresses
    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def pchannels(self) -> list:
        return [f"{self.cluster_id}-rootcoord-dml_{i}" for i in range(self.n_pchannels)]

    def cluster(self, token: str = "") -> dict:
        """This cluster as an entry of a replicate configuration."""
        return {"cluster_id": self.cluster_id, "connection_param": {"uri": self.uri, "token": token}, "pchannels": self.pchannels}

    # lifecycle
    def start(self) -> "Standin":
        """Starts the process; after a stop, on the same ports (peers' configurations name them)."""
        exe = bin_dir() / "milvus-standin"
        listen = f"127.0.0.1:{self.grpc_port or 0}"
        control = f"127.0.0.1:{self.control_port or 0}"
        argv = [str(exe), "--cluster-id", self.cluster_id, "--listen", listen, "--backend", self.backend_uri,
                "--pchannels", str(self.n_pchannels), "--control", control]
        if self.replication_delay:
            argv += ["--replication-delay", self.replication_delay]
        if self.state_dir:
            argv += ["--state-dir", str(self.state_dir)]
        argv += self.extra_args
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = _Proc(argv, self.workdir / f"standin-{self.cluster_id}.log", env=self.env)
        line = self.proc.wait_line(lambda l: l.startswith(f"milvus-standin {self.cluster_id} listening on "))
        parts = line.split()
        self.grpc_port = int(parts[4].rsplit(":", 1)[1])
        self.control_port = int(parts[7].rsplit(":", 1)[1]) if parts[7] != "-" else None
        return self

    def stop(self) -> None:
        self._close_clients()
        if self.proc:
            self.proc.stop()

    def kill(self) -> None:
        self._close_clients()
        if self.proc:
            self.proc.kill()

    def restart(self) -> "Standin":
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return bool(self.proc and self.proc.alive())

    # control port
    def control(self, path: str, method: str = "POST", **params):
        import requests

        r = requests.request(method, self.control_url + path, params=params or None, timeout=15)
        r.raise_for_status()
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    def state(self) -> dict:
        return self.control("/state", method="GET")

    def metrics(self) -> str:
        return self.control("/metrics", method="GET")

    # clients
    def client(self, **kwargs):
        """A pymilvus ``MilvusClient`` for this cluster, closed when the stand-in stops."""
        from pymilvus import MilvusClient

        c = MilvusClient(uri=self.uri, **kwargs)
        self._clients.append(c)
        return c

    def _close_clients(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        self._clients.clear()

    def __repr__(self) -> str:
        return f"Standin({self.cluster_id!r}, {self.uri})"


def star(centre: Standin, leaves: Iterable[Standin], tokens: Optional[dict] = None) -> dict:
    """The keyword arguments of ``update_replicate_configuration`` for a star: ``centre`` replicates to ``leaves``."""
    leaves = list(leaves)
    tokens = tokens or {}
    members = [centre] + leaves
    return {
        "clusters": [s.cluster(tokens.get(s.cluster_id, "")) for s in members],
        "cross_cluster_topology": [{"source_cluster_id": centre.cluster_id, "target_cluster_id": s.cluster_id} for s in leaves],
    }


def update(standin: Standin, config: dict, timeout: Optional[float] = 30.0, force_promote: bool = False):
    """Sends ``config`` to one stand-in with pymilvus (raises ``MilvusException`` on a failed status)."""
    c = standin.client()
    return c.update_replicate_configuration(
        clusters=config["clusters"],
        cross_cluster_topology=config.get("cross_cluster_topology", []),
        force_promote=force_promote,
        timeout=timeout,
    )


def replicate(primary: Standin, *secondaries: Standin, tokens: Optional[dict] = None, timeout: float = 30.0) -> dict:
    """Builds "primary replicates to each secondary": the configuration goes to the primary first,
    then to every secondary. Returns the configuration."""
    cfg = star(primary, secondaries, tokens)
    update(primary, cfg, timeout=timeout)
    for s in secondaries:
        update(s, cfg, timeout=timeout)
    return cfg


def count_rows(client, collection: str) -> int:
    """``count(*)`` of a collection (strong read on milvus-lite)."""
    res = client.query(collection, filter="", output_fields=["count(*)"])
    return int(res[0]["count(*)"])


def start_standins(tmp, ids, pchannels: int = 4, env: Optional[dict] = None, procs: Optional[list] = None) -> dict:
    """One milvus-lite and one stand-in per id (the stand-in's backend is ``.lite``). Every
    process is appended to ``procs`` in start order, so ``stop_all(procs)`` stops them in reverse."""
    standins = {}
    for cid in ids:
        lite = MilvusLite(tmp)
        if procs is not None:
            procs.append(lite)
        s = Standin(cid, lite.uri, pchannels=pchannels, workdir=tmp, env=env)
        s.lite = lite
        if procs is not None:
            procs.append(s)
        standins[cid] = s
    return standins


def stop_all(procs, failed: bool = False, tail: int = 40) -> None:
    """Stops ``procs`` newest first, each regardless of the others; prints their log tails when
    the test failed."""
    for p in reversed(procs):
        try:
            if failed and getattr(p, "proc", None):
                print(f"\n--- {p!r} log ({p.proc.log_path}) ---\n{p.proc.tail(tail)}")
            p.stop()
        except Exception as e:  # noqa: BLE001 - stop everything else regardless
            print(f"teardown: {p!r}: {e}")
