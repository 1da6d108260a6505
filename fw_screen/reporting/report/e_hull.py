"""The ``e_hull`` section: the ML e_above_hull of the relaxed novel candidates, one histogram per band-gap
condition, the ML stability threshold dashed (:func:`~fw_screen.reporting.report.plots.e_hull_histograms`).
"""

from __future__ import annotations

from fw_screen.reporting.report.context import Context, ml_values
from fw_screen.reporting.report.figures import plot
from fw_screen.reporting.report.html import esc, finite
from fw_screen.reporting.report.missing import ml_missing
from fw_screen.reporting.report.plots import e_hull_histograms


def section_e_hull(ctx: Context) -> str:
    rows = [dict(r, e=finite(r["e"])) for r in ml_values(ctx)]
    rows = [r for r in rows if len(r["e"])]
    if not rows:
        raise ml_missing(ctx)
    thr = ctx.ml_threshold
    fig, lo, hi = e_hull_histograms(rows, thr)
    cap = (f"ML (relaxed) energy above the reference hull of the novel candidates with one, per band-gap condition. "
           f"Dashed line: ml.stability_threshold = {thr:g} eV/atom; green: at or below it (S). Bins span "
           f"{lo:.2f} to {hi:.2f} eV/atom; values beyond are counted in the edge bins.")
    return plot(fig, "e_above_hull histograms per condition", esc(cap))
