"""Loading a reference set into the store: read a file (:mod:`fw_screen.science.references`), check it, write
its structures and entries, activate it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fw_screen.science import references as refs
from fw_screen.store import ResultsStore

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- references
def read_references(source: str | Path, covers: str | None = None, trust_pickle: bool = False) -> refs.Source:
    """Open a reference source (file, folder, or ``mp:CHEMSYS`` for the Materials Project); its items are
    read when it is loaded.  Raises :class:`~fw_screen.science.references.ReferenceSourceError` for what cannot be
    read at all (missing, unknown format, a pickle without ``trust_pickle``, truncated JSON)."""
    source = str(source)
    if source.startswith("mp:"):
        return refs.from_mp_api(source[3:])
    return refs.open_source(source, trust_pickle=trust_pickle)


def load_references(store: ResultsStore, source: str | Path, set_name: str | None = None,
                    found: refs.Source | None = None, covers: str | None = None, energy_scale: str | None = None,
                    trust_pickle: bool = False, chunk: int = 2000, progress=None) -> dict:
    """Load one reference source into the store as one reference set, all or nothing.

    The set is registered as ``loading`` and its documents are written in chunks while the source streams
    past; they are invisible to every stage until the set turns ``active`` at the end.  Any error (an
    unreadable entry, mixed correction schemes, a coverage that must be declared) removes what was written,
    so the database is as it was.  Loading the same file again under the same name adds nothing; another
    file under a taken name is refused.
    """
    import uuid

    source_name = str(source)
    name = set_name or ("mp-" + source_name[3:] if source_name.startswith("mp:") else refs.default_set_name(source))
    store.migrate_legacy_references()
    store.ensure_indexes()
    t0 = time.perf_counter()
    existing = store.reference_set(name)
    if existing and existing.get("state") == "loading":  # a load that died half-way: start again
        log.warning("reference set %s: removing an interrupted load", name)
        store.remove_reference_set(name)
        existing = None
    if existing:
        sha = refs.file_sha256(Path(source_name)) if Path(source_name).is_file() else None
        if sha is not None and existing.get("sha256") == sha or existing.get("source") == source_name and sha is None:
            return {"set": name, "new": 0, "existing": existing.get("n_structures", 0), "entries_new": 0,
                    "entries_existing": existing.get("n_entries", 0), "skipped_without_structure": 0,
                    "source": source_name, "covers": existing["covers"], "energy_scale": existing["energy_scale"],
                    "unchanged": True, "seconds": round(time.perf_counter() - t0, 3)}
        raise refs.ReferenceSourceError(
            f"reference set {name!r} is already loaded from {existing.get('source')} (a different file): give this "
            f"one another name (--set), or remove the old one first (fw-screen references --remove {name})")
    found = found if found is not None else read_references(source, covers, trust_pickle)
    version = uuid.uuid4().hex[:12]
    if not store.begin_reference_set({"_id": name, "version": version, "source": source_name, "format": found.format,
                                      "sha256": found.sha256}):
        raise refs.ReferenceSourceError(f"reference set {name!r} is being loaded by another process") from None
    summary = refs.SetSummary()
    counts = {"structures": 0, "entries": 0}
    try:
        structures, entries = [], []

        def flush():
            new = store.insert_reference_docs(structures, entries)
            counts["structures"] += new["structures"]
            counts["entries"] += new["entries"]
            structures.clear()
            entries.clear()
            if progress:
                progress(summary.entries + summary.structures)

        for structure_doc, entry_doc in refs.documents(found.items, name, summary,
                                                       entries=covers != refs.STRUCTURES_ONLY,
                                                       structure_elsewhere=True):
            if structure_doc is not None:
                structures.append({**structure_doc, "version": version})
            if entry_doc is not None:
                entries.append({**entry_doc, "version": version})
            if len(structures) + len(entries) >= chunk:
                flush()
        flush()
        kind, systems = refs.decide_coverage(summary, found, covers)
        scale = refs.decide_energy_scale(summary, found, energy_scale)
        fields = {"covers": kind, "systems": systems, "energy_scale": scale if kind != refs.STRUCTURES_ONLY else None,
                  "elements": sorted(summary.elements), "unary": sorted(summary.unary),
                  "n_entries": counts["entries"], "n_structures": counts["structures"],
                  "n_chemsys": len(summary.chemsys), "skipped": summary.skipped,
                  "schemes": dict(summary.schemes), "notes": found.notes,
                  "load_seconds": round(time.perf_counter() - t0, 1)}
        store.activate_reference_set(name, fields)
    except BaseException:
        store.remove_reference_set(name)
        raise
    log.info("reference set %s: %d structures, %d entries (%s, %s) in %.1f s", name, counts["structures"],
             counts["entries"], kind, scale, time.perf_counter() - t0)
    return {"set": name, "new": counts["structures"], "existing": 0, "entries_new": counts["entries"],
            "entries_existing": 0, "skipped_without_structure": summary.no_structure, "skipped": summary.skipped,
            "source": source_name, "covers": kind, "systems": systems, "energy_scale": fields["energy_scale"],
            "format": found.format, "seconds": round(time.perf_counter() - t0, 1)}
