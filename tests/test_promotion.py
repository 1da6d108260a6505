"""Promotion rules: which ML survivors go to DFT, with the reason recorded."""

from __future__ import annotations

from fw_screen.science.promotion import check, select
from fw_screen.spec import load_spec

RULES = load_spec()["promotion"]


def doc(cid, e_hull, hit=True, target=0.68, sites=4, relax="converged", gap=0.5):
    return {"_id": cid, "targets": {"band_gap": {"value": target}},
            "ml": {"e_above_hull": e_hull, "relax": {"status": relax}, "band_gap": {"band_gap": gap},
                   "hits": {"band_gap": {"hit": hit}},
                   "structure_relaxed": {"sites": [{"label": "X"}] * sites}}}


def test_each_rule_rejects_with_its_reason():
    assert check(doc("a", 0.05), RULES)[0]
    for bad, words in ((doc("b", 0.3), "e_above_hull 0.300 > 0.1"), (doc("c", 0.0, hit=False), "(miss)"),
                       (doc("d", 0.0, sites=40), "40 sites > 8"), (doc("e", 0.0, relax="not_converged"),
                                                                   "relaxation not_converged"),
                       (doc("f", None), "no ML energy above hull")):
        ok, reasons = check(bad, RULES)
        assert not ok and any(words in r for r in reasons), (bad["_id"], reasons)


def test_target_hit_not_required_when_switched_off_or_no_target():
    assert check(doc("a", 0.0, hit=False), {**RULES, "require_target_hit": False})[0]
    untargeted = doc("b", 0.0, hit=None)
    untargeted["targets"] = {}
    assert check(untargeted, RULES)[0]


def test_quota_per_condition_ranks_by_ml_hull_and_counts_earlier_rounds():
    docs = [doc(f"c{i}", 0.01 * i, target=0.68) for i in range(5)] + [doc("x", 0.02, target=3.72)]
    rules = {**RULES, "max_per_condition": 2}
    chosen, summary = select(docs, rules)
    assert [c["_id"] for c in chosen] == ["c0", "c1", "x"]
    assert chosen[1]["rank"] == 2 and "rank 2 by ML e_above_hull in condition 0.68" in chosen[1]["reason"]
    assert "ML e_above_hull 0.010 <= 0.1" in chosen[1]["reason"]
    assert summary == {"considered": 6, "eligible": 6, "chosen": 3, "not_eligible": {}}
    # one of condition 0.68 promoted in an earlier round: only one more now
    chosen, _ = select(docs, rules, already_promoted={"0.68": 1})
    assert [c["_id"] for c in chosen] == ["c0", "x"]
    chosen, _ = select(docs, {**rules, "max_total": 1})
    assert [c["_id"] for c in chosen] == ["c0"]
    assert select(docs, {**rules, "max_total": 1}, already_promoted={"3.72": 1})[0] == []  # per campaign


def test_candidates_whose_dft_hull_cannot_be_built_are_passed_over():
    docs = [doc("a", 0.0), doc("b", 0.01), doc("c", 0.02)]
    asked = []

    def references_ok(d):
        asked.append(d["_id"])
        return (d["_id"] != "a", "no DFT reference phases" if d["_id"] == "a" else "DFT reference phases X, Y")

    chosen, summary = select(docs, {**RULES, "max_total": 1}, references_ok=references_ok)
    assert [c["_id"] for c in chosen] == ["b"] and "DFT reference phases X, Y" in chosen[0]["reason"]
    assert asked == ["a", "b"]  # lazily, in rank order: c was never needed
    assert summary["not_eligible"] == {"DFT references": 1}
