#!/usr/bin/env python
"""What the post-relaxation matching and ``fw-screen metrics`` cost, on the 8,000-candidate demo campaign and at
100,000 candidates, side by side with the naive way, on one SecantusDB server.

Input: the 8,000 real CrystaLLM-pi generations of ``examples/`` taken through validity and uniqueness/novelty
by fw-screen's own stage runners (against the three ``examples/`` reference files), so every verdict up to
"novel" is the real one.  The ML stage is not run (CHGNet at 2-20 s a candidate would take days): instead
**every novel candidate is given an ML relaxation**, the worst case a whole-database reference set produces.
Its "relaxed" structure is its generated reduced cell scaled by a seeded factor in [0.97, 1.03] with atoms
displaced by up to 0.02 A, its e_above_hull a seeded draw (|N(0.05, 0.15)|, for covered systems on the real
reference hull, whose energy it then gets), its space groups the generated one.  What is timed depends on how
many relaxed candidates there are and how they share match keys, not on the energies.

At 100,000: the 8,000 documents and 11.5 seeded copies of them (``bench_scale.py``'s copies: every cell length
times one factor in [0.97, 1.03], a new id), each copy of a novel candidate relaxed too.  ``bench_scale.py``'s
cheap funnel makes such copies *duplicates* before relaxation; here they are kept novel, so the pass faces
12.5 relaxed copies of each relaxed structure (the stress case: 10^5 generations, every one relaxed).

Measured, in one run:

1. the pass, cold: per-candidate verdicts (reduction, reference match, RMSD: at relaxation time on the ML
   workers normally, here the pass's backfill), grouping of relaxed duplicates, self-consistent hull, writes;
   again with nothing changed (fingerprint only); again after a forced regroup (grouping + hull only);
2. the naive way on a seeded sample of relaxed candidates: all-pairs ``StructureMatcher.fit`` on the full
   relaxed structures and every reference of the same formula fitted without match keys or cached reductions,
   its time extrapolated to the whole set (quadratic for pairs); the sample's verdicts compared;
3. ``campaign_metrics`` (one aggregation) against the naive way: every full document fetched and each metric
   computed in Python by its definition (``tests/test_relaxed_sun.py::_python_metrics``); numbers compared;
4. peak RSS of this process.

    .venv/bin/python benchmarks/bench_sun.py                   # ~40 min on 2 cores
    .venv/bin/python benchmarks/bench_sun.py --n 2000 --copies 1   # smoke run
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import code_version, free_port, loadavg, machine_info, save_results  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_cheap_funnel as bcf  # noqa: E402
from fw_screen import stages as cp  # noqa: E402
from fw_screen.stages import hulls
from fw_screen.server import embedded as server  # noqa: E402
from fw_screen import state as st  # noqa: E402
from fw_screen.science import uniqueness as uq  # noqa: E402
from fw_screen.reporting.tables import campaign_metrics  # noqa: E402
from fw_screen.store import ResultsStore  # noqa: E402
from fw_screen.spec import load_spec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REFERENCE_FILES = ("mp_Li-Co-Ni-O.json.gz", "mp_Na-Fe-P-O.json.gz", "mp-elemental-reference-entries-2023-02-07.json.gz")


def _store(uri: str, db: str) -> ResultsStore:
    from pymongo import MongoClient

    return ResultsStore(MongoClient(uri, **server.CLIENT_KWARGS)[db])  # a long query stalls the heartbeat


def _validity_batch(args):
    uri, db, campaign, batch = args
    return cp.run_validity(_store(uri, db), campaign, batch)


def _uniqueness_shard(args):
    uri, db, campaign, shard = args
    return cp.run_uniqueness(_store(uri, db), campaign, shard)


def cheap_stages(uri: str, db: str, spec: dict, source: Path, workers: int) -> dict:
    store = _store(uri, db)
    store.ensure_indexes()
    for f in REFERENCE_FILES:
        cp.load_references(store, EXAMPLES / f)
    t0 = time.perf_counter()
    ingest = cp.run_ingest(store, source, spec)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_validity_batch, [(uri, db, spec["campaign"], b) for b in ingest["batches"]]))
        list(pool.map(_uniqueness_shard, [(uri, db, spec["campaign"], s) for s in range(spec["dedup_shards"])]))
    return {"seconds": round(time.perf_counter() - t0, 1), "status": store.status_counts(spec["campaign"])}


def _rattled(structure_dict: dict, rng: random.Random):
    from pymatgen.core import Structure

    s = Structure.from_dict(structure_dict)
    s.scale_lattice(s.volume * rng.uniform(0.97, 1.03) ** 3)
    for i in range(len(s)):
        s.translate_sites([i], [rng.uniform(-0.02, 0.02) for _ in range(3)], frac_coords=False, to_unit_cell=True)
    return s


def synthesize_ml(store: ResultsStore, campaign: str, seed: int = 0) -> dict:
    """Every novel candidate ML-done with a synthetic relaxation (module text)."""
    from pymatgen.core import Composition
    from pymongo import UpdateOne

    rng = random.Random(seed)
    ops, covered = [], 0
    docs = list(store.candidates.find({"campaign": campaign, "status": st.NOVEL},
                                      {"structure_reduced": 1, "elements": 1, "formula": 1, "spacegroup_number": 1}))
    for d in docs:
        relaxed = _rattled(d["structure_reduced"], rng)
        e_hull = abs(rng.gauss(0.05, 0.15))
        pd, _ = hulls.reference_hull(store, d.get("elements") or [])
        hull = {"e_above_hull": e_hull}
        if pd is not None:
            covered += 1
            hull["energy_per_atom"] = pd.get_hull_energy_per_atom(Composition(d["formula"])) + e_hull
        sg = d.get("spacegroup_number")
        ops.append(UpdateOne({"_id": d["_id"]}, {"$set": {
            "status": st.ML_DONE,
            "ml": {"structure_relaxed": relaxed.as_dict(), "e_above_hull": e_hull, "stable": e_hull <= 0.1,
                   "hull": hull, "relax": {"status": "converged", "spacegroup_number_initial": sg,
                                           "spacegroup_number_final": sg}, "synthetic": True}}}))
    for i in range(0, len(ops), 1000):
        store.candidates.bulk_write(ops[i:i + 1000], ordered=False)
    return {"relaxed": len(ops), "covered_by_a_hull": covered}


POST_RELAXATION_FIELDS = ("structure_relaxed_reduced", "match_key_relaxed", "matched_reference_relaxed",
                          "novel_relaxed", "relaxed_sets", "rmsd_relaxed", "duplicate_of_relaxed",
                          "e_above_hull_self_consistent", "stable_self_consistent", "relaxed_match_error")
ML_STAGE_FIELDS = ("structure_relaxed", "e_above_hull", "stable", "hull", "relax", "synthetic")


def copy_campaign(store: ResultsStore, src: str, dest: str, copies: float, seed: int = 0) -> int:
    """``src``'s documents plus seeded scaled copies (module text) into campaign ``dest``; returns its size."""
    from pymatgen.core import Structure

    rng = random.Random(seed)
    spec = store.campaign_spec(src)
    store.register_campaign({**spec, "campaign": dest})
    base = list(store.candidates.find({"campaign": src}))
    n_total = int(round(len(base) * (1 + copies)))
    seq, out = 0, []

    def scaled(sd, f):
        s = Structure.from_dict(sd)
        s.scale_lattice(s.volume * f ** 3)
        return s.as_dict()

    k = 0
    while seq < n_total:
        for d in (base if k == 0 else rng.sample(base, len(base))):
            if seq >= n_total:
                break
            c = dict(d)
            c["_id"], c["campaign"], c["seq"] = f"{dest}:{seq}", dest, seq
            if c.get("ml"):  # only what the ML stage wrote: the big campaign's pass starts from scratch
                c["ml"] = {k: v for k, v in c["ml"].items() if k in ML_STAGE_FIELDS}
            if k:
                f = rng.uniform(0.97, 1.03)
                for key in ("structure", "structure_reduced"):
                    if c.get(key):
                        c[key] = scaled(c[key], f)
                if c.get("ml", {}).get("structure_relaxed"):
                    c["ml"] = {**c["ml"], "structure_relaxed": scaled(c["ml"]["structure_relaxed"], f)}
            out.append(c)
            seq += 1
            if len(out) >= 2000:
                store.candidates.insert_many(out, ordered=False)
                out = []
        k += 1
    if out:
        store.candidates.insert_many(out, ordered=False)
    return seq


def time_pass(store: ResultsStore, campaign: str) -> dict:
    out = {}
    for label in ("cold", "unchanged", "regroup"):
        if label == "regroup":
            store.campaigns.update_one({"_id": campaign}, {"$unset": {"relaxed_pass": 1}})
        t0 = time.perf_counter()
        counts = cp.run_relaxed_uniqueness(store, campaign)
        out[label] = {"seconds": round(time.perf_counter() - t0, 2), **{k: v for k, v in counts.items() if k != "seconds"}}
    return out


def naive_pass(store: ResultsStore, campaign: str, sample: int, seed: int = 0) -> dict:
    """All-pairs fits on full relaxed structures and every same-formula reference, on a seeded sample."""
    from pymatgen.core import Structure

    spec = store.campaign_spec(campaign)
    matcher = uq.make_matcher(spec["uniqueness"])
    ids = [d["_id"] for d in store.candidates.find({"campaign": campaign, "status": st.ML_DONE}, {"_id": 1})]
    rng = random.Random(seed)
    chosen = sorted(rng.sample(ids, min(sample, len(ids))))
    docs = store.documents_by_id("candidates", chosen, ["ml", "reduced_formula", "seq"])
    docs = sorted(docs.values(), key=lambda d: (d["ml"]["e_above_hull"], d["seq"]))
    structures = [Structure.from_dict(d["ml"]["structure_relaxed"]) for d in docs]
    t0 = time.perf_counter()
    naive = uq.naive_unique(structures, matcher)  # lowest above the hull first: its first match is the representative
    t_pairs = time.perf_counter() - t0
    refs: dict[str, list] = {}
    t0 = time.perf_counter()
    naive_known = []
    for d, s in zip(docs, structures):
        f = d["reduced_formula"]
        if f not in refs:
            refs[f] = [(r["_id"], Structure.from_dict(r["structure"])) for r in
                       store.references.find({"reduced_formula": f}, {"structure": 1})]
        naive_known.append(next((rid for rid, r in refs[f] if matcher.fit(s, r)), None))
    t_refs = time.perf_counter() - t0
    # fw-screen's verdicts on the same sample, by its own path (keys, cached reductions, lowest first)
    t0 = time.perf_counter()
    items = [uq.Item(d["_id"], uq.reduce_structure(s)) for d, s in zip(docs, structures)]
    by_key: dict[str, list] = {}
    for it in items:
        by_key.setdefault(uq.match_key(it.reduced), []).append(it)
    ours: dict = {}
    energies = {d["_id"]: d["ml"]["e_above_hull"] for d in docs}
    for members in by_key.values():
        ours.update(uq.relaxed_groups(members, energies, matcher))
    t_ours = time.perf_counter() - t0
    same_dups = all((naive[i] is None) == (ours[d["_id"]] is None) for i, d in enumerate(docs))
    same_known = all((k is None) == (d["ml"].get("matched_reference_relaxed") is None)
                     for k, d in zip(naive_known, docs))
    n_all = len(ids)
    return {"sample": len(docs), "relaxed_total": n_all, "pairs_seconds": round(t_pairs, 2),
            "references_seconds": round(t_refs, 2), "ours_grouping_seconds_on_sample": round(t_ours, 2),
            "pairs_extrapolated_seconds": round(t_pairs * (n_all / max(len(docs), 1)) ** 2, 1),
            "references_extrapolated_seconds": round(t_refs * n_all / max(len(docs), 1), 1),
            "same_duplicate_verdicts": same_dups, "same_reference_verdicts": same_known}


def time_metrics(store: ResultsStore, campaign: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.test_relaxed_sun import _python_metrics

    t0 = time.perf_counter()
    m = campaign_metrics(store, campaign)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    docs = list(store.candidates.find({"campaign": campaign}))
    ref = store.reference_distribution()
    want = _python_metrics(docs, m["thresholds"], ref)
    t_naive = time.perf_counter() - t0
    worst = 0.0
    for k, v in want.items():
        got = m["overall"][k]
        if (v is None) != (got is None):
            worst = math.inf
        elif v is not None:
            worst = max(worst, abs(got - v))
    del docs
    return {"ours_seconds": round(t_ours, 2), "naive_seconds": round(t_naive, 2),
            "ratio": round(t_naive / t_ours, 1) if t_ours else None, "max_abs_difference": worst,
            "overall": {k: m["overall"][k] for k in ("n", "V", "VUN", "VSUN@0.1", "SUN@0.1", "SUN_sc@0.1",
                                                      "relaxed_duplicate_rate", "rmsd_relaxed_mean")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8000, help="generations of examples/ to run (default all 8,000)")
    ap.add_argument("--copies", type=float, default=11.5, help="copies per document in the big campaign")
    ap.add_argument("--sample", type=int, default=400, help="relaxed candidates in the naive comparison")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_sun.json", help="where the JSON results go")
    ap.add_argument("--reuse", type=Path, help="the server home of an earlier run: its campaigns as they are "
                                               "(skips the cheap stages, the synthetic ML and the copies)")
    ap.add_argument("--only", choices=["8k", "100k"], help="measure one campaign only")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    results = {"machine": machine_info(), "code": code_version(), "args": vars(args), "load_before": loadavg()}
    home = args.reuse or Path(tempfile.mkdtemp(prefix="bench_sun_"))
    info = server.start(home, port=free_port())
    uri = f"mongodb://{info['host']}:{info['port']}/"
    try:
        if args.reuse:
            from pymongo import MongoClient

            db = next(n for n in MongoClient(uri, **server.CLIENT_KWARGS).list_database_names() if n.startswith("sun_"))
            store = _store(uri, db)
            results["reused"] = str(args.reuse)
        else:
            db = f"sun_{uuid.uuid4().hex[:6]}"
            spec = load_spec(campaign="demo8k")
            source, n = bcf.subsample(bcf.DEFAULT_INPUT, args.n if args.n < 8000 else None, home / "in.parquet")
            results["cheap_stages"] = cheap_stages(uri, db, spec, source, args.workers)
            print("cheap stages:", results["cheap_stages"], flush=True)
            store = _store(uri, db)
            results["synthetic_ml"] = synthesize_ml(store, "demo8k")
            print("synthetic ML:", results["synthetic_ml"], flush=True)
        for label, campaign in (("8k", "demo8k"), ("100k", "big")):
            if args.only and label != args.only:
                continue
            if label == "100k" and store.candidates.count_documents({"campaign": "big"}, limit=1) == 0:
                t0 = time.perf_counter()
                size = copy_campaign(store, "demo8k", "big", args.copies)
                results["copy_seconds"] = round(time.perf_counter() - t0, 1)
                print(f"copied to {size} candidates", flush=True)
            if args.reuse and store.relaxed_pass(campaign):  # measure the cold pass from scratch
                store.candidates.update_many({"campaign": campaign, "status": st.ML_DONE}, {"$unset": {
                    f"ml.{k}": 1 for k in POST_RELAXATION_FIELDS}})
                store.campaigns.update_one({"_id": campaign}, {"$unset": {"relaxed_pass": 1}})
            r = {"candidates": store.candidates.count_documents({"campaign": campaign})}
            r["pass"] = time_pass(store, campaign)
            print(label, "pass:", r["pass"], flush=True)
            r["naive_pass"] = naive_pass(store, campaign, args.sample)
            print(label, "naive pass:", r["naive_pass"], flush=True)
            r["metrics"] = time_metrics(store, campaign)
            print(label, "metrics:", r["metrics"], flush=True)
            grouping = r["pass"]["regroup"]["seconds"]
            r["ratio_pass_vs_naive"] = round((r["naive_pass"]["pairs_extrapolated_seconds"]
                                              + r["naive_pass"]["references_extrapolated_seconds"])
                                             / max(r["pass"]["cold"]["seconds"], 1e-9), 1)
            r["grouping_seconds_per_relaxed_ms"] = round(1000 * grouping / max(r["naive_pass"]["relaxed_total"], 1), 2)
            results[label] = r
        results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        results["load_after"] = loadavg()
        results["total_s"] = round(time.perf_counter() - t_start, 1)
    finally:
        server.stop(home)
    save_results(args.out, results)
    print("peak RSS (MB):", results["peak_rss_mb"])
    for label in ("8k", "100k"):
        if label not in results:
            continue
        r = results[label]
        print(f"{label}: {r['candidates']} candidates, pass cold {r['pass']['cold']['seconds']} s "
              f"(naive, extrapolated {r['naive_pass']['pairs_extrapolated_seconds'] + r['naive_pass']['references_extrapolated_seconds']} s; "
              f"x{r['ratio_pass_vs_naive']}), unchanged {r['pass']['unchanged']['seconds']} s, regroup "
              f"{r['pass']['regroup']['seconds']} s; metrics {r['metrics']['ours_seconds']} s vs naive "
              f"{r['metrics']['naive_seconds']} s (x{r['metrics']['ratio']}), max |diff| {r['metrics']['max_abs_difference']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
