"""Write small test files in the formats of public whole-database reference releases (run from anywhere).

    .venv/bin/python tests/data/releases/make_releases.py

Every file is made from the Materials Project entries shipped in ``examples/`` (MP data, CC-BY 4.0) and
written next to this script.  The script is deterministic (gzip headers carry mtime 0; bz2 and parquet
carry no time stamp; it re-runs itself with PYTHONHASHSEED=0, which fixes the pickle's set order); it checks that every file reads back the way its real release is read and prints a
summary.  What each file imitates (see README.md here for the licences):

``2023-02-07-mp-computed-structure-entries_sample.json.gz``
    Matbench Discovery's MP entries release (figshare file 40344436, 154,718 entries), made as
    ``data/mp/build_phase_diagram.py`` in janosh/matbench-discovery made it:
    ``pd.DataFrame(entries, columns=["entry"])``, index = the entries' ``entry_id`` named ``material_id``,
    ``df.reset_index().to_json(path, default_handler=lambda x: x.as_dict())`` (orient "columns", pandas'
    default 10 significant digits, gzip from the suffix).  Read back with
    ``pd.read_json(path).set_index("material_id")`` and ``ComputedStructureEntry.from_dict(row.entry)``.
    Contents: a complete small database, every shipped entry whose elements are a subset of {Li, Co, O}
    or of {Na, P}.  The five elemental reference entries of those elements (Li, Co, O, Na, P in
    ``mp-elemental-reference-entries-2023-02-07.json.gz``) have the same entry_id *and* the same energy as
    an entry of the system files, so each is kept once (the system file's, which has a structure).  The
    other 84 elemental references are ComputedEntry dicts without a structure and cannot be rows of a
    ComputedStructureEntry release; they are left out (``INCLUDE_STRUCTURELESS_ELEMENT_REFS``).
``2023-02-07-ppd-mp_sample.pkl.gz``
    Matbench Discovery's ``2023-02-07-ppd-mp.pkl.gz``: ``PatchedPhaseDiagram([ComputedEntry.from_dict(d)
    for d in df.entry])`` of the file above as read back, ``pickle.dump`` into a gzip file.
``convex_hull_pbe_2023.12.29_sample.json.bz2``
    Alexandria's PBE convex-hull release (``convex_hull_pbe_2023.12.29.json.bz2``): bz2 JSON
    ``{"entries": [ComputedStructureEntry dicts]}``.  The entries of the first file, in its order, renamed
    ``agm000000001`` ... (entry_id and ``data["mat_id"]``), with ``data`` replaced by Alexandria-style keys
    (``ALEXANDRIA_DATA_KEYS``): e_above_hull and e_form from a PhaseDiagram of these entries.  Energies,
    corrections and energy_adjustments are the MP2020 ones of the MP entries, unchanged.
``mp_20_sample.csv``
    CDVAE's (and DiffCSP's) ``data/mp_20/{train,val,test}.csv``: header
    ``,material_id,formation_energy_per_atom,band_gap,pretty_formula,e_above_hull,elements,cif,spacegroup.number``.
    40 shipped entries with <= 20 sites and e_above_hull <= 0.08 eV/atom (the 20 lowest of each system
    file).  band_gap is 0.0 for every row: the shipped entries carry no band gap.
``alex_mp_20_sample.csv``
    MatterGen's Alex-MP-20 (``data-release/alex-mp/alex_mp_20.zip``: train.csv / val.csv): ``material_id``,
    ``cif`` and the property columns MatterGen's ``CrystalDataset.from_csv`` keeps.  30 other entries
    (<= 20 sites, e_above_hull <= 0.1 eV/atom, 15 per system file); properties the entries do not carry
    are empty (NaN), as sparse properties are in MatterGen's data.
``crystallm_training_sample.parquet``
    A CrystaLLM-style training table: ``Material ID``, ``CIF`` (``CifWriter(structure, symprec=0.1)``);
    30 more entries (15 per system file), none of them in the two CSVs.
``truncated_mp_entries.json.gz``, ``truncated_alexandria.json.bz2``
    The first half of the bytes of the MBD entries / Alexandria sample files.
``entries_without_energy.json.gz``
    A JSON list of 3 ComputedStructureEntry dicts whose "energy" key is removed.
``mixed_corrections.json.gz``
    A JSON list of 3 MP2020-corrected entries as shipped, then 3 other oxide entries re-corrected with
    pymatgen's legacy ``MaterialsProjectCompatibility`` (adjustments "MP Anion Correction",
    "MP Advanced Correction", ...).

Entry dicts are written as pymatgen 2023 (and the shipped files) wrote them: the installed pymatgen names
its entry classes' module ``pymatgen.core.entries`` and the compatibility module
``pymatgen.analysis.compatibility``; ``release_dict`` puts back ``pymatgen.entries.computed_entries`` and
``pymatgen.entries.compatibility`` (both still import).  The pickle cannot be rewritten so: it needs a
pymatgen that has the classes where the installed one has them.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import pickle
import sys
import warnings
from pathlib import Path

import pandas as pd
from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram, PhaseDiagram
from pymatgen.entries.compatibility import MaterialsProjectCompatibility
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent.parent.parent / "examples"
SYSTEM_FILES = ["mp_Li-Co-Ni-O.json.gz", "mp_Na-Fe-P-O.json.gz"]
ELEMENTAL_FILE = "mp-elemental-reference-entries-2023-02-07.json.gz"
#: the complete small database of the MBD / Alexandria samples: all entries inside these systems
SUBSYSTEMS = [{"Li", "Co", "O"}, {"Na", "P"}]
#: elemental references without a structure cannot be ComputedStructureEntry rows
INCLUDE_STRUCTURELESS_ELEMENT_REFS = False
#: keys put into each Alexandria-style entry's ``data`` (those of Alexandria's own that can be computed
#: here; Alexandria also has prototype_id, location, stress, total_mag, band_gap_ind, band_gap_dir,
#: dos_ef, e_phase_separation, decomposition, which the MP entries do not give)
ALEXANDRIA_DATA_KEYS = ["mat_id", "formula", "elements", "spg", "nsites", "energy_total", "energy_corrected",
                        "e_above_hull", "e_form"]
MP20_COLUMNS = ["material_id", "formation_energy_per_atom", "band_gap", "pretty_formula", "e_above_hull",
                "elements", "cif", "spacegroup.number"]
ALEX_MP20_COLUMNS = ["material_id", "cif", "chemical_system", "energy_above_hull", "space_group",
                     "dft_band_gap", "dft_bulk_modulus", "dft_mag_density", "ml_bulk_modulus", "hhi_score"]
#: the bad-input files' entries (entry ids of the shipped files)
NO_ENERGY_IDS = ["mp-22526-GGA+U", "mp-1960-GGA", "mp-19770-GGA+U"]
MP2020_IDS = ["mp-1960-GGA", "mp-19770-GGA+U", "mp-19226-GGA+U"]   # Li2O, Fe2O3, NaFePO4 as shipped
LEGACY_IDS = ["mp-22526-GGA+U", "mp-1271793-GGA+U", "mp-19009-GGA+U"]  # LiCoO2, Co3O4, NiO re-corrected
SYMPREC = 0.1
MODULE_RENAMES = {"pymatgen.core.entries": "pymatgen.entries.computed_entries",
                  "pymatgen.analysis.compatibility": "pymatgen.entries.compatibility"}


def release_dict(obj) -> dict:
    """``obj.as_dict()`` with the module paths pymatgen 2023 wrote (see the module docstring)."""
    def fix(x):
        if isinstance(x, dict):
            return {k: (MODULE_RENAMES.get(v, v) if k == "@module" else fix(v)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [fix(v) for v in x]
        return x
    return fix(obj.as_dict())


def gzip_bytes(data: bytes, name: str) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=0) as fh:
        fh.write(data)
    return buf.getvalue()


def load_shipped() -> tuple[list[list[dict]], dict[str, dict]]:
    systems = []
    for name in SYSTEM_FILES:
        with gzip.open(EXAMPLES / name, "rt") as fh:
            systems.append(json.load(fh))
    with gzip.open(EXAMPLES / ELEMENTAL_FILE, "rt") as fh:
        elemental = json.load(fh)
    return systems, elemental


def elements_of(d: dict) -> set[str]:
    return {el for el, amt in d["composition"].items() if amt > 0}


def spacegroup_number(structure) -> int:
    return SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number()


def main() -> None:
    warnings.simplefilter("ignore")
    systems, elemental = load_shipped()
    shipped = [d for system in systems for d in system]
    by_id: dict[str, dict] = {}
    for d in shipped:
        by_id.setdefault(d["entry_id"], d)
    summary: dict[str, str] = {}

    # ---------------------------------------------------------------- 1. MBD MP computed structure entries
    selected, ids, repeated = [], set(), 0
    for d in shipped:  # the O entries are in both system files: the same ids, kept once
        if any(elements_of(d) <= s for s in SUBSYSTEMS):
            if d["entry_id"] in ids:
                assert _same_entry(d, by_id[d["entry_id"]]), d["entry_id"]
                repeated += 1
                continue
            selected.append(d)
            ids.add(d["entry_id"])
    same_id, skipped = [], []
    for el, ref in sorted(elemental.items()):
        if ref["entry_id"] in ids:
            twin = by_id[ref["entry_id"]]
            assert twin["energy"] == ref["energy"] and twin["composition"] == ref["composition"], el
            assert twin["correction"] == ref["correction"] == 0, el
            same_id.append(f"{el} {ref['entry_id']}")
        elif "structure" in ref or INCLUDE_STRUCTURELESS_ELEMENT_REFS:
            selected.append(ref)
            ids.add(ref["entry_id"])
        else:
            skipped.append(el)
    assert len(ids) == len(selected)
    entries = [ComputedStructureEntry.from_dict(d) for d in selected]  # drops the files' extra keys

    mbd_path = HERE / "2023-02-07-mp-computed-structure-entries_sample.json.gz"
    df_cse = pd.DataFrame(entries, columns=["entry"])
    df_cse.index = [e.entry_id for e in df_cse.entry]
    df_cse.index.name = "material_id"
    df_cse.reset_index().to_json(mbd_path, default_handler=release_dict,
                                 compression={"method": "gzip", "mtime": 0})
    df_back = pd.read_json(mbd_path).set_index("material_id")
    assert list(df_back.columns) == ["entry"] and list(df_back.index) == [e.entry_id for e in entries]
    assert all(ComputedStructureEntry.from_dict(row.entry).entry_id == mid for mid, row in df_back.iterrows())
    summary[mbd_path.name] = (f"{len(df_back)} rows ({', '.join(f'{k} {v}' for k, v in _systems(entries))}); "
                              f"elemental refs with the same id as a system entry: {', '.join(same_id)}; "
                              f"left out (no structure): {len(skipped)}; "
                              f"entries in both system files (kept once): {repeated}")

    # ---------------------------------------------------------------- 2. MBD PatchedPhaseDiagram pickle
    ppd_path = HERE / "2023-02-07-ppd-mp_sample.pkl.gz"
    mp_computed_entries = [ComputedEntry.from_dict(dct) for dct in df_back.entry]
    ppd = PatchedPhaseDiagram(mp_computed_entries)
    buf = io.BytesIO()
    pickle.dump(ppd, buf)
    ppd_path.write_bytes(gzip_bytes(buf.getvalue(), ppd_path.name[:-3]))
    with gzip.open(ppd_path, "rb") as fh:
        ppd_back = pickle.load(fh)
    assert len(ppd_back.all_entries) == len(entries)
    summary[ppd_path.name] = f"{len(ppd_back.all_entries)} ComputedEntries, {len(ppd_back.pds)} patches"

    # ---------------------------------------------------------------- 3. Alexandria convex hull
    pd_all = PhaseDiagram(entries)
    alex_entries = []
    for i, entry in enumerate(entries, start=1):
        mat_id = f"agm{i:09d}"
        new = ComputedStructureEntry.from_dict(entry.as_dict())
        new.entry_id = mat_id
        comp = new.structure.composition
        data = {"mat_id": mat_id, "formula": comp.reduced_formula,
                "elements": sorted(el.symbol for el in comp.elements),
                "spg": spacegroup_number(new.structure), "nsites": len(new.structure),
                "energy_total": new.uncorrected_energy, "energy_corrected": new.energy,
                "e_above_hull": pd_all.get_e_above_hull(entry), "e_form": pd_all.get_form_energy_per_atom(entry)}
        assert list(data) == ALEXANDRIA_DATA_KEYS
        new.data = data
        mp_ehull = by_id[entry.entry_id]["e_above_hull"] if "e_above_hull" in by_id[entry.entry_id] else None
        assert mp_ehull is None or abs(mp_ehull - data["e_above_hull"]) < 1e-6, entry.entry_id
        alex_entries.append(new)
    alex_path = HERE / "convex_hull_pbe_2023.12.29_sample.json.bz2"
    alex_bytes = bz2.compress(json.dumps({"entries": [release_dict(e) for e in alex_entries]}).encode())
    alex_path.write_bytes(alex_bytes)
    with bz2.open(alex_path, "rt") as fh:
        alex_back = [ComputedStructureEntry.from_dict(d) for d in json.load(fh)["entries"]]
    assert [e.entry_id for e in alex_back] == [e.data["mat_id"] for e in alex_back]
    summary[alex_path.name] = (f"{len(alex_back)} entries agm000000001..agm{len(alex_back):09d} "
                               f"(file-1 order); data keys {ALEXANDRIA_DATA_KEYS}")

    # ---------------------------------------------------------------- 4.-6. CIF tables
    form_energy = {}
    for system in systems:
        sys_entries = [ComputedStructureEntry.from_dict(d) for d in system]
        pd_sys = PhaseDiagram(sys_entries)
        form_energy.update({e.entry_id: pd_sys.get_form_energy_per_atom(e) for e in sys_entries})

    def pick(system, n, max_sites, max_ehull, taken):
        cands = [d for d in system if len(d["structure"]["sites"]) <= max_sites
                 and d.get("e_above_hull", 0.0) <= max_ehull and d["data"]["material_id"] not in taken]
        cands.sort(key=lambda d: (d.get("e_above_hull", 0.0), len(d["structure"]["sites"]), d["entry_id"]))
        out = cands[:n]
        assert len(out) == n
        taken.update(d["data"]["material_id"] for d in out)
        return out

    taken: set[str] = set()
    mp20 = [d for system in systems for d in pick(system, 20, 20, 0.08, taken)]
    alex20 = [d for system in systems for d in pick(system, 15, 20, 0.1, taken)]
    crystallm = [d for system in systems for d in pick(system, 15, 40, float("inf"), taken)]

    rows = []
    for d in mp20:
        s = ComputedStructureEntry.from_dict(d).structure
        rows.append({"material_id": d["data"]["material_id"], "formation_energy_per_atom": form_energy[d["entry_id"]],
                     "band_gap": 0.0, "pretty_formula": s.composition.reduced_formula,
                     "e_above_hull": d.get("e_above_hull"),
                     "elements": str(sorted(el.symbol for el in s.composition.elements)),
                     "cif": str(CifWriter(s)), "spacegroup.number": spacegroup_number(s)})
    mp20_path = HERE / "mp_20_sample.csv"
    # CDVAE's index is that of the frame it was split from (not 0..n-1): here the entry's shipped position
    index = [shipped.index(d) for d in mp20]
    pd.DataFrame(rows, columns=MP20_COLUMNS, index=index).to_csv(mp20_path)
    df = pd.read_csv(mp20_path)
    assert list(df.columns) == ["Unnamed: 0", *MP20_COLUMNS] and len(df) == 40
    summary[mp20_path.name] = f"{len(df)} rows"

    rows = []
    for d in alex20:
        s = ComputedStructureEntry.from_dict(d).structure
        rows.append({"material_id": d["data"]["material_id"], "cif": str(CifWriter(s)),
                     "chemical_system": s.composition.chemical_system, "energy_above_hull": d.get("e_above_hull"),
                     "space_group": spacegroup_number(s)})
    alex20_path = HERE / "alex_mp_20_sample.csv"
    pd.DataFrame(rows, columns=ALEX_MP20_COLUMNS).to_csv(alex20_path, index=False)
    df = pd.read_csv(alex20_path)
    assert list(df.columns) == ALEX_MP20_COLUMNS and len(df) == 30
    summary[alex20_path.name] = f"{len(df)} rows"

    rows = [{"Material ID": d["data"]["material_id"],
             "CIF": str(CifWriter(ComputedStructureEntry.from_dict(d).structure, symprec=SYMPREC))}
            for d in crystallm]
    cllm_path = HERE / "crystallm_training_sample.parquet"
    pd.DataFrame(rows, columns=["Material ID", "CIF"]).to_parquet(cllm_path, index=False)
    df = pd.read_parquet(cllm_path)
    assert list(df.columns) == ["Material ID", "CIF"] and len(df) == 30
    summary[cllm_path.name] = f"{len(df)} rows"

    # ---------------------------------------------------------------- 7. bad inputs
    for src, name in [(mbd_path, "truncated_mp_entries.json.gz"), (alex_path, "truncated_alexandria.json.bz2")]:
        raw = src.read_bytes()
        (HERE / name).write_bytes(raw[: len(raw) // 2])
        summary[name] = f"first {len(raw) // 2} of {len(raw)} bytes of {src.name}"

    no_energy = []
    for entry_id in NO_ENERGY_IDS:
        dct = release_dict(ComputedStructureEntry.from_dict(by_id[entry_id]))
        del dct["energy"]
        no_energy.append(dct)
    name = "entries_without_energy.json.gz"
    (HERE / name).write_bytes(gzip_bytes(json.dumps(no_energy).encode(), name[:-3]))
    summary[name] = f"3 entries ({', '.join(NO_ENERGY_IDS)}) without 'energy'"

    mixed = [release_dict(ComputedStructureEntry.from_dict(by_id[i])) for i in MP2020_IDS]
    legacy = MaterialsProjectCompatibility()
    for entry_id in LEGACY_IDS:
        entry = ComputedStructureEntry.from_dict(by_id[entry_id])
        assert any("oxide" in a.name for a in entry.energy_adjustments), entry_id
        out = legacy.process_entry(entry)  # clean=True: the MP2020 adjustments are replaced
        assert out is not None and not any("MP2020" in a.name for a in out.energy_adjustments), entry_id
        mixed.append(release_dict(out))
    name = "mixed_corrections.json.gz"
    (HERE / name).write_bytes(gzip_bytes(json.dumps(mixed).encode(), name[:-3]))
    summary[name] = f"MP2020 {', '.join(MP2020_IDS)}; legacy MaterialsProjectCompatibility {', '.join(LEGACY_IDS)}"

    for path in sorted(HERE.iterdir()):
        if path.name in summary:
            print(f"{path.name:55s} {path.stat().st_size:>8,d} B  {summary[path.name]}")


def _same_entry(a: dict, b: dict) -> bool:
    keys = ("energy", "composition", "correction", "structure")
    return all(a[k] == b[k] for k in keys)


def _systems(entries) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for e in entries:
        key = "-".join(sorted(el.symbol for el in e.composition.elements))
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":  # the pickle's set/dict order follows the string hash seed
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**os.environ, "PYTHONHASHSEED": "0"})
    sys.exit(main())
