"""fw-screen's matgl 4.1.2 port of the DGL-era checkpoints vs the ORIGINAL DGL-era matgl.

    .venv/bin/python benchmarks/bench_matgl_port.py [--max-mp N] [--n-cif N] [--keep DIR]

Builds a structure set (textbook cells; Materials Project entries of Li-Co-Ni-O and Na-Fe-P-O with <= 30 sites;
a few CrystaLLM-pi CIFs), runs ``reference_env/compare_matgl.py`` in ``.venv-ref`` (matgl 1.2.7 + dgl 2.1.0, see
``reference_env/README.md``) and ``reference_env/port_predictions.py`` in this environment, and prints the max
|difference| per quantity for

- port as shipped (DGL aggregation rebound) vs reference, and
- stock matgl 4.1.2 (rebinding off) vs reference.

Quantities: MEGNet-MP-2019.4.1-BandGap-mfi gap at states 0..3 (raw, eV); M3GNet-MP-2021.2.8-PES energy per
atom (eV/atom), forces (eV/A, per component), stress (eV/A^3, per Voigt component).  Everything
(structures.json, reference.json, port.json, matgl_port.{json,txt}) goes to ``--keep DIR`` (default: a new
temporary folder, printed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, code_version, loadavg  # noqa: E402  (also sets BLAS threads to 1)

REF_PY = REPO / ".venv-ref" / "bin" / "python"
HERE = REPO / "benchmarks" / "reference_env"
DATA = REPO.parent / "shared" / "data"
MAX_SITES = 30


def textbook() -> list[tuple[str, object]]:
    from pymatgen.core import Lattice, Structure

    rs = [[0, 0, 0], [0.5, 0.5, 0.5]]
    zb = [[0, 0, 0], [0.25, 0.25, 0.25]]
    return [
        ("CsCl", Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.1437), ["Cs", "Cl"], rs)),
        ("MgO", Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.25), ["Mg", "O"], rs)),
        ("Si", Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.47), ["Si"], [[0, 0, 0]])),
        ("GaAs", Structure.from_spacegroup("F-43m", Lattice.cubic(5.75), ["Ga", "As"], zb)),
        ("LiF", Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.07), ["Li", "F"], rs)),
        ("NaCl", Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], rs)),
    ]


def mp_structures(max_total: int) -> list[tuple[str, object]]:
    """Up to ``max_total`` entries with <= MAX_SITES sites, half from each file, spread evenly over the file
    sorted by entry id (deterministic)."""
    from monty.json import MontyDecoder

    out = []
    files = ["Li-Co-Ni-O.json.gz", "Na-Fe-P-O.json.gz"]
    for name in files:
        with gzip.open(DATA / "reference" / "mp" / name, "rt") as fh:
            entries = MontyDecoder().decode(fh.read())
        small = sorted((e for e in entries if len(e.structure) <= MAX_SITES), key=lambda e: str(e.entry_id))
        want = max_total // len(files)
        step = max(1, len(small) // want) if want else len(small) + 1
        picked = small[::step][:want]
        out += [(f"{e.entry_id}:{e.structure.composition.reduced_formula}", e.structure) for e in picked]
    return out


def cif_structures(n: int) -> list[tuple[str, object]]:
    import warnings

    import pandas as pd
    from pymatgen.core import Structure

    df = pd.read_parquet(DATA / "crystallm_pi" / "generated_8k_bandgap_conditioned.parquet")
    out = []
    for i in range(0, len(df), 97):  # a spread over the 8 band-gap conditions
        if len(out) >= n:
            break
        row = df.iloc[i]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_str(row["Generated CIF"], fmt="cif")
        except Exception:  # noqa: BLE001  (real generator output: many do not parse)
            continue
        if not s.is_ordered or len(s) > MAX_SITES or len(s) == 0:
            continue
        out.append((f"crystallm:{row['Material ID']}:{s.composition.reduced_formula}", s))
    return out


def _max_abs(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        return float("nan")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def compare(ref: dict, other: dict) -> dict:
    """Max |diff| per quantity over structures both sides computed; where it is reached; failure counts."""
    qs = ["gap_state0", "gap_state1", "gap_state2", "gap_state3", "energy_per_atom", "forces", "stress"]
    best = {q: {"max_abs_diff": 0.0, "at": None, "n": 0} for q in qs}
    only_failed = []
    for sid, r in ref.items():
        o = other.get(sid, {})
        for q in qs:
            if q.startswith("gap"):
                i = int(q[-1])
                if "gap" not in r or "gap" not in o:
                    if ("gap" in r) != ("gap" in o) and i == 0:
                        only_failed.append((sid, "gap", r.get("gap_error"), o.get("gap_error")))
                    continue
                d = abs(r["gap"][i] - o["gap"][i])
            else:
                if q not in r or q not in o:
                    if (q in r) != (q in o) and q == "energy_per_atom":
                        only_failed.append((sid, "pes", r.get("pes_error"), o.get("pes_error")))
                    continue
                d = _max_abs(r[q], o[q])
            b = best[q]
            b["n"] += 1
            if not (d <= b["max_abs_diff"]):  # also catches nan
                b["max_abs_diff"], b["at"] = d, sid
    return {"per_quantity": best, "failed_on_one_side_only": only_failed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-mp", type=int, default=100, help="Materials Project structures (default 100)")
    ap.add_argument("--n-cif", type=int, default=8, help="CrystaLLM-pi structures (default 8)")
    ap.add_argument("--keep", type=Path, help="keep structures.json / reference.json / port.json here")
    args = ap.parse_args()
    if not REF_PY.exists():
        print(f"no reference environment at {REF_PY.parent.parent}: build it as in {HERE / 'README.md'}")
        return 2

    structs = textbook() + mp_structures(args.max_mp) + cif_structures(args.n_cif)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="matgl_port_"))
    work.mkdir(parents=True, exist_ok=True)
    spath, rpath, ppath = work / "structures.json", work / "reference.json", work / "port.json"
    spath.write_text(json.dumps([{"id": sid, "structure": s.as_dict()} for sid, s in structs]))
    print(f"{len(structs)} structures -> {spath}")

    t0 = time.perf_counter()
    env = {**__import__("os").environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "DGLBACKEND": "pytorch"}
    subprocess.run([str(REF_PY), str(HERE / "compare_matgl.py"), str(spath), str(rpath)], check=True, env=env)
    subprocess.run([sys.executable, str(HERE / "port_predictions.py"), str(spath), str(ppath)], check=True, env=env)
    ref = json.loads(rpath.read_text())
    port = json.loads(ppath.read_text())

    table = {v: compare(ref["results"], port["results"][v]) for v in ("port", "stock")}
    units = {"gap_state0": "eV", "gap_state1": "eV", "gap_state2": "eV", "gap_state3": "eV",
             "energy_per_atom": "eV/atom", "forces": "eV/A", "stress": "eV/A^3"}
    lines = [f"matgl port check: {len(structs)} structures; reference = matgl {ref['meta']['matgl']} + dgl "
             f"{ref['meta']['dgl']} + torch {ref['meta']['torch']}; port = matgl {port['meta']['matgl']}",
             f"rebound layers: port MEGNet {port['meta']['port_megnet_layers_rebound']}, M3GNet "
             f"{port['meta']['port_m3gnet_layers_rebound']}; stock MEGNet "
             f"{port['meta']['stock_megnet_layers_rebound']}, M3GNet {port['meta']['stock_m3gnet_layers_rebound']}",
             "",
             f"{'quantity':<18}{'unit':<9}{'n':>5}  {'port as shipped vs ref':>24}  {'stock 4.1.2 vs ref':>20}"
             f"  worst (stock)"]
    for q, unit in units.items():
        p, s = table["port"]["per_quantity"][q], table["stock"]["per_quantity"][q]
        lines.append(f"{q:<18}{unit:<9}{p['n']:>5}  {p['max_abs_diff']:>24.3e}  {s['max_abs_diff']:>20.3e}"
                     f"  {s['at']}")
    for v in ("port", "stock"):
        for f in table[v]["failed_on_one_side_only"]:
            lines.append(f"{v}: {f[0]} {f[1]} failed on one side only: ref={f[2]!r} other={f[3]!r}")
    n_fail = {k: sum(1 for r in ref["results"].values() if k in r) for k in ("gap_error", "pes_error",
                                                                              "structure_error")}
    lines.append(f"reference failures (skipped on both sides when both failed): {n_fail}")
    cs_ref = ref["results"].get("CsCl", {}).get("gap")
    cs_port = port["results"]["port"].get("CsCl", {}).get("gap")
    cs_stock = port["results"]["stock"].get("CsCl", {}).get("gap")
    fmt = lambda g: " / ".join(f"{x:.3f}" for x in g) if g else "n/a"  # noqa: E731
    lines += ["", f"CsCl gaps states 0..3: reference {fmt(cs_ref)}; port {fmt(cs_port)}; stock {fmt(cs_stock)}",
              f"wall time {time.perf_counter() - t0:.0f} s, load {loadavg()}"]
    text = "\n".join(lines)
    print(text)
    print(f"files in {work}")
    (work / "matgl_port.txt").write_text(text + "\n")
    (work / "matgl_port.json").write_text(json.dumps(
        {"table": table, "ref_meta": ref["meta"], "port_meta": port["meta"], "code": code_version(),
         "structures": [sid for sid, _ in structs]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
