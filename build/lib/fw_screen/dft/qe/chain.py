"""The pw.x chain of one structure: vc-relax -> scf -> nscf -> band gap (crystals) or relax -> scf (gas
molecules), each step under custodian, with a checkpoint to resume from.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path

from fw_screen.dft.qe.io import (
    as_structure,
    band_gap,
    kpoint_grid,
    parse_output,
    pw_input,
)
from fw_screen.dft.qe.settings import (
    MIN_STEP_S,
    WALLTIME_MARGIN_S,
    PseudoError,
    file_md5,
    find_pseudos,
    full_settings,
)


def _summarise_corrections(run_log, step: str) -> list[dict]:
    out = []
    for entry in run_log or []:
        for corr in entry.get("corrections", []):
            handler = corr.get("handler")
            out.append({"step": step, "handler": type(handler).__name__ if handler is not None else None,
                        "errors": list(corr.get("errors") or []),
                        "actions": json.loads(json.dumps(corr.get("actions"), default=str))})
    return out


def _run_step(structure, proto, s, calculation, *, kind, workdir: Path, prefix, kgrid, deadline):
    """Run one pw.x step under custodian in ``workdir/<calculation>``; returns (parsed output, step dict)."""
    from custodian.custodian import Custodian, CustodianError

    from fw_screen.dft.qe import jobs as qe_jobs

    stepdir = workdir / calculation
    stepdir.mkdir(parents=True, exist_ok=True)
    nat = len(structure)
    max_seconds = None
    if deadline is not None:
        max_seconds = deadline - time.time() - WALLTIME_MARGIN_S
    pwin = pw_input(structure, proto, s, calculation, kind=kind, workdir=workdir, prefix=prefix,
                     kgrid=kgrid, nat=nat, max_seconds=max_seconds)
    name = calculation
    pwin.write_file(str(stepdir / f"{name}.in"))
    job = qe_jobs.PWJob(pw_cmd=str(s["pw_cmd"]), mpi_cmd=str(s.get("mpi_cmd") or ""),
                        input_file=f"{name}.in", output_file=f"{name}.out")
    handlers = qe_jobs.default_handlers(input_file=f"{name}.in", output_file=f"{name}.out",
                                        deadline=deadline, smearing=str(s["smearing"]), degauss=float(s["degauss"]))
    cust = Custodian(handlers, [job], validators=[qe_jobs.PWValidator(output_file=f"{name}.out")],
                     max_errors=int(s["max_errors"]), polling_time_step=1, monitor_freq=5,
                     directory=str(stepdir), terminate_on_nonzero_returncode=True)
    t0 = time.time()
    error = None
    try:
        cust.run()
    except CustodianError as exc:
        error = exc
    seconds = time.time() - t0
    out_path = stepdir / f"{name}.out"
    text = out_path.read_text(errors="replace") if out_path.exists() else ""
    parsed = parse_output(text)
    pw_seconds = 0.0
    for p in sorted(stepdir.glob(f"{name}.out*")):
        w = parse_output(p.read_text(errors="replace")).get("pw_wall_seconds") if p != out_path \
            else parsed.get("pw_wall_seconds")
        pw_seconds += w or 0.0
    corrections = _summarise_corrections(cust.run_log, calculation)
    converged = parsed["scf_converged"] if calculation != "nscf" else parsed["band_structure_done"]
    if calculation in ("relax", "vc-relax"):
        converged = converged and parsed["relax_converged"]
    step = {"calculation": calculation, "seconds": round(seconds, 3), "pw_seconds": round(pw_seconds, 3),
            "energy": parsed["energy"], "converged": bool(converged) and error is None,
            "n_scf_iterations": parsed["n_scf_iterations"], "ionic_steps": parsed["ionic_steps"],
            "kpts": list(kgrid) if kgrid is not None else "gamma", "corrections": corrections,
            "fermi": parsed["fermi"], "total_magnetization": parsed["total_magnetization"],
            "pressure_kbar": parsed["pressure_kbar"], "pw_version": parsed["version"]}
    status, reason = "ok", None
    if error is not None:
        handler = getattr(error, "handler", None)
        if isinstance(handler, qe_jobs.PWWalltimeHandler) or parsed["max_time_reached"] or (
                deadline is not None and time.time() >= deadline and not parsed["job_done"]):
            status = "walltime"
            reason = f"wall time reached during {calculation}"
        else:
            status = "failed"
            detail = "; ".join(f"Error in routine {e['routine']} ({e['code']}): {e['message']}"
                               for e in parsed["errors"])
            if not detail and corrections:
                detail = "last error: " + "; ".join(corrections[-1]["errors"])
            if not text:
                err = stepdir / f"{name}.err"
                detail = detail or ("pw.x wrote no output" + (
                    f"; stderr: {err.read_text(errors='replace')[-500:].strip()}" if err.exists() else ""))
            reason = f"pw.x {calculation}: {error.message}" + (f" ({detail})" if detail else "")
    return parsed, step, status, reason


def run_chain(structure, protocol: dict, settings: dict, workdir, *, kind: str = "crystal",
              checkpoint: dict | None = None, walltime_s: float | None = None, with_band_gap: bool = True,
              relax: bool = True) -> dict:
    """Relax and compute one structure with pw.x (see the module doc and the result keys below).

    kind="crystal": vc-relax -> scf on the relaxed cell -> nscf (``nscf_kppa`` uniform mesh) -> band gap;
    ``with_band_gap=False`` (hull reference phases) stops after the scf; ``relax=False`` (the DFT-lite
    property tier, :mod:`fw_screen.dft.lite`) skips the vc-relax: scf -> nscf on the structure as given.
    kind="molecule": relax -> scf at Gamma, spin-polarised, fixed cell (a pymatgen Molecule is put in a
    cubic box of ``molecule_box`` Angstrom; a Structure is used as given, see :func:`fw_screen.dft.hull.molecule_in_box`).
    The energy is the scf's, else the last '!' energy of the (vc-)relax.  With ``walltime_s`` (default: the
    settings' ``walltime_s``; seconds from this call's start), pw.x's
    max_seconds and a custodian monitor stop the chain in time and the result has status "checkpoint" and a
    JSON-able "checkpoint" to pass back (in any workdir) to continue.  A per-structure failure never raises:
    status "failed" and a "reason".

    Result keys: status, reason, kind, protocol_id, energy_total, energy_per_atom, structure (pymatgen
    Structure or None), natoms, band_gap, total_magnetization, steps, corrections, pw_seconds, seconds,
    checkpoint.
    """
    from pymatgen.core import Structure

    t_start = time.time()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    proto = protocol
    result = {"status": "failed", "reason": None, "kind": kind, "protocol_id": (proto or {}).get("id"),
              "energy_total": None, "energy_per_atom": None, "structure": None, "natoms": None,
              "band_gap": None, "total_magnetization": None, "steps": [], "corrections": [],
              "pw_seconds": 0.0, "seconds": 0.0, "checkpoint": None}
    ck = checkpoint or {}
    kind = ck.get("kind", kind)
    result["kind"] = kind
    prev_seconds = float(ck.get("seconds", 0.0))
    prev_pw = float(ck.get("pw_seconds", 0.0))

    def finish(status, reason=None):
        result["status"], result["reason"] = status, reason
        if not (settings or {}).get("keep_scratch"):  # wavefunctions and charge density: not needed any more
            shutil.rmtree(workdir / "tmp", ignore_errors=True)
        result["seconds"] = round(prev_seconds + time.time() - t_start, 3)
        result["pw_seconds"] = round(prev_pw + sum(st.get("pw_seconds", 0.0) for st in result["steps"]
                                                   if not st.get("from_checkpoint")), 3)
        return result

    try:
        if kind not in ("crystal", "molecule"):
            return finish("failed", f"unknown kind {kind!r} (crystal or molecule)")
        s = full_settings(settings)
        if ck:
            if ck.get("protocol_id") not in (None, proto.get("id")):
                return finish("failed", f"checkpoint protocol {ck.get('protocol_id')} differs from {proto.get('id')}")
            current = ck["structure"]  # a dict, or a Structure when FireWorks has deserialised the task
            current = Structure.from_dict(current) if isinstance(current, dict) else current
            result["steps"] = [dict(st, from_checkpoint=True) for st in ck.get("steps", [])]
            result["corrections"] = list(ck.get("corrections", []))
        else:
            current = as_structure(structure, kind, float(s["molecule_box"]))
        nat = len(current)
        result["natoms"] = nat
        if ck:
            result["structure"] = current
        elements = sorted({sp.symbol for sp in current.composition})
        # the protocol must cover these elements: its pseudos (a PseudoError if the folder lacks one)
        missing = [el for el in elements if el not in (proto.get("pseudos") or {})]
        if missing:
            try:
                find_pseudos(missing, s["pseudo_dir"])
                return finish("failed", f"protocol {proto.get('id')} has no pseudopotential for "
                                        f"{', '.join(missing)} (computed for {proto.get('elements')})")
            except PseudoError as exc:
                return finish("failed", str(exc))
        folder = Path(s["pseudo_dir"]).expanduser()
        bad = []
        for el in elements:
            path = folder / proto["pseudos"][el]["filename"]
            if not path.is_file():
                bad.append(f"{el} ({path.name} not found)")
            elif file_md5(path) != proto["pseudos"][el]["md5"]:
                bad.append(f"{el} ({path.name} md5 differs from the protocol's)")
        if bad:
            return finish("failed", f"pseudopotential for {', '.join(bad)} in {folder}")

        if kind == "crystal":
            steps = (["vc-relax"] if relax else []) + (["scf", "nscf"] if with_band_gap else ["scf"])
        else:
            steps = ["relax", "scf"]
        done = [st["calculation"] for st in result["steps"]]
        todo = [c for c in steps if c not in done]
        if "nscf" in todo and "scf" in done:
            todo = ["scf"] + todo  # the nscf needs this workdir's scf charge density: redo the scf
        if walltime_s is None:
            walltime_s = s.get("walltime_s")
        deadline = (t_start + float(walltime_s)) if walltime_s else None
        by_calc = {st["calculation"]: st for st in result["steps"]}
        parsed_last = {}

        def make_checkpoint(reason):
            by_order = [by_calc[c] for c in steps if c in by_calc and by_calc[c].get("converged")]
            result["checkpoint"] = {
                "version": 1, "protocol_id": proto.get("id"), "kind": kind,
                "structure": current.as_dict(),
                "steps": [{k: v for k, v in st.items() if k != "from_checkpoint"} for st in by_order],
                "corrections": list(result["corrections"]),
                "seconds": round(prev_seconds + time.time() - t_start, 3),
                "pw_seconds": round(prev_pw + sum(st.get("pw_seconds", 0.0) for st in result["steps"]
                                                  if not st.get("from_checkpoint")), 3),
                "reason": reason}
            result["structure"] = current
            return finish("checkpoint", reason)

        for calc in todo:
            if deadline is not None and deadline - time.time() < WALLTIME_MARGIN_S + MIN_STEP_S:
                return make_checkpoint(f"wall time: {calc} not started")
            if calc == "nscf":
                kgrid = kpoint_grid(current, s["nscf_kppa"])
            elif kind == "molecule":
                kgrid = None
            else:
                kgrid = kpoint_grid(current, s["kppa"])
            prefix = "relax" if calc in ("relax", "vc-relax") else "pwscf"
            parsed, step, status, reason = _run_step(current, proto, s, calc, kind=kind, workdir=workdir,
                                                     prefix=prefix, kgrid=kgrid, deadline=deadline)
            result["corrections"].extend(step["corrections"])
            if calc in by_calc:
                result["steps"] = [st for st in result["steps"] if st["calculation"] != calc]
            result["steps"].append(step)
            by_calc[calc] = step
            if calc in ("relax", "vc-relax") and parsed.get("structure"):
                current = Structure.from_dict(parsed["structure"])  # the latest geometry, also when stopped
                result["structure"] = current
            if status == "walltime":
                step["converged"] = False
                return make_checkpoint(reason)
            if status == "failed":
                return finish("failed", reason)
            if not step["converged"]:
                return finish("failed", f"pw.x {calc} finished without converging")
            parsed_last[calc] = parsed

        final = by_calc.get("scf") or by_calc.get("vc-relax") or by_calc.get("relax")
        result["energy_total"] = final["energy"] if final else None
        if result["energy_total"] is not None:
            result["energy_per_atom"] = result["energy_total"] / nat
        result["total_magnetization"] = (by_calc.get("scf") or {}).get("total_magnetization")
        if kind == "crystal":
            parsed = parsed_last.get("nscf")
            result["band_gap"] = band_gap(parsed) if parsed else None
        result["structure"] = current
        return finish("completed")
    except PseudoError as exc:
        return finish("failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - a per-structure failure must not crash the caller
        tb = traceback.format_exc(limit=3)
        return finish("failed", f"{type(exc).__name__}: {exc} [{tb.strip().splitlines()[-1]}]")
