#!/usr/bin/env python
"""Where the hull table's time goes on the embedded server: the size of the documents it reads.

``fw-screen table`` stays ~2.3x cheaper than before at 100,000 candidates (``bench_passes.py``), below the
4x of issue 16.  This script measures why, on the demo campaign's own documents, in one run: the same
questions asked of the candidates collection as stored (each candidate carries its two CIF texts and its
structures, ~7.4 of ~9.7 kB) and of a scratch copy holding only the fields the table reads (no CIF texts,
no structures):

* ``ids``: ``find`` returning only ``_id`` (the server's cost of visiting each document);
* ``table_find``: ``find`` with the table's 25 field paths as a projection (flattened in Python);
* ``table``: the table's own aggregation (``$match`` + ``$project`` of :data:`HULL_TABLE_PROJECTION`).

The copy is written to a scratch database of the same server and dropped at the end; nothing of the demo's
database changes.  Its ratio is what moving the CIF texts and structures out of the candidate documents
(to a collection of their own, read only by the stages that need them) would give the table and every
other whole-campaign pass; that layout is not built.

    .venv/bin/python benchmarks/bench_table_floor.py      # after `make demo` (needs its running database)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import REPO, code_version, loadavg, machine_info, save_results  # noqa: E402

import bson  # noqa: E402

from fw_screen.store import ResultsStore  # noqa: E402
from fw_screen.store.analysis import HULL_TABLE_PROJECTION  # noqa: E402

BULKY = ("structure", "structure_reduced", "cif_processed", "cif_original")


def table_paths() -> list[str]:
    """The document paths the table's projection reads (field references and plain inclusions)."""
    paths = set()
    for key, value in HULL_TABLE_PROJECTION.items():
        if isinstance(value, str) and value.startswith("$"):
            paths.add(value[1:])
        elif value == 1:
            paths.add(key)
    return sorted(paths)


def slim(doc: dict) -> dict:
    out = {k: v for k, v in doc.items() if k not in BULKY}
    for sub in ("ml", "dft"):
        if isinstance(out.get(sub), dict):
            out[sub] = {k: v for k, v in out[sub].items() if "structure" not in k}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launchpad", type=Path, default=REPO / ".fw-screen" / "launchpad.yaml")
    parser.add_argument("--campaign", default="demo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "table_floor.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    from fireworks import LaunchPad

    lp = LaunchPad.from_file(str(args.launchpad))
    store = ResultsStore.from_launchpad(lp)
    full = store.candidates.collection  # raw pymongo: no decoding on either side
    match = {"campaign": args.campaign}
    n = full.count_documents(match)
    if not n:
        raise SystemExit(f"no candidates of {args.campaign!r} in {args.launchpad}: run `make demo` first")
    scratch = lp.connection[f"{lp.db.name}_table_floor"]
    scratch.drop_collection("candidates")
    docs = [slim(d) for d in full.find(match)]
    scratch.candidates.insert_many(docs)
    scratch.candidates.create_index([("campaign", 1), ("seq", 1)])
    size_full = statistics.mean(len(bson.encode(d)) for d in full.find(match).limit(2000))
    size_slim = statistics.mean(len(bson.encode(d)) for d in docs[:2000])
    paths = table_paths()
    pipeline = [{"$match": match}, {"$project": HULL_TABLE_PROJECTION}]
    questions = {
        "ids": lambda c: list(c.find(match, {"_id": 1})),
        "table_find": lambda c: list(c.find(match, {p: 1 for p in paths})),
        "table": lambda c: list(c.aggregate(pipeline)),
    }
    times = {q: {"stored": [], "slim": []} for q in questions}
    for _ in range(args.repeats):
        for q, ask in questions.items():
            for name, coll in (("stored", full), ("slim", scratch.candidates)):  # interleaved
                t = time.perf_counter()
                rows = ask(coll)
                times[q][name].append(time.perf_counter() - t)
                assert len(rows) == n
    lp.connection.drop_database(scratch.name)

    print(f"{n} candidates of {args.campaign!r}: mean document {size_full / 1000:.1f} kB as stored, "
          f"{size_slim / 1000:.1f} kB without CIF texts and structures; median of {args.repeats}")
    print(f"  {'question':12s} {'as stored':>10s} {'slim':>10s} {'ratio':>7s}")
    result = {"n": n, "doc_kb": {"stored": size_full / 1000, "slim": size_slim / 1000}, "questions": {}}
    for q, t in times.items():
        a, b = statistics.median(t["stored"]), statistics.median(t["slim"])
        result["questions"][q] = {"stored_s": a, "slim_s": b, "ratio": a / b}
        print(f"  {q:12s} {a:9.2f}s {b:9.2f}s {a / b:6.2f}x")
    save_results(args.out, {**result, "code": code_version(), "machine": machine_info(), "load_end": loadavg(),
                            "total_s": round(time.perf_counter() - start, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
