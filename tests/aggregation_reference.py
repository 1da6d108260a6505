"""The aggregations fw-screen's store sent before they were made cheaper, kept as the reference the new
ones must equal (tests/test_counters.py) and as the "before" of benchmarks/bench_passes.py.

``yield_count_rows``, ``metric_count_rows``: ``ResultsStore``'s methods as of commit 124cd53 (one ``$group``
of ~30 conditional sums per document; a ``$project`` of ~25 flags, then a ``$group`` of ~35 sums), taking
the candidates collection instead of ``self``.
"""

from __future__ import annotations

from typing import Iterable

from fw_screen import state as st
from fw_screen.store import is_number


def yield_count_rows(candidates, campaign: str, thresholds: Iterable[float],
                     by: str = "targets.band_gap.value", match: dict | None = None) -> list[dict]:
    """Counts behind the CrystaLLM-pi / MatterGen yields per value of ``by``, at every stability threshold,
    in one aggregation (one pass over the campaign: on the embedded server each pass costs ~0.5-1 ms per
    valid candidate, so the thresholds, the conditions and the status counts share it).

    Returns ``[{"condition", "n", "status": {status: count}, "counts": {threshold: {...}}}]``, each
    ``{...}`` holding the counts :func:`fw_screen.science.yields.yields` computes from records (``valid``,
    ``valid_unique``, ``vun``, ``vun_evaluated``, ``vsun``, ``valid_band_gap_evaluated``, ...) with
    ``stable`` = ML ``e_above_hull <= threshold``.  :func:`sum_yield_rows` adds rows up.  ``match``: a
    narrower filter than the whole campaign (:meth:`relaxed_count_rows`).
    """
    thresholds = [float(t) for t in thresholds]
    valid = {"$in": ["$status", list(st.VALID_OR_LATER)]}
    unique = {"$in": ["$status", [st.KNOWN, *st.NOVEL_OR_LATER]]}
    vun = {"$in": ["$status", list(st.NOVEL_OR_LATER)]}
    e = "$ml.e_above_hull"
    evaluated = {"$and": [vun, is_number(e)]}
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
    for r in candidates.aggregate([{"$match": match or {"campaign": campaign}}, {"$group": group},
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


def metric_count_rows(candidates, campaign: str, thresholds: Iterable[float],
                      by: str = "targets.band_gap.value") -> list[dict]:
    """The sums behind ``fw-screen metrics`` (:mod:`fw_screen.science.metrics`) per value of ``by``, in one
    aggregation over the campaign: counts for V/VU/VUN/VSUN and S.U.N./MSUN at each threshold (reference
    and self-consistent hull), composition novelty, relaxation RMSD and kept space groups, the DiffCSP
    validity split, band-gap errors against the target (ML, DFT-lite, DFT), ML-vs-DFT stability at 0
    eV/atom; and the density and number-of-elements samples of the valid candidates.

    Returns ``[{"condition", "n", name: sum, ..., "density": [...], "nelements": [...]}]``."""
    thresholds = [float(t) for t in thresholds]
    num = is_number
    status = "$status"
    e, e_sc, d = "$ml.e_above_hull", "$ml.e_above_hull_self_consistent", "$dft.e_above_hull"
    checks = "$validity.checks"
    sg0, sg1 = "$ml.relax.spacegroup_number_initial", "$ml.relax.spacegroup_number_final"
    target = "$targets.band_gap.value"
    # relaxed: ML-done or later and not left unrelaxed by the single-point pre-screen (ml.prescreen_e_hull)
    relaxed = {"$and": [{"$in": [status, list(st.ML_DONE_OR_LATER)]}, {"$ne": ["$ml.relax.status", "skipped"]}]}
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
    for r in candidates.aggregate([{"$match": {"campaign": campaign}}, {"$project": flags},
                                        {"$group": group}, {"$sort": {"_id": 1}}], allowDiskUse=True):
        row = {"condition": r.pop("_id"), **r}
        for i, thr in enumerate(thresholds):
            for key in ("vsun", "sun", "sun_sc"):
                row.setdefault("by_threshold", {}).setdefault(thr, {})[key] = row.pop(f"{key}_{i}")
        out.append(row)
    return out

