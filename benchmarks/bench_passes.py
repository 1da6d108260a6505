#!/usr/bin/env python
"""Whole-campaign questions before and after, side by side in one run.

Before (fw-screen at commit 124cd53): structures stored as nested dictionaries, ``fw-screen status`` counting
the documents, yields and metrics as database expressions (~30 conditional sums per document;
tests/aggregation_reference.py keeps them).  After: one compact string per structure
(:mod:`fw_screen.store.structures`), the kept funnel counters (:mod:`fw_screen.store.counters`), the yields
grouped by their raw fields and the metrics summed from one projected read (:mod:`fw_screen.store.analysis`).

The campaign: the demo campaign's documents (``--launchpad``, default ``.fw-screen/launchpad.yaml`` after
``make demo``; campaign ``--campaign``, default ``demo``), as they are (``demo``) and copied up to ``--n``
candidates (default 100,000) with new ids and input order, on one embedded SecantusDB server.  Each size is
loaded twice, once per layout, into its own database; the counters are built by a recount of the documents
(``ResultsStore.replace_counters``).  Then, for each layout, every question ``--repeats`` times (median; ``--repeats-big`` at ``--n``), the layouts
interleaved:

* ``status``: ``fw-screen status`` (``funnel_report``): before, a pass over the campaign and one over its
  invalid candidates; after, the counters and the ML-done candidates;
* ``yields``: ``fw-screen yields`` (``funnel_yields``: one pass);
* ``table``: ``fw-screen table`` (the whole hull-distance table, one aggregation);
* ``metrics``: ``fw-screen metrics`` (``campaign_metrics``: one pass);
* ``report``: ``fw-screen report`` without the chemical-space map (``build_report(chemical_space=False)``;
  the map featurises a fixed sample of structures, the same work at any campaign size).

Each answer is compared between the layouts (the same numbers, or the bench says so).

    .venv/bin/python benchmarks/bench_passes.py                 # demo campaign + 100,000 (~25 min)
    .venv/bin/python benchmarks/bench_passes.py --n 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, code_version, free_port, loadavg, machine_info, save_results  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))  # aggregation_reference: the aggregations of before

from pymongo import MongoClient  # noqa: E402

from fw_screen.reporting.funnel import funnel_report  # noqa: E402
from fw_screen.reporting.tables import campaign_metrics, funnel_yields, hull_table  # noqa: E402
from fw_screen.server import embedded as server  # noqa: E402
from fw_screen.store import ResultsStore  # noqa: E402
from fw_screen.store import structures as sc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def source_documents(launchpad: Path, campaign: str) -> tuple[dict, list[dict]]:
    """The campaign document and candidate documents of ``campaign`` (structures as dictionaries)."""
    from fireworks import LaunchPad

    lp = LaunchPad.from_file(str(launchpad))
    store = ResultsStore.from_launchpad(lp)
    camp = store.campaigns.find_one({"_id": campaign})
    if camp is None:
        raise SystemExit(f"no campaign {campaign!r} in {launchpad}: run `make demo` first, or pass --launchpad")
    docs = [d for d in store.candidates.find({"campaign": campaign}).sort("seq", 1)]  # decoded structures
    refs = {"references": list(store.references.find({})), "reference_entries": list(store.entries.find({})),
            "reference_sets": list(store.sets.find({}))}
    lp.connection.close()
    return {"campaign": camp, **refs}, docs


def layout(doc: dict, compact: bool) -> dict:
    """A candidate as stored before (nested) or after (compact); no counter entries left on it."""
    d = {k: v for k, v in doc.items() if k != "tally_pending"}
    return sc.encode_fields(d) if compact else sc.decode_document(d)  # decoded: nested again


def load(client, name: str, meta: dict, docs: list[dict], n: int, compact: bool) -> tuple[ResultsStore, float]:
    """Database ``name``: the references, the campaign, ``n`` candidates (the source copied round-robin)."""
    db = client[name]
    store = ResultsStore(db)
    t = time.perf_counter()
    for coll in ("references", "reference_entries", "reference_sets"):
        if meta[coll]:
            db[coll].insert_many(meta[coll])
    camp = {**meta["campaign"], "counters": True}
    db["campaigns"].insert_one(camp)
    store.ensure_indexes()
    base = [layout(d, compact) for d in docs]
    chunk = []
    for i in range(n):
        src = base[i % len(base)]
        copy = i // len(base)
        chunk.append({**src, "_id": src["_id"] if copy == 0 else f"{src['_id']}~{copy}", "seq": i})
        if len(chunk) == 2000:
            store.candidates.insert_many(chunk, ordered=False)
            chunk = []
    if chunk:
        store.candidates.insert_many(chunk, ordered=False)
    campaign = camp["_id"]
    store.replace_counters(campaign, store.recount(campaign))
    return store, time.perf_counter() - t


def as_before(store: ResultsStore) -> ResultsStore:
    """``store`` answering as fw-screen did at commit 124cd53: no counters (status counts the documents) and
    the aggregations of tests/aggregation_reference.py (the conditional sums computed by the database)."""
    import aggregation_reference as before

    store.has_counters = lambda campaign: False
    store.yield_count_rows = lambda *a, **k: before.yield_count_rows(store.candidates, *a, **k)
    store.metric_count_rows = lambda *a, **k: before.metric_count_rows(store.candidates, *a, **k)
    return store


def questions(store: ResultsStore, campaign: str, tmp: Path) -> dict:
    from fw_screen.reporting.report import build_report

    def report():
        out = build_report(store, campaign, tmp / f"report_{campaign}.html", chemical_space=False)
        return {"sections": out["drawn"], "bytes": out["bytes"] > 0}

    return {
        "status": lambda: funnel_report(store, campaign),
        "yields": lambda: funnel_yields(store, campaign),
        "table": lambda: hull_table(store, campaign),
        "metrics": lambda: campaign_metrics(store, campaign),
        "report": report,
    }


def comparable(answer):
    """An answer with what legitimately differs between runs removed (how it was counted, timings), float
    sums rounded (their order of terms differs)."""
    if isinstance(answer, dict):
        return {k: comparable(v) for k, v in answer.items() if k not in ("counted_by", "seconds", "timings", "at")}
    if isinstance(answer, list):
        return [comparable(v) for v in answer]
    if isinstance(answer, float) and answer == answer and abs(answer) != float("inf"):
        return round(answer, 9)
    return answer


def measure(stores: dict, campaign: str, repeats: int, tmp: Path) -> dict:
    """{question: before s, after s, ratio, same answer}: medians, before and after interleaved per repeat."""
    times: dict = {}
    answers: dict = {}
    qs = {k: questions(s, campaign, tmp) for k, s in stores.items()}
    for q in qs["before"]:
        for r in range(repeats):
            for k in (("before", "after") if r % 2 == 0 else ("after", "before")):
                t = time.perf_counter()
                ans = qs[k][q]()
                times.setdefault(q, {}).setdefault(k, []).append(time.perf_counter() - t)
                answers.setdefault(q, {})[k] = comparable(json.loads(json.dumps(ans, default=str)))
    out = {}
    for q, by in times.items():
        med = {k: statistics.median(v) for k, v in by.items()}
        out[q] = {"before_s": round(med["before"], 3), "after_s": round(med["after"], 3),
                  "ratio": round(med["before"] / med["after"], 2) if med["after"] else None,
                  "same_answer": answers[q]["before"] == answers[q]["after"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--launchpad", type=Path, default=REPO / ".fw-screen" / "launchpad.yaml")
    p.add_argument("--campaign", default="demo")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3, help="runs of each question on the demo-size campaign (median)")
    p.add_argument("--repeats-big", type=int, default=1, help="and on the --n campaign (each pass ~1 min there)")
    p.add_argument("--no-demo", action="store_true", help="measure the --n campaign only")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    started = dt.datetime.now().astimezone()
    meta, docs = source_documents(args.launchpad, args.campaign)
    results: dict = {"benchmark": "passes", "date": started.isoformat(timespec="seconds"),
                     "machine": machine_info(), "code": code_version(), "campaign": args.campaign,
                     "source_candidates": len(docs), "n": args.n, "repeats": [args.repeats, args.repeats_big],
                     "sizes": {}}
    home = Path(tempfile.mkdtemp(prefix="fws-passes-", dir="/tmp"))
    info = server.start(home, port=free_port())
    client = MongoClient(f"mongodb://127.0.0.1:{info['port']}/", **server.CLIENT_KWARGS)
    print(f"SecantusDB pid {info['pid']} on port {info['port']}; source: {len(docs)} candidates of {args.campaign!r}")
    try:
        sizes = [("demo", len(docs), args.repeats)] * (not args.no_demo) + [(f"{args.n:,}", args.n, args.repeats_big)]
        for label, n, repeats in sizes:
            stores, loads = {}, {}
            for lay in ("nested", "compact"):
                stores[lay], loads[lay] = load(client, f"passes_{lay}_{n}", meta, docs, n, lay == "compact")
            sizes = {lay: client[f"passes_{lay}_{n}"].command("collStats", "candidates").get("size")
                     for lay in stores}
            res = measure({"before": as_before(stores["nested"]), "after": stores["compact"]},
                          meta["campaign"]["_id"], repeats, home)
            results["sizes"][label] = {"candidates": n, "load_s": {k: round(v, 1) for k, v in loads.items()},
                                       "collection_bytes": sizes, "questions": res}
            print(f"\n== {label} candidates (load nested {loads['nested']:.0f} s, compact {loads['compact']:.0f} s; "
                  f"candidates collection {sizes['nested'] / 1e6:.0f} MB nested, {sizes['compact'] / 1e6:.0f} MB compact) ==")
            print(f"  {'question':<10} {'before':>12} {'after':>12} {'ratio':>8}  same answer")
            for q, r in res.items():
                print(f"  {q:<10} {r['before_s']:>10.3f} s {r['after_s']:>10.3f} s {r['ratio']!s:>7}x  {r['same_answer']}")
            for lay in stores:
                client.drop_database(f"passes_{lay}_{n}")
    finally:
        results["machine"]["loadavg_at_end"] = loadavg()
        results["total_s"] = round((dt.datetime.now().astimezone() - started).total_seconds(), 1)
        client.close()
        server.stop(home)
        shutil.rmtree(home, ignore_errors=True)
        save_results(args.json or RESULTS / ("passes.json" if args.n == 100_000 else f"passes_{args.n}.json"), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
