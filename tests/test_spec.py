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


# ------------------------------------------------------------------------------------------ the typed spec
def test_spec_is_typed_and_reads_as_attributes_and_as_a_mapping():
    from fw_screen.spec import CampaignSpec, QESettings, ValiditySettings

    spec = load_spec(ml={"fmax": 0.02})
    assert isinstance(spec, CampaignSpec) and isinstance(spec.validity, ValiditySettings)
    assert isinstance(spec.dft.qe, QESettings)
    assert spec.ml.fmax == 0.02 == spec["ml"]["fmax"]
    assert spec.conditions[0].name == "band_gap" and spec.condition("band_gap").table["0.05"] == 0.072
    # plain data for MongoDB, and back
    data = spec.to_dict()
    assert type(data["dft"]["qe"]) is dict and type(data["conditions"][0]) is dict
    assert CampaignSpec.from_dict(data) == spec and data == spec
    # a field cannot be added by mistake: the section's fields are fixed
    with pytest.raises(KeyError):
        spec.ml["fmaxx"]


def test_every_default_has_a_typed_field_and_the_type_it_declares():
    """The YAML holds the values, the dataclasses the types: neither may have a field the other lacks, and
    each default is of its declared type (an int is a valid float)."""
    import dataclasses
    import types
    import typing

    from fw_screen import spec as spec_module
    from fw_screen.spec import CampaignSpec, Section

    raw = yaml.safe_load((REPO / "specs" / "default.yaml").read_text())

    def walk(cls, data, where=""):
        hints = typing.get_type_hints(cls, vars(spec_module))
        assert set(data) == {f.name for f in dataclasses.fields(cls)}, where
        for f in dataclasses.fields(cls):
            hint, value = hints[f.name], data[f.name]
            if isinstance(hint, type) and issubclass(hint, Section):
                walk(hint, value, f"{where}{f.name}.")
                continue
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            allowed = tuple(typing.get_origin(a) or a for a in (typing.get_args(hint) if union else (hint,)))
            allowed += (int,) if float in allowed else ()
            assert isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed), \
                f"{where}{f.name}: {value!r} is not {hint}"

    walk(CampaignSpec, raw)


def test_qe_settings_have_one_set_of_defaults():
    """dft/qe/settings.py keeps no defaults of its own: what it fills in is the default spec's."""
    from fw_screen.dft import qe
    from fw_screen.dft.qe import settings as qe_settings

    assert not hasattr(qe_settings, "DEFAULTS")
    resolved = qe.resolve_settings({})
    qe_defaults = default_spec().dft.qe
    for key, value in qe_defaults.items():
        if key not in ("pw_cmd", "mpi_cmd", "pseudo_dir"):  # resolved from the FWorker env / environment
            assert resolved[key] == value, key
    assert set(resolved) == set(qe_defaults)


def test_a_spec_stored_before_later_settings_loads_and_re_registers(store):
    """A campaign stored before the DFT-lite tier and keep_scratch existed: its spec loads with the values
    that reproduce what it did, and submitting to it again with an equal spec is accepted."""
    from fw_screen.spec import ADDED_SETTINGS

    old = load_spec(campaign="old", property={"method": "ml"}).to_dict()
    for dotted in ADDED_SETTINGS:
        *sections, key = dotted.split(".")
        node = old
        for part in sections:
            node = node[part]
        node.pop(key)
    store.campaigns.insert_one({"_id": "old", "spec": old, "next_seq": 0})
    loaded = store.campaign_spec("old")
    assert loaded.property.method == "ml" and loaded.uniqueness.matcher == "ordered"
    assert loaded.dft.qe.keep_scratch is False
    assert store.register_campaign(load_spec(campaign="old", property={"method": "ml"})) == loaded
    with pytest.raises(Exception, match="fields differ: batch_size"):
        store.register_campaign(load_spec(campaign="old", property={"method": "ml"}, batch_size=7))
