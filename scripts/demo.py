"""The switchyard live demo (run it through scripts/demo.sh).

Starts two Milvus clusters on this machine (milvus-standin over milvus-lite, replicating A→B),
switchyard in front of them, and pymilvus traffic through switchyard: writer threads inserting
rows with unique ids, a reader searching. While traffic flows it runs a planned switchover A→B
and a drill (B→A→B), then checks every acknowledged row on both clusters and prints the writes
held, the longest pause, the errors and the losses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "python"))

from pymilvus import MilvusClient  # noqa: E402

import testbed  # noqa: E402
from switchyard_bed import Switchyard  # noqa: E402

TOKEN = "demo-admin-token"
DIM = 8


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ctl(sy: Switchyard, *args: str) -> int:
    cmd = [str(testbed.bin_dir() / "switchyard"), "ctl", "--admin", f"http://{sy.admin_addr}", "--token", TOKEN, *args]
    say("$ switchyard ctl " + " ".join(args))
    return subprocess.run(cmd).returncode


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="switchyard-demo-"))
    try:
        return run(work)
    finally:
        testbed.kill_all()
        say(f"stopped every process (logs in {work})")


def run(work: Path) -> int:
    say("starting two milvus-lite servers and two stand-ins (cluster-a, cluster-b)")
    lite_a, lite_b = testbed.MilvusLite(work, "lite-a"), testbed.MilvusLite(work, "lite-b")
    a = testbed.Standin("cluster-a", lite_a.uri, pchannels=4, workdir=work)
    b = testbed.Standin("cluster-b", lite_b.uri, pchannels=4, workdir=work)
    say("setting up replication cluster-a → cluster-b (UpdateReplicateConfiguration: primary first)")
    testbed.replicate(a, b)

    sy = Switchyard(
        work,
        [Switchyard.cluster("cluster-a", a.uri, "primary"), Switchyard.cluster("cluster-b", b.uri, "standby")],
        admin={"token": TOKEN},
    )
    sy.wait_ready()
    say(f"switchyard listening on {sy.addr} (admin {sy.admin_addr})")
    ctl(sy, "status")

    client = MilvusClient(uri=sy.uri)
    client.create_collection("demo", dimension=DIM)
    say("collection 'demo' created through switchyard")

    acked: set[int] = set()
    errors: list[str] = []
    pauses: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        c = MilvusClient(uri=sy.uri)
        i = 0
        while not stop.is_set():
            ids = [w * 10_000_000 + i * 10 + k for k in range(10)]
            t0 = time.monotonic()
            try:
                c.insert("demo", [{"id": x, "vector": [float(x % 97) / 97.0] * DIM} for x in ids])
                with lock:
                    acked.update(ids)
                    pauses.append(time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - the demo reports every error
                with lock:
                    errors.append(f"writer {w}: {e}")
            i += 1
            # Pace the writers (~25 inserts/s each) so replication keeps up: a switchover's
            # pause is the time the target needs to apply the old primary's backlog, and a
            # milvus-lite standby applying in order falls behind a flat-out writer.
            stop.wait(0.04)

    reads = [0]

    def reader() -> None:
        c = MilvusClient(uri=sy.uri)
        while not stop.is_set():
            try:
                c.search("demo", data=[[0.5] * DIM], limit=3)
                reads[0] += 1
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(f"reader: {e}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    say("traffic: 3 writer threads inserting through switchyard, 1 reader searching")
    time.sleep(3)  # let traffic run: this is a demo, not a test

    say("planned switchover to cluster-b while traffic flows")
    ctl(sy, "status")
    ok_switch = ctl(sy, "switchover", "--to", "cluster-b", "--wait") == 0
    time.sleep(2)
    say("drill: switch over to cluster-a, check a write and a read there, switch back")
    ok_drill = ctl(sy, "drill", "--to", "cluster-a") == 0
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    ctl(sy, "status")

    say("checking every acknowledged row on both clusters (direct, strong reads)")
    primary, standby = (b, a)
    want = len(acked)

    def present(s) -> int:
        c = s.client()
        return testbed.count_rows(c, "demo")

    testbed.wait_until(lambda: present(standby) >= want, timeout=60, what="standby caught up")
    counts = {s.cluster_id: present(s) for s in (primary, standby)}
    c = primary.client()
    found: set[int] = set()
    ids = sorted(acked)
    for k in range(0, len(ids), 1000):
        chunk = ids[k : k + 1000]
        for r in c.query("demo", ids=chunk, output_fields=["id"]):
            found.add(int(r["id"]))
    lost = len(acked - found)
    dupes = counts[primary.cluster_id] - want if counts[primary.cluster_id] > want else 0
    longest = max(pauses) if pauses else 0.0
    held = sum(j.get("held_writes", 0) for j in jobs(sy))
    print()
    print("=== switchyard demo summary ===")
    print(f"writes acknowledged      : {want} rows in {len(pauses)} inserts")
    print(f"searches served          : {reads[0]}")
    print(f"writes held by switchyard: {held}")
    print(f"longest write pause      : {longest * 1000:.1f} ms (as a writer saw it)")
    print(f"client errors            : {len(errors)}")
    for e in errors[:5]:
        print(f"    {e}")
    print(f"rows lost                : {lost}")
    print(f"rows duplicated          : {dupes}")
    print(f"rows on cluster-b (primary) / cluster-a (standby): {counts['cluster-b']} / {counts['cluster-a']}")
    good = ok_switch and ok_drill and not errors and lost == 0 and dupes == 0
    print("result                   :", "OK" if good else "PROBLEMS (see above)")
    return 0 if good else 1


def jobs(sy: Switchyard) -> list:
    import json
    import urllib.request

    req = urllib.request.Request(f"http://{sy.admin_addr}/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return [j for j in json.load(r) if j["kind"] == "switchover"]


if __name__ == "__main__":
    sys.exit(main())
