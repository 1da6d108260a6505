"""fw-screen: screen generated crystal structures down a funnel with FireWorks and MongoDB.

Stages, one module each: :mod:`~fw_screen.science.ingest`, :mod:`~fw_screen.science.validity`,
:mod:`~fw_screen.science.uniqueness` (with novelty).  :mod:`~fw_screen.stages` runs a stage on a slice of a
campaign, :mod:`~fw_screen.store` owns MongoDB, :mod:`~fw_screen.orchestration.fireworks` and :mod:`~fw_screen.orchestration.fireworks`
are the FireWorks side, :mod:`~fw_screen.cli` the command line.
"""

__version__ = "0.1.0"
