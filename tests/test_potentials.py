"""The potential registry: names, element coverage, offline loading, caching, the load-time self-check."""

from __future__ import annotations

import json

import pytest
from ase.calculators.calculator import Calculator, all_changes

from fw_screen.science import potentials
from fw_screen.science.potentials import POTENTIALS, PotentialError

#: the model folders shipped in the package (fw_screen/models): M3GNet runs on a fresh clone
MODELS = potentials.SHIPPED_MODEL_DIR
M3GNET_DIR = MODELS / potentials.M3GNET_FOLDER


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
    types = json.loads((M3GNET_DIR / "model.json").read_text())["kwargs"]["model"]["init_args"]["element_types"]
    assert POTENTIALS["m3gnet"]["elements"] == set(types)


def test_m3gnet_folder_ships_with_the_package():
    """The shipped folder is the one fw_screen/models/README.md describes, byte for byte (sha256)."""
    import hashlib
    import re

    readme = (MODELS / "README.md").read_text()
    block = readme.split(f"## {potentials.M3GNET_FOLDER}/", 1)[1].split("```", 2)[1]
    sums = dict(reversed(line.split()) for line in block.strip().splitlines())
    assert set(sums) == {"README.md", "model.json", "model.pt", "state.pt"}
    for name, digest in sums.items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert hashlib.sha256((M3GNET_DIR / name).read_bytes()).hexdigest() == digest, name


def test_m3gnet_is_found_without_settings(monkeypatch):
    """A fresh clone: no ml.model_dir, no $FW_SCREEN_MODEL_DIR -> the shipped folder."""
    monkeypatch.delenv(potentials.MODEL_DIR_ENV, raising=False)
    assert potentials.resolve_model_dir("m3gnet") == M3GNET_DIR.resolve()


def test_m3gnet_without_a_shipped_copy_names_the_setting(monkeypatch, tmp_path):
    monkeypatch.delenv(potentials.MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(potentials, "SHIPPED_MODEL_DIR", tmp_path)   # an installation that lost the files
    with pytest.raises(PotentialError, match=r"lacks the shipped copy.*ml.model_dir.*FW_SCREEN_MODEL_DIR"):
        potentials.get_calculator("m3gnet")


def test_model_dir_settings_override_the_shipped_folder(monkeypatch, tmp_path):
    """$FW_SCREEN_MODEL_DIR and ml.model_dir win over the shipped copy; one without the folder is an error,
    never a silent fall-back to the shipped copy."""
    other = tmp_path / "mine" / potentials.M3GNET_FOLDER
    other.mkdir(parents=True)
    monkeypatch.setenv(potentials.MODEL_DIR_ENV, str(other.parent))
    assert potentials.resolve_model_dir("m3gnet") == other.resolve()
    monkeypatch.setenv(potentials.MODEL_DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(PotentialError, match="no model folder M3GNet-MP-2021.2.8-PES"):
        potentials.resolve_model_dir("m3gnet")
    assert potentials.resolve_model_dir("m3gnet", other) == other.resolve()      # ml.model_dir wins over the env


def test_m3gnet_wrong_model_dir(tmp_path):
    with pytest.raises(PotentialError, match="no model folder M3GNet-MP-2021.2.8-PES"):
        potentials.get_calculator("m3gnet", tmp_path)


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


# ------------------------------------------------------------------------------------------ M3GNet (DGL-era weights)
@pytest.fixture(scope="module")
def m3gnet():
    import torch

    torch.set_num_threads(1)
    return potentials.get_calculator("m3gnet", M3GNET_DIR)


def test_dgl_era_checkpoint_detection(tmp_path):
    import torch

    assert not potentials.is_dgl_era_checkpoint(tmp_path)                   # no state.pt
    torch.save({"model.embedding.weight": torch.zeros(2)}, tmp_path / "state.pt")
    assert not potentials.is_dgl_era_checkpoint(tmp_path)
    torch.save({"element_refs.property_offset": torch.zeros(2), "element_refs.onehot": torch.eye(2)},
               tmp_path / "state.pt")
    assert potentials.is_dgl_era_checkpoint(tmp_path)
    assert potentials.is_dgl_era_checkpoint(M3GNET_DIR)


def test_m3gnet_lif_energy(m3gnet):
    """Loaded through get_calculator (so the self-check passed): LiF -4.832 eV/atom, MP raw GGA -4.85."""
    from ase.build import bulk

    atoms = bulk("LiF", "rocksalt", a=4.03)
    atoms.calc = m3gnet
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(-4.83, abs=0.1)


def test_m3gnet_nacl_lattice_constant(m3gnet):
    """E(a) of rock-salt NaCl has its minimum at the model README's 5.6913 A (not beyond 6.2 A, as without the
    DGL aggregation)."""
    import numpy as np
    from ase.build import bulk

    lattice = np.linspace(5.51, 5.87, 7)
    energies = []
    for a in lattice:
        atoms = bulk("NaCl", "rocksalt", a=a)
        atoms.calc = m3gnet
        energies.append(atoms.get_potential_energy() / len(atoms))
    assert 0 < int(np.argmin(energies)) < len(lattice) - 1, energies     # a minimum inside the scan
    c2, c1, _ = np.polyfit(lattice, energies, 2)
    assert -c1 / (2 * c2) == pytest.approx(5.69, rel=0.01)


def test_m3gnet_without_dgl_aggregation_is_refused():
    """matgl 4's own aggregation on the DGL-era weights: the self-check refuses it (LiF +1.07 eV/atom); the
    same model object passes once use_dgl_node_aggregation has changed its 3 graph convolutions."""
    import torch
    from matgl.ext.ase import PESCalculator

    torch.set_num_threads(1)
    broken = potentials.load_matgl_calculator(M3GNET_DIR, dgl_aggregation=False)
    with pytest.raises(PotentialError, match=r"self-check.*LiF at 1\.0"):
        potentials.self_check("m3gnet", broken)
    model = broken.potential
    assert potentials.use_dgl_node_aggregation(model) == 3
    assert potentials.use_dgl_node_aggregation(model) == 0                  # idempotent
    fixed = PESCalculator(model, stress_unit="eV/A3")
    assert potentials.self_check("m3gnet", fixed) == pytest.approx(-4.83, abs=0.1)
