"""Stage 7, the campaign report: one self-contained HTML file a researcher can open anywhere, offline.

:func:`build_report` writes ``report_CAMPAIGN.html``: plots are PNGs embedded as ``data:`` URIs, the CSS is
inline, there is no JavaScript and no external resource of any kind (a Content-Security-Policy of
``default-src 'none'`` says so to the browser).  Sections, in order, each in the module of its name:

* **campaign** (``campaign.py``): inputs, statuses, the spec thresholds the numbers below depend on, when it
  was generated;
* **funnel** (``funnel.py``): inputs → valid → unique → novel → ML-done → ML-stable → promoted → DFT-done as
  bars, and the yields table (V, VU, VUN, VSUN at the thresholds :func:`~fw_screen.reporting.tables.funnel_yields`
  uses, band-gap target hits among the valid candidates with a prediction and among VSUN), overall and per
  condition;
* **metrics** (``metrics.py``): the ``fw-screen metrics`` table, each metric with its definition and paper;
* **e_hull** (``e_hull.py``): the ML e_above_hull of the relaxed structures, one histogram per band-gap
  condition, with the stability threshold;
* **band_gap** (``band_gap.py``): predicted ML band gap against the target of each condition, with the
  ± tolerance band;
* **parity** (``parity.py``): ML against DFT e_above_hull and band gap, MAE and precision/recall
  (:func:`~fw_screen.reporting.tables.ml_vs_dft`);
* **phase_diagrams** (``phase_diagrams.py``, drawn by ``phase_diagram_plot.py``): the DFT phase diagram of
  every chemical system with a DFT-confirmed candidate, built from the energies the DFT stage stored
  (:func:`fw_screen.dft.hull.hull_inputs` / :func:`fw_screen.dft.hull.hull_entries`, as the DFT hull itself)
  with pymatgen's ``PhaseDiagram`` and ``PDPlotter``, candidates highlighted;
* **chemical_space** (``chemical_space.py``): :mod:`fw_screen.reporting.chemical_space`'s PCA map of
  reference / valid / novel / ML-stable / DFT-confirmed structures;
* **candidates** (``candidates.py``): the top rows of the hull table (DFT e_above_hull first, then ML), each
  with its CIF.

Around them: ``build.py`` (:func:`build_report`, :func:`format_summary`), ``page.py`` (section order, titles,
CSS, the HTML document), ``context.py`` (what sections share, the cached queries), ``missing.py`` (the note
a section without data shows: which stage is missing and the command that produces it), ``plots.py`` (the
matplotlib plots but the phase diagrams), ``figures.py`` (figures embedded as PNG) and ``html.py``
(escaping and number formats).

Presentation only: the numbers come from :mod:`fw_screen.reporting.tables`, :mod:`fw_screen.reporting.chemical_space` and
:class:`~fw_screen.store.results.ResultsStore` queries (aggregations: nothing here loops over a campaign's documents).
Plots are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas (no pyplot state).
"""

from __future__ import annotations

from fw_screen.reporting.report.build import BUILDERS, build_report, default_path, format_summary
from fw_screen.reporting.report.candidates import top_rows
from fw_screen.reporting.report.context import Context, Section
from fw_screen.reporting.report.figures import COLOURS, DPI
from fw_screen.reporting.report.html import esc
from fw_screen.reporting.report.page import ANCHORS, CSS, SECTIONS, TITLES
from fw_screen.reporting.report.phase_diagrams import MAX_PHASE_DIAGRAMS
from fw_screen.reporting.report.plots import MAX_POINTS

__all__ = ["ANCHORS", "BUILDERS", "COLOURS", "CSS", "DPI", "MAX_PHASE_DIAGRAMS", "MAX_POINTS", "SECTIONS", "TITLES",
           "Context", "Section", "build_report", "default_path", "esc", "format_summary", "top_rows"]
