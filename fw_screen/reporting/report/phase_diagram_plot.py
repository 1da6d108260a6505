"""The DFT phase diagram plot of the ``phase_diagrams`` section: pymatgen's ``PDPlotter`` geometry (hull
lines and the projected coordinates of stable and unstable entries, ``pd_plot_data``) drawn on our own
axes — a binary as formation energy against composition, a ternary as a triangle, a quaternary as a 3-D
tetrahedron — with the candidates as red stars and their labels kept clear of the diagram.

pymatgen's own matplotlib drawing goes through pyplot's current figure (``plt.plot``) and ignores
``highlight_entries``; its coordinates are what we take.
"""

from __future__ import annotations

import math

import numpy as np

from fw_screen.reporting.report.figures import COLOURS

MAX_STAR_LABELS = 8  # candidates labelled on a binary or ternary diagram (the table below it names them all)


def draw_phase_diagram(axes_for, pd, candidates: dict, title: str):
    """Draw ``pd`` with pymatgen's PDPlotter geometry on the axes ``axes_for(dimension)`` returns as
    ``(figure, axes)``, candidates (entry_id -> label) highlighted; returns the figure."""
    from pymatgen.analysis.phase_diagram import PDPlotter

    plotter = PDPlotter(pd, show_unstable=10.0, backend="matplotlib")
    lines, stable, unstable = plotter.pd_plot_data
    dim = len(pd.elements)
    fig, ax = axes_for(dim)
    coords_of = {e.entry_id: c for c, e in stable.items()}
    coords_of.update({e.entry_id: c for e, c in unstable.items()})
    ref_unstable = [(e, c) for e, c in unstable.items() if e.entry_id not in candidates]
    if dim == 4:
        draw_quaternary(ax, lines, stable, ref_unstable, coords_of, candidates)
    else:
        draw_planar(ax, dim, lines, stable, ref_unstable, coords_of, candidates)
        if dim == 3:
            ax.set_aspect("equal")
            ax.set_xlim(-0.12, 1.12)
            ax.set_ylim(-0.1, 0.97)
            ax.set_axis_off()
        else:
            binary_axes(ax, pd, coords_of)
    ax.set_title(title, fontsize=10)
    return fig


def draw_quaternary(ax, lines, stable: dict, ref_unstable: list, coords_of: dict, candidates: dict) -> None:
    """A quaternary system in 3-D: hull edges, stable phases (black, labelled), phases above the hull
    (grey squares), candidates (red stars with their labels)."""
    for x, y, z in lines:
        ax.plot(x, y, z, "-", color="0.35", lw=1.2)
    for c, e in stable.items():
        if e.entry_id not in candidates:
            ax.scatter(*c, s=30, c="k")
            ax.text(*c, " " + e.composition.reduced_formula, fontsize=8)
    for e, c in ref_unstable:
        ax.scatter(*c, s=22, c="#999999", marker="s")
    for cid, label in candidates.items():
        if cid in coords_of:
            ax.scatter(*coords_of[cid], s=160, c=COLOURS["candidate"], marker="*", edgecolors="k", zorder=5)
            ax.text(*coords_of[cid], "  " + label, fontsize=8, color=COLOURS["candidate"])
    ax.set_axis_off()


def label_offset(c, center, dist: float = 11.0):
    """Offset (points) and alignment of a label pointing away from the diagram's centre (as pymatgen)."""
    v = np.asarray(c, dtype=float) - center
    norm = np.linalg.norm(v)
    v = v / norm * dist if norm > 1e-9 else np.array([0.0, dist])
    ha = "right" if v[0] < -0.01 * dist else ("left" if v[0] > 0.01 * dist else "center")
    return tuple(v), ha, ("bottom" if v[1] >= 0 else "top")


def draw_planar(ax, dim: int, lines, stable: dict, ref_unstable: list, coords_of: dict, candidates: dict) -> None:
    """A binary or ternary system in 2-D: hull lines, stable phases (black dots) and phases above the hull
    (grey squares) labelled away from the centre, then the candidates' stars."""
    if dim == 3:
        center = np.array([0.5, math.sqrt(3) / 6])
    else:
        center = np.array([0.5, min(c[1] for c in coords_of.values()) / 2])
    for x, y in lines:
        ax.plot(x, y, "-", color="0.3", lw=1.3, zorder=1)
    for c, e in stable.items():
        if e.entry_id in candidates:
            continue
        ax.plot(c[0], c[1], "o", color="k", ms=6, zorder=2)
        off, ha, va = label_offset(c, center)
        ax.annotate(e.composition.reduced_formula, c, xytext=off, textcoords="offset points", ha=ha, va=va,
                    fontsize=9, zorder=4)
    for e, c in ref_unstable:
        ax.plot(c[0], c[1], "s", color="#999999", ms=5, zorder=2)
        off, ha, va = label_offset(c, center, 8.0)
        ax.annotate(e.composition.reduced_formula, c, xytext=off, textcoords="offset points", ha=ha, va=va,
                    fontsize=7, color="0.4")
    draw_planar_candidates(ax, dim, coords_of, candidates)


def draw_planar_candidates(ax, dim: int, coords_of: dict, candidates: dict) -> None:
    """The candidates' stars on a binary or ternary diagram; the first :data:`MAX_STAR_LABELS` labelled."""
    placed = sorted(((cid, coords_of[cid]) for cid in candidates if cid in coords_of),  # labels do not cross
                    key=lambda kv: kv[1][1] if dim == 2 else -kv[1][1])
    for k, (cid, c) in enumerate(placed):
        ax.plot(c[0], c[1], "*", color=COLOURS["candidate"], mec="k", ms=16, zorder=5)
        if k >= MAX_STAR_LABELS:  # the table below the plot names them all
            continue
        # labels stacked in an empty corner (below the hull of a binary, beside the triangle of a ternary),
        # on the side away from the candidate, with a line to its star
        left = c[0] > 0.5
        xy = ((0.03 if left else 0.97), (0.05 + 0.075 * k) if dim == 2 else (0.95 - 0.075 * k))
        ax.annotate(candidates[cid], c, xytext=xy, textcoords="axes fraction", fontsize=8,
                    ha="left" if left else "right", va="bottom" if dim == 2 else "top",
                    color=COLOURS["candidate"], zorder=6,
                    arrowprops={"arrowstyle": "-", "color": COLOURS["candidate"], "lw": 0.7, "shrinkB": 6},
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": COLOURS["candidate"], "alpha": 0.9})


def binary_axes(ax, pd, coords_of: dict) -> None:
    """Axes of a binary diagram: composition against formation energy, limits around every point and 0."""
    els = [el.symbol for el in pd.elements]
    ax.set_xlabel(f"fraction {els[1]} in {els[0]}–{els[1]}")
    ax.set_ylabel("formation energy (eV/atom)")
    ax.axhline(0, color="0.6", lw=0.6, zorder=0)
    ax.grid(alpha=0.25)
    ys = [c[1] for c in coords_of.values()]
    span = max(ys + [0]) - min(ys + [0])
    ax.set_ylim(min(ys + [0]) - 0.12 * span - 0.1, max(ys + [0]) + 0.12 * span + 0.1)
    ax.set_xlim(-0.08, 1.08)
