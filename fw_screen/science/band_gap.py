"""Funnel stage 5 (ML half) — property: an ML band gap, compared with the generator's target.

* A band-gap model is any object with ``name`` (str) and ``predict(structure) -> float`` (eV, raw, may be
  negative).  :data:`BAND_GAP_MODELS` maps names to loaders; :func:`register_band_gap_model` adds one;
  :func:`load_band_gap_model` takes a registered name or a path to a matgl model folder (the spec's
  ``property.band_gap_model``) and caches the loaded model per process and device (``device``: an
  ``ml.device`` value, resolved by :func:`fw_screen.science.potentials.resolve_device`, as the potentials are).
* ``megnet-mfi`` is the bundled multi-fidelity MEGNet of matgl (``fw_screen/models/``, BSD-3; state 0 = PBE,
  1 = GLLB-SC, 2 = HSE, 3 = SCAN).  It is size-intensive (a supercell predicts what its primitive cell
  does) and weak on small gaps: Si comes out at ~0 eV at the PBE fidelity.  It was trained with DGL-era matgl,
  which averaged edges onto the other end than matgl 4 does; it is loaded with the DGL rule restored
  (:func:`use_dgl_edge_aggregation`; MAE against MP PBE gaps of 17 textbook solids 1.40 -> 0.83 eV).
  Oxides and nitrides stay poor even so (MgO 0.3 eV, PBE 4.45).
* :func:`predict_band_gap` clips negative predictions to 0 and keeps the raw value.
* :func:`target_hits` compares a prediction with the candidate's decoded ``targets`` (see
  :func:`fw_screen.science.ingest.decode_conditions`): band gap within a tolerance (CrystaLLM-pi: 0.5 eV) and
  stability (``e_above_hull`` at or below a threshold).  Missing inputs give ``hit: None`` and a reason,
  never a guessed number.
* :func:`yields` is the reference implementation of the campaign rates V, VU, VUN, VSUN and the target-hit
  rates, from plain per-candidate dicts.

No database, no FireWorks: structures and dicts in, numbers and dicts out.  Measured on the 2-core
development machine with one torch thread: load 0.12 s (plus ~4 s to import torch and matgl), 3-4 ms per
prediction for 2-8 site cells, ~10 ms for 40-site cells.  Callers running several workers per machine
should call ``torch.set_num_threads(1)`` in each: with the cores busy, two threads made each prediction
~100x slower (0.55 s instead of 6 ms) in the same measurement.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

#: the bundled model folders
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"  # fw_screen/models
MEGNET_MFI_DIR = MODELS_DIR / "MEGNet-MP-2019.4.1-BandGap-mfi"

#: spec settings named in error messages
MODEL_SETTING = "property.band_gap_model"
FIDELITY_SETTING = "property.band_gap_fidelity"

#: the files of a matgl model folder
MATGL_FILES = ("model.json", "model.pt", "state.pt")

#: slack on the band-gap tolerance, so a difference of exactly the tolerance (e.g. 1.181 - 0.681 eV, which is
#: 0.49999999999999994 or 0.5000000000000001 in binary) is a hit, as |p - t| <= tol intends
HIT_EPS = 1e-9


class PropertyError(RuntimeError):
    """The band-gap model cannot be loaded, or cannot predict for this structure (message says which)."""


class BandGapModel(Protocol):
    name: str

    def predict(self, structure) -> float:  # pragma: no cover - protocol
        """Raw band gap in eV (may be slightly negative)."""
        ...


# ------------------------------------------------------------------------------------- matgl models
class _GraphsOn:
    """matgl's ``Structure2Graph`` whose graph and lattice land on ``device`` (matgl's MEGNet
    ``predict_structure`` builds them on the CPU and does not move them to the model)."""

    def __init__(self, element_types, cutoff: float, device: str):
        from matgl.ext.pymatgen import Structure2Graph

        self.converter = Structure2Graph(element_types=tuple(element_types), cutoff=cutoff)
        self.device = device

    def get_graph(self, structure):
        g, lat, state = self.converter.get_graph(structure)
        return g.to(self.device), lat.to(self.device), state


class MatglBandGapModel:
    """A matgl band-gap model (e.g. MEGNet-mfi) at one fidelity, on one device (``"cpu"`` / ``"cuda"``)."""

    def __init__(self, module, name: str, path: Path, fidelity: int | None, device: str = "cpu"):
        self.module = module
        self.name = name
        self.path = path
        self.fidelity = fidelity
        self.device = device
        inner = getattr(module, "model", module)      # TransformedTargetModel wraps the network
        self._element_order = tuple(getattr(inner, "element_types", ()) or ())
        self.element_types = frozenset(self._element_order)
        self.cutoff = getattr(inner, "cutoff", None)

    def __repr__(self) -> str:
        return (f"MatglBandGapModel(name={self.name!r}, fidelity={self.fidelity!r}, device={self.device!r}, "
                f"path='{self.path}')")

    def predict(self, structure) -> float:
        import torch

        if not structure.is_ordered:
            raise PropertyError("disordered structure (partial occupancies): the band-gap model needs one "
                                "element per site")
        if len(structure) == 0:
            raise PropertyError("empty structure")
        if self.element_types:
            unknown = sorted({el.symbol for el in structure.composition.elements} - self.element_types)
            if unknown:
                raise PropertyError(f"element(s) {', '.join(unknown)} not among the {len(self.element_types)} "
                                    f"elements of band-gap model {self.name!r}")
        state = None if self.fidelity is None else torch.tensor([self.fidelity], device=self.device)
        kwargs = {}
        if self._element_order and self.cutoff:  # the graph on the model's device (a no-op on the CPU)
            kwargs["graph_converter"] = _GraphsOn(self._element_order, self.cutoff, self.device)
        try:
            with torch.no_grad():
                out = self.module.predict_structure(structure, state_attr=state, **kwargs)
        except Exception as exc:
            raise PropertyError(f"band-gap model {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        value = float(out.reshape(-1)[0])
        if not math.isfinite(value):
            cut = f" {self.cutoff:g} A" if self.cutoff else ""
            raise PropertyError(f"band-gap model {self.name!r} returned {value} (no neighbour within its{cut} "
                                f"cutoff?)")
        return value


# ------------------------------------------------------------------------- DGL-era MEGNet checkpoints
#: sha256 of the ``state.pt`` of MEGNet checkpoints trained with DGL-era matgl (the bundled one; the sums of
#: every bundled file are listed in ``fw_screen/models/README.md``)
DGL_ERA_MEGNET_STATES = {
    "2927ab9646ec3e099a3e42b1358a3c477db7356e2413bfa540fe0106cde628f9": "MEGNet-MP-2019.4.1-BandGap-mfi",
}


def is_dgl_era_megnet(folder: str | Path) -> bool:
    """Is the ``state.pt`` in ``folder`` one of :data:`DGL_ERA_MEGNET_STATES`?

    MEGNet checkpoints carry no marker of the matgl version that wrote them (same keys, same ``@model_version``
    under DGL and PyG matgl), so the known DGL-era ones are recognised by their weights' checksum.
    """
    state = Path(folder) / "state.pt"
    if not state.is_file():
        return False
    return hashlib.sha256(state.read_bytes()).hexdigest() in DGL_ERA_MEGNET_STATES


def _megnet_node_update_onto_dst(self, edge_index, edge_feat, node_feat, u_per_node, num_nodes):
    """``MEGNetGraphConv.node_update_`` of matgl 4.1.2 with the DGL-era aggregation: each atom averages the
    updated features of the edges that point *to* it (matgl 4.1.2 averages those that start from it)."""
    import torch
    from matgl.utils.maths import scatter_mean

    ve = scatter_mean(edge_feat, edge_index[1], dim_size=num_nodes, dim=0)
    return self.node_func(torch.hstack([node_feat, ve, u_per_node]))


def use_dgl_edge_aggregation(module) -> int:
    """Make the MEGNet graph convolutions of ``module`` average edges onto their destination atom, as the
    DGL-era matgl the bundled band-gap model was trained with did.  Returns the number of layers changed.

    Root cause: DGL-era matgl (``matgl/layers/_graph_convolution.py``, ``MEGNetGraphConv.node_update_``)
    aggregated the updated edge features with ``graph.update_all(fn.copy_e("e", "e"), fn.mean("e", "ve"))``,
    i.e. onto the **destination** atom of every edge.  matgl 4.1.2 (PyG only, same file,
    ``MEGNetGraphConv.node_update_``, ~line 271: ``scatter_mean(edge_feat, src, ...)``, "post-#761" convention)
    averages them onto the **source** atom.  The edge features ``phi_e([v_src, v_dst, e, u])`` are not symmetric
    in src and dst, so for compounds every atom then reads its neighbours' view of the bonds.  Elemental crystals
    whose bonds are all inversion-symmetric (Si, Cu, Al) give identical numbers either way.  Measured on 17
    textbook solids against MP PBE gaps: MAE 1.40 eV as loaded, 0.83 eV with the DGL rule (NaCl 4.59 -> 5.03,
    LiF 4.23 -> 6.46, Li2O 0.12 -> 3.43, CsCl 2.86 -> 5.22 eV).  The same change fixes M3GNet
    (:func:`fw_screen.science.potentials.use_dgl_node_aggregation`).

    Only the instances in ``module`` change (the matgl class is untouched); a second call changes nothing.
    Apply it only to DGL-era checkpoints (:func:`is_dgl_era_megnet`).
    """
    from matgl.layers._graph_convolution import MEGNetGraphConv

    from fw_screen.science.potentials import rebind_node_update

    return rebind_node_update(module, MEGNetGraphConv, _megnet_node_update_onto_dst, "_fw_dgl_edge_aggregation")


_LOCK = threading.RLock()
_MATGL_MODULES: dict[str, Any] = {}   # resolved folder, aggregation, device -> torch module (shared by fidelities)
_LOADED: dict[tuple[str, int | None, str], Any] = {}   # (name or path, fidelity, device) -> model object


def _device(setting: str | None) -> str:
    from fw_screen.science.potentials import resolve_device

    return resolve_device(setting)


def _to_device(module, device: str):
    """``module`` with its parameters and its target transformer's tensors (if any) on ``device``."""
    import torch

    module = module.to(device)
    transformer = getattr(module, "transformer", None)
    for attr in ("mean", "std"):
        value = getattr(transformer, attr, None)
        if isinstance(value, torch.Tensor):
            setattr(transformer, attr, value.to(device))
    return module


def _state_types(module) -> int | None:
    """Number of fidelities (state types) a matgl model embeds, None when it takes no state."""
    import torch

    inner = getattr(module, "model", module)
    if not getattr(inner, "include_state_embedding", True):
        return None
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Embedding) and "state" in name:
            return sub.num_embeddings
    return None


def load_matgl_band_gap_model(path: str | Path, fidelity: int | None = 0, name: str | None = None,
                              dgl_aggregation: bool | None = None, device: str | None = "auto") -> MatglBandGapModel:
    """Load a matgl model folder (``model.json``, ``model.pt``, ``state.pt``) from disk only.

    Never downloads: matgl would try the Hugging Face Hub for a missing ``owner/name`` path, so the folder is
    checked here first.  ``fidelity`` is the state index of a multi-fidelity model (ignored, stored as None,
    for a model without state).  ``dgl_aggregation``: restore the DGL-era edge aggregation
    (:func:`use_dgl_edge_aggregation`); None (default) does so for the known DGL-era checkpoints
    (:func:`is_dgl_era_megnet`), False loads the checkpoint as stock matgl does (for comparisons).
    ``device``: an ``ml.device`` value (``auto`` / ``cpu`` / ``cuda``, :func:`fw_screen.science.potentials.resolve_device`;
    ``cuda`` without a CUDA device raises its ``DeviceError``).  The torch module is cached per folder,
    aggregation and device.
    """
    device = _device(device)
    folder = Path(path).expanduser()
    label = name or str(path)
    missing = [f for f in MATGL_FILES if not (folder / f).is_file()]
    if not folder.is_dir() or missing:
        what = "no such folder" if not folder.is_dir() else f"missing {', '.join(missing)}"
        raise PropertyError(f"{MODEL_SETTING}: no matgl model folder at '{folder}' ({what}; a model folder holds "
                            f"{', '.join(MATGL_FILES)})")
    if dgl_aggregation is None:
        dgl_aggregation = is_dgl_era_megnet(folder)
    key = f"{folder.resolve()}|dgl={bool(dgl_aggregation)}|{device}"
    with _LOCK:
        module = _MATGL_MODULES.get(key)
        if module is None:
            try:
                import matgl
                import torch
                from matgl.data.transformer import Normalizer

                # matgl 4 + torch >= 2.6: model.pt pickles the target Normalizer, which torch.load's
                # weights_only default refuses unless allow-listed
                with warnings.catch_warnings(), torch.serialization.safe_globals([Normalizer]):
                    warnings.filterwarnings("ignore", message=".*[Ii]ncompatible model version.*")
                    module = matgl.load_model(folder)
                module = _to_device(module, device)
                module.eval()
                if dgl_aggregation:
                    use_dgl_edge_aggregation(module)
            except Exception as exc:
                cause = exc.__cause__ or exc
                raise PropertyError(f"{MODEL_SETTING}: cannot load the matgl model at '{folder}': "
                                    f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
                                    ) from exc
            if not hasattr(module, "predict_structure"):
                raise PropertyError(f"{MODEL_SETTING}: the model at '{folder}' ({type(module).__name__}) has no "
                                    f"predict_structure; expected a matgl property model such as MEGNet")
            _MATGL_MODULES[key] = module
    n_states = _state_types(module)
    if n_states is None:
        fidelity = None
    elif fidelity is None or not (0 <= int(fidelity) < n_states):
        raise PropertyError(f"{FIDELITY_SETTING}: {fidelity!r} is not a state of {label!r} "
                            f"(it has states 0..{n_states - 1})")
    else:
        fidelity = int(fidelity)
    return MatglBandGapModel(module, label, folder, fidelity, device)


def _load_megnet_mfi(fidelity: int | None = 0, device: str = "cpu") -> MatglBandGapModel:
    return load_matgl_band_gap_model(MEGNET_MFI_DIR, fidelity=fidelity, name="megnet-mfi", device=device)


def _takes_device(loader: Callable[..., Any]) -> bool:
    import inspect

    try:
        params = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "device" or p.kind is p.VAR_KEYWORD for p in params)


# ------------------------------------------------------------------------------------------ registry
#: name -> loader; a loader is called as ``loader(fidelity=...)`` (and ``device="cpu"|"cuda"`` when it takes a
#: ``device`` keyword) and returns an object with ``name`` and ``predict(structure) -> float`` (eV)
BAND_GAP_MODELS: dict[str, Callable[..., Any]] = {"megnet-mfi": _load_megnet_mfi}


def register_band_gap_model(name: str, loader: Callable[..., Any]) -> None:
    """Make ``property.band_gap_model: NAME`` load with ``loader(fidelity=...)`` (replaces an earlier entry)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a band-gap model needs a non-empty name")
    if not callable(loader):
        raise TypeError(f"loader for {name!r} is not callable")
    with _LOCK:
        BAND_GAP_MODELS[name] = loader
        for key in [k for k in _LOADED if k[0] == name]:
            del _LOADED[key]


def clear_band_gap_model_cache() -> None:
    """Forget every loaded model (the next :func:`load_band_gap_model` loads from disk again)."""
    with _LOCK:
        _LOADED.clear()
        _MATGL_MODULES.clear()


def load_band_gap_model(name_or_path: str | Path, fidelity: int | None = 0, device: str | None = "auto"):
    """The model named by ``property.band_gap_model``: a registered name, else a matgl model folder path, on
    ``device`` (an ``ml.device`` value: ``auto`` / ``cpu`` / ``cuda``).

    Cached per process, fidelity and device.  Raises :class:`PropertyError` naming the setting when the name
    is unknown or the folder is missing or unloadable, and
    :class:`fw_screen.science.potentials.DeviceError` for ``cuda`` without a CUDA device.
    """
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise PropertyError(f"{MODEL_SETTING}: expected a model name ({', '.join(sorted(BAND_GAP_MODELS))}) or a "
                            f"folder path, got {name_or_path!r}")
    device = _device(device)
    key = (str(name_or_path), fidelity, device)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        if isinstance(name_or_path, str) and name_or_path in BAND_GAP_MODELS:
            loader = BAND_GAP_MODELS[name_or_path]
            try:
                model = loader(fidelity=fidelity, device=device) if _takes_device(loader) else loader(fidelity=fidelity)
            except PropertyError:
                raise
            except Exception as exc:
                raise PropertyError(f"{MODEL_SETTING}: loading {name_or_path!r} failed: "
                                    f"{type(exc).__name__}: {exc}") from exc
        else:
            folder = Path(name_or_path).expanduser()
            if not folder.exists():
                raise PropertyError(f"{MODEL_SETTING}: {str(name_or_path)!r} is neither a registered model "
                                    f"({', '.join(sorted(BAND_GAP_MODELS))}) nor an existing matgl model folder")
            model = load_matgl_band_gap_model(folder, fidelity=fidelity, name=str(name_or_path), device=device)
        _LOADED[key] = model
        return model


# ------------------------------------------------------------------------------- measured model error
#: the band-gap models' errors against the DFT truth set (``tests/data/band_gap_truth``), written by
#: ``benchmarks/bench_band_gap.py --write``: {"<name>@<fidelity>": {"mae", "mean_signed_error", "n", ...}}
MODEL_ERRORS_FILE = MODELS_DIR / "band_gap_errors.json"


def model_key(name: str, fidelity: int | None) -> str:
    """The key of a model in :data:`MODEL_ERRORS_FILE`: ``megnet-mfi@0``; ``dft_lite`` for the DFT-lite tier."""
    return name if fidelity is None else f"{name}@{fidelity}"


@functools.lru_cache(maxsize=1)
def _model_errors() -> dict:
    import json

    if not MODEL_ERRORS_FILE.is_file():
        return {}
    return json.loads(MODEL_ERRORS_FILE.read_text()).get("models", {})


def model_error(name: str, fidelity: int | None = None) -> dict | None:
    """The measured error of a band-gap model against the DFT truth set (``mae``, ``mean_signed_error``,
    ``n``, ``by_class``, ``hit_agreement``, ``truth_set``), or None when it was never measured (a model
    folder of the user's: its predictions are shown as unmeasured)."""
    return _model_errors().get(model_key(name, fidelity))


def hit_tolerance(pcfg: dict, mae: float | None) -> float:
    """The band-gap tolerance of a target hit: ``property.band_gap_tolerance``, widened by the model's
    measured MAE when ``property.widen_tolerance_by_model_error`` is true (and the model was measured)."""
    tol = float(pcfg["band_gap_tolerance"])
    if pcfg.get("widen_tolerance_by_model_error") and mae is not None:
        tol += float(mae)
    return tol


# ---------------------------------------------------------------------------------------- prediction
def predict_band_gap(structure, model) -> dict:
    """``{"band_gap": eV clipped at 0, "band_gap_raw": eV, "model": name, "fidelity": state or None,
    "model_error": MAE in eV against the DFT truth set or None (:func:`model_error`)}``.

    ``model`` is a loaded model or a name/path for :func:`load_band_gap_model` (fidelity 0).  Raises
    :class:`PropertyError` when the model cannot predict for this structure (unknown element, partial
    occupancy, no neighbours within the cutoff).
    """
    if isinstance(model, (str, Path)):
        model = load_band_gap_model(model)
    raw = float(model.predict(structure))
    if not math.isfinite(raw):
        raise PropertyError(f"band-gap model {getattr(model, 'name', model)!r} returned {raw}")
    name = str(getattr(model, "name", type(model).__name__))
    fidelity = getattr(model, "fidelity", None)
    measured = model_error(name, fidelity)
    return {"band_gap": max(raw, 0.0), "band_gap_raw": raw, "model": name, "fidelity": fidelity,
            "model_error": None if measured is None else measured["mae"]}


# ------------------------------------------------------------------------------------------- targets
def as_number(value) -> float | None:
    """A finite float, or None for None / NaN / non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _target_value(targets: dict | None, name: str) -> tuple[float | None, str | None]:
    """A decoded target's value in physical units, or None and why."""
    if not targets or name not in targets or targets[name] is None:
        return None, f"no {name} target (no condition vector, or it does not name {name})"
    entry = targets[name]
    if isinstance(entry, dict):
        value = as_number(entry.get("value"))
        if value is None:
            return None, (f"{name} target {entry.get('normalised')!r} could not be decoded to "
                          f"{entry.get('unit') or 'physical units'}")
        return value, None
    value = as_number(entry)
    return (value, None) if value is not None else (None, f"{name} target {entry!r} is not a number")


def target_hits(band_gap: float | None, e_above_hull: float | None, targets: dict | None,
                tolerance: float = 0.5, stability_threshold: float = 0.1, model_error: float | None = None,
                source: str | None = None) -> dict:
    """Does the candidate meet its targets?

    Returns ``{"band_gap": {"target", "predicted", "error", "tolerance", "hit"[, "reason"]},
    "stability": {"e_above_hull", "threshold", "target", "hit"[, "reason"]}}``:

    * band gap: ``error = predicted - target`` (eV), ``hit = |error| <= tolerance`` (CrystaLLM-pi's definition,
      0.5 eV; :data:`HIT_EPS` of slack for binary round-off at the boundary).  ``predicted`` is the clipped
      band gap of :func:`predict_band_gap`.
    * stability: ``hit = e_above_hull <= stability_threshold`` (eV/atom); ``target`` is the generator's hull
      target (CrystaLLM-pi asks for 0.0), reported only.
    * a missing target or prediction gives ``hit: None`` and a ``reason``; nothing is guessed.
    * ``model_error`` (the predictor's measured MAE, eV) and ``source`` (``ml`` / ``dft_lite`` / ``dft``) are
      recorded next to the verdict; ``tolerance`` is the one applied (see :func:`hit_tolerance`).
    """
    t, t_reason = _target_value(targets, "band_gap")
    p = as_number(band_gap)
    gap: dict = {"target": t, "predicted": p, "error": None, "tolerance": tolerance, "hit": None,
                 "model_error": model_error, "source": source}
    reasons = [t_reason] if t_reason else []
    if p is None:
        reasons.append("no band-gap prediction")
    if reasons:
        gap["reason"] = "; ".join(reasons)
    else:
        gap["error"] = p - t
        gap["hit"] = abs(p - t) <= tolerance + HIT_EPS

    e = as_number(e_above_hull)
    hull_target, _ = _target_value(targets, "e_above_hull")
    stab: dict = {"e_above_hull": e, "threshold": stability_threshold, "target": hull_target, "hit": None}
    if e is None:
        stab["reason"] = "no e_above_hull (stability stage not run, failed or skipped)"
    else:
        stab["hit"] = e <= stability_threshold
    return {"band_gap": gap, "stability": stab}
