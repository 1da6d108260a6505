"""fw-screen on a real one-node SLURM cluster (tests/slurm_cluster.py: Debian's slurm-wlm and munge, started by
the test for this host; ``make slurm`` installs them).

The queue adapters and FWorkers are the repository's own ``launchpad/my_qadapter_*slurm.yaml`` and
``launchpad/my_fworker_*.yaml``, with only what launchpad/README.md (step 4) says to adapt replaced: the paths
(``/home/fwuser/...``: LaunchPad, FWorker, venv, log folder), the core counts and memory (to this node's) and
the ``module load`` line (Debian's pw.x needs none).  ``qlaunch`` submits them with ``sbatch``; the real
slurmd runs the jobs, whose ``rlaunch`` reaches the session's database server over TCP on this machine.

* default run: a small Li campaign (``fw-screen references`` + ``fw-screen submit``) taken through the cheap,
  ML and DFT categories by one ``qlaunch ... rapidfire`` job each, every candidate decided once;
* slow: jobs killed by SLURM at their time limit mid-CHGNet and mid-pw.x, recovered by ``fw-screen recover``
  (and the DFT wall-time checkpoint), nothing lost or done twice; ``scancel`` of a pending job leaves nothing.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from fw_screen import state as st

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "launchpad"
DATA = Path(__file__).parent / "data"
EXAMPLES = REPO / "examples"
needs_pw = pytest.mark.skipif(shutil.which("pw.x") is None, reason="pw.x (Quantum ESPRESSO) is not on PATH")

ADAPTERS = {"cheap": "my_qadapter_slurm.yaml", "ml": "my_qadapter_ml_slurm.yaml", "dft": "my_qadapter_dft_slurm.yaml"}


# --------------------------------------------------------------------------------------------- the guide's files
def _adapt(text: str, cfg: Path, logdir: Path) -> str:
    """The guide's step 4: ``sed s#/home/fwuser#$HOME#``, here with this test's folders."""
    return (text.replace("/home/fwuser/fw-config/my_launchpad.yaml", str(cfg / "my_launchpad.yaml"))
            .replace("/home/fwuser/fw-config/", f"{cfg}/")
            .replace("/home/fwuser/fw-screen/.venv", str(BIN.parent))
            .replace("/home/fwuser/fw-logs", str(logdir))
            .replace("/home/fwuser/pseudo/SSSP_1.3.0_PBE_efficiency", str(DATA / "pseudo")))


def guide_config(tmp_path: Path, launchpad_file: Path, **adapter_overrides) -> Path:
    """``~/fw-config`` as the guide makes it: the LaunchPad file, the repository's FWorker and SLURM queue files
    with their paths adapted, the core counts and memory fitted to this one node; returns the folder."""
    cfg = tmp_path / "fw-config"
    logdir = tmp_path / "fw-logs"
    cfg.mkdir(parents=True)
    logdir.mkdir(parents=True)
    shutil.copy(launchpad_file, cfg / "my_launchpad.yaml")
    for cat in ("cheap", "ml", "dft"):
        fworker = yaml.safe_load(_adapt((GUIDE / f"my_fworker_{cat}.yaml").read_text(), cfg, logdir))
        (cfg / f"my_fworker_{cat}.yaml").write_text(yaml.safe_dump(fworker))
        text = _adapt((GUIDE / ADAPTERS[cat]).read_text(), cfg, logdir)
        text = text.replace("for i in $(seq 8)", "for i in $(seq 1)")  # one rlaunch per core of the job
        qa = yaml.safe_load(text)
        assert qa["_fw_q_type"] == "SLURM" and qa["_fw_name"] == "CommonAdapter"
        assert str(cfg) in qa["rocket_launch"] and f"source {BIN.parent}/bin/activate" in qa["pre_rocket"]
        # the guide: "not needed for Debian's pw.x"; export lines are kept as they are
        qa["pre_rocket"] = "\n".join(line for line in qa["pre_rocket"].splitlines()
                                     if not line.strip().startswith("module load"))
        assert "OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1" in qa["pre_rocket"]  # one thread
        # "set the core counts": this node has 2 CPUs; pw.x runs serially (one rank)
        qa.update({"ntasks": 1, "cpus_per_task": 1})
        if "mem" in qa:
            qa["mem"] = "3G"
        qa.update(adapter_overrides.get(cat, {}))
        (cfg / ADAPTERS[cat]).write_text(yaml.safe_dump(qa))
    return cfg


def qlaunch(cluster, cfg: Path, cat: str, launch_dir: Path) -> str:
    """``qlaunch -l ... -w ... -q ... rapidfire -m 1 --nlaunches 1`` as the guide's step 7 (one job); its id."""
    launch_dir.mkdir(parents=True, exist_ok=True)
    before = set(cluster.jobs())
    out = subprocess.run([str(BIN / "qlaunch"), "-l", str(cfg / "my_launchpad.yaml"), "-w",
                          str(cfg / f"my_fworker_{cat}.yaml"), "-q", str(cfg / ADAPTERS[cat]), "rapidfire", "-m", "1",
                          "--nlaunches", "1"], cwd=launch_dir, capture_output=True, text=True, timeout=120,
                         env=cluster.env)
    assert out.returncode == 0, out.stdout + out.stderr
    new = sorted(set(cluster.jobs()) - before, key=int)
    assert len(new) == 1, (new, out.stdout, out.stderr)
    return new[0]


def wait_job(cluster, job_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = cluster.job(job_id)
        if job["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s: {cluster.job(job_id)}")


def job_output(job: dict) -> str:
    out = Path(job["StdOut"])
    err = out.with_suffix(".error")
    return "".join(p.read_text(errors="replace")[-4000:] for p in (out, err) if p.exists())


def fw_cli(*args: str, env=None) -> str:
    out = subprocess.run([str(BIN / "fw-screen"), *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


# ------------------------------------------------------------------------------------------------ the campaign
def li_candidates(folder: Path) -> Path:
    """Five generated Li cells (CIFs as a generator writes them, symmetrised): diamond Li (novel, 2 sites), the
    same 3 % larger (a duplicate of it), bcc Li twice (MP's mp-135: known) and one with two atoms 0.4 A apart
    (invalid)."""
    folder.mkdir(parents=True, exist_ok=True)
    fcc = lambda a: Lattice([[0, a, a], [a, 0, a], [a, a, 0]])  # noqa: E731
    cells = {"diamond": Structure(fcc(2.9), ["Li", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
             "diamond_big": Structure(fcc(3.0), ["Li", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
             "bcc": Structure(Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
             "bcc_big": Structure(Lattice.cubic(3.52), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
             "clash": Structure(Lattice.cubic(3.5), ["Li", "Li"], [[0, 0, 0], [0.1, 0.05, 0.0]])}
    for name, s in cells.items():
        CifWriter(s, symprec=0.1).write_file(folder / f"{name}.cif")
    return folder


def campaign_spec(path: Path, **extra) -> Path:
    """The guide's step 5 campaign spec, with DFT settings small enough for a test (tests/test_faults.py's)."""
    spec = {"campaign": "slurm", "batch_size": 5, "dedup_shards": 1,
            "property": {"method": "ml"},  # promotion on the ML stage's gap: no DFT-lite tier here
            "promotion": {"require_target_hit": False, "require_converged": False, "max_e_above_hull": 1.0},
            "dft": {"reference_polymorph_tolerance": 0.02,
                    "qe": {"kppa": 150, "nscf_kppa": 250, "ecutwfc": 30, "ecutrho": 240, "press_conv_thr": 5.0,
                           "forc_conv_thr": 0.01}}}
    for key, value in extra.items():
        spec.setdefault(key, {}).update(value) if isinstance(value, dict) else spec.__setitem__(key, value)
    path.write_text(yaml.safe_dump(spec))
    return path


def submit_campaign(tmp_path: Path, cfg: Path, **spec_extra) -> None:
    """The guide's step 6: references, then the submission."""
    lp = str(cfg / "my_launchpad.yaml")
    fw_cli("references", "-l", lp, str(EXAMPLES / "mp_Li-Co-Ni-O.json.gz"))
    out = fw_cli("submit", "-l", lp, "--spec", str(campaign_spec(cfg / "campaign.yaml", **spec_extra)), "-c",
                 "slurm", str(li_candidates(tmp_path / "generated")))
    assert "5 new candidates" in out, out


def fw_states(launchpad, **query) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fw in launchpad.fireworks.find(query, {"state": 1}):
        counts[fw["state"]] = counts.get(fw["state"], 0) + 1
    return counts


def assert_campaign_done_once(launchpad, store) -> dict:
    """Every Firework COMPLETED; every candidate at its final state, each stage decided exactly once."""
    assert fw_states(launchpad) == {"COMPLETED": launchpad.fireworks.count_documents({})}
    docs = {d["_id"]: d for d in store.candidates.find({"campaign": "slurm"})}
    assert len(docs) == 5
    final = sorted(d["status"] for d in docs.values())
    assert final == sorted([st.INVALID, st.DUPLICATE, st.DUPLICATE, st.KNOWN, st.DFT_DONE]), [
        (d["status"], (d.get("dft") or {}).get("reason")) for d in docs.values()]
    for d in docs.values():
        runs = d["runs"]
        assert runs["validity"] == 1
        if d["status"] == st.DFT_DONE:
            assert runs == {"validity": 1, "uniqueness": 1, "ml": 1, "promotion": 1, "dft": 1}, runs
            assert d["dft"]["hull_status"] == "done", d["dft"].get("hull_reason")
        elif d["status"] != st.INVALID:
            assert runs == {"validity": 1, "uniqueness": 1}, runs
    refs = list(store.dft_references.find())
    assert [r["status"] for r in refs] == ["done"] and refs[0]["attempts"] == 1  # Li metal, computed once
    # one launch per Firework, none rerun: nothing done twice
    for fw in launchpad.fireworks.find({}, {"fw_id": 1, "launches": 1}):
        assert len(fw["launches"]) == 1, fw
    assert launchpad.launches.count_documents({}) == launchpad.fireworks.count_documents({})
    assert store.held_locks() == []  # no lease left behind
    return docs


@needs_pw
def test_qlaunch_runs_cheap_ml_and_dft_jobs_on_slurm(slurm_cluster, launchpad, launchpad_file, store, tmp_path):
    cluster = slurm_cluster
    cfg = guide_config(tmp_path, launchpad_file)
    submit_campaign(tmp_path, cfg)
    jobs = {}
    for cat in ("cheap", "ml", "dft"):
        assert fw_states(launchpad, **{"spec._category": cat}).get("READY"), (cat, fw_states(launchpad), [
            (d["_id"], d["status"], d.get("duplicate_of"), d.get("reason")) for d in store.candidates.find()])
        jobs[cat] = qlaunch(cluster, cfg, cat, tmp_path / "fw-runs" / cat)
        job = wait_job(cluster, jobs[cat])
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (cat, job, job_output(job))
        # the job did all of its category's work, and only that
        assert set(fw_states(launchpad, **{"spec._category": cat})) == {"COMPLETED"}, job_output(job)
        assert job["JobName"] == {"cheap": "fw-screen", "ml": "fw-screen-ml", "dft": "fw-screen-dft"}[cat]
    assert_campaign_done_once(launchpad, store)
    # every launch ran on the node, inside its category's job
    assert {x["host"] for x in launchpad.launches.find({}, {"host": 1})} == {socket.gethostname()}
    assert cluster.jobs() == {j: "COMPLETED" for j in jobs.values()}
    assert {j: s for j, s in cluster.completions().items() if j in jobs.values()} == {
        j: "COMPLETED" for j in jobs.values()}


# ---------------------------------------------------------------------------------------------------- faults
def pw_outputs_unfinished(launch_dir: Path) -> list[Path]:
    """pw.x output files of a launch folder without pw.x's closing ``JOB DONE`` (pw.x was stopped in them)."""
    return [p for p in launch_dir.rglob("*.out") if p.parent.name != launch_dir.name and "PWSCF" in
            p.read_text(errors="replace") and "JOB DONE" not in p.read_text(errors="replace")]


def recover_cli(cfg: Path) -> str:
    """The guide's recovery after killed jobs: ``fw-screen recover`` (lost runs after 2 s without a ping here;
    FireWorks' default waits 4 h)."""
    return fw_cli("recover", "-l", str(cfg / "my_launchpad.yaml"), "-c", "slurm", "--expiration-secs", "2")


def killed_at_time_limit(cluster, job_id: str) -> dict:
    job = wait_job(cluster, job_id)
    assert job["JobState"] == "TIMEOUT", (job, job_output(job))
    assert job["TimeLimit"] == "00:01:00"
    assert "DUE TO TIME LIMIT" in job_output(job), job_output(job)
    return job


def killed_recovered_rerun(cluster, launchpad, cfg, cfg_short, category: str, runs, check_killed) -> list[int]:
    """A ``category`` job of the short adapter killed by SLURM at its time limit, its one Firework still
    RUNNING (nobody knows yet; ``check_killed(run folder)`` checks what it was doing); ``fw-screen recover``
    puts it back, a job of the repository's adapter finishes it and every Firework ends COMPLETED.  Returns
    the killed Firework's id in a list."""
    job = killed_at_time_limit(cluster, qlaunch(cluster, cfg_short, category, runs / f"{category}1"))
    running = [fw["fw_id"] for fw in launchpad.fireworks.find({"state": "RUNNING"}, {"fw_id": 1})]
    assert len(running) == 1, job
    check_killed(runs / f"{category}1")
    time.sleep(3)
    out = recover_cli(cfg)
    assert f"1 Firework(s) {running} -> rerun (READY)" in out, out
    job = wait_job(cluster, qlaunch(cluster, cfg, category, runs / f"{category}2"))
    assert job["JobState"] == "COMPLETED", job_output(job)
    assert fw_states(launchpad) == {"COMPLETED": launchpad.fireworks.count_documents({})}
    return running


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ml_job_killed_at_its_time_limit_mid_chgnet_is_recovered(slurm_cluster, launchpad, launchpad_file, store,
                                                                 tmp_path):
    """The ML job gets a 1-minute SLURM time limit, too short for its relaxation (600 CHGNet steps, minutes):
    SLURM kills it mid-relaxation.  ``fw-screen recover`` puts the Firework back, a job of the repository's
    adapter (4 h) finishes it, and every candidate ends decided once."""
    cluster = slurm_cluster
    cfg = guide_config(tmp_path, launchpad_file)
    cfg_short = guide_config(tmp_path / "short", launchpad_file, ml={"walltime": "00:01:00"})
    submit_campaign(tmp_path, cfg, ml={"fmax": 1e-9, "max_steps": 600},  # never converges: 600 steps, minutes
                    promotion={"auto": False})
    job = wait_job(cluster, qlaunch(cluster, cfg, "cheap", tmp_path / "fw-runs" / "cheap"))
    assert job["JobState"] == "COMPLETED", job_output(job)

    relax_fw = launchpad.fireworks.find_one({"spec.stage": "stability"})

    def killed(_):
        assert store.candidates.count_documents({"status": st.NOVEL}) == 1  # the relaxation had not finished

    assert killed_recovered_rerun(cluster, launchpad, cfg, cfg_short, "ml", tmp_path / "fw-runs",
                                  killed) == [relax_fw["fw_id"]]
    docs = list(store.candidates.find({"campaign": "slurm"}))
    assert sorted(d["status"] for d in docs) == sorted([st.INVALID, st.DUPLICATE, st.DUPLICATE, st.KNOWN,
                                                        st.ML_DONE])
    relaxed = next(d for d in docs if d["status"] == st.ML_DONE)
    assert relaxed["runs"] == {"validity": 1, "uniqueness": 1, "ml": 1}  # decided once
    assert relaxed["ml"]["relax"]["steps"] == 600
    for fw in launchpad.fireworks.find({}, {"fw_id": 1}):
        launches = [x["state"] for x in launchpad.launches.find({"fw_id": fw["fw_id"]}).sort("launch_id", 1)]
        assert launches == (["FIZZLED", "COMPLETED"] if fw["fw_id"] == relax_fw["fw_id"] else ["COMPLETED"]), (
            fw, launches)
    assert store.held_locks() == []
    assert "0 Firework(s) []" in recover_cli(cfg)  # nothing left to recover


@pytest.mark.slow
@pytest.mark.timeout(1800)
@needs_pw
def test_dft_job_killed_at_its_time_limit_mid_pwx_is_recovered(slurm_cluster, launchpad, launchpad_file, store,
                                                               tmp_path):
    """A promoted diamond-Li candidate at production k-point densities (a pw.x chain of minutes) and its Li
    reference; the DFT job gets a 1-minute SLURM time limit and is killed while pw.x runs.  ``fw-screen
    recover`` puts the killed Firework back (its reference claim stays its own), a job of the repository's
    adapter finishes the chain: one DFT result, the reference computed once."""
    from fw_screen.orchestration.fireworks import dft_workflow
    from fw_screen.spec import load_spec
    from fw_screen.stages import load_references, run_promotion

    cluster = slurm_cluster
    cfg = guide_config(tmp_path, launchpad_file)
    cfg_short = guide_config(tmp_path / "short", launchpad_file, dft={"walltime": "00:01:00"})
    spec = load_spec(campaign="slurm", property={"method": "ml"},
                     promotion={"require_target_hit": False, "require_converged": False},
                     dft={"reference_polymorph_tolerance": 0.02, "qe": {"kppa": 1000, "nscf_kppa": 2000}})
    store.register_campaign(spec)
    load_references(store, EXAMPLES / "mp_Li-Co-Ni-O.json.gz")
    a = 2.9
    li = Structure(Lattice([[0, a, a], [a, 0, a], [a, a, 0]]), ["Li", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    store.candidates.insert_one({
        "_id": "slurm:li", "campaign": "slurm", "status": st.ML_DONE, "seq": 0, "reduced_formula": "Li",
        "elements": ["Li"], "nsites": 2, "structure_reduced": li.as_dict(),
        "ml": {"e_above_hull": 0.05, "relax": {"status": "converged"}, "structure_relaxed": li.as_dict(),
               "band_gap": {"band_gap": 0.0}, "hits": {}}})
    assert run_promotion(store, "slurm")["promoted"] == ["slurm:li"]
    launchpad.add_wf(dft_workflow(store, ["slurm:li"], db_file=str(cfg / "my_launchpad.yaml")))

    def killed(run_dir):
        assert pw_outputs_unfinished(run_dir), "the time limit should land inside a pw.x run"

    killed_recovered_rerun(cluster, launchpad, cfg, cfg_short, "dft", tmp_path / "fw-runs", killed)
    d = store.candidates.find_one({"_id": "slurm:li"})
    assert d["status"] == st.DFT_DONE and d["runs"] == {"promotion": 1, "dft": 1}, d.get("dft", {}).get("reason")
    assert d["dft"]["hull_status"] == "done"
    refs = list(store.dft_references.find())
    assert [r["status"] for r in refs] == ["done"] and refs[0]["attempts"] <= 2  # the killed run + its rerun
    for fw in launchpad.fireworks.find({}, {"fw_id": 1}):
        launches = [x["state"] for x in launchpad.launches.find({"fw_id": fw["fw_id"]}).sort("launch_id", 1)]
        assert launches == (["FIZZLED", "COMPLETED"] if fw["fw_id"] in running else ["COMPLETED"]), (fw, launches)
    assert store.held_locks() == []
    assert "0 Firework(s) []" in recover_cli(cfg)


@pytest.mark.slow
def test_scancel_of_a_pending_job_leaves_nothing_behind(slurm_cluster, launchpad, launchpad_file, store, tmp_path):
    """A job that waits in the queue (the node is drained) is cancelled: its Fireworks stay READY (qlaunch's
    default is not reservation mode), no Launch, no lease; the next job runs them once."""
    cluster = slurm_cluster
    cfg = guide_config(tmp_path, launchpad_file)
    submit_campaign(tmp_path, cfg)
    before = fw_states(launchpad)
    cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=drain", "reason=fw-screen-test")
    try:
        job_id = qlaunch(cluster, cfg, "cheap", tmp_path / "fw-runs" / "cheap1")
        time.sleep(5)
        job = cluster.job(job_id)
        assert job["JobState"] == "PENDING", job
        cluster.run("scancel", job_id)
        deadline = time.monotonic() + 30
        while cluster.job(job_id)["JobState"] != "CANCELLED" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cluster.job(job_id)["JobState"] == "CANCELLED"
    finally:
        cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=resume")
    assert fw_states(launchpad) == before and launchpad.launches.count_documents({}) == 0
    assert store.held_locks() == [] and not launchpad.fireworks.find_one({"state": {"$in": ["RESERVED", "RUNNING"]}})
    out = recover_cli(cfg)
    assert "0 Firework(s) []" in out and "interrupted checkouts (RESERVED without a Launch for 300 s): 0" in out, out

    job = wait_job(cluster, qlaunch(cluster, cfg, "cheap", tmp_path / "fw-runs" / "cheap2"))
    assert job["JobState"] == "COMPLETED", job_output(job)
    assert set(fw_states(launchpad, **{"spec._category": "cheap"})) == {"COMPLETED"}
    for d in store.candidates.find({"campaign": "slurm"}):
        assert d["runs"]["validity"] == 1
