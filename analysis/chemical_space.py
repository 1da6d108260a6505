"""Where in chemical space did the generator put its valid / novel / stable candidates?  (matminer + PCA)

    python analysis/chemical_space.py -c demo [-l .fw-screen/launchpad.yaml] [-o chemical_space.png]
        [--json chemical_space.json] [--max-per-group 1000] [--seed 0] [--fit-on auto|reference|all]
        [--relaxed] [--no-symmetry]

Groups (a candidate can be in several: they nest): reference (the ``references`` collection), valid,
novel (novel or any later status), ML-stable (``ml.stable``), DFT-confirmed (``dft.stable``, status
dft_done).  Each is a seeded random sample of at most --max-per-group structures; only the sampled
documents' structures are fetched.  The database is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from fw_screen.reporting.chemical_space import load_groups  # noqa: F401 -- the data access lives in fw_screen


def main(argv=None) -> int:
    from fw_screen.reporting.chemical_space import chemical_space, groups_summary_table, plot_chemical_space
    from fw_screen.cli import CLIError, resolve_launchpad
    from fw_screen.store import ResultsStore

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--campaign", required=True)
    p.add_argument("-l", "--launchpad", help="LaunchPad YAML (default: $FW_SCREEN_LAUNCHPAD, else the embedded "
                                              "server's)")
    p.add_argument("-o", "--output", default=None, help="PNG to write (default chemical_space_CAMPAIGN.png)")
    p.add_argument("--json", dest="json_out", help="write the result (points, loadings, summary) as JSON")
    p.add_argument("--max-per-group", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-on", choices=("auto", "reference", "all"), default="auto",
                   help="points the PCA is fit on (auto: reference if it has >= 3 structures)")
    p.add_argument("--relaxed", action="store_true",
                   help="ML-stable / DFT-confirmed groups: use the relaxed structures")
    p.add_argument("--no-symmetry", action="store_true", help="skip the spglib features (faster)")
    args = p.parse_args(argv)

    try:
        path = resolve_launchpad(args.launchpad)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = ResultsStore.from_file(path)  # plain connection: nothing is written (no LaunchPad reset)

    t0 = time.perf_counter()
    groups, totals = load_groups(store, args.campaign, args.max_per_group, args.seed, relaxed=args.relaxed)
    t1 = time.perf_counter()
    if not any(totals[g] for g in totals if g != "reference"):
        print(f"campaign {args.campaign!r} has no valid candidates", file=sys.stderr)
    result = chemical_space(groups, max_per_group=args.max_per_group, seed=args.seed,
                            symmetry=not args.no_symmetry, fit_on=args.fit_on)
    t2 = time.perf_counter()
    result["campaign"] = args.campaign
    result["population"] = totals
    result["structures"] = "relaxed (ML-stable, DFT-confirmed)" if args.relaxed else "as generated"
    result["timing_s"] = {"load": round(t1 - t0, 2), "featurise_and_pca": round(t2 - t1, 2)}

    fig = plot_chemical_space(result, title=f"{args.campaign}: where the generator put its candidates "
                                            f"(PCA of matminer features, fit on {result['fit_on']})")
    out = args.output or f"chemical_space_{args.campaign}.png"
    fig.savefig(out, dpi=150)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(result, fh, allow_nan=False)

    print(groups_summary_table(result))
    print("\nsampled / total: " + ", ".join(f"{g} {result['n_input'][g]}/{totals[g]}" for g in totals))
    ev = ", ".join(f"{100 * v:.1f}%" for v in result["explained_variance"] if v is not None)
    print(f"PCA fit on {result['fit_on']}; explained variance {ev}")
    for pc, rows in result["loadings"].items():
        print(f"  {pc}: " + ", ".join(f"{r['feature']} ({r['loading']:+.2f})" for r in rows[:4]))
    print(f"load {t1 - t0:.1f} s, featurise + PCA {t2 - t1:.1f} s; wrote {out}"
          + (f" and {args.json_out}" if args.json_out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
