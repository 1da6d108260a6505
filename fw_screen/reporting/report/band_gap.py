"""The ``band_gap`` section: the ML band gap of every novel candidate with a prediction against the target
of its condition, the ± tolerance band shaded (:func:`~fw_screen.reporting.report.plots.band_gap_strips`),
with the model's error measured against the project's DFT truth set in the caption.
"""

from __future__ import annotations

import math

from fw_screen.reporting.report.context import Context, Skip, ml_values
from fw_screen.reporting.report.figures import plot
from fw_screen.reporting.report.html import code, esc
from fw_screen.reporting.report.missing import ml_missing
from fw_screen.reporting.report.plots import MAX_POINTS, band_gap_strips


def gap_rows(ctx: Context) -> list[dict]:
    """``{"condition", "n", "gap", "hit"}`` per condition: the candidates with a finite ML band gap."""
    rows = []
    for r in ml_values(ctx):
        pairs = [(float(g), h) for g, h in zip(r["gap"], r["hit"])
                 if isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g)]
        if pairs:
            rows.append({"condition": r["condition"], "n": len(pairs), "gap": [g for g, _ in pairs],
                         "hit": [h for _, h in pairs]})
    return rows


def band_gap_caption(prop: dict, tol: float, sampled: int) -> str:
    """The caption: which model, the hit tolerance, the model's measured error (or that it was never measured)."""
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
    return cap


def section_band_gap(ctx: Context) -> str:
    rows = gap_rows(ctx)
    if not rows:
        if ctx.funnel["ml_done"] or ctx.funnel["no_reference"]:
            raise Skip("no ML band-gap predictions",
                       "No ML band-gap predictions: the band-gap model gave none (see ml.band_gap_error of the "
                       f"candidates, {code(f'fw-screen status -c {ctx.campaign}')}).")
        raise ml_missing(ctx)
    tol = ctx.tolerance
    fig, sampled = band_gap_strips(rows, tol)
    cap = band_gap_caption(ctx.spec.property, tol, sampled)
    return plot(fig, "target vs predicted band gap per condition", esc(cap))
