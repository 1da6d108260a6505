"""Funnel counters (fw_screen/store/counters.py) on the real server of tests/conftest.py: kept with every
status transition, equal to a recount from the documents after real stages, after ML-stage writes and a
requeue, and after a writer stopped between its steps (its entries are counted by readers and finished by
``recover``, never twice); ``fw-screen status --recount`` reports a difference and repairs it.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from fw_screen import stages as cp
from fw_screen import state as st
from fw_screen.reporting.funnel import funnel_report
from fw_screen.store import counters as cn
from fw_screen.store import plan_nodes

from conftest import generations_table

pytestmark = pytest.mark.filterwarnings("ignore")


def _cheap_funnel(store, spec, tmp_path, n=60, seed=3):
    table = generations_table(tmp_path, n, seed=seed, repeats=10)
    summary = cp.run_ingest(store, table, spec)
    for batch in summary["batches"]:
        cp.run_validity(store, spec["campaign"], batch)
    for shard in range(spec["dedup_shards"]):
        cp.run_uniqueness(store, spec["campaign"], shard)
    return summary


def _by_documents(store, campaign):
    """funnel_report's counts the old way: one aggregation over the campaign's documents."""
    thr = store.campaign_spec(campaign).ml.stability_threshold
    return store.yield_count_rows(campaign, [thr]), store.failure_counts(campaign)


def _ml_result(e, hit):
    return {"ml": {"e_above_hull": e, "hits": {"band_gap": {"hit": hit}}, "potential": "test"}}


def test_counters_equal_a_recount_through_the_stages_and_ml_writes(store, spec, tmp_path):
    campaign = spec["campaign"]
    _cheap_funnel(store, spec, tmp_path)
    assert store.has_counters(campaign)
    kept = store.funnel_counts(campaign)
    assert kept == store.recount(campaign)
    assert sum(c[f"status.{s}"] for c in kept.values() for s in st.ORDER) == 70
    assert sum(c.get("first_failure.bond_length", 0) for c in kept.values()) > 0   # real generations fail
    # the counters' own queries are index-backed (a reader's look for unapplied entries, a token's read-back)
    for query in ({"tally_pending.t": {"$gt": ""}}, {"tally_pending.t": cn.new_token()}):
        plan = plan_nodes(store.candidates.find(query, {"_id": 1}).explain()["queryPlanner"]["winningPlan"])
        assert [n["stage"] for n in plan][-1] == "IXSCAN" and plan[-1]["indexName"] == "tally_pending.t_1", plan

    # the funnel report from the counters equals the one from the documents
    report = funnel_report(store, campaign)
    assert report["counted_by"] == "counters"
    rows, failures = _by_documents(store, campaign)
    assert report["first_failure"] == failures
    counted_rows, _ = store.counted_yield_rows(campaign)
    assert counted_rows == rows

    # ML results as the ML stage writes them: stable with a hit, unstable, no number, NaN, no reference
    novel = [d["_id"] for d in store.candidates_for({"campaign": campaign, "status": st.NOVEL}, {"_id": 1})]
    assert len(novel) >= 6, len(novel)
    moves = [(novel[0], st.NOVEL, st.ML_DONE, _ml_result(0.02, True)),
             (novel[1], st.NOVEL, st.ML_DONE, _ml_result(0.5, False)),
             (novel[2], st.NOVEL, st.ML_FAILED, {"ml": {"reason": "relaxation exploded"}}),
             (novel[3], st.NOVEL, st.ML_DONE, _ml_result(float("nan"), None)),
             (novel[4], st.NOVEL, st.NO_REFERENCE, _ml_result(None, True)),
             (novel[5], st.NOVEL, st.NO_REFERENCE, _ml_result(None, False))]
    assert store.transition(moves, "ml") == 6
    assert store.transition(moves[:1], "ml") == 0      # a second run of the same write moves nothing
    assert store.transition([(novel[0], st.ML_DONE, st.PROMOTED, {"promotion": {"reason": "test"}})], "promotion") == 1
    assert store.requeue_for_ml([novel[4]]) == 1       # no_reference -> novel drops its band-gap hit
    kept = store.funnel_counts(campaign)
    assert kept == store.recount(campaign)
    total = sum(kept.values(), Counter())
    assert total["vsun"] == 1 and total["vsun_band_gap_hits"] == 1 and total["vun_evaluated"] == 2
    assert total["valid_band_gap_evaluated"] == 3 and total["valid_band_gap_hits"] == 1
    counted_rows, _ = store.counted_yield_rows(campaign)
    assert counted_rows == _by_documents(store, campaign)[0]


def test_a_writer_stopped_between_its_steps_is_counted_once(store, spec, tmp_path, monkeypatch):
    campaign = spec["campaign"]
    _cheap_funnel(store, spec, tmp_path, n=30, seed=5)
    novel = [d["_id"] for d in store.candidates_for({"campaign": campaign, "status": st.NOVEL}, {"_id": 1})]
    assert len(novel) >= 3

    # 1. stopped after the candidates' write: the counters have not moved, the readers add its entries
    with monkeypatch.context() as m:
        m.setattr(type(store), "apply_tally", lambda self, token: 0)
        assert store.transition([(novel[0], st.NOVEL, st.ML_DONE, _ml_result(0.01, True))], "ml") == 1
    assert len(store.pending_entries(campaign)) == 1
    assert store.funnel_counts(campaign) == store.recount(campaign)

    # 2. stopped after the counters' write, before the entries were pulled: readers must not add them again
    real_update_many = store.candidates.update_many

    class Stop(RuntimeError):
        pass

    def stop(*a, **k):
        raise Stop

    store.candidates.update_many = stop
    try:
        with pytest.raises(Stop):
            store.transition([(novel[1], st.NOVEL, st.ML_DONE, _ml_result(0.3, False))], "ml")
    finally:
        store.candidates.update_many = real_update_many
    assert len(store.pending_entries(campaign)) == 2
    assert store.funnel_counts(campaign) == store.recount(campaign)

    # recover finishes both, counting each once; running it again changes nothing
    assert store.finish_tallies()["tokens"] == 0      # too young: a live writer may still finish them
    done = store.finish_tallies(min_age_s=0)
    assert done["tokens"] == 2 and done["entries"] == 2
    assert store.pending_entries(campaign) == []
    assert store.funnel_counts(campaign) == store.recount(campaign)
    assert store.finish_tallies(min_age_s=0)["tokens"] == 0
    assert store.funnel_counts(campaign) == store.recount(campaign)
    assert all(not d.get("applied") for d in store.counts.find({"campaign": campaign}))


def test_status_recount_reports_and_repairs_a_difference(store, spec, tmp_path, launchpad_file):
    campaign = spec["campaign"]
    _cheap_funnel(store, spec, tmp_path, n=20, seed=7)
    doc = store.counts.find_one({"campaign": campaign})
    store.counts.update_one({"_id": doc["_id"]}, {"$inc": {"counts.status.invalid": 5}})   # a damaged counter
    cmd = [sys.executable, "-m", "fw_screen.cli", "status", "-c", campaign, "-l", str(launchpad_file), "--recount"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "status.invalid" in out.stdout and "+5" in out.stdout, out.stdout
    assert store.funnel_counts(campaign) != store.recount(campaign)          # reported, not changed
    out = subprocess.run(cmd + ["--repair"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "repaired" in out.stdout, out.stdout + out.stderr
    assert store.funnel_counts(campaign) == store.recount(campaign)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "counters agree" in out.stdout, out.stdout + out.stderr


def test_a_campaign_without_counters_is_counted_from_its_documents(store, spec, tmp_path):
    campaign = spec["campaign"]
    _cheap_funnel(store, spec, tmp_path, n=20, seed=9)
    before = funnel_report(store, campaign)
    store.campaigns.update_one({"_id": campaign}, {"$unset": {"counters": ""}})   # stored before counters existed
    store.counts.delete_many({"campaign": campaign})
    old_way = funnel_report(store, campaign)
    assert old_way["counted_by"] == "documents"
    assert {k: v for k, v in old_way.items() if k != "counted_by"} == {k: v for k, v in before.items() if k != "counted_by"}
    store.replace_counters(campaign, store.recount(campaign))
    assert funnel_report(store, campaign)["counted_by"] == "counters"


def test_tally_delta_of_each_kind_of_write():
    thr = 0.1
    assert cn.tally_delta(cn.tally_entry("t", None, st.INGESTED, {}), thr) == Counter({"status.ingested": 1})
    inv = cn.tally_entry("t", st.INGESTED, st.INVALID, {"validity": {"first_failure": "bond_length"}})
    assert cn.tally_delta(inv, thr) == Counter({"status.invalid": 1, "status.ingested": -1,
                                                "first_failure.bond_length": 1})
    ml = cn.tally_entry("t", st.NOVEL, st.ML_DONE, _ml_result(0.1, True))
    assert cn.tally_delta(ml, thr) == Counter({"status.ml_done": 1, "status.novel": -1, "vun_evaluated": 1,
                                               "vsun": 1, "valid_band_gap_evaluated": 1, "valid_band_gap_hits": 1,
                                               "vsun_band_gap_evaluated": 1, "vsun_band_gap_hits": 1})
    promoted = cn.tally_entry("t", st.ML_DONE, st.PROMOTED, _ml_result(0.0, True))  # ML result kept, not counted again
    assert cn.tally_delta(promoted, thr) == Counter({"status.promoted": 1, "status.ml_done": -1})
    assert cn.ml_facts({"e_above_hull": float("nan")})["e"] is None
    assert cn.ml_facts({"e_above_hull": True})["e"] is None


def test_yield_count_rows_equal_the_aggregation_they_replaced(store, spec, tmp_path):
    """The grouped pass (fw_screen/store/analysis.py) gives what the ~30-conditional-sum aggregation it
    replaced gives (tests/aggregation_reference.py), at several thresholds, with after-relaxation verdicts,
    NaN / missing / boolean hull distances and hits of every kind."""
    import math

    from aggregation_reference import yield_count_rows as before

    campaign = spec["campaign"]
    _cheap_funnel(store, spec, tmp_path, n=60, seed=13)
    novel = [d["_id"] for d in store.candidates_for({"campaign": campaign, "status": st.NOVEL}, {"_id": 1})]
    assert len(novel) >= 10, len(novel)
    values = [(0.0, True), (0.05, False), (0.1, None), (0.2, True), (float("nan"), True), (float("inf"), False),
              (-0.01, True), (None, False)]
    moves = [(cid, st.NOVEL, st.ML_DONE, _ml_result(e, h)) for cid, (e, h) in zip(novel, values)]
    moves.append((novel[8], st.NOVEL, st.NO_REFERENCE, _ml_result(None, True)))
    assert store.transition(moves, "ml") == len(moves)
    # the after-relaxation pass's verdicts: checked (None = not a duplicate), onto a known phase, a duplicate
    store.set_fields([(novel[0], {"ml.novel_relaxed": True, "ml.duplicate_of_relaxed": None}),
                      (novel[1], {"ml.novel_relaxed": False, "ml.duplicate_of_relaxed": None}),
                      (novel[2], {"ml.novel_relaxed": True, "ml.duplicate_of_relaxed": novel[0]}),
                      (novel[6], {"ml.novel_relaxed": True, "ml.duplicate_of_relaxed": None})])
    for thresholds in ([0.1], [0.1, 0.0, 0.2, math.inf]):
        assert store.yield_count_rows(campaign, thresholds) == before(store.candidates, campaign, thresholds)
    by = "status"
    assert store.yield_count_rows(campaign, [0.1], by=by) == before(store.candidates, campaign, [0.1], by=by)
    total = sum(r["relaxed"]["sun"][0.1] for r in store.yield_count_rows(campaign, [0.1]))
    assert total == 2                                                     # novel[0] and novel[6]


def test_metric_count_rows_equal_the_aggregation_they_replaced(store, spec, tmp_path):
    """The metrics' sums from one projected read (fw_screen/store/analysis.py) equal those of the
    ``$project`` + ``$group`` aggregation they replaced (tests/aggregation_reference.py)."""
    import math

    from aggregation_reference import metric_count_rows as before

    campaign = spec["campaign"]
    _cheap_funnel(store, spec, tmp_path, n=60, seed=17)
    novel = [d["_id"] for d in store.candidates_for({"campaign": campaign, "status": st.NOVEL}, {"_id": 1})]
    assert len(novel) >= 10, len(novel)
    for i, (e, h) in enumerate([(0.0, True), (0.05, False), (-0.02, None), (0.3, True), (float("nan"), True),
                                (0.01, False), (0.0, True), (0.08, True)]):
        ml = {**_ml_result(e, h)["ml"], "e_above_hull_self_consistent": None if i == 3 else e + 0.01,
              "rmsd_relaxed": 0.1 * i if i != 2 else float("nan"),
              "relax": {"status": "skipped" if i == 5 else "converged", "spacegroup_number_initial": 225,
                        "spacegroup_number_final": 225 if i % 2 else 221},
              "band_gap": {"band_gap": 1.0 + i}}
        assert store.transition([(novel[i], st.NOVEL, st.ML_DONE, {"ml": ml})], "ml") == 1
    store.set_fields([(novel[0], {"ml.novel_relaxed": True, "ml.duplicate_of_relaxed": None}),
                      (novel[1], {"ml.novel_relaxed": False, "ml.duplicate_of_relaxed": None}),
                      (novel[6], {"ml.novel_relaxed": True, "ml.duplicate_of_relaxed": novel[0]}),
                      (novel[7], {"ml.novel_relaxed": True, "ml.duplicate_of_relaxed": None})])
    for cid, e_dft in ((novel[0], -0.01), (novel[1], 0.2), (novel[6], 0.0), (novel[7], -0.1)):
        store.transition([(cid, st.ML_DONE, st.PROMOTED, {"promotion": {"reason": "test"}})], "promotion")
        store.transition([(cid, st.PROMOTED, st.DFT_DONE, {"dft": {"e_above_hull": e_dft,
                                                                    "band_gap": {"band_gap": 2.0}}})], "dft")

    def normal(rows):
        out = []
        for r in rows:
            r = dict(r)
            r["density"], r["nelements"] = sorted(r["density"]), sorted(r["nelements"])
            for k, v in r.items():      # sums of floats may differ in the last bit with the order of the terms
                if isinstance(v, float) and math.isfinite(v):
                    r[k] = round(v, 9)
            out.append(r)
        return out

    for thresholds in ([0.1, 0.0], [0.05]):
        mine, theirs = store.metric_count_rows(campaign, thresholds), before(store.candidates, campaign, thresholds)
        assert normal(mine) == normal(theirs)
    total = sum(r["dft_tp"] + r["dft_fp"] + r["dft_fn"] + r["dft_tn"] for r in mine)
    assert total == 4 and sum(r["relaxed"] for r in mine) == 7      # the pre-screen-skipped one is not relaxed
