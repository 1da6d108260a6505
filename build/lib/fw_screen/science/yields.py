"""Funnel yields as CrystaLLM-pi and MatterGen define them: V, VU, VUN, VSUN and target hits from candidate
records, and rates from counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from fw_screen.science.band_gap import as_number


# -------------------------------------------------------------------------------------------- yields
def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def yields(records: Iterable[dict], stability_threshold: float = 0.1) -> dict:
    """Campaign rates from per-candidate dicts (the reference for the MongoDB aggregation).

    Each record: ``{"valid": bool, "unique": bool, "novel": bool, "e_above_hull": float | None,
    "band_gap_hit": bool | None}``; a missing key or None counts as False (``e_above_hull``: as not
    evaluated; NaN likewise).  One record per generated input, invalid ones included.

    Definitions (CrystaLLM-pi, MatterGen): every rate V, VU, VUN, VSUN has the **number of generated
    inputs N** as denominator, and each flag is the conjunction with the ones before it:

    * ``V``    = valid / N
    * ``VU``   = valid and unique / N
    * ``VUN``  = valid and unique and novel / N
    * ``VSUN`` = valid and unique and novel and stable / N, stable = ``e_above_hull <= stability_threshold``
      (eV/atom; a VUN candidate without ``e_above_hull`` is not stable)
    * ``stable_among_vun_evaluated`` = VSUN / (VUN candidates with an ``e_above_hull``)
    * ``band_gap_hit_among_valid`` = valid with ``band_gap_hit is True`` / valid (a valid candidate without a
      prediction counts as a miss); ``band_gap_hit_among_valid_evaluated`` divides by the valid candidates
      whose ``band_gap_hit`` is not None instead
    * ``band_gap_hit_among_vsun`` and ``band_gap_hit_among_vsun_evaluated``: the same within VSUN.

    A rate whose denominator is 0 is None.  Returns ``{"n", "stability_threshold", "counts": {...},
    "rates": {...}}`` with the counts ``valid``, ``valid_unique``, ``vun``, ``vun_evaluated``, ``vsun``,
    ``valid_band_gap_evaluated``, ``valid_band_gap_hits``, ``vsun_band_gap_evaluated``, ``vsun_band_gap_hits``.
    """
    c = dict.fromkeys(("valid", "valid_unique", "vun", "vun_evaluated", "vsun", "valid_band_gap_evaluated",
                       "valid_band_gap_hits", "vsun_band_gap_evaluated", "vsun_band_gap_hits"), 0)
    n = 0
    for r in records:
        n += 1
        if not r.get("valid"):
            continue
        c["valid"] += 1
        hit = r.get("band_gap_hit")
        if hit is not None:
            c["valid_band_gap_evaluated"] += 1
            c["valid_band_gap_hits"] += bool(hit)
        if not r.get("unique"):
            continue
        c["valid_unique"] += 1
        if not r.get("novel"):
            continue
        c["vun"] += 1
        e = as_number(r.get("e_above_hull"))
        if e is None:
            continue
        c["vun_evaluated"] += 1
        if e > stability_threshold:
            continue
        c["vsun"] += 1
        if hit is not None:
            c["vsun_band_gap_evaluated"] += 1
            c["vsun_band_gap_hits"] += bool(hit)
    return {"n": n, "stability_threshold": stability_threshold, "counts": c, "rates": yield_rates(c, n)}


def yield_rates(c: dict, n: int) -> dict:
    """The rates of :func:`yields` from its counts ``c`` and the number of inputs ``n`` (also used on the
    counts the database aggregates, :meth:`fw_screen.store.results.ResultsStore.yield_count_rows`)."""
    return {
        "V": _rate(c["valid"], n),
        "VU": _rate(c["valid_unique"], n),
        "VUN": _rate(c["vun"], n),
        "VSUN": _rate(c["vsun"], n),
        "stable_among_vun_evaluated": _rate(c["vsun"], c["vun_evaluated"]),
        "band_gap_hit_among_valid": _rate(c["valid_band_gap_hits"], c["valid"]),
        "band_gap_hit_among_valid_evaluated": _rate(c["valid_band_gap_hits"], c["valid_band_gap_evaluated"]),
        "band_gap_hit_among_vsun": _rate(c["vsun_band_gap_hits"], c["vsun"]),
        "band_gap_hit_among_vsun_evaluated": _rate(c["vsun_band_gap_hits"], c["vsun_band_gap_evaluated"]),
    }
