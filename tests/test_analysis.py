"""Stage 7 (analysis) on the real server: hull tables, yields and ML-vs-DFT agreement computed by MongoDB,
checked against the same numbers computed independently in Python from the candidate documents.

The campaign: 70 real CrystaLLM-pi generations (plus 5 repeated rows, so duplicates exist) through the real
cheap stages (ingest, validity, uniqueness/novelty against the MP Li-Co-Ni-O and Na-Fe-P-O references).  The
ML and DFT fields of its novel candidates are then written as those stages write them (same fields, same
state transitions through ``ResultsStore.transition``) with *stand-in numbers* from a seeded generator: the
analysis code is under test here, not the potentials (tests/test_ml_workflow.py and
tests/test_dft_workflow.py run the real ML and DFT stages).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fw_screen import state as st
from fw_screen.reporting.tables import (
    COLUMNS,
    HAS_NUMBER,
    AnalysisError,
    agreement,
    format_table,
    funnel_yields,
    hull_table,
    ml_vs_dft,
    yield_rows,
)
from fw_screen.stages import load_references, run_ingest, run_uniqueness, run_validity
from fw_screen.store import HULL_TABLE_SORT_FIELDS, ResultsStore
from fw_screen.science.yields import yields as reference_yields
from fw_screen.spec import load_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BIN = Path(sys.executable).parent
CAMPAIGN = "ana"
STABILITY = 0.1
TOLERANCE = 0.5


def _ml_fields(rng: random.Random, doc: dict) -> dict:
    e = round(rng.uniform(-0.05, 0.4), 4)
    target = ((doc.get("targets") or {}).get("band_gap") or {}).get("value")
    gap = round(rng.uniform(0, 4), 3)
    hit = None if target is None else abs(gap - target) <= TOLERANCE
    return {"ml": {"potential": "chgnet", "e_above_hull": e, "e_above_hull_unrelaxed": e + 0.05,
                   "stable": e <= STABILITY, "relax": {"status": "converged", "steps": 10},
                   "structure_relaxed": doc["structure"],
                   "hull": {"e_above_hull": e, "decomposition": [{"entry_id": "mp-1", "formula": "Li2O", "fraction": 0.6},
                                                                 {"entry_id": "mp-2", "formula": "CoO", "fraction": 0.4}]},
                   "band_gap": {"band_gap": gap, "structure": "relaxed", "model_error": 0.83},
                   "hits": {"band_gap": {"hit": hit, "target": target, "predicted": gap}}},
            **({"dft_lite": {"status": "done", "band_gap": {"band_gap": round(gap / 2, 3)},
                             "hits": {"band_gap": {"hit": not hit}}}} if e <= STABILITY else {})}


def _dft_fields(rng: random.Random, doc: dict) -> dict:
    ml = doc["ml"]
    e = round(ml["e_above_hull"] + rng.uniform(-0.08, 0.08), 4)
    gap = round(max(0.0, ml["band_gap"]["band_gap"] + rng.uniform(-1, 1)), 3)
    target = ml["hits"]["band_gap"]["target"]
    return {"dft.e_above_hull": e, "dft.stable": e <= STABILITY, "dft.hull_status": "done",
            "dft.decomposition": [{"formula": "Li2O", "fraction": 1.0}],
            "dft.band_gap": {"band_gap": gap}, "dft.structure_relaxed": doc["structure"],
            "dft.hits": {"band_gap": {"hit": None if target is None else abs(gap - target) <= TOLERANCE}}}


@pytest.fixture(scope="module")
def campaign(new_launchpad_file, tmp_path_factory):
    """(store, launchpad file, documents by id) of the analysis campaign, built once for the module."""
    lp_file = new_launchpad_file(tmp_path_factory.mktemp("ana"))
    store = ResultsStore.from_file(str(lp_file))
    store.ensure_indexes()
    df = pd.read_parquet(EXAMPLES / "crystallm_pi_generated_8k.parquet").sample(70, random_state=11)
    df = pd.concat([df, df.iloc[:5]], ignore_index=True)
    path = lp_file.parent / "gen.parquet"
    df.to_parquet(path)
    load_references(store, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    load_references(store, EXAMPLES / "mp_Na-Fe-P-O.json.gz")
    spec = load_spec(campaign=CAMPAIGN, batch_size=25, dedup_shards=2)
    summary = run_ingest(store, path, spec)
    for batch in summary["batches"]:
        run_validity(store, CAMPAIGN, batch)
    for shard in range(spec["dedup_shards"]):
        run_uniqueness(store, CAMPAIGN, shard)

    rng = random.Random(5)
    novel = list(store.candidates.find({"campaign": CAMPAIGN, "status": st.NOVEL}).sort("seq", 1))
    assert len(novel) >= 14, "the sample should hold enough novel candidates"
    ml_done, no_ref, failed = novel[:-4], novel[-4:-2], novel[-2:]
    store.transition([(d["_id"], st.NOVEL, st.ML_DONE, _ml_fields(rng, d)) for d in ml_done], "stability")
    store.transition([(d["_id"], st.NOVEL, st.NO_REFERENCE, {"ml": {"reason": "no reference for Xx",
                                                                    "missing_references": ["Xx"]}})
                      for d in no_ref], "stability")
    store.transition([(d["_id"], st.NOVEL, st.ML_FAILED, {"ml": {"reason": "relaxation exploded"}})
                      for d in failed], "stability")
    promoted = [store.candidates.find_one({"_id": d["_id"]}) for d in ml_done[:6]]
    store.transition([(d["_id"], st.ML_DONE, st.PROMOTED, {"promotion": {"reason": "lowest ML e_hull"}})
                      for d in promoted], "promotion")
    store.transition([(d["_id"], st.PROMOTED, st.DFT_DONE, _dft_fields(rng, d)) for d in promoted[:5]], "dft")
    store.transition([(promoted[5]["_id"], st.PROMOTED, st.DFT_FAILED, {"dft": {"reason": "pw.x: S matrix"}})], "dft")
    docs = {d["_id"]: d for d in store.candidates.find({"campaign": CAMPAIGN})}
    yield store, lp_file, docs
    store.db.client.drop_database(store.db.name)


def _get(doc, dotted):
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


# ---------------------------------------------------------------------------------------------- table
def test_hull_table_has_one_row_per_candidate_with_its_numbers(campaign):
    store, _, docs = campaign
    rows = hull_table(store, CAMPAIGN)
    assert len(rows) == len(docs) == 75
    assert set(rows[0]) == set(COLUMNS)
    by_id = {r["id"]: r for r in rows}
    statuses = {d["status"] for d in docs.values()}
    assert {st.INVALID, st.DUPLICATE, st.NOVEL, st.ML_DONE, st.DFT_DONE, st.DFT_FAILED} <= statuses | {st.NOVEL}
    for cid, d in docs.items():
        r = by_id[cid]
        assert r["status"] == d["status"] and r["formula"] == d.get("reduced_formula")
        assert r["valid"] == (d["status"] in st.VALID_OR_LATER)
        assert r["novel"] == (d["status"] in st.NOVEL_OR_LATER)
        assert r["ml_e_above_hull"] == _get(d, "ml.e_above_hull")
        assert r["dft_e_above_hull"] == _get(d, "dft.e_above_hull")
        assert r["ml_band_gap"] == _get(d, "ml.band_gap.band_gap")
        assert r["ml_band_gap_error"] == _get(d, "ml.band_gap.model_error")
        assert r["dft_lite_band_gap"] == _get(d, "dft_lite.band_gap.band_gap")
        assert r["dft_lite_band_gap_hit"] == _get(d, "dft_lite.hits.band_gap.hit")
        assert r["condition"] == _get(d, "targets.band_gap.value")
        if d["status"] == st.INVALID:
            assert r["reason"] == d["validity"]["reason"]
        elif d["status"] == st.DUPLICATE:
            assert r["reason"] == f"duplicate of {d['duplicate_of']}"
        elif d["status"] in (st.NO_REFERENCE, st.ML_FAILED):
            assert r["reason"] == d["ml"]["reason"]
        elif d["status"] == st.DFT_FAILED:
            assert r["reason"] == "pw.x: S matrix"
        if d["status"] == st.ML_DONE:
            assert r["ml_decomposition"] == "Li2O + CoO"


def test_hull_table_sorts_in_the_database_with_missing_values_last(campaign):
    store, _, docs = campaign
    rows = hull_table(store, CAMPAIGN)
    values = [r["ml_e_above_hull"] for r in rows]
    with_value = [v for v in values if v is not None]
    assert values[:len(with_value)] == sorted(with_value)
    assert all(v is None for v in values[len(with_value):])
    assert len(with_value) == sum(1 for d in docs.values() if _get(d, "ml.e_above_hull") is not None)
    desc = [r["ml_e_above_hull"] for r in hull_table(store, CAMPAIGN, descending=True)][:len(with_value)]
    assert desc == sorted(with_value, reverse=True)
    top = hull_table(store, CAMPAIGN, limit=3)
    assert [r["id"] for r in top] == [r["id"] for r in rows[:3]]
    by_dft = [r["dft_e_above_hull"] for r in hull_table(store, CAMPAIGN, sort="dft_e_above_hull")][:5]
    assert by_dft == sorted(by_dft) and None not in by_dft


def test_hull_table_filters(campaign):
    store, _, docs = campaign

    def ids(**kw):
        return {r["id"] for r in hull_table(store, CAMPAIGN, **kw)}

    assert ids(stage="dft") == {k for k, d in docs.items() if d["status"] == st.DFT_DONE}
    assert ids(stage="ml") == {k for k, d in docs.items() if d["status"] in st.ML_DONE_OR_LATER}
    assert ids(stage="invalid") == {k for k, d in docs.items() if d["status"] == st.INVALID}
    got, want = ids(max_ml_e_above_hull=0.1), {k for k, d in docs.items()
                                               if _get(d, "ml.e_above_hull") is not None and d["ml"]["e_above_hull"] <= 0.1}
    assert got == want, [(docs[k]["status"], _get(docs[k], "ml.e_above_hull")) for k in got ^ want]
    assert ids(ml_hit=True) == {k for k, d in docs.items() if _get(d, "ml.hits.band_gap.hit") is True}
    one = next(d for d in docs.values() if d["status"] == st.ML_DONE)
    system = one["chemsys"]
    assert one["_id"] in ids(chemsys="-".join(reversed(system.split("-"))))  # either order
    assert ids(chemsys=system) == {k for k, d in docs.items() if d.get("chemsys") == system}
    el = one["elements"][0]
    assert ids(elements=[el]) == {k for k, d in docs.items() if el in (d.get("elements") or [])}
    cond = one["targets"]["band_gap"]["value"]
    assert ids(condition=cond) == {k for k, d in docs.items() if _get(d, "targets.band_gap.value") == cond}
    with pytest.raises(AnalysisError, match="unknown stage"):
        hull_table(store, CAMPAIGN, stage="stable-ish")
    with pytest.raises(AnalysisError, match="cannot sort"):
        hull_table(store, CAMPAIGN, sort="colour")


def test_table_formats_round_trip(campaign):
    store, _, _ = campaign
    rows = hull_table(store, CAMPAIGN, stage="ml")
    parsed = list(csv.DictReader(io.StringIO(format_table(rows, "csv"))))
    assert len(parsed) == len(rows) and list(parsed[0]) == COLUMNS
    assert [float(p["ml_e_above_hull"]) for p in parsed] == [r["ml_e_above_hull"] for r in rows]
    assert json.loads(format_table(rows, "json")) == [{c: r.get(c) for c in COLUMNS} for r in rows]
    md = format_table(rows, "markdown").splitlines()
    assert len(md) == len(rows) + 2 and md[0].count("|") == len(COLUMNS) + 1
    with pytest.raises(AnalysisError):
        format_table(rows, "xlsx")


def test_hull_table_query_uses_an_index(campaign):
    store, _, _ = campaign
    for field in ("ml_e_above_hull", "dft_e_above_hull"):  # what hull_table asks for its sorted rows
        ex = store.explain({"campaign": CAMPAIGN, HULL_TABLE_SORT_FIELDS[field]: HAS_NUMBER}, [(field, 1)])
        plan = json.dumps(ex["winning_plan"])
        assert "IXSCAN" in plan and "COLLSCAN" not in plan, plan
        assert ex["stats"]["totalDocsExamined"] == sum(_get(d, HULL_TABLE_SORT_FIELDS[field]) is not None
                                                       for d in campaign[2].values())
    plan = json.dumps(store.explain({"campaign": CAMPAIGN, "status": {"$in": list(st.ML_DONE_OR_LATER)}})["winning_plan"])
    assert "IXSCAN" in plan


# --------------------------------------------------------------------------------------------- yields
def test_yields_match_the_definition_computed_in_python(campaign):
    """The aggregation gives what fw_screen.science.yields.yields (the papers' definitions, one record per input)
    gives on the documents, overall and per condition, at both thresholds."""
    store, _, docs = campaign
    y = funnel_yields(store, CAMPAIGN)
    assert y["thresholds"] == [0.1, 0.0] and y["n"] == len(docs)

    def record(d):
        return {"valid": d["status"] in st.VALID_OR_LATER, "unique": d["status"] in (st.KNOWN, *st.NOVEL_OR_LATER),
                "novel": d["status"] in st.NOVEL_OR_LATER, "e_above_hull": _get(d, "ml.e_above_hull"),
                "band_gap_hit": _get(d, "ml.hits.band_gap.hit")}

    for thr in y["thresholds"]:
        expected = reference_yields([record(d) for d in docs.values()], thr)
        assert y["overall"][thr]["counts"] == expected["counts"]
        assert y["overall"][thr]["rates"] == expected["rates"]
        for row in y["by_condition"]:
            mine = [record(d) for d in docs.values() if _get(d, "targets.band_gap.value") == row["condition"]]
            ref = reference_yields(mine, thr)
            assert row["n"] == ref["n"] and row[thr]["counts"] == ref["counts"], row["condition"]
    assert y["overall"][0.1]["counts"]["vsun"] > y["overall"][0.0]["counts"]["vsun"] > 0
    flat = yield_rows(y)
    assert len(flat) == 2 * (1 + len(y["by_condition"])) and flat[0]["condition"] == "all"


def test_yields_of_an_unknown_campaign_say_so(campaign):
    store, _, _ = campaign
    with pytest.raises(AnalysisError, match="no candidates"):
        funnel_yields(store, "nope", thresholds=[0.1])


# ------------------------------------------------------------------------------------------ ML vs DFT
def test_ml_vs_dft_agreement_on_the_dft_candidates(campaign):
    store, _, docs = campaign
    result = ml_vs_dft(store, CAMPAIGN)
    dft = [d for d in docs.values() if d["status"] == st.DFT_DONE]
    assert result["n_dft"] == len(dft) == 5
    errs = [d["ml"]["e_above_hull"] - d["dft"]["e_above_hull"] for d in dft]
    assert math.isclose(result["e_above_hull"]["mae"], sum(map(abs, errs)) / 5)
    assert math.isclose(result["e_above_hull"]["mean_error"], sum(errs) / 5)
    gaps = [d["ml"]["band_gap"]["band_gap"] - d["dft"]["band_gap"]["band_gap"] for d in dft]
    assert math.isclose(result["band_gap"]["mae"], sum(map(abs, gaps)) / 5)
    pairs = [(d["ml"]["stable"], d["dft"]["stable"]) for d in dft]
    tp = sum(m and t for m, t in pairs)
    assert result["stable"]["tp"] == tp and result["stable"]["n"] == 5
    assert result["stable"]["fp"] == sum(m and not t for m, t in pairs)


def test_agreement_precision_recall_and_the_selection_caveat():
    rows = [  # ML flag, DFT flag: tp, tp, fp, fn, tn
        {"ml_stable": True, "dft_stable": True, "ml_e_above_hull": 0.0, "dft_e_above_hull": 0.1},
        {"ml_stable": True, "dft_stable": True, "ml_e_above_hull": 0.05, "dft_e_above_hull": 0.02},
        {"ml_stable": True, "dft_stable": False, "ml_e_above_hull": 0.05, "dft_e_above_hull": 0.3},
        {"ml_stable": False, "dft_stable": True},
        {"ml_stable": False, "dft_stable": False},
    ]
    a = agreement(rows)
    assert (a["stable"]["tp"], a["stable"]["fp"], a["stable"]["fn"], a["stable"]["tn"]) == (2, 1, 1, 1)
    assert math.isclose(a["stable"]["precision"], 2 / 3) and math.isclose(a["stable"]["recall"], 2 / 3)
    assert a["e_above_hull"]["n"] == 3 and math.isclose(a["e_above_hull"]["mae"], (0.1 + 0.03 + 0.25) / 3)
    assert a["stable"]["notes"] == []
    only_positive = agreement(rows[:3], "promotion requires ML-stable")
    assert only_positive["stable"]["recall"] == 1.0
    assert "recall cannot show ML misses" in only_positive["stable"]["notes"][0]
    assert agreement([])["band_gap"]["mae"] is None


# ------------------------------------------------------------------------------------ chemical space
def test_chemical_space_groups_and_map(campaign):
    from fw_screen.reporting.chemical_space import chemical_space, load_groups

    store, _, docs = campaign
    groups, totals = load_groups(store, CAMPAIGN, max_per_group=40, seed=0)
    assert totals["valid"] == sum(d["status"] in st.VALID_OR_LATER for d in docs.values())
    assert totals["novel"] == sum(d["status"] in st.NOVEL_OR_LATER for d in docs.values())
    assert totals["ML-stable"] == sum(d["status"] in st.ML_DONE_OR_LATER and _get(d, "ml.stable") is True
                                      for d in docs.values())
    assert totals["reference"] == store.reference_count() and len(groups["reference"]) == 40
    again, _ = load_groups(store, CAMPAIGN, max_per_group=40, seed=0)
    assert [s.composition for s in again["reference"]] == [s.composition for s in groups["reference"]]
    result = chemical_space(groups, max_per_group=40, symmetry=False)
    assert result["fit_on"] == "reference" and len(result["explained_variance"]) == 2
    for g in groups:
        assert len(result["points"][g]) == result["n"][g] == len(groups[g]) - result["dropped"][g]


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args, check=True):
    res = subprocess.run([str(BIN / "fw-screen"), *args], capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_cli_table_yields_compare_and_watch(campaign, tmp_path):
    store, lp_file, docs = campaign
    lp = str(lp_file)
    out = _cli("table", CAMPAIGN, "-l", lp, "--stage", "ml", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == sum(d["status"] in st.ML_DONE_OR_LATER for d in docs.values())
    path = tmp_path / "t.md"
    _cli("table", CAMPAIGN, "-l", lp, "--format", "markdown", "--limit", "5", "--columns", "id,formula,status",
         "-o", str(path))
    assert len(path.read_text().splitlines()) == 7
    bad = _cli("table", CAMPAIGN, "-l", lp, "--sort", "colour", check=False)
    assert bad.returncode == 2 and "cannot sort by 'colour'" in bad.stderr
    y = json.loads(_cli("yields", CAMPAIGN, "-l", lp, "--format", "json").stdout)
    assert y["overall"]["0.1"]["counts"] == funnel_yields(store, CAMPAIGN)["overall"][0.1]["counts"]
    md = _cli("yields", CAMPAIGN, "-l", lp).stdout
    assert md.splitlines()[0].startswith("| condition | n | stability_threshold | V |")
    cmp_out = _cli("compare", CAMPAIGN, "-l", lp).stdout
    assert "5 candidates with DFT results" in cmp_out and "MAE" in cmp_out
    watch = _cli("status", "-c", CAMPAIGN, "-l", lp, "--watch", "0.2", "--count", "2").stdout
    assert watch.count("campaign ana") == 2 and watch.count("Fireworks: none") == 2
    done = _cli("status", "-c", CAMPAIGN, "-l", lp, "--watch", "0.2", "--until-done").stdout
    assert "no Fireworks left to run" in done
    missing = _cli("table", "nope", "-l", lp, check=False)
    assert missing.returncode == 2 and "no campaign 'nope'" in missing.stderr and CAMPAIGN in missing.stderr


def test_analysis_scripts_run_as_scripts(campaign):
    _, lp_file, _ = campaign
    repo = Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, str(repo / "analysis" / "ml_vs_dft.py"), CAMPAIGN, "-l", str(lp_file)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "ML vs DFT, campaign ana" in res.stdout
