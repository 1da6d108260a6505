"""Faults a campaign meets on a shared cluster, each ending with the final state of every candidate checked.

* a launcher killed with SIGKILL in the middle of a CHGNet relaxation and in the middle of pw.x: FireWorks'
  lost-run detection (``fw-screen recover``) puts the Firework back, a new launcher finishes it, every
  result lands exactly once;
* the embedded database server stopped and started again while two launchers run: they carry on;
* a batch submitted while launchers run, and the same file submitted again: no duplicate candidates or work.

Real ``rlaunch`` processes, a real SecantusDB server, real CHGNet and pw.x; nothing is monkeypatched.
(A failing candidate failing alone, and wall-time continuation, are in tests/test_dft_workflow.py and
tests/test_bad_inputs.py.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from fw_screen.server import embedded as server
from fw_screen import state as st
from fw_screen.reporting.funnel import funnel_report
from fw_screen.stages import load_references, run_promotion
from fw_screen.orchestration.supervisor import launch_workers
from fw_screen.spec import load_spec
from fw_screen.orchestration.fireworks import dft_workflow, submit
from fw_screen.orchestration.recovery import recover

from tests.conftest import free_port, fworker_file, generations_table, novel_ml_rows

BIN = Path(sys.executable).parent
DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_pw = pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x (Quantum ESPRESSO) is not on PATH")


# --------------------------------------------------------------------------------------------- helpers
def _rlaunch(lp_file: str, fworker: str, cwd: Path) -> subprocess.Popen:
    """An ``rlaunch rapidfire`` in a process group of its own (its pw.x children too), as a batch job is."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(cwd / "rlaunch.log", "ab") as log:
        return subprocess.Popen([str(BIN / "rlaunch"), "-s", "-l", lp_file, "-w", fworker, "rapidfire", "--sleep", "1"],
                                cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _group_commands(pgid: int) -> list[str]:
    """Command names of the live processes in a process group."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            names.append(comm)
    return names


def _kill9(proc: subprocess.Popen) -> None:
    """``kill -9`` of the launcher's whole process group (what a dying node or scancel does)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _group_commands(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_commands(proc.pid)


def _wait_for(condition, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _recover_cli(lp_file, *args) -> str:
    out = subprocess.run([str(BIN / "fw-screen"), "recover", "-l", str(lp_file), *args], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


# --------------------------------------------------------------------------------- kill -9 mid CHGNet
def test_kill9_mid_ml_relaxation_is_recovered_and_counted_once(launchpad, launchpad_file, store, tmp_path):
    spec = load_spec(campaign="test", batch_size=10, dedup_shards=1, promotion={"auto": False})
    novel_ml_rows(launchpad, launchpad_file, store, spec, tmp_path)
    relax = launchpad.fireworks.find_one({"spec.stage": "stability", "spec.ml_batch": {"$regex": r"r\.ml"}})
    batch = relax["spec"]["ml_batch"]
    ids = sorted(store.candidates.distinct("_id", {"campaign": "test", "ml_batch": batch}))
    assert len(ids) == 3  # NaFeO2, Na3P, LiNiO2: relaxed by CHGNet in one Firework

    proc = _rlaunch(str(launchpad_file), fworker_file(tmp_path, launchpad_file, ["ml"]), tmp_path / "ml1")

    def first_result_landed():  # the Firework is RUNNING and one relaxation of the batch is written
        fw = launchpad.fireworks.find_one({"fw_id": relax["fw_id"]}, {"state": 1})
        done = store.candidates.count_documents({"_id": {"$in": ids}, "status": {"$ne": st.NOVEL}})
        return fw["state"] == "RUNNING" and done >= 1

    _wait_for(first_result_landed, 600, "the first CHGNet result of the ML Firework")
    time.sleep(1.0)  # well inside the next relaxation (each takes seconds)
    _kill9(proc)
    done_before = {d["_id"]: d["status"] for d in store.candidates.find({"_id": {"$in": ids}, "status": {
        "$ne": st.NOVEL}}, {"status": 1})}
    assert 1 <= len(done_before) < 3, "the kill should land between two relaxations of the batch"
    assert launchpad.fireworks.find_one({"fw_id": relax["fw_id"]})["state"] == "RUNNING"  # nobody knows yet

    time.sleep(2.5)
    dry = _recover_cli(launchpad_file, "-c", "test", "--expiration-secs", "2", "--dry-run")
    assert f"1 Firework(s) [{relax['fw_id']}]" in dry
    assert launchpad.fireworks.find_one({"fw_id": relax["fw_id"]})["state"] == "RUNNING"  # dry run: untouched
    out = _recover_cli(launchpad_file, "-c", "test", "--expiration-secs", "2")
    assert f"1 Firework(s) [{relax['fw_id']}] -> rerun (READY)" in out
    assert launchpad.fireworks.find_one({"fw_id": relax["fw_id"]})["state"] == "READY"

    assert launch_workers(str(launchpad_file), fworker_file(tmp_path, launchpad_file, ["ml"]), 1,
                          tmp_path / "ml2", sleep=1) == [0]
    assert {fw["state"] for fw in launchpad.fireworks.find({}, {"state": 1})} == {"COMPLETED"}
    assert store.candidates.count_documents({"campaign": "test"}) == 4  # nothing lost, nothing added
    for d in store.candidates.find({"_id": {"$in": ids}}):
        assert d["status"] == st.ML_DONE, d.get("ml", {}).get("reason")
        assert d["runs"] == {"validity": 1, "uniqueness": 1, "ml": 1}  # each stage decided it exactly once
        assert d["ml"]["relax"]["status"] in ("converged", "not_converged")
    # the rerun relaxed only what the killed run had not written
    launches = list(launchpad.launches.find({"fw_id": relax["fw_id"]}).sort("launch_id", 1))
    assert [x["state"] for x in launches] == ["FIZZLED", "COMPLETED"]
    assert launches[1]["action"]["stored_data"][st.ML_DONE] == 3 - len(done_before)


# --------------------------------------------------------------------------------- kill -9 mid pw.x
def _ml_done(cid: str, campaign: str, structure: Structure) -> dict:
    return {"_id": cid, "campaign": campaign, "status": st.ML_DONE, "seq": 0,
            "reduced_formula": structure.composition.reduced_formula,
            "elements": sorted({e.symbol for e in structure.composition}), "nsites": len(structure),
            "targets": {"band_gap": {"value": 0.07, "unit": "eV"}}, "structure_reduced": structure.as_dict(),
            "ml": {"e_above_hull": 0.0, "relax": {"status": "converged"}, "structure_relaxed": structure.as_dict(),
                   "band_gap": {"band_gap": 0.0}, "hits": {"band_gap": {"hit": True}}}}


def _bcc_li() -> Structure:
    return Structure(Lattice([[-1.72, 1.72, 1.72], [1.72, -1.72, 1.72], [1.72, 1.72, -1.72]]), ["Li"], [[0, 0, 0]])


def _li_campaign(launchpad, launchpad_file, store, candidates_only: bool):
    spec = load_spec(campaign="kill", dft={"qe": {"kppa": 300, "nscf_kppa": 500},
                                          "reference_polymorph_tolerance": 0.02},
                     property={"method": "ml"})  # promotion on the ML hit: these tests are about the DFT chain
    store.register_campaign(spec)
    load_references(store, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    store.candidates.insert_one(_ml_done("kill:li", "kill", _bcc_li()))
    assert run_promotion(store, "kill")["promoted"] == ["kill:li"]
    wf = dft_workflow(store, ["kill:li"], db_file=str(launchpad_file))
    if candidates_only:  # the reference phase is then computed inline, in the candidate's Firework
        wf = type(wf)([fw for fw in wf.fws if fw.spec["stage"] == "dft"], name=wf.name)
    launchpad.add_wf(wf)


def _assert_li_done_once(launchpad, store):
    assert {fw["state"] for fw in launchpad.fireworks.find({}, {"state": 1})} == {"COMPLETED"}
    d = store.candidates.find_one({"_id": "kill:li"})
    assert d["status"] == st.DFT_DONE and d["runs"] == {"promotion": 1, "dft": 1}
    assert d["dft"]["hull_status"] == "done" and abs(d["dft"]["e_above_hull"]) < 0.05
    refs = list(store.dft_references.find())
    assert len(refs) == 1 and refs[0]["status"] == "done"  # one reference, finished once
    return d, refs[0]


@needs_pw
def test_kill9_mid_pwx_reference_is_recovered_and_computed_once(launchpad, launchpad_file, store, tmp_path):
    """The launcher (and its pw.x) dies computing a reference phase: the rerun Firework retakes its own
    claim, nobody else computes the phase, the candidate's hull completes from it."""
    _li_campaign(launchpad, launchpad_file, store, candidates_only=False)
    ref_fw = launchpad.fireworks.find_one({"spec.stage": "dft_reference"})
    fworker = fworker_file(tmp_path, launchpad_file, ["dft"], pseudo_dir=str(DATA / "pseudo"), pw_cmd="pw.x",
                       mpi_cmd="")
    proc = _rlaunch(str(launchpad_file), fworker, tmp_path / "dft1")
    _wait_for(lambda: "pw.x" in _group_commands(proc.pid)
              and launchpad.fireworks.find_one({"fw_id": ref_fw["fw_id"]})["state"] == "RUNNING",
              300, "pw.x of the reference Firework")  # reference Fireworks run first (priority)
    time.sleep(1.0)
    _kill9(proc)
    claim = store.dft_references.find_one()
    assert claim["status"] == "running" and claim["fw_id"] == ref_fw["fw_id"]

    time.sleep(2.5)
    r = recover(launchpad, store, "kill", expiration_secs=2)
    assert r["lost_fireworks"] == [ref_fw["fw_id"]]
    assert r["claims_released"] == [] and r["claims_live"][0]["fireworks"] == [ref_fw["fw_id"]]  # its rerun retakes it
    assert launch_workers(str(launchpad_file), fworker, 1, tmp_path / "dft2", sleep=1) == [0]

    d, ref = _assert_li_done_once(launchpad, store)
    assert ref["attempts"] == 2 and ref["fw_id"] == ref_fw["fw_id"]  # killed run + its rerun, nobody else
    ran = [x["action"]["stored_data"] for x in launchpad.launches.find({"action.stored_data.ref_id": {"$exists": True}})]
    assert [x["status"] for x in ran] == ["done"]
    assert d["dft"]["references"] == [ref["_id"]]


@needs_pw
@pytest.mark.slow  # `make test-all`; the default run keeps test_kill9_mid_pwx_reference_is_recovered_and_computed_once
def test_kill9_mid_pwx_of_an_inline_reference_resumes(launchpad, launchpad_file, store, tmp_path):
    """The candidate Firework computes its reference phase inline and dies in that pw.x after its own result
    was written: the rerun Firework resumes the reference only (no second candidate run, one result)."""
    _li_campaign(launchpad, launchpad_file, store, candidates_only=True)
    fworker = fworker_file(tmp_path, launchpad_file, ["dft"], pseudo_dir=str(DATA / "pseudo"), pw_cmd="pw.x",
                       mpi_cmd="")
    proc = _rlaunch(str(launchpad_file), fworker, tmp_path / "dft1")
    def inline_reference_running():  # a 1-site Li reference is a few seconds of pw.x: kill as soon as it starts
        assert proc.poll() is None, str([x["action"]["stored_data"] for x in launchpad.launches.find({})])
        return store.dft_references.find_one({"status": "running"})

    _wait_for(inline_reference_running, 300, "the inline reference", poll=0.02)
    _kill9(proc)
    d = store.candidates.find_one({"_id": "kill:li"})
    assert d["status"] == st.DFT_DONE and d["dft"]["hull_status"] == "waiting"
    cand_fw = launchpad.fireworks.find_one({"spec.stage": "dft"})
    assert store.dft_references.find_one()["fw_id"] == cand_fw["fw_id"]

    time.sleep(2.5)
    r = recover(launchpad, store, "kill", expiration_secs=2)
    assert r["lost_fireworks"] == [cand_fw["fw_id"]]
    assert launch_workers(str(launchpad_file), fworker, 1, tmp_path / "dft2", sleep=1) == [0]
    d, ref = _assert_li_done_once(launchpad, store)
    assert ref["attempts"] == 2
    last = launchpad.launches.find_one({"fw_id": cand_fw["fw_id"], "state": "COMPLETED"})
    assert last["action"]["stored_data"]["status"] == "resumed"


def test_recover_releases_claims_and_leases_of_dead_runs(launchpad, store):
    """A claim no live Firework holds is released (and taken again by the next one needing it); a claim
    a live Firework holds is not; a lease of a dead process on this host is released."""
    import socket

    from fireworks import Firework

    launchpad.add_wf(Firework([], spec={"stage": "dft_reference", "system": "Li", "campaign": "x"}, fw_id=-1))
    live_fw = launchpad.fireworks.find_one({})["fw_id"]
    store.claim_dft_reference({"_id": "p:dead", "protocol_id": "p", "key": "mp-1", "system": "Li", "fw_id": 999})
    store.claim_dft_reference({"_id": "p:live", "protocol_id": "p", "key": "mp-2", "system": "Li", "fw_id": live_fw})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.locks.insert_one({"_id": "x:uniqueness:0", "owner": f"{socket.gethostname()}:{dead.pid}:abc",
                            "expires": None})
    owner = store.acquire_lock("x:uniqueness:1")  # held by this live process

    dry = recover(launchpad, store, dry_run=True)
    assert dry["claims_released"] == ["p:dead"] and dry["locks_released"] == ["x:uniqueness:0"]
    assert store.dft_references.find_one({"_id": "p:dead"})["status"] == "running"
    r = recover(launchpad, store)
    assert r["claims_released"] == ["p:dead"] and r["claims_live"] == [{"ref_id": "p:live", "fireworks": [live_fw]}]
    assert r["locks_released"] == ["x:uniqueness:0"] and [x["lock"] for x in r["locks_held"]] == ["x:uniqueness:1"]
    assert store.dft_references.find_one({"_id": "p:dead"})["status"] == "released"
    assert store.claim_dft_reference({"_id": "p:dead", "fw_id": 1000})  # the next Firework computes it
    assert not store.claim_dft_reference({"_id": "p:live", "fw_id": 1000})
    assert store.acquire_lock("x:uniqueness:0", wait_s=1)
    store.release_lock("x:uniqueness:1", owner)


def test_recover_adds_fireworks_a_dead_task_never_added(launchpad, store, spec):
    """A uniqueness task that wrote its verdicts and ML batches, and whose launcher died before FireWorks stored
    the ML Fireworks it returned: its rerun finds nothing pending, so recovery adds them."""
    store.register_campaign(spec)
    store.candidates.insert_many([{"_id": f"test:{i}", "campaign": "test", "status": st.NOVEL, "seq": i,
                                   "ml_batch": "mdead.ml0000"} for i in range(2)])
    assert recover(launchpad, store, "test", dry_run=True)["ml_batches_added"] == ["mdead.ml0000"]
    assert launchpad.fireworks.count_documents({}) == 0
    assert recover(launchpad, store, "test")["ml_batches_added"] == ["mdead.ml0000"]
    fw = launchpad.fireworks.find_one({"spec.stage": "stability"})
    assert fw["spec"]["ml_batch"] == "mdead.ml0000" and fw["state"] == "READY"
    assert recover(launchpad, store, "test")["ml_batches_added"] == []  # once


# ----------------------------------------------------------------------------- database restart, resubmits
@pytest.fixture(scope="module")
def gen80(tmp_path_factory) -> Path:
    """80 real CrystaLLM-pi generations (8 cheap batches of 10), 6 of them repeated (duplicates exist)."""
    return generations_table(tmp_path_factory.mktemp("gen"), 74, seed=11, repeats=6)


def _decided_once(store, campaign: str, n: int) -> dict:
    docs = list(store.candidates.find({"campaign": campaign}, {"status": 1, "runs": 1, "duplicate_of": 1}))
    assert len(docs) == n
    for d in docs:
        assert d["status"] in (st.INVALID, st.DUPLICATE, st.KNOWN, st.NOVEL), d
        assert d["runs"]["validity"] == 1
        assert d["runs"].get("uniqueness", 0) == (0 if d["status"] == st.INVALID else 1)
    return funnel_report(store, campaign)["status"]


def test_database_restart_mid_campaign(gen80, tmp_path):
    """Two launchers run while the embedded server is stopped and started again (same port, same data):
    they wait and carry on (or recovery puts back what died with the connection); every candidate is
    decided exactly once, with the same verdicts as an undisturbed run."""
    from fireworks import LaunchPad

    from fw_screen.store import ResultsStore
    from fw_screen.orchestration.launchpad import prepare_launchpad

    home, port = tmp_path / "home", free_port()
    info = server.start(home, port=port)
    try:
        lp_file = info["launchpad"]
        lp = LaunchPad.from_file(lp_file)
        prepare_launchpad(lp)
        store = ResultsStore.from_launchpad(lp)
        fworker = fworker_file(tmp_path, Path(lp_file), ["cheap"])
        # the undisturbed reference run
        ref_spec = load_spec(campaign="calm", batch_size=10, dedup_shards=2)
        submit(lp, store, gen80, ref_spec)
        assert launch_workers(lp_file, fworker, 2, tmp_path / "calm", sleep=1) == [0, 0]
        calm = _decided_once(store, "calm", 80)

        spec = load_spec(campaign="storm", batch_size=10, dedup_shards=2)
        summary, wf = submit(lp, store, gen80, spec)
        storm_fws = [fw.fw_id for fw in wf.fws]
        codes: list = []
        workers = threading.Thread(target=lambda: codes.extend(  # what `fw-screen run -n 2` runs (grace shortened)
            launch_workers(lp_file, fworker, 2, tmp_path / "storm", sleep=1, checkout_grace_s=20)))
        workers.start()

        def mid_firework():  # one Firework done and another one running: the server goes away under its task
            states = [fw["state"] for fw in lp.fireworks.find({"fw_id": {"$in": storm_fws}}, {"state": 1})]
            return "COMPLETED" in states and "RUNNING" in states

        _wait_for(mid_firework, 120, "a Firework running after the first one finished", poll=0.05)
        server.stop(home)
        time.sleep(5)
        server.start(home, port=port)
        workers.join(timeout=900)
        assert not workers.is_alive()
        assert codes == [0, 0]  # a launcher whose connection was reset is started again
        lp = LaunchPad.from_file(lp_file)
        store = ResultsStore.from_launchpad(lp)
        # whatever died with the connection (a Firework FIZZLED by AutoReconnect, a lost run, a checkout or a
        # workflow lock cut in half) was put back by the launchers' supervisor: nothing left for `recover`
        left = list(lp.fireworks.find({"spec.campaign": "storm", "spec.stage": {"$ne": "stability"},
                                       "state": {"$ne": "COMPLETED"}}, {"fw_id": 1, "state": 1, "name": 1}))
        assert left == []
        assert lp.workflows.count_documents({"locked": True}) == 0
        r = recover(lp, store, "storm", expiration_secs=0, checkout_grace_s=0)
        assert r["lost_fireworks"] == r["fizzled_rerun"] == r["checkouts_released"] == r["fizzled_left"] == [], r
        assert _decided_once(store, "storm", 80) == calm
    finally:
        server.stop(home)


def test_batch_submitted_while_launchers_run(gen80, launchpad, launchpad_file, store, spec, tmp_path):
    """Submission A, two launchers, then while they run: submission B (a new file holding 20 of A's
    generations and 20 others) and A again.  No candidate twice, no Firework twice, and each of A's
    generations repeated in B ends as the same structure as its original (one representative for both)."""
    df = pd.read_parquet(gen80)
    a_path, b_path = tmp_path / "a.parquet", tmp_path / "b.parquet"
    df.iloc[:40].to_parquet(a_path)
    pd.concat([df.iloc[:20], df.iloc[40:60]], ignore_index=True).to_parquet(b_path)
    first, wf_a = submit(launchpad, store, a_path, spec)
    assert first["new"] == 40
    procs = [_rlaunch(str(launchpad_file), fworker_file(tmp_path, launchpad_file, ["cheap"]), tmp_path / f"w{i}")
             for i in range(2)]
    try:
        _wait_for(lambda: launchpad.fireworks.count_documents({"state": {"$in": ["RUNNING", "COMPLETED"]}}) >= 1,
                  60, "launchers at work")
        b, wf_b = submit(launchpad, store, b_path, spec)
        again, wf_again = submit(launchpad, store, a_path, spec)
        assert all(p.poll() is None for p in procs)  # both submitted while the launchers work
        assert b["new"] == 40 and again["new"] == 0 and again["existing"] == 40 and wf_again is None
        assert [p.wait(timeout=600) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill9(p)
    # B's workflow may have been added after A's uniqueness ran: a late launcher run picks it up
    assert launch_workers(str(launchpad_file), fworker_file(tmp_path, launchpad_file, ["cheap"]), 1,
                          tmp_path / "late", sleep=1) == [0]
    _decided_once(store, "test", 80)
    cheap = {"spec.stage": {"$in": ["validity", "uniqueness"]}}
    assert launchpad.fireworks.count_documents(cheap) == len(wf_a.fws) + len(wf_b.fws)
    fws = list(launchpad.fireworks.find(cheap, {"fw_id": 1, "state": 1, "launches": 1, "archived_launches": 1}))
    launches = list(launchpad.launches.find({"fw_id": {"$in": [f["fw_id"] for f in fws]}},
                                            {"launch_id": 1, "fw_id": 1, "state": 1, "host": 1, "fworker.name": 1}))
    assert len(launches) == len(fws), (fws, launches)  # no Firework ran twice
    assert sorted(launchpad.fireworks.distinct("spec.batch", {"spec.stage": "validity"})) == sorted(
        store.candidates.distinct("batch", {"campaign": "test"}))  # one validity Firework per batch

    docs = {(d["source"]["file"].rsplit("/", 1)[-1], d["source"]["row"]): d for d in store.candidates.find(
        {"campaign": "test"}, {"status": 1, "duplicate_of": 1, "source": 1})}

    def root(d):
        return d["duplicate_of"] if d["status"] == st.DUPLICATE else d["_id"]

    reps = {d["_id"] for d in docs.values() if d["status"] in (st.KNOWN, st.NOVEL)}
    for d in docs.values():
        if d["status"] == st.DUPLICATE:
            assert d["duplicate_of"] in reps  # a duplicate points at a representative
    for row in range(20):
        orig, copy = docs[("a.parquet", row)], docs[("b.parquet", row)]
        if orig["status"] == st.INVALID:
            assert copy["status"] == st.INVALID
        else:
            assert root(orig) == root(copy) and st.DUPLICATE in (orig["status"], copy["status"])


# ----------------------------------------------------- the connection dropped at a chosen database write
@pytest.fixture(scope="module")
def failpoint_server(tmp_path_factory):
    """The embedded server as fw-screen runs it (:func:`fw_screen.server.embedded._command`), with mongod's test
    commands on, so a test can drop a client's connection at its k-th ``findAndModify``
    (``configureFailPoint failCommand`` with ``closeConnection``, scoped to one ``appName``)."""
    port = free_port()
    proc, _ = server._launch(tmp_path_factory.mktemp("failpoint-db"), "127.0.0.1", port, False, 60.0, None,
                             extra=("--enable-test-commands",))
    try:
        yield port
    finally:
        server._terminate(proc)


def _failpoint_campaign(port: int, name: str, generations: Path, tmp_path: Path):
    """A LaunchPad database ``name`` on the failpoint server with the 20 generations submitted; its file gives
    the launchers ``appname`` = ``name`` (what the failpoint is scoped to).  Returns (file, LaunchPad, store,
    workflow)."""
    import yaml
    from fireworks import LaunchPad

    from fw_screen.store import ResultsStore
    from fw_screen.orchestration.launchpad import prepare_launchpad

    lp_file = tmp_path / "launchpad.yaml"
    lp_file.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": port, "name": name, "strm_lvl": "WARNING",
                                       "mongoclient_kwargs": {"retryWrites": False, "appname": name}}))
    lp = LaunchPad(host="127.0.0.1", port=port, name=name, mongoclient_kwargs={"retryWrites": False})
    prepare_launchpad(lp)
    store = ResultsStore.from_launchpad(lp)
    _, wf = submit(lp, store, generations, load_spec(campaign="fp", batch_size=10, dedup_shards=1))
    return lp_file, lp, store, wf


@contextlib.contextmanager
def _connection_dropped_at(port: int, k: int, app: str):
    """While inside: the server closes the connection of client ``app`` at its k-th findAndModify (once)."""
    import pymongo

    admin = pymongo.MongoClient("127.0.0.1", port, retryWrites=False).admin
    admin.command({"configureFailPoint": "failCommand", "mode": {"skip": k, "times": 1},
                   "data": {"failCommands": ["findAndModify"], "closeConnection": True, "appName": app}})
    try:
        yield
    finally:
        admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        admin.client.close()


@pytest.fixture(scope="module")
def gen20(tmp_path_factory) -> Path:
    """20 generations: two validity Fireworks of 10 and one uniqueness shard."""
    return generations_table(tmp_path_factory.mktemp("gen20"), 18, seed=3, repeats=2)


#: which FireWorks write the k-th findAndModify of a launcher's first Firework is (FireWorks 2.x), and what
#: losing the connection there leaves behind
DROPPED_AT = {
    1: "checkout: Firework RESERVED, no Launch yet (launcher dies)",
    3: "checkout: Launch stored RUNNING, Firework still RESERVED without it (launcher dies)",
    4: "checkout: workflow lock not taken; FireWorks fizzles the Firework (launcher dies)",
    6: "checkout: workflow lock taken, never released (launcher dies)",
    8: "inside the task: the Firework FIZZLES with AutoReconnect (launcher lives on)",
}


#: the sweep (``make test-all``): every findAndModify of the run up to the uniqueness shard's checkout
SWEEP = [pytest.param(k, marks=pytest.mark.slow) for k in range(0, 32) if k not in DROPPED_AT]


@pytest.mark.parametrize("k", sorted(DROPPED_AT) + SWEEP)
def test_connection_dropped_inside_fireworks_bookkeeping(failpoint_server, gen20, k, tmp_path):
    """The launcher's connection is closed by the server at its k-th findAndModify, i.e. in the middle of
    FireWorks' own bookkeeping, where a node or network failure leaves states no FireWorks command repairs
    by itself (a Firework RESERVED for good, a Launch its Firework does not list, a workflow locked by a
    dead process).  ``launch_workers`` (``fw-screen run``) puts it all back and the campaign finishes with
    every candidate decided exactly once, without ``fw-screen recover``."""
    port, name = failpoint_server, f"fp{k}"
    lp_file, lp, store, wf = _failpoint_campaign(port, name, gen20, tmp_path)
    with _connection_dropped_at(port, k, name):
        codes = launch_workers(str(lp_file), fworker_file(tmp_path, lp_file, ["cheap"]), 1, tmp_path / "w",
                               sleep=1, checkout_grace_s=10)
    assert codes == [0]
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "w").glob("*/rlaunch.log"))
    errors = "".join(str(d) for d in lp.launches.find({"state": "FIZZLED"}, {"action": 1}))
    assert "connection closed" in logs + errors, "the failpoint did not fire"
    cheap = [fw.fw_id for fw in wf.fws]
    assert {d["state"] for d in lp.fireworks.find({"fw_id": {"$in": cheap}}, {"state": 1})} == {"COMPLETED"}
    assert lp.workflows.count_documents({"locked": True}) == 0
    assert lp.launches.count_documents({"state": {"$in": ["RUNNING", "RESERVED"]}}) == 0
    _decided_once(store, "fp", 20)
    lp.connection.drop_database(name)


@pytest.mark.parametrize("k", [3, 6])
def test_recover_puts_back_what_a_plain_rlaunch_left(failpoint_server, gen20, k, tmp_path):
    """A plain ``rlaunch`` (no ``fw-screen run`` around it) loses its connection (k=3) between storing its
    Launch and marking the Firework RUNNING: the Firework stays RESERVED for good; or (k=6) after taking its
    workflow's lock, which nobody then releases (FireWorks waits 5 min for it, then fails, every time).  No
    FireWorks command repairs either.  ``fw-screen recover`` removes the lock (locked and unchanged while it
    watches, ``--lock-wait``), puts the RESERVED Firework back (no Launch of its own, older than
    ``--checkout-grace``; the orphan Launch is fizzled) and reruns the lost run; a dry run changes nothing."""
    port, name = failpoint_server, f"fprec{k}"
    lp_file, lp, store, _ = _failpoint_campaign(port, name, gen20, tmp_path)
    with _connection_dropped_at(port, k, name):
        proc = _rlaunch(str(lp_file), fworker_file(tmp_path, lp_file, ["cheap"]), tmp_path / "w")
        assert proc.wait(timeout=120) != 0  # the launcher died with its connection

    def line(out: str, start: str) -> str:
        return next(x for x in out.splitlines() if x.startswith(start))

    orphan = lp.launches.find_one({}, {"launch_id": 1, "state": 1, "fw_id": 1})
    assert orphan["state"] == "RUNNING"  # a Launch no launcher runs
    fw = lp.fireworks.find_one({"fw_id": orphan["fw_id"]}, {"fw_id": 1, "launches": 1, "state": 1})
    args = ["-c", "fp", "--checkout-grace", "0", "--expiration-secs", "0", "--lock-wait", "2"]
    dry = _recover_cli(lp_file, *args, "--dry-run")
    if k == 3:
        assert fw["state"] == "RESERVED" and fw["launches"] == []  # the Firework does not list it
        assert f"1 [{fw['fw_id']}] (would rerun)" in line(dry, "interrupted checkouts")
        assert "0 []" in line(_recover_cli(lp_file, "-c", "fp", "--dry-run"), "interrupted")  # younger than 300 s
    else:  # FireWorks fizzled the Firework when its workflow refresh failed; the Launch still says RUNNING
        assert fw["state"] == "FIZZLED" and lp.workflows.count_documents({"locked": True}) == 1
        assert line(dry, "workflow locks").endswith(": 1 (would remove)")
    assert lp.fireworks.find_one({"fw_id": fw["fw_id"]})["state"] == fw["state"]  # dry run: untouched
    out = _recover_cli(lp_file, *args)
    assert lp.workflows.count_documents({"locked": True}) == 0
    assert lp.fireworks.find_one({"fw_id": fw["fw_id"]})["state"] == "READY"
    assert lp.launches.find_one({"launch_id": orphan["launch_id"]})["state"] == "FIZZLED"
    assert (f"1 [{fw['fw_id']}] (did rerun)" in line(out, "interrupted checkouts")) == (k == 3)
    assert (f"1 [{fw['fw_id']}] (did rerun)" in line(out, "FIZZLED by database errors")) == (k == 6)

    assert launch_workers(str(lp_file), fworker_file(tmp_path, lp_file, ["cheap"]), 1, tmp_path / "w2",
                          sleep=1) == [0]
    _decided_once(store, "fp", 20)
    lp.connection.drop_database(name)
