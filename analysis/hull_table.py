"""The hull-distance table of a campaign, filtered and sorted by MongoDB.

    python analysis/hull_table.py demo --stage ml --sort ml_e_above_hull --format markdown --limit 20 [-l LAUNCHPAD]

The same as `fw-screen table`; importable too (`from analysis.hull_table import hull_table`), the functions
living in :mod:`fw_screen.reporting.tables`.
"""

from __future__ import annotations

import sys

from fw_screen.reporting.tables import hull_table, format_table, table_filter  # noqa: F401 -- re-exported for notebooks and scripts


def main(argv: list[str] | None = None) -> int:
    from fw_screen.cli import main as cli_main

    return cli_main(["table", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
