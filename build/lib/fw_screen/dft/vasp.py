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

import warnings

from fw_screen import state as st

#: task labels atomate gives the three VASP runs (``task_label`` of their task documents)
RELAX, STATIC, UNIFORM = "structure optimization", "static", "nscf uniform"
LABELS = (RELAX, STATIC, UNIFORM)


# ------------------------------------------------------------------------------------- workflow
def candidate_structure(candidate: dict):
    """The structure DFT starts from: the ML-relaxed one when there is one, else the reduced input cell."""
    from pymatgen.core import Structure

    ml = candidate.get("ml") or {}
    return Structure.from_dict(ml.get("structure_relaxed") or candidate["structure_reduced"])


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

    from fw_screen.science import stability

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
