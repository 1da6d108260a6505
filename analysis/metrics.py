"""The papers' generation metrics of a campaign (V..VSUN, S.U.N./MSUN after relaxation, RMSD, DiffCSP validity
and Wasserstein distances, band-gap MAE against the target, F1/DAF against DFT), each with its definition.

    python analysis/metrics.py demo [--format csv|markdown|json] [-l LAUNCHPAD]

The same as `fw-screen metrics`; importable too (`from analysis.metrics import campaign_metrics`), the
functions living in :mod:`fw_screen.reporting.tables` and the definitions in :mod:`fw_screen.science.metrics`.
"""

from __future__ import annotations

import sys

from fw_screen.reporting.tables import campaign_metrics, format_metrics  # noqa: F401 -- re-exported for notebooks and scripts


def main(argv: list[str] | None = None) -> int:
    from fw_screen.cli import main as cli_main

    return cli_main(["metrics", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
