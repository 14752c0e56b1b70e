"""A full pymilvus workload, run through switchyard by the data-path tests.

It runs unchanged under pymilvus 2.6.x (the test venv) and 3.0.x (`.venv-pm3`, as a subprocess),
so both SDK generations are proven against the same proxy:

    python workload.py --uri http://127.0.0.1:PORT [--token root:Milvus] [--name wl_x] [--legacy]
                       [--ca ca.pem --server-name localhost] [--read-level Bounded]

Every step asserts what it got back. Reads use the collection's default consistency unless
`--read-level` names one (Bounded reads go to a standby, Strong ones to the primary); a read that depends on earlier writes is polled until the
standby's answer holds them (replication is asynchronous), within `--deadline` seconds.
`--legacy` leaves out what Milvus 2.3 lacks (a second vector field, hybrid search, aliases
listing). The last line on stdout is a JSON summary: `{"ok": true, "steps": [...],
"calls": {"write": N, "data_read": N}, "pymilvus": "<version>"}`. Exit status 0 only when every
step passed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback

import pymilvus
from pymilvus import DataType, MilvusClient

DIM = 8
ROWS = 100


def vec(i: int, salt: int = 0) -> list[float]:
    r = random.Random(i * 7919 + salt)
    return [r.uniform(-1, 1) for _ in range(DIM)]


class Workload:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.steps: list[str] = []
        self.calls = {"write": 0, "data_read": 0}
        kw = {"uri": args.uri}
        if args.token:
            kw["token"] = args.token
        if args.ca:
            kw["server_pem_path"] = args.ca
            kw["server_name"] = args.server_name or "localhost"
        self.c = MilvusClient(**kw)
        self.name = args.name
        self.legacy = args.legacy
        # Reads name their level when asked to (`--read-level Bounded`), else use the collection's.
        self.rk = {"consistency_level": args.read_level} if args.read_level else {}

    def step(self, name: str) -> None:
        self.steps.append(name)
        print(f"step {name}", flush=True)

    def write(self, n: int = 1) -> None:
        self.calls["write"] += n

    def read(self, n: int = 1) -> None:
        self.calls["data_read"] += n

    def poll(self, what: str, fn, ok, deadline: float | None = None):
        """Calls `fn` until `ok(result)`; every call is a data read."""
        end = time.monotonic() + (deadline or self.args.deadline)
        last = None
        while True:
            self.read()
            try:
                last = fn()
                if ok(last):
                    return last
            except Exception as e:  # the standby may not have the collection yet
                last = e
            if time.monotonic() > end:
                raise AssertionError(f"{what}: no expected answer within the deadline; last: {last!r}")
            time.sleep(0.05)

    def schema(self):
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
        if not self.legacy:
            s.add_field("vec2", DataType.FLOAT_VECTOR, dim=DIM)
        s.add_field("tag", DataType.VARCHAR, max_length=32)
        return s

    def row(self, i: int, tag: str) -> dict:
        r = {"id": i, "vec": vec(i), "tag": tag}
        if not self.legacy:
            r["vec2"] = vec(i, 1)
        return r

    def count(self, **kw) -> int:
        res = self.c.query(self.name, filter="", output_fields=["count(*)"], **self.rk, **kw)
        return res[0]["count(*)"]

    def run(self) -> None:
        c, name = self.c, self.name
        self.step("get_server_version")
        assert c.get_server_version()

        self.step("cleanup")
        if c.has_collection(name):
            c.drop_collection(name)
            self.write()

        self.step("create_collection")
        c.create_collection(name, schema=self.schema(), consistency_level="Bounded")
        self.write()
        assert c.has_collection(name)
        assert name in c.list_collections()
        desc = c.describe_collection(name)
        assert {f["name"] for f in desc["fields"]} >= {"id", "vec", "tag"}, desc

        self.step("create_index")
        ip = MilvusClient.prepare_index_params()
        ip.add_index("vec", index_type="FLAT", metric_type="L2")
        if not self.legacy:
            ip.add_index("vec2", index_type="FLAT", metric_type="L2")
        c.create_index(name, ip)
        self.write()
        assert "vec" in c.list_indexes(name)
        assert c.describe_index(name, index_name="vec")

        self.step("load_collection")
        c.load_collection(name)
        self.write()
        assert str(c.get_load_state(name)["state"]).endswith("Loaded"), c.get_load_state(name)

        self.step("insert")
        res = c.insert(name, [self.row(i, f"t{i % 3}") for i in range(ROWS)])
        self.write()
        assert res["insert_count"] == ROWS, res

        self.step("upsert")
        res = c.upsert(name, [self.row(i, "up") for i in range(10)])
        self.write()
        assert res["upsert_count"] == 10, res

        self.step("delete")
        c.delete(name, ids=list(range(90, 100)))
        c.delete(name, filter="id in [80, 81]")
        self.write(2)

        self.step("flush")
        c.flush(name)
        self.write()
        assert c.get_collection_stats(name) is not None

        expected = ROWS - 12
        self.step("query_count")
        self.poll("count(*) after insert/upsert/delete", lambda: self.count(), lambda n: n == expected)

        self.step("search")
        hits = self.poll(
            "search for row 42",
            lambda: c.search(name, data=[vec(42)], anns_field="vec", limit=5, output_fields=["tag"], **self.rk),
            lambda r: len(r[0]) == 5 and r[0][0]["id"] == 42,
        )
        assert hits[0][0]["entity"]["tag"] == "t0", hits[0][0]
        # A search of two vectors with a filter.
        res = c.search(name, data=[vec(3), vec(7)], anns_field="vec", filter='tag == "up"', limit=3, **self.rk)
        self.read()
        assert len(res) == 2 and all(h["id"] < 10 for q in res for h in q), res

        if not self.legacy:
            self.step("hybrid_search")
            from pymilvus import AnnSearchRequest, RRFRanker

            reqs = [
                AnnSearchRequest(data=[vec(42)], anns_field="vec", param={}, limit=5),
                AnnSearchRequest(data=[vec(42, 1)], anns_field="vec2", param={}, limit=5),
            ]
            res = c.hybrid_search(name, reqs, RRFRanker(), limit=3, output_fields=["tag"], **self.rk)
            self.read()
            assert res[0][0]["id"] == 42, res

        self.step("query")
        res = c.query(name, filter="id < 5", output_fields=["tag"], **self.rk)
        self.read()
        assert sorted(r["id"] for r in res) == [0, 1, 2, 3, 4], res
        assert all(r["tag"] == "up" for r in res), res

        self.step("get")
        res = c.get(name, ids=[0, 42, 95], **self.rk)
        self.read()
        assert sorted(r["id"] for r in res) == [0, 42], res

        self.step("partitions")
        c.create_partition(name, "p1")
        self.write()
        assert c.has_partition(name, "p1")
        assert "p1" in c.list_partitions(name)
        c.insert(name, [self.row(1000 + i, "p") for i in range(10)], partition_name="p1")
        self.write()
        self.poll(
            "rows of partition p1",
            lambda: c.query(name, filter="id >= 1000", output_fields=["tag"], partition_names=["p1"], **self.rk),
            lambda r: sorted(x["id"] for x in r) == list(range(1000, 1010)),
        )
        # Real Milvus drops only released partitions; milvus-lite releases whole collections only.
        c.release_collection(name)
        c.drop_partition(name, "p1")
        c.load_collection(name)
        self.write(3)
        assert "p1" not in c.list_partitions(name)

        self.step("aliases")
        alias = f"{name}_alias"
        c.create_alias(name, alias)
        self.write()
        assert c.describe_alias(alias)["collection_name"] == name
        if not self.legacy:
            assert alias in c.list_aliases(name)["aliases"]
        self.poll(
            "count(*) through the alias",
            lambda: c.query(alias, filter="", output_fields=["count(*)"], **self.rk)[0]["count(*)"],
            lambda n: n == expected,
        )
        c.drop_alias(alias)
        self.write()

        self.step("release_load")
        c.release_collection(name)
        c.load_collection(name)
        self.write(2)

        self.step("drop_collection")
        c.drop_collection(name)
        self.write()
        assert not c.has_collection(name)
        c.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--name", default="wl")
    p.add_argument("--legacy", action="store_true")
    p.add_argument("--ca", default="")
    p.add_argument("--server-name", default="")
    p.add_argument("--deadline", type=float, default=30.0)
    p.add_argument("--read-level", default="", help="consistency level of every read (default: the collection's)")
    args = p.parse_args()
    w = Workload(args)
    ok, error = True, None
    try:
        w.run()
    except Exception as e:
        ok, error = False, f"{type(e).__name__}: {e}"
        traceback.print_exc()
    print(
        json.dumps(
            {"ok": ok, "error": error, "steps": w.steps, "calls": w.calls, "pymilvus": pymilvus.__version__}
        ),
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
