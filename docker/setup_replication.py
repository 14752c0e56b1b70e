"""One-shot job for docker/compose.yml: set up Milvus CDC replication, then check switchyard.

Milvus CDC is configured by sending the same replicate configuration (every cluster, and the
star topology primary -> each standby) to every cluster with `UpdateReplicateConfiguration`,
the current primary first and then the standbys (Milvus docs, "Set Up CDC Replication"). A
cluster that is not primary when its call arrives answers once the configuration has reached
it through CDC, so a call may take a while; a failed call is retried with the same
configuration. The calls go to the clusters directly: switchyard refuses
`UpdateReplicateConfiguration` from clients, because it owns the topology afterwards.
Finally `GET /v1/topology` on switchyard's admin API must show the same primary and standbys.

Sending the same configuration again is a no-op in Milvus, so the job can be rerun.

Environment:
  SETUP_CLUSTERS          "id=uri,id=uri,..." (the uri is also what the other clusters' CDC uses)
  SETUP_PRIMARY           id of the primary (default: the first cluster)
  SETUP_TOKEN             Milvus credentials for every cluster (default "root:Milvus")
  SETUP_PCHANNELS         pchannels per cluster, names "<id>-rootcoord-dml_<i>" (default 16)
  SETUP_CALL_TIMEOUT      seconds for one UpdateReplicateConfiguration call (default 120)
  SETUP_ATTEMPTS          attempts per cluster, same configuration each time (default 5)
  SWITCHYARD_ADMIN_URL    switchyard admin API (default http://switchyard:9100)
  SWITCHYARD_ADMIN_TOKEN  its bearer token
  SWITCHYARD_READY_TIMEOUT  seconds to wait for /readyz (default 180)

Exit status: 0 when replication is configured on every cluster and switchyard's topology
agrees; 1 otherwise (the reason is printed).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Cluster:
    id: str
    uri: str


def log(msg: str) -> None:
    print(f"setup-replication: {msg}", flush=True)


def parse_clusters(spec: str) -> list[Cluster]:
    """Parses "id=uri,id=uri"; ids and uris must be unique."""
    out: list[Cluster] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        cid, sep, uri = part.partition("=")
        if not sep or not cid.strip() or not uri.strip():
            raise ValueError(f"SETUP_CLUSTERS entry {part!r} is not id=uri")
        out.append(Cluster(cid.strip(), uri.strip()))
    if len(out) < 2:
        raise ValueError("SETUP_CLUSTERS needs at least two clusters")
    if len({c.id for c in out}) != len(out) or len({c.uri for c in out}) != len(out):
        raise ValueError("SETUP_CLUSTERS has a duplicate id or uri")
    return out


def call_order(clusters: list[Cluster], primary: str) -> list[Cluster]:
    """The primary first, then the standbys in the order given (the order Milvus requires)."""
    first = [c for c in clusters if c.id == primary]
    if not first:
        raise ValueError(f"primary {primary!r} is not one of {[c.id for c in clusters]}")
    return first + [c for c in clusters if c.id != primary]


def replicate_configuration(clusters: list[Cluster], primary: str, token: str, pchannels: int) -> dict:
    """Keyword arguments for MilvusClient.update_replicate_configuration: a star from `primary`."""
    return {
        "clusters": [
            {
                "cluster_id": c.id,
                "connection_param": {"uri": c.uri, "token": token},
                "pchannels": [f"{c.id}-rootcoord-dml_{i}" for i in range(pchannels)],
            }
            for c in clusters
        ],
        "cross_cluster_topology": [
            {"source_cluster_id": primary, "target_cluster_id": c.id} for c in clusters if c.id != primary
        ],
    }


def admin_get(base: str, path: str, token: str, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(base.rstrip("/") + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(base: str, token: str, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < end:
        try:
            status, _ = admin_get(base, "/readyz", token)
            if status == 200:
                return True
            last = f"HTTP {status}"
        except OSError as e:
            last = str(e)
        time.sleep(2)
    log(f"switchyard /readyz not 200 after {deadline_s:.0f}s ({last}); configuring replication anyway")
    return False


def apply(cluster: Cluster, config: dict, token: str, timeout: float, attempts: int) -> None:
    """Sends the configuration to one cluster, retrying the same configuration on failure."""
    from pymilvus import MilvusClient  # imported here so the helpers above need no pymilvus

    for attempt in range(1, attempts + 1):
        client = None
        try:
            client = MilvusClient(uri=cluster.uri, token=token, timeout=30)
            t0 = time.monotonic()
            client.update_replicate_configuration(**config, timeout=timeout)
            log(f"{cluster.id}: configuration applied in {time.monotonic() - t0:.1f}s")
            return
        except Exception as e:  # noqa: BLE001 - every failure is retried with the same config
            if attempt == attempts:
                raise RuntimeError(f"{cluster.id}: UpdateReplicateConfiguration failed: {e}") from e
            log(f"{cluster.id}: attempt {attempt}/{attempts} failed ({e}); retrying the same configuration")
            time.sleep(min(2**attempt, 20))
        finally:
            if client is not None:
                client.close()


def check_cluster(cluster: Cluster, primary: str, token: str) -> None:
    """GetReplicateConfiguration on the cluster must show the edges primary -> standby."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=cluster.uri, token=token, timeout=30)
    try:
        cfg = client.get_replicate_configuration(timeout=30)
    finally:
        client.close()
    edges = {(t.source_cluster_id, t.target_cluster_id) for t in cfg.cross_cluster_topology}
    ids = {c.cluster_id for c in cfg.clusters}
    if any(src != primary for src, _ in edges) or ids - {primary} != {dst for _, dst in edges}:
        raise RuntimeError(f"{cluster.id}: replicate configuration is {sorted(edges)} over {sorted(ids)}")
    log(f"{cluster.id}: GetReplicateConfiguration shows {sorted(edges)}")


def check_topology(base: str, token: str, clusters: list[Cluster], primary: str) -> dict:
    status, body = admin_get(base, "/v1/topology", token)
    if status != 200:
        raise RuntimeError(f"GET /v1/topology: HTTP {status}: {body[:200]!r}")
    topo = json.loads(body)
    standbys = sorted(topo.get("standbys") or [])
    want = sorted(c.id for c in clusters if c.id != primary)
    if topo.get("primary") != primary or standbys != want:
        raise RuntimeError(
            f"switchyard topology is primary={topo.get('primary')!r} standbys={standbys}, "
            f"expected primary={primary!r} standbys={want}"
        )
    return topo


def main() -> int:
    env = os.environ
    try:
        clusters = parse_clusters(env.get("SETUP_CLUSTERS", ""))
        primary = env.get("SETUP_PRIMARY") or clusters[0].id
        order = call_order(clusters, primary)
        token = env.get("SETUP_TOKEN", "root:Milvus")
        config = replicate_configuration(clusters, primary, token, int(env.get("SETUP_PCHANNELS", "16")))
        call_timeout = float(env.get("SETUP_CALL_TIMEOUT", "120"))
        attempts = int(env.get("SETUP_ATTEMPTS", "5"))
    except ValueError as e:
        log(f"bad settings: {e}")
        return 1
    admin = env.get("SWITCHYARD_ADMIN_URL", "http://switchyard:9100")
    admin_token = env.get("SWITCHYARD_ADMIN_TOKEN", "")

    wait_ready(admin, admin_token, float(env.get("SWITCHYARD_READY_TIMEOUT", "180")))
    try:
        for cluster in order:
            apply(cluster, config, token, call_timeout, attempts)
        for cluster in order:
            check_cluster(cluster, primary, token)
        topo = check_topology(admin, admin_token, clusters, primary)
    except Exception as e:  # noqa: BLE001 - report and fail the job
        log(f"FAILED: {e}")
        return 1
    log(f"done; switchyard topology: {json.dumps(topo, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
