"""The generation metrics of the papers, each with its definition and source (pure: sums in, numbers out).

``fw-screen metrics CAMPAIGN`` puts a campaign beside CrystaLLM-pi, MatterGen, DiffCSP and Matbench
Discovery.  The database sums what each metric needs in one aggregation
(:meth:`fw_screen.store.results.ResultsStore.metric_count_rows`); :func:`values` turns one row of sums (a condition, or
the campaign: :func:`add_rows`) into the numbers.  Every rate is over *all generated* structures (``n``,
invalid ones included), as the papers count, unless its definition names another denominator.

Where fw-screen's funnel makes a definition narrower than the paper's, the definition says so: the ML band
gap exists only for candidates that reached the ML stage (novel ones), so its MAE is over those; relaxed
uniqueness and novelty exist only for ML-relaxed candidates.
"""

from __future__ import annotations

import math

from scipy.stats import wasserstein_distance

CRYSTALLM_PI = "CrystaLLM-pi (Bone et al. 2025)"
MATTERGEN = "MatterGen (Zeni et al., Nature 2025)"
DIFFCSP = "DiffCSP (Jiao et al., NeurIPS 2023; CDVAE's protocol)"
MATBENCH = "Matbench Discovery (Riebesell et al. 2025)"


def definitions(thresholds: list[float], stability_threshold: float) -> list[dict]:
    """[{key, name, definition, source}] in table order (keys of :func:`values`)."""
    out = [
        {"key": "n", "name": "generated", "source": "-",
         "definition": "structures submitted (every input row, parsed or not)"},
        {"key": "V", "name": "V", "source": CRYSTALLM_PI,
         "definition": "valid by the campaign's validity.required checks / generated"},
        {"key": "VU", "name": "VU", "source": CRYSTALLM_PI,
         "definition": "valid and not a StructureMatcher duplicate of an earlier generated structure / generated"},
        {"key": "VUN", "name": "VUN", "source": CRYSTALLM_PI,
         "definition": "valid, unique and matching no reference structure (generated cell) / generated"},
    ]
    for t in thresholds:
        out.append({"key": f"VSUN@{t:g}", "name": f"VSUN (e_hull <= {t:g})", "source": CRYSTALLM_PI,
                    "definition": f"VUN on the generated cell and ML e_above_hull (relaxed, reference hull) <= {t:g} "
                                  "eV/atom / generated"})
    for t in thresholds:
        label = "S.U.N." if t == 0 else "MSUN" if t == stability_threshold else f"SUN@{t:g}"
        out.append({"key": f"SUN@{t:g}", "name": f"{label} (e_hull <= {t:g})", "source": MATTERGEN,
                    "definition": f"ML-relaxed, e_above_hull <= {t:g} eV/atom on the reference hull, the relaxed "
                                  "structure matching no reference and no relaxed candidate lower above the hull "
                                  "/ generated"})
        out.append({"key": f"SUN_sc@{t:g}", "name": f"{label}, self-consistent hull", "source": MATTERGEN,
                    "definition": f"as {label}, e_above_hull on the reference hull joined by the campaign's "
                                  "relaxed ML-stable novel unique candidates / generated"})
    out += [
        {"key": "relaxed_known_rate", "name": "relaxed onto a known phase", "source": MATTERGEN,
         "definition": "ML-relaxed candidates (novel as generated) whose relaxed structure matches a reference / "
                       "ML-relaxed candidates checked after relaxation"},
        {"key": "relaxed_duplicate_rate", "name": "relaxed onto another candidate", "source": MATTERGEN,
         "definition": "ML-relaxed candidates whose relaxed structure matches one lower above the hull / "
                       "ML-relaxed candidates checked after relaxation"},
        {"key": "composition_novelty", "name": "composition novelty", "source": MATTERGEN,
         "definition": "valid unique candidates whose reduced formula no reference structure has / valid unique"},
        {"key": "rmsd_relaxed_mean", "name": "RMSD generated -> relaxed (A)", "source": MATTERGEN,
         "definition": "mean over ML-relaxed candidates of the RMS displacement of the atoms from the generated "
                       "to the ML-relaxed cell (Angstrom; rigid translation removed)"},
        {"key": "spacegroup_kept", "name": "kept space group", "source": MATBENCH,
         "definition": "ML-relaxed candidates whose space group (SpacegroupAnalyzer, symprec 0.1) is the "
                       "generated one's / ML-relaxed candidates with both"},
        {"key": "validity_composition", "name": "composition validity (SMACT)", "source": DIFFCSP,
         "definition": "SMACT charge-neutral, electronegativity-balanced composition / generated"},
        {"key": "validity_structure", "name": "structural validity", "source": DIFFCSP,
         "definition": "every interatomic distance > validity.min_distance and cell volume > validity.min_volume "
                       "/ generated"},
        {"key": "validity_both", "name": "composition and structure valid", "source": DIFFCSP,
         "definition": "both of the two above / generated"},
        {"key": "wdist_density", "name": "Wasserstein distance, density (g/cm3)", "source": DIFFCSP,
         "definition": "1-D Wasserstein distance between the densities of the valid candidates and of the "
                       "active reference structures"},
        {"key": "wdist_nelements", "name": "Wasserstein distance, number of elements", "source": DIFFCSP,
         "definition": "1-D Wasserstein distance between the numbers of elements of the valid candidates and of "
                       "the active reference structures"},
        {"key": "band_gap_mae_ml", "name": "band-gap MAE vs target, ML (eV)", "source": CRYSTALLM_PI,
         "definition": "mean |ML band gap - target| over candidates with both (the ML stage's: novel ones)"},
        {"key": "band_gap_mae_dft_lite", "name": "band-gap MAE vs target, DFT-lite (eV)", "source": CRYSTALLM_PI,
         "definition": "mean |DFT-lite (QE PBE) band gap - target| over candidates with both"},
        {"key": "band_gap_mae_dft", "name": "band-gap MAE vs target, DFT (eV)", "source": CRYSTALLM_PI,
         "definition": "mean |DFT band gap - target| over DFT-done candidates with a target"},
        {"key": "dft_n", "name": "ML vs DFT stability: candidates", "source": MATBENCH,
         "definition": "DFT-done candidates with an ML and a DFT e_above_hull"},
        {"key": "F1", "name": "F1, ML stability vs DFT", "source": MATBENCH,
         "definition": "F1 of 'ML e_above_hull <= 0' against 'DFT e_above_hull <= 0' over those"},
        {"key": "DAF", "name": "discovery acceleration factor", "source": MATBENCH,
         "definition": "precision of 'ML e_above_hull <= 0' / share of DFT-stable among those (1 = no better "
                       "than picking at random from the promoted)"},
    ]
    return out


def _rate(k, n):
    return k / n if n else None


def wasserstein(a: list[float], b: list[float]) -> float | None:
    """scipy's 1-D Wasserstein (earth mover's) distance, None when either sample is empty."""
    return float(wasserstein_distance(a, b)) if a and b else None


def values(row: dict, thresholds: list[float], reference: dict) -> dict:
    """The metrics of one row of sums (:meth:`~fw_screen.store.results.ResultsStore.metric_count_rows`), with the
    reference distributions ``{"density": [...], "nelements": [...]}``."""
    n = row["n"]
    out = {"n": n, "V": _rate(row["valid"], n), "VU": _rate(row["valid_unique"], n), "VUN": _rate(row["vun"], n)}
    for t in thresholds:
        c = row["by_threshold"][t]
        out[f"VSUN@{t:g}"] = _rate(c["vsun"], n)
        out[f"SUN@{t:g}"] = _rate(c["sun"], n) if row["relaxed_checked"] or not row["relaxed"] else None
        out[f"SUN_sc@{t:g}"] = _rate(c["sun_sc"], n) if row["relaxed_checked"] or not row["relaxed"] else None
    out["relaxed_known_rate"] = _rate(row["relaxed_known"], row["relaxed_checked"])
    out["relaxed_duplicate_rate"] = _rate(row["relaxed_duplicate"], row["relaxed_checked"])
    out["composition_novelty"] = _rate(row["novel_composition"], row["valid_unique"])
    out["rmsd_relaxed_mean"] = _rate(row["rmsd_sum"], row["rmsd_n"])
    out["spacegroup_kept"] = _rate(row["spacegroup_kept"], row["spacegroup_n"])
    out["validity_composition"] = _rate(row["smact"], n)
    out["validity_structure"] = _rate(row["structural"], n)
    out["validity_both"] = _rate(row["smact_and_structural"], n)
    out["wdist_density"] = wasserstein(row["density"], reference["density"])
    out["wdist_nelements"] = wasserstein(row["nelements"], reference["nelements"])
    for name in ("ml", "dft_lite", "dft"):
        out[f"band_gap_mae_{name}"] = _rate(row[f"gap_{name}_abs_sum"], row[f"gap_{name}_n"])
    tp, fp, fn, tn = (row[f"dft_{k}"] for k in ("tp", "fp", "fn", "tn"))
    total = tp + fp + fn + tn
    out["dft_n"] = total
    precision, recall = _rate(tp, tp + fp), _rate(tp, tp + fn)
    out["F1"] = (2 * precision * recall / (precision + recall)) if precision and recall else (
        0.0 if total and (tp + fp) and (tp + fn) else None)
    prevalence = _rate(tp + fn, total)
    out["DAF"] = precision / prevalence if precision is not None and prevalence else None
    # the counts behind the rates, for a reader who wants them
    out["counts"] = {k: v for k, v in row.items() if k not in ("condition", "density", "nelements", "by_threshold")}
    out["counts"].update({f"{key}@{t:g}": row["by_threshold"][t][key] for t in thresholds
                          for key in ("vsun", "sun", "sun_sc")})
    return out


def add_rows(rows: list[dict]) -> dict:
    """The campaign's sums from its per-condition rows (counts added, samples joined)."""
    total: dict = {"condition": "all", "by_threshold": {}, "density": [], "nelements": []}
    for r in rows:
        for k, v in r.items():
            if k in ("density", "nelements"):
                total[k].extend(v)
            elif k == "by_threshold":
                for t, c in v.items():
                    slot = total["by_threshold"].setdefault(t, {})
                    for key, x in c.items():
                        slot[key] = slot.get(key, 0) + x
            elif k != "condition" and isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    return total


def fmt(value, key: str) -> str:
    """A metric for a table: rates as percentages, distances and MAEs to 3 decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in ("n", "dft_n"):
        return str(int(value))
    if key in ("DAF",) or key.startswith(("wdist", "band_gap_mae", "rmsd")):
        return f"{value:.3f}"
    if key == "F1":
        return f"{value:.2f}"
    return f"{100 * value:.1f}%"
