"""Where in chemical space did the generator put its valid / novel / stable candidates?  (matminer + PCA)

    python analysis/chemical_space.py -c demo [-l .fw-screen/launchpad.yaml] [-o chemical_space.png]
        [--json chemical_space.json] [--max-per-group 1000] [--seed 0] [--fit-on auto|reference|all]
        [--relaxed] [--no-symmetry]

Groups (a candidate can be in several: they nest): reference (the ``references`` collection), valid,
novel (novel or any later status), ML-stable (``ml.stable``), DFT-confirmed (``dft.stable``, status
dft_done).  Each is a seeded random sample of at most --max-per-group structures; only the sampled
documents' structures are fetched.  The database is only read.

The same as `fw-screen chemical-space CAMPAIGN`; importable too (`from analysis.chemical_space import
load_groups`), the functions living in :mod:`fw_screen.reporting.chemical_space`.
"""

from __future__ import annotations

import argparse
import sys

from fw_screen.reporting.chemical_space import (  # noqa: F401 -- re-exported for notebooks and scripts
    campaign_chemical_space,
    chemical_space,
    load_groups,
    plot_chemical_space,
    write_chemical_space,
)


def main(argv: list[str] | None = None) -> int:
    from fw_screen.cli import main as cli_main

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="other options: those of `fw-screen chemical-space` (-l, -o, --json, "
                                       "--max-per-group, --seed, --fit-on, --relaxed, --no-symmetry)")
    p.add_argument("-c", "--campaign", required=True)
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return cli_main(["chemical-space", args.campaign, *rest])


if __name__ == "__main__":
    raise SystemExit(main())
