"""Campaign specs: one typed, validated object per campaign.

The *values* of the defaults live in one place, ``fw_screen/default_spec.yaml`` (the commented file users
copy; ``specs/default.yaml`` is the same file).  The *types and ranges* live here, one dataclass per section
(:class:`CampaignSpec` holds :class:`IngestSettings`, :class:`ValiditySettings`, ... :class:`QESettings`), each
field with its check.  :func:`load_spec` overlays a YAML file and keyword overrides on the defaults and builds
the object; a bad field stops with :class:`SpecError` naming it (``validity.symprec: expected a number >= 0,
got 'abc'``).

Code reads attributes (``spec.ml.stability_threshold``).  Every section is also a read-only mapping of its
fields (as pymatgen's Composition is), so a pure function that takes "the spec's validity section" accepts
the typed section or a plain dict of the same fields; :meth:`Section.to_dict` gives the plain data that is
stored with the campaign in MongoDB (unchanged in format: a spec stored before this module was typed loads).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

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

#: ``property.method``: where the target-hit verdict that promotion uses comes from
PROPERTY_METHODS = ("ml", "dft_lite")
#: uniqueness.matcher: pymatgen's StructureMatcher as is, or with an order-disorder comparator against
#: partially occupied references (fw_screen/science/uniqueness.py)
MATCHERS = ("ordered", "disordered")
DFT_CODES = ("qe", "vasp")
#: ml.device: the device of every potential and of the band-gap model (fw_screen.science.potentials.resolve_device)
ML_DEVICES = ("auto", "cpu", "cuda")


class SpecError(ValueError):
    """A campaign spec field is missing, unknown or out of range."""


# ------------------------------------------------------------------------------------------ field checks
Check = Callable[[Any, str], Any]


def _number(low: float | None = None, high: float | None = None, integer: bool = False,
            optional: bool = False) -> Check:
    kind = "an integer" if integer else "a number"
    bounds = "" if low is None else f" >= {low}" + ("" if high is None else f" and <= {high}")

    def check(value, where):
        if value is None and optional:
            return value
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (low is not None and value < low) or (
                high is not None and value > high):
            raise SpecError(f"{where}: expected {kind}{bounds}, got {value!r}")
        return value
    return check


def _flag(value, where):
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    return value


def _names(value, where):
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{where}: expected a non-empty list of names, got {value!r}")
    return value


def _checks(value, where):
    _names(value, where)
    for check in value:
        if check not in CHECK_NAMES:
            raise SpecError(f"{where}: unknown check {check!r} (known: {', '.join(CHECK_NAMES)})")
    return value


def _choice(options: tuple[str, ...], expected: str | None = None) -> Check:
    def check(value, where):
        if value not in options:
            raise SpecError(f"{where}: expected {expected or 'one of ' + ', '.join(options)}, got {value!r}")
        return value
    return check


def _text(message: str, optional: bool = False, non_empty: bool = False, show: bool = True) -> Check:
    def check(value, where):
        if value is None and optional:
            return value
        if not isinstance(value, str) or (non_empty and not value):
            raise SpecError(f"{where}: {message}" + (f", got {value!r}" if show else ""))
        return value
    return check


def _campaign_name(value, where):
    # a leading letter keeps FireWorks from reading a name such as 20260101T1200 as a date
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}", value):
        raise SpecError(f"{where}: expected a name starting with a letter, then letters, digits, '_', '-', "
                        f"'.', got {value!r}")
    return value


def _setting(check: Check) -> Any:
    """A dataclass field checked by ``check`` on load (no default here, and no description: the YAML file
    holds the values and says what each means)."""
    return field(metadata={"check": check})


def _section(kind: type) -> Any:
    return field(metadata={"section": kind})


# ----------------------------------------------------------------------------------------------- sections
class Section(Mapping):
    """A spec section: a dataclass whose fields are checked on load, readable as a mapping of its fields."""

    @classmethod
    def from_dict(cls, data: Any, where: str = ""):
        """Build from plain data (all fields present: :func:`load_spec` merges the defaults first)."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{where.rstrip('.') or 'spec'}: expected a mapping, got {data!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(f"{where}{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
        values = {}
        for f in dataclasses.fields(cls):
            name = f"{where}{f.name}"
            if f.name not in data:
                raise SpecError(f"{name}: missing")
            value = data[f.name]
            if "section" in f.metadata:
                value = f.metadata["section"].from_dict(value, name + ".")
            elif "convert" in f.metadata:
                value = f.metadata["convert"](value, name)
            else:
                value = f.metadata["check"](copy.deepcopy(value), name)
            values[f.name] = value
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain data (dicts, lists, numbers, strings): what the campaigns collection stores."""
        return {name: _plain(value) for name, value in self.items()}

    # the read-only mapping of fields
    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(eq=False, repr=False)
class IngestSettings(Section):
    cif_columns: list[str] = _setting(_names)
    condition_columns: list[str] = _setting(_names)
    id_columns: list[str] = _setting(_names)
    prompt_columns: list[str] = _setting(_names)
    postprocess: bool = _setting(_flag)
    max_cif_bytes: int = _setting(_number(1, integer=True))


@dataclass(eq=False, repr=False)
class ValiditySettings(Section):
    required: list[str] = _setting(_checks)
    symprec: float = _setting(_number(0))
    bond_tolerance: float = _setting(_number(0))
    h_bond_factor: float = _setting(_number(0))
    min_bond_score: float = _setting(_number(0, 1))
    min_cell_length: float = _setting(_number(0))
    max_cell_length: float = _setting(_number(0))
    min_cell_angle: float = _setting(_number(0, 180))
    max_cell_angle: float = _setting(_number(0, 180))
    min_distance: float = _setting(_number(0))
    min_volume: float = _setting(_number(0))
    max_volume: float = _setting(_number(0))
    max_sites: int = _setting(_number(1, integer=True))
    record_all_checks: bool = _setting(_flag)


@dataclass(eq=False, repr=False)
class UniquenessSettings(Section):
    ltol: float = _setting(_number(0))
    stol: float = _setting(_number(0))
    angle_tol: float = _setting(_number(0))
    matcher: str = _setting(_choice(MATCHERS))


@dataclass(eq=False, repr=False)
class Condition(Section):
    """One entry of the generator's condition vector: its name, unit and normalised -> physical table (keys
    stored as strings such as "0.05": the spec is saved in MongoDB, whose keys must be strings)."""
    name: str
    unit: str | None = None
    table: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = ""):
        where = where.rstrip(".")
        if not isinstance(data, Mapping) or set(data) - {"name", "unit", "table"} or "name" not in data:
            raise SpecError(f"{where}: expected {{name, unit, table}}, got {data!r}")
        table = data.get("table") or {}
        if not isinstance(table, Mapping):
            raise SpecError(f"{where}.table: expected a mapping normalised -> physical value")
        try:
            table = {str(float(k)): float(v) for k, v in table.items()}
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{where}.table: every key and value must be a number ({exc})") from None
        return cls(name=data["name"], unit=data.get("unit"), table=table)


def _conditions(value, where):
    if not isinstance(value, list):
        raise SpecError(f"{where}: expected a list, got {value!r}")
    return [Condition.from_dict(c, f"{where}[{i}]") for i, c in enumerate(value)]


@dataclass(eq=False, repr=False)
class MLSettings(Section):
    potential: str = _setting(_text("expected a potential name"))
    model_dir: str | None = _setting(_text("expected a folder path or null", optional=True))
    fmax: float = _setting(_number(0))
    max_steps: int = _setting(_number(1, integer=True))
    time_limit_s: float | None = _setting(_number(1, optional=True))
    max_sites: int = _setting(_number(1, integer=True))
    batch_size: int = _setting(_number(1, integer=True))
    batch_size_cuda: int = _setting(_number(1, integer=True))
    device: str = _setting(_choice(ML_DEVICES, "auto, cpu or cuda"))
    stability_threshold: float = _setting(_number(0))
    prescreen_e_hull: float | None = _setting(_number(optional=True))


@dataclass(eq=False, repr=False)
class PropertySettings(Section):
    band_gap_model: str = _setting(_text("expected a model name or a folder path", show=False))
    band_gap_fidelity: int = _setting(_number(0, integer=True))
    band_gap_tolerance: float = _setting(_number(0))
    widen_tolerance_by_model_error: bool = _setting(_flag)
    method: str = _setting(_choice(PROPERTY_METHODS))
    dft_lite_kppa: int = _setting(_number(1, integer=True))
    dft_lite_nscf_kppa: int = _setting(_number(1, integer=True))
    dft_lite_max_sites: int = _setting(_number(1, integer=True))


@dataclass(eq=False, repr=False)
class PromotionSettings(Section):
    auto: bool = _setting(_flag)
    max_e_above_hull: float = _setting(_number())
    require_target_hit: bool = _setting(_flag)
    require_converged: bool = _setting(_flag)
    max_sites: int = _setting(_number(1, integer=True))
    max_per_condition: int = _setting(_number(1, integer=True))
    max_total: int = _setting(_number(1, integer=True))


@dataclass(eq=False, repr=False)
class QESettings(Section):
    """The ``dft.qe`` section; a null command/folder is resolved at run time
    (:func:`fw_screen.dft.qe.resolve_settings`)."""
    pw_cmd: str | None = _setting(_text("expected a string or null", optional=True))
    mpi_cmd: str | None = _setting(_text("expected a string or null", optional=True))
    pseudo_dir: str | None = _setting(_text("expected a string or null", optional=True))
    ecutwfc: float | None = _setting(_number(1, optional=True))
    ecutrho: float | None = _setting(_number(1, optional=True))
    default_ecutwfc: float = _setting(_number(0))
    default_ecutrho: float = _setting(_number(0))
    kppa: float = _setting(_number(0))
    nscf_kppa: float = _setting(_number(0))
    smearing: str | None = _setting(_text("expected a string or null", optional=True))
    degauss: float = _setting(_number(0))
    conv_thr_per_atom: float = _setting(_number(0))
    mixing_beta: float = _setting(_number(0))
    electron_maxstep: int = _setting(_number(1, integer=True))
    nstep: int = _setting(_number(1, integer=True))
    press_conv_thr: float = _setting(_number(0))
    forc_conv_thr: float = _setting(_number(0))
    max_errors: int = _setting(_number(1, integer=True))
    molecule_box: float = _setting(_number(0))
    walltime_s: float | None = _setting(_number(1, optional=True))
    keep_scratch: bool = _setting(_flag)


@dataclass(eq=False, repr=False)
class VaspSettings(Section):
    vasp_cmd: str = _setting(_text("expected a command/path or >>env_key<<", non_empty=True))
    db_file: str = _setting(_text("expected a command/path or >>env_key<<", non_empty=True))


@dataclass(eq=False, repr=False)
class DFTSettings(Section):
    code: str = _setting(_choice(DFT_CODES, "qe or vasp"))
    stability_threshold: float = _setting(_number(0))
    reference_max_sites: int = _setting(_number(1, integer=True))
    reference_polymorph_tolerance: float = _setting(_number(0, 1))
    qe: QESettings = _section(QESettings)
    vasp: VaspSettings = _section(VaspSettings)


@dataclass(eq=False, repr=False)
class FireworksSettings(Section):
    category_cheap: str = _setting(_text("expected a category name", show=False))
    category_ml: str = _setting(_text("expected a category name", show=False))
    category_dft: str = _setting(_text("expected a category name", show=False))


@dataclass(eq=False, repr=False)
class CampaignSpec(Section):
    """Every threshold and setting of one campaign (see ``fw_screen/default_spec.yaml`` for what each means)."""
    campaign: str = _setting(_campaign_name)
    batch_size: int = _setting(_number(1, 100_000, integer=True))
    dedup_shards: int = _setting(_number(1, 1024, integer=True))
    ingest: IngestSettings = _section(IngestSettings)
    validity: ValiditySettings = _section(ValiditySettings)
    uniqueness: UniquenessSettings = _section(UniquenessSettings)
    conditions: list[Condition] = field(metadata={"convert": _conditions})
    ml: MLSettings = _section(MLSettings)
    property: PropertySettings = _section(PropertySettings)
    promotion: PromotionSettings = _section(PromotionSettings)
    dft: DFTSettings = _section(DFTSettings)
    fireworks: FireworksSettings = _section(FireworksSettings)

    def condition(self, name: str) -> Condition | None:
        return next((c for c in self.conditions if c.name == name), None)


# ---------------------------------------------------------------------------------------------- loading
def _default_path() -> Path:
    return Path(str(resources.files("fw_screen").joinpath("default_spec.yaml")))


@functools.lru_cache(maxsize=1)
def _default_data() -> dict:
    with open(_default_path()) as fh:
        return yaml.safe_load(fh)


def default_spec() -> CampaignSpec:
    """The defaults (``fw_screen/default_spec.yaml``), as a new :class:`CampaignSpec`."""
    return CampaignSpec.from_dict(_default_data())


def _merge(base: dict, override: Mapping, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            raise SpecError(f"{where}: unknown field (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and key != "table":
            if not isinstance(value, Mapping):
                raise SpecError(f"{where}: expected a mapping, got {value!r}")
            out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = _plain(value)
    return out


def validate(spec: Mapping) -> CampaignSpec:
    """Check the type and range of every field of a complete spec (plain data or a :class:`CampaignSpec`)."""
    data = spec.to_dict() if isinstance(spec, Section) else spec
    out = CampaignSpec.from_dict(data)
    _check_prescreen(out)
    return out


def _check_prescreen(spec: CampaignSpec) -> None:
    """``ml.prescreen_e_hull`` may not skip a candidate that could have been ML-stable or promoted: when set
    it is at least ``ml.stability_threshold`` and ``promotion.max_e_above_hull``."""
    bound = spec.ml.prescreen_e_hull
    if bound is None:
        return
    for name, value in (("ml.stability_threshold", spec.ml.stability_threshold),
                        ("promotion.max_e_above_hull", spec.promotion.max_e_above_hull)):
        if bound < value:
            raise SpecError(f"ml.prescreen_e_hull: {bound!r} eV/atom is below {name}={value!r}: a candidate it "
                            f"leaves unrelaxed could have been ML-stable or promoted (set it >= {value!r}, or "
                            f"null to relax every candidate)")


def as_spec(spec: Mapping) -> CampaignSpec:
    """``spec`` as a :class:`CampaignSpec` (plain data is validated; a stored spec is upgraded first)."""
    return spec if isinstance(spec, CampaignSpec) else validate(upgrade(dict(spec)))


#: settings added after campaigns were first stored, with the value that reproduces what such a campaign did
#: where it is not the default (before the DFT-lite tier, promotion's target hit was the ML gap's); None: the
#: default spec's value
ADDED_SETTINGS = {"uniqueness.matcher": "ordered",
                  "validity.record_all_checks": None,  # the default: the same verdicts, first failures, reasons
                  "property.method": "ml", "property.widen_tolerance_by_model_error": None,
                  "property.dft_lite_kppa": None, "property.dft_lite_nscf_kppa": None,
                  "property.dft_lite_max_sites": None,
                  "dft.qe.keep_scratch": None, "ml.prescreen_e_hull": None,
                  # where and in what batches the ML stage runs, not what it computes: the defaults (auto
                  # is the CPU on a worker without CUDA, where every ML stage ran before the setting existed)
                  "ml.device": None, "ml.batch_size_cuda": None}


def upgrade(spec: dict) -> dict:
    """A stored campaign spec (plain data) with the settings added since it was written
    (:data:`ADDED_SETTINGS`); sections it lacks altogether are left for validation to name."""
    for dotted, value in ADDED_SETTINGS.items():
        *sections, key = dotted.split(".")
        node, default = spec, _default_data()
        for part in sections:
            node, default = node.get(part) if isinstance(node, dict) else None, default[part]
        if isinstance(node, dict) and key not in node:
            node[key] = copy.deepcopy(default[key] if value is None else value)
    return spec


def load_spec(path: str | Path | None = None, **overrides: Any) -> CampaignSpec:
    """Defaults, overlaid by the YAML file at ``path``, overlaid by ``overrides``; then validated."""
    data = _default_data()
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
        data = _merge(data, user)
    if overrides:
        data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    return validate(data)
