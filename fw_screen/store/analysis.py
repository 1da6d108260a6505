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
    condition_order,
    number,
    match_stages,
)


def yield_counts_from_groups(groups: Iterable[dict], thresholds: Iterable[float]) -> list[dict]:
    """:meth:`Analysis.yield_count_rows` rows from its groups ``{c, s, e, h, nr, d, dt, n}`` (condition,
    status, ML e_above_hull, band-gap hit, ``ml.novel_relaxed``, ``ml.duplicate_of_relaxed`` and its BSON
    type, how many candidates share them), with the definitions of the aggregation it replaced: valid /
    unique / novel by status; evaluated = novel with a numeric (not NaN) e_above_hull; a band-gap verdict =
    a boolean hit; checked after relaxation = ``ml.duplicate_of_relaxed`` present (None counts)."""
    thresholds = [float(t) for t in thresholds]
    valid_s, unique_s, vun_s = set(st.VALID_OR_LATER), {st.KNOWN, *st.NOVEL_OR_LATER}, set(st.NOVEL_OR_LATER)
    names = ("valid", "valid_unique", "vun", "vun_evaluated", "valid_band_gap_evaluated", "valid_band_gap_hits")
    rows: dict = {}
    for g in groups:
        c, s, e, h, n = g.get("c"), g.get("s"), g.get("e"), g.get("h"), g["n"]
        row = rows.get(c)
        if row is None:
            row = rows[c] = {"n": 0, "shared": dict.fromkeys(names, 0), "status": {},
                             "thr": {t: {"vsun": 0, "vsun_band_gap_evaluated": 0, "vsun_band_gap_hits": 0}
                                     for t in thresholds},
                             "relaxed": {"checked": 0, "known": 0, "duplicate": 0, "sun": dict.fromkeys(thresholds, 0)}}
        row["n"] += n
        row["status"][s] = row["status"].get(s, 0) + n
        valid, vun = s in valid_s, s in vun_s
        gap_known, hit = h is True or h is False, h is True
        evaluated = vun and number(e)
        sh = row["shared"]
        sh["valid"] += n * valid
        sh["valid_unique"] += n * (s in unique_s)
        sh["vun"] += n * vun
        sh["vun_evaluated"] += n * evaluated
        sh["valid_band_gap_evaluated"] += n * (valid and gap_known)
        sh["valid_band_gap_hits"] += n * (valid and hit)
        checked = g.get("dt", "missing") != "missing"
        relaxed_dup = g.get("d") is not None
        rel = row["relaxed"]
        if evaluated and checked:
            rel["checked"] += n
            rel["known"] += n * (g.get("nr") is False)
            rel["duplicate"] += n * relaxed_dup
        for t in thresholds:
            if evaluated and e <= t:
                row["thr"][t]["vsun"] += n
                row["thr"][t]["vsun_band_gap_evaluated"] += n * gap_known
                row["thr"][t]["vsun_band_gap_hits"] += n * hit
                rel["sun"][t] += n * (checked and g.get("nr") is True and not relaxed_dup)
    out = []
    for c in sorted(rows, key=condition_order):
        r = rows[c]
        status = {s_: r["status"][s_] for s_ in st.ORDER if r["status"].get(s_)}
        counts = {t: {**r["shared"], **r["thr"][t]} for t in thresholds}
        out.append({"condition": c, "n": r["n"], "status": status, "counts": counts, "relaxed": r["relaxed"]})
    return out


#: the candidate fields :func:`metric_counts_from_documents` reads
METRIC_FIELDS = ("status", "ml.relax.status", "ml.duplicate_of_relaxed", "ml.novel_relaxed", "ml.e_above_hull",
                 "ml.e_above_hull_self_consistent", "novel_composition", "ml.rmsd_relaxed",
                 "ml.relax.spacegroup_number_initial", "ml.relax.spacegroup_number_final",
                 "validity.checks.smact.passed", "validity.checks.min_distance.passed",
                 "validity.checks.volume.passed", "density", "elements", "dft.e_above_hull", "targets.band_gap.value",
                 "ml.band_gap.band_gap", "dft_lite.band_gap.band_gap", "dft.band_gap.band_gap")


def _field(doc: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return MISSING
        doc = doc[part]
    return doc


class _Missing:
    """A field the document does not have (MongoDB tells it from null in ``$type``)."""

    def __repr__(self):
        return "MISSING"


MISSING = _Missing()


def _value(x):
    return None if x is MISSING else x


def metric_counts_from_documents(docs: Iterable[dict], thresholds: Iterable[float],
                                 by: str = "targets.band_gap.value") -> list[dict]:
    """:meth:`Analysis.metric_count_rows` from the documents' :data:`METRIC_FIELDS`: per document the flags
    (valid / unique / novel by status; relaxed = ML-done or later and not left unrelaxed by the pre-screen;
    checked after relaxation = ``ml.duplicate_of_relaxed`` present; a number = not NaN), summed per value
    of ``by``."""
    thresholds = [float(t) for t in thresholds]
    valid_s, unique_s, vun_s = set(st.VALID_OR_LATER), {st.KNOWN, *st.NOVEL_OR_LATER}, set(st.NOVEL_OR_LATER)
    done_s = set(st.ML_DONE_OR_LATER)
    sums = ("n", "valid", "valid_unique", "vun", "vun_evaluated", "relaxed", "relaxed_checked", "relaxed_known",
            "relaxed_duplicate", "novel_unique_relaxed", "novel_composition", "rmsd_n", "rmsd_sum", "spacegroup_n",
            "spacegroup_kept", "smact", "structural", "smact_and_structural")
    gaps = (("ml", "ml.band_gap.band_gap"), ("dft_lite", "dft_lite.band_gap.band_gap"), ("dft", "dft.band_gap.band_gap"))
    rows: dict = {}
    for doc in docs:
        c = _value(_field(doc, by))
        r = rows.get(c)
        if r is None:
            r = rows[c] = {**dict.fromkeys(sums, 0), "density": [], "nelements": [],
                           **{f"gap_{g}_{k}": 0 for g, _ in gaps for k in ("n", "abs_sum")},
                           **{f"dft_{k}": 0 for k in ("tp", "fp", "fn", "tn")},
                           "by_threshold": {t: {"vsun": 0, "sun": 0, "sun_sc": 0} for t in thresholds}}
        s = _field(doc, "status")
        valid, unique, novel = s in valid_s, s in unique_s, s in vun_s
        relaxed = s in done_s and _field(doc, "ml.relax.status") != "skipped"
        dup = _field(doc, "ml.duplicate_of_relaxed")
        checked = relaxed and dup is not MISSING
        nr = _field(doc, "ml.novel_relaxed")
        nur = checked and nr is True and _value(dup) is None
        e_raw = _field(doc, "ml.e_above_hull")
        e = e_raw if number(e_raw) else None
        e_sc = _field(doc, "ml.e_above_hull_self_consistent")
        e_sc = e_sc if number(e_sc) else None
        rmsd = _field(doc, "ml.rmsd_relaxed")
        rmsd = rmsd if number(rmsd) and relaxed else None
        sg0, sg1 = _field(doc, "ml.relax.spacegroup_number_initial"), _field(doc, "ml.relax.spacegroup_number_final")
        sg_n = relaxed and number(sg0) and number(sg1)
        smact = _field(doc, "validity.checks.smact.passed") is True
        structural = (_field(doc, "validity.checks.min_distance.passed") is True
                      and _field(doc, "validity.checks.volume.passed") is True)
        r["n"] += 1
        r["valid"] += valid
        r["valid_unique"] += unique
        r["vun"] += novel
        r["vun_evaluated"] += novel and e is not None
        r["relaxed"] += relaxed
        r["relaxed_checked"] += checked
        r["relaxed_known"] += checked and nr is False
        r["relaxed_duplicate"] += checked and _value(dup) is not None
        r["novel_unique_relaxed"] += nur
        r["novel_composition"] += unique and _field(doc, "novel_composition") is True
        if rmsd is not None:
            r["rmsd_n"] += 1
            r["rmsd_sum"] += rmsd
        r["spacegroup_n"] += sg_n
        r["spacegroup_kept"] += sg_n and sg0 == sg1
        r["smact"] += smact
        r["structural"] += structural
        r["smact_and_structural"] += smact and structural
        density, elements = _field(doc, "density"), _field(doc, "elements")
        if valid and number(density):
            r["density"].append(density)
        if valid and isinstance(elements, list):
            r["nelements"].append(len(elements))
        target = _field(doc, "targets.band_gap.value")
        for g, path in gaps:
            gap = _field(doc, path)
            if number(gap) and number(target):
                r[f"gap_{g}_n"] += 1
                r[f"gap_{g}_abs_sum"] += abs(gap - target)
        d = _field(doc, "dft.e_above_hull")
        if s == st.DFT_DONE and number(d) and number(e_raw):
            # true/false: the ML verdict at 0 eV/atom agrees with DFT's; positive/negative: ML says stable
            r[f"dft_{'t' if (e_raw <= 0) == (d <= 0) else 'f'}{'p' if e_raw <= 0 else 'n'}"] += 1
        for t in thresholds:
            bt = r["by_threshold"][t]
            bt["vsun"] += novel and e is not None and e <= t
            bt["sun"] += nur and e is not None and e <= t
            bt["sun_sc"] += nur and e_sc is not None and e_sc <= t
    out = [{"condition": c, **rows[c]} for c in sorted(rows, key=condition_order)]
    if not thresholds:
        for r in out:
            del r["by_threshold"]
    return out


class Analysis:
    """The researcher's questions as MongoDB aggregations (:class:`~fw_screen.store.ResultsStore`)."""

    # ------------------------------------------------------------------------------------ analysis
    def yield_count_rows(self, campaign: str, thresholds: Iterable[float],
                         by: str = "targets.band_gap.value", match: dict | None = None) -> list[dict]:
        """Counts behind the CrystaLLM-pi / MatterGen yields per value of ``by``, at every stability threshold,
        from one pass over the campaign.

        Returns ``[{"condition", "n", "status": {status: count}, "counts": {threshold: {...}}, "relaxed": {...}}]``,
        each ``{...}`` holding the counts :func:`fw_screen.science.yields.yields` computes from records
        (``valid``, ``valid_unique``, ``vun``, ``vun_evaluated``, ``vsun``, ``valid_band_gap_evaluated``, ...)
        with ``stable`` = ML ``e_above_hull <= threshold``.  :func:`sum_yield_rows` adds rows up.  ``match``: a
        narrower filter than the whole campaign (:meth:`relaxed_count_rows`).

        The database groups the candidates by the few fields the counts depend on (condition, status, ML
        e_above_hull, band-gap hit, the after-relaxation verdicts): a handful of rows, plus one per ML-done
        candidate, which :func:`yield_counts_from_groups` turns into the counts.  Grouping by raw fields is
        ~6x cheaper on the embedded server than the ~30 conditional sums per document it replaced, which
        cost more than reading the documents (``benchmarks/bench_passes.py``); the answer is the same
        (``tests/test_analysis.py`` compares it with that aggregation).
        """
        key = {"c": f"${by}", "s": "$status", "e": "$ml.e_above_hull", "h": "$ml.hits.band_gap.hit",
               "nr": "$ml.novel_relaxed", "d": "$ml.duplicate_of_relaxed",
               "dt": {"$type": "$ml.duplicate_of_relaxed"}}
        groups = self.candidates.aggregate([{"$match": match or {"campaign": campaign}},
                                            {"$group": {"_id": key, "n": {"$sum": 1}}}], allowDiskUse=True)
        return yield_counts_from_groups(({**g["_id"], "n": g["n"]} for g in groups), thresholds)
    def relaxed_count_rows(self, campaign: str, thresholds: Iterable[float]) -> list[dict]:
        """The after-relaxation part of :meth:`yield_count_rows` (``relaxed``: checked, known, duplicate, S.U.N.)
        read from the ML-done-or-later candidates only (the (campaign, status) index finds them)."""
        match = {"campaign": campaign, "status": {"$in": list(st.ML_DONE_OR_LATER)}}
        return [{"condition": r["condition"], **r["relaxed"]}
                for r in self.yield_count_rows(campaign, thresholds, match=match)]

    def metric_count_rows(self, campaign: str, thresholds: Iterable[float],
                          by: str = "targets.band_gap.value") -> list[dict]:
        """The sums behind ``fw-screen metrics`` (:mod:`fw_screen.science.metrics`) per value of ``by``, from one
        pass over the campaign: counts for V/VU/VUN/VSUN and S.U.N./MSUN at each threshold (reference and
        self-consistent hull), composition novelty, relaxation RMSD and kept space groups, the DiffCSP
        validity split, band-gap errors against the target (ML, DFT-lite, DFT), ML-vs-DFT stability at 0
        eV/atom; and the density and number-of-elements samples of the valid candidates.

        The pass reads the ~25 fields these depend on (a projection) and :func:`metric_counts_from_documents`
        sums them: on the embedded server evaluating the same flags and sums as database expressions cost
        ~5x more than reading the fields (``benchmarks/bench_passes.py``); the answer is the same
        (``tests/test_counters.py`` compares it with that aggregation).

        Returns ``[{"condition", "n", name: sum, ..., "density": [...], "nelements": [...]}]``."""
        docs = self.candidates.find({"campaign": campaign}, {f: 1 for f in (by, *METRIC_FIELDS)})
        return metric_counts_from_documents(docs, thresholds, by)
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
        coll, out = (self.candidates if collection == CANDIDATES else self.db[collection]), {}
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
