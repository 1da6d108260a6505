"""Quantum ESPRESSO (pw.x) engine for the DFT stage: pure science, no database, no FireWorks.

One structure in, one JSON-able result out.  A crystal goes vc-relax -> scf on the relaxed cell -> nscf on
a denser uniform k mesh -> band gap; an elemental gas reference (O2, N2, H2, F2, Cl2 in a cubic box) goes
relax -> scf at the Gamma point, spin-polarised.  Every pw.x step runs under custodian
(:mod:`fw_screen.qe_jobs`), whose handlers fix pw.x's common failures and turn a wall-time stop into a
resumable checkpoint.

Comparability: energies only meet on one phase diagram when they share a :func:`protocol` - functional,
pseudopotentials (file + md5 per element), plane-wave cutoffs, smearing, k-point density, thresholds and
spin policy.  Cutoffs are chosen per chemical *system* (the largest recommendation among its elements), so
a candidate and every reference phase of its hull use the same ones.  ``protocol()["id"]`` is a short hash
of all of it except the pw.x version string, which is recorded but kept out of the id so that a protocol
computed on a machine without pw.x matches the one a DFT worker computes.

Inputs are written with pymatgen's :class:`~pymatgen.io.pwscf.PWInput`; outputs are parsed here
(:func:`parse_output`) because pymatgen's ``PWOutput`` reads only energies and the cutoff.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import traceback
from pathlib import Path

import numpy as np

RY_TO_EV = 13.605693122994
BOHR_TO_ANG = 0.529177210903

#: Settings defaults (the spec's ``dft.qe`` section; every key may be null there).
DEFAULTS: dict = {
    "pw_cmd": None,
    "mpi_cmd": None,
    "pseudo_dir": None,
    "ecutwfc": None,
    "ecutrho": None,
    "default_ecutwfc": 45.0,
    "default_ecutrho": 360.0,
    "kppa": 1000,
    "nscf_kppa": 3000,
    "smearing": "mv",
    "degauss": 0.01,
    "conv_thr_per_atom": 1e-9,
    "mixing_beta": 0.5,
    "electron_maxstep": 100,
    "nstep": 100,
    "press_conv_thr": 0.5,
    "forc_conv_thr": 1e-3,
    "max_errors": 5,
    "molecule_box": 10.0,
    "walltime_s": None,
    "keep_scratch": False,  # keep <workdir>/tmp (wavefunctions, charge density) after the chain
}
DEFAULT_PW_CMD = "pw.x"
DEFAULT_MPI_CMD = ""
DEFAULT_PSEUDO_DIR = "/usr/share/espresso/pseudo"
ENV_VARS = {"pw_cmd": "FW_SCREEN_PW_CMD", "mpi_cmd": "FW_SCREEN_MPI_CMD", "pseudo_dir": "ESPRESSO_PSEUDO"}

#: Species that get a spin-polarised (ferromagnetic, starting_magnetization 0.5) calculation in a crystal:
#: the open-shell 3d metals Ti-Cu and the lanthanides Ce-Yb.  Molecules are always spin-polarised.
MAGNETIC_ELEMENTS = frozenset({"Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu",
                               "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb"})
STARTING_MAGNETIZATION = 0.5
FUNCTIONAL = "PBE"


# Seconds kept back from a wall-time budget: pw.x's max_seconds is set this much earlier so that it can
# stop and write its output, and no step is started with less than MIN_STEP_S left.
WALLTIME_MARGIN_S = 3.0
MIN_STEP_S = 2.0


class QEError(RuntimeError):
    """A Quantum ESPRESSO setup or run problem."""


class PseudoError(QEError):
    """No usable pseudopotential for some element(s); the message names them and the folder searched."""


# --------------------------------------------------------------------------------------------- settings
def resolve_settings(qe_spec: dict | None = None, env: dict | None = None) -> dict:
    """Full settings from the spec's ``dft.qe`` section, the FWorker env and the environment.

    ``pw_cmd`` / ``mpi_cmd`` / ``pseudo_dir``: the spec value, else the FWorker ``env`` key of the same name,
    else $FW_SCREEN_PW_CMD / $FW_SCREEN_MPI_CMD / $ESPRESSO_PSEUDO, else ``pw.x``, ``""`` (serial) and
    Debian's /usr/share/espresso/pseudo.  Every other key: the spec value unless null, else :data:`DEFAULTS`.
    """
    qe_spec = dict(qe_spec or {})
    env = dict(env or {})
    out = dict(DEFAULTS)
    out.update({k: v for k, v in qe_spec.items() if v is not None})
    fallback = {"pw_cmd": DEFAULT_PW_CMD, "mpi_cmd": DEFAULT_MPI_CMD, "pseudo_dir": DEFAULT_PSEUDO_DIR}
    for key, default in fallback.items():
        for value in (qe_spec.get(key), env.get(key), os.environ.get(ENV_VARS[key])):
            if value is not None and not (isinstance(value, str) and value.startswith(">>")):
                out[key] = value
                break
        else:
            out[key] = default
    out["pseudo_dir"] = str(Path(out["pseudo_dir"]).expanduser())
    return out


def _full_settings(settings: dict | None) -> dict:
    """Settings with every key present (a partial dict is resolved the same way as the spec section)."""
    settings = dict(settings or {})
    if all(k in settings and settings[k] is not None for k in ("pw_cmd", "pseudo_dir")) and \
            settings.get("mpi_cmd") is not None:
        return {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    return resolve_settings(settings)


# ------------------------------------------------------------------------------------- pseudopotentials
@functools.lru_cache(maxsize=512)
def _md5(path: str, size: int, mtime: float) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path) -> str:
    st = os.stat(path)
    return _md5(str(path), st.st_size, st.st_mtime)


def _pseudo_tables(folder: Path) -> list[tuple[str, dict]]:
    """SSSP-style json tables in the folder, as {El: {"filename", "md5", "cutoff_wfc_ry", "cutoff_rho_ry"}}.

    Two layouts are read: the official SSSP file (``SSSP_1.3.0_PBE_efficiency.json``: flat
    ``{El: {"filename", "md5", "cutoff_wfc", "cutoff_rho", "pseudopotential"}}``) and a wrapped one
    (``{"elements": {El: {..., "cutoff_wfc_ry", "cutoff_rho_ry"}}, "library": ...}``)."""
    from pymatgen.core.periodic_table import Element

    tables = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        elements = data.get("elements") if isinstance(data.get("elements"), dict) else {
            k: v for k, v in data.items() if Element.is_valid_symbol(k)}
        if not elements or not all(isinstance(v, dict) and "filename" in v for v in elements.values()):
            continue
        table = {}
        for el, row in elements.items():
            row = dict(row)
            for key in ("cutoff_wfc", "cutoff_rho"):
                if f"{key}_ry" not in row and key in row:
                    row[f"{key}_ry"] = row[key]  # the official file's cutoffs are in Ry too
            table[el] = row
        tables.append((path.name, table))
    # an SSSP table first, then by name
    tables.sort(key=lambda t: ("sssp" not in t[0].lower(), t[0]))
    return tables


def find_pseudos(elements, pseudo_dir) -> dict:
    """``{el: {"filename", "md5", "ecutwfc", "ecutrho", "source"}}`` for every element.

    An SSSP-style json in the folder gives the file and its recommended cutoffs (Ry) - the file must be
    there and its md5 must match the table's when the table has one (else the element is missing).  An element the table lacks (or a folder without a table) gets
    a PBE UPF chosen by file name (``El.pbe*.UPF`` / ``el_pbe*.UPF``, case-insensitive, not pbesol; the
    first in sorted order) with cutoffs None.  Raises :class:`PseudoError` naming every missing element.
    """
    folder = Path(pseudo_dir).expanduser()
    elements = sorted({str(e) for e in elements})
    if not folder.is_dir():
        raise PseudoError(f"no pseudopotential for {', '.join(elements)}: pseudopotential folder {folder} "
                          "does not exist (set dft.qe.pseudo_dir, the FWorker env pseudo_dir or $ESPRESSO_PSEUDO)")
    tables = _pseudo_tables(folder)
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    out, missing, problems = {}, [], []
    for el in elements:
        found, listed = None, False
        for tname, table in tables:
            entry = table.get(el)
            if not entry:
                continue
            listed = True
            path = folder / entry["filename"]
            if not path.is_file():
                problems.append(f"{el}: {entry['filename']} listed in {tname} is not in the folder")
                continue
            md5 = file_md5(path)
            if entry.get("md5") and entry["md5"].lower() != md5:
                problems.append(f"{el}: {entry['filename']} md5 {md5} differs from {entry['md5']} in {tname}")
                continue
            wfc, rho = entry.get("cutoff_wfc_ry", entry.get("cutoff_wfc")), \
                entry.get("cutoff_rho_ry", entry.get("cutoff_rho"))
            found = {"filename": entry["filename"], "md5": md5,
                     "ecutwfc": float(wfc) if wfc is not None else None,
                     "ecutrho": float(rho) if rho is not None else None, "source": tname}
            break
        if found is None and not listed:  # a listed file that is absent or altered is not replaced by a guess
            pattern = re.compile(rf"^{re.escape(el)}[._\-]pbe(?!sol)[^/]*\.upf$", re.IGNORECASE)
            names = [f for f in files if pattern.match(f)]
            if names:
                found = {"filename": names[0], "md5": file_md5(folder / names[0]),
                         "ecutwfc": None, "ecutrho": None, "source": "filename"}
        if found is None:
            missing.append(el)
        else:
            out[el] = found
    if missing:
        extra = f" ({'; '.join(problems)})" if problems else ""
        raise PseudoError(f"no PBE pseudopotential for {', '.join(missing)} in {folder}{extra}")
    return out


# ------------------------------------------------------------------------------------------- protocol
@functools.lru_cache(maxsize=8)
def pw_version(pw_cmd: str = DEFAULT_PW_CMD) -> str | None:
    """pw.x's version string (e.g. ``"6.7MaX"``), from its banner with an empty input; None if unknown."""
    argv = shlex.split(pw_cmd)
    if not argv or shutil.which(argv[0]) is None:
        return None
    import tempfile

    try:  # in a scratch folder: pw.x leaves input_tmp.in and CRASH behind
        with tempfile.TemporaryDirectory(prefix="fws-pwversion-") as tmp:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                                  check=False, cwd=tmp, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Program PWSCF v\.(\S+)", proc.stdout)
    return m.group(1) if m else None


def _is_spin_polarized(elements, kind: str) -> bool:
    return kind == "molecule" or any(str(e) in MAGNETIC_ELEMENTS for e in elements)


def protocol(system_elements, settings) -> dict:
    """The calculation protocol shared by every structure of one chemical system (see module doc).

    ecutwfc/ecutrho: the spec override if set, else the largest recommendation among the system's
    elements (an element without one contributes the spec's default_ecutwfc/default_ecutrho);
    ecutrho is at least 4 x ecutwfc.  Raises :class:`PseudoError` if an element has no pseudopotential.
    """
    s = _full_settings(settings)
    elements = sorted({str(e) for e in system_elements})
    pseudos = find_pseudos(elements, s["pseudo_dir"])
    wfcs = [p["ecutwfc"] if p["ecutwfc"] is not None else float(s["default_ecutwfc"]) for p in pseudos.values()]
    rhos = [p["ecutrho"] if p["ecutrho"] is not None else float(s["default_ecutrho"]) for p in pseudos.values()]
    ecutwfc = float(s["ecutwfc"]) if s.get("ecutwfc") is not None else max(wfcs)
    ecutrho = float(s["ecutrho"]) if s.get("ecutrho") is not None else max(rhos)
    ecutrho = max(ecutrho, 4.0 * ecutwfc)
    proto = {
        "code": "qe",
        "functional": FUNCTIONAL,
        "elements": elements,
        "pseudos": {el: {"filename": p["filename"], "md5": p["md5"]} for el, p in pseudos.items()},
        "ecutwfc": ecutwfc,
        "ecutrho": ecutrho,
        "occupations": "smearing",
        "smearing": str(s["smearing"]),
        "degauss": float(s["degauss"]),
        "kppa": int(s["kppa"]),
        "nscf_kppa": int(s["nscf_kppa"]),
        "conv_thr_per_atom": float(s["conv_thr_per_atom"]),
        "forc_conv_thr": float(s["forc_conv_thr"]),
        "press_conv_thr": float(s["press_conv_thr"]),
        "molecule_box": float(s["molecule_box"]),
        "spin": {"magnetic_elements": sorted(MAGNETIC_ELEMENTS), "starting_magnetization": STARTING_MAGNETIZATION,
                 "policy": "nspin=2, ferromagnetic start, when a magnetic element is present; molecules always",
                 "system_spin_polarized": _is_spin_polarized(elements, "crystal")},
    }
    proto["id"] = hashlib.sha1(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:12]
    proto["pw_version"] = pw_version(str(s["pw_cmd"]))  # recorded, not hashed (see module doc)
    return proto


# ------------------------------------------------------------------------------------------ structures
def _as_structure(structure, kind: str, box: float):
    from pymatgen.core import Lattice, Molecule, Structure

    if isinstance(structure, dict):
        structure = (Molecule if "lattice" not in structure else Structure).from_dict(structure)
    if isinstance(structure, Molecule):
        mol = structure.get_centered_molecule()
        structure = Structure(Lattice.cubic(box), mol.species, mol.cart_coords + box / 2.0,
                              coords_are_cartesian=True)
    structure = Structure.from_sites(structure)  # a copy
    structure.remove_oxidation_states()
    for key in list(structure.site_properties):
        structure.remove_site_property(key)
    return structure


def kpoint_grid(structure, kppa: float) -> list[int]:
    """Gamma-centred Monkhorst-Pack divisions for ``kppa`` k-points per reciprocal atom (pymatgen's rule)."""
    from pymatgen.io.vasp.inputs import Kpoints

    return [int(x) for x in Kpoints.automatic_density(structure, int(kppa), force_gamma=True).kpts[0]]


# --------------------------------------------------------------------------------------------- parsing
_NUM = r"[-+]?\d*\.\d+(?:[eEdD][-+]?\d+)?|[-+]?\d+"
_FLOAT_RE = re.compile(r"-?\d+\.\d+")
_ERROR_RE = re.compile(r"Error in routine\s+(\S+)\s*\(\s*(-?\d+)\s*\):\s*\n(.*?)\n\s*%{10,}", re.DOTALL)


def _hms(text: str) -> float:
    """pw.x clock strings: ``12.3s``, ``1m23.45s``, ``2h 3m``."""
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)\s*([hms])", text):
        total += float(value) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def _parse_block_structure(lines, start, alat_bohr):
    """CELL_PARAMETERS block at ``start`` -> 3x3 matrix in Angstrom."""
    head = lines[start]
    if "alat" in head:
        m = re.search(r"alat\s*=\s*([\d.]+)", head)
        scale = (float(m.group(1)) if m else alat_bohr) * BOHR_TO_ANG
    elif "bohr" in head.lower():
        scale = BOHR_TO_ANG
    else:
        scale = 1.0
    rows = [[float(x) for x in _FLOAT_RE.findall(lines[start + i])[:3]] for i in (1, 2, 3)]
    return (np.array(rows) * scale).tolist()


def _parse_positions(lines, start, nat):
    head = lines[start]
    unit = re.search(r"\(\s*(\w+)", head)
    unit = unit.group(1).lower() if unit else "alat"
    species, coords = [], []
    for line in lines[start + 1: start + 1 + nat]:
        parts = line.split()
        species.append(re.sub(r"\d+$", "", parts[0]))
        coords.append([float(x) for x in parts[1:4]])
    return unit, species, coords


def parse_output(text: str) -> dict:
    """Everything the engine needs from one pw.x output (text of ``X.out``).

    Energies in eV.  ``energies``: every '!' total energy; ``energy``: the last.  ``scf_converged``: the last
    SCF cycle converged; ``relax_converged`` (relax/vc-relax): BFGS ended without hitting nstep;
    ``job_done``: 'JOB DONE.' printed.  ``structure``: the last printed cell + positions (vc-relax/relax;
    the final coordinates when the relaxation ended) as a pymatgen Structure dict, else None.
    ``eigenvalues``: [spin][k][band] in eV from the last band printout (needs verbosity='high' when a run
    has 100+ k-points), ``kpoints``: their coordinates (2pi/alat), ``fermi`` or ``homo``/``lumo`` (eV),
    ``nelec``, ``total_magnetization`` / ``absolute_magnetization`` (Bohr mag/cell, last), ``errors``
    (pw.x 'Error in routine' messages), ``max_time_reached``, ``pw_wall_seconds``.
    """
    lines = text.splitlines()
    out: dict = {}
    m = re.search(r"Program PWSCF v\.(\S+)", text)
    out["version"] = m.group(1) if m else None
    m = re.search(r"number of atoms/cell\s*=\s*(\d+)", text)
    nat = int(m.group(1)) if m else None
    out["nat"] = nat
    m = re.search(r"number of electrons\s*=\s*([\d.]+)", text)
    out["nelec"] = float(m.group(1)) if m else None
    m = re.search(r"lattice parameter \(alat\)\s*=\s*([\d.]+)\s*a\.u\.", text)
    alat = float(m.group(1)) if m else None
    out["nspin"] = 2 if re.search(r"LSDA|SPIN UP|spin-polarized|total magnetization", text) else 1
    out["nkpts"] = [int(x) for x in re.findall(r"number of k points=\s*(\d+)", text)]
    out["energies"] = [float(x) * RY_TO_EV for x in re.findall(r"^!\s+total energy\s*=\s*(" + _NUM + r")\s*Ry",
                                                                  text, re.MULTILINE)]
    out["energy"] = out["energies"][-1] if out["energies"] else None
    out["ionic_steps"] = len(out["energies"])
    achieved = [int(x) for x in re.findall(r"convergence has been achieved in\s+(\d+)\s+iterations", text)]
    failed = [int(x) for x in re.findall(r"convergence NOT achieved after\s+(\d+)\s+iterations", text)]
    out["n_scf_iterations"] = sum(achieved) + sum(failed)
    out["scf_converged"] = bool(achieved) and not failed
    out["scf_not_converged"] = bool(failed)
    out["band_structure_done"] = "End of band structure calculation" in text
    out["bfgs_converged"] = bool(re.search(r"bfgs converged in", text))
    out["max_steps_reached"] = "The maximum number of steps has been reached." in text
    out["history_reset_stop"] = "history already reset at previous step: stopping" in text
    out["relax_converged"] = out["bfgs_converged"] and not out["max_steps_reached"] \
        and "End of BFGS Geometry Optimization" in text
    out["job_done"] = "JOB DONE." in text
    out["max_time_reached"] = bool(re.search(r"Maximum CPU time exceeded|max_seconds reached", text))
    out["errors"] = [{"routine": r, "code": int(c), "message": " ".join(msg.split())}
                     for r, c, msg in _ERROR_RE.findall(text)]
    mags = re.findall(r"total magnetization\s*=\s*(" + _NUM + r")\s*Bohr", text)
    out["total_magnetization"] = float(mags[-1]) if mags else None
    mags = re.findall(r"absolute magnetization\s*=\s*(" + _NUM + r")\s*Bohr", text)
    out["absolute_magnetization"] = float(mags[-1]) if mags else None
    ps = re.findall(r"P=\s*(" + _NUM + r")", text)
    out["pressure_kbar"] = float(ps[-1]) if ps else None
    fs = re.findall(r"Total force =\s*(" + _NUM + r")", text)
    out["total_force"] = float(fs[-1]) if fs else None
    m = re.findall(r"PWSCF\s*:\s*(.*?)CPU\s+(.*?)WALL", text)
    out["pw_wall_seconds"] = _hms(m[-1][1]) if m else None

    # ---- structure: the last printed cell (else the header's) + the last printed positions
    cell = None
    if alat is not None:
        axes = re.findall(r"a\(\d\) = \(\s*(" + _NUM + r")\s+(" + _NUM + r")\s+(" + _NUM + r")\s*\)", text)
        if len(axes) >= 3:
            cell = (np.array(axes[:3], dtype=float) * alat * BOHR_TO_ANG).tolist()
    cell_idx = [i for i, line in enumerate(lines) if line.startswith("CELL_PARAMETERS")]
    pos_idx = [i for i, line in enumerate(lines) if line.startswith("ATOMIC_POSITIONS")]
    out["structure"] = None
    if pos_idx and nat:
        if cell_idx:
            cell = _parse_block_structure(lines, cell_idx[-1], alat)
        if cell is not None:
            from pymatgen.core import Lattice, Structure

            unit, species, coords = _parse_positions(lines, pos_idx[-1], nat)
            lattice = Lattice(cell)
            if unit == "crystal":
                st = Structure(lattice, species, coords)
            else:
                scale = {"angstrom": 1.0, "bohr": BOHR_TO_ANG}.get(unit, (alat or 0) * BOHR_TO_ANG)
                st = Structure(lattice, species, np.array(coords) * scale, coords_are_cartesian=True)
            out["structure"] = st.as_dict()

    # ---- bands: the last printout after 'End of self-consistent calculation' / 'End of band structure'
    ends = [i for i, line in enumerate(lines)
            if "End of self-consistent calculation" in line or "End of band structure calculation" in line]
    eig: list[list[list[float]]] = []
    kpts: list[list[float]] = []
    if ends:
        spin_blocks: list[list[list[float]]] = [[]]
        k_this: list[list[float]] = []
        current = None
        reading = False
        for line in lines[ends[-1] + 1:]:
            s = line.strip()
            if "SPIN DOWN" in s:
                spin_blocks.append([])
                current, reading = None, False
                continue
            if "SPIN UP" in s:
                continue
            if s.startswith("k =") and "bands (ev)" in s:
                current = []
                spin_blocks[-1].append(current)
                kp = _FLOAT_RE.findall(s.split("(")[0])
                if len(spin_blocks) == 1:
                    k_this.append([float(x) for x in kp[:3]])
                reading = True
                continue
            if s.startswith("occupation numbers"):
                reading = False
                continue
            if s.startswith(("the Fermi energy", "highest occupied", "!", "the spin up/dw", "Writing", "total energy")):
                break
            if reading and s:
                current.extend(float(x) for x in _FLOAT_RE.findall(s))
        eig = [b for b in spin_blocks if b]
        kpts = k_this
    out["eigenvalues"] = eig
    out["kpoints"] = kpts
    fermi = re.findall(r"the Fermi energy is\s+(" + _NUM + r")\s*ev", text)
    out["fermi"] = float(fermi[-1]) if fermi else None
    updw = re.findall(r"the spin up/dw Fermi energies are\s+(" + _NUM + r")\s+(" + _NUM + r")\s*ev", text)
    out["fermi_up_down"] = [float(updw[-1][0]), float(updw[-1][1])] if updw else None
    hl = re.findall(r"highest occupied, lowest unoccupied level \(ev\):\s+(" + _NUM + r")\s+(" + _NUM + r")", text)
    h = re.findall(r"highest occupied level \(ev\):\s+(" + _NUM + r")", text)
    out["homo"] = float(hl[-1][0]) if hl else (float(h[-1]) if h else None)
    out["lumo"] = float(hl[-1][1]) if hl else None
    return out


# ------------------------------------------------------------------------------------------- band gap
def band_gap(parsed: dict) -> dict:
    """Band gap (eV) from the eigenvalues of :func:`parse_output` and the Fermi level (or HOMO, or nelec).

    Each spin channel's occupied bands at each k are those at or below the Fermi level; a channel whose
    number of occupied bands changes across k, or valence and conduction edges that overlap, make a metal
    (gap 0).  ``band_gap`` = CBM - VBM over all k and spins; ``direct_gap`` = the smallest gap at one k.
    """
    eig = parsed.get("eigenvalues") or []
    fermi = parsed.get("fermi")
    updw = parsed.get("fermi_up_down")
    res = {"band_gap": None, "direct_gap": None, "is_direct": None, "is_metal": None,
           "vbm": None, "cbm": None, "fermi": fermi}
    if not eig or not all(eig):
        return res
    nspin = len(eig)
    levels = []
    for s in range(nspin):
        if updw:
            levels.append(updw[min(s, 1)])
        elif fermi is not None:
            levels.append(fermi)
        elif parsed.get("homo") is not None:
            levels.append(parsed["homo"] + 1e-4)
        else:
            levels.append(None)
    nkpts = len(eig[0])
    vb_k = np.full(nkpts, -np.inf)
    cb_k = np.full(nkpts, np.inf)
    metal = False
    for s, channel in enumerate(eig):
        if levels[s] is None:
            nelec = parsed.get("nelec")
            if nelec is None or nspin != 1 or abs(nelec / 2 - round(nelec / 2)) > 1e-6:
                return res
            nocc = [round(nelec / 2)] * len(channel)
        else:
            nocc = [int(np.sum(np.asarray(bands) <= levels[s])) for bands in channel]
        if len(set(nocc)) > 1:
            metal = True
            break
        n = nocc[0]
        for k, bands in enumerate(channel):
            if n > 0:
                vb_k[k] = max(vb_k[k], bands[n - 1])
            if n < len(bands):
                cb_k[k] = min(cb_k[k], bands[n])
    if not metal:
        vbm, cbm = float(np.max(vb_k)), float(np.min(cb_k))
        if not (np.isfinite(vbm) and np.isfinite(cbm)):
            return res
        if cbm - vbm <= 1e-4:
            metal = True
    if metal:
        res.update(band_gap=0.0, direct_gap=0.0, is_direct=False, is_metal=True)
        return res
    direct = float(np.min(cb_k - vb_k))
    gap = cbm - vbm
    res.update(band_gap=round(gap, 6), direct_gap=round(direct, 6), is_direct=bool(direct - gap < 1e-3),
               is_metal=False, vbm=vbm, cbm=cbm)
    return res


# ------------------------------------------------------------------------------------------- the chain
def _pw_input(structure, proto: dict, s: dict, calculation: str, *, kind: str, workdir: Path,
              prefix: str, kgrid, nat: int, max_seconds: float | None):
    """A :class:`PWInput` for one step."""
    from pymatgen.io.pwscf import PWInput

    elements = sorted({sp.symbol for sp in structure.composition})
    pseudo = {el: proto["pseudos"][el]["filename"] for el in elements}
    control = {"calculation": calculation, "prefix": prefix, "outdir": str(workdir / "tmp"),
               "pseudo_dir": str(Path(s["pseudo_dir"]).expanduser().resolve()), "verbosity": "high",
               "tprnfor": True, "tstress": True}
    if calculation in ("relax", "vc-relax"):
        control.update(nstep=int(s["nstep"]), forc_conv_thr=float(proto["forc_conv_thr"]))
    if max_seconds is not None:
        control["max_seconds"] = float(max(1, int(max_seconds)))
    system = {"ecutwfc": float(proto["ecutwfc"]), "ecutrho": float(proto["ecutrho"]),
              "occupations": "smearing", "smearing": proto["smearing"], "degauss": float(proto["degauss"])}
    if _is_spin_polarized(elements, kind):
        system["nspin"] = 2
        # PWInput writes ATOMIC_SPECIES sorted by label: starting_magnetization(i) follows that order
        system["starting_magnetization"] = [
            STARTING_MAGNETIZATION if (kind == "molecule" or el in MAGNETIC_ELEMENTS) else 0.0 for el in elements]
    electrons = {"conv_thr": float(f"{float(proto['conv_thr_per_atom']) * nat:.4g}"), "mixing_beta": float(s["mixing_beta"]),
                 "electron_maxstep": int(s["electron_maxstep"])}
    ions, cell = {}, {}
    if calculation in ("relax", "vc-relax"):
        ions = {"ion_dynamics": "bfgs"}
    if calculation == "vc-relax":
        cell = {"cell_dynamics": "bfgs", "press_conv_thr": float(proto["press_conv_thr"])}
    if kgrid is None:
        return PWInput(structure, pseudo=pseudo, control=control, system=system, electrons=electrons,
                       ions=ions, cell=cell, kpoints_mode="gamma", format_options={"coord_decimals": 10})
    return PWInput(structure, pseudo=pseudo, control=control, system=system, electrons=electrons, ions=ions,
                   cell=cell, kpoints_mode="automatic", kpoints_grid=tuple(kgrid), kpoints_shift=(0, 0, 0),
                   format_options={"coord_decimals": 10})


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

    from fw_screen import qe_jobs

    stepdir = workdir / calculation
    stepdir.mkdir(parents=True, exist_ok=True)
    nat = len(structure)
    max_seconds = None
    if deadline is not None:
        max_seconds = deadline - time.time() - WALLTIME_MARGIN_S
    pwin = _pw_input(structure, proto, s, calculation, kind=kind, workdir=workdir, prefix=prefix,
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
    property tier, :mod:`fw_screen.dft_lite`) skips the vc-relax: scf -> nscf on the structure as given.
    kind="molecule": relax -> scf at Gamma, spin-polarised, fixed cell (a pymatgen Molecule is put in a
    cubic box of ``molecule_box`` Angstrom; a Structure is used as given, see :func:`fw_screen.dft.molecule_in_box`).
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
        s = _full_settings(settings)
        if ck:
            if ck.get("protocol_id") not in (None, proto.get("id")):
                return finish("failed", f"checkpoint protocol {ck.get('protocol_id')} differs from {proto.get('id')}")
            current = ck["structure"]  # a dict, or a Structure when FireWorks has deserialised the task
            current = Structure.from_dict(current) if isinstance(current, dict) else current
            result["steps"] = [dict(st, from_checkpoint=True) for st in ck.get("steps", [])]
            result["corrections"] = list(ck.get("corrections", []))
        else:
            current = _as_structure(structure, kind, float(s["molecule_box"]))
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
