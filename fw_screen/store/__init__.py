"""Storage: every MongoDB access of fw-screen's own collections, behind one facade (:class:`ResultsStore`).
"""

from fw_screen.store.results import (  # noqa: F401
    CANDIDATES,
    CAMPAIGNS,
    REFERENCES,
    ENTRIES,
    SETS,
    LOCKS,
    DFT_REFERENCES,
    utcnow,
    StoreError,
    ResultsStore,
    INDEXED_FIELDS,
    plan_nodes,
    match_stages,
    HULL_TABLE_SORT_FIELDS,
    HULL_TABLE_PROJECTION,
    sum_yield_rows,
    new_submission_id,
)
