"""Funnel stage 4 — stability: a structure and a potential in, a relaxation and a hull distance out.

The protocol is Matbench Discovery's (Riebesell et al., 2025):

1. **Relax** the candidate with a universal ML potential (:mod:`fw_screen.science.potentials`): ASE FIRE on
   ``ase.filters.FrechetCellFilter`` (cell and positions together), until every force and the filter's
   stress components are below ``fmax`` = 0.05 eV/Angstrom, at most 500 steps.  The single-point energy
   of the *unrelaxed* structure is recorded too: generative-model papers (CrystaLLM among them) often
   report hull distances of the structure as generated.  With a pre-screen bound (``ml.prescreen_e_hull``)
   that single point comes first (:func:`single_point`), and a candidate whose unrelaxed hull distance is
   above the bound is not relaxed (:func:`prescreen_reason`).
2. **Place the energy on the MP scale** (:func:`ml_entry`): the reference hull is built from Materials
   Project GGA/GGA+U entries with MP2020 corrections.  Models trained on MP2020-corrected energies
   (CHGNet 0.3.0) give a plain entry; models predicting raw GGA/GGA+U energies (SevenNet, M3GNet) get the
   MP2020 anion and GGA/GGA+U mixing corrections, with the run type, Hubbard U values and POTCAR symbols
   an MP calculation of that structure would have had (``MPRelaxSet``: U on Co, Cr, Fe, Mn, Mo, Ni, V, W
   when O or F is the most electronegative element).
3. **Hull distance** (:func:`hull_distance`): energy above the convex hull of the reference entries of
   the candidate's chemical system (``PhaseDiagram``), negative when the candidate lies below it, with the
   decomposition products and the formation energy.  An element without an elemental reference entry
   makes the hull undefined (:func:`missing_references`).

A relaxation that goes wrong is a verdict, never an exception: ``exploded`` (forces above 1e3 eV/Angstrom,
non-finite energy, atoms closer than 0.5 Angstrom, volume changed by more than a factor 3), ``timeout``
(the per-structure time limit stopped the optimiser), ``error`` (anything raised, with its message).
No database, no FireWorks: structures and entries in, dicts out.
"""

from __future__ import annotations

import math
import time
import warnings
from functools import lru_cache

import numpy as np
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition, Element, Lattice, Structure
from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
from pymatgen.entries.computed_entries import ComputedStructureEntry
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

# ase and the potentials (the [ml] extra) are imported where a relaxation needs them: the hull functions and
# HULL_ENERGY_SCALE serve the base install's cheap stages and analysis too

#: explosion criteria (any one makes a relaxation ``exploded``)
MAX_FORCE_EXPLODED = 1e3  # eV/Angstrom on any atom
MIN_DISTANCE_EXPLODED = 0.5  # Angstrom between any two atoms (also checked before relaxing)
MAX_VOLUME_FACTOR = 3.0  # V_final / V_initial outside [1/3, 3]

STATUSES = ("converged", "not_converged", "exploded", "timeout", "error")


class CorrectionError(ValueError):
    """The MP2020 compatibility scheme rejected an entry (the caller records it as a failure)."""


# ------------------------------------------------------------------------------------------ relaxation
def _space_group(structure: Structure, symprec: float) -> tuple[str | None, int | None]:
    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        return sga.get_space_group_symbol(), sga.get_space_group_number()
    except Exception:
        return None, None


def _structure(atoms, species) -> Structure:
    """The pymatgen Structure of ``atoms`` (plain elements, no site properties)."""
    return Structure(Lattice(np.array(atoms.cell[:])), species, atoms.get_positions(), coords_are_cartesian=True)


def _min_distance(atoms, cutoff: float = MIN_DISTANCE_EXPLODED) -> float | None:
    """Shortest interatomic distance below ``cutoff`` (periodic images included), None if there is none."""
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, cutoff)
    return float(d.min()) if len(d) else None


def _exploded(atoms, v0: float, max_volume_factor: float = MAX_VOLUME_FACTOR) -> str | None:
    """Why the current state of ``atoms`` counts as exploded, or None."""
    energy = atoms.get_potential_energy()
    if not math.isfinite(energy):
        return f"non-finite energy {energy}"
    forces = atoms.get_forces()
    if not np.all(np.isfinite(forces)):
        return "non-finite forces"
    fmax = float(np.linalg.norm(forces, axis=1).max())
    if fmax > MAX_FORCE_EXPLODED:
        return f"max force {fmax:.3g} eV/A > {MAX_FORCE_EXPLODED:g}"
    ratio = atoms.get_volume() / v0
    if not (1 / max_volume_factor <= ratio <= max_volume_factor):
        return f"volume changed by a factor {ratio:.3g} (allowed 1/{max_volume_factor:g}-{max_volume_factor:g})"
    dmin = _min_distance(atoms)
    if dmin is not None:
        return f"atoms {dmin:.3f} A apart (< {MIN_DISTANCE_EXPLODED} A)"
    return None


def _finisher(out: dict, t0: float):
    """``done(status, reason)``: record the outcome and the seconds since ``t0`` in ``out`` and return it."""
    def done(status: str, reason: str | None = None) -> dict:
        out["status"], out["reason"] = status, reason
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out

    return done


def _input_atoms(structure: Structure):
    """(ASE atoms of ``structure`` with plain elements, their species, None), or (None, None, (status,
    reason)) when the input cannot be computed (zero/non-finite volume, atoms closer than 0.5 Angstrom)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    species = [site.specie.element if hasattr(site.specie, "element") else site.specie for site in structure]
    atoms = AseAtomsAdaptor.get_atoms(Structure(structure.lattice, species, structure.frac_coords))
    v0 = atoms.get_volume()
    if not (v0 > 0 and math.isfinite(v0)):
        return None, None, ("error", f"cell volume {v0}")
    dmin = _min_distance(atoms)
    if dmin is not None:
        return None, None, ("exploded", f"atoms {dmin:.3f} A apart in the input (< {MIN_DISTANCE_EXPLODED} A)")
    return atoms, species, None


def single_point(structure: Structure, calculator) -> dict:
    """The potential's energy of ``structure`` as it is (no relaxation): the same number :func:`relax`
    records as ``unrelaxed_energy_total`` (the same atoms, the same calculator).  Never raises.

    Returns ``status`` ("ok", "exploded" or "error"), ``reason``, ``energy_total`` / ``energy_per_atom``
    (eV; None unless ok), ``max_force`` (eV/Angstrom), ``n_sites``, ``seconds``.
    """
    t0 = time.perf_counter()
    out = {"status": "error", "reason": None, "energy_total": None, "energy_per_atom": None, "max_force": None,
           "n_sites": len(structure), "seconds": None}

    done = _finisher(out, t0)

    try:
        if not structure.is_ordered:
            return done("error", "disordered structure (partial occupancies)")
        atoms, _, problem = _input_atoms(structure)
        if problem:
            return done(*problem)
        atoms.calc = calculator
        why = _exploded(atoms, atoms.get_volume())
        if why:
            return done("exploded", f"input: {why}")
        e0 = float(atoms.get_potential_energy())
        out["energy_total"], out["energy_per_atom"] = e0, e0 / len(atoms)
        out["max_force"] = float(np.linalg.norm(atoms.get_forces(), axis=1).max()) if len(atoms) else 0.0
        return done("ok")
    except Exception as exc:
        return done("error", f"{type(exc).__name__}: {exc}"[:500])


def prescreen_reason(e_above_hull_unrelaxed: float | None, bound: float | None) -> str | None:
    """Why a candidate need not be relaxed (``ml.prescreen_e_hull``), or None: relax it.

    Relaxing lowers the energy, so the unrelaxed hull distance is an upper bound of the relaxed one; a
    candidate is passed over only when that bound is known and above ``bound`` (which the spec keeps at or
    above the stability and promotion thresholds)."""
    if bound is None or e_above_hull_unrelaxed is None or not math.isfinite(e_above_hull_unrelaxed):
        return None
    if e_above_hull_unrelaxed > bound:
        return (f"prescreen: unrelaxed e_above_hull {e_above_hull_unrelaxed:.3f} > ml.prescreen_e_hull={bound:g} "
                f"eV/atom (not relaxed)")
    return None


def relax(structure: Structure, calculator, fmax: float = 0.05, max_steps: int = 500,
          time_limit_s: float | None = None, symprec: float = 0.1) -> dict:
    """Relax ``structure`` (cell and positions) with an ASE ``calculator``; never raises for a bad structure.

    FIRE on FrechetCellFilter until the filter's max force (atomic forces and cell stress components) is
    below ``fmax`` eV/Angstrom, at most ``max_steps`` steps, stopped after ``time_limit_s`` seconds (checked
    between steps). Returns a dict:

    ``status`` (one of :data:`STATUSES`), ``reason`` (None when converged), ``steps``, ``max_force``
    (largest force on an atom at the end, eV/Angstrom), ``energy_total`` / ``energy_per_atom`` (eV, at the
    end; None if exploded or failed), ``unrelaxed_energy_total`` / ``unrelaxed_energy_per_atom`` (single
    point of the input), ``volume_change`` (V_final / V_initial - 1), ``spacegroup_initial`` /
    ``spacegroup_final`` (symbols at ``symprec``), ``spacegroup_number_initial`` / ``spacegroup_number_final``,
    ``structure`` (relaxed pymatgen Structure; the last state for timeouts and unconverged runs, None when
    exploded or failed), ``n_sites``, ``seconds`` (wall time).
    """
    t0 = time.perf_counter()
    out = {"status": "error", "reason": None, "steps": 0, "max_force": None, "energy_total": None,
           "energy_per_atom": None, "unrelaxed_energy_total": None, "unrelaxed_energy_per_atom": None,
           "volume_change": None, "spacegroup_initial": None, "spacegroup_number_initial": None,
           "spacegroup_final": None, "spacegroup_number_final": None, "structure": None,
           "n_sites": len(structure), "seconds": None}

    done = _finisher(out, t0)

    try:
        if not structure.is_ordered:
            return done("error", "disordered structure (partial occupancies): cannot be relaxed")
        out["spacegroup_initial"], out["spacegroup_number_initial"] = _space_group(structure, symprec)
        atoms, species, problem = _input_atoms(structure)
        if problem:
            return done(*problem)
        n = len(atoms)
        v0 = atoms.get_volume()
        atoms.calc = calculator

        e0 = float(atoms.get_potential_energy())
        out["unrelaxed_energy_total"] = e0 if math.isfinite(e0) else None
        out["unrelaxed_energy_per_atom"] = e0 / n if math.isfinite(e0) else None
        why = _exploded(atoms, v0)
        if why:
            return done("exploded", f"input: {why}")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ase.filters import FrechetCellFilter
            from ase.optimize import FIRE

            opt = FIRE(FrechetCellFilter(atoms), logfile=None)
            converged = False
            status, reason = None, None
            for converged in opt.irun(fmax=fmax, steps=max_steps):
                why = _exploded(atoms, v0)
                if why:
                    status, reason = "exploded", f"step {opt.nsteps}: {why}"
                    break
                if converged:
                    break
                if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
                    status, reason = "timeout", f"stopped after {opt.nsteps} steps at the {time_limit_s:g} s limit"
                    break
        out["steps"] = int(opt.nsteps)
        forces = atoms.get_forces()
        out["max_force"] = float(np.linalg.norm(forces, axis=1).max()) if n else 0.0
        out["volume_change"] = float(atoms.get_volume() / v0 - 1)
        if status == "exploded":
            return done(status, reason)
        if status is None:
            status, reason = ("converged", None) if converged else \
                ("not_converged", f"max force above {fmax:g} eV/A after {opt.nsteps} steps")
        e = float(atoms.get_potential_energy())
        out["energy_total"], out["energy_per_atom"] = e, e / n
        relaxed = _structure(atoms, species)
        out["structure"] = relaxed
        out["spacegroup_final"], out["spacegroup_number_final"] = _space_group(relaxed, symprec)
        return done(status, reason)
    except Exception as exc:  # the verdict of a structure the potential or optimiser cannot handle
        return done("error", f"{type(exc).__name__}: {exc}"[:500])


# ------------------------------------------------------------------------------------------ MP scale
@lru_cache(maxsize=2)
def mp2020_compatibility(check_potcar: bool = False) -> MaterialsProject2020Compatibility:
    """MP2020, built once per setting: POTCAR checks off for ML energies (no POTCARs), on for DFT runs."""
    return MaterialsProject2020Compatibility(check_potcar=check_potcar)


def mp2020_process(entry, check_potcar: bool = False):
    """``entry`` with MP2020 corrections; :class:`CorrectionError` when the scheme raises or rejects it
    (``process_entry`` returns None for a missing or mismatched run type, U value or POTCAR)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            processed = mp2020_compatibility(check_potcar).process_entry(entry)
    except Exception as exc:
        raise CorrectionError(f"MP2020 correction failed: {type(exc).__name__}: {exc}") from exc
    if processed is None:
        params = entry.parameters
        potcars = (f", POTCARs {[s.get('titel') for s in params.get('potcar_spec') or []]}"
                   if check_potcar else "")
        raise CorrectionError(f"MP2020 compatibility rejected the entry ({entry.composition.reduced_formula}, "
                              f"{params.get('run_type')}, U {params.get('hubbards')}{potcars})")
    return processed


def mp_parameters(composition: Composition) -> dict:
    """The ``parameters`` of an MP GGA(+U) calculation of ``composition``, as MPRelaxSet would have run it.

    Hubbard U (from the MP2020 scheme's own settings, which match MPRelaxSet) applies when the most
    electronegative element is O or F and the structure holds an element with a U value; POTCAR symbols are
    MPRelaxSet's (``titel`` without the release date: no POTCAR files exist here).
    """
    from pymatgen.io.vasp.sets import MPRelaxSet

    comp = Composition(composition)
    elements = sorted(comp.elements, key=lambda e: e.X)
    most_electroneg = elements[-1].symbol
    u_table = mp2020_compatibility().u_settings.get(most_electroneg, {})
    u = {el.symbol: float(u_table.get(el.symbol, 0.0)) for el in elements}
    is_hubbard = any(v > 0 for v in u.values())
    potcars = MPRelaxSet.CONFIG["POTCAR"]
    return {
        "run_type": "GGA+U" if is_hubbard else "GGA",
        "is_hubbard": is_hubbard,
        "hubbards": u if is_hubbard else {},
        "potcar_spec": [{"titel": f"PAW_PBE {potcars.get(el.symbol, el.symbol)}", "hash": None}
                        for el in elements],
    }


def ml_entry(structure: Structure, energy_total: float, potential_name: str,
             entry_id: str | None = None) -> ComputedStructureEntry:
    """A ComputedStructureEntry of an ML energy on the MP2020-corrected scale of the reference entries.

    ``energy_total`` is the potential's total energy (eV) of ``structure``.  For ``"mp2020"`` potentials the
    entry is returned as is; for ``"gga"`` potentials MP2020 corrections are applied with MP's calculation
    parameters (:func:`mp_parameters`).  Raises :class:`CorrectionError` if the scheme rejects the entry.
    """
    if energy_total is None or not math.isfinite(energy_total):
        raise CorrectionError(f"no finite energy ({energy_total})")
    from fw_screen.science.potentials import energy_scale

    scale = energy_scale(potential_name)
    data = {"potential": potential_name, "energy_scale": scale}
    if scale == "mp2020":
        return ComputedStructureEntry(structure, energy_total, entry_id=entry_id,
                                      parameters={"potential": potential_name}, data=data)
    params = {**mp_parameters(structure.composition), "potential": potential_name}
    return mp2020_process(ComputedStructureEntry(structure, energy_total, entry_id=entry_id, parameters=params,
                                                 data=data))


# ------------------------------------------------------------------------------------------ the hull
#: the energy scale every ML entry is put on (:func:`ml_entry`), and so the scale of the reference sets a
#: hull may use (:mod:`fw_screen.science.references`: a hull never mixes scales)
HULL_ENERGY_SCALE = "mp2020"


def chemsys_entries(entries, elements) -> list:
    """The entries whose elements all lie in ``elements`` (the reference entries of one chemical system)."""
    allowed = {Element(getattr(e, "symbol", e)) for e in elements}
    return [e for e in entries if set(e.composition.elements) <= allowed]


def missing_references(elements, entries) -> list[str]:
    """Sorted symbols of ``elements`` without an elemental entry in ``entries`` (hull undefined without them)."""
    have = {e.composition.elements[0].symbol for e in entries if len(e.composition.elements) == 1}
    symbols = {getattr(getattr(e, "element", e), "symbol", str(e)) for e in elements}
    return sorted(s for s in symbols if s not in have)


def phase_diagram(entries) -> PhaseDiagram:
    """The convex hull of ``entries`` (which must hold an elemental entry of every element in them)."""
    return PhaseDiagram(list(entries))


def hull_distance(entry, pd: PhaseDiagram) -> dict:
    """Energy above the hull of ``pd`` of ``entry`` (eV/atom; negative below the hull), with its decomposition.

    Returns ``e_above_hull``, ``decomposition`` ({entry_id of a hull entry: fraction}; the reduced formula
    when an entry has no id), ``decomposition_formulas`` ({same key: reduced formula}),
    ``formation_energy_per_atom`` (eV/atom against the elemental entries of ``pd``), ``energy_per_atom``
    (the corrected energy the hull saw), ``correction_per_atom``.
    """
    decomp, e_hull = pd.get_decomp_and_e_above_hull(entry, allow_negative=True)
    decomposition, formulas = {}, {}
    for ref, frac in sorted(decomp.items(), key=lambda kv: -kv[1]):
        formula = ref.composition.reduced_formula
        key = str(ref.entry_id) if ref.entry_id is not None else formula
        decomposition[key] = decomposition.get(key, 0.0) + float(frac)
        formulas[key] = formula
    return {
        "e_above_hull": float(e_hull),
        "decomposition": decomposition,
        "decomposition_formulas": formulas,
        "formation_energy_per_atom": float(pd.get_form_energy_per_atom(entry)),
        "energy_per_atom": float(entry.energy_per_atom),
        "correction_per_atom": float(entry.correction_per_atom),
    }


def self_consistent_hull(reference: PhaseDiagram, candidates: list, evaluate: list) -> list[float]:
    """Energies above the hull (eV/atom, negative below) of the ``evaluate`` entries against the hull of
    ``reference`` joined by the ``candidates`` entries (a campaign's own relaxed stable candidates, so two
    candidates of one system are judged against each other too -- MatterGen's self-consistent hull, here
    built on the whole reference hull).

    Only hull vertices shape a hull, so the reference's stable entries stand for all of its entries (same
    numbers, a smaller hull to build); an entry above the reference hull can only stay above the joint one.
    """
    if not candidates:
        return [float(reference.get_e_above_hull(e, allow_negative=True)) for e in evaluate]
    joint = PhaseDiagram(list(reference.stable_entries) + list(candidates))
    return [float(joint.get_e_above_hull(e, allow_negative=True)) for e in evaluate]
