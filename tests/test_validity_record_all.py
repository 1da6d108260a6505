"""``validity.record_all_checks`` and the faster CIF site expansion: the speed-ups of the validity stage that
must not change an answer.

* ``record_all_checks: false`` (the default) does not run the bond-length and space-group checks once an
  earlier required check has failed: the verdict, first failure and reason must be those of ``true``, on
  real generations, and a check not run must say so;
* ``_CifParser`` expands the atom-site rows by the symmetry operators faster than pymatgen's CifParser: the
  structures must be pymatgen's, bit for bit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifParser, CifWriter

from fw_screen.science.ingest import postprocess
from fw_screen.science.validity import CHECK_ORDER, _CifParser, check_cif
from fw_screen.spec import ADDED_SETTINGS, default_spec, load_spec, upgrade
from fw_screen.stages.validity import validity_fields

GENERATIONS = Path(__file__).resolve().parent.parent / "examples" / "crystallm_pi_generated_8k.parquet"
EXPENSIVE = ("bond_length", "space_group")

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def generations() -> list[str]:
    import pandas as pd

    return list(pd.read_parquet(GENERATIONS)["Generated CIF"])


def _specs(**validity):
    return (load_spec(validity={**validity, "record_all_checks": False})["validity"],
            load_spec(validity={**validity, "record_all_checks": True})["validity"])


def _rocksalt_cif(a: float = 5.64) -> str:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return str(CifWriter(s, symprec=0.1))


def test_the_default_is_false_and_stored_campaigns_take_it():
    """A campaign stored before the setting existed takes the default: its verdicts, first failures and
    reasons do not change (the tests below), only the records of the checks not run."""
    assert default_spec().validity.record_all_checks is False
    assert ADDED_SETTINGS["validity.record_all_checks"] is None       # None: the default's value
    stored = default_spec().to_dict()
    del stored["validity"]["record_all_checks"]
    assert upgrade(stored)["validity"]["record_all_checks"] is False
    # a plain validity section without the field (an old caller) records every check, as before
    plain = {k: v for k, v in default_spec().validity.to_dict().items() if k != "record_all_checks"}
    cif = re.sub(r"^data_NaCl$", "data_NaCl2", _rocksalt_cif(), flags=re.M)
    assert check_cif(cif, plain).checks["bond_length"]["passed"] is True


def _assert_same_answer(cif: str, fast_cfg, every_cfg) -> dict:
    fast, every = check_cif(cif, fast_cfg), check_cif(cif, every_cfg)
    assert (fast.valid, fast.first_failure, fast.reason) == (every.valid, every.first_failure, every.reason)
    assert fast.info == every.info or {k: v for k, v in fast.info.items() if not k.startswith("spacegroup")} == \
        {k: v for k, v in every.info.items() if not k.startswith("spacegroup")}
    not_run = []
    for name, entry in fast.checks.items():
        if entry["passed"] is None:                        # not run: only an expensive one, after a failure
            assert name in EXPENSIVE
            assert entry == {"passed": None, "reason": f"not run: {fast.first_failure} failed first"}
            assert CHECK_ORDER.index(fast.first_failure) < CHECK_ORDER.index(name)
            not_run.append(name)
        else:                                              # every check that ran gives the same record
            assert entry == every.checks[name], (name, entry, every.checks[name])
    assert set(fast.checks) == set(every.checks)
    if "space_group" in not_run:
        assert fast.info["spacegroup"] is None and fast.info["spacegroup_number"] is None
    return {"not_run": not_run, "result": fast}


def test_record_all_checks_false_gives_the_same_verdicts_on_real_generations(generations):
    """267 real generations (every 30th): verdict, first failure and reason identical; every check that ran
    recorded identically; the stored-only checks (the DiffCSP/MatterGen metrics) always recorded."""
    fast_cfg, every_cfg = _specs()
    skipped = {name: 0 for name in EXPENSIVE}
    for row in range(0, 8000, 30):
        out = _assert_same_answer(generations[row], fast_cfg, every_cfg)
        for name in out["not_run"]:
            skipped[name] += 1
        fast = out["result"]
        if fast.checks.get("parse", {}).get("passed"):
            for name in ("smact", "min_distance", "volume", "ordered"):
                assert fast.checks[name]["passed"] in (True, False), (row, name)
    # the comparison means something: both checks were skipped on real inputs
    assert skipped["bond_length"] >= 3 and skipped["space_group"] >= 100, skipped


def test_a_required_check_after_the_expensive_ones_keeps_them_running(generations):
    """smact and ordered come after bond_length in the report order: requiring them must not skip it (the
    bond check could still be the first failure)."""
    fast_cfg, every_cfg = _specs(required=["sensible", "bond_length", "space_group", "smact", "ordered"])
    for row in range(3, 8000, 400):
        out = _assert_same_answer(generations[row], fast_cfg, every_cfg)
        assert "bond_length" not in out["not_run"]


def test_a_check_not_run_is_recorded_as_such():
    cif = re.sub(r"^data_NaCl$", "data_NaCl2", _rocksalt_cif(), flags=re.M)      # formula_consistent fails
    fast_cfg, every_cfg = _specs()
    fast = check_cif(cif, fast_cfg)
    assert fast.first_failure == "formula_consistent" and not fast.valid
    for name in EXPENSIVE:
        assert fast.checks[name] == {"passed": None, "reason": "not run: formula_consistent failed first"}
    for name in ("smact", "min_distance", "volume", "ordered", "multiplicity_consistent", "sensible"):
        assert fast.checks[name]["passed"] is True
    every = check_cif(cif, every_cfg)
    assert every.checks["bond_length"]["passed"] is True and every.checks["space_group"]["passed"] is True
    # a bond failure skips only the space group
    squeezed = _rocksalt_cif(3.0)
    fast = check_cif(squeezed, fast_cfg)
    assert fast.first_failure == "bond_length" and fast.checks["bond_length"]["passed"] is False
    assert fast.checks["space_group"] == {"passed": None, "reason": "not run: bond_length failed first"}
    assert check_cif(squeezed, every_cfg).checks["space_group"]["passed"] is True
    # the formula check not required: nothing before bond_length decides the verdict, so it runs
    lenient = load_spec(validity={"required": ["sensible", "bond_length", "space_group"]})["validity"]
    assert check_cif(cif, lenient).valid
    # and the stage stores the record as it is
    spec = load_spec()
    stored = validity_fields({"_id": "x", "cif_processed": cif}, spec)["validity"]
    assert stored["checks"]["bond_length"] == {"passed": None, "reason": "not run: formula_consistent failed first"}
    assert stored["first_failure"] == "formula_consistent"


def _parsed(cls, cif: str):
    try:
        parser = cls.from_str(cif)
        return parser.parse_structures(primitive=False, on_error="raise", check_occu=False)[0], parser.as_dict()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def test_fast_site_expansion_gives_pymatgens_structures(generations):
    """Every 50th generation, as generated and after fw-screen's post-processing (full operator lists):
    the same sites in the same order, coordinates and lattice bit for bit, the same labels, the same block."""
    compared = 0
    for row in range(0, 8000, 50):
        for cif in (generations[row], postprocess(generations[row])[0]):
            ours, theirs = _parsed(_CifParser, cif), _parsed(CifParser, cif)
            if isinstance(theirs, str):
                assert ours == theirs
                continue
            (a, block_a), (b, block_b) = ours, theirs
            assert a.frac_coords.tobytes() == b.frac_coords.tobytes(), row
            assert a.lattice.matrix.tobytes() == b.lattice.matrix.tobytes()
            assert [s.species for s in a] == [s.species for s in b] and a.labels == b.labels
            assert a.as_dict() == b.as_dict() and block_a == block_b
            compared += 1
    assert compared >= 280


def test_fast_site_expansion_on_special_positions_and_bad_numbers():
    """Sites on special positions (images merged within site_tolerance), hexagonal operators (x-y), a
    partially occupied site shared by two rows, and a non-finite coordinate (pymatgen raises; so must we)."""
    structures = [
        Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.2, 5.2), ["Mg"], [[1 / 3, 2 / 3, 0.25]]),
        Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]),
        Structure.from_spacegroup("R-3m", Lattice.hexagonal(2.8, 14.1), ["Li", "Co", "O"],
                                  [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.2604]]),
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), [{"Na": 0.5, "K": 0.5}, "Cl"],
                                  [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ]
    for s in structures:
        cif = str(CifWriter(s, symprec=0.1))
        (a, _), (b, _) = _parsed(_CifParser, cif), _parsed(CifParser, cif)
        assert a.frac_coords.tobytes() == b.frac_coords.tobytes() and a.as_dict() == b.as_dict()
        assert len(a) == len(s.get_sorted_structure())
    bad = re.sub(r"^(\s+Cl\s+Cl\d+\s+4\s+)\S+", r"\g<1>nan", str(CifWriter(structures[3], symprec=0.1)), flags=re.M)
    assert _parsed(_CifParser, bad) == _parsed(CifParser, bad)
