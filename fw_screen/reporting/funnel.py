"""The funnel report of ``fw-screen status``: counts per status, failure reasons, yields, top candidates.
"""

from __future__ import annotations

import logging

from fw_screen import state as st
from fw_screen.store import ResultsStore, condition_order

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ reports
def funnel_report(store: ResultsStore, campaign: str) -> dict:
    """Status counts, the cumulative funnel, first failing validity checks, the CrystaLLM-pi / MatterGen
    yields at the campaign's stability threshold (overall and per band-gap condition) and the DFT summary.

    The counts come from the campaign's funnel counters (:mod:`fw_screen.store.counters`: constant time in
    the campaign's size; the after-relaxation counts, the DFT-lite and DFT summaries read the ML-done
    candidates only).  A campaign stored before counters existed is counted from its documents: one pass
    (:meth:`ResultsStore.yield_count_rows`) plus the invalid candidates (``counted_by`` says which)."""
    from fw_screen.science.yields import yield_rates
    from fw_screen.store import sum_yield_rows

    names = store.campaign_names()
    thr = store.campaign_spec(campaign).ml.stability_threshold if campaign in names else 0.1
    if campaign in names and store.has_counters(campaign):
        rows, failures = store.counted_yield_rows(campaign)
        counted_by = "counters"
    else:
        rows, failures = store.yield_count_rows(campaign, [thr]), store.failure_counts(campaign)
        counted_by = "documents"
    total = sum_yield_rows(rows)
    counts = total["status"]
    report = {"campaign": campaign, "status": counts, "funnel": st.funnel(counts), "first_failure": failures,
              "counted_by": counted_by}
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


def recount(store: ResultsStore, campaign: str, repair: bool = False) -> dict:
    """``fw-screen status --recount``: the campaign's counters against a recount from its documents.

    Returns ``{"campaign", "differences": [(condition, counter, kept, recounted)], "pending": n, "repaired"}``;
    with ``repair`` a difference is fixed by storing the recount (run it while no worker writes: a write
    landing between the recount and the store would be lost from the counters until the next recount)."""
    kept = store.funnel_counts(campaign) if store.has_counters(campaign) else {}
    fresh = store.recount(campaign)
    diffs = []
    for cond in sorted(set(kept) | set(fresh), key=condition_order):
        a, b = kept.get(cond, {}), fresh.get(cond, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key, 0) != b.get(key, 0):
                diffs.append((cond, key, a.get(key, 0), b.get(key, 0)))
    out = {"campaign": campaign, "kept": store.has_counters(campaign), "differences": diffs,
           "pending": len(store.pending_entries(campaign)), "repaired": False}
    if repair and (diffs or not out["kept"]):
        store.replace_counters(campaign, fresh)
        out["repaired"] = True
    return out


def format_recount(r: dict) -> str:
    head = f"campaign {r['campaign']}: "
    if not r["kept"] and not r["repaired"]:
        head += "no counters kept (stored before counters existed; `--recount --repair` builds them)"
    elif not r["differences"]:
        head += "counters agree with a recount from the documents"
    else:
        head += f"{len(r['differences'])} counter(s) differ from a recount from the documents"
    shown = r["differences"] if r["kept"] else []  # nothing kept: every counter would differ
    lines = [head] + [f"  condition {c!s:>6}  {k:<38} kept {a:>8}  recount {b:>8}  ({a - b:+d})"
                      for c, k, a, b in shown]
    if r["pending"]:
        lines.append(f"  {r['pending']} counter entries of writes not yet applied (counted; `fw-screen recover` finishes stale ones)")
    if r["repaired"]:
        lines.append("  repaired: the counters now hold the recount")
    return "\n".join(lines)
