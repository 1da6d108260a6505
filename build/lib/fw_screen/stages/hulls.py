"""Reference hulls for the ML stage: which entries a candidate's hull is built from, and one build per
chemical system per worker process.

For a candidate of elements E, only the entries inside E's chemical system matter (every sub-system of E),
so a whole-database reference set of 10^5-10^6 entries costs one indexed query of those sub-systems, never a
read of everything.  Only sets on the ML stage's energy scale (:data:`fw_screen.science.stability.HULL_ENERGY_SCALE`)
take part, and the hull is trusted only when one of them covers E (:func:`fw_screen.science.references.coverage`).

The cache is keyed by (database, the active sets and their versions, chemical system): one worker process
serving several databases never reuses one's hull for another, and loading or removing a set (a new version
key) makes every hull built before it stale.  It is bounded (least recently used out first) so a worker that
meets thousands of systems keeps its memory.
"""

from __future__ import annotations

import gc
import hashlib
from collections import OrderedDict

from fw_screen.science import references as refs
from fw_screen.store import ResultsStore

#: hulls kept per worker process (a quaternary MP system of 775 entries: ~1 MB with its entries)
MAX_CACHED = 256

_CACHE: OrderedDict = OrderedDict()
STATS = {"built": 0, "hits": 0}


def store_key(store: ResultsStore) -> tuple:
    """Which database a store is: the server(s) its client talks to and the database name."""
    client = store.db.client
    try:
        nodes = tuple(sorted(f"{h}:{p}" for h, p in client.nodes)) or (repr(client.topology_description),)
    except Exception:
        nodes = (repr(client),)
    return nodes, store.db.name


def sets_version(sets: list[dict]) -> str:
    """A key that changes whenever a usable set is loaded, removed or replaced."""
    parts = sorted(f"{s['_id']}@{s.get('version')}@{s.get('loaded_at')}" for s in sets)
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def clear() -> None:
    _CACHE.clear()
    STATS.update(built=0, hits=0)


def reference_hull(store: ResultsStore, elements, energy_scale: str | None = None, sets: list[dict] | None = None):
    """(PhaseDiagram or None, missing) for a candidate of ``elements``.

    ``missing`` says why there is no trusted hull (see :func:`fw_screen.science.references.coverage`); nothing is
    cached then, so references loaded while the worker lives are picked up.
    """
    from fw_screen.science import stability

    scale = energy_scale or stability.HULL_ENERGY_SCALE
    elements = sorted(set(elements))
    sets = store.reference_sets() if sets is None else sets
    names, missing = refs.coverage(elements, sets, scale)
    if missing:
        return None, missing
    usable = [s for s in sets if s["_id"] in names]
    key = (store_key(store), sets_version(usable), scale, "-".join(elements))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        STATS["hits"] += 1
        return _CACHE[key], []
    # thousands of new entry objects set off full garbage collections (most of a slow cold lookup in
    # bench_hull_scale.py, and longer in a worker holding a torch model): none are needed while building
    collecting = gc.isenabled()
    gc.disable()
    try:
        entries = [refs.hull_entry(d) for d in store.hull_entry_docs(elements, names)]
        lacking = stability.missing_references(elements, entries)
        if lacking:  # a covering set without an element's own entry (cannot happen for sets loaded here)
            return None, [f"no reference entry for {', '.join(lacking)}"]
        pd = stability.phase_diagram(entries)
    finally:
        if collecting:
            gc.enable()
    _CACHE[key] = pd
    STATS["built"] += 1
    while len(_CACHE) > MAX_CACHED:
        _CACHE.popitem(last=False)
    return pd, []


def relaxable(store: ResultsStore, elements_by_id: dict[str, list[str]], energy_scale: str | None = None) -> list[str]:
    """The ids whose chemical system has a trusted hull (their candidates are worth relaxing)."""
    from fw_screen.science import stability

    scale = energy_scale or stability.HULL_ENERGY_SCALE
    sets = store.reference_sets()
    return [i for i, els in elements_by_id.items() if els and not refs.coverage(els, sets, scale)[1]]
