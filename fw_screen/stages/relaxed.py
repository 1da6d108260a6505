"""Novelty after relaxation: the relaxed structure against the reference sets and the campaign's other
relaxed structures (S.U.N. as the field means it), and the self-consistent hull of the relaxed candidates.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

from pymatgen.core import Composition, Structure

from fw_screen.science import uniqueness as uq
from fw_screen.stages.novelty import ReferenceMatcher
from fw_screen.store import ResultsStore
from fw_screen.spec import CampaignSpec

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- after relaxation (S.U.N.)
def relaxed_verdict(generated: Structure, relaxed: Structure, spec: CampaignSpec, store: ResultsStore,
                    references: ReferenceMatcher | None = None) -> dict:
    """What relaxation changed for one candidate (``ml.*`` fields): the relaxed structure's reduced cell and
    match key, the reference it matches (``matched_reference_relaxed``; ``novel_relaxed`` when none), the
    reference sets' version it was matched against (``relaxed_sets``) and the RMS displacement from the
    generated cell (Angstrom).  Whether it kept its space group is read from ``ml.relax``."""
    reduced = uq.reduce_structure(relaxed)
    key = uq.match_key(reduced)
    formula = reduced.composition.reduced_formula
    chemsys = "-".join(sorted({el.symbol for el in reduced.composition.elements}))
    if references is None:
        references = ReferenceMatcher(store, spec, {formula}, {chemsys})
    ref = references.match(uq.Item("relaxed", reduced), key, chemsys)
    return {"structure_relaxed_reduced": reduced.as_dict(), "match_key_relaxed": key,
            "matched_reference_relaxed": ref, "novel_relaxed": ref is None, "relaxed_sets": references.sets,
            "rmsd_relaxed": uq.displacement_rmsd(generated, relaxed)}


#: what the post-relaxation pass reads of each relaxed candidate
_RELAXED_FIELDS = {"ml.match_key_relaxed": 1, "ml.relaxed_match_error": 1, "ml.relaxed_sets": 1, "ml.e_above_hull": 1, "ml.duplicate_of_relaxed": 1,
                   "ml.matched_reference_relaxed": 1, "ml.e_above_hull_self_consistent": 1, "ml.hull.energy_per_atom": 1,
                   "ml.relax.status": 1, "elements": 1, "formula": 1, "seq": 1}


def _relaxed_only(docs: list[dict], counts: dict) -> list[dict]:
    """The candidates that have an ML-relaxed structure; those the single-point pre-screen left unrelaxed
    (``ml.relax.status`` "skipped", no ``ml.structure_relaxed``) are passed over and counted
    (``counts["not_relaxed"]``): there is no relaxed structure to match or to put on a hull."""
    kept = [d for d in docs if (d["ml"].get("relax") or {}).get("status") != "skipped"]
    counts["not_relaxed"] = len(docs) - len(kept)
    return kept


def run_relaxed_uniqueness(store: ResultsStore, campaign: str) -> dict:
    """Uniqueness, novelty and the hull after relaxation, for every ML-relaxed candidate of a campaign.

    1. candidates relaxed before this pass existed get their relaxed verdict (:func:`relaxed_verdict`);
    2. relaxed candidates sharing a relaxed match key are matched against each other with the campaign's
       matcher: ``ml.duplicate_of_relaxed`` is the group's representative (lowest ML e_above_hull) or None;
    3. the self-consistent hull: each candidate's energy above the reference hull joined by the campaign's
       relaxed ML-stable candidates that are novel and unique after relaxation
       (``ml.e_above_hull_self_consistent``, stored beside the reference-only ``ml.e_above_hull``).

    Idempotent; re-run whenever the ML stage of the campaign finishes (new submissions regroup); writes
    only what changed.  Status is untouched: promotion and DFT-lite read these fields.
    """
    from fw_screen.stages import hulls

    spec = store.campaign_spec(campaign)
    t0 = time.perf_counter()
    owner = store.acquire_lock(f"{campaign}:relaxed", lease_s=600)
    counts = {"backfilled": 0, "groups": 0, "duplicates": 0, "known": 0, "self_consistent_systems": 0}
    try:
        docs = _relaxed_only(_with_ml(store.relaxed_candidates(campaign, _RELAXED_FIELDS)), counts)
        sets = hulls.sets_version(store.reference_sets())
        todo = [d["_id"] for d in docs if d["ml"].get("relaxed_sets") != sets
                and "relaxed_match_error" not in d["ml"]]
        if todo:  # relaxed before the verdict was taken at relaxation time, or reference sets changed since
            counts["backfilled"] = _backfill_relaxed(store, spec, todo)
            docs = _relaxed_only(_with_ml(store.relaxed_candidates(campaign, _RELAXED_FIELDS)), counts)
        fingerprint = _relaxed_fingerprint(spec, sets, docs)
        last = store.relaxed_pass(campaign) or {}
        if last.get("fingerprint") == fingerprint and not todo:  # nothing it depends on changed
            return {"unchanged": True, "relaxed": len(docs), "last_pass": last.get("at"),
                    "seconds": round(time.perf_counter() - t0, 3)}
        counts["relaxed"] = len(docs)
        by_key: dict[str, list[dict]] = defaultdict(list)
        for d in docs:
            if d["ml"].get("match_key_relaxed"):
                by_key[d["ml"]["match_key_relaxed"]].append(d)
        shared = [k for k, members in by_key.items() if len(members) > 1]
        matcher = uq.make_matcher(spec.uniqueness)
        duplicate_of = {d["_id"]: None for d in docs}
        for chunk in _key_chunks(shared, by_key, RELAXED_CHUNK):  # structures of a few keys in memory at a time
            structures = store.documents_by_id("candidates", [d["_id"] for k in chunk for d in by_key[k]],
                                               ["ml.structure_relaxed_reduced"])
            for key in chunk:
                members = sorted(by_key[key], key=lambda d: d.get("seq", 0))
                items = [uq.Item(d["_id"], Structure.from_dict(structures[d["_id"]]["ml"]["structure_relaxed_reduced"]))
                         for d in members]
                energies = {d["_id"]: _finite(d["ml"].get("e_above_hull")) for d in members}
                duplicate_of.update(uq.relaxed_groups(items, energies, matcher))
            store.renew_lock(f"{campaign}:relaxed", owner, lease_s=600)
        counts["groups"] = len(shared)
        counts["duplicates"] = sum(v is not None for v in duplicate_of.values())
        counts["known"] = sum(bool(d["ml"].get("matched_reference_relaxed")) for d in docs)
        updates = {d["_id"]: {"ml.duplicate_of_relaxed": duplicate_of[d["_id"]]} for d in docs
                   if "duplicate_of_relaxed" not in d["ml"] or d["ml"]["duplicate_of_relaxed"] != duplicate_of[d["_id"]]}
        for d in docs:
            d["ml"]["duplicate_of_relaxed"] = duplicate_of[d["_id"]]
        e_sc, counts["self_consistent_systems"] = _self_consistent(store, spec, docs)
        for d in docs:
            new = e_sc.get(d["_id"])
            old = d["ml"].get("e_above_hull_self_consistent")
            if (new is None) != (old is None) or (new is not None and abs(new - old) > 1e-9):
                updates.setdefault(d["_id"], {}).update({
                    "ml.e_above_hull_self_consistent": new,
                    "ml.stable_self_consistent": None if new is None else new <= spec.ml.stability_threshold})
        counts["updated"] = store.set_fields(list(updates.items()))
        store.set_relaxed_pass(campaign, {"fingerprint": fingerprint, "counts": counts})
    finally:
        store.release_lock(f"{campaign}:relaxed", owner)
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    return counts


def _relaxed_fingerprint(spec: CampaignSpec, sets: str, docs: list[dict]) -> str:
    """What the pass's verdicts depend on: the relaxed candidates (id, relaxed match key, hull distance,
    relaxed-known), the active reference sets (``sets``: their version) and the matcher settings."""
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(json.dumps([spec.uniqueness.to_dict(), spec.ml.stability_threshold, sets],
                        sort_keys=True, default=str).encode())
    for d in sorted(docs, key=lambda d: d["_id"]):
        ml = d["ml"]
        h.update(f"{d['_id']}|{ml.get('match_key_relaxed')}|{ml.get('e_above_hull')}|"
                 f"{ml.get('matched_reference_relaxed')}\n".encode())
    return h.hexdigest()


#: relaxed structures decoded at once by the post-relaxation pass (whole match keys, at least one key)
RELAXED_CHUNK = 2000


def _key_chunks(keys: list[str], by_key: dict, size: int):
    chunk, n = [], 0
    for k in keys:
        chunk.append(k)
        n += len(by_key[k])
        if n >= size:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def _with_ml(docs: list[dict]) -> list[dict]:
    for d in docs:
        d.setdefault("ml", {})
    return docs


def _finite(x) -> float:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else math.inf


def _backfill_relaxed(store: ResultsStore, spec: CampaignSpec, ids: list[str]) -> int:
    """The relaxed verdict of candidates relaxed before it was computed at relaxation time (or before the
    reference sets last changed), ``RELAXED_CHUNK`` candidates at a time."""
    changed = 0
    for i in range(0, len(ids), RELAXED_CHUNK):
        docs = store.documents_by_id("candidates", ids[i:i + RELAXED_CHUNK],
                                     ["structure_reduced", "ml.structure_relaxed", "reduced_formula", "chemsys"])
        references = ReferenceMatcher(store, spec, {d.get("reduced_formula") for d in docs.values()},
                                      {d.get("chemsys") for d in docs.values()})
        updates = []
        for cid, d in docs.items():
            if not (d.get("ml") or {}).get("structure_relaxed"):  # not relaxed (pre-screen): nothing to match
                continue
            try:
                fields = relaxed_verdict(Structure.from_dict(d["structure_reduced"]),
                                         Structure.from_dict(d["ml"]["structure_relaxed"]), spec, store, references)
            except Exception as exc:
                fields = {"relaxed_match_error": f"{type(exc).__name__}: {exc}"}
            updates.append((cid, {f"ml.{k}": v for k, v in fields.items()}))
        changed += store.set_fields(updates)
    return changed


def _self_consistent(store: ResultsStore, spec: CampaignSpec, docs: list[dict]) -> tuple[dict[str, float | None], int]:
    """{candidate id: e_above_hull against the reference hull joined by the campaign's relaxed ML-stable,
    novel, unique candidates}, and how many chemical systems had such a joiner."""
    from pymatgen.entries.computed_entries import ComputedEntry

    from fw_screen.science import stability
    from fw_screen.stages import hulls

    threshold = spec.ml.stability_threshold

    def entry(d):
        e = (d["ml"].get("hull") or {}).get("energy_per_atom")
        if not isinstance(e, (int, float)) or not d.get("formula"):
            return None
        comp = Composition(d["formula"])
        return ComputedEntry(comp, e * comp.num_atoms, entry_id=d["_id"])

    entries = {d["_id"]: entry(d) for d in docs}
    joiners = [d for d in docs if entries[d["_id"]] is not None and _finite(d["ml"].get("e_above_hull")) <= threshold
               and not d["ml"].get("matched_reference_relaxed") and d["ml"].get("duplicate_of_relaxed") is None
               and d["ml"].get("match_key_relaxed")]
    by_system: dict[str, list[dict]] = defaultdict(list)
    for d in docs:
        if entries[d["_id"]] is not None:
            by_system["-".join(sorted(d.get("elements") or []))].append(d)
    out: dict[str, float | None] = {}
    systems = 0
    for chemsys, members in by_system.items():
        elements = set(chemsys.split("-"))
        pd, missing = hulls.reference_hull(store, sorted(elements))
        if pd is None:
            continue
        join = [entries[j["_id"]] for j in joiners if set(j.get("elements") or []) <= elements]
        systems += bool(join)
        values = stability.self_consistent_hull(pd, join, [entries[d["_id"]] for d in members])
        out.update({d["_id"]: v for d, v in zip(members, values)})
    return out, systems
