"""ml.device (auto | cpu | cuda) and device-sized ML batches, tested on the CPU (no GPU on the development machine).

What runs here: the resolver, the spec check, the device string reaching every potential and the band-gap model
(real models, on the CPU and on torch's ``meta`` device, which needs no GPU), the ML stage handing the resolved
device to both, a ``cuda`` worker without CUDA fizzling its ML Firework with every candidate left ``novel``, and
the batch size chosen by device.  Nothing here ran on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fw_screen import state as st
from fw_screen.science import band_gap as prop
from fw_screen.science import potentials
from fw_screen.science.potentials import DeviceError
from fw_screen.spec import SpecError, as_spec, default_spec, load_spec

CUDA = potentials.cuda_available()
no_cuda = pytest.mark.skipif(CUDA, reason="this test needs a machine without CUDA")


def _devices(module) -> set[str]:
    return {p.device.type for p in module.parameters()}


def _model(calc):
    """The torch module behind an ASE calculator of :mod:`fw_screen.science.potentials`."""
    return getattr(calc, "model", None) or calc.potential


# ------------------------------------------------------------------------------------------ resolver
def test_resolve_device():
    assert potentials.resolve_device("cpu") == "cpu"
    assert potentials.resolve_device("auto") == ("cuda" if CUDA else "cpu")
    assert potentials.resolve_device(None) == potentials.resolve_device("auto")
    with pytest.raises(DeviceError, match="ml.device: expected one of auto, cpu, cuda, got 'gpu'"):
        potentials.resolve_device("gpu")


def test_auto_takes_cuda_when_torch_sees_it(monkeypatch):
    monkeypatch.setattr(potentials, "cuda_available", lambda: True)
    assert potentials.resolve_device("auto") == "cuda"
    assert potentials.resolve_device("cuda") == "cuda"
    assert potentials.resolve_device("cpu") == "cpu"


def test_cuda_without_cuda_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(potentials, "cuda_available", lambda: False)
    assert potentials.resolve_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="ml.device is cuda but torch sees no CUDA device.*auto or cpu"):
        potentials.resolve_device("cuda")
    with pytest.raises(DeviceError, match="no CUDA device"):      # at load time, before any model is built
        potentials.get_calculator("chgnet", device="cuda")
    with pytest.raises(DeviceError, match="no CUDA device"):
        prop.load_band_gap_model("megnet-mfi", 0, device="cuda")
    assert issubclass(DeviceError, potentials.PotentialError)


# ------------------------------------------------------------------------------------------ spec
def test_spec_ml_device():
    spec = default_spec()
    assert spec.ml.device == "auto" and spec.ml.batch_size_cuda >= spec.ml.batch_size
    assert load_spec(ml={"device": "cuda"}).ml.device == "cuda"
    for bad in ("gpu", "CUDA", "cuda:0", None, 1):
        with pytest.raises(SpecError, match=r"ml.device: expected auto, cpu or cuda, got"):
            load_spec(ml={"device": bad})
    with pytest.raises(SpecError, match=r"ml.batch_size_cuda: expected an integer >= 1, got 0"):
        load_spec(ml={"batch_size_cuda": 0})


def test_stored_spec_without_the_settings_gets_the_defaults():
    """An execution setting, not a science one: a campaign stored before it gets auto (the CPU on a worker
    without CUDA, as before) and still equals a resubmission with the default spec."""
    stored = default_spec().to_dict()
    for key in ("device", "batch_size_cuda"):
        del stored["ml"][key]
    spec = as_spec(stored)
    assert spec.ml.device == "auto" and spec.ml.batch_size_cuda == default_spec().ml.batch_size_cuda
    assert spec.to_dict() == default_spec().to_dict()


# ------------------------------------------------------------------------------------------ potentials
@pytest.mark.parametrize("name", ["chgnet", "sevennet-0", "m3gnet"])
def test_the_device_reaches_each_potential(name):
    """The device string given to the loader lands on the model's parameters: torch's meta device (shapes
    only, no memory, no GPU) stands in for cuda; then the ml.device default (auto) gives CPU parameters here."""
    torch.set_num_threads(1)
    calc = potentials._load(name, potentials.resolve_model_dir(name), "meta")
    assert _devices(_model(calc)) == {"meta"}
    if name != "sevennet-0":   # 18 s to load again on the 2-core machine; its CPU path is test_potentials' and test_stability's
        calc = potentials.get_calculator(name, device="auto")
        assert _devices(_model(calc)) == {"cuda" if CUDA else "cpu"}


def test_calculators_are_cached_per_device(monkeypatch):
    loads = []
    monkeypatch.setattr(potentials, "_load", lambda name, folder, device: loads.append(device) or object())
    monkeypatch.setattr(potentials, "self_check", lambda name, calc: -5.0)
    monkeypatch.setattr(potentials, "cuda_available", lambda: True)
    monkeypatch.setattr(potentials, "_CACHE", {})
    a = potentials.get_calculator("chgnet", device="cpu")
    b = potentials.get_calculator("chgnet", device="auto")        # -> cuda here
    assert potentials.get_calculator("chgnet", device="cuda") is b and a is not b
    assert loads == ["cpu", "cuda"]


# ------------------------------------------------------------------------------------------ band-gap model
def test_the_device_reaches_the_band_gap_model(monkeypatch):
    cpu = prop.load_band_gap_model("megnet-mfi", 0, device="auto")
    assert cpu.device == ("cuda" if CUDA else "cpu") and _devices(cpu.module) == {cpu.device}
    from pymatgen.core import Lattice, Structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with torch.no_grad():  # the graph moved to the model's device: the same number as matgl's own CPU path
        plain = float(cpu.module.predict_structure(nacl, state_attr=torch.tensor([0])).reshape(-1)[0])
    assert cpu.predict(nacl) == plain == pytest.approx(4.92, abs=0.01)
    real = prop._device
    monkeypatch.setattr(prop, "_device", lambda setting: "meta" if setting == "meta" else real(setting))
    meta = prop.load_band_gap_model("megnet-mfi", 0, device="meta")
    assert meta is not cpu and meta.device == "meta" and _devices(meta.module) == {"meta"}
    assert _devices(prop.load_band_gap_model("megnet-mfi", 0, device="auto").module) == {cpu.device}  # unchanged
    with prop._LOCK:  # drop the meta copies
        for key in [k for k in prop._LOADED if k[2] == "meta"]:
            del prop._LOADED[key]
        for key in [k for k in prop._MATGL_MODULES if k.endswith("|meta")]:
            del prop._MATGL_MODULES[key]


def test_registered_loaders_get_the_device_when_they_take_it(monkeypatch):
    class Constant:
        name, fidelity = "c", None

        def predict(self, structure):
            return 1.0

    seen = []
    prop.register_band_gap_model("device-test", lambda fidelity=0, device="cpu": seen.append(device) or Constant())
    prop.register_band_gap_model("no-device-test", lambda fidelity=0: seen.append("none") or Constant())
    try:
        prop.load_band_gap_model("device-test", 0, device="cpu")
        prop.load_band_gap_model("no-device-test", 0, device="cpu")
        assert seen == ["cpu", "none"]
    finally:
        prop.BAND_GAP_MODELS.pop("device-test")
        prop.BAND_GAP_MODELS.pop("no-device-test")


# ------------------------------------------------------------------------------------------ the ML stage
def test_the_stage_hands_the_resolved_device_to_potential_and_band_gap(store, spec, monkeypatch):
    """ml.device auto on a worker where torch sees CUDA (faked): the potential and the band-gap model are asked
    for cuda (and given CPU models, so the rest of the stage runs for real) and the result records it."""
    from pymatgen.core import Lattice, Structure

    from fw_screen.stages import load_references, stability_fields

    load_references(store, Path(__file__).resolve().parent.parent / "examples" /
                    "mp-elemental-reference-entries-2023-02-07.json.gz")
    asked = []
    real_calc, real_gap = potentials.get_calculator, prop.load_band_gap_model
    monkeypatch.setattr(potentials, "cuda_available", lambda: True)
    monkeypatch.setattr(potentials, "get_calculator",
                        lambda name, model_dir=None, device="auto": asked.append(("potential", device))
                        or real_calc(name, model_dir, "cpu"))
    monkeypatch.setattr(prop, "load_band_gap_model",
                        lambda name, fidelity=0, device="auto": asked.append(("band_gap", device))
                        or real_gap(name, fidelity, "cpu"))
    na = Structure(Lattice.cubic(4.23), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    doc = {"_id": "t:na", "elements": ["Na"], "structure_reduced": na.as_dict(), "targets": {}}
    status, fields = stability_fields(doc, spec, store)
    assert status == st.ML_DONE, fields["ml"].get("reason")
    assert fields["ml"]["device"] == "cuda"
    assert asked == [("potential", "cuda"), ("band_gap", "cuda")]
    asked.clear()
    _, fields = stability_fields(doc, spec, store, "cpu")            # what run_stability resolved
    assert fields["ml"]["device"] == "cpu" and asked == [("potential", "cpu"), ("band_gap", "cpu")]


def test_ml_batches_sized_by_device(store, monkeypatch):
    from fw_screen.stages.stability import ml_batch_size

    for device, expected in (("auto", 3), ("cpu", 3), ("cuda", 7)):
        spec = load_spec(campaign="test", ml={"device": device, "batch_size": 3, "batch_size_cuda": 7})
        assert ml_batch_size(spec) == expected
    # the planner puts relaxable candidates into batches of that size
    from fw_screen.stages.stability import plan_ml_batches

    spec = load_spec(campaign="test", ml={"device": "cuda", "batch_size": 3, "batch_size_cuda": 7})
    from fw_screen.stages import hulls

    calls = []
    monkeypatch.setattr(store, "assign_ml_batches", lambda campaign, ids, size, prefix: calls.append(
        (len(ids), size)) or [])
    monkeypatch.setattr(store, "candidates_for", lambda *a, **k: [])
    monkeypatch.setattr(hulls, "relaxable", lambda store_, elements: list(elements))   # all relaxable
    plan_ml_batches(store, "test", [f"c{i}" for i in range(20)], spec)
    assert calls == [(20, 7), (0, spec.batch_size)]      # relaxations by batch_size_cuda, band-gap-only by batch_size


@no_cuda
def test_a_cuda_worker_without_cuda_fizzles_and_keeps_every_candidate(launchpad, launchpad_file, store, spec,
                                                                       tmp_path):
    """The FWorker env's ml_device: cuda on this CPU-only machine: every ML Firework fizzles with the
    DeviceError, no candidate leaves ``novel`` (a rerun on a GPU worker, or with auto/cpu, picks them up)."""
    from fw_screen.orchestration.supervisor import launch_workers

    from tests.conftest import fworker_file, novel_ml_rows

    novel_ml_rows(launchpad, launchpad_file, store, spec, tmp_path)
    assert store.candidates.count_documents({"campaign": "test", "status": st.NOVEL}) == 4
    worker = fworker_file(tmp_path, launchpad_file, ["ml"], ml_device="cuda")
    launch_workers(str(launchpad_file), worker, 1, tmp_path / "ml", sleep=1)
    fws = list(launchpad.fireworks.find({"spec.stage": "stability"}))
    assert fws and {fw["state"] for fw in fws} == {"FIZZLED"}
    for fw in fws:
        launch = launchpad.launches.find_one({"launch_id": fw["launches"][-1]})
        trace = launch["action"]["stored_data"]["_exception"]["_stacktrace"]
        assert "DeviceError: ml.device is cuda but torch sees no CUDA device" in trace
    assert store.candidates.count_documents({"campaign": "test", "status": st.NOVEL}) == 4
    assert store.candidates.count_documents({"campaign": "test", "ml": {"$exists": True}}) == 0
