"""Stage 4 runner, ML stability (and the ML band gap of stage 5): one ML batch relaxed, placed on its
reference hull and written back; the batching of novel candidates into ML batches.
"""

from __future__ import annotations

import logging
import time
import warnings

from pymatgen.core import Structure

from fw_screen import state as st
from fw_screen.stages.relaxed import relaxed_verdict
from fw_screen.store import ResultsStore
from fw_screen.spec import CampaignSpec

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- ML stability
def stability_fields(doc: dict, spec: CampaignSpec, store: ResultsStore,
                     device: str | None = None) -> tuple[str, dict]:
    """(new status, stored fields) of the ML stage for one novel candidate.

    ``device``: ``"cpu"`` / ``"cuda"`` as :func:`run_stability` resolved it once per batch; None resolves the
    spec's ``ml.device`` here (a :class:`~fw_screen.science.potentials.DeviceError` then raises)."""
    from fw_screen.science import band_gap as prop
    from fw_screen.science import potentials, stability
    from fw_screen.stages import hulls

    ml, pcfg = spec.ml, spec.property
    device = potentials.resolve_device(ml.device if device is None else device)
    structure = Structure.from_dict(doc["structure_reduced"])
    elements = sorted({el.symbol for el in structure.composition.elements})
    out: dict = {"potential": ml.potential, "device": device}
    pd, missing = hulls.reference_hull(store, elements)
    band_gap = None
    gap_model = pcfg.band_gap_model, pcfg.band_gap_fidelity, device  # loaded once per process (cached)
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
    if len(structure) > ml.max_sites:
        out["reason"] = f"{len(structure)} sites > ml.max_sites={ml['max_sites']}"
        return st.ML_FAILED, {"ml": out}
    unsupported = potentials.unsupported_elements(ml.potential, elements)
    if unsupported:
        out["reason"] = f"{ml['potential']} does not cover {', '.join(unsupported)}"
        return st.ML_FAILED, {"ml": out}
    calc = potentials.get_calculator(ml.potential, ml.model_dir, device)
    if ml.prescreen_e_hull is not None and _prescreened(doc, structure, calc, pd, spec, out, device):
        return st.ML_DONE, {"ml": out}
    relax = stability.relax(structure, calc, fmax=ml.fmax, max_steps=ml.max_steps,
                            time_limit_s=ml.time_limit_s)
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
        entry = stability.ml_entry(relaxed, relax["energy_total"], ml.potential, entry_id=doc["_id"])
        entry_unrelaxed = stability.ml_entry(structure, relax["unrelaxed_energy_total"], ml.potential,
                                             entry_id=doc["_id"])
    except stability.CorrectionError as exc:
        out["reason"] = f"energy correction failed: {exc}"
        return st.ML_FAILED, {"ml": out}
    hull = _hull_fields(entry, pd)
    out["hull"] = hull
    out["e_above_hull"] = hull["e_above_hull"]
    out["e_above_hull_unrelaxed"] = stability.hull_distance(entry_unrelaxed, pd)["e_above_hull"]
    out["stable"] = hull["e_above_hull"] <= ml.stability_threshold
    gap = None
    try:  # a band-gap model that cannot predict (e.g. no neighbour within its cutoff) keeps the hull result
        band_gap = prop.predict_band_gap(relaxed, prop.load_band_gap_model(*gap_model))
        out["band_gap"] = {**band_gap, "structure": "relaxed"}
        gap = band_gap["band_gap"]
    except prop.PropertyError as exc:
        out["band_gap_error"] = str(exc)
    out["hits"] = ml_hits(band_gap if gap is not None else None, hull["e_above_hull"], doc, spec)
    return st.ML_DONE, {"ml": out}


def _hull_fields(entry, pd) -> dict:
    """:func:`fw_screen.science.stability.hull_distance` as stored (``ml.hull``)."""
    from fw_screen.science import stability

    hull = stability.hull_distance(entry, pd)
    # as a list: entry ids are not safe MongoDB keys ('.' would split them)
    formulas = hull.pop("decomposition_formulas")
    hull["decomposition"] = [{"entry_id": k, "formula": formulas.get(k), "fraction": v}
                             for k, v in hull["decomposition"].items()]
    return hull


def _prescreened(doc: dict, structure: Structure, calc, pd, spec: CampaignSpec, out: dict,
                 device: str = "cpu") -> bool:
    """The single-point pre-screen (``ml.prescreen_e_hull``): the unrelaxed cell's energy above the
    reference hull, through the same MP2020 entry path as the relaxed one.  Records ``ml.prescreen``; when
    that hull distance is above the bound, fills ``out`` with the verdict of a candidate left unrelaxed
    (``ml.relax.status`` "skipped", ``ml.e_above_hull`` the unrelaxed value flagged as an upper bound, not
    stable, band gap on the unrelaxed cell) and returns True.  A single point that fails or an energy
    MP2020 rejects skips nothing: the relaxation then gives its usual verdict."""
    from fw_screen.science import band_gap as prop
    from fw_screen.science import stability

    ml, pcfg = spec.ml, spec.property
    bound = ml.prescreen_e_hull
    point = stability.single_point(structure, calc)
    record = {"bound": bound, "status": point["status"], "seconds": point["seconds"]}
    out["prescreen"] = record
    if point["status"] != "ok":
        record.update(relaxed=True, reason=f"single point {point['status']}: {point['reason']}")
        return False
    try:
        entry = stability.ml_entry(structure, point["energy_total"], ml.potential, entry_id=doc["_id"])
    except stability.CorrectionError as exc:
        record.update(relaxed=True, reason=f"energy correction failed: {exc}")
        return False
    hull = _hull_fields(entry, pd)
    reason = stability.prescreen_reason(hull["e_above_hull"], bound)
    record.update(e_above_hull_unrelaxed=hull["e_above_hull"], relaxed=reason is None, reason=reason)
    if reason is None:
        return False
    out["reason"] = reason
    out["relax"] = {"status": "skipped", "reason": reason, "steps": 0, "max_force": point["max_force"],
                    "energy_total": None, "energy_per_atom": None,
                    "unrelaxed_energy_total": point["energy_total"],
                    "unrelaxed_energy_per_atom": point["energy_per_atom"], "n_sites": len(structure),
                    "seconds": point["seconds"]}
    out["hull"] = {**hull, "structure": "unrelaxed"}
    out["e_above_hull"] = out["e_above_hull_unrelaxed"] = hull["e_above_hull"]
    out["e_above_hull_is_upper_bound"] = True  # relaxing could only lower it
    out["stable"] = hull["e_above_hull"] <= ml.stability_threshold  # False: the spec keeps bound >= threshold
    band_gap = None
    try:  # said to be the unrelaxed cell's, as for candidates without a reference hull
        band_gap = prop.predict_band_gap(structure, prop.load_band_gap_model(pcfg.band_gap_model,
                                                                             pcfg.band_gap_fidelity, device))
        out["band_gap"] = {**band_gap, "structure": "unrelaxed"}
    except Exception as exc:  # as for the no-reference candidates: the hull verdict stays
        band_gap = None
        out["band_gap_error"] = f"{type(exc).__name__}: {exc}"
    out["hits"] = ml_hits(band_gap, hull["e_above_hull"], doc, spec)
    return True


def ml_hits(band_gap: dict | None, e_above_hull: float | None, doc: dict, spec: CampaignSpec) -> dict:
    """Target hits of an ML band-gap prediction (:func:`fw_screen.science.band_gap.predict_band_gap`)."""
    return gap_hits((band_gap or {}).get("band_gap"), (band_gap or {}).get("model_error"), "ml", e_above_hull,
                    doc, spec)


def gap_hits(gap: float | None, mae: float | None, source: str, e_above_hull: float | None, doc: dict,
             spec: CampaignSpec) -> dict:
    """Target hits of a band gap from ``source`` (``ml`` / ``dft_lite``) whose measured error is ``mae``: the
    error is recorded and, when ``property.widen_tolerance_by_model_error``, added to the tolerance."""
    from fw_screen.science import band_gap as prop

    return prop.target_hits(gap, e_above_hull, doc.get("targets") or {}, prop.hit_tolerance(spec.property, mae),
                            spec.ml.stability_threshold, model_error=mae, source=source)


def plan_ml_batches(store: ResultsStore, campaign: str, ids: list[str], spec: CampaignSpec) -> list[str]:
    """Put novel candidates into ML batches (ids that FireWorks cannot mistake for dates).

    Candidates inside a complete reference system will be relaxed (seconds to minutes each): small
    batches of ``ml.batch_size`` keep several ML workers busy to the end (:func:`ml_batch_size`: larger on
    GPU workers).  The others only get a band-gap prediction (milliseconds): they go in batches of
    ``batch_size`` so they cost few rockets.
    """
    import uuid

    prefix = f"m{uuid.uuid4().hex[:10]}"
    from fw_screen.stages import hulls

    elements = {d["_id"]: d.get("elements") or [] for d in store.candidates_for(
        {"_id": {"$in": ids}}, {"elements": 1}, sort=None)}
    relax = hulls.relaxable(store, {i: elements.get(i, []) for i in ids})
    chosen = set(relax)
    cheap = [i for i in ids if i not in chosen]
    return (store.assign_ml_batches(campaign, relax, ml_batch_size(spec), prefix=f"{prefix}r")
            + store.assign_ml_batches(campaign, cheap, spec.batch_size, prefix=f"{prefix}n"))


def ml_batch_size(spec: CampaignSpec) -> int:
    """Candidates to relax per ML Firework: ``ml.batch_size_cuda`` when ``ml.device`` is ``cuda``, else
    ``ml.batch_size``.  Batches are planned before any worker takes them, on whichever node runs the
    uniqueness stage, so ``auto`` plans CPU-sized batches (a GPU worker then runs more of them): name the
    device ``cuda`` to plan for GPU workers."""
    return spec.ml.batch_size_cuda if spec.ml.device == "cuda" else spec.ml.batch_size


def requeue_covered(store: ResultsStore, campaign: str) -> int:
    """``no_reference`` candidates whose chemical system the loaded reference sets now cover go back to
    ``novel`` (to be relaxed); returns how many."""
    from fw_screen.stages import hulls

    waiting = store.no_reference_elements(campaign)
    covered = hulls.relaxable(store, waiting) if waiting else []
    return store.requeue_for_ml(covered) if covered else 0


def run_stability(store: ResultsStore, campaign: str, ml_batch: str, device: str | None = None) -> dict:
    """Relax, hull distance, band gap and target hits for the novel candidates of one ML batch.

    ``device`` (the FWorker env's ``ml_device``, if any) overrides the spec's ``ml.device`` on this worker.
    The device is resolved once, before any candidate is touched: ``cuda`` on a worker without one raises
    :class:`~fw_screen.science.potentials.DeviceError` (the Firework fizzles with that message, every
    candidate of the batch stays ``novel`` for a rerun on a GPU worker).
    """
    from fw_screen.science.potentials import resolve_device

    if not isinstance(ml_batch, str) or store.count({"campaign": campaign, "ml_batch": ml_batch}) == 0:
        raise ValueError(f"campaign {campaign!r} has no ML batch {ml_batch!r}")
    spec = store.campaign_spec(campaign)
    device = resolve_device(spec.ml.device if device is None else device)
    counts = {st.ML_DONE: 0, st.NO_REFERENCE: 0, st.ML_FAILED: 0}
    t0 = time.perf_counter()
    docs = list(store.candidates_for({"campaign": campaign, "ml_batch": ml_batch, "status": st.NOVEL},
                                     {"structure_reduced": 1, "targets": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for doc in docs:
            try:
                new, fields = stability_fields(doc, spec, store, device)
            except Exception as exc:  # one bad candidate never takes the batch down
                log.exception("ML stage failed on %s", doc["_id"])
                new, fields = st.ML_FAILED, {"ml": {"reason": f"{type(exc).__name__}: {exc}",
                                                    "potential": spec.ml.potential}}
            counts[new] += 1
            store.transition([(doc["_id"], st.NOVEL, new, fields)], "ml")  # one by one: results land as they come
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    counts["device"] = device
    from fw_screen.stages import hulls

    counts["hulls_built_in_process"] = hulls.STATS["built"]
    return counts
