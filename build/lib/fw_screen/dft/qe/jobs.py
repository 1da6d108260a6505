"""custodian Job, ErrorHandlers and Validator for Quantum ESPRESSO's pw.x.

:class:`PWJob` runs ``[mpi_cmd...] pw_cmd -in X.in > X.out`` in a directory.  The handlers read pw.x's own
messages in ``X.out`` and edit ``X.in`` (read and written with pymatgen's
:class:`~pymatgen.io.pwscf.PWInput`); custodian then reruns the job.  Each handler's docstring quotes the
message it matches and the fix it applies.  ``Error in routine ...`` messages that no handler knows are
fatal (:class:`PWFatalHandler`: the message is kept, no rerun).  :class:`PWWalltimeHandler` turns pw.x's
``max_seconds`` stop (or an overrun of the deadline) into an unrecoverable error that
:func:`fw_screen.dft.qe.chain.run_chain` reports as a checkpoint.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from custodian.custodian import ErrorHandler, Job, Validator

from fw_screen.dft.qe import parse_output

#: pw.x messages of a failed subspace diagonalisation (cdiaghg/rdiaghg/c_bands/cegterg).
DIAGONALIZATION_MESSAGES = (
    "S matrix not positive definite",
    "problems computing cholesky",
    "eigenvectors failed to converge",
    "too many bands are not converged",
)
SMEARING_MESSAGE = "charge is wrong: smearing is needed"
SCF_MESSAGE = "convergence NOT achieved after"
RELAX_MESSAGES = ("history already reset at previous step: stopping", "The maximum number of steps has been reached.")
WALLTIME_MESSAGES = ("Maximum CPU time exceeded", "max_seconds reached")
#: Messages some handler here corrects; any other ``Error in routine`` is fatal.
HANDLED_MESSAGES = DIAGONALIZATION_MESSAGES + (SMEARING_MESSAGE, SCF_MESSAGE) + RELAX_MESSAGES + WALLTIME_MESSAGES


# ------------------------------------------------------------------------------------- input helpers
def read_input(path):
    """A :class:`PWInput` from a pw.x input file.

    pymatgen's reader turns any quoted string containing "true"/"false" into a bool; quoted strings are
    re-read verbatim here so that paths (outdir, pseudo_dir) survive a round trip.
    """
    from pymatgen.io.pwscf import PWInput

    text = Path(path).read_text()
    pwin = PWInput.from_str(text)
    section = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("&"):
            section = s[1:].lower()
            continue
        if s == "/":
            section = None
            continue
        if section in pwin.sections:
            m = re.match(r"^(\w+)\s*=\s*'([^']*)'", s)
            if m:
                pwin.sections[section][m.group(1)] = m.group(2)
    return pwin


def write_input(pwin, path) -> None:
    pwin.write_file(str(path))


def _structure_without_props(structure):
    from pymatgen.core import Structure

    st = Structure.from_sites(structure)
    for key in list(st.site_properties):
        st.remove_site_property(key)
    return st


def _nat(pwin) -> int:
    return len(pwin.structure)


# ---------------------------------------------------------------------------------------------- job
class _RecordingPopen(subprocess.Popen):
    """A Popen that writes its return code to ``rc_file`` once known (read by :class:`PWValidator`)."""

    rc_file: str | None = None

    def _record(self):
        if self.returncode is not None and self.rc_file:
            try:
                Path(self.rc_file).write_text(f"{self.returncode}\n")
            except OSError:
                pass

    def poll(self):
        rc = super().poll()
        self._record()
        return rc

    def wait(self, timeout=None):
        rc = super().wait(timeout=timeout)
        self._record()
        return rc


class PWJob(Job):
    """``[mpi_cmd...] pw_cmd -in input_file > output_file`` (stderr to ``<output stem>.err``) in a directory.

    ``mpi_cmd`` is a launcher prefix such as ``"mpirun --allow-run-as-root -np 2"`` ("" runs serially).
    OMP_NUM_THREADS / OPENBLAS_NUM_THREADS default to 1 (one thread per MPI rank) unless set in ``env`` or
    the environment.  Before a rerun the previous output is kept as ``output_file.N``.  pw.x writes a note
    about IEEE_UNDERFLOW to stderr on every run with gfortran: stderr is not a failure signal.
    """

    def __init__(self, pw_cmd: str = "pw.x", mpi_cmd: str = "", input_file: str = "pw.in",
                 output_file: str = "pw.out", env: dict | None = None, backup: bool = True) -> None:
        self.pw_cmd = pw_cmd
        self.mpi_cmd = mpi_cmd or ""
        self.input_file = input_file
        self.output_file = output_file
        self.env = dict(env or {})
        self.backup = backup
        self._process = None

    @property
    def name(self):
        return f"PWJob({self.input_file})"

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.mpi_cmd) + shlex.split(self.pw_cmd) + ["-in", self.input_file]

    def setup(self, directory="./"):
        inp = Path(directory) / self.input_file
        orig = inp.with_name(inp.name + ".orig")
        if self.backup and inp.exists() and not orig.exists():
            shutil.copy(inp, orig)

    def run(self, directory="./"):
        d = Path(directory)
        out = d / self.output_file
        if out.exists():
            n = len(list(d.glob(self.output_file + ".*"))) + 1
            while (d / f"{self.output_file}.{n}").exists():
                n += 1
            out.rename(d / f"{self.output_file}.{n}")
        env = dict(os.environ)
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(key, "1")
        env.update({k: str(v) for k, v in self.env.items()})
        rc_file = d / (Path(self.output_file).stem + ".rc")
        rc_file.unlink(missing_ok=True)
        with open(out, "w") as fout, open(d / (Path(self.output_file).stem + ".err"), "w") as ferr:
            p = _RecordingPopen(self.argv, cwd=str(d), stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        p.rc_file = str(rc_file)
        self._process = p
        return p

    def postprocess(self, directory="./"):
        pass

    def terminate(self, directory="./") -> None:
        """Stop pw.x (and its MPI launcher): SIGTERM to the process group, SIGKILL after 10 s."""
        p = self._process
        if p is None or p.poll() is not None:
            return
        import signal

        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


# ------------------------------------------------------------------------------------------ handlers
class _PWHandler(ErrorHandler):
    """Common parts: the output is read fresh at every check, the input edited through PWInput."""

    is_monitor = False

    def __init__(self, input_file: str = "pw.in", output_file: str = "pw.out") -> None:
        self.input_file = input_file
        self.output_file = output_file

    def _text(self, directory) -> str:
        path = Path(directory) / self.output_file
        return path.read_text(errors="replace") if path.exists() else ""

    def _found(self, directory, messages) -> list[str]:
        """Which of ``messages`` the output holds."""
        text = self._text(directory)
        return [m for m in messages if m in text]

    @staticmethod
    def _lower_mixing(electrons: dict) -> float | None:
        """mixing_beta x0.6, not below 0.1; None when it is already at 0.1."""
        beta = float(electrons.get("mixing_beta", 0.7))
        return round(max(0.1, beta * 0.6), 4) if beta > 0.1 + 1e-9 else None

    def _edit(self, directory, changes: dict[tuple[str, str], object]) -> list[dict]:
        """Set ``(section, key) -> value`` in the input; returns custodian-style actions."""
        path = Path(directory) / self.input_file
        pwin = read_input(path)
        actions = []
        for (section, key), value in changes.items():
            old = pwin.sections[section].get(key)
            pwin.sections[section][key] = value
            actions.append({"dict": self.input_file, "action": {"_set": {f"{section}.{key}": value}},
                            "previous": old})
        write_input(pwin, path)
        return actions

    def _restart_from_output(self, directory) -> dict | None:
        """Replace the input geometry by the last one in the output (relax / vc-relax), keeping the rest."""
        from pymatgen.core import Structure
        from pymatgen.io.pwscf import PWInput

        parsed = parse_output(self._text(directory))
        if not parsed.get("structure"):
            return None
        path = Path(directory) / self.input_file
        old = read_input(path)
        if old.sections["control"].get("calculation") not in ("relax", "vc-relax"):
            return None
        new = _structure_without_props(Structure.from_dict(parsed["structure"]))
        pwin = PWInput(new, pseudo=old.pseudo, control=old.sections["control"], system=old.sections["system"],
                       electrons=old.sections["electrons"], ions=old.sections["ions"], cell=old.sections["cell"],
                       kpoints_mode=old.kpoints_mode, kpoints_grid=old.kpoints_grid,
                       kpoints_shift=old.kpoints_shift, format_options={"coord_decimals": 10})
        write_input(pwin, path)
        return {"file": self.input_file, "action": {"_set": {"structure": "last geometry of the output"}},
                "lattice_abc": [round(x, 5) for x in new.lattice.abc]}


class PWSCFConvergenceHandler(_PWHandler):
    """pw.x: ``convergence NOT achieved after N iterations: stopping`` (the SCF hit electron_maxstep).

    Fix, one step per occurrence: (1) loosen conv_thr x10 toward ``1e-8 * nat`` Ry; (2) once there, lower
    mixing_beta (x0.6, not below 0.1), raise electron_maxstep (x2, at least 200, at most 1000) and deepen
    the mixing history (mixing_ndim 12); when nothing is left to change the error is unrecoverable.
    A relax/vc-relax restarts from its last geometry.
    """

    def check(self, directory="./"):
        return SCF_MESSAGE in self._text(directory)

    def correct(self, directory="./"):
        pwin = read_input(Path(directory) / self.input_file)
        nat = _nat(pwin)
        el = pwin.sections["electrons"]
        conv = float(el.get("conv_thr", 1e-6))
        loosest = 1e-8 * nat
        changes = {}
        if conv < loosest * 0.999:
            changes[("electrons", "conv_thr")] = float(f"{min(conv * 10.0, loosest):.4g}")
        else:
            maxstep = int(el.get("electron_maxstep", 100))
            if self._lower_mixing(el) is not None:
                changes[("electrons", "mixing_beta")] = self._lower_mixing(el)
            if maxstep < 1000:
                changes[("electrons", "electron_maxstep")] = min(1000, max(200, 2 * maxstep))
            if int(el.get("mixing_ndim", 8)) < 12:
                changes[("electrons", "mixing_ndim")] = 12
        if not changes:
            return {"errors": ["scf not converged"], "actions": None}
        actions = self._edit(directory, changes)
        restart = self._restart_from_output(directory)
        if restart:
            actions.append(restart)
        return {"errors": ["scf not converged"], "actions": actions}


class PWDiagonalizationHandler(_PWHandler):
    """pw.x: ``S matrix not positive definite`` / ``problems computing cholesky`` / ``eigenvectors failed to
    converge`` / ``too many bands are not converged`` (subspace diagonalisation failed).

    Fix: switch diagonalization david -> cg (cg -> ppcg), then lower mixing_beta (x0.6, not below 0.1);
    unrecoverable when all are used.
    """

    def check(self, directory="./"):
        return bool(self._found(directory, DIAGONALIZATION_MESSAGES))

    def correct(self, directory="./"):
        errors = self._found(directory, DIAGONALIZATION_MESSAGES)
        pwin = read_input(Path(directory) / self.input_file)
        el = pwin.sections["electrons"]
        diag = str(el.get("diagonalization", "david")).lower()
        nxt = {"david": "cg", "cg": "ppcg"}.get(diag)
        if nxt:
            changes = {("electrons", "diagonalization"): nxt}
        elif self._lower_mixing(el) is not None:
            changes = {("electrons", "mixing_beta"): self._lower_mixing(el)}
        else:
            return {"errors": errors, "actions": None}
        return {"errors": errors, "actions": self._edit(directory, changes)}


class PWSmearingHandler(_PWHandler):
    """pw.x: ``charge is wrong: smearing is needed`` (fixed occupations for a metal / odd electron count).

    Fix: occupations = 'smearing' with ``smearing`` / ``degauss`` (Ry); unrecoverable if already smearing.
    """

    def __init__(self, input_file: str = "pw.in", output_file: str = "pw.out", smearing: str = "mv",
                 degauss: float = 0.01) -> None:
        super().__init__(input_file, output_file)
        self.smearing = smearing
        self.degauss = degauss

    def check(self, directory="./"):
        return SMEARING_MESSAGE in self._text(directory)

    def correct(self, directory="./"):
        pwin = read_input(Path(directory) / self.input_file)
        if str(pwin.sections["system"].get("occupations", "fixed")).lower() == "smearing":
            return {"errors": [SMEARING_MESSAGE], "actions": None}
        actions = self._edit(directory, {("system", "occupations"): "smearing",
                                         ("system", "smearing"): self.smearing,
                                         ("system", "degauss"): float(self.degauss)})
        return {"errors": [SMEARING_MESSAGE], "actions": actions}


class PWRelaxRestartHandler(_PWHandler):
    """pw.x: ``history already reset at previous step: stopping`` (BFGS cannot make progress) or
    ``The maximum number of steps has been reached.`` (nstep ionic steps without convergence).

    Fix: restart the relax / vc-relax from the last geometry in the output (fresh BFGS history and, for a
    vc-relax, a fresh plane-wave basis); unrecoverable if the output has no geometry.
    """

    def check(self, directory="./"):
        return bool(self._found(directory, RELAX_MESSAGES))

    def correct(self, directory="./"):
        errors = self._found(directory, RELAX_MESSAGES)
        restart = self._restart_from_output(directory)
        return {"errors": errors, "actions": [restart] if restart else None}


class PWFatalHandler(_PWHandler):
    """pw.x: ``Error in routine <name> (<code>): <message>`` that no other handler corrects.

    No fix: the error is unrecoverable and its message is kept in ``errors``.
    """

    def check(self, directory="./"):
        parsed = parse_output(self._text(directory))
        return any(not any(h in e["message"] for h in HANDLED_MESSAGES) for e in parsed["errors"])

    def correct(self, directory="./"):
        parsed = parse_output(self._text(directory))
        errors = [f"Error in routine {e['routine']} ({e['code']}): {e['message']}" for e in parsed["errors"]
                  if not any(h in e["message"] for h in HANDLED_MESSAGES)]
        return {"errors": errors, "actions": None}


class PWWalltimeHandler(_PWHandler):
    """pw.x: ``Maximum CPU time exceeded`` (its ``max_seconds`` was reached) - or, as a monitor, the job is
    still running ``grace_s`` seconds past ``deadline`` (epoch seconds).

    No fix here (unrecoverable, the job is stopped): :func:`fw_screen.dft.qe.chain.run_chain` turns it into a
    checkpoint from which the chain continues elsewhere.
    """

    is_monitor = True

    def __init__(self, input_file: str = "pw.in", output_file: str = "pw.out", deadline: float | None = None,
                 grace_s: float = 30.0) -> None:
        super().__init__(input_file, output_file)
        self.deadline = deadline
        self.grace_s = grace_s

    def check(self, directory="./"):
        if self._found(directory, WALLTIME_MESSAGES):
            return True
        return (self.deadline is not None and time.time() > self.deadline + self.grace_s
                and "JOB DONE." not in self._text(directory))

    def correct(self, directory="./"):
        return {"errors": ["wall time reached"], "actions": None}


def default_handlers(input_file: str = "pw.in", output_file: str = "pw.out", deadline: float | None = None,
                     smearing: str = "mv", degauss: float = 0.01) -> list:
    """The handlers run_chain uses, walltime first."""
    io = {"input_file": input_file, "output_file": output_file}
    return [PWWalltimeHandler(deadline=deadline, **io), PWSmearingHandler(smearing=smearing, degauss=degauss, **io),
            PWDiagonalizationHandler(**io), PWSCFConvergenceHandler(**io), PWRelaxRestartHandler(**io),
            PWFatalHandler(**io)]


# ------------------------------------------------------------------------------------------ validator
class PWValidator(Validator):
    """The run failed unless the output ends with ``JOB DONE.``, has no ``Error in routine`` and the return
    code (written by :class:`PWJob` next to the output as ``<stem>.rc``) is 0."""

    def __init__(self, output_file: str = "pw.out") -> None:
        self.output_file = output_file

    def check(self, directory="./"):
        path = Path(directory) / self.output_file
        if not path.exists():
            return True
        parsed = parse_output(path.read_text(errors="replace"))
        if not parsed["job_done"] or parsed["errors"]:
            return True
        rc = path.with_name(Path(self.output_file).stem + ".rc")
        if rc.exists():
            try:
                return int(rc.read_text().strip() or 0) != 0
            except ValueError:
                return True
        return False
