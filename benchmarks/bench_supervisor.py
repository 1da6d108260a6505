#!/usr/bin/env python
"""What the launcher supervision and the atomic ``findAndModify`` cost, each against the naive way.

1. ``findAndModify`` counters: ``--threads`` connections x ``--increments`` ``find_one_and_update({}, {"$inc"})``
   (how FireWorks takes Launch and Firework ids) on a plain ``secantusd-py`` and on the server
   ``fw-screen db start`` runs (``python -m fw_screen.server.secantusd``): wall time and distinct values handed out
   (a correct server hands out every value once).
2. ``fw-screen run``'s supervision: ``--n`` one-task Fireworks (``ScriptTask`` running ``true``) in
   ``--workflows`` workflows, run by ``--workers`` launchers under ``launch_workers`` (supervised) and as the
   same number of bare ``rlaunch rapidfire`` processes (naive), in ABBA order on fresh databases of one
   embedded server (it slows a little as it ages); then the cost of each query a supervisor look makes on the finished LaunchPad.

    .venv/bin/python benchmarks/bench_supervisor.py [--n 500] [--workflows 5] [--workers 2] [--rounds 2]
"""

from __future__ import annotations

import _common  # noqa: F401 -- single-threaded BLAS, repository on sys.path

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

from _common import REPO, code_version, free_port, machine_info, save_results


def counters(command: list[str], threads: int, increments: int, work: Path) -> dict:
    """Start a server with ``command``, hammer one counter from ``threads`` connections; stop it."""
    import pymongo

    from fw_screen.server import embedded as server

    port, data = free_port(), Path(tempfile.mkdtemp(dir=work))
    proc = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(data),
                             "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not server.ping("127.0.0.1", port):
            time.sleep(0.2)
        client = pymongo.MongoClient("127.0.0.1", port, retryWrites=False)
        client.bench.c.insert_one({"_id": 1, "n": 0})
        got: list[int] = []
        start = threading.Barrier(threads)

        def work_():
            c = pymongo.MongoClient("127.0.0.1", port, retryWrites=False)
            start.wait()
            mine = [c.bench.c.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})["n"] for _ in range(increments)]
            got.extend(mine)
            c.close()

        ts = [threading.Thread(target=work_) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        final = client.bench.c.find_one({"_id": 1})["n"]
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"calls": len(got), "distinct": len(set(got)), "final_counter": final, "wall_s": round(wall, 3),
            "calls_per_s": round(len(got) / wall, 1)}


def one_round(info: dict, supervised: bool, n: int, n_wf: int, workers: int, work: Path) -> dict:
    from fireworks import Firework, LaunchPad, Workflow
    from fireworks.user_objects.firetasks.script_task import ScriptTask

    from fw_screen.orchestration.supervisor import launch_workers

    conf = {"host": info["host"], "port": info["port"], "name": f"sv_{uuid.uuid4().hex[:8]}",
            "strm_lvl": "ERROR", "mongoclient_kwargs": {"retryWrites": False}}
    lp_file = work / f"{conf['name']}.yaml"
    lp_file.write_text(yaml.safe_dump(conf))
    fworker = work / f"{conf['name']}_fworker.yaml"
    fworker.write_text(yaml.safe_dump({"name": "bench", "category": "", "query": "{}"}))
    lp = LaunchPad.from_file(str(lp_file))
    lp.reset("", require_password=False)
    per = n // n_wf
    for w in range(n_wf):
        lp.add_wf(Workflow([Firework(ScriptTask.from_str("true"), name=f"t{w}.{i}") for i in range(per)]))
    run_dir = work / conf["name"]
    run_dir.mkdir()
    t0 = time.perf_counter()
    if supervised:
        codes = launch_workers(str(lp_file), str(fworker), workers, run_dir, sleep=1)
    else:
        rlaunch = str(Path(sys.executable).parent / "rlaunch")
        procs = []
        for i in range(workers):
            d = run_dir / f"worker{i}"
            d.mkdir()
            procs.append(subprocess.Popen([rlaunch, "-s", "-l", str(lp_file), "-w", str(fworker), "rapidfire",
                                           "--sleep", "1"], cwd=d, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    out = {"supervised": supervised, "fireworks": per * n_wf, "workers": workers, "exit_codes": codes,
           "completed": lp.fireworks.count_documents({"state": "COMPLETED"}), "wall_s": round(wall, 2),
           "ms_per_firework": round(1000 * wall / (per * n_wf), 1)}
    if supervised:
        out["look_ms"] = look_costs(lp, run_dir)
    lp.connection.drop_database(lp.name)
    return out


def look_costs(lp, run_dir: Path, repeat: int = 3) -> dict:
    """Milliseconds for each query of a supervisor look, on the finished LaunchPad (best of ``repeat``)."""
    from fw_screen.orchestration.launchpad import (
        inconsistent_fireworks,
        locked_workflows,
        reserved_without_reservation,
    )
    from fw_screen.orchestration.recovery import recover_launcher

    def best(fn) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(1000 * min(times), 1)

    return {"locked_workflows": best(lambda: locked_workflows(lp)),
            "reserved_without_reservation": best(lambda: reserved_without_reservation(lp)),
            "inconsistent_fireworks (once a minute)": best(lambda: inconsistent_fireworks(lp)),
            "recover_launcher (one folder, at the end)": best(lambda: recover_launcher(lp, run_dir / "worker0"))}


def main(argv=None) -> int:
    from fw_screen.server import embedded as server

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="Fireworks per round (a 100,000-candidate campaign has 504)")
    p.add_argument("--workflows", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="naive/supervised pairs, order alternating (ABBA)")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--increments", type=int, default=200)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "supervisor.json"))
    args = p.parse_args(argv)
    results: dict = {"code": code_version(), "machine": machine_info(), "args": vars(args)}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fws-bench-sv-") as tmp:
        work = Path(tmp)
        plain = [str(Path(sys.executable).parent / "secantusd-py")]
        fixed = server._command()
        results["find_and_modify"] = {"plain secantusd-py": counters(plain, args.threads, args.increments, work),
                                      "fw-screen server": counters(fixed, args.threads, args.increments, work)}
        for name, r in results["find_and_modify"].items():
            print(f"findAndModify counter, {name}: {r['calls']} calls, {r['distinct']} distinct values, "
                  f"{r['wall_s']} s ({r['calls_per_s']}/s)")
        a, b = (results["find_and_modify"][k]["wall_s"] for k in ("plain secantusd-py", "fw-screen server"))
        print(f"  time ratio fw-screen / plain: {b / a:.2f}")

        home = work / "home"
        info = server.start(home, port=free_port())
        try:
            rounds = []
            for i in range(args.rounds):
                for supervised in ((False, True) if i % 2 == 0 else (True, False)):  # ABBA: the server ages
                    r = one_round(info, supervised, args.n, args.workflows, args.workers, work)
                    rounds.append(r)
                    print(f"round {i + 1} {'supervised (launch_workers)' if supervised else 'bare rlaunch'}: "
                          f"{r['completed']}/{r['fireworks']} COMPLETED in {r['wall_s']} s "
                          f"({r['ms_per_firework']} ms per Firework), exit codes {r['exit_codes']}"
                          + (f"; one look: {r['look_ms']} ms" if supervised else ""))
        finally:
            server.stop(home)
    results["rounds"] = rounds
    naive = sum(r["wall_s"] for r in rounds if not r["supervised"])
    sup = sum(r["wall_s"] for r in rounds if r["supervised"])
    results["supervised_over_bare"] = round(sup / naive, 3)
    print(f"supervised / bare rlaunch wall time over {args.rounds} round(s): {sup / naive:.3f}")
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    save_results(Path(args.out), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
