"""The ML stage's single-point pre-screen (``ml.prescreen_e_hull``): a candidate whose unrelaxed cell is above
the bound is not relaxed (and says so); one below it is relaxed exactly as without the pre-screen; a null
bound changes nothing; the spec refuses a bound that could skip an ML-stable or promotable candidate; the
readers of ML-done candidates (post-relaxation pass, promotion) pass over an unrelaxed one with a reason.

Real CHGNet on 3-atom Li2O cells against MP's Li-O entries (examples/mp_Li-Co-Ni-O.json.gz): CHGNet puts the
relaxed antifluorite 0.057 eV/atom above MP's hull, the cell at a = 4.62 A is 0.057 unrelaxed (below a
0.2 bound), the one at a = 5.3 A is 0.28 unrelaxed (above it) -- and relaxes to the same 0.057: the price of
the pre-screen, which benchmarks/bench_prescreen.py measures on the real generations.
"""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from fw_screen import state as st
from fw_screen.science import promotion
from fw_screen.science import stability
from fw_screen.spec import SpecError, load_spec, upgrade, validate
from fw_screen.stages import load_references, run_relaxed_uniqueness, stability_fields
from fw_screen.stages.promotion import run_promotion

from tests.conftest import EXAMPLES

BOUND = 0.2

#: the ml fields a relaxed candidate had before the pre-screen existed (relaxed_verdict's included), and the
#: device it ran on (``ml.device``, issue 17)
TODAYS_FIELDS = {"potential", "device", "relax", "structure_relaxed", "structure_relaxed_reduced",
                 "match_key_relaxed",
                 "matched_reference_relaxed", "novel_relaxed", "relaxed_sets", "rmsd_relaxed", "hull",
                 "e_above_hull", "e_above_hull_unrelaxed", "stable", "band_gap", "hits"}


def _li2o(a: float) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return s.get_primitive_structure()


def _doc(cid: str, structure: Structure) -> dict:
    return {"_id": cid, "elements": ["Li", "O"], "structure_reduced": structure.as_dict(),
            "targets": {"band_gap": {"value": 3.72}}}


@pytest.fixture(scope="module")
def lio_store(new_launchpad_file, tmp_path_factory):
    """A store of its own (module scope: the references are loaded once) with MP's Li-Co-Ni-O entries."""
    from fireworks import LaunchPad

    from fw_screen.orchestration.launchpad import prepare_launchpad
    from fw_screen.store import ResultsStore

    lp = LaunchPad.from_file(str(new_launchpad_file(tmp_path_factory.mktemp("prescreen"))))
    prepare_launchpad(lp)
    store = ResultsStore.from_launchpad(lp)
    load_references(store, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    yield store
    lp.connection.drop_database(lp.name)


def _spec(bound: float | None, **sections):
    return load_spec(campaign="prescreen", ml={"prescreen_e_hull": bound}, **sections)


def test_above_the_bound_is_not_relaxed_and_says_why(lio_store, monkeypatch):
    def no_relaxation(*a, **k):
        raise AssertionError("the pre-screen should have skipped the relaxation")

    monkeypatch.setattr(stability, "relax", no_relaxation)
    status, fields = stability_fields(_doc("p:far", _li2o(5.3)), _spec(BOUND), lio_store)
    ml = fields["ml"]
    assert status == st.ML_DONE, ml.get("reason")
    assert ml["relax"]["status"] == "skipped" and ml["relax"]["steps"] == 0
    assert ml["relax"]["reason"].startswith("prescreen: unrelaxed e_above_hull 0.2")
    assert f"> ml.prescreen_e_hull={BOUND:g}" in ml["relax"]["reason"] and ml["reason"] == ml["relax"]["reason"]
    assert "structure_relaxed" not in ml and "structure_relaxed_reduced" not in ml
    assert ml["e_above_hull"] == ml["e_above_hull_unrelaxed"] == ml["prescreen"]["e_above_hull_unrelaxed"] > BOUND
    assert ml["e_above_hull_is_upper_bound"] is True and ml["stable"] is False
    assert ml["hull"]["structure"] == "unrelaxed" and ml["hull"]["decomposition"]
    assert ml["prescreen"]["bound"] == BOUND and ml["prescreen"]["relaxed"] is False
    assert ml["band_gap"]["structure"] == "unrelaxed" and ml["band_gap"]["band_gap"] >= 0
    assert ml["hits"]["stability"]["hit"] is False and "hit" in ml["hits"]["band_gap"]


def test_below_the_bound_is_relaxed_as_without_the_prescreen(lio_store):
    doc = _doc("p:near", _li2o(4.62))
    status, fields = stability_fields(doc, _spec(BOUND), lio_store)
    status0, fields0 = stability_fields(doc, _spec(None), lio_store)
    ml, ml0 = fields["ml"], fields0["ml"]
    assert status == status0 == st.ML_DONE
    pre = ml.pop("prescreen")
    assert pre["relaxed"] is True and pre["reason"] is None and pre["bound"] == BOUND
    # the pre-screen's single point is the relaxation's unrelaxed energy: the same hull distance
    assert pre["e_above_hull_unrelaxed"] == pytest.approx(ml["e_above_hull_unrelaxed"], abs=1e-9)
    assert pre["e_above_hull_unrelaxed"] < BOUND
    assert set(ml) == set(ml0) == TODAYS_FIELDS
    assert ml["relax"]["status"] == "converged" and ml["relax"]["steps"] == ml0["relax"]["steps"] > 0
    for key in ("e_above_hull", "e_above_hull_unrelaxed", "stable", "match_key_relaxed"):
        assert ml[key] == (pytest.approx(ml0[key], abs=1e-9) if isinstance(ml[key], float) else ml0[key])
    assert ml["stable"] is True and ml["band_gap"]["structure"] == "relaxed"


def test_a_null_bound_computes_no_single_point_and_stores_todays_fields(lio_store, monkeypatch):
    def no_single_point(*a, **k):
        raise AssertionError("no pre-screen single point with ml.prescreen_e_hull null")

    monkeypatch.setattr(stability, "single_point", no_single_point)
    assert load_spec(campaign="prescreen").ml.prescreen_e_hull is None  # the default
    status, fields = stability_fields(_doc("p:far0", _li2o(5.3)), _spec(None), lio_store)
    ml = fields["ml"]
    assert status == st.ML_DONE and set(ml) == TODAYS_FIELDS
    assert ml["relax"]["status"] == "converged" and ml["e_above_hull"] < 0.1 < ml["e_above_hull_unrelaxed"]


def test_the_bound_may_not_skip_a_stable_or_promotable_candidate():
    assert _spec(0.1).ml.prescreen_e_hull == 0.1  # equal to both thresholds: allowed
    with pytest.raises(SpecError, match=r"ml.prescreen_e_hull: 0.05 eV/atom is below ml.stability_threshold=0.1"):
        _spec(0.05)
    with pytest.raises(SpecError, match=r"below promotion.max_e_above_hull=0.3"):
        _spec(0.2, promotion={"max_e_above_hull": 0.3})
    with pytest.raises(SpecError, match=r"below ml.stability_threshold=0.25"):
        load_spec(campaign="x", ml={"prescreen_e_hull": 0.2, "stability_threshold": 0.25})
    for bad in ("0.2", True, [0.2]):
        with pytest.raises(SpecError, match=r"ml.prescreen_e_hull: expected a number"):
            _spec(bad)
    # a campaign stored before the setting existed loads with it off
    stored = load_spec(campaign="old").to_dict()
    del stored["ml"]["prescreen_e_hull"]
    assert validate(upgrade(stored)).ml.prescreen_e_hull is None


def test_readers_of_ml_done_candidates_pass_over_an_unrelaxed_one(lio_store):
    """The post-relaxation pass and promotion see an ML-done candidate without ``ml.structure_relaxed``:
    they skip it and say why (never a crash)."""
    spec = _spec(BOUND, property={"method": "ml"}, promotion={"require_target_hit": False})
    lio_store.register_campaign(spec)
    docs = []
    for i, (cid, a) in enumerate((("prescreen:far", 5.3), ("prescreen:near", 4.62))):
        structure = _li2o(a)
        status, fields = stability_fields(_doc(cid, structure), spec, lio_store)
        assert status == st.ML_DONE
        docs.append({**_doc(cid, structure), **fields, "campaign": "prescreen", "seq": i, "status": st.ML_DONE,
                     "formula": "Li2O1", "reduced_formula": "Li2O", "chemsys": "Li-O", "nsites": 3})
    assert docs[0]["ml"]["relax"]["status"] == "skipped" and "structure_relaxed" in docs[1]["ml"]
    lio_store.candidates.insert_many(docs)

    counts = run_relaxed_uniqueness(lio_store, "prescreen")
    assert counts["not_relaxed"] == 1 and counts["relaxed"] == 1
    far = lio_store.candidates.find_one({"_id": "prescreen:far"})
    assert "duplicate_of_relaxed" not in far["ml"] and "e_above_hull_self_consistent" not in far["ml"]
    near = lio_store.candidates.find_one({"_id": "prescreen:near"})
    assert near["ml"]["duplicate_of_relaxed"] is None and near["ml"]["e_above_hull_self_consistent"] is not None

    ok, reasons = promotion.check(far, {**spec.promotion, "band_gap_source": "ml"})
    assert not ok and reasons[0].startswith("not relaxed (ML pre-screen")
    summary = run_promotion(lio_store, "prescreen")
    assert summary["not_eligible"].get("not relaxed") == 1
    assert lio_store.candidates.find_one({"_id": "prescreen:far"})["status"] == st.ML_DONE
