"""``fw-screen``: the command line.  It parses arguments and calls the functions a Python user would."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from fw_screen.extras import MissingExtraError, require
from fw_screen.orchestration.demo import examples_dir  # noqa: F401 -- `from fw_screen.cli import examples_dir`
from fw_screen.orchestration.launchpad import open_launchpad
from fw_screen.orchestration.supervisor import Progress, launch_workers
from fw_screen.server import embedded as server


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




def _store(path: str):
    from fw_screen.store import ResultsStore

    return ResultsStore.from_launchpad(open_launchpad(path))


def _spec(args):
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
        info = server.start(args.home, port=args.port, host=args.host, auth=args.auth)
        word = "already running" if info["already_running"] else "started"
        print(f"SecantusDB {word}: pid {info['pid']}, {info['host']}:{info['port']}, data {info['data']}"
              + (", authentication on (credentials in the LaunchPad file only)" if info.get("auth") else ""))
        print(f"LaunchPad file: {info['launchpad']}  (lpad -l / rlaunch -l)")
        if info.get("warning"):
            print(f"warning: {info['warning']}", file=sys.stderr)
    elif args.action == "stop":
        info = server.stop(args.home)
        print(f"stopped pid {info['pid']}" if info["stopped"] else info["message"])
    else:
        info = server.status(args.home)
        _print(info, args.json)
        return 0 if info.get("answering") else 3
    return 0


def cmd_submit(args) -> int:
    from fw_screen.orchestration.fireworks import submit

    lp_file = resolve_launchpad(args.launchpad, args.home)
    spec = _spec(args)
    t0 = time.perf_counter()
    bar = Progress("ingest", unit="CIF", every=10)
    try:
        summary, wf = submit(open_launchpad(lp_file), _store(lp_file), args.input, spec, progress=bar.update_to)
    finally:
        bar.close()
    print(f"{summary['inputs']} inputs -> {summary['new']} new candidates, {summary['existing']} already in "
          f"campaign {summary['campaign']!r} ({time.perf_counter() - t0:.1f} s)")
    if wf is None:
        print("no new work: every batch already has its Fireworks")
    else:
        print(f"added workflow {wf.name!r}: {len(wf.fws)} Fireworks ({len(summary['workflow_batches'])} validity "
              f"batches, {spec.dedup_shards} uniqueness shards)")
    return 0


def cmd_workflow(args) -> int:
    from fw_screen.orchestration.fireworks import ingest_workflow

    spec = _spec(args)
    wf = ingest_workflow(args.input, spec, db_file=args.db_file)
    wf.to_file(args.output)
    print(f"wrote {args.output}: add it with `lpad -l LAUNCHPAD add {args.output}`")
    return 0


def cmd_references(args) -> int:
    from fw_screen.stages import load_references, read_references

    if not args.sources and not args.list and not args.remove:
        raise CLIError("give reference files to load, or --list, or --remove NAME")
    if args.set and len(args.sources) > 1:
        raise CLIError("--set names one set: give one source with it")
    # open every source before connecting: a missing file, an unknown format or an untrusted pickle stops here
    opened = [(source, read_references(source, args.covers, args.trust_pickle)) for source in args.sources]
    store = _store(resolve_launchpad(args.launchpad, args.home))
    for name in args.remove or []:
        if store.reference_set(name) is None:
            raise CLIError(f"no reference set {name!r} (fw-screen references --list)")
        r = store.remove_reference_set(name)
        print(f"removed reference set {name}: {r['structures']} structures, {r['entries']} hull entries")
    for source, found in opened:
        r = load_references(store, source, args.set, found=found, covers=args.covers,
                            energy_scale=args.energy_scale, trust_pickle=args.trust_pickle)
        if r.get("unchanged"):
            print(f"{source}: already loaded as set {r['set']} ({r['covers']}, {r['energy_scale']}): nothing to do")
            continue
        covers = r["covers"] + (f" {', '.join(r['systems'])}" if r.get("systems") and len(r["systems"]) <= 8 else
                                f" ({len(r['systems'])} systems)" if r.get("systems") else "")
        print(f"{source}: set {r['set']} ({r['format']}): {r['new']} structures, {r['entries_new']} hull entries "
              f"on the {r['energy_scale']} scale; covers {covers}; {r['seconds']} s")
    if args.list or opened:
        print(format_reference_sets(store.reference_sets()))
    return 0


def format_reference_sets(sets: list[dict]) -> str:
    """One line per reference set: name, what it covers, energy scale, sizes, source."""
    if not sets:
        return "no reference sets loaded"
    rows = [("set", "covers", "energy scale", "entries", "structures", "elements", "format", "source")]
    for s in sets:
        covers = s["covers"]
        if s.get("systems"):
            covers += f": {', '.join(s['systems'])}" if len(s["systems"]) <= 3 else f": {len(s['systems'])} systems"
        rows.append((s["_id"], covers, s.get("energy_scale") or "-", str(s.get("n_entries", 0)),
                     str(s.get("n_structures", 0)), str(len(s.get("elements") or [])), s.get("format") or "-",
                     str(s.get("source") or "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


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
                  f"failed {f['ml_failed']}; stable (e_hull <= {report['stability_threshold']} eV/atom) {y['vsun']}",
                  f"  yields: V {pct(y['V'])}, VU {pct(y['VU'])}, VUN {pct(y['VUN'])}, VSUN {pct(y['VSUN'])}; "
                  f"ML band-gap target hit {pct(y['band_gap_hit_among_valid_evaluated'])} of "
                  f"{y['valid_band_gap_evaluated']} predicted, {pct(y['band_gap_hit_among_vsun'])} of VSUN"]
        a = report.get("after_relaxation") or {}
        if a.get("checked"):
            lines.append(f"  after relaxation: {a['checked']} checked, {a['known']} relaxed onto a known "
                         f"phase, {a['duplicate']} onto another candidate; S.U.N. (e_hull <= "
                         f"{report['stability_threshold']}) {a['sun']} of {report['funnel']['inputs']} "
                         f"(VSUN counted {y['vsun']}); fw-screen metrics {report['campaign']} for the papers' table")
        lines.append(f"  {'target band gap (eV)':>22} {'inputs':>7} {'V':>6} {'VUN':>6} {'VSUN':>6} {'hit':>6} {'hit|VSUN':>8}")
        for r in report["by_condition"]:
            lines.append(f"  {r['condition']!s:>22} {r['n']:>7} {pct(r['V']):>6} {pct(r['VUN']):>6} "
                         f"{pct(r['VSUN']):>6} {pct(r['band_gap_hit_among_valid_evaluated']):>6} "
                         f"{pct(r['band_gap_hit_among_vsun']):>8}")
    lite = report.get("dft_lite") or {}
    if len(lite) > 1:
        lines.append("  DFT-lite band gaps: " + ", ".join(f"{k} {lite[k]}" for k in ("done", "queued", "failed", "skipped")
                                                         if lite.get(k)) + f"; target hit {lite['hit']}")
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
    lines = [f"  {'candidate':<30} {'formula':<14} {'sg':<10} {'E_hull':>8} {'ML gap':>12} {'lite gap':>8} "
             f"{'target':>7} hit"]
    for d in rows:
        ml, lite = d["ml"], d.get("dft_lite") or {}
        hit = ml.get("hits", {}).get("band_gap", {})
        if lite.get("status") == "done":
            hit = (lite.get("hits") or {}).get("band_gap") or hit
        target = hit.get("target")
        lines.append(f"  {d['_id']:<30} {d['reduced_formula']:<14} {d.get('spacegroup') or '-':<10} "
                     f"{ml['e_above_hull']:>8.3f} {format_ml_gap(ml.get('band_gap')):>12} "
                     f"{_gap(lite.get('band_gap')):>8} {'-' if target is None else f'{target:.2f}':>7} "
                     f"{hit.get('hit')}" + (f" ({hit.get('source')})" if hit.get("source") else ""))
    return "\n".join(lines)


def _gap(band_gap: dict | None) -> str:
    gap = (band_gap or {}).get("band_gap")
    return "-" if gap is None else f"{gap:.2f}"


def format_ml_gap(band_gap: dict | None) -> str:
    """An ML band gap with the model's measured error: ``1.23±0.83`` (eV), ``1.23±?`` when never measured."""
    if not band_gap or band_gap.get("band_gap") is None:
        return "-"
    err = band_gap.get("model_error")
    return f"{band_gap['band_gap']:.2f}±{'?' if err is None else f'{err:.2f}'}"


def format_dft(rows: list[dict]) -> str:
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [f"  {'candidate':<30} {'formula':<10} {'status':<10} {'ML e_hull':>9} {'DFT e_hull':>10} "
             f"{'ML gap':>10} {'lite gap':>8} {'DFT gap':>7} {'target':>6}  note"]
    for d in rows:
        ml, dft = d.get("ml") or {}, d.get("dft") or {}
        gap = (dft.get("band_gap") or {}).get("band_gap")
        note = dft.get("reason") or dft.get("hull_reason") or (
            "hull waits for references" if dft.get("hull_status") == "waiting" else "")
        lines.append(f"  {d['_id']:<30} {d.get('reduced_formula', '-'):<10} {d['status']:<10} "
                     f"{num(ml.get('e_above_hull'), '9.3f'):>9} {num(dft.get('e_above_hull'), '10.3f'):>10} "
                     f"{format_ml_gap(ml.get('band_gap')):>10} {_gap(d.get('dft_lite', {}).get('band_gap')):>8} "
                     f"{num(gap, '7.2f'):>7} "
                     f"{num(((d.get('targets') or {}).get('band_gap') or {}).get('value'), '6.2f'):>6}  {note[:60]}")
    return "\n".join(lines)


def cmd_promote(args) -> int:
    from fw_screen.orchestration.fireworks import promote

    lp_file = resolve_launchpad(args.launchpad, args.home)
    summary = promote(open_launchpad(lp_file), _store(lp_file), args.campaign)
    if summary.get("dft_lite_fireworks"):
        print(f"campaign {args.campaign}: DFT-lite band-gap Fireworks added: {summary['dft_lite_fireworks']} "
              f"(property.method dft_lite; category dft)")
    if summary.get("waiting_dft_lite"):
        print(f"campaign {args.campaign}: promotion waits for {summary['waiting_dft_lite']} DFT-lite band gaps "
              f"(run a dft worker; the last one promotes, or run fw-screen promote again)")
        return 0
    print(f"campaign {args.campaign}: {summary['considered']} ML-done candidates considered, {summary['eligible']} "
          f"eligible, {len(summary['promoted'])} promoted now; DFT Fireworks added: {summary['dft_fireworks']}")
    if summary["not_eligible"]:
        print("  not eligible (first failing rule): " + ", ".join(f"{k} {v}" for k, v in summary["not_eligible"].items()))
    return 0


def _campaigns(store, name: str | None) -> list[str]:
    """The campaign asked for (checked to exist), else every campaign."""
    from fw_screen.reporting.tables import require_campaign

    if name is None:
        return store.campaign_names()
    require_campaign(store, name)
    return [name]


def _status_text(store, names: list[str], args) -> str:
    from fw_screen.reporting.funnel import funnel_report

    parts = []
    for name in names:
        text = format_report(funnel_report(store, name))
        if args.top:
            rows = store.top_candidates(name, args.top)
            if rows:
                text += f"\nlowest above the ML hull in {name} (eV/atom; band gap eV):\n{format_top(rows)}"
        if args.dft:
            rows = store.dft_candidates(name)
            if rows:
                text += f"\nDFT candidates of {name} (eV/atom; band gap eV):\n{format_dft(rows)}"
        parts.append(text)
    return "\n\n".join(parts)



def cmd_status(args) -> int:
    from fw_screen.reporting.funnel import funnel_report

    lp_file = resolve_launchpad(args.launchpad, args.home)
    store = _store(lp_file)
    names = _campaigns(store, args.campaign)
    if not names:
        print("no campaigns yet: `fw-screen submit INPUT --campaign NAME`")
        return 0
    if args.recount:
        from fw_screen.reporting.funnel import format_recount, recount

        results = [recount(store, n, repair=args.repair) for n in names]
        print(json.dumps(results, indent=1, default=str) if args.json else "\n".join(map(format_recount, results)))
        return 1 if any(r["kept"] and r["differences"] and not r["repaired"] for r in results) else 0
    if args.json:
        print(json.dumps([funnel_report(store, n) for n in names], indent=1, default=str))
        return 0
    if not args.watch:
        print(_status_text(store, names, args))
        return 0
    return _watch(store, open_launchpad(lp_file), names, args)


def _watch(store, launchpad, names: list[str], args) -> int:
    """Refresh the funnel counts every ``--watch`` seconds while launchers run: until Ctrl-C, ``--count``
    refreshes, or (``--until-done``) no Firework of the campaign(s) has work left."""
    from fw_screen.orchestration.launchpad import LIVE_FW_STATES, firework_states

    active_states = (*LIVE_FW_STATES, "PAUSED")  # a paused Firework still has work to do: it waits for a person

    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    shown = 0
    try:
        while True:
            states: dict[str, int] = {}
            for name in names:
                for k, v in firework_states(launchpad, name).items():
                    states[k] = states.get(k, 0) + v
            fws = ", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items())) or "none"
            stamp = time.strftime("%H:%M:%S")
            print(f"{clear}[{stamp}] Fireworks: {fws}\n{_status_text(store, names, args)}", flush=True)
            if not clear:
                print("-" * 100, flush=True)
            shown += 1
            active = sum(states.get(k, 0) for k in active_states)
            if args.until_done and not active:
                print(f"no Fireworks left to run for {', '.join(names)}")
                return 0
            if args.count and shown >= args.count:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def cmd_table(args) -> int:
    from fw_screen.reporting.tables import COLUMNS, format_table, hull_table

    store = _store(resolve_launchpad(args.launchpad, args.home))
    _campaigns(store, args.campaign)
    columns = args.columns.split(",") if args.columns else None
    unknown = [c for c in columns or [] if c not in COLUMNS]
    if unknown:
        raise CLIError(f"unknown column(s) {', '.join(unknown)}: use {', '.join(COLUMNS)}")
    rows = hull_table(store, args.campaign, sort=args.sort, descending=args.desc, limit=args.limit,
                      stage=args.stage, chemsys=args.chemsys, elements=args.elements, condition=args.condition,
                      max_ml_e_above_hull=args.max_ml_e_hull, max_dft_e_above_hull=args.max_dft_e_hull,
                      ml_hit=args.ml_hit, dft_hit=args.dft_hit)
    text = format_table(rows, args.format, columns)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if not rows:
        print(f"no candidate of {args.campaign!r} matches these filters", file=sys.stderr)
    return 0


def cmd_yields(args) -> int:
    from fw_screen.reporting.tables import (
        YIELD_COLUMNS,
        format_table,
        funnel_yields,
        yield_rows,
    )

    store = _store(resolve_launchpad(args.launchpad, args.home))
    _campaigns(store, args.campaign)
    y = funnel_yields(store, args.campaign, thresholds=args.threshold or None)
    if args.format == "json":
        print(json.dumps(y, indent=1, default=str))
    else:
        columns = YIELD_COLUMNS if args.all_columns else YIELD_COLUMNS[:10]
        sys.stdout.write(format_table(yield_rows(y), args.format, columns))
    return 0


def cmd_metrics(args) -> int:
    from fw_screen.reporting.tables import campaign_metrics, format_metrics

    store = _store(resolve_launchpad(args.launchpad, args.home))
    _campaigns(store, args.campaign)
    sys.stdout.write(format_metrics(campaign_metrics(store, args.campaign), "json" if args.json else args.format))
    return 0


def cmd_compare(args) -> int:
    from fw_screen.reporting.tables import format_agreement, format_table, ml_vs_dft

    store = _store(resolve_launchpad(args.launchpad, args.home))
    _campaigns(store, args.campaign)
    result = ml_vs_dft(store, args.campaign)
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    print(format_agreement(result))
    if result["rows"]:
        cols = ["id", "formula", "ml_e_above_hull", "dft_e_above_hull", "ml_band_gap", "ml_band_gap_error",
                "dft_lite_band_gap", "dft_band_gap", "condition", "ml_band_gap_hit", "dft_lite_band_gap_hit",
                "dft_band_gap_hit", "status"]
        print(format_table(result["rows"], "markdown", cols))
    return 0


def cmd_chemical_space(args) -> int:
    require("report", what="the chemical-space map")
    from fw_screen.reporting.chemical_space import (
        campaign_chemical_space,
        format_chemical_space,
        has_candidates,
        write_chemical_space,
    )
    from fw_screen.store import ResultsStore

    # a plain connection: nothing is written (no LaunchPad indexes)
    store = ResultsStore.from_file(resolve_launchpad(args.launchpad, args.home))
    result = campaign_chemical_space(store, args.campaign, max_per_group=args.max_per_group, seed=args.seed,
                                     fit_on=args.fit_on, relaxed=args.relaxed, symmetry=not args.no_symmetry)
    if not has_candidates(result):
        print(f"campaign {args.campaign!r} has no valid candidates", file=sys.stderr)
    png = write_chemical_space(result, args.output, args.json_out)
    print(format_chemical_space(result, png, args.json_out))
    return 0


def cmd_report(args) -> int:
    require("report")
    from fw_screen.reporting.report import build_report, default_path, format_summary

    store = _store(resolve_launchpad(args.launchpad, args.home))
    summary = build_report(store, args.campaign, args.output or default_path(args.campaign), top=args.top,
                           chemical_space=not args.no_chemical_space, progress=True)
    print(format_summary(summary))
    return 0


def cmd_run(args) -> int:
    lp_file = resolve_launchpad(args.launchpad, args.home)
    fworker = args.fworker or str(server.home(args.home) / f"fworker_{args.category}.yaml")
    if not Path(fworker).is_file():
        raise CLIError(f"FWorker file not found: {fworker} (fw-screen db start writes them)")
    t0 = time.perf_counter()
    codes = launch_workers(lp_file, fworker, args.workers, server.home(args.home) / "launches", progress=True)
    print(f"{args.workers} launcher(s) finished in {time.perf_counter() - t0:.1f} s (exit codes {codes})")
    return 0 if all(c == 0 for c in codes) else 1


# -------------------------------------------------------------------------------------------- parser
#: ``fw-screen chemical-space --help``: what the groups are
CHEMICAL_SPACE_DESCRIPTION = (
    "Where in chemical space did the generator put its valid / novel / stable candidates?  (matminer + PCA) "
    "Groups (a candidate can be in several: they nest): reference (the references collection), valid, novel "
    "(novel or any later status), ML-stable (ml.stable), DFT-confirmed (dft.stable, status dft_done).  Each is a "
    "seeded random sample of at most --max-per-group structures; only the sampled documents' structures are "
    "fetched.  The database is only read.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fw-screen", description="Screen generated crystal structures with FireWorks.")
    p.add_argument("--home", help="state folder of the embedded server (default $FW_SCREEN_HOME or ./.fw-screen)")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_db_parser, add_input_parsers, add_status_parser, add_table_parser, add_analysis_parsers,
                add_chemical_space_parser, add_report_parser, add_run_parsers, add_recover_parser,
                add_demo_parser):  # in this order in --help
        add(sub)
    return p


def add_db_parser(sub) -> None:
    """``db``: the embedded server."""
    db = sub.add_parser("db", help="start/stop/status of the embedded SecantusDB server")
    db.add_argument("action", choices=["start", "stop", "status"])
    db.add_argument("--port", type=int, default=server.DEFAULT_PORT)
    db.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; any other needs --auth)")
    db.add_argument("--auth", action="store_true",
                    help="SCRAM authentication: create a user with a random password, written to the LaunchPad "
                         "file (0600) only; stays on for this data folder")
    db.add_argument("--json", action="store_true")
    db.set_defaults(func=cmd_db)


def add_campaign_args(sp) -> None:
    """The arguments of a command that reads inputs into a campaign (``submit``, ``workflow``)."""
    sp.add_argument("input", help="folder of CIFs, CIF file, .tar[.gz], .csv or .parquet")
    sp.add_argument("--spec", help="campaign spec YAML (default: specs/default.yaml)")
    sp.add_argument("-c", "--campaign", help="campaign name (overrides the spec's)")
    sp.add_argument("--batch-size", type=int, help="candidates per cheap-stage Firework")


def add_input_parsers(sub) -> None:
    """``submit``, ``workflow``, ``references``: what goes into the database."""
    s = sub.add_parser("submit", help="ingest inputs and add their workflow to the LaunchPad")
    add_campaign_args(s)
    s.add_argument("-l", "--launchpad")
    s.set_defaults(func=cmd_submit)

    w = sub.add_parser("workflow", help="write a workflow YAML for `lpad add` (ingest runs on a worker)")
    add_campaign_args(w)
    w.add_argument("-o", "--output", required=True)
    w.add_argument("--db-file", help="LaunchPad file the workers use (default: their FWorker env db_file)")
    w.set_defaults(func=cmd_workflow)

    r = sub.add_parser("references", help="load, list or remove reference sets (novelty structures, hull entries)")
    r.add_argument("sources", nargs="*", help="pymatgen .json[.gz] of entries, Matbench Discovery MP entries "
                   ".json.gz or PatchedPhaseDiagram .pkl.gz, Alexandria convex-hull .json.bz2, .csv/.parquet with a "
                   "CIF column (MP-20, Alex-MP-20, training tables), .cif, a folder of CIFs, or mp:CHEMSYS")
    r.add_argument("--set", help="name of the reference set (default: file name)")
    r.add_argument("--covers", choices=["whole-database", "per-system", "structures-only"],
                   help="what the file covers: every chemical system of its elements (a whole MP/Alexandria "
                        "release), the whole chemical systems it holds, or novelty only (default: what the format "
                        "declares; plain files of <= 8 elements are one system)")
    r.add_argument("--energy-scale", choices=["mp2020", "mp-legacy", "alexandria-pbe", "unknown"],
                   help="the scale of its energies (default: read from its corrections or format); hulls use "
                        "only sets on the ML stage's scale (mp2020)")
    r.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickle (.pkl[.gz], e.g. Matbench Discovery's PatchedPhaseDiagram): "
                        "unpickling runs code from the file")
    r.add_argument("--list", action="store_true", help="show every reference set")
    r.add_argument("--remove", action="append", metavar="NAME", help="remove a reference set and its documents")
    r.add_argument("-l", "--launchpad")
    r.set_defaults(func=cmd_references)


def add_status_parser(sub) -> None:
    """``status``: funnel counts, once or watched."""
    stt = sub.add_parser("status", help="funnel counts per campaign")
    stt.add_argument("-c", "--campaign")
    stt.add_argument("-l", "--launchpad")
    stt.add_argument("--json", action="store_true")
    stt.add_argument("--top", type=int, default=0, help="also list the N candidates lowest above the ML hull")
    stt.add_argument("--dft", action="store_true", help="also list the promoted candidates with ML and DFT numbers")
    stt.add_argument("--watch", type=float, nargs="?", const=5.0, default=None, metavar="SECONDS",
                     help="refresh every SECONDS (default 5) with the campaign's Firework states, until Ctrl-C")
    stt.add_argument("--count", type=int, default=0, help="with --watch: stop after this many refreshes")
    stt.add_argument("--until-done", action="store_true",
                     help="with --watch: stop when no Firework of the campaign is waiting, ready or running")
    stt.add_argument("--recount", action="store_true",
                     help="recount from the candidate documents and report any difference from the kept counters "
                          "(exit 1 when a kept one differs)")
    stt.add_argument("--repair", action="store_true",
                     help="with --recount: store the recount as the counters (while no worker writes)")
    stt.set_defaults(func=cmd_status)


def add_table_parser(sub) -> None:
    """``table``: the hull-distance table and its filters."""
    tb = sub.add_parser("table", help="hull-distance table of a campaign (CSV, Markdown or JSON)")
    tb.add_argument("campaign")
    tb.add_argument("-l", "--launchpad")
    tb.add_argument("--format", "-f", default="csv", choices=["csv", "markdown", "md", "json"])
    tb.add_argument("-o", "--output", help="write to this file instead of standard output")
    tb.add_argument("--stage", help="valid, unique, novel, ml, promoted, dft, failed, or one status")
    tb.add_argument("--chemsys", help="exactly this chemical system, e.g. Na-P")
    tb.add_argument("--elements", nargs="+", help="containing all of these elements")
    tb.add_argument("--condition", type=float, help="band-gap target of the generator (eV)")
    tb.add_argument("--max-ml-e-hull", type=float, help="ML e_above_hull at most this (eV/atom)")
    tb.add_argument("--max-dft-e-hull", type=float, help="DFT e_above_hull at most this (eV/atom)")
    hit = tb.add_mutually_exclusive_group()
    hit.add_argument("--ml-hit", dest="ml_hit", action="store_true", default=None, help="ML band-gap target hit")
    hit.add_argument("--ml-miss", dest="ml_hit", action="store_false", help="ML band-gap target missed")
    dhit = tb.add_mutually_exclusive_group()
    dhit.add_argument("--dft-hit", dest="dft_hit", action="store_true", default=None, help="DFT band-gap hit")
    dhit.add_argument("--dft-miss", dest="dft_hit", action="store_false", help="DFT band-gap target missed")
    tb.add_argument("--sort", default="ml_e_above_hull", help="column to sort by (default ml_e_above_hull)")
    tb.add_argument("--desc", action="store_true", help="descending (missing values still last)")
    tb.add_argument("--limit", type=int)
    tb.add_argument("--columns", help="comma-separated subset of the columns")
    tb.set_defaults(func=cmd_table)


def add_analysis_parsers(sub) -> None:
    """``yields``, ``metrics``, ``compare``: what a campaign found, as tables."""
    yl = sub.add_parser("yields", help="V, VU, VUN, VSUN and target yields, overall and per condition")
    yl.add_argument("campaign")
    yl.add_argument("-l", "--launchpad")
    yl.add_argument("--format", "-f", default="markdown", choices=["csv", "markdown", "md", "json"])
    yl.add_argument("--threshold", type=float, action="append",
                    help="stability threshold in eV/atom (repeat; default: the campaign's and 0)")
    yl.add_argument("--all-columns", action="store_true", help="also print the counts behind the rates")
    yl.set_defaults(func=cmd_yields)

    mx = sub.add_parser("metrics", help="the papers' generation metrics (V..VSUN, S.U.N./MSUN after relaxation, "
                                        "RMSD, DiffCSP validity, band-gap MAE, F1/DAF), defined and sourced")
    mx.add_argument("campaign")
    mx.add_argument("-l", "--launchpad")
    mx.add_argument("--format", "-f", default="markdown", choices=["csv", "markdown", "md", "json"])
    mx.add_argument("--json", action="store_true", help="same as --format json")
    mx.set_defaults(func=cmd_metrics)

    cp = sub.add_parser("compare", help="ML vs DFT on the candidates with DFT results (MAE, precision/recall)")
    cp.add_argument("campaign")
    cp.add_argument("-l", "--launchpad")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compare)


def add_chemical_space_parser(sub) -> None:
    """``chemical-space``: the matminer + PCA map of a campaign."""
    cs = sub.add_parser("chemical-space", help="where in chemical space the generator put its valid / novel / stable "
                                               "candidates (matminer features, PCA map: PNG, JSON)",
                        description=CHEMICAL_SPACE_DESCRIPTION)
    cs.add_argument("campaign")
    cs.add_argument("-l", "--launchpad", help="LaunchPad YAML (default: $FW_SCREEN_LAUNCHPAD, else the embedded "
                                               "server's)")
    cs.add_argument("-o", "--output", default=None, help="PNG to write (default chemical_space_CAMPAIGN.png)")
    cs.add_argument("--json", dest="json_out", help="write the result (points, loadings, summary) as JSON")
    cs.add_argument("--max-per-group", type=int, default=1000)
    cs.add_argument("--seed", type=int, default=0)
    cs.add_argument("--fit-on", choices=("auto", "reference", "all"), default="auto",
                    help="points the PCA is fit on (auto: reference if it has >= 3 structures)")
    cs.add_argument("--relaxed", action="store_true",
                    help="ML-stable / DFT-confirmed groups: use the relaxed structures")
    cs.add_argument("--no-symmetry", action="store_true", help="skip the spglib features (faster)")
    cs.set_defaults(func=cmd_chemical_space)


def add_report_parser(sub) -> None:
    """``report``: the self-contained HTML report."""
    rp = sub.add_parser("report", help="self-contained HTML report of a campaign (plots, tables, CIFs; opens offline)")
    rp.add_argument("campaign")
    rp.add_argument("-o", "--output", help="HTML file to write (default: report_CAMPAIGN.html in this directory)")
    rp.add_argument("--top", type=int, default=20, help="rows of the top-candidates table (default 20)")
    rp.add_argument("--no-chemical-space", action="store_true",
                    help="leave out the chemical-space map (matminer features: the slowest section)")
    rp.add_argument("-l", "--launchpad")
    rp.set_defaults(func=cmd_report)


def add_run_parsers(sub) -> None:
    """``promote``, ``run``, ``ml``: more work, and workers to do it."""
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


def add_recover_parser(sub) -> None:
    """``recover``: put back what dead launchers left."""
    rc = sub.add_parser("recover", help="rerun the Fireworks of dead launchers, release their DFT claims and leases")
    rc.add_argument("-c", "--campaign", help="only this campaign's Fireworks (claims and leases: all)")
    rc.add_argument("--expiration-secs", type=float, default=None,
                    help="a RUNNING Firework not pinged for this long is lost (default FireWorks' RUN_EXPIRATION_SECS)")
    rc.add_argument("--checkout-grace", type=float, default=None, metavar="SECS",
                    help="a Firework RESERVED this long without a Launch of its own was left by a launcher that died "
                         "inside FireWorks' checkout (default 300)")
    rc.add_argument("--lock-wait", type=float, default=None, metavar="SECS",
                    help="a workflow locked and unchanged for this long (watched when any is locked) has a "
                         "lock nobody holds: removed (default 30)")
    rc.add_argument("--rerun-fizzled", action="store_true",
                    help="rerun every FIZZLED Firework (default: those that died of a database error or a dead launcher)")
    rc.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    rc.add_argument("-l", "--launchpad")
    rc.add_argument("--json", action="store_true")
    rc.set_defaults(func=cmd_recover)


def add_demo_parser(sub) -> None:
    """``demo``: the whole funnel on the bundled generations."""
    d = sub.add_parser("demo", help="the whole cheap funnel on the bundled CrystaLLM-pi generations")
    d.add_argument("--input", default=None)
    d.add_argument("--references", nargs="*", default=None)
    d.add_argument("-n", "--workers", type=int, default=2)
    d.add_argument("-c", "--campaign", default="demo")
    d.add_argument("--dft-candidates", type=int, default=1, help="candidates the demo promotes to DFT")
    d.set_defaults(func=cmd_demo)


def cmd_recover(args) -> int:
    from fw_screen.orchestration.recovery import format_recovery, recover

    lp_file = resolve_launchpad(args.launchpad, args.home)
    result = recover(open_launchpad(lp_file), _store(lp_file), args.campaign, expiration_secs=args.expiration_secs,
                     dry_run=args.dry_run, rerun_fizzled=args.rerun_fizzled, checkout_grace_s=args.checkout_grace,
                     lock_wait_s=args.lock_wait)
    print(json.dumps(result, indent=1, default=str) if args.json else format_recovery(result))
    return 0


def cmd_ml(args) -> int:
    from fw_screen.orchestration.fireworks import add_ml_fireworks

    lp_file = resolve_launchpad(args.launchpad, args.home)
    batches = add_ml_fireworks(open_launchpad(lp_file), _store(lp_file), args.campaign)
    print(f"added {len(batches)} ML Fireworks" if batches else "every novel candidate already has its ML Firework")
    return 0


#: what ``fw-screen demo`` prints for each event of :func:`fw_screen.orchestration.demo.run_demo` but the last
DEMO_TEXT = {
    "database": lambda e: f"database: SecantusDB pid {e['info']['pid']} on {e['info']['host']}:{e['info']['port']}",
    "references": lambda e: (f"references {Path(e['source']).name}: {e['result']['new']} structures and "
                             f"{e['result']['entries_new']} hull entries new, {e['result']['existing']} structures "
                             f"already loaded"),
    "ingested": lambda e: f"ingested {e['summary']['inputs']} inputs: {e['summary']['new']} new candidates",
    "workflow": lambda e: f"workflow: {e['fireworks']} Fireworks; running {e['workers']} rlaunch workers ...",
    "workers": lambda e: f"workers finished: exit codes {e['codes']}",
}


def cmd_demo(args) -> int:
    for extra in ("ml", "dft", "report"):  # `make demo` installs them all ([all])
        require(extra, what="the demo (ML, DFT and the report)")
    from fw_screen.orchestration.demo import run_demo
    from fw_screen.reporting.funnel import funnel_report
    from fw_screen.reporting.report import build_report

    for event in run_demo(args.home, args.input, args.references, workers=args.workers, campaign=args.campaign,
                          dft_candidates=args.dft_candidates):
        if event["event"] != "done":
            print(DEMO_TEXT[event["event"]](event), flush=True)
    # orchestration does not import the reporting room: the funnel counts and the report come from here
    print(format_report(funnel_report(event["store"], event["campaign"])))
    findings = format_demo_findings(event)
    if findings:
        print(findings)
    report = build_report(event["store"], event["campaign"], event["report_path"])
    print(format_demo_end(event, report, time.perf_counter() - event["started"]))
    return 0


def format_demo_findings(done: dict) -> str:
    """The demo's candidates below its funnel: lowest above the ML hull, how many have no reference hull (and
    how to load a release that covers them), the promoted ones with their DFT numbers."""
    campaign, lines = done["campaign"], []
    if done["top"]:
        lines.append(f"lowest above the ML hull (eV/atom; band gap eV):\n{format_top(done['top'])}")
    if done["no_reference"]:
        lines.append(f"{done['no_reference']} novel candidates have no reference hull (their chemical systems lie "
                     f"outside the loaded reference sets: fw-screen references --list). One whole-database release "
                     f"covers them, e.g. Matbench Discovery's Materials Project entries:\n"
                     f"  fw-screen references 2023-02-07-mp-computed-structure-entries.json.gz && fw-screen ml -c "
                     f"{campaign}\n  (README, 'Reference sets': where each release is published, its licence)")
    if done["promoted"]:
        lines.append(f"promoted to DFT (Quantum ESPRESSO; eV/atom, band gap eV):\n{format_dft(done['promoted'])}")
        lines += [f"  {d['_id']}: {(d.get('promotion') or {}).get('reason', '')}" for d in done["promoted"]]
    return "\n".join(lines)


def format_demo_end(done: dict, report: dict, seconds: float) -> str:
    """The demo's last lines: its report, its time, and what to ask the database next."""
    c = done["campaign"]
    return (f"report: {report['path']} ({report['bytes'] / 1e6:.1f} MB, {report['seconds']:.0f} s; open it in a "
            f"browser, it needs no network)\n"
            f"total {seconds:.1f} s; query it: lpad -l {done['launchpad']} get_wflows; "
            f"fw-screen status -c {c} [--watch]; fw-screen table {c} --stage ml; "
            f"fw-screen compare {c}; fw-screen metrics {c} (the papers' table)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pymongo.errors import ServerSelectionTimeoutError

    from fw_screen.reporting.tables import AnalysisError
    from fw_screen.science.ingest import IngestError
    from fw_screen.science.references import ReferenceSourceError
    from fw_screen.spec import SpecError
    from fw_screen.store import StoreError

    try:
        return args.func(args)
    except ServerSelectionTimeoutError as exc:
        print(f"fw-screen: error: cannot reach the database ({exc.args[0][:200]}); is it running? "
              f"(`fw-screen db status`, `fw-screen db start`)", file=sys.stderr)
        return 2
    except (CLIError, server.ServerError, SpecError, StoreError, IngestError, ReferenceSourceError,
            AnalysisError, MissingExtraError) as exc:
        print(f"fw-screen: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
