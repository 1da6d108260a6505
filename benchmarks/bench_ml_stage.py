#!/usr/bin/env python
"""Throughput of the ML stage (CHGNet relaxation + hull + MEGNet band gap) through FireWorks on this machine.

Workload: novel candidates in chemical systems the offline MP references cover (Li-Co-Ni-O, Na-Fe-P-O):

* the real CrystaLLM-pi generations of the 8,000 that lie in those systems (rows 179, 1526, 1821, 2458, 3261,
  3654, 3737, 4329 of ``examples/crystallm_pi_generated_8k.parquet``; ingest + validity as the product does
  them), except those whose reduced cell exceeds ``--max-sites`` (row 1821 has 104 sites);
* MP structures from ``examples/mp_*.json.gz`` chosen per cell-size bin (2-8, 9-20, 21-40, 41-64 sites of
  the reduced cell), each strained (uniform +-``--strain`` per axis) and rattled (every site moved
  ``--rattle`` A) so the relaxation has real work to do.  They would still match their MP parents under
  StructureMatcher's tolerances, so they are put straight into the ``candidates`` collection as status
  ``novel`` with ``structure_reduced`` (``fw_screen.science.uniqueness.reduce_structure``) and an ``ml_batch``
  (``ResultsStore.assign_ml_batches``), after ``ResultsStore.register_campaign``; that is what the
  uniqueness stage leaves behind for the ML stage.

Passes, each a fresh campaign in a fresh database on one embedded SecantusDB server, same structures in the
same (seeded, shuffled) order:

1. ``w1``: default spec (ml.batch_size 20), 1 rlaunch worker (FWorker category ["ml"], env db_file);
2. ``w2``: 2 workers, ml.batch_size ceil(n / 2) (``--parallel-batch-size``): with the default 20 a workload of
   <= 20 structures is one Firework and the second worker has nothing to do (measured: x0.98);
3. ``naive``: ml.batch_size 1 (one Firework per structure), 2 workers;
4. optionally ``floor`` (``--floor``): a plain Python loop calling ``fw_screen.stages.stability.stability_fields`` in
   this process, with no FireWorks and no writes (the database is read only for the hull entries).

Reported: structures/minute end to end per pass, speed-up 2 vs 1 worker, relax seconds and steps per cell-size
bin (from the candidates' ``ml.relax``), peak RSS per worker, model-load time (cold subprocess, and the
first Firework of each worker), and where the worker time goes: model time (``ml.relax.seconds`` + MEGNet band
gap, the latter timed afterwards in this process on the relaxed structures), the rest of the runners'
``seconds`` (hull, MP2020 entry, model load, database writes), FireWorks inside the rocket
(``runtime_secs`` - runner ``seconds``), and outside rockets (process start, polling, idle).

    .venv/bin/python benchmarks/bench_ml_stage.py                       # default run (16 structures), ~8 min on 2 cores
    .venv/bin/python benchmarks/bench_ml_stage.py --n 6 --max-bin 9-20  # smoke run, ~1.5 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402, F401  (single-threaded BLAS before numpy; the repo on sys.path)

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402

from _common import REPO  # noqa: E402

from _common import code_version, free_port, loadavg, machine_info  # noqa: E402
from bench_cheap_funnel import MemorySampler  # noqa: E402

from fw_screen.server import embedded as server  # noqa: E402
from fw_screen import state as st  # noqa: E402
from fw_screen.stages import load_references, validity_fields  # noqa: E402
from fw_screen.orchestration.supervisor import launch_workers  # noqa: E402
from fw_screen.store import ResultsStore  # noqa: E402
from fw_screen.orchestration.launchpad import prepare_launchpad
from fw_screen.science.ingest import iter_candidates  # noqa: E402
from fw_screen.spec import load_spec  # noqa: E402
from fw_screen.science.uniqueness import reduce_structure  # noqa: E402
from fw_screen.orchestration.fireworks import ml_fireworks  # noqa: E402

warnings.filterwarnings("ignore")
EXAMPLES = REPO / "examples"
GENERATED = EXAMPLES / "crystallm_pi_generated_8k.parquet"
MP_FILES = [EXAMPLES / "mp_Li-Co-Ni-O.json.gz", EXAMPLES / "mp_Na-Fe-P-O.json.gz"]
REAL_ROWS = [179, 1526, 1821, 2458, 3261, 3654, 3737, 4329]
RESULTS = Path(__file__).resolve().parent / "results"
MB = 1024 * 1024
BINS = [("2-8", 2, 8), ("9-20", 9, 20), ("21-40", 21, 40), ("41-64", 41, 64), ("65+", 65, 10 ** 6)]
#: default share of the workload per bin (the real generations count towards their bin); weighted towards
#: small cells, as the CrystaLLM-pi generations are, and to keep the default run near 10 minutes
BIN_WEIGHTS = {"2-8": 0.375, "9-20": 0.31, "21-40": 0.25, "41-64": 0.065}


def bin_of(n: int) -> str | None:
    return next((name for name, lo, hi in BINS if lo <= n <= hi), None)


# ------------------------------------------------------------------------------------------ workload
def real_generations(max_sites: int) -> tuple[list[dict], list[dict]]:
    """(kept, skipped) real generations in the covered systems, as ingest + validity make them."""
    import pandas as pd

    spec = load_spec(campaign="wl")
    tmp = Path(tempfile.mkdtemp(prefix="fws-mlwl-"))
    try:
        src = tmp / "rows.parquet"
        pd.read_parquet(GENERATED).iloc[REAL_ROWS].to_parquet(src)
        kept, skipped = [], []
        for row, doc in zip(REAL_ROWS, iter_candidates(src, "wl", spec)):
            fields = validity_fields(doc, spec)
            if not fields["validity"]["valid"]:
                skipped.append({"row": row, "reason": f"invalid: {fields['validity'].get('reason')}"})
                continue
            item = {"key": f"gen{row}", "origin": "generated", "row": row,
                    "material_id": doc["source"].get("material_id"),
                    "structure_reduced": fields["structure_reduced"], "targets": doc.get("targets") or {}}
            n = len(item["structure_reduced"]["sites"])
            if n > max_sites:
                skipped.append({"row": row, "sites": n, "reason": f"{n} sites > --max-sites {max_sites}"})
                continue
            kept.append(item)
        return kept, skipped
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mp_candidates(counts: dict[str, int], seed: int, rattle: float, strain: float,
                  exclude_formulas: set[str]) -> list[dict]:
    """``counts[bin]`` perturbed MP structures per cell-size bin (seeded; distinct formulas)."""
    from monty.json import MontyDecoder

    rng = np.random.default_rng(seed)
    pool: dict[str, list] = {b: [] for b in counts}
    for path in MP_FILES:
        for d in json.load(gzip.open(path)):
            e = MontyDecoder().process_decoded(d)
            b = bin_of(len(e.structure))  # MP cells are primitive already; checked after reduction below
            if b in pool:
                pool[b].append((path.name, e))
    out, seen = [], set(exclude_formulas)
    for b, want in counts.items():
        order = rng.permutation(len(pool[b]))
        got = 0
        for i in order:
            if got >= want:
                break
            fname, e = pool[b][i]
            formula = e.composition.reduced_formula
            if formula in seen:
                continue
            s = reduce_structure(e.structure.copy())
            if bin_of(len(s)) != b or not s.is_ordered:
                continue
            s.remove_site_property("magmom") if "magmom" in s.site_properties else None
            s.apply_strain(rng.uniform(-strain, strain, 3).tolist())
            # Structure.perturb draws from the global numpy RNG: seed it per structure
            np.random.seed(int(rng.integers(2 ** 31)))
            s.perturb(rattle)
            seen.add(formula)
            out.append({"key": f"mp{len(out):03d}", "origin": "mp-perturbed", "entry_id": str(e.entry_id),
                        "file": fname, "structure_reduced": s.as_dict(), "targets": {}})
            got += 1
    return out


def build_workload(n: int, max_sites: int, max_bin: str, seed: int, rattle: float, strain: float) -> dict:
    from pymatgen.core import Structure

    real, skipped = real_generations(max_sites)
    bins = [b for b, _, _ in BINS if b in BIN_WEIGHTS]
    bins = bins[:bins.index(max_bin) + 1]
    weights = {b: BIN_WEIGHTS[b] for b in bins}
    total_w = sum(weights.values())
    real_per_bin = {b: 0 for b in bins}
    real = [r for r in real if bin_of(len(r["structure_reduced"]["sites"])) in real_per_bin]
    for r in real:
        real_per_bin[bin_of(len(r["structure_reduced"]["sites"]))] += 1
    target = {b: max(1, round(n * w / total_w)) for b, w in weights.items()}
    want = {b: max(0, target[b] - real_per_bin[b]) for b in bins}
    while sum(want.values()) + len(real) > n and any(want.values()):  # rounding: trim the largest bin first
        b = max((b for b in bins if want[b]), key=lambda b: (want[b], bins.index(b)))
        want[b] -= 1
    formulas = {Structure.from_dict(r["structure_reduced"]).composition.reduced_formula for r in real}
    items = real + mp_candidates(want, seed, rattle, strain, formulas)
    for it in items:
        s = Structure.from_dict(it["structure_reduced"])
        it["n_sites"] = len(s)
        it["bin"] = bin_of(len(s))
        it["formula"] = s.composition.reduced_formula
    order = np.random.default_rng(seed + 1).permutation(len(items))
    items = [items[i] for i in order]  # batches mix cell sizes, as arrival order would
    return {"items": items, "skipped_real": skipped,
            "per_bin": {b: sum(1 for it in items if it["bin"] == b) for b in bins}}


# ------------------------------------------------------------------------------------------ databases
def database_files(home: Path, label: str) -> tuple[str, str]:
    """(launchpad file naming database fw_screen_<label>, ML FWorker file whose env.db_file points at it)."""
    lp = yaml.safe_load((home / "launchpad.yaml").read_text())
    lp["name"] = f"fw_screen_{label}"
    lp["strm_lvl"] = "WARNING"
    lp_file = home / f"launchpad_{label}.yaml"
    lp_file.write_text(yaml.safe_dump(lp, sort_keys=False))
    worker = yaml.safe_load((home / "fworker_ml.yaml").read_text())
    assert worker["category"] == ["ml"], worker
    worker["env"]["db_file"] = str(lp_file)
    fw_file = home / f"fworker_ml_{label}.yaml"
    fw_file.write_text(yaml.safe_dump(worker, sort_keys=False))
    return str(lp_file), str(fw_file)


def seed_campaign(store: ResultsStore, campaign: str, items: list[dict], ml_batch_size: int) -> tuple[dict, list]:
    """Register the campaign and insert the workload as novel candidates with ML batches."""
    from pymatgen.core import Structure

    spec = store.register_campaign(load_spec(campaign=campaign, ml={"batch_size": ml_batch_size}))
    now = dt.datetime.now(dt.timezone.utc)
    docs = []
    for i, it in enumerate(items):
        s = Structure.from_dict(it["structure_reduced"])
        docs.append({"_id": f"{campaign}:{it['key']}", "campaign": campaign, "status": st.NOVEL, "seq": i,
                     "batch": f"{campaign}-b0", "shard": 0, "source": {"bench": it["origin"], "key": it["key"]},
                     "structure_reduced": it["structure_reduced"], "targets": it["targets"],
                     "reduced_formula": s.composition.reduced_formula, "formula": s.composition.formula,
                     "chemsys": "-".join(sorted(el.symbol for el in s.composition.elements)),
                     "duplicate_of": None, "matched_reference": None, "novel_composition": False,
                     "created": now, "updated": now})
    store.candidates.insert_many(docs)
    batches = store.assign_ml_batches(campaign, [d["_id"] for d in docs], spec["ml"]["batch_size"],
                                      prefix=f"m{uuid.uuid4().hex[:10]}")
    return spec, batches


class WorkerSampler(MemorySampler):
    """MemorySampler that also records when each rlaunch process was first and last seen alive."""

    def __init__(self, server_pid: int, interval: float = 0.2):
        super().__init__(server_pid, interval)
        self.seen: dict[int, list[float]] = {}

    def sample(self) -> None:
        super().sample()
        now = time.perf_counter()
        for pid in self.launchers:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    self.seen.setdefault(pid, [now, now])[1] = now
            except psutil.Error:
                pass


def worker_of(launch_dir: str | None) -> int | None:
    m = re.search(r"worker(\d+)", launch_dir or "")
    return int(m.group(1)) if m else None


def run_pass(home: Path, label: str, items: list[dict], ml_batch_size: int, workers: int, server_pid: int) -> dict:
    """One fresh campaign in database fw_screen_<label>: seed, add the ML Fireworks, run the workers, account."""
    from fireworks import LaunchPad, Workflow

    lp_file, fw_file = database_files(home, label)
    lp = LaunchPad.from_file(lp_file)
    prepare_launchpad(lp)
    store = ResultsStore.from_launchpad(lp)
    out: dict = {"label": label, "structures": len(items), "ml_batch_size": ml_batch_size, "workers": workers,
                 "phases_s": {}, "errors": []}
    ph = out["phases_s"]
    t = time.perf_counter()
    for src in MP_FILES:
        load_references(store, src)
    ph["load_references"] = round(time.perf_counter() - t, 2)

    t0 = time.perf_counter()
    spec, batches = seed_campaign(store, label, items, ml_batch_size)
    fws = ml_fireworks(label, batches, spec)
    lp.add_wf(Workflow(fws, name=f"bench {label} ML", metadata={"campaign": label}))
    ph["seed_and_add_wf"] = round(time.perf_counter() - t0, 2)
    out["fireworks"] = len(fws)

    sampler = WorkerSampler(server_pid)
    sampler.start()
    t_run = time.perf_counter()
    codes = launch_workers(lp_file, fw_file, workers, home / f"launches_{label}", sleep=1)
    wall = time.perf_counter() - t_run
    out["memory"] = sampler.stop()
    out["memory"]["per_worker_peak_rss_mb"] = sorted(
        round(max(r["rss_max"], r["hwm"]) / MB, 1) for r in sampler.launchers.values())
    out["memory"]["per_worker_cpu_s"] = sorted(round(r["cpu_s"], 1) for r in sampler.launchers.values())
    lifetimes = sorted(round(b - a, 2) for a, b in sampler.seen.values())
    out["worker_exit_codes"] = codes
    ph["run_workers"] = round(wall, 2)
    ph["end_to_end"] = round(time.perf_counter() - t0, 2)
    out["structures_per_min_workers"] = round(60 * len(items) / wall, 2)
    out["structures_per_min_end_to_end"] = round(60 * len(items) / ph["end_to_end"], 2)

    # ---------------------------------------------------------------- per-structure results
    rows = {}
    for d in store.candidates.find({"campaign": label}, {"status": 1, "ml": 1, "ml_batch": 1, "source": 1}):
        relax = (d.get("ml") or {}).get("relax") or {}
        rows[d["source"]["key"]] = {
            "status": d["status"], "ml_batch": d.get("ml_batch"), "relax_status": relax.get("status"),
            "relax_s": relax.get("seconds"), "steps": relax.get("steps"),
            "e_above_hull": (d.get("ml") or {}).get("e_above_hull"), "reason": (d.get("ml") or {}).get("reason"),
            "structure_relaxed": (d.get("ml") or {}).get("structure_relaxed")}
    out["status_counts"] = store.status_counts(label)
    if out["status_counts"].get(st.NOVEL):
        out["errors"].append(f"{out['status_counts'][st.NOVEL]} candidates still novel after the workers finished")
    if any(c != 0 for c in codes):
        out["errors"].append(f"worker exit codes {codes}")

    # ---------------------------------------------------------------- launches
    batch_of_fw = {d["fw_id"]: d["spec"]["ml_batch"] for d in lp.fireworks.find({}, {"fw_id": 1, "spec.ml_batch": 1})}
    launches = []
    for la in lp.launches.find({}, {"fw_id": 1, "state": 1, "runtime_secs": 1, "launch_dir": 1, "time_start": 1,
                                    "action.stored_data": 1}):
        sd = ((la.get("action") or {}).get("stored_data") or {})
        batch = batch_of_fw.get(la["fw_id"])
        members = [k for k, r in rows.items() if r["ml_batch"] == batch]
        launches.append({"fw_id": la["fw_id"], "state": la["state"], "worker": worker_of(la.get("launch_dir")),
                         "time_start": la.get("time_start"), "runtime_s": float(la.get("runtime_secs") or 0),
                         "runner_s": float(sd.get("seconds") or 0), "structures": len(members),
                         "relax_s": sum(rows[k]["relax_s"] or 0 for k in members), "members": members})
    launches.sort(key=lambda la: (la["worker"] if la["worker"] is not None else -1, str(la["time_start"])))
    for w in {la["worker"] for la in launches}:
        mine = [la for la in launches if la["worker"] == w]
        for i, la in enumerate(mine):
            la["nth_in_worker"] = i
    out["launches"] = [{k: v for k, v in la.items() if k != "time_start"} for la in launches]
    out["launch_states"] = {s: sum(1 for la in launches if la["state"] == s) for s in {la["state"] for la in launches}}
    out["worker_lifetimes_s"] = lifetimes
    out["rows"] = rows
    lp.connection.close()
    return out


def band_gap_times(rows: dict, spec: dict) -> tuple[dict, float]:
    """MEGNet band-gap seconds per structure on the relaxed structures (as the runner calls it), and the load time."""
    from pymatgen.core import Structure

    from fw_screen.science import band_gap as prop

    t = time.perf_counter()
    model = prop.load_band_gap_model(spec["property"]["band_gap_model"], spec["property"]["band_gap_fidelity"])
    load_s = time.perf_counter() - t
    out = {}
    for key, r in rows.items():
        if not r.get("structure_relaxed"):
            continue
        s = Structure.from_dict(r["structure_relaxed"])
        prop.predict_band_gap(s, model)  # warm-up of this size
        t = time.perf_counter()
        prop.predict_band_gap(s, model)
        out[key] = time.perf_counter() - t
    return out, load_s


def account(r: dict, bg: dict) -> dict:
    """Where the worker time of one pass went."""
    rows, launches, w = r["rows"], r["launches"], r["workers"]
    wall = r["phases_s"]["run_workers"]
    relax = sum(x["relax_s"] or 0 for x in rows.values())
    bandgap = sum(bg.get(k, 0.0) for k in rows)
    model = relax + bandgap
    runner = sum(la["runner_s"] for la in launches)
    rocket = sum(la["runtime_s"] for la in launches)
    worker_time = w * wall
    life = sum(r["worker_lifetimes_s"]) or worker_time
    first = [la for la in launches if la.get("nth_in_worker") == 0]
    later = [la for la in launches if la.get("nth_in_worker", 0) > 0 and la["structures"]]

    def non_model(la):
        return la["runner_s"] - la["relax_s"] - sum(bg.get(k, 0.0) for k in la["members"])

    later_per_structure = (sum(non_model(la) for la in later) / sum(la["structures"] for la in later)) if later else None
    return {
        "model_s": round(model, 2), "relax_s": round(relax, 2), "band_gap_s_estimated": round(bandgap, 3),
        "runner_s": round(runner, 2), "rocket_s": round(rocket, 2), "worker_time_s": round(worker_time, 2),
        "worker_lifetime_sum_s": round(life, 2),
        "runner_outside_model_s": round(runner - model, 2),
        "in_rocket_fireworks_s": round(rocket - runner, 2),
        "between_rockets_s": round(worker_time - rocket, 2),
        "orchestration_share_of_worker_time": round(1 - model / worker_time, 4),
        "orchestration_share_of_worker_lifetimes": round(1 - model / life, 4),
        "fireworks_share_of_rocket_time": round(1 - runner / rocket, 4) if rocket else None,
        "first_rocket_non_model_s": [round(non_model(la), 2) for la in first],
        "later_rocket_non_model_s_per_structure": (round(later_per_structure, 3)
                                                   if later_per_structure is not None else None),
        "overhead_per_firework_s": round((worker_time - model) / len(launches), 3) if launches else None,
    }


def by_bin(items: list[dict], rows: dict) -> dict:
    out = {}
    for b, _, _ in BINS:
        keys = [it["key"] for it in items if it["bin"] == b]
        if not keys:
            continue
        secs = [rows[k]["relax_s"] for k in keys if rows[k]["relax_s"] is not None]
        steps = [rows[k]["steps"] for k in keys if rows[k]["steps"] is not None]
        sites = [it["n_sites"] for it in items if it["bin"] == b]
        out[b] = {"n": len(keys), "mean_sites": round(statistics.mean(sites), 1),
                  "mean_relax_s": round(statistics.mean(secs), 2) if secs else None,
                  "median_relax_s": round(statistics.median(secs), 2) if secs else None,
                  "max_relax_s": round(max(secs), 2) if secs else None,
                  "mean_steps": round(statistics.mean(steps), 1) if steps else None,
                  "ms_per_step_per_site": (round(1000 * sum(secs) / sum(max(1, rows[k]["steps"] or 0) * it["n_sites"]
                                                                       for it in items if it["bin"] == b
                                                                       for k in [it["key"]]), 1) if secs else None),
                  "structures_per_min_one_worker_model_only": round(60 * len(secs) / sum(secs), 2) if secs else None,
                  "statuses": {s: sum(1 for k in keys if rows[k]["relax_status"] == s)
                               for s in {rows[k]["relax_status"] for k in keys}}}
    return out


COLD_LOAD = r"""
import time, json, warnings; warnings.filterwarnings("ignore")
t0 = time.perf_counter(); import torch; torch.set_num_threads(1); t1 = time.perf_counter()
from fw_screen.science import potentials
from fw_screen.science import band_gap as prop; t2 = time.perf_counter()
potentials.get_calculator(%(pot)r, None); t3 = time.perf_counter()
prop.load_band_gap_model(%(bg)r, 0); t4 = time.perf_counter()
print(json.dumps({"import_torch_s": round(t1 - t0, 2), "import_fw_screen_s": round(t2 - t1, 2),
                  "potential_load_and_self_check_s": round(t3 - t2, 2), "band_gap_model_load_s": round(t4 - t3, 2),
                  "total_s": round(t4 - t0, 2)}))
"""


def cold_model_load(spec: dict) -> dict:
    code = COLD_LOAD % {"pot": spec["ml"]["potential"], "bg": spec["property"]["band_gap_model"]}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (p.stderr or p.stdout)[-500:]}


def floor_loop(home: Path, items: list[dict]) -> dict:
    """stability_fields in a plain loop in this process: no FireWorks, no writes (hull entries read once)."""
    import torch
    from fireworks import LaunchPad

    from fw_screen.stages import stability_fields

    torch.set_num_threads(1)
    lp_file, _ = database_files(home, "floor")
    lp = LaunchPad.from_file(lp_file)
    store = ResultsStore.from_launchpad(lp)
    for src in MP_FILES:
        load_references(store, src)
    spec = store.register_campaign(load_spec(campaign="floor"))
    t0 = time.perf_counter()
    rows = {}
    for it in items:
        t = time.perf_counter()
        new, fields = stability_fields({"_id": it["key"], "structure_reduced": it["structure_reduced"],
                                        "targets": it["targets"]}, spec, store)
        relax = fields["ml"].get("relax") or {}
        rows[it["key"]] = {"status": new, "total_s": time.perf_counter() - t, "relax_s": relax.get("seconds"),
                           "steps": relax.get("steps")}
    wall = time.perf_counter() - t0
    lp.connection.close()
    return {"structures": len(items), "wall_s": round(wall, 2), "structures_per_min": round(60 * len(items) / wall, 2),
            "relax_s": round(sum(r["relax_s"] or 0 for r in rows.values()), 2), "rows": rows,
            "first_structure_s_incl_model_load": round(rows[items[0]["key"]]["total_s"], 2)}


# ------------------------------------------------------------------------------------------ output
def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_pass(title: str, r: dict) -> None:
    a, m = r["accounting"], r["memory"]
    print(f"\n== {title}: {r['structures']} structures, ml.batch_size {r['ml_batch_size']}, {r['workers']} worker(s), "
          f"{r['fireworks']} Fireworks ==")
    print(f"  workers wall {r['phases_s']['run_workers']:.1f} s, end to end (seed + add_wf + workers) "
          f"{r['phases_s']['end_to_end']:.1f} s -> {r['structures_per_min_end_to_end']:.2f} structures/min "
          f"(workers phase {r['structures_per_min_workers']:.2f}/min)")
    print(f"  model time: relax {a['relax_s']:.1f} s + band gap {a['band_gap_s_estimated']:.2f} s (timed afterwards) "
          f"= {a['model_s']:.1f} s")
    print(f"  runners' seconds {a['runner_s']:.1f} s (outside model calls: {a['runner_outside_model_s']:.1f} s); "
          f"rockets {a['rocket_s']:.1f} s (FireWorks in rockets {a['in_rocket_fireworks_s']:.1f} s = "
          f"{pct(a['fireworks_share_of_rocket_time'])} of rocket time)")
    print(f"  worker time {a['worker_time_s']:.1f} s ({r['workers']} x wall); outside model calls "
          f"{pct(a['orchestration_share_of_worker_time'])} (of worker process lifetimes "
          f"{a['worker_lifetime_sum_s']:.1f} s: {pct(a['orchestration_share_of_worker_lifetimes'])}); "
          f"between rockets {a['between_rockets_s']:.1f} s")
    print(f"  first rocket of each worker, outside model calls: {a['first_rocket_non_model_s']} s (includes "
          f"imports + model loads); later rockets: {a['later_rocket_non_model_s_per_structure']} s per structure")
    print(f"  peak RSS per worker {m['per_worker_peak_rss_mb']} MB (together {m['launchers_sum_peak_rss_mb']} MB), "
          f"DB server {m['server_peak_rss_mb']} MB; CPU: workers {m['per_worker_cpu_s']} s, DB server "
          f"{m['server_cpu_s']} s; load avg mean {m['loadavg_1min_mean']} (max {m['loadavg_1min_max']})")
    per_w = {}
    for la in r["launches"]:
        per_w.setdefault(la["worker"], []).append(f"{la['structures']} str/{la['runtime_s']:.0f}s")
    print(f"  rockets per worker: {per_w}; worker lifetimes {r['worker_lifetimes_s']} s; states {r['launch_states']}; "
          f"candidate statuses {r['status_counts']}")
    for e in r["errors"]:
        print(f"  ERROR: {e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=16, help="structures in the workload (real generations included)")
    p.add_argument("--max-sites", type=int, default=64, help="leave out real generations above this (row 1821: 104)")
    p.add_argument("--max-bin", default="41-64", choices=[b for b in BIN_WEIGHTS], help="largest cell-size bin")
    p.add_argument("--workers", type=int, default=2, help="workers of the parallel pass (the first pass uses 1)")
    p.add_argument("--ml-batch-size", type=int, default=None, help="1-worker pass; default: the spec's ml.batch_size (20)")
    p.add_argument("--parallel-batch-size", type=int, default=None,
                   help="ml.batch_size of the parallel pass; default ceil(n / workers): with the spec's 20 a "
                        "campaign of <= 20 structures is one Firework and the second worker idles")
    p.add_argument("--no-naive", action="store_true", help="skip the ml.batch_size=1 pass")
    p.add_argument("--floor", action="store_true", help="also run the plain stability_fields loop (no FireWorks)")
    p.add_argument("--rattle", type=float, default=0.1, help="A every MP site is moved")
    p.add_argument("--strain", type=float, default=0.03, help="max |strain| per axis of the MP cells")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--home", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    spec0 = load_spec()
    bs = args.ml_batch_size or spec0["ml"]["batch_size"]
    home = args.home or Path(tempfile.mkdtemp(prefix="fws-mlbench-", dir="/tmp"))
    os.environ["FW_SCREEN_HOME"] = str(home)
    port = args.port or free_port()
    started = dt.datetime.now().astimezone()
    results: dict = {
        "benchmark": "ml_stage", "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()}, "code": code_version(),
        "potential": spec0["ml"]["potential"], "band_gap_model": spec0["property"]["band_gap_model"],
        "ml_settings": {k: spec0["ml"][k] for k in ("fmax", "max_steps", "time_limit_s", "max_sites")},
    }
    t = time.perf_counter()
    wl = build_workload(args.n, args.max_sites, args.max_bin, args.seed, args.rattle, args.strain)
    items = wl["items"]
    results["workload"] = {"build_s": round(time.perf_counter() - t, 2), "per_bin": wl["per_bin"],
                           "skipped_real": wl["skipped_real"],
                           "items": [{k: v for k, v in it.items() if k not in ("structure_reduced",)} for it in items]}
    print(f"workload: {len(items)} structures {wl['per_bin']} "
          f"({sum(it['origin'] == 'generated' for it in items)} real generations; left out: {wl['skipped_real']}); "
          f"MP cells strained <= {args.strain:.0%} and rattled {args.rattle} A; built in {results['workload']['build_s']} s")

    t = time.perf_counter()
    results["cold_model_load"] = cold_model_load(spec0)
    print(f"cold model load in a fresh process: {results['cold_model_load']}")

    info = server.start(home, port=port)
    print(f"SecantusDB pid {info['pid']} on port {port}, home {home}")
    passes: dict = {}
    try:
        passes["w1"] = run_pass(home, "w1", items, bs, 1, info["pid"])
        if args.workers > 1:
            bs_par = args.parallel_batch_size or -(-len(items) // args.workers)
            passes[f"w{args.workers}"] = run_pass(home, f"w{args.workers}", items, bs_par, args.workers, info["pid"])
        if not args.no_naive:
            passes["naive"] = run_pass(home, "naive", items, 1, args.workers, info["pid"])
        floor = floor_loop(home, items) if args.floor else None
    finally:
        results["machine"]["loadavg_at_end"] = loadavg()
        if not args.keep:
            server.stop(home)
            if args.home is None:
                shutil.rmtree(home, ignore_errors=True)

    bg, bg_load = band_gap_times(passes["w1"]["rows"], spec0)
    results["band_gap"] = {"load_s_warm_process": round(bg_load, 3), "mean_predict_s": round(statistics.mean(bg.values()), 4)
                           if bg else None, "per_structure_s": {k: round(v, 4) for k, v in bg.items()}}
    for name, r in passes.items():
        r["accounting"] = account(r, bg)
        r["by_bin"] = by_bin(items, r["rows"])
        for row in r["rows"].values():
            row.pop("structure_relaxed", None)
        print_pass(name, r)
    results["passes"] = passes

    w1 = passes["w1"]
    print("\n== relaxation by cell size (1 worker; ml.relax.seconds, steps; CHGNet, 1 torch thread) ==")
    print(f"  {'bin':<6} {'n':>3} {'sites':>6} {'mean s':>8} {'median':>7} {'max':>7} {'steps':>6} {'ms/step/site':>13} "
          f"{'str/min':>8}")
    for b, x in w1["by_bin"].items():
        print(f"  {b:<6} {x['n']:>3} {x['mean_sites']:>6} {x['mean_relax_s']:>8} {x['median_relax_s']:>7} "
              f"{x['max_relax_s']:>7} {x['mean_steps']:>6} {x['ms_per_step_per_site']:>13} "
              f"{x['structures_per_min_one_worker_model_only']:>8}")
        print(f"         statuses {x['statuses']}")
    summary: dict = {"structures_per_min": {k: r["structures_per_min_end_to_end"] for k, r in passes.items()}}
    wN = passes.get(f"w{args.workers}")
    if wN:
        summary["speedup_parallel_over_1"] = round(w1["phases_s"]["run_workers"] / wN["phases_s"]["run_workers"], 2)
        summary["relax_s_parallel_over_1"] = round(wN["accounting"]["relax_s"] / w1["accounting"]["relax_s"], 2)
        same = sum(1 for k in w1["rows"] if w1["rows"][k]["steps"] == wN["rows"][k]["steps"])
        summary["same_steps_parallel_vs_1"] = f"{same}/{len(w1['rows'])}"
    if "naive" in passes and wN:
        nv = passes["naive"]
        summary["naive_over_batched_wall"] = round(nv["phases_s"]["run_workers"] / wN["phases_s"]["run_workers"], 2)
        na, ba = nv["accounting"], wN["accounting"]
        summary["naive_over_batched_outside_model"] = round(
            (na["worker_time_s"] - na["model_s"]) / max(ba["worker_time_s"] - ba["model_s"], 0.01), 2)
        summary["naive_fireworks_s_per_rocket"] = round(
            (na["rocket_s"] - na["runner_s"]) / max(1, len(nv["launches"])), 3)
    if floor:
        results["floor"] = floor
        summary["floor_structures_per_min"] = floor["structures_per_min"]
        summary["w1_over_floor_wall"] = round(w1["phases_s"]["end_to_end"] / floor["wall_s"], 3)
    results["summary"] = summary
    print("\n== summary ==")
    for k, v in summary.items():
        print(f"  {k:<40} {v}")
    if floor:
        print(f"  floor loop: {floor['structures']} structures in {floor['wall_s']} s (relax {floor['relax_s']} s; first "
              f"structure incl. model load {floor['first_structure_s_incl_model_load']} s)")
    results["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["total_s"] = round((dt.datetime.now().astimezone() - started).total_seconds(), 1)
    out = args.json or RESULTS / ("ml_stage.json" if argv is None and len(sys.argv) == 1 else "ml_stage_custom.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults: {out} (total {results['total_s']} s; 1-min load average at start "
          f"{results['machine']['loadavg_at_start'][0]}, at end {results['machine']['loadavg_at_end'][0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
