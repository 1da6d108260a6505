"""Which optional extra of fw-screen a piece of work needs, and a clear error when it is not installed.

The base install (``pip install fw-screen``) runs the cheap funnel (ingest, validity, uniqueness/novelty),
FireWorks and the LaunchPad, the embedded database server, the store and the analysis tables (``status``,
``table``, ``yields``, ``metrics``, ``compare``).  The rest comes with an extra::

    pip install 'fw-screen[ml]'      # the ML stage: torch, ase, CHGNet, SevenNet, matgl (relaxation, band gaps)
    pip install 'fw-screen[dft]'     # the Quantum ESPRESSO stage and DFT-lite (custodian runs pw.x)
    pip install 'fw-screen[vasp]'    # the VASP stage (atomate 1.1.0, custodian)
    pip install 'fw-screen[report]'  # the HTML report and the chemical-space map (matplotlib, matminer, scikit-learn)
    pip install 'fw-screen[all]'     # all of them (`make demo`, `make test`)

A FireTask that needs an extra calls :func:`require` first, before it touches the results store: on a worker
without the extra, its Firework fizzles with the pip command in the launch's ``_exception`` and no candidate's
data is changed.
"""

from __future__ import annotations

import importlib.util

#: extra -> (what needs it, the top-level modules it provides that fw-screen imports)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ml": ("the ML stage", ("torch", "ase", "chgnet", "sevenn", "matgl")),
    "dft": ("the Quantum ESPRESSO stage", ("custodian",)),
    "vasp": ("the VASP stage", ("atomate", "custodian")),
    "report": ("the HTML report", ("matplotlib", "matminer", "sklearn")),
}
EXTRAS["all"] = ("this", tuple(dict.fromkeys(m for _, mods in EXTRAS.values() for m in mods)))


class MissingExtraError(ImportError):
    """A module of an optional extra is not installed; the message says which extra and the pip command."""


def installed(module: str) -> bool:
    """Whether ``module`` (a top-level name) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder refusing the name; a module in sys.modules without a spec
        return False


def missing(extra: str, *modules: str) -> list[str]:
    """The modules of ``extra`` (or just ``modules``, when given) that are not installed."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r} (one of {', '.join(EXTRAS)})")
    return [m for m in (modules or EXTRAS[extra][1]) if not installed(m)]


def require(extra: str, *modules: str, what: str | None = None) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` and its pip command when one of its modules (or of
    ``modules``, when given) is missing; return quietly otherwise."""
    absent = missing(extra, *modules)
    if absent:
        raise MissingExtraError(
            f"{what or EXTRAS[extra][0]} needs fw-screen's [{extra}] extra ({', '.join(absent)} not installed): "
            f"pip install 'fw-screen[{extra}]'", name=absent[0])
