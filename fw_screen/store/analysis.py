"""The researcher's questions as MongoDB aggregations: yields, metrics, the hull table, the report's reads.

A part of :class:`fw_screen.store.ResultsStore` (it holds the collections these methods use).
"""

from __future__ import annotations

from typing import Iterable

from fw_screen import state as st
from fw_screen.spec import as_spec
from fw_screen.store.base import (
    CANDIDATES,
    HULL_TABLE_PROJECTION,
    HULL_TABLE_SORT_FIELDS,
    REFERENCES,
    StoreError,
    is_number,
    match_stages,
)


class Analysis:
    """The researcher's questions as MongoDB aggregations (:class:`~fw_screen.store.ResultsStore`)."""

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
        num = is_number
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
        """``{"name", "created", "spec"}`` of a campaign (StoreError when there is none; ``spec``: the
        :class:`~fw_screen.spec.CampaignSpec`, upgraded as :meth:`campaign_spec` gives it)."""
        doc = self.campaigns.find_one({"_id": name}, {"spec": 1, "created": 1})
        if doc is None:
            raise StoreError(f"unknown campaign {name!r}")
        return {"name": name, "created": doc.get("created"), "spec": as_spec(doc["spec"])}

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
