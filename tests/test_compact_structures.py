"""Compact structure storage (fw_screen/store/structures.py) on the real server of tests/conftest.py: the
stages write each structure as one string, every read through the store gives back the dictionary that
was written (bit for bit), documents written before (nested dictionaries) read the same, and a projection
into a structure still works.
"""

from __future__ import annotations

import json

import pytest
from pymatgen.core import Structure

from fw_screen import stages as cp
from fw_screen import state as st
from fw_screen.store import structures as sc

from conftest import generations_table

pytestmark = pytest.mark.filterwarnings("ignore")


def test_stages_store_strings_and_reads_give_the_written_structures(store, spec, tmp_path):
    campaign = spec["campaign"]
    summary = cp.run_ingest(store, generations_table(tmp_path, 40, seed=11, repeats=5), spec)
    for batch in summary["batches"]:
        cp.run_validity(store, campaign, batch)
    raw = store.candidates.collection          # pymongo's collection: the documents as stored
    valid = list(raw.find({"campaign": campaign, "status": st.VALID}, {"structure": 1, "structure_reduced": 1}))
    assert len(valid) >= 10
    assert all(isinstance(d["structure"], str) and isinstance(d["structure_reduced"], str) for d in valid)

    # the store decodes: the same dictionary a fresh parse of the stored string gives, a Structure from it
    read = {d["_id"]: d for d in store.candidates_for({"campaign": campaign, "status": st.VALID},
                                                      {"structure": 1, "structure_reduced": 1})}
    for d in valid:
        assert read[d["_id"]]["structure"] == json.loads(d["structure"])
        s = Structure.from_dict(read[d["_id"]]["structure"])
        back = sc.decode(sc.encode(s.as_dict()))       # exact: floats round-trip (tuples become lists, as in BSON)
        assert back == json.loads(json.dumps(s.as_dict())) and Structure.from_dict(back) == s
        assert (Structure.from_dict(back).lattice.matrix == s.lattice.matrix).all()
        assert (Structure.from_dict(back).frac_coords == s.frac_coords).all()

    # the uniqueness stage reads them back and decides as before; a second store read equals the first
    for shard in range(spec["dedup_shards"]):
        cp.run_uniqueness(store, campaign, shard)
    counts = store.status_counts(campaign)
    assert counts.get(st.VALID, 0) == 0, counts
    seen, repeats = set(), []
    for d in raw.find({"campaign": campaign, "_id": {"$in": [v["_id"] for v in valid]}}).sort("seq", 1):
        (repeats.append(d) if d["content_hash"] in seen else seen.add(d["content_hash"]))
    assert repeats and all(d["_id"] in {x["_id"] for x in raw.find({"status": st.DUPLICATE})} for d in repeats)

    # a document stored before compact storage (nested dictionaries) reads the same as a compact one
    one = valid[0]["_id"]
    as_dict = store.candidates.find_one({"_id": one}, {"structure": 1})["structure"]
    raw.update_one({"_id": one}, {"$set": {"structure": as_dict}})
    assert isinstance(raw.find_one({"_id": one})["structure"], dict)
    assert store.candidates.find_one({"_id": one}, {"structure": 1})["structure"] == as_dict

    # a projection into a structure fetches the whole structure (the string) and still gives the sub-field
    labels = store.candidates.find_one({"_id": valid[1]["_id"]}, {"structure.sites.label": 1})
    assert [site["label"] for site in labels["structure"]["sites"]] == \
        [site["label"] for site in json.loads(valid[1]["structure"])["sites"]]


def test_encode_fields_finds_structures_at_their_paths_and_inside_their_parents():
    s = {"lattice": {"matrix": [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0.1 + 0.2]]}, "sites": []}
    out = sc.encode_fields({"ml": {"structure_relaxed": s, "e_above_hull": 0.1}, "ml.structure_relaxed_reduced": s,
                            "dft.structure_relaxed": None, "structure": s, "other": {"structure": s}})
    assert isinstance(out["ml"]["structure_relaxed"], str) and out["ml"]["e_above_hull"] == 0.1
    assert isinstance(out["ml.structure_relaxed_reduced"], str) and isinstance(out["structure"], str)
    assert out["dft.structure_relaxed"] is None and out["other"] == {"structure": s}   # not a structure path
    doc = sc.decode_document({"_id": 1, "ml": {"structure_relaxed": out["ml"]["structure_relaxed"]},
                              "structure": out["structure"]})
    assert doc["ml"]["structure_relaxed"] == s and doc["structure"] == s
    assert sc.decode_document(None) is None
    assert sc.projection({"structure.sites.label": 1, "ml.structure_relaxed.sites": 1, "ml.e_above_hull": 1}) == \
        {"structure": 1, "ml.structure_relaxed": 1, "ml.e_above_hull": 1}
