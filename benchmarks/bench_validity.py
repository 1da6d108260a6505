#!/usr/bin/env python
"""Validity: fw-screen's stage against the naive loop, CPU seconds per CIF, on the same CIFs in one run.

The naive loop is CrystaLLM's definition as it states it (Antunes et al., ``crystallm/_metrics.py``), in the
form ``tests/test_validity.py`` holds it (imported from there, so both use one copy): the text checks
(sensible cell, formula, multiplicities), then pymatgen's ``CrystalNN.get_nn_info`` for every site of the
structure (the bond-length score), then ``SpacegroupAnalyzer(symprec=0.1)``.  Each part is timed on its own
(``time.process_time``) and every part runs on every CIF, so each CIF has its naive bond score; the naive
cost is reported twice: as CrystaLLM's ``is_valid`` spends it (stopping at the first failure: no bond loop
after a failed text check, no space group after a failed bond score) and with every check run.

fw-screen's stage is ``validity.check_cif``, timed per CIF twice: with the default spec
(``validity.record_all_checks: false``: the bond-length and space-group checks are not run once an earlier
required check has failed) and with ``record_all_checks: true`` (every check run), the two in alternating
order; pymatgen's cache of spglib datasets (``SpacegroupAnalyzer`` keeps the last 32) is cleared before every
timed call, naive or not, so no call is served by another's symmetry search.

Compared on every CIF: the verdict of each fw-screen run against the naive ``is_valid``; the verdict,
first failure and reason of the default run against the every-check run; and the bond score (the
``bond_length`` check's score against the naive loop's good/total; fw-screen's score is None where it did
not reach the bond check, the naive one None where it raised), of the every-check run and, where it ran
the check, of the default one.  With ``--write-reference`` the
naive answers are also written as the compact reference file ``tests/test_validity.py`` compares against.

    .venv/bin/python benchmarks/bench_validity.py                       # all 8,000 generations
    .venv/bin/python benchmarks/bench_validity.py --stride 40           # every 40th (200 CIFs), ~1 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, code_version, loadavg, machine_info, save_results  # noqa: E402

PARQUET = REPO / "examples" / "crystallm_pi_generated_8k.parquet"


def _reference_module():
    """tests/test_validity.py, for its re-implementation of CrystaLLM's metrics (the naive loop)."""
    spec = importlib.util.spec_from_file_location("_test_validity_reference", REPO / "tests" / "test_validity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(fn, *args):
    t = time.process_time()
    try:
        value, error = fn(*args), None
    except Exception as exc:              # the naive loop counts an error as invalid, as CrystaLLM's does
        value, error = None, f"{type(exc).__name__}: {exc}"[:200]
    return value, error, time.process_time() - t


def naive(ref, cif: str) -> dict:
    """CrystaLLM's checks, each timed; ``valid`` as its is_valid (errors count as invalid)."""
    out, seconds = {}, {}
    for name, fn in (("sensible", ref.ref_sensible), ("formula_consistent", ref.ref_formula_consistent),
                     ("multiplicity_consistent", ref.ref_multiplicity_consistent),
                     ("space_group", ref.ref_space_group_consistent)):
        value, error, seconds[name] = _timed(fn, cif)
        out[name] = bool(value) if error is None else False
    counts, error, seconds["bond_length"] = _timed(ref.ref_bond_counts, cif)
    good, total = (int(counts[0]), int(counts[1])) if counts else (None, None)
    bond_ok = bool(counts) and total > 0 and good == total      # score >= 1.0; no bonds: ZeroDivisionError
    text_ok = out["sensible"] and out["formula_consistent"] and out["multiplicity_consistent"]
    valid = bool(text_ok and bond_ok and out["space_group"])
    # CrystaLLM's is_valid stops at the first failure: the bond loop only after the text checks, the space
    # group only after a perfect bond score
    stated = seconds["sensible"] + seconds["formula_consistent"] + seconds["multiplicity_consistent"]
    stated += (seconds["bond_length"] + (seconds["space_group"] if bond_ok else 0.0)) if text_ok else 0.0
    if counts and not total:
        error = "no bonds (CrystaLLM's score divides by zero)"
    return {"valid": valid, "good": good, "bonds": total, "error": error, "checks": out,
            "cpu_all": sum(seconds.values()), "cpu_stated": stated, "cpu_bond": seconds["bond_length"]}


def _clear_symmetry_cache() -> None:
    from pymatgen.symmetry.analyzer import _get_symmetry_dataset

    _get_symmetry_dataset.cache_clear()


def _fw_run(check_cif, cif: str, cfg) -> dict:
    _clear_symmetry_cache()
    t = time.process_time()
    result = check_cif(cif, cfg)
    cpu = time.process_time() - t
    bond = result.checks.get("bond_length", {}).get("value") or {}
    return {"valid": result.valid, "first_failure": result.first_failure, "reason": result.reason,
            "score": bond.get("score"), "bonds": bond.get("bonds"), "cpu": cpu,
            "not_run": sorted(n for n, c in result.checks.items() if c["passed"] is None)}


_WORKER: dict = {}


def _worker_init(parquet: str) -> None:
    import pandas as pd

    from fw_screen.science.validity import check_cif
    from fw_screen.spec import load_spec

    warnings.simplefilter("ignore")
    cfg = load_spec()["validity"]
    cfg_all = load_spec(validity={"record_all_checks": True})["validity"]
    assert cfg["record_all_checks"] is False, "the default spec records the expensive checks only when needed"
    cifs = pd.read_parquet(parquet)["Generated CIF"]
    ref = _reference_module()
    naive(ref, cifs[0])                        # imports and first-call set-up, outside the timings
    check_cif(cifs[0], cfg), check_cif(cifs[0], cfg_all)
    _WORKER.update(check_cif=check_cif, cfg=cfg, cfg_all=cfg_all, cifs=cifs, ref=ref)


def _measure(job: tuple[int, int]) -> dict:
    """One CIF: the naive loop, then fw-screen with the default spec and with every check (alternating)."""
    n, row = job
    w = _WORKER
    cif = w["cifs"][row]
    _clear_symmetry_cache()
    nv = naive(w["ref"], cif)
    runs = [("all", w["cfg_all"]), ("default", w["cfg"])] if n % 2 else [("default", w["cfg"]), ("all", w["cfg_all"])]
    fw = {name: _fw_run(w["check_cif"], cif, c) for name, c in runs}
    d, a = fw["default"], fw["all"]
    return {"row": row, **nv, "fw_valid": d["valid"], "fw_first_failure": d["first_failure"],
            "fw_reason": d["reason"], "fw_score": d["score"], "fw_bonds": d["bonds"],
            "fw_not_run": d["not_run"], "cpu_fw": d["cpu"],
            "fw_all_valid": a["valid"], "fw_all_first_failure": a["first_failure"],
            "fw_all_reason": a["reason"], "fw_all_score": a["score"], "fw_all_bonds": a["bonds"],
            "cpu_fw_all": a["cpu"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stride", type=int, default=1, help="every STRIDE-th generation (default: all 8,000)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many CIFs")
    parser.add_argument("--write-reference", type=Path, default=None,
                        help="also write the naive answers as the compact reference file (gzipped JSON)")
    parser.add_argument("--processes", type=int, default=1,
                        help="measure in this many worker processes (each CPU time is its own process's)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "validity.json")
    args = parser.parse_args(argv)

    import multiprocessing

    import pandas as pd

    warnings.simplefilter("ignore")
    ncifs = len(pd.read_parquet(PARQUET, columns=["Material ID"]))
    rows = list(range(0, ncifs, args.stride))[:args.limit]
    started = time.time()
    info = machine_info()
    print(f"{len(rows)} CIFs of {PARQUET.relative_to(REPO)} (stride {args.stride}); load {info['loadavg_at_start']}")

    records = []
    jobs = list(enumerate(rows))
    if args.processes > 1:
        pool = multiprocessing.get_context("spawn").Pool(args.processes, _worker_init, (str(PARQUET),))
        measured = pool.imap(_measure, jobs, chunksize=8)
    else:
        _worker_init(str(PARQUET))
        measured = map(_measure, jobs)
    for n, record in enumerate(measured):
        records.append(record)
        if (n + 1) % 500 == 0:
            naive_s = sum(r["cpu_stated"] for r in records)
            fw_s = sum(r["cpu_fw"] for r in records)
            all_s = sum(r["cpu_fw_all"] for r in records)
            print(f"  {n + 1:5d} CIFs  {time.time() - started:7.1f} s wall  naive {naive_s:8.1f} CPU-s  "
                  f"fw-screen {fw_s:7.1f} CPU-s (every check {all_s:7.1f})  ratio {naive_s / fw_s:5.2f}", flush=True)

    def score_differs(r, key="fw"):
        score, bonds = r[f"{key}_score"], r[f"{key}_bonds"]
        if score is None or r["bonds"] is None:           # fw-screen did not reach the bond check / naive raised
            return False
        if r["bonds"] == 0:                               # no bond: CrystaLLM divides by zero, fw-screen scores 0
            return (score, bonds) != (0.0, 0)
        return (score, bonds) != (r["good"] / r["bonds"], r["bonds"])

    verdict_diff = [r["row"] for r in records if r["valid"] is not r["fw_valid"]]
    verdict_diff_all = [r["row"] for r in records if r["valid"] is not r["fw_all_valid"]]
    default_vs_all = [r["row"] for r in records
                      if (r["fw_valid"], r["fw_first_failure"], r["fw_reason"])
                      != (r["fw_all_valid"], r["fw_all_first_failure"], r["fw_all_reason"])
                      or (r["fw_score"] is not None and (r["fw_score"], r["fw_bonds"])
                          != (r["fw_all_score"], r["fw_all_bonds"]))]
    score_diff = [r["row"] for r in records if score_differs(r) or score_differs(r, "fw_all")]
    compared_scores = sum(r["fw_all_score"] is not None and r["bonds"] is not None for r in records)
    compared_scores_default = sum(r["fw_score"] is not None and r["bonds"] is not None for r in records)
    # the naive loop raises on an element without a radius (None + radius); fw-screen fails that bond
    naive_raised = [r["row"] for r in records if r["bonds"] is None and r["fw_all_score"] is not None]
    n = len(records)
    skipped = {name: sum(name in r["fw_not_run"] for r in records) for name in ("bond_length", "space_group")}
    total = {k: sum(r[k] for r in records) for k in ("cpu_stated", "cpu_all", "cpu_bond", "cpu_fw", "cpu_fw_all")}
    results = {
        "benchmark": "validity", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info, "code": code_version(), "parquet": str(PARQUET.relative_to(REPO)),
        "stride": args.stride, "cifs": n, "processes": args.processes,
        "naive_cpu_s_per_cif_as_stated": total["cpu_stated"] / n,
        "naive_cpu_s_per_cif_all_checks": total["cpu_all"] / n,
        "naive_cpu_s_per_cif_bond_loop": total["cpu_bond"] / n,
        "fw_screen_cpu_s_per_cif": total["cpu_fw"] / n,
        "fw_screen_record_all_checks_cpu_s_per_cif": total["cpu_fw_all"] / n,
        "ratio_as_stated": total["cpu_stated"] / total["cpu_fw"],
        "ratio_all_checks": total["cpu_all"] / total["cpu_fw_all"],
        "ratio_as_stated_vs_record_all_checks": total["cpu_stated"] / total["cpu_fw_all"],
        "not_run_by_default": skipped,
        "valid_naive": sum(r["valid"] for r in records), "valid_fw_screen": sum(r["fw_valid"] for r in records),
        "valid_fw_screen_record_all_checks": sum(r["fw_all_valid"] for r in records),
        "verdicts_differing": verdict_diff, "verdicts_differing_record_all_checks": verdict_diff_all,
        "default_vs_record_all_checks_differing": default_vs_all,
        "bond_scores_compared": compared_scores, "bond_scores_compared_default": compared_scores_default,
        "bond_scores_differing": score_diff, "naive_bond_loop_raised_fw_scored": naive_raised,
        "slowest_fw_screen_cif": max(records, key=lambda r: r["cpu_fw"])["row"],
        "slowest_fw_screen_cpu_s": max(r["cpu_fw"] for r in records),
        "loadavg_at_end": loadavg(), "total_s": round(time.time() - started, 1),
    }
    print(f"\nnaive loop (CrystaLLM's is_valid, stopping at the first failure): "
          f"{results['naive_cpu_s_per_cif_as_stated'] * 1e3:8.1f} ms CPU per CIF")
    print(f"naive loop, every check run:                                  "
          f"{results['naive_cpu_s_per_cif_all_checks'] * 1e3:8.1f} ms CPU per CIF "
          f"(bond loop {results['naive_cpu_s_per_cif_bond_loop'] * 1e3:.1f})")
    print(f"fw-screen validity.check_cif (default spec):                  "
          f"{results['fw_screen_cpu_s_per_cif'] * 1e3:8.1f} ms CPU per CIF (bond check not run on "
          f"{skipped['bond_length']}, space group on {skipped['space_group']})")
    print(f"fw-screen validity.check_cif (record_all_checks: true):       "
          f"{results['fw_screen_record_all_checks_cpu_s_per_cif'] * 1e3:8.1f} ms CPU per CIF")
    print(f"ratio: {results['ratio_as_stated']:.2f}x (as stated / default spec), "
          f"{results['ratio_all_checks']:.2f}x (every check / every check), "
          f"{results['ratio_as_stated_vs_record_all_checks']:.2f}x (as stated / every check)")
    print(f"valid: naive {results['valid_naive']}, fw-screen {results['valid_fw_screen']} "
          f"(every check {results['valid_fw_screen_record_all_checks']}) of {n}; verdicts differing: "
          f"{len(verdict_diff)} {verdict_diff[:20]} (every check: {len(verdict_diff_all)} {verdict_diff_all[:20]})")
    print(f"default vs record_all_checks (verdict, first failure, reason, bond score): "
          f"{len(default_vs_all)} differing {default_vs_all[:20]}")
    print(f"bond scores compared: {compared_scores} (every check), {compared_scores_default} (default); differing: "
          f"{len(score_diff)} {score_diff[:20]}; naive loop raised where fw-screen scored (not compared): "
          f"{len(naive_raised)} {naive_raised[:20]}")
    print(f"slowest CIF for fw-screen: row {results['slowest_fw_screen_cif']}, "
          f"{results['slowest_fw_screen_cpu_s']:.2f} CPU-s; wall {results['total_s']} s")
    save_results(args.out, results)
    if args.write_reference:
        reference = {"made_by": "benchmarks/bench_validity.py --write-reference", "date": results["date"],
                     "commit": results["code"]["commit"], "parquet": results["parquet"],
                     "columns": ["row", "valid", "good", "bonds", "error"],
                     "rows": [[r["row"], r["valid"], r["good"], r["bonds"], r["error"]] for r in records]}
        with gzip.open(args.write_reference, "wt") as fh:
            json.dump(reference, fh, separators=(",", ":"))
        print(f"reference: {args.write_reference} ({args.write_reference.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
