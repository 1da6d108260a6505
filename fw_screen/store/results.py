"""MongoDB access of fw-screen's own collections (the FireWorks collections are FireWorks' business:
:mod:`fw_screen.orchestration.launchpad`).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import uuid
from typing import Iterable, Iterator

from pymongo import ASCENDING, InsertOne, ReturnDocument, UpdateMany, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from fw_screen import state as st

CANDIDATES = "candidates"
CAMPAIGNS = "campaigns"
REFERENCES = "references"
ENTRIES = "reference_entries"
SETS = "reference_sets"
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
        self.sets = db[SETS]
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
        """The indexes every query of the funnel runs on.

        The embedded server (like any planner, but strictly) serves a filter from an index only when the
        filter's equality fields are exactly a leading prefix of the index, optionally followed by ONE
        range/``$in`` field; anything else reads the whole campaign.  So each query below has its own index
        and keeps that shape (tests/test_query_plans.py checks every query the stages send).
        """
        c = self.candidates
        c.create_index([("campaign", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("batch", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("seq", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("shard", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("match_key", ASCENDING), ("status", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("reduced_formula", ASCENDING)])
        c.create_index("content_hash")
        self.references.create_index("reduced_formula")
        self.references.create_index("match_key")
        self.references.create_index([("ordered", ASCENDING), ("chemsys", ASCENDING)])
        self.references.create_index("set")
        self.entries.create_index("chemsys")
        self.entries.create_index("set")
        self.sets.create_index("state")
        c.create_index([("campaign", ASCENDING), ("ml_batch", ASCENDING), ("status", ASCENDING)])
        c.create_index([("dft.hull_status", ASCENDING), ("dft.protocol_id", ASCENDING)])
        self.dft_references.create_index([("protocol_id", ASCENDING), ("key", ASCENDING)])
        # analysis: hull tables sorted by ML/DFT hull distance, filtered by chemical system or condition
        c.create_index([("campaign", ASCENDING), ("ml.e_above_hull", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("dft.e_above_hull", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("chemsys", ASCENDING)])
        c.create_index([("campaign", ASCENDING), ("targets.band_gap.value", ASCENDING), ("status", ASCENDING)])

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
        from fw_screen.spec import upgrade

        return upgrade(doc["spec"])

    def campaign_names(self) -> list[str]:
        return sorted(d["_id"] for d in self.campaigns.find({}, {"_id": 1}))

    def _reserve_seq(self, campaign: str, n: int) -> int:
        """The first of ``n`` consecutive sequence numbers, taken from the post-image (the value the write
        itself produced, so it is atomic on every server, the embedded one included)."""
        doc = self.campaigns.find_one_and_update({"_id": campaign}, {"$inc": {"next_seq": n}},
                                                 projection={"next_seq": 1}, return_document=ReturnDocument.AFTER)
        return doc["next_seq"] - n

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

    def top_candidates(self, campaign: str, n: int = 10) -> list[dict]:
        """The ``n`` ML-done candidates lowest above the hull (an indexed sort would want ml.e_above_hull)."""
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

    # ------------------------------------------------------------------------------------ analysis
    def yield_count_rows(self, campaign: str, thresholds: Iterable[float],
                         by: str = "targets.band_gap.value") -> list[dict]:
        """Counts behind the CrystaLLM-pi / MatterGen yields per value of ``by``, at every stability threshold,
        in one aggregation (one pass over the campaign: on the embedded server each pass costs ~0.5-1 ms per
        valid candidate, so the thresholds, the conditions and the status counts share it).

        Returns ``[{"condition", "n", "status": {status: count}, "counts": {threshold: {...}}}]``, each
        ``{...}`` holding the counts :func:`fw_screen.science.yields.yields` computes from records (``valid``,
        ``valid_unique``, ``vun``, ``vun_evaluated``, ``vsun``, ``valid_band_gap_evaluated``, ...) with
        ``stable`` = ML ``e_above_hull <= threshold``.  :func:`sum_yield_rows` adds rows up.
        """
        thresholds = [float(t) for t in thresholds]
        valid = {"$in": ["$status", list(st.VALID_OR_LATER)]}
        unique = {"$in": ["$status", [st.KNOWN, *st.NOVEL_OR_LATER]]}
        vun = {"$in": ["$status", list(st.NOVEL_OR_LATER)]}
        e = "$ml.e_above_hull"
        evaluated = {"$and": [vun, _is_number(e)]}
        gap_known = {"$in": ["$ml.hits.band_gap.hit", [True, False]]}
        hit = {"$eq": ["$ml.hits.band_gap.hit", True]}

        def count(*conds):
            return {"$sum": {"$cond": [{"$and": list(conds)} if len(conds) > 1 else conds[0], 1, 0]}}

        # after relaxation (run_relaxed_uniqueness): checked, relaxed onto a reference / another candidate
        checked = {"$ne": [{"$type": "$ml.duplicate_of_relaxed"}, "missing"]}
        relaxed_dup = {"$gt": ["$ml.duplicate_of_relaxed", None]}
        relaxed_known = {"$eq": ["$ml.novel_relaxed", False]}
        group = {"_id": f"${by}", "n": {"$sum": 1}, "valid": count(valid), "valid_unique": count(unique),
                 "vun": count(vun), "vun_evaluated": count(evaluated),
                 "valid_band_gap_evaluated": count(valid, gap_known), "valid_band_gap_hits": count(valid, hit),
                 "relaxed_checked": count(evaluated, checked), "relaxed_known": count(evaluated, checked, relaxed_known),
                 "relaxed_duplicate": count(evaluated, checked, relaxed_dup)}
        for i, thr in enumerate(thresholds):
            vsun = {"$and": [evaluated, {"$lte": [e, thr]}]}
            group.update({f"vsun_{i}": count(vsun), f"vsun_band_gap_evaluated_{i}": count(vsun, gap_known),
                          f"vsun_band_gap_hits_{i}": count(vsun, hit),
                          f"sun_{i}": count(vsun, checked, {"$eq": ["$ml.novel_relaxed", True]},
                                            {"$not": [relaxed_dup]})})
        for i, status in enumerate(st.ORDER):
            group[f"status_{i}"] = count({"$eq": ["$status", status]})
        out = []
        for r in self.candidates.aggregate([{"$match": {"campaign": campaign}}, {"$group": group},
                                            {"$sort": {"_id": 1}}]):
            shared = {k: r[k] for k in ("valid", "valid_unique", "vun", "vun_evaluated", "valid_band_gap_evaluated",
                                        "valid_band_gap_hits")}
            counts = {thr: {**shared, "vsun": r[f"vsun_{i}"],
                            "vsun_band_gap_evaluated": r[f"vsun_band_gap_evaluated_{i}"],
                            "vsun_band_gap_hits": r[f"vsun_band_gap_hits_{i}"]} for i, thr in enumerate(thresholds)}
            status = {s_: r[f"status_{i}"] for i, s_ in enumerate(st.ORDER) if r[f"status_{i}"]}
            relaxed = {"checked": r["relaxed_checked"], "known": r["relaxed_known"],
                       "duplicate": r["relaxed_duplicate"], "sun": {thr: r[f"sun_{i}"] for i, thr in enumerate(thresholds)}}
            out.append({"condition": r["_id"], "n": r["n"], "status": status, "counts": counts, "relaxed": relaxed})
        return out

    def metric_count_rows(self, campaign: str, thresholds: Iterable[float],
                          by: str = "targets.band_gap.value") -> list[dict]:
        """The sums behind ``fw-screen metrics`` (:mod:`fw_screen.science.metrics`) per value of ``by``, in one
        aggregation over the campaign: counts for V/VU/VUN/VSUN and S.U.N./MSUN at each threshold (reference
        and self-consistent hull), composition novelty, relaxation RMSD and kept space groups, the DiffCSP
        validity split, band-gap errors against the target (ML, DFT-lite, DFT), ML-vs-DFT stability at 0
        eV/atom; and the density and number-of-elements samples of the valid candidates.

        Returns ``[{"condition", "n", name: sum, ..., "density": [...], "nelements": [...]}]``."""
        thresholds = [float(t) for t in thresholds]
        num = _is_number
        status = "$status"
        e, e_sc, d = "$ml.e_above_hull", "$ml.e_above_hull_self_consistent", "$dft.e_above_hull"
        checks = "$validity.checks"
        sg0, sg1 = "$ml.relax.spacegroup_number_initial", "$ml.relax.spacegroup_number_final"
        target = "$targets.band_gap.value"
        relaxed = {"$in": [status, list(st.ML_DONE_OR_LATER)]}
        checked = {"$and": [relaxed, {"$ne": [{"$type": "$ml.duplicate_of_relaxed"}, "missing"]}]}

        def number_or_null(path, *conds):
            return {"$cond": [{"$and": [num(path), *conds]}, path, None]}

        # each document's flags and values, computed once (the server evaluates every expression per document)
        flags = {
            "c": f"${by}", "valid": {"$in": [status, list(st.VALID_OR_LATER)]},
            "unique": {"$in": [status, [st.KNOWN, *st.NOVEL_OR_LATER]]},
            "novel": {"$in": [status, list(st.NOVEL_OR_LATER)]}, "relaxed": relaxed, "checked": checked,
            "known_r": {"$and": [checked, {"$eq": ["$ml.novel_relaxed", False]}]},
            "dup_r": {"$and": [checked, {"$gt": ["$ml.duplicate_of_relaxed", None]}]},
            "nur": {"$and": [checked, {"$eq": ["$ml.novel_relaxed", True]},
                             {"$eq": [{"$ifNull": ["$ml.duplicate_of_relaxed", None]}, None]}]},
            "e": number_or_null(e), "e_sc": number_or_null(e_sc),
            "novel_composition": {"$eq": ["$novel_composition", True]},
            "rmsd": number_or_null("$ml.rmsd_relaxed", relaxed),
            "sg_n": {"$and": [relaxed, num(sg0), num(sg1)]}, "sg_same": {"$eq": [sg0, sg1]},
            "smact": {"$eq": [f"{checks}.smact.passed", True]},
            "structural": {"$and": [{"$eq": [f"{checks}.min_distance.passed", True]},
                                    {"$eq": [f"{checks}.volume.passed", True]}]},
            "density": "$density", "has_density": num("$density"), "elements": "$elements",
            "dft_pair": {"$and": [{"$eq": [status, st.DFT_DONE]}, num(d), num(e)]},
            "ml_le0": {"$lte": [e, 0.0]}, "dft_le0": {"$lte": [d, 0.0]},
        }
        for name, path in (("ml", "$ml.band_gap.band_gap"), ("dft_lite", "$dft_lite.band_gap.band_gap"),
                           ("dft", "$dft.band_gap.band_gap")):
            flags[f"gap_{name}"] = {"$cond": [{"$and": [num(path), num(target)]},
                                              {"$abs": {"$subtract": [path, target]}}, None]}

        def count(*conds):
            return {"$sum": {"$cond": [{"$and": list(conds)} if len(conds) > 1 else conds[0], 1, 0]}}

        def has(field):
            return {"$ne": [f"${field}", None]}

        group: dict = {
            "_id": "$c", "n": {"$sum": 1}, "valid": count("$valid"), "valid_unique": count("$unique"),
            "vun": count("$novel"), "vun_evaluated": count("$novel", has("e")), "relaxed": count("$relaxed"),
            "relaxed_checked": count("$checked"), "relaxed_known": count("$known_r"),
            "relaxed_duplicate": count("$dup_r"), "novel_unique_relaxed": count("$nur"),
            "novel_composition": count("$unique", "$novel_composition"),
            "rmsd_n": count(has("rmsd")), "rmsd_sum": {"$sum": "$rmsd"},
            "spacegroup_n": count("$sg_n"), "spacegroup_kept": count("$sg_n", "$sg_same"),
            "smact": count("$smact"), "structural": count("$structural"),
            "smact_and_structural": count("$smact", "$structural"),
            "density": {"$push": {"$cond": [{"$and": ["$valid", "$has_density"]}, "$density", "$$REMOVE"]}},
            "nelements": {"$push": {"$cond": [{"$and": ["$valid", {"$isArray": "$elements"}]},
                                              {"$size": {"$ifNull": ["$elements", []]}}, "$$REMOVE"]}},
        }
        for name in ("ml", "dft_lite", "dft"):
            group[f"gap_{name}_n"] = count(has(f"gap_{name}"))
            group[f"gap_{name}_abs_sum"] = {"$sum": f"$gap_{name}"}
        for name, ml_ok, dft_ok in (("tp", True, True), ("fp", True, False), ("fn", False, True), ("tn", False, False)):
            group[f"dft_{name}"] = count("$dft_pair", {"$eq": ["$ml_le0", ml_ok]}, {"$eq": ["$dft_le0", dft_ok]})
        for i, thr in enumerate(thresholds):
            group[f"vsun_{i}"] = count("$novel", has("e"), {"$lte": ["$e", thr]})
            group[f"sun_{i}"] = count("$nur", has("e"), {"$lte": ["$e", thr]})
            group[f"sun_sc_{i}"] = count("$nur", has("e_sc"), {"$lte": ["$e_sc", thr]})
        out = []
        for r in self.candidates.aggregate([{"$match": {"campaign": campaign}}, {"$project": flags},
                                            {"$group": group}, {"$sort": {"_id": 1}}], allowDiskUse=True):
            row = {"condition": r.pop("_id"), **r}
            for i, thr in enumerate(thresholds):
                for key in ("vsun", "sun", "sun_sc"):
                    row.setdefault("by_threshold", {}).setdefault(thr, {})[key] = row.pop(f"{key}_{i}")
            out.append(row)
        return out

    def reference_distribution(self) -> dict:
        """Density (g/cm^3) and number of elements of every structure of the active reference sets (the
        metrics' reference distributions); documents stored before those fields were written get them
        computed from their structure once (cached)."""
        from pymatgen.core import Composition

        from fw_screen.science.references import distribution_fields

        active = sorted(self._active_set_names())
        dens, nel, missing = [], [], []
        for d in self.references.find({"set": {"$in": active}}, {"density": 1, "nelements": 1}):
            if "density" not in d or "nelements" not in d:
                missing.append(d["_id"])
                continue
            if isinstance(d["density"], (int, float)):
                dens.append(float(d["density"]))
            nel.append(int(d["nelements"]))
        cache = []
        for i in range(0, len(missing), 500):
            for d in self.references.find({"_id": {"$in": missing[i:i + 500]}}, {"structure.lattice.matrix": 1,
                                                                                 "formula": 1}):
                fields = distribution_fields(Composition(d["formula"]),
                                             ((d.get("structure") or {}).get("lattice") or {}).get("matrix"))
                cache.append((d["_id"], fields))
                if fields["density"] is not None:
                    dens.append(fields["density"])
                nel.append(fields["nelements"])
        if cache:
            self.cache_reference_reduction(cache)
        return {"density": dens, "nelements": nel}

    def hull_table_rows(self, match: dict, sort: list[tuple[str, int]] | None = None,
                        limit: int | None = None) -> list[dict]:
        """One flat row per candidate matching ``match`` (see :data:`HULL_TABLE_PROJECTION`), sorted in the
        database (sort keys are row columns, e.g. ``[("ml_e_above_hull", 1)]``)."""
        pipeline = match_stages(match)
        sort_doc = {HULL_TABLE_SORT_FIELDS.get(k, k): d for k, d in (sort or [])}
        if sort_doc:
            sort_doc.setdefault("seq", 1)
            pipeline.append({"$sort": sort_doc})
        if limit:
            pipeline.append({"$limit": int(limit)})
        pipeline.append({"$project": HULL_TABLE_PROJECTION})
        columns = [k for k in HULL_TABLE_PROJECTION if k != "_id"]
        rows = self.candidates.aggregate(pipeline, allowDiskUse=True)
        # $project leaves out a field the document does not have: every row gets every column
        return [{c: r.get(c) for c in columns} for r in rows]

    def structures_of(self, ids: list[str], relaxed: bool = True) -> dict[str, dict]:
        """{candidate id: structure dict}: the DFT-, else ML-relaxed, else as-generated structure."""
        fields = {"structure": 1, "ml.structure_relaxed": 1, "dft.structure_relaxed": 1}
        out = {}
        for d in self.candidates.find({"_id": {"$in": list(ids)}}, fields):
            ml, dft = d.get("ml") or {}, d.get("dft") or {}
            out[d["_id"]] = ((dft.get("structure_relaxed") or ml.get("structure_relaxed")) if relaxed else None) \
                or d.get("structure")
        return out

    def stage_flags(self, campaign: str) -> list[dict]:
        """``{_id, status, ml.stable, dft.stable}`` of every valid-or-later candidate of a campaign (indexed on
        campaign + status; a few fields per document, for grouping candidates without reading structures)."""
        return list(self.candidates.find({"campaign": campaign, "status": {"$in": list(st.VALID_OR_LATER)}},
                                         {"_id": 1, "status": 1, "ml.stable": 1, "dft.stable": 1}))

    def reference_ids(self) -> list[str]:
        """Ids of the reference structures of active sets."""
        active = self._active_set_names()
        return sorted(d["_id"] for d in self.references.find({}, {"_id": 1, "set": 1}) if d.get("set") in active)

    def documents_by_id(self, collection: str, ids: list, fields: list[str], chunk: int = 500) -> dict:
        """``{_id: document}`` with only ``fields``, fetched by ``_id`` in chunks (``candidates`` or
        ``references``)."""
        if collection not in (CANDIDATES, REFERENCES):
            raise StoreError(f"documents_by_id reads candidates or references, not {collection!r}")
        coll, out = self.db[collection], {}
        ids = list(ids)
        for i in range(0, len(ids), chunk):
            for d in coll.find({"_id": {"$in": ids[i:i + chunk]}}, {f: 1 for f in fields}):
                out[d["_id"]] = d
        return out

    def explain(self, match: dict, sort: list[tuple[str, int]] | None = None) -> dict:
        """How the database runs a candidates query as :meth:`hull_table_rows` sends it (MongoDB ``explain``):
        the winning plan of its index-backed first ``$match`` and that stage's execution counts."""
        stages = match_stages(match)
        first = stages[0]["$match"]
        cmd = {"find": CANDIDATES, "filter": first}
        if sort and len(stages) == 1:
            cmd["sort"] = {HULL_TABLE_SORT_FIELDS.get(k, k): d for k, d in sort}
        ex = self.db.command("explain", cmd, verbosity="executionStats")
        return {"winning_plan": ex["queryPlanner"]["winningPlan"], "stats": ex.get("executionStats", {}),
                "first_match": first, "later_matches": [s["$match"] for s in stages[1:]]}

    # -------------------------------------------------------------------------------------- report
    def campaign_info(self, name: str) -> dict:
        """``{"name", "created", "spec"}`` of a campaign (StoreError when there is none)."""
        doc = self.campaigns.find_one({"_id": name}, {"spec": 1, "created": 1})
        if doc is None:
            raise StoreError(f"unknown campaign {name!r}")
        return {"name": name, "created": doc.get("created"), "spec": doc["spec"]}

    def campaign_overview(self, campaign: str) -> dict:
        """``{"status": {status: n}, "inputs": [{"file", "n", "submissions"}]}``: candidates per status and per
        input file, from one aggregation (one pass over the campaign)."""
        rows = list(self.candidates.aggregate([
            {"$match": {"campaign": campaign}},
            {"$group": {"_id": {"status": "$status", "file": "$source.file"}, "n": {"$sum": 1},
                        "submissions": {"$addToSet": "$submission"}}}]))
        status: dict[str, int] = {}
        files: dict = {}
        for r in rows:
            key = r["_id"]
            status[key.get("status")] = status.get(key.get("status"), 0) + r["n"]
            f = files.setdefault(key.get("file"), {"file": key.get("file"), "n": 0, "submissions": set()})
            f["n"] += r["n"]
            f["submissions"].update(r["submissions"])
        inputs = [{**f, "submissions": len(f["submissions"])}
                  for f in sorted(files.values(), key=lambda f: (f["file"] is None, str(f["file"])))]
        return {"status": status, "inputs": inputs}

    def values_by_condition(self, campaign: str, fields: dict[str, str], statuses: Iterable[str],
                            by: str = "targets.band_gap.value") -> list[dict]:
        """Per value of ``by`` (the band-gap target): ``{"condition", "n", name: [value, ...]}`` for the
        candidates in ``statuses`` (indexed), one list per ``fields`` entry (name -> dotted field), aligned: a
        missing value is None.  One aggregation: the database groups, no document comes back."""
        group: dict = {"_id": f"${by}", "n": {"$sum": 1}}
        group.update({name: {"$push": {"$ifNull": [f"${path}", None]}} for name, path in fields.items()})
        rows = self.candidates.aggregate([{"$match": {"campaign": campaign, "status": {"$in": list(statuses)}}},
                                          {"$group": group}, {"$sort": {"_id": 1}}], allowDiskUse=True)
        return [{"condition": r.pop("_id"), **r} for r in rows]

    def dft_done_candidates(self, campaign: str) -> list[dict]:
        """DFT-done candidates with what their DFT hull was built from (``dft.structure_relaxed``,
        ``dft.energy_total``, ``dft.references``, ``dft.protocol_id``, ``dft.code``) and its result
        (``dft.hull_status``, ``dft.e_above_hull``, ...), by chemical system.  Reads the DFT-done candidates
        only (campaign + status index): few, so sorted here."""
        fields = {"reduced_formula": 1, "chemsys": 1, "elements": 1, "targets.band_gap.value": 1,
                  "ml.e_above_hull": 1, "dft.code": 1, "dft.structure_relaxed": 1, "dft.energy_total": 1,
                  "dft.references": 1, "dft.protocol_id": 1, "dft.hull_status": 1, "dft.e_above_hull": 1,
                  "dft.decomposition": 1, "dft.stable": 1}
        docs = list(self.candidates.find({"campaign": campaign, "status": st.DFT_DONE}, fields))
        return sorted(docs, key=lambda d: (str(d.get("chemsys") or "-".join(sorted(d.get("elements") or []))), d["_id"]))

    # ---------------------------------------------------------------------------------- references
    def reference_sets(self, states: Iterable[str] = ("active",)) -> list[dict]:
        """The reference set documents (what each set covers, its energy scale, sizes), by name."""
        return sorted(self.sets.find({"state": {"$in": list(states)}}), key=lambda d: d["_id"])

    def reference_set(self, name: str) -> dict | None:
        return self.sets.find_one({"_id": name})

    def begin_reference_set(self, doc: dict) -> bool:
        """Register a set being loaded (state ``loading``): its documents stay invisible until
        :meth:`activate_reference_set`.  False if the name is taken (another process is loading it)."""
        try:
            self.sets.insert_one({**doc, "state": "loading", "started_at": utcnow()})
        except DuplicateKeyError:
            return False
        return True

    def activate_reference_set(self, name: str, fields: dict) -> None:
        self.sets.update_one({"_id": name, "state": "loading"},
                             {"$set": {**fields, "state": "active", "loaded_at": utcnow()}})

    def remove_reference_set(self, name: str) -> dict:
        """Delete a set and every structure and entry it brought (also a load that died half-way)."""
        structures = self.references.delete_many({"set": name}).deleted_count
        entries = self.entries.delete_many({"set": name}).deleted_count
        self.sets.delete_one({"_id": name})
        return {"structures": structures, "entries": entries}

    def insert_reference_docs(self, structures: list[dict], entries: list[dict]) -> dict:
        """Insert the structures and entries of a set being loaded; ids repeated within the set (MP lists
        some materials twice) are kept once.  Returns how many of each were new."""
        return {"structures": _insert_many_new(self.references, structures),
                "entries": _insert_many_new(self.entries, entries)}

    def _active_set_names(self) -> set[str]:
        return {d["_id"] for d in self.sets.find({"state": "active"}, {"_id": 1})}

    def add_references(self, docs: list[dict]) -> dict:
        """Insert reference structure documents not yet present (by ``_id``): the programmatic way (see
        :meth:`add_entries`); an unregistered set name becomes a structures-only set."""
        result = _insert_new(self.references, docs)
        self.register_sets_from_documents(sorted({d["set"] for d in docs}))
        return result

    def references_with_formula(self, formulas: Iterable[str], projection: dict | None = None) -> Iterator[dict]:
        """Reference structures of active sets with one of ``formulas`` (indexed by reduced formula)."""
        return self._active_references({"reduced_formula": {"$in": sorted(set(formulas))}}, projection)

    def disordered_references(self, chemsys: Iterable[str], projection: dict | None = None) -> Iterator[dict]:
        """Partially occupied reference structures of active sets in one of ``chemsys`` (indexed)."""
        return self._active_references({"ordered": False, "chemsys": {"$in": sorted(set(chemsys))}}, projection)

    def _active_references(self, query: dict, projection: dict | None) -> Iterator[dict]:
        active = self._active_set_names()
        fields = {**projection, "set": 1} if projection else None
        for doc in self.references.find(query, fields):
            if doc.get("set") in active:
                yield doc

    def cache_reference_reduction(self, updates: list[tuple[str, dict]]) -> None:
        ops = [UpdateOne({"_id": rid}, {"$set": fields}) for rid, fields in updates]
        for chunk in _chunks(ops, 1000):
            self.references.bulk_write(chunk, ordered=False)

    def reference_count(self) -> int:
        return self.references.estimated_document_count()

    # ------------------------------------------------------------------------------ hull entries
    def hull_entry_docs(self, elements: Iterable[str], set_names: Iterable[str]) -> list[dict]:
        """The hull fields (composition, corrected energy, id) of every entry of ``set_names`` inside the
        chemical system of ``elements``: one query on the ``chemsys`` index, one ``$in`` of its sub-systems."""
        from fw_screen.science.references import subsystems

        wanted = set(set_names)
        fields = {"composition": 1, "energy": 1, "entry_id": 1, "set": 1, "chemsys": 1}
        docs = self.entries.find({"chemsys": {"$in": subsystems(elements)}}, fields)
        out = [d for d in docs if d.get("set") in wanted]
        legacy = [d["_id"] for d in out if "composition" not in d]  # documents of older fw-screen versions
        if legacy:
            full = {d["_id"]: d for d in self.entries.find({"_id": {"$in": legacy}}, {"entry": 1})}
            out = [full.get(d["_id"], d) for d in out]
        return out

    def entries_in_chemsys(self, elements: Iterable[str], energy_scale: str | None = None) -> list[dict]:
        """Every entry of an active set whose elements are a subset of ``elements`` (one indexed query), with
        the whole entry dict as ``entry``; only sets on ``energy_scale`` when it is given."""
        from fw_screen.science.references import entry_dict, subsystems

        sets = {s["_id"]: s for s in self.reference_sets()}
        if energy_scale is not None:
            sets = {k: s for k, s in sets.items() if s.get("energy_scale") == energy_scale}
        out = []
        for d in self.entries.find({"chemsys": {"$in": subsystems(elements)}}):
            if d.get("set") in sets:
                out.append({**{k: v for k, v in d.items() if k != "entry_json"}, "entry": entry_dict(d)})
        # entries of a release keep their structure once, in the set's novelty document of the same _id
        elsewhere = [d["_id"] for d in out if d.get("structure_in") == "references"]
        structures = self.documents_by_id(REFERENCES, elsewhere, ["structure"]) if elsewhere else {}
        for d in out:
            if d.get("structure_in") == "references":
                if d["_id"] in structures:
                    d["entry"]["structure"] = structures[d["_id"]]["structure"]
                else:  # its structure document is gone: the entry still serves a hull
                    d["entry"].update({"@module": "pymatgen.entries.computed_entries", "@class": "ComputedEntry"})
        return out

    def entry_count(self) -> int:
        return self.entries.estimated_document_count()

    def add_entries(self, docs: list[dict], energy_scale: str = "mp2020") -> dict:
        """Insert hull entry documents not yet present (by ``_id``): the programmatic way, without a source
        file (:func:`fw_screen.stages.references.load_references` is the user's).  A set name not registered yet gets
        a set document from what its documents hold (see :meth:`register_sets_from_documents`)."""
        result = _insert_new(self.entries, docs)
        self.register_sets_from_documents(sorted({d["set"] for d in docs}), energy_scale)
        return result

    def register_sets_from_documents(self, names: Iterable[str], energy_scale: str = "mp2020",
                                     note: str = "registered from its documents") -> list[str]:
        """Give set names that have documents but no set document one, active: a per-system set covering
        what a plain file would (the union of its elements when it has their own entries and at most 8 of
        them; its elements alone when it has only those), or structures-only without entries."""
        from fw_screen.science import references as refs

        added = []
        for name in names:
            if self.sets.find_one({"_id": name}, {"_id": 1}):
                continue
            summary = refs.SetSummary.from_entry_docs(self.entries.find({"set": name}, {"elements": 1}))
            if summary.entries:
                systems, covers = refs.plain_systems(summary), refs.PER_SYSTEM
            else:
                systems, covers = [], refs.STRUCTURES_ONLY
            self.sets.update_one({"_id": name}, {"$setOnInsert": {
                "covers": covers, "systems": systems, "energy_scale": energy_scale if summary.entries else None,
                "unary": sorted(summary.unary), "elements": sorted(summary.elements), "n_entries": summary.entries,
                "n_structures": self.references.count_documents({"set": name}), "format": "documents",
                "source": None, "state": "active", "loaded_at": utcnow(), "note": note}}, upsert=True)
            added.append(name)
        return added

    def migrate_legacy_references(self) -> list[str]:
        """Give reference documents of fw-screen versions without reference sets a set document each.

        Runs only while no set is registered (the first load of a newer fw-screen): each older set becomes a
        per-system set on the MP2020 scale covering what the older rule said.
        """
        if self.sets.estimated_document_count() or not (self.entries.estimated_document_count()
                                                         or self.references.estimated_document_count()):
            return []
        names = sorted(set(self.entries.distinct("set")) | set(self.references.distinct("set")))
        self.register_sets_from_documents(names, note="registered from the documents of an older fw-screen")
        return names

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
        for chunk in _chunks(list(ids), 500):
            reasons = {d["_id"]: (d.get("ml") or {}).get("reason") for d in self.candidates.find(
                {"_id": {"$in": chunk}}, {"ml.reason": 1})}
            ops = [UpdateOne({"_id": cid, "status": st.NO_REFERENCE},
                             {"$set": {"status": st.NOVEL, "updated": now, "ml_requeued": {
                                 "from": st.NO_REFERENCE, "at": now, "reason": reasons.get(cid)}},
                              "$unset": {"ml": "", "ml_batch": ""}, "$inc": {"runs.ml_requeue": 1}})
                   for cid in chunk]
            moved += self.candidates.bulk_write(ops, ordered=False).modified_count
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
        """The ML-relaxed candidates of a campaign (ML-done or later: each has ``ml.structure_relaxed``) with
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
        ops = [UpdateOne({"_id": cid}, {"$set": fields}) for cid, fields in updates if fields]
        changed = 0
        for chunk in _chunks(ops, 1000):
            changed += self.candidates.bulk_write(chunk, ordered=False).modified_count
        return changed

    # ------------------------------------------------------------------------------------ DFT-lite tier
    def dft_lite_waiting(self, campaign: str, max_e_above_hull: float) -> list[dict]:
        """ML-done candidates of a campaign, ML-stable (``ml.e_above_hull`` at most ``max_e_above_hull``),
        that have no DFT-lite result yet: ``_id``, ``targets``, ``ml.structure_relaxed``, ``ml.e_above_hull``."""
        return list(self.candidates.find(_dft_lite_unplanned(campaign, max_e_above_hull),
                                         {"targets": 1, "ml.structure_relaxed": 1, "ml.e_above_hull": 1, "seq": 1,
                                          "ml.matched_reference_relaxed": 1, "ml.duplicate_of_relaxed": 1}
                                         ).sort("seq", ASCENDING))

    def dft_lite_pending_count(self, campaign: str, max_e_above_hull: float) -> int:
        """How many of :meth:`dft_lite_waiting` there are, plus those queued (counted, not fetched)."""
        return (self.count(_dft_lite_unplanned(campaign, max_e_above_hull))
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

    def held_locks(self) -> list[dict]:
        """Leases currently held (owner set), with their expiry."""
        return list(self.locks.find({"owner": {"$ne": None}}))

    def release_lock(self, name: str, owner: str) -> None:
        self.locks.update_one({"_id": name, "owner": owner}, {"$set": {"owner": None, "expires": None}})


#: query fields of ``candidates`` with a (campaign, field) index, in the order a campaign query is narrowed
#: by them (e_above_hull ranges first: only ML-/DFT-done candidates have one)
INDEXED_FIELDS = ("ml.e_above_hull", "dft.e_above_hull", "chemsys", "status", "targets.band_gap.value")


def plan_nodes(winning_plan: dict) -> list[dict]:
    """The stages of an ``explain`` winning plan from the root down (the first input of a multi-input stage)."""
    nodes, node = [], winning_plan
    while isinstance(node, dict) and node.get("stage"):
        nodes.append(node)
        node = node.get("inputStage") or (node.get("inputStages") or [None])[0]
    return nodes


def match_stages(match: dict) -> list[dict]:
    """A candidates filter as ``$match`` stages: campaign + the one indexed condition that narrows it most,
    then the rest.

    The embedded server uses an index only for a filter whose equality fields are exactly a leading prefix
    of the index, optionally followed by one range/``$in`` field (see :meth:`ResultsStore.ensure_indexes`);
    e.g. a status list and an e_above_hull range together scan the whole collection, ~0.4 ms per document.
    With campaign + one indexed condition alone in the first stage it fetches only what that index finds.
    MongoDB merges consecutive ``$match`` stages, so the result is the same query there.
    """
    parts = [{k: v for k, v in match.items() if k != "$and"}] + list(match.get("$and", []))
    conds = [(k, v) for p in parts for k, v in p.items()]
    if "campaign" not in match or any(k.startswith("$") for k, _ in conds):
        return [{"$match": match}]

    def indexable(k, v):
        return k in INDEXED_FIELDS and not (isinstance(v, dict) and "$not" in v)

    primary = next((i for f in INDEXED_FIELDS for i, (k, v) in enumerate(conds) if k == f and indexable(k, v)), None)
    first = {"campaign": match["campaign"]}
    if primary is not None:
        first[conds[primary][0]] = conds[primary][1]
    rest = [{k: v} for i, (k, v) in enumerate(conds) if k != "campaign" and i != primary]
    stages = [{"$match": first}]
    if rest:
        stages.append({"$match": rest[0] if len(rest) == 1 else {"$and": rest}})
    return stages


def _is_number(path: str) -> dict:
    """Aggregation test: ``path`` holds a finite-or-infinite number, not NaN (MongoDB orders NaN below every
    number and calls NaN equal to NaN, so ``$eq: [x, x]`` does not exclude it; ``x >= -inf`` does)."""
    return {"$and": [{"$in": [{"$type": path}, ["double", "int", "long", "decimal"]]},
                     {"$gte": [path, float("-inf")]}]}


def _join_formulas(path: str) -> dict:
    """Aggregation expression: ``"A + B"`` from an array of ``{formula: ...}`` (missing: None)."""
    return {"$cond": [{"$isArray": path}, {"$reduce": {
        "input": path, "initialValue": "",
        "in": {"$concat": ["$$value", {"$cond": [{"$eq": ["$$value", ""]}, "", " + "]}, "$$this.formula"]}}}, None]}


def _dft_lite_unplanned(campaign: str, max_e_above_hull: float) -> dict:
    """ML-stable ML-done candidates with no DFT-lite record yet."""
    return {"campaign": campaign, "status": st.ML_DONE, "ml.e_above_hull": {"$lte": max_e_above_hull},
            "dft_lite.status": {"$exists": False}}


#: hull-table column -> document field it sorts on
HULL_TABLE_SORT_FIELDS = {
    "id": "_id", "formula": "reduced_formula", "spacegroup": "spacegroup_number", "nsites": "nsites",
    "chemsys": "chemsys", "status": "status", "condition": "targets.band_gap.value",
    "ml_e_above_hull": "ml.e_above_hull", "ml_e_above_hull_unrelaxed": "ml.e_above_hull_unrelaxed",
    "dft_e_above_hull": "dft.e_above_hull", "ml_band_gap": "ml.band_gap.band_gap",
    "dft_lite_band_gap": "dft_lite.band_gap.band_gap", "dft_band_gap": "dft.band_gap.band_gap", "seq": "seq",
}

#: the hull-distance table's columns, computed by the database (``$project`` of one aggregation)
HULL_TABLE_PROJECTION = {
    "_id": 0, "id": "$_id", "formula": "$reduced_formula", "spacegroup": "$spacegroup", "nsites": "$nsites",
    "chemsys": "$chemsys", "condition": "$targets.band_gap.value", "status": "$status",
    "valid": {"$in": ["$status", list(st.VALID_OR_LATER)]},
    "unique": {"$in": ["$status", [st.KNOWN, *st.NOVEL_OR_LATER]]},
    "novel": {"$in": ["$status", list(st.NOVEL_OR_LATER)]},
    "ml_e_above_hull": "$ml.e_above_hull", "ml_e_above_hull_unrelaxed": "$ml.e_above_hull_unrelaxed",
    "ml_decomposition": _join_formulas("$ml.hull.decomposition"), "ml_stable": "$ml.stable",
    # after the ML relaxation: novelty and uniqueness of the relaxed structure, the self-consistent hull
    "novel_relaxed": "$ml.novel_relaxed", "matched_reference_relaxed": "$ml.matched_reference_relaxed",
    "duplicate_of_relaxed": "$ml.duplicate_of_relaxed",
    "ml_e_above_hull_self_consistent": "$ml.e_above_hull_self_consistent",
    "rmsd_relaxed": "$ml.rmsd_relaxed", "spacegroup_relaxed": "$ml.relax.spacegroup_final",
    "ml_band_gap": "$ml.band_gap.band_gap", "ml_band_gap_error": "$ml.band_gap.model_error",
    "ml_band_gap_hit": "$ml.hits.band_gap.hit",
    "dft_lite_band_gap": "$dft_lite.band_gap.band_gap", "dft_lite_band_gap_hit": "$dft_lite.hits.band_gap.hit",
    "dft_e_above_hull": "$dft.e_above_hull", "dft_decomposition": _join_formulas("$dft.decomposition"),
    "dft_stable": "$dft.stable", "dft_band_gap": "$dft.band_gap.band_gap",
    "dft_band_gap_hit": "$dft.hits.band_gap.hit",
    "reason": {"$switch": {"branches": [
        {"case": {"$eq": ["$status", st.INVALID]}, "then": "$validity.reason"},
        {"case": {"$eq": ["$status", st.DUPLICATE]}, "then": {"$concat": ["duplicate of ", {"$toString": "$duplicate_of"}]}},
        {"case": {"$eq": ["$status", st.KNOWN]},
         "then": {"$concat": ["matches reference ", {"$toString": "$matched_reference"}]}},
        {"case": {"$in": ["$status", [st.NO_REFERENCE, st.ML_FAILED]]}, "then": "$ml.reason"},
        {"case": {"$and": [{"$eq": ["$status", st.ML_DONE]}, {"$gt": ["$ml.matched_reference_relaxed", None]}]},
         "then": {"$concat": ["relaxed onto known ", {"$toString": "$ml.matched_reference_relaxed"}]}},
        {"case": {"$and": [{"$eq": ["$status", st.ML_DONE]}, {"$gt": ["$ml.duplicate_of_relaxed", None]}]},
         "then": {"$concat": ["relaxed duplicate of ", {"$toString": "$ml.duplicate_of_relaxed"}]}},
        {"case": {"$eq": ["$status", st.DFT_FAILED]}, "then": "$dft.reason"},
        {"case": {"$eq": ["$status", st.PROMOTED]}, "then": "$promotion.reason"},
        {"case": {"$eq": ["$status", st.DFT_DONE]}, "then": {"$ifNull": ["$dft.hull_reason", "$promotion.reason"]}}],
        "default": None}},
}


def sum_yield_rows(rows: list[dict]) -> dict:
    """The campaign as a whole from :meth:`ResultsStore.yield_count_rows` rows (counts add up)."""
    total: dict = {"condition": None, "n": 0, "status": {}, "counts": {}, "relaxed": {"checked": 0, "known": 0,
                                                                                "duplicate": 0, "sun": {}}}
    for r in rows:
        total["n"] += r["n"]
        rel = r.get("relaxed") or {}
        for k in ("checked", "known", "duplicate"):
            total["relaxed"][k] += rel.get(k, 0)
        for thr, v in (rel.get("sun") or {}).items():
            total["relaxed"]["sun"][thr] = total["relaxed"]["sun"].get(thr, 0) + v
        for k, v in r["status"].items():
            total["status"][k] = total["status"].get(k, 0) + v
        for thr, c in r["counts"].items():
            into = total["counts"].setdefault(thr, dict.fromkeys(c, 0))
            for k, v in c.items():
                into[k] += v
    return total


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


def _insert_many_new(collection, docs: list[dict], chunk: int = 2000) -> int:
    """Plain inserts (a set being loaded is new, so nothing is there yet); duplicate ids are skipped."""
    seen, unique = set(), []
    for d in docs:
        if d["_id"] not in seen:
            seen.add(d["_id"])
            unique.append(d)
    new = 0
    for part in _chunks(unique, chunk):
        try:
            new += len(collection.insert_many(part, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            new += exc.details.get("nInserted", 0)
    return new


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
