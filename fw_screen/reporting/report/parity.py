"""The ``parity`` section: ML against DFT for the DFT-done candidates — parity plots of e_above_hull and
band gap (:func:`~fw_screen.reporting.report.plots.parity_plots`), the error table (MAE, mean and max
error) and precision/recall of the ML "stable" and "target hit" flags (:func:`~fw_screen.reporting.tables.ml_vs_dft`).
"""

from __future__ import annotations

from fw_screen.reporting.report.context import Context, ml_against_dft
from fw_screen.reporting.report.figures import plot
from fw_screen.reporting.report.html import esc, num, pct
from fw_screen.reporting.report.missing import dft_missing, run_hint
from fw_screen.reporting.report.plots import parity_plots


def value_pairs(rows: list[dict], key: str) -> list[tuple]:
    """``(ML, DFT, label)`` of the rows with both numbers of ``key`` (``e_above_hull``, ``band_gap``)."""
    return [(r[f"ml_{key}"], r[f"dft_{key}"], r.get("formula") or r["id"]) for r in rows
            if isinstance(r.get(f"ml_{key}"), (int, float)) and isinstance(r.get(f"dft_{key}"), (int, float))]


def flags_table(ctx: Context, m: dict) -> str:
    """Precision and recall of the ML flags against DFT (head and body rows)."""
    head = "<tr><th>ML flag vs DFT</th><th>n</th><th>TP</th><th>FP</th><th>FN</th><th>TN</th><th>precision</th>" \
           "<th>recall</th><th>note</th></tr>"
    body = ""
    for key, label in (("stable", f"stable (ML ≤ {ctx.ml_threshold:g}, DFT ≤ {ctx.dft_threshold:g} eV/atom)"),
                       ("band_gap_hit", f"band-gap target hit (± {ctx.tolerance:g} eV)")):
        c = m[key]
        body += (f"<tr data-key='{key}'><th>{esc(label)}</th><td class='n'>{c['n']}</td><td class='n'>{c['tp']}</td>"
                 f"<td class='n'>{c['fp']}</td><td class='n'>{c['fn']}</td><td class='n'>{c['tn']}</td>"
                 f"<td class='n'>{pct(c['precision'])}</td><td class='n'>{pct(c['recall'])}</td>"
                 f"<td class='muted'>{esc('; '.join(c['notes']))}</td></tr>")
    return (f"<div><h3>Precision and recall</h3><table class='small' id='parity-flags'>"
            f"<thead>{head}</thead><tbody>{body}</tbody></table></div>")


def errors_table(m: dict) -> str:
    """MAE, mean and max error of e_above_hull and band gap."""
    maes = "".join(f"<tr data-key='{k}'><th>{esc(k)}</th><td class='n'>{m[k]['n']}</td><td class='n'>"
                   f"{num(m[k]['mae'])}</td><td class='n'>{num(m[k]['mean_error'], signed=True)}</td>"
                   f"<td class='n'>{num(m[k]['max_abs_error'])}</td></tr>" for k in ("e_above_hull", "band_gap"))
    return ("<div><h3>Errors</h3><table class='small' id='parity-errors'><thead><tr><th>quantity</th>"
            "<th>n</th><th>MAE</th><th>mean error (ML − DFT)</th><th>max |error|</th></tr></thead><tbody>"
            + maes + "</tbody></table></div>")


def section_parity(ctx: Context) -> str:
    m = ml_against_dft(ctx)
    if not m["n_dft"]:
        raise dft_missing(ctx)
    rows = m["rows"]
    fig = parity_plots(value_pairs(rows, "e_above_hull"), value_pairs(rows, "band_gap"), m["e_above_hull"],
                       m["band_gap"], (ctx.ml_threshold, ctx.dft_threshold))
    missing = ""
    if not m["e_above_hull"]["n"]:
        missing = ("<p class='note'>No DFT e_above_hull yet: the DFT hulls wait for their reference phases (run "
                   f"{run_hint('dft')}) or could not be computed (reason in the candidates table).</p>")
    return (plot(fig, "ML vs DFT parity plots",
                 esc(f"{m['n_dft']} DFT-done candidates. Dotted lines: ML and DFT stability thresholds. "
                     f"Selection: {m['selection']}."))
            + missing + "<div class='cols'>" + errors_table(m) + flags_table(ctx, m) + "</div>")
