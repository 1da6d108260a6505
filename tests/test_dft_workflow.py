"""The DFT stage through FireWorks on the real server with real pw.x: promotion of ML-done candidates,
reference phases computed once and shared, DFT band gaps and a consistent DFT hull in the Li-O system.

Two promoted Li-O candidates (antifluorite Li2O, strained; and an anti-ReO3 "Li3O") need the same three
reference phases (Li metal, the O2 molecule, MP's Li2O): each is computed exactly once although two
candidates need it.  k-point densities and the molecule box are reduced from production to keep the
default test run short; the checks below hold at these settings.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure

from fw_screen import state as st
from fw_screen.stages import load_references, run_promotion
from fw_screen.orchestration.supervisor import launch_workers
from fw_screen.spec import load_spec
from fw_screen.orchestration.fireworks import dft_workflow, promote

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_pw = pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x (Quantum ESPRESSO) is not on PATH")


def li2o(a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]]
                                     ).get_primitive_structure()


def li3o_anti_reo3(a: float = 3.9) -> Structure:
    return Structure(Lattice.cubic(a), ["O", "Li", "Li", "Li"], [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])


def ml_done_doc(cid: str, structure: Structure, e_hull: float, target: float, gap: float) -> dict:
    """A candidate as the ML stage leaves it (only the fields promotion and DFT read)."""
    return {"_id": cid, "campaign": "dft", "status": st.ML_DONE, "seq": 0, "reduced_formula":
            structure.composition.reduced_formula, "elements": sorted({e.symbol for e in structure.composition}),
            "nsites": len(structure), "targets": {"band_gap": {"value": target, "unit": "eV"}},
            "structure_reduced": structure.as_dict(),
            "ml": {"e_above_hull": e_hull, "relax": {"status": "converged"}, "structure_relaxed": structure.as_dict(),
                   "band_gap": {"band_gap": gap}, "hits": {"band_gap": {"hit": abs(gap - target) <= 0.5}}}}


@pytest.fixture
def dft_spec():
    return load_spec(campaign="dft", dft={"qe": {"kppa": 300, "nscf_kppa": 500, "molecule_box": 7.0},
                                          "reference_polymorph_tolerance": 0.02},
                     promotion={"max_per_condition": 2},
                     property={"method": "ml"})  # the DFT chain on ML hits (tests/test_dft_lite.py: the DFT-lite tier)


def _dft_fworker(tmp_path: Path, launchpad_file: Path) -> str:
    path = tmp_path / "fworker_dft.yaml"
    path.write_text(yaml.safe_dump({"name": "dft-test", "category": ["dft"], "query": "{}",
                                    "env": {"db_file": str(launchpad_file), "pseudo_dir": str(DATA / "pseudo"),
                                            "pw_cmd": "pw.x", "mpi_cmd": ""}}))
    return str(path)


@needs_pw
def test_li_o_candidates_share_references_and_get_dft_hulls(launchpad, launchpad_file, store, dft_spec, tmp_path):
    load_references(store, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    store.register_campaign(dft_spec)
    docs = [ml_done_doc("dft:li2o", li2o(4.70), 0.01, 5.0, 4.6),
            ml_done_doc("dft:li3o", li3o_anti_reo3(), 0.05, 0.7, 0.5),
            ml_done_doc("dft:far", li2o(4.62), 0.50, 5.0, 4.6)]  # above the promotion threshold
    store.candidates.insert_many(docs)

    summary = run_promotion(store, "dft")
    assert sorted(summary["promoted"]) == ["dft:li2o", "dft:li3o"]
    far = store.candidates.find_one({"_id": "dft:far"})
    assert far["status"] == st.ML_DONE
    assert run_promotion(store, "dft")["promoted"] == []  # idempotent: nothing promoted twice

    wf = dft_workflow(store, summary["promoted"], db_file=str(launchpad_file))
    refs = [fw for fw in wf.fws if fw.spec["stage"] == "dft_reference"]
    assert sorted(fw.spec["system"] for fw in refs) == ["Li-O"] * 3  # one Firework per distinct phase
    launchpad.add_wf(wf)
    assert launch_workers(str(launchpad_file), _dft_fworker(tmp_path, launchpad_file), 1, tmp_path / "dft",
                          sleep=1) == [0]
    states = [fw["state"] for fw in launchpad.fireworks.find({}, {"state": 1})]
    assert states == ["COMPLETED"] * len(states)

    # every reference computed exactly once, under one protocol, although both candidates need all three
    ref_docs = list(store.dft_references.find())
    assert sorted(r["formula"] for r in ref_docs) == ["Li", "Li2O", "O2"]
    assert {r["protocol_id"] for r in ref_docs} == {ref_docs[0]["protocol_id"]}
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in ref_docs)
    ran = [launch["action"]["stored_data"] for launch in launchpad.launches.find({"action.stored_data.ref_id": {
        "$exists": True}})]
    assert sorted(d["status"] for d in ran).count("done") == 3  # the other claims were skipped, not rerun
    o2 = next(r for r in ref_docs if r["formula"] == "O2")
    assert o2["kind"] == "molecule" and o2["result"]["total_magnetization"] == pytest.approx(2.0, abs=0.1)

    a = store.candidates.find_one({"_id": "dft:li2o"})
    b = store.candidates.find_one({"_id": "dft:li3o"})
    for d in (a, b):
        assert d["status"] == st.DFT_DONE and d["runs"]["dft"] == 1, d.get("dft", {}).get("reason")
        assert d["dft"]["protocol_id"] == ref_docs[0]["protocol_id"]
        assert d["dft"]["hull_status"] == "done", d["dft"].get("hull_reason")
        assert math.isfinite(d["dft"]["e_above_hull"]) and math.isfinite(d["dft"]["e_above_hull_raw"])
    # strained antifluorite relaxes back onto the computed Li2O reference: on the hull within numerical noise
    assert abs(a["dft"]["e_above_hull"]) < 0.01
    assert [x["formula"] for x in a["dft"]["decomposition"]] == ["Li2O"]
    assert 4.0 < a["dft"]["band_gap"]["band_gap"] < 6.0  # PBE Li2O ~5 eV (MP 4.99 eV)
    assert a["dft"]["structure_relaxed"]["lattice"]["volume"] == pytest.approx(
        li2o(4.63).volume, rel=0.05)  # PBE a ~4.63 A
    # anti-ReO3 Li3O: above the hull, decomposing to Li2O + Li; the oxide correction is the same per O atom
    # on both sides of that reaction, so it cancels (tests/test_dft_hull.py covers the O-rich side)
    assert b["dft"]["e_above_hull"] > 0.05
    assert {x["formula"] for x in b["dft"]["decomposition"]} == {"Li2O", "Li"}
    assert b["dft"]["e_above_hull"] == pytest.approx(b["dft"]["e_above_hull_raw"], abs=1e-6)
    # ML vs DFT recorded for the analysis
    assert a["dft"]["ml_vs_dft"]["e_above_hull_ml"] == 0.01
    assert a["dft"]["hits"]["band_gap"]["target"] == 5.0

    # the CLI shows it; promote by hand finds nothing new and adds no Fireworks
    again = promote(launchpad, store, "dft")
    assert again["promoted"] == [] and again["dft_fireworks"] == 0
    out = subprocess.run([str(Path(sys.executable).parent / "fw-screen"), "status", "-l", str(launchpad_file),
                          "-c", "dft", "--dft"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "DFT: promoted 2" in out.stdout and "dft:li3o" in out.stdout

    # the HTML report draws the Li-O phase diagram and the ML-vs-DFT parity from these real DFT results
    from fw_screen.reporting.report import build_report

    report = build_report(store, "dft", tmp_path / "report_dft.html", chemical_space=False)
    assert {"parity", "phase_diagrams", "candidates"} <= set(report["drawn"]), report["skipped"]
    assert report["phase_diagrams"] == ["Li-O"]
    page = (tmp_path / "report_dft.html").read_text()
    assert "dft:li3o" in page and "Li2O" in page


@needs_pw
def test_missing_pseudopotential_fails_alone(launchpad, launchpad_file, store, dft_spec, tmp_path):
    """A promoted candidate whose element has no pseudopotential fails with the reason; its batch-mate
    (same workflow) completes."""
    store.register_campaign(dft_spec)
    load_references(store, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    co = Structure(Lattice.hexagonal(2.5, 4.03), ["Co", "Co"], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    li = Structure(Lattice([[-1.72, 1.72, 1.72], [1.72, -1.72, 1.72], [1.72, 1.72, -1.72]]), ["Li"], [[0, 0, 0]])
    store.candidates.insert_many([ml_done_doc("dft:co", co, 0.0, 0.07, 0.0), ml_done_doc("dft:li", li, 0.0, 0.07, 0.0)])
    promoted = run_promotion(store, "dft")["promoted"]
    assert sorted(promoted) == ["dft:co", "dft:li"]
    wf = dft_workflow(store, promoted, db_file=str(launchpad_file))
    # candidates only: their reference phases then run inline, in the candidate's own Firework
    wf = type(wf)([fw for fw in wf.fws if fw.spec["stage"] == "dft"], name=wf.name)
    launchpad.add_wf(wf)
    assert launch_workers(str(launchpad_file), _dft_fworker(tmp_path, launchpad_file), 1, tmp_path / "dft",
                          sleep=1) == [0]
    co_doc, li_doc = store.candidates.find_one({"_id": "dft:co"}), store.candidates.find_one({"_id": "dft:li"})
    assert co_doc["status"] == st.DFT_FAILED and "Co" in co_doc["dft"]["reason"]
    assert li_doc["status"] == st.DFT_DONE and li_doc["dft"]["band_gap"]["is_metal"]
    # unary Li: its one reference (MP's lowest Li, or a 1-site polymorph within tolerance) computed inline
    assert li_doc["dft"]["hull_status"] == "done" and abs(li_doc["dft"]["e_above_hull"]) < 0.05


def test_reference_claims_are_taken_once(store):
    """A reference is claimed once; only a failed claim, or the same Firework rerun after its launcher
    died, may take it again; a done reference never runs again."""
    doc = {"_id": "p1:mp-1", "protocol_id": "p1", "key": "mp-1", "fw_id": 7}
    assert store.claim_dft_reference(doc)
    assert not store.claim_dft_reference({**doc, "fw_id": 8})  # another Firework: computed elsewhere
    assert store.claim_dft_reference(doc)  # Firework 7 rerun (lpad rerun_fws after a dead launcher)
    store.finish_dft_reference("p1:mp-1", "done", {"energy_total": -1.0})
    assert not store.claim_dft_reference(doc) and not store.claim_dft_reference({**doc, "fw_id": 9})
    store.dft_references.insert_one({"_id": "p1:mp-2", "status": "failed", "attempts": 1})
    assert store.claim_dft_reference({"_id": "p1:mp-2", "fw_id": 9})  # failed: anyone may retry
    assert store.dft_references.find_one({"_id": "p1:mp-2"})["attempts"] == 2



def test_a_retaken_claim_belongs_to_the_firework_that_retook_it(launchpad, store):
    """Bug 1 of issue 15: re-taking a failed or released claim stored no new Firework id (the update set an
    ``owner`` no caller passes), so a rerun of that Firework could not retake its own claim and ``recover``
    released a claim whose Firework was alive, letting a second Firework compute the reference again."""
    from fireworks import Firework

    from fw_screen.orchestration.recovery import recover

    store.dft_references.insert_one({"_id": "p2:mp-1", "status": "failed", "attempts": 1, "fw_id": 3,
                                     "system": "Li", "key": "mp-1", "claimed": store_now()})
    launchpad.add_wf(Firework([], spec={"stage": "dft", "campaign": "x", "candidate": "x:1"}, fw_id=-1))
    live_fw = launchpad.fireworks.find_one({})["fw_id"]  # READY: alive
    assert store.claim_dft_reference({"_id": "p2:mp-1", "fw_id": live_fw})
    assert store.dft_references.find_one({"_id": "p2:mp-1"})["fw_id"] == live_fw
    assert store.claim_dft_reference({"_id": "p2:mp-1", "fw_id": live_fw})  # its rerun retakes its own claim
    assert not store.claim_dft_reference({"_id": "p2:mp-1", "fw_id": 3})  # the old owner does not
    r = recover(launchpad, store)
    assert r["claims_released"] == [] and r["claims_live"] == [{"ref_id": "p2:mp-1", "fireworks": [live_fw]}]
    assert store.dft_references.find_one({"_id": "p2:mp-1"})["status"] == "running"


def store_now():
    from fw_screen.store import utcnow

    return utcnow()

@needs_pw
def test_wall_time_continues_in_a_new_firework(launchpad, launchpad_file, store, tmp_path):
    """With dft.qe.walltime_s shorter than the chain, pw.x stops itself, the Firework completes with a
    checkpoint and adds a continuation Firework; the chain finishes there and the result lands once."""
    spec = load_spec(campaign="wall", dft={"qe": {"kppa": 300, "nscf_kppa": 400, "walltime_s": 9}},
                     property={"method": "ml"})
    store.register_campaign(spec)
    al = Structure(Lattice([[0, 2.1, 2.1], [2.1, 0, 2.1], [2.1, 2.1, 0]]), ["Al"], [[0, 0, 0]])  # strained fcc
    doc = ml_done_doc("wall:al", al, 0.0, 0.07, 0.0)
    store.candidates.insert_one({**doc, "campaign": "wall", "status": st.PROMOTED})
    launchpad.add_wf(dft_workflow(store, ["wall:al"], db_file=str(launchpad_file)))
    fworker = tmp_path / "fw.yaml"
    fworker.write_text(yaml.safe_dump({"name": "dft", "category": ["dft"], "query": "{}", "env": {
        "db_file": str(launchpad_file), "pseudo_dir": str(DATA / "pseudo"), "pw_cmd": "pw.x", "mpi_cmd": ""}}))
    assert launch_workers(str(launchpad_file), str(fworker), 1, tmp_path / "dft", sleep=1) == [0]
    fws = list(launchpad.fireworks.find({"spec.candidate": "wall:al"}, {"state": 1, "spec.continuation": 1}))
    assert len(fws) >= 2 and {fw["state"] for fw in fws} == {"COMPLETED"}  # at least one continuation
    assert sorted(fw["spec"].get("continuation", 0) for fw in fws) == list(range(len(fws)))
    d = store.candidates.find_one({"_id": "wall:al"})
    assert d["status"] == st.DFT_DONE and d["runs"]["dft"] == 1
    assert d["dft"]["band_gap"]["is_metal"]
    assert any(step.get("from_checkpoint") for step in d["dft"]["steps"])
    assert d["dft"]["structure_relaxed"]["lattice"]["a"] == pytest.approx(4.04 / 2 ** 0.5, rel=0.02)
