"""Campaign specs: defaults, YAML overlay, keyword overrides, and errors that name the offending field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fw_screen.spec import CHECK_NAMES, SpecError, default_spec, load_spec, validate

REPO = Path(__file__).resolve().parent.parent

#: the band-gap decoding table as published with the CrystaLLM-pi generations
#: (../shared/data/README.md: "0.05 -> 0.072, 0.10 -> 0.180, ..."), copied here as the independent source
README_BAND_GAP = {0.05: 0.072, 0.10: 0.180, 0.25: 0.681, 0.40: 1.547, 0.50: 2.440, 0.60: 3.720, 0.75: 6.776,
                   0.90: 12.145}


def write_yaml(tmp_path: Path, data, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_default_spec_loads_and_matches_the_published_tables():
    spec = load_spec()
    assert spec["campaign"] == "demo"
    band_gap, hull = spec["conditions"]
    assert (band_gap["name"], band_gap["unit"]) == ("band_gap", "eV")
    # keys are stored as strings (the spec goes to MongoDB) but must denote the same numbers
    assert {float(k): v for k, v in band_gap["table"].items()} == README_BAND_GAP
    assert all(isinstance(k, str) for k in band_gap["table"])
    assert (hull["name"], {float(k): v for k, v in hull["table"].items()}) == ("e_above_hull", {0.0: 0.0})
    # CrystaLLM's validity definition (Antunes et al., crystallm/_metrics.py) is the default requirement
    assert spec["validity"]["required"] == ["sensible", "formula_consistent", "multiplicity_consistent",
                                            "bond_length", "space_group"]
    assert spec["validity"]["bond_tolerance"] == 0.32 and spec["validity"]["h_bond_factor"] == 2.5
    assert spec["validity"]["symprec"] == 0.1
    assert set(spec["validity"]["required"]) <= set(CHECK_NAMES)


def test_documented_spec_file_is_the_packaged_default():
    """specs/default.yaml is what users copy; it must not drift from the packaged defaults."""
    assert load_spec(REPO / "specs" / "default.yaml") == load_spec()


def test_yaml_overlay_and_keyword_overrides(tmp_path):
    path = write_yaml(tmp_path, {"campaign": "bandgap-1", "batch_size": 50,
                                 "validity": {"symprec": 0.01, "required": ["sensible", "smact"]}})
    spec = load_spec(path, dedup_shards=8)
    assert spec["campaign"] == "bandgap-1"
    assert spec["batch_size"] == 50 and spec["dedup_shards"] == 8
    assert spec["validity"]["symprec"] == 0.01
    assert spec["validity"]["required"] == ["sensible", "smact"]
    # fields the file does not name keep their defaults, also inside a partly overridden section
    assert spec["validity"]["bond_tolerance"] == default_spec()["validity"]["bond_tolerance"]
    assert spec["uniqueness"] == default_spec()["uniqueness"]
    # keyword overrides win over the file; None means "not given"
    assert load_spec(path, batch_size=7)["batch_size"] == 7
    assert load_spec(path, batch_size=None)["batch_size"] == 50


def test_condition_table_replaced_whole_and_keys_normalised(tmp_path):
    path = write_yaml(tmp_path, "conditions:\n  - name: formation_energy\n    unit: eV/atom\n"
                                "    table: {0.0: -3.0, 1: 0.5}\n")
    spec = load_spec(path)
    assert spec["conditions"] == [{"name": "formation_energy", "unit": "eV/atom",
                                   "table": {"0.0": -3.0, "1.0": 0.5}}]


@pytest.mark.parametrize("override, field", [
    ({"validity": {"symprec": "abc"}}, "validity.symprec"),
    ({"validity": {"symprec": -0.1}}, "validity.symprec"),
    ({"validity": {"min_bond_score": 1.5}}, "validity.min_bond_score"),
    ({"validity": {"max_cell_angle": 200}}, "validity.max_cell_angle"),
    ({"validity": {"max_sites": 2.5}}, "validity.max_sites"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"dedup_shards": 5000}, "dedup_shards"),
    ({"ingest": {"max_cif_bytes": "2MB"}}, "ingest.max_cif_bytes"),
    ({"ingest": {"postprocess": "yes"}}, "ingest.postprocess"),
    ({"ingest": {"cif_columns": ["Generated CIF", ""]}}, "ingest.cif_columns"),
    ({"ingest": {"cif_columns": "Generated CIF"}}, "ingest.cif_columns"),
    ({"ingest": {"cif_columns": []}}, "ingest.cif_columns"),
    ({"uniqueness": {"ltol": None}}, "uniqueness.ltol"),
    ({"uniqueness": {"matcher": "fuzzy"}}, "uniqueness.matcher"),
    ({"campaign": "has space"}, "campaign"),
    ({"campaign": "x" * 65}, "campaign"),
    ({"fireworks": {"category_ml": 3}}, "fireworks.category_ml"),
])
def test_bad_field_is_named(tmp_path, override, field):
    with pytest.raises(SpecError) as err:
        load_spec(write_yaml(tmp_path, override))
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_unknown_fields_and_checks_are_named(tmp_path):
    with pytest.raises(SpecError, match=r"^validity\.symprecision: unknown field \(known: .*symprec"):
        load_spec(write_yaml(tmp_path, {"validity": {"symprecision": 0.1}}))
    with pytest.raises(SpecError, match=r"^colour: unknown field"):
        load_spec(colour="blue")
    with pytest.raises(SpecError, match=r"validity.required: unknown check 'charge_neutral'"):
        load_spec(write_yaml(tmp_path, {"validity": {"required": ["sensible", "charge_neutral"]}}))
    with pytest.raises(SpecError, match=r"^validity: expected a mapping"):
        load_spec(write_yaml(tmp_path, {"validity": ["sensible"]}))


def test_bad_condition_tables(tmp_path):
    with pytest.raises(SpecError, match=r"conditions\[0\]\.table: every key and value must be a number"):
        load_spec(write_yaml(tmp_path, {"conditions": [{"name": "band_gap", "table": {"low": 0.1}}]}))
    with pytest.raises(SpecError, match=r"conditions\[1\]: expected \{name, unit, table\}"):
        load_spec(write_yaml(tmp_path, {"conditions": [{"name": "a"}, {"unit": "eV"}]}))
    with pytest.raises(SpecError, match=r"^conditions: expected a list"):
        load_spec(write_yaml(tmp_path, {"conditions": {"name": "band_gap"}}))


def test_spec_file_problems(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write_yaml(tmp_path, "validity: [unclosed\n"))
    with pytest.raises(SpecError, match="expected a mapping at the top level"):
        load_spec(write_yaml(tmp_path, "- a\n- b\n"))
    # an empty file is an empty overlay: the defaults
    assert load_spec(write_yaml(tmp_path, "")) == load_spec()


def test_validate_is_idempotent_on_a_loaded_spec():
    """A spec read back from the campaigns collection validates to itself (the store compares them)."""
    spec = load_spec(campaign="again")
    assert validate(copy.deepcopy(spec)) == spec
