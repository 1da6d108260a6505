"""The campaign report: one self-contained HTML file (funnel, yields, e_hull and band-gap plots per condition,
ML vs DFT, DFT phase diagrams, chemical space, top candidates with their CIFs) that opens offline.

    python analysis/report.py -c demo [-l LAUNCHPAD] [-o report_demo.html] [--top 20] [--no-chemical-space]

The same as `fw-screen report CAMPAIGN`; importable too (`from analysis.report import build_report`), the
function living in :mod:`fw_screen.reporting.report`.
"""

from __future__ import annotations

import argparse
import sys

from fw_screen.reporting.report import build_report, format_summary  # noqa: F401 -- re-exported for notebooks and scripts


def main(argv: list[str] | None = None) -> int:
    from fw_screen.cli import main as cli_main

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="other options: those of `fw-screen report` (-l, -o, --top, --no-chemical-space)")
    p.add_argument("-c", "--campaign", required=True)
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return cli_main(["report", args.campaign, *rest])


if __name__ == "__main__":
    raise SystemExit(main())
