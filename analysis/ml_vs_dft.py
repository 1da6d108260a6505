"""How far to trust the ML stage.

     ML vs DFT e_above_hull and band gap on the candidates with DFT results:python analysis/ml_vs_dft.py demo [--json] [-l LAUNCHPAD]

The same as `fw-screen compare`; importable too (`from analysis.ml_vs_dft import ml_vs_dft`), the functions
living in :mod:`fw_screen.reporting.tables`.
"""

from __future__ import annotations

import sys

from fw_screen.reporting.tables import ml_vs_dft, agreement  # noqa: F401 -- re-exported for notebooks and scripts


def main(argv: list[str] | None = None) -> int:
    from fw_screen.cli import main as cli_main

    return cli_main(["compare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
