"""S.U.N. after relaxation (issue 14), on the real server: novelty and uniqueness of the ML-relaxed structures,
the self-consistent hull, the order-disorder matcher, and the metrics table checked against its definitions.

The relaxations are the demo's own (tests/data/demo_ml_done_18.json.gz: 18 CrystaLLM-pi generations relaxed by
CHGNet in the demo), so these tests need no potential; tests/test_ml_workflow.py checks the same fields where
CHGNet relaxes inside the FireWorks run.
"""

from __future__ import annotations

import gzip
import json
import math
import random

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry
from pymatgen.io.cif import CifWriter
from scipy.stats import wasserstein_distance

from fw_screen.stages import hulls
from fw_screen.science import promotion
from fw_screen.science import stability
from fw_screen import state as st
from fw_screen.science import uniqueness as uq
from fw_screen.reporting.tables import campaign_metrics, format_metrics
from fw_screen.stages import load_references, run_ingest, run_relaxed_uniqueness, run_uniqueness, run_validity
from fw_screen.spec import load_spec

from tests.conftest import DATA, EXAMPLES

SYSTEM_FILES = ("mp_Li-Co-Ni-O.json.gz", "mp_Na-Fe-P-O.json.gz", "mp-elemental-reference-entries-2023-02-07.json.gz")


@pytest.fixture(scope="module")
def demo_relaxed():
    with gzip.open(DATA / "demo_ml_done_18.json.gz", "rt") as fh:
        return json.load(fh)


def _ml_done_doc(rec: dict, campaign: str, seq: int, targets: dict | None = None) -> dict:
    """A candidate as the ML stage left it before the post-relaxation fields existed (what an old campaign
    holds): generated cell, relaxed cell, hull distance, space groups."""
    gen = Structure.from_dict(rec["structure_reduced"])
    relaxed = Structure.from_dict(rec["structure_relaxed"])
    comp = gen.composition
    sg0 = stability._space_group(gen, 0.1)
    sg1 = stability._space_group(relaxed, 0.1)
    return {"_id": rec["_id"], "campaign": campaign, "seq": seq, "status": st.ML_DONE,
            "formula": comp.formula.replace(" ", ""), "reduced_formula": comp.reduced_formula,
            "chemsys": rec["chemsys"], "elements": sorted(rec["chemsys"].split("-")), "nsites": len(gen),
            "structure_reduced": rec["structure_reduced"], "targets": targets or {},
            "ml": {"structure_relaxed": rec["structure_relaxed"], "e_above_hull": rec["e_above_hull"],
                   "stable": rec["e_above_hull"] <= 0.1,
                   "hull": {"energy_per_atom": rec["entry_energy_per_atom"], "e_above_hull": rec["e_above_hull"]},
                   "relax": {"status": "converged", "spacegroup_number_initial": sg0[1],
                             "spacegroup_number_final": sg1[1]}}}


@pytest.fixture
def demo_campaign(store, demo_relaxed):
    """The demo's 18 relaxed candidates in a campaign on the three examples/ reference files."""
    for f in SYSTEM_FILES:
        load_references(store, EXAMPLES / f)
    spec = load_spec(campaign="relaxed")
    store.register_campaign(spec)
    store.candidates.insert_many([_ml_done_doc(r, "relaxed", i) for i, r in enumerate(demo_relaxed)])
    return spec


def _copy(rec: dict, new_id: str, d_e_hull: float, scale: float) -> dict:
    """Another candidate relaxed onto the same structure as ``rec`` (cell scaled, a little higher or lower)."""
    out = json.loads(json.dumps(rec))
    out["_id"] = new_id
    s = Structure.from_dict(rec["structure_relaxed"])
    s.scale_lattice(s.volume * scale)
    s.perturb(0.01, 0.0)
    out["structure_relaxed"] = s.as_dict()
    out["e_above_hull"] = rec["e_above_hull"] + d_e_hull
    out["entry_energy_per_atom"] = rec["entry_energy_per_atom"] + d_e_hull
    return out


def test_demo_relaxations_onto_known_phases_and_onto_each_other(store, demo_campaign, demo_relaxed):
    """The demo's 17 distinct relaxed phases, plus two planted candidates that relaxed onto the same structure
    as a demo one: Sr fcc again 0.01 eV/atom higher (a duplicate of the demo's), LiNiO2 again 0.01 lower (the
    demo's becomes the duplicate: the representative is the lowest above the hull, not the first generated)."""
    by_formula = {(r["reduced_formula"], len(r["structure_relaxed"]["sites"])): r for r in demo_relaxed}
    sr, lini = by_formula[("Sr", 1)], by_formula[("LiNiO2", 8)]
    planted = [_copy(sr, "planted:Sr-again", +0.01, 1.03), _copy(lini, "planted:LiNiO2-lower", -0.01, 0.98)]
    store.candidates.insert_many([_ml_done_doc(r, "relaxed", 100 + i) for i, r in enumerate(planted)])
    counts = run_relaxed_uniqueness(store, "relaxed")
    assert counts["backfilled"] == 20 and counts["relaxed"] == 20
    docs = {d["_id"]: d for d in store.candidates.find({"campaign": "relaxed"})}
    refs = {d["_id"]: d for d in store.references.find({}, {"structure": 1, "reduced_formula": 1})}
    matcher = uq.make_matcher(demo_campaign["uniqueness"])
    # the case: the demo's Na3P was novel as generated and relaxes onto MP's known Na3P
    na3p = docs["demo:ec05a51fea3481ac2451"]["ml"]
    assert na3p["matched_reference_relaxed"] == "mp_Na-Fe-P-O:mp-1598-GGA" and na3p["novel_relaxed"] is False
    # every verdict against StructureMatcher.fit on the full structures (no match keys, no cached reduction)
    for cid, d in docs.items():
        ml = d["ml"]
        relaxed = Structure.from_dict(ml["structure_relaxed"])
        same_formula = [r for r in refs.values() if r["reduced_formula"] == relaxed.composition.reduced_formula]
        truth = {r["_id"] for r in same_formula if matcher.fit(relaxed, Structure.from_dict(r["structure"]))}
        assert (ml["matched_reference_relaxed"] in truth) if truth else ml["matched_reference_relaxed"] is None, cid
        assert ml["novel_relaxed"] is (not truth)
        assert ml["rmsd_relaxed"] >= 0 and math.isfinite(ml["rmsd_relaxed"])
    # relaxed duplicates: each points at a member of its group lowest above the hull, never at a duplicate
    dup = {cid: d["ml"]["duplicate_of_relaxed"] for cid, d in docs.items()}
    for cid, rep in dup.items():
        if rep is None:
            continue
        a, b = (Structure.from_dict(docs[x]["ml"]["structure_relaxed"]) for x in (cid, rep))
        assert matcher.fit(a, b) and dup[rep] is None
        assert docs[rep]["ml"]["e_above_hull"] <= docs[cid]["ml"]["e_above_hull"]
    for cid, d in docs.items():  # two representatives never match each other
        for other in docs:
            if other < cid and dup[cid] is None and dup[other] is None and \
                    d["reduced_formula"] == docs[other]["reduced_formula"]:
                assert not matcher.fit(Structure.from_dict(d["ml"]["structure_relaxed"]),
                                       Structure.from_dict(docs[other]["ml"]["structure_relaxed"])), (cid, other)
    assert dup["planted:Sr-again"] == sr["_id"] and dup["planted:LiNiO2-lower"] is None
    assert dup[lini["_id"]] == "planted:LiNiO2-lower"
    assert counts["duplicates"] == sum(v is not None for v in dup.values()) == 2  # the demo's 17 are distinct
    # promotion passes relaxed-known and relaxed-duplicate candidates over, saying why
    rules = {**demo_campaign["promotion"], "band_gap_source": "ml", "require_converged": False}
    ok, why = promotion.check(docs["demo:ec05a51fea3481ac2451"], rules)
    assert not ok and why[0] == "relaxed onto known mp_Na-Fe-P-O:mp-1598-GGA"
    some_dup = next(cid for cid, rep in dup.items() if rep)
    assert promotion.check(docs[some_dup], rules)[1][0] == f"relaxed duplicate of {dup[some_dup]}"
    # the table shows what changed after relaxation
    from fw_screen.reporting.tables import hull_table
    rows = {r["id"]: r for r in hull_table(store, "relaxed")}
    assert rows["demo:ec05a51fea3481ac2451"]["reason"] == "relaxed onto known mp_Na-Fe-P-O:mp-1598-GGA"
    assert rows[some_dup]["duplicate_of_relaxed"] == dup[some_dup]
    # nothing changed: the second pass writes nothing
    again = run_relaxed_uniqueness(store, "relaxed")
    assert again.get("unchanged") is True


def test_self_consistent_hull_against_pymatgen_with_candidates_joined(store, demo_campaign, demo_relaxed):
    """Two candidates of one system: one below the reference hull moves the other above; every stored
    self-consistent value equals a PhaseDiagram built here from the reference entries and the joiners."""
    base = next(r for r in demo_relaxed if r["reduced_formula"] == "NaFePO4")
    low = json.loads(json.dumps(base))
    low["_id"] = "planted:NaFePO4-low"
    # the same composition 0.05 eV/atom below the reference hull, in a cell nobody has (strained by 30 %)
    s = Structure.from_dict(base["structure_relaxed"])
    s.apply_strain([0.3, 0.0, 0.0])
    low["structure_relaxed"] = s.as_dict()
    low["entry_energy_per_atom"] = base["entry_energy_per_atom"] - base["e_above_hull"] - 0.05
    low["e_above_hull"] = -0.05
    store.candidates.insert_one(_ml_done_doc(low, "relaxed", 99))
    run_relaxed_uniqueness(store, "relaxed")
    docs = {d["_id"]: d for d in store.candidates.find({"campaign": "relaxed"})}
    assert docs["planted:NaFePO4-low"]["ml"]["novel_relaxed"] is True
    assert docs["planted:NaFePO4-low"]["ml"]["duplicate_of_relaxed"] is None
    before = docs[base["_id"]]["ml"]["e_above_hull"]
    after = docs[base["_id"]]["ml"]["e_above_hull_self_consistent"]
    assert after == pytest.approx(before + 0.05, abs=1e-6)  # judged against the other candidate now
    assert docs[base["_id"]]["ml"]["e_above_hull"] == before  # the reference-only value is kept beside it

    def entry(d):
        comp = Structure.from_dict(d["structure_reduced"]).composition
        return ComputedEntry(comp, d["ml"]["hull"]["energy_per_atom"] * comp.num_atoms, entry_id=d["_id"])

    joiners = [entry(d) for d in docs.values() if d["ml"]["e_above_hull"] <= 0.1 and d["ml"]["novel_relaxed"]
               and d["ml"]["duplicate_of_relaxed"] is None]
    for cid, d in docs.items():
        pd_ref = hulls.reference_hull(store, d["elements"])[0]
        mine = [j for j in joiners if {e.symbol for e in j.composition.elements} <= set(d["elements"])]
        from pymatgen.analysis.phase_diagram import PhaseDiagram
        pd = PhaseDiagram(list(pd_ref.all_entries) + mine)  # all entries, not only the stable ones
        want = pd.get_e_above_hull(entry(d), allow_negative=True)
        assert d["ml"]["e_above_hull_self_consistent"] == pytest.approx(want, abs=1e-9), cid
        assert d["ml"]["e_above_hull_self_consistent"] <= d["ml"]["e_above_hull"] + 1e-9 or \
            d["ml"]["e_above_hull_self_consistent"] >= 0  # joining only lowers the hull


# ------------------------------------------------------------------------------- order-disorder matcher
def _rocksalt(species: list) -> Structure:
    coords = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
              [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]
    return Structure(Lattice.cubic(4.2), species + ["O"] * 4, coords)


def test_planted_ordered_approximant_is_known_only_with_the_disordered_matcher(store, tmp_path):
    """A partially occupied reference (rocksalt Li0.5Co0.5O) and a generated ordered approximant of it (the
    L1_0-like Li/Co layering, perturbed and strained): novel with pymatgen's matcher as is, known with
    ``uniqueness.matcher: disordered``; another LiCoO2 arrangement does not match it."""
    ref_dir = tmp_path / "icsd_like"
    ref_dir.mkdir()
    disordered = _rocksalt([{"Li": 0.5, "Co": 0.5}] * 4)
    CifWriter(disordered).write_file(ref_dir / "LiCoO2_disordered_rocksalt.cif")
    r = load_references(store, ref_dir, set_name="solid-solutions")
    assert r["new"] == 1 and r["covers"] == "structures-only"
    assert store.references.find_one({"set": "solid-solutions"})["ordered"] is False
    gen = tmp_path / "gen"
    gen.mkdir()
    approximant = _rocksalt(["Li", "Li", "Co", "Co"])
    approximant.perturb(0.04, 0.0, seed=0)  # seeded: 6 of 60 random draws make the cell invalid (space group)
    approximant.apply_strain([0.02, 0.0, -0.03])
    CifWriter(approximant, symprec=0.1).write_file(gen / "approximant.cif")
    verdict = {}
    for matcher in ("ordered", "disordered"):
        spec = load_spec(campaign=f"m-{matcher}", dedup_shards=1)
        spec.uniqueness.matcher = matcher
        run_ingest(store, gen, spec)
        for b in store.pending_batches(spec["campaign"]):
            run_validity(store, spec["campaign"], b)
        run_uniqueness(store, spec["campaign"], 0)
        verdict[matcher] = {d["source"]["file"]: (d["status"], d.get("matched_reference"))
                            for d in store.candidates.find({"campaign": spec["campaign"]})}
    ref_id = "solid-solutions:LiCoO2_disordered_rocksalt"
    assert verdict["disordered"]["approximant.cif"][1] == ref_id
    assert verdict["ordered"]["approximant.cif"] == (st.NOVEL, None)
    assert verdict["disordered"]["approximant.cif"][0] == st.KNOWN
    assert verdict["disordered"]["approximant.cif"][1].startswith("solid-solutions:")
    # not everything of that composition matches: a CsCl-like Li/Co arrangement does not
    other = Structure(Lattice.cubic(3.1), ["Li", "Co", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0]])
    order = uq.disordered_matcher(load_spec()["uniqueness"])
    assert not uq.fits_disordered(order, uq.reduce_structure(other), uq.reduce_structure(disordered))
    assert uq.fits_disordered(order, uq.reduce_structure(approximant), uq.reduce_structure(disordered))
    # the same comparator on the full structures, without fw-screen's keys or reductions
    from pymatgen.analysis.structure_matcher import OrderDisorderElementComparator, StructureMatcher
    sm = StructureMatcher(comparator=OrderDisorderElementComparator(), attempt_supercell=True)
    assert sm.fit(approximant, disordered) and not StructureMatcher().fit(approximant, disordered)


# -------------------------------------------------------------------------------------------- metrics
def _python_metrics(docs: list[dict], thresholds: list[float], reference: dict) -> dict:
    """Every metric by its definition (fw_screen/science/metrics.py states them), one document at a time."""
    def num(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def rate(k, n):
        return k / n if n else None

    n = len(docs)
    valid = [d for d in docs if d["status"] in st.VALID_OR_LATER]
    unique = [d for d in docs if d["status"] in (st.KNOWN, *st.NOVEL_OR_LATER)]
    novel = [d for d in docs if d["status"] in st.NOVEL_OR_LATER]
    relaxed = [d for d in docs if d["status"] in st.ML_DONE_OR_LATER]
    checked = [d for d in relaxed if "duplicate_of_relaxed" in (d.get("ml") or {})]
    nu = [d for d in checked if d["ml"].get("novel_relaxed") is True and d["ml"].get("duplicate_of_relaxed") is None]
    out = {"n": n, "V": rate(len(valid), n), "VU": rate(len(unique), n), "VUN": rate(len(novel), n)}
    for t in thresholds:
        out[f"VSUN@{t:g}"] = rate(sum(num((d.get("ml") or {}).get("e_above_hull")) and d["ml"]["e_above_hull"] <= t
                                      for d in novel), n)
        out[f"SUN@{t:g}"] = rate(sum(num(d["ml"].get("e_above_hull")) and d["ml"]["e_above_hull"] <= t for d in nu), n)
        out[f"SUN_sc@{t:g}"] = rate(sum(num(d["ml"].get("e_above_hull_self_consistent"))
                                        and d["ml"]["e_above_hull_self_consistent"] <= t for d in nu), n)
    out["relaxed_known_rate"] = rate(sum(d["ml"].get("novel_relaxed") is False for d in checked), len(checked))
    out["relaxed_duplicate_rate"] = rate(sum(bool(d["ml"].get("duplicate_of_relaxed")) for d in checked), len(checked))
    out["composition_novelty"] = rate(sum(d.get("novel_composition") is True for d in unique), len(unique))
    rmsd = [d["ml"]["rmsd_relaxed"] for d in relaxed if num(d["ml"].get("rmsd_relaxed"))]
    out["rmsd_relaxed_mean"] = sum(rmsd) / len(rmsd) if rmsd else None
    sg = [(d["ml"]["relax"]["spacegroup_number_initial"], d["ml"]["relax"]["spacegroup_number_final"])
          for d in relaxed if num((d["ml"].get("relax") or {}).get("spacegroup_number_initial"))
          and num((d["ml"].get("relax") or {}).get("spacegroup_number_final"))]
    out["spacegroup_kept"] = rate(sum(a == b for a, b in sg), len(sg))

    def passed(d, check):
        return (((d.get("validity") or {}).get("checks") or {}).get(check) or {}).get("passed") is True

    out["validity_composition"] = rate(sum(passed(d, "smact") for d in docs), n)
    out["validity_structure"] = rate(sum(passed(d, "min_distance") and passed(d, "volume") for d in docs), n)
    out["validity_both"] = rate(sum(passed(d, "smact") and passed(d, "min_distance") and passed(d, "volume")
                                    for d in docs), n)
    dens = [d["density"] for d in valid if num(d.get("density"))]
    nel = [len(d["elements"]) for d in valid if isinstance(d.get("elements"), list)]
    out["wdist_density"] = wasserstein_distance(dens, reference["density"]) if dens else None
    out["wdist_nelements"] = wasserstein_distance(nel, reference["nelements"]) if nel else None
    for name, get in (("ml", lambda d: ((d.get("ml") or {}).get("band_gap") or {}).get("band_gap")),
                      ("dft_lite", lambda d: ((d.get("dft_lite") or {}).get("band_gap") or {}).get("band_gap")),
                      ("dft", lambda d: ((d.get("dft") or {}).get("band_gap") or {}).get("band_gap"))):
        errs = [abs(get(d) - d["targets"]["band_gap"]["value"]) for d in docs if num(get(d))
                and num(((d.get("targets") or {}).get("band_gap") or {}).get("value"))]
        out[f"band_gap_mae_{name}"] = sum(errs) / len(errs) if errs else None
    pairs = [(d["ml"]["e_above_hull"] <= 0, d["dft"]["e_above_hull"] <= 0) for d in docs
             if d["status"] == st.DFT_DONE and num((d.get("dft") or {}).get("e_above_hull"))
             and num((d.get("ml") or {}).get("e_above_hull"))]
    tp = sum(a and b for a, b in pairs)
    fp = sum(a and not b for a, b in pairs)
    fn = sum(b and not a for a, b in pairs)
    out["dft_n"] = len(pairs)
    p, r = rate(tp, tp + fp), rate(tp, tp + fn)
    out["F1"] = None if p is None or r is None else (2 * p * r / (p + r) if p + r else 0.0)
    prevalence = rate(tp + fn, len(pairs))
    out["DAF"] = p / prevalence if p is not None and prevalence else None
    return out


def _same(a, b, key):
    if a is None or b is None:
        assert a is None and b is None, (key, a, b)
    else:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (key, a, b)


def _seeded_campaign(store, n: int = 400, seed: int = 7) -> list[dict]:
    """Documents covering every branch the metrics read (each status; missing, NaN and numeric values; DFT
    results on both sides of 0), written straight into a campaign: the aggregation's definitions test."""
    rng = random.Random(seed)
    statuses = [st.INVALID, st.VALID, st.DUPLICATE, st.KNOWN, st.NOVEL, st.NO_REFERENCE, st.ML_FAILED, st.ML_DONE,
                st.PROMOTED, st.DFT_DONE, st.DFT_FAILED]
    docs = []
    for i in range(n):
        status = rng.choice(statuses)
        cond = rng.choice([0.681, 1.547, 3.72, None])
        d = {"_id": f"seed:{i}", "campaign": "seeded", "seq": i, "status": status,
             "validity": {"checks": {c: {"passed": rng.random() < 0.8} for c in ("smact", "min_distance", "volume")
                                     if rng.random() < 0.95}}}
        if cond is not None:
            d["targets"] = {"band_gap": {"value": cond}}
        if status != st.INVALID or rng.random() < 0.3:
            d["density"] = rng.choice([rng.uniform(1, 9), float("nan"), None])
            d["elements"] = rng.sample(["Li", "Na", "O", "P", "Fe", "Co"], rng.randint(1, 4))
        if status in (st.KNOWN, *st.NOVEL_OR_LATER):
            d["novel_composition"] = rng.random() < 0.4 if status != st.KNOWN else False
        if status in st.NOVEL_OR_LATER and status != st.NOVEL:
            ml = {"e_above_hull": rng.choice([rng.uniform(-0.1, 0.4), float("nan")]) if status != st.NO_REFERENCE
                  else None, "band_gap": {"band_gap": rng.choice([rng.uniform(0, 5), None])}}
            if status in st.ML_DONE_OR_LATER:
                ml["e_above_hull"] = rng.uniform(-0.1, 0.4)
                ml["relax"] = {"spacegroup_number_initial": rng.choice([1, 12, 225]),
                               "spacegroup_number_final": rng.choice([1, 12, 225, None])}
                ml["rmsd_relaxed"] = rng.choice([rng.uniform(0, 1), None])
                if rng.random() < 0.9:  # the post-relaxation pass has run on most
                    known = rng.random() < 0.2
                    ml["novel_relaxed"] = not known
                    ml["matched_reference_relaxed"] = "ref:x" if known else None
                    ml["duplicate_of_relaxed"] = rng.choice([None, None, "seed:0"])
                    ml["e_above_hull_self_consistent"] = ml["e_above_hull"] + rng.uniform(0, 0.05)
            d["ml"] = ml
        if status in st.ML_DONE_OR_LATER and rng.random() < 0.5:
            d["dft_lite"] = {"band_gap": {"band_gap": rng.uniform(0, 5)}}
        if status == st.DFT_DONE:
            d["dft"] = {"e_above_hull": rng.choice([rng.uniform(-0.05, 0.2), None]),
                        "band_gap": {"band_gap": rng.uniform(0, 5)}}
        docs.append(d)
    store.candidates.insert_many(docs)
    return docs


def test_metrics_equal_their_definitions_applied_to_every_document(store, demo_campaign):
    store.register_campaign(load_spec(campaign="seeded"))
    _seeded_campaign(store)
    run_relaxed_uniqueness(store, "relaxed")
    for campaign in ("seeded", "relaxed"):
        m = campaign_metrics(store, campaign)
        docs = list(store.candidates.find({"campaign": campaign}))
        ref = store.reference_distribution()
        assert len(ref["nelements"]) == store.references.count_documents({})
        keys = [d["key"] for d in m["definitions"]]
        want = _python_metrics(docs, m["thresholds"], ref)
        assert set(want) == set(keys)
        for key in keys:
            _same(m["overall"][key], want[key], key)
        conds = {c["condition"] for c in m["by_condition"]}
        assert conds == {((d.get("targets") or {}).get("band_gap") or {}).get("value") for d in docs}
        for c in m["by_condition"]:
            sub = [d for d in docs if ((d.get("targets") or {}).get("band_gap") or {}).get("value") == c["condition"]]
            w = _python_metrics(sub, m["thresholds"], ref)
            for key in keys:
                _same(c[key], w[key], f"{key} @ {c['condition']}")
    seeded = campaign_metrics(store, "seeded")["overall"]
    assert seeded["dft_n"] > 5 and seeded["F1"] is not None and seeded["DAF"] is not None
    relaxed = campaign_metrics(store, "relaxed")
    assert relaxed["overall"]["relaxed_known_rate"] > 0 and relaxed["relaxed_pass"]["pending"] == 0
    # the table names each metric's paper; JSON carries the same numbers
    text = format_metrics(relaxed)
    for source in ("CrystaLLM-pi", "MatterGen", "DiffCSP", "Matbench Discovery"):
        assert source in text
    again = json.loads(format_metrics(relaxed, "json"))
    assert again["overall"]["SUN@0.1"] == pytest.approx(relaxed["overall"]["SUN@0.1"])


def test_metrics_cli_prints_the_table(launchpad_file, store, demo_campaign):
    import subprocess
    import sys
    from pathlib import Path

    run_relaxed_uniqueness(store, "relaxed")
    exe = str(Path(sys.executable).parent / "fw-screen")
    out = subprocess.run([exe, "metrics", "relaxed", "-l", str(launchpad_file)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| MSUN (e_hull <= 0.1) |" in out.stdout and "relaxed onto a known phase" in out.stdout
    bad = subprocess.run([exe, "metrics", "nope", "-l", str(launchpad_file)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_displacement_rmsd_is_the_rms_atom_displacement():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    moved = s.copy()
    moved.translate_sites([1], [0.1, 0, 0], frac_coords=False)  # Cl by 0.1 A
    moved.translate_sites([0, 1], [0.37, 0.2, -0.9], frac_coords=True)  # a rigid shift (and a wrap) costs nothing
    # two atoms, displacements +-0.05 A about their mean: RMS 0.05 A
    assert uq.displacement_rmsd(s, moved) == pytest.approx(0.05, abs=1e-9)
    with pytest.raises(ValueError):
        uq.displacement_rmsd(s, Structure(Lattice.cubic(4.0), ["Na"], [[0, 0, 0]]))
    assert np.isclose(uq.displacement_rmsd(s, s), 0.0)
