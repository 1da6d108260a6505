"""Collection names, time stamps and the query builders the store's parts share (plain functions of
dicts: no connection)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Iterator

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from fw_screen import state as st

CANDIDATES = "candidates"
CAMPAIGNS = "campaigns"
REFERENCES = "references"
ENTRIES = "reference_entries"
SETS = "reference_sets"
LOCKS = "fws_locks"
COUNTS = "funnel_counts"  # per (campaign, condition): the funnel counters (fw_screen.store.counters)
DFT_REFERENCES = "dft_references"  # consistently computed reference phases, one run each per protocol


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class StoreError(RuntimeError):
    """A database-level problem stated for a user (spec mismatch, lock timeout, unknown campaign)."""


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


def is_number(path: str) -> dict:
    """Aggregation test: ``path`` holds a finite-or-infinite number, not NaN (MongoDB orders NaN below every
    number and calls NaN equal to NaN, so ``$eq: [x, x]`` does not exclude it; ``x >= -inf`` does)."""
    return {"$and": [{"$in": [{"$type": path}, ["double", "int", "long", "decimal"]]},
                     {"$gte": [path, float("-inf")]}]}


def number(x) -> bool:
    """:func:`is_number` in Python: a number (not a boolean) that is not NaN."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def condition_order(c):
    """MongoDB's order of ``$group`` ids in ``$sort``: null first, then numbers, then the rest as strings."""
    return (c is not None, not isinstance(c, (int, float)), c if isinstance(c, (int, float)) else str(c))


def join_formulas(path: str) -> dict:
    """Aggregation expression: ``"A + B"`` from an array of ``{formula: ...}`` (missing: None)."""
    return {"$cond": [{"$isArray": path}, {"$reduce": {
        "input": path, "initialValue": "",
        "in": {"$concat": ["$$value", {"$cond": [{"$eq": ["$$value", ""]}, "", " + "]}, "$$this.formula"]}}}, None]}


def dft_lite_unplanned(campaign: str, max_e_above_hull: float) -> dict:
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
    "ml_decomposition": join_formulas("$ml.hull.decomposition"), "ml_stable": "$ml.stable",
    # after the ML relaxation: novelty and uniqueness of the relaxed structure, the self-consistent hull
    "novel_relaxed": "$ml.novel_relaxed", "matched_reference_relaxed": "$ml.matched_reference_relaxed",
    "duplicate_of_relaxed": "$ml.duplicate_of_relaxed",
    "ml_e_above_hull_self_consistent": "$ml.e_above_hull_self_consistent",
    "rmsd_relaxed": "$ml.rmsd_relaxed", "spacegroup_relaxed": "$ml.relax.spacegroup_final",
    "ml_band_gap": "$ml.band_gap.band_gap", "ml_band_gap_error": "$ml.band_gap.model_error",
    "ml_band_gap_hit": "$ml.hits.band_gap.hit",
    "dft_lite_band_gap": "$dft_lite.band_gap.band_gap", "dft_lite_band_gap_hit": "$dft_lite.hits.band_gap.hit",
    "dft_e_above_hull": "$dft.e_above_hull", "dft_decomposition": join_formulas("$dft.decomposition"),
    "dft_stable": "$dft.stable", "dft_band_gap": "$dft.band_gap.band_gap",
    "dft_band_gap_hit": "$dft.hits.band_gap.hit",
    "reason": {"$switch": {"branches": [
        {"case": {"$eq": ["$status", st.INVALID]}, "then": "$validity.reason"},
        {"case": {"$eq": ["$status", st.DUPLICATE]}, "then": {"$concat": ["duplicate of ", {"$toString": "$duplicate_of"}]}},
        {"case": {"$eq": ["$status", st.KNOWN]},
         "then": {"$concat": ["matches reference ", {"$toString": "$matched_reference"}]}},
        {"case": {"$in": ["$status", [st.NO_REFERENCE, st.ML_FAILED]]}, "then": "$ml.reason"},
        {"case": {"$and": [{"$eq": ["$status", st.ML_DONE]}, {"$eq": ["$ml.relax.status", "skipped"]}]},
         "then": "$ml.reason"},  # left unrelaxed by the pre-screen: why
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


def insert_new(collection, docs: list[dict]) -> dict:
    """Upsert-if-absent by ``_id`` in bulk: loading the same references twice adds nothing."""
    ops = [UpdateOne({"_id": d["_id"]}, {"$setOnInsert": d}, upsert=True) for d in docs]
    new = 0
    for chunk in in_chunks(ops, 1000):
        new += collection.bulk_write(chunk, ordered=False).upserted_count
    return {"new": new, "existing": len(docs) - new}


def insert_many_new(collection, docs: list[dict], chunk: int = 2000) -> int:
    """Plain inserts (a set being loaded is new, so nothing is there yet); duplicate ids are skipped."""
    seen, unique = set(), []
    for d in docs:
        if d["_id"] not in seen:
            seen.add(d["_id"])
            unique.append(d)
    new = 0
    for part in in_chunks(unique, chunk):
        try:
            new += len(collection.insert_many(part, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            new += exc.details.get("nInserted", 0)
    return new


def in_chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
