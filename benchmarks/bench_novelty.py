#!/usr/bin/env python
"""Novelty against >= 10,000 reference structures: fw-screen's grouped matching vs the naive all-pairs loop.

The reference set (``references`` collection of a fresh embedded SecantusDB database):

* the Materials Project structures in /work/shared/data/reference/mp (Li-Co-Ni-O 775, Na-Fe-P-O 557; the
  elemental-reference file holds ComputedEntries without structures and contributes none);
* the valid CrystaLLM-pi generations (the 8,000 CIFs run through fw-screen's validity stage), less the
  held-out queries;
* derived structures, only as many as needed to reach ``--min-references``: ion-substituted copies of the
  MP structures (Li->Na, Co->Fe, Ni->Mn, O->S, Na->K, Fe->Mn, P->As; single substitutions first, then
  pairs, ...), made with ``Structure.replace_species``.  They are not real materials.

The queries: ``--queries`` valid generated structures (seeded); a ``--planted`` fraction of them is also in
the reference set and must be found (``known``), the rest is held out.

Timed:

* fw-screen's path: each query reduced once (``uniqueness.reduce_structure``, done by the validity stage
  in the product), the references of the queries' formulas fetched through the ``reduced_formula`` index
  and reduced once (``novelty._reference_items``, which caches the reductions in the database: "cold"
  the first time, "warm" after), then ``uniqueness.find_reference`` within the match key;
* the naive way: for a seeded subsample of ``--naive-queries`` queries, ``StructureMatcher().fit(query, ref)``
  against every reference in memory (unreduced structures, no grouping, stopping at the first match);
  its per-query cost is extrapolated to all the queries.

The two must give the same verdict (known / novel) on the subsample.

    .venv/bin/python benchmarks/bench_novelty.py                  # full run, ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_novelty.py --generated-limit 1000 --validity parse --min-references 3000 \\
        --queries 60 --naive-queries 6                            # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pymatgen.analysis.structure_matcher import StructureMatcher  # noqa: E402
from pymatgen.core import Structure  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import code_version, free_port, loadavg, machine_info, save_results  # noqa: E402

from fw_screen import stages as campaign
from fw_screen.stages import novelty
from fw_screen.server import embedded as server  # noqa: E402
from fw_screen.science import references as refs  # noqa: E402
from fw_screen.science import uniqueness as uq  # noqa: E402
from fw_screen.store import ResultsStore  # noqa: E402
from fw_screen.science.ingest import iter_candidates  # noqa: E402
from fw_screen.spec import load_spec  # noqa: E402

GENERATED = REPO / "examples" / "crystallm_pi_generated_8k.parquet"
MP_DIR = REPO.parent / "shared" / "data" / "reference" / "mp"
RESULTS = Path(__file__).resolve().parent / "results"
SUBSTITUTIONS = [("Li", "Na"), ("Co", "Fe"), ("Ni", "Mn"), ("O", "S"), ("Na", "K"), ("Fe", "Mn"), ("P", "As")]


# ------------------------------------------------------------------------------- generated structures
_SPEC: dict = {}


def _init(spec: dict) -> None:
    _SPEC.update(spec)
    warnings.simplefilter("ignore")


def _check(doc: dict):
    """(id, structure dict) of a valid generation, else (id, None); the id is unique per input row
    (each CrystaLLM-pi ``Material ID`` appears twice in the 8,000, once per condition vector)."""
    src = doc["source"]
    mid = f"{src.get('material_id', 'gen')}#row{src.get('row')}"
    if _SPEC["mode"] == "parse":
        from fw_screen.science.validity import parse_structure

        try:
            s = parse_structure(doc.get("cif_processed") or "")
        except Exception:
            return mid, None
        return mid, (s.as_dict() if len(s) and s.is_ordered else None)
    fields = campaign.validity_fields(doc, _SPEC["spec"])
    return mid, (fields["structure"] if fields["validity"]["valid"] else None)


def valid_generated(path: Path, limit: int | None, mode: str, procs: int) -> tuple[list[tuple[str, Structure]], int]:
    spec = load_spec(campaign="novelty")
    docs = list(iter_candidates(path, "novelty", spec))[:limit]
    with mp.get_context("fork").Pool(procs, initializer=_init, initargs=({"spec": spec, "mode": mode},)) as pool:
        out = pool.map(_check, docs, chunksize=25)
    return [(mid, Structure.from_dict(s)) for mid, s in out if s is not None], len(docs)


# ------------------------------------------------------------------------------------ reference set
def derived_structures(mp_docs: list[dict], needed: int) -> list[dict]:
    """Ion-substituted copies of the MP structures: all single substitutions first, then pairs, ..."""
    out: list[dict] = []
    structures = [(d["ref_id"], Structure.from_dict(d["structure"])) for d in mp_docs]
    for size in range(1, len(SUBSTITUTIONS) + 1):
        for combo in itertools.combinations(SUBSTITUTIONS, size):
            olds = [o for o, _ in combo]
            news = [n for _, n in combo]
            if len(set(olds) | set(news)) < 2 * size:  # chained (Na->K with Li->Na) or clashing maps
                continue
            for ref_id, s in structures:
                if len(out) >= needed:
                    return out
                symbols = {el.symbol for el in s.composition.elements}
                if not set(olds) <= symbols or set(news) & symbols:
                    continue
                sub = s.copy()
                sub.replace_species(dict(combo))
                tag = "+".join(f"{o}-{n}" for o, n in combo)
                out.append(refs.reference_document(sub, f"{ref_id}:{tag}", "derived", {"parent": ref_id}))
    return out


# ---------------------------------------------------------------------------------------- matching
def grouped(store: ResultsStore, queries: list[tuple[str, Structure]], matcher) -> dict:
    """fw-screen's path; returns verdicts {query id: reference id or None} and timings."""
    t = time.perf_counter()
    items, keys = [], []
    for qid, s in queries:
        reduced = uq.reduce_structure(s)
        items.append(uq.Item(qid, reduced))
        keys.append(uq.match_key(reduced))
    reduce_s = time.perf_counter() - t
    formulas = {k.split("|")[0] for k in keys}
    runs = {}
    for label in ("cold", "warm"):
        t = time.perf_counter()
        ref_items = novelty._reference_items(store, formulas)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        verdicts = {item.id: uq.find_reference(item, ref_items.get(key, []), matcher) for item, key in zip(items, keys)}
        match_s = time.perf_counter() - t
        candidates = sum(len(ref_items.get(k, [])) for k in keys)
        runs[label] = {"load_reduce_refs_s": round(load_s, 3), "match_s": round(match_s, 3),
                       "refs_fetched": sum(len(v) for v in ref_items.values()),
                       "refs_in_query_keys_total": candidates, "verdicts": verdicts}
    return {"reduce_queries_s": round(reduce_s, 3), "formulas": len(formulas), **runs}


def naive(queries: list[tuple[str, Structure]], references: list[tuple[str, Structure]], matcher) -> dict:
    verdicts, per_query, fits = {}, [], 0
    for qid, s in queries:
        t = time.perf_counter()
        found = None
        for rid, ref in references:
            fits += 1
            if matcher.fit(s, ref):
                found = rid
                break
        verdicts[qid] = found
        per_query.append(time.perf_counter() - t)
    return {"verdicts": verdicts, "per_query_s": per_query, "fits": fits}


# -------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generated", type=Path, default=GENERATED)
    p.add_argument("--generated-limit", type=int, default=None, help="use only the first N generations")
    p.add_argument("--validity", choices=["full", "parse"], default="full",
                   help="full: fw-screen's validity stage (default); parse: parses and is ordered (fast)")
    p.add_argument("--procs", type=int, default=2, help="processes for the validity pass")
    p.add_argument("--mp-dir", type=Path, default=MP_DIR)
    p.add_argument("--min-references", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--planted", type=float, default=0.5, help="fraction of the queries also in the reference set")
    p.add_argument("--naive-queries", type=int, default=40, help="queries run through the naive loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--home", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    started = dt.datetime.now().astimezone()
    res: dict = {"benchmark": "novelty", "date": started.isoformat(timespec="seconds"),
                 "machine": machine_info(),
                 "args": {k: str(v) for k, v in vars(args).items()}, "code": code_version(), "phases_s": {}}
    ph = res["phases_s"]
    rng = random.Random(args.seed)
    warnings.simplefilter("ignore")

    # generated structures
    t = time.perf_counter()
    generated, n_gen = valid_generated(args.generated, args.generated_limit, args.validity, args.procs)
    ph["validity_of_generated"] = round(time.perf_counter() - t, 1)
    print(f"generated: {len(generated)} valid of {n_gen} ({args.validity} validity, {args.procs} processes, "
          f"{ph['validity_of_generated']} s)")
    n_q = min(args.queries, len(generated))
    query_idx = rng.sample(range(len(generated)), n_q)
    n_planted = round(n_q * args.planted)
    planted = set(query_idx[:n_planted])
    held_out = set(query_idx[n_planted:])
    queries = [generated[i] for i in sorted(query_idx)]
    planted_ids = {generated[i][0] for i in planted}

    # reference documents
    t = time.perf_counter()
    mp_docs, mp_counts = [], {}
    for f in sorted(args.mp_dir.glob("*.json.gz")):
        found = refs.load(f, "mp")
        docs, skipped = found["structures"], found["skipped"]
        mp_docs += docs
        mp_counts[f.name] = {"structures": len(docs), "skipped_without_structure": skipped}
    unique_mp = {d["_id"]: d for d in mp_docs}  # entries of shared subsystems (O2, ...) appear in both files
    mp_counts["same_entry_in_two_files"] = len(mp_docs) - len(unique_mp)
    mp_docs = list(unique_mp.values())
    gen_docs = [refs.reference_document(s, mid, "generated") for i, (mid, s) in enumerate(generated)
                if i not in held_out]
    derived = derived_structures(mp_docs, max(0, args.min_references - len(mp_docs) - len(gen_docs)))
    all_docs = mp_docs + gen_docs + derived
    ph["build_reference_docs"] = round(time.perf_counter() - t, 1)
    res["references"] = {"mp": mp_counts, "mp_total": len(mp_docs), "generated": len(gen_docs),
                         "derived_substitutions": len(derived), "total": len(all_docs),
                         "distinct_formulas": len({d["reduced_formula"] for d in all_docs})}
    res["queries"] = {"total": n_q, "planted_in_references": n_planted, "held_out": n_q - n_planted}
    print(f"references: {len(mp_docs)} MP + {len(gen_docs)} generated + {len(derived)} derived = {len(all_docs)} "
          f"({res['references']['distinct_formulas']} formulas); queries {n_q} ({n_planted} planted)")

    home = args.home or Path(tempfile.mkdtemp(prefix="fws-novelty-", dir="/tmp"))
    os.environ["FW_SCREEN_HOME"] = str(home)
    info = server.start(home, port=args.port or free_port())
    try:
        store = ResultsStore.from_file(info["launchpad"])
        t = time.perf_counter()
        store.add_references(all_docs)
        store.ensure_indexes()
        ph["load_references_into_db"] = round(time.perf_counter() - t, 1)
        res["references"]["in_database"] = store.reference_count()
        if res["references"]["in_database"] != len(all_docs):
            raise SystemExit(f"reference ids collide: {len(all_docs)} documents, "
                             f"{res['references']['in_database']} in the database")
        print(f"loaded {res['references']['in_database']} references into SecantusDB in "
              f"{ph['load_references_into_db']} s")

        spec = load_spec(campaign="novelty")
        matcher = uq.make_matcher(spec["uniqueness"])

        g = grouped(store, queries, matcher)
        cold_total = g["reduce_queries_s"] + g["cold"]["load_reduce_refs_s"] + g["cold"]["match_s"]
        warm_total = g["reduce_queries_s"] + g["warm"]["load_reduce_refs_s"] + g["warm"]["match_s"]
        verdicts = g["cold"]["verdicts"]
        assert verdicts == g["warm"]["verdicts"]
        found_planted = sum(1 for q in planted_ids if verdicts[q] is not None)
        known = sum(v is not None for v in verdicts.values())
        by_set: dict[str, int] = {}
        for v in verdicts.values():
            if v is not None:
                by_set[v.split(":")[0]] = by_set.get(v.split(":")[0], 0) + 1
        res["grouped"] = {
            "reduce_queries_s": g["reduce_queries_s"], "formulas": g["formulas"],
            "cold": {k: v for k, v in g["cold"].items() if k != "verdicts"},
            "warm": {k: v for k, v in g["warm"].items() if k != "verdicts"},
            "total_cold_s": round(cold_total, 3), "total_warm_s": round(warm_total, 3),
            "per_query_cold_ms": round(1000 * cold_total / n_q, 2),
            "per_query_warm_ms": round(1000 * warm_total / n_q, 2),
            "known": known, "novel": n_q - known, "matched_by_set": by_set,
            "planted_found": found_planted, "planted": n_planted,
            "held_out_known": sum(1 for q, v in verdicts.items() if v is not None and q not in planted_ids),
        }
        print(f"\n== fw-screen grouped matching, {n_q} queries vs {len(all_docs)} references ==")
        print(f"  reduce queries              {g['reduce_queries_s']:>8.2f} s  (the validity stage does this)")
        print(f"  fetch+reduce refs (cold)    {g['cold']['load_reduce_refs_s']:>8.2f} s  "
              f"({g['cold']['refs_fetched']} refs of {g['formulas']} formulas)")
        print(f"  match (cold)                {g['cold']['match_s']:>8.2f} s")
        print(f"  fetch refs (warm, cached)   {g['warm']['load_reduce_refs_s']:>8.2f} s")
        print(f"  match (warm)                {g['warm']['match_s']:>8.2f} s")
        print(f"  total cold {cold_total:.2f} s = {1000 * cold_total / n_q:.1f} ms/query; "
              f"warm {warm_total:.2f} s = {1000 * warm_total / n_q:.1f} ms/query")
        print(f"  verdicts: {known} known ({by_set}), {n_q - known} novel; planted found {found_planted}/{n_planted}")

        # naive loop on a subsample, balanced like the full query set
        n_naive = min(args.naive_queries, n_q)
        k_planted = round(n_naive * args.planted)
        pl = [q for q in queries if q[0] in planted_ids]
        ho = [q for q in queries if q[0] not in planted_ids]
        sub = rng.sample(pl, min(k_planted, len(pl))) + rng.sample(ho, min(n_naive - k_planted, len(ho)))
        ref_structs = [(d["_id"], Structure.from_dict(d["structure"])) for d in all_docs]
        t = time.perf_counter()
        nv = naive(sub, ref_structs, StructureMatcher(**{k: spec["uniqueness"][k] for k in ("ltol", "stol", "angle_tol")}))
        naive_s = time.perf_counter() - t
        per_q = naive_s / len(sub)
        agree = sum((nv["verdicts"][q] is None) == (verdicts[q] is None) for q, _ in sub)
        same_ref = sum(nv["verdicts"][q] == verdicts[q] for q, _ in sub)
        # the grouped path on the same subsample alone (fresh store state: warm references)
        res["naive"] = {
            "queries": len(sub), "planted": min(k_planted, len(pl)), "seconds": round(naive_s, 2),
            "per_query_s": round(per_q, 3), "per_query_min_max_s": [round(min(nv["per_query_s"]), 3),
                                                                   round(max(nv["per_query_s"]), 3)],
            "fits": nv["fits"], "fit_us": round(1e6 * naive_s / nv["fits"], 1),
            "extrapolated_all_queries_s": round(per_q * n_q, 1),
            "same_verdict": agree, "same_reference": same_ref,
            "disagreements": [{"query": q, "naive": nv["verdicts"][q], "grouped": verdicts[q]}
                              for q, _ in sub if (nv["verdicts"][q] is None) != (verdicts[q] is None)],
        }
        res["speedup"] = {"naive_over_grouped_cold": round(per_q * n_q / cold_total, 1),
                          "naive_over_grouped_warm": round(per_q * n_q / warm_total, 1)}
        print(f"\n== naive all-pairs StructureMatcher.fit, {len(sub)} queries (subsample) ==")
        print(f"  {naive_s:.1f} s = {per_q:.2f} s/query ({nv['fits']} fits, {res['naive']['fit_us']} us/fit); "
              f"extrapolated to {n_q} queries: {per_q * n_q:.0f} s")
        print(f"  same verdict as grouped: {agree}/{len(sub)} (same reference id {same_ref})")
        print(f"\n  speed-up naive / fw-screen: x{res['speedup']['naive_over_grouped_cold']} (cold), "
              f"x{res['speedup']['naive_over_grouped_warm']} (warm, reductions cached)")
        if agree != len(sub):
            print(f"  DISAGREEMENTS: {res['naive']['disagreements']}")
    finally:
        res["machine"]["loadavg_at_end"] = loadavg()
        res["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        res["total_s"] = round((dt.datetime.now().astimezone() - started).total_seconds(), 1)
        server.stop(home)
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
        out = args.json or RESULTS / "novelty.json"
        save_results(out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
