"""Stage 1 runner, ingest: CIF files in, one candidate document per CIF in the store.

The science is :mod:`fw_screen.science.ingest`; this module batches its records into the store.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fw_screen.science.ingest import iter_candidates
from fw_screen.store import ResultsStore
from fw_screen.spec import CampaignSpec

log = logging.getLogger(__name__)


#: candidates inserted per database round trip during ingest
INGEST_CHUNK = 2000


# ------------------------------------------------------------------------------------------- ingest
def run_ingest(store: ResultsStore, path: str | Path, spec: CampaignSpec, submission: str | None = None,
               progress=None) -> dict:
    """Read every input at ``path`` into the campaign; idempotent.  Returns counts and new batch ids."""
    from fw_screen.store import new_submission_id

    spec = store.register_campaign(spec)
    submission = submission or new_submission_id()
    summary = {"campaign": spec.campaign, "submission": submission, "inputs": 0, "new": 0, "existing": 0,
               "batches": []}
    chunk: list[dict] = []

    def flush():
        res = store.insert_candidates(chunk, spec.batch_size, submission, start_index=summary["new"])
        summary["new"] += len(res["new"])
        summary["existing"] += res["existing"]
        summary["batches"].extend(b for b in res["batches"] if b not in summary["batches"])
        chunk.clear()

    for doc in iter_candidates(path, spec.campaign, spec):
        chunk.append(doc)
        summary["inputs"] += 1
        if len(chunk) >= INGEST_CHUNK:
            flush()
            if progress:
                progress(summary["inputs"])
    if chunk:
        flush()
    return summary
