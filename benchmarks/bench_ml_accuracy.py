"""Accuracy and cost of the ML stability stage on Materials Project structures with known hull distances.

A seeded sample of MP entries (both offline MP files, cells of at most ``--max-sites`` sites) is relaxed with
one potential (FIRE + FrechetCellFilter, fmax 0.05 eV/A, <= 500 steps: ``fw_screen.science.stability.relax``); each
relaxed energy goes through the production path (``ml_entry`` -> ``hull_distance``) against the
PhaseDiagram of that file's entries WITHOUT the entry itself (otherwise the entry is on its own hull and a
stability threshold at 0 is ill-posed), and is compared with MP's ``e_above_hull`` stored in the file.
The MP reference values are recomputed the same way (entry removed) so the comparison is like for like.

Reported: MAE of e_hull (all, and on MP e_hull <= 0.2 eV/atom) for relaxed and unrelaxed (single-point)
energies, single-point energy bias against MP's corrected energy, F1 of stable/unstable at 0.0 and
0.1 eV/atom, relaxation statuses, time per structure by cell size, peak RSS.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_ml_accuracy.py --potential chgnet --n 300
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, code_version  # noqa: E402

warnings.filterwarnings("ignore")
SHARED = REPO.parent / "shared" / "data"
FILES = [SHARED / "reference" / "mp" / "Li-Co-Ni-O.json.gz", SHARED / "reference" / "mp" / "Na-Fe-P-O.json.gz"]
FALLBACK = [REPO / "examples" / "mp_Li-Co-Ni-O.json.gz", REPO / "examples" / "mp_Na-Fe-P-O.json.gz"]


def load(path: Path):
    from monty.json import MontyDecoder
    raw = json.load(gzip.open(path))
    entries = [MontyDecoder().process_decoded(d) for d in raw]
    return entries, [d["e_above_hull"] for d in raw]


def f1(true_stable, pred_stable) -> float:
    t, p = np.asarray(true_stable), np.asarray(pred_stable)
    tp, fp, fn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--potential", default="chgnet")
    ap.add_argument("--n", type=int, default=300, help="sample size (split over the two files)")
    ap.add_argument("--max-sites", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=None, help="stop sampling after this many seconds")
    ap.add_argument("--model-dir", default=str(SHARED / "models"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from fw_screen.science import potentials
    from fw_screen.science import stability

    t_load = time.perf_counter()
    calc = potentials.get_calculator(args.potential, args.model_dir)
    t_load = time.perf_counter() - t_load

    files = [f if f.exists() else g for f, g in zip(FILES, FALLBACK)]
    rng = random.Random(args.seed)
    jobs = []
    for k, path in enumerate(files):
        entries, mp_hull = load(path)
        idx = [i for i, e in enumerate(entries) if len(e.structure) <= args.max_sites]
        rng.shuffle(idx)
        share = args.n // len(files) + (1 if k < args.n % len(files) else 0)
        jobs.append((path.name, entries, mp_hull, idx[:share]))
    order = [(j, i) for j, (_, _, _, idx) in enumerate(jobs) for i in idx]
    rng.shuffle(order)  # interleave the files, so a time budget samples both

    rows, t0 = [], time.perf_counter()
    for j, i in order:
        if args.time_budget and time.perf_counter() - t0 > args.time_budget:
            break
        fname, entries, mp_hull, _ = jobs[j]
        e = entries[i]
        pd = stability.phase_diagram([x for k, x in enumerate(entries) if k != i])
        mp_excl = stability.hull_distance(e, pd)["e_above_hull"]
        r = stability.relax(e.structure, calc, fmax=0.05, max_steps=500)
        row = {"file": fname, "entry_id": e.entry_id, "formula": e.composition.reduced_formula,
               "n_sites": len(e.structure), "mp_e_hull": mp_hull[i], "mp_e_hull_excl_self": mp_excl,
               "status": r["status"], "reason": r["reason"], "steps": r["steps"], "seconds": r["seconds"],
               "volume_change": r["volume_change"],
               "sp_bias_per_atom": None, "ml_e_hull": None, "ml_e_hull_unrelaxed": None}
        try:
            if r["unrelaxed_energy_total"] is not None:
                sp = stability.ml_entry(e.structure, r["unrelaxed_energy_total"], args.potential, e.entry_id)
                row["sp_bias_per_atom"] = sp.energy_per_atom - e.energy_per_atom
                row["ml_e_hull_unrelaxed"] = stability.hull_distance(sp, pd)["e_above_hull"]
            if r["structure"] is not None:
                rel = stability.ml_entry(r["structure"], r["energy_total"], args.potential, e.entry_id)
                row["ml_e_hull"] = stability.hull_distance(rel, pd)["e_above_hull"]
        except stability.CorrectionError as exc:
            row["reason"] = f"correction: {exc}"
        rows.append(row)
        print(f"{len(rows):4d} {row['formula']:14s} {row['n_sites']:3d} sites {r['status']:13s} {r['steps']:4d} steps "
              f"{r['seconds']:6.1f} s  MP {mp_excl:+.3f}  ML {row['ml_e_hull'] if row['ml_e_hull'] is None else round(row['ml_e_hull'], 3)}",
              flush=True)
    wall = time.perf_counter() - t0

    def stats(key: str, ref: str = "mp_e_hull_excl_self") -> dict:
        ok = [r for r in rows if r[key] is not None]
        y, p = np.array([r[ref] for r in ok]), np.array([r[key] for r in ok])
        low = y <= 0.2
        out = {"n": len(ok), "mae": float(np.abs(p - y).mean()) if len(ok) else None,
               "n_ehull_le_0.2": int(low.sum()),
               "mae_ehull_le_0.2": float(np.abs(p - y)[low].mean()) if low.any() else None,
               "median_abs_err": float(np.median(np.abs(p - y))) if len(ok) else None}
        for th in (0.0, 0.1):
            # stable at threshold th: MP's stored e_hull (of the full file) <= th vs ML (entry removed) <= th
            y_full = np.array([r["mp_e_hull"] for r in ok])
            out[f"f1_at_{th}"] = f1(y_full <= th + 1e-9, p <= th + 1e-9)
            out[f"f1_at_{th}_vs_excl_self"] = f1(y <= th + 1e-9, p <= th + 1e-9)
        return out

    bias = [r["sp_bias_per_atom"] for r in rows if r["sp_bias_per_atom"] is not None]
    by_size = {}
    for lo, hi in ((1, 8), (9, 16), (17, 24), (25, 32), (33, 40), (41, 10**6)):
        sel = [r for r in rows if lo <= r["n_sites"] <= hi]
        if sel:
            by_size[f"{lo}-{hi}"] = {"n": len(sel), "mean_s": float(np.mean([r["seconds"] for r in sel])),
                                     "mean_steps": float(np.mean([r["steps"] for r in sel]))}
    statuses: dict = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    summary = {
        "potential": args.potential, "energy_scale": potentials.energy_scale(args.potential),
        "n_requested": args.n, "n_done": len(rows), "max_sites": args.max_sites, "seed": args.seed,
        "time_budget_s": args.time_budget, "model_load_s": round(t_load, 2), "wall_s": round(wall, 1),
        "mean_s_per_structure": float(np.mean([r["seconds"] for r in rows])) if rows else None,
        "statuses": statuses,
        "relaxed": stats("ml_e_hull"), "unrelaxed": stats("ml_e_hull_unrelaxed"),
        "single_point_bias_per_atom": {"mean": float(np.mean(bias)), "mae": float(np.mean(np.abs(bias))),
                                       "n": len(bias)} if bias else None,
        "time_by_sites": by_size,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_avg": os.getloadavg(), "code": code_version(),
        "threads": {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
    }
    print(json.dumps(summary, indent=1))
    out = Path(args.out or REPO / "benchmarks" / "results" / f"ml_accuracy_{args.potential}.json")
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
