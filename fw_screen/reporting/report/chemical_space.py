"""The ``chemical_space`` section: :mod:`fw_screen.reporting.chemical_space`'s PCA map of matminer features
of the reference / valid / novel / ML-stable / DFT-confirmed structures, and a table of each group's size
and feature means.  (The features, the PCA and the plot are that module's; this one lays them out.)
"""

from __future__ import annotations

from fw_screen.reporting.report.context import Context, Skip
from fw_screen.reporting.report.figures import plot
from fw_screen.reporting.report.html import code, esc, num
from fw_screen.reporting.report.missing import ml_missing


def groups_table(result: dict, totals: dict) -> str:
    """Per group: points shown, candidates in the group, structures dropped, the feature means."""
    summary_rows = ""
    for g, s in result["summary"].items():
        cells = "".join(f"<td class='n'>{num(s[k]['mean'], '.2f')}</td>" for k in s)
        summary_rows += (f"<tr><th>{esc(g)}</th><td class='n'>{result['n'][g]:,}</td>"
                         f"<td class='n'>{totals.get(g, result['n_input'][g]):,}</td>"
                         f"<td class='n'>{result['dropped'][g]}</td>{cells}</tr>")
    feats = next(iter(result["summary"].values()), {})
    return ("<table class='small' id='chemical-space-groups'><thead><tr><th>group</th><th>shown</th><th>in group</th>"
            "<th>dropped</th>" + "".join(f"<th>{esc(k.replace('_', ' '))} (group mean)</th>" for k in feats)
            + f"</tr></thead><tbody>{summary_rows}</tbody></table>")


def section_chemical_space(ctx: Context) -> str:
    if not ctx.chemical_space:
        raise Skip("switched off (--no-chemical-space)",
                   "Chemical-space map switched off (<code>--no-chemical-space</code>).")
    from fw_screen.reporting.chemical_space import campaign_chemical_space, plot_chemical_space

    if not ctx.funnel["valid"]:
        raise ml_missing(ctx) if ctx.funnel["pending_validity"] else Skip(
            "no valid candidates", "No chemical-space map: the campaign has no valid structure.")
    # the map `fw-screen chemical-space` draws, without the spglib features (the report's slowest part)
    result = campaign_chemical_space(ctx.store, ctx.campaign, ctx.max_per_group, seed=0, symmetry=False)
    totals = result["population"]
    fig = plot_chemical_space(result, title=f"{ctx.campaign}: chemical space (PCA of matminer features, "
                                            f"fit on {'reference structures' if result['fit_on'] == 'reference' else 'all points'})")
    note = ""
    if not totals.get("reference"):
        note = ("<p class='note'>No reference structures in the database: the map is fit on the generated structures "
                f"only. Load references with {code('fw-screen references PATH')}.</p>")
    return (plot(fig, "chemical space map", esc(result["method"]) + " Groups nest: DFT-confirmed ⊂ ML-stable ⊂ novel ⊂ valid.")
            + note + groups_table(result, totals))
