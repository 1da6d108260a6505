"""The ``funnel`` section: the funnel as bars (inputs → valid → unique → novel → ML-done → ML-stable →
promoted → DFT-done, DFT-stable once there are DFT results), a note on candidates still waiting, and the
yields table (V, VU, VUN, VSUN and band-gap target hits, overall and per condition, at each threshold of
:func:`~fw_screen.reporting.tables.funnel_yields`).
"""

from __future__ import annotations

from fw_screen.reporting.report.context import Context, yields
from fw_screen.reporting.report.figures import plot
from fw_screen.reporting.report.html import cond_label, esc, pct
from fw_screen.reporting.report.missing import run_hint
from fw_screen.reporting.report.plots import funnel_bars


def funnel_stages(ctx: Context, y: dict) -> list[tuple[str, int]]:
    """(label, candidates) of each funnel stage, in order."""
    f = ctx.funnel
    thr = ctx.ml_threshold
    main_thr = thr if thr in y["overall"] else y["thresholds"][0]
    dft_stable = (ctx.store.dft_summary(ctx.campaign) or {}).get("stable", 0) if f["dft_done"] else 0
    stages = [("inputs", f["inputs"]), ("valid (V)", f["valid"]), ("unique (VU)", f["unique"]),
              ("novel (VUN)", f["novel"]), ("ML done", f["ml_done"]),
              (f"ML-stable (VSUN, ≤ {main_thr:g} eV/atom)", y["overall"][main_thr]["counts"]["vsun"]),
              ("promoted to DFT", f["promoted"]), ("DFT done", f["dft_done"])]
    if f["dft_done"]:
        stages.append((f"DFT-stable (≤ {ctx.dft_threshold:g} eV/atom)", dft_stable))
    return stages


def pending_note(funnel: dict) -> str:
    """The note on candidates still waiting for a stage ("" when none waits)."""
    f = funnel
    pending = [(n, what) for n, what in ((f["pending_validity"], "validity"), (f["pending_uniqueness"], "uniqueness"),
                                         (f["pending_ml"], "the ML stage"), (f["pending_dft"], "DFT")) if n]
    if not pending:
        return ""
    return ("<p class='note'>Still running: " + ", ".join(
        f"{n:,} candidate{'s' if n > 1 else ''} wait{'' if n > 1 else 's'} for {esc(w)}" for n, w in pending)
            + f". Run workers ({run_hint('all')}) and build the report again.</p>")


def section_funnel(ctx: Context) -> str:
    y = yields(ctx)
    fig = funnel_bars(funnel_stages(ctx, y), ctx.funnel["inputs"], f"{ctx.campaign}: funnel")
    note = pending_note(ctx.funnel)
    return (plot(fig, "funnel bar chart", "Candidates left after each stage (ML-stable: ML e_above_hull of the relaxed "
                                          "structure at or below the threshold, among the novel candidates).")
            + note + yields_table(y))


def yields_cell(key: str, counts: dict, rates: dict, rate_key: str, count_key: str, of_key: str | None = None) -> str:
    """One cell of the yields table: the rate, the count below it (``/denominator`` unless the inputs), and
    both as ``data-`` attributes (tests read them)."""
    rate, count = rates.get(rate_key), counts.get(count_key)
    of = f"/{counts[of_key]:,}" if of_key else ""
    return (f"<td class='n' data-key='{esc(key)}' data-rate='{esc(repr(rate))}' data-count='{count}'>{pct(rate)}"
            f"<small>{count:,}{of}</small></td>")


def yields_row(thrs: list[float], label: str, cond_attr: str, n: int, per_thr: dict) -> str:
    """One row of the yields table (all conditions, or one)."""
    cell = yields_cell
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


def yields_table(y: dict) -> str:
    """The yields table of :func:`~fw_screen.reporting.tables.funnel_yields` ``y``, with its legend."""
    thrs = y["thresholds"]
    head = ["condition", "inputs", "V", "VU", "VUN"]
    for t in thrs:
        head += [f"VSUN (S: e_hull ≤ {t:g})", f"S among ML-evaluated VUN (≤ {t:g})", f"hit among VSUN (≤ {t:g})"]
    head.append("hit among valid with ML gap")
    body = [yields_row(thrs, "all conditions", "all", y["n"], y["overall"])]
    body += [yields_row(thrs, cond_label(r["condition"]), "none" if r["condition"] is None else repr(r["condition"]),
                        r["n"], {t: r[t] for t in thrs}) for r in y["by_condition"]]
    return ("<h3>Yields</h3><div class='scroll'><table id='yields' class='yields'><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(body)
            + "</tbody></table></div><p class='muted'>V, VU, VUN, VSUN: fractions of all inputs (CrystaLLM-pi / "
              "MatterGen definitions; S is the ML e_above_hull of the relaxed structure). Target hits: |ML band gap − "
              "target| within the tolerance, among the valid candidates with a prediction and among VSUN. Small "
              "numbers: candidates counted (of the denominator where it is not the inputs).</p>")
