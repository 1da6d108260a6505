"""pw.x input and output: the input file of one step, k-point grids, and the parser of pw.x's output.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fw_screen.dft.qe.settings import (
    BOHR_TO_ANG,
    MAGNETIC_ELEMENTS,
    RY_TO_EV,
    STARTING_MAGNETIZATION,
    is_spin_polarized,
)


# ------------------------------------------------------------------------------------------ structures
def as_structure(structure, kind: str, box: float):
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
def pw_input(structure, proto: dict, s: dict, calculation: str, *, kind: str, workdir: Path,
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
    if is_spin_polarized(elements, kind):
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
