"""The potential registry: names, element coverage, offline loading, caching, the load-time self-check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ase.calculators.calculator import Calculator, all_changes

from fw_screen import potentials
from fw_screen.potentials import POTENTIALS, PotentialError

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "models"


def test_every_potential_declares_scale_and_elements():
    assert set(POTENTIALS) == {"chgnet", "sevennet-0", "sevennet-l3i5", "m3gnet"}
    for name, info in POTENTIALS.items():
        assert info["energy_scale"] in potentials.ENERGY_SCALES, name
        assert {"H", "Li", "O", "Fe", "U"} <= info["elements"], name
    assert potentials.energy_scale("chgnet") == "mp2020"
    assert {potentials.energy_scale(n) for n in ("sevennet-0", "sevennet-l3i5", "m3gnet")} == {"gga"}


def test_unknown_potential_names_the_choices():
    with pytest.raises(PotentialError, match="chgnet.*sevennet-0.*ml.potential"):
        potentials.get_calculator("mace-mp-0")


def test_unsupported_elements():
    from pymatgen.core import Composition
    assert potentials.unsupported_elements("chgnet", ["Li", "Co", "O"]) == []
    assert potentials.unsupported_elements("chgnet", Composition("CfO2")) == ["Cf"]
    assert potentials.unsupported_elements("sevennet-0", ["Po", "Rn", "Na"]) == ["Po", "Rn"]
    assert potentials.unsupported_elements("chgnet", ["Po"]) == []


def test_element_sets_match_the_models():
    """The declared coverage is the models' own (so a check never loads a model)."""
    from chgnet.model import CHGNet
    from ase.data import chemical_symbols
    from sevenn.calculator import SevenNetCalculator

    width = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False).composition_model.fc.in_features
    assert POTENTIALS["chgnet"]["elements"] == set(chemical_symbols[1:width + 1])
    sevennet = SevenNetCalculator("7net-0", device="cpu")
    assert POTENTIALS["sevennet-0"]["elements"] == {chemical_symbols[z] for z in sevennet.type_map}
    model_json = MODELS / potentials.M3GNET_FOLDER / "model.json"
    if model_json.exists():
        types = json.loads(model_json.read_text())["kwargs"]["model"]["init_args"]["element_types"]
        assert POTENTIALS["m3gnet"]["elements"] == set(types)


def test_m3gnet_without_model_dir_names_the_setting(monkeypatch):
    monkeypatch.delenv(potentials.MODEL_DIR_ENV, raising=False)
    with pytest.raises(PotentialError, match=r"ml.model_dir.*FW_SCREEN_MODEL_DIR"):
        potentials.get_calculator("m3gnet")


def test_m3gnet_wrong_model_dir(tmp_path):
    with pytest.raises(PotentialError, match="no model folder M3GNet-MP-2021.2.8-PES"):
        potentials.get_calculator("m3gnet", tmp_path)


@pytest.mark.skipif(not MODELS.is_dir(), reason=f"no matgl model folders at {MODELS}")
def test_m3gnet_model_dir_is_found_from_parent_or_folder(monkeypatch):
    assert potentials.resolve_model_dir("m3gnet", MODELS).name == potentials.M3GNET_FOLDER
    assert potentials.resolve_model_dir("m3gnet", MODELS / potentials.M3GNET_FOLDER).name == potentials.M3GNET_FOLDER
    monkeypatch.setenv(potentials.MODEL_DIR_ENV, str(MODELS))
    assert potentials.resolve_model_dir("m3gnet").name == potentials.M3GNET_FOLDER
    assert potentials.resolve_model_dir("chgnet") is None


def test_calculator_is_loaded_once_per_process():
    a = potentials.get_calculator("chgnet")
    assert potentials.get_calculator("chgnet") is a


class _Constant(Calculator):
    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, e_per_atom):
        super().__init__()
        self.e = e_per_atom

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import numpy as np
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": self.e * len(atoms), "forces": np.zeros((len(atoms), 3)), "stress": np.zeros(6)}


def test_self_check_rejects_a_broken_model():
    with pytest.raises(PotentialError, match="self-check.*LiF at 1.070"):
        potentials.self_check("m3gnet", _Constant(1.07))
    assert potentials.self_check("chgnet", _Constant(-5.0)) == pytest.approx(-5.0)


def test_self_check_passes_for_chgnet():
    assert -5.3 < potentials.self_check("chgnet", potentials.get_calculator("chgnet")) < -4.8
