"""Building the report: :func:`build_report` runs every section builder (:data:`BUILDERS`, in the order of
:data:`~fw_screen.reporting.report.page.SECTIONS`), turns a section without data or a broken one into a note,
times each, writes the page atomically and returns a summary; :func:`format_summary` prints that summary.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Callable

from fw_screen.reporting.report.band_gap import section_band_gap
from fw_screen.reporting.report.campaign import section_campaign
from fw_screen.reporting.report.candidates import section_candidates
from fw_screen.reporting.report.chemical_space import section_chemical_space
from fw_screen.reporting.report.context import Context, Section, Skip, make_context
from fw_screen.reporting.report.e_hull import section_e_hull
from fw_screen.reporting.report.funnel import section_funnel
from fw_screen.reporting.report.html import esc, safe_name, when
from fw_screen.reporting.report.metrics import section_metrics
from fw_screen.reporting.report.page import SECTIONS, TITLES, render_page
from fw_screen.reporting.report.parity import section_parity
from fw_screen.reporting.report.phase_diagrams import section_phase_diagrams
from fw_screen.reporting.tables import AnalysisError
from fw_screen.store import ResultsStore

#: section key -> its builder: ``ctx -> HTML`` (phase diagrams: ``(HTML, [chemsys drawn])``), or raises Skip
BUILDERS: dict[str, Callable] = {
    "campaign": section_campaign, "funnel": section_funnel, "metrics": section_metrics, "e_hull": section_e_hull,
    "band_gap": section_band_gap, "parity": section_parity, "phase_diagrams": section_phase_diagrams,
    "chemical_space": section_chemical_space, "candidates": section_candidates,
}


def default_path(campaign: str) -> Path:
    """``report_CAMPAIGN.html`` in the current directory (characters unsafe in a file name become ``_``)."""
    return Path(f"report_{safe_name(campaign)}.html")


def run_section(key: str, ctx: Context) -> tuple[Section, list[str] | None]:
    """Build one section: drawn, or skipped with the note its :class:`Skip` carries, or (any other error but
    the database's and the campaign's) skipped with the error.  Returns it with the chemical systems the
    phase-diagram section drew (None for the other sections)."""
    from pymongo.errors import PyMongoError

    section, systems = Section(key), None
    try:
        out = BUILDERS[key](ctx)
        if isinstance(out, tuple):
            out, systems = out
        section.body = out
    except Skip as exc:
        section.drawn, section.reason = False, exc.reason
        section.body = f"<p class='note missing'>{exc.note_html}</p>"
    except (PyMongoError, AnalysisError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 -- one broken section must not cost the rest of the report
        section.drawn, section.reason = False, f"error: {type(exc).__name__}: {exc}"
        section.body = (f"<p class='note missing'>This section could not be drawn: "
                        f"{esc(type(exc).__name__)}: {esc(exc)}</p>")
    return section, systems


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``path.part`` (a reader never sees half a report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_report(store: ResultsStore, campaign: str, path: str | os.PathLike | None = None, top: int = 20,
                 chemical_space: bool = True, max_per_group: int = 500, progress: bool = False) -> dict:
    """Write the campaign's HTML report to ``path`` (default ``report_CAMPAIGN.html`` here); return a summary.

    ``top``: rows of the candidates table; ``chemical_space``: draw the matminer/PCA map (the slowest section);
    ``max_per_group``: structures per chemical-space group (seeded sample); ``progress``: a tqdm bar on stderr.
    Summary: ``{"path", "campaign", "bytes", "drawn": [section], "skipped": {section: reason},
    "timings": {section: seconds}, "seconds", "phase_diagrams": [chemsys]}``.  An unknown campaign or one
    without candidates raises :class:`~fw_screen.reporting.tables.AnalysisError`; a section without data is a note.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    ctx = make_context(store, campaign, top=int(top), chemical_space=bool(chemical_space),
                       max_per_group=int(max_per_group))
    t_context = time.perf_counter() - t_start  # counted in the campaign section (its statuses and inputs)
    ctx.cache["generated"] = when(dt.datetime.now(dt.timezone.utc))
    sections: list[Section] = []
    phase_systems: list[str] = []
    bar = tqdm(SECTIONS, desc=f"report {campaign}", unit="section", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()),
               leave=False, dynamic_ncols=True)
    for key in bar:
        bar.set_postfix_str(key, refresh=True)
        t0 = time.perf_counter()
        section, systems = run_section(key, ctx)
        if systems is not None:
            phase_systems = systems
        section.seconds = time.perf_counter() - t0 + (t_context if key == "campaign" else 0.0)
        sections.append(section)
    bar.close()
    seconds = time.perf_counter() - t_start
    text = render_page(ctx, sections, seconds)
    out = Path(path) if path is not None else default_path(campaign)
    write_atomically(out, text)
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
