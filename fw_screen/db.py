"""All MongoDB access of fw-screen (the FireWorks collections are FireWorks' own business).

Results live in the LaunchPad's database, so one LaunchPad file (``-l my_launchpad.yaml``) says where
everything is.  Collections:

* ``candidates``: one document per input CIF (``_id`` = ``campaign:hash``), with its stage results;
* ``campaigns``: one document per campaign, holding the validated spec it runs with;
* ``references``: reference structures for novelty, keyed by reduced formula;
* ``reference_entries``: energy entries (MP2020-corrected scale) for convex hulls, keyed by chemical system;
* ``reference_systems``: chemical systems whose entries were loaded complete (a hull inside one is trusted);
* ``fws_locks``: leases that serialise uniqueness work on one shard of one campaign.

Status changes go through :meth:`ResultsStore.transition`, which only updates documents still in the
expected ``from`` status: a stage that runs twice (a re-run Firework, two launchers) changes nothing the
second time, so every candidate is processed exactly once per stage.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import uuid
from typing import Iterable, Iterator

from pymongo import ASCENDING, InsertOne, UpdateMany, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from fw_screen import status as st

CANDIDATES = "candidates"
CAMPAIGNS = "campaigns"
REFERENCES = "references"
ENTRIES = "reference_entries"
SYSTEMS = "reference_systems"
LOCKS = "fws_locks"
DFT_REFERENCES = "dft_references"  # consistently computed reference phases, one run each per protocol


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class StoreError(RuntimeError):
    """A database-level problem stated for a user (spec mismatch, lock timeout, unknown campaign)."""


class ResultsStore:
    """fw-screen's view of one MongoDB database."""

    def __init__(self, db: Database):
        self.db = db
        self.candidates = db[CANDIDATES]
        self.campaigns = db[CAMPAIGNS]
        self.references = db[REFERENCES]
        self.entries = db[ENTRIES]
        self.systems = db[SYSTEMS]
        self.locks = db[LOCKS]
        self.dft_references = db[DFT_REFERENCES]

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_launchpad(cls, launchpad) -> "ResultsStore":
        return cls(launchpad.db)

    @classmethod
    def from_file(cls, path: str) -> "ResultsStore":
        """A store on the database a LaunchPad YAML file names (FireWorks' own connection logic)."""
        from fireworks import LaunchPad

        return cls(LaunchPad.from_file(path).db)

    def ensure_indexes(self) -> None:
        c = self.candidates
        c.create_index([("campaign", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("batch", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("seq", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("shard", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("match_key", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("reduced_formula", ASCENDING)])
        c.create_index("content_hash")
        self.references.create_index("reduced_formula")
        self.references.create_index("match_key")
        self.references.create_index("set")
        self.entries.create_index("chemsys")
        c.create_index([("campaign", ASCENDING), ("ml_batch", ASCENDING)])
        c.create_index([("dft.protocol_id", ASCENDING), ("dft.hull_status", ASCENDING)])
        self.dft_references.create_index([("protocol_id", ASCENDING), ("key", ASCENDING)])

    # ------------------------------------------------------------------------------------ campaigns
    def register_campaign(self, spec: dict) -> dict:
        """Store the spec of a new campaign, or check it equals the stored one."""
        name = spec["campaign"]
        try:
            self.campaigns.insert_one({"_id": name, "spec": spec, "created": utcnow(), "next_seq": 0})
            self.ensure_indexes()
            return spec
        except DuplicateKeyError:
            stored = self.campaigns.find_one({"_id": name})["spec"]
            if stored != spec:
                changed = sorted(k for k in set(stored) | set(spec) if stored.get(k) != spec.get(k))
                raise StoreError(
                    f"campaign {name!r} already exists with a different spec (fields differ: "
                    f"{', '.join(changed)}); use a new campaign name, or the stored spec") from None
            return stored

    def campaign_spec(self, name: str) -> dict:
        doc = self.campaigns.find_one({"_id": name}, {"spec": 1})
        if doc is None:
            raise StoreError(f"unknown campaign {name!r}")
        return doc["spec"]

    def campaign_names(self) -> list[str]:
        return sorted(d["_id"] for d in self.campaigns.find({}, {"_id": 1}))

    def _reserve_seq(self, campaign: str, n: int) -> int:
        doc = self.campaigns.find_one_and_update({"_id": campaign}, {"$inc": {"next_seq": n}},
                                                 projection={"next_seq": 1})
        return doc["next_seq"]

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
        rows = [{**d, "seq": start + i, "batch": f"{submission}.{(start_index + i) // batch_size:05d}", "submission": submission,
                 "created": now, "updated": now} for i, d in enumerate(fresh)]
        inserted: set[str] = set()
        for chunk in _chunks(rows, 1000):
            try:
                self.candidates.bulk_write([InsertOne(r) for r in chunk], ordered=False)
                inserted.update(r["_id"] for r in chunk)
            except BulkWriteError as exc:  # a concurrent submit inserted some first: theirs stand
                errors = exc.details["writeErrors"]
                if any(e.get("code") != 11000 for e in errors):
                    raise
                failed = {chunk[e["index"]]["_id"] for e in errors}
                inserted.update(r["_id"] for r in chunk if r["_id"] not in failed)
        new_ids = [r["_id"] for r in rows if r["_id"] in inserted]
        batches = sorted({r["batch"] for r in rows if r["_id"] in inserted})
        return {"new": new_ids, "existing": len(docs) - len(new_ids), "batches": batches}

    def candidates_for(self, query: dict, projection: dict | None = None, sort: str | None = "seq") -> Iterator[dict]:
        cursor = self.candidates.find(query, projection)
        return cursor.sort(sort, ASCENDING) if sort else cursor

    def transition(self, updates: Iterable[tuple[str, str, str, dict]], stage: str) -> int:
        """Apply (id, from_status, to_status, fields) updates in bulk; returns how many moved.

        A document no longer in ``from_status`` is left alone (its stage already ran).
        """
        ops = []
        now = utcnow()
        for cid, old, new, fields in updates:
            st.check_transition(old, new)
            ops.append(UpdateOne({"_id": cid, "status": old},
                                 {"$set": {**fields, "status": new, "updated": now},
                                  "$inc": {f"runs.{stage}": 1}}))
        moved = 0
        for chunk in _chunks(ops, 500):
            moved += self.candidates.bulk_write(chunk, ordered=False).modified_count
        return moved

    def count(self, query: dict) -> int:
        return self.candidates.count_documents(query)

    def pending_batches(self, campaign: str) -> set[str]:
        """Batches that still hold candidates waiting for validity."""
        return set(self.candidates.distinct("batch", {"campaign": campaign, "status": st.INGESTED}))

    def status_counts(self, campaign: str) -> dict[str, int]:
        pipeline = [{"$match": {"campaign": campaign}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        return {d["_id"]: d["n"] for d in self.candidates.aggregate(pipeline)}

    def status_counts_by(self, campaign: str, field: str) -> dict:
        """{value of ``field``: {status: count}} in one aggregation (e.g. field="targets.band_gap.value")."""
        pipeline = [{"$match": {"campaign": campaign}},
                    {"$group": {"_id": {"k": f"${field}", "s": "$status"}, "n": {"$sum": 1}}}]
        out: dict = {}
        for d in self.candidates.aggregate(pipeline):
            out.setdefault(d["_id"].get("k"), {})[d["_id"]["s"]] = d["n"]
        return out

    def yield_counts(self, campaign: str, by: str | None = "targets.band_gap.value") -> list[dict]:
        """Funnel and target-hit counts per condition (one aggregation; ``by=None``: whole campaign)."""
        valid = [st.VALID, st.DUPLICATE, st.KNOWN, *st.NOVEL_OR_LATER]

        def count(cond):
            return {"$sum": {"$cond": [cond, 1, 0]}}

        stable = {"$eq": ["$ml.stable", True]}
        hit = {"$eq": ["$ml.hits.band_gap.hit", True]}
        group = {"_id": f"${by}" if by else None, "inputs": {"$sum": 1},
                 "valid": count({"$in": ["$status", valid]}),
                 "unique": count({"$in": ["$status", [st.KNOWN, *st.NOVEL_OR_LATER]]}),
                 "novel": count({"$in": ["$status", list(st.NOVEL_OR_LATER)]}),
                 "ml_done": count({"$in": ["$status", list(st.ML_DONE_OR_LATER)]}),
                 "stable": count(stable),
                 "band_gap_predicted": count({"$in": ["$ml.hits.band_gap.hit", [True, False]]}),
                 "band_gap_hit": count(hit),
                 "stable_and_hit": count({"$and": [stable, hit]})}
        rows = self.candidates.aggregate([{"$match": {"campaign": campaign}}, {"$group": group},
                                          {"$sort": {"_id": 1}}])
        return [{"condition": r.pop("_id"), **r} for r in rows]

    def top_candidates(self, campaign: str, n: int = 10) -> list[dict]:
        """The ``n`` ML-done candidates lowest above the hull (an indexed sort would want ml.e_above_hull)."""
        fields = {"reduced_formula": 1, "spacegroup": 1, "nsites": 1, "ml.e_above_hull": 1,
                  "ml.band_gap.band_gap": 1, "ml.hits.band_gap": 1, "ml.hull.decomposition": 1}
        return list(self.candidates.find({"campaign": campaign, "status": {"$in": list(st.ML_DONE_OR_LATER)}}, fields)
                    .sort("ml.e_above_hull", ASCENDING).limit(n))

    def failure_counts(self, campaign: str) -> dict[str, int]:
        pipeline = [{"$match": {"campaign": campaign, "status": "invalid"}},
                    {"$group": {"_id": "$validity.first_failure", "n": {"$sum": 1}}}]
        return {str(d["_id"]): d["n"] for d in self.candidates.aggregate(pipeline)}

    # ---------------------------------------------------------------------------------- references
    def add_references(self, docs: list[dict]) -> dict:
        """Insert reference structures not yet present (by ``_id``); returns counts."""
        return _insert_new(self.references, docs)

    def references_with_formula(self, formulas: Iterable[str], projection: dict | None = None) -> Iterator[dict]:
        return self.references.find({"reduced_formula": {"$in": sorted(set(formulas))}}, projection)

    def cache_reference_reduction(self, updates: list[tuple[str, dict]]) -> None:
        ops = [UpdateOne({"_id": rid}, {"$set": fields}) for rid, fields in updates]
        for chunk in _chunks(ops, 1000):
            self.references.bulk_write(chunk, ordered=False)

    def reference_count(self) -> int:
        return self.references.estimated_document_count()

    # ------------------------------------------------------------------------------ hull entries
    def add_entries(self, docs: list[dict]) -> dict:
        """Insert hull entries not yet present (by ``_id``); returns counts."""
        return _insert_new(self.entries, docs)

    def entries_in_chemsys(self, elements: Iterable[str]) -> list[dict]:
        """Every reference entry whose elements are a subset of ``elements`` (one indexed query)."""
        from itertools import combinations

        els = sorted(set(elements))
        systems = ["-".join(c) for n in range(1, len(els) + 1) for c in combinations(els, n)]
        return list(self.entries.find({"chemsys": {"$in": systems}}, {"entry": 1}))

    def add_systems(self, systems: list[str], source: str) -> None:
        for chemsys in systems:
            self.systems.update_one({"_id": chemsys}, {"$addToSet": {"sources": source}}, upsert=True)

    def covering_systems(self, elements: Iterable[str]) -> list[str]:
        """Complete reference systems that contain every one of ``elements``."""
        from fw_screen.references import systems_containing

        return systems_containing(elements, self.system_names())

    def unary_systems(self) -> set[str]:
        """Elements with at least one reference entry of their own (a complete one-element system)."""
        return set(self.entries.distinct("chemsys", {"elements": {"$size": 1}}))

    def system_names(self) -> list[str]:
        return sorted(d["_id"] for d in self.systems.find({}, {"_id": 1}))

    def entry_count(self) -> int:
        return self.entries.estimated_document_count()

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

    def unbatched_novel(self, campaign: str) -> list[str]:
        return [d["_id"] for d in self.candidates.find(
            {"campaign": campaign, "status": st.NOVEL, "ml_batch": {"$exists": False}}, {"_id": 1}).sort("seq", 1)]

    # ------------------------------------------------------------------------------------------ DFT
    def ml_done_for_promotion(self, campaign: str) -> list[dict]:
        """ML-done candidates of a campaign with what promotion needs to decide."""
        fields = {"ml.e_above_hull": 1, "ml.relax.status": 1, "ml.hits": 1, "ml.band_gap.band_gap": 1,
                  "ml.structure_relaxed.sites.label": 1, "nsites": 1, "targets": 1, "elements": 1}
        return list(self.candidates.find({"campaign": campaign, "status": st.ML_DONE}, fields))

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
                  "targets.band_gap.value": 1, "promotion.reason": 1, "dft.e_above_hull": 1,
                  "dft.band_gap": 1, "dft.hull_status": 1, "dft.hull_reason": 1, "dft.reason": 1,
                  "dft.hits.band_gap.hit": 1, "dft.decomposition": 1, "dft.structure_relaxed.sites.label": 1}
        return list(self.candidates.find({"campaign": campaign, "status": {"$in": [
            st.PROMOTED, st.DFT_DONE, st.DFT_FAILED]}}, fields).sort([("dft.e_above_hull", ASCENDING), ("_id", ASCENDING)]))

    def claim_dft_reference(self, doc: dict) -> bool:
        """Claim a reference calculation (``_id`` = protocol id + phase key); False when someone has it.

        A failed claim (status ``failed``) may be taken again, and so may a ``running`` claim by the same
        Firework (``fw_id``: a rerun after its launcher died); the first run's reason is kept in ``history``."""
        try:
            self.dft_references.insert_one({**doc, "status": "running", "claimed": utcnow(), "attempts": 1})
            return True
        except DuplicateKeyError:
            retake = [{"status": "failed"}]
            if doc.get("fw_id") is not None:
                retake.append({"status": "running", "fw_id": doc["fw_id"]})
            res = self.dft_references.update_one(
                {"_id": doc["_id"], "$or": retake},
                {"$set": {"status": "running", "claimed": utcnow(), "owner": doc.get("owner")},
                 "$inc": {"attempts": 1}, "$push": {"history": {"at": utcnow(), "event": "reclaimed"}}})
            return res.modified_count == 1

    def finish_dft_reference(self, ref_id: str, status: str, result: dict) -> None:
        self.dft_references.update_one({"_id": ref_id}, {"$set": {"status": status, "result": result,
                                                                  "finished": utcnow()}})

    def dft_reference_docs(self, ref_ids: list[str]) -> dict[str, dict]:
        return {d["_id"]: d for d in self.dft_references.find({"_id": {"$in": list(ref_ids)}})}

    def dft_waiting(self, protocol_id: str | None = None) -> list[dict]:
        """DFT-done candidates whose hull waits for reference calculations."""
        query = {"status": st.DFT_DONE, "dft.hull_status": "waiting"}
        if protocol_id:
            query["dft.protocol_id"] = protocol_id
        return list(self.candidates.find(query, {"dft": 1, "targets": 1, "campaign": 1, "ml.e_above_hull": 1}))

    def set_dft_hull(self, candidate_id: str, expected_status: str, fields: dict) -> bool:
        """Set DFT hull fields of a DFT-done candidate once (guarded by the current hull status)."""
        res = self.candidates.update_one({"_id": candidate_id, "status": st.DFT_DONE,
                                          "dft.hull_status": expected_status},
                                         {"$set": {**{f"dft.{k}": v for k, v in fields.items()}, "updated": utcnow()}})
        return res.modified_count == 1

    # --------------------------------------------------------------------------------------- locks
    def acquire_lock(self, name: str, lease_s: float = 300, wait_s: float = 3600, poll_s: float = 0.5) -> str:
        """Take the named lease (waiting for a live holder); returns the owner token."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + wait_s
        while True:
            now = utcnow()
            try:
                self.locks.update_one(
                    {"_id": name, "$or": [{"owner": None}, {"expires": {"$lt": now}}]},
                    {"$set": {"owner": owner, "expires": now + dt.timedelta(seconds=lease_s)}},
                    upsert=True)
                return owner
            except DuplicateKeyError:
                if time.monotonic() > deadline:
                    raise StoreError(f"lock {name} still held after {wait_s:.0f} s") from None
                time.sleep(poll_s)

    def renew_lock(self, name: str, owner: str, lease_s: float = 300) -> bool:
        res = self.locks.update_one({"_id": name, "owner": owner},
                                    {"$set": {"expires": utcnow() + dt.timedelta(seconds=lease_s)}})
        return res.matched_count == 1

    def release_lock(self, name: str, owner: str) -> None:
        self.locks.update_one({"_id": name, "owner": owner}, {"$set": {"owner": None, "expires": None}})


def new_submission_id() -> str:
    """``s20261125-061426-1a2b3c``: starts with a letter and holds no 'T', because FireWorks turns any
    spec string that ``datetime.fromisoformat`` accepts into a datetime (``reconstitute_dates``)."""
    return "s" + utcnow().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _insert_new(collection, docs: list[dict]) -> dict:
    """Upsert-if-absent by ``_id`` in bulk: loading the same references twice adds nothing."""
    ops = [UpdateOne({"_id": d["_id"]}, {"$setOnInsert": d}, upsert=True) for d in docs]
    new = 0
    for chunk in _chunks(ops, 1000):
        new += collection.bulk_write(chunk, ordered=False).upserted_count
    return {"new": new, "existing": len(docs) - new}


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def prepare_launchpad(launchpad) -> None:
    """Initialise FireWorks' collections on a database that has never held a LaunchPad.

    Only an empty LaunchPad is reset (``lpad reset`` would delete existing workflows).
    """
    if launchpad.fw_id_assigner.find_one({}) is None and launchpad.fireworks.find_one({}) is None:
        launchpad.reset("", require_password=False)


def batches_with_fireworks(launchpad, campaign: str) -> set[str]:
    """Batches of a campaign that already have a validity Firework (in any state) on the LaunchPad."""
    return set(launchpad.fireworks.distinct("spec.batch", {"spec.campaign": campaign, "spec.stage": "validity"}))
