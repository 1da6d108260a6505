#!/usr/bin/env python
"""100,000 candidates through the cheap funnel (ingest -> validity -> uniqueness/novelty) on the embedded server.

The input: the 8,000 real CrystaLLM-pi generations of ``examples/`` and seeded copies of them up to ``--n``
rows.  Copy k of a generation keeps its condition vector and gets ``_copy<k>`` on its id and its three cell
lengths (and ``_cell_volume``) multiplied by one random factor in [0.97, 1.03]: a distinct input text (so a
distinct candidate) of the same crystal, which is what a generator sampled 10^5 times produces a lot of.
Symmetry is untouched by an isotropic scaling; bond-length verdicts may flip near the threshold.

What it does, in one run, on one SecantusDB server (each campaign in its own database):

1. ``--small`` rows (default 10,000, a seeded subsample of the same table): submit + 2 rlaunch workers to the
   end, the same measurements as benchmarks/bench_cheap_funnel.py (time, memory, per-stage science/overhead);
2. all ``--n`` rows (default 100,000): the same;
3. the database on disk (WiredTiger files) and ``dbStats``;
4. every query the cheap stages send, run by ``explain`` against the full database: winning plan, keys and
   documents examined per document returned, and its time against "the naive way" (no index: read every
   candidate of the campaign and filter in Python), side by side;
5. every input has exactly one candidate and every candidate has left ``ingested``/``valid`` (nothing lost,
   nothing counted twice): checked by reading the whole collection.

The scaling figure is candidates/s of the big run over the small one (1.0 = linear).

    .venv/bin/python benchmarks/bench_scale.py                      # ~70 min on 2 cores
    .venv/bin/python benchmarks/bench_scale.py --n 3000 --small 1000  # smoke run, ~3 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import code_version, free_port, loadavg, machine_info, save_results  # noqa: E402  (sets the BLAS threads first)


import bench_cheap_funnel as bcf  # noqa: E402
from fw_screen.server import embedded as server  # noqa: E402
from fw_screen import state as st  # noqa: E402
from fw_screen.store import ResultsStore, plan_nodes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1024 * 1024
_LENGTH = re.compile(r"^(_cell_length_[abc]|_cell_volume)(\s+)([0-9.]+)", re.M)


# -------------------------------------------------------------------------------------------- input
def scaled_cif(text: str, factor: float) -> str:
    """The CIF with its cell lengths times ``factor`` (volume times factor^3); fractional coordinates kept."""
    def repl(m):
        value = float(m.group(3)) * (factor ** 3 if m.group(1) == "_cell_volume" else factor)
        return f"{m.group(1)}{m.group(2)}{value:.4f}"
    return _LENGTH.sub(repl, text)


def make_input(n: int, dest: Path, seed: int = 0) -> Path:
    """``n`` rows: the real generations first, then copies of them in seeded order (see the module text)."""
    import pandas as pd

    base = pd.read_parquet(bcf.DEFAULT_INPUT)
    rng = random.Random(seed)
    rows = base.to_dict("records")
    out = list(rows[:n])
    copy = 0
    while len(out) < n:
        copy += 1
        order = list(range(len(rows)))
        rng.shuffle(order)
        for i in order[: n - len(out)]:
            row = dict(rows[i])
            factor = rng.uniform(0.97, 1.03)
            row["Material ID"] = f"{row['Material ID']}_copy{copy}"
            row["Generated CIF"] = scaled_cif(row["Generated CIF"], factor)
            out.append(row)
    pd.DataFrame(out, columns=base.columns).to_parquet(dest)
    return dest


# ---------------------------------------------------------------------------------- plans and sizes
def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def db_stats(db) -> dict:
    try:
        s = db.command("dbStats")
        return {k: s.get(k) for k in ("collections", "objects", "avgObjSize", "dataSize", "storageSize",
                                      "indexes", "indexSize") if k in s}
    except Exception as exc:  # noqa: BLE001 - a server without dbStats still gets its files measured
        return {"error": f"{type(exc).__name__}: {exc}"}


def plan_stages(plan: dict) -> list[str]:
    """The winning plan's stages from the root down, with the index each IXSCAN uses."""
    return [n["stage"] + (f"({n.get('indexName') or n.get('keyPattern')})" if n["stage"] == "IXSCAN" else "")
            for n in plan_nodes(plan)]


def worker_queries(store: ResultsStore, campaign: str) -> list[dict]:
    """The queries the cheap stages send per batch / shard (as fw_screen.stages / fw_screen.store write them),
    with real values from the finished campaign."""
    c = store.candidates
    batch = c.find_one({"campaign": campaign}, {"batch": 1}, sort=[("seq", -1)])["batch"]
    novel = c.find_one({"campaign": campaign, "status": st.NOVEL}, {"shard": 1, "match_key": 1, "ml_batch": 1})
    keys = [d["match_key"] for d in c.find({"campaign": campaign, "shard": novel["shard"],
                                            "status": st.DUPLICATE}, {"match_key": 1}).limit(200)]
    key_set = set(keys)
    return [
        {"name": "validity: the batch's candidates (count)",
         "filter": {"campaign": campaign, "batch": batch}, "sort": None,
         "python": lambda d: d.get("batch") == batch},
        {"name": "validity: the batch's pending candidates",
         "filter": {"campaign": campaign, "batch": batch, "status": st.INGESTED}, "sort": {"seq": 1},
         "python": lambda d: d.get("batch") == batch and d.get("status") == st.INGESTED},
        {"name": "uniqueness: the shard's pending candidates",
         "filter": {"campaign": campaign, "shard": novel["shard"], "status": st.VALID}, "sort": {"seq": 1},
         "python": lambda d: d.get("shard") == novel["shard"] and d.get("status") == st.VALID},
        {"name": "uniqueness: candidates of 200 match keys (representatives)",
         "filter": {"campaign": campaign, "match_key": {"$in": keys}}, "sort": None,
         "python": lambda d: d.get("match_key") in key_set},
        {"name": "ML: the ML batch's pending candidates",
         "filter": {"campaign": campaign, "ml_batch": novel["ml_batch"], "status": st.NOVEL}, "sort": {"seq": 1},
         "python": lambda d: d.get("ml_batch") == novel["ml_batch"] and d.get("status") == st.NOVEL},
        {"name": "promote/recover: novel candidates (ML batch tested client-side)",
         "filter": {"campaign": campaign, "status": st.NOVEL}, "sort": {"seq": 1},
         "python": lambda d: d.get("status") == st.NOVEL},
        {"name": "submit/status: candidates still waiting for validity",
         "filter": {"campaign": campaign, "status": st.INGESTED}, "sort": None,
         "python": lambda d: d.get("status") == st.INGESTED},
    ]


def explain_queries(store: ResultsStore, campaign: str) -> list[dict]:
    """Each worker query: plan and counts from ``explain``, its time, and the naive full read's time."""
    c = store.candidates
    fields = ["batch", "status", "shard", "match_key", "reduced_formula", "ml_batch", "seq"]
    t = time.perf_counter()
    everything = list(c.find({"campaign": campaign}, {f: 1 for f in fields}))
    naive_read_s = time.perf_counter() - t
    out = []
    for q in worker_queries(store, campaign):
        cmd = {"find": c.name, "filter": q["filter"], "projection": {"_id": 1}}
        if q["sort"]:
            cmd["sort"] = q["sort"]
        ex = store.db.command("explain", cmd, verbosity="executionStats")
        stats = ex.get("executionStats", {})
        t = time.perf_counter()
        cursor = c.find(q["filter"], {"_id": 1})
        ids = [d["_id"] for d in (cursor.sort(list(q["sort"].items())) if q["sort"] else cursor)]
        indexed_s = time.perf_counter() - t
        t = time.perf_counter()
        naive_ids = [d["_id"] for d in everything if q["python"](d)]
        naive_filter_s = time.perf_counter() - t
        stages = plan_stages(ex["queryPlanner"]["winningPlan"])
        returned = stats.get("nReturned", len(ids))
        out.append({
            "query": q["name"], "filter": {k: v if not isinstance(v, dict) or "$in" not in v
                                           else {"$in": f"<{len(v['$in'])} values>"}
                                           for k, v in q["filter"].items()},
            "plan": stages, "indexed": any(s.startswith("IXSCAN") for s in stages) and "COLLSCAN" not in stages,
            "returned": returned, "keys_examined": stats.get("totalKeysExamined"),
            "docs_examined": stats.get("totalDocsExamined"),
            "same_answer_as_naive": sorted(ids) == sorted(naive_ids),
            "indexed_s": round(indexed_s, 4), "naive_s": round(naive_read_s + naive_filter_s, 3),
            "naive_over_indexed": round((naive_read_s + naive_filter_s) / max(indexed_s, 1e-4), 1),
        })
    return out


def accounting_check(store: ResultsStore, campaign: str, n_inputs: int) -> dict:
    """Every input exactly once, none left mid-funnel: read back from the whole collection."""
    c = store.candidates
    docs = list(c.find({"campaign": campaign}, {"source": 1, "status": 1, "runs": 1}))
    # an input is a row of the table (the generations carry each Material ID twice: two conditions)
    sources = [((d.get("source") or {}).get("file"), (d.get("source") or {}).get("row")) for d in docs]
    runs_over_one = sum(1 for d in docs for v in (d.get("runs") or {}).values() if v != 1)
    stuck = sum(1 for d in docs if d.get("status") in (st.INGESTED, st.VALID))
    return {"inputs": n_inputs, "candidates": len(docs), "distinct_input_rows": len(set(sources)),
            "stage_runs_not_exactly_one": runs_over_one, "left_ingested_or_valid": stuck,
            "ok": len(docs) == n_inputs == len(set(sources)) and not runs_over_one and not stuck}


# ----------------------------------------------------------------------------------------------- main
def one_campaign(home: Path, label: str, source: Path, n: int, workers: int, pid: int) -> dict:
    from fireworks import LaunchPad

    r = bcf.run_campaign(home, label, source, n, None, workers, pid, label)
    bcf.print_campaign(f"{label}: {n} candidates", r)
    bcf.print_funnel(r)
    lp = LaunchPad.from_file(str(home / f"launchpad_{label}.yaml"))
    store = ResultsStore.from_launchpad(lp)
    for key, measure in (("accounting_check", lambda: accounting_check(store, label, n)),
                         ("db_stats", lambda: db_stats(store.db)),
                         ("queries", lambda: explain_queries(store, label))):
        t = time.perf_counter()
        try:
            r[key] = measure()
        except Exception as exc:  # noqa: BLE001 - record it, keep the figures measured so far
            r[key] = {"error": f"{type(exc).__name__}: {exc}"} if key != "queries" else []
            r["errors"].append(f"{key}: {type(exc).__name__}: {exc}")
        r.setdefault("post_run_s", {})[key] = round(time.perf_counter() - t, 1)
    print(f"  every input once, every candidate decided: {r['accounting_check']}")
    for q in r["queries"]:
        print(f"  {q['query']:<62} {' > '.join(q['plan'])}")
        print(f"      returned {q['returned']:>6}, keys {q['keys_examined']}, docs {q['docs_examined']}; "
              f"{q['indexed_s'] * 1000:.1f} ms vs naive {q['naive_s']:.2f} s (x{q['naive_over_indexed']}); "
              f"same answer: {q['same_answer_as_naive']}")
    lp.connection.close()
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--small", type=int, default=10_000, help="rows of the comparison run (0: skip it)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="fws-scale-", dir="/tmp"))
    os.environ["FW_SCREEN_HOME"] = str(home)
    started = dt.datetime.now().astimezone()
    results: dict = {
        "benchmark": "scale", "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "code": code_version(), "n": args.n, "small": args.small,
    }
    t = time.perf_counter()
    big_input = make_input(args.n, home / f"input_{args.n}.parquet")
    results["make_input_s"] = round(time.perf_counter() - t, 1)
    results["input_bytes"] = big_input.stat().st_size
    info = server.start(home, port=free_port())
    print(f"SecantusDB pid {info['pid']} on port {info['port']}, home {home}; input {args.n} rows "
          f"({results['input_bytes'] / MB:.0f} MB parquet) made in {results['make_input_s']} s")
    try:
        runs = results["runs"] = {}
        if args.small:
            src, _ = bcf.subsample(big_input, args.small, home / f"input_{args.small}.parquet", seed=1)
            runs["small"] = one_campaign(home, "small", src, args.small, args.workers, info["pid"])
            results["disk_after_small_bytes"] = du(home / "db")
        runs["big"] = one_campaign(home, "big", big_input, args.n, args.workers, info["pid"])
        results["disk_after_big_bytes"] = du(home / "db")
        big = runs["big"]
        per_candidate_disk = ((results["disk_after_big_bytes"] - results.get("disk_after_small_bytes", 0))
                              / args.n)
        results["disk_per_candidate_kb"] = round(per_candidate_disk / 1024, 2)
        print(f"\n== {args.n} candidates ==")
        print(f"  end to end {big['phases_s']['end_to_end_submit_to_report'] / 60:.1f} min, "
              f"{big['candidates_per_s_end_to_end']} candidates/s")
        print(f"  database files {results['disk_after_big_bytes'] / MB:.0f} MB "
              f"({results['disk_per_candidate_kb']} kB per candidate); dbStats {big['db_stats']}")
        if args.small:
            small = runs["small"]
            results["rate_big_over_small"] = round(big["candidates_per_s_end_to_end"]
                                                   / small["candidates_per_s_end_to_end"], 3)
            print(f"  candidates/s: {args.small} -> {small['candidates_per_s_end_to_end']}, {args.n} -> "
                  f"{big['candidates_per_s_end_to_end']}: ratio {results['rate_big_over_small']} (1.0 = linear)")
        print(f"  all worker queries index-backed: {bool(big['queries']) and all(q['indexed'] for q in big['queries'])}; "
              f"every input once and decided: {big['accounting_check'].get('ok')}; errors: {big['errors']}")
    finally:
        results["machine"]["loadavg_at_end"] = loadavg()
        results["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        results["total_s"] = round((dt.datetime.now().astimezone() - started).total_seconds(), 1)
        server.stop(home)
        shutil.rmtree(home, ignore_errors=True)
        save_results(args.json or RESULTS / ("scale.json" if args.n == 100_000 else f"scale_{args.n}.json"),
                     results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
