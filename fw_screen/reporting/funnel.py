"""The funnel report of ``fw-screen status``: counts per status, failure reasons, yields, top candidates.
"""

from __future__ import annotations

import logging

from fw_screen import state as st
from fw_screen.store import ResultsStore

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ reports
def funnel_report(store: ResultsStore, campaign: str) -> dict:
    """Status counts, the cumulative funnel, first failing validity checks, the CrystaLLM-pi / MatterGen
    yields at the campaign's stability threshold (overall and per band-gap condition) and the DFT summary.

    One pass over the campaign gives the status counts and the yields (:meth:`ResultsStore.yield_count_rows`);
    the first failures read the invalid candidates only, the DFT summary the promoted ones."""
    from fw_screen.science.yields import yield_rates
    from fw_screen.store import sum_yield_rows

    names = store.campaign_names()
    thr = store.campaign_spec(campaign).ml.stability_threshold if campaign in names else 0.1
    rows = store.yield_count_rows(campaign, [thr])
    total = sum_yield_rows(rows)
    counts = total["status"]
    report = {"campaign": campaign, "status": counts, "funnel": st.funnel(counts),
              "first_failure": store.failure_counts(campaign)}
    f = report["funnel"]
    decided = f["inputs"] - f["pending_validity"]
    report["rates"] = {
        "validity": f["valid"] / decided if decided else None,
        "uniqueness_among_valid": (f["unique"] / (f["valid"] - f["pending_uniqueness"])
                                   if f["valid"] - f["pending_uniqueness"] else None),
        "novelty_among_unique": f["novel"] / f["unique"] if f["unique"] else None,
    }
    report["dft"] = store.dft_summary(campaign)
    report["dft_lite"] = store.dft_lite_summary(campaign)
    report["stability_threshold"] = thr

    def with_rates(row: dict) -> dict:
        c = row["counts"][thr]
        return {"condition": row["condition"], "n": row["n"], **c, **yield_rates(c, row["n"])}

    report["by_condition"] = [with_rates(r) for r in rows]
    report["yields"] = with_rates(total) if rows else {}
    rel = total["relaxed"]  # after relaxation: what run_relaxed_uniqueness found
    report["after_relaxation"] = {"checked": rel["checked"], "known": rel["known"], "duplicate": rel["duplicate"],
                                  "sun": rel["sun"].get(thr, 0)}
    return report
