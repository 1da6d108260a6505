"""The one state machine every candidate follows.

::

    ingested ──► invalid                       (validity: a required check failed; reason stored)
        └──────► valid ──► duplicate           (uniqueness: matches an earlier candidate; duplicate_of)
                     ├───► known               (novelty: matches a reference structure)
                     └───► novel ──► ml_done        (stability: relaxed, e_above_hull, band gap, hits)
                                 ├─► no_reference   (no trusted reference hull: what is missing is named;
                                 │                   back to novel once a loaded reference set covers it)
                                 └─► ml_failed      (relaxation exploded / timed out / unsupported element)
                     ml_done ──► promoted ──► dft_done    (DFT relax, band gap, DFT e_above_hull)
                                          └─► dft_failed  (pw.x/VASP error, missing pseudopotential: reason)

Terminal states are never left; ``ml_done`` is left only by promotion to DFT (reason stored);
``no_reference`` only for ``novel`` again, when references loaded since cover its chemical system.
"""

from __future__ import annotations

INGESTED = "ingested"
INVALID = "invalid"
VALID = "valid"
DUPLICATE = "duplicate"
KNOWN = "known"
NOVEL = "novel"
ML_DONE = "ml_done"
NO_REFERENCE = "no_reference"
ML_FAILED = "ml_failed"
PROMOTED = "promoted"
DFT_DONE = "dft_done"
DFT_FAILED = "dft_failed"

TRANSITIONS: dict[str, frozenset[str]] = {
    INGESTED: frozenset({INVALID, VALID}),
    VALID: frozenset({DUPLICATE, KNOWN, NOVEL}),
    NOVEL: frozenset({ML_DONE, NO_REFERENCE, ML_FAILED}),
    INVALID: frozenset(),
    DUPLICATE: frozenset(),
    KNOWN: frozenset(),
    ML_DONE: frozenset({PROMOTED}),
    PROMOTED: frozenset({DFT_DONE, DFT_FAILED}),
    DFT_DONE: frozenset(),
    DFT_FAILED: frozenset(),
    NO_REFERENCE: frozenset({NOVEL}),  # a reference set loaded later covers it: `fw-screen ml` requeues it
    ML_FAILED: frozenset(),
}

#: display order for funnel tables
ORDER = (INGESTED, INVALID, VALID, DUPLICATE, KNOWN, NOVEL, ML_DONE, NO_REFERENCE, ML_FAILED, PROMOTED, DFT_DONE,
         DFT_FAILED)
#: statuses of candidates that were novel (the ML stage may have moved them on)
NOVEL_OR_LATER = (NOVEL, ML_DONE, NO_REFERENCE, ML_FAILED, PROMOTED, DFT_DONE, DFT_FAILED)
#: statuses of candidates that passed validity (later stages may have moved them on)
VALID_OR_LATER = (VALID, DUPLICATE, KNOWN, *NOVEL_OR_LATER)
#: statuses of candidates with an ML result (promotion keeps it)
ML_DONE_OR_LATER = (ML_DONE, PROMOTED, DFT_DONE, DFT_FAILED)


class TransitionError(ValueError):
    pass


def check_transition(old: str, new: str) -> None:
    if new not in TRANSITIONS.get(old, ()):
        raise TransitionError(f"a candidate cannot go from {old!r} to {new!r}")


def funnel(counts: dict[str, int]) -> dict[str, int]:
    """Cumulative funnel from per-status counts: inputs, valid (V), unique (VU), novel (VUN)."""
    total = sum(counts.values())
    n = {s: counts.get(s, 0) for s in ORDER}
    novel = sum(n[s] for s in NOVEL_OR_LATER)
    valid = n[VALID] + n[DUPLICATE] + n[KNOWN] + novel
    unique = n[KNOWN] + novel
    return {"inputs": total, "pending_validity": n[INGESTED], "invalid": n[INVALID], "valid": valid,
            "pending_uniqueness": n[VALID], "duplicate": n[DUPLICATE], "unique": unique, "known": n[KNOWN],
            "novel": novel, "pending_ml": n[NOVEL], "ml_done": n[ML_DONE] + n[PROMOTED] + n[DFT_DONE] + n[DFT_FAILED],
            "no_reference": n[NO_REFERENCE], "ml_failed": n[ML_FAILED],
            "promoted": n[PROMOTED] + n[DFT_DONE] + n[DFT_FAILED], "pending_dft": n[PROMOTED],
            "dft_done": n[DFT_DONE], "dft_failed": n[DFT_FAILED]}
