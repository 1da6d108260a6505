"""Funnel stage 2 — validity: a CIF in, a verdict per check out.

CrystaLLM's definition of a valid generation (Antunes et al., ``crystallm/_metrics.py``), check by check:

* ``sensible``: cell lengths within [0.5, 1000] Angstrom and angles within [10, 170] degrees;
* ``formula_consistent``: the ``data_`` name, ``_chemical_formula_sum`` and ``_chemical_formula_structural``
  reduce to one formula;
* ``multiplicity_consistent``: the ``_atom_site_symmetry_multiplicity`` of each element add up to the
  formula sum;
* ``bond_length``: every CrystalNN bond lies within (1 -/+ 0.32) of the expected length (ionic radii when
  the electronegativity difference is >= 1.7, else atomic radii; bonds to H below 2.5x); the score is the
  fraction of reasonable bonds and must be 1.0; a structure with no bonds scores 0;
* ``space_group``: the space-group symbol SpacegroupAnalyzer (symprec 0.1) finds equals the declared one.

Stored alongside, as DiffCSP/MatterGen report them: ``smact`` (charge-neutral composition),
``min_distance`` (>= 0.5 Angstrom), ``volume`` (> 0.1 Angstrom^3), and ``ordered`` (no partial occupancy).
:func:`check_cif` names the first failing one of the required checks.  With ``validity.record_all_checks``
it runs every check it can, so the record shows all failure modes; without (the default), the bond-length
and space-group checks are not run on an input an earlier required check has already failed (the verdict,
first failure and reason are the same; the stored-only checks always run).  No database, no FireWorks: text
in, :class:`ValidityResult` out.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Composition, Structure
from pymatgen.core.periodic_table import DummySpecies
from pymatgen.io.cif import CifParser

from fw_screen.science.crystalnn import crystalnn_bonds
from fw_screen.spec import CHECK_NAMES

#: order in which checks are reported (the first failing required one is the recorded reason);
#: the text-level checks come first because they still run when the structure cannot be built
CHECK_ORDER = ("sensible", "formula_consistent", "multiplicity_consistent", "parse", "bond_length",
               "space_group", "ordered", "smact", "min_distance", "volume")
assert set(CHECK_ORDER) == {"parse", *CHECK_NAMES}, "every spec check name has a place in the report order"


@dataclass
class ValidityResult:
    checks: dict = field(default_factory=dict)
    valid: bool = False
    first_failure: str | None = None
    reason: str | None = None
    structure: Structure | None = None
    info: dict = field(default_factory=dict)

    def record(self, name: str, passed: bool | None, reason: str | None = None, value=None) -> None:
        entry: dict = {"passed": passed}
        if reason:
            entry["reason"] = reason
        if value is not None:
            entry["value"] = value
        self.checks[name] = entry

    def as_dict(self) -> dict:
        return {"valid": self.valid, "first_failure": self.first_failure, "reason": self.reason,
                "checks": self.checks}


class _CifParser(CifParser):
    """pymatgen's CifParser with its site expansion (``_unique_coords``) computed the same way, faster.

    pymatgen applies every symmetry operator to every atom-site row and keeps an image unless it lies within
    ``site_tolerance`` of a kept one, searching its list with ``in_coord_list_pbc`` once per image (a list
    converted to an array each time: 45 % of the parse of a generated CIF).  Here the images of one row are
    compared with the kept sites and with each other in one array operation, by the same element-wise
    arithmetic (``kept - image``, minus its rounding, ``abs < atol`` on all three axes), and kept in the same
    order: the same sites, bit for bit.  The rows themselves are looked up among the earlier ones (pymatgen's
    ``get_matching_coord``) by the same test without its per-call copies (:func:`_find_in_coord_list_pbc`).
    ``tests/test_validity_record_all.py`` compares the structures and blocks with pymatgen's, bit for bit, on
    160 real generations, as generated and post-processed (0 differences).  Magnetic CIFs (never read here)
    take pymatgen's own path.
    """

    def _unique_coords(self, coords, magmoms=None, lattice=None, labels=None):
        if magmoms or self.feature_flags.get("magcif"):
            return super()._unique_coords(coords, magmoms=magmoms, lattice=lattice, labels=labels)
        from pymatgen.electronic_structure.core import Magmom

        labels = labels or {}
        atol = self._site_tolerance
        matrices = [op.affine_matrix for op in self.symmetry_operations]
        kept = np.empty((len(coords) * len(matrices), 3))
        coords_out: list = []
        labels_out: list = []
        for tmp in coords:
            point = np.append(tmp, 1.0)                          # SymmOp.operate, operator by operator
            new = np.array([np.dot(m, point)[:3] for m in matrices]).reshape(-1, 3)
            if not np.isfinite(new).all():                       # pymatgen's math.floor raises: let it
                return super()._unique_coords(coords, labels=labels)
            new = new - (np.floor(new) + 0.0)                    # x - math.floor(x), -0.0 kept as -0.0
            images = list(new)
            n = len(coords_out)
            if n:
                d = kept[None, :n, :] - new[:, None, :]          # kept - image, as find_in_coord_list_pbc
                d -= np.round(d)
                seen = (np.abs(d) < atol).all(axis=2).any(axis=1)
            else:
                seen = np.zeros(len(new), dtype=bool)
            d = new[None, :, :] - new[:, None, :]                # d[j, i]: image i (kept first) - image j
            d -= np.round(d)
            same = (np.abs(d) < atol).all(axis=2)
            accepted: list[int] = []
            for j in range(len(new)):
                if seen[j] or (accepted and same[j, accepted].any()):
                    continue
                accepted.append(j)
                kept[len(coords_out)] = new[j]
                coords_out.append(images[j])
                labels_out.append(labels.get(tmp, "no_label"))
        return coords_out, [Magmom(0)] * len(coords_out), labels_out

    def _get_structure(self, *args, **kwargs):
        # pymatgen looks each atom-site row up among the earlier ones with find_in_coord_list_pbc, once per
        # operator (a closure inside _get_structure, nothing to override); during the parse that module name
        # resolves to the same test without its per-call copies (an equal answer whoever else calls it)
        import pymatgen.io.cif as cif_module

        original, cif_module.find_in_coord_list_pbc = cif_module.find_in_coord_list_pbc, _find_in_coord_list_pbc
        try:
            return super()._get_structure(*args, **kwargs)
        finally:
            cif_module.find_in_coord_list_pbc = original


def _find_in_coord_list_pbc(frac_coord_list, frac_coord, atol: float = 1e-8, pbc=(True, True, True)) -> np.ndarray:
    """``pymatgen.util.coord.find_in_coord_list_pbc`` (periodic in all three axes), the same element-wise
    arithmetic without ``np.tile`` and the boolean column selection."""
    from pymatgen.util.coord import find_in_coord_list_pbc

    if len(frac_coord_list) == 0 or tuple(pbc) != (True, True, True):
        return find_in_coord_list_pbc(frac_coord_list, frac_coord, atol=atol, pbc=pbc)
    frac_dist = np.asarray(frac_coord_list) - np.asarray(frac_coord)
    frac_dist -= np.round(frac_dist)
    return np.flatnonzero((np.abs(frac_dist) < atol).all(axis=1))


def _parser(cif: str) -> CifParser:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _CifParser.from_str(cif)


def _block(cif: str | CifParser) -> dict:
    """The first data block of a CIF (text, or its parser) as a dict."""
    parser = _parser(cif) if isinstance(cif, str) else cif
    data = parser.as_dict()
    if not data:
        raise ValueError("no data_ block")
    return next(iter(data.values()))


def _unknown_symbols(comp: Composition) -> list[str]:
    """Symbols in a composition that are not chemical elements (pymatgen reads ``Xx`` as a dummy species)."""
    return sorted({sp.symbol for sp in comp if isinstance(sp, DummySpecies)})


_CIF_TOKEN = re.compile(r"^;[\s\S]*?^;|'[^'\n]*'|\"[^\"\n]*\"|#[^\n]*|\S+", re.MULTILINE)


def loop_problem(cif: str) -> str | None:
    """A loop whose values do not fill its columns (a truncated or malformed CIF), described; else None."""
    tokens = [t for t in _CIF_TOKEN.findall(cif) if not t.startswith("#")]
    i = 0
    while i < len(tokens):
        if tokens[i].lower() != "loop_":
            i += 1
            continue
        i += 1
        columns = []
        while i < len(tokens) and tokens[i].startswith("_"):
            columns.append(tokens[i])
            i += 1
        values = 0
        while i < len(tokens) and not tokens[i].startswith("_") and tokens[i].lower() != "loop_" \
                and not tokens[i].lower().startswith("data_"):
            values += 1
            i += 1
        if columns and (values == 0 or values % len(columns)):
            return (f"loop of {len(columns)} columns ({columns[0]} ...) holds {values} values, not a multiple "
                    f"of {len(columns)}: truncated or malformed CIF")
    return None


def _number(text) -> float:
    """A CIF number, without its standard uncertainty: ``5.4307(2)`` -> 5.4307."""
    return float(re.sub(r"\(\d+\)$", "", str(text).strip()))


SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz", "_space_group_symop.operation_xyz")
#: the largest crystallographic space groups (F-centred cubic) have 192 operators in the conventional cell
MAX_SYMMETRY_OPERATORS = 192
_SYMOP_PART = r"\s*[-+]?\s*(?:[xyz0-9./]+\s*(?:[-+]\s*[xyz0-9./]+\s*)*)"
_SYMOP = re.compile(rf"{_SYMOP_PART},{_SYMOP_PART},{_SYMOP_PART}", re.IGNORECASE)
#: magnetic CIF data names: pymatgen evaluates the magnetic setting transformation with sympy, so a crafted
#: ``transform_BNS_Pp_abc`` (``9**9**9*a,b,c;0,0,0``) would hang the parser; fw-screen does not read them
_MAGNETIC = re.compile(r"_space_group_magn|_atom_site_moment|_space_group_symop_magn|_magnetic_space_group",
                       re.IGNORECASE)


def size_problem(block: dict, cfg: dict, volume: bool = True) -> str | None:
    """Why the structure must not be built, else None: a size limit of the spec (atom sites listed,
    ``max_sites``; cell volume, ``max_volume``, only with ``volume``), more than 192 symmetry operators, or an
    operator that is not an ``x, y, z`` expression.

    Checked on the parsed CIF block, before the structure is built.  Unreadable numbers are left to the
    checks that report them.
    """
    rows = next((block[k] for k in ("_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x")
                 if k in block), None)
    nrows = len(rows) if isinstance(rows, list) else int(rows is not None)
    if nrows > cfg["max_sites"]:
        return f"too large: {nrows} atom sites listed > max_sites={cfg['max_sites']}; not parsed"
    ops = next((block[k] for k in SYMOP_TAGS if k in block), None)
    nops = len(ops) if isinstance(ops, list) else int(ops is not None)
    if nops > MAX_SYMMETRY_OPERATORS:  # each operator is applied to each site: bound the work
        return (f"too large: {nops} symmetry operators > {MAX_SYMMETRY_OPERATORS} (no space group has more); "
                f"not parsed")
    for op in (ops if isinstance(ops, list) else [ops] if ops is not None else []):
        # pymatgen would skip an unreadable operator (and fall back to P1) without saying so
        if not isinstance(op, str) or not _SYMOP.fullmatch(op.strip()):
            return f"symmetry operator {str(op)[:60]!r} is not an x, y, z expression; not parsed"
    max_volume = cfg.get("max_volume")  # campaigns stored before the limit existed have none
    if max_volume is None or not volume:
        return None
    try:
        a, b, c = (_number(block[f"_cell_length_{x}"]) for x in "abc")
        cosines = [math.cos(math.radians(_number(block[f"_cell_angle_{x}"]))) for x in ("alpha", "beta", "gamma")]
    except (KeyError, ValueError, TypeError, OverflowError):
        return None
    ca, cb, cg = cosines
    volume = a * b * c * math.sqrt(max(0.0, 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg))
    if volume > max_volume:  # NaN compares False: left to the sensible check
        return f"too large: cell volume {volume:.6g} A^3 > max_volume={max_volume:g}; not parsed"
    return None


# ------------------------------------------------------------------------------------------ the checks
def check_sensible(block: dict, cfg: dict) -> tuple[bool, str | None, dict]:
    lengths = [_number(block[f"_cell_length_{x}"]) for x in "abc"]
    angles = [_number(block[f"_cell_angle_{x}"]) for x in ("alpha", "beta", "gamma")]
    value = {"lengths": lengths, "angles": angles}
    for x, v in zip("abc", lengths):
        if not (cfg["min_cell_length"] <= v <= cfg["max_cell_length"]) or math.isnan(v):
            return False, f"cell length {x}={v} outside [{cfg['min_cell_length']}, {cfg['max_cell_length']}]", value
    for x, v in zip(("alpha", "beta", "gamma"), angles):
        if not (cfg["min_cell_angle"] <= v <= cfg["max_cell_angle"]) or math.isnan(v):
            return False, f"cell angle {x}={v} outside [{cfg['min_cell_angle']}, {cfg['max_cell_angle']}]", value
    return True, None, value


def data_name(cif: str) -> str | None:
    m = re.search(r"^[ \t]*data_(\S*)", cif, re.MULTILINE)
    return m.group(1) if m else None


def check_formula_consistent(cif: str, block: dict) -> tuple[bool, str | None, dict]:
    name = data_name(cif)
    try:
        f_data = Composition(name).reduced_formula
    except Exception:
        return False, f"data_ name {name!r} is not a formula", {}
    if "_chemical_formula_sum" not in block or "_chemical_formula_structural" not in block:
        return False, "missing _chemical_formula_sum or _chemical_formula_structural", {}
    comps = [Composition(name), Composition(block["_chemical_formula_sum"]),
             Composition(block["_chemical_formula_structural"])]
    unknown = sorted({s for c in comps for s in _unknown_symbols(c)})
    if unknown:
        return False, f"unknown element symbol(s) {', '.join(unknown)} in the formulas", {}
    f_sum, f_struct = comps[1].reduced_formula, comps[2].reduced_formula
    value = {"data": f_data, "sum": f_sum, "structural": f_struct}
    if f_data == f_sum == f_struct:
        return True, None, value
    return False, f"formulas differ: data_ {f_data}, sum {f_sum}, structural {f_struct}", value


def check_multiplicity(block: dict) -> tuple[bool, str | None, dict]:
    if "_chemical_formula_sum" not in block:
        return False, "missing _chemical_formula_sum", {}
    expected = {str(k): float(v) for k, v in Composition(block["_chemical_formula_sum"]).as_dict().items()}
    symbols = block.get("_atom_site_type_symbol")
    mults = block.get("_atom_site_symmetry_multiplicity")
    if symbols is None or mults is None:
        return False, "missing _atom_site_type_symbol or _atom_site_symmetry_multiplicity", {}
    if isinstance(symbols, str):
        symbols, mults = [symbols], [mults]
    actual: dict[str, float] = {}
    for sym, mult in zip(symbols, mults):
        actual[sym] = actual.get(sym, 0.0) + float(int(mult))
    if actual == expected:
        return True, None, {}
    return False, f"site multiplicities give {actual}, formula sum says {expected}", {
        "multiplicities": actual, "formula_sum": expected}


@functools.lru_cache(maxsize=4096)
def _expected_bond_length(a, b) -> float | None:
    """CrystaLLM's expected length of an ``a``-``b`` bond (Angstrom), or None without a radius; a pure
    function of the two elements, so computed once per pair."""
    if abs(a.X - b.X) >= 1.7:  # nan (noble gases) compares False: atomic radii, as CrystaLLM does
        cation, anion = (a, b) if a.X < b.X else (b, a)
        return float(cation.average_cationic_radius + anion.average_anionic_radius)
    if a.atomic_radius is None or b.atomic_radius is None:
        return None
    return float(a.atomic_radius + b.atomic_radius)


def bond_length_score(structure: Structure, tolerance: float = 0.32, h_factor: float = 2.5,
                      site_weights: dict[int, int] | None = None,
                      shared_voronoi: bool = True) -> tuple[float, int, list[str]]:
    """CrystaLLM's bond-length reasonableness score: (score, number of bonds, problems).

    ``site_weights`` maps a representative site index to the size of its symmetry orbit: symmetry-
    equivalent sites have the same bonds, so evaluating one per orbit and weighting gives the same score
    as the full loop over all sites at a fraction of the CrystalNN calls.  ``shared_voronoi``: the bonds of
    all those sites from one Voronoi tessellation (:func:`fw_screen.science.crystalnn.crystalnn_bonds`);
    False calls ``CrystalNN.get_nn_info`` for each.
    """
    weights = site_weights or {i: 1 for i in range(len(structure))}
    bonds = crystalnn_bonds(structure, weights, shared_voronoi)
    score = 0.0
    count = 0.0
    problems: list[str] = []
    for i, w in weights.items():
        site = structure[i]
        for other in bonds[i]:
            length = site.distance(other)
            a, b = site.specie, other.specie
            expected = _expected_bond_length(a, b)
            count += w
            if "H" in (a.symbol, b.symbol):
                ok = expected is not None and expected > 0 and length / expected < h_factor
            elif expected is None or expected <= 0:
                ok = False
            else:
                ok = (1 - tolerance) < length / expected < (1 + tolerance)
            if ok:
                score += w
            elif len(problems) < 5:
                exp = "no radius" if not expected else f"expected {expected:.2f}"
                problems.append(f"{a.symbol}-{b.symbol} {length:.2f} A ({exp})")
    if count == 0:
        return 0.0, 0, ["no bonds found"]
    return score / count, int(round(count)), problems


def symmetry_orbits(structure: Structure, symprec: float = 1e-3) -> dict[int, int] | None:
    """{representative site index: orbit size}, or None where symmetry cannot be determined."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        equivalent = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_dataset().equivalent_atoms
    except Exception:
        return None
    reps, counts = np.unique(np.asarray(equivalent), return_counts=True)
    return {int(r): int(c) for r, c in zip(reps, counts)}


def check_space_group(structure: Structure, declared: str | None, symprec: float) -> tuple[bool, str | None, dict]:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    if not declared:
        return False, "no declared space group (_symmetry_space_group_name_H-M)", {}
    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        detected = sga.get_space_group_symbol()
        number = sga.get_space_group_number()
    except Exception as exc:
        return False, f"symmetry undetermined: {exc}", {"declared": declared}
    value = {"declared": declared, "detected": detected, "detected_number": number}
    if declared.strip() == detected.strip():
        return True, None, value
    return False, f"declared {declared}, found {detected} at symprec {symprec}", value


def min_interatomic_distance(structure: Structure, cutoff: float = 4.0) -> float | None:
    """Shortest distance between any two atoms including periodic images (None if none within cutoff)."""
    centers, neighbors, images, dist = structure.get_neighbor_list(cutoff)
    mask = dist > 1e-8
    return float(dist[mask].min()) if mask.any() else None


def check_smact(composition: Composition) -> tuple[bool, str | None]:
    from smact.screening import smact_validity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ok = bool(smact_validity(composition))
        except Exception as exc:
            return False, f"SMACT could not assess {composition.reduced_formula}: {exc}"
    return ok, None if ok else f"no charge-neutral, electronegativity-ordered assignment for {composition.reduced_formula}"


# ------------------------------------------------------------------------------------------- the stage
def _run(result: ValidityResult, name: str, fn, *args) -> None:
    """Run one check; an exception inside it is that check's failure, never the batch's."""
    try:
        out = fn(*args)
    except Exception as exc:
        result.record(name, False, f"{type(exc).__name__}: {exc}")
        return
    passed, reason, value = out
    result.record(name, passed, reason, value or None)


@functools.lru_cache(maxsize=1)
def _density_units() -> tuple[float, float]:
    """(g per amu, cm^3 per A^3) as pymatgen's ``Structure.density`` converts them."""
    from pymatgen.core.units import Length, Mass

    return float(Mass(1, "amu").to("g")), float(Length(1, "ang").to("cm") ** 3)


def _density(structure: Structure, composition: Composition | None = None) -> float | None:
    """g/cm^3, or None for a degenerate cell (a 1e-320 A edge: the volume in cm^3 underflows to 0).

    ``Structure.density``'s arithmetic (mass in amu times the amu-to-g factor, over the volume times the
    A^3-to-cm^3 factor), with the structure's composition passed in when it is at hand."""
    g_per_amu, cm3_per_a3 = _density_units()
    try:
        volume = structure.volume
        weight = float((composition or structure.composition).weight)
        density = weight * g_per_amu / (volume * cm3_per_a3) if volume > 0 else None
    except (ZeroDivisionError, OverflowError, ValueError):
        return None
    return density if density is not None and math.isfinite(density) else None


def parse_structure(cif: str, parser: CifParser | None = None) -> Structure:
    """The CIF's structure (pymatgen's CifParser: text is read as numbers and symmetry strings by regular
    expressions, never evaluated; magnetic CIFs, whose setting pymatgen evaluates with sympy, are refused).
    ``parser``: the parser of this very text, if one was made already (its sites are expanded by
    :class:`_CifParser`, pymatgen's answer)."""
    magnetic = _MAGNETIC.search(cif)
    if magnetic:
        raise ValueError(f"magnetic CIF data name {magnetic.group(0)!r}: magnetic CIFs are not read")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = parser or _CifParser.from_str(cif)
        structures = parser.parse_structures(primitive=False, on_error="raise", check_occu=False)
    if not structures:
        raise ValueError("no structure in CIF")
    return structures[0]


def _failed_before(result: ValidityResult, required: list[str], name: str) -> str | None:
    """The required check (or ``parse``) before ``name`` in :data:`CHECK_ORDER` that has failed, else None:
    where there is one, ``name`` cannot change the verdict, the first failure or its reason."""
    for earlier in CHECK_ORDER[:CHECK_ORDER.index(name)]:
        if (earlier == "parse" or earlier in required) and result.checks.get(earlier, {}).get("passed") is False:
            return earlier
    return None


def _not_run(result: ValidityResult, required: list[str], name: str, record_all: bool) -> bool:
    """With ``record_all`` False, record ``name`` as not run when an earlier required check decided the
    verdict already (True: skip it)."""
    first = None if record_all else _failed_before(result, required, name)
    if first:
        result.record(name, None, f"not run: {first} failed first")
    return bool(first)


def check_cif(cif: str | None, cfg: dict, symmetry_shortcut: bool = True) -> ValidityResult:
    """Run the validity checks on one processed CIF; ``cfg`` is the spec's ``validity`` section.

    ``cfg["record_all_checks"]`` (missing: True, as before the setting existed): every check runs; False: the
    expensive required checks (``bond_length``, ``space_group``) are not run once a required check before
    them has failed (recorded as ``passed: None``, "not run: ... failed first"); the verdict, first failure
    and reason are the same either way, and the cheap stored-only checks are always run.
    """
    result = ValidityResult()
    required = list(cfg["required"])
    record_all = bool(cfg.get("record_all_checks", True))
    if not cif or not cif.strip():
        result.record("parse", False, "empty input")
        return _conclude(result, required)
    try:
        parser = _parser(cif)
        block = _block(parser)
    except Exception as exc:
        result.record("parse", False, loop_problem(cif) or f"CIF parser: {type(exc).__name__}: {exc}")
        return _conclude(result, required)

    too_large = size_problem(block, cfg, volume=False)
    if too_large:  # never build a structure beyond the spec's size limits (cost grows with sites x operators)
        result.record("parse", False, too_large)
        return _conclude(result, required)

    _run(result, "sensible", check_sensible, block, cfg)
    _run(result, "formula_consistent", check_formula_consistent, cif, block)
    _run(result, "multiplicity_consistent", check_multiplicity, block)
    too_large = result.checks["sensible"]["passed"] and size_problem(block, cfg)  # an absurd cell: `sensible`
    if too_large:
        result.record("parse", False, too_large)
        return _conclude(result, required)

    labels = block.get("_atom_site_label")
    if isinstance(labels, list) and len(set(labels)) != len(labels):
        # _atom_site_label is the key of the CIF atom-site category: a repeated one is a malformed CIF
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        result.record("parse", False, f"duplicate atom site label(s) {', '.join(repeated)} in _atom_site_label")
        return _conclude(result, required)

    try:
        structure = parse_structure(cif, parser)
        if len(structure) == 0:
            raise ValueError("zero atoms")
        unknown = _unknown_symbols(structure.composition)
        if unknown:
            raise ValueError(f"unknown element symbol(s) {', '.join(unknown)}")
        if not np.all(np.isfinite(structure.frac_coords)) or not np.all(np.isfinite(structure.lattice.matrix)):
            raise ValueError("non-finite coordinates or cell")
        amounts = [occ for site in structure for occ in site.species.values()]
        if not all(math.isfinite(a) and a > 0 for a in amounts) or not math.isfinite(sum(amounts)):
            raise ValueError("occupancies must be finite and positive")  # 1e308: the formula overflows
    except Exception as exc:
        result.record("parse", False, f"structure: {type(exc).__name__}: {exc}")
        return _conclude(result, required)
    result.record("parse", True)
    result.structure = structure
    comp = structure.composition
    declared = block.get("_symmetry_space_group_name_H-M") or block.get("_space_group_name_H-M_alt")
    result.info = {
        "formula": comp.formula.replace(" ", ""),
        "reduced_formula": comp.reduced_formula,
        "chemsys": "-".join(sorted({el.symbol for el in comp.elements})),
        "elements": sorted({el.symbol for el in comp.elements}),
        "nsites": len(structure),
        "volume": float(structure.volume),
        "density": _density(structure, comp),
        "spacegroup_declared": declared.strip() if isinstance(declared, str) else None,
    }

    volume = float(structure.volume)
    result.record("volume", volume > cfg["min_volume"],
                  None if volume > cfg["min_volume"] else f"cell volume {volume:.3g} A^3 <= {cfg['min_volume']}",
                  volume)
    result.record("ordered", structure.is_ordered,
                  None if structure.is_ordered else "partial occupancies (a disordered structure, or atoms generated onto the same position)")
    smact_ok, smact_reason = check_smact(comp)
    result.record("smact", smact_ok, smact_reason)

    if len(structure) > cfg["max_sites"]:
        reason = f"{len(structure)} sites > max_sites={cfg['max_sites']}: not analysed further"
        for name in ("min_distance", "bond_length", "space_group"):
            result.record(name, False, reason)
        return _conclude(result, required)
    if volume <= cfg["min_volume"] or not result.checks["sensible"]["passed"]:
        # degenerate cells make neighbour searches explode; they fail these checks by construction
        reason = "degenerate cell: not analysed further"
        for name in ("min_distance", "bond_length", "space_group"):
            result.record(name, False, reason)
        return _conclude(result, required)

    dmin = min_interatomic_distance(structure)
    ok = dmin is None or dmin >= cfg["min_distance"]
    result.record("min_distance", ok, None if ok else f"atoms {dmin:.3f} A apart < {cfg['min_distance']}", dmin)

    if not structure.is_ordered:
        result.record("bond_length", False, "partial occupancies: bonds need ordered sites")
    elif not _not_run(result, required, "bond_length", record_all):
        def _bonds():
            weights = symmetry_orbits(structure) if symmetry_shortcut else None
            score, nbonds, problems = bond_length_score(structure, cfg["bond_tolerance"], cfg["h_bond_factor"],
                                                        weights)
            passed = score >= cfg["min_bond_score"]
            reason = None if passed else f"bond-length score {score:.3f} < {cfg['min_bond_score']}: " + "; ".join(problems)
            return passed, reason, {"score": score, "bonds": nbonds}
        _run(result, "bond_length", _bonds)
    if not _not_run(result, required, "space_group", record_all):
        _run(result, "space_group", check_space_group, structure, result.info["spacegroup_declared"],
             cfg["symprec"])
    sg = result.checks["space_group"].get("value") or {}
    result.info["spacegroup"] = sg.get("detected")
    result.info["spacegroup_number"] = sg.get("detected_number")
    return _conclude(result, required)


def _conclude(result: ValidityResult, required: list[str]) -> ValidityResult:
    for name in CHECK_ORDER:
        entry = result.checks.get(name)
        if entry is None:
            continue
        if entry["passed"] is False and (name == "parse" or name in required):
            result.first_failure = name
            result.reason = entry.get("reason") or f"{name} failed"
            result.valid = False
            return result
    missing = [n for n in required if n not in result.checks]
    if missing or "parse" not in result.checks:
        result.first_failure = missing[0] if missing else "parse"
        result.reason = f"check {result.first_failure} not evaluated"
        return result
    result.valid = True
    return result
