"""The one state machine every candidate follows.

::

    ingested ──► invalid                       (validity: a required check failed; reason stored)
        └──────► valid ──► duplicate           (uniqueness: matches an earlier candidate; duplicate_of)
                     ├───► known               (novelty: matches a reference structure)
                     └───► novel               (goes on to the ML stage)

Terminal states are never left.  Later stages extend ``TRANSITIONS`` from ``novel``.
"""

from __future__ import annotations

INGESTED = "ingested"
INVALID = "invalid"
VALID = "valid"
DUPLICATE = "duplicate"
KNOWN = "known"
NOVEL = "novel"

TRANSITIONS: dict[str, frozenset[str]] = {
    INGESTED: frozenset({INVALID, VALID}),
    VALID: frozenset({DUPLICATE, KNOWN, NOVEL}),
    INVALID: frozenset(),
    DUPLICATE: frozenset(),
    KNOWN: frozenset(),
    NOVEL: frozenset(),
}

#: display order for funnel tables
ORDER = (INGESTED, INVALID, VALID, DUPLICATE, KNOWN, NOVEL)


class TransitionError(ValueError):
    pass


def check_transition(old: str, new: str) -> None:
    if new not in TRANSITIONS.get(old, ()):
        raise TransitionError(f"a candidate cannot go from {old!r} to {new!r}")


def funnel(counts: dict[str, int]) -> dict[str, int]:
    """Cumulative funnel from per-status counts: inputs, valid (V), unique (VU), novel (VUN)."""
    total = sum(counts.values())
    n = {s: counts.get(s, 0) for s in ORDER}
    valid = n[VALID] + n[DUPLICATE] + n[KNOWN] + n[NOVEL]
    unique = n[KNOWN] + n[NOVEL]
    return {"inputs": total, "pending_validity": n[INGESTED], "invalid": n[INVALID], "valid": valid,
            "pending_uniqueness": n[VALID], "duplicate": n[DUPLICATE], "unique": unique, "known": n[KNOWN],
            "novel": n[NOVEL]}
