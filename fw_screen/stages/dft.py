"""Stage 7 runner, DFT: the reference phases a candidate's hull needs, one candidate's or one reference
phase's Quantum ESPRESSO chain, and the DFT hull once every phase is computed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pymatgen.core import Structure

from fw_screen import state as st
from fw_screen.dft import schema
from fw_screen.store import ResultsStore
from fw_screen.spec import CampaignSpec

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- DFT
def _structure_entries(store: ResultsStore, elements) -> list:
    """Reference entries of a chemical system with their structures (MP ComputedStructureEntries)."""
    from monty.json import MontyDecoder

    from fw_screen.science.stability import HULL_ENERGY_SCALE

    decoder = MontyDecoder()
    return [decoder.process_decoded(d["entry"]) for d in store.entries_in_chemsys(elements, HULL_ENERGY_SCALE)]


def dft_reference_phases(store: ResultsStore, structure: Structure, spec: CampaignSpec) -> list[dict]:
    """The reference phases deciding the hull at ``structure``'s composition (see :mod:`fw_screen.dft.hull`)."""
    from fw_screen.dft import hull as dft

    elements = sorted({el.symbol for el in structure.composition.elements})
    return dft.reference_phases(structure.composition, _structure_entries(store, elements),
                                box=spec.dft.qe.molecule_box,
                                polymorph_tolerance=spec.dft.reference_polymorph_tolerance)


def oversized_phases(phases: list[dict], spec: CampaignSpec) -> list[str]:
    """Formulas of the reference phases larger than ``dft.reference_max_sites`` (not computed)."""
    return [p["formula"] for p in phases if len(p["structure"]) > spec.dft.reference_max_sites]


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
        if spec.dft.code != "qe":
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
    from fw_screen.dft import qe

    spec = store.campaign_spec(campaign)
    settings = qe.resolve_settings(spec.dft.qe, env)
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
    from fw_screen.dft import qe

    doc = next(store.candidates_for({"_id": candidate_id}, {"campaign": 1, "status": 1, "elements": 1,
                                                             "targets": 1, "ml": 1, "dft.hull_status": 1,
                                                             "dft.structure_relaxed": 1}, sort=None), None)
    if doc is not None and doc["status"] == st.DFT_DONE and doc["dft"].get("hull_status") == "waiting":
        spec = store.campaign_spec(doc["campaign"])
        settings = qe.resolve_settings(spec.dft.qe, env)
        protocol = qe.protocol(doc["elements"], settings)
        phases = dft_reference_phases(store, Structure.from_dict(doc["dft"]["structure_relaxed"]), spec)
        inline = _inline_references(store, doc["campaign"], "-".join(sorted(doc["elements"])), phases, workdir,
                                    env, settings, protocol["id"], fw_id)
        return {"status": "resumed", "inline_references": inline}
    if doc is None or doc["status"] != st.PROMOTED:
        return {"status": "skipped", "reason": f"candidate {candidate_id} is "
                                               f"{'missing' if doc is None else doc['status']}, not promoted"}
    spec = store.campaign_spec(doc["campaign"])
    settings = qe.resolve_settings(spec.dft.qe, env)
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
    fields.update(schema.band_gap_fields(gap, doc, spec))
    try:
        phases = dft_reference_phases(store, result["structure"], spec)
    except Exception as exc:
        phases, fields["hull_status"], fields["hull_reason"] = [], "not_computed", f"{type(exc).__name__}: {exc}"
    too_big = oversized_phases(phases, spec)
    if too_big:
        fields["hull_status"] = "not_computed"
        fields["hull_reason"] = (f"reference phase(s) {', '.join(too_big)} larger than "
                                 f"dft.reference_max_sites={spec.dft.reference_max_sites}")
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
    from fw_screen.dft import hull as dft

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
        gap = (d.get("band_gap") or {}).get("band_gap")
        verdict = schema.hull_fields(hull["e_above_hull"], gap, doc, spec)
        ml_vs_dft = verdict.pop("ml_vs_dft")  # dotted: the band-gap half written with the band gap stays
        written += store.set_dft_hull(doc["_id"], "waiting", {
            **hull, **verdict, **{f"ml_vs_dft.{k}": v for k, v in ml_vs_dft.items()}})
    return written
