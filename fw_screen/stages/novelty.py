"""Novelty against the reference sets: the active sets' structures of a campaign's formulas (and, for a
disordered matcher, chemical systems), reduced once and matched against; serves novelty as generated
(:mod:`.uniqueness`) and after relaxation (:mod:`.relaxed`).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from pymatgen.core import Structure

from fw_screen.science import uniqueness as uq
from fw_screen.store import ResultsStore
from fw_screen.spec import CampaignSpec

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- uniqueness
def _reference_items(store: ResultsStore, formulas: set[str]) -> dict[str, list[uq.Item]]:
    """Reference structures of the given formulas by match key; reductions computed once and cached."""
    return _reduced_items(store, store.references_with_formula(
        formulas, {"structure": 1, "structure_reduced": 1, "match_key": 1}), lambda ref, key: key)


def _disordered_items(store: ResultsStore, chemsys: set[str]) -> dict[str, list[uq.Item]]:
    """Partially occupied reference structures of the given chemical systems, by chemical system."""
    return _reduced_items(store, store.disordered_references(
        chemsys, {"structure": 1, "structure_reduced": 1, "match_key": 1, "chemsys": 1}),
        lambda ref, key: ref["chemsys"])


def _reduced_items(store: ResultsStore, refs_iter, group_of) -> dict[str, list[uq.Item]]:
    by_group: dict[str, list[uq.Item]] = defaultdict(list)
    to_cache = []
    for ref in refs_iter:
        if ref.get("structure_reduced"):
            reduced = Structure.from_dict(ref["structure_reduced"])
            key = ref["match_key"]
        else:
            try:  # a release's structure is stored as it came: the first use decodes it
                reduced = uq.reduce_structure(Structure.from_dict(ref["structure"]))
            except Exception as exc:
                log.warning("reference %s: unreadable structure, not used for novelty (%s)", ref["_id"], exc)
                continue
            key = uq.match_key(reduced)
            to_cache.append((ref["_id"], {"structure_reduced": reduced.as_dict(), "match_key": key}))
        by_group[group_of(ref, key)].append(uq.Item(ref["_id"], reduced))
    if to_cache:
        store.cache_reference_reduction(to_cache)
    return by_group


class ReferenceMatcher:
    """Novelty against the active reference sets, for candidates of known formulas: the campaign's
    matcher within a match key and, with ``uniqueness.matcher: disordered``, the order-disorder matcher
    against partially occupied references of the same chemical system.  Used on generated cells (the
    uniqueness stage) and on ML-relaxed ones (:func:`relaxed_verdict`)."""

    def __init__(self, store: ResultsStore, spec: CampaignSpec, formulas: set[str], chemsys: set[str]):
        cfg = spec.uniqueness
        from fw_screen.stages import hulls

        self.matcher = uq.make_matcher(cfg)
        #: the active reference sets matched against (a verdict is re-taken when they change)
        self.sets = hulls.sets_version(store.reference_sets())
        self.by_key = _reference_items(store, formulas)
        self.formulas = {key.split("|")[0] for key in self.by_key}
        self.disordered: dict[str, list[uq.Item]] = {}
        self.order_matcher = None
        if cfg.get("matcher") == "disordered":
            self.disordered = _disordered_items(store, chemsys)
            self.order_matcher = uq.disordered_matcher(cfg)

    def match(self, item: uq.Item, key: str, chemsys: str) -> str | None:
        return uq.find_reference(item, self.by_key.get(key, []), self.matcher, self.disordered.get(chemsys),
                                 self.order_matcher)

    def known_formula(self, formula: str) -> bool:
        return formula in self.formulas
