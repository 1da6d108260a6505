"""Stage 7, analysis: the researcher's questions answered from the database.

* :func:`hull_table` — which generated structures are worth anything: one row per candidate with its
  validity/novelty flags, ML e_above_hull (relaxed and as generated), DFT e_above_hull, decomposition
  products, ML and DFT band gaps against the target, status and reason.  Filtering, sorting and the row
  itself are computed by MongoDB (one aggregation, :meth:`ResultsStore.hull_table_rows`); :func:`format_table`
  writes CSV, Markdown or JSON.
* :func:`funnel_yields` — V, VU, VUN, VSUN and target yields per campaign and per condition, with the
  CrystaLLM-pi / MatterGen definitions (:func:`fw_screen.science.yields.yields` states them), at the campaign's
  stability threshold and at 0 eV/atom.
* :func:`campaign_metrics` — the table to put beside the papers (``fw-screen metrics``): V/VU/VUN/VSUN,
  S.U.N./MSUN after relaxation on the reference and the self-consistent hull, composition novelty, RMSD and
  kept space groups, DiffCSP's validity split and Wasserstein distances, band-gap MAE against the target,
  F1/DAF against DFT; each with its definition and paper (:mod:`fw_screen.science.metrics`), from one aggregation.
* :func:`agreement` / :func:`ml_vs_dft` — how far to trust the cheap stage: MAE of e_above_hull and band gap
  between the ML and DFT results of the promoted candidates, precision and recall of "stable" and "target
  hit", with the caveat the selection implies stated next to the numbers.

The chemical-space view (matminer features) is :mod:`fw_screen.reporting.chemical_space`; plots and the HTML report
are :mod:`fw_screen.reporting.report`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Iterable

from fw_screen import state as st
from fw_screen.science.yields import yield_rates
from fw_screen.store import (
    HULL_TABLE_PROJECTION,
    HULL_TABLE_SORT_FIELDS,
    ResultsStore,
    sum_yield_rows,
)

#: columns of the hull-distance table, in order
COLUMNS = [k for k in HULL_TABLE_PROJECTION if k != "_id"]

#: ``--stage`` names -> the statuses a candidate can have once it has passed that stage
STAGES: dict[str, tuple[str, ...]] = {
    "valid": st.VALID_OR_LATER,
    "unique": (st.KNOWN, *st.NOVEL_OR_LATER),
    "novel": st.NOVEL_OR_LATER,
    "ml": st.ML_DONE_OR_LATER,
    "promoted": (st.PROMOTED, st.DFT_DONE, st.DFT_FAILED),
    "dft": (st.DFT_DONE,),
    "failed": (st.INVALID, st.NO_REFERENCE, st.ML_FAILED, st.DFT_FAILED),
}


#: "holds a number": a range, not ``$type``, so that the query planner can use the (campaign, field) index
#: (a range bound on an index; ``$type`` is not one on the embedded server).  NaN is not >= -inf.
HAS_NUMBER = {"$gte": float("-inf")}


class AnalysisError(ValueError):
    """A question the database cannot answer as asked (unknown stage, column, campaign), stated for a user."""


def require_campaign(store: ResultsStore, campaign: str) -> None:
    """Raise :class:`AnalysisError` naming the campaigns there are when ``campaign`` is not one of them."""
    names = store.campaign_names()
    if campaign not in names:
        known = ", ".join(names) if names else "none yet: `fw-screen submit INPUT --campaign NAME`"
        raise AnalysisError(f"no campaign {campaign!r} in this database (campaigns: {known})")


def table_filter(campaign: str, stage: str | None = None, chemsys: str | None = None,
                 elements: Iterable[str] | None = None, condition: float | None = None,
                 max_ml_e_above_hull: float | None = None, max_dft_e_above_hull: float | None = None,
                 ml_hit: bool | None = None, dft_hit: bool | None = None) -> dict:
    """The MongoDB filter for a hull table.

    ``stage``: a key of :data:`STAGES` or one status; ``chemsys``: exactly that chemical system ("P-Na" and
    "Na-P" alike); ``elements``: containing all of these; ``condition``: the band-gap target (eV); the
    thresholds keep candidates at or below them (and so with a value); ``ml_hit``/``dft_hit``: band-gap hit.
    """
    q: dict = {"campaign": campaign}
    if stage:
        if stage in STAGES:
            q["status"] = {"$in": list(STAGES[stage])}
        elif stage in st.ORDER:
            q["status"] = stage
        else:
            raise AnalysisError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)} or a status "
                                f"({', '.join(st.ORDER)})")
    if chemsys:
        q["chemsys"] = "-".join(sorted(e.strip() for e in chemsys.split("-") if e.strip()))
    if elements:
        q["elements"] = {"$all": sorted(set(elements))}
    if condition is not None:
        q["targets.band_gap.value"] = {"$gte": condition - 1e-6, "$lte": condition + 1e-6}
    if max_ml_e_above_hull is not None:
        q["ml.e_above_hull"] = {"$lte": max_ml_e_above_hull}
    if max_dft_e_above_hull is not None:
        q["dft.e_above_hull"] = {"$lte": max_dft_e_above_hull}
    if ml_hit is not None:
        q["ml.hits.band_gap.hit"] = ml_hit
    if dft_hit is not None:
        q["dft.hits.band_gap.hit"] = dft_hit
    return q


def hull_table(store: ResultsStore, campaign: str, sort: str = "ml_e_above_hull", descending: bool = False,
               limit: int | None = None, **filters) -> list[dict]:
    """Rows of the hull-distance table (:data:`COLUMNS`), filtered (see :func:`table_filter`) and sorted by the
    database.  Candidates without a value in the sort column come last whichever the direction."""
    if sort not in HULL_TABLE_SORT_FIELDS:
        raise AnalysisError(f"cannot sort by {sort!r}: use one of {', '.join(HULL_TABLE_SORT_FIELDS)}")
    match = table_filter(campaign, **filters)
    field = HULL_TABLE_SORT_FIELDS[sort]
    direction = -1 if descending else 1
    if field in ("_id", "seq", "status", "reduced_formula", "chemsys"):  # always present
        return store.hull_table_rows(match, [(sort, direction)], limit)
    # present-first: the rows with a value, sorted (indexed), then the rest in input order.  The split is
    # added with $and, so that a filter on the sort field itself (e.g. max_ml_e_above_hull) is kept.
    def split(cond: dict) -> dict:
        return {"$and": [match, {field: cond}]} if field in match else {**match, field: cond}

    with_value = store.hull_table_rows(split(HAS_NUMBER), [(sort, direction)], limit)
    if limit is not None and len(with_value) >= limit:
        return with_value
    rest = store.hull_table_rows(split({"$not": HAS_NUMBER}), [("seq", 1)],
                                 None if limit is None else limit - len(with_value))
    return with_value + rest


def _cell(value, markdown: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "" if not markdown else "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ") if markdown else text


def format_table(rows: list[dict], fmt: str = "csv", columns: list[str] | None = None) -> str:
    """The table as ``csv``, ``markdown`` or ``json`` text (all :data:`COLUMNS` unless ``columns``)."""
    columns = columns or COLUMNS
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=1, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        return buf.getvalue()
    if fmt in ("md", "markdown"):
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c), True) for c in columns) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    raise AnalysisError(f"unknown table format {fmt!r}: csv, markdown or json")


# ---------------------------------------------------------------------------------------------- yields
def funnel_yields(store: ResultsStore, campaign: str, thresholds: Iterable[float] | None = None,
                  by: str = "targets.band_gap.value") -> dict:
    """Yields of a campaign, overall and per condition, at each stability threshold (eV/atom).

    Default thresholds: the campaign's ``ml.stability_threshold`` (MatterGen's S.U.N. uses 0.1) and 0.0
    (on or below the reference hull).  Returns ``{"campaign", "n", "thresholds", "overall": {thr: {...}},
    "by_condition": [{"condition", "n", thr: {...}}]}``; each ``{...}`` holds ``counts`` and ``rates`` as
    :func:`fw_screen.science.yields.yields` defines them.  Stability is the ML e_above_hull of the relaxed structure.
    """
    if thresholds is None:
        spec = store.campaign_spec(campaign)
        thresholds = sorted({float(spec.ml.stability_threshold), 0.0}, reverse=True)
    thresholds = [float(t) for t in thresholds]
    rows = store.yield_count_rows(campaign, thresholds, by=by)  # one pass for every threshold and condition
    if not rows:
        raise AnalysisError(f"campaign {campaign!r} has no candidates")
    total = sum_yield_rows(rows)

    def per_threshold(row: dict) -> dict:
        return {thr: {"counts": row["counts"][thr], "rates": yield_rates(row["counts"][thr], row["n"])}
                for thr in thresholds}

    return {"campaign": campaign, "thresholds": thresholds, "n": total["n"], "overall": per_threshold(total),
            "by_condition": [{"condition": r["condition"], "n": r["n"], **per_threshold(r)}
                             for r in sorted(rows, key=lambda r: (r["condition"] is None, r["condition"] or 0))]}


#: columns of :func:`yield_rows`
YIELD_COLUMNS = ["condition", "n", "stability_threshold", "V", "VU", "VUN", "VSUN", "stable_among_vun_evaluated",
                 "band_gap_hit_among_valid_evaluated", "band_gap_hit_among_vsun", "valid", "valid_unique", "vun",
                 "vun_evaluated", "vsun", "valid_band_gap_evaluated", "valid_band_gap_hits"]


def yield_rows(y: dict) -> list[dict]:
    """:func:`funnel_yields` flattened for :func:`format_table`: one row per (condition, threshold), the
    campaign as a whole first (condition ``all``)."""
    rows = []
    for label, n, per_thr in [("all", y["n"], y["overall"])] + [
            (r["condition"], r["n"], {t: r[t] for t in y["thresholds"] if t in r}) for r in y["by_condition"]]:
        for thr, v in per_thr.items():
            rows.append({"condition": label, "n": n, "stability_threshold": thr, **v["rates"], **v["counts"]})
    return rows


# ------------------------------------------------------------------------------------- metrics
def campaign_metrics(store: ResultsStore, campaign: str, by: str = "targets.band_gap.value") -> dict:
    """The papers' metrics of a campaign, overall and per condition (:mod:`fw_screen.science.metrics` defines them).

    Thresholds: 0 and the campaign's ``ml.stability_threshold`` (S.U.N. and MSUN).  ``relaxed_pass`` says
    when the post-relaxation matching last ran and whether candidates relaxed since are not yet in it
    (their S.U.N. counts then wait: ``fw-screen promote`` or the end of the ML stage runs it)."""
    from fw_screen.science import metrics as mt

    require_campaign(store, campaign)
    spec = store.campaign_spec(campaign)
    stab = float(spec.ml.stability_threshold)
    thresholds = sorted({0.0, stab})
    rows = store.metric_count_rows(campaign, thresholds, by=by)
    reference = store.reference_distribution()
    total = mt.add_rows(rows)
    last = store.relaxed_pass(campaign)
    return {"campaign": campaign, "thresholds": thresholds,
            "definitions": mt.definitions(thresholds, stab),
            "reference": {"structures": len(reference["nelements"]), "sets": [s["_id"] for s in store.reference_sets()]},
            "relaxed_pass": {"at": (last or {}).get("at"), "relaxed": total["relaxed"],
                             "checked": total["relaxed_checked"],
                             "pending": total["relaxed"] - total["relaxed_checked"]},
            "overall": mt.values(total, thresholds, reference),
            "by_condition": [{"condition": r["condition"], **mt.values(r, thresholds, reference)}
                             for r in sorted(rows, key=lambda r: (r["condition"] is None, r["condition"] or 0))]}


def format_metrics(result: dict, fmt: str = "markdown") -> str:
    """:func:`campaign_metrics` as one table: a row per metric, a column for the campaign and each
    condition, then the definition and the paper."""
    from fw_screen.science import metrics as mt

    if fmt == "json":
        return json.dumps(result, indent=1, default=str) + "\n"
    conds = [("all", result["overall"])] + [(f"gap {c['condition']}" if c["condition"] is not None else "no target", c)
                                            for c in result["by_condition"]]
    rows = []
    for d in result["definitions"]:
        row = {"metric": d["name"]}
        row.update({label: mt.fmt(v.get(d["key"]), d["key"]) for label, v in conds})
        row.update({"definition": d["definition"], "source": d["source"]})
        rows.append(row)
    columns = ["metric", *[label for label, _ in conds], "definition", "source"]
    text = format_table(rows, "markdown" if fmt == "md" else fmt, columns)
    if fmt in ("markdown", "md"):
        rp = result["relaxed_pass"]
        ref = result["reference"]
        text += (f"\nreference: {ref['structures']} structures of {', '.join(ref['sets']) or 'no set'}; "
                 f"after relaxation: {rp['checked']} of {rp['relaxed']} ML-relaxed candidates checked"
                 + (f" ({rp['pending']} wait for the post-relaxation pass)" if rp["pending"] else "") + "\n")
    return text


# ------------------------------------------------------------------------------------- ML vs DFT
def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _classification(pairs: list[tuple[bool, bool]], label: str, selection_note: str | None) -> dict:
    """Precision/recall of the ML flag (first) against the DFT flag (second)."""
    tp = sum(1 for m, d in pairs if m and d)
    fp = sum(1 for m, d in pairs if m and not d)
    fn = sum(1 for m, d in pairs if not m and d)
    tn = sum(1 for m, d in pairs if not m and not d)
    out = {"n": len(pairs), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
           "precision": tp / (tp + fp) if tp + fp else None,
           "recall": tp / (tp + fn) if tp + fn else None, "notes": []}
    if pairs and not any(not m for m, _ in pairs):
        out["notes"].append(f"every candidate with DFT was ML-{label}, so recall cannot show ML misses"
                            + (f" ({selection_note})" if selection_note else ""))
    return out


def _errors(rows: list[dict], predicted: str, truth: str) -> dict:
    """n, MAE, mean signed error and max |error| of column ``predicted`` against ``truth`` where both are numbers."""
    errs = [r[predicted] - r[truth] for r in rows
            if isinstance(r.get(predicted), (int, float)) and isinstance(r.get(truth), (int, float))]
    return {"n": len(errs), "mae": _mean([abs(e) for e in errs]), "mean_error": _mean(errs),
            "max_abs_error": max((abs(e) for e in errs), default=None)}


def agreement(rows: list[dict], selection_note: str | None = None) -> dict:
    """ML-vs-DFT agreement over hull-table rows with DFT results.

    e_above_hull and band gap: n, MAE, mean signed error (ML − DFT), max |error|; "stable" and "target hit":
    precision and recall of the ML flag taking DFT as truth, with a note when the selection makes recall
    uninformative (promotion sends ML-stable, ML-hit candidates to DFT).
    """
    out: dict = {key: _errors(rows, f"ml_{key}", f"dft_{key}") for key in ("e_above_hull", "band_gap")}
    out["band_gap_dft_lite"] = _errors(rows, "dft_lite_band_gap", "dft_band_gap")
    # the band-gap model's error measured on the DFT truth set, next to the one these few candidates show
    out["band_gap_model_error"] = sorted({r["ml_band_gap_error"] for r in rows
                                          if isinstance(r.get("ml_band_gap_error"), (int, float))})
    for key, label in (("stable", "stable"), ("band_gap_hit", "hit")):
        pairs = [(bool(r[f"ml_{key}"]), bool(r[f"dft_{key}"])) for r in rows
                 if r.get(f"ml_{key}") is not None and r.get(f"dft_{key}") is not None]
        out[key] = _classification(pairs, label, selection_note)
    return out


def ml_vs_dft(store: ResultsStore, campaign: str) -> dict:
    """:func:`agreement` on the campaign's DFT-done candidates, with the promotion rules as the selection."""
    rows = hull_table(store, campaign, stage="dft", sort="dft_e_above_hull")
    spec = store.campaign_spec(campaign)
    rules = spec.promotion
    source = "a DFT-lite" if spec.property.method == "dft_lite" else "an ML"
    note = (f"promotion requires ML e_above_hull <= {rules.max_e_above_hull} eV/atom"
            + (f" and {source} band-gap hit" if rules.require_target_hit else ""))
    return {"campaign": campaign, "n_dft": len(rows), "selection": note, **agreement(rows, note), "rows": rows}


def format_agreement(result: dict) -> str:
    """:func:`ml_vs_dft` as text for a terminal."""
    def num(x, fmt=".3f"):
        return "-" if x is None else format(x, fmt)

    lines = [f"ML vs DFT, campaign {result['campaign']}: {result['n_dft']} candidates with DFT results "
             f"(selection: {result['selection']})"]
    if not result["n_dft"]:
        lines.append("  no DFT results yet: promote candidates (`fw-screen promote CAMPAIGN`) and run DFT workers")
        return "\n".join(lines)
    for key, unit in (("e_above_hull", "eV/atom"), ("band_gap", "eV")):
        a = result[key]
        lines.append(f"  {key:<13} n {a['n']:>3}  MAE {num(a['mae'])} {unit}  mean (ML - DFT) {num(a['mean_error'])}"
                     f"  max |error| {num(a['max_abs_error'])}")
    lite = result.get("band_gap_dft_lite") or {}
    if lite.get("n"):
        lines.append(f"  {'gap DFT-lite':<13} n {lite['n']:>3}  MAE {num(lite['mae'])} eV  mean (lite - DFT) "
                     f"{num(lite['mean_error'])}  max |error| {num(lite['max_abs_error'])}")
    measured = result.get("band_gap_model_error") or []
    lines.append("  band-gap model error measured on the DFT truth set (tests/data/band_gap_truth): "
                 + (", ".join(f"MAE {m:.2f} eV" for m in measured) if measured else "not measured for this model"))
    for key in ("stable", "band_gap_hit"):
        c = result[key]
        lines.append(f"  {key:<13} n {c['n']:>3}  precision {num(c['precision'], '.2f')}  recall "
                     f"{num(c['recall'], '.2f')}  (tp {c['tp']}, fp {c['fp']}, fn {c['fn']}, tn {c['tn']})")
        lines += [f"    note: {n}" for n in c["notes"]]
    return "\n".join(lines)
