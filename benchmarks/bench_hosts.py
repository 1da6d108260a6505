#!/usr/bin/env python
"""Several worker "hosts" pulling from one database server over TCP (issue 6, scale).

Each host is a Linux network namespace (``ip netns``) joined to a bridge by a veth pair, with an address of
its own (10.77.0.11, .12, ...); the embedded SecantusDB server listens on the bridge's address (10.77.0.1)
only, so every launcher reaches it over a real TCP connection through its own interface, as nodes of a
cluster would.  One ``rlaunch rapidfire`` runs in each namespace (its FWorker named after the host), all
pulling the same campaign's Fireworks.

For each host count (``--hosts 1,2,4``) the same ``--n`` CrystaLLM-pi generations are submitted into a fresh
database on the same server (cheap stages: ingest client-side, then validity and uniqueness Fireworks of
``--batch-size`` candidates) and the launchers run until no work is left.  Printed: wall time, candidates per
second, the ratio against one host (the "naive way": one node), Fireworks run per host, and every candidate
decided exactly once (``runs`` counters).  The machine has 2 cores, so throughput can grow up to about two
hosts and no further here: the figure shows the scaling and where this machine saturates.

Needs root (``ip netns``, veth, a bridge); everything is created under the ``fws-`` prefix and removed at
the end, also on error.

    .venv/bin/python benchmarks/bench_hosts.py [--hosts 1,2,4] [--n 1600] [--batch-size 50]
"""

from __future__ import annotations

import _common  # noqa: F401 -- single-threaded BLAS, repository on sys.path

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import yaml

from _common import REPO, code_version, free_port, save_results

BRIDGE, SUBNET = "fws-br0", "10.77.0"
SERVER_IP = f"{SUBNET}.1"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def make_hosts(n: int) -> list[dict]:
    """A bridge with the server's address and ``n`` namespaces, each with a veth into the bridge."""
    teardown(quiet=True)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{SERVER_IP}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    hosts = []
    for i in range(1, n + 1):
        ns, outer, inner, ip = f"fws-h{i}", f"fws-v{i}a", f"fws-v{i}b", f"{SUBNET}.{10 + i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", outer, "master", BRIDGE)
        sh("ip", "link", "set", outer, "up")
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", inner)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        hosts.append({"ns": ns, "ip": ip})
    return hosts


def teardown(quiet: bool = False) -> None:
    for ns in sh("ip", "netns", "list", check=False).stdout.split():
        if ns.startswith("fws-h"):
            sh("ip", "netns", "del", ns, check=False)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("fws-"):
            sh("ip", "link", "del", name, check=False)
    if not quiet:
        print("namespaces, veths and bridge removed")


def start_server(home: Path, port: int) -> dict:
    from fw_screen.server import embedded as server

    kwargs = {"port": port, "host": SERVER_IP}
    if "auth" in inspect.signature(server.start).parameters:  # a non-loopback address wants authentication
        kwargs["auth"] = True
    return server.start(home, **kwargs)


def run_hosts(info: dict, hosts: list[dict], n_hosts: int, source: Path, n: int, batch: int, work: Path) -> dict:
    from fireworks import LaunchPad

    from fw_screen.store import ResultsStore
    from fw_screen.orchestration.launchpad import prepare_launchpad
    from fw_screen.spec import load_spec
    from fw_screen.orchestration.fireworks import submit

    lp_conf = yaml.safe_load(Path(info["launchpad"]).read_text())
    lp_conf["name"] = f"hosts{n_hosts}_{uuid.uuid4().hex[:6]}"
    run_dir = work / f"hosts{n_hosts}"
    run_dir.mkdir()
    lp_file = run_dir / "launchpad.yaml"
    lp_file.write_text(yaml.safe_dump(lp_conf))
    os.chmod(lp_file, 0o600)
    lp = LaunchPad.from_file(str(lp_file))
    prepare_launchpad(lp)
    store = ResultsStore.from_launchpad(lp)
    spec = load_spec(campaign="hosts", batch_size=batch)
    t0 = time.perf_counter()
    summary, wf = submit(lp, store, source, spec)
    t_submit = time.perf_counter() - t0

    rlaunch = Path(sys.executable).parent / "rlaunch"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    t0 = time.perf_counter()
    for h in hosts[:n_hosts]:
        fworker = run_dir / f"fworker_{h['ns']}.yaml"
        fworker.write_text(yaml.safe_dump({"name": h["ns"], "category": ["cheap"], "query": "{}",
                                           "env": {"db_file": str(lp_file)}}))
        hdir = run_dir / h["ns"]
        hdir.mkdir()
        log = open(hdir / "rlaunch.log", "wb")
        procs.append(subprocess.Popen(["ip", "netns", "exec", h["ns"], str(rlaunch), "-s", "-l", str(lp_file),
                                       "-w", str(fworker), "rapidfire", "--sleep", "1"],
                                      cwd=hdir, stdout=log, stderr=subprocess.STDOUT, env=env))
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0

    per_host = {}
    for d in lp.launches.aggregate([{"$group": {"_id": "$fworker.name", "n": {"$sum": 1},
                                                "ip": {"$first": "$ip"}}}]):
        per_host[d["_id"]] = {"fireworks": d["n"]}
    # the cheap Fireworks (the ML Fireworks the uniqueness stage adds wait for ML workers: not run here)
    states = {d["_id"]: d["n"] for d in lp.fireworks.aggregate([
        {"$match": {"spec.stage": {"$in": ["validity", "uniqueness"]}}},
        {"$group": {"_id": "$state", "n": {"$sum": 1}}}])}
    runs = {}
    for d in store.candidates.aggregate([{"$match": {"campaign": "hosts"}},
                                         {"$group": {"_id": {"v": "$runs.validity", "u": "$runs.uniqueness"},
                                                     "n": {"$sum": 1}}}]):
        runs[f"validity={d['_id'].get('v')},uniqueness={d['_id'].get('u')}"] = d["n"]
    counts = store.status_counts("hosts")
    lp.connection.drop_database(lp.name)
    return {"hosts": n_hosts, "candidates": summary["inputs"], "submit_s": round(t_submit, 2),
            "workers_wall_s": round(wall, 2), "candidates_per_s": round(summary["inputs"] / wall, 2),
            "exit_codes": codes, "fireworks_states": states, "per_host": per_host, "status": counts,
            "runs": runs, "load_1min_end": os.getloadavg()[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", default="1,2,4", help="host counts to run, comma-separated")
    p.add_argument("--n", type=int, default=1600, help="generations per run (from examples/)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "hosts.json"))
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root: ip netns, veth pairs and a bridge")
    counts = [int(x) for x in args.hosts.split(",")]
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fws-hosts-"))
    df = pd.read_parquet(REPO / "examples" / "crystallm_pi_generated_8k.parquet").sample(args.n, random_state=3)
    source = work / "generations.parquet"
    df.to_parquet(source)
    results = {"n": args.n, "batch_size": args.batch_size, "code": code_version(), "runs": [],
               "load_1min_start": os.getloadavg()[0], "cores": os.cpu_count()}
    from fw_screen.server import embedded as server

    home = work / "server"
    try:
        hosts = make_hosts(max(counts))
        info = start_server(home, free_port())
        print(f"server on {info['host']}:{info['port']}; hosts " + ", ".join(f"{h['ns']} {h['ip']}" for h in hosts))
        for k in counts:
            r = run_hosts(info, hosts, k, source, args.n, args.batch_size, work)
            results["runs"].append(r)
            base = results["runs"][0]
            ratio = r["candidates_per_s"] / base["candidates_per_s"] * base["hosts"]
            r["speedup_vs_one_host"] = round(ratio, 2)
            # every candidate validated once; every valid one decided by uniqueness once, invalid ones never
            once = (set(r["runs"]) <= {"validity=1,uniqueness=1", "validity=1,uniqueness=None"}
                    and r["runs"].get("validity=1,uniqueness=None", 0) == r["status"].get("invalid", 0))
            r["each_candidate_once"] = once
            print(f"{k} host(s): {r['candidates']} candidates in {r['workers_wall_s']:.1f} s = "
                  f"{r['candidates_per_s']:.1f}/s ({ratio:.2f}x one host); Fireworks per host "
                  f"{ {h: v['fireworks'] for h, v in sorted(r['per_host'].items())} }; states {r['fireworks_states']}; "
                  f"runs {r['runs']}; decided once: {once}")
    finally:
        try:
            server.stop(home)
        finally:
            teardown()
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    save_results(Path(args.out), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
