"""Regenerate tests/data/vasp from ../shared/data/vasp_reference_runs (run from the repo root).

Not run by the tests: the fixture is committed; this script documents exactly where each file came from.
    .venv/bin/python tests/data/vasp/make_fixture.py

Copied byte-for-byte: the inputs (INCAR, KPOINTS, POSCAR) and the small outputs atomate's fake VASP copies
and its drone parses, of atomate's Si structure optimisation, static and uniform non-SCF reference runs.
Left out: WAVECAR, CHG/CHGCAR/AECCAR*/LOCPOT (the test writes a placeholder CHGCAR: nothing reads it in a
fake run), DOSCAR/EIGENVAL/PROCAR (vasprun.xml holds the same), and every POTCAR.

POTCARs are VASP's (VASP Software GmbH licence): the one POTCAR here, ``POT_GGA_PAW_PBE/POTCAR.Si.gz``, is
*scrambled*, as pymatgen does for its own tests: the header (TITEL, ZVAL, ENMAX, ... up to ``END of
PSCTR-controll parameters``) and every line that is not purely floating-point data are kept, and the
mantissa digits of every data number are replaced by random ones (fixed seed).  pymatgen writes it, the
fake run compares its symbols, the drone parses it (titel "PAW_PBE Si 05Jan2001", which is all MP2020's
POTCAR check reads); it is useless to VASP.
"""

from __future__ import annotations

import gzip
import random
import re
import shutil
from pathlib import Path

HERE = Path(__file__).parent
SHARED = HERE.parent.parent.parent.parent / "shared" / "data" / "vasp_reference_runs"
RUNS = ["Si_structure_optimization", "Si_static", "Si_nscf_uniform"]
INPUTS = ["INCAR", "KPOINTS", "POSCAR"]
OUTPUTS = ["vasprun.xml.gz", "OUTCAR.gz", "OSZICAR.gz", "CONTCAR.gz", "INCAR.gz", "INCAR.orig.gz", "KPOINTS.gz",
           "KPOINTS.orig.gz", "POSCAR.gz", "POSCAR.orig.gz", "custodian.json.gz", "vasp.out.gz"]
DATA_LINE = re.compile(r"^(\s*-?\.\d+E[+-]\d+)+\s*$")
NUMBER = re.compile(r"(-?\.)(\d+)(E[+-]\d+)")


def scramble_potcar(text: str, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines, out, in_header = text.splitlines(keepends=True), [], True
    for line in lines:
        if in_header:
            out.append(line)
            in_header = "END of PSCTR-controll parameters" not in line
            continue
        if DATA_LINE.match(line):
            line = NUMBER.sub(lambda m: m.group(1) + str(rng.randint(1, 9)) +
                              "".join(str(rng.randint(0, 9)) for _ in m.group(2)[1:]) + m.group(3), line)
        out.append(line)
    return "".join(out)


def main() -> None:
    for run in RUNS:
        for sub, names in (("inputs", INPUTS), ("outputs", OUTPUTS)):
            dest = HERE / run / sub
            dest.mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copyfile(SHARED / run / sub / name, dest / name)
    potcar = gzip.decompress((SHARED / "POT_GGA_PAW_PBE" / "POTCAR.Si.gz").read_bytes()).decode()
    (HERE / "POT_GGA_PAW_PBE").mkdir(exist_ok=True)
    with gzip.GzipFile(HERE / "POT_GGA_PAW_PBE" / "POTCAR.Si.gz", "wb", mtime=0) as fh:
        fh.write(scramble_potcar(potcar).encode())


if __name__ == "__main__":
    main()
