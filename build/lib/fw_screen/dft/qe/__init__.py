"""Quantum ESPRESSO (pw.x) for the DFT stage: pure science, no database, no FireWorks.

:mod:`.settings` (defaults, pseudopotentials, the comparability protocol), :mod:`.io` (pw.x input and output),
:mod:`.jobs` (custodian Job, ErrorHandlers, Validator), :mod:`.chain` (the steps of one structure's run).
"""

from fw_screen.dft.qe.settings import (  # noqa: F401
    RY_TO_EV,
    BOHR_TO_ANG,
    DEFAULT_PW_CMD,
    DEFAULT_MPI_CMD,
    DEFAULT_PSEUDO_DIR,
    ENV_VARS,
    MAGNETIC_ELEMENTS,
    STARTING_MAGNETIZATION,
    FUNCTIONAL,
    WALLTIME_MARGIN_S,
    MIN_STEP_S,
    QEError,
    PseudoError,
    resolve_settings,
    file_md5,
    find_pseudos,
    pw_version,
    protocol,
)
from fw_screen.dft.qe.io import (  # noqa: F401
    kpoint_grid,
    parse_output,
    band_gap,
)
from fw_screen.dft.qe.chain import (  # noqa: F401
    run_chain,
)
