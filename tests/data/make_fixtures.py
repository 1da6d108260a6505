"""Regenerate the copied fixtures of tests/data from ../shared/data (run from the repo root).

Not run by the tests: the fixtures are committed; this script documents exactly where each came from.
    .venv/bin/python tests/data/make_fixtures.py
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pandas as pd
from monty.json import MontyDecoder
from pymatgen.io.cif import CifWriter

HERE = Path(__file__).parent
SHARED = HERE.parent.parent.parent / "shared" / "data"
PARQUET = SHARED / "crystallm_pi" / "generated_8k_bandgap_conditioned.parquet"
MP = SHARED / "reference" / "mp"

#: real generations for the bond-length / is_valid cross-checks: 6 valid, 6 failing bond lengths,
#: 2 failing formula/multiplicity consistency, 2 failing the space-group check
GENERATION_ROWS = [1, 845, 2825, 3843, 6060, 7042, 11, 605, 1224, 2926, 4842, 6673, 1377, 1130, 1124, 833]
#: valid generations of six formulas (several of them real duplicates of each other) for uniqueness
UNIQUENESS_ROWS = [4058, 4067, 4253, 4360, 4373, 4662, 5160, 5165,   # KAlF4
                   4196, 4498, 4581, 4682, 5396, 6377, 6394, 6480,   # BeF2
                   4550, 4755, 5254, 5563, 6165, 6471, 6952, 6987,   # LiYF4
                   350, 526, 657, 2152, 2893, 3181,                  # KAgO2
                   4497, 4793, 5170, 5178, 6196, 7673,               # CaF2
                   4681, 4985, 7091, 7182, 7284]                     # Sr
TRUNCATED_ROW = 1047  # generation cut off inside the atom-site loop (token limit)
#: MP structures written as CrystaLLM-style CIFs (CifWriter, symprec 0.1)
MP_CIFS = {"Li-Co-Ni-O": ["mp-22526-GGA+U", "mp-1960-GGA", "mp-865631-GGA+U", "mp-770635-GGA+U"],
           "Na-Fe-P-O": ["mp-19226-GGA+U", "mp-19770-GGA+U"]}
#: MP entries kept as a small reference set (pymatgen JSON, gzipped list of as_dict())
MP_REFERENCES = ["mp-22526-GGA+U", "mp-1960-GGA", "mp-19009-GGA+U", "mp-22408-GGA+U", "mp-25411-GGA+U"]


def main() -> None:
    warnings.simplefilter("ignore")
    df = pd.read_parquet(PARQUET)
    blocks = [df["Generated CIF"][i].strip() + "\n" for i in GENERATION_ROWS]
    (HERE / "crystallm_pi_16.cif").write_text("\n".join(blocks))
    df.iloc[UNIQUENESS_ROWS].reset_index(drop=True).to_parquet(
        HERE / "crystallm_pi_valid_41.parquet", index=False, compression="zstd")
    (HERE / "crystallm_pi_truncated_row1047.cif").write_text(df["Generated CIF"][TRUNCATED_ROW])

    entries = {}
    for system in ("Li-Co-Ni-O", "Na-Fe-P-O"):
        with gzip.open(MP / f"{system}.json.gz", "rt") as fh:
            entries.update({e["entry_id"]: e for e in json.load(fh)})
    for ids in MP_CIFS.values():
        for entry_id in ids:
            entry = MontyDecoder().process_decoded(entries[entry_id])
            formula = entry.structure.composition.reduced_formula
            text = str(CifWriter(entry.structure, symprec=0.1))
            (HERE / "mp" / f"{formula}_{entry_id.split('-GGA')[0]}.cif").write_text(text)
    payload = json.dumps([entries[i] for i in MP_REFERENCES]).encode()
    with open(HERE / "mp_Li-Co-Ni-O_5entries.json.gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:   # byte-identical on every run
            fh.write(payload)


if __name__ == "__main__":
    main()
