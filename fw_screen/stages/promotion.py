"""Stage 6 runner, promotion: the campaign's ML-done candidates through :func:`fw_screen.science.promotion.select`.
"""

from __future__ import annotations

import logging

from pymatgen.core import Structure

from fw_screen import state as st
from fw_screen.stages.dft import dft_reference_phases, oversized_phases
from fw_screen.stages.dft_lite import dft_lite_pending
from fw_screen.store import ResultsStore

log = logging.getLogger(__name__)


def run_promotion(store: ResultsStore, campaign: str) -> dict:
    """Promote the best ML-done candidates of a campaign to DFT (rules: spec ``promotion``); idempotent.

    Under a lease, so two workers finishing the ML stage at once cannot both fill the per-condition quota.
    Each promoted candidate stores ``promotion`` = {reason, rank, condition, rules, at}.
    """
    from fw_screen.science import promotion
    from fw_screen.store import utcnow

    spec = store.campaign_spec(campaign)
    checked: dict = {}

    def references_ok(doc: dict) -> tuple[bool, str]:
        """The DFT hull needs the facet's phases with structures, none larger than reference_max_sites."""
        if spec.dft.code != "qe":
            return True, "DFT hull against MP entries (VASP path)"
        full = next(store.candidates_for({"_id": doc["_id"]}, {"ml.structure_relaxed": 1}, sort=None))
        if not (full.get("ml") or {}).get("structure_relaxed"):  # left unrelaxed by the pre-screen
            return False, "no ML-relaxed structure to compute DFT reference phases for"
        structure = Structure.from_dict(full["ml"]["structure_relaxed"])
        key = structure.composition.reduced_formula
        if key not in checked:
            try:
                phases = dft_reference_phases(store, structure, spec)
                big = oversized_phases(phases, spec)
                checked[key] = (not big, f"DFT reference phases {', '.join(p['formula'] for p in phases)}" if not big
                                else f"reference phase(s) {', '.join(big)} > {spec.dft.reference_max_sites} sites")
            except Exception as exc:  # e.g. elemental references without structures
                checked[key] = (False, f"no DFT reference phases: {exc}")
        return checked[key]

    waiting = dft_lite_pending(store, campaign)
    if waiting:  # the target hits promotion acts on are DFT-lite gaps: not all computed yet
        return {"considered": 0, "eligible": 0, "chosen": 0, "not_eligible": {}, "promoted": [],
                "waiting_dft_lite": waiting}
    rules = {**spec.promotion, "band_gap_source": spec.property.method}
    owner = store.acquire_lock(f"promote:{campaign}", lease_s=120, wait_s=300)
    try:
        choices, summary = promotion.select(store.ml_done_for_promotion(campaign), rules,
                                            store.promoted_per_condition(campaign), references_ok=references_ok)
        promoted = []
        for choice in choices:
            fields = {"promotion": {**{k: v for k, v in choice.items() if k != "_id"}, "at": utcnow()}}
            if store.transition([(choice["_id"], st.ML_DONE, st.PROMOTED, fields)], "promotion"):
                promoted.append(choice["_id"])
    finally:
        store.release_lock(f"promote:{campaign}", owner)
    summary["promoted"] = promoted
    return summary


def ml_stage_finished(store: ResultsStore, campaign: str) -> bool:
    """No candidate of the campaign waits for validity, uniqueness or the ML stage."""
    return store.count({"campaign": campaign, "status": {"$in": [st.INGESTED, st.VALID, st.NOVEL]}}) == 0
