"""Stage 2 runner, validity: one batch of ingested candidates through :func:`fw_screen.science.validity.check_cif`.
"""

from __future__ import annotations

import logging
import time
import warnings

from fw_screen import state as st
from fw_screen.science import uniqueness as uq
from fw_screen.science.validity import check_cif
from fw_screen.store import ResultsStore
from fw_screen.spec import CampaignSpec

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- validity
def validity_fields(doc: dict, spec: CampaignSpec) -> dict:
    """The stored result of the validity stage for one ingested candidate (never raises)."""
    if doc.get("ingest_error"):
        return {"validity": {"valid": False, "first_failure": "ingest", "reason": doc["ingest_error"],
                             "checks": {}}}
    try:
        result = check_cif(doc.get("cif_processed"), spec.validity)
        fields = {"validity": result.as_dict(), **result.info}
        if result.valid:  # invalid ones keep cif_processed; their structure is not worth the storage
            fields["structure"] = result.structure.as_dict()
            reduced = uq.reduce_structure(result.structure)
            fields["structure_reduced"] = reduced.as_dict()
            fields["match_key"] = uq.match_key(reduced)
            fields["shard"] = uq.shard_of(reduced.composition.reduced_formula, spec.dedup_shards)
        return fields
    except Exception as exc:  # a bug or a pathological input must not take the batch down
        log.exception("validity failed on %s", doc["_id"])
        return {"validity": {"valid": False, "first_failure": "internal_error",
                             "reason": f"{type(exc).__name__}: {exc}", "checks": {}}}


def run_validity(store: ResultsStore, campaign: str, batch: str, flush_every: int = 50) -> dict:
    """Validity for every still-ingested candidate of one batch."""
    if not isinstance(batch, str) or store.count({"campaign": campaign, "batch": batch}) == 0:
        raise ValueError(f"campaign {campaign!r} has no batch {batch!r}")  # fizzle loudly, never pass silently
    spec = store.campaign_spec(campaign)
    counts = {"valid": 0, "invalid": 0, "skipped": 0}
    updates: list[tuple] = []
    t0 = time.perf_counter()
    docs = store.candidates_for({"campaign": campaign, "batch": batch, "status": st.INGESTED},
                                {"cif_processed": 1, "ingest_error": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns per site about radii and oxidation states
        for doc in docs:
            fields = validity_fields(doc, spec)
            new = st.VALID if fields["validity"]["valid"] else st.INVALID
            updates.append((doc["_id"], st.INGESTED, new, fields))
            counts[new] += 1
            if len(updates) >= flush_every:
                counts["skipped"] += len(updates) - store.transition(updates, "validity")
                updates.clear()
    if updates:
        counts["skipped"] += len(updates) - store.transition(updates, "validity")
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    return counts
