"""The ML stage's bookkeeping: ML batches, promotion inputs, novelty after relaxation.

A part of :class:`fw_screen.store.ResultsStore` (it holds the collections these methods use).
"""

from __future__ import annotations

from typing import Iterable, Iterator

from pymongo import UpdateMany, UpdateOne

from fw_screen import state as st
from fw_screen.store.base import in_chunks, utcnow
from fw_screen.store.counters import ml_facts, new_token, tally_entry
from fw_screen.store.structures import encode_fields


class MLStage:
    """The ML stage's bookkeeping (:class:`~fw_screen.store.ResultsStore`)."""

    def assign_ml_batches(self, campaign: str, ids: list[str], size: int, prefix: str) -> list[str]:
        """Group novel candidates into ML batches of ``size``; returns the batch ids."""
        batches = []
        ops = []
        for i in range(0, len(ids), size):
            batch = f"{prefix}.ml{i // size:04d}"
            batches.append(batch)
            ops.append(UpdateMany({"_id": {"$in": ids[i:i + size]}, "campaign": campaign}, {"$set": {"ml_batch": batch}}))
        if ops:
            self.candidates.bulk_write(ops, ordered=False)
        return batches

    def pending_ml_batches(self, campaign: str) -> set[str]:
        """ML batches that still hold novel candidates waiting for the ML stage."""
        return {b for b in self.candidates.distinct("ml_batch", {"campaign": campaign, "status": st.NOVEL})
                if b is not None}

    def no_reference_elements(self, campaign: str) -> dict[str, list[str]]:
        """{id: elements} of the campaign's ``no_reference`` candidates."""
        return {d["_id"]: d.get("elements") or [] for d in self.candidates.find(
            {"campaign": campaign, "status": st.NO_REFERENCE}, {"elements": 1})}

    def requeue_for_ml(self, ids: list[str]) -> int:
        """``no_reference`` -> ``novel`` for candidates a reference set loaded since covers: their band-gap-only
        result and ML batch are cleared (the ML stage runs on them again), the old reason is kept."""
        st.check_transition(st.NO_REFERENCE, st.NOVEL)
        now, moved = utcnow(), 0
        for chunk in in_chunks(list(ids), 500):
            token = new_token()
            old_ml = {d["_id"]: d.get("ml") or {} for d in self.candidates.find(
                {"_id": {"$in": chunk}}, {"ml.reason": 1, "ml.e_above_hull": 1, "ml.hits.band_gap.hit": 1})}
            ops = []
            for cid in chunk:
                entry = {**tally_entry(token, st.NO_REFERENCE, st.NOVEL, {}), "ml_old": ml_facts(old_ml.get(cid, {}))}
                ops.append(UpdateOne({"_id": cid, "status": st.NO_REFERENCE},
                                     {"$set": {"status": st.NOVEL, "updated": now, "ml_requeued": {
                                         "from": st.NO_REFERENCE, "at": now,
                                         "reason": old_ml.get(cid, {}).get("reason")}},
                                      "$unset": {"ml": "", "ml_batch": ""}, "$inc": {"runs.ml_requeue": 1},
                                      "$push": {"tally_pending": entry}}))
            n = self.candidates.bulk_write(ops, ordered=False).modified_count
            moved += n
            if n:
                self.apply_tally(token)
        return moved

    def unbatched_novel(self, campaign: str) -> list[str]:
        """Novel candidates without an ML batch, in input order (the ML-batch test done here, not by the
        server: with it the filter would no longer fit the (campaign, status) index)."""
        return [d["_id"] for d in self.candidates.find({"campaign": campaign, "status": st.NOVEL},
                                                       {"ml_batch": 1}).sort("seq", 1) if "ml_batch" not in d]

    def representatives(self, campaign: str, match_keys: list[str], statuses: Iterable[str],
                        fields: dict) -> Iterator[dict]:
        """Candidates of the campaign with one of ``match_keys`` and one of ``statuses`` (the status test
        done here: two ``$in`` clauses would not fit the (campaign, match_key, status) index)."""
        statuses = set(statuses)
        for doc in self.candidates.find({"campaign": campaign, "match_key": {"$in": list(match_keys)}},
                                        {**fields, "status": 1}):
            if doc.get("status") in statuses:
                yield doc

    # ------------------------------------------------------------------------------------------ DFT
    def ml_done_for_promotion(self, campaign: str) -> list[dict]:
        """ML-done candidates of a campaign with what promotion needs to decide."""
        fields = {"ml.e_above_hull": 1, "ml.relax.status": 1, "ml.hits": 1, "ml.band_gap.band_gap": 1,
                  "ml.structure_relaxed.sites.label": 1, "nsites": 1, "targets": 1, "elements": 1,
                  "dft_lite.status": 1, "dft_lite.reason": 1, "dft_lite.band_gap.band_gap": 1, "dft_lite.hits": 1,
                  "ml.matched_reference_relaxed": 1, "ml.duplicate_of_relaxed": 1}
        return list(self.candidates.find({"campaign": campaign, "status": st.ML_DONE}, fields))

    # ------------------------------------------------------------------------- after relaxation (S.U.N.)
    def relaxed_candidates(self, campaign: str, fields: dict) -> list[dict]:
        """The ML-done-or-later candidates of a campaign (each has ``ml.structure_relaxed``, except those the
        single-point pre-screen left unrelaxed: ``ml.relax.status`` "skipped"; callers drop them) with
        ``fields`` (campaign + status index; filter further in Python, not in the query)."""
        return list(self.candidates.find({"campaign": campaign, "status": {"$in": list(st.ML_DONE_OR_LATER)}},
                                         fields))

    def relaxed_pass(self, campaign: str) -> dict | None:
        """What the last post-relaxation pass of a campaign saw (``fingerprint``) and did (``counts``, ``at``)."""
        return (self.campaigns.find_one({"_id": campaign}, {"relaxed_pass": 1}) or {}).get("relaxed_pass")

    def set_relaxed_pass(self, campaign: str, record: dict) -> None:
        self.campaigns.update_one({"_id": campaign}, {"$set": {"relaxed_pass": {**record, "at": utcnow()}}})

    def set_fields(self, updates: list[tuple[str, dict]]) -> int:
        """``$set`` fields on candidates by id, in bulk, status untouched; returns how many changed."""
        ops = [UpdateOne({"_id": cid}, {"$set": encode_fields(fields)}) for cid, fields in updates if fields]
        changed = 0
        for chunk in in_chunks(ops, 1000):
            changed += self.candidates.bulk_write(chunk, ordered=False).modified_count
        return changed
