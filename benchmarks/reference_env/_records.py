"""What both sides of the port check record per structure (imported by ``compare_matgl.py``, which runs in
``.venv-ref``, and by ``port_predictions.py``, which runs in fw-screen's venv): plain pymatgen/ASE only."""

from __future__ import annotations


def err(exc: BaseException) -> str:
    """An exception as one line: ``Type: first line of the message``."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def pes_record(structure, calc) -> dict:
    """``energy_per_atom`` (eV/atom), ``forces`` (eV/A) and ``stress`` (eV/A^3, Voigt) of ``structure`` with
    the ASE calculator ``calc``, or ``pes_error``."""
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calc
        return {"energy_per_atom": float(atoms.get_potential_energy()) / len(atoms),
                "forces": atoms.get_forces().tolist(), "stress": atoms.get_stress().tolist()}
    except Exception as exc:  # noqa: BLE001 - one structure's failure is recorded, the others go on
        return {"pes_error": err(exc)}
