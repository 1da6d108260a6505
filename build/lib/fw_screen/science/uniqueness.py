"""Funnel stage 3 — uniqueness and novelty: structures in, ``duplicate_of`` / matched reference out.

Matching is pymatgen's :class:`~pymatgen.analysis.structure_matcher.StructureMatcher` (ltol 0.2,
stol 0.3, angle_tol 5 by default), never all-pairs.  With StructureMatcher's defaults
(``primitive_cell=True``, ``attempt_supercell=False``) two structures can only match when their reduced
(primitive, Niggli) cells have the same composition and the same number of sites, so that pair is the
*match key*: candidates are compared only within a key, and each structure is reduced once
(:func:`reduce_structure`) and then fitted with ``skip_structure_reduction=True``.

Within a campaign the first occurrence (lowest ``seq``) is the representative; later matches record
``duplicate_of``.  Representatives are then matched against reference structures with the same key:
a match makes the candidate ``known``, no match ``novel``; ``novel_composition`` says whether any
reference has the same reduced formula.

The same matching runs a second time on the ML-relaxed structures (:func:`relaxed_groups`): a generated cell
StructureMatcher did not match may relax onto a known phase or onto another candidate.  There the
representative of a group is the one lowest above the hull, not the first generated.

``uniqueness.matcher: disordered`` adds partially occupied references: a candidate whose fractional
composition equals one's (within :data:`COMPOSITION_ATOL` / ``RTOL``) is fitted against it by a
StructureMatcher with pymatgen's ``OrderDisorderElementComparator`` and supercells allowed
(:func:`disordered_matcher`), so an ordered approximant of a known solid solution is known -- the behaviour
of MatterGen's disordered structure matcher for disordered references.  (MatterGen also disorders ordered
structures whose elements could substitute by a Hume-Rothery rule; that is not done here.)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from pymatgen.analysis.structure_matcher import (
    OrderDisorderElementComparator,
    StructureMatcher,
)
from pymatgen.core import Structure

#: fractional compositions of an ordered candidate and a disordered reference must agree this closely
#: (Composition.almost_equals; MatterGen's disordered matcher uses the same pair)
COMPOSITION_ATOL = 1e-2
COMPOSITION_RTOL = 1e-1


def make_matcher(cfg: dict) -> StructureMatcher:
    """The campaign's matcher from the spec's ``uniqueness`` section."""
    return StructureMatcher(ltol=cfg["ltol"], stol=cfg["stol"], angle_tol=cfg["angle_tol"])


def disordered_matcher(cfg: dict) -> StructureMatcher:
    """The matcher for ordered candidates against partially occupied references: the campaign's
    tolerances, an order-disorder comparator (a site matches when the species overlap) and supercells
    (the approximant's cell is a supercell of the solid solution's)."""
    return StructureMatcher(ltol=cfg["ltol"], stol=cfg["stol"], angle_tol=cfg["angle_tol"],
                            comparator=OrderDisorderElementComparator(), attempt_supercell=True)


def is_ordered_dict(structure: dict) -> bool:
    """Whether a serialised structure (Structure.as_dict) has every site fully occupied by one species,
    read without building the Structure."""
    for site in structure.get("sites", ()):
        species = site.get("species") or []
        if len(species) != 1 or abs(float(species[0].get("occu", 1.0)) - 1.0) > 1e-8:
            return False
    return True


def fits_disordered(matcher: StructureMatcher, candidate: Structure, reference: Structure) -> bool:
    """An ordered candidate against a partially occupied reference: same fractional composition (within
    the tolerances above), then the order-disorder fit."""
    a, b = candidate.composition.fractional_composition, reference.composition.fractional_composition
    if not a.almost_equals(b, rtol=COMPOSITION_RTOL, atol=COMPOSITION_ATOL):
        return False
    return matcher.fit(candidate, reference)


def reduce_structure(structure: Structure) -> Structure:
    """The primitive, Niggli-reduced cell StructureMatcher would compare (computed once, then cached).

    StructureMatcher (primitive_cell=True) reduces the same way: Niggli first, then the primitive cell, with
    pymatgen's public Structure methods (tests/test_uniqueness.py holds the two equal on the demo's CIFs)."""
    return Structure.from_sites(structure.get_reduced_structure(reduction_algo="niggli").get_primitive_structure())


def match_key(reduced: Structure) -> str:
    """Invariant that matching structures share: reduced formula and site count of the reduced cell."""
    return f"{reduced.composition.reduced_formula}|{len(reduced)}"


def shard_of(reduced_formula: str, n_shards: int) -> int:
    """Stable shard for a formula (crc32, same on every host and Python run)."""
    return zlib.crc32(reduced_formula.encode()) % n_shards


def fits(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    """StructureMatcher.fit on two already-reduced structures."""
    return matcher.fit(a, b, skip_structure_reduction=True)


@dataclass
class Item:
    id: str
    reduced: Structure


def deduplicate(new: list[Item], representatives: list[Item], matcher: StructureMatcher) -> dict[str, str | None]:
    """For each new item (in order), the id of the representative it duplicates, or None if it is new.

    ``representatives`` are the earlier representatives of the same match key; a new item that matches
    none of them becomes a representative for the items after it.
    """
    reps = list(representatives)
    verdict: dict[str, str | None] = {}
    for item in new:
        match = next((rep.id for rep in reps if fits(matcher, item.reduced, rep.reduced)), None)
        verdict[item.id] = match
        if match is None:
            reps.append(item)
    return verdict


def find_reference(item: Item, references: list[Item], matcher: StructureMatcher,
                   disordered: list[Item] | None = None, order_matcher: StructureMatcher | None = None) -> str | None:
    """Id of the first reference structure matching ``item``, or None (novel).  ``disordered``: partially
    occupied references to try next with ``order_matcher`` (:func:`disordered_matcher`)."""
    found = next((ref.id for ref in references if fits(matcher, item.reduced, ref.reduced)), None)
    if found is None and disordered:
        found = next((ref.id for ref in disordered if fits_disordered(order_matcher, item.reduced, ref.reduced)),
                     None)
    return found


def relaxed_groups(items: list[Item], energies: dict[str, float], matcher: StructureMatcher) -> dict[str, str | None]:
    """Duplicates among relaxed structures of one match key: {id: representative id or None}.

    Items are taken lowest ``energies`` (e_above_hull) first, ties by the order given, so each group's
    representative is its member lowest above the hull.
    """
    order = sorted(range(len(items)), key=lambda i: (energies.get(items[i].id, np.inf), i))
    return deduplicate([items[i] for i in order], [], matcher)


def displacement_rmsd(generated: Structure, relaxed: Structure) -> float:
    """Root-mean-square displacement of the atoms from the generated to the relaxed structure (Angstrom).

    The relaxation keeps the atoms in order, so the correspondence is known: fractional displacements
    (wrapped to the nearest image) are taken in the relaxed cell, and the mean displacement (a rigid
    translation, which the cell filter leaves free) is removed.  The quantity MatterGen reports as the RMSD
    from relaxation; unlike StructureMatcher.get_rms_dist it needs no match and is not normalised.
    """
    if len(generated) != len(relaxed):
        raise ValueError(f"{len(generated)} generated sites but {len(relaxed)} relaxed")
    d = relaxed.frac_coords - generated.frac_coords
    d -= np.round(d)
    cart = d @ relaxed.lattice.matrix
    cart -= cart.mean(axis=0)
    return float(np.sqrt((cart ** 2).sum(axis=1).mean()))


def naive_unique(structures: list[Structure], matcher: StructureMatcher) -> list[int | None]:
    """The all-pairs baseline (no grouping, no cached reduction); for benchmarks and cross-checks."""
    out: list[int | None] = []
    for i, s in enumerate(structures):
        out.append(next((j for j in range(i) if out[j] is None and matcher.fit(s, structures[j])), None))
    return out
