"""Funnel yields (V, VU, VUN, VSUN, band-gap target hits) overall and per generation condition.

    python analysis/yields.py demo [--threshold 0.1 --threshold 0] [--format csv] [-l LAUNCHPAD]

The same as `fw-screen yields`; importable too (`from analysis.yields import funnel_yields`), the functions
living in :mod:`fw_screen.reporting.tables`.
"""

from __future__ import annotations

import sys

from fw_screen.reporting.tables import funnel_yields, yield_rows  # noqa: F401 -- re-exported for notebooks and scripts


def main(argv: list[str] | None = None) -> int:
    from fw_screen.cli import main as cli_main

    return cli_main(["yields", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
