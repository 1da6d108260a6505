"""Fuzzing the untrusted-input path: mutated CIF text through ingest (reader, CrystaLLM post-processing,
the candidate record) and the validity checks, the functions the runners call.  Every input must end as a
record with a status and a reason; no exception may escape (``check_cif`` itself must not raise, so the
runner's catch-all ``internal_error`` is never needed either).

Default run: ``FUZZ_EXAMPLES`` (300) derandomized examples per test, no deadline (~10 s).  Long run (marked
slow, ``FUZZ_LONG_EXAMPLES`` inputs, default 20,000, a new random seed each time; ``FUZZ_PROGRESS=FILE``
writes the counts every 250 inputs)::

    FUZZ_LONG_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz.py -m slow -s

A hang counts as a failure: each input has ``PER_INPUT_TIMEOUT`` seconds.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fw_screen import stages as cp
from fw_screen.science.ingest import iter_candidates, split_blocks
from fw_screen.spec import load_spec
from fw_screen.science.validity import check_cif

DATA = Path(__file__).parent / "data"
SEEDS = [b for b in split_blocks((DATA / "crystallm_pi_16.cif").read_text()) if b.strip()]
SEEDS.append((DATA / "raw_crystallm_nacl.cif").read_text())
SEEDS += [(DATA / "mp" / name).read_text() for name in ("LiCoO2_mp-22526.cif", "NaFePO4_mp-19226.cif")]

pytestmark = pytest.mark.filterwarnings("ignore")

NASTY_NUMBERS = ["1e308", "1e400", "-1e999", "nan", "NaN", "inf", "-inf", "+Infinity", "0", "-0", "0.0000",
                 "1.2.3", ".", "-", "1(2", "1(", "(3)", "99999999999999999999999999999999", "1e-320",
                 "--1", "1+1", "2**64", "__import__('os').system('touch /tmp/fw_screen_fuzz_pwned')",
                 "eval('1')", "0x10", "1_000", "١٢٣", "½", "1e", "e5", "1/3", "?", "'", '"']
SYMBOLS = ["Fm-3m", "P1", "P-1", "Pnma", "R-3m", "P6_3/mmc", "Ia-3d", "'P 1'", "Xx", "", "P 21/c", "F d d d",
           "P4_2/mnm :2", "I4_1/amd", "Fd-3m:1"]
INSERTS = ["loop_\n", "loop_\n _atom_site_label\n", "loop_\n_foo\n_bar\n", "data_\n", "data_X\n", ";\n",
           "'", '"', "#", "_cell_length_a 1e999\n", "_atom_site_fract_x\n", "\x00", "\ufeff", "\r\n",
           "loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n  1 'x, y, z'\n",
           "  1 'x+y*z, __import__(\"os\"), 1/0'\n", "<bos>", "<eos>", "[", "]", "global_\n", "save_x\n",
           "_space_group_magn.name_BNS 'P 1'\n_space_group_magn.transform_BNS_Pp_abc '9**9**9*a,b,c;0,0,0'\n",
           "_atom_site_moment_label\n", "_symmetry_space_group_name_H-M 'P 1 :a,b,c'\n",
           "loop_\n _symmetry_equiv_pos_as_xyz\n" + "".join(f" 'x,y,z+{i}/7'\n" for i in range(300))]


NUMBER = re.compile(r"-?\d+(\.\d*)?(\(\d+\))?")


def _token_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


@st.composite
def mutated_cif(draw) -> bytes:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "delete_token", "dup_token", "number", "unicode", "insert",
                                     "dup_line", "drop_line", "swap_lines", "symbol", "empty_loop", "element",
                                     "tweak", "tweak", "tweak", "tweak"]))   # mild ones reach the deep checks
        spans = _token_spans(text)
        lines = text.splitlines(keepends=True)
        numeric = [sp for sp in spans if NUMBER.fullmatch(text[sp[0]:sp[1]])]
        if kind == "tweak" and numeric:  # another plausible number: coordinates, cell lengths, angles
            a, b = numeric[draw(st.integers(0, len(numeric) - 1))]
            value = draw(st.one_of(st.floats(-1.5, 1.5), st.floats(0, 200), st.integers(-3, 400)))
            text = text[:a] + (f"{value:.4f}" if isinstance(value, float) else str(value)) + text[b:]
        elif kind == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif kind in ("delete_token", "dup_token", "number", "element") and spans:
            a, b = spans[draw(st.integers(0, len(spans) - 1))]
            if kind == "delete_token":
                text = text[:a] + text[b:]
            elif kind == "dup_token":
                text = text[:b] + " " + text[a:b] + text[b:]
            elif kind == "number":
                text = text[:a] + draw(st.sampled_from(NASTY_NUMBERS)) + text[b:]
            else:
                text = text[:a] + draw(st.sampled_from(["Xx", "H", "D", "Og", "Na+", "O2-", "Fe3.5+", "X"]))\
                    + text[b:]
        elif kind == "unicode":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.text(max_size=20)) + text[at:]
        elif kind == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(INSERTS)) + text[at:]
        elif kind in ("dup_line", "drop_line", "swap_lines") and lines:
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if kind == "dup_line":
                lines.insert(i, lines[i] * draw(st.integers(1, 50)))
            elif kind == "drop_line":
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif kind == "symbol":
            text = text.replace("_symmetry_space_group_name_H-M", "_symmetry_space_group_name_H-M "
                                + draw(st.sampled_from(SYMBOLS)) + " #", 1)
        elif kind == "empty_loop":  # drop every row of the atom-site loop
            start = text.find("_atom_site_occupancy")
            if start >= 0:
                end = text.find("\n", start)
                text = text[: end + 1] if end >= 0 else text
    data = text.encode("utf-8", errors="surrogatepass")
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):  # byte flips
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
    return data


SPEC = load_spec(campaign="fuzz")
FOLDER = Path(tempfile.mkdtemp(prefix="fws-fuzz-"))  # hypothesis tests cannot take tmp_path per example
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
STATS = {"inputs": 0, "records": 0, "parsed": 0, "valid": 0, "slowest": 0.0}


PER_INPUT_TIMEOUT = 60  # s: a hang is a failure too


class Hang(BaseException):  # not an Exception: the per-check handlers in validity must not swallow it
    pass


def _hang(signum, frame):
    raise Hang(f"one input took more than {PER_INPUT_TIMEOUT} s")


def screen_one(data: bytes) -> list[dict]:
    """The runners' per-candidate path: reader -> post-processing -> record -> validity; returns the records."""
    path = FOLDER / "input.cif"
    path.write_bytes(data)
    records = []
    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _hang)
    signal.alarm(PER_INPUT_TIMEOUT)
    try:
        _screen(path, records)
    finally:
        signal.alarm(0)
    STATS["slowest"] = max(STATS["slowest"], time.perf_counter() - t0)
    STATS["inputs"] += 1
    STATS["records"] += len(records)
    if os.environ.get("FUZZ_PROGRESS") and STATS["inputs"] % 250 == 0:
        Path(os.environ["FUZZ_PROGRESS"]).write_text(f"{STATS} {time.strftime('%H:%M:%S')}\n")
    assert records, "every input yields at least one record"
    assert not Path("/tmp/fw_screen_fuzz_pwned").exists()
    return records


def _screen(path: Path, records: list) -> None:
    for doc in iter_candidates(path, SPEC["campaign"], SPEC):
        if not doc.get("ingest_error"):
            check_cif(doc["cif_processed"], SPEC["validity"])      # must not raise
        fields = cp.validity_fields(doc, SPEC)
        v = fields["validity"]
        assert v["first_failure"] != "internal_error", v
        assert isinstance(v["valid"], bool)
        if not v["valid"]:
            assert v["reason"] and v["first_failure"], v
        STATS["valid"] += v["valid"]
        STATS["parsed"] += bool((v["checks"].get("parse") or {}).get("passed"))
        records.append(fields)


FAST = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck), database=None)
LONG = settings(max_examples=int(os.environ.get("FUZZ_LONG_EXAMPLES", "20000")), deadline=None,
                suppress_health_check=list(HealthCheck), database=None)


@FAST
@given(mutated_cif())
def test_fuzz_cif_ingest_and_validity(data):
    screen_one(data)


@FAST
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(data):
    screen_one(data)


@pytest.mark.slow
@LONG
@given(mutated_cif())
def test_fuzz_long(data):
    screen_one(data)


def teardown_module():
    print(f"\nfuzz: {STATS['inputs']} inputs, {STATS['records']} records ({STATS['parsed']} built a structure, "
          f"{STATS['valid']} valid), slowest {STATS['slowest']:.2f} s")


# ------------------------------------------------------------------ regressions: inputs the fuzzer broke
@pytest.mark.parametrize("occupancy", ["1e308", "inf", "nan", "-1", "0"])
def test_regression_absurd_occupancy(occupancy):
    """Found by test_fuzz_long: occupancy 1e308 made Composition.formula raise OverflowError (inf amount)."""
    text = (DATA / "mp" / "LiCoO2_mp-22526.cif").read_text()
    text = re.sub(r"^(\s+O\s+O2\s+6\s+\S+\s+\S+\s+\S+\s+)\S+", rf"\g<1>{occupancy}", text, count=1, flags=re.M)
    [record] = screen_one(text.encode())
    assert record["validity"]["valid"] is False and record["validity"]["reason"]


def test_regression_magnetic_cif_setting_is_not_evaluated():
    """Found in review: pymatgen hands a magnetic CIF's transform_BNS_Pp_abc to sympy; 9**9**9 hung the
    validity stage (the process had to be killed).  Magnetic CIFs are refused before pymatgen sees them."""
    text = (DATA / "mp" / "LiCoO2_mp-22526.cif").read_text() + (
        "_space_group_magn.name_BNS 'P 1'\n_space_group_magn.transform_BNS_Pp_abc '9**9**9*a,b,c;0,0,0'\n")
    t0 = time.perf_counter()
    [record] = screen_one(text.encode())
    assert time.perf_counter() - t0 < 30
    assert "magnetic CIF" in record["validity"]["checks"]["parse"]["reason"]


def test_regression_unreadable_symmetry_operator_is_a_reason():
    """Found in review: pymatgen skips an operator it cannot read (here Python code) and falls back to P1, so
    the CIF passed as valid; now the operator is the recorded reason."""
    text = (DATA / "mp" / "LiCoO2_mp-22526.cif").read_text()
    text = re.sub(r"^  1  'x, y, z'$", "  1  '__import__(\"os\").system(\"id\")'", text, flags=re.M)
    assert "__import__" in text
    [record] = screen_one(text.encode())
    assert record["validity"]["valid"] is False
    assert "is not an x, y, z expression" in record["validity"]["reason"]


def test_regression_elongated_cell_does_not_stall_the_bond_check():
    """Found by test_fuzz_long: _cell_length_b 228 (a sensible length) made CrystalNN widen its Voronoi search
    up to the 228 A cell diagonal, minutes per site; the search is now capped and the check fails fast."""
    block = next(b for b in SEEDS if b.startswith("data_Li2Dy2Te4\n"))
    text = block.replace("_cell_length_b 4.3732", "_cell_length_b 228")
    assert text != block
    t0 = time.perf_counter()
    [record] = screen_one(text.encode())
    assert time.perf_counter() - t0 < 20
    v = record["validity"]
    assert v["valid"] is False and "no closed neighbour shell within 30 A" in v["checks"]["bond_length"]["reason"]


def test_regression_denormal_cell_length():
    """Found by test_fuzz_long: _cell_length_a 1e-320 gave a volume > 0 whose value in cm^3 underflows to 0:
    Structure.density raised ZeroDivisionError."""
    block = next(b for b in SEEDS if b.startswith("data_Dy4As4S4\n"))
    text = block.replace("_cell_length_a 17.3728", "_cell_length_a 1e-320")
    assert text != block
    [record] = screen_one(text.encode())
    assert record["validity"]["first_failure"] == "sensible" and record["density"] is None
