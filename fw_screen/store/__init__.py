"""Storage: every MongoDB access of fw-screen's own collections, behind one facade (:class:`ResultsStore`).

:mod:`.results` composes the store from one part per concern: :mod:`.campaigns`, :mod:`.candidates`,
:mod:`.counters` (the funnel counters ``fw-screen status`` reads), :mod:`.analysis` (aggregations),
:mod:`.references`, :mod:`.ml`, :mod:`.dft`, :mod:`.leases`; :mod:`.base` holds the collection names and
query builders they share; :mod:`.structures` how a candidate's structures are stored (one compact string
each, decoded on read); :mod:`.atomate` reads atomate's task database.
"""

from fw_screen.store.base import (  # noqa: F401
    CANDIDATES,
    CAMPAIGNS,
    COUNTS,
    REFERENCES,
    ENTRIES,
    SETS,
    LOCKS,
    DFT_REFERENCES,
    utcnow,
    StoreError,
    INDEXED_FIELDS,
    plan_nodes,
    match_stages,
    is_number,
    number,
    condition_order,
    join_formulas,
    dft_lite_unplanned,
    HULL_TABLE_SORT_FIELDS,
    HULL_TABLE_PROJECTION,
    sum_yield_rows,
    new_submission_id,
    insert_new,
    insert_many_new,
    in_chunks,
)
from fw_screen.store.results import (  # noqa: F401
    ResultsStore,
)
