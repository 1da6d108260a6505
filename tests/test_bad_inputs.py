"""Bad inputs through the database path: every input becomes one candidate, every bad one is recorded as
invalid with a reason that names its problem, good ones beside them stay valid, re-ingest adds nothing.

Runs on the real SecantusDB server of tests/conftest.py (``store``, ``spec`` fixtures).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from fw_screen import stages as cp
from fw_screen.stages import validity as validity_stage
from fw_screen.science.ingest import KEPT_PREFIX

DATA = Path(__file__).parent / "data"
MP = DATA / "mp"
GOOD = ["LiCoO2_mp-22526.cif", "NaFePO4_mp-19226.cif", "Fe2O3_mp-19770.cif"]
TEN_MB = 10 * 1024 * 1024

pytestmark = pytest.mark.filterwarnings("ignore")


def _sub(pattern: str, repl: str, text: str) -> str:
    new, n = re.subn(pattern, repl, text, count=1, flags=re.M)
    assert n == 1, pattern
    return new


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """name -> (file content, words the recorded reason must contain)."""
    licoo2 = (MP / "LiCoO2_mp-22526.cif").read_text()
    nafepo4 = (MP / "NaFePO4_mp-19226.cif").read_text()
    atom_loop = licoo2.index("loop_\n _atom_site_type_symbol")
    # cut inside the atom-site loop, in the middle of a row
    cut = nafepo4.index("\n", nafepo4.index("_atom_site_occupancy")) + 1
    cut = nafepo4.index("  P  ", cut) + 12
    o_labels = re.findall(r"^\s+O\s+(O\d+)\s", nafepo4, re.M)
    mixed = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), [{"Na": 0.5, "K": 0.5}, "Cl"],
                                      [[0, 0, 0], [0.5, 0.5, 0.5]])
    mixed_cif = str(CifWriter(mixed, symprec=0.1))
    # the same disorder written with CrystaLLM's whole-site counting, so the disorder is the only problem
    mixed_whole_sites = _sub(r"^_chemical_formula_sum\s+.*$", "_chemical_formula_sum   'K4 Na4 Cl4'", mixed_cif)
    mixed_whole_sites = _sub(r"^_chemical_formula_structural\s+.*$", "_chemical_formula_structural   KNaCl",
                             mixed_whole_sites)
    mixed_whole_sites = _sub(r"^data_\S+$", "data_K4Na4Cl4", mixed_whole_sites)
    rng = random.Random(20240611)
    return {
        "empty.cif": (b"", "empty input"),
        "garbage.cif": (rng.randbytes(3000) + b"\x00" + rng.randbytes(100), "binary content (NUL bytes)"),
        "truncated.cif": (nafepo4[:cut].encode(), "truncated or malformed CIF"),
        "truncated_generation.cif": ((DATA / "crystallm_pi_truncated_row1047.cif").read_bytes(),
                                     "truncated or malformed CIF"),
        "zero_atoms.cif": (licoo2[:atom_loop].encode(), "missing _atom_site_type_symbol"),
        "unknown_element.cif": (licoo2.replace("Co", "Xx").encode(), "unknown element symbol(s) Xx"),
        "nan_coordinates.cif": (_sub(r"^(\s+O\s+O2\s+6\s+)\S+\s+\S+\s+\S+", r"\g<1>nan  nan  nan", licoo2).encode(),
                                "NaN"),
        "absurd_cell.cif": (_sub(r"^(_cell_length_c\s+)\S+$", r"\g<1>2000.0", licoo2).encode(),
                            "cell length c=2000.0 outside"),
        "flat_cell.cif": (_sub(r"^(_cell_angle_gamma\s+)\S+$", r"\g<1>5.0", licoo2).encode(),
                          "cell angle gamma=5.0 outside"),
        "partial_occupancy.cif": (mixed_cif.encode(), "site multiplicities give"),
        "partial_occupancy_whole_sites.cif": (mixed_whole_sites.encode(), "partial occupancies"),
        "duplicate_labels.cif": (re.sub(rf"^(\s+O\s+){o_labels[1]}(\s)", rf"\g<1>{o_labels[0]}\2", nafepo4,
                                        flags=re.M).encode(),
                                 f"duplicate atom site label(s) {o_labels[0]}"),
    }


def write_huge_cif(path: Path) -> None:
    """A 10 MB CIF made at run time: a real header followed by a very long atom-site loop."""
    head = (MP / "LiCoO2_mp-22526.cif").read_text()
    row = "  O  O{}  1  0.10000000  0.20000000  0.30000000  1\n"
    with open(path, "w") as fh:
        fh.write(head)
        size, i = len(head), 3
        while size < TEN_MB:
            line = row.format(i)
            fh.write(line)
            size += len(line)
            i += 1
    with open(path, "r+b") as fh:
        fh.truncate(TEN_MB)


def ingest_and_validate(store, folder: Path, spec: dict) -> dict:
    summary = cp.run_ingest(store, folder, spec)
    for batch in summary["batches"]:
        cp.run_validity(store, spec["campaign"], batch)
    return summary


def by_file(store, campaign: str) -> dict[str, dict]:
    docs = list(store.candidates.find({"campaign": campaign}))
    out = {d["source"]["file"]: d for d in docs}
    assert len(out) == len(docs)        # one block per file here
    return out


def input_folder(folder: Path, cases: dict) -> Path:
    """A new folder holding each case's content (bytes or text) under its name, and the GOOD MP CIFs."""
    folder.mkdir()
    for name, (content, _) in cases.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    for name in GOOD:
        (folder / name).write_text((MP / name).read_text())
    return folder


def test_bad_inputs_are_recorded_with_their_reasons(store, spec, tmp_path):
    expected = bad_inputs()
    folder = input_folder(tmp_path / "inputs", expected)
    write_huge_cif(folder / "huge.cif")
    assert (folder / "huge.cif").stat().st_size == TEN_MB
    n_files = len(list(folder.iterdir()))

    summary = ingest_and_validate(store, folder, spec)

    assert summary["inputs"] == summary["new"] == n_files and summary["existing"] == 0
    assert store.candidates.count_documents({"campaign": spec["campaign"]}) == n_files
    assert len(summary["batches"]) == -(-n_files // spec["batch_size"])
    docs = by_file(store, spec["campaign"])
    assert set(docs) == {p.name for p in folder.iterdir()}

    for name in GOOD:
        doc = docs[name]
        assert doc["status"] == "valid", (name, doc["validity"])
        assert doc["validity"]["valid"] is True and doc["validity"]["reason"] is None
        assert doc["match_key"] and doc["structure_reduced"] and doc["shard"] in range(spec["dedup_shards"])
    for name, (_, words) in expected.items():
        doc = docs[name]
        assert doc["status"] == "invalid", (name, doc["validity"])
        reason = doc["validity"]["reason"]
        assert reason and words in reason, (name, reason)
        assert doc["validity"]["first_failure"] not in (None, "internal_error"), (name, doc["validity"])
        assert doc["runs"] == {"validity": 1}
        assert "match_key" not in doc

    # specific records
    assert docs["garbage.cif"]["validity"]["first_failure"] == "ingest"
    assert docs["garbage.cif"]["cif_processed"] is None
    for name in ("partial_occupancy.cif", "partial_occupancy_whole_sites.cif"):
        assert docs[name]["validity"]["checks"]["ordered"]["passed"] is False
        assert docs[name]["validity"]["checks"]["parse"]["passed"] is True  # parsed, only flagged as disordered
        assert docs[name]["nsites"] > 0 and "structure" not in docs[name]   # structures are kept for valid ones
    assert docs["partial_occupancy_whole_sites.cif"]["validity"]["first_failure"] == "bond_length"
    assert docs["absurd_cell.cif"]["validity"]["first_failure"] == "sensible"
    assert docs["unknown_element.cif"]["validity"]["checks"]["parse"]["passed"] is False

    huge = docs["huge.cif"]
    assert huge["status"] == "invalid"
    assert huge["validity"]["first_failure"] == "ingest"
    assert huge["validity"]["reason"] == f"input too large: {TEN_MB} bytes > max_cif_bytes=2000000"
    assert huge["validity"]["checks"] == {} and "structure" not in huge     # never parsed
    assert huge["nbytes"] == TEN_MB
    assert len(huge["cif_original"].encode()) <= KEPT_PREFIX and huge["cif_processed"] is None
    stored = store.candidates.find_one({"_id": huge["_id"]}, {"cif_original": 1})
    assert len(stored["cif_original"]) <= KEPT_PREFIX

    # failure counts by first failing check add up to the invalid ones
    failures = store.failure_counts(spec["campaign"])
    assert sum(failures.values()) == len(expected) + 1
    assert store.status_counts(spec["campaign"]) == {"valid": len(GOOD), "invalid": len(expected) + 1}

    # idempotent: the same folder again adds nothing and re-running validity moves nothing
    before = {d["_id"]: (d["status"], d["updated"]) for d in store.candidates.find({}, {"status": 1, "updated": 1})}
    again = cp.run_ingest(store, folder, spec)
    assert again["inputs"] == n_files and again["new"] == 0 and again["existing"] == n_files
    assert again["batches"] == []
    for batch in summary["batches"]:
        counts = cp.run_validity(store, spec["campaign"], batch)
        assert counts["valid"] == counts["invalid"] == 0
    after = {d["_id"]: (d["status"], d["updated"]) for d in store.candidates.find({}, {"status": 1, "updated": 1})}
    assert after == before
    assert store.candidates.count_documents({}) == n_files


def test_good_inputs_survive_bad_neighbours_in_their_batch(store, spec, tmp_path, monkeypatch):
    folder = tmp_path / "mixed"
    folder.mkdir()
    bad = bad_inputs()
    for name in ("garbage.cif", "unknown_element.cif", "truncated.cif"):
        (folder / f"b_{name}").write_bytes(bad[name][0])
    for name in GOOD:
        (folder / f"a_{name}").write_text((MP / name).read_text())
    # plus an input on which the checker itself blows up (stands for a bug or a pathological CIF)
    boom = (MP / "Li2O_mp-1960.cif").read_text().replace("# generated using pymatgen", "# BOOM")
    (folder / "c_boom.cif").write_text(boom)
    real_check = validity_stage.check_cif

    def fragile_check(cif, cfg, *args, **kwargs):
        if cif and "# BOOM" in cif:
            raise RuntimeError("checker exploded")
        return real_check(cif, cfg, *args, **kwargs)

    monkeypatch.setattr(validity_stage, "check_cif", fragile_check)
    summary = ingest_and_validate(store, folder, spec)

    assert len(summary["batches"]) == 1          # 7 inputs, batch_size 10: all in one batch
    docs = by_file(store, spec["campaign"])
    assert len(docs) == 7
    assert {d["batch"] for d in docs.values()} == set(summary["batches"])
    for name in GOOD:
        assert docs[f"a_{name}"]["status"] == "valid", docs[f"a_{name}"]["validity"]
    for name in ("garbage.cif", "unknown_element.cif", "truncated.cif"):
        assert docs[f"b_{name}"]["status"] == "invalid"
    assert docs["c_boom.cif"]["status"] == "invalid"
    assert docs["c_boom.cif"]["validity"]["first_failure"] == "internal_error"
    assert docs["c_boom.cif"]["validity"]["reason"] == "RuntimeError: checker exploded"
    # inputs keep their order: seq follows the sorted file names
    assert [n for n, _ in sorted(docs.items(), key=lambda kv: kv[1]["seq"])] == sorted(docs)


PWNED = Path("/tmp/fw_screen_pwned_by_cif")
EVIL = f"__import__('os').system('touch {PWNED}')"


def hostile_and_oversized() -> dict[str, tuple[str, str]]:
    """name -> (CIF text, words the recorded reason must contain), for the spec of the test below."""
    licoo2 = (MP / "LiCoO2_mp-22526.cif").read_text()
    rows = "".join(f"  O  O{i}  1  0.{i:03d}00  0.2  0.3  1\n" for i in range(100, 150))
    symops = re.search(r"loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n((?:  .*\n)+)", licoo2)
    many_ops = "".join(f"  {i} 'x, y, z+{i}/1000'\n" for i in range(1, 201))
    magnetic = licoo2 + ("_space_group_magn.name_BNS 'P 1'\n"
                         "_space_group_magn.transform_BNS_Pp_abc '9**9**9*a,b,c;0,0,0'\n")
    return {
        "eval_number.cif": (_sub(r"^(_cell_length_a\s+)\S+$", rf"\g<1>{EVIL}", licoo2),
                            "could not convert string to float"),
        "eval_plus.cif": (_sub(r"^(_cell_length_b\s+)\S+$", r"\g<1>1+1", licoo2), "1+1"),
        "eval_symop.cif": (licoo2.replace(symops.group(1), f"  1 \"{EVIL}\"\n"), ""),
        "eval_coordinate.cif": (_sub(r"^(\s+O\s+O2\s+6\s+)\S+", r"\g<1>eval('0.25')", licoo2), ""),
        "magnetic_bomb.cif": (magnetic, "magnetic CIF"),
        "many_sites.cif": (licoo2 + rows, "too large: 53 atom sites listed > max_sites=40; not parsed"),
        "big_cell.cif": (_sub(r"^(_cell_length_c\s+)\S+$", r"\g<1>200.0", licoo2),
                         "> max_volume=1000; not parsed"),
        "many_operators.cif": (licoo2.replace(symops.group(1), many_ops),
                               "too large: 200 symmetry operators > 192"),
    }


def test_hostile_and_oversized_inputs_are_recorded_without_side_effects(store, tmp_path):
    """CIF text is never evaluated (pymatgen reads numbers with float() and symmetry operators with regular
    expressions; magnetic CIFs, whose setting pymatgen hands to sympy, are refused), and the spec's size
    limits (max_cif_bytes, validity.max_sites, validity.max_volume, at most 192 symmetry operators) turn an
    oversized input into an invalid candidate naming the limit; batch-mates stay valid."""
    from fw_screen.spec import load_spec

    PWNED.unlink(missing_ok=True)
    spec = load_spec(campaign="hostile", batch_size=50, dedup_shards=1,
                     ingest={"max_cif_bytes": 20000}, validity={"max_sites": 40, "max_volume": 1000.0})
    cases = hostile_and_oversized()
    folder = input_folder(tmp_path / "in", cases)
    (folder / "big_file.cif").write_text((MP / "LiCoO2_mp-22526.cif").read_text() + "#" * 30000)

    summary = ingest_and_validate(store, folder, spec)

    assert len(summary["batches"]) == 1                 # everything shares one batch
    docs = by_file(store, "hostile")
    assert len(docs) == len(cases) + len(GOOD) + 1
    for name in GOOD:
        assert docs[name]["status"] == "valid", docs[name]["validity"]
    for name, (_, words) in cases.items():
        v = docs[name]["validity"]
        assert docs[name]["status"] == "invalid", (name, v)
        assert v["reason"] and words in v["reason"], (name, v["reason"])
        assert v["first_failure"] not in (None, "internal_error"), (name, v)
    assert docs["magnetic_bomb.cif"]["validity"]["checks"]["parse"]["passed"] is False
    big = docs["big_file.cif"]["validity"]
    assert big["first_failure"] == "ingest" and "> max_cif_bytes=20000" in big["reason"]
    assert not PWNED.exists()
