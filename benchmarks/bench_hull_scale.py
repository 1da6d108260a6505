#!/usr/bin/env python
"""Whole-database reference hulls at Materials Project size: load a 150,000-entry reference set, then the
ML stage's per-candidate hull lookup, cold and warm, against the naive ways, in one run.

The reference set (synthetic, made from the REAL shipped MP entries; these are not real materials):

* the 89 entries of ``examples/mp-elemental-reference-entries-2023-02-07.json.gz`` (one per element, ids
  ``elem-<El>-<mp id>``): every element has its elemental reference, so every chemical system of the 89
  elements is "covered";
* copies of ``examples/mp_Li-Co-Ni-O.json.gz`` (775 ComputedStructureEntries) and
  ``examples/mp_Na-Fe-P-O.json.gz`` (557) under element substitutions, alternately, copy 0 of each the
  identity, until the set holds ``--entries`` (default 150,000; the last copy is whole, so a few more).
  Each substitution maps the 4 elements of its quaternary onto 4 other elements of the same family, drawn
  with ``random.Random(--seed)``: Li/Na -> an alkali or alkaline-earth metal (Li Na K Rb Cs Be Mg Ca Sr Ba),
  Co/Ni/Fe -> a d-block metal (29: Sc..Zn, Y..Cd, Hf..Hg), P -> a p-block/metalloid element (B C Al Si P Ga
  Ge As In Sn Sb Tl Pb Bi), O -> a chalcogen, halogen or N (O S Se Te F Cl Br I N).  No two substitutions give
  the same element quadruple.  The chemistry is not realistic and need not be: the set has MP's size, MP's
  entry shapes (structures of 1-100+ sites, MP2020 adjustments) and MP's sub-system structure (unaries,
  binaries, ternaries shared between copies, ~230 quaternary systems);
* each copy is made by editing the entry dicts with the mapping (no Structure objects): composition,
  every site's species and label, the Hubbard U keys, POTCAR titles, oxidation states and the element named
  in an adjustment's name; new ids ``sub<k>-<original id>``; MP's ``e_above_hull`` / ``is_stable`` /
  ``e_form_per_atom`` are dropped (they no longer hold).  Energies: the uncorrected energy gets, per atom of
  original element o mapped to n, ``mu(n) - min(o)`` (mu: the elemental-reference file's energy per atom of
  n; min(o): the lowest elemental energy per atom of o in the original file), plus a deterministic noise of
  ``U[0, 2 meV/atom)`` per entry.  A per-element linear shift leaves every hull distance inside a copy as it
  was; the noise is >= 0, so the elemental-file entry stays every element's lowest.
* The file is written in Matbench Discovery's MP-entries layout (what ``df.reset_index().to_json(path)``
  writes for a DataFrame with ``material_id`` and ``entry``: ``{"material_id": {row: id}, "entry": {row:
  entry dict}}``, gzipped), streamed row by row (the layout is checked against pandas on the first rows).
  Its time and size are recorded, not counted as load time.

What is measured, one SecantusDB server (``fw_screen.server.embedded.start``) in a temp home on a free port:

1. ``load_references`` of that file in a subprocess (its peak RSS is that process's own ``ru_maxrss``; the
   server's RSS and CPU sampled beside it); database size (dbStats, collStats, data folder on disk);
2. 60 candidates (distinct chemical systems: 16 binaries, 24 ternaries, 20 quaternaries of both families,
   real shipped compositions after substitution) with an ML-like entry: the composition of the lowest
   stored entry of that formula, energy = its energy per atom + an offset drawn from -0.03..+0.2 eV/atom.
   In a FRESH process with an empty cache, ``hulls.reference_hull`` + ``get_decomp_and_e_above_hull`` per
   candidate, first (cold: query + build) and second (warm: cache hit) time; the worker's RSS after;
3. naive (a): per candidate, read every ``reference_entries`` document (``find({})``, no index), filter in
   Python to the candidate's sub-systems, one PhaseDiagram (``--naive-reads`` candidates, default 6);
   naive (b): one pymatgen ``PatchedPhaseDiagram`` over ALL entries (in its own process: build time, RSS),
   then ``ppd.get_e_above_hull`` per candidate (falls back to a clearly labelled subsample if the build
   takes longer than ``--ppd-timeout`` or fails);
4. fw-screen's e_above_hull must equal the naive ones to 1e-9 eV/atom for every candidate;
5. the goals: load <= 5 min, warm lookup <= 50 ms, cold <= 1 s per candidate, <= 1 GB per worker.

    .venv/bin/python benchmarks/bench_hull_scale.py                    # 150,000 entries, ~7 min on 2 cores
    .venv/bin/python benchmarks/bench_hull_scale.py --entries 20000    # quick, ~2 min

Results: ``results/hull_scale.json`` and the printed text in ``results/hull_scale.txt`` (other sizes:
``hull_scale_<N>.*``).  ``--profile-load`` runs the load under cProfile (slower; its top functions are printed).
"""

from __future__ import annotations

import _common  # noqa: F401 -- single-threaded BLAS, repository on sys.path

import argparse
import datetime as dt
import gzip
import io
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from _common import REPO, code_version, free_port, loadavg, machine_info, save_results

from fw_screen.server import embedded as server  # noqa: E402  (after _common: BLAS threads, sys.path)
from fw_screen.science.references import subsystems  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = REPO / "examples"
MB = 1024 * 1024
ELEMENTAL_FILE = "mp-elemental-reference-entries-2023-02-07.json.gz"
FAMILY_FILES = {"Li-Co-Ni-O": "mp_Li-Co-Ni-O.json.gz", "Na-Fe-P-O": "mp_Na-Fe-P-O.json.gz"}
FAMILIES = {
    "A": "Li Na K Rb Cs Be Mg Ca Sr Ba".split(),
    "T": "Sc Ti V Cr Mn Fe Co Ni Cu Zn Y Zr Nb Mo Tc Ru Rh Pd Ag Cd Hf Ta W Re Os Ir Pt Au Hg".split(),
    "P": "B C Al Si P Ga Ge As In Sn Sb Tl Pb Bi".split(),
    "X": "O S Se Te F Cl Br I N".split(),
}
ROLES = {"Li-Co-Ni-O": {"Li": "A", "Co": "T", "Ni": "T", "O": "X"},
         "Na-Fe-P-O": {"Na": "A", "Fe": "T", "P": "P", "O": "X"}}
NOISE = 0.002  # eV/atom, upper bound of the per-entry noise
OFFSETS = (-0.03, 0.0, 0.02, 0.05, 0.05, 0.05, 0.1, 0.2)  # candidate energy above the lowest entry, eV/atom
GOALS = {"load_s": 300.0, "warm_s": 0.050, "cold_s": 1.0, "worker_rss_mb": 1024.0}
PROJECTION = {"composition": 1, "energy": 1, "entry_id": 1, "chemsys": 1}


# ------------------------------------------------------------------------------------- output capture
class Tee(io.TextIOBase):
    """Print to the terminal and keep a copy (written to results/hull_scale.txt at the end)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, s):
        self.stream.write(s)
        self.stream.flush()
        self.copy.write(s)
        return len(s)

    def flush(self):
        self.stream.flush()


def rss_mb(pid: int | None = None) -> float:
    import psutil

    return round(psutil.Process(pid or os.getpid()).memory_info().rss / MB, 1)


def maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), linear between order statistics."""
    v = sorted(values)
    if not v:
        return float("nan")
    x = q * (len(v) - 1)
    lo = int(x)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (x - lo)


def spread(values: list[float]) -> dict:
    return {"n": len(values), "median": statistics.median(values), "p90": pct(values, 0.9), "max": max(values),
            "min": min(values), "mean": statistics.fmean(values)}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------ the reference set
def _read_gz_json(path: Path):
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def corrected_energy_per_atom(d: dict) -> float:
    from pymatgen.entries.computed_entries import ComputedEntry

    e = ComputedEntry.from_dict({k: v for k, v in d.items() if k != "structure"})
    return e.energy_per_atom


def substitution_plan(n_target: int, seed: int, family_sizes: dict[str, int], n_elemental: int) -> list[dict]:
    """Substitutions in order (family alternating, copy 0 of each the identity) until >= n_target entries."""
    rng = random.Random(seed)
    used: set[frozenset] = set()
    plan, total, k = [], n_elemental, 0
    fams = list(FAMILY_FILES)
    copy = {f: 0 for f in fams}
    while total < n_target:
        fam = fams[k % len(fams)]
        roles = ROLES[fam]
        if copy[fam] == 0:
            mapping = {el: el for el in roles}
        else:
            for _attempt in range(10_000):
                mapping, taken = {}, set()
                for el, fam_name in roles.items():
                    choice = rng.choice([x for x in FAMILIES[fam_name] if x not in taken])
                    mapping[el] = choice
                    taken.add(choice)
                if frozenset(mapping.values()) not in used:
                    break
            else:
                raise RuntimeError("ran out of distinct element quadruples")
        quad = frozenset(mapping.values())
        assert quad not in used
        used.add(quad)
        plan.append({"k": k, "family": fam, "copy": copy[fam], "mapping": mapping,
                     "chemsys": "-".join(sorted(quad)), "n": family_sizes[fam]})
        total += family_sizes[fam]
        copy[fam] += 1
        k += 1
    return plan


def _sub_name(name: str, m: dict) -> str:
    for o, n in m.items():
        name = name.replace(f"({o})", f"({n})")
    return name


def _sub_titel(titel: str, m: dict) -> str:
    parts = titel.split(" ")
    if len(parts) > 1:
        sym = parts[1].split("_")[0]
        if sym in m:
            parts[1] = m[sym] + parts[1][len(sym):]
    return " ".join(parts)


def substitute(d: dict, m: dict, k: int, shift: dict, noise_per_atom: float) -> dict:
    """A copy of entry dict ``d`` with elements mapped by ``m`` (dicts edited directly, no Structure)."""
    comp = d["composition"]
    natoms = sum(comp.values())
    s = d["structure"]
    sites = [{**site, "species": [{**sp, "element": m[sp["element"]]} for sp in site["species"]],
              "label": m.get(site.get("label"), site.get("label"))} for site in s["sites"]]
    params = dict(d.get("parameters") or {})
    if isinstance(params.get("hubbards"), dict):
        params["hubbards"] = {m.get(e, e): u for e, u in params["hubbards"].items()}
    if isinstance(params.get("potcar_spec"), list):
        params["potcar_spec"] = [{**p, "titel": _sub_titel(p.get("titel") or "", m)} for p in params["potcar_spec"]]
    data = dict(d.get("data") or {})
    new_id = f"sub{k}-{d['entry_id']}"
    if isinstance(data.get("oxidation_states"), dict):
        data["oxidation_states"] = {m.get(e, e): v for e, v in data["oxidation_states"].items()}
    if "material_id" in data:
        data["material_id"] = f"sub{k}-{data['material_id']}"
    out = {key: v for key, v in d.items() if key not in ("e_above_hull", "is_stable", "e_form_per_atom")}
    out.update({
        "energy": d["energy"] + sum(n * shift[e] for e, n in comp.items()) + noise_per_atom * natoms,
        "composition": {m[e]: n for e, n in comp.items()},
        "entry_id": new_id,
        "energy_adjustments": [{**a, "name": _sub_name(a["name"], m)} if isinstance(a.get("name"), str) else a
                               for a in d.get("energy_adjustments") or []],
        "parameters": params, "data": data,
        "structure": {**s, "sites": sites},
    })
    return out


def _dumps():
    try:
        import orjson

        return orjson.dumps
    except ImportError:  # pragma: no cover
        return lambda o: json.dumps(o).encode()


def mbd_layout_check(ids: list[str], entries: list[dict], writer) -> bool:
    """The streamed layout equals what pandas writes (``df.reset_index().to_json``) for the same rows."""
    import pandas as pd

    buf = io.BytesIO()
    writer(buf, ids, iter(entries))
    mine = json.loads(buf.getvalue())
    df = pd.DataFrame({"entry": entries}, index=pd.Index(ids, name="material_id"))
    theirs = json.loads(df.reset_index().to_json())

    def close(a, b):
        if isinstance(a, dict):
            return isinstance(b, dict) and list(a) == list(b) and all(close(a[x], b[x]) for x in a)
        if isinstance(a, list):
            return isinstance(b, list) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
        if isinstance(a, float) or isinstance(b, float):
            return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))  # pandas: 10 decimals
        return a == b

    return list(mine) == list(theirs) == ["material_id", "entry"] and close(mine, theirs)


def write_mbd(fh, ids: list[str], entries) -> int:
    """Stream a Matbench Discovery MP-entries file: {"material_id": {"0": id, ...}, "entry": {"0": {...}}}."""
    dumps = _dumps()
    fh.write(b'{"material_id":{')
    fh.write(b",".join(b'"%d":%s' % (i, dumps(x)) for i, x in enumerate(ids)))
    fh.write(b'},"entry":{')
    n = 0
    for i, e in enumerate(entries):
        fh.write((b',"%d":' if i else b'"%d":') % i)
        fh.write(dumps(e))
        n += 1
    fh.write(b"}}")
    return n


def _timed(fn, clock: dict, key: str, count: str | None = None, size: str | None = None):
    """``fn`` adding its wall time to ``clock[key]`` (and 1 to ``clock[count]``, its result's length to
    ``clock[size]``): timers around the product's own calls, in this process only."""
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            out = fn(*a, **k)
        finally:
            clock[key] += time.perf_counter() - t
            if count:
                clock[count] += 1
        if size:
            clock[size] = len(out)
        return out

    return wrapper


def build_set(n_target: int, dest: Path, seed: int) -> dict:
    """Write the synthetic whole-database file (see the module text); returns its description."""
    t0 = time.perf_counter()
    elemental = _read_gz_json(EXAMPLES / ELEMENTAL_FILE)
    elements = set(elemental)
    for fam, names in FAMILIES.items():
        missing = [x for x in names if x not in elements]
        assert not missing, f"family {fam}: {missing} have no elemental reference"
    mu = {el: corrected_energy_per_atom(d) for el, d in elemental.items()}
    originals, min_orig = {}, {}
    for fam, name in FAMILY_FILES.items():
        raw = _read_gz_json(EXAMPLES / name)
        originals[fam] = raw
        min_orig[fam] = {el: min(corrected_energy_per_atom(d) for d in raw if list(d["composition"]) == [el])
                         for el in ROLES[fam]}
    plan = substitution_plan(n_target, seed, {f: len(v) for f, v in originals.items()}, len(elemental))
    elem_rows = []
    for el in sorted(elemental):
        d = dict(elemental[el])
        d["entry_id"] = f"elem-{el}-{d['entry_id']}"
        elem_rows.append(d)
    ids = [d["entry_id"] for d in elem_rows]
    for p in plan:
        ids.extend(f"sub{p['k']}-{d['entry_id']}" for d in originals[p["family"]])
    assert len(ids) == len(set(ids)), "entry ids repeat"
    noise_rng = random.Random(seed + 1)

    def rows():
        yield from elem_rows
        for p in plan:
            m = p["mapping"]
            shift = {o: mu[n] - min_orig[p["family"]][o] for o, n in m.items()}
            for d in originals[p["family"]]:
                yield substitute(d, m, p["k"], shift, noise_rng.uniform(0.0, NOISE))

    # the layout against pandas, on the first rows (elemental entries + the first substituted ones)
    first = []
    for d in rows():
        first.append(d)
        if len(first) >= 120:
            break
    layout_ok = mbd_layout_check(ids[:len(first)], first, write_mbd)
    noise_rng.seed(seed + 1)  # the real pass draws the same noise
    with gzip.open(dest, "wb", compresslevel=6) as fh:
        n = write_mbd(fh, ids, rows())
    seconds = time.perf_counter() - t0
    # a few rows back through pymatgen: valid ComputedStructureEntry dicts, structure and entry agree
    check = _spot_check(dest, plan, originals, mu, min_orig, seed)
    counts = {"elemental_file": len(elem_rows)}
    for fam in FAMILY_FILES:
        counts[f"copies_of_{fam}"] = sum(1 for p in plan if p["family"] == fam)
    return {"path": str(dest), "entries": n, "bytes": dest.stat().st_size, "seconds": round(seconds, 1),
            "layout_equals_pandas_to_json": layout_ok, "spot_check": check, "counts": counts,
            "substitutions": [{k: p[k] for k in ("k", "family", "chemsys", "mapping")} for p in plan],
            "quaternary_systems": len({p["chemsys"] for p in plan}), "seed": seed, "noise_ev_per_atom": NOISE}


def _spot_check(dest: Path, plan, originals, mu, min_orig, seed) -> dict:
    """Re-create 30 seeded rows and read them with ComputedStructureEntry.from_dict: the structure's
    composition is the entry's, and the energy per atom moved by the per-element shift (+ noise < 2 meV)."""
    import warnings

    from pymatgen.entries.computed_entries import ComputedStructureEntry

    rng = random.Random(seed + 2)
    worst, n = 0.0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in rng.sample(plan, min(10, len(plan))):
            raw = originals[p["family"]]
            m = p["mapping"]
            shift = {o: mu[x] - min_orig[p["family"]][o] for o, x in m.items()}
            for d in rng.sample(raw, 3):
                new = ComputedStructureEntry.from_dict(substitute(d, m, p["k"], shift, 0.0))
                old = ComputedStructureEntry.from_dict(d)
                assert new.structure.composition.reduced_formula == new.composition.reduced_formula
                assert new.composition.reduced_formula == old.composition.replace(dict(m)).reduced_formula  # (a copy: replace edits it)
                expect = old.energy + sum(old.composition[o] * shift[o] for o in m)
                worst = max(worst, abs(new.energy - expect))
                n += 1
    return {"rows": n, "max_energy_error": worst, "ok": worst < 1e-6}


# ------------------------------------------------------------------------------------------ candidates
def choose_candidates(plan: list[dict], seed: int, n_per_family: dict[int, int]) -> list[dict]:
    """Shipped compositions mapped into seeded copies: distinct chemical systems, binaries to quaternaries."""
    from pymatgen.core import Composition

    rng = random.Random(seed + 3)
    out, systems = [], set()
    for fam, name in FAMILY_FILES.items():
        raw = _read_gz_json(EXAMPLES / name)
        by_arity: dict[int, list[str]] = {}
        for d in raw:
            comp = Composition(d["composition"])
            if len(comp.elements) >= 2:
                by_arity.setdefault(len(comp.elements), [])
                rf = comp.reduced_formula
                if rf not in by_arity[len(comp.elements)]:
                    by_arity[len(comp.elements)].append(rf)
        copies = [p for p in plan if p["family"] == fam]
        for arity, want in n_per_family.items():
            formulas = by_arity[arity][:]
            rng.shuffle(formulas)
            order = copies[:]
            rng.shuffle(order)
            i = 0
            for rf in formulas:
                if sum(1 for c in out if c["family"] == fam and c["arity"] == arity) >= want:
                    break
                for _ in range(len(order)):
                    p = order[i % len(order)]
                    i += 1
                    comp = Composition(rf).replace(dict(p["mapping"]))  # replace() edits the dict it is given
                    chemsys = "-".join(sorted(el.symbol for el in comp.elements))
                    if chemsys not in systems:
                        systems.add(chemsys)
                        out.append({"family": fam, "arity": arity, "k": p["k"], "original_formula": rf,
                                    "formula": comp.reduced_formula, "chemsys": chemsys,
                                    "elements": chemsys.split("-"), "offset": rng.choice(OFFSETS)})
                        break
    for i, c in enumerate(out):
        c["id"] = f"cand-{i:02d}-{c['formula']}"
    return out


def resolve_candidate_energies(store, set_name: str, cands: list[dict]) -> None:
    """Each candidate's entry: the lowest stored entry of its formula (from the database) + its offset."""
    for c in cands:
        docs = list(store.entries.find({"chemsys": c["chemsys"]}, {"formula": 1, "composition": 1, "energy": 1,
                                                                  "energy_per_atom": 1, "set": 1, "entry_id": 1}))
        docs = [d for d in docs if d["formula"] == c["formula"] and d["set"] == set_name]
        low = min(docs, key=lambda d: d["energy_per_atom"])
        natoms = sum(low["composition"].values())
        c["composition"] = low["composition"]
        c["lowest_entry_id"] = low["entry_id"]
        c["lowest_energy_per_atom"] = low["energy_per_atom"]
        c["energy"] = (low["energy_per_atom"] + c["offset"]) * natoms


# ------------------------------------------------------------------------------ subprocess jobs (workers)
def _job_load(job: dict) -> dict:
    import cProfile
    import pstats

    from fw_screen.stages import load_references
    from fw_screen.store import ResultsStore

    from fw_screen import stages as campaign

    store = ResultsStore.from_file(job["launchpad"])
    store.db.command("ping")
    # where the wall time goes, without a profiler's overhead: opening the file (sha256, its format from the
    # first bytes) and the inserts (client BSON encoding + the server's work), wrapped in this process; the
    # rest is the streaming parse and the documents
    split = {"open_and_parse_s": 0.0, "insert_s": 0.0, "inserts": 0}
    read = _timed(campaign.read_references, split, "open_and_parse_s")
    insert = _timed(store.insert_reference_docs, split, "insert_s", count="inserts")

    campaign.read_references, store.insert_reference_docs = read, insert
    rss0, t_cpu0 = rss_mb(), time.process_time()
    marks = []
    t0 = time.perf_counter()

    def progress(n):
        marks.append((round(time.perf_counter() - t0, 2), n))

    prof = cProfile.Profile() if job.get("profile") else None
    if prof:
        prof.enable()
    r = load_references(store, job["path"], progress=progress)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    split["other_s"] = wall - split["open_and_parse_s"] - split["insert_s"]
    out = {"result": r, "wall_s": wall, "split": split, "cpu_s": time.process_time() - t_cpu0, "rss_before_mb": rss0,
           "rss_after_mb": rss_mb(), "peak_rss_mb": maxrss_mb(), "progress": marks}
    if prof:
        for key in ("cumulative", "tottime"):
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(key).print_stats(28)
            out[f"profile_{key}"] = s.getvalue()
    return out


def _job_lookup(job: dict) -> dict:
    import warnings

    from pymatgen.core import Composition
    from pymatgen.entries.computed_entries import ComputedEntry

    from fw_screen.stages import hulls
    from fw_screen.science import stability
    from fw_screen.store import ResultsStore

    warnings.simplefilter("ignore")
    store = ResultsStore.from_file(job["launchpad"])
    store.db.command("ping")
    hulls.clear()
    rss0 = rss_mb()
    # timers around the two queries and the build (wrapped here, in this process only)
    timing = {"sets": 0.0, "docs": 0.0, "n_docs": 0, "build": 0.0}
    sets = _timed(store.reference_sets, timing, "sets")
    docs = _timed(store.hull_entry_docs, timing, "docs", size="n_docs")
    build = _timed(stability.phase_diagram, timing, "build")

    store.reference_sets, store.hull_entry_docs, stability.phase_diagram = sets, docs, build
    rows = []
    for c in job["candidates"]:
        rows.append({"id": c["id"], "entry": ComputedEntry(Composition(c["composition"]), c["energy"],
                                                           entry_id=c["id"])})
    # garbage-collector pauses and CPU time per lookup: a slow lookup is either the collector, or the
    # process waiting for a core (wall >> CPU) on a shared machine
    import gc

    gc_clock = {"start": 0.0, "total": 0.0, "n": 0}

    def on_gc(phase, _info):
        if phase == "start":
            gc_clock["start"] = time.perf_counter()
        else:
            gc_clock["total"] += time.perf_counter() - gc_clock["start"]
            gc_clock["n"] += 1

    gc.callbacks.append(on_gc)
    results = {}
    for phase in ("cold", "warm"):
        for c, row in zip(job["candidates"], rows):
            timing.update(sets=0.0, docs=0.0, n_docs=0, build=0.0)
            gc0, cpu0 = gc_clock["total"], time.process_time()
            t0 = time.perf_counter()
            pd, missing = hulls.reference_hull(store, c["elements"])
            t1 = time.perf_counter()
            if pd is None:
                raise RuntimeError(f"{c['id']}: no hull: {missing}")
            _dec, e = pd.get_decomp_and_e_above_hull(row["entry"], allow_negative=True)
            t2 = time.perf_counter()
            rec = results.setdefault(c["id"], {})
            rec[phase] = {"total_s": t2 - t0, "hull_s": t1 - t0, "e_hull_s": t2 - t1, "e_above_hull": e,
                          "sets_query_s": timing["sets"], "docs_query_s": timing["docs"],
                          "build_s": timing["build"], "cpu_s": time.process_time() - cpu0,
                          "gc_s": gc_clock["total"] - gc0}
            if phase == "cold":
                rec["hull_entries"] = len(pd.all_entries)
                rec["docs"] = timing["n_docs"]
                rec["other_s"] = (t1 - t0) - timing["sets"] - timing["docs"] - timing["build"]
    gc.callbacks.remove(on_gc)
    return {"per_candidate": results, "stats": dict(hulls.STATS), "gc_collections": gc_clock["n"], "rss_before_mb": rss0, "rss_after_mb": rss_mb(),
            "peak_rss_mb": maxrss_mb(), "cached_hulls": len(hulls._CACHE)}


def _job_ppd(job: dict) -> dict:
    import warnings

    from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram
    from pymatgen.core import Composition
    from pymatgen.entries.computed_entries import ComputedEntry

    from fw_screen.science import references as refs
    from fw_screen.store import ResultsStore

    warnings.simplefilter("ignore")
    store = ResultsStore.from_file(job["launchpad"])
    store.db.command("ping")
    rss0 = rss_mb()
    t0 = time.perf_counter()
    docs = list(store.entries.find({}, PROJECTION))
    t_read = time.perf_counter() - t0
    only = set(job["only_chemsys"]) if job.get("only_chemsys") else None
    if only is not None:
        docs = [d for d in docs if d["chemsys"] in only]
    t1 = time.perf_counter()
    entries = [refs.hull_entry(d) for d in docs]
    del docs
    t_entries = time.perf_counter() - t1
    t2 = time.perf_counter()
    ppd = PatchedPhaseDiagram(entries)
    t_build = time.perf_counter() - t2
    rss_built = rss_mb()
    per = {}
    for c in job["candidates"]:
        entry = ComputedEntry(Composition(c["composition"]), c["energy"], entry_id=c["id"])
        t = time.perf_counter()
        e = ppd.get_e_above_hull(entry, allow_negative=True)
        per[c["id"]] = {"s": time.perf_counter() - t, "e_above_hull": e}
    return {"entries": len(entries), "read_s": t_read, "entries_s": t_entries, "build_s": t_build,
            "spaces": len(ppd.spaces), "rss_before_mb": rss0, "rss_after_build_mb": rss_built,
            "rss_after_mb": rss_mb(), "peak_rss_mb": maxrss_mb(), "per_candidate": per,
            "subsample": only is not None}


JOBS = {"load": _job_load, "lookup": _job_lookup, "ppd": _job_ppd}


def _run_job_main(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    try:
        out = {"ok": True, **JOBS[job["kind"]](job)}
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    Path(job["out"]).write_text(json.dumps(out, default=str))
    return 0 if out["ok"] else 1


class Sampler(threading.Thread):
    """Peak RSS and CPU of some processes (the job, the server) every 0.25 s."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        import psutil

        self.procs = {k: psutil.Process(p) for k, p in pids.items() if p}
        self.peak = {k: 0.0 for k in self.procs}
        self.cpu0 = {k: self._cpu(p) for k, p in self.procs.items()}
        self.cpu = {}
        self.stop_event = threading.Event()

    @staticmethod
    def _cpu(p) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except Exception:  # noqa: BLE001
            return float("nan")

    def run(self):
        while not self.stop_event.is_set():
            for k, p in self.procs.items():
                try:
                    self.peak[k] = max(self.peak[k], p.memory_info().rss / MB)
                    self.cpu[k] = self._cpu(p) - self.cpu0[k]
                except Exception:  # noqa: BLE001 -- the process has ended
                    pass
            self.stop_event.wait(0.25)

    def done(self) -> dict:
        self.stop_event.set()
        self.join()
        return {k: {"peak_rss_mb": round(self.peak[k], 1), "cpu_s": round(self.cpu.get(k, float("nan")), 1)}
                for k in self.procs}


def run_job(kind: str, work: Path, server_pid: int, timeout: float | None = None, **job) -> dict:
    """Run one job in a fresh Python process; returns its output, the sampled RSS/CPU and its wall time."""
    job_file, out_file = work / f"job_{kind}.json", work / f"job_{kind}_out.json"
    out_file.unlink(missing_ok=True)
    job_file.write_text(json.dumps({"kind": kind, "out": str(out_file), **job}, default=str))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_job", str(job_file)],
                            cwd=str(REPO), stderr=subprocess.PIPE, text=True)
    sampler = Sampler({"job": proc.pid, "server": server_pid})
    sampler.start()
    try:
        _out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        timed_out = True
    sampled = sampler.done()
    wall = time.perf_counter() - t0
    if out_file.exists():
        out = json.loads(out_file.read_text())
    else:
        out = {"ok": False, "error": "timed out" if timed_out else f"exit {proc.returncode}, no output"}
    out.update(process_wall_s=wall, sampled=sampled, timed_out=timed_out, returncode=proc.returncode,
               stderr_tail=(err or "")[-3000:])
    return out


# --------------------------------------------------------------------------------------------- naive (a)
def naive_full_read(store, cand: dict) -> dict:
    """Read every reference_entries document (no index), keep the candidate's sub-systems, one PhaseDiagram."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Composition
    from pymatgen.entries.computed_entries import ComputedEntry

    from fw_screen.science import references as refs

    entry = ComputedEntry(Composition(cand["composition"]), cand["energy"], entry_id=cand["id"])
    t0 = time.perf_counter()
    docs = list(store.entries.find({}, PROJECTION))
    t1 = time.perf_counter()
    subs = set(refs.subsystems(cand["elements"]))
    mine = [refs.hull_entry(d) for d in docs if d["chemsys"] in subs]
    n_read = len(docs)
    del docs
    t2 = time.perf_counter()
    pd = PhaseDiagram(mine)
    _dec, e = pd.get_decomp_and_e_above_hull(entry, allow_negative=True)
    t3 = time.perf_counter()
    return {"total_s": t3 - t0, "read_s": t1 - t0, "filter_s": t2 - t1, "build_s": t3 - t2, "docs_read": n_read,
            "hull_entries": len(mine), "e_above_hull": e}


def explain(store, flt: dict) -> dict:
    from fw_screen.store import plan_nodes

    ex = store.db.command("explain", {"find": store.entries.name, "filter": flt, "projection": PROJECTION},
                          verbosity="executionStats")
    stats = ex.get("executionStats", {})
    stages = []
    for n in plan_nodes(ex["queryPlanner"]["winningPlan"]):
        stages.append(n["stage"] + (f"({n.get('indexName') or n.get('keyPattern')})" if n["stage"] == "IXSCAN" else ""))
    return {"plan": " > ".join(stages), "returned": stats.get("nReturned"), "keys_examined": stats.get("totalKeysExamined"),
            "docs_examined": stats.get("totalDocsExamined")}


def db_sizes(store, home: Path) -> dict:
    files = sorted(((f.stat().st_size, str(f.relative_to(home / "db"))) for f in (home / "db").rglob("*")
                    if f.is_file()), reverse=True)
    out = {"data_folder_bytes": du(home / "db"), "data_folder_files": len(files),
           "largest_files": [{"file": name, "bytes": size} for size, name in files[:8]]}
    try:
        s = store.db.command("dbStats")
        out["dbStats"] = {k: s.get(k) for k in ("collections", "objects", "avgObjSize", "dataSize", "storageSize",
                                                "indexes", "indexSize") if k in s}
    except Exception as exc:  # noqa: BLE001
        out["dbStats"] = {"error": f"{type(exc).__name__}: {exc}"}
    for coll in ("reference_entries", "references"):
        try:
            s = store.db.command("collStats", coll)
            out[coll] = {k: s.get(k) for k in ("count", "size", "avgObjSize", "storageSize", "totalIndexSize",
                                               "indexSizes") if k in s}
        except Exception as exc:  # noqa: BLE001
            out[coll] = {"error": f"{type(exc).__name__}: {exc}", "count": store.db[coll].estimated_document_count()}
    return out


# -------------------------------------------------------------------------------------------- printing
def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 10 else f"{x:.1f} s"


def secs(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def mb(x) -> str:
    return f"{x:,.0f} MB" if x is not None else "-"


def table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  " + "-+-".join("-" * w for w in widths))
    for r in rows:
        print("  " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


# ------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=150_000, help="size of the reference set (whole copies: a few more)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--naive-reads", type=int, default=6, help="candidates timed with naive (a), the full read")
    p.add_argument("--ppd-timeout", type=float, default=1200.0,
                   help="seconds for the whole-set PatchedPhaseDiagram process before falling back to a subsample")
    p.add_argument("--no-ppd", action="store_true", help="skip naive (b)")
    p.add_argument("--profile-load", action="store_true", help="run the load under cProfile (slower)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--txt", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="leave the server and its home in place")
    args = p.parse_args(argv)

    stem = "hull_scale" if args.entries == 150_000 else f"hull_scale_{args.entries}"
    json_path = args.json or RESULTS / f"{stem}.json"
    txt_path = args.txt or (json_path.with_suffix(".txt") if args.json else RESULTS / f"{stem}.txt")
    tee = Tee(sys.stdout)
    sys.stdout = tee
    home = Path(tempfile.mkdtemp(prefix="fws-hull-scale-", dir="/tmp"))
    work = home / "work"
    work.mkdir()
    os.environ["FW_SCREEN_HOME"] = str(home)
    started = dt.datetime.now().astimezone()
    results: dict = {"benchmark": "hull_scale", "date": started.isoformat(timespec="seconds"),
                     "machine": machine_info(nice=os.nice(0)), "code": code_version(),
                     "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "goals": GOALS, "loadavg": {}, "errors": []}
    server_started = False
    try:
        print(f"== hull lookup at whole-database scale: {args.entries:,} entries (seed {args.seed}) ==")
        print(f"   {started:%Y-%m-%d %H:%M %Z}, {os.cpu_count()} cores, nice {os.nice(0)}, "
              f"load average {loadavg()}")
        # 1. the set ---------------------------------------------------------------------------------
        src = build_set(args.entries, work / "2023-02-07-mp-computed-structure-entries-synthetic.json.gz",
                        args.seed)
        results["set"] = {k: v for k, v in src.items() if k != "substitutions"}
        results["substitutions"] = src["substitutions"]
        print(f"\n1. reference set: {src['entries']:,} entries = {src['counts']['elemental_file']} elemental + "
              f"{src['counts']['copies_of_Li-Co-Ni-O']} copies of Li-Co-Ni-O (775) + "
              f"{src['counts']['copies_of_Na-Fe-P-O']} copies of Na-Fe-P-O (557) under element substitution")
        print(f"   {src['quaternary_systems']} distinct quaternary systems (no quadruple twice); first ones: "
              + ", ".join(f"sub{s['k']} {s['chemsys']}" for s in src["substitutions"][:6]))
        print(f"   written in {src['seconds']} s (not counted as load time): {src['bytes'] / MB:.0f} MB gz; "
              f"layout = pandas to_json: {src['layout_equals_pandas_to_json']}; "
              f"spot check ({src['spot_check']['rows']} rows via ComputedStructureEntry.from_dict): "
              f"{src['spot_check']['ok']}")

        # 2. server + load ---------------------------------------------------------------------------
        info = server.start(home, port=free_port())
        server_started = True
        results["server"] = {"pid": info["pid"], "port": info["port"]}
        from fw_screen.store import ResultsStore

        store = ResultsStore.from_file(info["launchpad"])
        print(f"\n2. load_references in a fresh process (SecantusDB pid {info['pid']}, port {info['port']})")
        results["loadavg"]["before_load"] = loadavg()
        load = run_job("load", work, info["pid"], launchpad=info["launchpad"], path=src["path"],
                       profile=args.profile_load)
        results["loadavg"]["after_load"] = loadavg()
        if not load.get("ok"):
            raise RuntimeError(f"load failed: {load.get('error')}\n{load.get('traceback', '')}{load['stderr_tail']}")
        r = load["result"]
        results["load"] = {k: v for k, v in load.items() if not k.startswith("profile_")}
        set_name = r["set"]
        sizes = results["db"] = db_sizes(store, home)
        ds = sizes.get("dbStats", {})
        print(f"   set {set_name}: format {r['format']}, covers {r['covers']}, scale {r['energy_scale']}; "
              f"{r['entries_new']:,} entries, {r['new']:,} structures")
        print(f"   load wall {load['wall_s']:.1f} s (load_references' own 'seconds' {r['seconds']}), loader CPU "
              f"{load['cpu_s']:.1f} s, server CPU {load['sampled']['server']['cpu_s']} s; load average "
              f"{results['loadavg']['before_load']} -> {results['loadavg']['after_load']}")
        print(f"   loader RSS {load['rss_before_mb']:.0f} MB before, peak {load['peak_rss_mb']:.0f} MB (ru_maxrss; "
              f"+{load['peak_rss_mb'] - load['rss_before_mb']:.0f} MB during the load); server peak RSS "
              f"{load['sampled']['server']['peak_rss_mb']:.0f} MB")
        sp = load["split"]
        print(f"   wall split: opening the file (sha256, format from its first bytes; the JSON streams with the "
              f"documents) {sp['open_and_parse_s']:.1f} s, {sp['inserts']} "
              f"insert_many calls {sp['insert_s']:.1f} s (BSON + server), streaming parse, decoding entries and "
              f"building documents {sp['other_s']:.1f} s")
        if load["progress"]:
            marks = load["progress"]
            step = max(1, len(marks) // 6)
            print("   progress (s, items): " + ", ".join(f"{t:.0f}:{n:,}" for t, n in marks[::step]))
        print(f"   database: dataSize {mb((ds.get('dataSize') or 0) / MB)}, storageSize "
              f"{mb((ds.get('storageSize') or 0) / MB)}, indexSize {mb((ds.get('indexSize') or 0) / MB)}; "
              f"data folder on disk {sizes['data_folder_bytes'] / MB:,.0f} MB")
        for coll in ("reference_entries", "references"):
            cs_ = sizes.get(coll) or {}
            if "size" in cs_:
                print(f"   {coll}: {cs_.get('count'):,} documents, {cs_['size'] / MB:,.0f} MB, avg "
                      f"{cs_.get('avgObjSize', 0) / 1024:.1f} kB, indexes {cs_.get('totalIndexSize', 0) / MB:.0f} MB")
        print("   largest files in the data folder: " + ", ".join(
            f"{f['file']} {f['bytes'] / MB:,.0f} MB" for f in sizes["largest_files"][:5]))
        if args.profile_load:
            results["load_profile"] = {k: load.get(k) for k in ("profile_cumulative", "profile_tottime")}
            print("   cProfile of the load (cumulative):")
            print("\n".join("     " + ln for ln in (load.get("profile_cumulative") or "").splitlines()[:45]))
            print("   cProfile of the load (tottime):")
            print("\n".join("     " + ln for ln in (load.get("profile_tottime") or "").splitlines()[:45]))

        # 3. candidates + fw-screen lookups -----------------------------------------------------------
        cands = choose_candidates(src["substitutions"], args.seed, {2: 8, 3: 12, 4: 10})
        resolve_candidate_energies(store, set_name, cands)
        results["candidates"] = cands
        by_arity = {a: sum(1 for c in cands if c["arity"] == a) for a in (2, 3, 4)}
        print(f"\n3. {len(cands)} candidates (distinct systems: {by_arity[2]} binaries, {by_arity[3]} ternaries, "
              f"{by_arity[4]} quaternaries; both families), e.g. "
              + ", ".join(f"{c['formula']} (from {c['original_formula']}, +{c['offset']})" for c in cands[::12]))
        ex_fw = explain(store, {"chemsys": {"$in": subsystems(cands[-1]["elements"])}})
        ex_naive = explain(store, {})
        results["plans"] = {"fw_screen_hull_entry_docs": ex_fw, "naive_find_all": ex_naive}
        print(f"   plan of the hull query ({cands[-1]['chemsys']}, 15 sub-systems): {ex_fw['plan']}, keys "
              f"{ex_fw['keys_examined']}, docs {ex_fw['docs_examined']}, returned {ex_fw['returned']}")
        print(f"   plan of the naive read: {ex_naive['plan']}, docs {ex_naive['docs_examined']}")
        results["loadavg"]["before_lookup"] = loadavg()
        look = run_job("lookup", work, info["pid"], launchpad=info["launchpad"], candidates=cands)
        results["loadavg"]["after_lookup"] = loadavg()
        if not look.get("ok"):
            raise RuntimeError(f"lookup failed: {look.get('error')}\n{look.get('traceback', '')}")
        results["lookup"] = look
        per = look["per_candidate"]
        cold = [per[c["id"]]["cold"]["total_s"] for c in cands]
        warm = [per[c["id"]]["warm"]["total_s"] for c in cands]
        cs, wsp = spread(cold), spread(warm)
        results["lookup_summary"] = {"cold": cs, "warm": wsp}
        parts = {k: spread([per[c["id"]]["cold"][k] for c in cands])
                 for k in ("sets_query_s", "docs_query_s", "build_s", "e_hull_s")}
        parts["other_s"] = spread([per[c["id"]]["other_s"] for c in cands])
        results["lookup_summary"]["cold_parts"] = parts
        print(f"   fresh worker process, empty cache: cold median {ms(cs['median'])}, p90 {ms(cs['p90'])}, max "
              f"{ms(cs['max'])}; warm median {ms(wsp['median'])}, p90 {ms(wsp['p90'])}, max {ms(wsp['max'])}")
        print(f"   cold, median parts: sets query {ms(parts['sets_query_s']['median'])}, hull-entry query "
              f"{ms(parts['docs_query_s']['median'])}, documents -> ComputedEntries + coverage "
              f"{ms(parts['other_s']['median'])}, PhaseDiagram build {ms(parts['build_s']['median'])}, "
              f"e_above_hull {ms(parts['e_hull_s']['median'])}")
        slow = max(cands, key=lambda c: per[c["id"]]["cold"]["total_s"])
        sc = per[slow["id"]]
        print(f"   slowest cold: {slow['formula']} ({slow['chemsys']}, {sc['hull_entries']} entries): query "
              f"{ms(sc['cold']['docs_query_s'])}, entries {ms(sc['other_s'])}, build {ms(sc['cold']['build_s'])}; "
              f"its CPU {ms(sc['cold']['cpu_s'])}, garbage collection {ms(sc['cold']['gc_s'])}")
        gc_all = sum(per[c["id"]]["cold"]["gc_s"] for c in cands)
        waits = [per[c["id"]]["cold"]["total_s"] - per[c["id"]]["cold"]["cpu_s"] for c in cands]
        print(f"   cold, all {len(cands)}: wall {sum(cold):.2f} s, CPU {sum(per[c['id']]['cold']['cpu_s'] for c in cands):.2f} s "
              f"(wall - CPU: median {ms(statistics.median(waits))}, max {ms(max(waits))}: waiting for the server "
              f"or a core), garbage collection {gc_all * 1000:.0f} ms in {look['gc_collections']} collections")
        for a in (2, 3, 4):
            sub = [c for c in cands if c["arity"] == a]
            print(f"   {a}-element systems: hull entries median "
                  f"{statistics.median(per[c['id']]['hull_entries'] for c in sub):.0f} (max "
                  f"{max(per[c['id']]['hull_entries'] for c in sub)}), cold median "
                  f"{ms(statistics.median(per[c['id']]['cold']['total_s'] for c in sub))}, max "
                  f"{ms(max(per[c['id']]['cold']['total_s'] for c in sub))}")
        print(f"   cache: {look['stats']}; worker RSS {look['rss_before_mb']:.0f} MB before, "
              f"{look['rss_after_mb']:.0f} MB after {len(cands)} hulls (peak {look['peak_rss_mb']:.0f} MB)")

        # 4a. naive: read everything per candidate -----------------------------------------------------
        pick = []
        for a in (2, 3, 4):
            pick += [c for c in cands if c["arity"] == a][: max(1, args.naive_reads // 3)]
        pick = pick[: max(args.naive_reads, 1)]
        print(f"\n4a. naive: every document of reference_entries per candidate (find({{}}), Python filter), "
              f"{len(pick)} candidates")
        results["loadavg"]["before_naive_a"] = loadavg()
        naive_a = {}
        for c in pick:
            naive_a[c["id"]] = n = naive_full_read(store, c)
            print(f"   {c['formula']:<14} {c['chemsys']:<14} read {n['docs_read']:,} docs {n['read_s']:.1f} s, "
                  f"filter {n['filter_s']:.2f} s, PhaseDiagram of {n['hull_entries']} {n['build_s']:.2f} s: "
                  f"{n['total_s']:.1f} s vs fw-screen cold {ms(per[c['id']]['cold']['total_s'])}")
        results["naive_a"] = naive_a
        results["loadavg"]["after_naive_a"] = loadavg()

        # 4b. naive: PatchedPhaseDiagram of everything ------------------------------------------------
        ppd = None
        if not args.no_ppd:
            print(f"\n4b. naive: one PatchedPhaseDiagram over all entries (fresh process, timeout {args.ppd_timeout:.0f} s)")
            results["loadavg"]["before_ppd"] = loadavg()
            ppd = run_job("ppd", work, info["pid"], timeout=args.ppd_timeout, launchpad=info["launchpad"],
                          candidates=cands)
            if not ppd.get("ok"):
                print(f"   whole set failed ({ppd.get('error')}, timed out: {ppd['timed_out']}): SUBSAMPLE = the "
                      f"entries inside the candidates' own chemical systems only")
                results["ppd_full_attempt"] = {k: ppd.get(k) for k in ("error", "timed_out", "process_wall_s",
                                                                       "sampled", "stderr_tail")}
                only = sorted({s for c in cands for s in subsystems(c["elements"])})
                ppd = run_job("ppd", work, info["pid"], timeout=args.ppd_timeout, launchpad=info["launchpad"],
                              candidates=cands, only_chemsys=only)
            results["loadavg"]["after_ppd"] = loadavg()
            results["ppd"] = ppd
            if ppd.get("ok"):
                lk = spread([v["s"] for v in ppd["per_candidate"].values()])
                results["ppd_lookup"] = lk
                print(f"   {'SUBSAMPLE ' if ppd['subsample'] else ''}{ppd['entries']:,} entries: read "
                      f"{ppd['read_s']:.1f} s, ComputedEntries {ppd['entries_s']:.1f} s, PatchedPhaseDiagram "
                      f"{ppd['build_s']:.1f} s ({ppd['spaces']} spaces); RSS after build "
                      f"{ppd['rss_after_build_mb']:.0f} MB (peak {ppd['peak_rss_mb']:.0f} MB)")
                print(f"   get_e_above_hull per candidate: median {ms(lk['median'])}, p90 {ms(lk['p90'])}, "
                      f"max {ms(lk['max'])}")
            else:
                results["errors"].append(f"ppd: {ppd.get('error')}")
                print(f"   failed: {ppd.get('error')}")

        # 5. agreement --------------------------------------------------------------------------------
        diffs_a = [abs(per[i]["cold"]["e_above_hull"] - n["e_above_hull"]) for i, n in naive_a.items()]
        diffs_w = [abs(per[c["id"]]["cold"]["e_above_hull"] - per[c["id"]]["warm"]["e_above_hull"]) for c in cands]
        diffs_b = ([abs(per[i]["cold"]["e_above_hull"] - v["e_above_hull"]) for i, v in ppd["per_candidate"].items()]
                   if ppd and ppd.get("ok") else [])
        agree = results["agreement"] = {
            "max_diff_vs_naive_full_read": max(diffs_a) if diffs_a else None, "n_naive_full_read": len(diffs_a),
            "max_diff_vs_ppd": max(diffs_b) if diffs_b else None, "n_ppd": len(diffs_b),
            "max_diff_cold_vs_warm": max(diffs_w),
            "ok": all(d <= 1e-9 for d in diffs_a + diffs_b + diffs_w) and len(diffs_a) > 0}
        ehull = [per[c["id"]]["cold"]["e_above_hull"] for c in cands]
        print(f"\n5. e_above_hull agreement (tolerance 1e-9 eV/atom): max |fw-screen - naive full read| "
              f"{agree['max_diff_vs_naive_full_read']:.2e} ({len(diffs_a)} candidates), max |fw-screen - "
              f"PatchedPhaseDiagram| {agree['max_diff_vs_ppd'] if agree['max_diff_vs_ppd'] is None else format(agree['max_diff_vs_ppd'], '.2e')}"
              f" ({len(diffs_b)}), cold vs warm {agree['max_diff_cold_vs_warm']:.1e}: "
              f"{'OK' if agree['ok'] else 'MISMATCH'}")
        print(f"   candidates' e_above_hull: {min(ehull):+.3f} .. {max(ehull):+.3f} eV/atom, "
              f"{sum(e <= 0.1 for e in ehull)} of {len(ehull)} within 0.1")

        # 6. the table --------------------------------------------------------------------------------
        na_tot = [n["total_s"] for n in naive_a.values()]
        fw_same = [per[i]["cold"]["total_s"] for i in naive_a]
        rows = [
            ("reference set loaded (entries / structures)", f"{r['entries_new']:,} / {r['new']:,}", "", ""),
            ("load_references wall (file -> active set)", f"{load['wall_s']:.1f} s", "", ""),
            ("loader peak RSS (ru_maxrss) / server peak RSS",
             f"{mb(load['peak_rss_mb'])} / {mb(load['sampled']['server']['peak_rss_mb'])}", "", ""),
            ("database dataSize / storageSize / indexSize / folder",
             f"{mb((ds.get('dataSize') or 0) / MB)} / {mb((ds.get('storageSize') or 0) / MB)} / "
             f"{mb((ds.get('indexSize') or 0) / MB)} / {mb(sizes['data_folder_bytes'] / MB)}", "", ""),
            (f"cold lookup, median per candidate ({len(naive_a)} naive-(a) candidates)",
             ms(statistics.median(fw_same)), f"{statistics.median(na_tot):.1f} s (full read)",
             f"x{statistics.median(na_tot) / statistics.median(fw_same):,.0f}"),
            (f"cold lookup median / p90 / max ({len(cands)} candidates)",
             f"{ms(cs['median'])} / {ms(cs['p90'])} / {ms(cs['max'])}", "", ""),
            (f"warm lookup median / p90 / max ({len(cands)} candidates)",
             f"{ms(wsp['median'])} / {ms(wsp['p90'])} / {ms(wsp['max'])}", "", ""),
        ]
        if ppd and ppd.get("ok"):
            lk = results["ppd_lookup"]
            tag = " SUBSAMPLE" if ppd["subsample"] else ""
            rows += [
                (f"one-off set-up: first {len(cands)} hulls vs PatchedPhaseDiagram{tag}",
                 f"{sum(cold):.1f} s", f"{ppd['read_s'] + ppd['entries_s'] + ppd['build_s']:.1f} s "
                 f"(read {ppd['read_s']:.0f} + entries {ppd['entries_s']:.0f} + build {ppd['build_s']:.0f})",
                 f"x{(ppd['read_s'] + ppd['entries_s'] + ppd['build_s']) / sum(cold):.1f}"),
                (f"warm lookup median vs ppd.get_e_above_hull{tag}", ms(wsp["median"]), ms(lk["median"]),
                 f"x{lk['median'] / wsp['median']:.2f}"),
                (f"worker RSS after all lookups vs PPD process{tag}", mb(look["rss_after_mb"]),
                 mb(ppd["rss_after_mb"]), f"x{ppd['rss_after_mb'] / look['rss_after_mb']:.1f}"),
            ]
        rows.append(("max |e_above_hull difference| (eV/atom)",
                     "", f"{agree['max_diff_vs_naive_full_read']:.1e} (a), "
                         f"{'-' if agree['max_diff_vs_ppd'] is None else format(agree['max_diff_vs_ppd'], '.1e')} (b)",
                     "OK" if agree["ok"] else "MISMATCH"))
        print(f"\n6. summary ({args.entries:,}-entry target, {src['entries']:,} entries)")
        table(rows, ("figure", "fw-screen", "naive", "ratio"))
        goals = results["goals_met"] = {
            "load <= 5 min": {"value": load["wall_s"], "goal": GOALS["load_s"], "pass": load["wall_s"] <= GOALS["load_s"]},
            "warm lookup <= 50 ms (every candidate)": {"value": wsp["max"], "p90": wsp["p90"], "goal": GOALS["warm_s"],
                                                       "pass": wsp["max"] <= GOALS["warm_s"]},
            "cold lookup <= 1 s (every candidate)": {"value": cs["max"], "p90": cs["p90"], "goal": GOALS["cold_s"],
                                                    "pass": cs["max"] <= GOALS["cold_s"]},
            "<= 1 GB per worker (RSS after all lookups)": {"value": look["rss_after_mb"], "goal": GOALS["worker_rss_mb"],
                                                           "pass": look["rss_after_mb"] <= GOALS["worker_rss_mb"]},
        }
        print("\n   goals:")
        fmt = {"load <= 5 min": lambda g: f"{g['value']:.1f} s",
               "warm lookup <= 50 ms (every candidate)": lambda g: f"max {ms(g['value'])} (p90 {ms(g['p90'])})",
               "cold lookup <= 1 s (every candidate)": lambda g: f"max {ms(g['value'])} (p90 {ms(g['p90'])})",
               "<= 1 GB per worker (RSS after all lookups)": lambda g: f"{g['value']:.0f} MB"}
        table([(k, fmt[k](g), "PASS" if g["pass"] else "FAIL") for k, g in goals.items()], ("goal", "measured", ""))
    except BaseException as exc:
        results["errors"].append(f"{type(exc).__name__}: {exc}")
        print(f"\nERROR: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stdout)
        raise
    finally:
        results["machine"]["loadavg_at_end"] = loadavg()
        results["driver_peak_rss_mb"] = maxrss_mb()
        results["total_s"] = round((dt.datetime.now().astimezone() - started).total_seconds(), 1)
        print(f"\n   load average at the end {results['machine']['loadavg_at_end']}; total "
              f"{results['total_s']:.0f} s")
        if server_started and not args.keep:
            server.stop(home)
        if args.keep:
            print(f"   kept: home {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
        save_results(json_path, results)
        sys.stdout = tee.stream
        txt_path.parent.mkdir(parents=True, exist_ok=True)
        txt_path.write_text(tee.copy.getvalue())  # save_results printed the results line into it
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_job":
        sys.exit(_run_job_main(sys.argv[2]))
    sys.exit(main())
