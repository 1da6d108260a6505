"""The starting cells of the band-gap truth set: textbook crystals from experimental lattice constants.

Each entry: name, class (metal / semiconductor / oxide / halide / nitride / carbide), a builder from space
group and Wyckoff positions (pymatgen ``Structure.from_spacegroup``) and the source of its numbers (room-
temperature experimental lattice parameters as tabulated in standard references: Wyckoff, *Crystal
Structures*; the CRC Handbook; ICSD entries quoted in the literature).  The DFT stage's vc-relax moves each
cell to its PBE minimum, so the start only needs to be the right phase close to its volume.
"""

from __future__ import annotations

from pymatgen.core import Lattice, Structure


def _cubic(sg: str, a: float, species, coords) -> Structure:
    return Structure.from_spacegroup(sg, Lattice.cubic(a), species, coords).get_primitive_structure()


def _hex(sg: str, a: float, c: float, species, coords) -> Structure:
    return Structure.from_spacegroup(sg, Lattice.hexagonal(a, c), species, coords).get_primitive_structure()


def _tetra(sg: str, a: float, c: float, species, coords) -> Structure:
    return Structure.from_spacegroup(sg, Lattice.tetragonal(a, c), species, coords).get_primitive_structure()


def rocksalt(a, cation, anion):
    return _cubic("Fm-3m", a, [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def zincblende(a, cation, anion):
    return _cubic("F-43m", a, [cation, anion], [[0, 0, 0], [0.25, 0.25, 0.25]])


def wurtzite(a, c, u, cation, anion):
    return _hex("P6_3mc", a, c, [cation, anion], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, u]])


def anatase() -> Structure:
    """Anatase TiO2 (I4_1/amd) written out in origin choice 1: Ti 4a (0, 0, 0), O 8e (0, 0, z) and the
    body-centred copies."""
    a, c, z = 3.785, 9.514, 0.2081
    ti = [[0, 0, 0], [0, 0.5, 0.25]]
    o = [[0, 0, z], [0, 0, -z], [0, 0.5, 0.25 + z], [0, 0.5, 0.25 - z]]
    species, coords = [], []
    for shift in ([0, 0, 0], [0.5, 0.5, 0.5]):
        for el, sites in (("Ti", ti), ("O", o)):
            for f in sites:
                species.append(el)
                coords.append([(f[i] + shift[i]) % 1 for i in range(3)])
    return Structure(Lattice.tetragonal(a, c), species, coords).get_primitive_structure()


#: name -> (class, builder, source of the numbers)
STRUCTURES = {
    "Cu": ("metal", lambda: _cubic("Fm-3m", 3.615, ["Cu"], [[0, 0, 0]]), "fcc, a = 3.615 A"),
    "Al": ("metal", lambda: _cubic("Fm-3m", 4.050, ["Al"], [[0, 0, 0]]), "fcc, a = 4.050 A"),
    "Si": ("semiconductor", lambda: _cubic("Fd-3m", 5.431, ["Si"], [[0, 0, 0]]), "diamond, a = 5.431 A"),
    "Ge": ("semiconductor", lambda: _cubic("Fd-3m", 5.658, ["Ge"], [[0, 0, 0]]), "diamond, a = 5.658 A"),
    "C": ("semiconductor", lambda: _cubic("Fd-3m", 3.567, ["C"], [[0, 0, 0]]), "diamond, a = 3.567 A"),
    "GaAs": ("semiconductor", lambda: zincblende(5.653, "Ga", "As"), "zinc blende, a = 5.653 A"),
    "ZnS": ("semiconductor", lambda: zincblende(5.409, "Zn", "S"), "zinc blende (sphalerite), a = 5.409 A"),
    "SiC": ("carbide", lambda: zincblende(4.360, "Si", "C"), "3C zinc blende, a = 4.360 A"),
    "BN": ("nitride", lambda: zincblende(3.615, "B", "N"), "cubic (zinc blende), a = 3.615 A"),
    "AlN": ("nitride", lambda: wurtzite(3.112, 4.982, 0.382, "Al", "N"), "wurtzite, a = 3.112, c = 4.982 A, u = 0.382"),
    "GaN": ("nitride", lambda: wurtzite(3.189, 5.185, 0.377, "Ga", "N"), "wurtzite, a = 3.189, c = 5.185 A, u = 0.377"),
    "ZnO": ("oxide", lambda: wurtzite(3.250, 5.207, 0.382, "Zn", "O"), "wurtzite, a = 3.250, c = 5.207 A, u = 0.382"),
    "MgO": ("oxide", lambda: rocksalt(4.212, "Mg", "O"), "rock salt, a = 4.212 A"),
    "CaO": ("oxide", lambda: rocksalt(4.811, "Ca", "O"), "rock salt, a = 4.811 A"),
    "Li2O": ("oxide", lambda: _cubic("Fm-3m", 4.611, ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
             "antifluorite, a = 4.611 A"),
    "Al2O3": ("oxide", lambda: Structure.from_spacegroup(
        "R-3c", Lattice.hexagonal(4.759, 12.991), ["Al", "O"], [[0, 0, 0.3523], [0.3064, 0, 0.25]]
    ).get_primitive_structure(), "corundum, a = 4.759, c = 12.991 A, Al z = 0.3523, O x = 0.3064"),
    "TiO2-rutile": ("oxide", lambda: _tetra("P4_2/mnm", 4.594, 2.959, ["Ti", "O"], [[0, 0, 0], [0.3049, 0.3049, 0]]),
                    "rutile, a = 4.594, c = 2.959 A, O x = 0.3049"),
    "TiO2-anatase": ("oxide", anatase, "anatase, a = 3.785, c = 9.514 A, O z = 0.2081 (origin choice 1)"),
    "SiO2-quartz": ("oxide", lambda: _hex("P3_221", 4.913, 5.405, ["Si", "O"], [[0.4697, 0, 2 / 3], [0.4135, 0.2669, 0.1191 + 2 / 3]]),
                    "alpha-quartz, a = 4.913, c = 5.405 A, Si x = 0.4697, O (0.4135, 0.2669, 0.1191) with the origin "
                    "moved by c/3 to the International Tables setting of P3_221 (Si on 3a: x, 0, 2/3)"),
    "LiF": ("halide", lambda: rocksalt(4.026, "Li", "F"), "rock salt, a = 4.026 A"),
    "NaCl": ("halide", lambda: rocksalt(5.640, "Na", "Cl"), "rock salt, a = 5.640 A"),
    "KCl": ("halide", lambda: rocksalt(6.293, "K", "Cl"), "rock salt, a = 6.293 A"),
}


def build(name: str) -> Structure:
    return STRUCTURES[name][1]()
