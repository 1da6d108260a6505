"""Reference predictions with the ORIGINAL DGL-era matgl (runs inside ``/work/main/.venv-ref`` only).

    .venv-ref/bin/python benchmarks/reference_env/compare_matgl.py STRUCTURES.json OUT.json

``STRUCTURES.json``: ``[{"id": str, "structure": Structure.as_dict()}, ...]`` (written by
``benchmarks/bench_matgl_port.py``).  ``OUT.json``: ``{"meta": {...}, "results": {id: {"gap": [s0, s1, s2, s3],
"energy_per_atom": eV, "forces": [[eV/A]*3]*n, "stress": [6 x eV/A^3, ASE Voigt order and sign]}}}``; a
quantity that raised is replaced by ``"<quantity>_error": "Type: message"``.

Environment: matgl 1.2.7 (the last DGL-only release) on dgl 2.1.0 and torch 2.13.0+cpu; see README.md.  dgl
2.1.0 ships ``libgraphbolt_pytorch_<ver>.so`` only for torch 2.0.0 .. 2.2.1, and ``import dgl`` loads it through
``dgl.distributed`` -> ``dgl.graphbolt``.  matgl never uses graphbolt (sampling/dataloading for huge graphs), so
this script puts a stub ``dgl.graphbolt`` module into ``sys.modules`` before ``import dgl``; nothing of dgl's
graph / message-passing code (``update_all``, ``apply_edges``, ``fn.copy_e``/``fn.mean``/``fn.sum``) is touched.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("DGLBACKEND", "pytorch")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402

from _records import err, pes_record  # noqa: E402  (this folder: both venvs)

_MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data", "models")
MEGNET_DIR = os.path.normpath(os.path.join(_MODELS, "MEGNet-MP-2019.4.1-BandGap-mfi"))
M3GNET_DIR = os.path.normpath(os.path.join(_MODELS, "M3GNet-MP-2021.2.8-PES"))
EV_PER_A3_PER_GPA = 1.0 / 160.21766208


def _stub_graphbolt() -> None:
    """A placeholder ``dgl.graphbolt``: importable, any class from it raises when instantiated."""
    if "dgl.graphbolt" in sys.modules:
        return
    stub = types.ModuleType("dgl.graphbolt")
    stub.__path__ = []  # a package, so "from dgl.graphbolt import x" resolves through __getattr__

    class _Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("dgl.graphbolt is not available in this reference environment (no "
                               "libgraphbolt for this torch); matgl does not need it")

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Unavailable,), {})

    stub.__getattr__ = __getattr__
    sys.modules["dgl.graphbolt"] = stub


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    _stub_graphbolt()
    import dgl
    import torch

    torch.set_num_threads(1)
    import matgl
    import matgl.data.transformer
    from matgl.ext.ase import PESCalculator
    from pymatgen.core import Structure

    # torch >= 2.6 loads with weights_only=True; model.pt of the band-gap model pickles a Normalizer
    torch.serialization.add_safe_globals([matgl.data.transformer.Normalizer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        megnet = matgl.load_model(MEGNET_DIR)
        pes = matgl.load_model(M3GNET_DIR)
    megnet.eval()
    calc = PESCalculator(pes, stress_unit="eV/A3")

    with open(argv[1]) as fh:
        items = json.load(fh)
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for item in items:
        sid = item["id"]
        rec: dict = {}
        try:
            s = Structure.from_dict(item["structure"])
        except Exception as exc:  # noqa: BLE001
            results[sid] = {"structure_error": err(exc)}
            continue
        try:
            with torch.no_grad():
                rec["gap"] = [float(megnet.predict_structure(s, state_attr=torch.tensor([i])).reshape(-1)[0])
                              for i in range(4)]
        except Exception as exc:  # noqa: BLE001
            rec["gap_error"] = err(exc)
        rec.update(pes_record(s, calc))
        results[sid] = rec
    meta = {
        "env": sys.prefix,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "dgl": dgl.__version__,
        "matgl": getattr(matgl, "__version__", None) or _dist_version("matgl"),
        "graphbolt": "stubbed (not importable for this torch)",
        "megnet_dir": MEGNET_DIR,
        "m3gnet_dir": M3GNET_DIR,
        "stress_unit": "eV/A3 (ASE sign and Voigt order)",
        "n_structures": len(items),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with open(argv[2], "w") as fh:
        json.dump({"meta": meta, "results": results}, fh)
    print(f"reference: {len(results)} structures in {meta['seconds']} s "
          f"(matgl {meta['matgl']}, dgl {meta['dgl']}, torch {meta['torch']})")
    return 0


def _dist_version(name: str):
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv))
