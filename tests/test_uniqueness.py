"""Uniqueness and novelty: matching invariants, the grouped deduplication against the all-pairs baseline on
real generations, and the uniqueness stage through the database against Materials Project references."""

from __future__ import annotations

import gzip
import json
import warnings
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from monty.json import MontyDecoder
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp
from pymatgen.core.structure_matcher import StructureMatcher
from pymatgen.io.cif import CifWriter

from fw_screen import stages as cp
from fw_screen.science import uniqueness as uq
from fw_screen.science.ingest import read_inputs
from fw_screen.spec import load_spec
from fw_screen.science.validity import parse_structure

DATA = Path(__file__).parent / "data"
MP = DATA / "mp"
TABLE = DATA / "crystallm_pi_valid_41.parquet"
REFERENCES = DATA / "mp_Li-Co-Ni-O_5entries.json.gz"

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def matcher():
    return uq.make_matcher(load_spec()["uniqueness"])


@pytest.fixture(scope="module")
def generated() -> list[Structure]:
    """41 valid CrystaLLM-pi generations: KAlF4, BeF2, LiYF4 (8 each), KAgO2, CaF2 (6 each), Sr (5)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [parse_structure(raw.text) for raw in read_inputs(TABLE, load_spec()["ingest"])]


def perturbed(s: Structure, seed: int, distance: float = 0.01) -> Structure:
    """Every site moved by ``distance`` Angstrom in a random direction (reproducible)."""
    rng = np.random.default_rng(seed)
    out = s.copy()
    for i in range(len(out)):
        v = rng.normal(size=3)
        out.translate_sites([i], distance * v / np.linalg.norm(v), frac_coords=False, to_unit_cell=True)
    return out


def rotated(s: Structure, angle: float = 37.0) -> Structure:
    out = s.copy()
    out.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], angle))
    return out


def supercell(s: Structure, scale=(2, 1, 1)) -> Structure:
    return s * scale


def rocksalt() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])


def zincblende() -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(6.1), ["Na", "Cl"], [[0, 0, 0], [.25, .25, .25]])


def cscl_type() -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])


def item(ident: str, s: Structure) -> uq.Item:
    return uq.Item(ident, uq.reduce_structure(s))


# ------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("make", [lambda s: perturbed(s, 1), rotated, supercell,
                                  lambda s: supercell(rotated(perturbed(s, 2), 111), (1, 2, 2))],
                         ids=["perturbed", "rotated", "supercell", "all-three"])
@pytest.mark.parametrize("index", [0, 16, 24, 36], ids=["KAlF4", "LiYF4", "KAgO2", "Sr"])
def test_copies_of_a_structure_match(matcher, generated, make, index):
    original = generated[index]
    copy = make(original)
    same_cell = len(copy) == len(original) and np.allclose(copy.lattice.matrix, original.lattice.matrix)
    assert not (same_cell and np.allclose(copy.frac_coords, original.frac_coords))     # really a different copy
    a, b = uq.reduce_structure(original), uq.reduce_structure(copy)
    assert uq.match_key(a) == uq.match_key(b)
    assert uq.fits(matcher, a, b) and uq.fits(matcher, b, a)
    assert StructureMatcher().fit(original, copy)        # pymatgen's own verdict, with its own reduction


def test_polymorphs_of_one_formula_do_not_match(matcher):
    forms = {"rocksalt": rocksalt(), "zincblende": zincblende(), "CsCl": cscl_type()}
    reduced = {k: uq.reduce_structure(s) for k, s in forms.items()}
    # all three reduce to two-atom cells of NaCl: the key alone cannot tell them apart ...
    assert {uq.match_key(r) for r in reduced.values()} == {"NaCl|2"}
    # ... the matcher does
    for (na, a), (nb, b) in [(x, y) for x in reduced.items() for y in reduced.items() if x[0] < y[0]]:
        assert not uq.fits(matcher, a, b), (na, nb)
        assert not StructureMatcher().fit(forms[na], forms[nb])


def test_match_key_separates_formula_and_cell_size(generated):
    keys = [uq.match_key(uq.reduce_structure(s)) for s in generated]
    for s, key in zip(generated, keys):
        formula, n = key.split("|")
        assert formula == s.composition.reduced_formula
        assert int(n) == len(s.get_primitive_structure())
    assert len({k.split("|")[0] for k in keys}) == 6


def test_shard_is_stable_and_in_range():
    assert uq.shard_of("NaCl", 4) == uq.shard_of("NaCl", 4)
    assert uq.shard_of("LiCoO2", 7) == zlib.crc32(b"LiCoO2") % 7
    assert {uq.shard_of(f, 3) for f in ("NaCl", "KCl", "LiF", "CaF2", "BeF2", "Sr", "KAgO2")} <= {0, 1, 2}


# -------------------------------------------------------------------------------- deduplicate / refs
def test_deduplicate_keeps_the_first_occurrence(matcher):
    a, b, c = rocksalt(), zincblende(), cscl_type()
    new = [item("a", a), item("a-perturbed", perturbed(a, 3)), item("b", b), item("a-rotated", rotated(a)),
           item("b-super", supercell(b, (1, 1, 2))), item("c", c), item("c-again", perturbed(c, 4))]
    assert uq.deduplicate(new, [], matcher) == {
        "a": None, "a-perturbed": "a", "b": None, "a-rotated": "a", "b-super": "b", "c": None, "c-again": "c"}
    # earlier representatives (a previous submission) win over the new items
    earlier = [item("old-b", rotated(b, 12))]
    verdict = uq.deduplicate(new, earlier, matcher)
    assert verdict["b"] == "old-b" and verdict["b-super"] == "old-b"
    assert verdict["a"] is None and verdict["a-perturbed"] == "a"
    assert uq.deduplicate([], earlier, matcher) == {}


def test_find_reference(matcher):
    refs = [item("mp-zb", zincblende()), item("mp-rs", rocksalt()), item("mp-rs-2", perturbed(rocksalt(), 5))]
    assert uq.find_reference(item("x", supercell(rotated(rocksalt()))), refs, matcher) == "mp-rs"
    assert uq.find_reference(item("y", zincblende()), refs, matcher) == "mp-zb"
    assert uq.find_reference(item("z", cscl_type()), refs, matcher) is None
    assert uq.find_reference(item("w", rocksalt()), [], matcher) is None


def _grouped(structures: list[Structure], matcher) -> list[int | None]:
    """What the uniqueness stage does: reduce once, group by match key (in input order), deduplicate."""
    groups: dict[str, list[uq.Item]] = defaultdict(list)
    for i, s in enumerate(structures):
        reduced = uq.reduce_structure(s)
        groups[uq.match_key(reduced)].append(uq.Item(str(i), reduced))
    verdict: dict[str, str | None] = {}
    for items in groups.values():
        verdict.update(uq.deduplicate(items, [], matcher))
    return [None if verdict[str(i)] is None else int(verdict[str(i)]) for i in range(len(structures))]


def _partition(verdict: list[int | None]) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = defaultdict(set)
    for i, rep in enumerate(verdict):
        groups[i if rep is None else rep].add(i)
    return {frozenset(g) for g in groups.values()}


def test_grouped_deduplication_equals_all_pairs_baseline(matcher, generated):
    structures = list(generated)
    copies_of = [0, 5, 9, 17, 25, 31, 38, 40]
    makers = [lambda s: perturbed(s, 7), rotated, lambda s: supercell(s, (1, 1, 2)),
              lambda s: rotated(perturbed(s, 8), 200)]
    for n, i in enumerate(copies_of):
        structures.append(makers[n % len(makers)](generated[i]))
    baseline = uq.naive_unique(structures, matcher)
    grouped = _grouped(structures, matcher)
    assert grouped == baseline
    assert _partition(grouped) == _partition(baseline)
    # the comparison has teeth: the real generations contain duplicates of their own,
    # and every added copy is recognised as a duplicate of the class of its original
    assert sum(v is not None for v in baseline[:41]) >= 10
    for n, i in enumerate(copies_of):
        copy_index = 41 + n
        assert baseline[copy_index] is not None
        assert baseline[copy_index] == (baseline[i] if baseline[i] is not None else i)


# ------------------------------------------------------------------------------- through the database
def _mp_entries() -> dict[str, object]:
    with gzip.open(REFERENCES, "rt") as fh:
        return {e["entry_id"]: MontyDecoder().process_decoded(e) for e in json.load(fh)}


def _write(folder: Path, name: str, structure_or_text) -> None:
    text = structure_or_text if isinstance(structure_or_text, str) else str(CifWriter(structure_or_text,
                                                                                      symprec=0.1))
    (folder / name).write_text(text)


def _run_funnel(store, folder: Path, spec: dict) -> dict:
    summary = cp.run_ingest(store, folder, spec)
    for batch in summary["batches"]:
        cp.run_validity(store, spec["campaign"], batch)
    totals = defaultdict(int)
    for shard in range(spec["dedup_shards"]):
        for key, n in cp.run_uniqueness(store, spec["campaign"], shard).items():
            if key not in ("seconds", "ml_batches"):  # ml_batches: ids of the ML batches it planned
                totals[key] += n
    return {**summary, "uniqueness": dict(totals)}


def test_uniqueness_and_novelty_through_the_database(store, spec, tmp_path):
    entries = _mp_entries()
    loaded = cp.load_references(store, REFERENCES, set_name="mp")
    assert loaded["new"] == len(entries) == 5 and loaded["skipped_without_structure"] == 0
    with gzip.open(REFERENCES, "rt") as fh:
        hull = {e["entry_id"]: e["e_above_hull"] for e in json.load(fh)}
    for entry_id, entry in entries.items():
        ref = store.references.find_one({"_id": f"mp:{entry_id}"})
        assert ref["reduced_formula"] == entry.structure.composition.reduced_formula
        assert ref["properties"]["e_above_hull"] == hull[entry_id]
        assert ref["properties"]["energy_per_atom"] == pytest.approx(entry.energy_per_atom)
    assert cp.load_references(store, REFERENCES, set_name="mp")["new"] == 0      # loading again adds nothing

    nafepo4 = Structure.from_file(MP / "NaFePO4_mp-19226.cif")
    nafepo4_copy = nafepo4.copy()
    nafepo4_copy.scale_lattice(nafepo4.volume * 1.03)
    licoo2_text = (MP / "LiCoO2_mp-22526.cif").read_text()
    folder = tmp_path / "gen"
    folder.mkdir()
    _write(folder, "01_LiCoO2.cif", licoo2_text)                                    # an MP structure
    _write(folder, "02_NaFePO4.cif", nafepo4)                                       # no Na-Fe-P-O reference
    _write(folder, "03_LiNiO2_mp-770635.cif", (MP / "LiNiO2_mp-770635.cif").read_text())   # new polymorph
    _write(folder, "04_NaFePO4_expanded.cif", nafepo4_copy)                         # duplicate of 02
    _write(folder, "05_LiNiO2_mp-865631.cif", (MP / "LiNiO2_mp-865631.cif").read_text())   # same as mp-25411
    _write(folder, "06_LiCoO2_rotated.cif", rotated(Structure.from_str(licoo2_text, fmt="cif")))  # dup of 01
    # independent verdicts with pymatgen's matcher on the original structures
    sm = StructureMatcher()
    assert sm.fit(Structure.from_str(licoo2_text, fmt="cif"), entries["mp-22526-GGA+U"].structure)
    assert sm.fit(Structure.from_file(MP / "LiNiO2_mp-865631.cif"), entries["mp-25411-GGA+U"].structure)
    assert not any(sm.fit(Structure.from_file(MP / "LiNiO2_mp-770635.cif"), e.structure) for e in entries.values())
    assert sm.fit(nafepo4, nafepo4_copy)

    result = _run_funnel(store, folder, spec)
    assert result["inputs"] == 6
    docs = {d["source"]["file"]: d for d in store.candidates.find({"campaign": spec["campaign"]})}
    assert all(d["validity"]["valid"] for d in docs.values()), {k: d["validity"]["reason"] for k, d in docs.items()}

    known = docs["01_LiCoO2.cif"]
    assert known["status"] == "known" and known["matched_reference"] == "mp:mp-22526-GGA+U"
    assert known["duplicate_of"] is None and known["novel_composition"] is False
    other_known = docs["05_LiNiO2_mp-865631.cif"]
    assert other_known["status"] == "known" and other_known["matched_reference"] == "mp:mp-25411-GGA+U"

    novel_formula = docs["02_NaFePO4.cif"]
    assert novel_formula["status"] == "novel" and novel_formula["matched_reference"] is None
    assert novel_formula["novel_composition"] is True
    novel_polymorph = docs["03_LiNiO2_mp-770635.cif"]
    assert novel_polymorph["status"] == "novel" and novel_polymorph["matched_reference"] is None
    assert novel_polymorph["novel_composition"] is False      # LiNiO2 is in the references, this form is not

    dup = docs["04_NaFePO4_expanded.cif"]
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == novel_formula["_id"]
    assert "matched_reference" not in dup
    dup_known = docs["06_LiCoO2_rotated.cif"]
    assert dup_known["status"] == "duplicate" and dup_known["duplicate_of"] == known["_id"]
    assert result["uniqueness"] == {"duplicate": 2, "known": 2, "novel": 2, "moved": 6}
    assert store.status_counts(spec["campaign"]) == {"known": 2, "novel": 2, "duplicate": 2}
    # the references' reductions were cached for the next shard run
    cached = list(store.references.find({"reduced_formula": "LiCoO2"}, {"match_key": 1, "structure_reduced": 1}))
    assert cached and all(r.get("match_key") == "LiCoO2|4" and r.get("structure_reduced") for r in cached)

    # running the stage again changes nothing
    for shard in range(spec["dedup_shards"]):
        again = cp.run_uniqueness(store, spec["campaign"], shard)
        assert again["duplicate"] == again["known"] == again["novel"] == 0

    # a later submission: its copy of the earlier novel structure is a duplicate of that representative
    later = tmp_path / "later"
    later.mkdir()
    _write(later, "07_NaFePO4_perturbed.cif", perturbed(nafepo4, 9, 0.01))
    _write(later, "08_LiNiO2_mp-770635_rotated.cif", rotated(Structure.from_file(MP / "LiNiO2_mp-770635.cif")))
    _run_funnel(store, later, spec)
    docs = {d["source"]["file"]: d for d in store.candidates.find({"campaign": spec["campaign"]})}
    assert docs["07_NaFePO4_perturbed.cif"]["status"] == "duplicate"
    assert docs["07_NaFePO4_perturbed.cif"]["duplicate_of"] == novel_formula["_id"]
    assert docs["08_LiNiO2_mp-770635_rotated.cif"]["duplicate_of"] == novel_polymorph["_id"]
    assert store.status_counts(spec["campaign"]) == {"known": 2, "novel": 2, "duplicate": 4}
