"""Figures of the campaign report: a matplotlib ``Figure`` on the Agg canvas (no pyplot state), the shared
colours, and the figure embedded in the page as a PNG ``data:`` URI inside ``<figure>``.
"""

from __future__ import annotations

import base64
import io

from fw_screen.reporting.report.html import esc

DPI = 144  # PNG resolution; shown at 96 CSS px per inch, so plots stay sharp on high-density screens
COLOURS = {"stable": "#2ca02c", "unstable": "#8fa9c8", "hit": "#2ca02c", "miss": "#9a9a9a", "none": "#1f77b4",
           "threshold": "#d62728", "band": "#ffd27f", "target": "#b8860b", "candidate": "#d62728"}


def new_figure(width: float, height: float):
    """A constrained-layout figure of ``width`` x ``height`` inches with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def img(fig, alt: str) -> str:
    """The figure as an embedded PNG (``<img src="data:image/png;base64,...">``), sized in CSS pixels."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    w, h = fig.get_size_inches()
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img class="plot" src="data:image/png;base64,{data}" width="{round(w * 96)}" '
            f'height="{round(h * 96)}" alt="{esc(alt)}">')


def plot(fig, alt: str, caption: str = "") -> str:
    """The figure as ``<figure>`` with its caption (HTML, already escaped by the caller)."""
    return f'<figure>{img(fig, alt)}' + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>"
