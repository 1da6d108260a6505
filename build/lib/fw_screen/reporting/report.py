"""Stage 7, the campaign report: one self-contained HTML file a researcher can open anywhere, offline.

:func:`build_report` writes ``report_CAMPAIGN.html``: plots are PNGs embedded as ``data:`` URIs, the CSS is
inline, there is no JavaScript and no external resource of any kind (a Content-Security-Policy of
``default-src 'none'`` says so to the browser).  Sections, in order:

* **campaign**: inputs, statuses, the spec thresholds the numbers below depend on, when it was generated;
* **funnel**: inputs → valid → unique → novel → ML-done → ML-stable → promoted → DFT-done as bars, and the
  yields table (V, VU, VUN, VSUN at the thresholds :func:`~fw_screen.reporting.tables.funnel_yields` uses, band-gap
  target hits among the valid candidates with a prediction and among VSUN), overall and per condition;
* **e_hull**: the ML e_above_hull of the relaxed structures, one histogram per band-gap condition, with the
  stability threshold;
* **band_gap**: predicted ML band gap against the target of each condition, with the ± tolerance band;
* **parity**: ML against DFT e_above_hull and band gap, MAE and precision/recall
  (:func:`~fw_screen.reporting.tables.ml_vs_dft`);
* **phase_diagrams**: the DFT phase diagram of every chemical system with a DFT-confirmed candidate, built
  from the energies the DFT stage stored (:func:`fw_screen.dft.hull.hull_inputs` / :func:`fw_screen.dft.hull.hull_entries`,
  as the DFT hull itself) with pymatgen's ``PhaseDiagram`` and ``PDPlotter``, candidates highlighted;
* **chemical_space**: :mod:`fw_screen.reporting.chemical_space`'s PCA map of reference / valid / novel / ML-stable /
  DFT-confirmed structures;
* **candidates**: the top rows of the hull table (DFT e_above_hull first, then ML), each with its CIF.

Presentation only: the numbers come from :mod:`fw_screen.reporting.tables`, :mod:`fw_screen.reporting.chemical_space` and
:class:`~fw_screen.store.results.ResultsStore` queries (aggregations: nothing here loops over a campaign's documents).
A section without data (no ML yet, no DFT yet) says which stage is missing and which command produces it.
Plots are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fw_screen import state as st
from fw_screen.reporting.tables import (
    AnalysisError,
    campaign_metrics,
    funnel_yields,
    hull_table,
    ml_vs_dft,
    require_campaign,
)
from fw_screen.store import ResultsStore

#: section keys, in the order they appear (the summary and the progress bar use them)
SECTIONS = ("campaign", "funnel", "metrics", "e_hull", "band_gap", "parity", "phase_diagrams", "chemical_space", "candidates")
TITLES = {"campaign": "Campaign", "funnel": "Funnel and yields",
          "metrics": "Generation metrics, as the papers define them", "e_hull": "ML energy above hull per condition",
          "band_gap": "ML band gap against the target", "parity": "ML against DFT",
          "phase_diagrams": "DFT phase diagrams", "chemical_space": "Chemical space",
          "candidates": "Top candidates"}
DPI = 144  # PNG resolution; shown at 96 CSS px per inch, so plots stay sharp on high-density screens
MAX_POINTS = 3000  # points drawn per condition in a strip plot (a seeded sample beyond that; stated)
MAX_PHASE_DIAGRAMS = 12
COLOURS = {"stable": "#2ca02c", "unstable": "#8fa9c8", "hit": "#2ca02c", "miss": "#9a9a9a", "none": "#1f77b4",
           "threshold": "#d62728", "band": "#ffd27f", "target": "#b8860b", "candidate": "#d62728"}


def esc(value) -> str:
    """Text for HTML (every string from the database or the spec goes through this)."""
    return html.escape("" if value is None else str(value), quote=True)


# ------------------------------------------------------------------------------------------ helpers
@dataclass
class Section:
    key: str
    body: str = ""
    drawn: bool = True
    reason: str | None = None  # why it was skipped
    seconds: float = 0.0


@dataclass
class Context:
    store: ResultsStore
    campaign: str
    spec: dict
    created: object
    counts: dict
    funnel: dict
    top: int
    chemical_space: bool
    max_per_group: int
    cache: dict = field(default_factory=dict)

    @property
    def ml_threshold(self) -> float:
        return float(self.spec["ml"]["stability_threshold"])

    @property
    def tolerance(self) -> float:
        return float(self.spec["property"]["band_gap_tolerance"])

    @property
    def dft_threshold(self) -> float:
        return float(self.spec["dft"]["stability_threshold"])


class _Skip(Exception):
    """A section has nothing to draw: the message (HTML) says which stage is missing and what produces it."""

    def __init__(self, reason: str, note_html: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.note_html = note_html if note_html is not None else esc(reason)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _img(fig, alt: str) -> str:
    """The figure as an embedded PNG (``<img src="data:image/png;base64,...">``), sized in CSS pixels."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    w, h = fig.get_size_inches()
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img class="plot" src="data:image/png;base64,{data}" width="{round(w * 96)}" '
            f'height="{round(h * 96)}" alt="{esc(alt)}">')


def _plot(fig, alt: str, caption: str = "") -> str:
    return f'<figure>{_img(fig, alt)}' + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>"


def _num(x, fmt: str = ".3f", signed: bool = False) -> str:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return format(x, ("+" if signed else "") + fmt)


def _pct(rate) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}%"


def _cond_label(c) -> str:
    return "no target" if c is None else f"{c:g} eV"


def _cond_sort(rows: list[dict], key: str = "condition") -> list[dict]:
    return sorted(rows, key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0.0))


def _code(text: str) -> str:
    return f"<code>{esc(text)}</code>"


def _yes_no(v) -> str:
    if v is None:
        return '<span class="na">–</span>'
    return '<span class="yes">✓</span>' if v else '<span class="no">✗</span>'


def _finite(values) -> np.ndarray:
    a = np.array([v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)], dtype=float)
    return a[np.isfinite(a)]


def _when(t: dt.datetime) -> str:
    """A time as ``2026-11-30 03:48:27 UTC`` (MongoDB returns naive datetimes in UTC)."""
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "campaign"


def default_path(campaign: str) -> Path:
    """``report_CAMPAIGN.html`` in the current directory (characters unsafe in a file name become ``_``)."""
    return Path(f"report_{_safe_name(campaign)}.html")


# ----------------------------------------------------------------------- what is missing, and the fix
def _run_hint(category: str) -> str:
    return _code(f"fw-screen run -n 2 --category {category}")


def _ml_missing(ctx: Context) -> _Skip:
    f, c = ctx.funnel, ctx.campaign
    if f["valid"] == 0 and f["pending_validity"]:
        return _Skip("the validity stage has not run",
                     f"No results yet: {f['pending_validity']:,} candidates wait for the validity stage. Run the "
                     f"cheap workers: {_run_hint('cheap')}.")
    if f["novel"] == 0:
        if f["pending_uniqueness"]:
            return _Skip("the uniqueness stage has not run",
                         f"No ML results: {f['pending_uniqueness']:,} valid candidates wait for the uniqueness / "
                         f"novelty stage ({_run_hint('cheap')}); the ML stage relaxes the novel ones.")
        return _Skip("no novel candidates", "No ML results: the campaign has no novel candidates (every valid one is "
                                            "a duplicate or matches a reference), so the ML stage had nothing to do.")
    if f["pending_ml"]:
        return _Skip("the ML stage has not run (or not finished)",
                     f"No ML stability results yet: {f['pending_ml']:,} novel candidates wait for the ML stage "
                     f"(CHGNet relaxation, hull, MEGNet band gap). Add its Fireworks with {_code(f'fw-screen ml -c {c}')} "
                     f"(older campaigns) and run ML workers: {_run_hint('ml')}.")
    if f["no_reference"] and not f["ml_done"]:
        return _Skip("no reference entries for the hulls",
                     f"No ML hull distances: all {f['no_reference']:,} novel candidates lack reference entries for "
                     f"their chemical systems. Load references with {_code('fw-screen references PATH')} "
                     f"(e.g. the Materials Project files in examples/) and submit again.")
    return _Skip("no ML results", f"No ML results: {f['ml_failed']:,} ML runs failed, {f['no_reference']:,} candidates "
                                  f"had no reference entries (see the candidates table and "
                                  f"{_code(f'fw-screen status -c {c}')}).")


def _dft_missing(ctx: Context) -> _Skip:
    f, c = ctx.funnel, ctx.campaign
    if not f["ml_done"]:
        ml = _ml_missing(ctx)
        return _Skip(f"no DFT results ({ml.reason})", f"No DFT results: the ML stage comes first. {ml.note_html}")
    if not f["promoted"]:
        return _Skip("no candidate promoted to DFT",
                     f"No DFT results: no candidate has been promoted to DFT yet. Promotion runs by itself when the ML "
                     f"stage finishes, or by hand: {_code(f'fw-screen promote {c}')}; then run DFT workers: "
                     f"{_run_hint('dft')}.")
    if f["pending_dft"]:
        return _Skip("the DFT stage has not run (or not finished)",
                     f"No DFT results yet: {f['pending_dft']:,} promoted candidates wait for DFT. Run DFT workers: "
                     f"{_run_hint('dft')} (or {_code(f'fw-screen promote {c}')} to add missing DFT Fireworks).")
    return _Skip("every DFT run failed",
                 f"No DFT results: all {f['dft_failed']:,} DFT runs failed; their reasons are in the candidates table "
                 f"and in {_code(f'fw-screen status -c {c} --dft')}.")


# ------------------------------------------------------------------------------------------ sections
def _section_campaign(ctx: Context) -> str:
    spec, f = ctx.spec, ctx.funnel
    try:
        from importlib.metadata import version

        fw_version = version("fw-screen")
    except Exception:  # noqa: BLE001 -- not installed as a distribution: say nothing
        fw_version = "?"
    created = _when(ctx.created) if isinstance(ctx.created, dt.datetime) else ctx.created
    inputs = ctx.cache["inputs"]
    rows = "".join(f"<tr><td>{esc(r['file'] if r['file'] is not None else '(no file name)')}</td>"
                   f"<td class='n'>{r['n']:,}</td><td class='n'>{r['submissions']}</td></tr>" for r in inputs)
    statuses = "".join(f"<tr><td>{esc(s)}</td><td class='n'>{ctx.counts[s]:,}</td></tr>"
                       for s in st.ORDER if ctx.counts.get(s))
    ml, prop, promo, dft = spec.get("ml", {}), spec.get("property", {}), spec.get("promotion", {}), spec.get("dft", {})
    qe = dft.get("qe") or {}
    thresholds = [
        ("validity.required", ", ".join(spec.get("validity", {}).get("required", [])), "checks a valid structure passes"),
        ("uniqueness", ", ".join(f"{k} {v}" for k, v in (spec.get("uniqueness") or {}).items()),
         "StructureMatcher tolerances (duplicates, novelty)"),
        ("ml.potential", ml.get("potential"), "universal potential of the ML relaxation"),
        ("ml.stability_threshold", f"{ml.get('stability_threshold')} eV/atom", "S (ML-stable): ML e_above_hull ≤ this"),
        ("property.band_gap_model", f"{prop.get('band_gap_model')} (fidelity {prop.get('band_gap_fidelity')})",
         "ML band-gap model"),
        ("property.band_gap_tolerance", f"{prop.get('band_gap_tolerance')} eV", "target hit: |ML gap − target| ≤ this"),
        ("promotion", f"ML e_above_hull ≤ {promo.get('max_e_above_hull')} eV/atom, target hit required: "
                      f"{promo.get('require_target_hit')}, converged: {promo.get('require_converged')}, ≤ "
                      f"{promo.get('max_sites')} sites, ≤ {promo.get('max_per_condition')} per condition, ≤ "
                      f"{promo.get('max_total')} in all", "which ML survivors go to DFT"),
        ("dft.code", str(dft.get("code")) + (f" (k-points per reciprocal atom {qe.get('kppa')}, nscf {qe.get('nscf_kppa')})"
                                        if dft.get("code") == "qe" else ""), "DFT code and protocol"),
        ("dft.stability_threshold", f"{dft.get('stability_threshold')} eV/atom", "DFT-stable: DFT e_above_hull ≤ this"),
    ]
    spec_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td><td class='muted'>{esc(m)}</td></tr>"
                        for k, v, m in thresholds)
    return (f"<dl class='meta'><dt>campaign</dt><dd>{esc(ctx.campaign)}</dd>"
            f"<dt>created</dt><dd>{esc(created)}</dd>"
            f"<dt>report generated</dt><dd>{esc(ctx.cache['generated'])}</dd>"
            f"<dt>inputs</dt><dd>{f['inputs']:,} CIFs</dd><dt>fw-screen</dt><dd>{esc(fw_version)}</dd></dl>"
            "<div class='cols'><div><h3>Inputs</h3><table class='small'><thead><tr><th>file</th><th>candidates</th>"
            f"<th>submissions</th></tr></thead><tbody>{rows}</tbody></table></div>"
            "<div><h3>Candidates by status</h3><table class='small'><thead><tr><th>status</th><th>n</th></tr></thead>"
            f"<tbody>{statuses}</tbody></table></div></div>"
            f"<h3>Spec: the thresholds behind the numbers</h3><table class='spec'><tbody>{spec_rows}</tbody></table>")


def _ml_values(ctx: Context) -> list[dict]:
    """ML e_above_hull, band gap and target hit of the novel-or-later candidates, per condition (one
    aggregation, shared by the e_hull and band-gap sections)."""
    if "ml_values" not in ctx.cache:
        ctx.cache["ml_values"] = _cond_sort(ctx.store.values_by_condition(
            ctx.campaign, {"e": "ml.e_above_hull", "gap": "ml.band_gap.band_gap", "hit": "ml.hits.band_gap.hit"},
            statuses=st.NOVEL_OR_LATER))
    return ctx.cache["ml_values"]


def _ml_vs_dft(ctx: Context) -> dict:
    if "ml_vs_dft" not in ctx.cache:
        ctx.cache["ml_vs_dft"] = ml_vs_dft(ctx.store, ctx.campaign)
    return ctx.cache["ml_vs_dft"]


def _yields(ctx: Context) -> dict:
    if "yields" not in ctx.cache:
        ctx.cache["yields"] = funnel_yields(ctx.store, ctx.campaign)
    return ctx.cache["yields"]


def _section_funnel(ctx: Context) -> str:
    f, y = ctx.funnel, _yields(ctx)
    thr = ctx.ml_threshold
    main_thr = thr if thr in y["overall"] else y["thresholds"][0]
    dft_stable = (ctx.store.dft_summary(ctx.campaign) or {}).get("stable", 0) if f["dft_done"] else 0
    stages = [("inputs", f["inputs"]), ("valid (V)", f["valid"]), ("unique (VU)", f["unique"]),
              ("novel (VUN)", f["novel"]), ("ML done", f["ml_done"]),
              (f"ML-stable (VSUN, ≤ {main_thr:g} eV/atom)", y["overall"][main_thr]["counts"]["vsun"]),
              ("promoted to DFT", f["promoted"]), ("DFT done", f["dft_done"])]
    if f["dft_done"]:
        stages.append((f"DFT-stable (≤ {ctx.dft_threshold:g} eV/atom)", dft_stable))
    fig = _figure(9.0, 0.42 * len(stages) + 0.9)
    ax = fig.add_subplot()
    labels = [s for s, _ in stages][::-1]
    values = [v for _, v in stages][::-1]
    colours = ["#4c72b0"] * len(values)
    ax.barh(labels, [max(v, 0) for v in values], color=colours, height=0.65)
    top = max(values) or 1
    for i, v in enumerate(values):
        share = f" ({100 * v / f['inputs']:.1f}% of inputs)" if f["inputs"] and v != f["inputs"] else ""
        ax.text(v + top * 0.01, i, f"{v:,}{share}", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.32)
    ax.set_xlabel("candidates")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{ctx.campaign}: funnel", fontsize=11)
    pending = [(n, what) for n, what in ((f["pending_validity"], "validity"), (f["pending_uniqueness"], "uniqueness"),
                                         (f["pending_ml"], "the ML stage"), (f["pending_dft"], "DFT")) if n]
    note = ""
    if pending:
        note = ("<p class='note'>Still running: " + ", ".join(
            f"{n:,} candidate{'s' if n > 1 else ''} wait{'' if n > 1 else 's'} for {esc(w)}" for n, w in pending)
                + f". Run workers ({_run_hint('all')}) and build the report again.</p>")
    return (_plot(fig, "funnel bar chart", "Candidates left after each stage (ML-stable: ML e_above_hull of the relaxed "
                                          "structure at or below the threshold, among the novel candidates).")
            + note + _yields_table(y))


def _yields_table(y: dict) -> str:
    thrs = y["thresholds"]

    def cell(key: str, counts: dict, rates: dict, rate_key: str, count_key: str, of_key: str | None = None) -> str:
        rate, count = rates.get(rate_key), counts.get(count_key)
        of = f"/{counts[of_key]:,}" if of_key else ""
        return (f"<td class='n' data-key='{esc(key)}' data-rate='{esc(repr(rate))}' data-count='{count}'>{_pct(rate)}"
                f"<small>{count:,}{of}</small></td>")

    head = ["condition", "inputs", "V", "VU", "VUN"]
    for t in thrs:
        head += [f"VSUN (S: e_hull ≤ {t:g})", f"S among ML-evaluated VUN (≤ {t:g})", f"hit among VSUN (≤ {t:g})"]
    head.append("hit among valid with ML gap")

    def row(label: str, cond_attr: str, n: int, per_thr: dict) -> str:
        first = per_thr[thrs[0]]
        cells = [f"<th>{esc(label)}</th>", f"<td class='n' data-key='n' data-count='{n}'>{n:,}</td>",
                 cell("V", first["counts"], first["rates"], "V", "valid"),
                 cell("VU", first["counts"], first["rates"], "VU", "valid_unique"),
                 cell("VUN", first["counts"], first["rates"], "VUN", "vun")]
        for t in thrs:
            c, r = per_thr[t]["counts"], per_thr[t]["rates"]
            cells += [cell(f"VSUN@{t:g}", c, r, "VSUN", "vsun"),
                      cell(f"S_among_VUN_evaluated@{t:g}", c, r, "stable_among_vun_evaluated", "vsun", "vun_evaluated"),
                      cell(f"hit_among_VSUN@{t:g}", c, r, "band_gap_hit_among_vsun", "vsun_band_gap_hits", "vsun")]
        cells.append(cell("hit_among_valid_evaluated", first["counts"], first["rates"],
                          "band_gap_hit_among_valid_evaluated", "valid_band_gap_hits", "valid_band_gap_evaluated"))
        return f"<tr data-condition='{esc(cond_attr)}'>" + "".join(cells) + "</tr>"

    body = [row("all conditions", "all", y["n"], y["overall"])]
    body += [row(_cond_label(r["condition"]), "none" if r["condition"] is None else repr(r["condition"]), r["n"],
                 {t: r[t] for t in thrs}) for r in y["by_condition"]]
    return ("<h3>Yields</h3><div class='scroll'><table id='yields' class='yields'><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(body)
            + "</tbody></table></div><p class='muted'>V, VU, VUN, VSUN: fractions of all inputs (CrystaLLM-pi / "
              "MatterGen definitions; S is the ML e_above_hull of the relaxed structure). Target hits: |ML band gap − "
              "target| within the tolerance, among the valid candidates with a prediction and among VSUN. Small "
              "numbers: candidates counted (of the denominator where it is not the inputs).</p>")


def _section_metrics(ctx: Context) -> str:
    """The ``fw-screen metrics`` table: every metric with its definition and paper, overall and per condition."""
    from fw_screen.science import metrics as mt

    m = campaign_metrics(ctx.store, ctx.campaign)
    conds = [("all conditions", "all", m["overall"])] + [
        (_cond_label(c["condition"]), "none" if c["condition"] is None else repr(c["condition"]), c)
        for c in m["by_condition"]]
    head = ["metric", *[label for label, _, _ in conds], "definition", "source"]
    body = []
    for d in m["definitions"]:
        cells = [f"<th>{esc(d['name'])}</th>"]
        cells += [f"<td class='n' data-key='{esc(d['key'])}' data-condition='{esc(attr)}' "
                  f"data-value='{esc(repr(v.get(d['key'])))}'>{esc(mt.fmt(v.get(d['key']), d['key']))}</td>"
                  for _, attr, v in conds]
        cells += [f"<td class='reason'>{esc(d['definition'])}</td>", f"<td><small>{esc(d['source'])}</small></td>"]
        body.append("<tr>" + "".join(cells) + "</tr>")
    rp, ref = m["relaxed_pass"], m["reference"]
    note = (f"<p class='muted'>Reference distributions: {ref['structures']:,} structures of "
            f"{esc(', '.join(ref['sets']) or 'no reference set')}. After relaxation: {rp['checked']:,} of "
            f"{rp['relaxed']:,} ML-relaxed candidates matched again against the references and each other"
            + (f"; {rp['pending']:,} wait for the post-relaxation pass ({_code('fw-screen promote ' + ctx.campaign)})"
               if rp["pending"] else "")
            + f". The same table: {_code('fw-screen metrics ' + ctx.campaign)} (also {_code('--json')}).</p>")
    return ("<div class='scroll'><table id='metrics' class='small'><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(body)
            + "</tbody></table></div>" + note)


def _section_e_hull(ctx: Context) -> str:
    rows = [dict(r, e=_finite(r["e"])) for r in _ml_values(ctx)]
    rows = [r for r in rows if len(r["e"])]
    if not rows:
        raise _ml_missing(ctx)
    thr = ctx.ml_threshold
    allv = np.concatenate([r["e"] for r in rows])
    lo = min(-0.05, float(np.percentile(allv, 0.5)))
    hi = max(3 * thr, 0.2, float(np.percentile(allv, 99.5)))
    if float(allv.max()) <= 1.25 * hi:  # a few values just beyond: widen the range rather than clip them
        hi = float(allv.max())
    bins = np.linspace(lo, hi, 41)
    k = len(rows)
    ncols = min(4, k)
    nrows = math.ceil(k / ncols)
    fig = _figure(2.6 * ncols + 0.6, 2.1 * nrows + 0.7)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    for ax, r in zip(axes.flat, rows):
        v = np.clip(r["e"], lo, hi)
        stable = r["e"] <= thr
        ax.hist([v[stable], v[~stable]], bins=bins, stacked=True, color=[COLOURS["stable"], COLOURS["unstable"]],
                label=[f"≤ {thr:g} (S)", f"> {thr:g}"])
        ax.axvline(thr, color=COLOURS["threshold"], ls="--", lw=1.2)
        ax.axvline(0.0, color="k", lw=0.6)
        n, ns = len(r["e"]), int(stable.sum())
        name = "no target" if r["condition"] is None else f"target {_cond_label(r['condition'])}"
        ax.set_title(f"{name}\nn={n:,}, S {ns:,} ({100 * ns / n:.0f}%)", fontsize=9)
        beyond = int((r["e"] > hi).sum())
        if beyond:
            ax.text(0.98, 0.95, f"{beyond:,} > {hi:.2f}\n(in last bin)", transform=ax.transAxes, ha="right", va="top",
                    fontsize=7, color="0.3")
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[k:]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="upper right" if not int((rows[0]["e"] > hi).sum()) else "center right")
    fig.supxlabel("ML e_above_hull of the relaxed structure (eV/atom)", fontsize=9)
    fig.supylabel("candidates", fontsize=9)
    cap = (f"ML (relaxed) energy above the reference hull of the novel candidates with one, per band-gap condition. "
           f"Dashed line: ml.stability_threshold = {thr:g} eV/atom; green: at or below it (S). Bins span "
           f"{lo:.2f} to {hi:.2f} eV/atom; values beyond are counted in the edge bins.")
    return _plot(fig, "e_above_hull histograms per condition", esc(cap))


def _section_band_gap(ctx: Context) -> str:
    rows = []
    for r in _ml_values(ctx):
        pairs = [(float(g), h) for g, h in zip(r["gap"], r["hit"])
                 if isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g)]
        if pairs:
            rows.append({"condition": r["condition"], "n": len(pairs), "gap": [g for g, _ in pairs],
                         "hit": [h for _, h in pairs]})
    if not rows:
        if ctx.funnel["ml_done"] or ctx.funnel["no_reference"]:
            raise _Skip("no ML band-gap predictions",
                        "No ML band-gap predictions: the band-gap model gave none (see ml.band_gap_error of the "
                        f"candidates, {_code(f'fw-screen status -c {ctx.campaign}')}).")
        raise _ml_missing(ctx)
    tol = ctx.tolerance
    rng = np.random.default_rng(0)
    k = len(rows)
    fig = _figure(max(6.5, 1.15 * k + 2.0), 4.8)
    ax = fig.add_subplot()
    ymax = 0.0
    sampled = 0
    for i, r in enumerate(rows):
        gap = np.array(r["gap"], dtype=float)
        hit = np.empty(len(r["hit"]), dtype=object)
        hit[:] = r["hit"]
        t = r["condition"]
        if t is not None:
            ax.fill_between([i - 0.42, i + 0.42], t - tol, t + tol, color=COLOURS["band"], alpha=0.55, lw=0, zorder=0)
            ax.plot([i - 0.42, i + 0.42], [t, t], color=COLOURS["target"], lw=1.6, zorder=1)
            ymax = max(ymax, t + tol)
        n = len(gap)
        idx = np.arange(n)
        if n > MAX_POINTS:
            idx = np.sort(rng.choice(n, MAX_POINTS, replace=False))
            sampled += 1
        x = i + rng.uniform(-0.33, 0.33, len(idx))
        for kind, mask in (("none", np.array([h is None for h in hit[idx]], dtype=bool)),  # hits drawn last, on top
                           ("miss", hit[idx] == False), ("hit", hit[idx] == True)):  # noqa: E712 (object array)
            if mask.any():
                ax.scatter(x[mask], gap[idx][mask], s=10, c=COLOURS[kind], alpha=0.65, lw=0, zorder=2)
        ev = int(sum(h is not None for h in hit))
        hits = int(sum(h is True for h in hit))
        if n:
            ymax = max(ymax, float(np.percentile(gap, 99.5)))
        r["_text"] = (f"hit {100 * hits / ev:.0f}%\n{hits}/{ev}" if ev else "no target")
    top = ymax * 1.12 + 0.3
    for i, r in enumerate(rows):
        ax.text(i, top, r["_text"], ha="center", va="top", fontsize=8)
    ax.set_ylim(-0.2, top + 0.12 * top + 0.4)
    ax.set_xticks(range(k), [f"{_cond_label(r['condition'])}\nn={r['n']:,}" for r in rows], fontsize=8)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel("band-gap condition (target of the generator)")
    ax.set_ylabel("ML band gap (eV)")
    ax.grid(axis="y", alpha=0.25)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=COLOURS["band"], alpha=0.55, label=f"target ± {tol:g} eV"),
                       Line2D([], [], color=COLOURS["target"], lw=1.6, label="target"),
                       Line2D([], [], ls="", marker="o", color=COLOURS["hit"], label="hit"),
                       Line2D([], [], ls="", marker="o", color=COLOURS["miss"], label="miss")],
              fontsize=8, loc="upper left", ncols=4, framealpha=0.9)
    prop = ctx.spec.get("property", {})
    from fw_screen.science.band_gap import model_error

    measured = model_error(str(prop.get("band_gap_model")), prop.get("band_gap_fidelity"))
    cap = (f"Band gap predicted by {prop.get('band_gap_model')} (fidelity {prop.get('band_gap_fidelity')}) for every "
           f"novel candidate with a prediction (relaxed structure; unrelaxed when it had no hull reference), against "
           f"the target of its condition. Band: the hit tolerance, ± {tol:g} eV. "
           + (f"This model's error against the project's DFT truth set ({measured['n']} PBE gaps from Quantum "
              f"ESPRESSO, tests/data/band_gap_truth): MAE {measured['mae']:.2f} eV, mean signed error "
              f"{measured['mean_signed_error']:+.2f} eV, so a point within the band is not yet a DFT hit. "
              if measured else "This model's error was never measured against the DFT truth set: read its gaps as "
                               "unverified. ")
           + ("Promotion's target hit rests on the DFT-lite gap (property.method dft_lite), not on these."
              if prop.get("method") == "dft_lite" else ""))
    if sampled:
        cap += f" Conditions with more than {MAX_POINTS:,} candidates show a seeded sample of {MAX_POINTS:,} points."
    return _plot(fig, "target vs predicted band gap per condition", esc(cap))


def _parity_panel(ax, pairs: list[tuple], unit: str, title: str, stats: dict, thresholds=None):
    if not pairs:
        ax.text(0.5, 0.5, "no candidate with both values", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    x = np.array([p[0] for p in pairs], dtype=float)
    y = np.array([p[1] for p in pairs], dtype=float)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = max(0.08 * (hi - lo), 0.05)
    lo, hi = lo - pad, hi + pad
    if thresholds:
        tx, ty = thresholds
        ax.axvline(tx, color=COLOURS["threshold"], ls=":", lw=1)
        ax.axhline(ty, color=COLOURS["threshold"], ls=":", lw=1)
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, zorder=0)
    ax.scatter(x, y, s=36, c="#4c72b0", edgecolors="k", linewidths=0.5, zorder=3)
    if len(pairs) <= 25:
        for (_, _, label), xi, yi in zip(pairs, x, y):
            ax.annotate(label, (xi, yi), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"ML ({unit})")
    ax.set_ylabel(f"DFT ({unit})")
    ax.set_title(title, fontsize=10)
    ax.text(0.03, 0.97, f"n = {stats['n']}\nMAE = {_num(stats['mae'])} {unit}\nmean error (ML − DFT) = "
                        f"{_num(stats['mean_error'], signed=True)}", transform=ax.transAxes, va="top", fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})
    ax.grid(alpha=0.25)


def _section_parity(ctx: Context) -> str:
    m = _ml_vs_dft(ctx)
    if not m["n_dft"]:
        raise _dft_missing(ctx)
    rows = m["rows"]

    def pairs(key):
        return [(r[f"ml_{key}"], r[f"dft_{key}"], r.get("formula") or r["id"]) for r in rows
                if isinstance(r.get(f"ml_{key}"), (int, float)) and isinstance(r.get(f"dft_{key}"), (int, float))]

    fig = _figure(10.0, 4.7)
    a1, a2 = fig.subplots(1, 2)
    _parity_panel(a1, pairs("e_above_hull"), "eV/atom", "e_above_hull", m["e_above_hull"],
                  (ctx.ml_threshold, ctx.dft_threshold))
    _parity_panel(a2, pairs("band_gap"), "eV", "band gap", m["band_gap"])
    head = "<tr><th>ML flag vs DFT</th><th>n</th><th>TP</th><th>FP</th><th>FN</th><th>TN</th><th>precision</th>" \
           "<th>recall</th><th>note</th></tr>"
    body = ""
    for key, label in (("stable", f"stable (ML ≤ {ctx.ml_threshold:g}, DFT ≤ {ctx.dft_threshold:g} eV/atom)"),
                       ("band_gap_hit", f"band-gap target hit (± {ctx.tolerance:g} eV)")):
        c = m[key]
        body += (f"<tr data-key='{key}'><th>{esc(label)}</th><td class='n'>{c['n']}</td><td class='n'>{c['tp']}</td>"
                 f"<td class='n'>{c['fp']}</td><td class='n'>{c['fn']}</td><td class='n'>{c['tn']}</td>"
                 f"<td class='n'>{_pct(c['precision'])}</td><td class='n'>{_pct(c['recall'])}</td>"
                 f"<td class='muted'>{esc('; '.join(c['notes']))}</td></tr>")
    maes = "".join(f"<tr data-key='{k}'><th>{esc(k)}</th><td class='n'>{m[k]['n']}</td><td class='n'>"
                   f"{_num(m[k]['mae'])}</td><td class='n'>{_num(m[k]['mean_error'], signed=True)}</td>"
                   f"<td class='n'>{_num(m[k]['max_abs_error'])}</td></tr>" for k in ("e_above_hull", "band_gap"))
    missing = ""
    if not m["e_above_hull"]["n"]:
        missing = ("<p class='note'>No DFT e_above_hull yet: the DFT hulls wait for their reference phases (run "
                   f"{_run_hint('dft')}) or could not be computed (reason in the candidates table).</p>")
    return (_plot(fig, "ML vs DFT parity plots",
                  esc(f"{m['n_dft']} DFT-done candidates. Dotted lines: ML and DFT stability thresholds. "
                      f"Selection: {m['selection']}."))
            + missing
            + "<div class='cols'><div><h3>Errors</h3><table class='small' id='parity-errors'><thead><tr><th>quantity</th>"
              "<th>n</th><th>MAE</th><th>mean error (ML − DFT)</th><th>max |error|</th></tr></thead><tbody>"
            + maes + "</tbody></table></div><div><h3>Precision and recall</h3><table class='small' id='parity-flags'>"
            + f"<thead>{head}</thead><tbody>{body}</tbody></table></div></div>")


def _draw_phase_diagram(ax3d_factory, pd, candidates: dict, title: str):
    """Draw ``pd`` with pymatgen's PDPlotter geometry (hull lines and projected coordinates of stable and
    unstable entries, ``pd_plot_data``) on our own axes, candidates (entry_id -> label) highlighted.

    pymatgen's own matplotlib drawing goes through pyplot's current figure (``plt.plot``) and ignores
    ``highlight_entries``; its coordinates are what we take."""
    from pymatgen.analysis.phase_diagram import PDPlotter

    plotter = PDPlotter(pd, show_unstable=10.0, backend="matplotlib")
    lines, stable, unstable = plotter.pd_plot_data
    dim = len(pd.elements)
    fig, ax = ax3d_factory(dim)
    coords_of = {e.entry_id: c for c, e in stable.items()}
    coords_of.update({e.entry_id: c for e, c in unstable.items()})
    ref_unstable = [(e, c) for e, c in unstable.items() if e.entry_id not in candidates]
    if dim == 4:
        for x, y, z in lines:
            ax.plot(x, y, z, "-", color="0.35", lw=1.2)
        for c, e in stable.items():
            if e.entry_id not in candidates:
                ax.scatter(*c, s=30, c="k")
                ax.text(*c, " " + e.composition.reduced_formula, fontsize=8)
        for e, c in ref_unstable:
            ax.scatter(*c, s=22, c="#999999", marker="s")
        for cid, label in candidates.items():
            if cid in coords_of:
                ax.scatter(*coords_of[cid], s=160, c=COLOURS["candidate"], marker="*", edgecolors="k", zorder=5)
                ax.text(*coords_of[cid], "  " + label, fontsize=8, color=COLOURS["candidate"])
        ax.set_axis_off()
    else:
        if dim == 3:
            center = np.array([0.5, math.sqrt(3) / 6])
        else:
            center = np.array([0.5, min(c[1] for c in coords_of.values()) / 2])

        def away(c, dist=11.0):
            """Offset (points) and alignment of a label pointing away from the diagram's centre (as pymatgen)."""
            v = np.asarray(c, dtype=float) - center
            norm = np.linalg.norm(v)
            v = v / norm * dist if norm > 1e-9 else np.array([0.0, dist])
            ha = "right" if v[0] < -0.01 * dist else ("left" if v[0] > 0.01 * dist else "center")
            return tuple(v), ha, ("bottom" if v[1] >= 0 else "top")

        for x, y in lines:
            ax.plot(x, y, "-", color="0.3", lw=1.3, zorder=1)
        for c, e in stable.items():
            if e.entry_id in candidates:
                continue
            ax.plot(c[0], c[1], "o", color="k", ms=6, zorder=2)
            off, ha, va = away(c)
            ax.annotate(e.composition.reduced_formula, c, xytext=off, textcoords="offset points", ha=ha, va=va,
                        fontsize=9, zorder=4)
        for e, c in ref_unstable:
            ax.plot(c[0], c[1], "s", color="#999999", ms=5, zorder=2)
            off, ha, va = away(c, 8.0)
            ax.annotate(e.composition.reduced_formula, c, xytext=off, textcoords="offset points", ha=ha, va=va,
                        fontsize=7, color="0.4")
        placed = sorted(((cid, coords_of[cid]) for cid in candidates if cid in coords_of),  # labels do not cross
                        key=lambda kv: kv[1][1] if dim == 2 else -kv[1][1])
        for k, (cid, c) in enumerate(placed):
            ax.plot(c[0], c[1], "*", color=COLOURS["candidate"], mec="k", ms=16, zorder=5)
            if k >= 8:  # the table below the plot names them all
                continue
            # labels stacked in an empty corner (below the hull of a binary, beside the triangle of a ternary),
            # on the side away from the candidate, with a line to its star
            left = c[0] > 0.5
            xy = ((0.03 if left else 0.97), (0.05 + 0.075 * k) if dim == 2 else (0.95 - 0.075 * k))
            ax.annotate(candidates[cid], c, xytext=xy, textcoords="axes fraction", fontsize=8,
                        ha="left" if left else "right", va="bottom" if dim == 2 else "top",
                        color=COLOURS["candidate"], zorder=6,
                        arrowprops={"arrowstyle": "-", "color": COLOURS["candidate"], "lw": 0.7, "shrinkB": 6},
                        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": COLOURS["candidate"], "alpha": 0.9})
        if dim == 3:
            ax.set_aspect("equal")
            ax.set_xlim(-0.12, 1.12)
            ax.set_ylim(-0.1, 0.97)
            ax.set_axis_off()
        else:
            els = [el.symbol for el in pd.elements]
            ax.set_xlabel(f"fraction {els[1]} in {els[0]}–{els[1]}")
            ax.set_ylabel("formation energy (eV/atom)")
            ax.axhline(0, color="0.6", lw=0.6, zorder=0)
            ax.grid(alpha=0.25)
            ys = [c[1] for c in coords_of.values()]
            span = max(ys + [0]) - min(ys + [0])
            ax.set_ylim(min(ys + [0]) - 0.12 * span - 0.1, max(ys + [0]) + 0.12 * span + 0.1)
            ax.set_xlim(-0.08, 1.08)
    ax.set_title(title, fontsize=10)
    return fig


def _section_phase_diagrams(ctx: Context) -> tuple[str, list[str]]:
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    from fw_screen.dft import hull as dft

    done = ctx.store.dft_done_candidates(ctx.campaign)
    docs = [d for d in done if d["dft"].get("hull_status") == "done" and d["dft"].get("references")]
    if not docs:
        if any(d["dft"].get("code") == "vasp" for d in done):
            raise _Skip("DFT hulls against MP2020 entries (VASP path)",
                        "No DFT phase diagram: the DFT-done candidates ran through the VASP path, whose hull is "
                        "taken against the MP2020-corrected reference entries (see the candidates table); phase "
                        "diagrams are drawn from consistently computed reference phases (the Quantum ESPRESSO path).")
        if ctx.funnel["dft_done"]:
            raise _Skip("no DFT hull computed yet",
                        f"No DFT phase diagram: the {ctx.funnel['dft_done']} DFT-done candidates have no DFT hull yet "
                        f"(their reference phases are still being computed: {_run_hint('dft')}; or they could not "
                        f"be computed, reason in the candidates table).")
        raise _dft_missing(ctx)
    systems: dict[tuple, list[dict]] = {}
    for d in docs:
        chemsys = d.get("chemsys") or "-".join(sorted(d.get("elements") or []))
        systems.setdefault((chemsys, d["dft"].get("protocol_id")), []).append(d)
    shown = list(systems.items())[:MAX_PHASE_DIAGRAMS]
    ref_docs = ctx.store.dft_reference_docs(sorted({r for _, ds in shown for d in ds for r in d["dft"]["references"]}))
    parts, problems = [], []

    def axes_for(dim):
        fig = _figure(5.6, 4.9)
        return fig, (fig.add_subplot(projection="3d") if dim == 4 else fig.add_subplot())

    for (chemsys, protocol), ds in shown:
        try:
            refs: dict = {}
            cands, labels, rows = [], {}, []
            for d in ds:
                cand, refs_in = dft.hull_inputs(d["_id"], d["dft"], [ref_docs[r] for r in d["dft"]["references"]])
                entry, ref_entries = dft.hull_entries(cand, refs_in, correct=True)
                refs.update({e.entry_id: e for e in ref_entries})
                cands.append(entry)
                e_hull = d["dft"].get("e_above_hull")
                labels[d["_id"]] = f"{d.get('reduced_formula')} ({_num(e_hull, '+.3f')} eV/atom)"
                rows.append(f"<tr><td>{esc(d['_id'])}</td><td>{esc(d.get('reduced_formula'))}</td>"
                            f"<td class='n'>{_num((d.get('ml') or {}).get('e_above_hull'))}</td>"
                            f"<td class='n'>{_num(e_hull)}</td><td>{esc(' + '.join(x['formula'] for x in d['dft'].get('decomposition') or []))}"
                            f"</td><td>{_yes_no(d['dft'].get('stable'))}</td></tr>")
            if len(chemsys.split("-")) > 4:
                raise _Skip(f"{chemsys}: more than four elements (PDPlotter draws up to quaternary systems)")
            pd = PhaseDiagram(list(refs.values()) + cands)
            if len(pd.elements) == 1:
                raise _Skip(f"{chemsys}: a one-element system has no composition axis to draw")
            ref_list = ", ".join(sorted({e.composition.reduced_formula for e in refs.values()}))
            fig = _draw_phase_diagram(axes_for, pd, labels, f"{chemsys}: DFT hull ({len(ds)} candidate"
                                                            f"{'s' if len(ds) > 1 else ''})")
            cap = (f"Reference phases computed with the candidates' protocol ({esc(protocol)}): {esc(ref_list)}; "
                   f"MP2020 gas-anion corrections applied as in the DFT hull. Black: stable phases; grey squares: "
                   f"computed phases above the hull; red stars: candidates (their DFT e_above_hull against the "
                   f"references in brackets).")
            parts.append(f"<div class='pd' data-chemsys='{esc(chemsys)}'>{_plot(fig, f'phase diagram {chemsys}', cap)}"
                         "<table class='small'><thead><tr><th>candidate</th><th>formula</th><th>ML e_hull</th>"
                         "<th>DFT e_hull</th><th>DFT decomposition</th><th>DFT-stable</th></tr></thead><tbody>"
                         + "".join(rows) + "</tbody></table></div>")
        except _Skip as exc:
            problems.append(exc.reason)
        except (KeyError, dft.HullError, ValueError) as exc:
            problems.append(f"{chemsys}: {type(exc).__name__}: {exc}")
    if not parts:
        raise _Skip("no phase diagram could be drawn: " + "; ".join(problems))
    more = ""
    if len(systems) > len(shown):
        more = f"<p class='note'>{len(systems) - len(shown)} more chemical systems not drawn (limit {MAX_PHASE_DIAGRAMS}).</p>"
    notes = "".join(f"<p class='note'>Not drawn: {esc(p)}</p>" for p in problems)
    return "<div class='grid'>" + "".join(parts) + "</div>" + more + notes, [c for (c, _), _ in shown]


def _load_chemical_space_groups(store: ResultsStore, campaign: str, max_per_group: int, seed: int = 0):
    """The one place the report reads the chemical-space groups: ``(groups, totals)``
    (:func:`fw_screen.reporting.chemical_space.load_groups`, through the store)."""
    from fw_screen.reporting.chemical_space import load_groups

    return load_groups(store, campaign, max_per_group=max_per_group, seed=seed)


def _section_chemical_space(ctx: Context) -> str:
    if not ctx.chemical_space:
        raise _Skip("switched off (--no-chemical-space)",
                    "Chemical-space map switched off (<code>--no-chemical-space</code>).")
    from fw_screen.reporting.chemical_space import chemical_space, plot_chemical_space

    if not ctx.funnel["valid"]:
        raise _ml_missing(ctx) if ctx.funnel["pending_validity"] else _Skip(
            "no valid candidates", "No chemical-space map: the campaign has no valid structure.")
    groups, totals = _load_chemical_space_groups(ctx.store, ctx.campaign, ctx.max_per_group)
    result = chemical_space(groups, max_per_group=ctx.max_per_group, seed=0, symmetry=False)
    result["population"] = totals
    fig = plot_chemical_space(result, title=f"{ctx.campaign}: chemical space (PCA of matminer features, "
                                            f"fit on {'reference structures' if result['fit_on'] == 'reference' else 'all points'})")
    summary_rows = ""
    for g, s in result["summary"].items():
        cells = "".join(f"<td class='n'>{_num(s[k]['mean'], '.2f')}</td>" for k in s)
        summary_rows += (f"<tr><th>{esc(g)}</th><td class='n'>{result['n'][g]:,}</td>"
                         f"<td class='n'>{totals.get(g, result['n_input'][g]):,}</td>"
                         f"<td class='n'>{result['dropped'][g]}</td>{cells}</tr>")
    feats = next(iter(result["summary"].values()), {})
    note = ""
    if not totals.get("reference"):
        note = ("<p class='note'>No reference structures in the database: the map is fit on the generated structures "
                f"only. Load references with {_code('fw-screen references PATH')}.</p>")
    return (_plot(fig, "chemical space map", esc(result["method"]) + " Groups nest: DFT-confirmed ⊂ ML-stable ⊂ novel ⊂ valid.")
            + note + "<table class='small' id='chemical-space-groups'><thead><tr><th>group</th><th>shown</th><th>in group</th>"
            "<th>dropped</th>" + "".join(f"<th>{esc(k.replace('_', ' '))} (group mean)</th>" for k in feats)
            + f"</tr></thead><tbody>{summary_rows}</tbody></table>")


def _cif(structure_dict) -> str | None:
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    if not structure_dict:
        return None
    try:
        structure = Structure.from_dict(structure_dict)
        structure.relabel_sites()  # generated CIFs label symmetry-equivalent sites alike; CIF wants unique labels
        return str(CifWriter(structure))
    except Exception:  # noqa: BLE001 -- an unreadable stored structure gets no link, not a failed report
        return None


def top_rows(store: ResultsStore, campaign: str, top: int, dft_rows: list[dict] | None = None) -> list[dict]:
    """The report's top candidates: DFT-done ones by DFT e_above_hull, then ML-done ones by ML e_above_hull
    (hull-table rows, :func:`fw_screen.reporting.tables.hull_table`; ``dft_rows``: the DFT-done ones, when at hand)."""
    if dft_rows is None:
        dft_rows = hull_table(store, campaign, stage="dft", sort="dft_e_above_hull", limit=top)
    rows = list(dft_rows[:top])
    seen = {r["id"] for r in rows}
    if len(rows) < top:
        more = hull_table(store, campaign, stage="ml", sort="ml_e_above_hull", limit=top + len(seen))
        rows += [r for r in more if r["id"] not in seen][:top - len(rows)]
    return rows


def _ml_gap(row: dict) -> str:
    """The ML band gap with the model's MAE measured on the DFT truth set (``±?``: never measured)."""
    gap = row.get("ml_band_gap")
    if not isinstance(gap, (int, float)):
        return _num(gap, ".2f")
    err = row.get("ml_band_gap_error")
    return f"{gap:.2f} ± {err:.2f}" if isinstance(err, (int, float)) else f"{gap:.2f} ± ?"


def _after_relaxation(r: dict) -> str:
    if r.get("matched_reference_relaxed"):
        return f"known: {r['matched_reference_relaxed']}"
    if r.get("duplicate_of_relaxed"):
        return f"duplicate of {r['duplicate_of_relaxed']}"
    if r.get("novel_relaxed") is None:
        return "–"
    sc = r.get("ml_e_above_hull_self_consistent")
    return "novel, unique" + (f"; self-consistent e_hull {sc:.3f}" if isinstance(sc, (int, float)) else "")


def _section_candidates(ctx: Context) -> str:
    if ctx.top <= 0:
        raise _Skip("switched off (--top 0)")
    rows = top_rows(ctx.store, ctx.campaign, ctx.top, _ml_vs_dft(ctx)["rows"])
    if not rows:
        raise _ml_missing(ctx)
    structures = ctx.store.structures_of([r["id"] for r in rows])
    head = ("#", "candidate", "CIF", "formula", "space group", "sites", "target gap (eV)", "ML e_hull", "DFT e_hull",
            "decomposition", "ML gap ± model MAE (eV)", "DFT-lite gap (eV)", "DFT gap (eV)", "gap hit ML/lite/DFT",
            "stable ML/DFT", "after relaxation", "status", "reason")
    body = []
    for i, r in enumerate(rows, 1):
        cif = _cif(structures.get(r["id"]))
        name = _safe_name(r["id"]) + ".cif"
        link = (f"<a class='cif' download='{esc(name)}' href='data:chemical/x-cif;base64,"
                f"{base64.b64encode(cif.encode()).decode('ascii')}'>CIF</a>" if cif else "<span class='na'>–</span>")
        decomposition = r.get("dft_decomposition") or r.get("ml_decomposition")
        which = "DFT" if r.get("dft_decomposition") else ("ML" if r.get("ml_decomposition") else "")
        reason = r.get("reason") or ""
        short = reason if len(reason) <= 140 else reason[:137] + "…"
        body.append(
            f"<tr data-id='{esc(r['id'])}'><td class='n'>{i}</td><td class='id'>{esc(r['id'])}</td>"
            f"<td class='c'>{link}</td><td>{esc(r.get('formula'))}</td><td>{esc(r.get('spacegroup') or '–')}</td>"
            f"<td class='n'>{esc(r.get('nsites') if r.get('nsites') is not None else '–')}</td>"
            f"<td class='n'>{_num(r.get('condition'), 'g')}</td>"
            f"<td class='n'>{_num(r.get('ml_e_above_hull'))}</td><td class='n'>{_num(r.get('dft_e_above_hull'))}</td>"
            f"<td>{esc(decomposition or '–')}{f' <small>({which})</small>' if which else ''}</td>"
            f"<td class='n'>{_ml_gap(r)}</td><td class='n'>{_num(r.get('dft_lite_band_gap'), '.2f')}</td>"
            f"<td class='n'>{_num(r.get('dft_band_gap'), '.2f')}</td>"
            f"<td class='c'>{_yes_no(r.get('ml_band_gap_hit'))} / {_yes_no(r.get('dft_lite_band_gap_hit'))} / "
            f"{_yes_no(r.get('dft_band_gap_hit'))}</td>"
            f"<td class='c'>{_yes_no(r.get('ml_stable'))} / {_yes_no(r.get('dft_stable'))}</td>"
            f"<td>{esc(_after_relaxation(r))}</td>"
            f"<td><span class='status s-{esc(r.get('status'))}'>{esc(r.get('status'))}</span></td>"
            f"<td class='reason' title='{esc(reason)}'>{esc(short)}</td></tr>")
    return ("<p class='muted'>DFT-done candidates by DFT e_above_hull, then the ML-done ones by ML e_above_hull "
            "(eV/atom). CIF: the DFT-relaxed structure where there is one, else the ML-relaxed one, else the "
            f"structure as generated (written by pymatgen's CifWriter). Every candidate: "
            f"{_code('fw_screen.reporting.tables.hull_table')} and {_code('format_table')} (CSV, Markdown, JSON).</p>"
            "<div class='scroll'><table id='candidates-table' class='candidates'><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(body)
            + "</tbody></table></div>")


# ---------------------------------------------------------------------------------------------- page
CSS = """
:root { --fg:#1d2330; --muted:#5b6473; --line:#d9dde3; --bg:#ffffff; --panel:#f6f7f9; --accent:#2b5fab; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 14px/1.45 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
nav ol { margin: 8px 0 0; padding-left: 22px; columns: 2; }
nav a, a { color: var(--accent); }
.sub { color: var(--muted); margin: 0 0 10px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 10px 0; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; font-weight: 600; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; vertical-align: top; text-align: left; }
thead th { background: var(--panel); }
tbody tr:nth-child(even) { background: #fafbfc; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.c { text-align: center; white-space: nowrap; }
td small { display: block; color: var(--muted); font-size: 11px; }
td.id { font-family: "DejaVu Sans Mono", monospace; font-size: 11px; white-space: nowrap; }
td.reason { min-width: 120px; max-width: 220px; font-size: 11.5px; color: var(--muted); }
table.candidates { font-size: 12px; }
table.candidates th, table.candidates td { padding: 3px 5px; }
table.spec th { background: var(--panel); white-space: nowrap; font-weight: 600; }
table.small { font-size: 12.5px; }
.muted { color: var(--muted); font-size: 12.5px; }
.scroll { overflow-x: auto; max-width: 100%; }
.cols { display: flex; flex-wrap: wrap; gap: 8px 36px; align-items: flex-start; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 16px 24px; }
figure { margin: 8px 0 12px; }
figcaption { color: var(--muted); font-size: 12.5px; max-width: 980px; margin-top: 4px; }
img.plot { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); background: #fff; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; margin: 8px 0; max-width: 980px; }
section.skipped .note { background: #eef3fb; border-left-color: #7a9cd3; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 12.5px; background: #eef0f3; padding: 1px 4px;
       border-radius: 3px; }
.yes { color: #1e8a3a; font-weight: 700; } .no { color: #b3261e; font-weight: 700; } .na { color: #9aa1ab; }
.status { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11.5px; background: #e9ecf1;
          white-space: nowrap; }
.s-dft_done { background: #d7f0dc; } .s-promoted { background: #fdf0c9; } .s-dft_failed, .s-ml_failed { background: #f8d9d6; }
a.cif { font-weight: 600; text-decoration: none; border: 1px solid var(--accent); border-radius: 4px; padding: 0 5px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
"""

ANCHORS = {k: k.replace("_", "-") for k in SECTIONS}


def _page(ctx: Context, sections: list[Section], seconds: float) -> str:
    nav = "".join(f"<li><a href='#{ANCHORS[s.key]}'>{esc(TITLES[s.key])}</a>"
                  + ("" if s.drawn else " <span class='muted'>(no data)</span>") + "</li>" for s in sections)
    body = ""
    for i, s in enumerate(sections, 1):
        state = "drawn" if s.drawn else "skipped"
        body += (f"<section id='{ANCHORS[s.key]}' class='{state}' data-section='{s.key}' data-state='{state}'>"
                 f"<h2>{i}. {esc(TITLES[s.key])}</h2>{s.body}</section>\n")
    timings = ", ".join(f"{s.key} {s.seconds:.1f} s" for s in sections)
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>fw-screen report: {esc(ctx.campaign)}</title><style>{CSS}</style></head>\n<body><main>"
            f"<h1>fw-screen campaign report: {esc(ctx.campaign)}</h1>"
            f"<p class='sub'>Generated {esc(ctx.cache['generated'])} from the fw-screen database. Self-contained: "
            "plots and CIFs are embedded; it opens offline.</p>"
            f"<nav><ol>{nav}</ol></nav>\n{body}"
            f"<footer>Built in {seconds:.1f} s ({esc(timings)}).</footer></main></body></html>\n")


BUILDERS: dict[str, Callable] = {
    "campaign": _section_campaign, "funnel": _section_funnel, "metrics": _section_metrics, "e_hull": _section_e_hull,
    "band_gap": _section_band_gap, "parity": _section_parity, "phase_diagrams": _section_phase_diagrams,
    "chemical_space": _section_chemical_space, "candidates": _section_candidates,
}


def _context(store: ResultsStore, campaign: str, **options) -> Context:
    require_campaign(store, campaign)
    info = store.campaign_info(campaign)
    overview = store.campaign_overview(campaign)  # statuses and input files in one pass
    counts = overview["status"]
    if not counts:
        raise AnalysisError(f"campaign {campaign!r} has no candidates yet: nothing to report (submit inputs with "
                            f"`fw-screen submit INPUT --campaign {campaign}`)")
    return Context(store=store, campaign=campaign, spec=info["spec"], created=info.get("created"), counts=counts,
                   funnel=st.funnel(counts), cache={"inputs": overview["inputs"]}, **options)


def build_report(store: ResultsStore, campaign: str, path: str | os.PathLike | None = None, top: int = 20,
                 chemical_space: bool = True, max_per_group: int = 500, progress: bool = False) -> dict:
    """Write the campaign's HTML report to ``path`` (default ``report_CAMPAIGN.html`` here); return a summary.

    ``top``: rows of the candidates table; ``chemical_space``: draw the matminer/PCA map (the slowest section);
    ``max_per_group``: structures per chemical-space group (seeded sample); ``progress``: a tqdm bar on stderr.
    Summary: ``{"path", "campaign", "bytes", "drawn": [section], "skipped": {section: reason},
    "timings": {section: seconds}, "seconds", "phase_diagrams": [chemsys]}``.  An unknown campaign or one
    without candidates raises :class:`~fw_screen.reporting.tables.AnalysisError`; a section without data is a note.
    """
    from pymongo.errors import PyMongoError
    from tqdm import tqdm

    t_start = time.perf_counter()
    ctx = _context(store, campaign, top=int(top), chemical_space=bool(chemical_space),
                   max_per_group=int(max_per_group))
    t_context = time.perf_counter() - t_start  # counted in the campaign section (its statuses and inputs)
    ctx.cache["generated"] = _when(dt.datetime.now(dt.timezone.utc))
    sections: list[Section] = []
    phase_systems: list[str] = []
    bar = tqdm(SECTIONS, desc=f"report {campaign}", unit="section", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()),
               leave=False, dynamic_ncols=True)
    for key in bar:
        bar.set_postfix_str(key, refresh=True)
        t0 = time.perf_counter()
        section = Section(key)
        try:
            out = BUILDERS[key](ctx)
            if isinstance(out, tuple):
                out, phase_systems = out
            section.body = out
        except _Skip as exc:
            section.drawn, section.reason = False, exc.reason
            section.body = f"<p class='note missing'>{exc.note_html}</p>"
        except (PyMongoError, AnalysisError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 -- one broken section must not cost the rest of the report
            section.drawn, section.reason = False, f"error: {type(exc).__name__}: {exc}"
            section.body = (f"<p class='note missing'>This section could not be drawn: "
                            f"{esc(type(exc).__name__)}: {esc(exc)}</p>")
        section.seconds = time.perf_counter() - t0 + (t_context if key == "campaign" else 0.0)
        sections.append(section)
    bar.close()
    seconds = time.perf_counter() - t_start
    text = _page(ctx, sections, seconds)
    out = Path(path) if path is not None else default_path(campaign)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return {"path": str(out), "campaign": campaign, "bytes": len(text.encode("utf-8")),
            "drawn": [s.key for s in sections if s.drawn],
            "skipped": {s.key: s.reason for s in sections if not s.drawn},
            "timings": {s.key: round(s.seconds, 3) for s in sections}, "seconds": round(seconds, 3),
            "phase_diagrams": phase_systems}


def format_summary(summary: dict) -> str:
    """The summary as lines for a terminal (the CLI prints it)."""
    lines = [f"wrote {summary['path']} ({summary['bytes'] / 1e6:.1f} MB, {summary['seconds']:.1f} s)"]
    for key, seconds in summary["timings"].items():
        state = "drawn" if key in summary["drawn"] else f"skipped: {summary['skipped'].get(key)}"
        lines.append(f"  {TITLES[key]:<36} {seconds:>6.1f} s  {state}")
    return "\n".join(lines)
