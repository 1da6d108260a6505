"""Candidates: insertion, reads by query, state transitions, counts.

A part of :class:`fw_screen.store.ResultsStore` (it holds the collections these methods use).
"""

from __future__ import annotations

from typing import Iterable, Iterator

from pymongo import ASCENDING, InsertOne, UpdateOne
from pymongo.errors import BulkWriteError

from fw_screen import state as st
from fw_screen.store.base import in_chunks, new_submission_id, utcnow
from fw_screen.store.counters import new_token, tally_entry
from fw_screen.store.structures import encode_fields


class Candidates:
    """Candidates (:class:`~fw_screen.store.ResultsStore`)."""

    # ---------------------------------------------------------------------------------- candidates
    def insert_candidates(self, docs: list[dict], batch_size: int, submission: str | None = None,
                          start_index: int = 0) -> dict:
        """Insert new candidates (one campaign); already-present ids are left untouched (idempotent).

        New candidates get a campaign-wide ``seq`` (input order) and a ``batch`` of ``batch_size``
        (numbered from ``start_index``, the count of new candidates earlier in the same submission).
        Returns {"new": [ids], "existing": n, "batches": [batch ids]}.
        """
        if not docs:
            return {"new": [], "existing": 0, "batches": []}
        campaign = docs[0]["campaign"]
        ids = [d["_id"] for d in docs]
        present = {d["_id"] for d in self.candidates.find({"_id": {"$in": ids}}, {"_id": 1})}
        fresh, seen = [], set()
        for d in docs:
            if d["_id"] in present or d["_id"] in seen:
                continue
            seen.add(d["_id"])
            fresh.append(d)
        submission = submission or new_submission_id()
        start = self._reserve_seq(campaign, len(fresh)) if fresh else 0
        now = utcnow()
        token = new_token()
        rows = [{**encode_fields(d), "seq": start + i, "batch": f"{submission}.{(start_index + i) // batch_size:05d}", "submission": submission,
                 "created": now, "updated": now, "tally_pending": [tally_entry(token, None, d["status"], d)]}
                for i, d in enumerate(fresh)]
        inserted: set[str] = set()
        for chunk in in_chunks(rows, 1000):
            try:
                self.candidates.bulk_write([InsertOne(r) for r in chunk], ordered=False)
                inserted.update(r["_id"] for r in chunk)
            except BulkWriteError as exc:  # a concurrent submit inserted some first: theirs stand
                errors = exc.details["writeErrors"]
                if any(e.get("code") != 11000 for e in errors):
                    raise
                failed = {chunk[e["index"]]["_id"] for e in errors}
                inserted.update(r["_id"] for r in chunk if r["_id"] not in failed)
        self.apply_tally(token)
        new_ids = [r["_id"] for r in rows if r["_id"] in inserted]
        batches = sorted({r["batch"] for r in rows if r["_id"] in inserted})
        return {"new": new_ids, "existing": len(docs) - len(new_ids), "batches": batches}

    def candidates_for(self, query: dict, projection: dict | None = None, sort: str | None = "seq") -> Iterator[dict]:
        cursor = self.candidates.find(query, projection)
        return cursor.sort(sort, ASCENDING) if sort else cursor

    def transition(self, updates: Iterable[tuple[str, str, str, dict]], stage: str) -> int:
        """Apply (id, from_status, to_status, fields) updates in bulk; returns how many moved.

        A document no longer in ``from_status`` is left alone (its stage already ran).  Each write carries
        its tally entry, then the funnel counters take the chunk's deltas (:mod:`fw_screen.store.counters`).
        """
        updates = list(updates)
        now = utcnow()
        moved = 0
        for chunk in in_chunks(updates, 500):
            token = new_token()
            ops = []
            for cid, old, new, fields in chunk:
                st.check_transition(old, new)
                ops.append(UpdateOne({"_id": cid, "status": old},
                                     {"$set": {**encode_fields(fields), "status": new, "updated": now},
                                      "$inc": {f"runs.{stage}": 1},
                                      "$push": {"tally_pending": tally_entry(token, old, new, fields)}}))
            n = self.candidates.bulk_write(ops, ordered=False).modified_count
            moved += n
            if n:
                self.apply_tally(token)
        return moved

    def count(self, query: dict) -> int:
        return self.candidates.count_documents(query)

    def pending_batches(self, campaign: str) -> set[str]:
        """Batches that still hold candidates waiting for validity."""
        return set(self.candidates.distinct("batch", {"campaign": campaign, "status": st.INGESTED}))

    def status_counts(self, campaign: str) -> dict[str, int]:
        pipeline = [{"$match": {"campaign": campaign}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        return {d["_id"]: d["n"] for d in self.candidates.aggregate(pipeline)}

    def top_candidates(self, campaign: str, n: int = 10) -> list[dict]:
        """The ``n`` ML-done-or-later candidates lowest above the ML hull, by ML e_above_hull alone (DFT results
        play no part), as stored documents: the nested ``ml`` / ``dft_lite`` fields ``fw-screen status --top``
        and the demo print (an indexed sort would want ml.e_above_hull).

        Not the report's top candidates (:func:`fw_screen.reporting.report.top_rows`), which puts the DFT-done
        ones first by DFT e_above_hull and returns flat hull-table rows."""
        fields = {"reduced_formula": 1, "spacegroup": 1, "nsites": 1, "ml.e_above_hull": 1,
                  "ml.band_gap.band_gap": 1, "ml.band_gap.model_error": 1, "ml.hits.band_gap": 1,
                  "ml.hull.decomposition": 1, "dft_lite.status": 1, "dft_lite.band_gap.band_gap": 1,
                  "dft_lite.hits.band_gap": 1}
        return list(self.candidates.find({"campaign": campaign, "status": {"$in": list(st.ML_DONE_OR_LATER)}}, fields)
                    .sort("ml.e_above_hull", ASCENDING).limit(n))

    def failure_counts(self, campaign: str) -> dict[str, int]:
        pipeline = [{"$match": {"campaign": campaign, "status": "invalid"}},
                    {"$group": {"_id": "$validity.first_failure", "n": {"$sum": 1}}}]
        return {str(d["_id"]): d["n"] for d in self.candidates.aggregate(pipeline)}
