"""Stage runners: load a stage's slice from the store, call the science, write the verdicts back.

One module per funnel stage, named after it: :mod:`.ingest`, :mod:`.validity`, :mod:`.uniqueness`
(:mod:`.novelty` matches against the reference sets), :mod:`.stability` (ML relaxation and hull),
:mod:`.relaxed` (novelty after relaxation), :mod:`.dft_lite`, :mod:`.promotion`, :mod:`.dft`;
:mod:`.references` loads reference sets and :mod:`.hulls` builds the ML stage's reference hulls.  The CLI,
the FireTasks and a Python user call these same functions; each works on a bounded slice (one batch, one
shard) so a Firework is seconds to minutes of science.
"""

from fw_screen.stages.ingest import (  # noqa: F401
    INGEST_CHUNK,
    run_ingest,
)
from fw_screen.stages.validity import (  # noqa: F401
    validity_fields,
    run_validity,
)
from fw_screen.stages.novelty import (  # noqa: F401
    ReferenceMatcher,
)
from fw_screen.stages.uniqueness import (  # noqa: F401
    run_uniqueness,
)
from fw_screen.stages.stability import (  # noqa: F401
    stability_fields,
    ml_hits,
    gap_hits,
    plan_ml_batches,
    requeue_covered,
    run_stability,
)
from fw_screen.stages.relaxed import (  # noqa: F401
    relaxed_verdict,
    run_relaxed_uniqueness,
    RELAXED_CHUNK,
)
from fw_screen.stages.references import (  # noqa: F401
    read_references,
    load_references,
)
from fw_screen.stages.dft_lite import (  # noqa: F401
    plan_dft_lite,
    dft_lite_pending,
    run_dft_lite,
)
from fw_screen.stages.promotion import (  # noqa: F401
    run_promotion,
    ml_stage_finished,
)
from fw_screen.stages.dft import (  # noqa: F401
    dft_reference_phases,
    oversized_phases,
    dft_jobs,
    run_dft_reference,
    run_dft_candidate,
    update_dft_hulls,
)
