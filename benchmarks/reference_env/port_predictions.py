"""fw-screen's predictions (matgl 4.1.2, PyG) for the structures of ``compare_matgl.py`` (runs in ``.venv``).

    .venv/bin/python benchmarks/reference_env/port_predictions.py STRUCTURES.json OUT.json

Two variants per quantity, in the output format of ``compare_matgl.py`` under ``results[variant][id]``:

- ``port``: as shipped.  MEGNet via ``fw_screen.science.band_gap.load_matgl_band_gap_model`` (which applies
  ``use_dgl_edge_aggregation`` because ``is_dgl_era_megnet`` recognises the checkpoint's sha256); M3GNet via
  ``fw_screen.science.potentials.load_matgl_calculator(folder)`` (``dgl_aggregation=None`` -> ``is_dgl_era_checkpoint``
  -> ``use_dgl_node_aggregation``).
- ``stock``: the rebinding off, i.e. stock matgl 4.1.2: the same loaders with ``is_dgl_era_megnet`` replaced by
  ``lambda folder: False`` for this process (no file is edited) and ``load_matgl_calculator(folder,
  dgl_aggregation=False)``.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from _records import err, pes_record  # noqa: E402  (this folder: both venvs)
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MEGNET_DIR = REPO / "fw_screen" / "models" / "MEGNet-MP-2019.4.1-BandGap-mfi"
M3GNET_DIR = REPO / "fw_screen" / "models" / "M3GNet-MP-2021.2.8-PES"  # shipped (BSD-3)


def _count(module, marker: str) -> int:
    return sum(1 for m in module.modules() if getattr(m, marker, False))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    import matgl
    from pymatgen.core import Structure

    from fw_screen.science import band_gap as prop
    from fw_screen.science.potentials import load_matgl_calculator

    with open(argv[1]) as fh:
        items = json.load(fh)
    structures = {}
    for item in items:
        try:
            structures[item["id"]] = Structure.from_dict(item["structure"])
        except Exception as exc:  # noqa: BLE001
            structures[item["id"]] = exc

    out: dict = {"meta": {"matgl": matgl.__version__, "torch": torch.__version__, "env": sys.prefix,
                          "megnet_dir": str(MEGNET_DIR), "m3gnet_dir": str(M3GNET_DIR),
                          "stress_unit": "eV/A3 (ASE sign and Voigt order)"},
                 "results": {}}
    real_is_dgl_era = prop.is_dgl_era_megnet
    t0 = time.perf_counter()
    for variant in ("port", "stock"):
        prop.clear_band_gap_model_cache()
        if variant == "stock":
            prop.is_dgl_era_megnet = lambda folder: False
        try:
            gap_models = [prop.load_matgl_band_gap_model(MEGNET_DIR, fidelity=i) for i in range(4)]
        finally:
            prop.is_dgl_era_megnet = real_is_dgl_era
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = load_matgl_calculator(M3GNET_DIR, dgl_aggregation=None if variant == "port" else False)
        out["meta"][f"{variant}_megnet_layers_rebound"] = _count(gap_models[0].module, "_fw_dgl_edge_aggregation")
        out["meta"][f"{variant}_m3gnet_layers_rebound"] = _count(calc.potential, "_fw_dgl_node_aggregation")
        res: dict[str, dict] = {}
        for sid, s in structures.items():
            if isinstance(s, Exception):
                res[sid] = {"structure_error": err(s)}
                continue
            rec: dict = {}
            try:
                rec["gap"] = [m.predict(s) for m in gap_models]  # raw (unclipped) eV, as the reference
            except Exception as exc:  # noqa: BLE001
                rec["gap_error"] = err(exc)
            rec.update(pes_record(s, calc))
            res[sid] = rec
        out["results"][variant] = res
    prop.clear_band_gap_model_cache()
    out["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    with open(argv[2], "w") as fh:
        json.dump(out, fh)
    print(f"port: {len(structures)} structures x 2 variants in {out['meta']['seconds']} s (matgl {matgl.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
