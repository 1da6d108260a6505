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
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure


def make_matcher(cfg: dict) -> StructureMatcher:
    """The campaign's matcher from the spec's ``uniqueness`` section."""
    return StructureMatcher(ltol=cfg["ltol"], stol=cfg["stol"], angle_tol=cfg["angle_tol"])


def reduce_structure(structure: Structure) -> Structure:
    """The primitive, Niggli-reduced cell StructureMatcher would compare (computed once, then cached)."""
    return StructureMatcher._get_reduced_structure(structure, primitive_cell=True, niggli=True)


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


def find_reference(item: Item, references: list[Item], matcher: StructureMatcher) -> str | None:
    """Id of the first reference structure matching ``item``, or None (novel)."""
    return next((ref.id for ref in references if fits(matcher, item.reduced, ref.reduced)), None)


def naive_unique(structures: list[Structure], matcher: StructureMatcher) -> list[int | None]:
    """The all-pairs baseline (no grouping, no cached reduction); for benchmarks and cross-checks."""
    out: list[int | None] = []
    for i, s in enumerate(structures):
        out.append(next((j for j in range(i) if out[j] is None and matcher.fit(s, structures[j])), None))
    return out
