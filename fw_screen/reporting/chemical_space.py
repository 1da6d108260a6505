"""Where in chemical space did the generator put its candidates?  matminer features + a 2-D PCA map.

Each structure becomes one row of cheap, offline features (matminer's magpie element data ships inside
the matminer package; nothing is downloaded):

* composition: ``ElementProperty`` (magpie preset, a readable subset of its element properties, with the
  statistics mean / avg_dev / minimum / maximum over the composition) and ``Stoichiometry`` (0-, 2- and
  3-norm; the 0-norm is the number of elements);
* structure: ``DensityFeatures`` (density, volume per atom, packing fraction) and, unless switched off,
  two ``GlobalSymmetryFeatures`` (crystal system as an integer, centrosymmetric or not).

:func:`chemical_space` featurises groups of structures (reference, valid, novel, ML-stable, DFT-confirmed,
chosen by the caller), standardises every feature with the mean and spread of all points together, fits a
2-component PCA on the reference group (on all points when the reference group has fewer than three
points) and projects every group onto it.  :func:`plot_chemical_space` draws the map.  :func:`load_groups`
samples a campaign's groups through :class:`fw_screen.store.results.ResultsStore`; :func:`campaign_chemical_space`
does both for a campaign, :func:`write_chemical_space` writes its PNG (and JSON) and
:func:`format_chemical_space` says what it found: ``fw-screen chemical-space CAMPAIGN`` (and
``analysis/chemical_space.py``, a thin call of it) is the command line.

A structure whose featurisation raises, or gives a non-finite value (an element magpie has no value for,
e.g. the electronegativity of He/Ne/Ar; an element pymatgen has no atomic radius for, e.g. Kr/Xe, for the
packing fraction), is dropped from its group and counted; the batch goes on.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fw_screen.state import DFT_DONE, ML_DONE_OR_LATER, NOVEL_OR_LATER

#: magpie element properties used (of the preset's 22): readable ones, without near-duplicates
#: (AtomicWeight ~ Number) or ones that mean little as a composition average (SpaceGroupNumber)
MAGPIE_PROPERTIES = ("Number", "MendeleevNumber", "MeltingT", "Column", "Row", "CovalentRadius",
                     "Electronegativity", "NsValence", "NpValence", "NdValence", "NfValence", "NValence",
                     "NUnfilled", "GSvolume_pa", "GSbandgap", "GSmagmom")
MAGPIE_STATS = ("mean", "avg_dev", "minimum", "maximum")
STOICHIOMETRY_P = (0, 2, 3)
SYMMETRY_FEATURES = ("crystal_system_int", "is_centrosymmetric")

#: per-group summary: readable name -> feature label
SUMMARY_FEATURES = {
    "mean_electronegativity": "MagpieData mean Electronegativity",
    "mean_atomic_number": "MagpieData mean Number",
    "mean_row": "MagpieData mean Row",
    "density": "density",
    "volume_per_atom": "vpa",
    "n_elements": "0-norm",
}

REFERENCE = "reference"
MIN_REFERENCE_FOR_FIT = 3


class Featurised(tuple):
    """``(X, feature_names)`` -- unpacks as a pair -- with the bookkeeping as attributes.

    * ``X``: float array, one row per structure kept (n × k);
    * ``feature_names``: the k matminer feature labels;
    * ``rows``: index into the input list of each row of ``X`` (sorted);
    * ``dropped``: ``{input index: reason}`` for structures whose featurisation failed or gave NaN/inf;
    * ``n_input``: how many structures came in (before sampling with ``max_per_group``).
    """

    def __new__(cls, X: np.ndarray, feature_names: list[str], rows: list[int], dropped: dict[int, str],
                n_input: int):
        self = super().__new__(cls, (X, feature_names))
        self.rows = rows
        self.dropped = dropped
        self.n_input = n_input
        return self

    @property
    def X(self) -> np.ndarray:
        return self[0]

    @property
    def feature_names(self) -> list[str]:
        return self[1]


# ------------------------------------------------------------------------------------ featurisation
@functools.lru_cache(maxsize=None)
def _featurizers(symmetry: bool):
    from matminer.featurizers.composition import ElementProperty, Stoichiometry
    from matminer.featurizers.structure import DensityFeatures, GlobalSymmetryFeatures
    from matminer.utils.data import MagpieData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # matminer >= 0.9.1: NaN for missing element data instead of a silent average
            element = ElementProperty(MagpieData(impute_nan=False), list(MAGPIE_PROPERTIES), list(MAGPIE_STATS),
                                      impute_nan=False)
        except TypeError:  # older matminer: never imputed
            element = ElementProperty(MagpieData(), list(MAGPIE_PROPERTIES), list(MAGPIE_STATS))
        composition = [element, Stoichiometry(p_list=list(STOICHIOMETRY_P), num_atoms=False)]
        structure = [DensityFeatures()]
        if symmetry:
            structure.append(GlobalSymmetryFeatures(list(SYMMETRY_FEATURES)))
    names = [label for f in composition + structure for label in f.feature_labels()]
    return composition, structure, names


def feature_names(symmetry: bool = True) -> list[str]:
    """The labels of the columns :func:`featurise` returns."""
    return list(_featurizers(symmetry)[2])


def _as_structure(item):
    from pymatgen.core import Structure

    if isinstance(item, Structure):
        return item
    if isinstance(item, dict):
        return Structure.from_dict(item)
    raise TypeError(f"not a pymatgen Structure (or its dict): {type(item).__name__}")


def _row(item, composition_featurizers, structure_featurizers, cache: dict) -> list[float]:
    structure = _as_structure(item)
    if len(structure) == 0:
        raise ValueError("structure has no sites")
    comp = structure.composition.element_composition
    no_radius = [el.symbol for el in comp.elements if el.atomic_radius is None]
    if no_radius:  # DensityFeatures would fail on ``None ** 3``: say why instead
        raise ValueError(f"no atomic radius for {', '.join(no_radius)} (packing fraction)")
    key = comp.fractional_composition.formula  # the composition features depend on fractions only
    if key not in cache:
        cache[key] = [float(v) for f in composition_featurizers for v in f.featurize(comp)]
    values = list(cache[key])
    for f in structure_featurizers:
        values.extend(float(v) for v in f.featurize(structure))
    return values


def _sample(n: int, max_n: int | None, seed) -> list[int]:
    if max_n is None or n <= max_n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=max(int(max_n), 0), replace=False))


def featurise(structures: Sequence, max_per_group: int | None = None, seed: int = 0,
              symmetry: bool = True) -> Featurised:
    """Featurise structures: ``X, feature_names = featurise(structures)``.

    ``structures``: pymatgen Structures (their ``as_dict()`` dicts are accepted too).  When there are more
    than ``max_per_group``, a random subset of that size (seeded by ``seed``) is featurised.  A structure
    that fails or gives a non-finite feature is left out; the returned :class:`Featurised` tells which
    (``.dropped``: input index -> reason) and which input each row is (``.rows``).  ``symmetry=False``
    skips the spglib features (about half the time).
    """
    composition_f, structure_f, names = _featurizers(bool(symmetry))
    structures = list(structures)
    chosen = _sample(len(structures), max_per_group, seed)
    rows, kept, dropped = [], [], {}
    cache: dict = {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for i in chosen:
            try:
                values = _row(structures[i], composition_f, structure_f, cache)
            except Exception as exc:  # noqa: BLE001 -- any failure drops this structure only
                dropped[i] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            bad = [n for n, v in zip(names, values) if not math.isfinite(v)]
            if bad:
                dropped[i] = "non-finite " + ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
                continue
            rows.append(values)
            kept.append(i)
    X = np.array(rows, dtype=float).reshape(len(rows), len(names))
    return Featurised(X, list(names), kept, dropped, len(structures))


# ------------------------------------------------------------------------------------ groups of a campaign
def _get(doc: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


#: candidate groups, in drawing order: name -> (membership test on a ``store.stage_flags`` document,
#: structure field used with ``relaxed=True``).  Groups nest: every novel candidate is also valid.
GROUPS = {
    "valid": (lambda d: True, None),  # stage_flags returns valid-or-later candidates only
    "novel": (lambda d: d.get("status") in NOVEL_OR_LATER, None),
    "ML-stable": (lambda d: d.get("status") in ML_DONE_OR_LATER and _get(d, "ml.stable") is True,
                  "ml.structure_relaxed"),
    "DFT-confirmed": (lambda d: d.get("status") == DFT_DONE and _get(d, "dft.stable") is True,
                      "dft.structure_relaxed"),
}


def _sample_ids(ids: list, max_n: int, seed: int, name: str) -> list:
    """A seeded sample of sorted ids, in sorted order (the same for the same seed, ids and group name)."""
    ids = sorted(ids)
    if len(ids) <= max_n:
        return ids
    rng = np.random.default_rng(_group_seed(seed, name))
    return [ids[i] for i in sorted(rng.choice(len(ids), size=max_n, replace=False))]


def _structures(ids: list, docs: dict, fields: list[str]) -> list:
    """Structures of ``ids`` in that order: the first of ``fields`` a document has; unreadable ones skipped."""
    from pymatgen.core import Structure

    out = []
    for _id in ids:
        s = next((v for v in (_get(docs.get(_id, {}), f) for f in fields) if v), None)
        if s is None:
            continue
        try:
            out.append(Structure.from_dict(s))
        except Exception:  # noqa: BLE001 -- an unreadable stored structure is left out, not fatal
            continue
    return out


def load_groups(store, campaign: str, max_per_group: int = 1000, seed: int = 0,
                relaxed: bool = False) -> tuple[dict[str, list], dict[str, int]]:
    """Seeded samples of each group's structures: ``(groups {name: [Structure]}, totals {name: count})``.

    Groups: reference (the ``references`` collection), then :data:`GROUPS` (valid, novel, ML-stable,
    DFT-confirmed).  One indexed query reads only ``_id/status/ml.stable/dft.stable`` of the campaign's valid
    candidates; the structures of the (at most ``max_per_group`` per group) sampled ids are then fetched by
    ``_id``, each document once.  The same seed and database give the same sample.  ``relaxed``: ML-stable /
    DFT-confirmed use ``ml.structure_relaxed`` / ``dft.structure_relaxed`` where there is one.
    """
    from fw_screen.store import CANDIDATES, REFERENCES

    ref_ids_all = store.reference_ids()
    totals: dict[str, int] = {REFERENCE: len(ref_ids_all)}
    ref_ids = _sample_ids(ref_ids_all, max_per_group, seed, REFERENCE)
    groups = {REFERENCE: _structures(ref_ids, store.documents_by_id(REFERENCES, ref_ids, ["structure"]),
                                     ["structure"])}
    flags = store.stage_flags(campaign)
    chosen: dict[str, list] = {}
    for name, (member, _) in GROUPS.items():
        ids = [d["_id"] for d in flags if member(d)]
        totals[name] = len(ids)
        chosen[name] = _sample_ids(ids, max_per_group, seed, name)
    fields = ["structure"] + sorted({f for _, f in GROUPS.values() if f}) if relaxed else ["structure"]
    docs = store.documents_by_id(CANDIDATES, sorted({i for ids in chosen.values() for i in ids}), fields)
    for name, (_, relaxed_field) in GROUPS.items():
        order = [relaxed_field, "structure"] if relaxed and relaxed_field else ["structure"]
        groups[name] = _structures(chosen[name], docs, order)
    return groups, totals


# ------------------------------------------------------------------------------------------- the map
def _group_seed(seed: int, group: str) -> list[int]:
    return [int(seed), zlib.crc32(group.encode())]


_READABLE = {"0-norm": "number of elements", "2-norm": "stoichiometry 2-norm", "3-norm": "stoichiometry 3-norm",
             "vpa": "volume per atom", "crystal_system_int": "crystal system (1 cubic .. 7 triclinic)",
             "is_centrosymmetric": "centrosymmetric"}


def _short(label: str) -> str:
    return _READABLE.get(label, label.replace("MagpieData ", ""))


def chemical_space(groups: dict[str, Sequence], max_per_group: int = 1000, seed: int = 0,
                   symmetry: bool = True, n_loadings: int = 5, fit_on: str = "auto") -> dict:
    """Featurise each group, standardise on all points, PCA to 2-D (fit on ``reference`` if it has ≥ 3).

    ``groups``: ``{name: [Structure, ...]}``, in the order to draw them; the group called ``"reference"``
    (if any) is the backdrop and the PCA basis.  Groups may be empty.  Returns a JSON-serialisable dict:
    ``method``, ``feature_names``, ``explained_variance`` (ratio per PC, of the points the PCA was fit on),
    ``fit_on``, ``points`` ({group: [[x, y], ...]}), ``n`` (points used), ``n_input``, ``dropped`` (count),
    ``dropped_examples`` (first few input indices with reasons), ``loadings`` (top features per PC),
    ``summary`` ({group: {feature: {mean, median}}}).

    ``fit_on``: ``"auto"`` (reference when it has ≥ 3 points, else all), ``"reference"`` (same, stated),
    ``"all"`` (all points, e.g. when the reference set covers only a few chemical systems).
    """
    if fit_on not in ("auto", REFERENCE, "all"):
        raise ValueError(f"fit_on must be 'auto', 'reference' or 'all', not {fit_on!r}")
    from sklearn.decomposition import PCA

    names = list(groups)
    feats: dict[str, Featurised] = {
        g: featurise(groups[g], max_per_group=max_per_group, seed=_group_seed(seed, g), symmetry=symmetry)
        for g in names}
    labels = feature_names(symmetry)
    blocks = [feats[g].X for g in names]
    X_all = np.vstack(blocks) if blocks else np.zeros((0, len(labels)))

    # standardise with all points; features constant over all points carry no information: left out
    if len(X_all):
        mean, std = X_all.mean(axis=0), X_all.std(axis=0)
    else:
        mean, std = np.zeros(len(labels)), np.zeros(len(labels))
    keep = std > 1e-12 * np.maximum(1.0, np.abs(mean))
    used = [lab for lab, k in zip(labels, keep) if k]

    def scale(X: np.ndarray) -> np.ndarray:
        return (X[:, keep] - mean[keep]) / std[keep]

    n_ref = len(feats[REFERENCE].X) if REFERENCE in feats else 0
    fit_on = REFERENCE if fit_on != "all" and n_ref >= MIN_REFERENCE_FOR_FIT else "all"
    X_fit = scale(feats[REFERENCE].X) if fit_on == REFERENCE else scale(X_all)
    n_comp = min(2, X_fit.shape[0], X_fit.shape[1]) if X_fit.shape[0] >= 2 else 0

    points: dict[str, list] = {}
    explained: list = []
    loadings: dict[str, list] = {}
    if n_comp >= 1:
        pca = PCA(n_components=n_comp, svd_solver="full").fit(X_fit)
        total = float(np.sum(X_fit.var(axis=0, ddof=1))) if X_fit.shape[0] > 1 else 0.0
        explained = [round(v / total, 4) + 0.0 if total > 0 and math.isfinite(v / total) else None
                     for v in map(float, pca.explained_variance_)]
        components = pca.components_
        for g in names:
            P = pca.transform(scale(feats[g].X)) if len(feats[g].X) else np.zeros((0, n_comp))
            P = np.hstack([P, np.zeros((len(P), 2 - n_comp))])
            points[g] = [[round(float(x), 4) + 0.0, round(float(y), 4) + 0.0] for x, y in P]  # no -0.0
        for k in range(n_comp):
            order = np.argsort(-np.abs(components[k]), kind="stable")[:n_loadings]
            loadings[f"PC{k + 1}"] = [{"feature": used[j], "loading": round(float(components[k][j]), 4)}
                                      for j in order]
    else:  # fewer than two points to fit on, or every feature constant: every point at the origin
        for g in names:
            points[g] = [[0.0, 0.0] for _ in range(len(feats[g].X))]

    summary = {}
    for g in names:
        X = feats[g].X
        summary[g] = {}
        for readable, label in SUMMARY_FEATURES.items():
            col = X[:, labels.index(label)] if len(X) else np.zeros(0)
            summary[g][readable] = ({"mean": round(float(col.mean()), 4), "median": round(float(np.median(col)), 4)}
                                    if len(col) else {"mean": None, "median": None})

    sym = "; GlobalSymmetryFeatures (" + ", ".join(SYMMETRY_FEATURES) + ")" if symmetry else ""
    method = (f"matminer features per structure: ElementProperty magpie ({len(MAGPIE_PROPERTIES)} element "
              f"properties x {'/'.join(MAGPIE_STATS)} over the composition), Stoichiometry "
              f"({', '.join(f'{p}-norm' for p in STOICHIOMETRY_P)}), DensityFeatures (density, volume per "
              f"atom, packing fraction){sym}. Up to {max_per_group} structures per group (seeded random "
              f"sample, seed {seed}); structures with a failed or non-finite feature dropped. Features "
              f"standardised with the mean and standard deviation of all points ({len(used)} of "
              f"{len(labels)} non-constant features kept); 2-component PCA fit on "
              + ("the reference structures" if fit_on == REFERENCE else
                 "all points" + ("" if n_ref >= MIN_REFERENCE_FOR_FIT else
                                 f" (fewer than {MIN_REFERENCE_FOR_FIT} reference structures)"))
              + ", every group projected onto it.")

    return {
        "method": method,
        "feature_names": used,
        "explained_variance": explained,
        "fit_on": fit_on,
        "points": points,
        "n": {g: len(feats[g].X) for g in names},
        "n_input": {g: feats[g].n_input for g in names},
        "dropped": {g: len(feats[g].dropped) for g in names},
        "dropped_examples": {g: [{"index": i, "reason": r} for i, r in list(feats[g].dropped.items())[:5]]
                             for g in names},
        "loadings": loadings,
        "summary": summary,
    }


# ------------------------------------------------------------------------------------------ the plot
#: marker, colour, size for generated groups, in the order they are drawn (later = on top)
_STYLES = [("o", "#1f77b4", 14), ("s", "#ff7f0e", 22), ("^", "#2ca02c", 40), ("*", "#d62728", 140),
           ("D", "#9467bd", 40), ("P", "#8c564b", 50), ("X", "#e377c2", 50), ("v", "#17becf", 40)]


def _axis_label(result: dict, k: int) -> str:
    pc = f"PC{k + 1}"
    ev = result.get("explained_variance") or []
    text = pc + (f" ({100 * ev[k]:.0f}% of variance)" if k < len(ev) and ev[k] is not None else "")
    top = (result.get("loadings") or {}).get(pc, [])[:3]
    if top:
        text += ": " + ", ".join(f"{'+' if t['loading'] >= 0 else '−'}{_short(t['feature'])}" for t in top)
    return text


def _count(result: dict, g: str) -> str:
    n = result["n"].get(g, len(result["points"].get(g, [])))
    total = (result.get("population") or {}).get(g)
    return f"{n:,} of {total:,}" if total is not None and total != n else f"n={n:,}"


def plot_chemical_space(result: dict, ax=None, title: str | None = None):
    """Scatter of :func:`chemical_space`'s result: reference in grey underneath, generated groups on top.

    Draws on ``ax`` when given, else on a new Figure (Agg canvas, no display needed); returns the Figure.
    One scatter per group (empty groups too, so the legend shows n=0).
    """
    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 6.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    fig = ax.figure
    styles = iter(_STYLES * (1 + len(result["points"]) // len(_STYLES)))
    for z, (g, pts) in enumerate(result["points"].items()):
        P = np.asarray(pts, dtype=float).reshape(-1, 2)
        if g == REFERENCE:
            ax.scatter(P[:, 0], P[:, 1], s=10, c="0.72", marker="o", linewidths=0, alpha=0.7, zorder=1,
                       label=f"{g} ({_count(result, g)})")
        else:
            marker, colour, size = next(styles)
            ax.scatter(P[:, 0], P[:, 1], s=size, c=colour, marker=marker, alpha=0.8 if size < 30 else 0.95,
                       edgecolors="k" if size >= 30 else "none", linewidths=0.4, zorder=2 + z,
                       label=f"{g} ({_count(result, g)})")
    ax.set_xlabel(_axis_label(result, 0), fontsize=8)
    ax.set_ylabel(_axis_label(result, 1), fontsize=8)
    fit = "reference structures" if result.get("fit_on") == REFERENCE else "all points"
    ax.set_title(title or f"Chemical space: PCA of matminer features (fit on {fit})", fontsize=10)
    if result["points"]:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.grid(alpha=0.25)
    return fig


def groups_summary_table(result: dict, features: Iterable[str] = tuple(SUMMARY_FEATURES)) -> str:
    """The per-group summary as aligned text (for a terminal)."""
    features = list(features)
    head = f"{'group':>16} {'n':>6} {'dropped':>7} " + " ".join(f"{f[:18]:>18}" for f in features)
    lines = [head, f"{'':>31} " + " ".join(f"{'mean / median':>18}" for _ in features)]
    for g, s in result["summary"].items():
        cells = []
        for f in features:
            m, md = s[f]["mean"], s[f]["median"]
            cells.append(f"{'—':>18}" if m is None else f"{f'{m:.2f} / {md:.2f}':>18}")
        lines.append(f"{g:>16} {result['n'][g]:>6} {result['dropped'][g]:>7} " + " ".join(cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ a campaign's map
def default_png(campaign: str) -> str:
    """Where ``fw-screen chemical-space`` writes its map unless told: ``chemical_space_CAMPAIGN.png``."""
    return f"chemical_space_{campaign}.png"


def campaign_chemical_space(store, campaign: str, max_per_group: int = 1000, seed: int = 0,
                            fit_on: str = "auto", relaxed: bool = False, symmetry: bool = True) -> dict:
    """The chemical-space map of a campaign: :func:`load_groups` then :func:`chemical_space`.

    Returns :func:`chemical_space`'s dict with ``campaign``, ``population`` (``{group: total}`` before
    sampling), ``structures`` (as generated, or relaxed for ML-stable / DFT-confirmed) and ``timing_s``
    (``load``, ``featurise_and_pca``) added.  The database is only read.
    """
    t0 = time.perf_counter()
    groups, totals = load_groups(store, campaign, max_per_group, seed, relaxed=relaxed)
    t1 = time.perf_counter()
    result = chemical_space(groups, max_per_group=max_per_group, seed=seed, symmetry=symmetry, fit_on=fit_on)
    t2 = time.perf_counter()
    result["campaign"] = campaign
    result["population"] = totals
    result["structures"] = "relaxed (ML-stable, DFT-confirmed)" if relaxed else "as generated"
    result["timing_s"] = {"load": round(t1 - t0, 2), "featurise_and_pca": round(t2 - t1, 2)}
    return result


def has_candidates(result: dict) -> bool:
    """Whether any group but the reference has a member (a campaign without valid candidates has none)."""
    totals = result["population"]
    return any(totals[g] for g in totals if g != REFERENCE)


def write_chemical_space(result: dict, png: str | Path | None = None, json_path: str | Path | None = None) -> str:
    """Draw :func:`campaign_chemical_space`'s result to ``png`` (default :func:`default_png`, 150 dpi) and,
    with ``json_path``, write the result there as JSON; returns the PNG's path."""
    fig = plot_chemical_space(result, title=f"{result['campaign']}: where the generator put its candidates "
                                            f"(PCA of matminer features, fit on {result['fit_on']})")
    out = str(png or default_png(result["campaign"]))
    fig.savefig(out, dpi=150)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(result, fh, allow_nan=False)
    return out


def format_chemical_space(result: dict, png: str, json_path: str | Path | None = None) -> str:
    """What ``fw-screen chemical-space`` prints: the per-group summary, sampled / total per group, the
    PCA's explained variance and top loadings, the timings and the files written."""
    totals, timing = result["population"], result["timing_s"]
    lines = [groups_summary_table(result),
             "\nsampled / total: " + ", ".join(f"{g} {result['n_input'][g]}/{totals[g]}" for g in totals)]
    ev = ", ".join(f"{100 * v:.1f}%" for v in result["explained_variance"] if v is not None)
    lines.append(f"PCA fit on {result['fit_on']}; explained variance {ev}")
    for pc, rows in result["loadings"].items():
        lines.append(f"  {pc}: " + ", ".join(f"{r['feature']} ({r['loading']:+.2f})" for r in rows[:4]))
    lines.append(f"load {timing['load']:.1f} s, featurise + PCA {timing['featurise_and_pca']:.1f} s; wrote {png}"
                 + (f" and {json_path}" if json_path else ""))
    return "\n".join(lines)
