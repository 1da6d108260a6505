"""The one state machine every candidate follows.

::

    ingested ──► invalid                       (validity: a required check failed; reason stored)
        └──────► valid ──► duplicate           (uniqueness: matches an earlier candidate; duplicate_of)
                     ├───► known               (novelty: matches a reference structure)
                     └───► novel ──► ml_done        (stability: relaxed, e_above_hull, band gap, hits)
                                 ├─► no_reference   (no reference entries for an element: named)
                                 └─► ml_failed      (relaxation exploded / timed out / unsupported element)

Terminal states are never left.  Later stages extend ``TRANSITIONS`` from ``ml_done``.
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

TRANSITIONS: dict[str, frozenset[str]] = {
    INGESTED: frozenset({INVALID, VALID}),
    VALID: frozenset({DUPLICATE, KNOWN, NOVEL}),
    NOVEL: frozenset({ML_DONE, NO_REFERENCE, ML_FAILED}),
    INVALID: frozenset(),
    DUPLICATE: frozenset(),
    KNOWN: frozenset(),
    ML_DONE: frozenset(),
    NO_REFERENCE: frozenset(),
    ML_FAILED: frozenset(),
}

#: display order for funnel tables
ORDER = (INGESTED, INVALID, VALID, DUPLICATE, KNOWN, NOVEL, ML_DONE, NO_REFERENCE, ML_FAILED)
#: statuses of candidates that were novel (the ML stage may have moved them on)
NOVEL_OR_LATER = (NOVEL, ML_DONE, NO_REFERENCE, ML_FAILED)


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
            "novel": novel, "pending_ml": n[NOVEL], "ml_done": n[ML_DONE], "no_reference": n[NO_REFERENCE],
            "ml_failed": n[ML_FAILED]}
