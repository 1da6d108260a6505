"""The single-point ML pre-screen (``ml.prescreen_e_hull``): relaxations saved, and ML-stable candidates kept.

Sample: every valid generated candidate of ``examples/crystallm_pi_generated_8k.parquet`` (8,000 CrystaLLM-pi
generations; ingested and post-processed as the funnel does, valid by the validity stage's own
``validity_fields`` at the default spec) whose chemical system has a reference hull from the shipped reference
files (Li-Co-Ni-O and Na-Fe-P-O MP entries, MP's elemental references), decided by the ML stage's own
``stages.hulls.reference_hull`` on an embedded SecantusDB server holding those sets.  Duplicates among the
generations are kept (each is a relaxation the ML stage would run on its own only if it were novel; here they
are extra data points); the distinct-structure subset is reported beside it.

Validity is computed only for inputs whose ``data_`` formula lies in a system the references cover: a valid
candidate's structure has exactly that composition (``formula_consistent`` and ``multiplicity_consistent``,
both required by default, compare the data_ name, the formula sum and the sites), so no valid covered
candidate is missed.  (With a spec that does not require both, every input is checked.)

For each candidate, through the ML stage's own code (``stages.stability.stability_fields``, CHGNet, default
spec):

- the full ML stage with the pre-screen off: relaxation, hull distance of the relaxed and of the unrelaxed
  cell (the same MP2020 entry path), band gap; its CPU seconds (``time.process_time``, one BLAS/torch thread);
- the pre-screen's own cost: ``science.stability.single_point`` + ``ml_entry`` + ``hull_distance`` on the
  unrelaxed cell, CPU seconds;
- for those whose unrelaxed hull distance is above the lowest bound allowed (``ml.stability_threshold``), the
  ML stage again with that bound: it must skip the relaxation, with the same unrelaxed e_above_hull; its CPU
  seconds (single point + band gap) are what a skipped candidate still costs.

Then, per bound B: relaxations saved (candidates with unrelaxed e_hull > B), the fraction of the ML-stable
candidates (relaxed e_hull <= 0.1 eV/atom, ml_done) that are kept (unrelaxed e_hull <= B), and the CPU
seconds saved net of the single points paid on every candidate.

Per-candidate results are cached in the JSON (``--fresh`` recomputes them).  Pauses while /tmp/scr/quiet
exists.  ``python benchmarks/bench_prescreen.py`` writes ``benchmarks/results/prescreen.{json,txt}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, code_version, free_port, loadavg, machine_info  # noqa: E402

from pymatgen.core import Composition, Structure  # noqa: E402

from fw_screen import state as st  # noqa: E402
from fw_screen.science import potentials, stability  # noqa: E402
from fw_screen.science import uniqueness as uq  # noqa: E402
from fw_screen.science.ingest import iter_candidates  # noqa: E402
from fw_screen.science.validity import data_name  # noqa: E402
from fw_screen.server import embedded as server  # noqa: E402
from fw_screen.spec import load_spec  # noqa: E402
from fw_screen.stages import hulls, load_references, stability_fields, validity_fields  # noqa: E402
from fw_screen.store import ResultsStore  # noqa: E402

warnings.filterwarnings("ignore")

RESULTS = REPO / "benchmarks" / "results"
EXAMPLES = REPO / "examples"
INPUT = EXAMPLES / "crystallm_pi_generated_8k.parquet"
REFERENCE_FILES = ("mp_Li-Co-Ni-O.json.gz", "mp_Na-Fe-P-O.json.gz", "mp-elemental-reference-entries-2023-02-07.json.gz")
BOUNDS = (0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
QUIET = Path("/tmp/scr/quiet")


def wait_quiet() -> float:
    t = time.perf_counter()
    while QUIET.exists():
        time.sleep(5)
    return time.perf_counter() - t


def _store(uri: str, db: str) -> ResultsStore:
    from pymongo import MongoClient

    return ResultsStore(MongoClient(uri, **server.CLIENT_KWARGS)[db])


def covered_valid(store: ResultsStore, spec) -> tuple[list[dict], dict]:
    """The valid generated candidates with a reference hull (the funnel's validity, the ML stage's hull test)."""
    sets = store.reference_sets()
    exact = {"formula_consistent", "multiplicity_consistent"} <= set(spec.validity.required)
    counts = {"inputs": 0, "formula_covered": 0, "validity_checked": 0, "valid_covered": 0}
    out = []
    covered: dict[str, bool] = {}
    t = time.perf_counter()
    for doc in iter_candidates(INPUT, "prescreen", spec):
        counts["inputs"] += 1
        if exact:
            try:
                elements = sorted({el.symbol for el in Composition(data_name(doc.get("cif_processed") or "")).elements})
            except Exception:
                continue  # not a formula: formula_consistent fails, invalid
            key = "-".join(elements)
            if key not in covered:
                covered[key] = bool(elements) and hulls.relaxable(store, {"x": elements}) == ["x"]
            if not covered[key]:
                continue
            counts["formula_covered"] += 1
        counts["validity_checked"] += 1
        fields = validity_fields(doc, spec)
        if not fields["validity"]["valid"]:
            continue
        reduced = Structure.from_dict(fields["structure_reduced"])
        elements = sorted({el.symbol for el in reduced.composition.elements})
        pd, missing = hulls.reference_hull(store, elements)
        if missing:
            continue
        counts["valid_covered"] += 1
        out.append({"_id": doc["_id"], "seq": counts["inputs"] - 1, "structure_reduced": fields["structure_reduced"],
                    "targets": doc.get("targets") or {}, "formula": reduced.composition.reduced_formula,
                    "chemsys": "-".join(elements), "nsites": len(reduced), "match_key": fields["match_key"],
                    "material_id": (doc.get("source") or {}).get("material_id")})
    counts["seconds"] = round(time.perf_counter() - t, 1)
    counts["exact_prefilter"] = exact
    return out, counts


def mark_duplicates(cands: list[dict], spec) -> None:
    """``duplicate_of``: the first earlier candidate of the sample the campaign's matcher matches (as the
    uniqueness stage decides within a campaign), else None."""
    matcher = uq.make_matcher(spec.uniqueness)
    firsts: dict[str, list[tuple[str, Structure]]] = {}
    for c in sorted(cands, key=lambda c: c["seq"]):
        s = Structure.from_dict(c["structure_reduced"])
        c["duplicate_of"] = None
        for rid, rs in firsts.get(c["match_key"], []):
            if matcher.fit(s, rs, skip_structure_reduction=True):
                c["duplicate_of"] = rid
                break
        if c["duplicate_of"] is None:
            firsts.setdefault(c["match_key"], []).append((c["_id"], s))


def prescreen_cost(cand: dict, calc, store: ResultsStore, spec) -> dict:
    """CPU seconds of the pre-screen's single point and hull distance (what every candidate pays)."""
    structure = Structure.from_dict(cand["structure_reduced"])
    elements = sorted({el.symbol for el in structure.composition.elements})
    pd, _ = hulls.reference_hull(store, elements)
    c0 = time.process_time()
    point = stability.single_point(structure, calc)
    e = None
    if point["status"] == "ok":
        entry = stability.ml_entry(structure, point["energy_total"], spec.ml.potential, entry_id=cand["_id"])
        e = stability.hull_distance(entry, pd)["e_above_hull"]
    return {"cpu_s": round(time.process_time() - c0, 4), "status": point["status"], "e_above_hull_unrelaxed": e}


def measure(cand: dict, store: ResultsStore, spec0, spec_low, calc) -> dict:
    doc = {"_id": cand["_id"], "structure_reduced": cand["structure_reduced"], "targets": cand["targets"]}
    rec = {"prescreen": prescreen_cost(cand, calc, store, spec0)}
    c0, w0 = time.process_time(), time.perf_counter()
    status, fields = stability_fields(doc, spec0, store)
    ml = fields["ml"]
    rec["full"] = {"status": status, "cpu_s": round(time.process_time() - c0, 3),
                   "wall_s": round(time.perf_counter() - w0, 3), "reason": ml.get("reason"),
                   "relax_status": (ml.get("relax") or {}).get("status"),
                   "steps": (ml.get("relax") or {}).get("steps"),
                   "relax_s": (ml.get("relax") or {}).get("seconds"),
                   "e_above_hull": ml.get("e_above_hull"), "e_above_hull_unrelaxed": ml.get("e_above_hull_unrelaxed"),
                   "stable": ml.get("stable"), "matched_reference_relaxed": ml.get("matched_reference_relaxed")}
    e_u = rec["full"]["e_above_hull_unrelaxed"]
    if e_u is None:
        e_u = rec["prescreen"]["e_above_hull_unrelaxed"]
    low = spec_low.ml.prescreen_e_hull
    if e_u is not None and e_u > low:  # the stage with the lowest allowed bound must skip it
        c0 = time.process_time()
        status_b, fields_b = stability_fields(doc, spec_low, store)
        mlb = fields_b["ml"]
        rec["skipped_run"] = {"bound": low, "status": status_b, "cpu_s": round(time.process_time() - c0, 3),
                              "relax_status": (mlb.get("relax") or {}).get("status"),
                              "e_above_hull": mlb.get("e_above_hull"),
                              "upper_bound": mlb.get("e_above_hull_is_upper_bound"),
                              "has_structure_relaxed": "structure_relaxed" in mlb}
    return rec


def table(cands: list[dict], recs: dict, bounds, threshold: float, label: str) -> tuple[list[dict], str]:
    rows, lines = [], []
    # what the pre-screen decides on: candidates the stage reaches the relaxation for (ml_failed before it --
    # too many sites, an element the potential lacks -- are not affected)
    pool = [c for c in cands if recs[c["_id"]]["prescreen"]["e_above_hull_unrelaxed"] is not None
            and recs[c["_id"]]["full"]["relax_status"] is not None]
    stable = [c for c in pool if recs[c["_id"]]["full"]["status"] == st.ML_DONE
              and recs[c["_id"]]["full"]["e_above_hull"] <= threshold]
    relaxed_cpu = sum(recs[c["_id"]]["full"]["cpu_s"] for c in pool)
    lines.append(f"{label}: {len(pool)} candidates with an unrelaxed hull distance, {len(stable)} ML-stable "
                 f"(relaxed e_hull <= {threshold}) when all are relaxed; full ML stage {relaxed_cpu:.0f} CPU s")
    lines.append(f"  {'bound':>6} {'saved':>7} {'saved %':>8} {'stable kept':>12} {'kept %':>7} "
                 f"{'CPU s saved':>12} {'of ML CPU':>9}  stable lost (relaxed / unrelaxed e_hull)")
    for b in bounds:
        skipped = [c for c in pool if recs[c["_id"]]["prescreen"]["e_above_hull_unrelaxed"] > b]
        skipped_ids = {c["_id"] for c in skipped}
        kept = [c for c in stable if c["_id"] not in skipped_ids]
        lost = [c for c in stable if c["_id"] in skipped_ids]
        saved = sum(recs[c["_id"]]["full"]["cpu_s"] - recs[c["_id"]].get("skipped_run", {}).get(
            "cpu_s", recs[c["_id"]]["prescreen"]["cpu_s"]) for c in skipped)
        paid = sum(recs[c["_id"]]["prescreen"]["cpu_s"] for c in pool if c["_id"] not in skipped_ids)
        net = saved - paid
        row = {"bound": b, "candidates": len(pool), "saved": len(skipped),
               "saved_pct": round(100 * len(skipped) / len(pool), 1) if pool else None,
               "stable": len(stable), "stable_kept": len(kept),
               "kept_pct": round(100 * len(kept) / len(stable), 1) if stable else None,
               "cpu_s_saved": round(net, 1), "cpu_pct_saved": round(100 * net / relaxed_cpu, 1) if relaxed_cpu else None,
               "stable_lost": [{"id": c["_id"], "formula": c["formula"], "nsites": c["nsites"],
                                "e_above_hull": round(recs[c["_id"]]["full"]["e_above_hull"], 3),
                                "e_above_hull_unrelaxed": round(recs[c["_id"]]["prescreen"]["e_above_hull_unrelaxed"], 3)}
                               for c in lost]}
        rows.append(row)
        lost_s = ", ".join(f"{x['formula']} {x['e_above_hull']:.3f}/{x['e_above_hull_unrelaxed']:.3f}"
                           for x in row["stable_lost"]) or "-"
        lines.append(f"  {b:>6g} {len(skipped):>7} {row['saved_pct'] or 0:>7.1f}% {len(kept):>5} of {len(stable):<4} "
                     f"{row['kept_pct'] if row['kept_pct'] is not None else float('nan'):>6.1f}% {net:>12.1f} "
                     f"{row['cpu_pct_saved'] or 0:>8.1f}%  {lost_s}")
    return rows, "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "prescreen.json")
    ap.add_argument("--fresh", action="store_true", help="recompute the cached per-candidate results")
    ap.add_argument("--max-sites", type=int, default=None, help="leave out larger candidates (to save time)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    cache = {}
    if args.out.exists() and not args.fresh:
        cache = (json.loads(args.out.read_text()).get("per_candidate") or {})
    spec0 = load_spec(campaign="prescreen")
    assert spec0.ml.prescreen_e_hull is None
    spec_low = load_spec(campaign="prescreen", ml={"prescreen_e_hull": spec0.ml.stability_threshold})
    results = {"machine": machine_info(), "code": code_version(), "args": {k: str(v) for k, v in vars(args).items()},
               "potential": spec0.ml.potential, "threshold": spec0.ml.stability_threshold, "bounds": list(BOUNDS),
               "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    home = Path(tempfile.mkdtemp(prefix="bench_prescreen_"))
    info = server.start(home, port=free_port())
    uri = f"mongodb://{info['host']}:{info['port']}/"
    try:
        store = _store(uri, "prescreen")
        for f in REFERENCE_FILES:
            load_references(store, EXAMPLES / f)
        cands, counts = covered_valid(store, spec0)
        mark_duplicates(cands, spec0)
        counts["distinct"] = sum(c["duplicate_of"] is None for c in cands)
        results["sample"] = counts
        print(f"sample: {counts}", flush=True)
        if args.max_sites:
            cands = [c for c in cands if c["nsites"] <= args.max_sites]
        calc = potentials.get_calculator(spec0.ml.potential, spec0.ml.model_dir)
        recs = {}
        paused = 0.0
        for i, c in enumerate(sorted(cands, key=lambda c: (c["nsites"], c["seq"]))):
            if c["_id"] in cache:
                recs[c["_id"]] = cache[c["_id"]]
                continue
            paused += wait_quiet()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                recs[c["_id"]] = measure(c, store, spec0, spec_low, calc)
            recs[c["_id"]].update({k: c[k] for k in ("formula", "chemsys", "nsites", "material_id", "duplicate_of")})
            r = recs[c["_id"]]
            print(f"[{i + 1}/{len(cands)}] {c['formula']:<14} {c['nsites']:>3} sites {r['full']['status']:<9} "
                  f"e_hull {r['full']['e_above_hull']} unrelaxed {r['prescreen']['e_above_hull_unrelaxed']} "
                  f"cpu {r['full']['cpu_s']} s (single point {r['prescreen']['cpu_s']} s)"
                  + (f" skip-run {r['skipped_run']['relax_status']} {r['skipped_run']['cpu_s']} s" if "skipped_run" in r else ""),
                  flush=True)
            results["per_candidate"] = recs
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=str))
        results["paused_s"] = round(paused, 1)
    finally:
        server.stop(home)
        shutil.rmtree(home, ignore_errors=True)

    # consistency of the pre-screen path with the full one
    checks = {"skip_runs": 0, "skip_runs_skipped": 0, "same_unrelaxed_e_hull": 0, "no_structure_relaxed": 0,
              "relaxed_above_unrelaxed": [], "status_changes": []}
    for cid, r in recs.items():
        e_u, e_r = r["prescreen"]["e_above_hull_unrelaxed"], r["full"]["e_above_hull"]
        if e_u is not None and e_r is not None and e_r > e_u + 1e-6:
            checks["relaxed_above_unrelaxed"].append({"id": cid, "formula": r["formula"], "relaxed": e_r, "unrelaxed": e_u})
        if "skipped_run" in r:
            s = r["skipped_run"]
            checks["skip_runs"] += 1
            checks["skip_runs_skipped"] += s["relax_status"] == "skipped" and s["status"] == st.ML_DONE
            checks["no_structure_relaxed"] += not s["has_structure_relaxed"]
            full_u = r["full"]["e_above_hull_unrelaxed"]
            checks["same_unrelaxed_e_hull"] += full_u is not None and abs(s["e_above_hull"] - full_u) < 1e-9
            if r["full"]["status"] != s["status"]:
                checks["status_changes"].append({"id": cid, "formula": r["formula"], "without": r["full"]["status"],
                                                 "with": s["status"], "reason": r["full"]["reason"]})
    results["checks"] = checks
    threshold = spec0.ml.stability_threshold
    all_rows, text_all = table(cands, recs, BOUNDS, threshold, "all valid covered candidates (duplicates included)")
    distinct = [c for c in cands if c["duplicate_of"] is None]
    d_rows, text_d = table(distinct, recs, BOUNDS, threshold, "distinct structures only (first of each match)")
    results["table"] = {"all": all_rows, "distinct": d_rows}
    results["machine"]["loadavg_at_end"] = loadavg()
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    ok_bounds = [r["bound"] for r in all_rows if r["kept_pct"] is not None and r["kept_pct"] >= 99]
    head = [f"bench_prescreen: single-point pre-screen (ml.prescreen_e_hull), {spec0.ml.potential}, "
            f"ML-stable = relaxed e_hull <= {threshold} eV/atom",
            f"inputs {counts['inputs']}; validity checked on {counts['validity_checked']} whose data_ formula is "
            f"in a covered system; valid with a reference hull: {counts['valid_covered']} "
            f"({counts['distinct']} distinct structures)",
            f"check: {checks['skip_runs_skipped']} of {checks['skip_runs']} candidates above {spec_low.ml.prescreen_e_hull} "
            f"skipped by the ML stage with the bound set, {checks['same_unrelaxed_e_hull']} with the same unrelaxed "
            f"e_hull as the full run, {checks['no_structure_relaxed']} without ml.structure_relaxed; relaxed above "
            f"unrelaxed (upper bound violated): {len(checks['relaxed_above_unrelaxed'])}; status changed: "
            f"{len(checks['status_changes'])}",
            "CPU s saved = full ML stage of the skipped (relaxation + relaxed matching + band gap) minus what a "
            "skipped one still costs (single point + band gap), minus the single point paid by the relaxed ones",
            ""]
    best = min(ok_bounds) if ok_bounds else None  # the lowest such bound saves the most
    stable_n = all_rows[0]["stable"] if all_rows else 0
    tail = ["", f"bounds keeping >= 99 % of the ML-stable: {ok_bounds or 'none'}; the lowest (saves most): {best}; "
                f"sample: {stable_n} ML-stable candidates "
                + ("(< 100: too few to set a default on)" if stable_n < 100 else ""),
            f"total {results['total_s']} s, paused {results.get('paused_s', 0)} s (quiet file)"]
    text = "\n".join(head) + text_all + "\n\n" + text_d + "\n".join(tail) + "\n"
    print("\n" + text)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    args.out.with_suffix(".txt").write_text(text)
    print(f"results: {args.out}, {args.out.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
