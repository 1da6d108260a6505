"""The ``candidates`` section: the top candidates (:func:`top_rows`: DFT-done ones by DFT e_above_hull, then
ML-done ones by ML e_above_hull), one hull-table row each with its CIF embedded as a download.
"""

from __future__ import annotations

import base64

from fw_screen.reporting.report.context import Context, Skip, ml_against_dft
from fw_screen.reporting.report.html import code, esc, num, safe_name, yes_no
from fw_screen.reporting.report.missing import ml_missing
from fw_screen.reporting.tables import hull_table
from fw_screen.store import ResultsStore

HEAD = ("#", "candidate", "CIF", "formula", "space group", "sites", "target gap (eV)", "ML e_hull", "DFT e_hull",
        "decomposition", "ML gap ± model MAE (eV)", "DFT-lite gap (eV)", "DFT gap (eV)", "gap hit ML/lite/DFT",
        "stable ML/DFT", "after relaxation", "status", "reason")


def top_rows(store: ResultsStore, campaign: str, top: int, dft_rows: list[dict] | None = None) -> list[dict]:
    """The report's top candidates: DFT-done ones by DFT e_above_hull, then ML-done ones by ML e_above_hull
    (hull-table rows, :func:`fw_screen.reporting.tables.hull_table`; ``dft_rows``: the DFT-done ones, when at hand).

    Not :meth:`ResultsStore.top_candidates <fw_screen.store.ResultsStore.top_candidates>`, which ranks by the
    ML hull alone and returns the stored documents ``fw-screen status --top`` prints."""
    if dft_rows is None:
        dft_rows = hull_table(store, campaign, stage="dft", sort="dft_e_above_hull", limit=top)
    rows = list(dft_rows[:top])
    seen = {r["id"] for r in rows}
    if len(rows) < top:
        more = hull_table(store, campaign, stage="ml", sort="ml_e_above_hull", limit=top + len(seen))
        rows += [r for r in more if r["id"] not in seen][:top - len(rows)]
    return rows


def cif_text(structure_dict) -> str | None:
    """The structure as CIF text (pymatgen's CifWriter, unique site labels); None when there is none or it
    cannot be read."""
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


def cif_link(cid: str, structure_dict) -> str:
    """A download link carrying the candidate's CIF as a ``data:`` URI (a dash when there is no CIF)."""
    cif = cif_text(structure_dict)
    name = safe_name(cid) + ".cif"
    return (f"<a class='cif' download='{esc(name)}' href='data:chemical/x-cif;base64,"
            f"{base64.b64encode(cif.encode()).decode('ascii')}'>CIF</a>" if cif else "<span class='na'>–</span>")


def ml_gap(row: dict) -> str:
    """The ML band gap with the model's MAE measured on the DFT truth set (``±?``: never measured)."""
    gap = row.get("ml_band_gap")
    if not isinstance(gap, (int, float)):
        return num(gap, ".2f")
    err = row.get("ml_band_gap_error")
    return f"{gap:.2f} ± {err:.2f}" if isinstance(err, (int, float)) else f"{gap:.2f} ± ?"


def after_relaxation(r: dict) -> str:
    """What the post-relaxation pass found: known, a duplicate, or novel and unique (self-consistent hull)."""
    if r.get("matched_reference_relaxed"):
        return f"known: {r['matched_reference_relaxed']}"
    if r.get("duplicate_of_relaxed"):
        return f"duplicate of {r['duplicate_of_relaxed']}"
    if r.get("novel_relaxed") is None:
        return "–"
    sc = r.get("ml_e_above_hull_self_consistent")
    return "novel, unique" + (f"; self-consistent e_hull {sc:.3f}" if isinstance(sc, (int, float)) else "")


def candidate_row(i: int, r: dict, link: str) -> str:
    """Row ``i`` of the candidates table: hull-table row ``r`` with its CIF ``link``."""
    decomposition = r.get("dft_decomposition") or r.get("ml_decomposition")
    which = "DFT" if r.get("dft_decomposition") else ("ML" if r.get("ml_decomposition") else "")
    reason = r.get("reason") or ""
    short = reason if len(reason) <= 140 else reason[:137] + "…"
    return (f"<tr data-id='{esc(r['id'])}'><td class='n'>{i}</td><td class='id'>{esc(r['id'])}</td>"
            f"<td class='c'>{link}</td><td>{esc(r.get('formula'))}</td><td>{esc(r.get('spacegroup') or '–')}</td>"
            f"<td class='n'>{esc(r.get('nsites') if r.get('nsites') is not None else '–')}</td>"
            f"<td class='n'>{num(r.get('condition'), 'g')}</td>"
            f"<td class='n'>{num(r.get('ml_e_above_hull'))}</td><td class='n'>{num(r.get('dft_e_above_hull'))}</td>"
            f"<td>{esc(decomposition or '–')}{f' <small>({which})</small>' if which else ''}</td>"
            f"<td class='n'>{ml_gap(r)}</td><td class='n'>{num(r.get('dft_lite_band_gap'), '.2f')}</td>"
            f"<td class='n'>{num(r.get('dft_band_gap'), '.2f')}</td>"
            f"<td class='c'>{yes_no(r.get('ml_band_gap_hit'))} / {yes_no(r.get('dft_lite_band_gap_hit'))} / "
            f"{yes_no(r.get('dft_band_gap_hit'))}</td>"
            f"<td class='c'>{yes_no(r.get('ml_stable'))} / {yes_no(r.get('dft_stable'))}</td>"
            f"<td>{esc(after_relaxation(r))}</td>"
            f"<td><span class='status s-{esc(r.get('status'))}'>{esc(r.get('status'))}</span></td>"
            f"<td class='reason' title='{esc(reason)}'>{esc(short)}</td></tr>")


def section_candidates(ctx: Context) -> str:
    if ctx.top <= 0:
        raise Skip("switched off (--top 0)")
    rows = top_rows(ctx.store, ctx.campaign, ctx.top, ml_against_dft(ctx)["rows"])
    if not rows:
        raise ml_missing(ctx)
    structures = ctx.store.structures_of([r["id"] for r in rows])
    body = [candidate_row(i, r, cif_link(r["id"], structures.get(r["id"]))) for i, r in enumerate(rows, 1)]
    return ("<p class='muted'>DFT-done candidates by DFT e_above_hull, then the ML-done ones by ML e_above_hull "
            "(eV/atom). CIF: the DFT-relaxed structure where there is one, else the ML-relaxed one, else the "
            f"structure as generated (written by pymatgen's CifWriter). Every candidate: "
            f"{code('fw_screen.reporting.tables.hull_table')} and {code('format_table')} (CSV, Markdown, JSON).</p>"
            "<div class='scroll'><table id='candidates-table' class='candidates'><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in HEAD) + "</tr></thead><tbody>" + "".join(body)
            + "</tbody></table></div>")
