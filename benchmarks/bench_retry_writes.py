#!/usr/bin/env python
"""``retryWrites`` on the embedded SecantusDB server: 200 trivial Fireworks with pymongo's default
(``retryWrites=true``) against ``retryWrites=false`` (what ``fw-screen db start`` writes into the LaunchPad
file), on one long-lived server, alternating, so that both see the server's bookkeeping grow.

Each round adds ``--n`` one-task Fireworks (``ScriptTask`` running ``true``) to a fresh database on the same
server and runs them with one ``rlaunch rapidfire``; printed: wall time per round and the ratio.

    .venv/bin/python benchmarks/bench_retry_writes.py [--n 200] [--rounds 2]
"""

from __future__ import annotations

import _common  # noqa: F401 -- single-threaded BLAS, repository on sys.path

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from _common import REPO, code_version, free_port, save_results


def one_round(info: dict, retry: bool, n: int, work: Path) -> dict:
    from fireworks import Firework, LaunchPad, Workflow
    from fireworks.user_objects.firetasks.script_task import ScriptTask

    conf = {"host": info["host"], "port": info["port"], "name": f"rw_{uuid.uuid4().hex[:8]}",
            "strm_lvl": "ERROR", "mongoclient_kwargs": {"retryWrites": retry}}
    lp_file = work / f"{conf['name']}.yaml"
    lp_file.write_text(yaml.safe_dump(conf))
    lp = LaunchPad.from_file(str(lp_file))
    lp.reset("", require_password=False)
    lp.add_wf(Workflow([Firework(ScriptTask.from_str("true"), name=f"t{i}") for i in range(n)]))
    run_dir = work / conf["name"]
    run_dir.mkdir()
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "rlaunch"), "-s", "-l", str(lp_file), "rapidfire",
                    "--sleep", "1"], cwd=run_dir, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    done = lp.fireworks.count_documents({"state": "COMPLETED"})
    lp.connection.drop_database(lp.name)
    return {"retryWrites": retry, "n": n, "completed": done, "wall_s": round(wall, 2),
            "ms_per_firework": round(1000 * wall / n, 1)}


def main(argv=None) -> int:
    from fw_screen.server import embedded as server

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2, help="alternating false/true pairs")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retry_writes.json"))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fws-rw-"))
    t_start = time.perf_counter()
    info = server.start(work / "server", port=free_port())
    rows = []
    try:
        for _ in range(args.rounds):
            for retry in (False, True):
                r = one_round(info, retry, args.n, work)
                rows.append(r)
                print(f"retryWrites={str(retry).lower():<5} {r['completed']}/{r['n']} Fireworks in {r['wall_s']:.1f} s "
                      f"({r['ms_per_firework']:.0f} ms each)")
    finally:
        server.stop(work / "server")
    false_s = sum(r["wall_s"] for r in rows if not r["retryWrites"])
    true_s = sum(r["wall_s"] for r in rows if r["retryWrites"])
    print(f"retryWrites=true / false: {true_s / false_s:.2f}x ({true_s:.1f} s vs {false_s:.1f} s over "
          f"{args.rounds} round(s) each)")
    save_results(Path(args.out), {"rows": rows, "ratio_true_over_false": round(true_s / false_s, 2),
                                  "code": code_version(), "load_1min": os.getloadavg()[0],
                                  "total_s": round(time.perf_counter() - t_start, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
