"""Funnel stage 1 — ingest: generated CIFs in, one candidate record per input out.

Readers accept a folder of ``.cif`` files, a (multi-block) CIF file, a ``.tar``/``.tar.gz`` archive, or a
CSV/parquet table with a CIF column (CrystaLLM-pi layout: ``Generated CIF``, ``condition_vector``,
``Material ID``, ``Prompt``).  Nothing is dropped: an input that cannot even be read as text still yields a
record carrying the reason.  :func:`postprocess` applies CrystaLLM's post-processing of raw generations and
says what it repaired.  Everything here is pure (no database): :func:`candidate_document` builds the record
that :mod:`fw_screen.store` stores.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from fw_screen.spec import CampaignSpec

#: bytes of an oversized input kept in the record (the full text is never stored).
KEPT_PREFIX = 4096
CIF_SUFFIXES = (".cif", ".mcif")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class RawInput:
    """One generated structure as it came in, before any parsing."""

    text: str
    source: dict
    condition: str | None = None
    error: str | None = None  # set when the input could not be read as CIF text at all
    nbytes: int = 0
    extra: dict = field(default_factory=dict)


class IngestError(ValueError):
    """The input as a whole cannot be read (missing path, table without a CIF column, ...)."""


# --------------------------------------------------------------------------------------------- readers
def _decode(data: bytes, source: dict, max_bytes: int) -> RawInput:
    if len(data) > max_bytes:
        prefix = data[:KEPT_PREFIX].decode("utf-8", errors="replace")
        return RawInput(prefix, source, error=f"input too large: {len(data)} bytes > max_cif_bytes={max_bytes}",
                        nbytes=len(data))
    if b"\x00" in data:
        return RawInput(data[:KEPT_PREFIX].decode("utf-8", errors="replace"), source,
                        error="binary content (NUL bytes), not CIF text", nbytes=len(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
        source = {**source, "encoding": "latin-1"}
    return RawInput(text, source, nbytes=len(data))


_BLOCK_START = re.compile(r"^[ \t]*data_", re.MULTILINE)


def split_blocks(text: str) -> list[str]:
    """Split a multi-block CIF at each ``data_`` line; text before the first block stays with it."""
    starts = [m.start() for m in _BLOCK_START.finditer(text)]
    if len(starts) <= 1:
        return [text]
    starts[0] = 0
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def _blocks_of(raw: RawInput) -> list[RawInput]:
    if raw.error:
        return [raw]
    blocks = split_blocks(raw.text)
    if len(blocks) == 1:
        return [raw]
    return [RawInput(b, {**raw.source, "block": i}, nbytes=len(b.encode())) for i, b in enumerate(blocks)]


def _read_cif_file(path: Path, label: str, max_bytes: int) -> list[RawInput]:
    size = path.stat().st_size
    if size > max_bytes:  # as for tar members: keep the head, never load the whole file
        with open(path, "rb") as fh:
            head = fh.read(KEPT_PREFIX)
        return [RawInput(head.decode("utf-8", errors="replace"), {"file": label}, nbytes=size,
                         error=f"input too large: {size} bytes > max_cif_bytes={max_bytes}")]
    return _blocks_of(_decode(path.read_bytes(), {"file": label}, max_bytes))


def _member_kind(member: tarfile.TarInfo) -> str | None:
    """What a non-regular tar member is (None for a regular file)."""
    if member.isfile():
        return None
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return "directory" if member.isdir() else "special file"


def _read_tar(path: Path, max_bytes: int) -> Iterator[RawInput]:
    # Members are read in memory, never extracted: no member name can write outside any folder, and links
    # and device files are never followed or opened (a CIF-named one is recorded with the reason).
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise IngestError(f"{path}: cannot read archive ({type(exc).__name__}: {exc})") from None
    with tar:
        entry = -1
        members = iter(tar)
        while True:
            try:
                member = next(members)
            except StopIteration:
                break
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:  # truncated or corrupt archive
                yield RawInput("", {"file": path.name, "entry": entry + 1}, nbytes=0,
                               error=f"archive unreadable after entry {entry}: {type(exc).__name__}: {exc}")
                break
            entry += 1
            if not member.name.lower().endswith(CIF_SUFFIXES):
                continue
            # the entry number keeps two members of the same name (tar allows it) two inputs
            source = {"file": path.name, "member": member.name, "entry": entry}
            kind = _member_kind(member)
            if kind:
                yield RawInput("", source, error=f"tar member is a {kind}, not a regular file: not read")
                continue
            try:
                if member.size > max_bytes:
                    head = tar.extractfile(member).read(KEPT_PREFIX)
                    yield RawInput(head.decode("utf-8", errors="replace"), source, nbytes=member.size,
                                   error=f"input too large: {member.size} bytes > max_cif_bytes={max_bytes}")
                    continue
                data = tar.extractfile(member).read()
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:  # truncated or corrupt archive
                yield RawInput("", source, nbytes=member.size,
                               error=f"archive member unreadable: {type(exc).__name__}: {exc}")
                break
            yield from _blocks_of(_decode(data, source, max_bytes))


def _first_column(columns, candidates: list[str]) -> str | None:
    lowered = {str(c).strip().lower(): c for c in columns}
    for name in candidates:
        if name.strip().lower() in lowered:
            return lowered[name.strip().lower()]
    return None


def _read_table(path: Path, ingest: dict) -> Iterator[RawInput]:
    import pandas as pd

    try:
        df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise IngestError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from None
    cif_col = _first_column(df.columns, ingest["cif_columns"])
    if cif_col is None:
        raise IngestError(f"{path}: no CIF column; looked for {ingest['cif_columns']}, "
                          f"found {list(map(str, df.columns))}")
    cond_col = _first_column(df.columns, ingest["condition_columns"])
    id_col = _first_column(df.columns, ingest["id_columns"])
    prompt_col = _first_column(df.columns, ingest["prompt_columns"])
    max_bytes = ingest["max_cif_bytes"]
    for row, rec in enumerate(df.to_dict("records")):
        source = {"file": path.name, "row": row}
        if id_col is not None and not _missing(rec[id_col]):
            source["material_id"] = str(rec[id_col])
        if prompt_col is not None and isinstance(rec[prompt_col], str):
            source["prompt"] = rec[prompt_col]
        value = rec[cif_col]
        condition = _condition_text(rec[cond_col]) if cond_col is not None else None
        if not isinstance(value, str):
            yield RawInput("", source, condition, error=f"no CIF text in column {cif_col!r} (got {value!r})")
            continue
        raw = _decode(value.encode("utf-8", errors="replace"), source, max_bytes)
        raw.condition = condition
        yield raw


def _missing(value) -> bool:
    """An empty table cell: None, or the NaN pandas puts in empty CSV cells."""
    return value is None or (isinstance(value, float) and value != value)


def _condition_text(value) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, str):
        return value
    try:
        return ", ".join(str(float(v)) for v in value)
    except TypeError:
        return str(value)


def read_inputs(path: str | Path, ingest: dict) -> Iterator[RawInput]:
    """Yield every input found at ``path`` (see module docstring for the accepted kinds)."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"input not found: {path}")
    max_bytes = ingest["max_cif_bytes"]
    name = path.name.lower()
    if path.is_dir():
        root = path.resolve()
        files = sorted(p for p in path.rglob("*") if p.name.lower().endswith(CIF_SUFFIXES) and not p.is_dir())
        if not files:
            raise IngestError(f"{path}: folder holds no .cif files")
        for f in files:
            label = str(f.relative_to(path))
            target = f.resolve()
            if target != root and root not in target.parents:  # a link out of the folder is not followed
                yield RawInput("", {"file": label}, error="symbolic link to a file outside the input folder: not read")
            elif not f.is_file():  # FIFO, device, broken link: never opened
                yield RawInput("", {"file": label}, error="not a regular file (device, FIFO or broken link): not read")
            else:
                yield from _read_cif_file(f, label, max_bytes)
    elif name.endswith(TAR_SUFFIXES):
        yield from _read_tar(path, max_bytes)
    elif name.endswith(TABLE_SUFFIXES):
        yield from _read_table(path, ingest)
    else:
        yield from _read_cif_file(path, path.name, max_bytes)


# ---------------------------------------------------------------------------------- post-processing
_TOKENS = re.compile(r"<bos>|<eos>|<pad>|<unk>|<sep>")
_DOUBLE_DOT = re.compile(r"(\d+\.\d+)\.(\d+)")
_TRAILING_DOT = re.compile(r"(?<=\s)(\d+\.)(?=\s)")
_LEADING_DOT = re.compile(r"(?<=\s)(\.\d+)(?=\s)")
_SG_SYMBOL = re.compile(r"_symmetry_space_group_name_H-M\s+('([^']+)'|\"([^\"]+)\"|(\S+))")
_SYMOP_LOOP = re.compile(
    r"loop_\s*\n\s*_symmetry_equiv_pos_site_id\s*\n\s*_symmetry_equiv_pos_as_xyz\s*\n"
    r"((?:[ \t]*\d+[ \t]+'[^'\n]*'[ \t]*\n?)+)")
_ATOM_PROPS = re.compile(r"(data_[^\n]*\n)\s*loop_\s*\n\s*_atom_type_symbol[\s\S]*?(?=_symmetry_space_group_name_H-M)")


def declared_space_group(cif: str) -> str | None:
    m = _SG_SYMBOL.search(cif)
    if not m:
        return None
    return (m.group(2) or m.group(3) or m.group(4)).strip()


def _full_symmetry_loop(symbol: str) -> str:
    from pymatgen.symmetry.groups import SpaceGroup

    ops = [op.as_xyz_str() for op in SpaceGroup(symbol).symmetry_ops]
    rows = "".join(f"  {i} '{op}'\n" for i, op in enumerate(ops, 1))
    return f"loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n{rows}"


def postprocess(cif: str) -> tuple[str, list[str]]:
    """CrystaLLM's post-processing of a raw generation; returns the new text and what was repaired.

    Strips model tokens and the brackets around the prompt formula, repairs malformed numbers
    (``3.6.69`` -> ``3.669``, ``1.`` -> ``1.0``, ``.12`` -> ``0.12``), expands a lone ``x, y, z`` operator
    into the full set of the declared space group, and drops the atom-properties block.
    """
    repairs: list[str] = []
    out = _TOKENS.sub("", cif)
    if out != cif:
        repairs.append("removed model tokens")
    if "[" in out or "]" in out:
        out = out.replace("[", "").replace("]", "")
        repairs.append("removed token brackets")
    for pattern, repl, what in (
        (_DOUBLE_DOT, r"\1\2", "merged a number with two decimal points"),
        (_TRAILING_DOT, r"\g<1>0", "completed a number ending in '.'"),
        (_LEADING_DOT, r"0\1", "completed a number starting with '.'"),
    ):
        out, n = pattern.subn(repl, out)
        if n:
            repairs.append(f"{what} (x{n})")
    symbol = declared_space_group(out)
    m = _SYMOP_LOOP.search(out)
    if symbol and m:
        ops = re.findall(r"'([^']*)'", m.group(1))
        if len(ops) == 1 and ops[0].replace(" ", "") == "x,y,z" and symbol.replace(" ", "") != "P1":
            try:
                loop = _full_symmetry_loop(symbol)
            except Exception as exc:  # unknown symbol: leave the text, validity will say why
                repairs.append(f"could not expand symmetry operators for {symbol!r}: {exc}")
            else:
                out = out[: m.start()] + loop + out[m.end():]
                repairs.append(f"expanded 'x, y, z' into the {loop.count(chr(39)) // 2} operators of {symbol}")
    new = _ATOM_PROPS.sub(r"\1", out)
    if new != out:
        repairs.append("removed atom-properties block")
        out = new
    return out, repairs


# ----------------------------------------------------------------------------------- condition vector
def decode_conditions(condition: str | None, conditions: list[dict]) -> tuple[dict, str | None]:
    """Map the generator's normalised condition vector to physical targets using the spec's tables."""
    if condition is None or not str(condition).strip():
        return {}, None
    try:
        values = [float(v) for v in re.split(r"[,\s;]+", str(condition).strip().strip("[]()")) if v]
    except ValueError:
        return {}, f"condition vector {condition!r} is not a list of numbers"
    targets: dict = {}
    problems = []
    for cond, norm in zip(conditions, values):
        table = {float(k): v for k, v in (cond.get("table") or {}).items()}
        target = {"normalised": norm, "unit": cond.get("unit")}
        exact = [v for k, v in table.items() if abs(k - norm) <= 1e-3]
        keys = sorted(table)
        if exact:
            target["value"] = exact[0]
        elif len(keys) >= 2 and keys[0] <= norm <= keys[-1]:
            hi = next(i for i, k in enumerate(keys) if k >= norm)
            k0, k1 = keys[hi - 1], keys[hi]
            target["value"] = table[k0] + (table[k1] - table[k0]) * (norm - k0) / (k1 - k0)
            target["interpolated"] = True
        else:
            target["value"] = None
            problems.append(f"{cond['name']}={norm} is outside the decoding table")
        targets[cond["name"]] = target
    if len(values) != len(conditions):
        problems.append(f"condition vector has {len(values)} values, spec names {len(conditions)}")
    return targets, "; ".join(problems) or None


# ----------------------------------------------------------------------------------------- the record
def source_key(source: dict) -> str:
    """Stable identity of an input's position: file plus row / member / block."""
    parts = [str(source.get("file", ""))]
    for key in ("member", "entry", "row", "block"):
        if key in source:
            parts.append(f"{key}={source[key]}")
    return "#".join(parts)


def candidate_id(campaign: str, source: dict, text: str) -> str:
    """Idempotency key: the same text from the same place of the same input is the same candidate."""
    digest = hashlib.sha256(f"{source_key(source)}\0{text}".encode("utf-8", errors="replace")).hexdigest()
    return f"{campaign}:{digest[:20]}"


def candidate_document(raw: RawInput, campaign: str, spec: CampaignSpec) -> dict:
    """The ingested record of one input (no structure parsing here; that is the validity stage)."""
    text = raw.text
    doc = {
        "_id": candidate_id(campaign, raw.source, text),
        "campaign": campaign,
        "status": "ingested",
        "source": raw.source,
        "content_hash": hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest(),
        "nbytes": raw.nbytes or len(text.encode("utf-8", errors="replace")),
        "cif_original": text,
        "condition_vector": raw.condition,
    }
    targets, problem = decode_conditions(raw.condition, spec.conditions)
    doc["targets"] = targets
    if problem:
        doc["targets_problem"] = problem
    if raw.error:
        doc["ingest_error"] = raw.error
        doc["cif_processed"] = None
        doc["repairs"] = []
        return doc
    if spec.ingest.postprocess:
        processed, repairs = postprocess(text)
    else:
        processed, repairs = text, []
    doc["cif_processed"] = processed
    doc["repairs"] = repairs
    doc["repaired"] = bool(repairs)
    return doc


def iter_candidates(path: str | Path, campaign: str, spec: CampaignSpec) -> Iterator[dict]:
    for raw in read_inputs(path, spec.ingest):
        yield candidate_document(raw, campaign, spec)
