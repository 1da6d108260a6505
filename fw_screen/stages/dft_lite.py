"""Stage 5 runner, DFT-lite band gaps: which ML-stable candidates get one, and one candidate's run
(:mod:`fw_screen.dft.hull.lite`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pymatgen.core import Structure

from fw_screen import state as st
from fw_screen.stages.stability import gap_hits
from fw_screen.store import ResultsStore

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- promotion
# ------------------------------------------------------------------------------------ DFT-lite tier
def plan_dft_lite(store: ResultsStore, campaign: str) -> list[str]:
    """With ``property.method: dft_lite``: the ML-stable candidates that get a DFT-lite band gap.

    Candidates larger than ``property.dft_lite_max_sites`` are recorded as skipped (with the reason); the
    others are marked queued (atomically: two workers planning at once share them out) and returned."""
    from fw_screen.dft import lite as dft_lite
    from fw_screen.science import promotion

    spec = store.campaign_spec(campaign)
    if spec.property.method != "dft_lite":
        return []
    todo, skipped = [], []
    for doc in store.dft_lite_waiting(campaign, spec.ml.stability_threshold):
        relaxed = (doc.get("ml") or {}).get("structure_relaxed")
        known = promotion.relaxed_reason(doc)
        if known:
            skipped.append((doc["_id"], {"status": "skipped", "reason": known}))
            continue
        if not relaxed:
            skipped.append((doc["_id"], {"status": "skipped", "reason": "no ML-relaxed structure"}))
            continue
        reason = dft_lite.too_large(Structure.from_dict(relaxed), spec)
        if reason:
            skipped.append((doc["_id"], {"status": "skipped", "reason": reason}))
        else:
            todo.append(doc["_id"])
    store.set_dft_lite_if_absent(skipped)
    return store.set_dft_lite_if_absent([(i, {"status": "queued"}) for i in todo])


def dft_lite_pending(store: ResultsStore, campaign: str) -> int:
    """Candidates of the campaign whose DFT-lite band gap is queued or not yet planned (0 with method ml)."""
    spec = store.campaign_spec(campaign)
    if spec.property.method != "dft_lite":
        return 0
    return store.dft_lite_pending_count(campaign, spec.ml.stability_threshold)


def run_dft_lite(store: ResultsStore, candidate_id: str, workdir: str | Path, env: dict | None = None,
                 checkpoint: dict | None = None) -> dict:
    """The DFT-lite band gap of one ML-done candidate (QE scf -> nscf at its ML-relaxed structure) and its
    target hits; stored as the candidate's ``dft_lite``.  A failed calculation is stored with its reason."""
    from fw_screen.dft import lite as dft_lite
    from fw_screen.dft import qe
    from fw_screen.science import band_gap as prop

    doc = store.dft_lite_candidate(candidate_id)
    if doc is None or doc["status"] != st.ML_DONE:
        return {"status": "skipped", "reason": f"candidate {candidate_id} is "
                                               f"{'missing' if doc is None else doc['status']}, not ml_done"}
    spec = store.campaign_spec(doc["campaign"])
    settings = dft_lite.settings(spec, env)
    base = {"code": "qe", "structure": "ML-relaxed", "kppa": settings["kppa"], "nscf_kppa": settings["nscf_kppa"]}
    try:
        protocol = qe.protocol(doc["elements"], settings)
    except qe.QEError as exc:
        store.set_dft_lite([(candidate_id, {**base, "status": "failed", "reason": str(exc)})])
        return {"status": "failed", "reason": str(exc)}
    structure = Structure.from_dict(doc["ml"]["structure_relaxed"])
    result = dft_lite.band_gap(structure, protocol, settings, Path(workdir) / "dft_lite", checkpoint=checkpoint)
    if result["status"] == "checkpoint":
        return {"status": "checkpoint", "checkpoint": result["checkpoint"]}
    fields = {**base, "status": "done" if result["status"] == "completed" else "failed",
              "reason": result.get("reason"), "protocol_id": protocol["id"], "band_gap": result.get("band_gap"),
              "energy_per_atom": result.get("energy_per_atom"), "steps": result.get("steps"),
              "corrections": result.get("corrections"), "seconds": result.get("seconds"),
              "pw_seconds": result.get("pw_seconds")}
    gap = (result.get("band_gap") or {}).get("band_gap")
    measured = prop.model_error("dft_lite")
    fields["hits"] = gap_hits(gap, None if measured is None else measured["mae"], "dft_lite",
                              (doc.get("ml") or {}).get("e_above_hull"), doc, spec)
    store.set_dft_lite([(candidate_id, fields)])
    return {"status": fields["status"], "reason": fields["reason"], "band_gap": gap,
            "seconds": result.get("seconds"), "pw_seconds": result.get("pw_seconds")}
