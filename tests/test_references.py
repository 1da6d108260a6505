"""Reference loaders: pymatgen JSON of MP entries, entries without structures, CIF folders, tables, mp-api."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from monty.json import MontyDecoder
from pymatgen.io.cif import CifWriter

from fw_screen.science import references as refs
from fw_screen.stages import load_references

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def mp_entries():
    with gzip.open(EXAMPLES / "mp_Li-Co-Ni-O.json.gz", "rt") as fh:
        return json.load(fh)


def test_mp_json_loads_every_entry_with_its_hull_distance(mp_entries):
    found = refs.load(EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    docs, skipped = found["structures"], found["skipped"]
    assert skipped == 0 and len(docs) == len(mp_entries) == 775
    # the same file also gives the hull entries, keyed by chemical system
    assert len(found["entries"]) == 775
    assert {e["chemsys"] for e in found["entries"]} >= {"Li", "Co-O", "Co-Li-Ni-O"}
    assert found["systems"] == ["Co-Li-Ni-O"]  # a whole chemical system: hulls inside it are trusted
    by_id = {d["ref_id"]: d for d in docs}
    raw = mp_entries[10]
    entry = MontyDecoder().process_decoded(raw)
    doc = by_id[entry.entry_id]
    assert doc["reduced_formula"] == entry.structure.composition.reduced_formula
    assert doc["properties"]["e_above_hull"] == raw["e_above_hull"]
    assert doc["_id"] == f"mp_Li-Co-Ni-O:{entry.entry_id}"


def test_entries_without_structure_are_counted_not_loaded():
    found = refs.load(EXAMPLES / "mp-elemental-reference-entries-2023-02-07.json.gz")
    assert found["structures"] == [] and found["skipped"] == 89
    assert len(found["entries"]) == 89  # still usable as hull references
    # 89 elements are no one chemical system: the file covers each element alone (its lowest entry is that
    # element's hull), and no compound system
    assert found["covers"] == "per-system" and found["systems"] == sorted(found["systems"]) and len(found["systems"]) == 89
    assert all("-" not in s for s in found["systems"])


def test_cif_folder_and_table_sources(mp_entries, tmp_path):
    structures = [MontyDecoder().process_decoded(e).structure for e in mp_entries[:5]]
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i, s in enumerate(structures):
        (folder / f"ref{i}.cif").write_text(str(CifWriter(s)))
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    found = refs.load(folder, "mine")
    docs, skipped = found["structures"], found["skipped"]
    assert len(docs) == 5 and skipped == 1
    assert sorted(d["reduced_formula"] for d in docs) == sorted(s.composition.reduced_formula for s in structures)
    table = tmp_path / "refs.csv"
    pd.DataFrame({"material_id": [f"x-{i}" for i in range(5)],
                  "cif": [str(CifWriter(s)) for s in structures]}).to_csv(table, index=False)
    found = refs.load(table)
    docs, skipped = found["structures"], found["skipped"]
    assert [d["ref_id"] for d in docs] == [f"x-{i}" for i in range(5)] and skipped == 0
    # an id repeated across rows (CrystaLLM-pi reuses Material IDs across conditions) keeps every row
    pd.DataFrame({"material_id": ["g-1", "g-1", "g-2"],
                  "cif": [str(CifWriter(s)) for s in structures[:3]]}).to_csv(table, index=False)
    docs = refs.load(table)["structures"]
    assert len({d["_id"] for d in docs}) == 3 and docs[2]["ref_id"] == "g-2"


def test_load_into_store_is_idempotent_and_indexed(store):
    first = load_references(store, EXAMPLES / "mp_Na-Fe-P-O.json.gz")
    again = load_references(store, EXAMPLES / "mp_Na-Fe-P-O.json.gz")
    assert first["new"] == 557 and again["new"] == 0 and again["existing"] == 557
    assert first["entries_new"] == 557 and again["entries_new"] == 0
    assert store.reference_count() == 557 and store.entry_count() == 557
    subsystem = store.entries_in_chemsys(["Na", "Fe", "O"])
    assert subsystem and all(set(d["entry"]["composition"]) <= {"Na", "Fe", "O"} for d in subsystem)
    plan = store.references.find({"reduced_formula": "NaFePO4"}).explain()
    assert "reduced_formula" in json.dumps(plan, default=str)


def test_mp_api_without_key_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(refs.ReferenceSourceError, match="MP_API_KEY is not set"):
        refs.from_mp_api("Li-O")
    exe = Path(sys.executable).parent / "fw-screen"
    lp = tmp_path / "lp.yaml"
    lp.write_text("host: 127.0.0.1\nport: 1\nname: x\n")
    env = {k: v for k, v in os.environ.items() if k != "MP_API_KEY"}
    out = subprocess.run([str(exe), "references", "mp:Li-O", "-l", str(lp)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 2 and "MP_API_KEY is not set" in out.stderr
