"""The DFT tiers: DFT-lite band gaps, DFT candidates, claims on consistently computed reference phases, hulls.

A part of :class:`fw_screen.store.ResultsStore` (it holds the collections these methods use).
"""

from __future__ import annotations

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from fw_screen import state as st
from fw_screen.store.base import dft_lite_unplanned, utcnow
from fw_screen.store.structures import encode_fields


class DFTResults:
    """The DFT tiers (:class:`~fw_screen.store.ResultsStore`)."""

    # ------------------------------------------------------------------------------------ DFT-lite tier
    def dft_lite_waiting(self, campaign: str, max_e_above_hull: float) -> list[dict]:
        """ML-done candidates of a campaign, ML-stable (``ml.e_above_hull`` at most ``max_e_above_hull``),
        that have no DFT-lite result yet: ``_id``, ``targets``, ``ml.structure_relaxed``, ``ml.e_above_hull``."""
        return list(self.candidates.find(dft_lite_unplanned(campaign, max_e_above_hull),
                                         {"targets": 1, "ml.structure_relaxed": 1, "ml.e_above_hull": 1, "seq": 1,
                                          "ml.matched_reference_relaxed": 1, "ml.duplicate_of_relaxed": 1}
                                         ).sort("seq", ASCENDING))

    def dft_lite_pending_count(self, campaign: str, max_e_above_hull: float) -> int:
        """How many of :meth:`dft_lite_waiting` there are, plus those queued (counted, not fetched)."""
        return (self.count(dft_lite_unplanned(campaign, max_e_above_hull))
                + self.count({"campaign": campaign, "status": st.ML_DONE, "dft_lite.status": "queued"}))

    def dft_lite_candidate(self, candidate_id: str) -> dict | None:
        """What a DFT-lite Firework needs of one candidate (None if it is gone)."""
        return self.candidates.find_one({"_id": candidate_id}, {
            "campaign": 1, "status": 1, "elements": 1, "targets": 1, "ml.structure_relaxed": 1,
            "ml.e_above_hull": 1, "dft_lite.status": 1})

    def set_dft_lite(self, results: list[tuple[str, dict]]) -> int:
        """Store DFT-lite results (``dft_lite`` subdocument) of ML-done candidates; returns how many landed
        (a candidate that has moved past ``ml_done`` in the meantime keeps what it has)."""
        n = 0
        for candidate_id, fields in results:
            n += self.candidates.update_one({"_id": candidate_id, "status": st.ML_DONE},
                                            {"$set": {"dft_lite": fields}}).modified_count
        return n

    def dft_lite_queued(self, campaign: str) -> list[str]:
        """Ids of the campaign's ML-done candidates whose DFT-lite band gap is queued, in input order."""
        return [d["_id"] for d in self.candidates.find(
            {"campaign": campaign, "status": st.ML_DONE, "dft_lite.status": "queued"}, {"_id": 1}).sort("seq", ASCENDING)]

    def dft_lite_summary(self, campaign: str) -> dict:
        """{status: n} of the campaign's DFT-lite band gaps, plus ``hit``: how many hit their target."""
        # (campaign, status) alone, so that its index serves the match: a DFT-lite gap exists from ml_done on;
        # candidates without one group under None, dropped below
        pipeline = [{"$match": {"campaign": campaign, "status": {"$in": [st.ML_DONE, st.PROMOTED, st.DFT_DONE,
                                                                         st.DFT_FAILED]}}},
                    {"$group": {"_id": "$dft_lite.status", "n": {"$sum": 1},
                                "hit": {"$sum": {"$cond": [{"$eq": ["$dft_lite.hits.band_gap.hit", True]}, 1, 0]}}}}]
        out = {"hit": 0}
        for d in self.candidates.aggregate(pipeline):
            if d["_id"] is None:
                continue
            out[d["_id"]] = d["n"]
            out["hit"] += d["hit"]
        return out

    def set_dft_lite_if_absent(self, results: list[tuple[str, dict]]) -> list[str]:
        """Store ``dft_lite`` on ML-done candidates that have none yet; returns the ids that took it (of two
        workers planning the same candidates, each candidate goes to one)."""
        won = []
        for candidate_id, fields in results:
            if self.candidates.update_one({"_id": candidate_id, "status": st.ML_DONE,
                                           "dft_lite.status": {"$exists": False}},
                                          {"$set": {"dft_lite": fields}}).modified_count:
                won.append(candidate_id)
        return won

    def promoted_per_condition(self, campaign: str) -> dict:
        """{str(band-gap target): n} of candidates promoted in earlier rounds."""
        pipeline = [{"$match": {"campaign": campaign, "status": {"$in": [st.PROMOTED, st.DFT_DONE, st.DFT_FAILED]}}},
                    {"$group": {"_id": "$targets.band_gap.value", "n": {"$sum": 1}}}]
        return {str(d["_id"]): d["n"] for d in self.candidates.aggregate(pipeline)}

    def dft_summary(self, campaign: str) -> dict:
        """Counts of the DFT stage in one aggregation: hull states, DFT-stable, DFT band-gap hits."""
        def count(cond):
            return {"$sum": {"$cond": [cond, 1, 0]}}

        group = {"_id": None, "promoted": {"$sum": 1},
                 "pending": count({"$eq": ["$status", st.PROMOTED]}),
                 "done": count({"$eq": ["$status", st.DFT_DONE]}),
                 "failed": count({"$eq": ["$status", st.DFT_FAILED]}),
                 "hull_done": count({"$eq": ["$dft.hull_status", "done"]}),
                 "hull_waiting": count({"$eq": ["$dft.hull_status", "waiting"]}),
                 "hull_failed": count({"$in": ["$dft.hull_status", ["failed", "not_computed"]]}),
                 "stable": count({"$eq": ["$dft.stable", True]}),
                 "band_gap_hit": count({"$eq": ["$dft.hits.band_gap.hit", True]})}
        rows = list(self.candidates.aggregate([
            {"$match": {"campaign": campaign, "status": {"$in": [st.PROMOTED, st.DFT_DONE, st.DFT_FAILED]}}},
            {"$group": group}]))
        return {k: v for k, v in rows[0].items() if k != "_id"} if rows else {}

    def dft_candidates(self, campaign: str) -> list[dict]:
        """Promoted candidates with their ML and DFT numbers, lowest DFT e_above_hull first."""
        fields = {"reduced_formula": 1, "status": 1, "ml.e_above_hull": 1, "ml.band_gap.band_gap": 1,
                  "ml.band_gap.model_error": 1, "dft_lite.band_gap.band_gap": 1,
                  "targets.band_gap.value": 1, "promotion.reason": 1, "dft.e_above_hull": 1,
                  "dft.band_gap": 1, "dft.hull_status": 1, "dft.hull_reason": 1, "dft.reason": 1,
                  "dft.hits.band_gap.hit": 1, "dft.decomposition": 1, "dft.structure_relaxed.sites.label": 1}
        return list(self.candidates.find({"campaign": campaign, "status": {"$in": [
            st.PROMOTED, st.DFT_DONE, st.DFT_FAILED]}}, fields).sort([("dft.e_above_hull", ASCENDING), ("_id", ASCENDING)]))

    def dft_candidate(self, candidate_id: str) -> dict | None:
        """What a DFT result is completed with: campaign, elements, targets, the ML numbers."""
        return self.candidates.find_one({"_id": candidate_id}, {"campaign": 1, "elements": 1, "structure_reduced": 1,
                                                                "targets": 1, "ml.e_above_hull": 1, "ml.band_gap": 1})

    def claim_dft_reference(self, doc: dict) -> bool:
        """Claim a reference calculation (``_id`` = protocol id + phase key); False when someone has it.

        A failed claim (status ``failed``) may be taken again, and so may a ``running`` claim by the same
        Firework (``fw_id``: a rerun after its launcher died); the first run's reason is kept in ``history``."""
        try:
            self.dft_references.insert_one({**doc, "status": "running", "claimed": utcnow(), "attempts": 1})
            return True
        except DuplicateKeyError:
            retake = [{"status": "failed"}, {"status": "released"}]  # released: by `fw-screen recover`
            if doc.get("fw_id") is not None:
                retake.append({"status": "running", "fw_id": doc["fw_id"]})
            res = self.dft_references.update_one(
                {"_id": doc["_id"], "$or": retake},
                {"$set": {"status": "running", "claimed": utcnow(), "fw_id": doc.get("fw_id")},
                 "$inc": {"attempts": 1}, "$push": {"history": {"at": utcnow(), "event": "reclaimed"}}})
            return res.modified_count == 1

    def finish_dft_reference(self, ref_id: str, status: str, result: dict) -> None:
        self.dft_references.update_one({"_id": ref_id}, {"$set": {"status": status, "result": result,
                                                                  "finished": utcnow()}})

    def running_dft_references(self) -> list[dict]:
        """Reference claims in ``running`` (computing now, or left behind by a launcher that died)."""
        return list(self.dft_references.find({"status": "running"}, {"structure_initial": 0, "protocol": 0}))

    def release_dft_reference(self, ref_id: str, claimed, reason: str) -> bool:
        """Give back a ``running`` claim whose run is dead (only if nobody retook it since: same ``claimed``);
        ``released`` claims are taken again by the next Firework that needs the reference."""
        res = self.dft_references.update_one(
            {"_id": ref_id, "status": "running", "claimed": claimed},
            {"$set": {"status": "released", "released": utcnow()},
             "$push": {"history": {"at": utcnow(), "event": "released", "reason": reason}}})
        return res.modified_count == 1

    def dft_reference_docs(self, ref_ids: list[str]) -> dict[str, dict]:
        return {d["_id"]: d for d in self.dft_references.find({"_id": {"$in": list(ref_ids)}})}

    def dft_waiting(self, protocol_id: str | None = None) -> list[dict]:
        """DFT-done candidates whose hull waits for reference calculations."""
        query = {"dft.hull_status": "waiting"}  # fits the (dft.hull_status, dft.protocol_id) index
        if protocol_id:
            query["dft.protocol_id"] = protocol_id
        return [d for d in self.candidates.find(query, {"dft": 1, "targets": 1, "campaign": 1,
                                                        "ml.e_above_hull": 1, "status": 1})
                if d.get("status") == st.DFT_DONE]

    def set_dft_hull(self, candidate_id: str, expected_status: str, fields: dict) -> bool:
        """Set DFT hull fields of a DFT-done candidate once (guarded by the current hull status)."""
        res = self.candidates.update_one({"_id": candidate_id, "status": st.DFT_DONE,
                                          "dft.hull_status": expected_status},
                                         {"$set": {**encode_fields({f"dft.{k}": v for k, v in fields.items()}),
                                                   "updated": utcnow()}})
        return res.modified_count == 1
