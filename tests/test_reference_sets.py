"""Reference sets: declared coverage, release-format loaders, energy scales, whole-database hulls, all-or-nothing
loading, the per-process hull cache, and no_reference candidates requeued when a set covers them.

Release-format files are small imitations written from the shipped MP entries (tests/data/releases/README.md).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedEntry

from fw_screen.stages import hulls
from fw_screen.science import references as refs
from fw_screen import state as st
from fw_screen.stages import load_references, requeue_covered, run_ingest, run_uniqueness, run_validity
from fw_screen.store import ResultsStore
from fw_screen.spec import load_spec

DATA = Path(__file__).parent / "data"
RELEASES = DATA / "releases"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SYSTEM_FILES = ("mp_Li-Co-Ni-O.json.gz", "mp_Na-Fe-P-O.json.gz", "mp-elemental-reference-entries-2023-02-07.json.gz")
FW_SCREEN = str(Path(sys.executable).parent / "fw-screen")


def _raw_entries(name: str) -> list[dict]:
    with gzip.open(EXAMPLES / name, "rt") as fh:
        data = json.load(fh)
    return list(data.values()) if isinstance(data, dict) else data


def _snapshot(store: ResultsStore) -> dict:
    """Everything a load could touch, as it is."""
    return {c: sorted(map(str, store.db[c].find({}, {"_id": 1, "state": 1, "version": 1})))
            for c in ("reference_sets", "references", "reference_entries")}


def _stores(new_launchpad_file, tmp_path: Path, *names: str) -> list[ResultsStore]:
    """Stores on databases of their own (one LaunchPad file each)."""
    out = []
    for name in names:
        (tmp_path / name).mkdir()
        out.append(ResultsStore.from_file(str(new_launchpad_file(tmp_path / name))))
    return out


def _write_mbd(path: Path, raw: list[dict]) -> Path:
    """A file in Matbench Discovery's MP entries format (pandas JSON, ``entry`` column), written as MBD does."""
    df = pd.DataFrame({"entry": raw}, index=pd.Index([d["entry_id"] for d in raw], name="material_id"))
    df.reset_index().to_json(path)
    return path


# ---------------------------------------------------------------------------------- declared coverage
def test_plain_file_of_many_elements_must_declare_what_it_covers(store, tmp_path):
    raw = [d for f in SYSTEM_FILES for d in _raw_entries(f)]
    path = tmp_path / "everything.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(raw, fh)
    before = _snapshot(store)
    with pytest.raises(refs.ReferenceSourceError, match="--covers whole-database") as info:
        load_references(store, path)
    assert str(path) in str(info.value) and "89 elements" in str(info.value)
    assert _snapshot(store) == before  # nothing left behind by the refused load
    r = load_references(store, path, covers="per-system", set_name="concatenated")
    # concatenated whole-system downloads: the systems are the largest ones it holds whole
    assert r["covers"] == "per-system" and r["systems"] == ["Co-Li-Ni-O", "Fe-Na-O-P"]
    assert r["energy_scale"] == "mp2020" and r["entries_new"] == len({d["entry_id"] for d in raw})
    r = load_references(store, path, covers="whole-database", set_name="whole")
    assert r["covers"] == "whole-database" and r["systems"] == []
    sets = {s["_id"]: s for s in store.reference_sets()}
    assert sets["whole"]["unary"] and len(sets["whole"]["unary"]) == 89
    # per-system: a system across the two quaternaries is not covered; whole-database: it is (its elements
    # all have entries, and a whole database has every compound there is)
    assert refs.covering_sets(["Li", "Na", "O"], [sets["concatenated"]]) == []
    assert refs.covering_sets(["Li", "Na", "O"], [sets["whole"]]) == ["whole"]
    assert refs.covering_sets(["Rb", "Zr"], [sets["whole"]]) == ["whole"]


def test_every_release_format_declares_itself(store, tmp_path):
    loaded = {}
    for name, kw in [("2023-02-07-mp-computed-structure-entries_sample.json.gz", {}),
                     ("2023-02-07-ppd-mp_sample.pkl.gz", {"trust_pickle": True}),
                     ("convex_hull_pbe_2023.12.29_sample.json.bz2", {}),
                     ("mp_20_sample.csv", {}), ("alex_mp_20_sample.csv", {}),
                     ("crystallm_training_sample.parquet", {})]:
        loaded[name] = load_references(store, RELEASES / name, **kw)
    mbd, ppd, alex, mp20, amp20, training = loaded.values()
    assert (mbd["format"], mbd["covers"], mbd["energy_scale"]) == ("mbd-mp-entries", "whole-database", "mp2020")
    assert mbd["entries_new"] == mbd["new"] > 400  # entries with their structures
    assert (ppd["format"], ppd["covers"], ppd["energy_scale"]) == ("mbd-ppd-pickle", "whole-database", "mp2020")
    assert ppd["entries_new"] == mbd["entries_new"] and ppd["new"] == 0  # ComputedEntries: hull only
    assert (alex["format"], alex["covers"], alex["energy_scale"]) == ("alexandria-convex-hull", "whole-database",
                                                                        "alexandria-pbe")
    assert all(r["covers"] == "structures-only" and r["entries_new"] == 0 for r in (mp20, amp20, training))
    assert (mp20["new"], amp20["new"], training["new"]) == (40, 30, 30)
    ids = {d["ref_id"] for d in store.references.find({"set": "mp_20_sample"}, {"ref_id": 1})}
    assert all(i.startswith("mp-") for i in ids), ids  # MP-20's material_id column names the structures
    sets = {s["_id"]: s for s in store.reference_sets()}
    assert sets["convex_hull_pbe_2023.12.29_sample"]["energy_scale"] == "alexandria-pbe"
    # the CLI lists each set: size, energy scale and what it covers
    lp = store.db.client.address
    lp_file = tmp_path / "launchpad.yaml"
    lp_file.write_text(f"host: {lp[0]}\nport: {lp[1]}\nname: {store.db.name}\nmongoclient_kwargs: {{retryWrites: false}}\n")
    out = subprocess.run([FW_SCREEN, "references", "--list", "-l", str(lp_file)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert "whole-database" in lines["2023-02-07-mp-computed-structure-entries_sample"]
    assert "mp2020" in lines["2023-02-07-mp-computed-structure-entries_sample"]
    assert "alexandria-pbe" in lines["convex_hull_pbe_2023.12.29_sample"] and "structures-only" in lines["mp_20_sample"]
    assert f" {mbd['entries_new']} " in lines["2023-02-07-mp-computed-structure-entries_sample"]


def test_one_hull_never_mixes_energy_scales(store):
    """An Alexandria set (its own PBE scale) does not serve the ML stage's MP2020 hull unless declared."""
    load_references(store, RELEASES / "convex_hull_pbe_2023.12.29_sample.json.bz2", set_name="alex")
    pd_, missing = hulls.reference_hull(store, ["Li", "Co", "O"])
    assert pd_ is None
    assert "no reference entry for Co, Li, O" in missing[0]
    assert "set alex covers it on the alexandria-pbe scale, not the ML stage's mp2020" in missing[1]
    load_references(store, RELEASES / "convex_hull_pbe_2023.12.29_sample.json.bz2", set_name="alex-mp2020",
                    energy_scale="mp2020")
    pd_, missing = hulls.reference_hull(store, ["Li", "Co", "O"])
    assert missing == [] and {e.entry_id for e in pd_.all_entries} <= {
        d["entry_id"] for d in store.entries.find({"set": "alex-mp2020"}, {"entry_id": 1})}


# ---------------------------------------------------------------------- whole-database = per-system hulls
@pytest.fixture(scope="module")
def demo_candidates():
    path = DATA / "demo_ml_done_18.json.gz"
    if not path.exists():
        pytest.fail(f"{path} missing (tests/data/demo_ml_done_18.md says how it was made)")
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def _candidate_entry(c: dict) -> ComputedEntry:
    return ComputedEntry(Structure.from_dict(c["structure_relaxed"]).composition, c["entry_energy"], entry_id=c["_id"])


def test_whole_database_hull_equals_per_system_hull_on_the_demo_candidates(new_launchpad_file, tmp_path,
                                                                           demo_candidates):
    """The 18 demo candidates' e_above_hull from one whole-database file equals, to 1e-9 eV/atom, what the
    per-system files give, what the demo stored, and a PhaseDiagram built straight from the MP entry dicts."""
    raw = [d for f in SYSTEM_FILES for d in _raw_entries(f)]
    by_id = {}
    for d in raw:
        by_id.setdefault(d["entry_id"], d)
    whole_file = _write_mbd(tmp_path / "2023-02-07-mp-computed-structure-entries.json.gz", list(by_id.values()))
    per_system, whole = _stores(new_launchpad_file, tmp_path, "a", "b")
    for f in SYSTEM_FILES:
        load_references(per_system, EXAMPLES / f)
    r = load_references(whole, whole_file)
    assert r["covers"] == "whole-database" and r["entries_new"] == len(by_id)
    raw_entries = [ComputedEntry.from_dict(d) for d in by_id.values()]
    worst = 0.0
    assert len(demo_candidates) == 18
    for c in demo_candidates:
        entry = _candidate_entry(c)
        els = sorted(c["chemsys"].split("-"))
        e_per_system = hulls.reference_hull(per_system, els)[0].get_e_above_hull(entry, allow_negative=True)
        e_whole = hulls.reference_hull(whole, els)[0].get_e_above_hull(entry, allow_negative=True)
        direct = PhaseDiagram([e for e in raw_entries if {x.symbol for x in e.composition.elements} <= set(els)])
        e_direct = direct.get_e_above_hull(entry, allow_negative=True)
        worst = max(worst, abs(e_whole - e_per_system), abs(e_whole - e_direct), abs(e_whole - c["e_above_hull"]))
    assert worst <= 1e-9, worst
    for s in (per_system, whole):
        s.db.client.drop_database(s.db.name)


# --------------------------------------------------------------------------------------- the hull cache
def test_hull_cache_is_per_database_and_refreshed_when_sets_change(new_launchpad_file, tmp_path):
    hulls.clear()
    a, b = _stores(new_launchpad_file, tmp_path, "a", "b")
    load_references(a, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    # database b holds the elements and every other Li-O compound of the same file: the Li-O system only
    li_o = [d for d in _raw_entries("mp_Li-Co-Ni-O.json.gz")
            if set(d["composition"]) <= {"Li", "O"}]
    part = [d for d in li_o if len(d["composition"]) == 1] + [d for d in li_o if len(d["composition"]) == 2][::2]
    (tmp_path / "li_o.json").write_text(json.dumps(part))
    assert load_references(b, tmp_path / "li_o.json")["systems"] == ["Li-O"]
    li2o = ComputedEntry("Li2O", -14.3)
    pd_a = hulls.reference_hull(a, ["Li", "O"])[0]
    pd_b = hulls.reference_hull(b, ["Li", "O"])[0]
    assert pd_a is not pd_b and len(pd_a.all_entries) != len(pd_b.all_entries)
    assert hulls.reference_hull(a, ["Li", "O"])[0] is pd_a and hulls.STATS["hits"] == 1  # warm: same object
    # a set loaded later with a lower Li2O changes database a's hull at once
    low = ComputedEntry("Li2O", -20.0, entry_id="low-Li2O")
    path = tmp_path / "low.json"
    path.write_text(json.dumps([low.as_dict()]))
    load_references(a, path, covers="per-system")
    pd_new = hulls.reference_hull(a, ["Li", "O"])[0]
    assert pd_new is not pd_a and "low-Li2O" in {e.entry_id for e in pd_new.stable_entries}
    assert pd_new.get_e_above_hull(li2o, allow_negative=True) > pd_a.get_e_above_hull(li2o, allow_negative=True)
    # removing it brings the first hull's answer back
    a.remove_reference_set("low")
    again = hulls.reference_hull(a, ["Li", "O"])[0]
    assert abs(again.get_e_above_hull(li2o, allow_negative=True) - pd_a.get_e_above_hull(li2o, allow_negative=True)) < 1e-12
    for s in (a, b):
        s.db.client.drop_database(s.db.name)


def test_missing_reference_names_the_element_or_the_system(store):
    load_references(store, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    assert hulls.reference_hull(store, ["Li", "Rb", "O"])[1] == ["no reference entry for Rb"]
    load_references(store, EXAMPLES / "mp-elemental-reference-entries-2023-02-07.json.gz")
    missing = hulls.reference_hull(store, ["Li", "Rb", "O"])[1]
    assert missing[0].startswith("a complete reference system containing Li-O-Rb (loaded on the mp2020 scale: ")
    assert "mp_Li-Co-Ni-O (per-system: Co-Li-Ni-O)" in missing[0]
    assert hulls.reference_hull(store, ["Rb"])[1] == []  # one element: its elemental reference is its hull


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, kw, message", [
    ("truncated_mp_entries.json.gz", {}, "truncated or corrupt gzip"),
    ("truncated_alexandria.json.bz2", {}, "truncated or corrupt bzip2"),
    ("entries_without_energy.json.gz", {}, "without an energy"),
    ("mixed_corrections.json.gz", {}, "different energy-correction schemes"),
    ("2023-02-07-ppd-mp_sample.pkl.gz", {}, "pass --trust-pickle"),
    ("make_releases.py", {}, "unknown reference format"),
])
def test_bad_reference_file_is_refused_and_leaves_the_database_as_it_was(store, name, kw, message):
    load_references(store, DATA / "mp_Li-Co-Ni-O_5entries.json.gz")
    before = _snapshot(store)
    with pytest.raises(refs.ReferenceSourceError, match=message) as info:
        load_references(store, RELEASES / name, **kw)
    assert name in str(info.value)
    assert _snapshot(store) == before


def test_a_load_failing_half_way_removes_what_it_wrote(store, tmp_path):
    raw = _raw_entries("mp_Li-Co-Ni-O.json.gz")
    bad = [dict(d) for d in raw]
    del bad[700]["energy"]  # the 701st of 775: earlier chunks are written by then
    path = tmp_path / "late_error.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(bad, fh)
    before = _snapshot(store)
    with pytest.raises(refs.ReferenceSourceError, match="item 700: a ComputedStructureEntry without an energy"):
        load_references(store, path, chunk=100)
    assert _snapshot(store) == before
    # the same name then loads cleanly from a good file; a different file under that name is refused
    good = tmp_path / "late_error.json"
    good.write_text(json.dumps(raw))
    assert load_references(store, good)["entries_new"] == 775
    assert load_references(store, good).get("unchanged")
    with pytest.raises(refs.ReferenceSourceError, match="already loaded from"):
        load_references(store, path)


def test_cli_stops_with_the_flag_to_give(launchpad_file, tmp_path):
    raw = [d for f in SYSTEM_FILES for d in _raw_entries(f)][:900] + _raw_entries(SYSTEM_FILES[2])
    path = tmp_path / "many.json"
    path.write_text(json.dumps(raw))
    out = subprocess.run([FW_SCREEN, "references", str(path), "-l", str(launchpad_file)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "--covers whole-database" in out.stderr and str(path) in out.stderr
    out = subprocess.run([FW_SCREEN, "references", str(RELEASES / "2023-02-07-ppd-mp_sample.pkl.gz"), "-l",
                          str(launchpad_file)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--trust-pickle" in out.stderr


# --------------------------------------------------------------------------- requeue after a new set
def test_no_reference_candidates_are_requeued_when_a_set_covers_them(store):
    spec = load_spec(campaign="rq", batch_size=10, dedup_shards=1)
    load_references(store, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    summary = run_ingest(store, DATA / "crystallm_pi_ml_rows.parquet", spec)
    for batch in summary["batches"]:
        run_validity(store, "rq", batch)
    run_uniqueness(store, "rq", 0)
    novel = {d["_id"]: d["elements"] for d in store.candidates.find({"campaign": "rq", "status": st.NOVEL},
                                                                     {"elements": 1})}
    assert len(novel) == 4
    assert sorted(hulls.relaxable(store, novel)) == sorted(i for i, e in novel.items() if set(e) <= {"Li", "Ni", "O"})
    uncovered = [i for i in novel if not set(novel[i]) <= {"Li", "Co", "Ni", "O"}]
    store.transition([(i, st.NOVEL, st.NO_REFERENCE, {"ml": {"reason": "no reference", "band_gap": {"band_gap": 1}}})
                      for i in uncovered], "stability")
    assert requeue_covered(store, "rq") == 0  # nothing new loaded
    load_references(store, EXAMPLES / "mp_Na-Fe-P-O.json.gz")
    na = [i for i in uncovered if set(novel[i]) <= {"Na", "Fe", "P", "O"}]
    assert na and requeue_covered(store, "rq") == len(na)
    for i in na:
        doc = store.candidates.find_one({"_id": i})
        assert doc["status"] == st.NOVEL and "ml" not in doc and doc["ml_requeued"]["reason"] == "no reference"
    rest = [i for i in uncovered if i not in na]  # KZnAs: still outside every set
    assert rest and all(store.candidates.find_one({"_id": i})["status"] == st.NO_REFERENCE for i in rest)


def test_sets_of_an_older_fw_screen_are_registered_with_their_old_coverage(store):
    """Documents written before reference sets existed (entries with a nested ``entry``, no set document)."""
    found = refs.load(EXAMPLES / "mp_Na-Fe-P-O.json.gz", "mp_Na-Fe-P-O")
    legacy = []
    for d in found["entries"]:
        legacy.append({k: v for k, v in d.items() if k not in ("entry_json", "composition", "energy", "formula")}
                      | {"entry": json.loads(d["entry_json"])})
    store.entries.insert_many(legacy)
    store.references.insert_many(found["structures"])
    assert store.reference_sets() == []
    assert store.migrate_legacy_references() == ["mp_Na-Fe-P-O"]
    (s,) = store.reference_sets()
    assert (s["covers"], s["systems"], s["energy_scale"]) == ("per-system", ["Fe-Na-O-P"], "mp2020")
    pd_, missing = hulls.reference_hull(store, ["Na", "Fe", "O"])
    assert missing == [] and len(pd_.all_entries) == len(store.entries_in_chemsys(["Na", "Fe", "O"]))


def test_release_json_is_read_as_a_stream_with_pythons_nan_tokens(tmp_path):
    """Release files are parsed one value at a time, whatever the read boundaries; Python's bare NaN and
    Infinity tokens (pymatgen writes ``"uncertainty": NaN``) are kept, and every shape is found."""
    import io
    import math

    obj = [{"u": float("nan"), "s": "NaN3 :NaN", "v": [float("inf"), -float("inf"), 1.5e-3], "k": {"x": 12345}}
           for _ in range(40)]
    text = json.dumps(obj)
    for chunk in (1, 3, 7, 64, 1 << 20):
        back = list(refs._JSONStream(io.StringIO(text), chunk=chunk).elements())
        assert json.dumps(back) == text, chunk
    columns = {"material_id": {str(i): f"mp-{i}" for i in range(3)}, "entry": {str(i): o for i, o in enumerate(obj[:3])}}
    for name, data, shape in [("list.json", obj, "list"), ("mbd.json.gz", columns, "mbd"),
                              ("alex.json.bz2", {"entries": obj}, "alexandria"),
                              ("map.json", {"Li": obj[0], "O": obj[1]}, "mapping")]:
        path = tmp_path / name
        opener = {"gz": gzip.open, "bz2": __import__("bz2").open}.get(name.rsplit(".", 1)[-1], open)
        with opener(path, "wt") as fh:
            json.dump(data, fh)
        assert refs._json_shape(path) == shape
        pairs = list(refs._entries_of(path, shape))
        assert len(pairs) == {"list": 40, "mbd": 3, "alexandria": 40, "mapping": 2}[shape]
        assert math.isnan(pairs[0][1]["u"]) and pairs[0][1]["v"][1] == -math.inf and pairs[0][1]["s"] == "NaN3 :NaN"


def test_release_entries_store_each_structure_once(store):
    """A release's entry keeps no structure of its own (its novelty document has it); reading the whole entry
    (DFT reference phases) puts it back."""
    from monty.json import MontyDecoder

    load_references(store, RELEASES / "2023-02-07-mp-computed-structure-entries_sample.json.gz", set_name="mbd")
    doc = store.entries.find_one({"set": "mbd", "chemsys": "Li-O"})
    assert doc["structure_in"] == "references" and '"structure"' not in doc["entry_json"]
    full = {d["_id"]: d["entry"] for d in store.entries_in_chemsys(["Li", "O"])}
    assert full and all("structure" in e for e in full.values())
    cse = MontyDecoder().process_decoded(full[doc["_id"]])
    ref = store.references.find_one({"_id": doc["_id"]})
    assert cse.structure == Structure.from_dict(ref["structure"]) and cse.energy == doc["energy"]


def test_demo_says_how_many_candidates_have_no_reference_and_how_to_load_a_release(tmp_path):
    """`fw-screen demo` on one generation outside the shipped references (KZnAs): the funnel, then once the
    count of candidates without a reference hull and the command that loads a whole release."""
    from tests.conftest import free_port

    rows = pd.read_parquet(DATA / "crystallm_pi_ml_rows.parquet")
    path = tmp_path / "kznas.parquet"
    rows[rows["Generated CIF"].str.contains("K")].to_parquet(path)
    home = tmp_path / "home"
    start = subprocess.run([FW_SCREEN, "--home", str(home), "db", "start", "--port", str(free_port())],
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    try:
        out = subprocess.run([FW_SCREEN, "--home", str(home), "demo", "--input", str(path), "--campaign", "k"],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.count("novel candidates have no reference hull") == 1
        assert "1 novel candidates have no reference hull" in out.stdout
        assert "fw-screen references 2023-02-07-mp-computed-structure-entries.json.gz && fw-screen ml -c k" in out.stdout
    finally:
        subprocess.run([FW_SCREEN, "--home", str(home), "db", "stop"], capture_output=True, timeout=120)
