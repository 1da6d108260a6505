"""fw-screen: screen generated crystal structures down a funnel with FireWorks and MongoDB.

Stages, one module each: :mod:`~fw_screen.ingest`, :mod:`~fw_screen.validity`,
:mod:`~fw_screen.uniqueness` (with novelty).  :mod:`~fw_screen.campaign` runs a stage on a slice of a
campaign, :mod:`~fw_screen.db` owns MongoDB, :mod:`~fw_screen.firetasks` and :mod:`~fw_screen.workflows`
are the FireWorks side, :mod:`~fw_screen.cli` the command line.
"""

__version__ = "0.1.0"
