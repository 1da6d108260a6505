"""What a section without data says instead: which stage has not run (or failed) and the command that
produces its results, as a :class:`~fw_screen.reporting.report.context.Skip` the section raises.
"""

from __future__ import annotations

from fw_screen.reporting.report.context import Context, Skip
from fw_screen.reporting.report.html import code


def run_hint(category: str) -> str:
    """The command that runs workers of a category, as ``<code>``."""
    return code(f"fw-screen run -n 2 --category {category}")


def ml_missing(ctx: Context) -> Skip:
    """Why there are no ML results yet, and what produces them."""
    f, c = ctx.funnel, ctx.campaign
    if f["valid"] == 0 and f["pending_validity"]:
        return Skip("the validity stage has not run",
                    f"No results yet: {f['pending_validity']:,} candidates wait for the validity stage. Run the "
                    f"cheap workers: {run_hint('cheap')}.")
    if f["novel"] == 0:
        if f["pending_uniqueness"]:
            return Skip("the uniqueness stage has not run",
                        f"No ML results: {f['pending_uniqueness']:,} valid candidates wait for the uniqueness / "
                        f"novelty stage ({run_hint('cheap')}); the ML stage relaxes the novel ones.")
        return Skip("no novel candidates", "No ML results: the campaign has no novel candidates (every valid one is "
                                           "a duplicate or matches a reference), so the ML stage had nothing to do.")
    if f["pending_ml"]:
        return Skip("the ML stage has not run (or not finished)",
                    f"No ML stability results yet: {f['pending_ml']:,} novel candidates wait for the ML stage "
                    f"(CHGNet relaxation, hull, MEGNet band gap). Add its Fireworks with {code(f'fw-screen ml -c {c}')} "
                    f"(older campaigns) and run ML workers: {run_hint('ml')}.")
    if f["no_reference"] and not f["ml_done"]:
        return Skip("no reference entries for the hulls",
                    f"No ML hull distances: all {f['no_reference']:,} novel candidates lack reference entries for "
                    f"their chemical systems. Load references with {code('fw-screen references PATH')} "
                    f"(e.g. the Materials Project files in examples/) and submit again.")
    return Skip("no ML results", f"No ML results: {f['ml_failed']:,} ML runs failed, {f['no_reference']:,} candidates "
                                 f"had no reference entries (see the candidates table and "
                                 f"{code(f'fw-screen status -c {c}')}).")


def dft_missing(ctx: Context) -> Skip:
    """Why there are no DFT results yet (the ML stage first), and what produces them."""
    f, c = ctx.funnel, ctx.campaign
    if not f["ml_done"]:
        ml = ml_missing(ctx)
        return Skip(f"no DFT results ({ml.reason})", f"No DFT results: the ML stage comes first. {ml.note_html}")
    if not f["promoted"]:
        return Skip("no candidate promoted to DFT",
                    f"No DFT results: no candidate has been promoted to DFT yet. Promotion runs by itself when the ML "
                    f"stage finishes, or by hand: {code(f'fw-screen promote {c}')}; then run DFT workers: "
                    f"{run_hint('dft')}.")
    if f["pending_dft"]:
        return Skip("the DFT stage has not run (or not finished)",
                    f"No DFT results yet: {f['pending_dft']:,} promoted candidates wait for DFT. Run DFT workers: "
                    f"{run_hint('dft')} (or {code(f'fw-screen promote {c}')} to add missing DFT Fireworks).")
    return Skip("every DFT run failed",
                f"No DFT results: all {f['dft_failed']:,} DFT runs failed; their reasons are in the candidates table "
                f"and in {code(f'fw-screen status -c {c} --dft')}.")
