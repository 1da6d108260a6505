"""Quantum ESPRESSO settings and the comparability protocol: defaults, environment, pseudopotentials, cutoffs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from fw_screen.spec import default_spec

RY_TO_EV = 13.605693122994
BOHR_TO_ANG = 0.529177210903

DEFAULT_PW_CMD = "pw.x"
DEFAULT_MPI_CMD = ""
DEFAULT_PSEUDO_DIR = "/usr/share/espresso/pseudo"
ENV_VARS = {"pw_cmd": "FW_SCREEN_PW_CMD", "mpi_cmd": "FW_SCREEN_MPI_CMD", "pseudo_dir": "ESPRESSO_PSEUDO"}

#: Species that get a spin-polarised (ferromagnetic, starting_magnetization 0.5) calculation in a crystal:
#: the open-shell 3d metals Ti-Cu and the lanthanides Ce-Yb.  Molecules are always spin-polarised.
MAGNETIC_ELEMENTS = frozenset({"Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu",
                               "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb"})
STARTING_MAGNETIZATION = 0.5
FUNCTIONAL = "PBE"


# Seconds kept back from a wall-time budget: pw.x's max_seconds is set this much earlier so that it can
# stop and write its output, and no step is started with less than MIN_STEP_S left.
WALLTIME_MARGIN_S = 3.0
MIN_STEP_S = 2.0


class QEError(RuntimeError):
    """A Quantum ESPRESSO setup or run problem."""


class PseudoError(QEError):
    """No usable pseudopotential for some element(s); the message names them and the folder searched."""


# --------------------------------------------------------------------------------------------- settings
@functools.lru_cache(maxsize=1)
def _default_qe() -> dict:
    return default_spec().dft.qe.to_dict()


def defaults() -> dict:
    """The default ``dft.qe`` settings, as plain data (from the default spec, built once per process; a new
    dict each call, its values are scalars)."""
    return dict(_default_qe())


def resolve_settings(qe_spec: dict | None = None, env: dict | None = None) -> dict:
    """Full settings from the spec's ``dft.qe`` section, the FWorker env and the environment.

    ``pw_cmd`` / ``mpi_cmd`` / ``pseudo_dir``: the spec value, else the FWorker ``env`` key of the same name,
    else $FW_SCREEN_PW_CMD / $FW_SCREEN_MPI_CMD / $ESPRESSO_PSEUDO, else ``pw.x``, ``""`` (serial) and
    Debian's /usr/share/espresso/pseudo.  Every other key: the spec value unless null, else the default
    spec's (``fw_screen/default_spec.yaml``, the one set of defaults).
    """
    qe_spec = dict(qe_spec or {})
    env = dict(env or {})
    out = defaults()
    out.update({k: v for k, v in qe_spec.items() if v is not None})
    fallback = {"pw_cmd": DEFAULT_PW_CMD, "mpi_cmd": DEFAULT_MPI_CMD, "pseudo_dir": DEFAULT_PSEUDO_DIR}
    for key, default in fallback.items():
        for value in (qe_spec.get(key), env.get(key), os.environ.get(ENV_VARS[key])):
            if value is not None and not (isinstance(value, str) and value.startswith(">>")):
                out[key] = value
                break
        else:
            out[key] = default
    out["pseudo_dir"] = str(Path(out["pseudo_dir"]).expanduser())
    return out


def full_settings(settings: dict | None) -> dict:
    """Settings with every key present (a partial dict is resolved the same way as the spec section)."""
    settings = dict(settings or {})
    if all(k in settings and settings[k] is not None for k in ("pw_cmd", "pseudo_dir")) and \
            settings.get("mpi_cmd") is not None:
        return {**defaults(), **{k: v for k, v in settings.items() if v is not None}}
    return resolve_settings(settings)


# ------------------------------------------------------------------------------------- pseudopotentials
@functools.lru_cache(maxsize=512)
def _md5(path: str, size: int, mtime: float) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path) -> str:
    st = os.stat(path)
    return _md5(str(path), st.st_size, st.st_mtime)


def _pseudo_tables(folder: Path) -> list[tuple[str, dict]]:
    """SSSP-style json tables in the folder, as {El: {"filename", "md5", "cutoff_wfc_ry", "cutoff_rho_ry"}}.

    Two layouts are read: the official SSSP file (``SSSP_1.3.0_PBE_efficiency.json``: flat
    ``{El: {"filename", "md5", "cutoff_wfc", "cutoff_rho", "pseudopotential"}}``) and a wrapped one
    (``{"elements": {El: {..., "cutoff_wfc_ry", "cutoff_rho_ry"}}, "library": ...}``)."""
    from pymatgen.core.periodic_table import Element

    tables = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        elements = data.get("elements") if isinstance(data.get("elements"), dict) else {
            k: v for k, v in data.items() if Element.is_valid_symbol(k)}
        if not elements or not all(isinstance(v, dict) and "filename" in v for v in elements.values()):
            continue
        table = {}
        for el, row in elements.items():
            row = dict(row)
            for key in ("cutoff_wfc", "cutoff_rho"):
                if f"{key}_ry" not in row and key in row:
                    row[f"{key}_ry"] = row[key]  # the official file's cutoffs are in Ry too
            table[el] = row
        tables.append((path.name, table))
    # an SSSP table first, then by name
    tables.sort(key=lambda t: ("sssp" not in t[0].lower(), t[0]))
    return tables


def find_pseudos(elements, pseudo_dir) -> dict:
    """``{el: {"filename", "md5", "ecutwfc", "ecutrho", "source"}}`` for every element.

    An SSSP-style json in the folder gives the file and its recommended cutoffs (Ry) - the file must be
    there and its md5 must match the table's when the table has one (else the element is missing).  An element the table lacks (or a folder without a table) gets
    a PBE UPF chosen by file name (``El.pbe*.UPF`` / ``el_pbe*.UPF``, case-insensitive, not pbesol; the
    first in sorted order) with cutoffs None.  Raises :class:`PseudoError` naming every missing element.
    """
    folder = Path(pseudo_dir).expanduser()
    elements = sorted({str(e) for e in elements})
    if not folder.is_dir():
        raise PseudoError(f"no pseudopotential for {', '.join(elements)}: pseudopotential folder {folder} "
                          "does not exist (set dft.qe.pseudo_dir, the FWorker env pseudo_dir or $ESPRESSO_PSEUDO)")
    tables = _pseudo_tables(folder)
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    out, missing, problems = {}, [], []
    for el in elements:
        found, listed = None, False
        for tname, table in tables:
            entry = table.get(el)
            if not entry:
                continue
            listed = True
            path = folder / entry["filename"]
            if not path.is_file():
                problems.append(f"{el}: {entry['filename']} listed in {tname} is not in the folder")
                continue
            md5 = file_md5(path)
            if entry.get("md5") and entry["md5"].lower() != md5:
                problems.append(f"{el}: {entry['filename']} md5 {md5} differs from {entry['md5']} in {tname}")
                continue
            wfc, rho = entry.get("cutoff_wfc_ry", entry.get("cutoff_wfc")), \
                entry.get("cutoff_rho_ry", entry.get("cutoff_rho"))
            found = {"filename": entry["filename"], "md5": md5,
                     "ecutwfc": float(wfc) if wfc is not None else None,
                     "ecutrho": float(rho) if rho is not None else None, "source": tname}
            break
        if found is None and not listed:  # a listed file that is absent or altered is not replaced by a guess
            pattern = re.compile(rf"^{re.escape(el)}[._\-]pbe(?!sol)[^/]*\.upf$", re.IGNORECASE)
            names = [f for f in files if pattern.match(f)]
            if names:
                found = {"filename": names[0], "md5": file_md5(folder / names[0]),
                         "ecutwfc": None, "ecutrho": None, "source": "filename"}
        if found is None:
            missing.append(el)
        else:
            out[el] = found
    if missing:
        extra = f" ({'; '.join(problems)})" if problems else ""
        raise PseudoError(f"no PBE pseudopotential for {', '.join(missing)} in {folder}{extra}")
    return out


# ------------------------------------------------------------------------------------------- protocol
@functools.lru_cache(maxsize=8)
def pw_version(pw_cmd: str = DEFAULT_PW_CMD) -> str | None:
    """pw.x's version string (e.g. ``"6.7MaX"``), from its banner with an empty input; None if unknown."""
    argv = shlex.split(pw_cmd)
    if not argv or shutil.which(argv[0]) is None:
        return None
    import tempfile

    try:  # in a scratch folder: pw.x leaves input_tmp.in and CRASH behind
        with tempfile.TemporaryDirectory(prefix="fws-pwversion-") as tmp:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                                  check=False, cwd=tmp, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Program PWSCF v\.(\S+)", proc.stdout)
    return m.group(1) if m else None


def is_spin_polarized(elements, kind: str) -> bool:
    return kind == "molecule" or any(str(e) in MAGNETIC_ELEMENTS for e in elements)


def protocol(system_elements, settings) -> dict:
    """The calculation protocol shared by every structure of one chemical system (see module doc).

    ecutwfc/ecutrho: the spec override if set, else the largest recommendation among the system's
    elements (an element without one contributes the spec's default_ecutwfc/default_ecutrho);
    ecutrho is at least 4 x ecutwfc.  Raises :class:`PseudoError` if an element has no pseudopotential.
    """
    s = full_settings(settings)
    elements = sorted({str(e) for e in system_elements})
    pseudos = find_pseudos(elements, s["pseudo_dir"])
    wfcs = [p["ecutwfc"] if p["ecutwfc"] is not None else float(s["default_ecutwfc"]) for p in pseudos.values()]
    rhos = [p["ecutrho"] if p["ecutrho"] is not None else float(s["default_ecutrho"]) for p in pseudos.values()]
    ecutwfc = float(s["ecutwfc"]) if s.get("ecutwfc") is not None else max(wfcs)
    ecutrho = float(s["ecutrho"]) if s.get("ecutrho") is not None else max(rhos)
    ecutrho = max(ecutrho, 4.0 * ecutwfc)
    proto = {
        "code": "qe",
        "functional": FUNCTIONAL,
        "elements": elements,
        "pseudos": {el: {"filename": p["filename"], "md5": p["md5"]} for el, p in pseudos.items()},
        "ecutwfc": ecutwfc,
        "ecutrho": ecutrho,
        "occupations": "smearing",
        "smearing": str(s["smearing"]),
        "degauss": float(s["degauss"]),
        "kppa": int(s["kppa"]),
        "nscf_kppa": int(s["nscf_kppa"]),
        "conv_thr_per_atom": float(s["conv_thr_per_atom"]),
        "forc_conv_thr": float(s["forc_conv_thr"]),
        "press_conv_thr": float(s["press_conv_thr"]),
        "molecule_box": float(s["molecule_box"]),
        "spin": {"magnetic_elements": sorted(MAGNETIC_ELEMENTS), "starting_magnetization": STARTING_MAGNETIZATION,
                 "policy": "nspin=2, ferromagnetic start, when a magnetic element is present; molecules always",
                 "system_spin_polarized": is_spin_polarized(elements, "crystal")},
    }
    proto["id"] = hashlib.sha1(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:12]
    proto["pw_version"] = pw_version(str(s["pw_cmd"]))  # recorded, not hashed (see module doc)
    return proto
