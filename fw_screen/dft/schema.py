"""The DFT result of a candidate, one schema for every DFT code (Quantum ESPRESSO and VASP).

A candidate's ``dft`` field holds what the code computed and what fw-screen concluded from it:

* from the code: ``code`` (``qe`` | ``vasp``), ``status``/``reason``, ``structure`` (relaxed), energies
  (``energy_per_atom``, ...), ``band_gap`` (``{"band_gap", "is_direct", "is_metal", ...}``);
* the hull: ``hull_status`` (``waiting`` for reference phases | ``done`` | ``failed`` | ``not_computed``, with
  ``hull_reason``), ``e_above_hull``, ``formation_energy_per_atom``, ``decomposition``, ``stable``
  (``e_above_hull <= dft.stability_threshold``);
* the verdicts: ``hits`` (the generator's targets against the DFT band gap and hull,
  :func:`fw_screen.science.band_gap.target_hits`) and ``ml_vs_dft`` (the ML numbers beside the DFT ones).

:func:`band_gap_fields` and :func:`hull_fields` compute the verdicts; :func:`complete` gives a finished
result every field at once.  QE completes its result in two steps (the band gap when the candidate's chain
ends, the hull once its consistently computed reference phases are in); VASP's hull is on the MP2020 scale
and is known when its runs end.  Pure: dicts in, dicts out.
"""

from __future__ import annotations

from fw_screen.science.band_gap import target_hits
from fw_screen.spec import CampaignSpec


def _gap(band_gap: dict | None) -> float | None:
    return (band_gap or {}).get("band_gap")


def band_gap_fields(gap: float | None, candidate: dict, spec: CampaignSpec) -> dict:
    """``hits`` (hull not known yet) and the band-gap half of ``ml_vs_dft``."""
    hits = target_hits(gap, None, candidate.get("targets") or {}, spec.property.band_gap_tolerance,
                       spec.dft.stability_threshold)
    ml_gap = _gap((candidate.get("ml") or {}).get("band_gap"))
    return {"hits": hits, "ml_vs_dft": {"band_gap_ml": ml_gap, "band_gap_dft": gap,
                                        "band_gap_error": None if ml_gap is None or gap is None else ml_gap - gap}}


def hull_fields(e_above_hull: float, gap: float | None, candidate: dict, spec: CampaignSpec) -> dict:
    """``hull_status`` done, ``stable``, ``hits`` with the hull, and the hull half of ``ml_vs_dft``
    (``ml_vs_dft`` holds only its hull keys here: a caller merges it, or writes it as dotted keys)."""
    thr = spec.dft.stability_threshold
    hits = target_hits(gap, e_above_hull, candidate.get("targets") or {}, spec.property.band_gap_tolerance, thr)
    ml_e = (candidate.get("ml") or {}).get("e_above_hull")
    return {"hull_status": "done", "stable": e_above_hull <= thr, "hits": hits,
            "ml_vs_dft": {"e_above_hull_ml": ml_e,
                          "e_above_hull_error": None if ml_e is None else ml_e - e_above_hull}}


def complete(result: dict, candidate: dict, spec: CampaignSpec) -> dict:
    """A finished DFT result with every verdict field: the band-gap verdicts, and the hull's when the result
    carries ``e_above_hull`` (else ``hull_status`` ``not_computed`` with the result's reason)."""
    out = dict(result)
    if out.get("status") != "dft_done":
        return out
    gap = _gap(out.get("band_gap"))
    bg = band_gap_fields(gap, candidate, spec)
    out["hits"], ml_vs_dft = bg["hits"], dict(bg["ml_vs_dft"])
    if out.get("e_above_hull") is not None:
        hull = hull_fields(out["e_above_hull"], gap, candidate, spec)
        ml_vs_dft.update(hull.pop("ml_vs_dft"))
        out.update(hull)
    else:
        out["hull_status"], out["hull_reason"] = "not_computed", out.get("reason")
    out["ml_vs_dft"] = ml_vs_dft
    return out
