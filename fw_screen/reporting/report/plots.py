"""The report's matplotlib plots, one function each, returning the figure (embedded by
:func:`~fw_screen.reporting.report.figures.plot`): the funnel bars, the ML e_above_hull histograms per
condition, the ML band gap strips against each target, and the ML-vs-DFT parity panels.  The DFT phase
diagrams are :mod:`fw_screen.reporting.report.phase_diagram_plot`.  Data in, figure out: no database here.
"""

from __future__ import annotations

import math

import numpy as np

from fw_screen.reporting.report.figures import COLOURS, new_figure
from fw_screen.reporting.report.html import cond_label, num

MAX_POINTS = 3000  # points drawn per condition in a strip plot (a seeded sample beyond that; stated)


def funnel_bars(stages: list[tuple[str, int]], inputs: int, title: str):
    """Horizontal bars of the candidates left after each stage (``(label, count)``, first stage on top),
    each with its share of the ``inputs``."""
    fig = new_figure(9.0, 0.42 * len(stages) + 0.9)
    ax = fig.add_subplot()
    labels = [s for s, _ in stages][::-1]
    values = [v for _, v in stages][::-1]
    colours = ["#4c72b0"] * len(values)
    ax.barh(labels, [max(v, 0) for v in values], color=colours, height=0.65)
    top = max(values) or 1
    for i, v in enumerate(values):
        share = f" ({100 * v / inputs:.1f}% of inputs)" if inputs and v != inputs else ""
        ax.text(v + top * 0.01, i, f"{v:,}{share}", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.32)
    ax.set_xlabel("candidates")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title, fontsize=11)
    return fig


def e_hull_histograms(rows: list[dict], thr: float):
    """One histogram of ML e_above_hull per condition (``rows``: ``{"condition", "e": finite array}``),
    stacked at/below and above the threshold ``thr``.  Returns ``(figure, lo, hi)``: the range of the bins
    (values beyond it are counted in the edge bins)."""
    allv = np.concatenate([r["e"] for r in rows])
    lo = min(-0.05, float(np.percentile(allv, 0.5)))
    hi = max(3 * thr, 0.2, float(np.percentile(allv, 99.5)))
    if float(allv.max()) <= 1.25 * hi:  # a few values just beyond: widen the range rather than clip them
        hi = float(allv.max())
    bins = np.linspace(lo, hi, 41)
    k = len(rows)
    ncols = min(4, k)
    nrows = math.ceil(k / ncols)
    fig = new_figure(2.6 * ncols + 0.6, 2.1 * nrows + 0.7)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    for ax, r in zip(axes.flat, rows):
        v = np.clip(r["e"], lo, hi)
        stable = r["e"] <= thr
        ax.hist([v[stable], v[~stable]], bins=bins, stacked=True, color=[COLOURS["stable"], COLOURS["unstable"]],
                label=[f"≤ {thr:g} (S)", f"> {thr:g}"])
        ax.axvline(thr, color=COLOURS["threshold"], ls="--", lw=1.2)
        ax.axvline(0.0, color="k", lw=0.6)
        n, ns = len(r["e"]), int(stable.sum())
        name = "no target" if r["condition"] is None else f"target {cond_label(r['condition'])}"
        ax.set_title(f"{name}\nn={n:,}, S {ns:,} ({100 * ns / n:.0f}%)", fontsize=9)
        beyond = int((r["e"] > hi).sum())
        if beyond:
            ax.text(0.98, 0.95, f"{beyond:,} > {hi:.2f}\n(in last bin)", transform=ax.transAxes, ha="right", va="top",
                    fontsize=7, color="0.3")
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[k:]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="upper right" if not int((rows[0]["e"] > hi).sum()) else "center right")
    fig.supxlabel("ML e_above_hull of the relaxed structure (eV/atom)", fontsize=9)
    fig.supylabel("candidates", fontsize=9)
    return fig, lo, hi


def band_gap_strips(rows: list[dict], tol: float):
    """ML band gaps per condition (``rows``: ``{"condition", "n", "gap", "hit"}``) as jittered strips over
    the target ± ``tol`` band, hits on top, the hit rate above each strip.  Returns ``(figure, sampled)``:
    how many conditions show a seeded sample of :data:`MAX_POINTS` points rather than all of theirs."""
    rng = np.random.default_rng(0)
    k = len(rows)
    fig = new_figure(max(6.5, 1.15 * k + 2.0), 4.8)
    ax = fig.add_subplot()
    ymax = 0.0
    sampled = 0
    texts = []
    for i, r in enumerate(rows):
        gap = np.array(r["gap"], dtype=float)
        hit = np.empty(len(r["hit"]), dtype=object)
        hit[:] = r["hit"]
        t = r["condition"]
        if t is not None:
            ax.fill_between([i - 0.42, i + 0.42], t - tol, t + tol, color=COLOURS["band"], alpha=0.55, lw=0, zorder=0)
            ax.plot([i - 0.42, i + 0.42], [t, t], color=COLOURS["target"], lw=1.6, zorder=1)
            ymax = max(ymax, t + tol)
        n = len(gap)
        idx = np.arange(n)
        if n > MAX_POINTS:
            idx = np.sort(rng.choice(n, MAX_POINTS, replace=False))
            sampled += 1
        x = i + rng.uniform(-0.33, 0.33, len(idx))
        for kind, mask in (("none", np.array([h is None for h in hit[idx]], dtype=bool)),  # hits drawn last, on top
                           ("miss", hit[idx] == False), ("hit", hit[idx] == True)):  # noqa: E712 (object array)
            if mask.any():
                ax.scatter(x[mask], gap[idx][mask], s=10, c=COLOURS[kind], alpha=0.65, lw=0, zorder=2)
        ev = int(sum(h is not None for h in hit))
        hits = int(sum(h is True for h in hit))
        if n:
            ymax = max(ymax, float(np.percentile(gap, 99.5)))
        texts.append(f"hit {100 * hits / ev:.0f}%\n{hits}/{ev}" if ev else "no target")
    top = ymax * 1.12 + 0.3
    for i, text in enumerate(texts):
        ax.text(i, top, text, ha="center", va="top", fontsize=8)
    ax.set_ylim(-0.2, top + 0.12 * top + 0.4)
    ax.set_xticks(range(k), [f"{cond_label(r['condition'])}\nn={r['n']:,}" for r in rows], fontsize=8)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel("band-gap condition (target of the generator)")
    ax.set_ylabel("ML band gap (eV)")
    ax.grid(axis="y", alpha=0.25)
    band_gap_legend(ax, tol)
    return fig, sampled


def band_gap_legend(ax, tol: float) -> None:
    """The band-gap strips' legend: tolerance band, target line, hit and miss markers."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=COLOURS["band"], alpha=0.55, label=f"target ± {tol:g} eV"),
                       Line2D([], [], color=COLOURS["target"], lw=1.6, label="target"),
                       Line2D([], [], ls="", marker="o", color=COLOURS["hit"], label="hit"),
                       Line2D([], [], ls="", marker="o", color=COLOURS["miss"], label="miss")],
              fontsize=8, loc="upper left", ncols=4, framealpha=0.9)


def parity_plots(e_pairs: list[tuple], gap_pairs: list[tuple], e_stats: dict, gap_stats: dict,
                 thresholds: tuple[float, float]):
    """ML against DFT e_above_hull (with the ML and DFT stability ``thresholds``) and band gap, side by side
    (pairs: ``(ml, dft, label)``; stats: ``{"n", "mae", "mean_error"}``)."""
    fig = new_figure(10.0, 4.7)
    a1, a2 = fig.subplots(1, 2)
    parity_panel(a1, e_pairs, "eV/atom", "e_above_hull", e_stats, thresholds)
    parity_panel(a2, gap_pairs, "eV", "band gap", gap_stats)
    return fig


def parity_panel(ax, pairs: list[tuple], unit: str, title: str, stats: dict, thresholds=None) -> None:
    """One parity panel: ML (x) against DFT (y), the diagonal, the thresholds dotted, MAE in a box."""
    if not pairs:
        ax.text(0.5, 0.5, "no candidate with both values", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    x = np.array([p[0] for p in pairs], dtype=float)
    y = np.array([p[1] for p in pairs], dtype=float)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = max(0.08 * (hi - lo), 0.05)
    lo, hi = lo - pad, hi + pad
    if thresholds:
        tx, ty = thresholds
        ax.axvline(tx, color=COLOURS["threshold"], ls=":", lw=1)
        ax.axhline(ty, color=COLOURS["threshold"], ls=":", lw=1)
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, zorder=0)
    ax.scatter(x, y, s=36, c="#4c72b0", edgecolors="k", linewidths=0.5, zorder=3)
    if len(pairs) <= 25:
        for (_, _, label), xi, yi in zip(pairs, x, y):
            ax.annotate(label, (xi, yi), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"ML ({unit})")
    ax.set_ylabel(f"DFT ({unit})")
    ax.set_title(title, fontsize=10)
    ax.text(0.03, 0.97, f"n = {stats['n']}\nMAE = {num(stats['mae'])} {unit}\nmean error (ML − DFT) = "
                        f"{num(stats['mean_error'], signed=True)}", transform=ax.transAxes, va="top", fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})
    ax.grid(alpha=0.25)
