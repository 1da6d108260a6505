"""FireWorks for fw-screen: the FireTasks (thin: each calls one stage runner) and the workflow builders that
turn a submission, an ML batch, a promotion or a DFT job into Fireworks.

One module, as jobflow's FireWorks manager is one module: a task that adds Fireworks and the builder that
makes them stay side by side, so the two never import each other.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from fireworks import FiretaskBase, Firework, FWAction, Workflow, explicit_serialize

from fw_screen import stages as campaign
from fw_screen import state as st
from fw_screen.dft import schema
from fw_screen.dft.vasp import candidate_structure, vasp_result
from fw_screen.extras import require
from fw_screen.store import ResultsStore
from fw_screen.store.atomate import find_task_docs
from fw_screen.spec import CampaignSpec, as_spec


#: the FireTasks' serialized names before the package had rooms (fw-screen <= 2c57120 stored Fireworks as
#: ``{{fw_screen.firetasks.IngestTask}}``, ``{{fw_screen.vasp.VaspResultTask}}``): Fireworks added by an older
#: fw-screen run after ``FW_NAME_UPDATES: <this mapping>`` goes into the workers' FW_config.yaml
LEGACY_TASK_NAMES = {
    **{f"{{{{fw_screen.firetasks.{n}}}}}": f"{{{{fw_screen.orchestration.fireworks.{n}}}}}"
       for n in ("IngestTask", "ValidityTask", "UniquenessTask", "StabilityTask", "QECandidateTask", "DFTLiteTask",
                 "QEReferenceTask")},
    "{{fw_screen.vasp.VaspResultTask}}": "{{fw_screen.orchestration.fireworks.VaspResultTask}}",
}


def resolve_db_file(value: str | None, fw_spec: dict) -> str:
    """``>>key<<`` looks ``key`` up in the FWorker env; a path is used as it is."""
    value = value or ">>db_file<<"
    if value.startswith(">>") and value.endswith("<<"):
        value = (fw_spec.get("_fw_env") or {}).get(value[2:-2]) or os.environ.get("FW_SCREEN_LAUNCHPAD")
    if not value:
        raise RuntimeError("no results database: give the FWorker env a db_file (a LaunchPad YAML path), "
                           "or set FW_SCREEN_LAUNCHPAD")
    return os.path.expanduser(value)


_STORES: dict[str, ResultsStore] = {}


def _store(task: FiretaskBase, fw_spec: dict) -> ResultsStore:
    """One client per database file per process: ``rlaunch rapidfire`` runs many rockets in one process."""
    path = resolve_db_file(task.get("db_file"), fw_spec)
    if path not in _STORES:
        _STORES[path] = ResultsStore.from_file(path)
    return _STORES[path]


@explicit_serialize
class IngestTask(FiretaskBase):
    """Ingest ``source`` into the campaign of ``spec``, then add the cheap-stage Fireworks for it."""

    required_params = ["source", "spec"]
    optional_params = ["db_file", "submission"]

    def run_task(self, fw_spec):

        store = _store(self, fw_spec)
        spec = as_spec(self["spec"])  # plain data in the Firework
        summary = campaign.run_ingest(store, self["source"], spec, submission=self.get("submission"))
        wf = stage_workflow(summary["campaign"], summary["batches"], spec, db_file=self.get("db_file"))
        return FWAction(stored_data={k: v for k, v in summary.items() if k != "batches"},
                        additions=[wf] if wf else None)


@explicit_serialize
class ValidityTask(FiretaskBase):
    """Validity checks for one batch of candidates."""

    required_params = ["campaign", "batch"]
    optional_params = ["db_file"]

    def run_task(self, fw_spec):
        counts = campaign.run_validity(_store(self, fw_spec), self["campaign"], self["batch"])
        return FWAction(stored_data=counts)


@explicit_serialize
class UniquenessTask(FiretaskBase):
    """Uniqueness within the campaign and novelty against references, for one formula shard."""

    required_params = ["campaign", "shard"]
    optional_params = ["db_file"]

    def run_task(self, fw_spec):

        store = _store(self, fw_spec)
        counts = campaign.run_uniqueness(store, self["campaign"], int(self["shard"]))
        fws = ml_fireworks(self["campaign"], counts.get("ml_batches", []), store.campaign_spec(self["campaign"]),
                           db_file=self.get("db_file"))
        counts["ml_batches"] = len(counts.get("ml_batches", []))
        return FWAction(stored_data=counts, additions=fws or None)


@explicit_serialize
class StabilityTask(FiretaskBase):
    """ML relaxation, energy above hull, band gap and target hits for one ML batch of novel candidates."""

    required_params = ["campaign", "ml_batch"]
    optional_params = ["db_file"]

    def run_task(self, fw_spec):
        require("ml")  # first, before the store: without the extra the Firework fizzles and no data changes
        import torch

        # one thread per worker process: parallelism comes from more rlaunch processes; two torch
        # threads per process on a busy 2-core node made predictions ~100x slower (measured)
        torch.set_num_threads(int(os.environ.get("FW_SCREEN_TORCH_THREADS", "1")))
        store = _store(self, fw_spec)
        # the FWorker env's ml_device (auto | cpu | cuda) overrides the spec's ml.device on this worker
        device = (fw_spec.get("_fw_env") or {}).get("ml_device")
        counts = campaign.run_stability(store, self["campaign"], self["ml_batch"], device=device)
        return FWAction(stored_data=counts, additions=_after_ml_stage(self, store, counts))


def _after_ml_stage(task: FiretaskBase, store: ResultsStore, counts: dict) -> list | None:
    """The last ML (or DFT-lite) Firework of a campaign adds what comes next (:func:`fw_screen.orchestration.fireworks.after_ml_stage`)."""
    spec = store.campaign_spec(task["campaign"])
    if not (spec.promotion.auto and campaign.ml_stage_finished(store, task["campaign"])):
        return None

    wfs, info = after_ml_stage(store, task["campaign"], db_file=task.get("db_file"))
    counts.update(info)
    return wfs or None


def _dft_env(fw_spec: dict) -> dict:
    """The FWorker env (pw_cmd, mpi_cmd, pseudo_dir ...), as atomate reads >>vasp_cmd<<."""
    return dict(fw_spec.get("_fw_env") or {})


def _continuation(task: FiretaskBase, fw_spec: dict, checkpoint: dict) -> FWAction:
    """Wall time reached: the same task, resumed from ``checkpoint``, as a new Firework (any DFT worker)."""
    from fireworks import Firework

    params = {k: v for k, v in task.items() if k != "checkpoint" and not k.startswith("_")}
    new_spec = {k: v for k, v in fw_spec.items() if not k.startswith("_") or k in ("_category", "_priority",
                                                                                     "_add_launchpad_and_fw_id")}
    new_spec["continuation"] = int(fw_spec.get("continuation", 0)) + 1
    fw = Firework(type(task)(checkpoint=checkpoint, **params), spec=new_spec,
                  name=f"{fw_spec.get('stage', 'dft')} continuation {new_spec['continuation']}")
    return FWAction(stored_data={"status": "checkpoint"}, additions=[fw])


@explicit_serialize
class QECandidateTask(FiretaskBase):
    """Quantum ESPRESSO relax, band gap and (when its references are done) DFT hull of one promoted candidate."""

    required_params = ["candidate"]
    optional_params = ["db_file", "checkpoint"]

    def run_task(self, fw_spec):
        require("dft")
        out = campaign.run_dft_candidate(_store(self, fw_spec), self["candidate"], os.getcwd(), _dft_env(fw_spec),
                                         checkpoint=self.get("checkpoint"),
                                         fw_id=getattr(self, "fw_id", None))  # set by _add_launchpad_and_fw_id
        if out["status"] == "checkpoint":
            return _continuation(self, fw_spec, out["checkpoint"])
        return FWAction(stored_data=out)


@explicit_serialize
class DFTLiteTask(FiretaskBase):
    """The DFT-lite band gap (QE scf + nscf at the ML-relaxed structure) of one ML-stable candidate."""

    required_params = ["candidate", "campaign"]
    optional_params = ["db_file", "checkpoint"]

    def run_task(self, fw_spec):
        require("dft", what="the DFT-lite band gap")
        store = _store(self, fw_spec)
        out = campaign.run_dft_lite(store, self["candidate"], os.getcwd(), _dft_env(fw_spec),
                                    checkpoint=self.get("checkpoint"))
        if out["status"] == "checkpoint":
            return _continuation(self, fw_spec, out["checkpoint"])
        # after_ml_stage waits while other DFT-lite gaps are pending: the last one promotes
        return FWAction(stored_data=out, additions=_after_ml_stage(self, store, out))


@explicit_serialize
class QEReferenceTask(FiretaskBase):
    """One reference phase of a chemical system, computed with that system's QE protocol (once)."""

    required_params = ["campaign", "system", "phase"]
    optional_params = ["db_file", "checkpoint"]

    def run_task(self, fw_spec):
        require("dft", what="the Quantum ESPRESSO reference stage")
        out = campaign.run_dft_reference(_store(self, fw_spec), self["campaign"], self["system"], self["phase"],
                                         os.getcwd(), _dft_env(fw_spec), checkpoint=self.get("checkpoint"),
                                         fw_id=getattr(self, "fw_id", None))  # set by _add_launchpad_and_fw_id
        if out["status"] == "checkpoint":
            return _continuation(self, fw_spec, out["checkpoint"])
        return FWAction(stored_data=out)


def vasp_workflow(candidate: dict, db_file: str, vasp_cmd: str = ">>vasp_cmd<<", category: str = "dft",
                  results_db_file: str | None = None) -> Workflow:
    """Relax -> static -> uniform non-SCF (atomate, custodian), then :class:`VaspResultTask`.

    ``db_file``: atomate's db.json (:func:`atomate_db_file`) for the task documents; ``results_db_file``:
    fw-screen's LaunchPad YAML for the results store (default: the FWorker's ``env.db_file``).
    """
    require("vasp", what="the VASP workflow")
    from atomate.common.powerups import add_additional_fields_to_taskdocs
    from atomate.vasp.fireworks.core import NonSCFFW, OptimizeFW, StaticFW

    cid, campaign = candidate["_id"], candidate.get("campaign")
    structure = candidate_structure(candidate)
    formula = structure.composition.reduced_formula
    spec = {"_category": category, "stage": "dft", "campaign": campaign, "candidate": cid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POTCAR-less input-set warnings at construction
        opt = OptimizeFW(structure, vasp_cmd=vasp_cmd, db_file=db_file, spec=dict(spec))
        static = StaticFW(structure, vasp_cmd=vasp_cmd, db_file=db_file, parents=opt, prev_calc_loc=True,
                          spec={**spec, "_allow_fizzled_parents": True})
        nscf = NonSCFFW(structure=structure, vasp_cmd=vasp_cmd, db_file=db_file, parents=static, mode="uniform",
                        spec={**spec, "_allow_fizzled_parents": True})
    result_kw = {"candidate_id": cid, "tasks_db_file": db_file}
    if results_db_file:
        result_kw["db_file"] = results_db_file
    result = Firework(VaspResultTask(**result_kw), parents=nscf, name=f"{formula}-vasp result {cid}",
                      spec={**spec, "_allow_fizzled_parents": True})
    wf = Workflow([opt, static, nscf, result], name=f"fw-screen vasp {cid} {formula}",
                  metadata={"campaign": campaign, "candidate": cid, "stage": "dft", "code": "vasp"})
    return add_additional_fields_to_taskdocs(wf, {"fw_screen": {"candidate": cid, "campaign": campaign}})


def _fizzle_reasons(fw_spec: dict) -> list[str]:
    """Errors of the fizzled Fireworks upstream, root cause first (FireWorks nests ``_fizzled_parents``)."""
    reasons: list[str] = []

    def walk(parents):
        for p in parents or []:
            upstream = (p.get("spec") or {}).get("_fizzled_parents")
            if upstream:  # it fizzled because its parent did (no files to start from): report the root
                walk(upstream)
                continue
            trace = ""
            for launch in p.get("launches") or []:
                exc = ((launch.get("action") or {}).get("stored_data") or {}).get("_exception") or {}
                trace = exc.get("_stacktrace") or trace
            last = [ln for ln in str(trace).strip().splitlines() if ln.strip()][-1:] or ["(no stack trace)"]
            reasons.append(f"{p.get('name')} fizzled: {last[0].strip()}")

    walk(fw_spec.get("_fizzled_parents"))
    return list(dict.fromkeys(reasons))


@explicit_serialize
class VaspResultTask(FiretaskBase):
    """Read a candidate's VASP task documents, store its ``dft`` result and move it out of ``promoted``."""

    required_params = ["candidate_id", "tasks_db_file"]
    optional_params = ["db_file"]

    def run_task(self, fw_spec):
        require("vasp")
        store = _store(self, fw_spec)
        cid = self["candidate_id"]
        tasks_db = self["tasks_db_file"]
        if isinstance(tasks_db, str) and tasks_db.startswith(">>"):
            from atomate.utils.utils import env_chk

            tasks_db = env_chk(tasks_db, fw_spec)
        docs = find_task_docs(tasks_db, cid)
        cand = store.dft_candidate(cid)
        elements = (cand or {}).get("elements")
        if not elements and cand:
            from pymatgen.core import Structure

            elements = sorted({e.symbol for e in Structure.from_dict(cand["structure_reduced"]).composition.elements})
        refs = store.entries_in_chemsys(elements or [], "mp2020")  # the scale MP2020-processed VASP energies are on
        result = vasp_result(docs, refs, cid, failures=_fizzle_reasons(fw_spec))
        if cand is not None and result["status"] == st.DFT_DONE:  # the verdicts QE results carry too
            result = schema.complete(result, cand, store.campaign_spec(cand["campaign"]))
        moved = store.transition([(cid, st.PROMOTED, result["status"], {"dft": result})], "dft")
        return FWAction(stored_data={"candidate": cid, "status": result["status"], "moved": moved,
                                     "e_above_hull": result.get("e_above_hull"),
                                     "band_gap": (result.get("band_gap") or {}).get("band_gap"),
                                     "reason": result.get("reason")})


def _task_kwargs(db_file: str | None) -> dict:
    return {"db_file": db_file} if db_file else {}


def stage_workflow(campaign: str, batches: list[str], spec: CampaignSpec, db_file: str | None = None) -> Workflow | None:
    """Validity Fireworks for ``batches`` feeding the uniqueness shards; None when there is nothing new."""
    if not batches:
        return None
    category = spec.fireworks.category_cheap
    kw = _task_kwargs(db_file)
    validity = [Firework(ValidityTask(campaign=campaign, batch=b, **kw), name=f"validity {b}",
                         spec={"_category": category, "campaign": campaign, "stage": "validity", "batch": b})
                for b in batches]
    dedup = [Firework(UniquenessTask(campaign=campaign, shard=i, **kw), name=f"uniqueness {campaign} shard {i}",
                      spec={"_category": category, "campaign": campaign, "stage": "uniqueness"})
             for i in range(spec.dedup_shards)]
    links = {fw: dedup for fw in validity}
    submission = batches[0].rsplit(".", 1)[0]
    return Workflow(validity + dedup, links_dict=links, name=f"fw-screen {campaign} {submission}",
                    metadata={"campaign": campaign, "submission": submission, "batches": len(batches)})


def ml_fireworks(campaign: str, ml_batches: list[str], spec: CampaignSpec, db_file: str | None = None) -> list[Firework]:
    """One ML Firework (category ``ml``) per ML batch of novel candidates."""
    return [Firework(StabilityTask(campaign=campaign, ml_batch=b, **_task_kwargs(db_file)),
                     name=f"stability {b}", spec={"_category": spec.fireworks.category_ml, "campaign": campaign,
                                                  "stage": "stability", "ml_batch": b})
            for b in ml_batches]


def ingest_workflow(source: str | Path, spec: CampaignSpec, db_file: str | None = None) -> Workflow:
    """One Firework that ingests ``source`` (an absolute path workers can read) and grows the rest."""
    source, spec = str(Path(source).resolve()), as_spec(spec)
    fw = Firework(IngestTask(source=source, spec=spec.to_dict(), **_task_kwargs(db_file)), name=f"ingest {Path(source).name}",
                  spec={"_category": spec.fireworks.category_cheap, "campaign": spec.campaign,
                        "stage": "ingest"})
    return Workflow([fw], name=f"fw-screen {spec.campaign} {Path(source).name}",
                    metadata={"campaign": spec.campaign, "source": source})


def submit(launchpad, store, source: str | Path, spec: CampaignSpec, progress=None) -> tuple[dict, Workflow | None]:
    """Ingest ``source`` client-side and add one workflow for every batch that has no Firework yet.

    Batches left without a workflow by an interrupted earlier submit are picked up here too, so a
    re-submission heals instead of stranding candidates in ``ingested``.
    """
    from fw_screen.orchestration.launchpad import stage_keys_with_fireworks
    from fw_screen.stages import run_ingest

    summary = run_ingest(store, source, spec, progress=progress)
    name = summary["campaign"]
    batches = sorted(store.pending_batches(name) - stage_keys_with_fireworks(launchpad, name, "validity", "batch"))
    summary["workflow_batches"] = batches
    wf = stage_workflow(name, batches, store.campaign_spec(name))
    if wf is not None:
        launchpad.add_wf(wf)
    return summary, wf


def add_ml_fireworks(launchpad, store, campaign: str, db_file: str | None = None) -> list[str]:
    """Give novel candidates that have no ML batch yet (older campaigns, interrupted runs) ML Fireworks;
    first put back to ``novel`` the ``no_reference`` candidates that reference sets loaded since cover."""
    from fw_screen.stages import plan_ml_batches, requeue_covered

    spec = store.campaign_spec(campaign)
    requeue_covered(store, campaign)
    batches = plan_ml_batches(store, campaign, store.unbatched_novel(campaign), spec)
    fws = ml_fireworks(campaign, batches, spec, db_file)
    if fws:
        launchpad.add_wf(Workflow(fws, name=f"fw-screen {campaign} ML", metadata={"campaign": campaign}))
    return batches


#: FireWorks priorities: reference phases first, so candidates' hulls complete early
PRIORITY_REFERENCE, PRIORITY_CANDIDATE = 20, 10


def dft_workflow(store, candidate_ids: list[str], db_file: str | None = None) -> Workflow | None:
    """DFT Fireworks (category ``dft``) for promoted candidates: QE reference phases and candidates, or
    atomate's VASP workflows when the campaign's ``dft.code`` is vasp.  None when nothing is promoted."""
    from fw_screen.stages import dft_jobs

    if not candidate_ids:
        return None
    jobs = dft_jobs(store, candidate_ids)
    kw = _task_kwargs(db_file)
    fws, campaigns = [], sorted({c["campaign"] for c in jobs["candidates"]})
    vasp_wfs = []
    for ref in jobs["references"]:
        spec = store.campaign_spec(ref["campaign"])
        phase = {k: ref[k] for k in ("key", "formula", "kind", "structure")}
        fws.append(Firework(QEReferenceTask(campaign=ref["campaign"], system=ref["system"], phase=phase, **kw),
                            name=f"qe reference {ref['system']} {ref['formula']}",
                            spec={"_category": spec.fireworks.category_dft, "_priority": PRIORITY_REFERENCE,
                                  "_add_launchpad_and_fw_id": True,  # a rerun of this Firework may retake its claim
                                  "campaign": ref["campaign"], "stage": "dft_reference", "system": ref["system"]}))
    for cand in jobs["candidates"]:
        spec = store.campaign_spec(cand["campaign"])
        if spec.dft.code == "vasp":
            from fw_screen.orchestration import fireworks as vasp

            doc = next(store.candidates_for({"_id": cand["id"]}, sort=None))
            vasp_wfs.append(vasp.vasp_workflow(doc, spec.dft.vasp.db_file,
                                               vasp_cmd=spec.dft.vasp.vasp_cmd,
                                               category=spec.fireworks.category_dft, results_db_file=db_file))
            continue
        fws.append(Firework(QECandidateTask(candidate=cand["id"], **kw), name=f"qe candidate {cand['id']}",
                            spec={"_category": spec.fireworks.category_dft, "_priority": PRIORITY_CANDIDATE,
                                  "_add_launchpad_and_fw_id": True,  # its inline reference claims carry its fw_id
                                  "campaign": cand["campaign"], "stage": "dft", "candidate": cand["id"]}))
    for wf in vasp_wfs:
        fws.extend(wf.fws)  # unconnected sub-workflows in one Workflow keep their own links
    if not fws:
        return None
    links = {}
    for wf in vasp_wfs:
        for parent, children in wf.links.items():
            links.setdefault(parent, []).extend(children)
    by_id = {fw.fw_id: fw for fw in fws}
    links_dict = {by_id[p]: [by_id[c] for c in cs] for p, cs in links.items() if cs}
    return Workflow(fws, links_dict=links_dict or None, name=f"fw-screen {' '.join(campaigns)} DFT",
                    metadata={"campaign": campaigns[0] if len(campaigns) == 1 else campaigns,
                              "stage": "dft", "candidates": len(jobs["candidates"])})


#: FireWorks priority of the DFT-lite band gaps: below the DFT chain's (they only decide what goes there)
PRIORITY_DFT_LITE = 5


def dft_lite_workflow(store, campaign: str, candidate_ids: list[str], db_file: str | None = None) -> Workflow | None:
    """One DFT-lite Firework (category ``dft``) per candidate: a QE band gap at its ML-relaxed structure."""
    if not candidate_ids:
        return None
    spec = store.campaign_spec(campaign)
    kw = _task_kwargs(db_file)
    fws = [Firework(DFTLiteTask(candidate=c, campaign=campaign, **kw), name=f"dft-lite band gap {c}",
                    spec={"_category": spec.fireworks.category_dft, "_priority": PRIORITY_DFT_LITE,
                          "campaign": campaign, "stage": "dft_lite", "candidate": c})
           for c in candidate_ids]
    return Workflow(fws, name=f"fw-screen {campaign} DFT-lite band gaps",
                    metadata={"campaign": campaign, "stage": "dft_lite", "candidates": len(fws)})


def after_ml_stage(store, campaign: str, db_file: str | None = None) -> tuple[list[Workflow], dict]:
    """What a campaign needs once its ML stage is done: with ``property.method: dft_lite`` the DFT-lite
    Fireworks of its ML-stable candidates first; once every DFT-lite gap is in (or with method ``ml``), the
    promotion and the DFT workflow of the promoted candidates.  Returns (workflows to add, counts)."""
    from fw_screen.stages import (
        dft_lite_pending,
        plan_dft_lite,
        run_promotion,
        run_relaxed_uniqueness,
    )

    run_relaxed_uniqueness(store, campaign)  # relaxed-known and relaxed duplicates get no DFT-lite, no DFT
    queued = plan_dft_lite(store, campaign)
    if queued:
        return [dft_lite_workflow(store, campaign, queued, db_file)], {"dft_lite_queued": len(queued)}
    waiting = dft_lite_pending(store, campaign)
    if waiting:
        return [], {"waiting_dft_lite": waiting}
    promoted = run_promotion(store, campaign)
    wf = dft_workflow(store, promoted["promoted"], db_file=db_file)
    return ([wf] if wf else []), {"promoted": len(promoted["promoted"])}


def promote(launchpad, store, campaign: str, db_file: str | None = None) -> dict:
    """``fw-screen promote``: promote by the campaign's rules and add the DFT workflow to the LaunchPad.

    Candidates promoted earlier that have no DFT Firework yet (an interrupted run) get one too.  With
    ``property.method: dft_lite``, ML-stable candidates without a DFT-lite gap (or whose DFT-lite Firework
    is gone) get their DFT-lite Fireworks first, and promotion waits for them."""
    from fw_screen.orchestration.launchpad import stage_keys_with_fireworks
    from fw_screen.stages import plan_dft_lite, run_promotion, run_relaxed_uniqueness

    relaxed = run_relaxed_uniqueness(store, campaign)
    have = stage_keys_with_fireworks(launchpad, campaign, "dft_lite", "candidate")
    lite = plan_dft_lite(store, campaign)
    lite += [c for c in store.dft_lite_queued(campaign) if c not in have and c not in lite]
    lite_wf = dft_lite_workflow(store, campaign, lite, db_file)
    if lite_wf is not None:
        launchpad.add_wf(lite_wf)
    summary = run_promotion(store, campaign)
    summary["relaxed"] = relaxed
    summary["dft_lite_fireworks"] = len(lite)
    todo = promoted_without_dft_fireworks(launchpad, store, campaign)
    wf = dft_workflow(store, todo, db_file)
    if wf is not None:
        launchpad.add_wf(wf)
    summary["dft_fireworks"] = len(wf.fws) if wf else 0
    summary["dft_candidates"] = todo
    return summary


def promoted_without_dft_fireworks(launchpad, store, campaign: str) -> list[str]:
    """Promoted candidates of a campaign with no DFT Firework (QE or VASP) on the LaunchPad, in input order."""
    from fw_screen.orchestration.launchpad import stage_keys_with_fireworks

    have = stage_keys_with_fireworks(launchpad, campaign, "dft", "candidate")  # QE and VASP Fireworks alike
    return [d["_id"] for d in store.candidates_for({"campaign": campaign, "status": "promoted"}, {"_id": 1})
            if d["_id"] not in have]
