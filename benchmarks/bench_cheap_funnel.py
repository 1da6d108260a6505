#!/usr/bin/env python
"""End-to-end throughput of the cheap funnel (ingest -> validity -> uniqueness/novelty) through FireWorks.

What it does, in one run:

1. starts the embedded SecantusDB server (``fw_screen.server.embedded.start``) in a temporary ``FW_SCREEN_HOME`` on a
   free port;
2. loads the Materials Project references (``examples/mp_*.json.gz``, ``fw_screen.stages.references.load_references``);
3. ``fw_screen.orchestration.fireworks.submit`` of the CrystaLLM-pi generations (``--limit N`` rows, default all 8,000) with
   the default spec (batch_size 200, 4 uniqueness shards);
4. runs ``--workers`` rlaunch rapidfire workers (``fw_screen.orchestration.supervisor.launch_workers`` with the ``fworker_cheap.yaml``
   the server writes) until the LaunchPad is empty, sampling the memory of the launchers and the server;
5. ``fw_screen.reporting.funnel.funnel_report``;
6. reads every launch back from ``launchpad.launches`` to split worker time into science (the runners' own
   ``seconds`` in ``action.stored_data``), in-rocket FireWorks overhead and between-rocket overhead.

Then the "naive way" side by side: the same ``--naive-n`` candidates (default 200) submitted once with
``batch_size=1`` (one Firework per CIF) and once with ``batch_size=--naive-n`` (one Firework), each in a fresh
database on the same server, and the ratio of their wall times and of their non-science time.

    .venv/bin/python benchmarks/bench_cheap_funnel.py                    # full run, ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_cheap_funnel.py --limit 400 --naive-n 50   # smoke run, ~1 min

Results: printed, and written as JSON to benchmarks/results/ (``--json`` to choose the path).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import psutil  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import code_version, free_port, loadavg, machine_info, save_results  # noqa: E402

from fw_screen.server import embedded as server  # noqa: E402
from fw_screen.reporting.funnel import funnel_report  # noqa: E402
from fw_screen.stages import load_references
from fw_screen.orchestration.supervisor import launch_workers  # noqa: E402
from fw_screen.store import ResultsStore  # noqa: E402
from fw_screen.orchestration.launchpad import prepare_launchpad
from fw_screen.spec import load_spec  # noqa: E402
from fw_screen.orchestration.fireworks import submit  # noqa: E402

EXAMPLES = REPO / "examples"
DEFAULT_INPUT = EXAMPLES / "crystallm_pi_generated_8k.parquet"
RESULTS = Path(__file__).resolve().parent / "results"
MB = 1024 * 1024


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size (bytes) of a live process, from /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------------ memory
class MemorySampler(threading.Thread):
    """Samples RSS / VmHWM / threads of the rlaunch children and of the DB server every ``interval`` s."""

    def __init__(self, server_pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.interval = interval
        self.launchers: dict[int, dict] = {}
        self.launchers_sum_max = 0
        self.server = {"rss_max": 0, "hwm": 0}
        self._stop_event = threading.Event()
        self._me = psutil.Process()
        self._server_cpu0 = self._server_cpu()
        self.server_cpu_s = 0.0
        self.loadavg: list[float] = []

    def _server_cpu(self) -> float:
        try:
            t = psutil.Process(self.server_pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def sample(self) -> None:
        total = 0
        for proc in self._me.children(recursive=True):
            if proc.pid == self.server_pid:
                continue
            try:
                rec = self.launchers.get(proc.pid)
                if rec is None:
                    if "rlaunch" not in " ".join(proc.cmdline()):
                        continue
                    rec = self.launchers[proc.pid] = {"rss_max": 0, "hwm": 0, "threads_max": 0, "cpu_s": 0.0}
                rss = proc.memory_info().rss
                cpu = proc.cpu_times()
                rec["cpu_s"] = max(rec["cpu_s"], cpu.user + cpu.system)
                rec["rss_max"] = max(rec["rss_max"], rss)
                rec["threads_max"] = max(rec["threads_max"], proc.num_threads())
                rec["hwm"] = max(rec["hwm"], vm_hwm(proc.pid) or 0)
                total += rss
            except psutil.Error:
                continue
        self.launchers_sum_max = max(self.launchers_sum_max, total)
        self.server_cpu_s = max(self.server_cpu_s, self._server_cpu() - self._server_cpu0)
        self.loadavg.append(os.getloadavg()[0])
        try:
            rss = psutil.Process(self.server_pid).memory_info().rss
            self.server["rss_max"] = max(self.server["rss_max"], rss)
            self.server["hwm"] = max(self.server["hwm"], vm_hwm(self.server_pid) or 0)
        except psutil.Error:
            pass

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        self.sample()
        per = list(self.launchers.values())
        return {
            "launchers": len(per),
            "launcher_peak_rss_mb": round(max((max(r["rss_max"], r["hwm"]) for r in per), default=0) / MB, 1),
            "launchers_sum_peak_rss_mb": round(self.launchers_sum_max / MB, 1),
            "launcher_max_threads": max((r["threads_max"] for r in per), default=0),
            "server_peak_rss_mb": round(max(self.server["rss_max"], self.server["hwm"]) / MB, 1),
            "launchers_cpu_s": round(sum(r["cpu_s"] for r in per), 1),
            "server_cpu_s": round(self.server_cpu_s, 1),
            "loadavg_1min_max": round(max(self.loadavg, default=0.0), 2),
            "loadavg_1min_mean": round(sum(self.loadavg) / len(self.loadavg), 2) if self.loadavg else None,
        }


# -------------------------------------------------------------------------------------- databases
def database_files(home: Path, label: str | None) -> tuple[str, str]:
    """(launchpad file, fworker file): the server's own, or copies naming database ``fw_screen_<label>``.

    The FWorker is the cheap one: the ML Fireworks the uniqueness stage adds stay READY for ML workers."""
    lp_file, fw_file = home / "launchpad.yaml", home / "fworker_cheap.yaml"
    if label is None:
        return str(lp_file), str(fw_file)
    lp = yaml.safe_load(lp_file.read_text())
    lp["name"] = f"fw_screen_{label}"
    lp["strm_lvl"] = "WARNING"
    new_lp = home / f"launchpad_{label}.yaml"
    new_lp.write_text(yaml.safe_dump(lp, sort_keys=False))
    worker = yaml.safe_load(fw_file.read_text())
    worker["env"]["db_file"] = str(new_lp)
    new_fw = home / f"fworker_cheap_{label}.yaml"
    new_fw.write_text(yaml.safe_dump(worker, sort_keys=False))
    return str(new_lp), str(new_fw)


def subsample(source: Path, n: int | None, dest: Path, seed: int = 0) -> tuple[Path, int]:
    """The first-come ``n`` rows of a seeded shuffle of the table (input order kept), as a parquet file."""
    import pandas as pd

    df = pd.read_parquet(source)
    if n is None or n >= len(df):
        return source, len(df)
    part = df.sample(n=n, random_state=seed).sort_index()
    part.to_parquet(dest)
    return dest, len(part)


# ------------------------------------------------------------------------------------ one campaign
def accounting(lp, workers: int, run_wall: float) -> dict:
    """Science vs FireWorks time, from the launches of every Firework of the LaunchPad."""
    stage_of = {d["fw_id"]: (d.get("spec") or {}).get("stage", "?")
                for d in lp.fireworks.find({}, {"fw_id": 1, "spec.stage": 1})}
    states: dict[str, int] = {}
    per_stage: dict[str, dict] = {}
    science = rocket = 0.0
    uniqueness = []
    for launch in lp.launches.find({}, {"fw_id": 1, "state": 1, "runtime_secs": 1, "action.stored_data": 1}):
        states[launch["state"]] = states.get(launch["state"], 0) + 1
        stage = stage_of.get(launch["fw_id"], "?")
        if stage == "uniqueness":
            uniqueness.append(((launch.get("action") or {}).get("stored_data") or {}))
        rec = per_stage.setdefault(stage, {"fireworks": 0, "science_s": 0.0, "rocket_s": 0.0})
        secs = float(((launch.get("action") or {}).get("stored_data") or {}).get("seconds") or 0.0)
        run = float(launch.get("runtime_secs") or 0.0)
        rec["fireworks"] += 1
        rec["science_s"] += secs
        rec["rocket_s"] += run
        science += secs
        rocket += run
    worker_time = workers * run_wall
    for rec in per_stage.values():
        rec["science_s"] = round(rec["science_s"], 2)
        rec["rocket_s"] = round(rec["rocket_s"], 2)
    n = sum(r["fireworks"] for r in per_stage.values())
    return {
        "launch_states": states,
        "per_stage": per_stage,
        "fireworks": n,
        "science_s": round(science, 2),
        "rocket_s": round(rocket, 2),
        "worker_time_s": round(worker_time, 2),
        "overhead_in_rockets_s": round(rocket - science, 2),
        "overhead_between_rockets_s": round(worker_time - rocket, 2),
        "share_outside_science_of_rocket_time": round(1 - science / rocket, 4) if rocket else None,
        "share_outside_science_of_worker_time": round(1 - science / worker_time, 4) if worker_time else None,
        "overhead_per_firework_s": round((worker_time - science) / n, 3) if n else None,
        "uniqueness_shards": uniqueness,
    }


def run_campaign(home: Path, label: str | None, source: Path, n_inputs: int, batch_size: int | None,
                 workers: int, server_pid: int, campaign: str) -> dict:
    """Load references, submit, run the workers, report: one campaign in its own database."""
    from fireworks import LaunchPad

    lp_file, fw_file = database_files(home, label)
    out: dict = {"campaign": campaign, "database": label or server.DEFAULT_DB_NAME, "inputs": n_inputs,
                 "batch_size": batch_size or load_spec()["batch_size"], "workers": workers, "phases_s": {}}
    phases = out["phases_s"]

    lp = LaunchPad.from_file(lp_file)
    prepare_launchpad(lp)
    store = ResultsStore.from_launchpad(lp)

    t0 = time.perf_counter()
    refs = {}
    for src in sorted(EXAMPLES.glob("mp_*.json.gz")):
        res = load_references(store, src)
        refs[src.name] = res["new"] + res["existing"]
    phases["load_references"] = round(time.perf_counter() - t0, 2)
    out["references"] = refs

    spec = load_spec(campaign=campaign, batch_size=batch_size)
    add_wf_time = [0.0]
    real_add_wf = lp.add_wf

    def timed_add_wf(wf, *a, **kw):  # split submit into client-side ingest and add_wf
        t = time.perf_counter()
        try:
            return real_add_wf(wf, *a, **kw)
        finally:
            add_wf_time[0] += time.perf_counter() - t

    lp.add_wf = timed_add_wf
    t_submit = time.perf_counter()
    summary, wf = submit(lp, store, source, spec)
    submit_s = time.perf_counter() - t_submit
    phases["submit_total"] = round(submit_s, 2)
    phases["submit_ingest"] = round(submit_s - add_wf_time[0], 2)
    phases["submit_add_wf"] = round(add_wf_time[0], 2)
    out["new_candidates"] = summary["new"]
    out["workflow_fireworks"] = len(wf.fws) if wf else 0
    # FireWorks turns ISO-datetime-looking strings in a spec into datetimes: check the batch ids survived
    fw_batches = {str(b) for b in lp.fireworks.distinct("spec.batch", {"spec.stage": "validity"})}
    mangled = sorted(fw_batches - set(summary["workflow_batches"]))
    out["errors"] = []
    if mangled:
        out["errors"].append(f"{len(mangled)} validity Fireworks carry a batch id that is not the candidates' "
                             f"(FireWorks reconstitute_dates parsed it as a datetime), e.g. {mangled[0]!r} "
                             f"for {summary['workflow_batches'][0]!r}")

    sampler = MemorySampler(server_pid)
    sampler.start()
    t_run = time.perf_counter()
    codes = launch_workers(lp_file, fw_file, workers, home / f"launches_{label or 'main'}")
    run_wall = time.perf_counter() - t_run
    out["memory"] = sampler.stop()
    out["worker_exit_codes"] = codes
    phases["run_workers"] = round(run_wall, 2)

    t = time.perf_counter()
    report = funnel_report(store, campaign)
    phases["funnel_report"] = round(time.perf_counter() - t, 2)
    # the same status counts through the (campaign, status) index instead of an aggregation pipeline
    t = time.perf_counter()
    out["report"] = report
    try:
        counts = {s: store.candidates.count_documents({"campaign": campaign, "status": s})
                  for s in ("ingested", "invalid", "valid", "duplicate", "known", "novel")}
        out["status_counts_by_count_documents_s"] = round(time.perf_counter() - t, 2)
        if {k: v for k, v in counts.items() if v} != report["status"]:
            out["errors"].append(f"count_documents per status {counts} != funnel report {report['status']}")
    except Exception as exc:  # noqa: BLE001 - a failed side measurement must not lose the run's figures
        out["errors"].append(f"count_documents per status: {type(exc).__name__}: {exc}")
        out["status_counts_by_count_documents_s"] = None
    pending = report["funnel"]["pending_validity"] + report["funnel"]["pending_uniqueness"]
    if pending:
        out["errors"].append(f"{pending} candidates still pending after the workers finished")
    out["accounting"] = accounting(lp, workers, run_wall)
    e2e = submit_s + run_wall + phases["funnel_report"]
    phases["end_to_end_submit_to_report"] = round(e2e, 2)
    out["candidates_per_s_end_to_end"] = round(n_inputs / e2e, 2)
    out["candidates_per_s_workers"] = round(n_inputs / run_wall, 2)
    lp.connection.close()
    return out


# ----------------------------------------------------------------------------------------- output
def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_campaign(title: str, r: dict) -> None:
    a, m, ph = r["accounting"], r["memory"], r["phases_s"]
    print(f"\n== {title}: {r['inputs']} candidates, batch_size {r['batch_size']}, {r['workers']} workers, "
          f"{a['fireworks']} Fireworks ==")
    for k, v in ph.items():
        print(f"  {k:<30} {v:>9.2f} s")
    print(f"  candidates/s end to end        {r['candidates_per_s_end_to_end']:>9.2f}   "
          f"(workers phase only: {r['candidates_per_s_workers']:.2f})")
    print(f"  science (runners' seconds)     {a['science_s']:>9.2f} s")
    print(f"  rocket time (runtime_secs)     {a['rocket_s']:>9.2f} s   -> outside science "
          f"{pct(a['share_outside_science_of_rocket_time'])} of rocket time")
    print(f"  worker time (workers x wall)   {a['worker_time_s']:>9.2f} s   -> outside science "
          f"{pct(a['share_outside_science_of_worker_time'])} of worker time")
    print(f"  overhead per Firework          {a['overhead_per_firework_s']:>9.3f} s   (worker time - science) / Fireworks")
    for stage, s in sorted(a["per_stage"].items()):
        print(f"    {stage:<12} {s['fireworks']:>4} FWs  science {s['science_s']:>8.2f} s  rockets {s['rocket_s']:>8.2f} s")
    print(f"  launch states {a['launch_states']}; worker exit codes {r['worker_exit_codes']}")
    if r["inputs"] > 1000:
        print("  uniqueness shards (runner counts): " + "; ".join(
            f"{u.get('seconds')} s ({u.get('novel', 0)} novel, {u.get('duplicate', 0)} dup)"
            for u in a["uniqueness_shards"]))
        print(f"  status counts via count_documents per status: {r['status_counts_by_count_documents_s']} s "
              f"(funnel_report's aggregations: {r['phases_s']['funnel_report']} s)")
    for err in r["errors"]:
        print(f"  ERROR: {err}")
    print(f"  peak RSS: one launcher {m['launcher_peak_rss_mb']} MB, launchers together "
          f"{m['launchers_sum_peak_rss_mb']} MB, DB server {m['server_peak_rss_mb']} MB; "
          f"max threads in a launcher {m['launcher_max_threads']}")
    print(f"  CPU during the workers phase: launchers {m['launchers_cpu_s']} s, DB server {m['server_cpu_s']} s; "
          f"1-min load average mean {m['loadavg_1min_mean']} (max {m['loadavg_1min_max']}) on {os.cpu_count()} cores")


def print_funnel(r: dict) -> None:
    rep = r["report"]
    f, rates = rep["funnel"], rep["rates"]
    print(f"\n== funnel on {f['inputs']} inputs ==")
    print(f"  valid      {f['valid']:>6}  validity rate            {pct(rates['validity'])}")
    print(f"  unique     {f['unique']:>6}  uniqueness among valid   {pct(rates['uniqueness_among_valid'])}")
    print(f"  novel      {f['novel']:>6}  novelty among unique     {pct(rates['novelty_among_unique'])}")
    print(f"  invalid {f['invalid']}, duplicate {f['duplicate']}, known {f['known']}, "
          f"pending validity {f['pending_validity']}, pending uniqueness {f['pending_uniqueness']}")
    print("  invalid by first failing check: " + ", ".join(
        f"{k} {v}" for k, v in sorted(rep["first_failure"].items(), key=lambda kv: -kv[1])))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    p.add_argument("--limit", type=int, default=None, help="seeded subsample of N inputs (default: all 8,000)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--naive-n", type=int, default=200,
                   help="candidates for the batch_size=1 vs batch_size=N comparison (0: skip)")
    p.add_argument("--skip-main", action="store_true", help="only the naive-vs-batched comparison")
    p.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    p.add_argument("--home", type=Path, default=None, help="FW_SCREEN_HOME (default: a new folder under /tmp)")
    p.add_argument("--keep", action="store_true", help="leave the server running and the home in place")
    p.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/...)")
    args = p.parse_args(argv)

    home = args.home or Path(tempfile.mkdtemp(prefix="fws-bench-", dir="/tmp"))
    os.environ["FW_SCREEN_HOME"] = str(home)
    port = args.port or free_port()
    started = dt.datetime.now().astimezone()
    results: dict = {
        "benchmark": "cheap_funnel",
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "input": str(args.input), "home": str(home), "port": port, "code": code_version(),
    }
    t = time.perf_counter()
    info = server.start(home, port=port)
    results["server_start_s"] = round(time.perf_counter() - t, 2)
    print(f"SecantusDB pid {info['pid']} on port {port}, home {home} (started in {results['server_start_s']} s)")
    try:
        if not args.skip_main:
            source, n = subsample(args.input, args.limit, home / f"input_{args.limit}.parquet")
            main_run = run_campaign(home, None, source, n, None, args.workers, info["pid"], "bench")
            results["main"] = main_run
            print_campaign("cheap funnel", main_run)
            print_funnel(main_run)
        if args.naive_n:
            source, n = subsample(args.input, args.naive_n, home / f"naive_{args.naive_n}.parquet", seed=1)
            batched = run_campaign(home, "batched", source, n, n, args.workers, info["pid"], "batched")
            per_worker = -(-n // args.workers)
            spread = (run_campaign(home, "spread", source, n, per_worker, args.workers, info["pid"], "spread")
                      if args.workers > 1 and per_worker < n else None)
            naive = run_campaign(home, "naive", source, n, 1, args.workers, info["pid"], "naive")
            print_campaign(f"batched: batch_size={n}", batched)
            if spread:
                print_campaign(f"batched, one Firework per worker: batch_size={per_worker}", spread)
            print_campaign("naive: one Firework per CIF (batch_size=1)", naive)

            def ratio_of(x: dict, y: dict) -> dict:
                return {
                    "run_wall": round(x["phases_s"]["run_workers"] / y["phases_s"]["run_workers"], 2),
                    "end_to_end": round(x["phases_s"]["end_to_end_submit_to_report"]
                                        / y["phases_s"]["end_to_end_submit_to_report"], 2),
                    "non_science_worker_time": round(
                        (x["accounting"]["worker_time_s"] - x["accounting"]["science_s"])
                        / (y["accounting"]["worker_time_s"] - y["accounting"]["science_s"]), 2),
                    "science": round(x["accounting"]["science_s"] / y["accounting"]["science_s"], 2),
                    "db_server_cpu": round(x["memory"]["server_cpu_s"] / max(y["memory"]["server_cpu_s"], 0.1), 1),
                    "same_verdicts": x["report"]["status"] == y["report"]["status"],
                }

            ratio = ratio_of(naive, batched)
            same = ratio["same_verdicts"]
            results["naive_vs_batched"] = {"batched": batched, "naive": naive, "ratio_naive_over_batched": ratio}
            if spread:
                results["naive_vs_batched"]["spread"] = spread
                results["naive_vs_batched"]["ratio_naive_over_spread"] = ratio_of(naive, spread)
            print(f"\n== naive / batched on the same {n} candidates ==")
            print(f"  workers wall         x{ratio['run_wall']}  ({naive['phases_s']['run_workers']:.1f} s vs "
                  f"{batched['phases_s']['run_workers']:.1f} s)")
            print(f"  end to end           x{ratio['end_to_end']}")
            print(f"  non-science time     x{ratio['non_science_worker_time']}  "
                  f"({naive['accounting']['worker_time_s'] - naive['accounting']['science_s']:.1f} s vs "
                  f"{batched['accounting']['worker_time_s'] - batched['accounting']['science_s']:.1f} s of worker time)")
            print(f"  science time         x{ratio['science']}")
            print(f"  DB server CPU        x{ratio['db_server_cpu']}  ({naive['memory']['server_cpu_s']} s vs "
                  f"{batched['memory']['server_cpu_s']} s)")
            print(f"  same funnel counts: {same}")
            if spread:
                r2 = results["naive_vs_batched"]["ratio_naive_over_spread"]
                print(f"\n== naive / batch_size={per_worker} (one Firework per worker) ==")
                print(f"  workers wall x{r2['run_wall']} ({naive['phases_s']['run_workers']:.1f} s vs "
                      f"{spread['phases_s']['run_workers']:.1f} s); end to end x{r2['end_to_end']}; non-science "
                      f"x{r2['non_science_worker_time']}; DB server CPU x{r2['db_server_cpu']}; "
                      f"same funnel counts: {r2['same_verdicts']}")
    finally:
        results["machine"]["loadavg_at_end"] = loadavg()
        results["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        results["total_s"] = round((dt.datetime.now().astimezone() - started).total_seconds(), 1)
        if not args.keep:
            server.stop(home)
            if args.home is None:
                shutil.rmtree(home, ignore_errors=True)
        out = args.json or RESULTS / ("cheap_funnel.json" if args.limit is None and not args.skip_main
                                      else f"cheap_funnel_limit{args.limit}_naive{args.naive_n}.json")
        save_results(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
