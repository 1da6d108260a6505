"""Stage runners: load a stage's inputs from the store, call the science, write the verdicts back.

The CLI, the FireTasks and a Python user call these same functions.  Science lives in
:mod:`fw_screen.ingest`, :mod:`fw_screen.validity` and :mod:`fw_screen.uniqueness`; database access in
:mod:`fw_screen.db`.  Each runner works on a bounded slice (one batch, one shard) so a Firework is a
few seconds to minutes of science.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import defaultdict
from pathlib import Path

from pymatgen.core import Composition, Structure

from fw_screen import references as refs
from fw_screen import status as st
from fw_screen import uniqueness as uq
from fw_screen.db import ResultsStore
from fw_screen.ingest import iter_candidates
from fw_screen.validity import check_cif

log = logging.getLogger(__name__)

#: candidates inserted per database round trip during ingest
INGEST_CHUNK = 2000


# ------------------------------------------------------------------------------------------- ingest
def run_ingest(store: ResultsStore, path: str | Path, spec: dict, submission: str | None = None,
               progress=None) -> dict:
    """Read every input at ``path`` into the campaign; idempotent.  Returns counts and new batch ids."""
    from fw_screen.db import new_submission_id

    spec = store.register_campaign(spec)
    submission = submission or new_submission_id()
    summary = {"campaign": spec["campaign"], "submission": submission, "inputs": 0, "new": 0, "existing": 0,
               "batches": []}
    chunk: list[dict] = []

    def flush():
        res = store.insert_candidates(chunk, spec["batch_size"], submission, start_index=summary["new"])
        summary["new"] += len(res["new"])
        summary["existing"] += res["existing"]
        summary["batches"].extend(b for b in res["batches"] if b not in summary["batches"])
        chunk.clear()

    for doc in iter_candidates(path, spec["campaign"], spec):
        chunk.append(doc)
        summary["inputs"] += 1
        if len(chunk) >= INGEST_CHUNK:
            flush()
            if progress:
                progress(summary["inputs"])
    if chunk:
        flush()
    return summary


# ----------------------------------------------------------------------------------------- validity
def validity_fields(doc: dict, spec: dict) -> dict:
    """The stored result of the validity stage for one ingested candidate (never raises)."""
    if doc.get("ingest_error"):
        return {"validity": {"valid": False, "first_failure": "ingest", "reason": doc["ingest_error"],
                             "checks": {}}}
    try:
        result = check_cif(doc.get("cif_processed"), spec["validity"])
        fields = {"validity": result.as_dict(), **result.info}
        if result.valid:  # invalid ones keep cif_processed; their structure is not worth the storage
            fields["structure"] = result.structure.as_dict()
            reduced = uq.reduce_structure(result.structure)
            fields["structure_reduced"] = reduced.as_dict()
            fields["match_key"] = uq.match_key(reduced)
            fields["shard"] = uq.shard_of(reduced.composition.reduced_formula, spec["dedup_shards"])
        return fields
    except Exception as exc:  # a bug or a pathological input must not take the batch down
        log.exception("validity failed on %s", doc["_id"])
        return {"validity": {"valid": False, "first_failure": "internal_error",
                             "reason": f"{type(exc).__name__}: {exc}", "checks": {}}}


def run_validity(store: ResultsStore, campaign: str, batch: str, flush_every: int = 50) -> dict:
    """Validity for every still-ingested candidate of one batch."""
    if not isinstance(batch, str) or store.count({"campaign": campaign, "batch": batch}) == 0:
        raise ValueError(f"campaign {campaign!r} has no batch {batch!r}")  # fizzle loudly, never pass silently
    spec = store.campaign_spec(campaign)
    counts = {"valid": 0, "invalid": 0, "skipped": 0}
    updates: list[tuple] = []
    t0 = time.perf_counter()
    docs = store.candidates_for({"campaign": campaign, "batch": batch, "status": st.INGESTED},
                                {"cif_processed": 1, "ingest_error": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns per site about radii and oxidation states
        for doc in docs:
            fields = validity_fields(doc, spec)
            new = st.VALID if fields["validity"]["valid"] else st.INVALID
            updates.append((doc["_id"], st.INGESTED, new, fields))
            counts[new] += 1
            if len(updates) >= flush_every:
                counts["skipped"] += len(updates) - store.transition(updates, "validity")
                updates.clear()
    if updates:
        counts["skipped"] += len(updates) - store.transition(updates, "validity")
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    return counts


# --------------------------------------------------------------------------------------- uniqueness
def _reference_items(store: ResultsStore, formulas: set[str]) -> dict[str, list[uq.Item]]:
    """Reference structures of the given formulas by match key; reductions computed once and cached."""
    return _reduced_items(store, store.references_with_formula(
        formulas, {"structure": 1, "structure_reduced": 1, "match_key": 1}), lambda ref, key: key)


def _disordered_items(store: ResultsStore, chemsys: set[str]) -> dict[str, list[uq.Item]]:
    """Partially occupied reference structures of the given chemical systems, by chemical system."""
    return _reduced_items(store, store.disordered_references(
        chemsys, {"structure": 1, "structure_reduced": 1, "match_key": 1, "chemsys": 1}),
        lambda ref, key: ref["chemsys"])


def _reduced_items(store: ResultsStore, refs_iter, group_of) -> dict[str, list[uq.Item]]:
    by_group: dict[str, list[uq.Item]] = defaultdict(list)
    to_cache = []
    for ref in refs_iter:
        if ref.get("structure_reduced"):
            reduced = Structure.from_dict(ref["structure_reduced"])
            key = ref["match_key"]
        else:
            try:  # a release's structure is stored as it came: the first use decodes it
                reduced = uq.reduce_structure(Structure.from_dict(ref["structure"]))
            except Exception as exc:
                log.warning("reference %s: unreadable structure, not used for novelty (%s)", ref["_id"], exc)
                continue
            key = uq.match_key(reduced)
            to_cache.append((ref["_id"], {"structure_reduced": reduced.as_dict(), "match_key": key}))
        by_group[group_of(ref, key)].append(uq.Item(ref["_id"], reduced))
    if to_cache:
        store.cache_reference_reduction(to_cache)
    return by_group


class ReferenceMatcher:
    """Novelty against the active reference sets, for candidates of known formulas: the campaign's
    matcher within a match key and, with ``uniqueness.matcher: disordered``, the order-disorder matcher
    against partially occupied references of the same chemical system.  Used on generated cells (the
    uniqueness stage) and on ML-relaxed ones (:func:`relaxed_verdict`)."""

    def __init__(self, store: ResultsStore, spec: dict, formulas: set[str], chemsys: set[str]):
        cfg = spec["uniqueness"]
        from fw_screen import hulls

        self.matcher = uq.make_matcher(cfg)
        #: the active reference sets matched against (a verdict is re-taken when they change)
        self.sets = hulls.sets_version(store.reference_sets())
        self.by_key = _reference_items(store, formulas)
        self.formulas = {key.split("|")[0] for key in self.by_key}
        self.disordered: dict[str, list[uq.Item]] = {}
        self.order_matcher = None
        if cfg.get("matcher") == "disordered":
            self.disordered = _disordered_items(store, chemsys)
            self.order_matcher = uq.disordered_matcher(cfg)

    def match(self, item: uq.Item, key: str, chemsys: str) -> str | None:
        return uq.find_reference(item, self.by_key.get(key, []), self.matcher, self.disordered.get(chemsys),
                                 self.order_matcher)

    def known_formula(self, formula: str) -> bool:
        return formula in self.formulas


def run_uniqueness(store: ResultsStore, campaign: str, shard: int) -> dict:
    """Uniqueness within the campaign and novelty against references for one shard of formulas.

    A lease on (campaign, shard) makes concurrent runs on the same shard take turns; every pending
    (status ``valid``) candidate of the shard is decided, whichever submission it came from.
    """
    spec = store.campaign_spec(campaign)
    matcher = uq.make_matcher(spec["uniqueness"])
    lock = f"{campaign}:uniqueness:{shard}"
    owner = store.acquire_lock(lock)
    counts = {st.DUPLICATE: 0, st.KNOWN: 0, st.NOVEL: 0}
    t0 = time.perf_counter()
    try:
        pending = list(store.candidates_for(
            {"campaign": campaign, "shard": shard, "status": st.VALID},
            {"match_key": 1, "reduced_formula": 1, "structure_reduced": 1, "seq": 1, "chemsys": 1}))
        if not pending:
            return {**counts, "seconds": 0.0}
        groups: dict[str, list[dict]] = defaultdict(list)
        for doc in pending:
            groups[doc["match_key"]].append(doc)
        references = ReferenceMatcher(store, spec, {doc["reduced_formula"] for doc in pending},
                                      {doc.get("chemsys") for doc in pending})
        reps_by_key: dict[str, list[uq.Item]] = defaultdict(list)
        for rep in store.representatives(campaign, list(groups), [st.KNOWN, *st.NOVEL_OR_LATER],
                                         {"match_key": 1, "structure_reduced": 1}):
            reps_by_key[rep["match_key"]].append(uq.Item(rep["_id"], Structure.from_dict(rep["structure_reduced"])))
        updates = []
        for i, (key, docs) in enumerate(groups.items()):
            items = [uq.Item(d["_id"], Structure.from_dict(d["structure_reduced"])) for d in docs]
            verdict = uq.deduplicate(items, reps_by_key[key], matcher)
            for item, doc in zip(items, docs):
                dup = verdict[item.id]
                if dup is not None:
                    updates.append((item.id, st.VALID, st.DUPLICATE, {"duplicate_of": dup}))
                    continue
                ref = references.match(item, key, doc.get("chemsys"))
                fields = {"duplicate_of": None, "matched_reference": ref,
                          "novel_composition": not references.known_formula(doc["reduced_formula"])}
                updates.append((item.id, st.VALID, st.KNOWN if ref else st.NOVEL, fields))
            if i % 50 == 49:
                store.renew_lock(lock, owner)
        for _, _, new, _ in updates:
            counts[new] += 1
        counts["moved"] = store.transition(updates, "uniqueness")
        novel = [cid for cid, _, new, _ in updates if new == st.NOVEL]
        counts["ml_batches"] = plan_ml_batches(store, campaign, novel, spec)
    finally:
        store.release_lock(lock, owner)
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    return counts


# ----------------------------------------------------------------------------------- ML stability
def stability_fields(doc: dict, spec: dict, store: ResultsStore) -> tuple[str, dict]:
    """(new status, stored fields) of the ML stage for one novel candidate (never raises)."""
    from fw_screen import hulls, potentials, property as prop, stability

    ml, pcfg = spec["ml"], spec["property"]
    structure = Structure.from_dict(doc["structure_reduced"])
    elements = sorted({el.symbol for el in structure.composition.elements})
    out: dict = {"potential": ml["potential"]}
    pd, missing = hulls.reference_hull(store, elements)
    band_gap = None
    gap_model = pcfg["band_gap_model"], pcfg["band_gap_fidelity"]  # loaded once per process (cached)
    if missing:
        out["reason"] = f"no reference hull for {'-'.join(elements)}: {'; '.join(missing)}"
        out["missing_references"] = missing
        try:  # the band gap needs no reference: predicted on the unrelaxed cell, said so
            band_gap = prop.predict_band_gap(structure, prop.load_band_gap_model(*gap_model))
            out["band_gap"] = {**band_gap, "structure": "unrelaxed"}
        except Exception as exc:
            out["band_gap_error"] = f"{type(exc).__name__}: {exc}"
        out["hits"] = ml_hits(band_gap, None, doc, spec)
        return st.NO_REFERENCE, {"ml": out}
    if len(structure) > ml["max_sites"]:
        out["reason"] = f"{len(structure)} sites > ml.max_sites={ml['max_sites']}"
        return st.ML_FAILED, {"ml": out}
    unsupported = potentials.unsupported_elements(ml["potential"], elements)
    if unsupported:
        out["reason"] = f"{ml['potential']} does not cover {', '.join(unsupported)}"
        return st.ML_FAILED, {"ml": out}
    calc = potentials.get_calculator(ml["potential"], ml["model_dir"])
    relax = stability.relax(structure, calc, fmax=ml["fmax"], max_steps=ml["max_steps"],
                            time_limit_s=ml["time_limit_s"])
    relaxed = relax.pop("structure", None)
    out["relax"] = relax
    if relax["status"] not in ("converged", "not_converged") or relaxed is None:
        out["reason"] = f"relaxation {relax['status']}: {relax.get('reason')}"
        return st.ML_FAILED, {"ml": out}
    out["structure_relaxed"] = relaxed.as_dict()
    try:  # novelty of the relaxed structure against the references (its campaign duplicates: run_relaxed_uniqueness)
        out.update(relaxed_verdict(structure, relaxed, spec, store))
    except Exception as exc:  # a structure pymatgen cannot reduce keeps its hull result; the pass says so
        log.warning("relaxed matching failed on %s: %s", doc["_id"], exc)
        out["relaxed_match_error"] = f"{type(exc).__name__}: {exc}"
    try:
        entry = stability.ml_entry(relaxed, relax["energy_total"], ml["potential"], entry_id=doc["_id"])
        entry_unrelaxed = stability.ml_entry(structure, relax["unrelaxed_energy_total"], ml["potential"],
                                             entry_id=doc["_id"])
    except stability.CorrectionError as exc:
        out["reason"] = f"energy correction failed: {exc}"
        return st.ML_FAILED, {"ml": out}
    hull = stability.hull_distance(entry, pd)
    # as a list: entry ids are not safe MongoDB keys ('.' would split them)
    formulas = hull.pop("decomposition_formulas")
    hull["decomposition"] = [{"entry_id": k, "formula": formulas.get(k), "fraction": v}
                             for k, v in hull["decomposition"].items()]
    out["hull"] = hull
    out["e_above_hull"] = hull["e_above_hull"]
    out["e_above_hull_unrelaxed"] = stability.hull_distance(entry_unrelaxed, pd)["e_above_hull"]
    out["stable"] = hull["e_above_hull"] <= ml["stability_threshold"]
    gap = None
    try:  # a band-gap model that cannot predict (e.g. no neighbour within its cutoff) keeps the hull result
        band_gap = prop.predict_band_gap(relaxed, prop.load_band_gap_model(*gap_model))
        out["band_gap"] = {**band_gap, "structure": "relaxed"}
        gap = band_gap["band_gap"]
    except prop.PropertyError as exc:
        out["band_gap_error"] = str(exc)
    out["hits"] = ml_hits(band_gap if gap is not None else None, hull["e_above_hull"], doc, spec)
    return st.ML_DONE, {"ml": out}


def ml_hits(band_gap: dict | None, e_above_hull: float | None, doc: dict, spec: dict) -> dict:
    """Target hits of an ML band-gap prediction (:func:`fw_screen.property.predict_band_gap`)."""
    return gap_hits((band_gap or {}).get("band_gap"), (band_gap or {}).get("model_error"), "ml", e_above_hull,
                    doc, spec)


def gap_hits(gap: float | None, mae: float | None, source: str, e_above_hull: float | None, doc: dict,
             spec: dict) -> dict:
    """Target hits of a band gap from ``source`` (``ml`` / ``dft_lite``) whose measured error is ``mae``: the
    error is recorded and, when ``property.widen_tolerance_by_model_error``, added to the tolerance."""
    from fw_screen import property as prop

    return prop.target_hits(gap, e_above_hull, doc.get("targets") or {}, prop.hit_tolerance(spec["property"], mae),
                            spec["ml"]["stability_threshold"], model_error=mae, source=source)


def plan_ml_batches(store: ResultsStore, campaign: str, ids: list[str], spec: dict) -> list[str]:
    """Put novel candidates into ML batches (ids that FireWorks cannot mistake for dates).

    Candidates inside a complete reference system will be relaxed (seconds to minutes each): small
    batches of ``ml.batch_size`` keep several ML workers busy to the end.  The others only get a band-gap
    prediction (milliseconds): they go in batches of ``batch_size`` so they cost few rockets.
    """
    import uuid

    prefix = f"m{uuid.uuid4().hex[:10]}"
    from fw_screen import hulls

    elements = {d["_id"]: d.get("elements") or [] for d in store.candidates_for(
        {"_id": {"$in": ids}}, {"elements": 1}, sort=None)}
    relax = hulls.relaxable(store, {i: elements.get(i, []) for i in ids})
    chosen = set(relax)
    cheap = [i for i in ids if i not in chosen]
    return (store.assign_ml_batches(campaign, relax, spec["ml"]["batch_size"], prefix=f"{prefix}r")
            + store.assign_ml_batches(campaign, cheap, spec["batch_size"], prefix=f"{prefix}n"))


def requeue_covered(store: ResultsStore, campaign: str) -> int:
    """``no_reference`` candidates whose chemical system the loaded reference sets now cover go back to
    ``novel`` (to be relaxed); returns how many."""
    from fw_screen import hulls

    waiting = store.no_reference_elements(campaign)
    covered = hulls.relaxable(store, waiting) if waiting else []
    return store.requeue_for_ml(covered) if covered else 0


def run_stability(store: ResultsStore, campaign: str, ml_batch: str) -> dict:
    """Relax, hull distance, band gap and target hits for the novel candidates of one ML batch."""
    if not isinstance(ml_batch, str) or store.count({"campaign": campaign, "ml_batch": ml_batch}) == 0:
        raise ValueError(f"campaign {campaign!r} has no ML batch {ml_batch!r}")
    spec = store.campaign_spec(campaign)
    counts = {st.ML_DONE: 0, st.NO_REFERENCE: 0, st.ML_FAILED: 0}
    t0 = time.perf_counter()
    docs = list(store.candidates_for({"campaign": campaign, "ml_batch": ml_batch, "status": st.NOVEL},
                                     {"structure_reduced": 1, "targets": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for doc in docs:
            try:
                new, fields = stability_fields(doc, spec, store)
            except Exception as exc:  # one bad candidate never takes the batch down
                log.exception("ML stage failed on %s", doc["_id"])
                new, fields = st.ML_FAILED, {"ml": {"reason": f"{type(exc).__name__}: {exc}",
                                                    "potential": spec["ml"]["potential"]}}
            counts[new] += 1
            store.transition([(doc["_id"], st.NOVEL, new, fields)], "ml")  # one by one: results land as they come
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    from fw_screen import hulls

    counts["hulls_built_in_process"] = hulls.STATS["built"]
    return counts


# ------------------------------------------------------------------------- after relaxation (S.U.N.)
def relaxed_verdict(generated: Structure, relaxed: Structure, spec: dict, store: ResultsStore,
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
                   "elements": 1, "formula": 1, "seq": 1}


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
    from fw_screen import hulls

    spec = store.campaign_spec(campaign)
    t0 = time.perf_counter()
    owner = store.acquire_lock(f"{campaign}:relaxed", lease_s=600)
    counts = {"backfilled": 0, "groups": 0, "duplicates": 0, "known": 0, "self_consistent_systems": 0}
    try:
        docs = _with_ml(store.relaxed_candidates(campaign, _RELAXED_FIELDS))
        sets = hulls.sets_version(store.reference_sets())
        todo = [d["_id"] for d in docs if d["ml"].get("relaxed_sets") != sets
                and "relaxed_match_error" not in d["ml"]]
        if todo:  # relaxed before the verdict was taken at relaxation time, or reference sets changed since
            counts["backfilled"] = _backfill_relaxed(store, spec, todo)
            docs = _with_ml(store.relaxed_candidates(campaign, _RELAXED_FIELDS))
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
        matcher = uq.make_matcher(spec["uniqueness"])
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
                    "ml.stable_self_consistent": None if new is None else new <= spec["ml"]["stability_threshold"]})
        counts["updated"] = store.set_fields(list(updates.items()))
        store.set_relaxed_pass(campaign, {"fingerprint": fingerprint, "counts": counts})
    finally:
        store.release_lock(f"{campaign}:relaxed", owner)
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    return counts


def _relaxed_fingerprint(spec: dict, sets: str, docs: list[dict]) -> str:
    """What the pass's verdicts depend on: the relaxed candidates (id, relaxed match key, hull distance,
    relaxed-known), the active reference sets (``sets``: their version) and the matcher settings."""
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(json.dumps([spec["uniqueness"], spec["ml"]["stability_threshold"], sets],
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


def _backfill_relaxed(store: ResultsStore, spec: dict, ids: list[str]) -> int:
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
            try:
                fields = relaxed_verdict(Structure.from_dict(d["structure_reduced"]),
                                         Structure.from_dict(d["ml"]["structure_relaxed"]), spec, store, references)
            except Exception as exc:
                fields = {"relaxed_match_error": f"{type(exc).__name__}: {exc}"}
            updates.append((cid, {f"ml.{k}": v for k, v in fields.items()}))
        changed += store.set_fields(updates)
    return changed


def _self_consistent(store: ResultsStore, spec: dict, docs: list[dict]) -> tuple[dict[str, float | None], int]:
    """{candidate id: e_above_hull against the reference hull joined by the campaign's relaxed ML-stable,
    novel, unique candidates}, and how many chemical systems had such a joiner."""
    from pymatgen.entries.computed_entries import ComputedEntry

    from fw_screen import hulls, stability

    threshold = spec["ml"]["stability_threshold"]

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


# --------------------------------------------------------------------------------------- references
def read_references(source: str | Path, covers: str | None = None, trust_pickle: bool = False) -> refs.Source:
    """Open a reference source (file, folder, or ``mp:CHEMSYS`` for the Materials Project); its items are
    read when it is loaded.  Raises :class:`~fw_screen.references.ReferenceSourceError` for what cannot be
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

    from pymongo.errors import DuplicateKeyError

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
    try:
        store.begin_reference_set({"_id": name, "version": version, "source": source_name, "format": found.format,
                                   "sha256": found.sha256})
    except DuplicateKeyError:
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


# ------------------------------------------------------------------------------------------ reports
def funnel_report(store: ResultsStore, campaign: str) -> dict:
    """Status counts, the cumulative funnel, first failing validity checks, the CrystaLLM-pi / MatterGen
    yields at the campaign's stability threshold (overall and per band-gap condition) and the DFT summary.

    One pass over the campaign gives the status counts and the yields (:meth:`ResultsStore.yield_count_rows`);
    the first failures read the invalid candidates only, the DFT summary the promoted ones."""
    from fw_screen.db import sum_yield_rows
    from fw_screen.property import yield_rates

    names = store.campaign_names()
    thr = store.campaign_spec(campaign)["ml"]["stability_threshold"] if campaign in names else 0.1
    rows = store.yield_count_rows(campaign, [thr])
    total = sum_yield_rows(rows)
    counts = total["status"]
    report = {"campaign": campaign, "status": counts, "funnel": st.funnel(counts),
              "first_failure": store.failure_counts(campaign)}
    f = report["funnel"]
    decided = f["inputs"] - f["pending_validity"]
    report["rates"] = {
        "validity": f["valid"] / decided if decided else None,
        "uniqueness_among_valid": (f["unique"] / (f["valid"] - f["pending_uniqueness"])
                                   if f["valid"] - f["pending_uniqueness"] else None),
        "novelty_among_unique": f["novel"] / f["unique"] if f["unique"] else None,
    }
    report["dft"] = store.dft_summary(campaign)
    report["dft_lite"] = store.dft_lite_summary(campaign)
    report["stability_threshold"] = thr

    def with_rates(row: dict) -> dict:
        c = row["counts"][thr]
        return {"condition": row["condition"], "n": row["n"], **c, **yield_rates(c, row["n"])}

    report["by_condition"] = [with_rates(r) for r in rows]
    report["yields"] = with_rates(total) if rows else {}
    rel = total["relaxed"]  # after relaxation: what run_relaxed_uniqueness found
    report["after_relaxation"] = {"checked": rel["checked"], "known": rel["known"], "duplicate": rel["duplicate"],
                                  "sun": rel["sun"].get(thr, 0)}
    return report


# ---------------------------------------------------------------------------------------- promotion
# ------------------------------------------------------------------------------------ DFT-lite tier
def plan_dft_lite(store: ResultsStore, campaign: str) -> list[str]:
    """With ``property.method: dft_lite``: the ML-stable candidates that get a DFT-lite band gap.

    Candidates larger than ``property.dft_lite_max_sites`` are recorded as skipped (with the reason); the
    others are marked queued (atomically: two workers planning at once share them out) and returned."""
    from fw_screen import dft_lite, promotion

    spec = store.campaign_spec(campaign)
    if spec["property"]["method"] != "dft_lite":
        return []
    todo, skipped = [], []
    for doc in store.dft_lite_waiting(campaign, spec["ml"]["stability_threshold"]):
        relaxed = (doc.get("ml") or {}).get("structure_relaxed")
        known = promotion.relaxed_reason(doc)
        if known:
            skipped.append((doc["_id"], {"status": "skipped", "reason": known}))
            continue
        if not relaxed:
            skipped.append((doc["_id"], {"status": "skipped", "reason": "no ML-relaxed structure"}))
            continue
        reason = dft_lite.too_large(Structure.from_dict(relaxed), spec)
        if reason:
            skipped.append((doc["_id"], {"status": "skipped", "reason": reason}))
        else:
            todo.append(doc["_id"])
    store.set_dft_lite_if_absent(skipped)
    return store.set_dft_lite_if_absent([(i, {"status": "queued"}) for i in todo])


def dft_lite_pending(store: ResultsStore, campaign: str) -> int:
    """Candidates of the campaign whose DFT-lite band gap is queued or not yet planned (0 with method ml)."""
    spec = store.campaign_spec(campaign)
    if spec["property"]["method"] != "dft_lite":
        return 0
    return store.dft_lite_pending_count(campaign, spec["ml"]["stability_threshold"])


def run_dft_lite(store: ResultsStore, candidate_id: str, workdir: str | Path, env: dict | None = None,
                 checkpoint: dict | None = None) -> dict:
    """The DFT-lite band gap of one ML-done candidate (QE scf -> nscf at its ML-relaxed structure) and its
    target hits; stored as the candidate's ``dft_lite``.  A failed calculation is stored with its reason."""
    from fw_screen import dft_lite, qe
    from fw_screen import property as prop

    doc = store.dft_lite_candidate(candidate_id)
    if doc is None or doc["status"] != st.ML_DONE:
        return {"status": "skipped", "reason": f"candidate {candidate_id} is "
                                               f"{'missing' if doc is None else doc['status']}, not ml_done"}
    spec = store.campaign_spec(doc["campaign"])
    settings = dft_lite.settings(spec, env)
    base = {"code": "qe", "structure": "ML-relaxed", "kppa": settings["kppa"], "nscf_kppa": settings["nscf_kppa"]}
    try:
        protocol = qe.protocol(doc["elements"], settings)
    except qe.QEError as exc:
        store.set_dft_lite([(candidate_id, {**base, "status": "failed", "reason": str(exc)})])
        return {"status": "failed", "reason": str(exc)}
    structure = Structure.from_dict(doc["ml"]["structure_relaxed"])
    result = dft_lite.band_gap(structure, protocol, settings, Path(workdir) / "dft_lite", checkpoint=checkpoint)
    if result["status"] == "checkpoint":
        return {"status": "checkpoint", "checkpoint": result["checkpoint"]}
    fields = {**base, "status": "done" if result["status"] == "completed" else "failed",
              "reason": result.get("reason"), "protocol_id": protocol["id"], "band_gap": result.get("band_gap"),
              "energy_per_atom": result.get("energy_per_atom"), "steps": result.get("steps"),
              "corrections": result.get("corrections"), "seconds": result.get("seconds"),
              "pw_seconds": result.get("pw_seconds")}
    gap = (result.get("band_gap") or {}).get("band_gap")
    measured = prop.model_error("dft_lite")
    fields["hits"] = gap_hits(gap, None if measured is None else measured["mae"], "dft_lite",
                              (doc.get("ml") or {}).get("e_above_hull"), doc, spec)
    store.set_dft_lite([(candidate_id, fields)])
    return {"status": fields["status"], "reason": fields["reason"], "band_gap": gap,
            "seconds": result.get("seconds"), "pw_seconds": result.get("pw_seconds")}


def run_promotion(store: ResultsStore, campaign: str) -> dict:
    """Promote the best ML-done candidates of a campaign to DFT (rules: spec ``promotion``); idempotent.

    Under a lease, so two workers finishing the ML stage at once cannot both fill the per-condition quota.
    Each promoted candidate stores ``promotion`` = {reason, rank, condition, rules, at}.
    """
    from fw_screen import promotion
    from fw_screen.db import utcnow

    spec = store.campaign_spec(campaign)
    checked: dict = {}

    def references_ok(doc: dict) -> tuple[bool, str]:
        """The DFT hull needs the facet's phases with structures, none larger than reference_max_sites."""
        if spec["dft"]["code"] != "qe":
            return True, "DFT hull against MP entries (VASP path)"
        full = next(store.candidates_for({"_id": doc["_id"]}, {"ml.structure_relaxed": 1}, sort=None))
        structure = Structure.from_dict(full["ml"]["structure_relaxed"])
        key = structure.composition.reduced_formula
        if key not in checked:
            try:
                phases = dft_reference_phases(store, structure, spec)
                big = oversized_phases(phases, spec)
                checked[key] = (not big, f"DFT reference phases {', '.join(p['formula'] for p in phases)}" if not big
                                else f"reference phase(s) {', '.join(big)} > {spec['dft']['reference_max_sites']} sites")
            except Exception as exc:  # e.g. elemental references without structures
                checked[key] = (False, f"no DFT reference phases: {exc}")
        return checked[key]

    waiting = dft_lite_pending(store, campaign)
    if waiting:  # the target hits promotion acts on are DFT-lite gaps: not all computed yet
        return {"considered": 0, "eligible": 0, "chosen": 0, "not_eligible": {}, "promoted": [],
                "waiting_dft_lite": waiting}
    rules = {**spec["promotion"], "band_gap_source": spec["property"]["method"]}
    owner = store.acquire_lock(f"promote:{campaign}", lease_s=120, wait_s=300)
    try:
        choices, summary = promotion.select(store.ml_done_for_promotion(campaign), rules,
                                            store.promoted_per_condition(campaign), references_ok=references_ok)
        promoted = []
        for choice in choices:
            fields = {"promotion": {**{k: v for k, v in choice.items() if k != "_id"}, "at": utcnow()}}
            if store.transition([(choice["_id"], st.ML_DONE, st.PROMOTED, fields)], "promotion"):
                promoted.append(choice["_id"])
    finally:
        store.release_lock(f"promote:{campaign}", owner)
    summary["promoted"] = promoted
    return summary


def ml_stage_finished(store: ResultsStore, campaign: str) -> bool:
    """No candidate of the campaign waits for validity, uniqueness or the ML stage."""
    return store.count({"campaign": campaign, "status": {"$in": [st.INGESTED, st.VALID, st.NOVEL]}}) == 0


# ---------------------------------------------------------------------------------------------- DFT
def _structure_entries(store: ResultsStore, elements) -> list:
    """Reference entries of a chemical system with their structures (MP ComputedStructureEntries)."""
    from monty.json import MontyDecoder

    from fw_screen.stability import HULL_ENERGY_SCALE

    decoder = MontyDecoder()
    return [decoder.process_decoded(d["entry"]) for d in store.entries_in_chemsys(elements, HULL_ENERGY_SCALE)]


def dft_reference_phases(store: ResultsStore, structure: Structure, spec: dict) -> list[dict]:
    """The reference phases deciding the hull at ``structure``'s composition (see :mod:`fw_screen.dft`)."""
    from fw_screen import dft

    elements = sorted({el.symbol for el in structure.composition.elements})
    return dft.reference_phases(structure.composition, _structure_entries(store, elements),
                                box=spec["dft"]["qe"]["molecule_box"],
                                polymorph_tolerance=spec["dft"]["reference_polymorph_tolerance"])


def oversized_phases(phases: list[dict], spec: dict) -> list[str]:
    """Formulas of the reference phases larger than ``dft.reference_max_sites`` (not computed)."""
    return [p["formula"] for p in phases if len(p["structure"]) > spec["dft"]["reference_max_sites"]]


def dft_jobs(store: ResultsStore, candidate_ids: list[str]) -> dict:
    """The DFT work for promoted candidates: their ids and the distinct reference phases they need.

    Returns {"candidates": [{"id", "campaign"}], "references": [{"system", "key", "formula", "kind",
    "structure" (dict), "campaign"}]}: one entry per (chemical system, phase) -- a reference is computed
    at its system's cutoffs, so the same phase in two systems is two calculations.
    """
    jobs: dict = {"candidates": [], "references": []}
    seen = set()
    for doc in store.candidates_for({"_id": {"$in": list(candidate_ids)}, "status": st.PROMOTED},
                                    {"campaign": 1, "elements": 1, "ml.structure_relaxed": 1}):
        spec = store.campaign_spec(doc["campaign"])
        jobs["candidates"].append({"id": doc["_id"], "campaign": doc["campaign"]})
        if spec["dft"]["code"] != "qe":
            continue
        structure = Structure.from_dict(doc["ml"]["structure_relaxed"])
        system = "-".join(sorted(doc["elements"]))
        try:
            phases = dft_reference_phases(store, structure, spec)
        except Exception as exc:  # the candidate's own DFT Firework records the reason
            log.warning("no reference phases for %s: %s", doc["_id"], exc)
            continue
        too_big = set(oversized_phases(phases, spec))
        for phase in phases:
            if (system, phase["key"]) in seen or phase["formula"] in too_big:
                continue
            seen.add((system, phase["key"]))
            jobs["references"].append({"system": system, "key": phase["key"], "formula": phase["formula"],
                                       "kind": phase["kind"], "structure": phase["structure"].as_dict(),
                                       "campaign": doc["campaign"]})
    return jobs


def _reference_id(protocol: dict, key: str) -> str:
    return f"{protocol['id']}:{key}"


def _result_fields(result: dict) -> dict:
    """A QE chain result as it is stored (structures as dicts)."""
    out = {k: v for k, v in result.items() if k not in ("structure", "checkpoint")}
    out["structure_relaxed"] = result["structure"].as_dict() if result.get("structure") is not None else None
    return out


def run_dft_reference(store: ResultsStore, campaign: str, system: str, phase: dict, workdir: str | Path,
                      env: dict | None = None, checkpoint: dict | None = None, fw_id: int | None = None) -> dict:
    """Compute one reference phase of ``system`` with the QE protocol of that system, unless it has been
    computed (or is being computed) under the same protocol already -- never two runs of one reference.

    Returns {"ref_id", "status": done|failed|skipped|checkpoint, ...}; a checkpoint keeps the claim.
    """
    from fw_screen import qe

    spec = store.campaign_spec(campaign)
    settings = qe.resolve_settings(spec["dft"]["qe"], env)
    structure = phase["structure"]  # FireWorks turns MSONable dicts in task parameters into objects
    structure = Structure.from_dict(structure) if isinstance(structure, dict) else structure
    phase = {**phase, "structure": structure.as_dict()}
    try:
        protocol = qe.protocol(system.split("-"), settings)
    except qe.QEError as exc:  # no pseudopotentials: the candidates of the system record the same reason
        return {"ref_id": None, "status": "failed", "reason": str(exc)}
    ref_id = _reference_id(protocol, phase["key"])
    if checkpoint is None and not store.claim_dft_reference({
            "_id": ref_id, "protocol_id": protocol["id"], "protocol": protocol, "key": phase["key"],
            "formula": phase["formula"], "kind": phase["kind"], "system": system, "fw_id": fw_id,
            "structure_initial": phase["structure"]}):
        return {"ref_id": ref_id, "status": "skipped", "reason": "computed or being computed elsewhere"}
    result = qe.run_chain(structure, protocol, settings, workdir, kind=phase["kind"], checkpoint=checkpoint,
                          with_band_gap=False)  # energy only
    if result["status"] == "checkpoint":
        return {"ref_id": ref_id, "status": "checkpoint", "checkpoint": result["checkpoint"]}
    status = "done" if result["status"] == "completed" else "failed"
    store.finish_dft_reference(ref_id, status, _result_fields(result))
    update_dft_hulls(store, protocol["id"])
    return {"ref_id": ref_id, "status": status, "reason": result.get("reason"),
            "seconds": result.get("seconds"), "pw_seconds": result.get("pw_seconds")}


def run_dft_candidate(store: ResultsStore, candidate_id: str, workdir: str | Path, env: dict | None = None,
                      checkpoint: dict | None = None, fw_id: int | None = None) -> dict:
    """QE relax -> scf -> nscf band gap for one promoted candidate (starting from its ML-relaxed cell),
    then its reference phases not yet claimed by anyone, then its DFT hull if all references are done.

    A rerun of the Firework (``fw_id``) after its launcher died while computing those reference phases
    inline finds the candidate ``dft_done`` with its hull waiting: it only resumes the references."""
    from fw_screen import qe
    from fw_screen import property as prop

    doc = next(store.candidates_for({"_id": candidate_id}, {"campaign": 1, "status": 1, "elements": 1,
                                                             "targets": 1, "ml": 1, "dft.hull_status": 1,
                                                             "dft.structure_relaxed": 1}, sort=None), None)
    if doc is not None and doc["status"] == st.DFT_DONE and doc["dft"].get("hull_status") == "waiting":
        spec = store.campaign_spec(doc["campaign"])
        settings = qe.resolve_settings(spec["dft"]["qe"], env)
        protocol = qe.protocol(doc["elements"], settings)
        phases = dft_reference_phases(store, Structure.from_dict(doc["dft"]["structure_relaxed"]), spec)
        inline = _inline_references(store, doc["campaign"], "-".join(sorted(doc["elements"])), phases, workdir,
                                    env, settings, protocol["id"], fw_id)
        return {"status": "resumed", "inline_references": inline}
    if doc is None or doc["status"] != st.PROMOTED:
        return {"status": "skipped", "reason": f"candidate {candidate_id} is "
                                               f"{'missing' if doc is None else doc['status']}, not promoted"}
    spec = store.campaign_spec(doc["campaign"])
    settings = qe.resolve_settings(spec["dft"]["qe"], env)
    structure = Structure.from_dict(doc["ml"]["structure_relaxed"])
    system = "-".join(sorted(doc["elements"]))
    base = {"code": "qe", "system": system, "start": "ML-relaxed structure"}
    try:
        protocol = qe.protocol(doc["elements"], settings)
    except qe.QEError as exc:
        store.transition([(candidate_id, st.PROMOTED, st.DFT_FAILED, {"dft": {**base, "reason": str(exc)}})], "dft")
        return {"status": "failed", "reason": str(exc)}
    result = qe.run_chain(structure, protocol, settings, Path(workdir) / "candidate", kind="crystal",
                          checkpoint=checkpoint)
    if result["status"] == "checkpoint":
        return {"status": "checkpoint", "checkpoint": result["checkpoint"]}
    fields = {**base, **_result_fields(result), "protocol_id": protocol["id"], "protocol": protocol}
    if result["status"] != "completed":
        store.transition([(candidate_id, st.PROMOTED, st.DFT_FAILED, {"dft": fields})], "dft")
        return {"status": "failed", "reason": result.get("reason")}
    gap = (result.get("band_gap") or {}).get("band_gap")
    fields["hits"] = prop.target_hits(gap, None, doc.get("targets") or {}, spec["property"]["band_gap_tolerance"],
                                      spec["dft"]["stability_threshold"])
    ml_gap = ((doc["ml"].get("band_gap") or {}).get("band_gap"))
    fields["ml_vs_dft"] = {"band_gap_ml": ml_gap, "band_gap_dft": gap,
                           "band_gap_error": None if ml_gap is None or gap is None else ml_gap - gap}
    try:
        phases = dft_reference_phases(store, result["structure"], spec)
    except Exception as exc:
        phases, fields["hull_status"], fields["hull_reason"] = [], "not_computed", f"{type(exc).__name__}: {exc}"
    too_big = oversized_phases(phases, spec)
    if too_big:
        fields["hull_status"] = "not_computed"
        fields["hull_reason"] = (f"reference phase(s) {', '.join(too_big)} larger than "
                                 f"dft.reference_max_sites={spec['dft']['reference_max_sites']}")
    elif phases:
        fields["hull_status"] = "waiting"
        fields["references"] = [_reference_id(protocol, p["key"]) for p in phases]
        fields["reference_phases"] = [{"id": _reference_id(protocol, p["key"]), "formula": p["formula"],
                                       "kind": p["kind"]} for p in phases]
    store.transition([(candidate_id, st.PROMOTED, st.DFT_DONE, {"dft": fields})], "dft")
    inline = []
    if fields.get("hull_status") == "waiting":
        inline = _inline_references(store, doc["campaign"], system, phases, workdir, env, settings, protocol["id"],
                                    fw_id)
    return {"status": "done", "band_gap": gap, "energy_per_atom": result["energy_per_atom"],
            "hull_status": fields.get("hull_status"), "inline_references": inline,
            "seconds": result.get("seconds"), "pw_seconds": result.get("pw_seconds")}


def _inline_references(store: ResultsStore, campaign: str, system: str, phases: list[dict], workdir: str | Path,
                       env: dict | None, settings: dict, protocol_id: str, fw_id: int | None) -> list[dict]:
    """References nobody has claimed yet, computed in the candidate's Firework (claimed under its ``fw_id``),
    so the hull never waits for a reference Firework that was never added; not under a wall-time budget
    (each would get a fresh one): their Fireworks do it."""
    inline = []
    if settings.get("walltime_s"):
        return inline
    for phase in phases:
        ref = run_dft_reference(store, campaign, system, phase,
                                Path(workdir) / f"ref_{phase['key'].replace(':', '_')}", env, fw_id=fw_id)
        if ref["status"] == "checkpoint":  # out of time: give the claim back for someone else
            store.finish_dft_reference(ref["ref_id"], "failed", {"reason": "walltime reached (inline run)"})
        inline.append({k: ref.get(k) for k in ("ref_id", "status")})
    update_dft_hulls(store, protocol_id)
    return inline


def update_dft_hulls(store: ResultsStore, protocol_id: str | None = None) -> int:
    """Give every DFT-done candidate whose reference phases are all computed its DFT e_above_hull.

    Called after every candidate and reference calculation (whoever finishes last completes the hull);
    a failed reference fails the hull with its reason.  Returns the number of hulls written.
    """
    from fw_screen import dft
    from fw_screen import property as prop

    written = 0
    for doc in store.dft_waiting(protocol_id):
        d = doc["dft"]
        refs_ = store.dft_reference_docs(d["references"])
        if any(refs_.get(r, {}).get("status") not in ("done", "failed") for r in d["references"]):
            continue
        failed = [f"{r['formula']}: {(r.get('result') or {}).get('reason')}" for r in refs_.values()
                  if r["status"] == "failed"]
        if failed:
            written += store.set_dft_hull(doc["_id"], "waiting", {"hull_status": "failed",
                                                                  "hull_reason": "reference failed: " + "; ".join(failed)})
            continue
        spec = store.campaign_spec(doc["campaign"])
        cand, refs_in = dft.hull_inputs(doc["_id"], d, refs_.values())
        try:
            hull = dft.dft_hull(cand, refs_in)
        except dft.HullError as exc:
            written += store.set_dft_hull(doc["_id"], "waiting", {"hull_status": "failed", "hull_reason": str(exc)})
            continue
        thr = spec["dft"]["stability_threshold"]
        gap = (d.get("band_gap") or {}).get("band_gap")
        hits = prop.target_hits(gap, hull["e_above_hull"], doc.get("targets") or {},
                                spec["property"]["band_gap_tolerance"], thr)
        ml_e = (doc.get("ml") or {}).get("e_above_hull")
        written += store.set_dft_hull(doc["_id"], "waiting", {
            **hull, "hull_status": "done", "stable": hull["e_above_hull"] <= thr, "hits": hits,
            "ml_vs_dft.e_above_hull_ml": ml_e,
            "ml_vs_dft.e_above_hull_error": None if ml_e is None else ml_e - hull["e_above_hull"]})
    return written
