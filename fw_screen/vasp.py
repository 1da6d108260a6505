"""The DFT stage on VASP: atomate 1.x Fireworks (custodian-run VASP) for one promoted candidate.

:func:`vasp_workflow` builds, for a candidate in status ``promoted``::

    OptimizeFW (MPRelaxSet, custodian double relaxation)
      └─► StaticFW (MPStaticSet from the relaxed run)
            └─► NonSCFFW mode="uniform" (MPNonSCFSet, DOS and uniform band structure)
                  └─► VaspResult (fw-screen: candidate -> dft_done | dft_failed)

Each VASP Firework runs VASP under custodian with its default VASP error handlers
(``RunVaspCustodian``) and is parsed by atomate's ``VaspDrone`` into the ``tasks`` collection of the
database named by an **atomate db file** (JSON: ``host``, ``port``, ``database``, ``collection``,
``mongoclient_kwargs``...; :func:`atomate_db_file` derives one from a LaunchPad file, so the task documents
land in the same database as the candidates).  Every task document carries
``{"fw_screen": {"candidate": id, "campaign": name}}`` to link it back.

The last Firework (:class:`VaspResultTask`) reads the candidate's task documents, and :func:`vasp_result`
turns them into the candidate's ``dft`` field: relaxed structure, band gap of the uniform non-SCF run,
MP2020-corrected energy and energy above the hull of the store's reference entries (Materials Project
GGA/GGA+U entries with MP2020 corrections are on the same scale by construction), custodian corrections.
It runs when a VASP Firework fizzled too (``_allow_fizzled_parents``; the Fireworks after a fizzled one
fizzle at once, before VASP, for want of the previous run's files): the candidate then goes to
``dft_failed`` with the first error as its reason.

Set-up on a VASP worker: ``PMG_VASP_PSP_DIR`` (pymatgen's POTCAR folder, holding ``POT_GGA_PAW_PBE/``) in the
environment or ``~/.config/.pmgrc.yaml``, and an FWorker whose ``env`` has ``vasp_cmd`` (e.g. ``"srun vasp_std"``)
and ``db_file`` (fw-screen's LaunchPad YAML, for the results store). Requires ``atomate==1.1.0`` and
``custodian`` (imported only when a workflow is built or a result is read).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import yaml
from fireworks import FiretaskBase, Firework, FWAction, Workflow, explicit_serialize

from fw_screen import status as st

#: task labels atomate gives the three VASP runs (``task_label`` of their task documents)
RELAX, STATIC, UNIFORM = "structure optimization", "static", "nscf uniform"
LABELS = (RELAX, STATIC, UNIFORM)
TASKS_COLLECTION = "tasks"


# ------------------------------------------------------------------------------------- db file
def atomate_db_config(launchpad_file: str) -> dict:
    """atomate's db settings (``VaspCalcDb.from_db_file`` format) for the server and database of a LaunchPad
    file, ``tasks`` collection.  ``mongoclient_kwargs`` (e.g. ``retryWrites: false``) are carried over:
    atomate passes them to ``MongoClient``."""
    with open(os.path.expanduser(launchpad_file)) as fh:
        lp = yaml.safe_load(fh) or {}
    kwargs = dict(lp.get("mongoclient_kwargs") or {})
    database = lp.get("name") or "fireworks"
    host = lp.get("host") or "localhost"
    if lp.get("uri_mode") or str(host).startswith(("mongodb://", "mongodb+srv://")):
        from pymongo.uri_parser import parse_uri

        database = parse_uri(host).get("database") or database
        return {"host_uri": host, "database": database, "collection": TASKS_COLLECTION,
                "mongoclient_kwargs": kwargs}
    cfg = {"host": host, "port": int(lp.get("port") or 27017), "database": database,
           "collection": TASKS_COLLECTION, "mongoclient_kwargs": kwargs,
           # explicit nulls: atomate's default "" would make pymongo attempt authentication
           "admin_user": lp.get("username"), "admin_password": lp.get("password")}
    if lp.get("authsource"):
        cfg["authsource"] = lp["authsource"]
    return cfg


def atomate_db_file(launchpad_file: str, path: str) -> str:
    """Write atomate's db.json for the same server and database as ``launchpad_file``; returns ``path``."""
    cfg = atomate_db_config(launchpad_file)
    path = os.path.expanduser(str(path))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold credentials
    with os.fdopen(fd, "w") as fh:
        json.dump(cfg, fh, indent=1)
    return path


def find_task_docs(db_file: str, candidate_id: str) -> list[dict]:
    """The candidate's documents in the collection atomate's VaspToDb writes to for ``db_file`` (without the
    bulky parts: calcs_reversed is reduced to what an entry needs)."""
    from atomate.vasp.database import VaspCalcDb

    mmdb = VaspCalcDb.from_db_file(db_file, admin=True)
    try:
        return list(mmdb.collection.find(
            {"fw_screen.candidate": candidate_id},
            {"task_id": 1, "task_label": 1, "state": 1, "output": 1, "input": 1, "nsites": 1, "custodian": 1,
             "fw_screen": 1, "calcs_reversed.run_type": 1, "calcs_reversed.input.potcar_spec": 1}))
    finally:
        mmdb.connection.close()


# ------------------------------------------------------------------------------------- workflow
def candidate_structure(candidate: dict):
    """The structure DFT starts from: the ML-relaxed one when there is one, else the reduced input cell."""
    from pymatgen.core import Structure

    ml = candidate.get("ml") or {}
    return Structure.from_dict(ml.get("structure_relaxed") or candidate["structure_reduced"])


def vasp_workflow(candidate: dict, db_file: str, vasp_cmd: str = ">>vasp_cmd<<", category: str = "dft",
                  results_db_file: str | None = None) -> Workflow:
    """Relax -> static -> uniform non-SCF (atomate, custodian), then :class:`VaspResultTask`.

    ``db_file``: atomate's db.json (:func:`atomate_db_file`) for the task documents; ``results_db_file``:
    fw-screen's LaunchPad YAML for the results store (default: the FWorker's ``env.db_file``).
    """
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


# ------------------------------------------------------------------------------------- result
def _latest_by_label(task_docs: list[dict]) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for d in task_docs:
        label = d.get("task_label")
        if label in LABELS and (label not in latest or
                                (d.get("task_id") or 0) >= (latest[label].get("task_id") or 0)):
            latest[label] = d
    return latest


def _corrections(docs: dict[str, dict]) -> list[dict]:
    out = []
    for label, doc in docs.items():
        for run in doc.get("custodian") or []:
            for c in run.get("corrections") or []:
                handler = c.get("handler")
                out.append({"task_label": label, "task_id": doc.get("task_id"), "errors": c.get("errors"),
                            "handler": handler.get("@class") if isinstance(handler, dict) else str(handler),
                            "actions": c.get("actions")})
    return out


def vasp_entry(task_doc: dict, entry_id: str | None = None):
    """The ComputedStructureEntry of an atomate VASP task document (raw energy, MP2020 parameters)."""
    from pymatgen.core import Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    inp, calc = task_doc.get("input") or {}, (task_doc.get("calcs_reversed") or [{}])[0]
    params = {"run_type": calc.get("run_type") or task_doc.get("run_type"),
              "is_hubbard": bool(inp.get("is_hubbard")), "hubbards": inp.get("hubbards") or {},
              "potcar_spec": inp.get("potcar_spec") or (calc.get("input") or {}).get("potcar_spec"),
              "potcar_symbols": [f"{(inp.get('pseudo_potential') or {}).get('pot_type', 'paw').upper()}_"
                                 f"{(inp.get('pseudo_potential') or {}).get('functional', 'pbe').upper()} {s}"
                                 for s in (inp.get("pseudo_potential") or {}).get("labels", [])],
              "task_id": task_doc.get("task_id")}
    out = task_doc["output"]
    return ComputedStructureEntry(Structure.from_dict(out["structure"]), float(out["energy"]), entry_id=entry_id,
                                  parameters=params, data={"task_id": task_doc.get("task_id"), "code": "vasp"})


def vasp_result(task_docs: list[dict], reference_entry_docs: list[dict], candidate_id: str,
                failures: list[str] | None = None) -> dict:
    """The ``dft`` field of a candidate from its atomate task documents (pure: no database).

    ``task_docs``: the candidate's documents in ``tasks`` (the latest per task label counts);
    ``reference_entry_docs``: ``store.entries_in_chemsys`` documents (``{"entry": ComputedEntry dict}``);
    an entry whose id is ``candidate_id`` is left out of the hull.  ``failures``: errors of fizzled
    Fireworks, if any.  ``status`` is ``dft_done`` when all three runs succeeded (a hull that cannot be
    built then leaves ``e_above_hull`` None, with ``reason``), else ``dft_failed``.
    """
    from pymatgen.entries.computed_entries import ComputedEntry

    from fw_screen import stability

    docs = _latest_by_label(task_docs)
    out: dict = {"code": "vasp", "status": st.DFT_FAILED, "reason": None,
                 "task_ids": {label: docs[label].get("task_id") for label in LABELS if label in docs},
                 "corrections": _corrections(docs)}
    missing = [label for label in LABELS if label not in docs]
    bad = [f"{label}: state {docs[label].get('state')}" for label in LABELS
           if label in docs and docs[label].get("state") != "successful"]
    if failures or missing or bad:
        parts = list(failures or [])
        parts += [f"no task document for {', '.join(missing)}"] if missing else []
        out["reason"] = "; ".join(parts + bad)[:2000]
        if RELAX in docs and docs[RELAX].get("output", {}).get("structure"):
            out["structure"] = docs[RELAX]["output"]["structure"]
        return out

    out["status"] = st.DFT_DONE
    static, uniform = docs[STATIC], docs[UNIFORM]
    out["structure"] = static["output"]["structure"]
    nat = static["nsites"] if static.get("nsites") else len(out["structure"]["sites"])
    out["energy_per_atom_raw"] = float(static["output"]["energy"]) / nat
    uo = uniform["output"]
    out["band_gap"] = {"band_gap": float(uo["bandgap"]), "is_direct": bool(uo.get("is_gap_direct")),
                       "is_metal": bool(uo.get("is_metal")), "cbm": uo.get("cbm"), "vbm": uo.get("vbm")}
    try:
        entry = stability.mp2020_process(vasp_entry(static, entry_id=candidate_id), check_potcar=True)
    except stability.CorrectionError as exc:
        out.update(energy_per_atom=None, e_above_hull=None, decomposition=[], reason=str(exc))
        return out
    out["energy_per_atom"] = float(entry.energy_per_atom)
    out["correction_per_atom"] = float(entry.correction_per_atom)
    out["e_above_hull"], out["decomposition"] = None, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refs = [ComputedEntry.from_dict(d["entry"]) for d in reference_entry_docs]
    refs = stability.chemsys_entries([e for e in refs if str(e.entry_id) != str(candidate_id)],
                                     entry.composition.elements)
    lacking = stability.missing_references(entry.composition.elements, refs)
    if lacking:
        out["reason"] = f"no reference for {', '.join(lacking)} (chemical system {entry.composition.chemical_system})"
        return out
    hull = stability.hull_distance(entry, stability.phase_diagram(refs))
    formulas = hull.pop("decomposition_formulas")
    out["e_above_hull"] = hull["e_above_hull"]
    out["formation_energy_per_atom"] = hull["formation_energy_per_atom"]
    out["decomposition"] = [{"entry_id": k, "formula": formulas.get(k), "fraction": v}
                            for k, v in hull["decomposition"].items()]
    return out


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
        from fw_screen.firetasks import _store

        store = _store(self, fw_spec)
        cid = self["candidate_id"]
        tasks_db = self["tasks_db_file"]
        if isinstance(tasks_db, str) and tasks_db.startswith(">>"):
            from atomate.utils.utils import env_chk

            tasks_db = env_chk(tasks_db, fw_spec)
        docs = find_task_docs(tasks_db, cid)
        cand = store.candidates.find_one({"_id": cid}, {"elements": 1, "structure_reduced": 1})
        elements = (cand or {}).get("elements")
        if not elements and cand:
            from pymatgen.core import Structure

            elements = sorted({e.symbol for e in Structure.from_dict(cand["structure_reduced"]).composition.elements})
        refs = store.entries_in_chemsys(elements or [], "mp2020")  # the scale MP2020-processed VASP energies are on
        result = vasp_result(docs, refs, cid, failures=_fizzle_reasons(fw_spec))
        moved = store.transition([(cid, st.PROMOTED, result["status"], {"dft": result})], "dft")
        return FWAction(stored_data={"candidate": cid, "status": result["status"], "moved": moved,
                                     "e_above_hull": result.get("e_above_hull"),
                                     "band_gap": (result.get("band_gap") or {}).get("band_gap"),
                                     "reason": result.get("reason")})
