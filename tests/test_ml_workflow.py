"""The ML stage through FireWorks on the real server: cheap workers, then an ML worker (real CHGNet, MEGNet)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from fw_screen import state as st
from fw_screen.reporting.funnel import funnel_report
from fw_screen.orchestration.supervisor import launch_workers
from fw_screen.orchestration.fireworks import add_ml_fireworks

from tests.conftest import fworker_file, novel_ml_rows


def test_novel_candidates_get_relaxed_hull_band_gap_and_hits(launchpad, launchpad_file, store, spec, tmp_path):
    novel_ml_rows(launchpad, launchpad_file, store, spec, tmp_path)
    assert store.candidates.count_documents({"campaign": "test", "status": st.NOVEL}) == 4
    ml_fws = launchpad.fireworks.count_documents({"spec.stage": "stability"})
    assert ml_fws >= 1
    assert launch_workers(str(launchpad_file), fworker_file(tmp_path, launchpad_file, ["ml"]), 1,
                          tmp_path / "ml", sleep=1) == [0]
    states = {fw["state"] for fw in launchpad.fireworks.find({"spec.stage": {"$nin": ["dft", "dft_reference",
                                                                                     "dft_lite"]}})}
    assert states == {"COMPLETED"}
    # property.method dft_lite (the default): the last ML Firework added one DFT-lite Firework (category dft)
    # per ML-stable candidate of at most dft_lite_max_sites, and promotion waits for their gaps
    stable = [d for d in store.candidates.find({"campaign": "test", "status": st.ML_DONE})
              if d["ml"]["e_above_hull"] <= spec["ml"]["stability_threshold"]]
    assert stable, "the fixture should hold ML-stable candidates"
    lite = {fw["spec"]["candidate"]: (fw["state"], fw["spec"]["_category"])
            for fw in launchpad.fireworks.find({"spec.stage": "dft_lite"})}
    # ...that is still novel and unique after relaxation: the demo's Na3P relaxes onto MP's Na3P (mp-1598)
    # and gets none (the post-relaxation pass ran before DFT-lite was planned)
    na3p = next(d for d in stable if d["reduced_formula"] == "Na3P")
    assert na3p["ml"]["matched_reference_relaxed"] == "mp_Na-Fe-P-O:mp-1598-GGA"
    assert na3p["dft_lite"] == {"status": "skipped", "reason": "relaxed onto known mp_Na-Fe-P-O:mp-1598-GGA"}
    for d in store.candidates.find({"campaign": "test", "status": st.ML_DONE}):
        assert "duplicate_of_relaxed" in d["ml"] and d["ml"]["novel_relaxed"] is (d["ml"]["matched_reference_relaxed"] is None)
        assert d["ml"]["rmsd_relaxed"] >= 0 and "e_above_hull_self_consistent" in d["ml"]
    assert lite == {d["_id"]: ("READY", "dft") for d in stable if d["_id"] != na3p["_id"]
                    and len(d["ml"]["structure_relaxed"]["sites"]) <= spec["property"]["dft_lite_max_sites"]}
    assert all(store.candidates.find_one({"_id": c})["dft_lite"]["status"] == "queued" for c in lite)
    promoted = list(store.candidates.find({"campaign": "test", "status": st.PROMOTED}))
    assert promoted == []
    for d in promoted:
        assert d["ml"]["e_above_hull"] <= spec["promotion"]["max_e_above_hull"]
        assert d["ml"]["hits"]["band_gap"]["hit"] is True
        assert "by ML e_above_hull in condition" in d["promotion"]["reason"]
        assert d["promotion"]["rank"] <= spec["promotion"]["max_per_condition"]
    dft_fws = {fw["spec"]["candidate"]: fw["state"] for fw in launchpad.fireworks.find({"spec.stage": "dft"})}
    assert dft_fws == {d["_id"]: "READY" for d in promoted}
    for d in store.candidates.find({"campaign": "test", "status": st.ML_DONE}):  # not promoted: a rule says why
        from fw_screen.science.promotion import check
        assert not check(d, {**spec["promotion"], "band_gap_source": "dft_lite"})[0] or d["targets"]["band_gap"]["value"] in {
            p["targets"]["band_gap"]["value"] for p in promoted}

    docs = {d["reduced_formula"]: d for d in store.candidates.find({"campaign": "test"})}
    for formula in ("NaFeO2", "Na3P", "LiNiO2"):
        d = docs[formula]
        assert d["status"] in (st.ML_DONE, st.PROMOTED), (formula, d.get("ml"))
        ml = d["ml"]
        assert ml["potential"] == "chgnet" and ml["relax"]["status"] in ("converged", "not_converged")
        assert ml["relax"]["steps"] <= spec["ml"]["max_steps"]
        assert math.isfinite(ml["e_above_hull"]) and math.isfinite(ml["e_above_hull_unrelaxed"])
        assert ml["e_above_hull"] <= ml["e_above_hull_unrelaxed"] + 0.05  # relaxing does not climb the hull
        assert ml["hull"]["decomposition"]
        assert ml["band_gap"]["structure"] == "relaxed" and ml["band_gap"]["band_gap"] >= 0
        hit = ml["hits"]["band_gap"]
        assert hit["target"] == d["targets"]["band_gap"]["value"]
        assert hit["hit"] == (abs(hit["predicted"] - hit["target"]) <= spec["property"]["band_gap_tolerance"])
        assert ml["stable"] == (ml["e_above_hull"] <= spec["ml"]["stability_threshold"])
        assert d["runs"]["ml"] == 1
    outside = docs["KZnAs"]
    assert outside["status"] == st.NO_REFERENCE
    assert "K-As-Zn" in outside["ml"]["reason"] or "As-K-Zn" in outside["ml"]["reason"]
    assert "e_above_hull" not in outside["ml"]
    assert outside["ml"]["band_gap"]["structure"] == "unrelaxed"

    # each ML Firework built each chemical system's hull once in its process
    for launch in launchpad.launches.find({"action.stored_data.hulls_built_in_process": {"$exists": True}}):
        assert launch["action"]["stored_data"]["hulls_built_in_process"] <= 4

    report = funnel_report(store, "test")
    y = report["yields"]
    assert y["vun"] == 4 and y["vun_evaluated"] == 3
    stable = sum(docs[f]["ml"]["stable"] for f in ("NaFeO2", "Na3P", "LiNiO2"))
    assert y["vsun"] == stable and math.isclose(y["VSUN"], stable / y["n"])
    assert y["valid_band_gap_evaluated"] == 4
    # nothing left to promote, and the CLI prints the yields
    assert add_ml_fireworks(launchpad, store, "test") == []
    out = subprocess.run([str(Path(sys.executable).parent / "fw-screen"), "status", "-l", str(launchpad_file),
                          "-c", "test"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "VSUN" in out.stdout and "no reference 1" in out.stdout
    top = subprocess.run([str(Path(sys.executable).parent / "fw-screen"), "status", "-l", str(launchpad_file),
                          "-c", "test", "--top", "2"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0 and top.stdout.count(" test:") == 2


def test_a_whole_database_set_loaded_later_relaxes_the_no_reference_candidates(launchpad, launchpad_file, store,
                                                                               spec, tmp_path):
    """Only Li-Co-Ni-O loaded: the Na candidates end no_reference. A whole-database file loaded afterwards
    (`fw-screen references`), then `fw-screen ml`, puts them back to novel and an ML worker relaxes them
    against it; the one outside every set (KZnAs) keeps its reason."""
    import gzip
    import json

    import pandas as pd
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Structure
    from pymatgen.entries.computed_entries import ComputedEntry

    from fw_screen.science import stability
    from fw_screen.stages import load_references
    from fw_screen.orchestration.fireworks import submit
    from tests.conftest import DATA, EXAMPLES

    load_references(store, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    assert submit(launchpad, store, DATA / "crystallm_pi_ml_rows.parquet", spec)[0]["new"] == 4
    cheap = fworker_file(tmp_path, launchpad_file, ["cheap"])
    ml = fworker_file(tmp_path, launchpad_file, ["ml"])
    assert launch_workers(str(launchpad_file), cheap, 1, tmp_path / "cheap", sleep=1) == [0]
    assert launch_workers(str(launchpad_file), ml, 1, tmp_path / "ml1", sleep=1) == [0]
    docs = {d["reduced_formula"]: d for d in store.candidates.find({"campaign": "test"})}
    assert docs["LiNiO2"]["status"] in (st.ML_DONE, st.PROMOTED)
    for formula in ("NaFeO2", "Na3P", "KZnAs"):
        assert docs[formula]["status"] == st.NO_REFERENCE and "no reference entry for" in docs[formula]["ml"]["reason"]

    # a whole database in Matbench Discovery's format whose universe is Na-Fe-P-O (with the other elements'
    # entries it would claim K-As-Zn too: a whole database knows every compound of its elements)
    with gzip.open(EXAMPLES / "mp_Na-Fe-P-O.json.gz", "rt") as fh:
        raw = json.load(fh)
    path = tmp_path / "whole-na.json.gz"
    pd.DataFrame({"entry": raw}, index=pd.Index([d["entry_id"] for d in raw], name="material_id")
                 ).reset_index().to_json(path)
    exe = str(Path(sys.executable).parent / "fw-screen")
    out = subprocess.run([exe, "references", str(path), "-l", str(launchpad_file)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "whole-database" in out.stdout, out.stderr
    out = subprocess.run([exe, "ml", "-c", "test", "-l", str(launchpad_file)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "added" in out.stdout, (out.stdout, out.stderr)
    assert launch_workers(str(launchpad_file), ml, 1, tmp_path / "ml2", sleep=1) == [0]

    docs = {d["reduced_formula"]: d for d in store.candidates.find({"campaign": "test"})}
    direct = [ComputedEntry.from_dict(d) for d in raw]
    for formula in ("NaFeO2", "Na3P"):
        d = docs[formula]
        assert d["status"] in (st.ML_DONE, st.PROMOTED), (formula, d.get("ml"))
        assert d["ml_requeued"]["reason"].startswith("no reference hull for") and d["runs"]["ml"] == 2
        relaxed = Structure.from_dict(d["ml"]["structure_relaxed"])
        entry = stability.ml_entry(relaxed, d["ml"]["relax"]["energy_total"], "chgnet")
        els = {e.symbol for e in relaxed.composition.elements}
        hull = PhaseDiagram([e for e in direct if {x.symbol for x in e.composition.elements} <= els])
        assert abs(hull.get_e_above_hull(entry, allow_negative=True) - d["ml"]["e_above_hull"]) <= 1e-9
    assert docs["KZnAs"]["status"] == st.NO_REFERENCE and "As-K-Zn" in docs["KZnAs"]["ml"]["reason"]
