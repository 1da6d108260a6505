#!/usr/bin/env python
"""Wall time of the DFT stage (Quantum ESPRESSO pw.x, vc-relax -> scf -> nscf -> band gap) per candidate at
production settings, and the share of it spent outside pw.x (fw-screen + custodian + FireWorks).

Settings: the spec's ``dft.qe`` defaults (specs/default.yaml: kppa 1000, nscf_kppa 3000, SSSP efficiency 1.3
cutoffs per chemical system: the largest recommendation among its elements), SSSP pseudopotentials from
``/work/shared/data/pseudo/sssp_efficiency_1.3`` (else tests/data/pseudo, which covers Si, Al, O, Li, Na only).

Structures (experimental lattices, as an ML relaxation would leave them near the PBE minimum): Si diamond (2
atoms), Al fcc (1, metal), MgO rock salt (2), Li2O antifluorite (3), ZnO wurtzite (4; Zn 3d in valence);
optionally (``--structures ...,TiO2``) rutile TiO2 (6 atoms; spin-polarised, as fw-screen treats every cell
with Ti).

Parts:

1. ``direct``: ``fw_screen.dft.qe.chain.run_chain`` on each structure with 1 MPI rank (serial pw.x, the product's
   default) and with 2 (``mpirun --allow-run-as-root --bind-to none -np 2``).  Per step: seconds (custodian
   around pw.x), pw_seconds (pw.x's own WALL clock), k-mesh, SCF iterations, ionic steps; band gap, relaxed
   lattice.  Outside pw.x inside run_chain = ``seconds - pw_seconds`` (input writing, mpirun start, pw.x's
   time before its clock starts, custodian polling every 1 s, output parsing).
2. ``fireworks``: the same work as the product runs it: an embedded SecantusDB (``fw_screen.server.embedded.start``),
   a campaign with ML-done candidates moved to ``promoted`` (by ``store.transition``: ``run_promotion`` refuses
   candidates without DFT reference phases), ``dft_workflow`` (candidate Fireworks only; no reference entries
   are loaded, so the reference-phase lookup runs, finds none and records the hull as not computed: a rocket
   is the candidate's chain, no inline reference calculations) and one ``rlaunch rapidfire`` worker (FWorker
   category dft, env pseudo_dir / pw_cmd / mpi_cmd).  Compared: launches' ``runtime_secs`` and the worker's wall
   time against the candidates' ``dft.pw_seconds`` / ``dft.seconds``.  The "naive way" is calling run_chain
   directly (part 1): the ratio FireWorks wall / direct run_chain wall for the same structures is printed.

    .venv/bin/python benchmarks/bench_dft.py | tee benchmarks/results/dft.txt          # ~30 min on 2 cores
    .venv/bin/python benchmarks/bench_dft.py --quick | tee /tmp/dft_quick.txt          # smoke, ~3 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402, F401  (single-threaded BLAS before numpy; the repo on sys.path)

import yaml  # noqa: E402

from _common import REPO  # noqa: E402

from _common import code_version, free_port, loadavg, machine_info, save_results  # noqa: E402

from fw_screen.dft import qe
from fw_screen.dft.qe import io
from fw_screen.server import embedded as server  # noqa: E402
from fw_screen import state as st  # noqa: E402
from fw_screen.spec import load_spec  # noqa: E402

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).resolve().parent / "results"
SSSP = Path("/work/shared/data/pseudo/sssp_efficiency_1.3")
TEST_PSEUDO = REPO / "tests" / "data" / "pseudo"
MPI_2 = "mpirun --allow-run-as-root --bind-to none -np {n}"

#: name -> (builder, expected PBE gap in eV or None for a metal, note)
EXPECTED_GAP = {"Si": 0.6, "Al": 0.0, "MgO": 4.5, "Li2O": 5.0, "ZnO": 0.75, "TiO2": 1.8}


def build(name: str):
    from pymatgen.core import Lattice, Structure

    if name == "Si":
        s = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]])
    elif name == "Al":
        s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.05), ["Al"], [[0, 0, 0]])
    elif name == "MgO":
        s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    elif name == "Li2O":
        s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    elif name == "ZnO":
        s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.207), ["Zn", "O"],
                                      [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])
    elif name == "TiO2":
        s = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                      [[0, 0, 0], [0.305, 0.305, 0]])
    else:
        raise SystemExit(f"unknown structure {name!r} (Si, Al, MgO, Li2O, ZnO, TiO2)")
    return s.get_primitive_structure()


def pseudo_dir(arg: str | None) -> str:
    if arg:
        return arg
    return str(SSSP if SSSP.is_dir() else TEST_PSEUDO)


def mpi_cmd(ranks: int) -> str:
    return "" if ranks == 1 else MPI_2.format(n=ranks)


def lattice_summary(structure) -> dict:
    lat = structure.lattice
    return {"a": round(lat.a, 4), "b": round(lat.b, 4), "c": round(lat.c, 4), "alpha": round(lat.alpha, 2),
            "beta": round(lat.beta, 2), "gamma": round(lat.gamma, 2), "volume_per_atom": round(lat.volume / len(structure), 3)}


def conventional_a(name: str, structure) -> float | None:
    """Cubic conventional lattice constant from the primitive fcc/diamond cell (a_conv = a_prim * sqrt 2)."""
    if name in ("Si", "Al", "MgO", "Li2O"):
        return round(structure.lattice.a * 2 ** 0.5, 4)
    return None


# ------------------------------------------------------------------------------------------ part 1
def pw_cmd(ranks: int, npool: int | None) -> str:
    """pw.x, with ``-nk npool`` (k-point pools instead of plane-wave (R & G) division) when ranks > 1."""
    return f"pw.x -nk {npool}" if npool and ranks > 1 else "pw.x"


_PWSCF_CLOCK = re.compile(r"PWSCF\s*:\s*(.+?)\s+CPU\s+(.+?)\s+WALL")


def pw_cpu_seconds(stepdir: Path) -> float | None:
    """pw.x's own CPU seconds (rank 0) summed over the step's outputs: unlike WALL, hardly affected by other
    processes competing for the cores."""
    total, found = 0.0, False
    for out in sorted(stepdir.glob("*.out*")):
        m = _PWSCF_CLOCK.search(out.read_text(errors="replace"))
        if m:
            total += io._hms(m.group(1).replace(" ", ""))
            found = True
    return round(total, 2) if found else None


def direct_run(name: str, ranks: int, qe_spec: dict, pdir: str, root: Path, npool: int | None = None) -> dict:
    s0 = build(name)
    settings = qe.resolve_settings(qe_spec, {"pseudo_dir": pdir, "pw_cmd": pw_cmd(ranks, npool),
                                             "mpi_cmd": mpi_cmd(ranks)})
    t = time.perf_counter()
    proto = qe.protocol([e.symbol for e in s0.composition], settings)
    proto_s = time.perf_counter() - t
    load0 = loadavg()
    t = time.perf_counter()
    res = qe.run_chain(s0, proto, settings, root / f"{name}_np{ranks}", kind="crystal")
    wall = time.perf_counter() - t
    out = {"name": name, "ranks": ranks, "npool": npool if ranks > 1 else None, "command": settings["pw_cmd"],
           "mpi_cmd": settings["mpi_cmd"], "natoms": len(s0), "status": res["status"], "reason": res.get("reason"),
           "protocol_id": proto["id"], "ecutwfc": proto["ecutwfc"], "ecutrho": proto["ecutrho"],
           "spin_polarized": proto["spin"]["system_spin_polarized"], "protocol_s": round(proto_s, 3),
           "wall_s": round(wall, 2), "seconds": res["seconds"], "pw_seconds": res["pw_seconds"],
           "outside_pw_s": round(res["seconds"] - res["pw_seconds"], 2),
           "outside_pw_share": round(1 - res["pw_seconds"] / res["seconds"], 4) if res["seconds"] else None,
           "energy_per_atom": res["energy_per_atom"], "loadavg_before": load0, "loadavg_after": loadavg(),
           "lattice_start": lattice_summary(s0), "corrections": len(res.get("corrections") or [])}
    bg = res.get("band_gap") or {}
    out["band_gap"] = {k: bg.get(k) for k in ("band_gap", "is_direct", "is_metal", "vbm", "cbm")}
    if res.get("structure") is not None:
        out["lattice_relaxed"] = lattice_summary(res["structure"])
        out["a_conventional_start"] = conventional_a(name, s0)
        out["a_conventional_relaxed"] = conventional_a(name, res["structure"])
    if res["status"] != "completed":  # pw.x's return codes (PWJob writes <step>.rc): custodian reports a
        # killed pw.x as "Validation failed" because validators run before its return-code check
        out["return_codes"] = {str(p.relative_to(root)): p.read_text().strip()
                               for p in sorted((root / f"{name}_np{ranks}").glob("*/*.rc"))}
    out["steps"] = [{k: stp.get(k) for k in ("calculation", "seconds", "pw_seconds", "kpts", "n_scf_iterations",
                                              "ionic_steps", "converged")} for stp in res["steps"]]
    for stp in out["steps"]:
        stp["outside_pw_s"] = round((stp["seconds"] or 0) - (stp["pw_seconds"] or 0), 2)
        stp["pw_cpu_seconds"] = pw_cpu_seconds(root / f"{name}_np{ranks}" / stp["calculation"])
    cpu = [stp["pw_cpu_seconds"] for stp in out["steps"]]
    out["pw_cpu_seconds"] = round(sum(cpu), 2) if cpu and None not in cpu else None
    return out


def print_direct_row(r: dict) -> None:
    steps = " | ".join(f"{s['calculation']} {s['seconds']:.1f}/{s['pw_seconds']:.1f}s k{'x'.join(map(str, s['kpts']))}"
                       f" it{s['n_scf_iterations']}" + (f" ion{s['ionic_steps']}" if s['calculation'] == 'vc-relax' else "")
                       for s in r["steps"])
    gap = r["band_gap"].get("band_gap")
    lat = r.get("lattice_relaxed") or {}
    a_txt = (f"a_conv {r['a_conventional_start']}->{r['a_conventional_relaxed']}" if r.get("a_conventional_relaxed")
             else f"a {r['lattice_start']['a']}->{lat.get('a')} c {r['lattice_start']['c']}->{lat.get('c')}")
    pools = f" nk{r['npool']}" if r.get("npool") else ""
    print(f"  {r['name']:<5} {r['natoms']:>2} at np{r['ranks']}{pools}  {r['status']:<9} wall {r['wall_s']:>7.1f} s  "
          f"pw {r['pw_seconds']:>7.1f} s  outside pw {r['outside_pw_s']:>5.1f} s ({100 * (r['outside_pw_share'] or 0):.1f}%)  "
          f"gap {'-' if gap is None else f'{gap:.3f}'} eV{' (metal)' if r['band_gap'].get('is_metal') else ''}  "
          f"{a_txt}  ecut {r['ecutwfc']:.0f}/{r['ecutrho']:.0f} Ry  load {r['loadavg_before'][0]}->{r['loadavg_after'][0]}",
          flush=True)
    print(f"        steps (seconds/pw_seconds): {steps}", flush=True)
    if r["status"] != "completed":
        print(f"        ERROR: {r['reason']} (return codes {r.get('return_codes')})", flush=True)


# ------------------------------------------------------------------------------------------ part 2
def ml_done_doc(campaign: str, key: str, structure, gap: float) -> dict:
    """A candidate as the ML stage leaves it (the fields promotion and the DFT stage read)."""
    return {"_id": f"{campaign}:{key}", "campaign": campaign, "status": st.ML_DONE, "seq": 0,
            "reduced_formula": structure.composition.reduced_formula,
            "elements": sorted({e.symbol for e in structure.composition}), "nsites": len(structure),
            "targets": {"band_gap": {"value": gap, "unit": "eV"}}, "structure_reduced": structure.as_dict(),
            "ml": {"e_above_hull": 0.0, "relax": {"status": "converged"}, "structure_relaxed": structure.as_dict(),
                   "band_gap": {"band_gap": gap}, "hits": {"band_gap": {"hit": True}}}}


def fireworks_run(names: list[str], ranks: int, pdir: str, home: Path, port: int) -> dict:
    from fireworks import LaunchPad

    from fw_screen.orchestration.supervisor import launch_workers
    from fw_screen.store import ResultsStore
    from fw_screen.orchestration.launchpad import prepare_launchpad
    from fw_screen.orchestration.fireworks import dft_workflow

    info = server.start(home, port=port)
    out: dict = {"ranks": ranks, "structures": names, "server_pid": info["pid"], "errors": []}
    try:
        lp_file = home / "launchpad_dftbench.yaml"
        lp_file.write_text(yaml.safe_dump({"host": info["host"], "port": info["port"], "name": "fw_screen_dftbench",
                                           "strm_lvl": "WARNING", "mongoclient_kwargs": {"retryWrites": False}}))
        lp = LaunchPad.from_file(str(lp_file))
        prepare_launchpad(lp)
        store = ResultsStore.from_launchpad(lp)
        # no reference entries are loaded: the reference-phase lookup finds none and the hull is recorded as
        # not computed, so each rocket runs the candidate's chain only (no inline reference calculations)
        spec = load_spec(campaign="dftbench", promotion={"max_per_condition": 10, "max_total": 20})
        store.register_campaign(spec)
        docs = [ml_done_doc("dftbench", n, build(n), EXPECTED_GAP[n]) for n in names]
        store.candidates.insert_many(docs)
        t0 = time.perf_counter()
        # promoted by hand: run_promotion refuses a candidate whose DFT hull has no reference phases, and
        # loading references would make each rocket also compute its reference phases inline
        promoted = [d["_id"] for d in docs]
        store.transition([(cid, st.ML_DONE, st.PROMOTED, {"promotion": {"reason": "bench_dft", "rank": i}})
                          for i, cid in enumerate(promoted)], "promotion")
        wf = dft_workflow(store, promoted, db_file=str(lp_file))
        if wf is None:
            out["errors"].append("nothing promoted")
            return out
        wf = type(wf)([fw for fw in wf.fws if fw.spec["stage"] == "dft"], name=wf.name)
        lp.add_wf(wf)
        out["promote_and_add_wf_s"] = round(time.perf_counter() - t0, 2)
        out["promoted"] = sorted(promoted)
        fworker = home / "fworker_dftbench.yaml"
        fworker.write_text(yaml.safe_dump({"name": "dft-bench", "category": ["dft"], "query": "{}",
                                           "env": {"db_file": str(lp_file), "pseudo_dir": pdir, "pw_cmd": "pw.x",
                                                   "mpi_cmd": mpi_cmd(ranks)}}))
        load0 = loadavg()
        t = time.perf_counter()
        codes = launch_workers(str(lp_file), str(fworker), 1, home / "launches", sleep=1)
        wall = time.perf_counter() - t
        out.update(worker_wall_s=round(wall, 2), worker_exit_codes=codes, loadavg_before=load0, loadavg_after=loadavg())
        if any(codes):
            out["errors"].append(f"worker exit codes {codes}")
        rows = {}
        fw_of = {d["fw_id"]: d["spec"].get("candidate") for d in lp.fireworks.find({}, {"fw_id": 1, "spec.candidate": 1})}
        for la in lp.launches.find({}, {"fw_id": 1, "state": 1, "runtime_secs": 1, "action.stored_data": 1}):
            cid = fw_of.get(la["fw_id"])
            doc = store.candidates.find_one({"_id": cid}) or {}
            d = doc.get("dft") or {}
            sd = (la.get("action") or {}).get("stored_data") or {}
            rows[cid] = {"state": la["state"], "status": doc.get("status"), "runtime_s": float(la.get("runtime_secs") or 0),
                         "seconds": d.get("seconds"), "pw_seconds": d.get("pw_seconds"),
                         "stored_seconds": sd.get("seconds"), "stored_pw_seconds": sd.get("pw_seconds"),
                         "band_gap": (d.get("band_gap") or {}).get("band_gap"), "hull_status": d.get("hull_status"),
                         "hull_reason": d.get("hull_reason"), "reason": d.get("reason"),
                         "steps": [{k: s.get(k) for k in ("calculation", "seconds", "pw_seconds")} for s in d.get("steps") or []]}
            if doc.get("status") != st.DFT_DONE:
                out["errors"].append(f"{cid}: {doc.get('status')} {d.get('reason')}")
        out["rows"] = rows
        pw = sum(r["pw_seconds"] or 0 for r in rows.values())
        chain = sum(r["seconds"] or 0 for r in rows.values())
        rocket = sum(r["runtime_s"] for r in rows.values())
        out["accounting"] = {
            "pw_s": round(pw, 2), "run_chain_s": round(chain, 2), "rocket_s": round(rocket, 2), "worker_wall_s": round(wall, 2),
            "in_run_chain_outside_pw_s": round(chain - pw, 2),
            "in_rocket_outside_run_chain_s": round(rocket - chain, 2),
            "worker_outside_rockets_s": round(wall - rocket, 2),
            "share_outside_pw_of_run_chain": round(1 - pw / chain, 4) if chain else None,
            "share_outside_pw_of_rockets": round(1 - pw / rocket, 4) if rocket else None,
            "share_outside_pw_of_worker_wall": round(1 - pw / wall, 4) if wall else None,
            "per_candidate_outside_pw_of_worker_wall_s": round((wall - pw) / max(1, len(rows)), 2),
        }
        lp.connection.close()
        return out
    finally:
        server.stop(home)


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: Al and Si, 1 rank, FireWorks part on the same two")
    p.add_argument("--structures", default=None, help="comma list of Si, Al, MgO, Li2O, ZnO, TiO2 "
                                                      "(default Si,Al,MgO,Li2O,ZnO; --quick Al,Si)")
    p.add_argument("--ranks", default=None, help="comma list of MPI rank counts (default 1,2; --quick 1)")
    p.add_argument("--multi-rank-structures", default=None,
                   help="comma list: only these get the runs with more than 1 rank (default: all structures)")
    p.add_argument("--npool", type=int, default=None,
                   help="runs with more than 1 rank use k-point pools (pw.x -nk NPOOL) instead of pw.x's default "
                        "plane-wave (R & G) division")
    p.add_argument("--fw-structures", default=None, help="candidates of the FireWorks part (default Si,Al,MgO; "
                                                         "--quick Al,Si); 'none' skips the part")
    p.add_argument("--fw-ranks", type=int, default=1, help="MPI ranks in the FireWorks part (default 1)")
    p.add_argument("--pseudo-dir", default=None, help=f"default {SSSP} if present, else tests/data/pseudo")
    p.add_argument("--workdir", type=Path, default=None, help="keep the pw.x folders here (default: a temporary one)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    names = (args.structures or ("Al,Si" if args.quick else "Si,Al,MgO,Li2O,ZnO")).split(",")
    ranks = [int(x) for x in (args.ranks or ("1" if args.quick else "1,2")).split(",")]
    fw_names = (args.fw_structures or ("Al,Si" if args.quick else "Si,Al,MgO"))
    fw_names = [] if fw_names.lower() == "none" else fw_names.split(",")
    pdir = pseudo_dir(args.pseudo_dir)
    spec = load_spec()
    qe_spec = dict(spec["dft"]["qe"])
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fws-dftbench-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now().astimezone()
    results: dict = {
        "benchmark": "dft", "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(hostname=socket.gethostname()),
        "args": {k: str(v) for k, v in vars(args).items()}, "code": code_version(),
        "pw_version": qe.pw_version("pw.x"), "pseudo_dir": pdir,
        "settings": {k: qe_spec.get(k) for k in ("kppa", "nscf_kppa", "smearing", "degauss", "conv_thr_per_atom",
                                                "forc_conv_thr", "press_conv_thr", "ecutwfc", "ecutrho")},
    }
    print(f"pw.x {results['pw_version']}, pseudopotentials {pdir}; production dft.qe settings {results['settings']}")
    print(f"structures {names}, ranks {ranks}; FireWorks part {fw_names or 'skipped'} at {args.fw_ranks} rank(s); "
          f"load average {results['machine']['loadavg_at_start']}", flush=True)

    direct = []
    results["direct"] = direct
    out = args.json or RESULTS / ("dft_quick.json" if args.quick else "dft.json")
    partial = out.with_name(out.stem + "_partial.json")
    try:
        print("\n== 1. run_chain per candidate (vc-relax -> scf -> nscf -> band gap) ==", flush=True)
        multi = names if not args.multi_rank_structures else args.multi_rank_structures.split(",")
        for name in names:
            for n in ranks:
                if n > 1 and name not in multi:
                    continue
                r = direct_run(name, n, qe_spec, pdir, root, args.npool)
                direct.append(r)
                print_direct_row(r)
                partial.write_text(json.dumps(results, indent=1, default=str))  # survives a later crash
        results["direct"] = direct

        if fw_names:
            print(f"\n== 2. FireWorks: {len(fw_names)} QECandidateTask Fireworks, 1 rlaunch worker, "
                  f"{args.fw_ranks} rank(s) ==", flush=True)
            home = Path(tempfile.mkdtemp(prefix="fws-dftbench-home-", dir="/tmp"))
            os.environ["FW_SCREEN_HOME"] = str(home)
            try:
                fw = fireworks_run(fw_names, args.fw_ranks, pdir, home, args.port or free_port())
            finally:
                shutil.rmtree(home, ignore_errors=True)
            results["fireworks"] = fw
            for cid, r in fw.get("rows", {}).items():
                print(f"  {cid:<16} {r['status']:<9} rocket {r['runtime_s']:>7.1f} s  run_chain {r['seconds'] or 0:>7.1f} s  "
                      f"pw {r['pw_seconds'] or 0:>7.1f} s  gap {r['band_gap']}  hull {r['hull_status']}")
            a = fw.get("accounting")
            if a:
                print(f"  worker wall {a['worker_wall_s']} s (load {fw['loadavg_before'][0]}->{fw['loadavg_after'][0]}); "
                      f"rockets {a['rocket_s']} s; run_chain {a['run_chain_s']} s; pw.x {a['pw_s']} s")
                print(f"  outside pw.x: in run_chain {a['in_run_chain_outside_pw_s']} s, in rockets outside run_chain "
                      f"{a['in_rocket_outside_run_chain_s']} s, in the worker outside rockets {a['worker_outside_rockets_s']} s")
                print(f"  share outside pw.x: of run_chain {pct(a['share_outside_pw_of_run_chain'])}, of rockets "
                      f"{pct(a['share_outside_pw_of_rockets'])}, of worker wall {pct(a['share_outside_pw_of_worker_wall'])} "
                      f"({a['per_candidate_outside_pw_of_worker_wall_s']} s per candidate)")
            for e in fw.get("errors", []):
                print(f"  ERROR: {e}")
    finally:
        results["machine"]["loadavg_at_end"] = loadavg()
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    # ---------------------------------------------------------------- summary
    summary: dict = {"wall_s": {}, "speedup_2_over_1": {}, "outside_pw_share_run_chain": {}}
    by = {(r["name"], r["ranks"]): r for r in direct}
    for name in names:
        for n in ranks:
            r = by.get((name, n))
            if r is None:
                continue
            summary["wall_s"][f"{name} np{n}"] = r["wall_s"]
            summary["outside_pw_share_run_chain"][f"{name} np{n}"] = r["outside_pw_share"]
        if (name, 1) in by and (name, 2) in by:
            summary["speedup_2_over_1"][name] = round(by[(name, 1)]["wall_s"] / by[(name, 2)]["wall_s"], 2)
    ok = [r for r in direct if r["status"] == "completed"]
    if ok:
        summary["outside_pw_run_chain_total"] = {
            f"np{n}": round(1 - sum(r["pw_seconds"] for r in ok if r["ranks"] == n) /
                            sum(r["seconds"] for r in ok if r["ranks"] == n), 4) for n in ranks
            if any(r["ranks"] == n for r in ok)}
    sanity = {}
    for name in names:
        r = by.get((name, 1)) or by.get((name, ranks[0]))
        gap = (r.get("band_gap") or {}).get("band_gap")
        sanity[name] = {"band_gap": gap, "expected_about": EXPECTED_GAP[name]}
    summary["band_gap_sanity"] = sanity
    fw = results.get("fireworks") or {}
    if fw.get("accounting"):
        a = fw["accounting"]
        summary["fireworks_share_outside_pw"] = {"of_run_chain": a["share_outside_pw_of_run_chain"],
                                                 "of_rockets": a["share_outside_pw_of_rockets"],
                                                 "of_worker_wall": a["share_outside_pw_of_worker_wall"]}
        same = [by.get((n, args.fw_ranks)) for n in fw_names]
        if all(same):
            direct_wall = sum(r["wall_s"] for r in same)
            summary["fireworks_over_direct_wall"] = round(a["worker_wall_s"] / direct_wall, 3)
            summary["fireworks_pw_over_direct_pw"] = round(a["pw_s"] / sum(r["pw_seconds"] for r in same), 3)
    results["summary"] = summary
    print("\n== summary ==")
    print(f"  {'structure':<9} {'atoms':>5} " + " ".join(f"{'wall np' + str(n):>10}" for n in ranks) +
          (f" {'x2/1':>6}" if len(summary['speedup_2_over_1']) else "") + f" {'gap eV':>7} {'expect':>6}")
    for name in names:
        r = by[(name, ranks[0])]
        row = f"  {name:<9} {r['natoms']:>5} " + " ".join(f"{by[(name, n)]['wall_s']:>10.1f}" if (name, n) in by else f"{'-':>10}" for n in ranks)
        if summary["speedup_2_over_1"]:
            row += f" {summary['speedup_2_over_1'].get(name, '-'):>6}"
        gap = sanity[name]["band_gap"]
        row += f" {'-' if gap is None else f'{gap:.3f}':>7} {EXPECTED_GAP[name]:>6}"
        print(row)
    for k in ("outside_pw_run_chain_total", "fireworks_share_outside_pw", "fireworks_over_direct_wall",
              "fireworks_pw_over_direct_pw"):
        if k in summary:
            print(f"  {k:<34} {summary[k]}")
    results["total_s"] = round((dt.datetime.now().astimezone() - started).total_seconds(), 1)
    save_results(out, results)
    partial.unlink(missing_ok=True)
    print(f"load average at start {results['machine']['loadavg_at_start']}, at end {results['machine']['loadavg_at_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
