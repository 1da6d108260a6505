"""The VASP path of the DFT stage end to end: atomate Fireworks on the real server, fake VASP, our `tasks`.

No VASP exists here: atomate's ``use_fake_vasp`` swaps ``RunVaspCustodian`` for ``RunVaspFake``, which checks
the inputs the Firework wrote (INCAR parameters, KPOINTS, POSCAR species, POTCAR symbols) against a reference
run of Si from atomate's own test suite and copies that run's outputs.  Everything else is real: pymatgen
writes the inputs (with the POTCAR of the reference runs), atomate's drone parses the outputs into the
``tasks`` collection of the test's database on the SecantusDB server, and ``VaspResultTask`` moves the
candidate to ``dft_done`` (or ``dft_failed``) through the results store.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

pytest.importorskip("atomate", reason="atomate 1.1.0 is not installed (pip install atomate==1.1.0 custodian)")
pytest.importorskip("custodian", reason="custodian is not installed")

from fw_screen import state as st
from fw_screen.science.references import entry_document

DATA = Path(__file__).parent / "data" / "vasp"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "vasp_reference_runs"
REF = DATA if (DATA / "Si_static").is_dir() else SHARED

#: firework name part -> reference run; INCAR parameters whose values current pymatgen input sets still
#: share with these (2019-era) runs.  MPStaticSet no longer writes IBRION and MPNonSCFSet now writes an
#: explicit reciprocal k-point list (the reference has an 8x8x8 Monkhorst mesh), so neither is checked there.
RUNS = {
    "structure optimization": ("Si_structure_optimization", ["ISPIN", "ENCUT", "ISMEAR", "SIGMA", "IBRION",
                                                             "LORBIT", "NSW", "ISIF"], True),
    "static": ("Si_static", ["ISPIN", "ENCUT", "ISMEAR", "SIGMA", "LORBIT", "NSW"], True),
    "nscf uniform": ("Si_nscf_uniform", ["ENCUT", "ISMEAR", "SIGMA", "LORBIT", "NSW", "ICHARG", "NBANDS"], False),
}
#: the uniform non-SCF run's band gap (its vasprun.xml: VBM 5.6140, CBM 6.2243 eV, indirect)
SI_GAP = 0.6103
#: the static run's total energy of its two atoms (OSZICAR/vasprun: F = E0 = -10.846783 eV)
SI_STATIC_ENERGY = -10.84678256
#: Materials Project mp-149 (diamond Si), GGA, as in MP's elemental reference entries (2023-02-07): the
#: hull reference.  MP2020 corrects neither entry (no anion, no U), so the candidate must lie
#: (-10.84678256 + 10.85063606) / 2 = +0.00193 eV/atom above it.
MP_SI = {"@module": "pymatgen.entries.computed_entries", "@class": "ComputedEntry", "energy": -10.85063606,
         "composition": {"Si": 2.0}, "entry_id": "mp-149-GGA", "correction": 0.0,
         "parameters": {"potcar_spec": [{"titel": "PAW_PBE Si 05Jan2001", "hash": "b2b0ea6feb62e7cde209616683b8f7f5"}],
                        "is_hubbard": False, "hubbards": {}, "run_type": "GGA"},
         "data": {"material_id": "mp-149", "run_type": "GGA"}}

pytestmark = pytest.mark.skipif(not (REF / "Si_static").is_dir(),
                                reason=f"no Si VASP reference runs in {DATA} or {SHARED}")


def _ref_dirs(tmp_path: Path) -> Path:
    """The reference runs, copied so a test may alter them, completed with the POTCAR files (from the one
    POTCAR of the fixture: scrambled, see tests/data/vasp/make_fixture.py) and a placeholder CHGCAR (the
    non-SCF Firework copies the static run's CHGCAR; fake VASP never reads it)."""
    root = tmp_path / "vasp_ref"
    potcar = (REF / "POT_GGA_PAW_PBE" / "POTCAR.Si.gz").read_bytes()
    for name, _, _ in RUNS.values():
        shutil.copytree(REF / name, root / name, ignore=shutil.ignore_patterns("WAVECAR*"))
        files = {"inputs/POTCAR": gzip.decompress(potcar), "outputs/POTCAR.gz": potcar,
                 "outputs/POTCAR.orig.gz": potcar, "outputs/CHGCAR.gz": gzip.compress(b"placeholder\n")}
        for rel, content in files.items():
            if not (root / name / rel).exists():
                (root / name / rel).write_bytes(content)
    return root


def _si_candidate() -> dict:
    from pymatgen.core import Lattice, Structure

    # the reference runs' input cell (primitive diamond Si); the ML "relaxed" cell the workflow starts from
    lattice = Lattice([[3.867422, 0, 0], [1.933711, 3.349287, 0], [0, -2.232856, 3.157737]])
    si = Structure(lattice, ["Si", "Si"], [[0, 0, 0], [0.75, 0.5, 0.75]])
    return {"_id": "vasptest:si", "campaign": "vasptest", "status": st.PROMOTED, "reduced_formula": "Si",
            "elements": ["Si"], "structure_reduced": si.as_dict(),
            "ml": {"structure_relaxed": si.as_dict(), "e_above_hull": 0.01},
            "targets": {"band_gap": {"value": 0.681}}}


def _run(launchpad, launchpad_file, store, tmp_path, monkeypatch, ref_root: Path):
    from atomate.vasp.powerups import use_fake_vasp
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire
    from pymatgen.core import SETTINGS

    from fw_screen.store.atomate import atomate_db_file
    from fw_screen.orchestration.fireworks import vasp_workflow

    # pymatgen writes POTCARs from $PMG_VASP_PSP_DIR/POT_GGA_PAW_PBE/POTCAR.Si.gz (read at import: patch)
    monkeypatch.setitem(SETTINGS, "PMG_VASP_PSP_DIR", str(REF))
    from fw_screen.spec import load_spec

    store.register_campaign(load_spec(campaign="vasptest"))  # the result is completed with the campaign's thresholds
    store.candidates.insert_one(_si_candidate())
    store.add_entries([entry_document(_decode(MP_SI), "mp"),
                       # an entry with the candidate's own id far below: must be left out of the hull
                       entry_document(_decode({**MP_SI, "entry_id": "vasptest:si", "energy": -20.0}), "ml")])
    db_json = atomate_db_file(str(launchpad_file), str(tmp_path / "db.json"))
    wf = vasp_workflow(store.candidates.find_one({"_id": "vasptest:si"}), db_json, vasp_cmd="vasp_std")
    for key, (name, params, check_kpoints) in RUNS.items():
        wf = use_fake_vasp(wf, {key: str(ref_root / name)}, params_to_check=params, check_kpoints=check_kpoints)
    launchpad.add_wf(wf)
    fworker = FWorker(name="vasp-test", category=["dft"], env={"db_file": str(launchpad_file)})
    monkeypatch.chdir(tmp_path)
    rapidfire(launchpad, fworker, m_dir=str(tmp_path), nlaunches=0, max_loops=1, strm_lvl="ERROR")
    return db_json


def test_real_custodian_path_with_a_failing_vasp_binary(launchpad, launchpad_file, store, tmp_path, monkeypatch):
    """Without the fake: custodian runs ``vasp_cmd`` (here ``false``, a VASP that dies at once) with atomate's
    default VASP handlers; the relaxation fizzles with custodian's error and the candidate is dft_failed."""
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire
    from pymatgen.core import SETTINGS

    from fw_screen.store.atomate import atomate_db_file
    from fw_screen.orchestration.fireworks import vasp_workflow

    monkeypatch.setitem(SETTINGS, "PMG_VASP_PSP_DIR", str(REF))
    store.candidates.insert_one(_si_candidate())
    wf = vasp_workflow(_si_candidate(), atomate_db_file(str(launchpad_file), str(tmp_path / "db.json")))
    run = [t for t in wf.fws[0].tasks if "RunVaspCustodian" in str(t)]
    assert run and run[0]["job_type"] == "double_relaxation_run" and run[0].get("handler_group", "default") == "default"
    launchpad.add_wf(wf)
    monkeypatch.chdir(tmp_path)
    fworker = FWorker(name="vasp-test", category=["dft"], env={"db_file": str(launchpad_file), "vasp_cmd": "false"})
    rapidfire(launchpad, fworker, m_dir=str(tmp_path), nlaunches=0, max_loops=1, strm_lvl="ERROR")
    doc = store.candidates.find_one({"_id": "vasptest:si"})
    assert doc["status"] == st.DFT_FAILED, doc.get("dft")
    reason = doc["dft"]["reason"]
    assert reason.startswith("Si-structure optimization fizzled: custodian.") and "Validat" in reason, reason


def _decode(d: dict):
    from pymatgen.entries.computed_entries import ComputedEntry

    return ComputedEntry.from_dict(d)


def test_si_through_fake_vasp_to_dft_done(launchpad, launchpad_file, store, tmp_path, monkeypatch):
    db_json = _run(launchpad, launchpad_file, store, tmp_path, monkeypatch, _ref_dirs(tmp_path))

    # the derived atomate db file names our server and database, tasks collection, retryWrites carried over
    cfg = json.loads(Path(db_json).read_text())
    lp = yaml.safe_load(launchpad_file.read_text())
    assert (cfg["host"], cfg["port"], cfg["database"], cfg["collection"]) == (lp["host"], lp["port"], lp["name"],
                                                                              "tasks")
    assert cfg["mongoclient_kwargs"]["retryWrites"] is False

    states = {fw["name"]: fw["state"] for fw in launchpad.fireworks.find({}, {"name": 1, "state": 1})}
    assert set(states.values()) == {"COMPLETED"}, states
    assert len(states) == 4

    tasks = list(store.db["tasks"].find({"fw_screen.candidate": "vasptest:si"}))
    assert sorted(t["task_label"] for t in tasks) == ["nscf uniform", "static", "structure optimization"]
    assert all(t["fw_screen"]["campaign"] == "vasptest" and t["state"] == "successful" for t in tasks)

    doc = store.candidates.find_one({"_id": "vasptest:si"})
    assert doc["status"] == st.DFT_DONE and doc["runs"]["dft"] == 1
    dft = doc["dft"]
    assert dft["code"] == "vasp" and dft["status"] == st.DFT_DONE and dft["reason"] is None
    assert dft["task_ids"] == {t["task_label"]: t["task_id"] for t in tasks}
    # band gap of the uniform non-SCF run, as its vasprun.xml has it
    gap = dft["band_gap"]
    assert gap["band_gap"] == pytest.approx(SI_GAP, abs=1e-3)
    assert gap["is_direct"] is False and gap["is_metal"] is False
    assert gap["cbm"] - gap["vbm"] == pytest.approx(SI_GAP, abs=1e-3)
    # energies from the static run; MP2020 leaves elemental Si alone
    assert dft["energy_per_atom_raw"] == pytest.approx(SI_STATIC_ENERGY / 2, abs=1e-5)
    assert dft["energy_per_atom"] == pytest.approx(dft["energy_per_atom_raw"], abs=1e-9)
    # hull: against mp-149 only (the entry with the candidate's own id, 5 eV/atom lower, is not used)
    assert math.isfinite(dft["e_above_hull"])
    assert dft["e_above_hull"] == pytest.approx((SI_STATIC_ENERGY - MP_SI["energy"]) / 2, abs=1e-6)
    assert dft["decomposition"] == [{"entry_id": "mp-149-GGA", "formula": "Si", "fraction": pytest.approx(1.0)}]
    assert len(dft["structure"]["sites"]) == 2
    assert dft["corrections"] == []  # the reference runs needed no custodian fix
    launch = launchpad.launches.find_one({"action.stored_data.status": st.DFT_DONE})
    assert launch["action"]["stored_data"]["moved"] == 1

    # vasp_result on the same task documents (pure): a custodian correction is reported, a hull without an
    # elemental Si entry leaves e_above_hull None with the reason, a missing run fails the candidate
    from fw_screen.dft.vasp import vasp_result

    fixed = [dict(t) for t in tasks]
    static = next(t for t in fixed if t["task_label"] == "static")
    static["custodian"] = [{"corrections": [{"errors": ["zbrent"], "actions": [{"dict": "INCAR", "action": {
        "_set": {"IBRION": 1}}}], "handler": {"@class": "VaspErrorHandler"}}]}]
    res = vasp_result(fixed, [], "vasptest:si")
    assert res["corrections"] == [{"task_label": "static", "task_id": static["task_id"], "errors": ["zbrent"],
                                   "handler": "VaspErrorHandler",
                                   "actions": [{"dict": "INCAR", "action": {"_set": {"IBRION": 1}}}]}]
    assert res["status"] == st.DFT_DONE and res["e_above_hull"] is None and "no reference for Si" in res["reason"]
    res = vasp_result([t for t in tasks if t["task_label"] != "nscf uniform"], [], "vasptest:si")
    assert res["status"] == st.DFT_FAILED and res["reason"] == "no task document for nscf uniform"


def test_vasp_results_carry_the_dft_schema_and_reach_compare(launchpad, launchpad_file, store, tmp_path, monkeypatch):
    """Bug 2 of issue 15: VASP results stored no ``hull_status``, ``stable``, ``hits`` or ``ml_vs_dft``, so
    VASP candidates dropped out of ``fw-screen compare`` and the DFT summary.  One schema
    (:mod:`fw_screen.dft.schema`) completes QE and VASP results alike."""
    from fw_screen.reporting.tables import ml_vs_dft
    from fw_screen.spec import load_spec

    _run(launchpad, launchpad_file, store, tmp_path, monkeypatch, _ref_dirs(tmp_path))
    dft = store.candidates.find_one({"_id": "vasptest:si"})["dft"]
    e_hull = (SI_STATIC_ENERGY - MP_SI["energy"]) / 2
    assert dft["hull_status"] == "done" and dft["stable"] is (e_hull <= 0.1)
    assert dft["ml_vs_dft"]["e_above_hull_ml"] == 0.01
    assert dft["ml_vs_dft"]["e_above_hull_error"] == pytest.approx(0.01 - e_hull, abs=1e-6)
    assert dft["ml_vs_dft"]["band_gap_dft"] == pytest.approx(SI_GAP, abs=1e-3)
    assert dft["hits"]["band_gap"]["target"] == pytest.approx(0.681)
    assert dft["hits"]["band_gap"]["hit"] is (abs(SI_GAP - 0.681) <= load_spec()["property"]["band_gap_tolerance"])
    summary = store.dft_summary("vasptest")
    assert summary["done"] == 1 and summary["hull_done"] == 1 and summary["stable"] == int(dft["stable"])
    compared = ml_vs_dft(store, "vasptest")
    assert compared["n_dft"] == 1 and compared["rows"][0]["id"] == "vasptest:si"


def test_incar_mismatch_fails_fake_vasp_and_the_candidate(launchpad, launchpad_file, store, tmp_path, monkeypatch):
    """The fake-VASP check is real: a reference relaxation with another ENCUT fizzles the relaxation, the
    Fireworks after it fizzle before VASP, and the candidate goes to dft_failed saying why."""
    ref_root = _ref_dirs(tmp_path)
    incar = ref_root / "Si_structure_optimization" / "inputs" / "INCAR"
    incar.write_text(incar.read_text().replace("ENCUT = 520", "ENCUT = 600"))
    _run(launchpad, launchpad_file, store, tmp_path, monkeypatch, ref_root)

    states = {fw["name"]: fw["state"] for fw in launchpad.fireworks.find({}, {"name": 1, "state": 1})}
    assert states == {"Si-structure optimization": "FIZZLED", "Si-static": "FIZZLED", "Si-nscf uniform": "FIZZLED",
                      "Si-vasp result vasptest:si": "COMPLETED"}
    assert store.db["tasks"].count_documents({}) == 0
    doc = store.candidates.find_one({"_id": "vasptest:si"})
    assert doc["status"] == st.DFT_FAILED
    assert "INCAR value of ENCUT is inconsistent" in doc["dft"]["reason"]
    assert doc["dft"]["reason"].startswith("Si-structure optimization fizzled")
