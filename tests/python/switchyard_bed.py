"""The switchyard side of the test bed: the proxy itself, a real Milvus 2.3.5, TLS material, raw gRPC.

    from switchyard_bed import Switchyard, RealMilvus, make_certs, Raw

- ``Switchyard(tmpdir, clusters, **sections)`` writes a config (``[listener]`` on 127.0.0.1:0,
  ``[state]`` in ``tmpdir``, ``[health] interval = "200ms"``, then whatever ``sections`` add),
  starts ``switchyard run`` from ``bin_dir()``, reads the real port from its
  ``switchyard listening on ADDR`` line, and offers ``.uri``, ``.addr``, ``.pid``, ``.rss_kib()``,
  ``.hwm_kib()``, ``.stop()`` (SIGTERM). ``Switchyard.cluster(id, uri, role)`` builds a cluster entry.
- ``RealMilvus(tmpdir, *args)`` runs ``milvus-server`` from the ``milvus==2.3.5`` venv (``.venv-embd``
  or ``$SWITCHYARD_VENV_EMBD``) with the recipe of ``shared/reference/testbed.md``: its own embedded
  etcd ports, loopback ``*_IP`` variables, a fresh data dir, a free port base, stopped with SIGINT.
- ``make_certs(dir)``: a CA and a server certificate for ``localhost``/``127.0.0.1``, with openssl.
- ``Raw(addr)``: grpcio stubs of ``MilvusService`` for calls whose status code pymilvus hides.

Every process is registered with ``testbed``'s registry, so it is killed at exit even when a test
fails; the fixtures stop them at teardown.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

import pytest

from testbed import REPO, _Proc, bin_dir, free_port, wait_until

# --- venvs ---------------------------------------------------------------------------------


def venv_pm3() -> Path:
    """The venv holding pymilvus 3.0.x (``$SWITCHYARD_VENV_PM3``, else ``<repo>/.venv-pm3``)."""
    return Path(os.environ.get("SWITCHYARD_VENV_PM3", REPO / ".venv-pm3"))


def venv_embd() -> Path:
    """The venv holding ``milvus==2.3.5`` (``$SWITCHYARD_VENV_EMBD``, else ``<repo>/.venv-embd``)."""
    return Path(os.environ.get("SWITCHYARD_VENV_EMBD", REPO / ".venv-embd"))


# --- switchyard ----------------------------------------------------------------------------


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _toml_table(name: str, values: dict, array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    return "\n".join([head] + [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]) + "\n"


class Switchyard:
    """One ``switchyard run`` process with a generated config."""

    _count = 0

    def __init__(self, tmpdir, clusters: Iterable[dict], start: bool = True, env: Optional[dict] = None, **sections):
        Switchyard._count += 1
        self.dir = Path(tmpdir) / f"switchyard{Switchyard._count}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.clusters = list(clusters)
        self.sections = sections
        self.env = {"RUST_LOG": "info", **(env or {})}
        self.config_path = self.dir / "switchyard.toml"
        self.write_config()
        self.addr: Optional[str] = None
        self.admin_addr: Optional[str] = None
        self.proc: Optional[_Proc] = None
        if start:
            self.start()

    @staticmethod
    def cluster(id: str, uri: str, role: str = "standby", pchannels: int = 4, **extra) -> dict:
        return {"id": id, "uri": uri, "pchannels": pchannels, "role": role, **extra}

    def config_text(self) -> str:
        listener = {"address": "127.0.0.1:0", **self.sections.get("listener", {})}
        admin = {"address": "127.0.0.1:0", **self.sections.get("admin", {})}
        state = {"path": str(self.dir / "state.json"), **self.sections.get("state", {})}
        health = {"interval": "200ms", **self.sections.get("health", {})}
        out = [_toml_table("listener", listener), _toml_table("admin", admin), _toml_table("state", state)]
        out += [_toml_table("clusters", c, array=True) for c in self.clusters]
        out.append(_toml_table("health", health))
        for name, values in self.sections.items():
            if name not in ("listener", "admin", "state", "health"):
                out.append(_toml_table(name, values))
        return "\n".join(out)

    def write_config(self) -> None:
        self.config_path.write_text(self.config_text())

    @property
    def tls(self) -> bool:
        return "tls_cert" in self.sections.get("listener", {})

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    @property
    def uri(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.addr}"

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def start(self) -> "Switchyard":
        exe = bin_dir() / "switchyard"
        argv = [str(exe), "run", "--config", str(self.config_path)]
        self.proc = _Proc(argv, self.dir / "switchyard.log", env=self.env)
        # "switchyard listening on ADDR" (newer builds add " admin on ADDR")
        line = self.proc.wait_line(lambda l: l.startswith("switchyard listening on "))
        words = line.split()
        self.addr = words[3]
        self.admin_addr = words[6] if len(words) > 6 and words[4:6] == ["admin", "on"] else None
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Waits until the routing has seen every cluster (a first health round)."""
        wait_until(lambda: self.log_has("cluster up", count=len(self.clusters)), timeout=timeout, what="clusters up")

    def log_has(self, text: str, count: int = 1) -> bool:
        try:
            return self.proc.log_path.read_text(errors="replace").count(text) >= count
        except OSError:
            return False

    def _status_kib(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def rss_kib(self) -> int:
        return self._status_kib("VmRSS")

    def hwm_kib(self) -> int:
        return self._status_kib("VmHWM")

    def alive(self) -> bool:
        return bool(self.proc and self.proc.alive())

    def stop(self) -> Optional[int]:
        """SIGTERM and wait; returns the exit code."""
        if self.proc:
            self.proc.stop()
            return self.proc.popen.returncode
        return None

    def tail(self, n: int = 60) -> str:
        return self.proc.tail(n) if self.proc else ""


def switchyard_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Runs ``switchyard ARGS...`` to completion (for ``check-config`` and bad ``run`` invocations)."""
    return subprocess.run([str(bin_dir() / "switchyard"), *args], capture_output=True, text=True, timeout=timeout)


# --- TLS material ---------------------------------------------------------------------------


def make_certs(d) -> dict:
    """A self-signed CA and a server certificate (SAN localhost, 127.0.0.1) signed by it."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    p = {k: d / f"{k}.pem" for k in ("ca", "ca_key", "server", "server_key")}
    run = lambda *a: subprocess.run(["openssl", *map(str, a)], check=True, capture_output=True, timeout=60)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p["ca_key"], "-out", p["ca"], "-days", "2",
        "-subj", "/CN=switchyard-test-ca")
    ext = d / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    csr = d / "server.csr"
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p["server_key"], "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", p["ca"], "-CAkey", p["ca_key"], "-CAcreateserial", "-out", p["server"],
        "-days", "2", "-extfile", ext)
    return {k: str(v) for k, v in p.items()}


# --- real Milvus 2.3.5 -----------------------------------------------------------------------


def _ports_free(base: int, n: int = 11) -> bool:
    for port in range(base, base + n):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_base(n: int = 11) -> int:
    """A base such that base..base+n-1 were all free a moment ago (Milvus uses 10 ports + etcd peer)."""
    for _ in range(200):
        base = free_port()
        if base + n < 65000 and _ports_free(base, n):
            return base
    raise RuntimeError("no run of free ports found")


class RealMilvus:
    """A real Milvus 2.3.5 standalone (``milvus-server`` of the PyPI ``milvus`` package)."""

    def __init__(self, tmpdir, *args: str, name: str = "milvus"):
        self.dir = Path(tmpdir) / name
        self.name = name
        self.args = list(args)
        self.base = free_port_base()
        self.proc: Optional[_Proc] = None
        self.start()

    @property
    def port(self) -> int:
        return self.base

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.base}"

    def start(self, timeout: float = 120.0) -> "RealMilvus":
        exe = venv_embd() / "bin" / "milvus-server"
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        p = self.base
        etcd_cfg = data / "embedEtcd.yaml"
        etcd_cfg.write_text(
            f"name: {self.name}\n"
            f"listen-client-urls: http://127.0.0.1:{p + 2}\nadvertise-client-urls: http://127.0.0.1:{p + 2}\n"
            f"listen-peer-urls: http://127.0.0.1:{p + 10}\ninitial-advertise-peer-urls: http://127.0.0.1:{p + 10}\n"
            f"initial-cluster: {self.name}=http://127.0.0.1:{p + 10}\n"
        )
        env = {f"{r}_IP": "127.0.0.1" for r in
               ("ROOTCOORD", "PROXY", "QUERYCOORD", "QUERYNODE", "INDEXCOORD", "INDEXNODE", "DATACOORD", "DATANODE")}
        env["ETCD_CONFIG_PATH"] = str(etcd_cfg)
        names = ["proxy-port", "proxy-internal-port", "etcd-port", "root-coord-port", "query-coord-port",
                 "query-node-port", "index-coord-port", "index-node-port", "data-coord-port", "data-node-port"]
        argv = [str(exe), "--data", str(data)]
        for i, n in enumerate(names):
            argv += [f"--{n}", str(p + i)]
        argv += self.args
        self.proc = _Proc(argv, self.dir / "milvus-server.log", env=env)
        stdout_log = data / "logs" / "milvus-stdout.log"

        def welcomed() -> bool:
            if not self.proc.alive():
                raise RuntimeError(f"milvus-server exited: {self.proc.tail()}")
            for f in (self.proc.log_path, stdout_log):
                try:
                    if "Welcome to use Milvus" in f.read_text(errors="replace"):
                        return True
                except OSError:
                    pass
            return False

        try:
            wait_until(welcomed, timeout=timeout, interval=0.1, what="Milvus 2.3.5 to start")
        except BaseException:
            self.stop()
            raise
        real = self._configured_port(data / "configs" / "milvus.yaml")
        if real and real != p:
            self.stop()
            raise RuntimeError(f"milvus-server took port {real}, not {p} (port base was taken)")
        return self

    @staticmethod
    def _configured_port(path: Path) -> Optional[int]:
        try:
            text = path.read_text()
        except OSError:
            return None
        m = re.search(r"^proxy:\s*\n(?:[ \t].*\n)*?  port:\s*(\d+)", text, re.M)
        return int(m.group(1)) if m else None

    def stop(self) -> None:
        """SIGINT (SIGTERM would orphan the ``milvus run standalone`` child), then SIGKILL the group."""
        if not self.proc:
            return
        pop = self.proc.popen
        if pop.poll() is None:
            pop.send_signal(signal.SIGINT)
            try:
                pop.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:  # the launcher ran in its own session: take any child left behind with it
            os.killpg(pop.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.kill()


# --- raw gRPC --------------------------------------------------------------------------------


class Raw:
    """grpcio stubs of ``milvus.proto.milvus.MilvusService`` on one address."""

    def __init__(self, addr: str, ca: Optional[str] = None, server_name: str = "localhost"):
        import grpc
        from pymilvus.grpc_gen import milvus_pb2_grpc

        opts = [("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)]
        if ca:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
            opts.append(("grpc.ssl_target_name_override", server_name))
            self.channel = grpc.secure_channel(addr, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(addr, options=opts)
        self.stub = milvus_pb2_grpc.MilvusServiceStub(self.channel)

    def call(self, method: str, request, metadata: Iterable = (), timeout: float = 15.0, token: Optional[str] = None):
        """Returns ``(code, details, response)``; ``response`` is None when the status is not OK."""
        import grpc

        md = list(metadata)
        if token is not None:
            md.append(("authorization", base64.b64encode(token.encode()).decode()))
        try:
            resp, call = getattr(self.stub, method).with_call(request, metadata=md, timeout=timeout)
            return call.code(), call.details() or "", resp
        except grpc.RpcError as e:
            return e.code(), e.details() or "", None

    def close(self) -> None:
        self.channel.close()


def rate_limited(code, details, resp) -> str:
    """The reason of switchyard's "not sent, safe to retry" answer: a successful gRPC call whose
    reply carries a Milvus ``RateLimit`` status (code 8, legacy error_code 49), which the SDKs
    retry with backoff without resetting their channel. Fails on any other answer."""
    import grpc

    assert code == grpc.StatusCode.OK and resp is not None, (code, details, resp)
    st = resp.status if hasattr(resp, "status") else resp
    assert (st.code, st.error_code) == (8, 49), (code, details, resp)
    return st.reason


def pb():
    """``(milvus_pb2, common_pb2)`` of the installed pymilvus."""
    from pymilvus.grpc_gen import common_pb2, milvus_pb2

    return milvus_pb2, common_pb2


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def switchyard_factory(request, tmp_path):
    """``make(clusters, **sections) -> Switchyard``; every proxy is stopped at teardown (its log
    tail printed when the test failed)."""
    made: list[Switchyard] = []

    def make(clusters, **kwargs) -> Switchyard:
        sy = Switchyard(tmp_path, clusters, **kwargs)
        made.append(sy)
        return sy

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for sy in made:
        sy.stop()
        if failed and sy.proc:
            print(f"\n--- switchyard log ({sy.proc.log_path}) ---\n{sy.tail(80)}")
