"""Analysis on a whole campaign (issue 5): the hull-distance table, the yields and the HTML report for the
8,000-candidate demo campaign on the embedded database, each against the naive way in the same run, and
the query plans (MongoDB ``explain``) of the queries behind them.

    make demo                                   # fills the embedded database (campaign "demo")
    python benchmarks/bench_analysis.py [-c demo] [-l .fw-screen/launchpad.yaml] [--repeat 3]

Naive way: read every candidate document of the campaign into Python (``find({"campaign": ...})``) and build
the same rows / counts there (fw_screen.science.yields.yields is the reference definition of the yields).  Both
ways must give the same rows and counts; the script checks it.
"""

from __future__ import annotations

import _common  # noqa: F401 -- single-threaded BLAS, repository on sys.path

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from _common import REPO, code_version, save_results


def best_of(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times), statistics.median(times)


def naive_rows(store, campaign: str) -> list[dict]:
    """The hull table built in Python from every document (what one would write without the aggregation)."""
    from fw_screen import state as st

    def get(d, dotted):
        for part in dotted.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    rows = []
    for d in store.candidates_for({"campaign": campaign}, sort=None):  # every field of every document
        dec = get(d, "ml.hull.decomposition")
        rows.append({"id": d["_id"], "formula": d.get("reduced_formula"), "status": d["status"],
                     "valid": d["status"] in st.VALID_OR_LATER, "novel": d["status"] in st.NOVEL_OR_LATER,
                     "ml_e_above_hull": get(d, "ml.e_above_hull"), "dft_e_above_hull": get(d, "dft.e_above_hull"),
                     "ml_band_gap": get(d, "ml.band_gap.band_gap"), "condition": get(d, "targets.band_gap.value"),
                     "ml_decomposition": " + ".join(x["formula"] for x in dec) if dec else None})
    rows.sort(key=lambda r: (r["ml_e_above_hull"] is None, r["ml_e_above_hull"] or 0.0))
    return rows


def naive_yields(store, campaign: str, threshold: float) -> dict:
    from fw_screen import state as st
    from fw_screen.science.yields import yields

    recs = []
    for d in store.candidates_for({"campaign": campaign}, sort=None):
        ml = d.get("ml") or {}
        recs.append({"valid": d["status"] in st.VALID_OR_LATER,
                     "unique": d["status"] in (st.KNOWN, *st.NOVEL_OR_LATER),
                     "novel": d["status"] in st.NOVEL_OR_LATER, "e_above_hull": ml.get("e_above_hull"),
                     "band_gap_hit": ((ml.get("hits") or {}).get("band_gap") or {}).get("hit")})
    return yields(recs, threshold)


def plan_summary(ex: dict) -> dict:
    """Stage chain of the winning plan (outermost first), index used, keys/documents examined."""
    from fw_screen.store import plan_nodes

    nodes = plan_nodes(ex["winning_plan"])
    stages = [n["stage"] for n in nodes]
    index = next((n["indexName"] for n in reversed(nodes) if "indexName" in n), None)
    s = ex.get("stats") or {}
    return {"stages": " <- ".join(stages), "index": index, "keys_examined": s.get("totalKeysExamined"),
            "docs_examined": s.get("totalDocsExamined"), "returned": s.get("nReturned")}


def main(argv=None) -> int:
    from fw_screen import state as st
    from fw_screen.reporting.tables import HAS_NUMBER, funnel_yields, hull_table
    from fw_screen.cli import resolve_launchpad
    from fw_screen.store import ResultsStore

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--campaign", default="demo")
    p.add_argument("-l", "--launchpad")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "analysis.json"))
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    store = ResultsStore.from_file(resolve_launchpad(args.launchpad))
    c = args.campaign
    n = store.count({"campaign": c})
    if not n:
        raise SystemExit(f"campaign {c!r} has no candidates: run `make demo` first (or pass -c/-l)")
    store.ensure_indexes()
    counts = store.status_counts(c)
    print(f"campaign {c}: {n} candidates; statuses {dict(sorted(counts.items()))}; load {os.getloadavg()[0]:.2f}")
    results: dict = {"campaign": c, "n": n, "status": counts, "code": code_version(),
                     "load_1min_start": os.getloadavg()[0], "repeat": args.repeat}

    # ---- hull table: whole campaign, and the usual question (ML-done, lowest 50)
    rows, t_best, t_med = best_of(lambda: hull_table(store, c), args.repeat)
    naive, n_best, n_med = best_of(lambda: naive_rows(store, c), args.repeat)
    assert len(rows) == len(naive) == n, (len(rows), len(naive), n)
    same = {r["id"]: r for r in naive}
    for r in rows:  # the same rows (ties in e_hull may order differently)
        q = same[r["id"]]
        assert (r["ml_e_above_hull"], r["status"], r["ml_decomposition"]) == \
               (q["ml_e_above_hull"], q["status"], q["ml_decomposition"]), r["id"]
    assert [r["ml_e_above_hull"] for r in rows] == [r["ml_e_above_hull"] for r in naive]
    top, top_best, _ = best_of(lambda: hull_table(store, c, stage="ml", limit=50), args.repeat)
    _, top_naive, _ = best_of(lambda: [r for r in naive_rows(store, c)
                                       if r["status"] in st.ML_DONE_OR_LATER][:50], args.repeat)
    results["table"] = {"rows": len(rows), "db_s": round(t_best, 3), "db_median_s": round(t_med, 3),
                        "naive_s": round(n_best, 3), "naive_median_s": round(n_med, 3),
                        "ratio": round(n_best / t_best, 2),
                        "ml_top50_db_s": round(top_best, 3), "ml_top50_naive_s": round(top_naive, 3),
                        "ml_top50_ratio": round(top_naive / top_best, 1), "ml_top50_rows": len(top)}
    print(f"hull table, all {len(rows)} rows: {t_best:.2f} s (aggregation) vs {n_best:.2f} s (naive) "
          f"= {n_best / t_best:.1f}x; ML-done lowest 50: {top_best * 1000:.0f} ms vs {top_naive:.2f} s "
          f"= {top_naive / top_best:.0f}x")

    # ---- yields at two thresholds, overall and per condition
    y, y_best, _ = best_of(lambda: funnel_yields(store, c, thresholds=[0.1, 0.0]), args.repeat)
    ny, ny_best, _ = best_of(lambda: [naive_yields(store, c, t) for t in (0.1, 0.0)], args.repeat)
    for thr, ref in zip((0.1, 0.0), ny):
        assert y["overall"][thr]["counts"] == ref["counts"], (thr, y["overall"][thr]["counts"], ref["counts"])
    results["yields"] = {"db_s": round(y_best, 3), "naive_s": round(ny_best, 3), "ratio": round(ny_best / y_best, 2),
                         "conditions": len(y["by_condition"]), "overall": {str(k): v for k, v in y["overall"].items()}}
    print(f"yields (2 thresholds, {len(y['by_condition'])} conditions): {y_best:.2f} s vs {ny_best:.2f} s naive "
          f"= {ny_best / y_best:.1f}x")

    # ---- query plans
    plans = {}
    for name, match, sort in [
            ("table: ML e_hull sorted", {"campaign": c, "ml.e_above_hull": HAS_NUMBER}, [("ml_e_above_hull", 1)]),
            ("table: DFT e_hull sorted", {"campaign": c, "dft.e_above_hull": HAS_NUMBER}, [("dft_e_above_hull", 1)]),
            ("table: --stage ml", {"campaign": c, "status": {"$in": list(st.ML_DONE_OR_LATER)}}, None),
            ("table: --max-ml-e-hull 0.1", {"campaign": c, "ml.e_above_hull": {"$lte": 0.1}}, None),
            ("table: --chemsys Na-P", {"campaign": c, "chemsys": "Na-P"}, None),
            ("yields / whole campaign", {"campaign": c}, None)]:
        plans[name] = plan_summary(store.explain(match, sort))
        print(f"  explain {name:<28} {plans[name]['stages']:<22} index {plans[name]['index']}, "
              f"keys {plans[name]['keys_examined']}, docs {plans[name]['docs_examined']}, "
              f"returned {plans[name]['returned']}")
    results["explain"] = plans

    # ---- the HTML report
    try:
        from fw_screen.reporting.report import build_report
    except ImportError:
        build_report = None
    if build_report is not None:
        out_dir = REPO / "benchmarks" / "results"
        rep = {}
        for label, chem in (("with_chemical_space", True), ("without_chemical_space", False)):
            path = out_dir / f"report_{c}_{label}.html.tmp"
            t0 = time.perf_counter()
            summary = build_report(store, c, path, chemical_space=chem)
            dt = time.perf_counter() - t0
            rep[label] = {"s": round(dt, 2), "bytes": path.stat().st_size,
                          "sections": summary.get("timings") or summary.get("sections")}
            print(f"report ({label.replace('_', ' ')}): {dt:.1f} s, {path.stat().st_size / 1e6:.2f} MB")
            path.unlink()
        results["report"] = rep

    results["load_1min_end"] = os.getloadavg()[0]
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    save_results(Path(args.out), results)
    print(json.dumps({k: results[k] for k in ("table", "yields")}, indent=1, default=str)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
