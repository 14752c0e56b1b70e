"""Unknown lag is not zero (issue 9, item 3), end to end.

Milvus 2.6 CDC replicates no time ticks, so a standby's checkpoint on an idle pchannel stays at
the last message replicated there; switchyard measures lag per pchannel against the writes the
primary acknowledged, and a standby whose lag is unknown serves no Bounded reads. Stand-ins
over milvus-lite, A replicating to B, 4 pchannels each; every collection name below is chosen
for the stand-in pchannel its writes go to (FNV-1a of the name mod 4, as ``Core::pchannel_for``).

(a) an idle primary for 30 s after some writes: the standby's lag stays under 1 s and it keeps
    serving Bounded reads;
(b) two collections on different pchannels, writes continuing to both, one pchannel's
    replication paused: the standby leaves Bounded rotation within ``max_read_lag`` + 1 s
    (the newest checkpoint over pchannels keeps moving, so the old rule kept it in) and comes
    back after resume;
(c) a switchyard restarted while replication is paused: the standby serves no Bounded read
    until it is shown caught up;
(d) a standby added by reload serves no read before its first probe shows it caught up.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from switchyard_bed import Raw, Switchyard
from testbed import bin_dir, replicate, start_standins, stop_all, wait_until
from test_monitor import TOKEN, make_collection, search_request, vec, Writer

pytestmark = pytest.mark.skipif(
    not (bin_dir() / "milvus-standin").exists() or not (bin_dir() / "switchyard").exists(),
    reason=f"switchyard / milvus-standin binaries not built in {bin_dir()} (cargo build --bins)",
)

PCHANNELS = 4


def pchannel_of(name: str) -> int:
    """The stand-in's pchannel for a collection (FNV-1a 64 of the name, mod the count)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % PCHANNELS


def names_on_distinct_pchannels(prefix: str, n: int) -> list[str]:
    out, seen, i = [], set(), 0
    while len(out) < n:
        name = f"{prefix}{i}"
        if pchannel_of(name) not in seen:
            seen.add(pchannel_of(name))
            out.append(name)
        i += 1
    return out


class Pair:
    """A replicating to B (and C, not replicated, for the reload test)."""

    def __init__(self, tmp: Path, ids=("cluster-a", "cluster-b")):
        self.tmp, self.procs = tmp, []
        self.standins = start_standins(tmp, ids, pchannels=PCHANNELS, procs=self.procs)
        replicate(self.a, self.b, tokens={i: TOKEN for i in ids})
        self.switchyards: list[Switchyard] = []

    a = property(lambda self: self.standins["cluster-a"])
    b = property(lambda self: self.standins["cluster-b"])

    def switchyard(self, standbys=("cluster-b",), ready: bool = True, **sections) -> Switchyard:
        clusters = [Switchyard.cluster("cluster-a", self.a.uri, "primary", token=TOKEN)]
        clusters += [Switchyard.cluster(c, self.standins[c].uri, "standby", token=TOKEN) for c in standbys]
        sections.setdefault("health", {"interval": "200ms", "timeout": "1s", "rise": 1, "fall": 2})
        sy = Switchyard(self.tmp, clusters, **sections)
        self.switchyards.append(sy)
        if ready:
            sy.wait_ready()
        return sy

    def stop(self, failed: bool = False) -> None:
        for sy in self.switchyards:
            if failed and sy.proc:
                print(f"\n--- switchyard log ---\n{sy.tail(80)}")
            sy.stop()
        stop_all(self.procs, failed)


@pytest.fixture
def pair(tmp_path, request):
    bed = Pair(tmp_path)
    yield bed
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    bed.stop(failed)


def clusters(sy: Switchyard) -> dict[str, dict]:
    r = requests.get(f"http://{sy.admin_addr}/v1/clusters", timeout=5)
    r.raise_for_status()
    return {c["id"]: c for c in r.json()}


def reads_data(standin) -> int:
    return standin.state()["counters"]["reads_data"]


def bounded_search(raw: Raw, collection: str, i: int = 0) -> None:
    from switchyard_bed import pb  # noqa: F401 - the protobuf modules are loaded by search_request

    code, details, resp = raw.call("Search", search_request(collection, vec(i % 20), "Bounded"), token=TOKEN)
    assert code.name == "OK" and resp.status.code == 0, (code, details, resp and resp.status.reason)


def test_idle_primary_keeps_lag_under_a_second_and_the_standby_serving(pair):
    sy = pair.switchyard()
    from pymilvus import MilvusClient

    client = MilvusClient(uri=sy.uri, token=TOKEN)
    make_collection(client, "idle", rows=20)
    for i in range(100, 110):
        client.insert("idle", [{"id": i, "vec": vec(i)}])
    wait_until(lambda: clusters(sy)["cluster-b"]["serves_reads"], timeout=10, what="B serving after the writes")
    raw = Raw(sy.addr)
    worst, samples, t0 = 0, 0, time.monotonic()
    while time.monotonic() - t0 < 30.0:
        b = clusters(sy)["cluster-b"]
        assert b["lag_ms"] is not None and b["serves_reads"], b
        worst, samples = max(worst, b["lag_ms"]), samples + 1
        before = reads_data(pair.b)
        bounded_search(raw, "idle", samples)
        assert reads_data(pair.b) == before + 1, "a Bounded read did not go to the standby"
        time.sleep(0.25)
    print(f"idle primary: {samples} samples over 30 s, worst lag {worst} ms")
    assert worst < 1000
    raw.close()
    client.close()


def test_one_stuck_pchannel_takes_the_standby_out_of_bounded_reads(pair):
    max_lag = 2.0
    sy = pair.switchyard(routing={"max_read_lag": f"{int(max_lag * 1000)}ms"})
    from pymilvus import MilvusClient

    stuck, flowing = names_on_distinct_pchannels("stuck", 2)
    client = MilvusClient(uri=sy.uri, token=TOKEN)
    for name in (stuck, flowing):
        make_collection(client, name, rows=5)
    with Writer(sy.uri, stuck, 1000, every=0.1) as w1, Writer(sy.uri, flowing, 1000, every=0.1) as w2:
        w1.wait_acks(3)
        w2.wait_acks(3)
        wait_until(lambda: clusters(sy)["cluster-b"]["serves_reads"], timeout=10, what="B serving")
        cps0 = {c["pchannel_index"]: c["time_tick"] for c in pair.b.state()["checkpoints"]}
        pair.a.control("/fault/replication/pause-pchannel", index=pchannel_of(stuck))
        paused_at = time.monotonic()
        wait_until(lambda: not clusters(sy)["cluster-b"]["serves_reads"], timeout=max_lag + 5,
                   what="B out of Bounded rotation")
        left = time.monotonic() - paused_at
        # The old rule (newest checkpoint over pchannels) would have kept it in: that one moved.
        cps1 = {c["pchannel_index"]: c["time_tick"] for c in pair.b.state()["checkpoints"]}
        assert max(cps1.values()) > max(cps0.values()), (cps0, cps1)
        assert cps1[pchannel_of(flowing)] > cps0[pchannel_of(flowing)]
        print(f"one pchannel paused: out of Bounded rotation {left:.2f} s after the pause (max_read_lag {max_lag} s)")
        assert left <= max_lag + 1.0
        # Bounded reads now go to the primary.
        raw = Raw(sy.addr)
        before = reads_data(pair.b)
        for i in range(5):
            bounded_search(raw, flowing, i)
        assert reads_data(pair.b) == before
        pair.a.control("/fault/replication/resume-pchannel", index=pchannel_of(stuck))
        resumed = time.monotonic()
        wait_until(lambda: clusters(sy)["cluster-b"]["serves_reads"], timeout=10, what="B back after resume")
        print(f"back in rotation {time.monotonic() - resumed:.2f} s after resume")
        raw.close()
    assert not w1.errors and not w2.errors, (w1.errors[:2], w2.errors[:2])
    client.close()


def test_restart_with_replication_paused_serves_nothing_until_caught_up(pair):
    sy = pair.switchyard()
    from pymilvus import MilvusClient

    client = MilvusClient(uri=sy.uri, token=TOKEN)
    make_collection(client, "restart", rows=20)
    wait_until(lambda: clusters(sy)["cluster-b"]["serves_reads"], timeout=10, what="B serving")
    # B misses writes acknowledged before the restart: the new switchyard never sees them.
    pair.a.control("/fault/replication/pause")
    client.insert("restart", [{"id": i, "vec": vec(i)} for i in range(100, 110)])
    client.close()
    sy.stop()
    pair.switchyards.remove(sy)
    sy2 = pair.switchyard()
    raw = Raw(sy2.addr)
    before = reads_data(pair.b)
    client = MilvusClient(uri=sy2.uri, token=TOKEN)
    # No write since the restart: the lag is unknown and B serves nothing.
    for i in range(10):
        bounded_search(raw, "restart", i)
        b = clusters(sy2)["cluster-b"]
        assert b["lag_ms"] is None and not b["serves_reads"], b
    # A write it has not applied (replication paused): its age alone is no proof of B's lag (B
    # may miss older writes, and does): still nothing.
    client.insert("restart", [{"id": 500, "vec": vec(500)}])
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        bounded_search(raw, "restart")
        assert not clusters(sy2)["cluster-b"]["serves_reads"]
        time.sleep(0.1)
    assert reads_data(pair.b) == before, "the standby served Bounded reads before it was shown caught up"
    pair.a.control("/fault/replication/resume")
    wait_until(lambda: clusters(sy2)["cluster-b"]["serves_reads"], timeout=10, what="B serving once caught up")
    assert clusters(sy2)["cluster-b"]["lag_ms"] < 1000
    raw.close()
    client.close()


def test_standby_added_by_reload_serves_nothing_before_it_is_shown_caught_up(tmp_path, request):
    bed = Pair(tmp_path, ids=("cluster-a", "cluster-b", "cluster-c"))
    failed = True
    try:
        # C is not replicated yet: A replicates to B only.
        sy = bed.switchyard()
        from pymilvus import MilvusClient

        client = MilvusClient(uri=sy.uri, token=TOKEN)
        make_collection(client, "reload", rows=20)
        wait_until(lambda: clusters(sy)["cluster-b"]["serves_reads"], timeout=10, what="B serving")
        # C also holds the collection (so a read sent there would be answered), but none of A's
        # writes: its checkpoint from A is unknown.
        make_collection(bed.standins["cluster-c"].client(), "reload", rows=20)
        sy.clusters.append(Switchyard.cluster("cluster-c", bed.standins["cluster-c"].uri, "standby", token=TOKEN))
        sy.write_config()
        before = reads_data(bed.standins["cluster-c"])
        r = requests.post(f"http://{sy.admin_addr}/v1/reload", timeout=10)
        assert r.status_code == 200, r.text
        raw = Raw(sy.addr)
        deadline = time.monotonic() + 3.0
        saw_c = False
        while time.monotonic() < deadline:
            bounded_search(raw, "reload")
            cs = clusters(sy)
            if "cluster-c" in cs:
                saw_c = True
                assert not cs["cluster-c"]["serves_reads"] and cs["cluster-c"]["lag_ms"] is None, cs["cluster-c"]
        assert saw_c
        assert reads_data(bed.standins["cluster-c"]) == before, "C served reads before it was shown caught up"
        raw.close()
        client.close()
        failed = False
    finally:
        bed.stop(failed or (getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed))
