"""Stage 3 runner, uniqueness and novelty: one shard of valid candidates against the campaign and the active
reference sets (:mod:`fw_screen.science.uniqueness`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from pymatgen.core import Structure

from fw_screen import state as st
from fw_screen.science import uniqueness as uq
from fw_screen.stages.novelty import ReferenceMatcher
from fw_screen.stages.stability import plan_ml_batches
from fw_screen.store import ResultsStore

log = logging.getLogger(__name__)


def run_uniqueness(store: ResultsStore, campaign: str, shard: int) -> dict:
    """Uniqueness within the campaign and novelty against references for one shard of formulas.

    A lease on (campaign, shard) makes concurrent runs on the same shard take turns; every pending
    (status ``valid``) candidate of the shard is decided, whichever submission it came from.
    """
    spec = store.campaign_spec(campaign)
    matcher = uq.make_matcher(spec.uniqueness)
    lock = f"{campaign}:uniqueness:{shard}"
    owner = store.acquire_lock(lock)
    counts = {st.DUPLICATE: 0, st.KNOWN: 0, st.NOVEL: 0}
    t0 = time.perf_counter()
    try:
        pending = list(store.candidates_for(
            {"campaign": campaign, "shard": shard, "status": st.VALID},
            {"match_key": 1, "reduced_formula": 1, "structure_reduced": 1, "seq": 1, "chemsys": 1}))
        if not pending:
            return {**counts, "seconds": 0.0}
        groups: dict[str, list[dict]] = defaultdict(list)
        for doc in pending:
            groups[doc["match_key"]].append(doc)
        references = ReferenceMatcher(store, spec, {doc["reduced_formula"] for doc in pending},
                                      {doc.get("chemsys") for doc in pending})
        reps_by_key: dict[str, list[uq.Item]] = defaultdict(list)
        for rep in store.representatives(campaign, list(groups), [st.KNOWN, *st.NOVEL_OR_LATER],
                                         {"match_key": 1, "structure_reduced": 1}):
            reps_by_key[rep["match_key"]].append(uq.Item(rep["_id"], Structure.from_dict(rep["structure_reduced"])))
        updates = []
        for i, (key, docs) in enumerate(groups.items()):
            items = [uq.Item(d["_id"], Structure.from_dict(d["structure_reduced"])) for d in docs]
            verdict = uq.deduplicate(items, reps_by_key[key], matcher)
            for item, doc in zip(items, docs):
                dup = verdict[item.id]
                if dup is not None:
                    updates.append((item.id, st.VALID, st.DUPLICATE, {"duplicate_of": dup}))
                    continue
                ref = references.match(item, key, doc.get("chemsys"))
                fields = {"duplicate_of": None, "matched_reference": ref,
                          "novel_composition": not references.known_formula(doc["reduced_formula"])}
                updates.append((item.id, st.VALID, st.KNOWN if ref else st.NOVEL, fields))
            if i % 50 == 49:
                store.renew_lock(lock, owner)
        for _, _, new, _ in updates:
            counts[new] += 1
        counts["moved"] = store.transition(updates, "uniqueness")
        novel = [cid for cid, _, new, _ in updates if new == st.NOVEL]
        counts["ml_batches"] = plan_ml_batches(store, campaign, novel, spec)
    finally:
        store.release_lock(lock, owner)
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    return counts
