"""The pw.x chain of one structure: a fixed list of steps, each one a pw.x run under custodian.

The chains, per kind, are in :data:`CHAINS`:

* crystal: vc-relax -> scf on the relaxed cell (the energy) -> nscf on a denser uniform mesh -> band gap;
  ``run_chain(relax=False)`` (the DFT-lite tier) leaves out the vc-relax, ``with_band_gap=False`` (hull
  reference phases) the nscf;
* molecule: relax in the fixed box -> scf, both at the Gamma point, spin-polarised.

Step ``<calculation>`` runs in ``<workdir>/<calculation>``; pw.x's scratch (wavefunctions, charge density) is
``<workdir>/tmp``, removed at the end unless the settings say ``keep_scratch``.

The checkpoint: when the wall time runs out (before a step starts, or pw.x's ``max_seconds`` or the custodian
walltime handler stops one), :func:`run_chain` returns status "checkpoint" and ``result["checkpoint"]``, a
:class:`Checkpoint` as a JSON-able dict (:meth:`Checkpoint.to_dict`: the latest geometry, the converged steps,
the times so far).  The stages (:mod:`fw_screen.stages.dft`, :mod:`fw_screen.stages.dft_lite`) hand it up
unchanged, and the FireWorks tasks (:mod:`fw_screen.orchestration.fireworks`) put it in the ``checkpoint``
parameter of a continuation Firework's task (so it is stored in the LaunchPad's MongoDB); that Firework passes
it back as ``run_chain(..., checkpoint=...)``, in any workdir.  Its dict keys are a stored format: running
campaigns hold such dicts, so they must not change.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
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


# ------------------------------------------------------------------------------------------- the steps
@dataclass(frozen=True)
class Step:
    """One pw.x run of a chain.  Every step starts from the latest geometry (the structure given, or the
    last one a relax step wrote); ``calculation`` also names the step (its folder, its files, its entry in
    the result's and the checkpoint's ``steps``)."""

    calculation: str  #: pw.x ``calculation``: "vc-relax", "relax", "scf" or "nscf"
    kppa: str | None  #: the settings key of its k-point density; None: the Gamma point only
    reads_density_of: str | None = None  #: the step whose charge density (in ``<workdir>/tmp``) it reads
    option: str | None = None  #: the run_chain flag ("relax", "with_band_gap") that leaves it out when False

    @property
    def relaxes(self) -> bool:
        """It moves the atoms (a vc-relax also the cell): the steps after it use its last geometry."""
        return self.calculation in ("relax", "vc-relax")

    @property
    def prefix(self) -> str:
        """pw.x ``prefix`` of its files in ``<workdir>/tmp`` (the scf's are the ones the nscf reads)."""
        return "relax" if self.relaxes else "pwscf"

    @property
    def converged_when(self) -> tuple[str, ...]:
        """The flags of :func:`fw_screen.dft.qe.io.parse_output` that must all be true for it to count."""
        if self.calculation == "nscf":
            return ("band_structure_done",)
        return ("scf_converged", "relax_converged") if self.relaxes else ("scf_converged",)


#: the chains per kind, in order (see the module doc)
CHAINS: dict[str, tuple[Step, ...]] = {
    "crystal": (
        Step("vc-relax", kppa="kppa", option="relax"),
        Step("scf", kppa="kppa"),
        Step("nscf", kppa="nscf_kppa", reads_density_of="scf", option="with_band_gap"),
    ),
    "molecule": (
        Step("relax", kppa=None),
        Step("scf", kppa=None),
    ),
}


def chain_steps(kind: str, *, relax: bool = True, with_band_gap: bool = True) -> tuple[Step, ...]:
    """The steps :func:`run_chain` runs for ``kind`` with these flags."""
    flags = {"relax": relax, "with_band_gap": with_band_gap}
    return tuple(st for st in CHAINS[kind] if st.option is None or flags[st.option])


# ------------------------------------------------------------------------------------------ the checkpoint
@dataclass
class Checkpoint:
    """Where a chain stopped for the wall time, to continue from.  :meth:`to_dict` is the stored format (in
    Firework tasks, see the module doc); :meth:`from_dict` reads it back, also a dict written before this
    class existed (same keys)."""

    structure: object  #: the latest geometry: a Structure dict (a Structure once FireWorks deserialised it)
    protocol_id: str | None = None  #: the protocol it was computed with: a resume must use the same
    kind: str = "crystal"
    steps: list = field(default_factory=list)  #: the converged steps, in chain order, as in the result
    corrections: list = field(default_factory=list)  #: the custodian corrections so far, as in the result
    seconds: float = 0.0  #: wall seconds of the runs so far
    pw_seconds: float = 0.0  #: pw.x's own seconds of the runs so far
    reason: str | None = None  #: why it stopped
    version: int = 1

    def to_dict(self) -> dict:
        structure = self.structure
        if structure is not None and not isinstance(structure, dict):
            structure = structure.as_dict()
        return {"version": self.version, "protocol_id": self.protocol_id, "kind": self.kind,
                "structure": structure, "steps": self.steps, "corrections": self.corrections,
                "seconds": self.seconds, "pw_seconds": self.pw_seconds, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict, kind: str = "crystal") -> Checkpoint:
        """``kind``: the kind of a checkpoint that does not say."""
        return cls(structure=d.get("structure"), protocol_id=d.get("protocol_id"), kind=d.get("kind", kind),
                   steps=d.get("steps", []), corrections=d.get("corrections", []),
                   seconds=float(d.get("seconds", 0.0)), pw_seconds=float(d.get("pw_seconds", 0.0)),
                   reason=d.get("reason"), version=d.get("version", 1))

    def geometry(self):
        """The structure to continue with, as a pymatgen Structure."""
        from pymatgen.core import Structure

        if self.structure is None:
            raise KeyError("structure")  # a checkpoint without one: a per-structure failure
        return Structure.from_dict(self.structure) if isinstance(self.structure, dict) else self.structure


# ------------------------------------------------------------------------------------------- one step
def _summarise_corrections(run_log, step: str) -> list[dict]:
    out = []
    for entry in run_log or []:
        for corr in entry.get("corrections", []):
            handler = corr.get("handler")
            out.append({"step": step, "handler": type(handler).__name__ if handler is not None else None,
                        "errors": list(corr.get("errors") or []),
                        "actions": json.loads(json.dumps(corr.get("actions"), default=str))})
    return out


def _custodian(s: dict, name: str, stepdir: Path, deadline: float | None):
    """Custodian running pw.x on ``<name>.in`` in ``stepdir``, with the default handlers and the validator."""
    from custodian.custodian import Custodian

    from fw_screen.dft.qe import jobs as qe_jobs

    job = qe_jobs.PWJob(pw_cmd=str(s["pw_cmd"]), mpi_cmd=str(s.get("mpi_cmd") or ""),
                        input_file=f"{name}.in", output_file=f"{name}.out")
    handlers = qe_jobs.default_handlers(input_file=f"{name}.in", output_file=f"{name}.out",
                                        deadline=deadline, smearing=str(s["smearing"]), degauss=float(s["degauss"]))
    return Custodian(handlers, [job], validators=[qe_jobs.PWValidator(output_file=f"{name}.out")],
                     max_errors=int(s["max_errors"]), polling_time_step=1, monitor_freq=5,
                     directory=str(stepdir), terminate_on_nonzero_returncode=True)


def _pw_seconds(stepdir: Path, name: str, parsed: dict) -> float:
    """pw.x's own wall time over ``<name>.out`` (``parsed``) and the ``<name>.out.N`` of earlier attempts."""
    out_path = stepdir / f"{name}.out"
    total = 0.0
    for p in sorted(stepdir.glob(f"{name}.out*")):
        w = parse_output(p.read_text(errors="replace")).get("pw_wall_seconds") if p != out_path \
            else parsed.get("pw_wall_seconds")
        total += w or 0.0
    return total


def _step_record(step: Step, parsed: dict, *, seconds: float, pw_seconds: float, kgrid, corrections: list,
                 error) -> dict:
    """The step's entry in the result's ``steps``."""
    converged = all(parsed[flag] for flag in step.converged_when)
    return {"calculation": step.calculation, "seconds": round(seconds, 3), "pw_seconds": round(pw_seconds, 3),
            "energy": parsed["energy"], "converged": converged and error is None,
            "n_scf_iterations": parsed["n_scf_iterations"], "ionic_steps": parsed["ionic_steps"],
            "kpts": list(kgrid) if kgrid is not None else "gamma", "corrections": corrections,
            "fermi": parsed["fermi"], "total_magnetization": parsed["total_magnetization"],
            "pressure_kbar": parsed["pressure_kbar"], "pw_version": parsed["version"]}


def _step_status(error, parsed: dict, *, text: str, corrections: list, stepdir: Path, name: str,
                 deadline: float | None) -> tuple[str, str | None]:
    """("ok" | "walltime" | "failed", reason) of a step custodian ran, ``error`` its CustodianError or None."""
    if error is None:
        return "ok", None
    from fw_screen.dft.qe import jobs as qe_jobs

    handler = getattr(error, "handler", None)
    if isinstance(handler, qe_jobs.PWWalltimeHandler) or parsed["max_time_reached"] or (
            deadline is not None and time.time() >= deadline and not parsed["job_done"]):
        return "walltime", f"wall time reached during {name}"
    detail = "; ".join(f"Error in routine {e['routine']} ({e['code']}): {e['message']}" for e in parsed["errors"])
    if not detail and corrections:
        detail = "last error: " + "; ".join(corrections[-1]["errors"])
    if not text:
        err = stepdir / f"{name}.err"
        detail = detail or ("pw.x wrote no output" + (
            f"; stderr: {err.read_text(errors='replace')[-500:].strip()}" if err.exists() else ""))
    return "failed", f"pw.x {name}: {error.message}" + (f" ({detail})" if detail else "")


def _pw_step(structure, proto: dict, s: dict, step: Step, *, kind: str, workdir: Path, kgrid,
              deadline: float | None):
    """Run one pw.x step under custodian in ``workdir/<calculation>``; (parsed output, record, status, reason)."""
    from custodian.custodian import CustodianError

    name = step.calculation
    stepdir = workdir / name
    stepdir.mkdir(parents=True, exist_ok=True)
    max_seconds = None if deadline is None else deadline - time.time() - WALLTIME_MARGIN_S
    pwin = pw_input(structure, proto, s, name, kind=kind, workdir=workdir, prefix=step.prefix,
                     kgrid=kgrid, nat=len(structure), max_seconds=max_seconds)
    pwin.write_file(str(stepdir / f"{name}.in"))
    cust = _custodian(s, name, stepdir, deadline)
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
    corrections = _summarise_corrections(cust.run_log, name)
    record = _step_record(step, parsed, seconds=seconds, pw_seconds=_pw_seconds(stepdir, name, parsed),
                          kgrid=kgrid, corrections=corrections, error=error)
    status, reason = _step_status(error, parsed, text=text, corrections=corrections, stepdir=stepdir,
                                  name=name, deadline=deadline)
    return parsed, record, status, reason


def _pseudo_problem(proto: dict, s: dict, structure) -> str | None:
    """Why the protocol's pseudopotentials cannot compute ``structure`` here (none for an element, a file
    missing from or changed in ``s["pseudo_dir"]``), or None."""
    elements = sorted({sp.symbol for sp in structure.composition})
    missing = [el for el in elements if el not in (proto.get("pseudos") or {})]
    if missing:
        try:
            find_pseudos(missing, s["pseudo_dir"])  # a PseudoError if the folder lacks one
        except PseudoError as exc:
            return str(exc)
        return (f"protocol {proto.get('id')} has no pseudopotential for {', '.join(missing)} "
                f"(computed for {proto.get('elements')})")
    folder = Path(s["pseudo_dir"]).expanduser()
    bad = []
    for el in elements:
        path = folder / proto["pseudos"][el]["filename"]
        if not path.is_file():
            bad.append(f"{el} ({path.name} not found)")
        elif file_md5(path) != proto["pseudos"][el]["md5"]:
            bad.append(f"{el} ({path.name} md5 differs from the protocol's)")
    return f"pseudopotential for {', '.join(bad)} in {folder}" if bad else None


# ------------------------------------------------------------------------------------------- the run
class _ChainRun:
    """The state of one :func:`run_chain` call: the result it fills in, the latest geometry, the clock."""

    def __init__(self, protocol: dict, settings: dict, workdir, kind: str, checkpoint: Checkpoint | None):
        self.t_start = time.time()
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proto, self.settings, self.s = protocol, settings, None
        self.ck = checkpoint
        self.kind = checkpoint.kind if checkpoint is not None else kind
        self.prev_seconds = checkpoint.seconds if checkpoint is not None else 0.0
        self.prev_pw = checkpoint.pw_seconds if checkpoint is not None else 0.0
        self.current = None  # the latest geometry (a Structure)
        self.parsed = {}  # calculation -> parse_output of its run in this call
        self.result = {"status": "failed", "reason": None, "kind": self.kind,
                       "protocol_id": (protocol or {}).get("id"), "energy_total": None, "energy_per_atom": None,
                       "structure": None, "natoms": None, "band_gap": None, "total_magnetization": None,
                       "steps": [], "corrections": [], "pw_seconds": 0.0, "seconds": 0.0, "checkpoint": None}

    def seconds(self) -> float:
        return round(self.prev_seconds + time.time() - self.t_start, 3)

    def pw_seconds(self) -> float:
        return round(self.prev_pw + sum(st.get("pw_seconds", 0.0) for st in self.result["steps"]
                                        if not st.get("from_checkpoint")), 3)

    def by_calc(self) -> dict:
        return {st["calculation"]: st for st in self.result["steps"]}

    def start(self, structure) -> str | None:
        """Settings, the geometry (``structure``, or the checkpoint's), its pseudopotentials: why the chain
        cannot run, or None."""
        if self.kind not in CHAINS:
            return f"unknown kind {self.kind!r} ({' or '.join(CHAINS)})"
        self.s = full_settings(self.settings)
        ck = self.ck
        if ck is not None:
            if ck.protocol_id not in (None, self.proto.get("id")):
                return f"checkpoint protocol {ck.protocol_id} differs from {self.proto.get('id')}"
            self.current = ck.geometry()
            self.result["steps"] = [dict(st, from_checkpoint=True) for st in ck.steps]
            self.result["corrections"] = list(ck.corrections)
        else:
            self.current = as_structure(structure, self.kind, float(self.s["molecule_box"]))
        self.result["natoms"] = len(self.current)
        if ck is not None:
            self.result["structure"] = self.current
        return _pseudo_problem(self.proto, self.s, self.current)

    def deadline(self, walltime_s: float | None) -> float | None:
        if walltime_s is None:
            walltime_s = self.s.get("walltime_s")
        return (self.t_start + float(walltime_s)) if walltime_s else None

    def todo(self, chain: tuple[Step, ...]) -> list[Step]:
        """The steps of ``chain`` not done before the checkpoint, after those whose charge density one of them
        reads: that density is in the earlier run's workdir, so such a step runs again here."""
        done = [st["calculation"] for st in self.result["steps"]]
        todo = [st for st in chain if st.calculation not in done]
        named = {st.calculation: st for st in chain}
        return [named[st.reads_density_of] for st in todo if st.reads_density_of in done] + todo

    def run_step(self, step: Step, deadline: float | None) -> tuple[str, str | None]:
        """Run ``step`` on the latest geometry and record it: ("ok" | "walltime" | "failed", reason)."""
        from pymatgen.core import Structure

        kgrid = kpoint_grid(self.current, self.s[step.kppa]) if step.kppa else None
        parsed, record, status, reason = _pw_step(self.current, self.proto, self.s, step, kind=self.kind,
                                                  workdir=self.workdir, kgrid=kgrid, deadline=deadline)
        self.result["corrections"].extend(record["corrections"])
        self.result["steps"] = [st for st in self.result["steps"] if st["calculation"] != step.calculation]
        self.result["steps"].append(record)
        self.parsed[step.calculation] = parsed
        if step.relaxes and parsed.get("structure"):
            self.current = Structure.from_dict(parsed["structure"])  # the latest geometry, also when stopped
            self.result["structure"] = self.current
        if status == "walltime":
            record["converged"] = False
        elif status == "ok" and not record["converged"]:
            return "failed", f"pw.x {step.calculation} finished without converging"
        return status, reason

    def finish(self, status: str, reason: str | None = None) -> dict:
        self.result["status"], self.result["reason"] = status, reason
        if not (self.settings or {}).get("keep_scratch"):  # wavefunctions and charge density: not needed any more
            shutil.rmtree(self.workdir / "tmp", ignore_errors=True)
        self.result["seconds"] = self.seconds()
        self.result["pw_seconds"] = self.pw_seconds()
        return self.result

    def stop(self, chain: tuple[Step, ...], reason: str) -> dict:
        """Out of wall time: status "checkpoint", with the :class:`Checkpoint` to continue from."""
        by_calc = self.by_calc()
        converged = [by_calc[st.calculation] for st in chain
                     if st.calculation in by_calc and by_calc[st.calculation].get("converged")]
        ck = Checkpoint(structure=self.current.as_dict(), protocol_id=self.proto.get("id"), kind=self.kind,
                        steps=[{k: v for k, v in st.items() if k != "from_checkpoint"} for st in converged],
                        corrections=list(self.result["corrections"]), seconds=self.seconds(),
                        pw_seconds=self.pw_seconds(), reason=reason)
        self.result["checkpoint"] = ck.to_dict()
        self.result["structure"] = self.current
        return self.finish("checkpoint", reason)

    def complete(self) -> dict:
        """Every step converged: the energy (the scf's, else the relax's last), the band gap (the nscf's)."""
        by_calc, r = self.by_calc(), self.result
        final = by_calc.get("scf") or by_calc.get("vc-relax") or by_calc.get("relax")
        r["energy_total"] = final["energy"] if final else None
        if r["energy_total"] is not None:
            r["energy_per_atom"] = r["energy_total"] / r["natoms"]
        r["total_magnetization"] = (by_calc.get("scf") or {}).get("total_magnetization")
        if self.kind == "crystal":
            nscf = self.parsed.get("nscf")
            r["band_gap"] = band_gap(nscf) if nscf else None
        r["structure"] = self.current
        return self.finish("completed")


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
    JSON-able "checkpoint" (:meth:`Checkpoint.to_dict`) to pass back (in any workdir) to continue.  A
    per-structure failure never raises: status "failed" and a "reason".

    Result keys: status, reason, kind, protocol_id, energy_total, energy_per_atom, structure (pymatgen
    Structure or None), natoms, band_gap, total_magnetization, steps, corrections, pw_seconds, seconds,
    checkpoint.
    """
    run = _ChainRun(protocol, settings, workdir, kind,
                    Checkpoint.from_dict(checkpoint, kind) if checkpoint else None)
    try:
        problem = run.start(structure)
        if problem is not None:
            return run.finish("failed", problem)
        chain = chain_steps(run.kind, relax=relax, with_band_gap=with_band_gap)
        deadline = run.deadline(walltime_s)
        for step in run.todo(chain):
            if deadline is not None and deadline - time.time() < WALLTIME_MARGIN_S + MIN_STEP_S:
                return run.stop(chain, f"wall time: {step.calculation} not started")
            status, reason = run.run_step(step, deadline)
            if status == "walltime":
                return run.stop(chain, reason)
            if status == "failed":
                return run.finish("failed", reason)
        return run.complete()
    except PseudoError as exc:
        return run.finish("failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - a per-structure failure must not crash the caller
        tb = traceback.format_exc(limit=3)
        return run.finish("failed", f"{type(exc).__name__}: {exc} [{tb.strip().splitlines()[-1]}]")
