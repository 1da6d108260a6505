"""The cheap funnel through FireWorks on the real embedded server: rlaunch processes, lpad add, categories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fw_screen import state as st
from fw_screen.reporting.funnel import funnel_report
from fw_screen.stages import run_ingest
from fw_screen.orchestration.supervisor import launch_workers
from fw_screen.orchestration.fireworks import submit

from tests.conftest import fworker_file, generations_table

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def generations(tmp_path_factory) -> Path:
    """36 real CrystaLLM-pi generations plus 4 rows repeating earlier ones (so duplicates exist)."""
    return generations_table(tmp_path_factory.mktemp("gen"), 36, seed=7, repeats=4)


def test_three_concurrent_launchers_process_each_candidate_once(generations, launchpad, launchpad_file, store,
                                                                spec, tmp_path):
    summary, wf = submit(launchpad, store, generations, spec)
    assert summary["inputs"] == 40 and summary["new"] == 40
    n_fws = len(wf.fws)
    assert n_fws == 4 + spec["dedup_shards"]  # 40 candidates / batch_size 10, then the shards

    codes = launch_workers(str(launchpad_file), fworker_file(tmp_path, launchpad_file, ["cheap"]), 3,
                           tmp_path / "launches", sleep=1)
    assert codes == [0, 0, 0]

    cheap = {"spec.stage": {"$in": ["validity", "uniqueness"]}}
    states = [fw["state"] for fw in launchpad.fireworks.find(cheap, {"state": 1})]
    assert states == ["COMPLETED"] * n_fws
    assert launchpad.launches.count_documents({}) == n_fws  # no Firework ran twice
    # the uniqueness Fireworks added one ML Firework per ml.batch_size novel candidates, for ML workers only
    n_novel = store.candidates.count_documents({"campaign": "test", "status": st.NOVEL})
    ml = list(launchpad.fireworks.find({"spec.stage": "stability"}, {"state": 1, "spec": 1}))
    assert n_novel > 0
    batches = store.candidates.distinct("ml_batch", {"campaign": "test", "status": st.NOVEL})
    assert store.candidates.count_documents({"campaign": "test", "status": st.NOVEL,
                                             "ml_batch": {"$exists": True}}) == n_novel
    assert sorted(fw["spec"]["ml_batch"] for fw in ml) == sorted(batches)
    assert {fw["state"] for fw in ml} == {"READY"} and {fw["spec"]["_category"] for fw in ml} == {"ml"}
    hosts = {d["fworker"]["name"] for d in launchpad.launches.find({}, {"fworker": 1})}
    assert hosts == {"cheap"}  # the one FWorker ran every launch

    docs = list(store.candidates.find({"campaign": "test"}, {"status": 1, "runs": 1, "duplicate_of": 1, "seq": 1}))
    assert len(docs) == 40
    for d in docs:
        assert d["status"] in (st.INVALID, st.DUPLICATE, st.KNOWN, st.NOVEL)
        assert d["runs"]["validity"] == 1
        if d["status"] != st.INVALID:
            assert d["runs"]["uniqueness"] == 1
    # the 4 repeated rows are duplicates of their first occurrence whenever that one is valid
    by_seq = sorted(docs, key=lambda d: d["seq"])
    for first, again in zip(by_seq[:4], by_seq[36:]):
        if first["status"] == st.INVALID:
            assert again["status"] == st.INVALID
        else:
            assert again["status"] == st.DUPLICATE and again["duplicate_of"] == first["_id"]
    f = funnel_report(store, "test")["funnel"]
    assert f["inputs"] == 40 and f["pending_validity"] == 0 and f["pending_uniqueness"] == 0
    # the per-condition yields (one aggregation per threshold) add up to the campaign funnel
    from fw_screen.reporting.tables import funnel_yields

    y = funnel_yields(store, "test")
    rows = y["by_condition"]
    assert {r["condition"] for r in rows} <= {0.072, 0.18, 0.681, 1.547, 2.44, 3.72, 6.776, 12.145}
    for key, fkey in (("valid", "valid"), ("valid_unique", "unique"), ("vun", "novel")):
        assert sum(r[0.1]["counts"][key] for r in rows) == f[fkey] == y["overall"][0.1]["counts"][key]
    assert sum(r["n"] for r in rows) == f["inputs"] == y["n"]


def test_resubmission_adds_nothing_and_heals_interrupted_submit(generations, launchpad, store, spec):
    # an interrupted submit: candidates ingested, workflow never added
    first = run_ingest(store, generations, spec)
    assert first["new"] == 40 and launchpad.fireworks.count_documents({}) == 0
    summary, wf = submit(launchpad, store, generations, spec)
    assert summary["new"] == 0 and summary["existing"] == 40
    assert wf is not None and len(summary["workflow_batches"]) == 4  # the orphans got their Fireworks
    again, wf2 = submit(launchpad, store, generations, spec)
    assert again["new"] == 0 and wf2 is None
    assert store.candidates.count_documents({"campaign": "test"}) == 40
    assert launchpad.fireworks.count_documents({"spec.stage": "validity"}) == 4


def test_categories_keep_ml_workers_off_cheap_work(generations, launchpad, launchpad_file, store, spec, tmp_path):
    submit(launchpad, store, generations, spec)
    codes = launch_workers(str(launchpad_file), fworker_file(tmp_path, launchpad_file, ["ml"]), 1,
                           tmp_path / "ml", sleep=1, timeout=20)
    assert codes == [0]
    assert launchpad.launches.count_documents({}) == 0
    assert store.candidates.count_documents({"campaign": "test", "status": st.INGESTED}) == 40


def test_workflow_yaml_with_plain_lpad_add_and_rlaunch(generations, launchpad, launchpad_file, store, tmp_path):
    wf_yaml = tmp_path / "wf.yaml"
    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text(yaml.safe_dump({"campaign": "yamlrun", "batch_size": 15, "dedup_shards": 2}))
    fws = str(BIN / "fw-screen")
    out = subprocess.run([fws, "workflow", str(generations), "--spec", str(spec_yaml), "-o", str(wf_yaml)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    add = subprocess.run([str(BIN / "lpad"), "-l", str(launchpad_file), "add", str(wf_yaml)],
                         capture_output=True, text=True, timeout=120)
    assert add.returncode == 0, add.stderr
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    run = subprocess.run([str(BIN / "rlaunch"), "-l", str(launchpad_file), "-w",
                          fworker_file(tmp_path, launchpad_file, ["cheap"]), "rapidfire", "--sleep", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    # ingest Firework + ceil(40/15)=3 validity + 2 uniqueness, all added dynamically and completed
    states = [fw["state"] for fw in launchpad.fireworks.find({"spec.stage": {"$ne": "stability"}}, {"state": 1})]
    assert states == ["COMPLETED"] * 6
    f = funnel_report(store, "yamlrun")["funnel"]
    assert f["inputs"] == 40 and f["pending_validity"] == 0 and f["pending_uniqueness"] == 0
    status = subprocess.run([fws, "status", "-l", str(launchpad_file), "-c", "yamlrun"], capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0 and "inputs" in status.stdout and " 40" in status.stdout


def test_campaign_spec_is_fixed_once_registered(generations, store, spec):
    from fw_screen.store import StoreError

    run_ingest(store, generations, spec)
    changed = {**spec, "validity": {**spec["validity"], "symprec": 0.01}}
    with pytest.raises(StoreError, match="validity"):
        run_ingest(store, generations, changed)


def test_batch_ids_survive_fireworks_serialisation(launchpad, store, generations, spec):
    """FireWorks turns spec strings that look like ISO dates into datetimes; batch ids must not look like one."""
    from fireworks import Firework

    from fw_screen.store import new_submission_id

    for _ in range(2000):
        sid = f"{new_submission_id()}.00000"
        fw = Firework([], spec={"batch": sid})
        assert Firework.from_dict(fw.to_dict()).spec["batch"] == sid
    summary, wf = submit(launchpad, store, generations, spec)
    stored = launchpad.fireworks.distinct("spec.batch", {"spec.stage": "validity"})
    assert sorted(stored) == sorted(summary["workflow_batches"]) and all(isinstance(b, str) for b in stored)


def test_validity_task_on_a_missing_batch_fails_loudly(store, spec, generations):
    from fw_screen.stages import run_validity

    run_ingest(store, generations, spec)
    with pytest.raises(ValueError, match="has no batch"):
        run_validity(store, "test", "s20000101-000000-000000.00000")
