"""``fw-screen``: the command line.  It parses arguments and calls the functions a Python user would."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fw_screen import server


class CLIError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ helpers
def resolve_launchpad(arg: str | None, state: str | None = None) -> str:
    """-l, else $FW_SCREEN_LAUNCHPAD, else the embedded server's launchpad.yaml."""
    for candidate in (arg, os.environ.get("FW_SCREEN_LAUNCHPAD")):
        if candidate:
            if not Path(candidate).is_file():
                raise CLIError(f"LaunchPad file not found: {candidate}")
            return str(Path(candidate).resolve())
    embedded = server.launchpad_file(state)
    if embedded.is_file():
        return str(embedded)
    raise CLIError("no database: start the embedded one with `fw-screen db start`, or give a LaunchPad file "
                   "with -l (see launchpad/)")


def _launchpad(path: str):
    from fireworks import LaunchPad

    from fw_screen.db import prepare_launchpad

    lp = LaunchPad.from_file(path)
    prepare_launchpad(lp)
    return lp


def _store(path: str):
    from fw_screen.db import ResultsStore

    return ResultsStore.from_launchpad(_launchpad(path))


def _spec(args) -> dict:
    from fw_screen.spec import load_spec

    return load_spec(args.spec, campaign=args.campaign, batch_size=getattr(args, "batch_size", None))


def _print(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=1, default=str))
    else:
        for key, value in obj.items():
            print(f"{key:>22}: {value}")


# ----------------------------------------------------------------------------------------- commands
def cmd_db(args) -> int:
    if args.action == "start":
        info = server.start(args.home, port=args.port)
        word = "already running" if info["already_running"] else "started"
        print(f"SecantusDB {word}: pid {info['pid']}, {info['host']}:{info['port']}, data {info['data']}")
        print(f"LaunchPad file: {info['launchpad']}  (lpad -l / rlaunch -l)")
    elif args.action == "stop":
        info = server.stop(args.home)
        print(f"stopped pid {info['pid']}" if info["stopped"] else info["message"])
    else:
        info = server.status(args.home)
        _print(info, args.json)
        return 0 if info.get("answering") else 3
    return 0


def cmd_submit(args) -> int:
    from fw_screen.workflows import submit

    lp_file = resolve_launchpad(args.launchpad, args.home)
    spec = _spec(args)
    t0 = time.perf_counter()
    summary, wf = submit(_launchpad(lp_file), _store(lp_file), args.input, spec,
                         progress=lambda n: print(f"  ingested {n} inputs", flush=True))
    print(f"{summary['inputs']} inputs -> {summary['new']} new candidates, {summary['existing']} already in "
          f"campaign {summary['campaign']!r} ({time.perf_counter() - t0:.1f} s)")
    if wf is None:
        print("no new work: every batch already has its Fireworks")
    else:
        print(f"added workflow {wf.name!r}: {len(wf.fws)} Fireworks ({len(summary['workflow_batches'])} validity "
              f"batches, {spec['dedup_shards']} uniqueness shards)")
    return 0


def cmd_workflow(args) -> int:
    from fw_screen.workflows import ingest_workflow

    spec = _spec(args)
    wf = ingest_workflow(args.input, spec, db_file=args.db_file)
    wf.to_file(args.output)
    print(f"wrote {args.output}: add it with `lpad -l LAUNCHPAD add {args.output}`")
    return 0


def cmd_references(args) -> int:
    from fw_screen.campaign import load_references, read_references

    read = [(source, read_references(source, args.set)) for source in args.sources]  # fail before connecting
    store = _store(resolve_launchpad(args.launchpad, args.home))
    for source, found in read:
        r = load_references(store, source, args.set, found=found)
        print(f"{source}: structures {r['new']} new, {r['existing']} already loaded "
              f"({r['skipped_without_structure']} entries without structure); hull entries {r['entries_new']} new, "
              f"{r['entries_existing']} already loaded")
    print(f"in database: {store.reference_count()} reference structures, {store.entry_count()} hull entries")
    return 0


def format_report(report: dict) -> str:
    f, r = report["funnel"], report["rates"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [f"campaign {report['campaign']}",
             f"  inputs            {f['inputs']:>7}",
             f"  pending validity  {f['pending_validity']:>7}",
             f"  invalid           {f['invalid']:>7}",
             f"  valid (V)         {f['valid']:>7}   validity rate {pct(r['validity'])}",
             f"  pending unique    {f['pending_uniqueness']:>7}",
             f"  duplicate         {f['duplicate']:>7}",
             f"  unique (VU)       {f['unique']:>7}   unique among valid {pct(r['uniqueness_among_valid'])}",
             f"  known             {f['known']:>7}",
             f"  novel (VUN)       {f['novel']:>7}   novel among unique {pct(r['novelty_among_unique'])}"]
    if f["novel"]:
        y = report["yields"]
        lines += [f"  ML: pending {f['pending_ml']}, done {f['ml_done']}, no reference {f['no_reference']}, "
                  f"failed {f['ml_failed']}; stable (e_hull <= threshold) {y['stable']}",
                  f"  yields: V {pct(y['V'])}, VU {pct(y['VU'])}, VUN {pct(y['VUN'])}, VSUN {pct(y['VSUN'])}; "
                  f"band-gap target hit {pct(y['hit_among_predicted'])} of {y['band_gap_predicted']} predicted, "
                  f"{pct(y['hit_among_VSUN'])} of VSUN"]
        lines.append(f"  {'target band gap (eV)':>22} {'inputs':>7} {'V':>6} {'VUN':>6} {'VSUN':>6} {'hit':>6} {'hit|VSUN':>8}")
        for r in report["by_condition"]:
            lines.append(f"  {r['condition']!s:>22} {r['inputs']:>7} {pct(r['V']):>6} {pct(r['VUN']):>6} "
                         f"{pct(r['VSUN']):>6} {pct(r['hit_among_predicted']):>6} {pct(r['hit_among_VSUN']):>8}")
    d = report.get("dft") or {}
    if d:
        lines.append(f"  DFT: promoted {d['promoted']}, pending {d['pending']}, done {d['done']}, failed {d['failed']}; "
                     f"DFT hull: done {d['hull_done']}, waiting for references {d['hull_waiting']}, "
                     f"not computed {d['hull_failed']}; DFT-stable {d['stable']}, DFT band-gap hit {d['band_gap_hit']}")
    if report["first_failure"]:
        lines.append("  invalid by first failing check: " + ", ".join(
            f"{k} {v}" for k, v in sorted(report["first_failure"].items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def format_top(rows: list[dict]) -> str:
    lines = [f"  {'candidate':<30} {'formula':<14} {'sg':<10} {'E_hull':>8} {'gap':>6} {'target':>7} hit"]
    for d in rows:
        ml = d["ml"]
        hit = ml.get("hits", {}).get("band_gap", {})
        target = hit.get("target")
        gap = (ml.get("band_gap") or {}).get("band_gap")
        lines.append(f"  {d['_id']:<30} {d['reduced_formula']:<14} {d.get('spacegroup') or '-':<10} "
                     f"{ml['e_above_hull']:>8.3f} {'-' if gap is None else f'{gap:.2f}':>6} "
                     f"{'-' if target is None else f'{target:.2f}':>7} {hit.get('hit')}")
    return "\n".join(lines)


def format_dft(rows: list[dict]) -> str:
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [f"  {'candidate':<30} {'formula':<10} {'status':<10} {'ML e_hull':>9} {'DFT e_hull':>10} "
             f"{'ML gap':>6} {'DFT gap':>7} {'target':>6}  note"]
    for d in rows:
        ml, dft = d.get("ml") or {}, d.get("dft") or {}
        gap = (dft.get("band_gap") or {}).get("band_gap")
        note = dft.get("reason") or dft.get("hull_reason") or (
            "hull waits for references" if dft.get("hull_status") == "waiting" else "")
        lines.append(f"  {d['_id']:<30} {d.get('reduced_formula', '-'):<10} {d['status']:<10} "
                     f"{num(ml.get('e_above_hull'), '9.3f'):>9} {num(dft.get('e_above_hull'), '10.3f'):>10} "
                     f"{num((ml.get('band_gap') or {}).get('band_gap'), '6.2f'):>6} {num(gap, '7.2f'):>7} "
                     f"{num(((d.get('targets') or {}).get('band_gap') or {}).get('value'), '6.2f'):>6}  {note[:60]}")
    return "\n".join(lines)


def cmd_promote(args) -> int:
    from fw_screen.workflows import promote

    lp_file = resolve_launchpad(args.launchpad, args.home)
    summary = promote(_launchpad(lp_file), _store(lp_file), args.campaign)
    print(f"campaign {args.campaign}: {summary['considered']} ML-done candidates considered, {summary['eligible']} "
          f"eligible, {len(summary['promoted'])} promoted now; DFT Fireworks added: {summary['dft_fireworks']}")
    if summary["not_eligible"]:
        print("  not eligible (first failing rule): " + ", ".join(f"{k} {v}" for k, v in summary["not_eligible"].items()))
    return 0


def cmd_status(args) -> int:
    from fw_screen.campaign import funnel_report

    store = _store(resolve_launchpad(args.launchpad, args.home))
    names = [args.campaign] if args.campaign else store.campaign_names()
    if not names:
        print("no campaigns yet: `fw-screen submit INPUT --campaign NAME`")
        return 0
    reports = [funnel_report(store, n) for n in names]
    if args.json:
        print(json.dumps(reports, indent=1))
    else:
        print("\n\n".join(format_report(r) for r in reports))
        if args.top:
            for name in names:
                rows = store.top_candidates(name, args.top)
                if rows:
                    print(f"\nlowest above the ML hull in {name} (eV/atom; band gap eV):\n{format_top(rows)}")
        for name in names:
            rows = store.dft_candidates(name)
            if rows and args.dft:
                print(f"\nDFT candidates of {name} (eV/atom; band gap eV):\n{format_dft(rows)}")
    return 0


def launch_workers(lp_file: str, fworker: str, workers: int, workdir: Path, sleep: int = 2,
                   timeout: int | None = None) -> list[int]:
    """Run ``workers`` rlaunch rapidfire processes until no work is left; returns their exit codes."""
    workdir.mkdir(parents=True, exist_ok=True)
    rlaunch = Path(sys.executable).parent / "rlaunch"
    cmd = [str(rlaunch if rlaunch.exists() else "rlaunch"), "-s", "-l", lp_file, "-w", fworker, "rapidfire",
           "--sleep", str(sleep)]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for i in range(workers):
        d = workdir / f"worker{i}"
        d.mkdir(exist_ok=True)
        with open(d / "rlaunch.log", "ab") as log:  # the child keeps its own copy of the handle
            procs.append(subprocess.Popen(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, env=env))
    return [p.wait() for p in procs]


def cmd_run(args) -> int:
    lp_file = resolve_launchpad(args.launchpad, args.home)
    fworker = args.fworker or str(server.home(args.home) / f"fworker_{args.category}.yaml")
    if not Path(fworker).is_file():
        raise CLIError(f"FWorker file not found: {fworker} (fw-screen db start writes them)")
    t0 = time.perf_counter()
    codes = launch_workers(lp_file, fworker, args.workers, server.home(args.home) / "launches")
    print(f"{args.workers} launcher(s) finished in {time.perf_counter() - t0:.1f} s (exit codes {codes})")
    return 0 if all(c == 0 for c in codes) else 1


# -------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fw-screen", description="Screen generated crystal structures with FireWorks.")
    p.add_argument("--home", help="state folder of the embedded server (default $FW_SCREEN_HOME or ./.fw-screen)")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="start/stop/status of the embedded SecantusDB server")
    db.add_argument("action", choices=["start", "stop", "status"])
    db.add_argument("--port", type=int, default=server.DEFAULT_PORT)
    db.add_argument("--json", action="store_true")
    db.set_defaults(func=cmd_db)

    def campaign_args(sp):
        sp.add_argument("input", help="folder of CIFs, CIF file, .tar[.gz], .csv or .parquet")
        sp.add_argument("--spec", help="campaign spec YAML (default: specs/default.yaml)")
        sp.add_argument("-c", "--campaign", help="campaign name (overrides the spec's)")
        sp.add_argument("--batch-size", type=int, help="candidates per cheap-stage Firework")

    s = sub.add_parser("submit", help="ingest inputs and add their workflow to the LaunchPad")
    campaign_args(s)
    s.add_argument("-l", "--launchpad")
    s.set_defaults(func=cmd_submit)

    w = sub.add_parser("workflow", help="write a workflow YAML for `lpad add` (ingest runs on a worker)")
    campaign_args(w)
    w.add_argument("-o", "--output", required=True)
    w.add_argument("--db-file", help="LaunchPad file the workers use (default: their FWorker env db_file)")
    w.set_defaults(func=cmd_workflow)

    r = sub.add_parser("references", help="load reference structures for novelty")
    r.add_argument("sources", nargs="+", help="file/folder (CIF folder, .json[.gz], .csv, .parquet) or mp:CHEMSYS")
    r.add_argument("--set", help="name of the reference set (default: file name)")
    r.add_argument("-l", "--launchpad")
    r.set_defaults(func=cmd_references)

    stt = sub.add_parser("status", help="funnel counts per campaign")
    stt.add_argument("-c", "--campaign")
    stt.add_argument("-l", "--launchpad")
    stt.add_argument("--json", action="store_true")
    stt.add_argument("--top", type=int, default=0, help="also list the N candidates lowest above the ML hull")
    stt.add_argument("--dft", action="store_true", help="also list the promoted candidates with ML and DFT numbers")
    stt.set_defaults(func=cmd_status)

    pr = sub.add_parser("promote", help="promote the best ML candidates to DFT and add their DFT Fireworks")
    pr.add_argument("campaign")
    pr.add_argument("-l", "--launchpad")
    pr.set_defaults(func=cmd_promote)

    run = sub.add_parser("run", help="run local rlaunch workers until the LaunchPad has no work left")
    run.add_argument("-n", "--workers", type=int, default=2)
    run.add_argument("--category", default="all", choices=["cheap", "ml", "dft", "all"])
    run.add_argument("-w", "--fworker")
    run.add_argument("-l", "--launchpad")
    run.set_defaults(func=cmd_run)

    m = sub.add_parser("ml", help="add ML Fireworks for novel candidates that have none yet")
    m.add_argument("-c", "--campaign", required=True)
    m.add_argument("-l", "--launchpad")
    m.set_defaults(func=cmd_ml)

    d = sub.add_parser("demo", help="the whole cheap funnel on the bundled CrystaLLM-pi generations")
    d.add_argument("--input", default=None)
    d.add_argument("--references", nargs="*", default=None)
    d.add_argument("-n", "--workers", type=int, default=2)
    d.add_argument("-c", "--campaign", default="demo")
    d.add_argument("--dft-candidates", type=int, default=1, help="candidates the demo promotes to DFT")
    d.set_defaults(func=cmd_demo)
    return p


def cmd_ml(args) -> int:
    from fw_screen.workflows import promote_to_ml

    lp_file = resolve_launchpad(args.launchpad, args.home)
    batches = promote_to_ml(_launchpad(lp_file), _store(lp_file), args.campaign)
    print(f"added {len(batches)} ML Fireworks" if batches else "every novel candidate already has its ML Firework")
    return 0


def cmd_demo(args) -> int:
    from fw_screen.campaign import funnel_report, load_references
    from fw_screen.spec import load_spec
    from fw_screen.workflows import submit

    examples = Path(__file__).resolve().parent.parent / "examples"
    source = args.input or str(examples / "crystallm_pi_generated_8k.parquet")
    ref_sources = args.references if args.references is not None else sorted(
        str(p) for p in examples.glob("mp*.json.gz"))
    info = server.start(args.home)
    print(f"database: SecantusDB pid {info['pid']} on {info['host']}:{info['port']}")
    lp_file = info["launchpad"]
    store = _store(lp_file)
    for src in ref_sources:
        res = load_references(store, src)
        print(f"references {Path(src).name}: {res['new']} structures and {res['entries_new']} hull entries new, "
              f"{res['existing']} structures already loaded")
    # the demo carries the single best ML candidate through DFT (Quantum ESPRESSO, SSSP pseudopotentials
    # for its elements in examples/pseudo); a reference polymorph within 40 meV/atom of MP's lowest may
    # stand in for it (black P, 4 sites, for MP's 42-site P), so that every reference cell stays small
    pseudo = examples / "pseudo"
    # k-point densities at half the production defaults keep the demo's DFT to minutes (candidate and
    # references share them, so its hull stays consistent); pw.x runs serially, one per worker: two MPI
    # ranks sharing a core with the other worker's pw.x ran 9-11x slower (benchmarks/bench_dft.py)
    spec = load_spec(campaign=args.campaign, promotion={"max_total": args.dft_candidates},
                     dft={"reference_polymorph_tolerance": 0.04,
                          "qe": {"kppa": 500, "nscf_kppa": 1500,
                                 "pseudo_dir": str(pseudo) if pseudo.is_dir() and not os.environ.get(
                                     "ESPRESSO_PSEUDO") else None}})
    t0 = time.perf_counter()
    summary, wf = submit(_launchpad(lp_file), store, source, spec)
    print(f"ingested {summary['inputs']} inputs: {summary['new']} new candidates")
    if wf is not None:
        print(f"workflow: {len(wf.fws)} Fireworks; running {args.workers} rlaunch workers ...", flush=True)
        codes = launch_workers(lp_file, str(server.home(args.home) / "fworker_all.yaml"), args.workers,
                               server.home(args.home) / "launches")
        print(f"workers finished: exit codes {codes}")
    print(format_report(funnel_report(store, spec["campaign"])))
    top = store.top_candidates(spec["campaign"], 10)
    if top:
        print(f"lowest above the ML hull (eV/atom; band gap eV):\n{format_top(top)}")
    promoted = store.dft_candidates(spec["campaign"])
    if promoted:
        print(f"promoted to DFT (Quantum ESPRESSO; eV/atom, band gap eV):\n{format_dft(promoted)}")
        for d in promoted:
            print(f"  {d['_id']}: {(d.get('promotion') or {}).get('reason', '')}")
    print(f"total {time.perf_counter() - t0:.1f} s; query it: lpad -l {lp_file} get_wflows; "
          f"fw-screen status -c {spec['campaign']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fw_screen.db import StoreError
    from fw_screen.ingest import IngestError
    from fw_screen.references import ReferenceSourceError
    from fw_screen.spec import SpecError

    from pymongo.errors import ServerSelectionTimeoutError

    try:
        return args.func(args)
    except ServerSelectionTimeoutError as exc:
        print(f"fw-screen: error: cannot reach the database ({exc.args[0][:200]}); is it running? "
              f"(`fw-screen db status`, `fw-screen db start`)", file=sys.stderr)
        return 2
    except (CLIError, server.ServerError, SpecError, StoreError, IngestError, ReferenceSourceError) as exc:
        print(f"fw-screen: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
