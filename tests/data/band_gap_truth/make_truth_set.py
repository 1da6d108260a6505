"""Compute the band-gap truth set with fw-screen's own DFT code path (Quantum ESPRESSO, pw.x serial).

    python tests/data/band_gap_truth/make_truth_set.py --pseudo-dir ../shared/data/pseudo/sssp_efficiency_1.3 \
        [--workers 2] [--only Si,MgO] [--lite-only]

For every structure of ``structures.py``:

* **full**: :func:`fw_screen.dft.qe.chain.run_chain` with the default spec's ``dft.qe`` settings (the DFT stage's
  protocol: SSSP efficiency 1.3, per-system cutoffs, kppa 1000, vc-relax -> scf -> nscf at nscf_kppa 3000,
  Marzari-Vanderbilt smearing 0.01 Ry) from the experimental cell: the PBE gap of the relaxed crystal;
* **lite**: the DFT-lite property tier (:mod:`fw_screen.dft.lite`): the cell relaxed by the default ML
  potential (CHGNet, as the ML stage does), then scf -> nscf with the tier's reduced k-densities, no vc-relax.

Results go to ``truth_set.json`` (merged by name, so a run with ``--only`` updates those rows) and each
step's pw.x input to ``inputs/<name>/<tier>/<step>.in`` (the pseudo_dir and outdir lines are the machine's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2]))

from structures import STRUCTURES, build  # noqa: E402

OUT = HERE / "truth_set.json"
INPUTS = HERE / "inputs"


def _copy_inputs(workdir: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(workdir.glob("*/*.in")):
        shutil.copy(f, dest / f.name)


def _summary(result: dict) -> dict:
    gap = result.get("band_gap") or {}
    return {"status": result["status"], "reason": result["reason"], "protocol_id": result["protocol_id"],
            "band_gap": gap.get("band_gap"), "direct_gap": gap.get("direct_gap"), "is_metal": gap.get("is_metal"),
            "vbm": gap.get("vbm"), "cbm": gap.get("cbm"), "fermi": gap.get("fermi"),
            "energy_per_atom": result["energy_per_atom"], "total_magnetization": result["total_magnetization"],
            "structure": result["structure"].as_dict() if result.get("structure") is not None else None,
            "steps": [{k: st.get(k) for k in ("calculation", "kpts", "seconds", "pw_seconds", "ionic_steps",
                                              "n_scf_iterations", "pw_version")} for st in result["steps"]],
            "pw_seconds": result["pw_seconds"], "seconds": result["seconds"]}


def compute(name: str, pseudo_dir: str, tiers: tuple[str, ...]) -> dict:
    from fw_screen.dft import lite as dft_lite
    from fw_screen.dft import qe
    from fw_screen.spec import default_spec

    spec = default_spec()
    cls, _, source = STRUCTURES[name]
    start = build(name)
    row = {"name": name, "class": cls, "formula": start.composition.reduced_formula, "source": source,
           "start_structure": start.as_dict()}
    with tempfile.TemporaryDirectory(prefix=f"truth_{name}_") as tmp:
        if "full" in tiers:
            settings = qe.resolve_settings({**spec["dft"]["qe"], "pseudo_dir": pseudo_dir})
            proto = qe.protocol(start.composition.elements, settings)
            result = qe.run_chain(start, proto, settings, Path(tmp) / "full")
            row["full"] = {**_summary(result), "protocol": proto}
            _copy_inputs(Path(tmp) / "full", INPUTS / name / "full")
        if "lite" in tiers:
            from fw_screen.science import potentials
            from fw_screen.science import stability

            calc = potentials.get_calculator(spec["ml"]["potential"])
            t0 = time.time()
            relaxed = stability.relax(start, calc, fmax=spec["ml"]["fmax"], max_steps=spec["ml"]["max_steps"])
            ml_seconds = time.time() - t0
            settings = dft_lite.settings(spec, {"pseudo_dir": pseudo_dir})
            proto = qe.protocol(start.composition.elements, settings)
            result = dft_lite.band_gap(relaxed["structure"], proto, settings, Path(tmp) / "lite")
            row["lite"] = {**_summary(result), "protocol": proto, "ml_relax": {
                "potential": spec["ml"]["potential"], "status": relaxed["status"], "seconds": round(ml_seconds, 2),
                "volume_change": relaxed["volume_change"]}}
            _copy_inputs(Path(tmp) / "lite", INPUTS / name / "lite")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pseudo-dir", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--tiers", default="full,lite")
    args = ap.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else STRUCTURES) if n]
    tiers = tuple(t for t in args.tiers.split(",") if t)
    # the largest cells first, so that two workers finish together
    names.sort(key=lambda n: -len(build(n)) * (2 if "O" in build(n).composition else 1))
    rows = json.loads(OUT.read_text())["structures"] if OUT.exists() else {}
    pseudo_dir = str(Path(args.pseudo_dir).resolve())
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(compute, n, pseudo_dir, tiers): n for n in names}
        for fut in as_completed(futures):
            name = futures[fut]
            row = fut.result()
            old = rows.get(name, {})
            rows[name] = {**old, **row}
            full, lite = rows[name].get("full") or {}, rows[name].get("lite") or {}
            print(f"{name:14s} full {full.get('status')} gap {full.get('band_gap')} ({full.get('seconds')} s)  "
                  f"lite {lite.get('status')} gap {lite.get('band_gap')} ({lite.get('seconds')} s)", flush=True)
            order = {n: i for i, n in enumerate(STRUCTURES)}
            OUT.write_text(json.dumps({
                "about": "PBE band gaps from fw-screen's DFT code path (see make_truth_set.py and README.md)",
                "structures": dict(sorted(rows.items(), key=lambda kv: order.get(kv[0], 999)))}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
