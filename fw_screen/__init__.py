"""fw-screen: screen generated crystal structures down a funnel with FireWorks and MongoDB.

One folder per layer, each importing only the ones before it (tests/test_layout.py): :mod:`~fw_screen.science`
(pure verdicts, one module per funnel stage), :mod:`~fw_screen.dft` (the DFT result schema, hull, Quantum
ESPRESSO, VASP), :mod:`~fw_screen.store` (MongoDB), :mod:`~fw_screen.server` (the embedded database),
:mod:`~fw_screen.stages` (one runner per stage), :mod:`~fw_screen.reporting` (tables, metrics, the report),
:mod:`~fw_screen.orchestration` (FireWorks), and :mod:`~fw_screen.cli` (the command line).
"""

__version__ = "0.1.0"
