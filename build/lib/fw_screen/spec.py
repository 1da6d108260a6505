"""Campaign specs: load a YAML file, fill defaults from ``specs/default.yaml``, validate every field.

A spec is plain data (a dict), as quacc keeps its presets: the stage functions take the sub-dict they
need.  A bad spec stops with :class:`SpecError` naming the field (``validity.symprec: expected a
number > 0, got 'abc'``).
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CHECK_NAMES = (
    "sensible",
    "formula_consistent",
    "multiplicity_consistent",
    "bond_length",
    "space_group",
    "ordered",
    "smact",
    "min_distance",
    "volume",
)


class SpecError(ValueError):
    """A campaign spec field is missing, unknown or out of range."""


#: ``property.method``: where the target-hit verdict that promotion uses comes from
PROPERTY_METHODS = ("ml", "dft_lite")
#: uniqueness.matcher: pymatgen's StructureMatcher as is, or with an order-disorder comparator against
#: partially occupied references (fw_screen/science/uniqueness.py)
MATCHERS = ("ordered", "disordered")


def _default_path() -> Path:
    return Path(str(resources.files("fw_screen").joinpath("default_spec.yaml")))


def default_spec() -> dict:
    with open(_default_path()) as fh:
        return yaml.safe_load(fh)


def _merge(base: dict, override: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            raise SpecError(f"{where}: unknown field (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and key != "table":
            if not isinstance(value, dict):
                raise SpecError(f"{where}: expected a mapping, got {value!r}")
            out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = value
    return out


def _number(spec: dict, dotted: str, low: float | None = None, high: float | None = None,
            integer: bool = False) -> None:
    node: Any = spec
    for part in dotted.split("."):
        node = node[part]
    ok = isinstance(node, int) if integer else isinstance(node, (int, float))
    if isinstance(node, bool) or not ok or (low is not None and node < low) or (
            high is not None and node > high):
        kind = "an integer" if integer else "a number"
        bounds = "" if low is None else f" >= {low}" + ("" if high is None else f" and <= {high}")
        raise SpecError(f"{dotted}: expected {kind}{bounds}, got {node!r}")


def _string_list(value: Any, dotted: str) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{dotted}: expected a non-empty list of names, got {value!r}")


def validate(spec: dict) -> dict:
    """Check types and ranges of every field; return the spec (condition tables as {"0.05": 0.072})."""
    name = spec.get("campaign")
    # a leading letter keeps FireWorks from reading a name such as 20260101T1200 as a date
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}", name):
        raise SpecError(f"campaign: expected a name starting with a letter, then letters, digits, '_', '-', "
                        f"'.', got {name!r}")
    _number(spec, "batch_size", 1, 100_000, integer=True)
    _number(spec, "dedup_shards", 1, 1024, integer=True)
    for key in ("cif_columns", "condition_columns", "id_columns", "prompt_columns"):
        _string_list(spec["ingest"][key], f"ingest.{key}")
    if not isinstance(spec["ingest"]["postprocess"], bool):
        raise SpecError(f"ingest.postprocess: expected true or false, got {spec['ingest']['postprocess']!r}")
    _number(spec, "ingest.max_cif_bytes", 1, integer=True)
    val = spec["validity"]
    _string_list(val["required"], "validity.required")
    for check in val["required"]:
        if check not in CHECK_NAMES:
            raise SpecError(f"validity.required: unknown check {check!r} (known: {', '.join(CHECK_NAMES)})")
    for key in ("symprec", "bond_tolerance", "h_bond_factor", "min_cell_length", "max_cell_length",
                "min_distance", "min_volume", "max_volume"):
        _number(spec, f"validity.{key}", 0)
    _number(spec, "validity.min_bond_score", 0, 1)
    _number(spec, "validity.min_cell_angle", 0, 180)
    _number(spec, "validity.max_cell_angle", 0, 180)
    _number(spec, "validity.max_sites", 1, integer=True)
    for key in ("ltol", "stol", "angle_tol"):
        _number(spec, f"uniqueness.{key}", 0)
    if spec["uniqueness"]["matcher"] not in MATCHERS:
        raise SpecError(f"uniqueness.matcher: expected one of {', '.join(MATCHERS)}, "
                        f"got {spec['uniqueness']['matcher']!r}")
    conditions = spec["conditions"]
    if not isinstance(conditions, list):
        raise SpecError(f"conditions: expected a list, got {conditions!r}")
    for i, cond in enumerate(conditions):
        where = f"conditions[{i}]"
        if not isinstance(cond, dict) or set(cond) - {"name", "unit", "table"} or "name" not in cond:
            raise SpecError(f"{where}: expected {{name, unit, table}}, got {cond!r}")
        table = cond.get("table") or {}
        if not isinstance(table, dict):
            raise SpecError(f"{where}.table: expected a mapping normalised -> physical value")
        try:  # keys stored as strings: the spec is saved in MongoDB, whose keys must be strings
            cond["table"] = {str(float(k)): float(v) for k, v in table.items()}
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{where}.table: every key and value must be a number ({exc})") from None
    ml = spec["ml"]
    if not isinstance(ml["potential"], str):
        raise SpecError(f"ml.potential: expected a potential name, got {ml['potential']!r}")
    if ml["model_dir"] is not None and not isinstance(ml["model_dir"], str):
        raise SpecError(f"ml.model_dir: expected a folder path or null, got {ml['model_dir']!r}")
    for key in ("fmax", "stability_threshold"):
        _number(spec, f"ml.{key}", 0)
    for key in ("max_steps", "max_sites", "batch_size"):
        _number(spec, f"ml.{key}", 1, integer=True)
    _number(spec, "ml.time_limit_s", 1)
    if not isinstance(spec["property"]["band_gap_model"], str):
        raise SpecError("property.band_gap_model: expected a model name or a folder path")
    _number(spec, "property.band_gap_fidelity", 0, integer=True)
    _number(spec, "property.band_gap_tolerance", 0)
    prop = spec["property"]
    if prop["method"] not in PROPERTY_METHODS:
        raise SpecError(f"property.method: expected one of {', '.join(PROPERTY_METHODS)}, got {prop['method']!r}")
    if not isinstance(prop["widen_tolerance_by_model_error"], bool):
        raise SpecError("property.widen_tolerance_by_model_error: expected true or false, got "
                        f"{prop['widen_tolerance_by_model_error']!r}")
    for key in ("dft_lite_kppa", "dft_lite_nscf_kppa", "dft_lite_max_sites"):
        _number(spec, f"property.{key}", 1, integer=True)
    pro = spec["promotion"]
    for key in ("auto", "require_target_hit", "require_converged"):
        if not isinstance(pro[key], bool):
            raise SpecError(f"promotion.{key}: expected true or false, got {pro[key]!r}")
    _number(spec, "promotion.max_e_above_hull")
    for key in ("max_sites", "max_per_condition", "max_total"):
        _number(spec, f"promotion.{key}", 1, integer=True)
    dft = spec["dft"]
    if dft["code"] not in ("qe", "vasp"):
        raise SpecError(f"dft.code: expected qe or vasp, got {dft['code']!r}")
    _number(spec, "dft.stability_threshold", 0)
    _number(spec, "dft.reference_max_sites", 1, integer=True)
    _number(spec, "dft.reference_polymorph_tolerance", 0, 1)
    qe = dft["qe"]
    for key in ("pw_cmd", "mpi_cmd", "pseudo_dir", "smearing"):
        if qe[key] is not None and not isinstance(qe[key], str):
            raise SpecError(f"dft.qe.{key}: expected a string or null, got {qe[key]!r}")
    for key in ("ecutwfc", "ecutrho", "walltime_s"):
        if qe[key] is not None:
            _number(spec, f"dft.qe.{key}", 1)
    for key in ("default_ecutwfc", "default_ecutrho", "kppa", "nscf_kppa", "degauss", "conv_thr_per_atom",
                "mixing_beta", "press_conv_thr", "forc_conv_thr", "molecule_box"):
        _number(spec, f"dft.qe.{key}", 0)
    for key in ("electron_maxstep", "nstep", "max_errors"):
        _number(spec, f"dft.qe.{key}", 1, integer=True)
    for key in ("vasp_cmd", "db_file"):
        if not isinstance(dft["vasp"][key], str) or not dft["vasp"][key]:
            raise SpecError(f"dft.vasp.{key}: expected a command/path or >>env_key<<, got {dft['vasp'][key]!r}")
    for key in ("category_cheap", "category_ml", "category_dft"):
        if not isinstance(spec["fireworks"][key], str):
            raise SpecError(f"fireworks.{key}: expected a category name")
    return spec


#: settings added after campaigns were first stored, with the value that reproduces what such a campaign did
#: where it is not the default (before the DFT-lite tier, promotion's target hit was the ML gap's)
ADDED_SETTINGS = {"uniqueness": {"matcher": "ordered"},
                  "property": {"method": "ml", "widen_tolerance_by_model_error": None, "dft_lite_kppa": None,
                               "dft_lite_nscf_kppa": None, "dft_lite_max_sites": None}}


def upgrade(spec: dict) -> dict:
    """A stored campaign spec with the settings added since it was written (:data:`ADDED_SETTINGS`; None:
    the default spec's value)."""
    defaults = None  # read only for a spec that lacks something (campaign_spec calls this on every read)
    for section, values in ADDED_SETTINGS.items():
        if isinstance(spec.get(section), dict):
            for key, value in values.items():
                if key not in spec[section]:
                    if value is None:
                        defaults = defaults or default_spec()
                        value = defaults[section][key]
                    spec[section][key] = value
    return spec


def load_spec(path: str | Path | None = None, **overrides: Any) -> dict:
    """Defaults, overlaid by the YAML file at ``path``, overlaid by ``overrides``; then validated."""
    spec = default_spec()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}")
        try:
            with open(path) as fh:
                user = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(user, dict):
            raise SpecError(f"{path}: expected a mapping at the top level")
        spec = _merge(spec, user)
    if overrides:
        spec = _merge(spec, {k: v for k, v in overrides.items() if v is not None})
    return validate(spec)
