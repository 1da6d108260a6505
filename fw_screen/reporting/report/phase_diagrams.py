"""The ``phase_diagrams`` section: the DFT phase diagram of every chemical system with a DFT-done candidate
whose DFT hull is computed, built from the energies the DFT stage stored (:func:`fw_screen.dft.hull.hull_inputs`
/ :func:`fw_screen.dft.hull.hull_entries`, as the DFT hull itself) with pymatgen's ``PhaseDiagram``, drawn by
:mod:`fw_screen.reporting.report.phase_diagram_plot`, each with a table of its candidates.
"""

from __future__ import annotations

from fw_screen.reporting.report.context import Context, Skip
from fw_screen.reporting.report.figures import new_figure, plot
from fw_screen.reporting.report.html import esc, num, yes_no
from fw_screen.reporting.report.missing import dft_missing, run_hint
from fw_screen.reporting.report.phase_diagram_plot import draw_phase_diagram

MAX_PHASE_DIAGRAMS = 12


def no_hull_skip(ctx: Context, done: list[dict]) -> Skip:
    """Why no DFT-done candidate has a DFT hull to draw (VASP path, hulls still waiting, or no DFT yet)."""
    if any(d["dft"].get("code") == "vasp" for d in done):
        return Skip("DFT hulls against MP2020 entries (VASP path)",
                    "No DFT phase diagram: the DFT-done candidates ran through the VASP path, whose hull is "
                    "taken against the MP2020-corrected reference entries (see the candidates table); phase "
                    "diagrams are drawn from consistently computed reference phases (the Quantum ESPRESSO path).")
    if ctx.funnel["dft_done"]:
        return Skip("no DFT hull computed yet",
                    f"No DFT phase diagram: the {ctx.funnel['dft_done']} DFT-done candidates have no DFT hull yet "
                    f"(their reference phases are still being computed: {run_hint('dft')}; or they could not "
                    f"be computed, reason in the candidates table).")
    return dft_missing(ctx)


def axes_for(dim: int):
    """A figure for one phase diagram and its axes (3-D for a quaternary system)."""
    fig = new_figure(5.6, 4.9)
    return fig, (fig.add_subplot(projection="3d") if dim == 4 else fig.add_subplot())


def candidate_row(d: dict) -> str:
    """A candidate of a phase diagram as a table row: ML and DFT e_above_hull, decomposition, DFT-stable."""
    e_hull = d["dft"].get("e_above_hull")
    return (f"<tr><td>{esc(d['_id'])}</td><td>{esc(d.get('reduced_formula'))}</td>"
            f"<td class='n'>{num((d.get('ml') or {}).get('e_above_hull'))}</td>"
            f"<td class='n'>{num(e_hull)}</td><td>{esc(' + '.join(x['formula'] for x in d['dft'].get('decomposition') or []))}"
            f"</td><td>{yes_no(d['dft'].get('stable'))}</td></tr>")


def system_diagram(chemsys: str, protocol, ds: list[dict], ref_docs: dict) -> str:
    """The phase diagram of one chemical system (and protocol) with its candidates ``ds``, as HTML.  Raises
    :class:`Skip` for a system it cannot draw, and what the hull inputs raise for unusable energies."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    from fw_screen.dft import hull as dft

    refs: dict = {}
    cands, labels, rows = [], {}, []
    for d in ds:
        cand, refs_in = dft.hull_inputs(d["_id"], d["dft"], [ref_docs[r] for r in d["dft"]["references"]])
        entry, ref_entries = dft.hull_entries(cand, refs_in, correct=True)
        refs.update({e.entry_id: e for e in ref_entries})
        cands.append(entry)
        labels[d["_id"]] = f"{d.get('reduced_formula')} ({num(d['dft'].get('e_above_hull'), '+.3f')} eV/atom)"
        rows.append(candidate_row(d))
    if len(chemsys.split("-")) > 4:
        raise Skip(f"{chemsys}: more than four elements (PDPlotter draws up to quaternary systems)")
    pd = PhaseDiagram(list(refs.values()) + cands)
    if len(pd.elements) == 1:
        raise Skip(f"{chemsys}: a one-element system has no composition axis to draw")
    ref_list = ", ".join(sorted({e.composition.reduced_formula for e in refs.values()}))
    fig = draw_phase_diagram(axes_for, pd, labels, f"{chemsys}: DFT hull ({len(ds)} candidate"
                                                   f"{'s' if len(ds) > 1 else ''})")
    cap = (f"Reference phases computed with the candidates' protocol ({esc(protocol)}): {esc(ref_list)}; "
           f"MP2020 gas-anion corrections applied as in the DFT hull. Black: stable phases; grey squares: "
           f"computed phases above the hull; red stars: candidates (their DFT e_above_hull against the "
           f"references in brackets).")
    return (f"<div class='pd' data-chemsys='{esc(chemsys)}'>{plot(fig, f'phase diagram {chemsys}', cap)}"
            "<table class='small'><thead><tr><th>candidate</th><th>formula</th><th>ML e_hull</th>"
            "<th>DFT e_hull</th><th>DFT decomposition</th><th>DFT-stable</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def section_phase_diagrams(ctx: Context) -> tuple[str, list[str]]:
    """The diagrams (at most :data:`MAX_PHASE_DIAGRAMS`) and the chemical systems drawn."""
    from fw_screen.dft import hull as dft

    done = ctx.store.dft_done_candidates(ctx.campaign)
    docs = [d for d in done if d["dft"].get("hull_status") == "done" and d["dft"].get("references")]
    if not docs:
        raise no_hull_skip(ctx, done)
    systems: dict[tuple, list[dict]] = {}
    for d in docs:
        chemsys = d.get("chemsys") or "-".join(sorted(d.get("elements") or []))
        systems.setdefault((chemsys, d["dft"].get("protocol_id")), []).append(d)
    shown = list(systems.items())[:MAX_PHASE_DIAGRAMS]
    ref_docs = ctx.store.dft_reference_docs(sorted({r for _, ds in shown for d in ds for r in d["dft"]["references"]}))
    parts, problems = [], []
    for (chemsys, protocol), ds in shown:
        try:
            parts.append(system_diagram(chemsys, protocol, ds, ref_docs))
        except Skip as exc:
            problems.append(exc.reason)
        except (KeyError, dft.HullError, ValueError) as exc:
            problems.append(f"{chemsys}: {type(exc).__name__}: {exc}")
    if not parts:
        raise Skip("no phase diagram could be drawn: " + "; ".join(problems))
    more = ""
    if len(systems) > len(shown):
        more = f"<p class='note'>{len(systems) - len(shown)} more chemical systems not drawn (limit {MAX_PHASE_DIAGRAMS}).</p>"
    notes = "".join(f"<p class='note'>Not drawn: {esc(p)}</p>" for p in problems)
    return "<div class='grid'>" + "".join(parts) + "</div>" + more + notes, [c for (c, _), _ in shown]
