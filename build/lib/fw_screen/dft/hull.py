"""DFT stage science, independent of the DFT code: which reference phases decide a candidate's hull, how
computed energies become entries, and the DFT energy above hull from energies computed the same way.

Quantum ESPRESSO energies are not Materials Project energies: putting a QE total energy into a phase
diagram of MP entries would be meaningless.  So for every promoted candidate the phases that decide its
hull -- the elements of its chemical system and the stable compounds of the MP facet its composition
decomposes to -- are computed once with the same protocol (code, functional, pseudopotentials, cutoffs,
smearing, k-point density; :func:`fw_screen.dft.qe.settings.protocol`) and the DFT e_above_hull comes from a
:class:`~pymatgen.analysis.phase_diagram.PhaseDiagram` of those consistently computed energies.

Elemental gases.  The reference state of H, N, O, F and Cl is a diatomic molecule (computed in a box,
spin-polarised).  GGA overbinds these molecules (O2 by ~1 eV), which makes every compound with the
element as an anion look too unstable relative to the gas.  The Materials Project fits a per-anion
correction for exactly this error; we apply the same MP2020 anion corrections (oxide / peroxide /
superoxide by O-O bond length, and N, H, F, Cl) to QE compound energies whose most electronegative
element is that gas, and nothing to the molecules themselves.  MP2020's GGA/GGA+U mixing corrections are
not applied: the QE protocol runs plain PBE for every phase of a system, so there is nothing to mix.
Only phases whose stability at the candidate's composition is decided by the gas are affected, and the
raw (uncorrected) DFT e_above_hull is stored next to the corrected one.
"""

from __future__ import annotations

from functools import lru_cache

from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

#: diatomic gases and their experimental bond lengths (Angstrom), the starting geometry of the molecule
GAS_DIMERS = {"H": 0.741, "N": 1.098, "O": 1.208, "F": 1.412, "Cl": 1.988}


class HullError(ValueError):
    """The DFT hull of a candidate cannot be computed (a reference failed or is missing)."""


def molecule_in_box(element: str, box: float = 10.0, bond: float | None = None) -> Structure:
    """A diatomic molecule of ``element`` centred in a cubic box (a periodic cell for a plane-wave code)."""
    d = float(bond if bond is not None else GAS_DIMERS[element])
    return Structure(Lattice.cubic(box), [element, element],
                     [[0.5, 0.5, 0.5 - d / (2 * box)], [0.5, 0.5, 0.5 + d / (2 * box)]])


def _smallest_polymorph(entry, entries: list, tolerance: float):
    """The entry with the smallest cell among the polymorphs of ``entry`` at most ``tolerance`` eV/atom above
    it (MP's lowest-energy Na is a 29-site cell, 8 meV/atom below 1-site bcc Na): the phase is recomputed
    with the DFT protocol anyway, and the error this can cause is bounded by ``tolerance``."""
    formula = entry.composition.reduced_formula
    near = [e for e in entries if e.composition.reduced_formula == formula and getattr(e, "structure", None) is not None
            and e.energy_per_atom <= entry.energy_per_atom + tolerance]
    if not near:
        return entry
    return min(near, key=lambda e: (len(e.structure.get_primitive_structure()), e.energy_per_atom))


def reference_phases(composition, entries: list, box: float = 10.0, polymorph_tolerance: float = 0.0) -> list[dict]:
    """The phases deciding the hull at ``composition``, from reference entries (MP) of its chemical system.

    Returns [{"key", "formula", "kind": "crystal"|"molecule", "structure": Structure, "source_entry_id",
    "energy_above_lowest"}]: the lowest-energy entry of every element of the system (a diatomic molecule for
    H, N, O, F, Cl) and the stable entries of the facet that ``composition`` decomposes to -- each replaced
    by its smallest-cell polymorph within ``polymorph_tolerance`` eV/atom.  Entries must carry structures
    (``ComputedStructureEntry``); a phase without one raises :class:`HullError`.
    """
    comp = Composition(composition)
    pd = PhaseDiagram(entries)
    lowest = [pd.el_refs[el] for el in sorted(pd.elements, key=lambda e: e.symbol)]
    lowest += list(pd.get_decomposition(comp))
    chosen, above = {}, {}
    for entry in lowest:
        pick = _smallest_polymorph(entry, entries, polymorph_tolerance) if polymorph_tolerance > 0 else entry
        chosen[pick.entry_id] = pick
        above[pick.entry_id] = float(pick.energy_per_atom - entry.energy_per_atom)
    phases = []
    for entry_id, entry in sorted(chosen.items(), key=lambda kv: str(kv[0])):
        els = [e.symbol for e in entry.composition.elements]
        if len(els) == 1 and els[0] in GAS_DIMERS:
            phases.append({"key": f"molecule:{els[0]}2", "formula": f"{els[0]}2", "kind": "molecule",
                           "structure": molecule_in_box(els[0], box), "source_entry_id": str(entry_id),
                           "energy_above_lowest": 0.0})
            continue
        structure = getattr(entry, "structure", None)
        if structure is None:
            raise HullError(f"reference entry {entry_id} ({entry.composition.reduced_formula}) has no structure")
        phases.append({"key": str(entry_id), "formula": entry.composition.reduced_formula, "kind": "crystal",
                       "structure": structure.get_primitive_structure(), "source_entry_id": str(entry_id),
                       "energy_above_lowest": above[entry_id]})
    return phases


@lru_cache(maxsize=1)
def _anion_corrections() -> dict:
    """MP2020's composition corrections (eV per anion atom) for the gas elements, read from pymatgen."""
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    corrections = MaterialsProject2020Compatibility().comp_correction
    return {k: float(v) for k, v in corrections.items()
            if k in ("oxide", "peroxide", "superoxide", "ozonide", "N", "H", "F", "Cl")}


def gas_anion_correction(structure: Structure) -> tuple[float, str | None]:
    """(total correction in eV, label) for a compound whose most electronegative element is a gas.

    Molecules and elements get none.  O is classified oxide / peroxide / superoxide / ozonide by its
    O-O distances as MP2020 does (pymatgen's ``oxide_type``).
    """
    comp = structure.composition
    if len(comp.elements) < 2:
        return 0.0, None
    anion = max(comp.elements, key=lambda e: e.X).symbol
    if anion not in GAS_DIMERS:
        return 0.0, None
    corr = _anion_corrections()
    if anion == "O":
        from pymatgen.analysis.structure_analyzer import oxide_type

        kind = oxide_type(structure)
        if kind not in corr:  # "hydroxide" / "None": MP2020 treats them as oxide
            kind = "oxide"
        return corr[kind] * comp["O"], kind  # per O atom, as MP2020
    return corr.get(anion, 0.0) * comp[anion], anion


def dft_entry(structure: Structure, energy_total: float, entry_id: str, correct: bool = True) -> ComputedStructureEntry:
    """A consistently computed DFT energy as an entry, with the gas-anion correction when ``correct``."""
    entry = ComputedStructureEntry(structure, energy_total, entry_id=entry_id)
    if correct:
        from pymatgen.entries.computed_entries import ConstantEnergyAdjustment

        value, label = gas_anion_correction(structure)
        if value:
            entry.energy_adjustments.append(ConstantEnergyAdjustment(
                value, name=f"MP2020 {label} anion correction", cls=None,
                description="GGA diatomic-gas binding error, MP2020 fitted value"))
    return entry


def hull_inputs(candidate_id: str, dft_fields: dict, reference_docs) -> tuple[dict, list[dict]]:
    """(candidate, references) for :func:`dft_hull` / :func:`hull_entries` from what the DFT stage stored:
    the candidate's ``dft`` fields (``structure_relaxed``, ``energy_total``) and its ``dft_references``
    documents (``key``, ``result.structure_relaxed``, ``result.energy_total``)."""
    refs = [{"key": r["key"], "structure": Structure.from_dict(r["result"]["structure_relaxed"]),
             "energy_total": r["result"]["energy_total"]} for r in reference_docs]
    cand = {"key": candidate_id, "structure": Structure.from_dict(dft_fields["structure_relaxed"]),
            "energy_total": dft_fields["energy_total"]}
    return cand, refs


def hull_entries(candidate: dict, references: list[dict], correct: bool = True) -> tuple:
    """(candidate entry, reference entries) of a DFT hull (:func:`dft_entry`, gas-anion corrected when
    ``correct``); raises :class:`HullError` when an element of the candidate has no elemental reference."""
    refs = [dft_entry(r["structure"], r["energy_total"], r["key"], correct) for r in references]
    cand = dft_entry(candidate["structure"], candidate["energy_total"], candidate["key"], correct)
    present = {e.symbol for r in refs if len(r.composition.elements) == 1 for e in r.composition.elements}
    missing = sorted({e.symbol for e in cand.composition.elements} - present)
    if missing:
        raise HullError(f"no computed elemental reference for {', '.join(missing)}")
    return cand, refs


def dft_hull(candidate: dict, references: list[dict]) -> dict:
    """DFT energy above hull of ``candidate`` against consistently computed ``references``.

    Both are {"key", "structure": Structure, "energy_total": eV}.  Returns e_above_hull (corrected and raw;
    negative when the candidate lies below the reference hull), the decomposition, and the formation energy.
    Raises :class:`HullError` when an element of the candidate has no reference.
    """
    out = {}
    for label, correct in (("", True), ("_raw", False)):
        cand, refs = hull_entries(candidate, references, correct)
        pd = PhaseDiagram(refs)
        decomp, e_hull = pd.get_decomp_and_e_above_hull(cand, allow_negative=True)
        out[f"e_above_hull{label}"] = float(e_hull)
        out[f"formation_energy_per_atom{label}"] = float(pd.get_form_energy_per_atom(cand))
        if not label:
            out["decomposition"] = [{"key": e.entry_id, "formula": e.composition.reduced_formula,
                                     "fraction": float(f)} for e, f in decomp.items()]
            out["correction_per_atom"] = float(cand.correction_per_atom)
    return out
