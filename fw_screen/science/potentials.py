"""Universal machine-learned interatomic potentials behind one interface: a name in, an ASE calculator out.

Funnel stage 4 (stability) relaxes every candidate with a universal potential trained on Materials Project
relaxation trajectories (MPtrj / MPF) and places its energy on the MP convex hull.  The models differ in
what *energy scale* they predict, and that decides how their energies meet the reference entries
(MP GGA/GGA+U energies with MP2020 corrections):

* ``"mp2020"``: CHGNet 0.3.0 was trained on MPtrj energies that already carry the MP2020 anion and
  GGA/GGA+U mixing corrections, so its energies compare directly with corrected MP entries.  Applying
  MP2020 again double-counts it (measured on MP oxides: ~-0.7 eV/atom).
* ``"gga"``: SevenNet-0, SevenNet-l3i5 and M3GNet-MP-2021.2.8 predict raw GGA/GGA+U total energies, so
  :func:`fw_screen.science.stability.ml_entry` applies ``MaterialsProject2020Compatibility`` to them.

Both claims are checked against MP entries in ``tests/test_stability.py`` (single points of stable MP
oxides land on MP's hull distance only with the right choice) and measured in
``benchmarks/bench_ml_accuracy.py``.

Every model here runs offline: CHGNet and SevenNet weights ship in their wheels; M3GNet is loaded from a
local matgl model folder, never downloaded: the one shipped in ``fw_screen/models`` unless ``ml.model_dir`` in
the spec or ``$FW_SCREEN_MODEL_DIR`` names another folder holding it.
Each model knows a fixed set of elements (:data:`POTENTIALS` ``elements``); a structure with any other
element is a recorded failure (:func:`unsupported_elements`), not a crash.

M3GNet-MP-2021.2.8 was trained with DGL-era matgl; matgl 4 (PyG) loads it but aggregates the node messages
onto the other end of each edge, which breaks every compound.  :func:`load_matgl_calculator` detects such
checkpoints and restores the DGL rule (:func:`use_dgl_node_aggregation`).  Every loaded model must pass a
rock-salt LiF energy check (:func:`self_check`) before it is used.

Every model runs on the device :func:`resolve_device` gives for the spec's ``ml.device`` (``auto``: CUDA when
torch sees one, else the CPU; ``cuda`` on a machine without one is a :class:`DeviceError`); the band-gap model
(:mod:`fw_screen.science.band_gap`) uses the same resolver.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ase.data import chemical_symbols

MODEL_DIR_ENV = "FW_SCREEN_MODEL_DIR"
M3GNET_FOLDER = "M3GNet-MP-2021.2.8-PES"
#: the model folders shipped in the package (fw_screen/models: M3GNet and the MEGNet band-gap model)
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models"

#: ``ml.device``: the spec's choices, and what they resolve to on a worker
DEVICES = ("auto", "cpu", "cuda")

#: Z 1-94 is CHGNet's AtomRef width; SevenNet and M3GNet know Z 1-94 except Po, At, Rn, Fr, Ra (84-88)
#: (read from the models' own type maps, and checked against them in tests/test_potentials.py)
_Z_1_94 = frozenset(chemical_symbols[1:95])
_Z_MPTRJ = frozenset(chemical_symbols[z] for z in range(1, 95) if z not in range(84, 89))

POTENTIALS: dict[str, dict] = {
    "chgnet": {
        "description": "CHGNet 0.3.0 (MPtrj), weights shipped in the chgnet wheel",
        "package": "chgnet",
        "energy_scale": "mp2020",
        "elements": _Z_1_94,
    },
    "sevennet-0": {
        "description": "SevenNet-0 (11Jul2024, MPtrj), weights shipped in the sevenn wheel",
        "package": "sevenn",
        "checkpoint": "7net-0",
        "energy_scale": "gga",
        "elements": _Z_MPTRJ,
    },
    "sevennet-l3i5": {
        "description": "SevenNet-l3i5 (MPtrj, lmax 3, 5 interaction layers), weights shipped in the sevenn wheel",
        "package": "sevenn",
        "checkpoint": "7net-l3i5",
        "energy_scale": "gga",
        "elements": _Z_MPTRJ,
    },
    "m3gnet": {
        "description": f"M3GNet universal potential (matgl {M3GNET_FOLDER}), from a local model folder",
        "package": "matgl",
        "folder": M3GNET_FOLDER,
        "energy_scale": "gga",
        "elements": _Z_MPTRJ,
    },
}

ENERGY_SCALES = ("mp2020", "gga")


class PotentialError(RuntimeError):
    """A potential cannot be used: unknown name, missing package or model files, failed load."""


class DeviceError(PotentialError):
    """``ml.device`` names a device this worker does not have (or is not a device name at all)."""


def cuda_available() -> bool:
    """Does torch see a CUDA device here?  False when torch is not installed."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(setting: str | None = "auto") -> str:
    """``"cpu"`` or ``"cuda"``: the device the ML models of this process run on, for the spec's ``ml.device``.

    ``auto`` (and None) is ``cuda`` when torch sees a CUDA device, else ``cpu``; ``cpu`` is the CPU; ``cuda``
    demands a CUDA device and raises :class:`DeviceError` when torch sees none (a CPU-only torch build, no
    driver, ``CUDA_VISIBLE_DEVICES`` empty), rather than silently running on the CPU.
    """
    setting = "auto" if setting is None else setting
    if setting not in DEVICES:
        raise DeviceError(f"ml.device: expected one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if setting == "cuda":
        try:
            import torch
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        except ImportError:
            build = "torch not installed"
        raise DeviceError(f"ml.device is cuda but torch sees no CUDA device on this worker ({build}): run the "
                          "ML Fireworks on a GPU worker, or set ml.device to auto or cpu")
    return "cpu"


def potential_info(name: str) -> dict:
    """The :data:`POTENTIALS` entry of ``name``; :class:`PotentialError` naming the choices otherwise."""
    try:
        return POTENTIALS[name]
    except KeyError:
        raise PotentialError(f"unknown potential {name!r}: choose one of {', '.join(POTENTIALS)} "
                             "(spec setting ml.potential)") from None


def energy_scale(name: str) -> str:
    """``"mp2020"`` (energies already MP2020-corrected) or ``"gga"`` (raw GGA/GGA+U, needs MP2020)."""
    return potential_info(name)["energy_scale"]


def unsupported_elements(name: str, elements) -> list[str]:
    """Sorted element symbols (of ``elements``: symbols, Elements, Species or a Composition) the model lacks."""
    known = potential_info(name)["elements"]
    symbols = {getattr(getattr(e, "element", e), "symbol", str(e)) for e in elements}
    return sorted(s for s in symbols if s not in known)


def resolve_model_dir(name: str, model_dir: str | os.PathLike | None = None) -> Path | None:
    """The model folder a local-file potential loads from: ``model_dir`` (the spec's ``ml.model_dir``), else
    ``$FW_SCREEN_MODEL_DIR``, else the folder shipped in ``fw_screen/models`` (:data:`SHIPPED_MODEL_DIR`).

    ``model_dir`` may be the folder holding the matgl model folder or that folder itself; a ``model_dir`` or
    ``$FW_SCREEN_MODEL_DIR`` without it is an error (never a silent fall-back to the shipped copy).  None for
    potentials whose weights ship in their package.
    """
    info = potential_info(name)
    folder = info.get("folder")
    if folder is None:
        return None
    base = model_dir if model_dir is not None else os.environ.get(MODEL_DIR_ENV)
    if not base:
        shipped = SHIPPED_MODEL_DIR / folder
        if shipped.is_dir():
            return shipped.resolve()
        raise PotentialError(f"potential {name!r} loads the matgl model folder {folder} from disk (no downloads "
                             f"at run time) and this installation lacks the shipped copy ({shipped}): set "
                             f"ml.model_dir in the spec or ${MODEL_DIR_ENV} to the folder that holds {folder}")
    base = Path(base).expanduser()
    for candidate in (base / folder, base):
        if candidate.name == folder and candidate.is_dir():
            return candidate.resolve()
    raise PotentialError(f"potential {name!r}: no model folder {folder} in {base} (set ml.model_dir in the spec "
                         f"or ${MODEL_DIR_ENV} to the folder that holds {folder}; nothing is downloaded)")


def _load(name: str, folder: Path | None, device: str = "cpu"):
    info = potential_info(name)
    package = info["package"]
    try:
        if package == "chgnet":
            from chgnet.model import CHGNet
            from chgnet.model.dynamics import CHGNetCalculator
            model = CHGNet.load(model_name="0.3.0", use_device=device, verbose=False)
            return CHGNetCalculator(model=model, use_device=device)
        if package == "sevenn":
            from sevenn.calculator import SevenNetCalculator
            return SevenNetCalculator(info["checkpoint"], device=device)
        if package == "matgl":
            return load_matgl_calculator(folder, device=device)
    except ImportError as exc:
        raise PotentialError(f"potential {name!r} needs the Python package {package!r}: {exc}") from exc
    except PotentialError:
        raise
    except Exception as exc:  # a failed load (missing weights, an attempted download offline, ...)
        hint = (f" (check ml.model_dir / ${MODEL_DIR_ENV}: {folder})" if folder else
                f" (its weights should ship in the {package} package; is the install complete?)")
        raise PotentialError(f"could not load potential {name!r}: {type(exc).__name__}: {exc}{hint}") from exc
    raise PotentialError(f"potential {name!r}: no loader for package {package!r}")


# ------------------------------------------------------------------------------------------ matgl / M3GNet
#: a key of the DGL AtomRef buffer, present only in the state.pt of checkpoints saved by DGL-era matgl (< 2.0)
DGL_ERA_STATE_KEY = "element_refs.onehot"


def is_dgl_era_checkpoint(folder: str | os.PathLike) -> bool:
    """Was the matgl model folder saved by DGL-era matgl?  Its ``state.pt`` then holds a key ending in
    :data:`DGL_ERA_STATE_KEY` (the DGL AtomRef one-hot buffer, the "unexpected key" matgl 4 reports on load)."""
    import torch

    state = Path(folder) / "state.pt"
    if not state.is_file():
        return False
    keys = torch.load(state, map_location="cpu", weights_only=True).keys()
    return any(k.endswith(DGL_ERA_STATE_KEY) for k in keys)


def _m3gnet_node_update_onto_dst(self, edge_index, edge_feat, node_feat, rbf, u_per_edge, num_nodes):
    """``M3GNetGraphConv.node_update_`` of matgl 4.1.2 with the DGL-era aggregation: the message of edge
    src -> dst is summed onto ``dst`` (matgl 4.1.2 sums it onto ``src``)."""
    import torch
    from matgl.utils.maths import scatter_add

    src, dst = edge_index[0], edge_index[1]
    parts = [node_feat[src], node_feat[dst], edge_feat]
    if self.include_state:
        parts.append(u_per_edge)
    mess = self.node_update_func(torch.hstack(parts)) * self.node_weight_func(rbf)
    return scatter_add(mess, dst, dim_size=num_nodes, dim=0)


def rebind_node_update(module, layer_cls, node_update, marker: str) -> int:
    """Bind ``node_update`` as ``node_update_`` of every ``layer_cls`` instance in ``module`` not yet marked
    with ``marker``; returns how many changed.  Instances only: the matgl class itself is untouched."""
    import types

    changed = 0
    for layer in module.modules():
        if isinstance(layer, layer_cls) and not getattr(layer, marker, False):
            layer.node_update_ = types.MethodType(node_update, layer)
            setattr(layer, marker, True)
            changed += 1
    return changed


def use_dgl_node_aggregation(model) -> int:
    """Make the M3GNet graph convolutions of ``model`` sum node messages onto the edge's destination atom, as
    the DGL-era matgl these checkpoints were trained with did.  Returns the number of layers changed.

    Root cause: DGL-era matgl (``matgl/layers/_graph_convolution.py``, ``M3GNetGraphConv.node_update_``,
    before the PyG port) computed the message ``phi([v_src, v_dst, e]) * W(rbf)`` of every edge src -> dst and
    aggregated it with ``graph.update_all(fn.copy_e("mess", "mess"), fn.sum("mess", "ve"))``, i.e. onto
    **dst**, so the atom being updated sits in the second node slot.  matgl 4.1.2 (PyG only,
    ``matgl/layers/_graph_convolution.py``, ``M3GNetGraphConv.node_update_``, ~line 502:
    ``scatter_add(mess, src, ...)``, "post-#761 aggregation convention") sums the same message onto **src**.
    It loads the old weights without complaint, but every node update then sees the neighbour where the
    weights expect the atom itself.  In one-element crystals whose bonds are all inversion-symmetric (Si, Ni)
    both rules give the same numbers; for compounds the energies are garbage (M3GNet-MP-2021.2.8-PES: LiF
    +1.07 eV/atom instead of -4.83).  With the DGL rule the model reproduces the lattice constants of its own
    README (NaCl 5.691, MgO 4.261, TiN 4.257 A) and LiF -4.83 eV/atom.

    Only the instances in ``model`` change (a bound method per layer; the matgl class is untouched), the
    weights are unchanged, and a second call changes nothing.  Apply it only to DGL-era checkpoints
    (:func:`is_dgl_era_checkpoint`): a model trained with matgl 4's own rule must keep it.
    """
    from matgl.layers._graph_convolution import M3GNetGraphConv

    return rebind_node_update(model, M3GNetGraphConv, _m3gnet_node_update_onto_dst, "_fw_dgl_node_aggregation")


def load_matgl_calculator(folder: str | os.PathLike, dgl_aggregation: bool | None = None, device: str = "cpu"):
    """An ASE calculator of the matgl potential in ``folder`` (loaded from disk only), on ``device``
    (``"cpu"`` / ``"cuda"``: matgl's ``Potential`` moves each graph to the device of its parameters).

    ``dgl_aggregation``: None (the default) applies :func:`use_dgl_node_aggregation` when the folder is a
    DGL-era checkpoint (:func:`is_dgl_era_checkpoint`); True / False force it on / off (tests).
    """
    import matgl
    from matgl.ext.ase import PESCalculator

    model = matgl.load_model(str(folder)).to(device)
    if dgl_aggregation is None:
        dgl_aggregation = is_dgl_era_checkpoint(folder)
    if dgl_aggregation:
        use_dgl_node_aggregation(model)
    # stresses in eV/A^3: FrechetCellFilter mixes them with forces (GPa would be 160x too stiff)
    return PESCalculator(model, stress_unit="eV/A3")


_CACHE: dict[tuple[str, str | None, str], object] = {}
_LOCK = threading.Lock()


def get_calculator(name: str, model_dir: str | os.PathLike | None = None, device: str | None = "auto"):
    """The ASE calculator of potential ``name`` on ``device`` (an ``ml.device`` value, :func:`resolve_device`),
    loaded once per process and device (later calls return the same object).

    Raises :class:`PotentialError` for an unknown name, a missing package or model folder, or a failed load,
    and :class:`DeviceError` for ``cuda`` without a CUDA device.
    """
    folder = resolve_model_dir(name, model_dir)
    device = resolve_device(device)
    key = (name, str(folder) if folder else None, device)
    with _LOCK:
        calc = _CACHE.get(key)
        if calc is None:
            calc = _load(name, folder, device)
            self_check(name, calc)
            _CACHE[key] = calc
        return calc


#: load-time canary: rock-salt LiF (a = 4.03 A), whose MP energy is -4.85 eV/atom raw GGA and -5.08 eV/atom
#: with MP2020; a potential outside this window is broken in this installation (e.g. M3GNet-MP-2021.2.8 under
#: matgl 4.1.2 gives +1.07 eV/atom for LiF, while its elemental energies are right, unless loaded with
#: :func:`use_dgl_node_aggregation`: -4.83)
SELF_CHECK_WINDOW = (-5.6, -4.4)


def self_check(name: str, calc) -> float:
    """Energy per atom of rock-salt LiF with ``calc``; :class:`PotentialError` if outside :data:`SELF_CHECK_WINDOW`."""
    from ase.build import bulk

    atoms = bulk("LiF", "rocksalt", a=4.03)
    atoms.calc = calc
    try:
        e = float(atoms.get_potential_energy()) / len(atoms)
    except Exception as exc:
        raise PotentialError(f"potential {name!r} failed its self-check (rock-salt LiF): {exc}") from exc
    lo, hi = SELF_CHECK_WINDOW
    if not (lo <= e <= hi):
        raise PotentialError(f"potential {name!r} failed its self-check: rock-salt LiF at {e:.3f} eV/atom, "
                             f"expected {lo} to {hi} (MP: -4.85 raw GGA, -5.08 with MP2020); the model or its "
                             "package version is broken in this installation, choose another ml.potential")
    return e


def clear_cache() -> None:
    """Forget loaded calculators (tests; a worker normally keeps them for its lifetime)."""
    with _LOCK:
        _CACHE.clear()
